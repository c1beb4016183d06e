// matmul.c -- the CPU speed layer of llava.c: a thread pool and y = x W^T.
//
// What it does
//   y (T, N) = x (T, K) @ W^T for weights W (N, K) stored as f32, bf16 or int8 with one f32 scale per
//   group of `group` consecutive inputs (q8). Three paths, chosen per call:
//   * GEMM (T above a small threshold: prefill, vision batch, projector). Weights are packed once
//     (pack_matrix) into 32-column panels; activations are packed per call into row tiles; an AVX-512
//     microkernel runs over the full K depth, so each output tile is written once. Kernels:
//       f32   14x32 tile, vfmadd231ps, activations in f32 (exact up to summation order);
//       bf16  14x32 tile, vdpbf16ps, activations rounded to bf16 (round-to-nearest-even, <= 2^-8
//             relative each) -- what PyTorch does for a bf16 model. Against f32 activations on the same
//             weights: relative RMS error 1.7e-3 (Gaussian x, K=4096); vdpbf16ps also flushes denormals;
//       q8    6x32 tile, vpdpbusd (VNNI) on u8 weights (w+128) x s8 activations, activations quantized
//             per row and per group to int8 with an f32 scale (absmax/127); exact integer dot per group,
//             then scale_w * scale_x in f32. Against f32 activations on the same weights: relative
//             RMS error 5.8e-3 (Gaussian x, K=4096, G=64); bound: sum_g scale_x[g]/2 * sum|w| per output.
//   * GEMV (T small: decode). Same packed panels, one sequential stream per task, limited by memory
//     bandwidth.
//       f32, bf16  weights widened to f32 in registers (bf16 -> f32 is exact) and FMA'd with the f32
//             activations: the reference semantics (matmul_ref) with the reference summation order;
//       q8    (T <= 3, AVX512-VNNI) the activation rows are quantized once per call to int8 per
//             group with mm_quantize_group's rounding -- the same quantization as the q8 GEMM -- and
//             the panels go through vpdpbusd with the same folded -128*sum(q) compensation and the
//             same per-group f32 epilogue as the GEMM microkernel. So prefill and decode of a q8 model
//             share one activation semantics: a row gives the same bits on either path (tested).
//             Measured ~98 % of the read-bandwidth reference against ~71-79 % for widening when the
//             VM gives 50+ GB/s (widening chains 4 dependent FMAs per 128-byte panel step: 16
//             cycles, ~8 B/cycle per core, too little headroom at that bandwidth).
//             Without AVX512-VNNI, q8 GEMV runs the avx2 vpmaddubsw kernel on the same quantized
//             activations (same bits); the zmm widening kernel (int8 -> f32, f32 activations) stays
//             as a bench/test knob (mm_q8_gemv_vnni = 0).
//   * Portable scalar code when the CPU has no AVX2 (or on non-x86): matmul_ref's loops, threaded.
//   q4 (4-bit weights, two per byte, one bf16 scale per group of a multiple of 8 inputs; section "q4
//   kernels (x86)" and the ARM q4 kernels) runs on the q8 machinery: the same activation quantization
//   and packers, the same dot instructions on nibbles unpacked in registers (and + shift), the same
//   epilogue. Unlike q8, its matmul_ref IS that integer arithmetic, so every level, GEMV and GEMM,
//   gives matmul_ref's bits (tested).
//
// Instruction-set levels (mm_detect_isa; LLAVA_ISA=scalar|avx2|avxvnni|avx512 caps the level, never
// raises it; matmul_isa_name() names what runs). The kernels above are the AVX-512 level. Below it:
//   avx2     (Haswell+, Zen 1-3; 16 ymm registers) the same packed panels, half a panel per GEMM call:
//            f32 6x16 FMA tile; bf16 6x16 tile with the weight pairs widened in registers (shift /
//            and, exact) times f32 activations (matmul_ref's semantics: there is no bf16 dot); q8 4x16
//            tile of vpmaddwd on int16: weight bytes widened in registers, activations packed as
//            int16 (exact, never saturates), on the SAME quantized activations as the VNNI path; the
//            q8 GEMV uses vpmaddubsw on |w| x sign(q, w); GEMV over full panels with 4 KB prefetch and
//            guided chunks (T <= 2). The bf16 and q8 GEMM inner loops are inline asm for GCC (it
//            spilled their accumulators), with the register plan written next to each.
//            Measured on an AMD EPYC (Zen 5, 4.2 GHz) built with -march=x86-64-v3 and capped to avx2,
//            one thread, thread CPU time (bench --threads 1 --cpu --isa avx2), each as % of the peak
//            loop of its own instructions: f32 GEMM 86-92 % of ymm FMA (K = 11008 included: 88-91 % one
//            thread, 90 % two; it drops to ~60 % only while another process thrashes L3, because each
//            6-row tile re-reads a 700 KB half panel from L3. K blocking was tried, bit-identical, and
//            lost on every shape: blocks reused from L2 then come back from DRAM once per tile group);
//            bf16 GEMM 85-93 %; q8 GEMM (vpsignb+vpmaddubsw+vpmaddwd kernel) 67-71 % of the
//            vpmaddubsw+vpmaddwd+vpaddd peak loop; the int16 vpmaddwd kernel that replaced it moves
//            the GEMM shapes by -2..+3 % (65-71 %, 2 threads; +5 % with everything in L1; +2 % on 7B
//            prefill end to end). Its ceiling: every AVX2 int8 form costs 4 vector ops per 32
//            products (2 multiplies + 2 others), and on Zen 5 a register-only loop of either mix runs
//            at 0.87 of the peak loop; the per-group f32
//            epilogue (1 vmulps + 1 FMA per 32 vpmaddwd) costs another ~6 % (G = 256 runs 5-8 %
//            faster than G = 64); GEMV 97-98 % of a one-thread read loop, f32, bf16 and q8.
//   avxvnni  (Alder Lake+, Zen 5) avx2 plus a 6x16 q8 GEMM tile of ymm vpdpbusd with the -128*sum(q)
//            compensation, like AVX512-VNNI (74-81 % of ymm vpdpbusd, same machine and method). q8
//            decode stays on vpmaddubsw (memory bound).
//   AVX-512 machines without AVX512-VNNI run q8 on the avx2 int8 kernels, and without AVX512-BF16
//            the bf16 GEMM on the avx2 tile.
// A q8 model gives the same bits on every SIMD level (avx2, avxvnni, avx512 with or without VNNI)
// and on either path (GEMV or GEMM): one quantization (mm_quantize_group), the exact int32 dot of
// each group (computed three ways, always the same integer), then f += float(dot) * (s_w * s_x)
// in group order (tested bit for bit). f32 and bf16 results differ between levels by summation
// order only (and bf16 GEMM on AVX512-BF16 rounds the activations to bf16). The scalar level keeps
// matmul_ref's f32-activation semantics for q8.
// Measuring avx2 on an AVX-512 machine: build with -march=x86-64-v3 (not -march=native, which lets
// GCC give the target("avx2") functions 32 EVEX registers) and cap the level (bench --isa avx2).
// SIMD code is compiled for x86-64 only (__x86_64__): the 32-bit x86 build is portable C (the q8
// asm names zmm30/31, which 32-bit mode lacks).
//
// ARM64 (AArch64): the same packed panels (pack_matrix does the same work on every CPU, so a matrix
// packed under any level runs under any other) and the same two paths, in NEON (section "ARM64
// kernels"):
//   f32   GEMM 6x16 tiles of fmla by lane; GEMV up to 3 rows per pass over a panel;
//   bf16  weights widened in registers (shl / and: exact) and FMA'd with f32 activations; so f32
//         and bf16 keep matmul_ref's semantics and per-lane k order (the scalar loop's bits when
//         the compiler contracts it into fused multiply-adds, as GCC and clang do on AArch64);
//   q8    activations quantized by mm_quantize_group (per row and group, exactly as on x86), an
//         exact int32 dot per group and the VNNI kernels' f32 epilogue, on both paths: GEMM 8x4 tiles
//         and a one-row GEMV with usdot (i8mm, u8 x s8 like vpdpbusd, same compensation), sdot
//         (dotprod; xor 0x80 turns the packed u8 back into s8) or vmull_s8 + vpadalq_s16 (any
//         ARMv8). Integer sums are exact, so a q8 model gives the same bits at every ARM level, on
//         GEMV and GEMM, and on x86 with AVX512-VNNI. What differs between CPUs is only f32 summation
//         order: x86 bf16 GEMM rounds activations to bf16, and the x86 widening q8 paths (AVX2,
//         AVX-512 without VNNI) keep f32 activations.
//   Levels neon < dotprod < i8mm come from getauxval(AT_HWCAP / AT_HWCAP2) (Linux) or sysctl (macOS,
//   untested); LLAVA_ISA=scalar|neon|dotprod|i8mm caps them; matmul_isa_name() says e.g.
//   "neon+dotprod". dotprod / i8mm kernels carry target attributes, so a plain -O3 aarch64 build runs
//   on any ARMv8-A CPU. Tested under qemu-user (make test-aarch64), not yet timed on ARM hardware.
//
// Determinism: work is split over N only, in tasks of whole 32-column panels (claimed dynamically
// by the threads), and every output element is computed by one kernel call over the full K in a
// fixed order, so results are bit-identical for any thread count. They do depend on T (GEMV vs
// GEMM path) and on the CPU (instruction set).
//
// matmul_rows(y, fn, ctx, w, T): the same product with row t of x made by fn(ctx, t, row) -- the norm
// before a projection. The x86 GEMMs call fn inside their activation packers, one row tile at a time
// (mm_tile_rows), so the normed rows go from L1/L2 straight into int8 (or bf16, f32) tiles and x never
// exists as a (T, K) matrix; the GEMV, ARM and portable paths make x in a buffer first. Same bits as
// matmul() on the rows fn writes (tested on every path and level).
//
// matmul_then(y, x, fn, ctx, w, T, post, post_ctx): either of the above, then post (an MMBlockFn: a
// bias, an activation, a residual add) on every block of y. The x86 GEMMs call it on each row tile of
// a weight block as soon as the kernel has written it, while it is in L1, instead of a pass over all
// of y that reads it back from memory; the other paths call it once on all of y. Same bits either way.
//
// What it does not do: attention (llava.c), fusing of QKV / gate+up (pass a concatenated Matrix),
// quantizing weights (export.py). matmul() is not reentrant: call it from one thread at a time
// (a matmul called from inside a pool task runs single-threaded with its own scratch).
//
// Build: included into llava.c (unity build); needs -pthread (and -lm for rintf).
// Tests: test/test_matmul.c. Speed: bench/bench.c.

#include "base.c"  // fatal, bf16 conversion, align_up: the only project file this one needs
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>   // sysconf (the L2 size)

#if defined(__x86_64__)   // SIMD kernels: x86-64 only (the q8 GEMM's asm uses zmm30/31, absent in 32-bit mode)
#include <cpuid.h>
#include <immintrin.h>
#define MM_X86 1
#define mm_cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define MM_X86 0
#define mm_cpu_relax() __asm__ __volatile__("yield")
#else
#define MM_X86 0
#define mm_cpu_relax() ((void)0)
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

typedef enum { DT_F32 = 0, DT_BF16 = 1, DT_Q8 = 2, DT_Q4 = 3 } DType;
typedef struct {
    DType type;
    int rows, cols;         // out features (N), in features (K); y = x W^T
    const void* data;       // (rows, cols) f32 | uint16 bf16 bits | int8 | q4: (rows, cols/2) bytes, see below
    const float* scales;    // q8 only: (rows, cols/group)
    int group;              // q8 / q4 group size along cols (cols % group == 0)
    void* packed;           // private to matmul.c (packed panels etc.), NULL until pack_matrix
    const uint16_t* scales_bf16;   // q4 only: (rows, cols/group) bf16 scales
    const void* panels;     // model files of format 2: the stored panels (and their scales), in the
    const void* panel_scales;   // layout pack_matrix makes (see matrix_use_panels); NULL otherwise
} Matrix;
// q4 storage (export.py's --dtype q4): byte i of a row holds inputs 2i (low nibble) and 2i+1 (high
// nibble), each as u = w + 8 with w in -8..7 (offset binary: u 0..15); w ~= (u - 8) * bf16 scale of
// its group. Groups are a multiple of 8 inputs (MM_Q4_GROUP_MULT) so that the packed words below
// never split a group.
#define MM_Q4_OFFSET 8      // stored nibble = w + 8
#define MM_Q4_GROUP_MULT 8  // q4 groups hold whole packed words of 8 inputs
#define MM_Q4_COMP_DIV 16   // the q8 packers' -128 * sum(q) / 16 = -8 * sum(q): the q4 offset's compensation

// ----------------------------------------------------------------------------
// Thread pool
// n-1 persistent workers; the caller of pool_for does its share of the tasks. A job is published by
// bumping a generation counter that idle workers spin on (~0.3 us per dispatch+join on the target
// VM, against ~30-60 us for waking a sleeping thread), and after ~3 ms without work a worker
// sleeps on a condvar so that an idle program does not burn a core.
// Tasks are claimed one by one with a CAS on a word that holds (generation, next task), and the
// caller waits only for tasks that were claimed, not for every worker to check in: a worker that is
// asleep or descheduled (a busy machine) costs nothing, the caller runs its tasks. A late worker
// cannot claim a task of a later job because the generation in the claim word would not match.
// Callers that need determinism make each task's result independent of who runs it.

// One published job: run fn(ctx, task) for task in [0, n_tasks). Two slots alternate (job g in
// slot g & 1), so publishing job g+1 never rewrites the slot that a late worker of job g may still
// be reading; only job g+2 reuses it, and by then the claim word rejects that worker (see below).
typedef struct {
    _Atomic(void (*)(void*, int)) fn;       // the task body
    _Atomic(void*) ctx;                     // its shared argument (an MMJob, a pack context, ...)
    atomic_int n_tasks;                     // tasks 0..n_tasks-1
} MMJobSlot;                                // atomics: a stale worker may read a slot being rewritten

// The hot atomics sit on separate 64-byte cache lines (_Alignas(64)): idle workers spin reading
// gen while running ones CAS claim and bump completed; sharing a line would make every claim
// invalidate the spinners' copy of gen (false sharing) and slow the claims themselves.
typedef struct {
    int n;                                  // threads including the caller
    pthread_t* threads;                     // (n - 1) workers
    _Alignas(64) atomic_uint gen;           // job generation, bumped once per pool_for
    _Alignas(64) _Atomic uint64_t claim;    // (generation << 32) | next task index
    _Alignas(64) atomic_int completed;      // tasks of the current job that finished
    _Alignas(64) atomic_int sleepers;       // workers blocked (or about to block) on the condvar
    atomic_int quit;
    MMJobSlot slot[2];                      // job g lives in slot[g & 1]
    pthread_mutex_t mu;
    pthread_cond_t cv;
} MMPool;

static MMPool mm_pool = { .n = 1, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
static _Thread_local int mm_in_pool;        // set inside tasks: a nested pool_for runs inline
static unsigned mm_pool_gen0;               // generation when the workers were created

// Wall-clock seconds (only differences are used: the spin-then-sleep timeout of idle workers).
static double mm_now_sec(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Claim and run tasks of job g until none are left (or a newer job has replaced it).
static void mm_run_tasks(unsigned g) {
    const MMJobSlot* js = &mm_pool.slot[g & 1];
    void (*fn)(void*, int) = atomic_load_explicit(&js->fn, memory_order_relaxed);
    void* ctx = atomic_load_explicit(&js->ctx, memory_order_relaxed);
    uint64_t n = (uint64_t)atomic_load_explicit(&js->n_tasks, memory_order_relaxed);
    // c: the claim word, high 32 bits = the job's generation, low 32 bits (mask 0xffffffff) = the
    // next unclaimed task. One 64-bit CAS both checks "still job g" and takes the task, so a worker
    // that read gen == g and was then descheduled past the end of job g can never take a task
    // index of job g+1 while holding job g's fn/ctx: the generation half would not match.
    uint64_t c = atomic_load_explicit(&mm_pool.claim, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(c >> 32) != g || (c & 0xffffffffu) >= n) return;
        // success means job g was still current, so fn/ctx/n above were its own (written before gen)
        // c + 1 bumps only the task half (n_tasks < 2^32, so it never carries into the generation);
        // on failure c is reloaded with the current word and the checks above run again
        if (atomic_compare_exchange_weak_explicit(&mm_pool.claim, &c, c + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            fn(ctx, (int)(c & 0xffffffffu));
            // release: this task's writes (its slice of y) are visible to the caller's acquire of
            // completed, the only synchronisation between a task and the code after pool_for
            atomic_fetch_add_explicit(&mm_pool.completed, 1, memory_order_release);
            c = atomic_load_explicit(&mm_pool.claim, memory_order_acquire);
        }
    }
}

static void* mm_worker(void* arg) {
    (void)arg;
    // the generation at creation time (a job may be published before this thread first runs)
    unsigned seen = mm_pool_gen0;
    mm_in_pool = 1;
    for (;;) {
        // Spin, then sleep. Spinning answers a new job in ~0.3 us; a condvar wake-up costs 30-60 us,
        // paid on every one of the ~224 matmuls of a decode step (32 layers x 7), which come back
        // to back with only short gaps (norms, attention) between them. Past 3 ms of nothing the
        // program is evidently doing something else (tokenizing, waiting for input), so sleep.
        double t0 = 0.0;                    // time of the first clock check, 0 = not taken yet
        for (unsigned spins = 0;; spins++) {
            if (atomic_load_explicit(&mm_pool.gen, memory_order_acquire) != seen) break;
            mm_cpu_relax();                 // pause / yield: frees the core's pipeline for its sibling
            // the clock is read once per 1024 spins (mask 1023): a clock read costs far more than
            // a pause, and 1024 pauses (tens of microseconds at most) are far below the 3 ms
            if ((spins & 1023) != 1023) continue;
            double t = mm_now_sec();
            if (t0 == 0.0) { t0 = t; continue; }
            if (t - t0 < 3e-3) continue;    // 3 ms: the spin-then-sleep threshold
            // Sleep. sleepers is raised before gen is re-checked and the publisher bumps gen before
            // it reads sleepers (both seq_cst), so one of the two always sees the other: no lost wake-up.
            pthread_mutex_lock(&mm_pool.mu);
            atomic_fetch_add(&mm_pool.sleepers, 1);
            while (atomic_load(&mm_pool.gen) == seen) pthread_cond_wait(&mm_pool.cv, &mm_pool.mu);
            atomic_fetch_sub(&mm_pool.sleepers, 1);
            pthread_mutex_unlock(&mm_pool.mu);
            break;
        }
        // gen may have moved more than once while we slept: join only the newest job (the older
        // ones are finished or being finished by others, and their claim words are gone)
        seen = atomic_load_explicit(&mm_pool.gen, memory_order_acquire);
        if (atomic_load(&mm_pool.quit)) return NULL;
        mm_run_tasks(seen);
    }
}

// Make the next job visible: bump gen (the spinners see it), then wake the sleepers if any. The
// lock around the broadcast orders it after a sleeper's re-check of gen under the same lock.
static void mm_pool_publish(void) {
    atomic_fetch_add(&mm_pool.gen, 1);      // seq_cst, pairs with the sleepers protocol above
    if (atomic_load(&mm_pool.sleepers) > 0) {
        pthread_mutex_lock(&mm_pool.mu);
        pthread_cond_broadcast(&mm_pool.cv);
        pthread_mutex_unlock(&mm_pool.mu);
    }
}

// Stop and join the workers: quit is set before the publish, so every worker leaves at its next
// wake-up instead of running a task.
static void mm_pool_shutdown(void) {
    if (mm_pool.n <= 1) return;
    atomic_store(&mm_pool.quit, 1);
    mm_pool_publish();
    for (int i = 0; i < mm_pool.n - 1; i++) pthread_join(mm_pool.threads[i], NULL);
    free(mm_pool.threads);
    mm_pool.threads = NULL;
    mm_pool.n = 1;
    atomic_store(&mm_pool.quit, 0);
}

// Start (or resize) the pool: n_threads counts the calling thread; 1 means everything runs inline.
// Call from the main thread, not while a pool_for is running.
void pool_init(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) n_threads = 256;   // cap: far above the core counts this code targets
#ifdef _OPENMP
    mm_pool.n = n_threads;  // built with -fopenmp (make OPENMP=1): OpenMP's threads run pool_for
    return;
#endif
    if (n_threads == mm_pool.n) return;
    mm_pool_shutdown();
    if (n_threads == 1) return;
    mm_pool.threads = malloc((size_t)(n_threads - 1) * sizeof(pthread_t));
    if (!mm_pool.threads) fatal("out of memory creating the thread pool");
    mm_pool_gen0 = atomic_load(&mm_pool.gen);   // read by each new worker as its first `seen`
    for (int i = 0; i < n_threads - 1; i++) {
        if (pthread_create(&mm_pool.threads[i], NULL, mm_worker, NULL) != 0) {
            fatal("cannot start worker thread %d of the thread pool", i);
        }
    }
    mm_pool.n = n_threads;
}

int pool_size(void) { return mm_pool.n; }

// Run fn(ctx, 0..n_tasks-1) on the pool; returns when all tasks are done. Only one thread may
// call it at a time (a call from inside a task runs inline).
void pool_for(int n_tasks, void (*fn)(void* ctx, int task), void* ctx) {
    if (n_tasks <= 0) return;
#ifdef _OPENMP
    // The same tasks on an OpenMP team instead of our pool: the results do not depend on who runs them.
    if (mm_pool.n > 1 && n_tasks > 1 && !mm_in_pool && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(mm_pool.n)
        for (int t = 0; t < n_tasks; t++) {
            mm_in_pool = 1;  // a matmul inside a task runs inline on private scratch, as with the pool
            fn(ctx, t);
            mm_in_pool = 0;
        }
        return;
    }
    for (int t = 0; t < n_tasks; t++) fn(ctx, t);
    return;
#endif
    // inline: no pool, a single task (dispatch would only add latency), or a nested call
    if (mm_pool.n <= 1 || n_tasks == 1 || mm_in_pool) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t);
        return;
    }
    // Publish job g: fill its slot, reset completed, then store the claim word (g, task 0) with
    // release, so a worker that sees generation g in claim also sees the slot's contents.
    unsigned g = atomic_load_explicit(&mm_pool.gen, memory_order_relaxed) + 1;   // we are the only writer
    MMJobSlot* js = &mm_pool.slot[g & 1];
    atomic_store_explicit(&js->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&js->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&js->n_tasks, n_tasks, memory_order_relaxed);
    atomic_store_explicit(&mm_pool.completed, 0, memory_order_relaxed);
    atomic_store_explicit(&mm_pool.claim, (uint64_t)g << 32, memory_order_release);
    mm_pool_publish();                      // gen = g, wakes sleepers
    mm_in_pool = 1;
    mm_run_tasks(g);
    mm_in_pool = 0;
    // the one barrier per job: wait for tasks that workers claimed and are still running
    // (sched_yield now and then: on an oversubscribed machine the worker may be waiting for our core)
    for (unsigned spins = 1; atomic_load_explicit(&mm_pool.completed, memory_order_acquire) < n_tasks; spins++) {
        mm_cpu_relax();
        if ((spins & 4095) == 0) sched_yield();     // every 4096 spins (mask 4095)
    }
}

#if defined(__aarch64__)
// ----------------------------------------------------------------------------
// ARM64 CPU features (the kernels are in "ARM64 kernels" below; x86 detection is in the next section)
// Three levels, each including the one before it:
//   MM_ARM_NEON     AdvSIMD, which every ARMv8-A core has (Cortex-A53/A57/A72, Graviton 1, Raspberry Pi 4)
//   MM_ARM_DOTPROD  + sdot/udot (FEAT_DotProd: optional from ARMv8.2, mandatory from ARMv8.4):
//                   Cortex-A55/A76 and later, Neoverse N1 (Graviton 2) and later, Apple M1 and later
//   MM_ARM_I8MM     + usdot/smmla (FEAT_I8MM, ARMv8.6): Neoverse V1/N2/V2 (Graviton 3/4), Cortex-A510/A710
//                   and later, Apple M2 and later
// Linux reports the CPU's features in the auxiliary vector (getauxval; qemu-user reports those of
// the emulated -cpu model). LLAVA_ISA=scalar|neon|dotprod|i8mm caps the level (never raises it).
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)     // AT_HWCAP bit: dot product (older glibc headers lack the name)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)       // AT_HWCAP2 bit: int8 matrix multiply
#endif
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif

enum { MM_ARM_SCALAR = 0, MM_ARM_NEON = 1, MM_ARM_DOTPROD = 2, MM_ARM_I8MM = 3 };
static int mm_arm_level = -1;       // level in use, -1 = not detected yet
static int mm_arm_cpu = -1;         // what the CPU has (before LLAVA_ISA)

#if defined(__APPLE__)
static int mm_arm_sysctl(const char* name) {   // 1 if the hw.optional.arm.* flag is set (untested here)
    int v = 0;
    size_t len = sizeof v;
    return sysctlbyname(name, &v, &len, NULL, 0) == 0 && v;
}
#endif

static void mm_detect_arm(void) {
    if (mm_arm_level >= 0) return;
    int level = MM_ARM_NEON;        // AArch64 always has AdvSIMD
#if defined(__linux__)
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    if (hw & HWCAP_ASIMDDP) level = MM_ARM_DOTPROD;
    if (level == MM_ARM_DOTPROD && (hw2 & HWCAP2_I8MM)) level = MM_ARM_I8MM;
#elif defined(__APPLE__)
    if (mm_arm_sysctl("hw.optional.arm.FEAT_DotProd")) level = MM_ARM_DOTPROD;
    if (level == MM_ARM_DOTPROD && mm_arm_sysctl("hw.optional.arm.FEAT_I8MM")) level = MM_ARM_I8MM;
#endif
    mm_arm_cpu = level;
    const char* env = getenv("LLAVA_ISA");
    static const char* names[] = { "scalar", "neon", "dotprod", "i8mm" };   // indexed by MM_ARM_* level
    // a name lowers the level only if it names one below what the CPU has; unknown names do nothing
    for (int l = 0; env && l < 4; l++)
        if (strcmp(env, names[l]) == 0 && l < level) level = l;
    mm_arm_level = level;
}

// matmul_set_isa on ARM: `level` is an MM_ARM_* level, capped at what the CPU has (LLAVA_ISA is
// read again, so it stays a cap).
static void mm_arm_set_level(int level) {
    mm_arm_level = -1;
    mm_detect_arm();
    if (level < mm_arm_level) mm_arm_level = level < 0 ? 0 : level;
}

static const char* mm_arm_name(void) {
    mm_detect_arm();
    static const char* names[] = { "scalar", "neon", "neon+dotprod", "neon+dotprod+i8mm" };
    return names[mm_arm_level];
}
#endif // __aarch64__

// ----------------------------------------------------------------------------
// CPU features, run-time dispatch

// Levels, lowest to highest. Each level may use everything below it (AVX-512 machines run the AVX2
// int8 kernels when they lack AVX512-VNNI, for example).
//   MM_SCALAR   portable C (matmul_ref's loops, threaded)
//   MM_AVX2     AVX2 + FMA, 16 ymm registers: f32/bf16 FMA tiles, int8 dots with vpmaddubsw + vpmaddwd
//   MM_AVXVNNI  MM_AVX2 + AVX-VNNI (VEX-encoded vpdpbusd on ymm: Alder Lake and later, Zen 5)
//   MM_AVX512   AVX-512 F/BW/VL/DQ, 32 zmm registers; optionally AVX512-VNNI and AVX512-BF16
enum { MM_SCALAR = 0, MM_AVX2 = 1, MM_AVXVNNI = 2, MM_AVX512 = 3 };
static int mm_isa = -1;                     // MM_SCALAR .. MM_AVX512, -1 = not detected yet
static int mm_has_vnni, mm_has_bf16;        // AVX512-VNNI, AVX512-BF16 (only with MM_AVX512)
static int mm_cpu_avxvnni;                  // the CPU has AVX-VNNI (ymm vpdpbusd), whatever the level

static void mm_detect_isa(void) {
    if (mm_isa >= 0) return;
    int isa = MM_SCALAR, vnni = 0, bf16 = 0, avxvnni = 0;
#if MM_X86
    __builtin_cpu_init();
    unsigned a = 0, b = 0, c = 0, d = 0;    // CPUID.(7,1):EAX bit 4 = AVX-VNNI, bit 5 = AVX512_BF16
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) { avxvnni = (a >> 4) & 1; bf16 = (a >> 5) & 1; }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = MM_AVX2;
    if (isa == MM_AVX2 && avxvnni) isa = MM_AVXVNNI;
    if (isa >= MM_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        isa = MM_AVX512;
        vnni = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
    }
    if (isa < MM_AVX2) avxvnni = 0;         // VEX ymm instructions need the OS's AVX state too
#endif
    const char* env = getenv("LLAVA_ISA");  // cap only, never raise
    if (env) {
        int cap = !strcmp(env, "scalar") ? MM_SCALAR : !strcmp(env, "avx2") ? MM_AVX2
                : !strcmp(env, "avxvnni") ? MM_AVXVNNI : MM_AVX512;
        if (cap < isa) isa = cap;
        // AVX512 and AVX-VNNI are independent extensions: a cap at avxvnni on a CPU with AVX-512 but
        // without AVX-VNNI (Ice Lake, Zen 4) leaves AVX2
        if (isa == MM_AVXVNNI && !avxvnni) isa = MM_AVX2;
    }
    if (isa < MM_AVX512) vnni = bf16 = 0;
    mm_has_vnni = vnni;
    mm_has_bf16 = bf16;
    mm_cpu_avxvnni = avxvnni;
    mm_isa = isa;
}

// For tests and benchmarks: cap the instruction set (level MM_*, vnni/bf16 0/1) at run time.
// Matrices packed under any level work under any other (the packed layout is shared).
void matmul_set_isa(int level, int vnni, int bf16) {
#if defined(__aarch64__)
    mm_arm_set_level(level);        // ARM: level is MM_ARM_SCALAR..MM_ARM_I8MM
#endif
    mm_isa = -1;
    mm_detect_isa();
    if (level < mm_isa) mm_isa = level;
    if (mm_isa == MM_AVXVNNI && !mm_cpu_avxvnni) mm_isa = MM_AVX2;
    mm_has_vnni = mm_isa == MM_AVX512 && vnni && mm_has_vnni;
    mm_has_bf16 = mm_isa == MM_AVX512 && bf16 && mm_has_bf16;
}

const char* matmul_isa_name(void) {
#if defined(__aarch64__)
    return mm_arm_name();
#endif
    mm_detect_isa();
    if (mm_isa == MM_AVX512)
        return mm_has_vnni && mm_has_bf16 ? "avx512+vnni+bf16" : mm_has_vnni ? "avx512+vnni"
             : mm_has_bf16 ? "avx512+bf16" : "avx512";
    return mm_isa == MM_AVXVNNI ? "avx2+fma+avxvnni" : mm_isa == MM_AVX2 ? "avx2+fma" : "scalar";
}

#if MM_X86
#define MM_TGT_AVX2 __attribute__((target("avx2,fma")))
#define MM_TGT_AVXVNNI __attribute__((target("avx2,fma,avxvnni")))
#define MM_TGT_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define MM_TGT_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512vnni")))
#define MM_TGT_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,avx512bf16")))
#endif
#define MM_INLINE static inline __attribute__((always_inline))

// ----------------------------------------------------------------------------
// Small helpers


// Quantize one group of activations to int8: scale = absmax/127, q = rint(x*127/absmax), and
// return sum(q) (for the VNNI offset compensation). An all-zero group (or one below 1e-30, where
// 127/absmax would overflow) gets scale 0 and zeros (no division by zero); a group with inf/NaN gets zeros and an inf/NaN scale, so it poisons its
// outputs (NaN) instead of producing garbage. This is THE definition; the SIMD quantizer matches it bit
// for bit (rint = vcvtps2dq under the default rounding mode).
int32_t mm_quantize_group(const float* x, int G, int8_t* q, float* scale) {
    float amax = 0.0f;
    int nan = 0;
    for (int k = 0; k < G; k++) {
        float a = fabsf(x[k]);
        if (a != a) nan = 1;
        else if (a > amax) amax = a;
    }
    // 3.4028235e38f is FLT_MAX: an amax above it is +inf (the same test appears in every quantizer)
    if (nan || amax < 1e-30f || amax > 3.4028235e38f) {
        memset(q, 0, (size_t)G);
        *scale = nan ? NAN : amax < 1e-30f ? 0.0f : INFINITY;
        return 0;
    }
    // 127, not 128: a symmetric range -127..127, so -q never overflows an int8 (the AVX2 kernels
    // negate q with vpsignb) and the largest element maps to exactly +-127
    float iscale = 127.0f / amax;
    int32_t sum = 0;
    for (int k = 0; k < G; k++) {
        float v = rintf(x[k] * iscale);
        // x * (127/amax) can round to a hair above 127 for the largest element: clamp
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[k] = (int8_t)v;
        sum += q[k];
    }
    *scale = amax / 127.0f;
    return sum;
}

// Aligned allocation for packed weights and scratch. 64 bytes = one cache line = one zmm, so aligned
// zmm loads (vmovdqa64, _mm512_load_*) are legal; buffers of 4 MB and more get 2 MB alignment (the
// x86-64 huge page size) so that transparent huge pages can back them: fewer TLB misses while a
// GEMV streams gigabytes of weights.
static void* mm_alloc(size_t bytes) {
    size_t align = bytes >= ((size_t)4 << 20) ? ((size_t)2 << 20) : 64;   // 2 MB for huge pages
    size_t size = align_up(bytes, align);  // C11 aligned_alloc wants a multiple of the alignment
    void* p = aligned_alloc(align, size ? size : align);
    if (!p) fatal("out of memory allocating %zu bytes of kernel scratch", bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align > 64) madvise(p, size, MADV_HUGEPAGE);    // THP is madvise-only on the target VM
#endif
    return p;
}

static inline int mm_min(int a, int b) { return a < b ? a : b; }

// ----------------------------------------------------------------------------
// Reference matmul (plain scalar, the definition of every type)

static void mm_check(const Matrix* w) {
    if (w->type != DT_F32 && w->type != DT_BF16 && w->type != DT_Q8 && w->type != DT_Q4) {
        fatal("matmul: unknown weight type %d", (int)w->type);
    }
    if (w->rows < 0 || w->cols < 0) {
        fatal("matmul: bad matrix shape %d x %d", w->rows, w->cols);
    }
    if (w->type == DT_Q8 && (w->group <= 0 || w->cols % w->group != 0)) {
        fatal("matmul: q8 group size %d does not divide cols %d", w->group, w->cols);
    }
    if (w->type == DT_Q4 && (w->group <= 0 || w->group % MM_Q4_GROUP_MULT != 0 || w->cols % w->group != 0)) {
        fatal("matmul: q4 group size %d is not a multiple of %d dividing cols %d", w->group, MM_Q4_GROUP_MULT, w->cols);
    }
}

// The q4 weight w[n][k] as an integer -8..7 (the nibble minus the offset).
static inline int mm_q4_weight(const Matrix* w, int n, int k) {
    uint8_t b = ((const uint8_t*)w->data)[((size_t)n * w->cols + k) / 2];
    return (k & 1 ? b >> 4 : b & 0x0f) - MM_Q4_OFFSET;
}

// q4 reference, THE definition of the q4 arithmetic that every SIMD level reproduces bit for bit:
// each row of x is quantized per group by mm_quantize_group (the q8 kernels' activation
// quantization), each group's dot of the int weights with the int8 activations is an exact integer,
// and the output adds them in group order as f = fma(float(dot), scale_w * scale_x, f) -- the q8
// SIMD kernels' epilogue. (Unlike q8, whose reference keeps f32 activations: a q4 weight carries far
// more error than the activation rounding, and one exact definition makes every level testable bit
// for bit.) y[t][n] for t in [0, T), n in [n0, n1).
static void mm_ref_cols_q4(float* y, const float* x, const Matrix* w, int T, int n0, int n1) {
    int N = w->rows, K = w->cols, G = w->group, ng = K / G;
    int8_t* q = malloc((size_t)K + 1);
    float* sx = malloc((size_t)ng * sizeof(float) + 1);
    if (!q || !sx) fatal("out of memory in the q4 reference matmul");
    for (int t = 0; t < T; t++) {
        for (int g = 0; g < ng; g++)
            (void)mm_quantize_group(x + (size_t)t * K + (size_t)g * G, G, q + (size_t)g * G, &sx[g]);
        for (int n = n0; n < n1; n++) {
            float f = 0.0f;
            for (int g = 0; g < ng; g++) {
                int32_t dot = 0;        // |dot| <= G * 8 * 127: exact in int32 for any group we allow
                for (int k = g * G; k < (g + 1) * G; k++) dot += mm_q4_weight(w, n, k) * q[k];
                float sw = bf16_to_f32(w->scales_bf16[(size_t)n * ng + g]);
                f = fmaf((float)dot, sw * sx[g], f);
            }
            y[(size_t)t * N + n] = f;
        }
    }
    free(q);
    free(sx);
}

// y[t][n] for t in [0, T), n in [n0, n1): accumulation in k order; q8 sums each group in f32, then
// adds scale * group sum (weights dequantized, activations f32).
static void mm_ref_cols(float* y, const float* x, const Matrix* w, int T, int n0, int n1) {
    if (w->type == DT_Q4) { mm_ref_cols_q4(y, x, w, T, n0, n1); return; }
    int N = w->rows, K = w->cols;
    for (int t = 0; t < T; t++) {
        const float* xt = x + (size_t)t * K;
        for (int n = n0; n < n1; n++) {
            float sum = 0.0f;
            if (w->type == DT_F32) {
                const float* wn = (const float*)w->data + (size_t)n * K;
                for (int k = 0; k < K; k++) sum += wn[k] * xt[k];
            } else if (w->type == DT_BF16) {
                const uint16_t* wn = (const uint16_t*)w->data + (size_t)n * K;
                for (int k = 0; k < K; k++) sum += bf16_to_f32(wn[k]) * xt[k];
            } else {
                int G = w->group, ng = K / G;
                const int8_t* wn = (const int8_t*)w->data + (size_t)n * K;
                const float* sn = w->scales + (size_t)n * ng;
                for (int g = 0; g < ng; g++) {
                    float gs = 0.0f;
                    for (int k = g * G; k < (g + 1) * G; k++) gs += (float)wn[k] * xt[k];
                    sum += sn[g] * gs;
                }
            }
            y[(size_t)t * N + n] = sum;
        }
    }
}

void matmul_ref(float* y, const float* x, const Matrix* w, int T) {
    mm_check(w);
    mm_ref_cols(y, x, w, T, 0, w->rows);
}

// ----------------------------------------------------------------------------
// Weight packing (once, at load)
// Columns (output features) are grouped in panels of 32, zero-padded past N, each panel contiguous:
//   f32   [np][K][32]        f32
//   bf16  [np][K2/2][32]     uint32 = (bf16 of k even) | (bf16 of k odd) << 16, K2 = K rounded up to even
//   q8    [np][K/4][32]      uint32 = 4 bytes u8 = w+128 for k..k+3 (the vpdpbusd lane), scales
//                            [np][K/G][32] f32 (0 in padded columns)
//   q4    [np][K/8][32]      uint32 = 8 nibbles u = w+8 for k..k+7: byte j (j = 0..3) holds k+j in
//                            its low nibble and k+4+j in its high nibble, so `word & 0x0f0f0f0f`
//                            is the u8 vpdpbusd lane of k..k+3 and `(word >> 4) & 0x0f0f0f0f` that
//                            of k+4..k+7: two q8-layout words per load, unpacked by an and and a
//                            shift. Scales [np][K/G][32] bf16 (0 in padded columns, whose nibbles are 8)
// One zmm load = 16 columns x (1, 2, 4 or 8) consecutive k: lanes are output columns, so no kernel
// ever needs a horizontal sum. GEMM and GEMV read the same panels.

typedef struct {
    int np;             // panels = ceil(N / 32)
    int kw;             // 32-bit words per panel row: K (f32), K2/2 (bf16), K/4 (q8), K/8 (q4)
    int ng, G;          // q8, q4: groups per row, group size
    void* w;            // (np, kw, 32) 32-bit words
    float* s;           // q8: (np, ng, 32)
    uint16_t* s16;      // q4: (np, ng, 32) bf16 scales
    int borrowed;       // w, s, s16 belong to someone else (matrix_use_panels: the mapped file)
} MMPacked;

typedef struct { const Matrix* m; MMPacked* p; int n_tasks; } MMPackCtx;   // pack_matrix's task context

// Pack the panels [pa, pb) of task `task`: a transpose (the source is row-major W (N, K), a panel
// is k-major with the 32 columns innermost), so stores are strided; it runs once per matrix at load.

static void mm_pack_task(void* vctx, int task) {
    MMPackCtx* c = vctx;
    const Matrix* m = c->m;
    MMPacked* p = c->p;
    int N = m->rows, K = m->cols;
    int pa = (int)((long long)p->np * task / c->n_tasks), pb = (int)((long long)p->np * (task + 1) / c->n_tasks);
    for (int pi = pa; pi < pb; pi++) {
        uint32_t* dst = (uint32_t*)p->w + (size_t)pi * p->kw * 32;     // panel pi: (kw, 32) words
        for (int c32 = 0; c32 < 32; c32++) {
            int n = pi * 32 + c32;                                      // output feature; >= N: padding
            if (m->type == DT_F32) {
                const float* src = (const float*)m->data + (size_t)n * K;
                float* d = (float*)dst;
                for (int k = 0; k < K; k++) d[(size_t)k * 32 + c32] = n < N ? src[k] : 0.0f;
            } else if (m->type == DT_BF16) {
                const uint16_t* src = (const uint16_t*)m->data + (size_t)n * K;
                for (int kk = 0; kk < p->kw; kk++) {
                    uint32_t lo = n < N ? src[2 * kk] : 0;
                    uint32_t hi = n < N && 2 * kk + 1 < K ? src[2 * kk + 1] : 0;
                    dst[(size_t)kk * 32 + c32] = lo | hi << 16;
                }
            } else if (m->type == DT_Q4) {
                for (int kb = 0; kb < p->kw; kb++) {
                    uint32_t word = 0;
                    for (int j = 0; j < 4; j++) {
                        // padding columns hold u = 8, a zero weight (and scale 0 besides)
                        uint32_t lo = n < N ? (uint32_t)(mm_q4_weight(m, n, 8 * kb + j) + MM_Q4_OFFSET) : MM_Q4_OFFSET;
                        uint32_t hi = n < N ? (uint32_t)(mm_q4_weight(m, n, 8 * kb + 4 + j) + MM_Q4_OFFSET) : MM_Q4_OFFSET;
                        word |= (lo | hi << 4) << (8 * j);
                    }
                    dst[(size_t)kb * 32 + c32] = word;
                }
                for (int g = 0; g < p->ng; g++)
                    p->s16[((size_t)pi * p->ng + g) * 32 + c32] = n < N ? m->scales_bf16[(size_t)n * p->ng + g] : 0;
            } else {
                const int8_t* src = (const int8_t*)m->data + (size_t)n * K;
                for (int kq = 0; kq < p->kw; kq++) {
                    // byte j of the word (bits 8j..8j+7, byte j in memory: little-endian) = k 4kq+j;
                    // +128 maps s8 -128..127 to u8 0..255, the unsigned operand of vpdpbusd / usdot
                    // (padding columns hold 128 = a zero weight, and scale 0 besides)
                    uint32_t word = 0;
                    for (int j = 0; j < 4; j++)
                        word |= (uint32_t)(uint8_t)((n < N ? src[4 * kq + j] : 0) + 128) << (8 * j);
                    dst[(size_t)kq * 32 + c32] = word;
                }
                for (int g = 0; g < p->ng; g++)
                    p->s[((size_t)pi * p->ng + g) * 32 + c32] = n < N ? m->scales[(size_t)n * p->ng + g] : 0.0f;
            }
        }
    }
}

// The panel geometry of w (np, kw, G, ng), and whether the kernels of this CPU read w in panels:
// every type at every SIMD level (x86 AVX2 and up, ARM64 NEON), except q8 groups that are not a
// multiple of 4 (they take the portable path; model files never have them).
static int mm_panel_shape(const Matrix* w, MMPacked* p) {
    p->np = (w->rows + 31) / 32;
    p->kw = w->type == DT_F32 ? w->cols : w->type == DT_BF16 ? (w->cols + 1) / 2
          : w->type == DT_Q8 ? w->cols / 4 : w->cols / 8;
    int grouped = w->type == DT_Q8 || w->type == DT_Q4;
    p->G = grouped ? w->group : 0;
    p->ng = grouped ? w->cols / w->group : 0;
    mm_detect_isa();
    int simd = mm_isa != MM_SCALAR;
#if defined(__aarch64__)
    mm_detect_arm();
    simd = mm_arm_level > MM_ARM_SCALAR;    // ARM64: the NEON kernels read the same panels
#endif
    return simd && w->rows > 0 && w->cols > 0 && !(w->type == DT_Q8 && w->group % 4 != 0);
}

// Pack W for the SIMD kernels (keeps w->data; frees nothing). No-op without AVX2, for q8 groups that
// are not a multiple of 4 (they use the portable path), or if already packed.
void pack_matrix(Matrix* w) {
    mm_check(w);
    MMPacked shape = {0};
    if (w->packed || !mm_panel_shape(w, &shape)) return;
    MMPacked* p = calloc(1, sizeof(MMPacked));
    if (!p) fatal("out of memory packing a matrix");
    *p = shape;
    p->w = mm_alloc((size_t)p->np * p->kw * 32 * 4);       // (np, kw, 32) 4-byte words
    if (w->type == DT_Q8) p->s = mm_alloc((size_t)p->np * p->ng * 32 * sizeof(float));
    if (w->type == DT_Q4) p->s16 = mm_alloc((size_t)p->np * p->ng * 32 * sizeof(uint16_t));
    MMPackCtx c = { w, p, pool_size() * 4 };    // 4 tasks per thread: uneven progress evens out
    pool_for(c.n_tasks, mm_pack_task, &c);
    w->packed = p;
}

// Free what pack_matrix allocated (w->data is untouched; panels lent by matrix_use_panels are not
// freed, only forgotten).
void unpack_matrix(Matrix* w) {
    MMPacked* p = w->packed;
    if (!p) return;
    if (!p->borrowed) {
        free(p->w);
        free(p->s);
        free(p->s16);
    }
    free(p);
    w->packed = NULL;
}

// ---- Panels stored in the model file (format 2, export.py writes them in the layout above)
// A file in the kernels' own layout loads by mmap alone: the kernels read the mapped pages in place.
// The portable loop (LLAVA_ISA=scalar, CPUs without SIMD kernels) and the GPU upload read rows, so
// for them matrix_panels_to_rows undoes the packing once.

// Bytes of w's panels and of their scales (q8: f32, q4: bf16; 0 for f32 and bf16), as stored.
// In 64 bits: a model loader checks them against the file before anything is allocated or mapped.
void matrix_panel_bytes(const Matrix* w, uint64_t* data, uint64_t* scales) {
    MMPacked p = {0};
    mm_panel_shape(w, &p);
    *data = (uint64_t)p.np * p.kw * 32 * 4;
    *scales = (uint64_t)p.np * p.ng * 32 * (w->type == DT_Q8 ? sizeof(float) : w->type == DT_Q4 ? sizeof(uint16_t) : 0);
}

// Lets the kernels read w from panels that the caller keeps alive (the mapped file; 64-byte
// aligned). Returns 0, and sets nothing, when this CPU's kernels do not read panels.
int matrix_use_panels(Matrix* w, const void* data, const void* scales) {
    mm_check(w);
    MMPacked shape = {0};
    if (w->packed || !mm_panel_shape(w, &shape)) return 0;
    MMPacked* p = calloc(1, sizeof(MMPacked));
    if (!p) fatal("out of memory loading a matrix");
    *p = shape;
    p->borrowed = 1;
    p->w = (void*)data;
    if (w->type == DT_Q8) p->s = (float*)scales;
    if (w->type == DT_Q4) p->s16 = (uint16_t*)scales;
    w->packed = p;
    return 1;
}

// The inverse of mm_pack_task: w's rows in the row layout of Matrix (data: matrix_data_bytes, row
// scales: rows x cols/group) from its stored panels. The padding columns are dropped.
void matrix_panels_to_rows(const Matrix* w, const void* panels, const void* panel_scales, void* data, void* scales) {
    MMPacked p = {0};
    mm_panel_shape(w, &p);
    int N = w->rows, K = w->cols;
    for (int n = 0; n < N; n++) {
        const uint32_t* src = (const uint32_t*)panels + (size_t)(n / 32) * p.kw * 32 + n % 32;   // column n, k-step 0
        for (int kk = 0; kk < p.kw; kk++) {
            uint32_t word = src[(size_t)kk * 32];
            if (w->type == DT_F32) {
                memcpy((float*)data + (size_t)n * K + kk, &word, 4);
            } else if (w->type == DT_BF16) {
                uint16_t* d = (uint16_t*)data + (size_t)n * K;
                d[2 * kk] = (uint16_t)word;
                if (2 * kk + 1 < K) d[2 * kk + 1] = (uint16_t)(word >> 16);
            } else if (w->type == DT_Q8) {
                for (int j = 0; j < 4; j++) ((int8_t*)data)[(size_t)n * K + 4 * kk + j] = (int8_t)((word >> 8 * j & 0xff) - 128);
            } else {    // q4: nibble pairs (2i, 2i+1) per byte, from the word's k..k+3 low / k+4..k+7 high nibbles
                uint8_t u[8];
                for (int j = 0; j < 4; j++) { u[j] = word >> 8 * j & 0x0f; u[4 + j] = word >> (8 * j + 4) & 0x0f; }
                uint8_t* d = (uint8_t*)data + ((size_t)n * K + 8 * (size_t)kk) / 2;
                for (int i = 0; i < 4; i++) d[i] = (uint8_t)(u[2 * i] | u[2 * i + 1] << 4);
            }
        }
        for (int g = 0; g < p.ng; g++) {
            size_t at = ((size_t)(n / 32) * p.ng + g) * 32 + n % 32;
            if (w->type == DT_Q8) ((float*)scales)[(size_t)n * p.ng + g] = ((const float*)panel_scales)[at];
            else ((uint16_t*)scales)[(size_t)n * p.ng + g] = ((const uint16_t*)panel_scales)[at];
        }
    }
}

// ----------------------------------------------------------------------------
// Jobs shared by all paths

// Tile rows are set by the 32 zmm registers: a 32-column panel is 2 zmm per row, so 14 rows make
// 28 accumulators, + 2 weight vectors + 1 broadcast = 31. q8 needs an int32 dot and an f32 sum per
// output (the group epilogue), 4 registers per row: 6 rows = 24 + the 2 weights (zmm30/31).
#define MM_F32_MR 14    // GEMM tile rows, f32 and bf16 (28 zmm accumulators)
#define MM_Q8_MR 6      // GEMM tile rows, q8 (12 int32 + 12 f32 accumulators)
#define MM_F32_NCP 8    // panels per weight block (NC = 256 columns): the block streams from L2/L3
#define MM_BF16_NCP 16  // NC = 512
#define MM_Q8_NCP 8     // at most 8 panels (NC = 256) per weight block (Zen 5, full-rate 512-bit VNNI: 20
                        // panels, 2.6 MB at K = 4096, streamed from L3 for every row tile and ran 3-7 points
                        // of the peak slower), and fewer where K is large:
// The q8 weight block: at most half of the L2 (mm_l2_bytes; at least 2 panels): on a 1 MB L2, 4 panels
// at K = 4096 and 2 at K = 11008, so the block stays in L2 for every row tile.
// And the row tiles go in groups of ~4 MB of packed activations (1024 rows at K = 4096; mm_q8_group_bytes,
// a knob for the tests), all weight blocks of one group before the next: the tasks re-read a group once
// per block, from L3, instead of the whole T x K from DRAM. Zen 5, 2 threads, q8 GEMM medians of 4
// interleaved runs: 1.4-8.6% faster on the 7B and CLIP shapes (T = 1170 4096 -> 4096: 28.5 -> 26.3 ms),
// none slower.
#define MM_TBLK 32      // GEMV/widening paths: rows per block (x block stays in L2)

// Largest T that uses the GEMV path on AVX-512 machines, per DType. Above it the packed GEMM wins:
// for f32/bf16 GEMM tiles are 14 rows so a few-row GEMM would waste most of each tile; for q8 the
// VNNI GEMV (up to 3 rows per pass) beats the 6-row GEMM tile at T = 2, 3 and loses at T = 4
// (measured; T = 4 would take two passes over each panel).
// (These knobs and the scratch/schedule helpers below serve the x86 paths; `unused` keeps other
// targets' builds warning-free, where bench.c and the tests still set them.)
#define MM_X86_ONLY __attribute__((unused))
static int mm_gemv_max_t[3] MM_X86_ONLY = { 7, 7, 3 };   // indexed by DType: f32, bf16, q8
static size_t mm_q8_group_bytes MM_X86_ONLY = 4u << 20;   // AVX-512 q8 GEMM: row group size (MM_Q8_NCP)

// The L2 cache of one core in bytes, as the C library reports it (glibc: sysconf), else 1 MB.
static MM_X86_ONLY size_t mm_l2_bytes(void) {
    static size_t bytes;
    if (!bytes) {
        long b = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
        b = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        bytes = b >= (64 << 10) && b <= (64l << 20) ? (size_t)b : 1u << 20;
    }
    return bytes;
}
static int mm_q8_gemv_vnni MM_X86_ONLY = 1;  // q8 GEMV: 1 = quantize x + vpdpbusd (with VNNI), 0 = widening (knob for bench/tests)
static int mm_gemv_tpt MM_X86_ONLY = 8;       // f32/bf16/widening GEMV tasks (panel chunks) per thread
static int mm_gemv_guided MM_X86_ONLY = 1;    // q8 VNNI GEMV: guided chunks (1) or mm_gemv_tpt equal chunks (0)
#define MM_MAX_GUIDED 256         // guided schedule: at most this many tasks (bounds[] lives on the stack)

// matmul_rows' source of activations: writes row t of x (K floats) to `row`. Called from several
// threads at once, each row once.
typedef void (*MMRowFn)(const void* ctx, int t, float* row);

// matmul_then's epilogue: fn(ctx, y, ldy, t0, t1, c0, c1) updates the block rows [t0, t1) x columns
// [c0, c1) of y (row t at y + t * ldy); the blocks tile y, each element in exactly one. Called from
// several threads at once, on different blocks. It must compute each element from that element (and
// its row and column) alone: then the results do not depend on how y is cut into blocks.
typedef void (*MMBlockFn)(const void* ctx, float* y, size_t ldy, int t0, int t1, int c0, int c1);

typedef struct {
    float* y;               // (T, N)
    const float* x;         // (T, K)
    const Matrix* w;
    const MMPacked* p;
    int T, N, K;
    int n_tasks;            // tasks of the current phase
    int chunk;              // panels per task (tasks are claimed dynamically: a thread that the OS
                            // deschedules does not hold up the others; results do not depend on who
                            // runs a task)
    int ntiles;             // GEMM row tiles
    int tpg;                // AVX-512 GEMM: row tiles per row group (task t = row group t / blocks,
                            // weight block t % blocks; ntiles: one group)
    void* a;                // GEMM packed activations (see mm_pack_act_*)
    float* as;              // q8: activation scales (ntiles, ng, 6)
    int32_t* ac;            // q8: compensation -128 * sum(q) (ntiles, ng, 6)
    const int* bounds;      // if set: task t covers panels [bounds[t], bounds[t+1]) (guided schedule)
    int mr;                 // AVX2 GEMM: tile rows (MM_A2_MR, MM_A2_Q8_MR or MM_AVNNI_MR)
    int avxvnni;            // AVX2 q8 GEMM: 1 = AVX-VNNI kernel, 0 = vpmaddwd (int16) kernel
    int8_t* q;              // AVX2 q8: quantized activations (T rounded up to tiles, K) row-major
    float* asr;             // AVX2 q8: their scales (rows, ng) row-major
    int32_t* acr;           // AVX2 q8: their compensation -128 * sum(q) (rows, ng) row-major
    MMRowFn row_fn;         // matmul_rows: row t of x is row_fn(row_ctx, t, out) (x is NULL until
    const void* row_ctx;    // mm_materialize makes it, on the paths that do not pack row tiles)
    MMBlockFn post;         // matmul_then: the epilogue on every block of y, or NULL
    const void* post_ctx;
    int post_done;          // set by the GEMMs that call post on their tiles (else mm_run does, after)
} MMJob;

// A GEMM task's epilogue: post on the rows t0..t0+mr-1 of panels [p0, p1) just computed.
static inline void mm_post_tile(const MMJob* j, int t0, int mr, int p0, int p1) {
    if (j->post) j->post(j->post_ctx, j->y, j->N, t0, t0 + mr, p0 * 32, mm_min(p1 * 32, j->N));
}

// Words per (k4 step, row) of the AVX2 packer's activation tiles: 2 (int16 pairs) for the q8 vpmaddwd
// kernel, 1 (4 s8) for the AVX-VNNI kernel and every q4 kernel.
static inline int mm_a2_words(const MMJob* j) { return j->w->type == DT_Q8 && !j->avxvnni ? 2 : 1; }

// contiguous share [*a, *b) of n items for task `task` of n_tasks
static inline void mm_split(int n, int task, int n_tasks, int* a, int* b) {
    *a = (int)((long long)n * task / n_tasks);
    *b = (int)((long long)n * (task + 1) / n_tasks);
}

// panels [*p0, *p1) of a task
static inline void mm_task_panels(const MMJob* j, int task, int* p0, int* p1) {
    if (j->bounds) { *p0 = j->bounds[task]; *p1 = j->bounds[task + 1]; return; }
    *p0 = task * j->chunk;
    *p1 = mm_min(j->p->np, *p0 + j->chunk);
}

// The AVX-512 int8 GEMMs' (q8, q4) tasks: weight blocks of at most half the L2 (at least 2 panels,
// at most MM_Q8_NCP: see there) times groups of row tiles of ~mm_q8_group_bytes packed activations.
// panel_bytes: one panel's weight bytes; tile_bytes: one row tile's packed activation bytes.
static MM_X86_ONLY void mm_int8_blocks(MMJob* j, size_t panel_bytes, size_t tile_bytes) {
    int np = j->p->np, nth = pool_size(), ncp = (int)(mm_l2_bytes() / 2 / panel_bytes);
    ncp = ncp < 2 ? 2 : ncp > MM_Q8_NCP ? MM_Q8_NCP : ncp;
    j->chunk = mm_min(ncp, (np + nth - 1) / nth);
    j->tpg = mm_min(j->ntiles, (int)(mm_q8_group_bytes / tile_bytes) + 1);
    j->n_tasks = (np + j->chunk - 1) / j->chunk * ((j->ntiles + j->tpg - 1) / j->tpg);
    j->bounds = NULL;
}

// Task `task` of a GEMM split by mm_int8_blocks (or with tpg = ntiles, by weight block alone): panels
// [*p0, *p1) of weight block task % blocks, row tiles [*i0, *i1) of row group task / blocks.
static inline void mm_task_tiles(const MMJob* j, int task, int* p0, int* p1, int* i0, int* i1) {
    int blocks = (j->p->np + j->chunk - 1) / j->chunk;
    mm_task_panels(j, task % blocks, p0, p1);
    *i0 = task / blocks * j->tpg;
    *i1 = mm_min(j->ntiles, *i0 + j->tpg);
}

static void* mm_scratch;            // GEMM packed activations, grown on demand, reused across calls
static size_t mm_scratch_bytes;

// Scratch of `need` bytes: the shared buffer *buf (of *bytes, grown when too small), or (own: a nested
// call from inside a pool task) a private one that the caller frees.
static void* mm_scratch_in(void** buf, size_t* bytes, size_t need, int own) {
    if (own) return mm_alloc(need);
    if (need > *bytes) {
        free(*buf);                         // contents need not survive: every call rewrites them
        *bytes = need + need / 4;           // 25 % headroom: a slightly larger T next call reuses it
        *buf = mm_alloc(*bytes);
    }
    return *buf;
}

MM_X86_ONLY static void* mm_get_scratch(size_t need, int own) {
    return mm_scratch_in(&mm_scratch, &mm_scratch_bytes, need, own);
}

// Per-thread scratch, grown or reused as mm_scratch_in's: one buffer per slot and thread (matmul_rows'
// tile rows, kernels.c's attention blocks), freed when the thread ends by the destructor of a pthread
// key (the pool's workers end at every pool_init that changes the thread count; a _Thread_local pointer
// would lose their buffers).
enum { MM_TLS_TILE_ROWS, MM_TLS_ATTN, MM_TLS_SLOTS };
typedef struct { void* buf[MM_TLS_SLOTS]; size_t bytes[MM_TLS_SLOTS]; } MMThreadScratch;
static pthread_key_t mm_tls_key;
static pthread_once_t mm_tls_once = PTHREAD_ONCE_INIT;
static void mm_tls_free(void* v) {
    MMThreadScratch* s = v;
    for (int i = 0; i < MM_TLS_SLOTS; i++) free(s->buf[i]);
    free(s);
}
static void mm_tls_init(void) {
    if (pthread_key_create(&mm_tls_key, mm_tls_free)) fatal("pthread_key_create failed");
}
static inline void* mm_thread_scratch(int slot, size_t need) {
    pthread_once(&mm_tls_once, mm_tls_init);
    MMThreadScratch* s = pthread_getspecific(mm_tls_key);
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s || pthread_setspecific(mm_tls_key, s)) fatal("out of memory allocating thread scratch");
    }
    return mm_scratch_in(&s->buf[slot], &s->bytes[slot], need, 0);
}

// The activation rows t0..t0+mr-1 of a GEMM row tile, as one (mr, K) block: x itself, or (matmul_rows)
// rows made by the caller's function into this thread's buffer, where the packer quantizes or packs
// them while they are in L1/L2 -- they never go to memory as a (T, K) matrix.
MM_X86_ONLY static const float* mm_tile_rows(const MMJob* j, int t0, int mr) {
    if (!j->row_fn) return j->x + (size_t)t0 * j->K;
    float* buf = mm_thread_scratch(MM_TLS_TILE_ROWS, (size_t)mr * j->K * sizeof(float));
    for (int i = 0; i < mr; i++) j->row_fn(j->row_ctx, t0 + i, buf + (size_t)i * j->K);
    return buf;
}

// The paths that read x other than by row tiles (GEMV, the portable loop, ARM) get it whole: the rows
// are made into a buffer first (a private one in a nested call), as if the caller had done it.
static void* mm_rows_x;             // matmul_rows' materialized x (not mm_scratch: the GEMVs use that)
static size_t mm_rows_x_bytes;
static void mm_materialize_task(void* v, int t) {
    MMJob* j = v;
    j->row_fn(j->row_ctx, t, (float*)j->x + (size_t)t * j->K);
}
static float* mm_materialize(MMJob* j) {
    if (!j->row_fn) return NULL;
    float* x = mm_scratch_in(&mm_rows_x, &mm_rows_x_bytes, (size_t)j->T * j->K * sizeof(float), mm_in_pool);
    j->x = x;
    pool_for(j->T, mm_materialize_task, j);
    j->row_fn = NULL;
    return mm_in_pool ? x : NULL;   // the caller frees a private buffer
}

// Guided schedule over np panels for the GEMV paths: each task takes 1/(2 nth) of the panels left,
// so the first tasks are long sequential streams and the last ones single panels that even out the
// finish (a decode matmul is only a few MB, so idle time at the join shows). Returns the task count;
// task t covers panels [bounds[t], bounds[t+1]).
MM_X86_ONLY static int mm_guided_bounds(int np, int nth, int bounds[MM_MAX_GUIDED + 1]) {
    int nt = 0, at = 0;
    bounds[0] = 0;
    while (at < np) {
        int c = (np - at + 2 * nth - 1) / (2 * nth);    // ceil(left / (2 nth)), at least 1 panel
        if (nt == MM_MAX_GUIDED - 1) c = np - at;       // out of bounds[] slots: the rest in one task
        at += c;
        bounds[++nt] = at;
    }
    return nt;
}

// Portable path: the reference loops over a column range.
static void mm_task_scalar(void* v, int task) {
    MMJob* j = v;
    int n0, n1;
    mm_split(j->N, task, j->n_tasks, &n0, &n1);
    if (n0 < n1) mm_ref_cols(j->y, j->x, j->w, j->T, n0, n1);
}

#if MM_X86
// ----------------------------------------------------------------------------
// AVX2 level: AVX2 + FMA, and AVX-VNNI where the CPU has it (also the q8 kernels of AVX-512 machines
// without AVX512-VNNI: they give the same bits as every other q8 level).
//
// The same packed panels as AVX-512. A ymm register holds 8 lanes, so one 32-column panel row is 4
// ymm loads; with only 16 ymm registers the GEMM tiles take half a panel (16 columns = 2 ymm) per
// call, and the register budget decides the tile height (written next to each kernel).
//   GEMM (T > mm_gemv_max_t_avx2[type]): activations packed per call into row tiles, then
//     f32   6x16 tile, vfmadd231ps on f32 activations (exact up to summation order);
//     bf16  6x16 tile, bf16 weight pairs widened in registers (shift / and: exact) and FMA'd with
//           f32 activations: matmul_ref's semantics (no bf16 dot instruction before AVX512-BF16);
//     q8    activations quantized per group exactly as on AVX-512 (mm_quantize_group's rounding),
//           exact int32 dot per group, the same f32 epilogue: the same bits as the AVX512-VNNI path.
//           AVX2: 4x16 tile of vpmaddwd on int16; AVX-VNNI: 6x16 tile of ymm vpdpbusd.
//   GEMV (T <= 2: decode): one full panel per step (4 ymm = 128 bytes, sequential), 1 or 2 rows,
//     weights prefetched ahead, guided chunks; q8 uses the same quantized activations and per-group
//     arithmetic as the GEMM (vpmaddubsw on every level: memory bound, so VNNI would not help).

#define MM_A2_MR 6        // f32/bf16 GEMM tile rows: 12 accumulators + 2 weights + 1 broadcast = 15 ymm
#define MM_A2_Q8_MR 4     // q8 vpmaddwd tile rows: 8 acc + 4 weight halves + 2 broadcasts + product + mask = 16
#define MM_AVNNI_MR 6     // q8 AVX-VNNI tile rows: 12 acc + 2 weights + 1 broadcast = 15
#define MM_A2_NCP 8       // panels per weight block (256 columns), as in the AVX-512 GEMM
static int mm_gemv_max_t_avx2[3] = { 2, 2, 2 };   // largest T on the AVX2 GEMV path, per DType
// GEMV weight prefetch distance, bytes (0 = none). One thread on Zen 5 (CPU time, 45 MB+ working
// sets, bench --threads 1 --cpu --pf): 1 KB streams q8 at 85 % and bf16 at 84 % of the read loop,
// 4 KB at 97 % (f32 98 % either way; 512 B 76 %, 8 KB 92-99 %).
static int mm_gemv_pf_avx2 = 4096;

// Store 16 floats (two ymm) to y, only the first nc of them (nc < 16 at the last panel of a matrix).
MM_INLINE MM_TGT_AVX2 void mm_avx2_store16(float* y, __m256 lo, __m256 hi, int nc) {
    if (nc >= 16) { _mm256_storeu_ps(y, lo); _mm256_storeu_ps(y + 8, hi); return; }
    float tmp[16];
    _mm256_storeu_ps(tmp, lo);
    _mm256_storeu_ps(tmp + 8, hi);
    for (int c = 0; c < nc; c++) y[c] = tmp[c];
}

// The int8 dot step of the AVX2 GEMV (the GEMM uses int16 vpmaddwd, see mm_kernel_q8_avx2), for 8
// columns and one row: acc (8 x int32) += sum_{j<4} w_j * q_j
// where the ymm `ws` holds 4 signed weight bytes per column lane and `q4` the row's 4 activation
// bytes broadcast to every lane. vpmaddubsw multiplies unsigned by signed bytes and adds adjacent
// pairs into int16 WITH SATURATION, so the operands are arranged to never saturate:
//   unsigned operand |w|      (0..128: vpabsb of -128 is 0x80, read as unsigned 128 -- exact)
//   signed operand   sign(q, w) = q with w's sign folded in (q in -127..127, so negating is exact)
//   |w| * sign(q, w) = w * q, and a pair sum is at most 2 * 128 * 127 = 32512 < 32767.
// vpmaddwd with ones then adds the int16 pairs into int32 lanes (exact). Cost: vpsignb + vpmaddubsw +
// vpmaddwd + vpaddd per (row, 8 columns, 4 k) where VNNI needs one vpdpbusd.
MM_INLINE MM_TGT_AVX2 __m256i mm_dot4_avx2(__m256i acc, __m256i wabs, __m256i ws, __m256i q4, __m256i ones16) {
    __m256i pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(q4, ws));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones16));
}

// The per-group f32 epilogue of every q8 kernel (AVX-512 included), in this order so that all levels
// round identically: f += float(exact int32 dot) * (scale_w * scale_x), one vmulps then one FMA.
MM_INLINE MM_TGT_AVX2 __m256 mm_q8_epilogue_avx2(__m256 f, __m256i dot, __m256 sw, float sx) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(sw, _mm256_set1_ps(sx)), f);
}

// max |x| over one group of G inputs (G % 4 == 0; exact, so every quantizer derives the same scale),
// and whether the group holds a NaN.
MM_INLINE MM_TGT_AVX2 float mm_group_absmax_avx2(const float* xg, int G, int* has_nan) {
    // 0x7fffffff: every bit but the sign bit, so `and` is |x|; _CMP_UNORD_Q(x, x) is true only for NaN
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 mx = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= G; k += 8) {
        __m256 xv = _mm256_loadu_ps(xg + k);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(xv, xv, _CMP_UNORD_Q));
        mx = _mm256_max_ps(_mm256_and_ps(xv, absmask), mx);
    }
    float m[8];
    _mm256_storeu_ps(m, mx);
    float amax = 0.0f;
    for (int i = 0; i < 8; i++) amax = m[i] > amax ? m[i] : amax;
    int bad = _mm256_movemask_ps(nan) != 0;
    for (; k < G; k++) {                    // G % 8 == 4: the last 4
        float a = fabsf(xg[k]);
        if (a != a) bad = 1;
        else if (a > amax) amax = a;
    }
    *has_nan = bad;
    return amax;
}

// Quantize rows x (T, K) to q (T, K) s8, as (T, ng) scales, ac (T, ng) = -128 * sum(q) (the VNNI
// compensation): mm_quantize_group per (row, group), 8 lanes at a time -- the same absmax, iscale =
// 127/absmax, rint via vcvtps2dq (round to nearest even, as rintf), clamp to +-127, bit for bit.
MM_TGT_AVX2 static void mm_quantize_rows_q8_avx2(const float* x, int T, int K, int G, int8_t* q, float* as,
                                                 int32_t* ac) {
    int ng = K / G;
    // byte 0 of each int32 lane -> bytes 0..3 of each 128-bit half (the rest zeroed, 0x80 = zero)
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -128, -128, -128, -128, -128, -128, -128, -128, -128,
                                          -128, -128, -128, 0, 4, 8, 12, -128, -128, -128, -128, -128, -128,
                                          -128, -128, -128, -128, -128, -128);
    for (int t = 0; t < T; t++) {
        for (int g = 0; g < ng; g++) {
            const float* xg = x + (size_t)t * K + (size_t)g * G;
            int8_t* qg = q + (size_t)t * K + (size_t)g * G;
            int nan;
            float amax = mm_group_absmax_avx2(xg, G, &nan);
            if (nan || amax < 1e-30f || amax > 3.4028235e38f) {     // zero, tiny, inf or NaN group
                memset(qg, 0, (size_t)G);
                as[(size_t)t * ng + g] = nan ? NAN : amax < 1e-30f ? 0.0f : INFINITY;
                ac[(size_t)t * ng + g] = 0;
                continue;
            }
            float iscale = 127.0f / amax;
            __m256 vis = _mm256_set1_ps(iscale);
            __m256i sum = _mm256_setzero_si256();       // 8 lane sums of q, added up after the loop
            int k = 0, total = 0;
            // 8 inputs per step: scale, round (vcvtps2dq), clamp, then narrow int32 -> int8 with
            // the `pick` shuffle and store the two 4-byte halves (bytes 0..3 of each 128-bit lane)
            for (; k + 8 <= G; k += 8) {
                __m256i qi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + k), vis));
                qi = _mm256_max_epi32(_mm256_min_epi32(qi, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
                sum = _mm256_add_epi32(sum, qi);
                __m256i b = _mm256_shuffle_epi8(qi, pick);
                int32_t lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(b));
                int32_t hi = _mm_cvtsi128_si32(_mm256_extracti128_si256(b, 1));
                memcpy(qg + k, &lo, 4);
                memcpy(qg + k + 4, &hi, 4);
            }
            for (; k < G; k++) {            // G % 8 == 4: mm_quantize_group's scalar arithmetic
                float v = rintf(xg[k] * iscale);
                v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
                qg[k] = (int8_t)v;
                total += qg[k];
            }
            int32_t s8[8];
            _mm256_storeu_si256((__m256i*)s8, sum);
            for (int i = 0; i < 8; i++) total += s8[i];
            as[(size_t)t * ng + g] = amax / 127.0f;
            ac[(size_t)t * ng + g] = -128 * total;
        }
    }
}

// ---- GEMM microkernels: one row tile x half a panel (16 columns) over the full K. Tile rows past T
// are zero in the packed activations; their results (and columns past N) are not stored.

// f32 6x16: per k, 2 weight loads + 6 broadcasts feed 12 FMAs (6 cycles at 2 FMA/cycle).
// a: the tile, (K, 6) f32 (6 rows at each k, contiguous); w: the panel row base + 16 * half, row
// stride 32 floats; y: (mr, nc) outputs, row stride ldy. Registers: acc[6][2] (12 ymm: row i,
// columns 0-7 and 8-15) + w0, w1 + the broadcast = 15 of 16. The 12 independent FMA chains cover
// the FMA latency (4 cycles x 2 ports = 8 in flight needed).
MM_TGT_AVX2 static void mm_kernel_f32_avx2(const float* a, const float* w, int K, float* y, int ldy, int mr, int nc) {
    __m256 acc[MM_A2_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MM_A2_MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m256 w0 = _mm256_loadu_ps(w + (size_t)k * 32), w1 = _mm256_loadu_ps(w + (size_t)k * 32 + 8);
        const float* ak = a + (size_t)k * MM_A2_MR;
#pragma GCC unroll 6
        for (int i = 0; i < MM_A2_MR; i++) {
            __m256 av = _mm256_broadcast_ss(ak + i);
            acc[i][0] = _mm256_fmadd_ps(av, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, w1, acc[i][1]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MM_A2_MR; i++)
        if (i < mr) mm_avx2_store16(y + (size_t)i * ldy, acc[i][0], acc[i][1], nc);
}

// bf16 6x16: a panel word holds the bf16 weights of k = 2kk (low half) and 2kk+1 (high half); a
// bf16 is the top 16 bits of an f32, so `word << 16` is the even weight and `word & 0xffff0000`
// the odd one, both exact f32. The f32 kernel's register plan, run twice per k pair: the two even
// weight vectors (16 columns) against the 6 broadcasts of k = 2kk, then the two odd ones against
// those of k = 2kk+1. 12 accumulators + 2 weight vectors + 1 broadcast + the 0xffff0000 mask = 16 ymm
// (the weights are loaded again for the odd half: an L1 hit, cheaper than a register). Per k pair: 24 FMAs (12 cycles at 2/cycle), 4 weight loads + 4
// integer ops (other ports on Zen and Intel alike), 12 broadcast loads. The activation tile is f32
// (K rounded up to even, the padding zero).
MM_TGT_AVX2 static void mm_kernel_bf16_avx2(const float* a, const uint32_t* w, int kw, float* y, int ldy, int mr,
                                            int nc) {
    const __m256i hi16 = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[MM_A2_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MM_A2_MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
#if defined(__GNUC__) && !defined(__clang__)
    // GCC 12 spills half of the accumulators of this loop (measured 60 % of the FMA peak), so the
    // loop is written out: weights ymm13/14, broadcast ymm15, accumulators and mask where GCC puts them.
    // One iteration = one k pair: shift the two weight vectors to the even weights, 6 rows x 2 FMAs
    // with the activations at offsets 0..20 (rows 0-5 at k = 2kk, 4 bytes each), then and-mask the
    // same 64 bytes into the odd weights against offsets 24..44 (k = 2kk+1). Pointer steps: w by
    // 128 bytes (one panel row of 32 words; `subq $-128` because -128 fits a sign-extended 8-bit
    // immediate and +128 does not), a by 48 bytes (2 k x 6 rows x 4 bytes). "+x": any ymm0-15.
    if (kw > 0) {
        const uint32_t* wend = w + (size_t)kw * 32;
        __asm__(
            "1:\n\t"
            "vmovdqu (%[w]), %%ymm13\n\t"
            "vmovdqu 32(%[w]), %%ymm14\n\t"
            "vpslld $16, %%ymm13, %%ymm13\n\t"
            "vpslld $16, %%ymm14, %%ymm14\n\t"
#define MM_A2_BF16_ROW(off, c0, c1)                                                                     \
            "vbroadcastss " off "(%[a]), %%ymm15\n\t"                                                  \
            "vfmadd231ps %%ymm13, %%ymm15, %[" c0 "]\n\t"                                              \
            "vfmadd231ps %%ymm14, %%ymm15, %[" c1 "]\n\t"
            MM_A2_BF16_ROW("0", "c00", "c01") MM_A2_BF16_ROW("4", "c10", "c11") MM_A2_BF16_ROW("8", "c20", "c21")
            MM_A2_BF16_ROW("12", "c30", "c31") MM_A2_BF16_ROW("16", "c40", "c41") MM_A2_BF16_ROW("20", "c50", "c51")
            "vpand (%[w]), %[hi], %%ymm13\n\t"
            "vpand 32(%[w]), %[hi], %%ymm14\n\t"
            MM_A2_BF16_ROW("24", "c00", "c01") MM_A2_BF16_ROW("28", "c10", "c11") MM_A2_BF16_ROW("32", "c20", "c21")
            MM_A2_BF16_ROW("36", "c30", "c31") MM_A2_BF16_ROW("40", "c40", "c41") MM_A2_BF16_ROW("44", "c50", "c51")
#undef MM_A2_BF16_ROW
            "subq $-128, %[w]\n\t"
            "addq $48, %[a]\n\t"
            "cmpq %[wend], %[w]\n\t"
            "jne 1b\n\t"
            : [c00] "+x"(acc[0][0]), [c01] "+x"(acc[0][1]), [c10] "+x"(acc[1][0]), [c11] "+x"(acc[1][1]),
              [c20] "+x"(acc[2][0]), [c21] "+x"(acc[2][1]), [c30] "+x"(acc[3][0]), [c31] "+x"(acc[3][1]),
              [c40] "+x"(acc[4][0]), [c41] "+x"(acc[4][1]), [c50] "+x"(acc[5][0]), [c51] "+x"(acc[5][1]),
              [w] "+r"(w), [a] "+r"(a)
            : [wend] "r"(wend), [hi] "x"(hi16)
            : "cc", "memory", "xmm13", "xmm14", "xmm15");
    }
#else
    for (int kk = 0; kk < kw; kk++) {
        const float* ae = a + (size_t)2 * kk * MM_A2_MR;           // k = 2kk; k = 2kk+1 follows
        const __m256i* wk = (const __m256i*)(w + (size_t)kk * 32);
        __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256(wk), 16));
        __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256(wk + 1), 16));
#pragma GCC unroll 6
        for (int i = 0; i < MM_A2_MR; i++) {
            __m256 av = _mm256_broadcast_ss(ae + i);
            acc[i][0] = _mm256_fmadd_ps(av, e0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, e1, acc[i][1]);
        }
        __m256 o0 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_loadu_si256(wk), hi16));
        __m256 o1 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_loadu_si256(wk + 1), hi16));
#pragma GCC unroll 6
        for (int i = 0; i < MM_A2_MR; i++) {
            __m256 av = _mm256_broadcast_ss(ae + MM_A2_MR + i);
            acc[i][0] = _mm256_fmadd_ps(av, o0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, o1, acc[i][1]);
        }
    }
#endif
#pragma GCC unroll 6
    for (int i = 0; i < MM_A2_MR; i++)
        if (i < mr) mm_avx2_store16(y + (size_t)i * ldy, acc[i][0], acc[i][1], nc);
}

// q8 4x16 with vpmaddwd on int16 (no VNNI). vpmaddwd multiplies signed int16 pairs and adds each pair
// into an int32 lane: exact, and it never saturates (unlike vpmaddubsw's int16 pair sums). So the
// weight bytes are widened to int16 in registers and the activations are packed as int16:
//   a panel word of column c holds the bytes u8 = w+128 of k0..k3; read as two 16-bit halves,
//   `and 0x00ff` leaves (k0, k2) and `shift right 8` leaves (k1, k3), both zero-extended (0..255);
//   the packed activation tile holds, per k4 step and row, two words: (q0, q2) and (q1, q3) as int16;
//   vpmaddwd(even weights, (q0, q2)) + vpmaddwd(odd weights, (q1, q3)) = sum_j (w_j + 128) * q_j.
// The lanes start at the compensation -128 * sum(q) of the group, as in the VNNI kernels, so they end
// at the exact group dot sum w*q (|sum| < 2^31: G products of at most 255 * 127) -- the same integer
// as every other q8 kernel. Per k4 step: 2 weight loads, 2 and + 2 shift, shared by the 4 rows;
// then per row 2 broadcasts and 4 x (vpmaddwd + vpaddd). (The shift takes a register: VEX has no
// vpsrlw with a memory source, only EVEX, which an AVX2 CPU lacks.)
// This replaced a vpmaddubsw kernel (|w| x sign(q, w), then vpmaddwd with ones): the same count of
// vector ops per product, but vpsignb + vpmaddubsw + vpmaddwd + vpaddd kept Zen 5 further from its
// multiply peak than 2 x (vpmaddwd + vpaddd): +5 % in L1, but -2..+3 % per GEMM shape (probably
// because the int16 tile is twice the bytes, and the weights stream through L1 past it).
// a: (K/4, 4, 2) words (row i's k4 step at a[(kq * 4 + i) * 2], the odd word after it); as / ac:
// (ng, 4); w: panel + 16 * half, (K/4, 32) words; ws: panel scales + 16 * half, (ng, 32). The f32
// sums f (8 ymm) stay in L1 between groups (no room in the registers). Loop nest: groups -> k4 steps
// -> rows; the int32 dot of a group must be finished before its f32 epilogue.
#define MM_A2_Q8_PF 512       // weight prefetch distance of mm_kernel_q8_avx2, bytes
#define MM_STR(x) MM_STR_(x)  // a macro's value as a string literal, to paste into the asm
#define MM_STR_(x) #x
MM_TGT_AVX2 static void mm_kernel_q8_avx2(const uint32_t* a, const float* as, const int32_t* ac, const uint32_t* w,
                                          const float* ws, int ng, int G4, float* y, int ldy, int mr, int nc) {
    const __m256i lo8 = _mm256_set1_epi16(0x00ff);     // the low byte of each 16-bit half
    __m256 f[MM_A2_Q8_MR][2];
#pragma GCC unroll 4
    for (int i = 0; i < MM_A2_Q8_MR; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m256i acc[MM_A2_Q8_MR][2];
#pragma GCC unroll 4
        for (int i = 0; i < MM_A2_Q8_MR; i++) acc[i][0] = acc[i][1] = _mm256_set1_epi32(ac[g * MM_A2_Q8_MR + i]);
        const uint32_t* wg = w + (size_t)g * G4 * 32;
        const uint32_t* ag = a + (size_t)g * G4 * MM_A2_Q8_MR * 2;
#if defined(__GNUC__) && !defined(__clang__)
        // GCC 12 spills accumulators of such loops to the stack (a load-add-store chain per step), so
        // the group loop is written out with a fixed register plan: acc in 8 registers the compiler
        // picks (ymm0-7 by elimination), even weights ymm8/9 (columns 0-7, 8-15), odd weights
        // ymm10/11, the row's (q0, q2) broadcast ymm12 and (q1, q3) ymm13, product ymm14, 0x00ff ymm15.
        // Pointer steps per k4 step: w by 128 bytes (one panel row), a by 32 bytes (4 rows x 2
        // words); the offsets in MM_A2_Q8_ROW are row i's two words, 8i and 8i + 4. The weights are
        // prefetched MM_A2_Q8_PF bytes (4 panel rows) ahead: they come from L2/L3 (a weight block is
        // re-read for every row tile), and the hardware prefetcher alone left 1-4 % on the table (one
        // thread, CPU time, Zen 5: 65-71 % -> 68-72 % of the peak loop; 1024 bytes ahead: 68-72 %).
        const uint32_t* wend = wg + (size_t)G4 * 32;
        __asm__(
            "vmovdqa %[lo8], %%ymm15\n\t"
            "1:\n\t"
            "prefetcht0 " MM_STR(MM_A2_Q8_PF) "(%[w])\n\t"
            "vmovdqu (%[w]), %%ymm10\n\t"
            "vmovdqu 32(%[w]), %%ymm11\n\t"
            "vpand %%ymm10, %%ymm15, %%ymm8\n\t"
            "vpand %%ymm11, %%ymm15, %%ymm9\n\t"
            "vpsrlw $8, %%ymm10, %%ymm10\n\t"
            "vpsrlw $8, %%ymm11, %%ymm11\n\t"
#define MM_A2_Q8_ROW(even, odd, c0, c1)                                                                 \
            "vpbroadcastd " even "(%[a]), %%ymm12\n\t"                                                  \
            "vpbroadcastd " odd "(%[a]), %%ymm13\n\t"                                                   \
            "vpmaddwd %%ymm12, %%ymm8, %%ymm14\n\t"                                                     \
            "vpaddd %%ymm14, %[" c0 "], %[" c0 "]\n\t"                                                  \
            "vpmaddwd %%ymm12, %%ymm9, %%ymm14\n\t"                                                     \
            "vpaddd %%ymm14, %[" c1 "], %[" c1 "]\n\t"                                                  \
            "vpmaddwd %%ymm13, %%ymm10, %%ymm14\n\t"                                                    \
            "vpaddd %%ymm14, %[" c0 "], %[" c0 "]\n\t"                                                  \
            "vpmaddwd %%ymm13, %%ymm11, %%ymm14\n\t"                                                    \
            "vpaddd %%ymm14, %[" c1 "], %[" c1 "]\n\t"
            MM_A2_Q8_ROW("0", "4", "c00", "c01") MM_A2_Q8_ROW("8", "12", "c10", "c11")
            MM_A2_Q8_ROW("16", "20", "c20", "c21") MM_A2_Q8_ROW("24", "28", "c30", "c31")
#undef MM_A2_Q8_ROW
            "subq $-128, %[w]\n\t"
            "addq $32, %[a]\n\t"
            "cmpq %[wend], %[w]\n\t"
            "jne 1b\n\t"
            : [c00] "+x"(acc[0][0]), [c01] "+x"(acc[0][1]), [c10] "+x"(acc[1][0]), [c11] "+x"(acc[1][1]),
              [c20] "+x"(acc[2][0]), [c21] "+x"(acc[2][1]), [c30] "+x"(acc[3][0]), [c31] "+x"(acc[3][1]),
              [w] "+r"(wg), [a] "+r"(ag)
            : [wend] "r"(wend), [lo8] "m"(lo8)
            : "cc", "memory", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
#else
        for (int q = 0; q < G4; q++) {
            _mm_prefetch((const char*)(wg + (size_t)q * 32) + MM_A2_Q8_PF, _MM_HINT_T0);
            __m256i w0 = _mm256_loadu_si256((const __m256i*)(wg + (size_t)q * 32));
            __m256i w1 = _mm256_loadu_si256((const __m256i*)(wg + (size_t)q * 32 + 8));
            __m256i e0 = _mm256_and_si256(w0, lo8), e1 = _mm256_and_si256(w1, lo8);
            __m256i o0 = _mm256_srli_epi16(w0, 8), o1 = _mm256_srli_epi16(w1, 8);
#pragma GCC unroll 4
            for (int i = 0; i < MM_A2_Q8_MR; i++) {
                __m256i qe = _mm256_set1_epi32((int)ag[(q * MM_A2_Q8_MR + i) * 2]);
                __m256i qo = _mm256_set1_epi32((int)ag[(q * MM_A2_Q8_MR + i) * 2 + 1]);
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(qe, e0));
                acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(qe, e1));
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(qo, o0));
                acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(qo, o1));
            }
        }
#endif
        __m256 sw0 = _mm256_loadu_ps(ws + (size_t)g * 32), sw1 = _mm256_loadu_ps(ws + (size_t)g * 32 + 8);
#pragma GCC unroll 4
        for (int i = 0; i < MM_A2_Q8_MR; i++) {
            f[i][0] = mm_q8_epilogue_avx2(f[i][0], acc[i][0], sw0, as[g * MM_A2_Q8_MR + i]);
            f[i][1] = mm_q8_epilogue_avx2(f[i][1], acc[i][1], sw1, as[g * MM_A2_Q8_MR + i]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MM_A2_Q8_MR; i++)
        if (i < mr) mm_avx2_store16(y + (size_t)i * ldy, f[i][0], f[i][1], nc);
}

// q8 6x16 with AVX-VNNI: the AVX512-VNNI kernel in ymm. Lanes start at the compensation -128*sum(q)
// and take G/4 vpdpbusd steps of u8 panel words (w+128) x the broadcast s8 activation word, so they
// end at the exact group dot sum w*q -- the same integer as mm_kernel_q8_avx2 computes another way.
// One vpdpbusd replaces 2 x (vpmaddwd + vpaddd), which frees the registers for 6 rows:
// a: (K/4, 6) words, as / ac: (ng, 6), w / ws as in mm_kernel_q8_avx2; f32 sums in L1 between groups.
// No overflow: a group adds G products of at most 255 * 127 in magnitude, far from 2^31.
MM_TGT_AVXVNNI static void mm_kernel_q8_avxvnni(const uint32_t* a, const float* as, const int32_t* ac,
                                                const uint32_t* w, const float* ws, int ng, int G4, float* y,
                                                int ldy, int mr, int nc) {
    __m256 f[MM_AVNNI_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MM_AVNNI_MR; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m256i acc[MM_AVNNI_MR][2];
#pragma GCC unroll 6
        for (int i = 0; i < MM_AVNNI_MR; i++) acc[i][0] = acc[i][1] = _mm256_set1_epi32(ac[g * MM_AVNNI_MR + i]);
        const uint32_t* wg = w + (size_t)g * G4 * 32;
        const uint32_t* ag = a + (size_t)g * G4 * MM_AVNNI_MR;
#if defined(__GNUC__) && !defined(__clang__)
        // As in mm_kernel_q8: GCC wraps every vpdpbusd of an unrolled tile in register copies
        // (measured 25-35 % of the AVX-VNNI peak), so the group loop is written out: weights in
        // ymm14/15, the activation broadcast in ymm13 (VEX has no {1to8} memory broadcast), 12
        // accumulators in the remaining registers. %{vex%} ({vex}) selects the AVX-VNNI encoding.
        // Pointer steps per k4 step: w by 128 bytes (one panel row), a by 24 bytes (6 rows x 4 s8).
        const uint32_t* wend = wg + (size_t)G4 * 32;
        __asm__(
            "1:\n\t"
            "vmovdqu (%[w]), %%ymm14\n\t"
            "vmovdqu 32(%[w]), %%ymm15\n\t"
#define MM_AVNNI_ROW(off, c0, c1)                                                                       \
            "vpbroadcastd " off "(%[a]), %%ymm13\n\t"                                                   \
            "%{vex%} vpdpbusd %%ymm13, %%ymm14, %[" c0 "]\n\t"                                            \
            "%{vex%} vpdpbusd %%ymm13, %%ymm15, %[" c1 "]\n\t"
            MM_AVNNI_ROW("0", "c00", "c01") MM_AVNNI_ROW("4", "c10", "c11") MM_AVNNI_ROW("8", "c20", "c21")
            MM_AVNNI_ROW("12", "c30", "c31") MM_AVNNI_ROW("16", "c40", "c41") MM_AVNNI_ROW("20", "c50", "c51")
#undef MM_AVNNI_ROW
            "subq $-128, %[w]\n\t"
            "addq $24, %[a]\n\t"
            "cmpq %[wend], %[w]\n\t"
            "jne 1b\n\t"
            : [c00] "+x"(acc[0][0]), [c01] "+x"(acc[0][1]), [c10] "+x"(acc[1][0]), [c11] "+x"(acc[1][1]),
              [c20] "+x"(acc[2][0]), [c21] "+x"(acc[2][1]), [c30] "+x"(acc[3][0]), [c31] "+x"(acc[3][1]),
              [c40] "+x"(acc[4][0]), [c41] "+x"(acc[4][1]), [c50] "+x"(acc[5][0]), [c51] "+x"(acc[5][1]),
              [w] "+r"(wg), [a] "+r"(ag)
            : [wend] "r"(wend)
            : "cc", "memory", "xmm13", "xmm14", "xmm15");
#else
        for (int q = 0; q < G4; q++) {
            __m256i w0 = _mm256_loadu_si256((const __m256i*)(wg + (size_t)q * 32));
            __m256i w1 = _mm256_loadu_si256((const __m256i*)(wg + (size_t)q * 32 + 8));
#pragma GCC unroll 6
            for (int i = 0; i < MM_AVNNI_MR; i++) {
                __m256i qb = _mm256_set1_epi32((int)ag[q * MM_AVNNI_MR + i]);
                acc[i][0] = _mm256_dpbusd_avx_epi32(acc[i][0], w0, qb);
                acc[i][1] = _mm256_dpbusd_avx_epi32(acc[i][1], w1, qb);
            }
        }
#endif
        __m256 sw0 = _mm256_loadu_ps(ws + (size_t)g * 32), sw1 = _mm256_loadu_ps(ws + (size_t)g * 32 + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MM_AVNNI_MR; i++) {
            f[i][0] = mm_q8_epilogue_avx2(f[i][0], acc[i][0], sw0, as[g * MM_AVNNI_MR + i]);
            f[i][1] = mm_q8_epilogue_avx2(f[i][1], acc[i][1], sw1, as[g * MM_AVNNI_MR + i]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MM_AVNNI_MR; i++)
        if (i < mr) mm_avx2_store16(y + (size_t)i * ldy, f[i][0], f[i][1], nc);
}

// ---- Activation packing for the AVX2 GEMM (per call; tasks split the row tiles). MR = the tile rows.
//   f32, bf16  a: (ntiles, K2, MR) f32, K2 = K rounded up to even; rows past T and k = K are zero
//   q8         q: (ntiles*MR, K) s8 row-major (mm_quantize_rows_q8_avx2), then
//              AVX-VNNI  a: (ntiles, K/4, MR) uint32 = 4 x s8 (q0..q3, the vpdpbusd word)
//              AVX2      a: (ntiles, K/4, MR, 2) uint32 = 2 x int16: (q0, q2), then (q1, q3), the
//                        pairs that meet the even and odd weight bytes in mm_kernel_q8_avx2
//              as, ac: (ntiles, ng, MR)  (zero past T)
MM_TGT_AVX2 static void mm_task_pack_avx2(void* v, int task) {
    MMJob* j = v;
    int K = j->K, T = j->T, MR = j->mr, ta, tb;
    mm_split(j->ntiles, task, j->n_tasks, &ta, &tb);
    for (int it = ta; it < tb; it++) {
        int t0 = it * MR, mr = mm_min(MR, T - t0);     // tile it = rows t0..t0+mr-1 of x
        const float* xt = mm_tile_rows(j, t0, mr);      // those rows, (mr, K)
        if (j->w->type == DT_F32 || j->w->type == DT_BF16) {   // q8 and q4: quantized below
            // K2 even: the bf16 kernel consumes k in pairs (one panel word = 2 weights)
            int K2 = (K + 1) / 2 * 2;
            float* a = (float*)j->a + (size_t)it * K2 * MR;
            for (int k = 0; k < K2; k++)                // k outer: sequential stores, MR read streams
                for (int i = 0; i < MR; i++) a[(size_t)k * MR + i] = i < mr && k < K ? xt[(size_t)i * K + k] : 0.0f;
            continue;
        }
        // q8: quantize the tile's rows row-major (the shared quantizer), then transpose into words
        int ng = j->p->ng, kw = K / 4;
        int8_t* q = j->q + (size_t)t0 * K;                  // (mr, K) s8
        float* asr = j->asr + (size_t)t0 * ng;              // (mr, ng)
        int32_t* acr = j->acr + (size_t)t0 * ng;            // (mr, ng)
        mm_quantize_rows_q8_avx2(xt, mr, K, j->p->G, q, asr, acr);
        int aw = mm_a2_words(j);                                    // words per row and k4 step
        uint32_t* a = (uint32_t*)j->a + (size_t)it * kw * MR * aw;  // (kw, MR, aw) words of this tile
        for (int kq = 0; kq < kw; kq++)
            for (int i = 0; i < MR; i++) {
                uint32_t* dst = a + ((size_t)kq * MR + i) * aw;
                if (i >= mr) { dst[0] = 0; if (aw == 2) dst[1] = 0; continue; }
                const int8_t* q4 = q + (size_t)i * K + 4 * kq;
                if (aw == 1) { memcpy(dst, q4, 4); continue; }
                // int16 pairs, low half first: (q0, q2) and (q1, q3), each sign-extended
                dst[0] = (uint32_t)(uint16_t)q4[0] | (uint32_t)(uint16_t)q4[2] << 16;
                dst[1] = (uint32_t)(uint16_t)q4[1] | (uint32_t)(uint16_t)q4[3] << 16;
            }
        for (int g = 0; g < ng; g++)
            for (int i = 0; i < MR; i++) {
                j->as[((size_t)it * ng + g) * MR + i] = i < mr ? asr[(size_t)i * ng + g] : 0.0f;
                j->ac[((size_t)it * ng + g) * MR + i] = i < mr ? acr[(size_t)i * ng + g] : 0;
            }
    }
}

// GEMM loop nest per task (one weight block of <= MM_A2_NCP panels): row tiles -> panels -> the two
// 16-column halves -> kernel over the full K. The tile's activations (MR x K) stay in L1/L2 and are
// reused by every panel of the block.
MM_TGT_AVX2 static void mm_task_gemm_avx2(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int type = j->w->type, N = j->N, MR = j->mr, K2 = (j->K + 1) / 2 * 2;
    int p0, p1;
    mm_task_panels(j, task, &p0, &p1);
    for (int it = 0; it < j->ntiles; it++) {
        int t0 = it * MR, mr = mm_min(MR, j->T - t0);
        for (int pi = p0; pi < p1; pi++)
            for (int h = 0; h < 2; h++) {      // 16 columns = 2 ymm per row: the 16-register budget
                int n0 = pi * 32 + h * 16, nc = N - n0;
                if (nc <= 0) break;                 // the last panel's upper half is all padding
                const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32 + h * 16;
                float* y = j->y + (size_t)t0 * N + n0;
                if (type == DT_F32)
                    mm_kernel_f32_avx2((const float*)j->a + (size_t)it * K2 * MR, (const float*)wp, j->K, y, N, mr, nc);
                else if (type == DT_BF16)
                    mm_kernel_bf16_avx2((const float*)j->a + (size_t)it * K2 * MR, wp, p->kw, y, N, mr, nc);
                else {
                    // the tile's packed activations: 1 word per (k4, row) for AVX-VNNI, 2 for AVX2
                    const uint32_t* a = (const uint32_t*)j->a + (size_t)it * p->kw * MR * mm_a2_words(j);
                    const float* as = j->as + (size_t)it * p->ng * MR;
                    const float* ws = p->s + (size_t)pi * p->ng * 32 + h * 16;
                    if (j->avxvnni)
                        mm_kernel_q8_avxvnni(a, as, j->ac + (size_t)it * p->ng * MR, wp, ws, p->ng, p->G / 4, y, N, mr, nc);
                    else
                        mm_kernel_q8_avx2(a, as, j->ac + (size_t)it * p->ng * MR, wp, ws, p->ng, p->G / 4, y, N, mr, nc);
                }
            }
        mm_post_tile(j, t0, mr, p0, p1);
    }
}

// ---- GEMV (decode): one full panel (32 columns, 4 ymm per panel row, 128 sequential bytes) x MR = 1
// or 2 rows per call. Memory bound: the weights stream once, prefetched mm_gemv_pf_avx2 bytes ahead.

// f32 / bf16 with f32 activations (matmul_ref's semantics and summation order). Registers: 4*MR
// accumulators + MR broadcasts (x2 for bf16) + the weight vector(s).
MM_INLINE MM_TGT_AVX2 void mm_gemv_fb_avx2(const float* x, int K, const uint32_t* w, int is_bf16, float* y, int ldy,
                                           int nc, const int MR) {
    const int pf = mm_gemv_pf_avx2;
    // acc[i][c]: row i, columns 8c..8c+7 of the panel. MR = 2: 8 accumulators + 2 broadcasts (4 for
    // bf16: even and odd k) + the weight vector (+ the even / odd widened pair and the mask for bf16)
    __m256 acc[2][4];
#pragma GCC unroll 2
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = _mm256_setzero_ps();
    if (!is_bf16) {
        const float* wf = (const float*)w;
        for (int k = 0; k < K; k++) {
            const float* wk = wf + (size_t)k * 32;
            // a panel row is 128 bytes = 2 cache lines, so 2 prefetches per row keep pf bytes ahead
            if (pf) { _mm_prefetch((const char*)wk + pf, _MM_HINT_T0); _mm_prefetch((const char*)wk + pf + 64, _MM_HINT_T0); }
            __m256 xb[2];
#pragma GCC unroll 2
            for (int i = 0; i < MR; i++) xb[i] = _mm256_broadcast_ss(x + (size_t)i * K + k);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m256 wv = _mm256_loadu_ps(wk + 8 * c);
#pragma GCC unroll 2
                for (int i = 0; i < MR; i++) acc[i][c] = _mm256_fmadd_ps(wv, xb[i], acc[i][c]);
            }
        }
    } else {
        const __m256i hi16 = _mm256_set1_epi32((int)0xffff0000u);
        int kw = (K + 1) / 2;
        for (int kk = 0; kk < kw; kk++) {
            const uint32_t* wk = w + (size_t)kk * 32;
            if (pf) { _mm_prefetch((const char*)wk + pf, _MM_HINT_T0); _mm_prefetch((const char*)wk + pf + 64, _MM_HINT_T0); }
            int odd = 2 * kk + 1 < K;           // odd K: the last pair has no odd input (weight 0)
            __m256 xe[2], xo[2];
#pragma GCC unroll 2
            for (int i = 0; i < MR; i++) {
                xe[i] = _mm256_broadcast_ss(x + (size_t)i * K + 2 * kk);
                xo[i] = odd ? _mm256_broadcast_ss(x + (size_t)i * K + 2 * kk + 1) : _mm256_setzero_ps();
            }
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m256i v = _mm256_loadu_si256((const __m256i*)(wk + 8 * c));
                __m256 e = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
                __m256 o = _mm256_castsi256_ps(_mm256_and_si256(v, hi16));
#pragma GCC unroll 2
                for (int i = 0; i < MR; i++) acc[i][c] = _mm256_fmadd_ps(o, xo[i], _mm256_fmadd_ps(e, xe[i], acc[i][c]));
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < MR; i++) {
        // columns 0-15, then 16-31 (nc - 16 <= 0 at a last panel of <= 16 columns: nothing stored)
        mm_avx2_store16(y + (size_t)i * ldy, acc[i][0], acc[i][1], nc);
        mm_avx2_store16(y + (size_t)i * ldy + 16, acc[i][2], acc[i][3], nc - 16);
    }
}

// q8 with the quantized activations q (T, K), as (T, ng) of mm_quantize_rows_q8_avx2: the GEMM's
// per-group arithmetic (exact int32 dot via mm_dot4_avx2, then mm_q8_epilogue_avx2), so each row
// gives the same bits as in a GEMM, on every level. Registers: 4*MR int32 accumulators, the signed
// and absolute weight vector, MR activation broadcasts, ones; the f32 sums go through L1 at MR = 2.
MM_INLINE MM_TGT_AVX2 void mm_gemv_q8_avx2(const int8_t* q, const float* as, int K, int ng, int G4, const uint32_t* w,
                                           const float* s, float* y, int ldy, int nc, const int MR) {
    const int pf = mm_gemv_pf_avx2;
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    __m256 f[2][4];
#pragma GCC unroll 2
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = f[i][2] = f[i][3] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m256i acc[2][4];
#pragma GCC unroll 2
        for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = _mm256_setzero_si256();
        for (int kq = g * G4; kq < (g + 1) * G4; kq++) {
            const uint32_t* wk = w + (size_t)kq * 32;
            if (pf) { _mm_prefetch((const char*)wk + pf, _MM_HINT_T0); _mm_prefetch((const char*)wk + pf + 64, _MM_HINT_T0); }
            __m256i qb[2];
#pragma GCC unroll 2
            for (int i = 0; i < MR; i++) {
                int32_t a4;                 // 4 s8 activations (memcpy: no type punning)
                memcpy(&a4, q + (size_t)i * K + 4 * kq, 4);
                qb[i] = _mm256_set1_epi32(a4);
            }
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m256i ws = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(wk + 8 * c)), flip);
                __m256i wa = _mm256_abs_epi8(ws);
#pragma GCC unroll 2
                for (int i = 0; i < MR; i++) acc[i][c] = mm_dot4_avx2(acc[i][c], wa, ws, qb[i], ones);
            }
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m256 sw = _mm256_loadu_ps(s + (size_t)g * 32 + 8 * c);
#pragma GCC unroll 2
            for (int i = 0; i < MR; i++) f[i][c] = mm_q8_epilogue_avx2(f[i][c], acc[i][c], sw, as[(size_t)i * ng + g]);
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < MR; i++) {
        mm_avx2_store16(y + (size_t)i * ldy, f[i][0], f[i][1], nc);
        mm_avx2_store16(y + (size_t)i * ldy + 16, f[i][2], f[i][3], nc - 16);
    }
}

// GEMV task: panels [p0, p1) (guided bounds), each streamed once per pair of rows (T <= 2: once).
MM_TGT_AVX2 static void mm_task_gemv_avx2(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int p0, p1;
    mm_task_panels(j, task, &p0, &p1);
    for (int pi = p0; pi < p1; pi++) {
        const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32;
        int nc = j->N - pi * 32;
        for (int t = 0; t < j->T; t += 2) {
            int two = j->T - t >= 2;
            float* y = j->y + (size_t)t * j->N + pi * 32;
            if (j->w->type == DT_Q8) {
                const int8_t* q = j->q + (size_t)t * j->K;
                const float* as = j->asr + (size_t)t * p->ng;
                const float* s = p->s + (size_t)pi * p->ng * 32;
                if (two) mm_gemv_q8_avx2(q, as, j->K, p->ng, p->G / 4, wp, s, y, j->N, nc, 2);
                else mm_gemv_q8_avx2(q, as, j->K, p->ng, p->G / 4, wp, s, y, j->N, nc, 1);
            } else {
                const float* x = j->x + (size_t)t * j->K;
                if (two) mm_gemv_fb_avx2(x, j->K, wp, j->w->type == DT_BF16, y, j->N, nc, 2);
                else mm_gemv_fb_avx2(x, j->K, wp, j->w->type == DT_BF16, y, j->N, nc, 1);
            }
        }
    }
}

// The AVX2 / AVX-VNNI level of matmul() (and q8 on AVX-512 without AVX512-VNNI).
static void mm_matmul_avx2(MMJob* j) {
    const MMPacked* p = j->p;
    int type = j->w->type, T = j->T, K = j->K, np = p->np, nth = pool_size();
    int own = mm_in_pool;                   // nested call: private scratch, single thread
    int bounds[MM_MAX_GUIDED + 1];
    if (T <= mm_gemv_max_t_avx2[type]) {
        float* own_x = mm_materialize(j);
        void* buf = NULL;
        if (type == DT_Q8) {                // quantize the (<= 2) rows once, in the caller thread
            size_t qbytes = align_up((size_t)T * K, 64), sbytes = (size_t)T * p->ng * 4;
            buf = mm_get_scratch(qbytes + 2 * sbytes + 64, own);
            j->q = buf;
            j->asr = (float*)((char*)buf + qbytes);
            j->acr = (int32_t*)((char*)buf + qbytes + sbytes);
            mm_quantize_rows_q8_avx2(j->x, T, K, p->G, j->q, j->asr, j->acr);
        }
        j->n_tasks = mm_guided_bounds(np, nth, bounds);
        j->bounds = bounds;
        pool_for(j->n_tasks, mm_task_gemv_avx2, j);
        if (own) free(buf);
        free(own_x);
        return;
    }
    // GEMM: pack (or quantize) the activations into row tiles, then the kernels
    j->avxvnni = type == DT_Q8 && mm_isa == MM_AVXVNNI;
    j->mr = type != DT_Q8 ? MM_A2_MR : j->avxvnni ? MM_AVNNI_MR : MM_A2_Q8_MR;
    j->ntiles = (T + j->mr - 1) / j->mr;
    size_t rows = (size_t)j->ntiles * j->mr;
    // f32 and bf16 tiles are packed K2 = K rounded up to even deep (mm_task_pack_avx2), q8 tiles K/4 words
    // (AVX2 q8 tiles hold int16 activations: 2 words per k4 step)
    size_t abytes = rows * (type != DT_Q8 ? (size_t)(K + 1) / 2 * 2 * 4 : (size_t)p->kw * 4 * mm_a2_words(j));
    size_t sbytes = 0, qbytes = 0;
    if (type == DT_Q8) { sbytes = rows * p->ng * 4; qbytes = align_up(rows * K, 64); }
    char* buf = mm_get_scratch(abytes + qbytes + 4 * sbytes + 64, own);
    // scratch layout: [a: abytes][q: qbytes][as | ac | asr | acr: sbytes each] (+64 slack for
    // alignment); a is the packed tile array, q / asr / acr the row-major quantizer output (q8)
    j->a = buf;
    j->q = (int8_t*)(buf + abytes);
    j->as = (float*)(buf + abytes + qbytes);
    j->ac = (int32_t*)(buf + abytes + qbytes + sbytes);
    j->asr = (float*)(buf + abytes + qbytes + 2 * sbytes);
    j->acr = (int32_t*)(buf + abytes + qbytes + 3 * sbytes);
    j->n_tasks = mm_min(nth, j->ntiles);   // phase 1: pack, one task per thread at most
    pool_for(j->n_tasks, mm_task_pack_avx2, j);
    // phase 2: one task per weight block of <= MM_A2_NCP panels, fewer if a thread would sit idle
    j->chunk = mm_min(MM_A2_NCP, (np + nth - 1) / nth);
    j->n_tasks = (np + j->chunk - 1) / j->chunk;
    j->bounds = NULL;
    pool_for(j->n_tasks, mm_task_gemm_avx2, j);
    j->post_done = 1;
    if (own) free(buf);
}
#endif // MM_X86

#if MM_X86
// ----------------------------------------------------------------------------
// AVX-512 GEMV (decode: f32, bf16, and q8 without VNNI) and widening kernels: one 32-column panel x
// up to 4 rows per call.
// Weights are widened to f32 in registers (exact), activations are the f32 rows of x broadcast
// from L1, and each output lane accumulates in k order with FMAs -- the order of matmul_ref. The
// panel streams from memory once per 4 rows (from L2 for the next 4), one sequential stream per
// thread. Compute is ~7-15 % of the core's peak at DRAM speed, so the extra widening ops are free.

// Mask of the first n of 16 lanes (clamped to 0..16): masked loads read nothing past the end of a
// row, masked stores write nothing past N.
MM_INLINE MM_TGT_512 __mmask16 mm_mask16(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

// max |x| over one group of G inputs (exact, so every quantizer derives the same scale), and whether
// the group holds a NaN.
MM_INLINE MM_TGT_512 float mm_group_absmax512(const float* xg, int G, int* has_nan) {
    __m512 mx = _mm512_setzero_ps();
    __mmask16 nan = 0;
    for (int k = 0; k < G; k += 16) {
        __m512 xv = _mm512_maskz_loadu_ps(mm_mask16(G - k), xg + k);
        nan |= _mm512_cmp_ps_mask(xv, xv, _CMP_UNORD_Q);
        mx = _mm512_max_ps(_mm512_abs_ps(xv), mx);
    }
    *has_nan = nan != 0;
    return _mm512_reduce_max_ps(mx);
}

// f32 / bf16 widening GEMV: x (MR, K) f32 rows (stride K), w the panel ((K, 32) f32 or (K2/2, 32)
// bf16 pairs), y (MR, nc) with row stride N. Registers at MR = 4: acc[4][2] (8 zmm: row i, columns
// 0-15 and 16-31) + the 2 weight vectors (4 widened ones for bf16) + the broadcast.
MM_INLINE MM_TGT_512 void mm_gemv512_fb(const MMJob* j, const float* x, const uint32_t* w, float* y,
                                        int nc, int is_bf16, const int MR) {
    int K = j->K;
    __m512 acc[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    if (!is_bf16) {
        const float* wf = (const float*)w;
        for (int k = 0; k < K; k++) {
            __m512 w0 = _mm512_load_ps(wf + (size_t)k * 32), w1 = _mm512_load_ps(wf + (size_t)k * 32 + 16);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                __m512 xv = _mm512_set1_ps(x[(size_t)i * K + k]);
                acc[i][0] = _mm512_fmadd_ps(w0, xv, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(w1, xv, acc[i][1]);
            }
        }
    } else {
        // word = bf16(k even) | bf16(k odd) << 16: `<< 16` is the even f32, `& 0xffff0000` the odd
        const __m512i hi16 = _mm512_set1_epi32((int)0xffff0000u);
        int kh = K / 2;                     // complete pairs; kk == kh is the odd-K tail pair
        for (int kk = 0; kk < (K + 1) / 2; kk++) {
            __m512i v0 = _mm512_load_si512((const void*)(w + (size_t)kk * 32));
            __m512i v1 = _mm512_load_si512((const void*)(w + (size_t)kk * 32 + 16));
            __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16));
            __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16));
            __m512 o0 = _mm512_castsi512_ps(_mm512_and_si512(v0, hi16));
            __m512 o1 = _mm512_castsi512_ps(_mm512_and_si512(v1, hi16));
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                __m512 xe = _mm512_set1_ps(x[(size_t)i * K + 2 * kk]);
                acc[i][0] = _mm512_fmadd_ps(e0, xe, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(e1, xe, acc[i][1]);
                if (kk < kh) {              // odd K: the last pair has no odd element
                    __m512 xo = _mm512_set1_ps(x[(size_t)i * K + 2 * kk + 1]);
                    acc[i][0] = _mm512_fmadd_ps(o0, xo, acc[i][0]);
                    acc[i][1] = _mm512_fmadd_ps(o1, xo, acc[i][1]);
                }
            }
        }
    }
    __mmask16 m0 = mm_mask16(nc), m1 = mm_mask16(nc - 16);
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        _mm512_mask_storeu_ps(y + (size_t)i * j->N, m0, acc[i][0]);
        _mm512_mask_storeu_ps(y + (size_t)i * j->N + 16, m1, acc[i][1]);
    }
}

// q8: per 4-byte lane, xor 0x80 turns u8 = w+128 back into s8 and shift left/arith-shift right
// sign-extends byte jj; f32 sums per group, then acc += scale * group sum (the reference order).
MM_INLINE MM_TGT_512 void mm_gemv512_q8(const MMJob* j, const float* x, const uint32_t* w, const float* s,
                                        float* y, int nc, const int MR) {
    int K = j->K, G4 = j->p->G / 4, ng = j->p->ng;
    const __m512i flip = _mm512_set1_epi32((int)0x80808080u);     // 0x80 in each of the 4 bytes
    // acc: the running f32 result; ps: the current group's f32 partial sums (MR x 2 zmm each)
    __m512 acc[4][2];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m512 ps[4][2];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) ps[i][0] = ps[i][1] = _mm512_setzero_ps();
        for (int kq = g * G4; kq < (g + 1) * G4; kq++) {
            __m512i v0 = _mm512_xor_si512(_mm512_load_si512((const void*)(w + (size_t)kq * 32)), flip);
            __m512i v1 = _mm512_xor_si512(_mm512_load_si512((const void*)(w + (size_t)kq * 32 + 16)), flip);
            // byte jj (k = 4kq + jj) to the top of its lane (<< 24 - 8jj), then an arithmetic shift
            // right by 24 brings it down sign-extended: the s8 weight as an int32, then f32 (exact)
#pragma GCC unroll 4
            for (int jj = 0; jj < 4; jj++) {
                __m512 w0 = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v0, 24 - 8 * jj), 24));
                __m512 w1 = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v1, 24 - 8 * jj), 24));
#pragma GCC unroll 4
                for (int i = 0; i < MR; i++) {
                    __m512 xv = _mm512_set1_ps(x[(size_t)i * K + 4 * kq + jj]);
                    ps[i][0] = _mm512_fmadd_ps(w0, xv, ps[i][0]);
                    ps[i][1] = _mm512_fmadd_ps(w1, xv, ps[i][1]);
                }
            }
        }
        __m512 s0 = _mm512_load_ps(s + (size_t)g * 32), s1 = _mm512_load_ps(s + (size_t)g * 32 + 16);
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++) {
            acc[i][0] = _mm512_fmadd_ps(s0, ps[i][0], acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(s1, ps[i][1], acc[i][1]);
        }
    }
    __mmask16 m0 = mm_mask16(nc), m1 = mm_mask16(nc - 16);
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        _mm512_mask_storeu_ps(y + (size_t)i * j->N, m0, acc[i][0]);
        _mm512_mask_storeu_ps(y + (size_t)i * j->N + 16, m1, acc[i][1]);
    }
}

// q8 decode with VNNI (T <= mm_gemv_max_t[DT_Q8] on AVX512-VNNI machines). The activation rows are
// quantized once per call by mm_quantize_rows_q8 (row-major: q (T, K) s8, as (T, ng) scales,
// ac (T, ng) = -128 * sum(q)), exactly as the GEMM's mm_task_pack_q8 does (both match
// mm_quantize_group bit for bit), and this kernel computes the GEMM microkernel's arithmetic: per
// group, int32 lanes start at the compensation and take G/4 vpdpbusd steps of the u8 panel words x
// the broadcast s8 activation word (exact), then f += float(acc) * (scale_w * scale_x) in group
// order. So a decode row gives bit for bit what the same row gives inside a prefill GEMM.
// One 32-column panel x up to 3 rows per call; 2*MR vpdpbusd chains (latency 4: 32 B/cycle per
// core at MR = 1, ~4x what DRAM gives; splitting the chains further measured no faster -- on this VM
// a kernel that issues its loads a little less greedily streams as well or better). The weights are
// prefetched (prefetcht1) mm_gemv_pf bytes ahead in the thread's stream (PERF_NOTES 5).
static int mm_gemv_pf = 2048;       // prefetch distance in bytes (0 = none); a knob for bench.c

MM_INLINE MM_TGT_VNNI void mm_gemv512_q8v(const int8_t* q, const float* as, const int32_t* ac, int K, int ng,
                                          int G4, const uint32_t* w, const float* s, float* y, int ldy, int nc,
                                          const int MR) {
    // f[i][h]: row i's f32 result, columns 16h..16h+15; acc[i][h]: the current group's int32 dots.
    // Registers at MR = 3: 6 f32 + 6 int32 + 2 weights + 1 activation broadcast = 15 of 32 zmm.
    __m512 f[3][2];
    const int pf = mm_gemv_pf;
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m512i acc[3][2];
#pragma GCC unroll 3
        for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_set1_epi32(ac[(size_t)i * ng + g]);
        const uint32_t* wg = w + (size_t)g * G4 * 32;          // the group's G/4 panel rows
        const int8_t* qg = q + (size_t)g * G4 * 4;              // the group's G inputs of row 0
        for (int kq = 0; kq < G4; kq++) {
            const uint32_t* wk = wg + (size_t)kq * 32;
            // two prefetches: a panel row is 128 bytes = 2 cache lines; T1 = to L2 (not L1)
            if (pf) {
                _mm_prefetch((const char*)wk + pf, _MM_HINT_T1);
                _mm_prefetch((const char*)wk + pf + 64, _MM_HINT_T1);
            }
            __m512i w0 = _mm512_load_si512((const void*)wk), w1 = _mm512_load_si512((const void*)(wk + 16));
#pragma GCC unroll 3
            for (int i = 0; i < MR; i++) {
                int32_t a4;                 // 4 s8 activations (memcpy: no type punning)
                memcpy(&a4, qg + (size_t)i * K + 4 * kq, 4);
                __m512i av = _mm512_set1_epi32(a4);
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], w0, av);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], w1, av);
            }
        }
        __m512 s0 = _mm512_load_ps(s + (size_t)g * 32), s1 = _mm512_load_ps(s + (size_t)g * 32 + 16);
#pragma GCC unroll 3
        for (int i = 0; i < MR; i++) {
            __m512 sx = _mm512_set1_ps(as[(size_t)i * ng + g]);
            f[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][0]), _mm512_mul_ps(s0, sx), f[i][0]);
            f[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][1]), _mm512_mul_ps(s1, sx), f[i][1]);
        }
    }
    __mmask16 m0 = mm_mask16(nc), m1 = mm_mask16(nc - 16);
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++) {
        _mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, f[i][0]);
        _mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, f[i][1]);
    }
}

MM_TGT_VNNI static void mm_task_gemv512_q8v(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int p0, p1;
    mm_task_panels(j, task, &p0, &p1);
    const int8_t* q = j->a;
    for (int pi = p0; pi < p1; pi++) {
        const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32;
        const float* s = p->s + (size_t)pi * p->ng * 32;
        int nc = j->N - pi * 32;
        // passes of up to 3 rows (the kernel's MR limit); with T <= mm_gemv_max_t[DT_Q8] = 3 one
        // pass, so each panel is read from memory exactly once
        for (int t = 0; t < j->T; t += 3) {
            int mr = mm_min(3, j->T - t);
            const int8_t* qt = q + (size_t)t * j->K;
            const float* as = j->as + (size_t)t * p->ng;
            const int32_t* ac = j->ac + (size_t)t * p->ng;
            float* y = j->y + (size_t)t * j->N + pi * 32;
            if (mr == 3) mm_gemv512_q8v(qt, as, ac, j->K, p->ng, p->G / 4, wp, s, y, j->N, nc, 3);
            else if (mr == 2) mm_gemv512_q8v(qt, as, ac, j->K, p->ng, p->G / 4, wp, s, y, j->N, nc, 2);
            else mm_gemv512_q8v(qt, as, ac, j->K, p->ng, p->G / 4, wp, s, y, j->N, nc, 1);
        }
    }
}

// Quantize rows x (T, K) to q (T, K) s8, as (T, ng), ac (T, ng) = -128 * sum(q): mm_quantize_group
// per (row, group), in SIMD (same absmax, iscale = 127/absmax, rint via vcvtps2dq, clamp +-127).
MM_TGT_512 static void mm_quantize_rows_q8(const float* x, int T, int K, int G, int8_t* q, float* as, int32_t* ac) {
    int ng = K / G;
    for (int t = 0; t < T; t++) {
        for (int g = 0; g < ng; g++) {
            const float* xg = x + (size_t)t * K + (size_t)g * G;
            int8_t* qg = q + (size_t)t * K + (size_t)g * G;
            int nan;
            float amax = mm_group_absmax512(xg, G, &nan);
            if (nan || amax < 1e-30f || amax > 3.4028235e38f) {     // zero, tiny, inf or NaN group
                memset(qg, 0, (size_t)G);
                as[(size_t)t * ng + g] = nan ? NAN : amax < 1e-30f ? 0.0f : INFINITY;
                ac[(size_t)t * ng + g] = 0;
                continue;
            }
            __m512 vis = _mm512_set1_ps(127.0f / amax);
            __m512i sum = _mm512_setzero_si512();
            // 16 inputs per step; the masked tail (G % 16 == 4, 8 or 12) loads zeros, which quantize
            // to 0 and add nothing to sum; vpmovdb (cvtepi32 -> epi8) truncates, exact for +-127
            for (int k = 0; k < G; k += 16) {
                __mmask16 m = mm_mask16(G - k);
                __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xg + k), vis));
                qi = _mm512_max_epi32(_mm512_min_epi32(qi, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
                sum = _mm512_add_epi32(sum, qi);
                _mm512_mask_cvtepi32_storeu_epi8(qg + k, m, qi);
            }
            as[(size_t)t * ng + g] = amax / 127.0f;
            ac[(size_t)t * ng + g] = -128 * _mm512_reduce_add_epi32(sum);
        }
    }
}

// Widening GEMV task (f32, bf16; q8 without VNNI or with the knob off): panels [p0, p1) for blocks
// of MM_TBLK rows (the x block stays in L2 while the panels stream), 4 rows per kernel call.
// Usually T is small (decode); the row blocks matter when mm_q8_gemv_vnni = 0 on a CPU without
// AVX512-VNNI, which sends q8 calls of every T here.
MM_TGT_512 static void mm_task_gemv512(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int p0, p1;
    mm_task_panels(j, task, &p0, &p1);
    int type = j->w->type;
    for (int tb = 0; tb < j->T; tb += MM_TBLK) {
        int te = mm_min(j->T, tb + MM_TBLK);
        for (int pi = p0; pi < p1; pi++) {
            const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32;
            int nc = j->N - pi * 32;
            for (int t = tb; t < te; t += 4) {
                int mr = mm_min(4, te - t);
                const float* x = j->x + (size_t)t * j->K;
                float* y = j->y + (size_t)t * j->N + pi * 32;
                if (type == DT_Q8) {
                    const float* s = p->s + (size_t)pi * p->ng * 32;
                    switch (mr) {
                    case 4: mm_gemv512_q8(j, x, wp, s, y, nc, 4); break;
                    case 3: mm_gemv512_q8(j, x, wp, s, y, nc, 3); break;
                    case 2: mm_gemv512_q8(j, x, wp, s, y, nc, 2); break;
                    default: mm_gemv512_q8(j, x, wp, s, y, nc, 1); break;
                    }
                } else {
                    int bf = type == DT_BF16;
                    switch (mr) {
                    case 4: mm_gemv512_fb(j, x, wp, y, nc, bf, 4); break;
                    case 3: mm_gemv512_fb(j, x, wp, y, nc, bf, 3); break;
                    case 2: mm_gemv512_fb(j, x, wp, y, nc, bf, 2); break;
                    default: mm_gemv512_fb(j, x, wp, y, nc, bf, 1); break;
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------
// AVX-512 GEMM: activation packing (per call, both threads, tiles split between tasks)
//   f32   a: (ntiles, K, 14) f32                  row i of tile it = x row 14*it+i, zero past T
//   bf16  a: (ntiles, K2/2, 14) uint32 bf16 pairs (RNE), zero past T and past K
//   q8    a: (ntiles, K/4, 6) uint32 = 4 x s8;  as: (ntiles, ng, 6) scales;  ac: (ntiles, ng, 6) -128*sum(q)

// In-register transpose of a 16x16 block of 32-bit elements: o[c] lane r = r[r] lane c.
// 64 shuffles per 256 elements; it turns the packing's strided scalar stores into one masked
// vector store per output k-row (measured: f32 packing 1.5 -> ~0.3 ns per element).
// Three stages, each doubling the block that is already transposed: 1x1 elements interleaved into
// 2x2 (unpack), 2x2 into 4x4 within each 128-bit lane (shuffle_ps), then the 128-bit lanes
// themselves moved across registers (shuffle_f32x4, twice).
MM_INLINE MM_TGT_512 void mm512_transpose16(const __m512 r[16], __m512 o[16]) {
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4q+e], 128-bit lane j = rows 4q..4q+3 of column 4j+e
    // imm 0x44 = elements (0, 1) of each lane of the first source, then (0, 1) of the second;
    // 0xEE the same with elements (2, 3)
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        u[4 * q + 0] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
        u[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
        u[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
        u[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
    }
    // shuffle_f32x4 picks whole 128-bit lanes: imm 0x88 = lanes (0, 2) of the first source then
    // (0, 2) of the second, 0xDD = lanes (1, 3) of each; two rounds move lane j of u[4q+e] to
    // 128-bit lane q of o[4j+e]
#pragma GCC unroll 4
    for (int e = 0; e < 4; e++) {
        __m512 a = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x88), b = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xDD);
        __m512 c = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x88), d = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xDD);
        o[e] = _mm512_shuffle_f32x4(a, c, 0x88);
        o[8 + e] = _mm512_shuffle_f32x4(a, c, 0xDD);
        o[4 + e] = _mm512_shuffle_f32x4(b, d, 0x88);
        o[12 + e] = _mm512_shuffle_f32x4(b, d, 0xDD);
    }
}

MM_TGT_512 static void mm_task_pack_f32(void* v, int task) {
    MMJob* j = v;
    int K = j->K, ta, tb;
    mm_split(j->ntiles, task, j->n_tasks, &ta, &tb);
    // the transpose works on 16 rows; a tile has 14, so rows 14, 15 are zero inputs and the store
    // mask keeps lanes 0..13
    const __mmask16 rows14 = (1u << MM_F32_MR) - 1;
    for (int it = ta; it < tb; it++) {
        float* a = (float*)j->a + (size_t)it * K * MM_F32_MR;      // tile it: (K, 14) f32
        int t0 = it * MM_F32_MR, mr = mm_min(MM_F32_MR, j->T - t0);
        const float* xt = mm_tile_rows(j, t0, mr);      // the tile's rows, (mr, K)
        for (int k = 0; k < K; k += 16) {
            int kn = mm_min(16, K - k);
            __mmask16 km = mm_mask16(kn);
            __m512 r[16], o[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < mr ? _mm512_maskz_loadu_ps(km, xt + (size_t)i * K + k) : _mm512_setzero_ps();
            mm512_transpose16(r, o);
            for (int q = 0; q < kn; q++) _mm512_mask_storeu_ps(a + (size_t)(k + q) * MM_F32_MR, rows14, o[q]);
        }
    }
}

// 16 f32 -> 8 bf16 pairs (uint32), round to nearest even, NaN kept quiet: f32_to_bf16 in SIMD.
// Rounding: add 0x7fff plus bit 16 (the lowest kept bit), then drop the low 16 bits: below half
// truncates, above half carries into the kept bits, an exact half rounds to the even neighbour.
// A NaN gets its quiet bit 0x400000 (mantissa bit 22) set instead, so truncation can never leave
// an all-zero mantissa (that would read as inf).
MM_INLINE MM_TGT_512 __m256i mm512_bf16_pairs(__m512 f) {
    __m512i u = _mm512_castps_si512(f);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                 _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    // keep the high half of each 32-bit lane: 16-bit elements 1, 3, 5, ... -> the low 256 bits
    const __m512i odd = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
                                         31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_castsi512_si256(_mm512_permutexvar_epi16(odd, r));
}

MM_TGT_512 static void mm_task_pack_bf16(void* v, int task) {
    MMJob* j = v;
    int K = j->K, kw = (K + 1) / 2, ta, tb;
    mm_split(j->ntiles, task, j->n_tasks, &ta, &tb);
    const __mmask16 rows14 = (1u << MM_F32_MR) - 1;
    for (int it = ta; it < tb; it++) {
        float* a = (float*)j->a + (size_t)it * kw * MM_F32_MR;     // uint32 pairs, moved as floats
        int t0 = it * MM_F32_MR, mr = mm_min(MM_F32_MR, j->T - t0);
        const float* xt = mm_tile_rows(j, t0, mr);      // the tile's rows, (mr, K)
        for (int kk = 0; kk < kw; kk += 16) {                      // 16 pairs = 32 inputs per block
            int nf = K - 2 * kk;                                    // inputs left (zero-padded past K)
            __mmask16 m0 = mm_mask16(nf), m1 = mm_mask16(nf - 16);
            __m512 r[16], o[16];
            for (int i = 0; i < 16; i++) {
                if (i >= mr) { r[i] = _mm512_setzero_ps(); continue; }
                const float* xr = xt + (size_t)i * K + 2 * kk;
                // inputs 0-15 -> pairs 0-7 (low 256 bits), inputs 16-31 -> pairs 8-15 (high)
                __m256i lo = mm512_bf16_pairs(_mm512_maskz_loadu_ps(m0, xr));
                __m256i hi = mm512_bf16_pairs(_mm512_maskz_loadu_ps(m1, xr + 16));
                r[i] = _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
            }
            mm512_transpose16(r, o);
            int qn = mm_min(16, kw - kk);
            for (int q = 0; q < qn; q++) _mm512_mask_storeu_ps(a + (size_t)(kk + q) * MM_F32_MR, rows14, o[q]);
        }
    }
}

// q8: per (row, group) absmax -> scale, then 64 inputs at a time: 6 rows quantized to int8 words,
// transposed (rows 6..15 zero) and stored as 16 k4-rows of 6 words. Must match mm_quantize_group.
MM_TGT_512 static void mm_task_pack_q8(void* v, int task) {
    MMJob* j = v;
    int K = j->K, G = j->p->G, ng = j->p->ng, kw = K / 4, ta, tb;
    mm_split(j->ntiles, task, j->n_tasks, &ta, &tb);
    // The interleave of the rows' words below: output vector v, lane l (word 16v + l of the tile's 16
    // k4 steps x MM_Q8_MR rows) is lane src[v][l] = (16v + l) / MM_Q8_MR of row (16v + l) % MM_Q8_MR,
    // the rows selected by the masks take[v][row].
    __m512i src[MM_Q8_MR];
    __mmask16 take[MM_Q8_MR][MM_Q8_MR] = {{0}};
    for (int v = 0; v < MM_Q8_MR; v++) {
        int32_t lane[16];
        for (int l = 0; l < 16; l++) {
            lane[l] = (16 * v + l) / MM_Q8_MR;
            take[v][(16 * v + l) % MM_Q8_MR] |= (__mmask16)(1u << l);
        }
        src[v] = _mm512_loadu_si512((const void*)lane);
    }
    for (int it = ta; it < tb; it++) {
        uint32_t* a = (uint32_t*)j->a + (size_t)it * kw * MM_Q8_MR;  // words of 4 s8
        float* as = j->as + (size_t)it * ng * MM_Q8_MR;
        int32_t* ac = j->ac + (size_t)it * ng * MM_Q8_MR;
        int t0 = it * MM_Q8_MR, mr = mm_min(MM_Q8_MR, j->T - t0);
        const float* xt = mm_tile_rows(j, t0, mr);      // the tile's rows, (mr, K)
        for (int g = 0; g < ng; g++) {
            float iscale[MM_Q8_MR];
            __m512i sum[MM_Q8_MR];
            for (int i = 0; i < MM_Q8_MR; i++) {
                iscale[i] = 0.0f;                                   // 0: this row's group quantizes to zeros
                sum[i] = _mm512_setzero_si512();
                as[g * MM_Q8_MR + i] = 0.0f;
                if (i >= mr) continue;
                const float* xg = xt + (size_t)i * K + (size_t)g * G;
                // absmax over the group (exact, so the scale matches mm_quantize_group bit for bit)
                int nan;
                float amax = mm_group_absmax512(xg, G, &nan);
                if (nan || amax < 1e-30f || amax > 3.4028235e38f)  // zero, tiny, inf or NaN group
                    as[g * MM_Q8_MR + i] = nan ? NAN : amax < 1e-30f ? 0.0f : INFINITY;
                else {
                    iscale[i] = 127.0f / amax;
                    as[g * MM_Q8_MR + i] = amax / 127.0f;
                }
            }
            // 64 inputs = 16 words of 4 s8 per row. q = round(x * 127 / absmax) lies in -127..127 by
            // construction (|x| <= absmax), so the saturating packs (int32 -> int16 -> int8) are exact;
            // they interleave the four vectors by 128-bit lane, and one vpermd puts the words back in k
            // order. Then the six rows' words are interleaved into the tile layout, 96 words (k4 step
            // q, row i at word 6q + i) = 6 zmm: output lane l of vector v takes lane (16v + l) / 6 of
            // row (16v + l) % 6 (a masked vpermd per row). The tail of a group (G % 64 != 0) is masked
            // to zeros and stores fewer k4 steps.
            for (int c0 = 0; c0 < G; c0 += 64) {
                __m512i rw[MM_Q8_MR];
                for (int i = 0; i < MM_Q8_MR; i++) {
                    rw[i] = _mm512_setzero_si512();
                    if (iscale[i] == 0.0f) continue;
                    const float* xc = xt + (size_t)i * K + (size_t)g * G + c0;
                    __m512 vis = _mm512_set1_ps(iscale[i]);
                    __m512i q[4];
#pragma GCC unroll 4
                    for (int b = 0; b < 4; b++) {
                        __m512 xv = _mm512_maskz_loadu_ps(mm_mask16(G - c0 - 16 * b), xc + 16 * b);
                        q[b] = _mm512_cvtps_epi32(_mm512_mul_ps(xv, vis));
                        sum[i] = _mm512_add_epi32(sum[i], q[b]);
                    }
                    __m512i b8 = _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
                    // 128-bit lane L holds the words L of q[0], q[1], q[2], q[3]: word 4j + L sits at 4L + j
                    rw[i] = _mm512_permutexvar_epi32(
                        _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), b8);
                }
                int qn = mm_min(16, (G - c0) / 4);
                uint32_t* dst = a + (size_t)((g * G + c0) / 4) * MM_Q8_MR;
                for (int v = 0; v < MM_Q8_MR; v++) {
                    int words = qn * MM_Q8_MR - 16 * v;   // words of this vector inside the group's tail
                    if (words <= 0) break;
                    __m512i o = _mm512_setzero_si512();
#pragma GCC unroll 6
                    for (int i = 0; i < MM_Q8_MR; i++) o = _mm512_mask_permutexvar_epi32(o, take[v][i], src[v], rw[i]);
                    _mm512_mask_storeu_epi32(dst + 16 * v, mm_mask16(words), o);
                }
            }
            for (int i = 0; i < MM_Q8_MR; i++) ac[g * MM_Q8_MR + i] = -128 * _mm512_reduce_add_epi32(sum[i]);
        }
    }
}
#endif // MM_X86

#if MM_X86
// ----------------------------------------------------------------------------
// AVX-512 GEMM microkernels: one row tile x one 32-column panel over the full K (each output tile
// written once, no C reads). Weights are the vector operand (16 columns per zmm), activations the
// broadcast operand (vbroadcast/{1to16} from the packed tile). Loops fully unrolled over the tile
// so the accumulators stay in registers (GCC keeps a partially unrolled acc array in memory).
// Tail tiles (rows past T, columns past N) compute zero-padded lanes and mask the stores.

// f32 14x32. a: the tile, (K, 14) f32; w: the panel, (K, 32) f32; y: (mr, nc) outputs, row stride
// ldy. Loop nest: k outer, rows inner -- per k, 2 weight loads, 14 broadcasts, 28 FMAs (14 cycles
// at 2 FMA/cycle), so the load ports have slack. Registers: acc[14][2] (28 zmm) + w0, w1 + the
// broadcast = 31 of 32. 28 independent chains cover FMA latency 4 x 2 ports many times over.
MM_TGT_512 static void mm_kernel_f32(const float* a, const float* w, int K, float* y, int ldy, int mr, int nc) {
    __m512 acc[MM_F32_MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MM_F32_MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 w0 = _mm512_load_ps(w + (size_t)k * 32), w1 = _mm512_load_ps(w + (size_t)k * 32 + 16);
        const float* ak = a + (size_t)k * MM_F32_MR;
#pragma GCC unroll 14
        for (int i = 0; i < MM_F32_MR; i++) {
            __m512 av = _mm512_set1_ps(ak[i]);
            acc[i][0] = _mm512_fmadd_ps(av, w0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(av, w1, acc[i][1]);
        }
    }
    __mmask16 m0 = mm_mask16(nc), m1 = mm_mask16(nc - 16);
#pragma GCC unroll 14
    for (int i = 0; i < MM_F32_MR; i++) {
        if (i < mr) {
            _mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, acc[i][0]);
            _mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, acc[i][1]);
        }
    }
}

// vdpbf16ps: lane c += a.lo*w.lo + a.hi*w.hi with the (k even, k odd) pair of row i broadcast.
// Latency 6 cycles: 28 independent accumulators are plenty.
// a: the tile, (K2/2, 14) bf16 pairs; w: the panel, (K2/2, 32) pairs. The f32 kernel's register plan
// and loop nest, but each step covers 2 k: twice the flops per load and per instruction.
MM_TGT_BF16 static void mm_kernel_bf16(const uint32_t* a, const uint32_t* w, int kw, float* y, int ldy, int mr, int nc) {
    __m512 acc[MM_F32_MR][2];
#pragma GCC unroll 14
    for (int i = 0; i < MM_F32_MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int kk = 0; kk < kw; kk++) {
        __m512bh w0 = (__m512bh)_mm512_load_si512((const void*)(w + (size_t)kk * 32));
        __m512bh w1 = (__m512bh)_mm512_load_si512((const void*)(w + (size_t)kk * 32 + 16));
        const uint32_t* ak = a + (size_t)kk * MM_F32_MR;
#pragma GCC unroll 14
        for (int i = 0; i < MM_F32_MR; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)ak[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, w0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, w1);
        }
    }
    __mmask16 m0 = mm_mask16(nc), m1 = mm_mask16(nc - 16);
#pragma GCC unroll 14
    for (int i = 0; i < MM_F32_MR; i++) {
        if (i < mr) {
            _mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, acc[i][0]);
            _mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, acc[i][1]);
        }
    }
}

// q8: per group, int32 accumulators start at the compensation -128*sum(q_x) (a broadcast load), take
// G/4 vpdpbusd steps of u8 weights x s8 activations (exact: sum (w+128)*q - 128*sum(q) = sum w*q),
// then f += float(acc) * (scale_w * scale_x). (G/4)/(G/4+2) of the VNNI peak in core: 89 % at G=64.
MM_TGT_VNNI static void mm_kernel_q8(const uint32_t* a, const float* as, const int32_t* ac, const uint32_t* w,
                                     const float* ws, int ng, int G4, float* y, int ldy, int mr, int nc) {
    __m512 f[MM_Q8_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MM_Q8_MR; i++) f[i][0] = f[i][1] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m512i acc[MM_Q8_MR][2];
#pragma GCC unroll 6
        for (int i = 0; i < MM_Q8_MR; i++) acc[i][0] = acc[i][1] = _mm512_set1_epi32(ac[g * MM_Q8_MR + i]);
        const uint32_t* wg = w + (size_t)g * G4 * 32;
        const uint32_t* ag = a + (size_t)g * G4 * MM_Q8_MR;
#if defined(__GNUC__) && !defined(__clang__)
        // GCC wraps every _mm512_dpbusd_epi32 of an unrolled tile in two register copies (measured:
        // -7 points), so the group loop is written out: per k4 step 2 weight loads (zmm30/31), the 6
        // rows' activation words broadcast into zmm27-29 (offsets 0..20: rows 0-5, 4 bytes each), 12
        // vpdpbusd. Each word is broadcast once into a register for its 2 vpdpbusd: with the broadcast
        // folded into each vpdpbusd instead ({1to16}, 12 broadcast loads per step) the loop ran at 84%
        // of the VNNI peak in L1 on a Zen 5, with 6 explicit ones at 98% (G = 1024; 79 -> 85% at G = 64).
        // Per step w moves 128 bytes (one panel row, `subq $-128`: a shorter encoding than `addq
        // $128`) and a 24 bytes (6 rows x 4 s8). "+v": any of zmm0-31 (EVEX); the clobber list keeps
        // the 12 accumulators off zmm27-31.
        const uint32_t* wend = wg + (size_t)G4 * 32;
        __asm__(
            "1:\n\t"
            "vmovdqa64 (%[w]), %%zmm30\n\t"
            "vmovdqa64 64(%[w]), %%zmm31\n\t"
            "vpbroadcastd (%[a]), %%zmm27\n\t"
            "vpbroadcastd 4(%[a]), %%zmm28\n\t"
            "vpbroadcastd 8(%[a]), %%zmm29\n\t"
            "vpdpbusd %%zmm27, %%zmm30, %[c00]\n\t"
            "vpdpbusd %%zmm27, %%zmm31, %[c01]\n\t"
            "vpdpbusd %%zmm28, %%zmm30, %[c10]\n\t"
            "vpdpbusd %%zmm28, %%zmm31, %[c11]\n\t"
            "vpdpbusd %%zmm29, %%zmm30, %[c20]\n\t"
            "vpdpbusd %%zmm29, %%zmm31, %[c21]\n\t"
            "vpbroadcastd 12(%[a]), %%zmm27\n\t"
            "vpbroadcastd 16(%[a]), %%zmm28\n\t"
            "vpbroadcastd 20(%[a]), %%zmm29\n\t"
            "vpdpbusd %%zmm27, %%zmm30, %[c30]\n\t"
            "vpdpbusd %%zmm27, %%zmm31, %[c31]\n\t"
            "vpdpbusd %%zmm28, %%zmm30, %[c40]\n\t"
            "vpdpbusd %%zmm28, %%zmm31, %[c41]\n\t"
            "vpdpbusd %%zmm29, %%zmm30, %[c50]\n\t"
            "vpdpbusd %%zmm29, %%zmm31, %[c51]\n\t"
            "subq $-128, %[w]\n\t"
            "addq $24, %[a]\n\t"
            "cmpq %[wend], %[w]\n\t"
            "jne 1b\n\t"
            : [c00] "+v"(acc[0][0]), [c01] "+v"(acc[0][1]), [c10] "+v"(acc[1][0]), [c11] "+v"(acc[1][1]),
              [c20] "+v"(acc[2][0]), [c21] "+v"(acc[2][1]), [c30] "+v"(acc[3][0]), [c31] "+v"(acc[3][1]),
              [c40] "+v"(acc[4][0]), [c41] "+v"(acc[4][1]), [c50] "+v"(acc[5][0]), [c51] "+v"(acc[5][1]),
              [w] "+r"(wg), [a] "+r"(ag)
            : [wend] "r"(wend)
            : "cc", "memory", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
#else
        for (int q = 0; q < G4; q++) {
            __m512i w0 = _mm512_load_si512((const void*)(wg + (size_t)q * 32));
            __m512i w1 = _mm512_load_si512((const void*)(wg + (size_t)q * 32 + 16));
#pragma GCC unroll 6
            for (int i = 0; i < MM_Q8_MR; i++) {
                __m512i av = _mm512_set1_epi32((int)ag[q * MM_Q8_MR + i]);
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], w0, av);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], w1, av);
            }
        }
#endif
        __m512 s0 = _mm512_load_ps(ws + (size_t)g * 32), s1 = _mm512_load_ps(ws + (size_t)g * 32 + 16);
#pragma GCC unroll 6
        for (int i = 0; i < MM_Q8_MR; i++) {
            __m512 sx = _mm512_set1_ps(as[g * MM_Q8_MR + i]);
            f[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][0]), _mm512_mul_ps(s0, sx), f[i][0]);
            f[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][1]), _mm512_mul_ps(s1, sx), f[i][1]);
        }
    }
    __mmask16 m0 = mm_mask16(nc), m1 = mm_mask16(nc - 16);
#pragma GCC unroll 6
    for (int i = 0; i < MM_Q8_MR; i++) {
        if (i < mr) {
            _mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, f[i][0]);
            _mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, f[i][1]);
        }
    }
}

// GEMM loop nest per task (one weight block of <= NCP panels): row tiles -> panels -> kernel(full K). The tile's activation sliver (MR x K) stays in L1/L2 and is reused for
// every panel of the block; the block (NCP x 32 x K) streams from L2/L3.
// Why this order: the weights are the big operand (N x K), the activations small (T x K); with
// tiles outer, each weight block is re-read once per row tile but from cache (it was sized to fit:
// MM_*_NCP), while the full K per kernel call means each output is stored once, never re-read.
static void mm_task_gemm(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int type = j->w->type, N = j->N;
    int mrt = type == DT_Q8 ? MM_Q8_MR : MM_F32_MR;
    int p0, p1, it0, it1;
    mm_task_tiles(j, task, &p0, &p1, &it0, &it1);   // one weight block, one row group
    for (int it = it0; it < it1; it++) {
        int t0 = it * mrt, mr = mm_min(mrt, j->T - t0);
        for (int pi = p0; pi < p1; pi++) {
            const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32;   // (kw, 32) words
            float* y = j->y + (size_t)t0 * N + pi * 32;     // the tile's rows, columns 32pi.. (stride N)
            int nc = N - pi * 32;                           // > 32 except at the last panel
            if (type == DT_F32)
                mm_kernel_f32((const float*)j->a + (size_t)it * p->kw * MM_F32_MR, (const float*)wp,
                              p->kw, y, N, mr, nc);
            else if (type == DT_BF16)
                mm_kernel_bf16((const uint32_t*)j->a + (size_t)it * p->kw * MM_F32_MR, wp, p->kw, y, N, mr, nc);
            else
                mm_kernel_q8((const uint32_t*)j->a + (size_t)it * p->kw * MM_Q8_MR,
                             j->as + (size_t)it * p->ng * MM_Q8_MR, j->ac + (size_t)it * p->ng * MM_Q8_MR,
                             wp, p->s + (size_t)pi * p->ng * 32, p->ng, p->G / 4, y, N, mr, nc);
        }
        mm_post_tile(j, t0, mr, p0, p1);
    }
}
#endif // MM_X86

#if MM_X86
// ----------------------------------------------------------------------------
// q4 kernels (x86): 4-bit weights on the q8 kernels' integer arithmetic
//
// The activations are quantized exactly as for q8 (mm_quantize_group's rounding, by the same SIMD
// quantizers and tile packers), and each q4 panel word is unpacked in registers into two q8-layout
// words (see "Weight packing"): `w & 0x0f` is the u8 lane of k..k+3, `(w >> 4) & 0x0f` that of
// k+4..k+7, each u = w_signed + 8 in 0..15. Then the q8 dot instructions as they are:
//   AVX512-VNNI / AVX-VNNI  vpdpbusd u8 x s8, lanes starting at the compensation -8 * sum(q) of the
//                           group (the q8 packers hand over -128 * sum(q); / 16 is exact);
//   AVX2                    vpmaddubsw u8 x s8 -> int16 pairs (|pair| <= 2 * 15 * 127 = 3810, never
//                           saturates, and the two nibble halves' pairs add in int16 without
//                           overflow: 7620), vpmaddwd with ones -> int32, from the same compensation;
// so each group's dot sum w * q is the exact integer of matmul_ref, and the epilogue is the q8 one
// in group order: f = fma(float(dot), scale_w * scale_x, f), with the bf16 weight scales widened
// to f32 (a shift: exact). Every level, GEMV and GEMM, gives matmul_ref's bits (tested).
// Per 8 inputs of 16 columns one zmm load feeds 2 x 16 x (rows) dot lanes, so the GEMM costs the
// q8 kernel's dot instructions plus 3 cheap integer ops per loaded vector (shift, 2 ands), and the
// GEMV streams ~4.25-4.5 bits per weight instead of 8.5.

#define MM_Q4_GEMV_MAX_T_512 3   // AVX512-VNNI: T <= 3 takes the q4 GEMV (as q8: one pass of <= 3 rows)
#define MM_Q4_GEMV_MAX_T_AVX2 2  // AVX2 / AVX-VNNI: T <= 2 (as q8)

// 16 bf16 weight scales -> f32 (a bf16 is the top half of an f32: zero-extend, shift left 16; exact).
MM_INLINE MM_TGT_512 __m512 mm512_q4_scales(const uint16_t* s) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)s)), 16));
}
MM_INLINE MM_TGT_AVX2 __m256 mm256_q4_scales(const uint16_t* s) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)s)), 16));
}

// ---- AVX512-VNNI GEMM, 6 rows x 32 columns (mm_kernel_q8's tile and register plan). a: (K/4, 6)
// words of 4 s8 (mm_task_pack_q8), as / ac: (ng, 6); w: the panel (K/8, 32) q4 words; ws: (ng, 32)
// bf16; G8 = G / 8 panel rows per group. Per panel row: 2 loads, 2 shifts, 4 ands, 24 vpdpbusd.
MM_TGT_VNNI static void mm_kernel_q4(const uint32_t* a, const float* as, const int32_t* ac, const uint32_t* w,
                                     const uint16_t* ws, int ng, int G8, float* y, int ldy, int mr, int nc) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    __m512 f[MM_Q8_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MM_Q8_MR; i++) f[i][0] = f[i][1] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m512i acc[MM_Q8_MR][2];
#pragma GCC unroll 6
        for (int i = 0; i < MM_Q8_MR; i++)
            acc[i][0] = acc[i][1] = _mm512_set1_epi32(ac[g * MM_Q8_MR + i] / MM_Q4_COMP_DIV);
        const uint32_t* wg = w + (size_t)g * G8 * 32;
        const uint32_t* ag = a + (size_t)g * G8 * 2 * MM_Q8_MR;    // 2 activation words per panel row
#if defined(__GNUC__) && !defined(__clang__)
        // As in mm_kernel_q8 (GCC wraps each vpdpbusd of an unrolled tile in register copies): the
        // group loop written out. zmm28/29 = low nibbles (k..k+3) of columns 0-15 / 16-31, zmm30/31 =
        // high nibbles (k+4..k+7); rows 0-5 broadcast into zmm25-27 (as in mm_kernel_q8: a register
        // per broadcast word, not {1to16} in every vpdpbusd) from offsets 0..20 (the k..k+3 word) and
        // 24..44 (the k+4..k+7 word). Steps: w 128 bytes (one panel row), a 48 (2 words x 6 rows).
        const uint32_t* wend = wg + (size_t)G8 * 32;
        __asm__(
            "1:\n\t"
            "vmovdqa64 (%[w]), %%zmm28\n\t"
            "vmovdqa64 64(%[w]), %%zmm29\n\t"
            "vpsrld $4, %%zmm28, %%zmm30\n\t"
            "vpsrld $4, %%zmm29, %%zmm31\n\t"
            "vpandd %[nib], %%zmm28, %%zmm28\n\t"
            "vpandd %[nib], %%zmm29, %%zmm29\n\t"
            "vpandd %[nib], %%zmm30, %%zmm30\n\t"
            "vpandd %[nib], %%zmm31, %%zmm31\n\t"
#define MM_Q4_ROWS(o0, o1, o2, wa, wb, c0, c1, c2, c3, c4, c5)                                          \
            "vpbroadcastd " o0 "(%[a]), %%zmm25\n\t"                                                   \
            "vpbroadcastd " o1 "(%[a]), %%zmm26\n\t"                                                   \
            "vpbroadcastd " o2 "(%[a]), %%zmm27\n\t"                                                   \
            "vpdpbusd %%zmm25, %%" wa ", %[" c0 "]\n\t"                                                  \
            "vpdpbusd %%zmm25, %%" wb ", %[" c1 "]\n\t"                                                  \
            "vpdpbusd %%zmm26, %%" wa ", %[" c2 "]\n\t"                                                  \
            "vpdpbusd %%zmm26, %%" wb ", %[" c3 "]\n\t"                                                  \
            "vpdpbusd %%zmm27, %%" wa ", %[" c4 "]\n\t"                                                  \
            "vpdpbusd %%zmm27, %%" wb ", %[" c5 "]\n\t"
            MM_Q4_ROWS("0", "4", "8", "zmm28", "zmm29", "c00", "c01", "c10", "c11", "c20", "c21")
            MM_Q4_ROWS("12", "16", "20", "zmm28", "zmm29", "c30", "c31", "c40", "c41", "c50", "c51")
            MM_Q4_ROWS("24", "28", "32", "zmm30", "zmm31", "c00", "c01", "c10", "c11", "c20", "c21")
            MM_Q4_ROWS("36", "40", "44", "zmm30", "zmm31", "c30", "c31", "c40", "c41", "c50", "c51")
#undef MM_Q4_ROWS
            "subq $-128, %[w]\n\t"
            "addq $48, %[a]\n\t"
            "cmpq %[wend], %[w]\n\t"
            "jne 1b\n\t"
            : [c00] "+v"(acc[0][0]), [c01] "+v"(acc[0][1]), [c10] "+v"(acc[1][0]), [c11] "+v"(acc[1][1]),
              [c20] "+v"(acc[2][0]), [c21] "+v"(acc[2][1]), [c30] "+v"(acc[3][0]), [c31] "+v"(acc[3][1]),
              [c40] "+v"(acc[4][0]), [c41] "+v"(acc[4][1]), [c50] "+v"(acc[5][0]), [c51] "+v"(acc[5][1]),
              [w] "+r"(wg), [a] "+r"(ag)
            : [wend] "r"(wend), [nib] "v"(nib)
            : "cc", "memory", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
#else
        for (int kb = 0; kb < G8; kb++) {
            __m512i r0 = _mm512_load_si512((const void*)(wg + (size_t)kb * 32));
            __m512i r1 = _mm512_load_si512((const void*)(wg + (size_t)kb * 32 + 16));
            __m512i lo0 = _mm512_and_si512(r0, nib), lo1 = _mm512_and_si512(r1, nib);
            __m512i hi0 = _mm512_and_si512(_mm512_srli_epi32(r0, 4), nib);
            __m512i hi1 = _mm512_and_si512(_mm512_srli_epi32(r1, 4), nib);
#pragma GCC unroll 6
            for (int i = 0; i < MM_Q8_MR; i++) {
                __m512i al = _mm512_set1_epi32((int)ag[(2 * kb) * MM_Q8_MR + i]);
                __m512i ah = _mm512_set1_epi32((int)ag[(2 * kb + 1) * MM_Q8_MR + i]);
                acc[i][0] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[i][0], lo0, al), hi0, ah);
                acc[i][1] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[i][1], lo1, al), hi1, ah);
            }
        }
#endif
        __m512 s0 = mm512_q4_scales(ws + (size_t)g * 32), s1 = mm512_q4_scales(ws + (size_t)g * 32 + 16);
#pragma GCC unroll 6
        for (int i = 0; i < MM_Q8_MR; i++) {
            __m512 sx = _mm512_set1_ps(as[g * MM_Q8_MR + i]);
            f[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][0]), _mm512_mul_ps(s0, sx), f[i][0]);
            f[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][1]), _mm512_mul_ps(s1, sx), f[i][1]);
        }
    }
    __mmask16 m0 = mm_mask16(nc), m1 = mm_mask16(nc - 16);
#pragma GCC unroll 6
    for (int i = 0; i < MM_Q8_MR; i++) {
        if (i < mr) {
            _mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, f[i][0]);
            _mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, f[i][1]);
        }
    }
}

// GEMM task (AVX512-VNNI): one weight block, row tiles -> panels -> kernel (as mm_task_gemm).
MM_TGT_VNNI static void mm_task_gemm_q4(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int N = j->N, kq = j->K / 4, p0, p1, it0, it1;
    mm_task_tiles(j, task, &p0, &p1, &it0, &it1);
    for (int it = it0; it < it1; it++) {
        int t0 = it * MM_Q8_MR, mr = mm_min(MM_Q8_MR, j->T - t0);
        for (int pi = p0; pi < p1; pi++)
            mm_kernel_q4((const uint32_t*)j->a + (size_t)it * kq * MM_Q8_MR, j->as + (size_t)it * p->ng * MM_Q8_MR,
                         j->ac + (size_t)it * p->ng * MM_Q8_MR, (const uint32_t*)p->w + (size_t)pi * p->kw * 32,
                         p->s16 + (size_t)pi * p->ng * 32, p->ng, p->G / 8, j->y + (size_t)t0 * N + pi * 32, N, mr,
                         N - pi * 32);
        mm_post_tile(j, t0, mr, p0, p1);
    }
}

// ---- AVX512-VNNI GEMV: one panel x MR <= 3 rows of quantized activations q (MR, K) row-major
// (mm_quantize_rows_q8), scales as and compensations ac (MR, ng). mm_gemv512_q8v's loop with the
// nibble unpack; prefetcht1 mm_gemv_pf bytes ahead in the thread's stream. The low and the high
// nibbles of a panel row go to separate int32 accumulators (added at the end of the group: exact),
// so each dependency chain takes one vpdpbusd (4 cycles) per 128-byte panel row, as in q8's GEMV,
// not two: with one chain per column half, 2 threads streamed ~10% below q8's share of the read
// bandwidth at 75+ GB/s (measured).
MM_INLINE MM_TGT_VNNI void mm_gemv512_q4(const int8_t* q, const float* as, const int32_t* ac, int K, int ng,
                                         int G8, const uint32_t* w, const uint16_t* s, float* y, int ldy, int nc,
                                         const int MR) {
    const __m512i nib = _mm512_set1_epi8(0x0f);
    const int pf = mm_gemv_pf;
    // registers at MR = 3: 6 f32 + 12 int32 + 4 unpacked weights + 2 broadcasts + mask = 25 of 32
    __m512 f[3][2];
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m512i lo[3][2], hi[3][2];     // row i, column half h: dots of the low / high nibbles
#pragma GCC unroll 3
        for (int i = 0; i < MR; i++) {
            lo[i][0] = lo[i][1] = _mm512_set1_epi32(ac[(size_t)i * ng + g] / MM_Q4_COMP_DIV);
            hi[i][0] = hi[i][1] = _mm512_setzero_si512();
        }
        const uint32_t* wg = w + (size_t)g * G8 * 32;
        const int8_t* qg = q + (size_t)g * G8 * 8;              // the group's G inputs of row 0
        for (int kb = 0; kb < G8; kb++) {
            const uint32_t* wk = wg + (size_t)kb * 32;
            if (pf) {
                _mm_prefetch((const char*)wk + pf, _MM_HINT_T1);
                _mm_prefetch((const char*)wk + pf + 64, _MM_HINT_T1);
            }
            __m512i r0 = _mm512_load_si512((const void*)wk), r1 = _mm512_load_si512((const void*)(wk + 16));
            __m512i lo0 = _mm512_and_si512(r0, nib), lo1 = _mm512_and_si512(r1, nib);
            __m512i hi0 = _mm512_and_si512(_mm512_srli_epi32(r0, 4), nib);
            __m512i hi1 = _mm512_and_si512(_mm512_srli_epi32(r1, 4), nib);
#pragma GCC unroll 3
            for (int i = 0; i < MR; i++) {
                int32_t al, ah;             // the row's s8 words of k..k+3 and k+4..k+7
                memcpy(&al, qg + (size_t)i * K + 8 * kb, 4);
                memcpy(&ah, qg + (size_t)i * K + 8 * kb + 4, 4);
                lo[i][0] = _mm512_dpbusd_epi32(lo[i][0], lo0, _mm512_set1_epi32(al));
                lo[i][1] = _mm512_dpbusd_epi32(lo[i][1], lo1, _mm512_set1_epi32(al));
                hi[i][0] = _mm512_dpbusd_epi32(hi[i][0], hi0, _mm512_set1_epi32(ah));
                hi[i][1] = _mm512_dpbusd_epi32(hi[i][1], hi1, _mm512_set1_epi32(ah));
            }
        }
        __m512 s0 = mm512_q4_scales(s + (size_t)g * 32), s1 = mm512_q4_scales(s + (size_t)g * 32 + 16);
#pragma GCC unroll 3
        for (int i = 0; i < MR; i++) {
            __m512 sx = _mm512_set1_ps(as[(size_t)i * ng + g]);
            __m512i d0 = _mm512_add_epi32(lo[i][0], hi[i][0]), d1 = _mm512_add_epi32(lo[i][1], hi[i][1]);
            f[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_mul_ps(s0, sx), f[i][0]);
            f[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_mul_ps(s1, sx), f[i][1]);
        }
    }
    __mmask16 m0 = mm_mask16(nc), m1 = mm_mask16(nc - 16);
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++) {
        _mm512_mask_storeu_ps(y + (size_t)i * ldy, m0, f[i][0]);
        _mm512_mask_storeu_ps(y + (size_t)i * ldy + 16, m1, f[i][1]);
    }
}

MM_TGT_VNNI static void mm_task_gemv512_q4(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int p0, p1;
    mm_task_panels(j, task, &p0, &p1);
    for (int pi = p0; pi < p1; pi++) {
        const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32;
        const uint16_t* s = p->s16 + (size_t)pi * p->ng * 32;
        float* y = j->y + pi * 32;
        int nc = j->N - pi * 32, T = j->T, G8 = p->G / 8;     // T <= MM_Q4_GEMV_MAX_T_512: one pass
        if (T == 3) mm_gemv512_q4(j->a, j->as, j->ac, j->K, p->ng, G8, wp, s, y, j->N, nc, 3);
        else if (T == 2) mm_gemv512_q4(j->a, j->as, j->ac, j->K, p->ng, G8, wp, s, y, j->N, nc, 2);
        else mm_gemv512_q4(j->a, j->as, j->ac, j->K, p->ng, G8, wp, s, y, j->N, nc, 1);
    }
}

// ---- AVX2 GEMM, 4 rows x 16 columns (half a panel; the q8 vpmaddubsw kernel's tile, activations
// packed by mm_task_pack_avx2 at MM_A2_Q8_MR rows). Per panel row and row: 4 vpmaddubsw (low and
// high nibbles x 2 column halves), 2 vpaddw, 2 vpmaddwd, 2 vpaddd -- no vpsignb: the weights are
// already unsigned. a: (K/4, 4) words; as / ac: (ng, 4); w: panel + 16 * half, (K/8, 32) words;
// ws: panel scales + 16 * half, (ng, 32) bf16.
// Intrinsics, unlike the q8 kernel: GCC 12 (-march=x86-64-v3) keeps 6 of the 8 accumulators in
// memory (a load-add-store per panel row), yet this measured 94-101 % of the vpmaddubsw + vpmaddwd +
// vpaddd peak loop (it retires more products per instruction than that loop) and 1.39-1.45x the
// int16 q8 kernel on the prefill shapes (Zen 5, --isa avx2), so it was left as it is.
MM_INLINE MM_TGT_AVX2 __m256i mm_dot8_q4_avx2(__m256i acc, __m256i lo, __m256i hi, __m256i al, __m256i ah,
                                              __m256i ones16) {
    __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, al), _mm256_maddubs_epi16(hi, ah));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones16));
}

MM_TGT_AVX2 static void mm_kernel_q4_avx2(const uint32_t* a, const float* as, const int32_t* ac, const uint32_t* w,
                                          const uint16_t* ws, int ng, int G8, float* y, int ldy, int mr, int nc) {
    const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 f[MM_A2_Q8_MR][2];
#pragma GCC unroll 4
    for (int i = 0; i < MM_A2_Q8_MR; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m256i acc[MM_A2_Q8_MR][2];
#pragma GCC unroll 4
        for (int i = 0; i < MM_A2_Q8_MR; i++)
            acc[i][0] = acc[i][1] = _mm256_set1_epi32(ac[g * MM_A2_Q8_MR + i] / MM_Q4_COMP_DIV);
        const uint32_t* wg = w + (size_t)g * G8 * 32;
        const uint32_t* ag = a + (size_t)g * G8 * 2 * MM_A2_Q8_MR;
        for (int kb = 0; kb < G8; kb++) {
            __m256i r0 = _mm256_loadu_si256((const __m256i*)(wg + (size_t)kb * 32));
            __m256i r1 = _mm256_loadu_si256((const __m256i*)(wg + (size_t)kb * 32 + 8));
            __m256i lo0 = _mm256_and_si256(r0, nib), lo1 = _mm256_and_si256(r1, nib);
            __m256i hi0 = _mm256_and_si256(_mm256_srli_epi32(r0, 4), nib);
            __m256i hi1 = _mm256_and_si256(_mm256_srli_epi32(r1, 4), nib);
#pragma GCC unroll 4
            for (int i = 0; i < MM_A2_Q8_MR; i++) {
                __m256i al = _mm256_set1_epi32((int)ag[(2 * kb) * MM_A2_Q8_MR + i]);
                __m256i ah = _mm256_set1_epi32((int)ag[(2 * kb + 1) * MM_A2_Q8_MR + i]);
                acc[i][0] = mm_dot8_q4_avx2(acc[i][0], lo0, hi0, al, ah, ones);
                acc[i][1] = mm_dot8_q4_avx2(acc[i][1], lo1, hi1, al, ah, ones);
            }
        }
        __m256 sw0 = mm256_q4_scales(ws + (size_t)g * 32), sw1 = mm256_q4_scales(ws + (size_t)g * 32 + 8);
#pragma GCC unroll 4
        for (int i = 0; i < MM_A2_Q8_MR; i++) {
            f[i][0] = mm_q8_epilogue_avx2(f[i][0], acc[i][0], sw0, as[g * MM_A2_Q8_MR + i]);
            f[i][1] = mm_q8_epilogue_avx2(f[i][1], acc[i][1], sw1, as[g * MM_A2_Q8_MR + i]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MM_A2_Q8_MR; i++)
        if (i < mr) mm_avx2_store16(y + (size_t)i * ldy, f[i][0], f[i][1], nc);
}

// ---- AVX-VNNI GEMM, 6 rows x 16 columns (the q8 AVX-VNNI tile, activations packed at MM_AVNNI_MR
// rows): ymm vpdpbusd on the unpacked nibbles. 12 accumulators + 2 weight vectors + the nibble mask +
// the broadcast = 16 ymm: the low nibbles are used, then the same 64 bytes are loaded again (an L1
// hit) for the high ones rather than kept in 2 more registers.
MM_TGT_AVXVNNI static void mm_kernel_q4_avxvnni(const uint32_t* a, const float* as, const int32_t* ac,
                                                const uint32_t* w, const uint16_t* ws, int ng, int G8, float* y,
                                                int ldy, int mr, int nc) {
    const __m256i nib = _mm256_set1_epi8(0x0f);
    __m256 f[MM_AVNNI_MR][2];
#pragma GCC unroll 6
    for (int i = 0; i < MM_AVNNI_MR; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m256i acc[MM_AVNNI_MR][2];
#pragma GCC unroll 6
        for (int i = 0; i < MM_AVNNI_MR; i++)
            acc[i][0] = acc[i][1] = _mm256_set1_epi32(ac[g * MM_AVNNI_MR + i] / MM_Q4_COMP_DIV);
        const uint32_t* wg = w + (size_t)g * G8 * 32;
        const uint32_t* ag = a + (size_t)g * G8 * 2 * MM_AVNNI_MR;
#if defined(__GNUC__) && !defined(__clang__)
        // As in mm_kernel_q8_avxvnni (GCC wraps each vpdpbusd of the unrolled tile in register copies:
        // the intrinsics loop below measured 54-69 % of the AVX-VNNI peak), the group loop written
        // out: weights ymm14/15 (low nibbles: and with the mask straight from memory; high nibbles:
        // load, shift, and), the activation broadcast ymm13, the mask and 12 accumulators where GCC
        // puts them. Rows 0-5 at offsets 0..20 (the k..k+3 word) and 24..44 (k+4..k+7). Steps per
        // panel row: w 128 bytes, a 48 (2 words x 6 rows).
        const uint32_t* wend = wg + (size_t)G8 * 32;
        __asm__(
            "1:\n\t"
            "vpand (%[w]), %[nib], %%ymm14\n\t"
            "vpand 32(%[w]), %[nib], %%ymm15\n\t"
#define MM_AVNNI_Q4_ROW(off, c0, c1)                                                                    \
            "vpbroadcastd " off "(%[a]), %%ymm13\n\t"                                                   \
            "%{vex%} vpdpbusd %%ymm13, %%ymm14, %[" c0 "]\n\t"                                            \
            "%{vex%} vpdpbusd %%ymm13, %%ymm15, %[" c1 "]\n\t"
            MM_AVNNI_Q4_ROW("0", "c00", "c01") MM_AVNNI_Q4_ROW("4", "c10", "c11") MM_AVNNI_Q4_ROW("8", "c20", "c21")
            MM_AVNNI_Q4_ROW("12", "c30", "c31") MM_AVNNI_Q4_ROW("16", "c40", "c41") MM_AVNNI_Q4_ROW("20", "c50", "c51")
            "vmovdqu (%[w]), %%ymm14\n\t"
            "vmovdqu 32(%[w]), %%ymm15\n\t"
            "vpsrld $4, %%ymm14, %%ymm14\n\t"
            "vpsrld $4, %%ymm15, %%ymm15\n\t"
            "vpand %%ymm14, %[nib], %%ymm14\n\t"
            "vpand %%ymm15, %[nib], %%ymm15\n\t"
            MM_AVNNI_Q4_ROW("24", "c00", "c01") MM_AVNNI_Q4_ROW("28", "c10", "c11") MM_AVNNI_Q4_ROW("32", "c20", "c21")
            MM_AVNNI_Q4_ROW("36", "c30", "c31") MM_AVNNI_Q4_ROW("40", "c40", "c41") MM_AVNNI_Q4_ROW("44", "c50", "c51")
#undef MM_AVNNI_Q4_ROW
            "subq $-128, %[w]\n\t"
            "addq $48, %[a]\n\t"
            "cmpq %[wend], %[w]\n\t"
            "jne 1b\n\t"
            : [c00] "+x"(acc[0][0]), [c01] "+x"(acc[0][1]), [c10] "+x"(acc[1][0]), [c11] "+x"(acc[1][1]),
              [c20] "+x"(acc[2][0]), [c21] "+x"(acc[2][1]), [c30] "+x"(acc[3][0]), [c31] "+x"(acc[3][1]),
              [c40] "+x"(acc[4][0]), [c41] "+x"(acc[4][1]), [c50] "+x"(acc[5][0]), [c51] "+x"(acc[5][1]),
              [w] "+r"(wg), [a] "+r"(ag)
            : [wend] "r"(wend), [nib] "x"(nib)
            : "cc", "memory", "xmm13", "xmm14", "xmm15");
#else
        for (int kb = 0; kb < G8; kb++) {
            const __m256i* wk = (const __m256i*)(wg + (size_t)kb * 32);
            __m256i w0 = _mm256_and_si256(_mm256_loadu_si256(wk), nib);
            __m256i w1 = _mm256_and_si256(_mm256_loadu_si256(wk + 1), nib);
#pragma GCC unroll 6
            for (int i = 0; i < MM_AVNNI_MR; i++) {
                __m256i al = _mm256_set1_epi32((int)ag[(2 * kb) * MM_AVNNI_MR + i]);
                acc[i][0] = _mm256_dpbusd_avx_epi32(acc[i][0], w0, al);
                acc[i][1] = _mm256_dpbusd_avx_epi32(acc[i][1], w1, al);
            }
            w0 = _mm256_and_si256(_mm256_srli_epi32(_mm256_loadu_si256(wk), 4), nib);
            w1 = _mm256_and_si256(_mm256_srli_epi32(_mm256_loadu_si256(wk + 1), 4), nib);
#pragma GCC unroll 6
            for (int i = 0; i < MM_AVNNI_MR; i++) {
                __m256i ah = _mm256_set1_epi32((int)ag[(2 * kb + 1) * MM_AVNNI_MR + i]);
                acc[i][0] = _mm256_dpbusd_avx_epi32(acc[i][0], w0, ah);
                acc[i][1] = _mm256_dpbusd_avx_epi32(acc[i][1], w1, ah);
            }
        }
#endif
        __m256 sw0 = mm256_q4_scales(ws + (size_t)g * 32), sw1 = mm256_q4_scales(ws + (size_t)g * 32 + 8);
#pragma GCC unroll 6
        for (int i = 0; i < MM_AVNNI_MR; i++) {
            f[i][0] = mm_q8_epilogue_avx2(f[i][0], acc[i][0], sw0, as[g * MM_AVNNI_MR + i]);
            f[i][1] = mm_q8_epilogue_avx2(f[i][1], acc[i][1], sw1, as[g * MM_AVNNI_MR + i]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MM_AVNNI_MR; i++)
        if (i < mr) mm_avx2_store16(y + (size_t)i * ldy, f[i][0], f[i][1], nc);
}

// GEMM task (AVX2 / AVX-VNNI): one weight block, row tiles -> panels -> the two 16-column halves.
MM_TGT_AVX2 static void mm_task_gemm_q4_avx2(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int N = j->N, MR = j->mr, kq = j->K / 4, p0, p1;
    mm_task_panels(j, task, &p0, &p1);
    for (int it = 0; it < j->ntiles; it++) {
        int t0 = it * MR, mr = mm_min(MR, j->T - t0);
        const uint32_t* a = (const uint32_t*)j->a + (size_t)it * kq * MR;
        const float* as = j->as + (size_t)it * p->ng * MR;
        const int32_t* ac = j->ac + (size_t)it * p->ng * MR;
        for (int pi = p0; pi < p1; pi++)
            for (int h = 0; h < 2; h++) {
                int n0 = pi * 32 + h * 16;
                if (n0 >= N) break;                 // the last panel's upper half is all padding
                const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32 + h * 16;
                const uint16_t* ws = p->s16 + (size_t)pi * p->ng * 32 + h * 16;
                float* y = j->y + (size_t)t0 * N + n0;
                if (j->avxvnni) mm_kernel_q4_avxvnni(a, as, ac, wp, ws, p->ng, p->G / 8, y, N, mr, N - n0);
                else mm_kernel_q4_avx2(a, as, ac, wp, ws, p->ng, p->G / 8, y, N, mr, N - n0);
            }
        mm_post_tile(j, t0, mr, p0, p1);
    }
}

// ---- AVX2 GEMV (AVX-VNNI too: memory bound, as for q8): one full panel (4 ymm of packed words per
// panel row) x MR <= 2 rows of quantized activations q (MR, K), as / ac (MR, ng) row-major.
MM_INLINE MM_TGT_AVX2 void mm_gemv_q4_avx2(const int8_t* q, const float* as, const int32_t* ac, int K, int ng,
                                           int G8, const uint32_t* w, const uint16_t* s, float* y, int ldy, int nc,
                                           const int MR) {
    const int pf = mm_gemv_pf_avx2;
    const __m256i nib = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 f[2][4];
#pragma GCC unroll 2
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = f[i][2] = f[i][3] = _mm256_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m256i acc[2][4];
#pragma GCC unroll 2
        for (int i = 0; i < MR; i++)
            acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = _mm256_set1_epi32(ac[(size_t)i * ng + g] / MM_Q4_COMP_DIV);
        for (int kb = g * G8; kb < (g + 1) * G8; kb++) {
            const uint32_t* wk = w + (size_t)kb * 32;
            if (pf) { _mm_prefetch((const char*)wk + pf, _MM_HINT_T0); _mm_prefetch((const char*)wk + pf + 64, _MM_HINT_T0); }
            __m256i al[2], ah[2];
#pragma GCC unroll 2
            for (int i = 0; i < MR; i++) {
                int32_t l4, h4;
                memcpy(&l4, q + (size_t)i * K + 8 * kb, 4);
                memcpy(&h4, q + (size_t)i * K + 8 * kb + 4, 4);
                al[i] = _mm256_set1_epi32(l4);
                ah[i] = _mm256_set1_epi32(h4);
            }
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m256i r = _mm256_loadu_si256((const __m256i*)(wk + 8 * c));
                __m256i lo = _mm256_and_si256(r, nib), hi = _mm256_and_si256(_mm256_srli_epi32(r, 4), nib);
#pragma GCC unroll 2
                for (int i = 0; i < MR; i++) acc[i][c] = mm_dot8_q4_avx2(acc[i][c], lo, hi, al[i], ah[i], ones);
            }
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m256 sw = mm256_q4_scales(s + (size_t)g * 32 + 8 * c);
#pragma GCC unroll 2
            for (int i = 0; i < MR; i++) f[i][c] = mm_q8_epilogue_avx2(f[i][c], acc[i][c], sw, as[(size_t)i * ng + g]);
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < MR; i++) {
        mm_avx2_store16(y + (size_t)i * ldy, f[i][0], f[i][1], nc);
        mm_avx2_store16(y + (size_t)i * ldy + 16, f[i][2], f[i][3], nc - 16);
    }
}

MM_TGT_AVX2 static void mm_task_gemv_q4_avx2(void* v, int task) {
    MMJob* j = v;
    const MMPacked* p = j->p;
    int p0, p1;
    mm_task_panels(j, task, &p0, &p1);
    for (int pi = p0; pi < p1; pi++) {
        const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32;
        const uint16_t* s = p->s16 + (size_t)pi * p->ng * 32;
        float* y = j->y + pi * 32;
        int nc = j->N - pi * 32, G8 = p->G / 8;                 // T <= MM_Q4_GEMV_MAX_T_AVX2: one pass
        if (j->T == 2) mm_gemv_q4_avx2(j->q, j->asr, j->acr, j->K, p->ng, G8, wp, s, y, j->N, nc, 2);
        else mm_gemv_q4_avx2(j->q, j->asr, j->acr, j->K, p->ng, G8, wp, s, y, j->N, nc, 1);
    }
}

// The q4 matmul on x86 (every level from AVX2 up): GEMV for T <= 3 (AVX512-VNNI) or 2, else GEMM.
// Scratch layouts and phases as in mm_matmul_avx512 (VNNI) and mm_matmul_avx2 (the rest).
static void mm_matmul_q4_x86(MMJob* j) {
    const MMPacked* p = j->p;
    int T = j->T, K = j->K, np = p->np, ng = p->ng, nth = pool_size();
    int vnni512 = mm_isa == MM_AVX512 && mm_has_vnni;
    int own = mm_in_pool;                   // nested call: private scratch, single thread
    int bounds[MM_MAX_GUIDED + 1];
    if (T <= (vnni512 ? MM_Q4_GEMV_MAX_T_512 : MM_Q4_GEMV_MAX_T_AVX2)) {
        float* own_x = mm_materialize(j);
        // quantize the few rows once, in the caller thread: q (T, K) s8 | as (T, ng) | ac (T, ng)
        size_t qbytes = align_up((size_t)T * K, 64), sbytes = (size_t)T * ng * 4;
        char* buf = mm_get_scratch(qbytes + 2 * sbytes + 64, own);
        j->a = j->q = (int8_t*)buf;
        j->as = j->asr = (float*)(buf + qbytes);
        j->ac = j->acr = (int32_t*)(buf + qbytes + sbytes);
        if (vnni512) mm_quantize_rows_q8(j->x, T, K, p->G, j->q, j->as, j->ac);
        else mm_quantize_rows_q8_avx2(j->x, T, K, p->G, j->q, j->as, j->ac);
        j->n_tasks = mm_guided_bounds(np, nth, bounds);
        j->bounds = bounds;
        pool_for(j->n_tasks, vnni512 ? mm_task_gemv512_q4 : mm_task_gemv_q4_avx2, j);
        if (own) free(buf);
        free(own_x);
        return;
    }
    // GEMM: the activations quantized into row tiles by the q8 packers, then the q4 kernels
    j->avxvnni = !vnni512 && mm_isa == MM_AVXVNNI;
    j->mr = vnni512 ? MM_Q8_MR : j->avxvnni ? MM_AVNNI_MR : MM_A2_Q8_MR;
    j->ntiles = (T + j->mr - 1) / j->mr;
    size_t rows = (size_t)j->ntiles * j->mr;
    size_t abytes = rows * (size_t)K, sbytes = rows * ng * 4;  // tiles: (K/4) words of 4 s8 per row
    size_t qbytes = vnni512 ? 0 : align_up(rows * K, 64);      // AVX2 packer: row-major q first
    // scratch layout: [a: abytes][q: qbytes][as | ac | asr | acr: sbytes each] (+64 slack)
    char* buf = mm_get_scratch(abytes + qbytes + 4 * sbytes + 64, own);
    j->a = buf;
    j->q = (int8_t*)(buf + abytes);
    j->as = (float*)(buf + abytes + qbytes);
    j->ac = (int32_t*)(buf + abytes + qbytes + sbytes);
    j->asr = (float*)(buf + abytes + qbytes + 2 * sbytes);
    j->acr = (int32_t*)(buf + abytes + qbytes + 3 * sbytes);
    j->n_tasks = mm_min(nth, j->ntiles);   // phase 1: quantize and pack, one task per thread at most
    pool_for(j->n_tasks, vnni512 ? mm_task_pack_q8 : mm_task_pack_avx2, j);
    // phase 2: one task per weight block (AVX2: the q8 block width, as many panels, half the bytes; AVX-512:
    // blocks and row groups sized for the caches as for q8)
    j->chunk = mm_min(vnni512 ? MM_Q8_NCP : MM_A2_NCP, (np + nth - 1) / nth);
    j->n_tasks = (np + j->chunk - 1) / j->chunk;
    j->bounds = NULL;
    j->tpg = j->ntiles;
    if (vnni512)   // panel: K/2 bytes of nibbles x 32 columns + their bf16 scales; tile: K bytes x 6 rows
        mm_int8_blocks(j, (size_t)p->kw * 4 * 32 + (size_t)ng * 64, (size_t)K * MM_Q8_MR);
    pool_for(j->n_tasks, vnni512 ? mm_task_gemm_q4 : mm_task_gemm_q4_avx2, j);
    j->post_done = 1;
    if (own) free(buf);
}
#endif // MM_X86

#if defined(__aarch64__)
// ----------------------------------------------------------------------------
// ARM64 kernels: NEON for f32 and bf16; q8 with sdot (dotprod), usdot (i8mm) or vmull+vpadal (NEON).
//
// The machine: 32 vector registers v0..v31 of 128 bits = 4 f32 / 4 int32 / 16 int8 lanes. Most
// vector instructions can take one operand as a single lane of another register
// ("fmla v0.4s, v1.4s, v2.s[3]"): a kernel loads 4 activations into one register and multiplies by
// each lane in turn, no broadcast instructions. The packed weights (see "Weight packing") are read
// as they are: a panel row is 32 columns = 8 registers, lanes are output columns.
//
// Paths (mm_matmul_arm), chosen per call:
//   GEMV (T <= MM_ARM_GEMV_MAX_T, decode): each task streams whole panels once, all T rows at a time
//     (f32/bf16) or one row per pass (q8; the passes after the first read the panel from L2).
//   GEMM (larger T): activations packed per call into row tiles, then a register-blocked kernel per
//     (row tile, column block) over the full K depth, so each output is written once.
// Arithmetic (what a user gets, bit for bit):
//   f32, bf16  weights widened to f32 (exact), f32 activations, one FMA per k in k order in each
//              output lane: matmul_ref's order, so equal to the scalar loop whenever the compiler
//              contracts its `sum += w * x` into fused multiply-adds (GCC and clang do on AArch64).
//              Not the x86 bf16 GEMM's semantics (vdpbf16ps rounds activations to bf16 first).
//   q8         activations quantized per row and per group by mm_quantize_group itself (so the int8
//              values and scales are those of the x86 quantizers), an exact int32 dot per group,
//              then f = fma(float(dot), scale_w * scale_x, f) in group order -- the x86 VNNI kernels'
//              epilogue. Integer sums are exact whatever the instruction, so all three ARM levels,
//              the GEMV and the GEMM, and x86 with AVX512-VNNI give the same bits for a q8 model.
// Levels only change the instructions. Functions that use dotprod / i8mm instructions carry a target
// attribute; everything else is baseline ARMv8-A, so a plain -O3 build runs on any AArch64 CPU.

// Per-function targets: only these functions may use sdot / usdot, and they run only after
// mm_detect_arm has seen the feature (the rest of the file stays baseline ARMv8-A).
#define MM_ARM_TGT_DOT __attribute__((target("arch=armv8.2-a+dotprod")))
#define MM_ARM_TGT_I8MM __attribute__((target("arch=armv8.2-a+dotprod+i8mm")))
// Tile shapes from the 32-register budget (details above each kernel): f32 6 x 16 = 24 accumulators;
// q8 8 x 4 = 8 int32 dots + 8 f32 sums, 8 rows because two 4-word registers feed lane-indexed sdot.
#define MM_ARM_F32_MR 6         // f32/bf16 GEMM tile: 6 rows x 16 columns
#define MM_ARM_Q8_MR 8          // q8 GEMM tile: 8 rows x 4 columns
#define MM_ARM_NCP 8            // GEMM: panels per task (a 256-column weight block)
#define MM_ARM_GEMV_MAX_T 3     // T up to this takes the GEMV path (a guess: no ARM hardware measured yet)

typedef struct {
    float* y;                   // (T, N) output
    const float* x;             // (T, K) activations
    const MMPacked* p;          // packed weights
    int type, level, T, N, K;
    int chunk, n_tasks;         // panels per task, tasks
    int ntiles;                 // GEMM: row tiles
    int ka;                     // GEMM f32/bf16: k rows per tile (K, or K rounded up to even for bf16)
    void* a;                    // GEMM f32/bf16: (ntiles, ka, 6) f32, rows past T zero
                                // GEMM q8: (ntiles, K/4, 8) words of 4 s8, rows past T zero
                                // GEMV q8: (T, K) s8
    float* as;                  // q8 activation scales: GEMM (ntiles, ng, 8), GEMV (T, ng)
    int32_t* ac;                // q8 -128 * sum(q) per scale (the usdot compensation), same shape
} MMArmJob;

// Store register v = columns c0..c0+3 of an output row y, keeping only columns below nc (the right
// edge of the matrix: padded lanes are computed, then dropped). v is passed by value: an array of
// accumulators whose address escaped would be kept in memory and stored on every k step.
MM_INLINE void mm_arm_store(float* y, float32x4_t v, int c0, int nc) {
    if (c0 + 4 <= nc) { vst1q_f32(y + c0, v); return; }
    float tmp[4];
    vst1q_f32(tmp, v);
    for (int c = c0; c < nc; c++) y[c] = tmp[c - c0];
}

// ---- f32 / bf16 GEMV: one panel (32 columns) x MR <= 3 rows, f32 activations from x (row stride K).
// Registers: acc[MR][8] (24 at MR = 3) + one weight register in flight + MR activations = 29 of 32.
// Each acc lane is one output: acc = fma(w[k], x[k], acc) for k = 0, 1, ... -- matmul_ref's order.
// 8 independent accumulator chains per row hide the 4-cycle FMA latency on two FMA pipes.
MM_INLINE void mm_arm_gemv_f32(const float* x, int K, const float* w, float* y, int ldy, int nc, const int MR) {
    float32x4_t acc[3][8];
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) acc[i][c] = vdupq_n_f32(0.0f);
    // k outer, columns inner: each weight register is loaded once and used by all MR rows, and the
    // x values of the MR rows at k are scalars that fmla takes as lane 0 of a register
    for (int k = 0; k < K; k++) {
        const float* wk = w + (size_t)k * 32;           // panel row k: 32 columns
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            float32x4_t wc = vld1q_f32(wk + 4 * c);     // columns 4c..4c+3
#pragma GCC unroll 3
            for (int i = 0; i < MR; i++) acc[i][c] = vfmaq_n_f32(acc[i][c], wc, x[(size_t)i * K + k]);
        }
    }
#pragma GCC unroll 3
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) mm_arm_store(y + (size_t)i * ldy, acc[i][c], 4 * c, nc);
}

// bf16: a panel word holds the pair (k even, k odd) of one column as (low, high) 16 bits. A bf16 is the
// high half of an f32, so the even weight widens with a left shift by 16 and the odd one by clearing
// the low 16 bits: two exact instructions per 4 words. MR <= 2 rows per pass: acc 16 + 2 x 2
// activations + raw, even, odd weights + mask = 24 registers (3 rows would need 34).
MM_INLINE void mm_arm_gemv_bf16(const float* x, int K, const uint32_t* w, float* y, int ldy, int nc, const int MR) {
    const uint32x4_t hi16 = vdupq_n_u32(0xffff0000u);
    float32x4_t acc[2][8];
#pragma GCC unroll 2
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) acc[i][c] = vdupq_n_f32(0.0f);
    for (int kk = 0; kk < (K + 1) / 2; kk++) {
        const uint32_t* wk = w + (size_t)kk * 32;
        int odd = 2 * kk + 1 < K;                       // odd K: the last pair has no odd element
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            uint32x4_t raw = vld1q_u32(wk + 4 * c);
            float32x4_t we = vreinterpretq_f32_u32(vshlq_n_u32(raw, 16));   // bf16 at k = 2kk
            float32x4_t wo = vreinterpretq_f32_u32(vandq_u32(raw, hi16));   // bf16 at k = 2kk+1
#pragma GCC unroll 2
            for (int i = 0; i < MR; i++) {
                // x past K reads as 0 (odd == 0): the FMA then adds +0 to acc, as if skipped
                float xo = odd ? x[(size_t)i * K + 2 * kk + 1] : 0.0f;
                acc[i][c] = vfmaq_n_f32(acc[i][c], we, x[(size_t)i * K + 2 * kk]);
                acc[i][c] = vfmaq_n_f32(acc[i][c], wo, xo);
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) mm_arm_store(y + (size_t)i * ldy, acc[i][c], 4 * c, nc);
}

// ---- q8 GEMV: one panel x one row of quantized activations q (K s8), per-group scales sx and
// compensations cx (ng each), weight scales ws (ng, 32). Per group: int32 dots over the group's G/4
// panel rows, then f = fma(float(dot), ws * sx, f) per column (the epilogue every q8 path shares).
//
// Why the layout suits sdot: "sdot vd.4s, vn.16b, vm.16b" adds to int32 lane c the dot product of
// bytes 4c..4c+3 of vn and of vm. A 16-byte load of a panel row is 4 columns x 4 consecutive k (one
// packed word per column), so with vm = the row's 4 activations at those k repeated 4 times
// (ld1r of one 32-bit word), lane c gets exactly column c's 4-term dot: no shuffles, no
// horizontal sums. The packed bytes are u8 = w + 128; xor 0x80 turns them back into s8 w
// (sdot: s8 x s8, no compensation). usdot (i8mm) multiplies u8 x s8 directly, like x86 vpdpbusd:
// the lanes then start at -128 * sum(q) of the group, which makes the sum exactly sum(w * q) again.
// Registers (sdot): 8 int32 dots + 8 f32 sums + 8 weights + the activation word + the 0x80 mask = 26.

// f[c] += float(acc[c]) * (ws[c] * sx): float(int32) rounds to nearest, like vcvtdq2ps; one fused
// multiply-add per group, in group order (the x86 kernels' sequence, so the same bits).
MM_INLINE void mm_arm_q8_epilogue(float32x4_t f[8], const int32x4_t acc[8], const float* ws, float sx) {
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++)
        f[c] = vfmaq_f32(f[c], vcvtq_f32_s32(acc[c]), vmulq_n_f32(vld1q_f32(ws + 4 * c), sx));
}

// q: (K) s8 of one row; sx: (ng) its scales; w: the panel, (K/4, 32) words = (K/4, 128) bytes;
// ws: (ng, 32) weight scales; y: 32 outputs of the row (nc of them stored).
MM_ARM_TGT_DOT static void mm_arm_gemv_q8_sdot(const int8_t* q, const float* sx, int ng, int G4, const uint8_t* w,
                                               const float* ws, float* y, int nc) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) f[c] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t acc[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) acc[c] = vdupq_n_s32(0);
        for (int kq = g * G4; kq < (g + 1) * G4; kq++) {
            int32_t word;                               // q[4kq..4kq+3]: 4 s8 (memcpy: no type punning)
            memcpy(&word, q + 4 * (size_t)kq, 4);
            int8x16_t a = vreinterpretq_s8_s32(vdupq_n_s32(word));
            const uint8_t* wk = w + (size_t)kq * 128;   // panel row kq: 32 columns x 4 bytes
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++)
                acc[c] = vdotq_s32(acc[c], vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wk + 16 * c), flip)), a);
        }
        mm_arm_q8_epilogue(f, acc, ws + (size_t)g * 32, sx[g]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) mm_arm_store(y, f[c], 4 * c, nc);
}

MM_ARM_TGT_I8MM static void mm_arm_gemv_q8_usdot(const int8_t* q, const float* sx, const int32_t* cx, int ng, int G4,
                                                 const uint8_t* w, const float* ws, float* y, int nc) {
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) f[c] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t acc[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) acc[c] = vdupq_n_s32(cx[g]);   // -128 * sum(q) of the group
        // then per k4 step: acc[c] += sum_j (w + 128) * q = sum_j w * q + 128 * sum_j q (exact)
        for (int kq = g * G4; kq < (g + 1) * G4; kq++) {
            int32_t word;
            memcpy(&word, q + 4 * (size_t)kq, 4);
            int8x16_t a = vreinterpretq_s8_s32(vdupq_n_s32(word));
            const uint8_t* wk = w + (size_t)kq * 128;
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) acc[c] = vusdotq_s32(acc[c], vld1q_u8(wk + 16 * c), a);
        }
        mm_arm_q8_epilogue(f, acc, ws + (size_t)g * 32, sx[g]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) mm_arm_store(y, f[c], 4 * c, nc);
}

// Plain NEON (no dot product): vmull_s8 multiplies 8 s8 pairs into exact s16 products
// (|w q| <= 128 * 127 < 2^15), vpadalq_s16 adds neighbouring products into int32 lanes. For a weight
// register (4 columns x 4 k) and the activation word repeated, the low 8 bytes give columns 0, 1 and
// the high 8 bytes columns 2, 3, each as two int32 half-sums (k 0+1 and k 2+3); vpaddq_s32 of the two
// accumulators at the end of the group adds the halves: [c0, c1, c2, c3], exact.
// Registers: 16 half-sum accumulators + 8 f32 sums + weight, activation, mask = 27.
static void mm_arm_gemv_q8_neon(const int8_t* q, const float* sx, int ng, int G4, const uint8_t* w, const float* ws,
                                float* y, int nc) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) f[c] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t lo[8], hi[8], acc[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) lo[c] = hi[c] = vdupq_n_s32(0);
        for (int kq = g * G4; kq < (g + 1) * G4; kq++) {
            int32_t word;
            memcpy(&word, q + 4 * (size_t)kq, 4);
            int8x16_t a = vreinterpretq_s8_s32(vdupq_n_s32(word));
            const uint8_t* wk = w + (size_t)kq * 128;
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                int8x16_t wc = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wk + 16 * c), flip));
                lo[c] = vpadalq_s16(lo[c], vmull_s8(vget_low_s8(wc), vget_low_s8(a)));
                hi[c] = vpadalq_s16(hi[c], vmull_high_s8(wc, a));
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) acc[c] = vpaddq_s32(lo[c], hi[c]);
        mm_arm_q8_epilogue(f, acc, ws + (size_t)g * 32, sx[g]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) mm_arm_store(y, f[c], 4 * c, nc);
}

// ---- q4 on ARM64: the q8 kernels' arithmetic on unpacked nibbles (see "q4 kernels (x86)" for the
// format and why the result is matmul_ref's, bit for bit). 16 bytes of a q4 panel row are 4 columns
// x 8 k (one word per column); a byte shift right by 4 gives the high nibbles (k+4..k+7 of each
// column) and an and with 0x0f the low ones (k..k+3): two q8-layout registers. usdot (i8mm) takes
// them as u8 = w + 8 with lanes starting at -8 * sum(q); sdot and the plain-NEON vmull_s8 take them
// as s8 after subtracting the offset 8 (no compensation). Weight scales are bf16, widened with a
// shift (exact). Per group: f = fma(float(dot), scale_w * scale_x, f), as everywhere.

// 4 bf16 scales -> f32x4 (zero-extend each 16-bit lane to 32 bits, shifted left 16: exact)
MM_INLINE float32x4_t mm_arm_q4_scales(const uint16_t* s) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(s), 16));
}

// 16 packed bytes -> low / high nibbles as s8 (w = u - 8)
MM_INLINE void mm_arm_q4_unpack_s8(const uint8_t* w, int8x16_t* lo, int8x16_t* hi) {
    uint8x16_t v = vld1q_u8(w);
    const int8x16_t off = vdupq_n_s8(MM_Q4_OFFSET);
    *lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), off);
    *hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), off);
}

// GEMV, one row: q (K) s8, sx / cx (ng) its scales and -128 * sum(q) (as the q8 packers give it),
// w the panel ((K/8, 32) words = (K/8, 128) bytes), ws (ng, 32) bf16, y 32 outputs (nc stored).
MM_ARM_TGT_I8MM static void mm_arm_gemv_q4_usdot(const int8_t* q, const float* sx, const int32_t* cx, int ng, int G8,
                                                 const uint8_t* w, const uint16_t* ws, float* y, int nc) {
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) f[c] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t acc[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) acc[c] = vdupq_n_s32(cx[g] / MM_Q4_COMP_DIV);     // -8 * sum(q)
        for (int kb = g * G8; kb < (g + 1) * G8; kb++) {
            int32_t l4, h4;                             // the row's s8 words at k..k+3, k+4..k+7
            memcpy(&l4, q + 8 * (size_t)kb, 4);
            memcpy(&h4, q + 8 * (size_t)kb + 4, 4);
            int8x16_t al = vreinterpretq_s8_s32(vdupq_n_s32(l4)), ah = vreinterpretq_s8_s32(vdupq_n_s32(h4));
            const uint8_t* wk = w + (size_t)kb * 128;
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                uint8x16_t v = vld1q_u8(wk + 16 * c);
                acc[c] = vusdotq_s32(acc[c], vandq_u8(v, vdupq_n_u8(0x0f)), al);
                acc[c] = vusdotq_s32(acc[c], vshrq_n_u8(v, 4), ah);
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++)
            f[c] = vfmaq_f32(f[c], vcvtq_f32_s32(acc[c]), vmulq_n_f32(mm_arm_q4_scales(ws + (size_t)g * 32 + 4 * c), sx[g]));
    }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) mm_arm_store(y, f[c], 4 * c, nc);
}

MM_ARM_TGT_DOT static void mm_arm_gemv_q4_sdot(const int8_t* q, const float* sx, int ng, int G8, const uint8_t* w,
                                               const uint16_t* ws, float* y, int nc) {
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) f[c] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t acc[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) acc[c] = vdupq_n_s32(0);
        for (int kb = g * G8; kb < (g + 1) * G8; kb++) {
            int32_t l4, h4;
            memcpy(&l4, q + 8 * (size_t)kb, 4);
            memcpy(&h4, q + 8 * (size_t)kb + 4, 4);
            int8x16_t al = vreinterpretq_s8_s32(vdupq_n_s32(l4)), ah = vreinterpretq_s8_s32(vdupq_n_s32(h4));
            const uint8_t* wk = w + (size_t)kb * 128;
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                int8x16_t lo, hi;
                mm_arm_q4_unpack_s8(wk + 16 * c, &lo, &hi);
                acc[c] = vdotq_s32(vdotq_s32(acc[c], lo, al), hi, ah);
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++)
            f[c] = vfmaq_f32(f[c], vcvtq_f32_s32(acc[c]), vmulq_n_f32(mm_arm_q4_scales(ws + (size_t)g * 32 + 4 * c), sx[g]));
    }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) mm_arm_store(y, f[c], 4 * c, nc);
}

// Plain NEON: vmull_s8 + vpadalq_s16 as in mm_arm_gemv_q8_neon (|w q| <= 8 * 127, exact in s16),
// for the low and the high nibbles in turn; half sums added pairwise at the end of the group.
static void mm_arm_gemv_q4_neon(const int8_t* q, const float* sx, int ng, int G8, const uint8_t* w,
                                const uint16_t* ws, float* y, int nc) {
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) f[c] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t lo2[8], hi2[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) lo2[c] = hi2[c] = vdupq_n_s32(0);
        for (int kb = g * G8; kb < (g + 1) * G8; kb++) {
            int32_t l4, h4;
            memcpy(&l4, q + 8 * (size_t)kb, 4);
            memcpy(&h4, q + 8 * (size_t)kb + 4, 4);
            int8x16_t al = vreinterpretq_s8_s32(vdupq_n_s32(l4)), ah = vreinterpretq_s8_s32(vdupq_n_s32(h4));
            const uint8_t* wk = w + (size_t)kb * 128;
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                int8x16_t lo, hi;
                mm_arm_q4_unpack_s8(wk + 16 * c, &lo, &hi);
                lo2[c] = vpadalq_s16(lo2[c], vmull_s8(vget_low_s8(lo), vget_low_s8(al)));
                hi2[c] = vpadalq_s16(hi2[c], vmull_high_s8(lo, al));
                lo2[c] = vpadalq_s16(lo2[c], vmull_s8(vget_low_s8(hi), vget_low_s8(ah)));
                hi2[c] = vpadalq_s16(hi2[c], vmull_high_s8(hi, ah));
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++)
            f[c] = vfmaq_f32(f[c], vcvtq_f32_s32(vpaddq_s32(lo2[c], hi2[c])),
                             vmulq_n_f32(mm_arm_q4_scales(ws + (size_t)g * 32 + 4 * c), sx[g]));
    }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) mm_arm_store(y, f[c], 4 * c, nc);
}

// GEMM epilogue of an 8-row x 4-column tile (MM_ARM_Q8_EPILOGUE with bf16 weight scales).
MM_INLINE void mm_arm_q4_epilogue8(float32x4_t f[8], const int32x4_t acc[8], const uint16_t* ws, const float* as) {
    float32x4_t sw = mm_arm_q4_scales(ws);
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) f[i] = vfmaq_f32(f[i], vcvtq_f32_s32(acc[i]), vmulq_n_f32(sw, as[i]));
}

// GEMM, 8 rows x 4 columns (the q8 tile): a (K/4, 8) words (mm_arm_task_pack), as / ac (ng, 8);
// w: the panel's bytes + 16 * (column quad); ws: the panel's bf16 scales + 4 * quad, row stride 32.
// Per panel row: one 16-byte load -> low / high nibble registers, 16 lane-indexed dots.
MM_ARM_TGT_I8MM static void mm_arm_kernel_q4_usdot(const uint32_t* a, const float* as, const int32_t* ac,
                                                   const uint8_t* w, const uint16_t* ws, int ng, int G8, float* y,
                                                   int ldy, int mr, int nc) {
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) f[i] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t acc[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) acc[i] = vdupq_n_s32(ac[g * 8 + i] / MM_Q4_COMP_DIV);
        for (int kb = g * G8; kb < (g + 1) * G8; kb++) {
            uint8x16_t v = vld1q_u8(w + (size_t)kb * 128);
            uint8x16_t lo = vandq_u8(v, vdupq_n_u8(0x0f)), hi = vshrq_n_u8(v, 4);
            const uint32_t* ak = a + (size_t)kb * 16;   // words of k..k+3 (rows 0-7), then k+4..k+7
            int8x16_t l03 = vreinterpretq_s8_u32(vld1q_u32(ak)), l47 = vreinterpretq_s8_u32(vld1q_u32(ak + 4));
            int8x16_t h03 = vreinterpretq_s8_u32(vld1q_u32(ak + 8)), h47 = vreinterpretq_s8_u32(vld1q_u32(ak + 12));
            acc[0] = vusdotq_laneq_s32(vusdotq_laneq_s32(acc[0], lo, l03, 0), hi, h03, 0);
            acc[1] = vusdotq_laneq_s32(vusdotq_laneq_s32(acc[1], lo, l03, 1), hi, h03, 1);
            acc[2] = vusdotq_laneq_s32(vusdotq_laneq_s32(acc[2], lo, l03, 2), hi, h03, 2);
            acc[3] = vusdotq_laneq_s32(vusdotq_laneq_s32(acc[3], lo, l03, 3), hi, h03, 3);
            acc[4] = vusdotq_laneq_s32(vusdotq_laneq_s32(acc[4], lo, l47, 0), hi, h47, 0);
            acc[5] = vusdotq_laneq_s32(vusdotq_laneq_s32(acc[5], lo, l47, 1), hi, h47, 1);
            acc[6] = vusdotq_laneq_s32(vusdotq_laneq_s32(acc[6], lo, l47, 2), hi, h47, 2);
            acc[7] = vusdotq_laneq_s32(vusdotq_laneq_s32(acc[7], lo, l47, 3), hi, h47, 3);
        }
        mm_arm_q4_epilogue8(f, acc, ws + (size_t)g * 32, as + (size_t)g * 8);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        if (i < mr) mm_arm_store(y + (size_t)i * ldy, f[i], 0, nc);
}

MM_ARM_TGT_DOT static void mm_arm_kernel_q4_sdot(const uint32_t* a, const float* as, const uint8_t* w,
                                                 const uint16_t* ws, int ng, int G8, float* y, int ldy, int mr,
                                                 int nc) {
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) f[i] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t acc[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) acc[i] = vdupq_n_s32(0);
        for (int kb = g * G8; kb < (g + 1) * G8; kb++) {
            int8x16_t lo, hi;
            mm_arm_q4_unpack_s8(w + (size_t)kb * 128, &lo, &hi);
            const uint32_t* ak = a + (size_t)kb * 16;
            int8x16_t l03 = vreinterpretq_s8_u32(vld1q_u32(ak)), l47 = vreinterpretq_s8_u32(vld1q_u32(ak + 4));
            int8x16_t h03 = vreinterpretq_s8_u32(vld1q_u32(ak + 8)), h47 = vreinterpretq_s8_u32(vld1q_u32(ak + 12));
            acc[0] = vdotq_laneq_s32(vdotq_laneq_s32(acc[0], lo, l03, 0), hi, h03, 0);
            acc[1] = vdotq_laneq_s32(vdotq_laneq_s32(acc[1], lo, l03, 1), hi, h03, 1);
            acc[2] = vdotq_laneq_s32(vdotq_laneq_s32(acc[2], lo, l03, 2), hi, h03, 2);
            acc[3] = vdotq_laneq_s32(vdotq_laneq_s32(acc[3], lo, l03, 3), hi, h03, 3);
            acc[4] = vdotq_laneq_s32(vdotq_laneq_s32(acc[4], lo, l47, 0), hi, h47, 0);
            acc[5] = vdotq_laneq_s32(vdotq_laneq_s32(acc[5], lo, l47, 1), hi, h47, 1);
            acc[6] = vdotq_laneq_s32(vdotq_laneq_s32(acc[6], lo, l47, 2), hi, h47, 2);
            acc[7] = vdotq_laneq_s32(vdotq_laneq_s32(acc[7], lo, l47, 3), hi, h47, 3);
        }
        mm_arm_q4_epilogue8(f, acc, ws + (size_t)g * 32, as + (size_t)g * 8);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        if (i < mr) mm_arm_store(y + (size_t)i * ldy, f[i], 0, nc);
}

// Plain NEON GEMM: per row, the activation words repeated (ld1r), vmull_s8 + vpadalq_s16 on the low
// and high nibbles (mm_arm_kernel_q8_neon's scheme), half sums added pairwise per group.
static void mm_arm_kernel_q4_neon(const uint32_t* a, const float* as, const uint8_t* w, const uint16_t* ws, int ng,
                                  int G8, float* y, int ldy, int mr, int nc) {
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) f[i] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t lo2[8], hi2[8], acc[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) lo2[i] = hi2[i] = vdupq_n_s32(0);
        for (int kb = g * G8; kb < (g + 1) * G8; kb++) {
            int8x16_t lo, hi;
            mm_arm_q4_unpack_s8(w + (size_t)kb * 128, &lo, &hi);
            const uint32_t* ak = a + (size_t)kb * 16;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                int8x16_t al = vreinterpretq_s8_u32(vld1q_dup_u32(ak + i));
                int8x16_t ah = vreinterpretq_s8_u32(vld1q_dup_u32(ak + 8 + i));
                lo2[i] = vpadalq_s16(lo2[i], vmull_s8(vget_low_s8(lo), vget_low_s8(al)));
                hi2[i] = vpadalq_s16(hi2[i], vmull_high_s8(lo, al));
                lo2[i] = vpadalq_s16(lo2[i], vmull_s8(vget_low_s8(hi), vget_low_s8(ah)));
                hi2[i] = vpadalq_s16(hi2[i], vmull_high_s8(hi, ah));
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) acc[i] = vpaddq_s32(lo2[i], hi2[i]);
        mm_arm_q4_epilogue8(f, acc, ws + (size_t)g * 32, as + (size_t)g * 8);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        if (i < mr) mm_arm_store(y + (size_t)i * ldy, f[i], 0, nc);
}

// GEMV task: panels [task * chunk, (task + 1) * chunk), each streamed from memory once for all rows
// (f32), in passes of 2 rows (bf16) or one pass per row (q8; later passes hit L2: a q8 panel is
// K * 32 bytes, 128 KiB at K = 4096).
static void mm_arm_task_gemv(void* v, int task) {
    MMArmJob* j = v;
    const MMPacked* p = j->p;
    int p0 = task * j->chunk, p1 = mm_min(p->np, p0 + j->chunk);
    for (int pi = p0; pi < p1; pi++) {
        const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32;  // panel pi: (kw, 32) words
        float* y = j->y + (size_t)pi * 32;              // row 0, columns 32pi..32pi+31 (row stride N)
        int nc = j->N - pi * 32;
        if (j->type == DT_Q8) {
            const float* ws = p->s + (size_t)pi * p->ng * 32;
            for (int t = 0; t < j->T; t++) {            // one row per pass: the panel stays in L2
                const int8_t* q = (const int8_t*)j->a + (size_t)t * j->K;
                const float* sx = j->as + (size_t)t * p->ng;
                float* yt = y + (size_t)t * j->N;
                if (j->level >= MM_ARM_I8MM)
                    mm_arm_gemv_q8_usdot(q, sx, j->ac + (size_t)t * p->ng, p->ng, p->G / 4, (const uint8_t*)wp, ws, yt, nc);
                else if (j->level >= MM_ARM_DOTPROD)
                    mm_arm_gemv_q8_sdot(q, sx, p->ng, p->G / 4, (const uint8_t*)wp, ws, yt, nc);
                else
                    mm_arm_gemv_q8_neon(q, sx, p->ng, p->G / 4, (const uint8_t*)wp, ws, yt, nc);
            }
        } else if (j->type == DT_Q4) {                  // as q8: one row per pass
            const uint16_t* ws = p->s16 + (size_t)pi * p->ng * 32;
            for (int t = 0; t < j->T; t++) {
                const int8_t* q = (const int8_t*)j->a + (size_t)t * j->K;
                const float* sx = j->as + (size_t)t * p->ng;
                float* yt = y + (size_t)t * j->N;
                const uint8_t* w8 = (const uint8_t*)wp;
                if (j->level >= MM_ARM_I8MM)
                    mm_arm_gemv_q4_usdot(q, sx, j->ac + (size_t)t * p->ng, p->ng, p->G / 8, w8, ws, yt, nc);
                else if (j->level >= MM_ARM_DOTPROD) mm_arm_gemv_q4_sdot(q, sx, p->ng, p->G / 8, w8, ws, yt, nc);
                else mm_arm_gemv_q4_neon(q, sx, p->ng, p->G / 8, w8, ws, yt, nc);
            }
        } else if (j->type == DT_F32) {                 // T <= 3 rows: one pass over the panel
            const float* wf = (const float*)wp;
            if (j->T == 3) mm_arm_gemv_f32(j->x, j->K, wf, y, j->N, nc, 3);
            else if (j->T == 2) mm_arm_gemv_f32(j->x, j->K, wf, y, j->N, nc, 2);
            else mm_arm_gemv_f32(j->x, j->K, wf, y, j->N, nc, 1);
        } else {                                        // bf16: passes of 2 rows, then 1
            for (int t = 0; t < j->T; t += 2) {
                const float* x = j->x + (size_t)t * j->K;
                float* yt = y + (size_t)t * j->N;
                if (j->T - t >= 2) mm_arm_gemv_bf16(x, j->K, wp, yt, j->N, nc, 2);
                else mm_arm_gemv_bf16(x, j->K, wp, yt, j->N, nc, 1);
            }
        }
    }
}

// ---- GEMM activation packing (per call; tasks split the row tiles)
//   f32        a tile is (K, 6) f32: a[k * 6 + i] = x[t0 + i][k], zero for rows past T.
//   bf16       a tile is (K2/2, 12) f32, 12 per weight pair kk: rows 0-3 at k = 2kk, rows 0-3 at
//              2kk + 1, then rows 4, 5 at 2kk and rows 4, 5 at 2kk + 1 (three registers; zero past K).
//   q8         a tile is (K/4, 8) words: word (kq, i) = the 4 s8 of row t0 + i at k = 4kq..4kq+3, made
//              by mm_quantize_group (THE definition, so the values are the x86 quantizers'); scales
//              and compensations (ng, 8). Rows past T: zero words, scale 0.
// So one 16-byte load gives the activations of 4 rows at one k (f32) or at one k4 step (q8), the
// lane operand of fmla / sdot. Packing is O(T K) scalar work against O(T K N) in the kernels.

typedef struct { MMArmJob* j; int n_tasks; } MMArmPackCtx;

static void mm_arm_task_pack(void* v, int task) {
    MMArmPackCtx* c = v;
    MMArmJob* j = c->j;
    int K = j->K, ta, tb;
    mm_split(j->ntiles, task, c->n_tasks, &ta, &tb);
    if (j->type == DT_F32 || j->type == DT_BF16) {     // q8 and q4: quantized below
        for (int it = ta; it < tb; it++) {
            float* a = (float*)j->a + (size_t)it * j->ka * MM_ARM_F32_MR;
            for (int i = 0; i < MM_ARM_F32_MR; i++) {
                int t = it * MM_ARM_F32_MR + i;
                const float* xt = j->x + (size_t)t * K;     // read only when t < T
                for (int k = 0; k < j->ka; k++) {
                    float v = t < j->T && k < K ? xt[k] : 0.0f;
                    // f32: 6 per k. bf16: 12 per pair kk = k / 2, parity p = k % 2: rows 0-3 go to
                    // slots 4p + i (e03 or o03), rows 4, 5 to slots 8 + 2p + (i - 4) (eo45)
                    if (j->type == DT_F32) a[(size_t)k * 6 + i] = v;
                    else a[(size_t)(k / 2) * 12 + (i < 4 ? 4 * (k % 2) + i : 8 + 2 * (k % 2) + i - 4)] = v;
                }
            }
        }
        return;
    }
    const MMPacked* p = j->p;
    int G = p->G, ng = p->ng, kw = K / 4;
    // Each row of the tile: quantize all its groups into q (K s8, the row-major form), then scatter
    // its 4-byte words into column i of the tile (stride 8 words = one k4 step of 8 rows).
    int8_t* q = mm_alloc((size_t)K);                    // one quantized row
    for (int it = ta; it < tb; it++) {
        uint32_t* a = (uint32_t*)j->a + (size_t)it * kw * MM_ARM_Q8_MR;     // (kw, 8) words
        float* as = j->as + (size_t)it * ng * MM_ARM_Q8_MR;                 // (ng, 8) scales
        int32_t* ac = j->ac + (size_t)it * ng * MM_ARM_Q8_MR;               // (ng, 8) compensations
        for (int i = 0; i < MM_ARM_Q8_MR; i++) {
            int t = it * MM_ARM_Q8_MR + i;
            for (int g = 0; g < ng; g++) {
                float s = 0.0f;
                int32_t sum = 0;
                if (t < j->T) sum = mm_quantize_group(j->x + (size_t)t * K + (size_t)g * G, G, q + (size_t)g * G, &s);
                else memset(q + (size_t)g * G, 0, (size_t)G);
                as[g * MM_ARM_Q8_MR + i] = s;
                ac[g * MM_ARM_Q8_MR + i] = -128 * sum;
            }
            for (int kq = 0; kq < kw; kq++) memcpy(&a[(size_t)kq * MM_ARM_Q8_MR + i], q + 4 * (size_t)kq, 4);
        }
    }
    free(q);
}

// ---- f32 GEMM kernel: 6 rows x 16 columns (half a panel) over the full K.
// Registers: 24 accumulators acc[i][c] (row i, columns 4c..4c+3) + 4 weights (16 columns at one k)
// + 2 activation registers (rows 0-3, rows 4-5 at one k) = 30 of 32. Per k: 6 loads, 24 fmla by
// lane. A wider tile does not fit: 8 x 16 needs 32 accumulators alone.
// Same k order in each lane as matmul_ref (see the arithmetic note above).
// One weight register (4 columns at one k) times rows 0-5: rows 0-3 from the lanes of a03 (laneq:
// a 128-bit register), rows 4-5 from the lanes of the 64-bit a45 (lane).
#define MM_ARM_FMA6(c, wv, a03, a45)                                  \
    do {                                                              \
        acc[0][c] = vfmaq_laneq_f32(acc[0][c], wv, a03, 0);           \
        acc[1][c] = vfmaq_laneq_f32(acc[1][c], wv, a03, 1);           \
        acc[2][c] = vfmaq_laneq_f32(acc[2][c], wv, a03, 2);           \
        acc[3][c] = vfmaq_laneq_f32(acc[3][c], wv, a03, 3);           \
        acc[4][c] = vfmaq_lane_f32(acc[4][c], wv, a45, 0);            \
        acc[5][c] = vfmaq_lane_f32(acc[5][c], wv, a45, 1);            \
    } while (0)

static void mm_arm_kernel_f32(const float* a, const float* w, int K, float* y, int ldy, int mr, int nc) {
    float32x4_t acc[MM_ARM_F32_MR][4];
#pragma GCC unroll 6
    for (int i = 0; i < MM_ARM_F32_MR; i++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc[i][c] = vdupq_n_f32(0.0f);
    // k outer: per k, one 6-float slice of the tile and 16 weights, then 24 fmla; every loaded
    // value is used 4 (activations) or 6 (weights) times from registers
    for (int k = 0; k < K; k++) {
        const float* wk = w + (size_t)k * 32;           // stride: a whole panel row (32 columns)
        const float* ak = a + (size_t)k * MM_ARM_F32_MR;
        float32x4_t a03 = vld1q_f32(ak);
        float32x2_t a45 = vld1_f32(ak + 4);
        MM_ARM_FMA6(0, vld1q_f32(wk + 0), a03, a45);
        MM_ARM_FMA6(1, vld1q_f32(wk + 4), a03, a45);
        MM_ARM_FMA6(2, vld1q_f32(wk + 8), a03, a45);
        MM_ARM_FMA6(3, vld1q_f32(wk + 12), a03, a45);
    }
#pragma GCC unroll 6
    for (int i = 0; i < MM_ARM_F32_MR; i++)   // constant indices keep acc[][] in registers
        if (i < mr)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) mm_arm_store(y + (size_t)i * ldy, acc[i][c], 4 * c, nc);
}

// bf16 GEMM kernel: the f32 kernel's tile; per weight pair row kk, each 4-word register is widened
// into the even-k and odd-k weights (shift / mask) and used against the activations at k = 2kk and
// 2kk + 1. Registers: 24 accumulators + 3 activation registers (the tile layout puts rows 4-5 of
// both k into one) + raw, even, odd weights + the mask = 31: widening one 4-column register at a
// time keeps it within the file on paper. GCC 12's scheduler still hoists the widening of all four
// registers and spills ~3 accumulators per step: 6 stack loads/stores against 48 fmla + 8 widening
// ops on the two vector pipes, and the load pipes have room for them.
// As MM_ARM_FMA6, but rows 4-5 come from lanes l, l+1 of a 128-bit register: l = 0 for the even k
// of the pair, l = 2 for the odd k (the eo45 layout of the packed bf16 tile).
#define MM_ARM_FMA6Q(c, wv, a03, a45, l)                              \
    do {                                                              \
        acc[0][c] = vfmaq_laneq_f32(acc[0][c], wv, a03, 0);           \
        acc[1][c] = vfmaq_laneq_f32(acc[1][c], wv, a03, 1);           \
        acc[2][c] = vfmaq_laneq_f32(acc[2][c], wv, a03, 2);           \
        acc[3][c] = vfmaq_laneq_f32(acc[3][c], wv, a03, 3);           \
        acc[4][c] = vfmaq_laneq_f32(acc[4][c], wv, a45, l);           \
        acc[5][c] = vfmaq_laneq_f32(acc[5][c], wv, a45, l + 1);       \
    } while (0)

static void mm_arm_kernel_bf16(const float* a, const uint32_t* w, int kw, float* y, int ldy, int mr, int nc) {
    const uint32x4_t hi16 = vdupq_n_u32(0xffff0000u);
    float32x4_t acc[MM_ARM_F32_MR][4];
#pragma GCC unroll 6
    for (int i = 0; i < MM_ARM_F32_MR; i++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) acc[i][c] = vdupq_n_f32(0.0f);
    for (int kk = 0; kk < kw; kk++) {
        const uint32_t* wk = w + (size_t)kk * 32;       // panel row kk: 32 words = 64 bf16
        const float* ak = a + (size_t)kk * 12;          // the tile's 12 floats of pair kk
        // e03: rows 0-3 at k = 2kk; o03: rows 0-3 at 2kk+1; eo45: rows 4, 5 at 2kk, then at 2kk+1
        float32x4_t e03 = vld1q_f32(ak), o03 = vld1q_f32(ak + 4), eo45 = vld1q_f32(ak + 8);
#define MM_ARM_BF16_COL(c)                                                               \
        do {                                                                             \
            uint32x4_t raw = vld1q_u32(wk + 4 * (c));                                    \
            MM_ARM_FMA6Q(c, vreinterpretq_f32_u32(vshlq_n_u32(raw, 16)), e03, eo45, 0);  \
            MM_ARM_FMA6Q(c, vreinterpretq_f32_u32(vandq_u32(raw, hi16)), o03, eo45, 2);  \
        } while (0)
        MM_ARM_BF16_COL(0);
        MM_ARM_BF16_COL(1);
        MM_ARM_BF16_COL(2);
        MM_ARM_BF16_COL(3);
#undef MM_ARM_BF16_COL
    }
#pragma GCC unroll 6
    for (int i = 0; i < MM_ARM_F32_MR; i++)   // constant indices keep acc[][] in registers
        if (i < mr)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) mm_arm_store(y + (size_t)i * ldy, acc[i][c], 4 * c, nc);
}

// ---- q8 GEMM kernels: 8 rows x 4 columns over the full K (groups of G/4 k4 steps).
// Per k4 step: one weight register (4 columns x 4 k), two activation registers (rows 0-3 and 4-7,
// one word each), then per row the lane form "sdot vd.4s, vn.16b, vm.4b[i]", which takes word i of
// the activation register as the 4 bytes to repeat: 8 sdots per 3 loads (+ 1 xor for sdot).
// Registers: 8 int32 dots + 8 f32 sums + weight + 2 activations + mask = 20 (a 16-column tile
// would need 32 + 32). Epilogue per group and row: f = fma(float(dot), ws * sx[i], f).
// Rows and columns past the matrix are zeros in the packed data and are not stored.
// Expects g, ws (panel scales + quad, row stride 32), as (the tile's (ng, 8) scales), acc, f in
// scope: row i's dot times (ws * its scale, a lane of s03 / s47), added into f[i] with one FMA.
#define MM_ARM_Q8_EPILOGUE()                                                                   \
    do {                                                                                       \
        float32x4_t sw = vld1q_f32(ws + (size_t)g * 32);                                      \
        float32x4_t s03 = vld1q_f32(as + (size_t)g * 8), s47 = vld1q_f32(as + (size_t)g * 8 + 4); \
        f[0] = vfmaq_f32(f[0], vcvtq_f32_s32(acc[0]), vmulq_laneq_f32(sw, s03, 0));            \
        f[1] = vfmaq_f32(f[1], vcvtq_f32_s32(acc[1]), vmulq_laneq_f32(sw, s03, 1));            \
        f[2] = vfmaq_f32(f[2], vcvtq_f32_s32(acc[2]), vmulq_laneq_f32(sw, s03, 2));            \
        f[3] = vfmaq_f32(f[3], vcvtq_f32_s32(acc[3]), vmulq_laneq_f32(sw, s03, 3));            \
        f[4] = vfmaq_f32(f[4], vcvtq_f32_s32(acc[4]), vmulq_laneq_f32(sw, s47, 0));            \
        f[5] = vfmaq_f32(f[5], vcvtq_f32_s32(acc[5]), vmulq_laneq_f32(sw, s47, 1));            \
        f[6] = vfmaq_f32(f[6], vcvtq_f32_s32(acc[6]), vmulq_laneq_f32(sw, s47, 2));            \
        f[7] = vfmaq_f32(f[7], vcvtq_f32_s32(acc[7]), vmulq_laneq_f32(sw, s47, 3));            \
    } while (0)

// a: the tile (K/4, 8) words; as, ac: (ng, 8); w: the panel's bytes + 16 * (column quad); ws: the
// panel's scales + 4 * (column quad), row stride 32.
MM_ARM_TGT_DOT static void mm_arm_kernel_q8_sdot(const uint32_t* a, const float* as, const uint8_t* w, const float* ws,
                                                 int ng, int G4, float* y, int ldy, int mr, int nc) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) f[i] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t acc[8];                               // acc[i]: row i, columns 0-3 (int32 dots)
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) acc[i] = vdupq_n_s32(0);
        // w + kq * 128: panel rows are 128 bytes (32 columns x 4 k); this quad's 16 bytes of each
        for (int kq = g * G4; kq < (g + 1) * G4; kq++) {
            // wv: columns 0-3 x k 4kq..4kq+3 (s8); a03 / a47: one word per row, rows 0-3 / 4-7
            int8x16_t wv = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(w + (size_t)kq * 128), flip));
            int8x16_t a03 = vreinterpretq_s8_u32(vld1q_u32(a + (size_t)kq * 8));
            int8x16_t a47 = vreinterpretq_s8_u32(vld1q_u32(a + (size_t)kq * 8 + 4));
            acc[0] = vdotq_laneq_s32(acc[0], wv, a03, 0);
            acc[1] = vdotq_laneq_s32(acc[1], wv, a03, 1);
            acc[2] = vdotq_laneq_s32(acc[2], wv, a03, 2);
            acc[3] = vdotq_laneq_s32(acc[3], wv, a03, 3);
            acc[4] = vdotq_laneq_s32(acc[4], wv, a47, 0);
            acc[5] = vdotq_laneq_s32(acc[5], wv, a47, 1);
            acc[6] = vdotq_laneq_s32(acc[6], wv, a47, 2);
            acc[7] = vdotq_laneq_s32(acc[7], wv, a47, 3);
        }
        MM_ARM_Q8_EPILOGUE();
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        if (i < mr) mm_arm_store(y + (size_t)i * ldy, f[i], 0, nc);
}

// i8mm: usdot takes the u8 weights as they are packed (no xor); each row's dots start at its
// compensation -128 * sum(q), as in the x86 VNNI kernels.
MM_ARM_TGT_I8MM static void mm_arm_kernel_q8_usdot(const uint32_t* a, const float* as, const int32_t* ac,
                                                   const uint8_t* w, const float* ws, int ng, int G4, float* y,
                                                   int ldy, int mr, int nc) {
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) f[i] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t acc[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) acc[i] = vdupq_n_s32(ac[g * 8 + i]);
        for (int kq = g * G4; kq < (g + 1) * G4; kq++) {
            uint8x16_t wv = vld1q_u8(w + (size_t)kq * 128);     // u8 as packed: no xor
            int8x16_t a03 = vreinterpretq_s8_u32(vld1q_u32(a + (size_t)kq * 8));
            int8x16_t a47 = vreinterpretq_s8_u32(vld1q_u32(a + (size_t)kq * 8 + 4));
            acc[0] = vusdotq_laneq_s32(acc[0], wv, a03, 0);
            acc[1] = vusdotq_laneq_s32(acc[1], wv, a03, 1);
            acc[2] = vusdotq_laneq_s32(acc[2], wv, a03, 2);
            acc[3] = vusdotq_laneq_s32(acc[3], wv, a03, 3);
            acc[4] = vusdotq_laneq_s32(acc[4], wv, a47, 0);
            acc[5] = vusdotq_laneq_s32(acc[5], wv, a47, 1);
            acc[6] = vusdotq_laneq_s32(acc[6], wv, a47, 2);
            acc[7] = vusdotq_laneq_s32(acc[7], wv, a47, 3);
        }
        MM_ARM_Q8_EPILOGUE();
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        if (i < mr) mm_arm_store(y + (size_t)i * ldy, f[i], 0, nc);
}

// Plain NEON: per row, the activation word repeated (ld1r), vmull_s8 on the low / high halves and
// vpadalq_s16 into two half-sum registers (see mm_arm_gemv_q8_neon), added pairwise per group.
// Registers: 16 half-sums + 8 f32 sums + weight + activation + mask = 27.
static void mm_arm_kernel_q8_neon(const uint32_t* a, const float* as, const uint8_t* w, const float* ws, int ng,
                                  int G4, float* y, int ldy, int mr, int nc) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    float32x4_t f[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) f[i] = vdupq_n_f32(0.0f);
    for (int g = 0; g < ng; g++) {
        int32x4_t lo[8], hi[8], acc[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) lo[i] = hi[i] = vdupq_n_s32(0);
        for (int kq = g * G4; kq < (g + 1) * G4; kq++) {
            int8x16_t wv = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(w + (size_t)kq * 128), flip));
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                // ai: row i's word at this k4 step in all 4 lanes (ld1r: a load, no shuffle)
                int8x16_t ai = vreinterpretq_s8_u32(vld1q_dup_u32(a + (size_t)kq * 8 + i));
                lo[i] = vpadalq_s16(lo[i], vmull_s8(vget_low_s8(wv), vget_low_s8(ai)));
                hi[i] = vpadalq_s16(hi[i], vmull_high_s8(wv, ai));
            }
        }
#pragma GCC unroll 8
        // [c0 k01, c0 k23, c1 k01, c1 k23] + [c2 .., c3 ..] pairwise -> [c0, c1, c2, c3]
        for (int i = 0; i < 8; i++) acc[i] = vpaddq_s32(lo[i], hi[i]);
        MM_ARM_Q8_EPILOGUE();
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        if (i < mr) mm_arm_store(y + (size_t)i * ldy, f[i], 0, nc);
}

// GEMM loop nest per task (one block of <= MM_ARM_NCP panels): row tiles -> panels -> column blocks
// -> kernel over the full K. The tile's activations (6 x K f32 or 8 x K/4 words) are reused from
// L1/L2 for every column block; the weight block streams from L2.
static void mm_arm_task_gemm(void* v, int task) {
    MMArmJob* j = v;
    const MMPacked* p = j->p;
    int N = j->N, p0 = task * j->chunk, p1 = mm_min(p->np, p0 + j->chunk);
    int mrt = j->type == DT_Q8 || j->type == DT_Q4 ? MM_ARM_Q8_MR : MM_ARM_F32_MR;
    for (int it = 0; it < j->ntiles; it++) {
        int t0 = it * mrt, mr = mm_min(mrt, j->T - t0);
        for (int pi = p0; pi < p1; pi++) {
            const uint32_t* wp = (const uint32_t*)p->w + (size_t)pi * p->kw * 32;
            if (j->type == DT_Q4) {                     // the q8 tile: activations (K/4, 8) words
                const uint32_t* a = (const uint32_t*)j->a + (size_t)it * (j->K / 4) * MM_ARM_Q8_MR;
                const float* as = j->as + (size_t)it * p->ng * MM_ARM_Q8_MR;
                const int32_t* ac = j->ac + (size_t)it * p->ng * MM_ARM_Q8_MR;
                for (int cq = 0; cq < 8; cq++) {        // eight 4-column quads, 16 bytes of each row
                    int n0 = pi * 32 + 4 * cq;
                    if (n0 >= N) break;
                    const uint8_t* w = (const uint8_t*)wp + 16 * cq;
                    const uint16_t* ws = p->s16 + (size_t)pi * p->ng * 32 + 4 * cq;
                    float* y = j->y + (size_t)t0 * N + n0;
                    if (j->level >= MM_ARM_I8MM) mm_arm_kernel_q4_usdot(a, as, ac, w, ws, p->ng, p->G / 8, y, N, mr, N - n0);
                    else if (j->level >= MM_ARM_DOTPROD) mm_arm_kernel_q4_sdot(a, as, w, ws, p->ng, p->G / 8, y, N, mr, N - n0);
                    else mm_arm_kernel_q4_neon(a, as, w, ws, p->ng, p->G / 8, y, N, mr, N - n0);
                }
                continue;
            }
            if (j->type != DT_Q8) {
                const float* a = (const float*)j->a + (size_t)it * j->ka * MM_ARM_F32_MR;
                for (int h = 0; h < 2; h++) {           // two 16-column halves
                    int n0 = pi * 32 + 16 * h;
                    if (n0 >= N) break;
                    float* y = j->y + (size_t)t0 * N + n0;
                    if (j->type == DT_F32) mm_arm_kernel_f32(a, (const float*)wp + 16 * h, j->K, y, N, mr, N - n0);
                    else mm_arm_kernel_bf16(a, wp + 16 * h, p->kw, y, N, mr, N - n0);
                }
                continue;
            }
            const uint32_t* a = (const uint32_t*)j->a + (size_t)it * p->kw * MM_ARM_Q8_MR;
            const float* as = j->as + (size_t)it * p->ng * MM_ARM_Q8_MR;
            const int32_t* ac = j->ac + (size_t)it * p->ng * MM_ARM_Q8_MR;
            // eight 4-column quads: the tile (8 x K/4 words, 32 KiB at K = 4096) stays in L1 for
            // all of them; each reads 16 bytes of every 128-byte panel row
            for (int cq = 0; cq < 8; cq++) {
                int n0 = pi * 32 + 4 * cq;
                if (n0 >= N) break;
                const uint8_t* w = (const uint8_t*)wp + 16 * cq;
                const float* ws = p->s + (size_t)pi * p->ng * 32 + 4 * cq;
                float* y = j->y + (size_t)t0 * N + n0;
                if (j->level >= MM_ARM_I8MM) mm_arm_kernel_q8_usdot(a, as, ac, w, ws, p->ng, p->G / 4, y, N, mr, N - n0);
                else if (j->level >= MM_ARM_DOTPROD) mm_arm_kernel_q8_sdot(a, as, w, ws, p->ng, p->G / 4, y, N, mr, N - n0);
                else mm_arm_kernel_q8_neon(a, as, w, ws, p->ng, p->G / 4, y, N, mr, N - n0);
            }
        }
    }
}

static void* mm_arm_scratch;            // packed activations, grown on demand, reused across calls
static size_t mm_arm_scratch_bytes;

// y = x W^T on packed W with the ARM kernels (called by matmul when mm_arm_level > MM_ARM_SCALAR).
static void mm_matmul_arm(float* y, const float* x, const Matrix* w, int T) {
    const MMPacked* p = w->packed;
    int nth = pool_size(), np = p->np, K = w->cols;
    MMArmJob j = { .y = y, .x = x, .p = p, .type = w->type, .level = mm_arm_level, .T = T, .N = w->rows, .K = K };
    int quant = j.type == DT_Q8 || j.type == DT_Q4;    // int8 activations (q8 and q4 alike)
    int gemv = T <= MM_ARM_GEMV_MAX_T, mrt = quant ? MM_ARM_Q8_MR : MM_ARM_F32_MR;
    // bytes of activations to prepare: q8 GEMV (T, K) s8 + scales; GEMM tiles; f32/bf16 GEMV none
    j.ntiles = (T + mrt - 1) / mrt;
    j.ka = j.type == DT_BF16 ? 2 * p->kw : K;
    size_t abytes = 0, sbytes = 0;
    if (quant) {
        abytes = gemv ? (size_t)T * K : (size_t)j.ntiles * MM_ARM_Q8_MR * K;
        sbytes = (gemv ? (size_t)T : (size_t)j.ntiles * MM_ARM_Q8_MR) * p->ng * 4;
    } else if (!gemv) {
        abytes = (size_t)j.ntiles * MM_ARM_F32_MR * j.ka * 4;
    }
    abytes = align_up(abytes, 64);
    int own = mm_in_pool;                   // nested call (inside a pool task): private scratch
    void* buf = NULL;
    if (abytes + sbytes) {
        size_t need = abytes + 2 * sbytes + 64;
        if (own) buf = mm_alloc(need);
        else {
            if (need > mm_arm_scratch_bytes) {      // grow with 25 % headroom, as mm_get_scratch
                free(mm_arm_scratch);
                mm_arm_scratch_bytes = need + need / 4;
                mm_arm_scratch = mm_alloc(mm_arm_scratch_bytes);
            }
            buf = mm_arm_scratch;
        }
        j.a = buf;
        j.as = (float*)((char*)buf + abytes);
        j.ac = (int32_t*)((char*)buf + abytes + sbytes);
    }
    // scratch layout: [a: abytes][as: sbytes][ac: sbytes]; as and ac are only used by q8
    if (gemv) {
        if (quant)                          // quantize the T <= 3 rows once, in this thread
            for (int t = 0; t < T; t++)
                for (int g = 0; g < p->ng; g++) {
                    int32_t s = mm_quantize_group(x + (size_t)t * K + (size_t)g * p->G, p->G,
                                                  (int8_t*)j.a + (size_t)t * K + (size_t)g * p->G,
                                                  &j.as[(size_t)t * p->ng + g]);
                    j.ac[(size_t)t * p->ng + g] = -128 * s;
                }
        // ~8 tasks per thread (the x86 mm_gemv_tpt default): dynamic claiming evens out the finish
        j.chunk = (np + 8 * nth - 1) / (8 * nth);   // ~8 tasks per thread, each a run of whole panels
        j.n_tasks = (np + j.chunk - 1) / j.chunk;
        pool_for(j.n_tasks, mm_arm_task_gemv, &j);
    } else {
        // phase 1: pack / quantize the row tiles (one task per thread at most)
        MMArmPackCtx pc = { &j, mm_min(nth, j.ntiles) };   // a task packs whole tiles
        pool_for(pc.n_tasks, mm_arm_task_pack, &pc);
        // phase 2: one task per block of <= MM_ARM_NCP panels, fewer if that leaves a thread idle
        j.chunk = mm_min(MM_ARM_NCP, (np + nth - 1) / nth);
        j.n_tasks = (np + j.chunk - 1) / j.chunk;
        pool_for(j.n_tasks, mm_arm_task_gemm, &j);
    }
    if (own) free(buf);
}
#endif // __aarch64__

// ----------------------------------------------------------------------------
// matmul: pick the path, pack activations, run the tasks

#if MM_X86
// The AVX-512 level of matmul(). q8 without AVX512-VNNI and the bf16 GEMM without AVX512-BF16 run
// the AVX2 kernels (vpmaddubsw int8 dots; bf16 widened in registers), which beat widening in zmm.
static void mm_matmul_avx512(MMJob* jp) {
    MMJob j = *jp;
    const Matrix* w = j.w;
    const float* x = j.x;
    int T = j.T, np = j.p->np, nth = pool_size();
    int type = w->type;
    if ((type == DT_Q8 && !mm_has_vnni && mm_q8_gemv_vnni) ||
        (type == DT_BF16 && !mm_has_bf16 && T > mm_gemv_max_t[type])) {
        mm_matmul_avx2(jp);
        return;
    }
    // GEMM needs the type's AVX-512 instruction (vfmadd / vdpbf16ps / vpdpbusd); otherwise the
    // widening kernels take every T
    int gemm = T > mm_gemv_max_t[type] &&
               (type == DT_F32 || (type == DT_BF16 && mm_has_bf16) || (type == DT_Q8 && mm_has_vnni));
    if (!gemm) {
        float* own_x = mm_materialize(&j);
        x = j.x;
        // ~mm_gemv_tpt chunks per thread, each a long sequential stream of whole panels
        j.chunk = (np + mm_gemv_tpt * nth - 1) / (mm_gemv_tpt * nth);
        j.n_tasks = (np + j.chunk - 1) / j.chunk;
        if (type == DT_Q8 && mm_has_vnni && mm_q8_gemv_vnni) {
            // quantize the T (<= 3) activation rows once (caller thread: ~1 us for K=4096), then stream
            const MMPacked* p = j.p;
            size_t qbytes = align_up((size_t)T * w->cols, 64), sbytes = (size_t)T * p->ng * 4;
            int own = mm_in_pool;
            // scratch layout: [q (T, K) s8, padded to 64 bytes][as (T, ng) f32][ac (T, ng) int32]
            void* buf = mm_get_scratch(qbytes + 2 * sbytes + 64, own);
            j.a = buf;
            j.as = (float*)((char*)buf + qbytes);
            j.ac = (int32_t*)((char*)buf + qbytes + sbytes);
            mm_quantize_rows_q8(x, T, w->cols, p->G, j.a, j.as, j.ac);
            int bounds[MM_MAX_GUIDED + 1];  // guided chunks (mm_guided_bounds), or the equal ones above
            if (mm_gemv_guided) {
                j.n_tasks = mm_guided_bounds(np, nth, bounds);
                j.bounds = bounds;
            }
            pool_for(j.n_tasks, mm_task_gemv512_q8v, &j);
            if (own) free(buf);
            free(own_x);
            return;
        }
        pool_for(j.n_tasks, mm_task_gemv512, &j);
        free(own_x);
        return;
    }
    // pack (or quantize) the activations into row tiles, then the GEMM proper
    const MMPacked* p = j.p;
    int mrt = type == DT_Q8 ? MM_Q8_MR : MM_F32_MR;
    j.ntiles = (T + mrt - 1) / mrt;
    size_t abytes = (size_t)j.ntiles * mrt * p->kw * 4;
    size_t sbytes = type == DT_Q8 ? (size_t)j.ntiles * mrt * p->ng * 4 : 0;
    // scratch layout: [a: tiles][as: (ntiles, ng, 6) f32][ac: (ntiles, ng, 6) int32], 64 bytes slack
    size_t need = abytes + 2 * sbytes + 64;
    int own = mm_in_pool;           // nested call: private scratch, single thread
    void* buf = mm_get_scratch(need, own);
    j.a = buf;
    j.as = (float*)((char*)buf + abytes);
    j.ac = (int32_t*)((char*)buf + abytes + sbytes);
    j.n_tasks = mm_min(nth, j.ntiles);
    pool_for(j.n_tasks, type == DT_F32 ? mm_task_pack_f32 : type == DT_BF16 ? mm_task_pack_bf16 : mm_task_pack_q8, &j);
    // one task = one weight block (NCP panels), fewer if that leaves a thread idle
    int ncp = type == DT_F32 ? MM_F32_NCP : type == DT_BF16 ? MM_BF16_NCP : MM_Q8_NCP;
    j.tpg = j.ntiles;
    j.chunk = mm_min(ncp, (np + nth - 1) / nth);
    j.n_tasks = (np + j.chunk - 1) / j.chunk;
    if (type == DT_Q8) mm_int8_blocks(&j, (size_t)p->kw * 4 * 32, (size_t)p->kw * 4 * MM_Q8_MR);
    pool_for(j.n_tasks, mm_task_gemm, &j);
    jp->post_done = 1;
    if (own) free(buf);
}
#endif // MM_X86

// The epilogue over all of y, for the paths that do not call it per tile: blocks of 32 rows.
static void mm_post_task(void* v, int task) {
    const MMJob* j = v;
    j->post(j->post_ctx, j->y, j->N, task * 32, mm_min(j->T, task * 32 + 32), 0, j->N);
}

// The product by the path for this CPU and T: one branch per architecture (each needs the packed panels).
static void mm_product(MMJob* j) {
#if MM_X86
    if (j->p && j->w->type == DT_Q4 && mm_isa >= MM_AVX2) { mm_matmul_q4_x86(j); return; }   // every level
    if (j->p && mm_isa == MM_AVX512) { mm_matmul_avx512(j); return; }
    if (j->p && mm_isa >= MM_AVX2) { mm_matmul_avx2(j); return; }      // AVX2 and AVX-VNNI
#endif
    // ARM and the portable loop read x whole
    float* own_x = mm_materialize(j);
#if defined(__aarch64__)
    mm_detect_arm();
    if (j->p && mm_arm_level > MM_ARM_SCALAR) { mm_matmul_arm(j->y, j->x, j->w, j->T); free(own_x); return; }   // NEON, dotprod, i8mm
#endif
    // Portable: unpacked matrices, LLAVA_ISA=scalar, CPUs without AVX2, other architectures
    pool_for(j->n_tasks, mm_task_scalar, j);
    free(own_x);
}

// matmul, matmul_rows and matmul_then: x given, or made row by row by fn (j.row_fn); then the epilogue.
static void mm_run(MMJob j) {
    const Matrix* w = j.w;
    int T = j.T;
    mm_check(w);
    mm_detect_isa();
    if (T <= 0 || w->rows == 0) return;
    if (w->cols == 0) memset(j.y, 0, (size_t)T * w->rows * sizeof(float));
    else mm_product(&j);
    if (j.post && !j.post_done) pool_for((T + 31) / 32, mm_post_task, &j);
}

void matmul(float* y, const float* x, const Matrix* w, int T) {
    // n_tasks = one per thread: the portable path's split; the SIMD paths set their own
    mm_run((MMJob){ .y = y, .x = x, .w = w, .p = w->packed, .T = T, .N = w->rows, .K = w->cols, .n_tasks = pool_size() });
}

// y = x W^T where row t of x is fn(ctx, t, row): the norm before a projection, for instance. The GEMMs
// that pack their activations in row tiles (x86) call fn inside the packer, so x is never written as
// a whole; every other path (GEMV, ARM, the portable loop) first makes x in a buffer. Same results as
// matmul() on the rows fn makes.
void matmul_rows(float* y, MMRowFn fn, const void* ctx, const Matrix* w, int T) {
    mm_run((MMJob){ .y = y, .row_fn = fn, .row_ctx = ctx, .w = w, .p = w->packed, .T = T, .N = w->rows, .K = w->cols,
                    .n_tasks = pool_size() });
}

// matmul (x given) or matmul_rows (x NULL: row t made by fn), then post(post_ctx, ...) on every block
// of y (MMBlockFn): inside the GEMMs, on each tile while it is in L1.
void matmul_then(float* y, const float* x, MMRowFn fn, const void* ctx, const Matrix* w, int T, MMBlockFn post,
                 const void* post_ctx) {
    mm_run((MMJob){ .y = y, .x = x, .row_fn = x ? NULL : fn, .row_ctx = ctx, .w = w, .p = w->packed, .T = T,
                    .N = w->rows, .K = w->cols, .n_tasks = pool_size(), .post = post, .post_ctx = post_ctx });
}
