// bench.c -- speed of matmul.c against this machine's own peaks, measured in the same run.
// Build: gcc -O3 -march=native -pthread -o bench/bench bench/bench.c -lm
// Run:   ./bench/bench [--threads N] [--reps N] [--quick]
// Prints a table and never fails on speed (exit 0 unless it cannot run at all).
//
// Run:   ./build/bench --threads 1 --cpu   (single thread, CPU time: steady numbers on a shared machine)
// Run:   ./build/bench --isa avx2   (the whole table at a capped kernel level: AVX2 rows on an AVX-512 CPU)
// Peaks: register-only loops on all threads (best of 7) of the instructions each level's kernels use:
// f32 FMA (zmm on AVX-512, ymm on AVX2), bf16 dot (vdpbf16ps), int8 VNNI (zmm vpdpbusd), AVX-VNNI
// (ymm vpdpbusd) and the AVX2 int8 dot (vpmaddubsw + vpmaddwd + vpaddd). Each GEMM row is a % of the
// peak of its own kernel family, named at the end of the row;
// DRAM read bandwidth of two streaming loops over a 1 GiB buffer (a plain add-of-loads loop and a
// bf16-widen-and-FMA loop, which on this VM streams better; the better of the two is the reference).
// GEMM rows: GFLOP/s (q8: GOP/s, activation quantization included) as % of the matching peak.
// GEMV rows (T=1, or --gemv-t T): GB/s of weight bytes streamed, as % of the read-bandwidth
// reference, measured interleaved with the GEMVs (the VM's bandwidth drifts 24-60 GB/s from minute to
// minute), with several copies of each matrix so the working set is far larger than L3. All figures
// are medians. "q8" is the decode path (VNNI: activations quantized, vpdpbusd), "q8w" the widening
// kernel (int8 -> f32, f32 activations) on the same matrices in the same run, for comparison.
// "q4" rows: 4-bit weights with bf16 scales per group of --q4-group inputs (default 64, export.py's),
// on the q8 kernels' dot instructions (so its GEMM % is of the same int8 peak as q8's); its GEMV
// GB/s counts the packed nibbles and scales (0.5 + 2/G bytes per weight).
// Tuning knobs: --pf, --tpt, --alt, --q8-max-t (see usage).

#include "../matmul.c"
#include "../kernels.c"   // attention(), for the attention rows
#include <unistd.h>

// --cpu: time with this thread's CPU time instead of the wall clock (only meaningful with --threads 1,
// where the caller runs every task): on a shared machine a descheduled thread then costs nothing.
static int use_cpu_time;
static double now_sec(void) {
    if (!use_cpu_time) return mm_now_sec();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}
static double median(double* v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng = 88172645463325252ull;
static float frand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

// ----------------------------------------------------------------------------
// Peak loops (each pool task runs `iters` iterations of 12 independent dot/FMA instructions)

static volatile float sink_f;
static volatile int sink_i;
static long peak_iters = 20000000;

#if MM_X86
MM_TGT_512 static void peak_fma_task(void* c, int t) {
    (void)c;
    __m512 a[12], b = _mm512_set1_ps(1.0f), d = _mm512_set1_ps(1e-9f);
#pragma GCC unroll 12
    for (int j = 0; j < 12; j++) a[j] = _mm512_set1_ps((float)(j + t));
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = _mm512_fmadd_ps(a[j], b, d);
    }
    __m512 s = a[0];
    for (int j = 1; j < 12; j++) s = _mm512_add_ps(s, a[j]);
    sink_f = _mm512_reduce_add_ps(s);
}
MM_TGT_VNNI static void peak_vnni_task(void* c, int t) {
    (void)c;
    __m512i a[12], x = _mm512_set1_epi32(0x01010101), y = _mm512_set1_epi32(0x01ff01ff);
#pragma GCC unroll 12
    for (int j = 0; j < 12; j++) a[j] = _mm512_set1_epi32(j + t);
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = _mm512_dpbusd_epi32(a[j], x, y);
    }
    __m512i s = a[0];
    for (int j = 1; j < 12; j++) s = _mm512_add_epi32(s, a[j]);
    sink_i = _mm512_reduce_add_epi32(s);
}
MM_TGT_BF16 static void peak_bf16_task(void* c, int t) {
    (void)c;
    __m512 a[12];
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x2f802f80);
#pragma GCC unroll 12
    for (int j = 0; j < 12; j++) a[j] = _mm512_set1_ps((float)(j + t));
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = _mm512_dpbf16_ps(a[j], x, y);
    }
    __m512 s = a[0];
    for (int j = 1; j < 12; j++) s = _mm512_add_ps(s, a[j]);
    sink_f = _mm512_reduce_add_ps(s);
}
// AVX2 (ymm, 16 registers): FMA, and the int8 dot of AVX2 kernels -- vpmaddubsw + vpmaddwd + vpaddd,
// the three instructions that do what one vpdpbusd does (8 lanes x 4 byte products summed into
// int32). The chain feeds its own accumulator back as the signed operand, so the compiler cannot
// hoist the invariant vpmaddubsw out of the loop. AVX-VNNI: vpdpbusd on ymm.
MM_TGT_AVX2 static void peak_fma256_task(void* c, int t) {
    (void)c;
    __m256 a[12], b = _mm256_set1_ps(1.0f), d = _mm256_set1_ps(1e-9f);
#pragma GCC unroll 12
    for (int j = 0; j < 12; j++) a[j] = _mm256_set1_ps((float)(j + t));
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = _mm256_fmadd_ps(a[j], b, d);
    }
    __m256 s = a[0];                        // every chain reaches the sink (else GCC drops 10 of them)
    for (int j = 1; j < 12; j++) s = _mm256_add_ps(s, a[j]);
    float v[8];
    _mm256_storeu_ps(v, s);
    sink_f = v[0];
}
MM_TGT_AVX2 static void peak_maddubs_task(void* c, int t) {
    (void)c;
    __m256i a[12], x = _mm256_set1_epi32(0x01010101), ones = _mm256_set1_epi16(1);
#pragma GCC unroll 12
    for (int j = 0; j < 12; j++) a[j] = _mm256_set1_epi32(j + t);
#if defined(__GNUC__)
    // In asm: written as intrinsics, GCC 12 keeps only some of the 12 chains in registers and
    // round-trips the rest through the stack every iteration (measured 0.7 of the real rate).
    // 12 accumulators + x + ones + one temporary (renamed each use) = 15 ymm.
    long n = peak_iters;                    // the loop in asm too: GCC would store the array every pass
    if (n > 0) {
#define PEAK_CHAIN(r) "vpmaddubsw %[" r "], %[x], %%ymm15\n\t" "vpmaddwd %[ones], %%ymm15, %%ymm15\n\t" \
                      "vpaddd %%ymm15, %[" r "], %[" r "]\n\t"
        __asm__("1:\n\t" PEAK_CHAIN("a0") PEAK_CHAIN("a1") PEAK_CHAIN("a2") PEAK_CHAIN("a3") PEAK_CHAIN("a4") PEAK_CHAIN("a5")
                PEAK_CHAIN("a6") PEAK_CHAIN("a7") PEAK_CHAIN("a8") PEAK_CHAIN("a9") PEAK_CHAIN("a10") PEAK_CHAIN("a11")
                "decq %[n]\n\t" "jnz 1b\n\t"
                : [n] "+r"(n), [a0] "+x"(a[0]), [a1] "+x"(a[1]), [a2] "+x"(a[2]), [a3] "+x"(a[3]), [a4] "+x"(a[4]), [a5] "+x"(a[5]),
                  [a6] "+x"(a[6]), [a7] "+x"(a[7]), [a8] "+x"(a[8]), [a9] "+x"(a[9]), [a10] "+x"(a[10]), [a11] "+x"(a[11])
                : [x] "x"(x), [ones] "x"(ones)
                : "xmm15", "cc");
#undef PEAK_CHAIN
    }
#else
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(_mm256_maddubs_epi16(x, a[j]), ones));
    }
#endif
    __m256i s = a[0];                       // every chain reaches the sink (else GCC drops 10 of them)
    for (int j = 1; j < 12; j++) s = _mm256_add_epi32(s, a[j]);
    sink_i = _mm256_extract_epi32(s, 0);
}
MM_TGT_AVXVNNI static void peak_avxvnni_task(void* c, int t) {
    (void)c;
    __m256i a[12], x = _mm256_set1_epi32(0x01010101), y = _mm256_set1_epi32(0x01ff01ff);
#pragma GCC unroll 12
    for (int j = 0; j < 12; j++) a[j] = _mm256_set1_epi32(j + t);
#if defined(__GNUC__)
    // in asm for the same reason as peak_maddubs_task (GCC 12 copies and stores accumulators in the loop)
    long n = peak_iters;                    // the loop in asm too: GCC would store the array every pass
    if (n > 0) {
#define PEAK_DP(r) "%{vex%} vpdpbusd %[y], %[x], %[" r "]\n\t"
        __asm__("1:\n\t" PEAK_DP("a0") PEAK_DP("a1") PEAK_DP("a2") PEAK_DP("a3") PEAK_DP("a4") PEAK_DP("a5")
                PEAK_DP("a6") PEAK_DP("a7") PEAK_DP("a8") PEAK_DP("a9") PEAK_DP("a10") PEAK_DP("a11")
                "decq %[n]\n\t" "jnz 1b\n\t"
                : [n] "+r"(n), [a0] "+x"(a[0]), [a1] "+x"(a[1]), [a2] "+x"(a[2]), [a3] "+x"(a[3]), [a4] "+x"(a[4]), [a5] "+x"(a[5]),
                  [a6] "+x"(a[6]), [a7] "+x"(a[7]), [a8] "+x"(a[8]), [a9] "+x"(a[9]), [a10] "+x"(a[10]), [a11] "+x"(a[11])
                : [x] "x"(x), [y] "x"(y)
                : "cc");
#undef PEAK_DP
    }
#else
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = _mm256_dpbusd_avx_epi32(a[j], x, y);
    }
#endif
    __m256i s = a[0];                       // every chain reaches the sink (else GCC drops 10 of them)
    for (int j = 1; j < 12; j++) s = _mm256_add_epi32(s, a[j]);
    sink_i = _mm256_extract_epi32(s, 0);
}
#endif

#if defined(__aarch64__)
// ARM64 peaks, register-only like the x86 ones: 12 independent accumulator chains per loop (enough to
// cover a 4-cycle latency on 2-4 vector pipes), no loads; best_peak takes the ops per instruction:
//   fmla   4 lanes x 2 flops       =  8 ops per instruction
//   sdot   16 int8 MACs x 2        = 32 ops per instruction
//   smull2 + sadalp pair: 8 MACs   = 16 ops per 2 instructions (the plain-NEON q8 kernel's inner pair),
//          counted per pair (16 ops)
// What the ARM kernels run on: f32 GEMM fmla; bf16 GEMM shl/and widening + fmla (so both against the
// fmla peak); q8 usdot (i8mm) or sdot (dotprod), both against the sdot peak, or smull+sadalp (NEON).
static void peak_neon_fma_task(void* c, int t) {
    (void)c;
    float32x4_t a[12], b = vdupq_n_f32(1.0f), d = vdupq_n_f32(1e-9f);
    for (int j = 0; j < 12; j++) a[j] = vdupq_n_f32((float)(j + t));
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = vfmaq_f32(d, a[j], b);     // a = d + a * b
    }
    float32x4_t s = a[0];
    for (int j = 1; j < 12; j++) s = vaddq_f32(s, a[j]);
    sink_f = vaddvq_f32(s);
}
MM_ARM_TGT_DOT static void peak_sdot_task(void* c, int t) {
    (void)c;
    int32x4_t a[12];
    int8x16_t x = vdupq_n_s8(1), y = vdupq_n_s8(-1);
    for (int j = 0; j < 12; j++) a[j] = vdupq_n_s32(j + t);
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = vdotq_s32(a[j], x, y);
    }
    int32x4_t s = a[0];
    for (int j = 1; j < 12; j++) s = vaddq_s32(s, a[j]);
    sink_i = vaddvq_s32(s);
}
// The plain-NEON q8 kernel's inner pair; x is made opaque each iteration so that the compiler cannot
// hoist the (loop-invariant) product out of the loop.
static void peak_smull_task(void* c, int t) {
    (void)c;
    int32x4_t a[12];
    int8x16_t x = vdupq_n_s8(1), y = vdupq_n_s8(-1);
    for (int j = 0; j < 12; j++) a[j] = vdupq_n_s32(j + t);
    for (long i = 0; i < peak_iters; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) a[j] = vpadalq_s16(a[j], vmull_high_s8(x, y));
        __asm__ __volatile__("" : "+w"(x));             // keep the products in the loop
    }
    int32x4_t s = a[0];
    for (int j = 1; j < 12; j++) s = vaddq_s32(s, a[j]);
    sink_i = vaddvq_s32(s);
}
#endif
#if !MM_X86
static int mm_gemv_pf, mm_gemv_pf_avx2;  // the x86 GEMVs' prefetch distances (--pf); no such knobs elsewhere
#endif

// ops per iteration per thread: 12 instructions x 16 lanes x (2 | 4 | 8) ops
// G(FL)OP/s of fn: each pool task runs peak_iters iterations of 12 independent instructions (or
// instruction chains) worth ops_per_instr operations each (a multiply-add counts 2 per lane).
static double run_peak(void (*fn)(void*, int), double ops_per_instr) {
    double t0 = now_sec();
    pool_for(pool_size(), fn, NULL);
    double dt = now_sec() - t0;
    return 12.0 * ops_per_instr * (double)peak_iters * pool_size() / dt * 1e-9;
}

// best of 7 (a peak is a capability; a run that the OS or a neighbour interrupts can only come out low)
__attribute__((unused))  // no peak loops on machines other than x86-64 and aarch64
static double best_peak(void (*fn)(void*, int), double ops_per_instr) {
    double best = 0;
    for (int r = 0; r < 7; r++) {
        double v = run_peak(fn, ops_per_instr);
        best = v > best ? v : best;
    }
    return best;
}

// ----------------------------------------------------------------------------
// Read-bandwidth loops (each task streams a contiguous share of the buffer)

typedef struct { const float* buf; size_t n; } BwCtx;   // n floats

#if MM_X86
MM_TGT_512 static void bw_add_task(void* vc, int t) {
    BwCtx* c = vc;
    size_t per = c->n / (size_t)pool_size() / 128 * 128, i0 = per * (size_t)t;
    __m512 a[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
    for (size_t i = i0; i < i0 + per; i += 64) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) a[j] = _mm512_add_ps(a[j], _mm512_load_ps(c->buf + i + 16 * j));
    }
    sink_f = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
}
// the bf16 GEMV's inner work without the weights-as-panel bookkeeping: widen both halves, FMA
MM_TGT_512 static void bw_widen_task(void* vc, int t) {
    BwCtx* c = vc;
    size_t per = c->n / (size_t)pool_size() / 128 * 128, i0 = per * (size_t)t;
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    const __m512 xv = _mm512_set1_ps(0.5f);
    __m512 a[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
    for (size_t i = i0; i < i0 + per; i += 32) {
        __m512i v0 = _mm512_load_si512((const void*)(c->buf + i)), v1 = _mm512_load_si512((const void*)(c->buf + i + 16));
        a[0] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), xv, a[0]);
        a[1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), xv, a[1]);
        a[0] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, hi)), xv, a[0]);
        a[1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v1, hi)), xv, a[1]);
    }
    sink_f = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
}
MM_TGT_AVX2 static void bw_add256_task(void* vc, int t) {
    BwCtx* c = vc;
    size_t per = c->n / (size_t)pool_size() / 128 * 128, i0 = per * (size_t)t;
    __m256 a[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (size_t i = i0; i < i0 + per; i += 32) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) a[j] = _mm256_add_ps(a[j], _mm256_load_ps(c->buf + i + 8 * j));
    }
    float v[8];
    _mm256_storeu_ps(v, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    sink_f = v[0];
}
#endif
static void bw_plain_task(void* vc, int t) {       // portable fallback
    BwCtx* c = vc;
    size_t per = c->n / (size_t)pool_size(), i0 = per * (size_t)t;
    float s[8] = { 0 };
    for (size_t i = i0; i + 8 <= i0 + per; i += 8)
        for (int j = 0; j < 8; j++) s[j] += c->buf[i + j];
    sink_f = s[0] + s[7];
}

static double run_bw(void (*fn)(void*, int), BwCtx* c) {
    double t0 = now_sec();
    pool_for(pool_size(), fn, c);
    double dt = now_sec() - t0;
    size_t per = c->n / (size_t)pool_size() / 128 * 128;
    return (double)per * pool_size() * 4.0 / dt * 1e-9;
}

// ----------------------------------------------------------------------------
// Matrices

static Matrix make_matrix(DType type, int N, int K, int G) {
    Matrix m = { .type = type, .rows = N, .cols = K, .group = G };
    size_t n = (size_t)N * K;
    if (type == DT_F32) {
        float* d = mm_alloc(n * 4);
        for (size_t i = 0; i < n; i++) d[i] = frand();
        m.data = d;
    } else if (type == DT_BF16) {
        uint16_t* d = mm_alloc(n * 2);
        for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(frand());
        m.data = d;
    } else if (type == DT_Q4) {
        uint8_t* d = mm_alloc(n / 2);
        for (size_t i = 0; i < n / 2; i++) d[i] = (uint8_t)(128.0f + 127.0f * frand());    // two random nibbles
        uint16_t* s = mm_alloc((size_t)N * (K / G) * 2);
        for (size_t i = 0; i < (size_t)N * (K / G); i++) s[i] = f32_to_bf16(0.01f);
        m.data = d;
        m.scales_bf16 = s;
    } else {
        int8_t* d = mm_alloc(n);
        for (size_t i = 0; i < n; i++) d[i] = (int8_t)(frand() * 127.0f);
        float* s = mm_alloc((size_t)N * (K / G) * 4);
        for (size_t i = 0; i < (size_t)N * (K / G); i++) s[i] = 0.01f;
        m.data = d;
        m.scales = s;
    }
    return m;
}

static void free_source(Matrix* m) {
    free((void*)m->data);
    free((void*)m->scales);
    free((void*)m->scales_bf16);
    m->data = NULL;
    m->scales = NULL;
    m->scales_bf16 = NULL;
}

// bytes of packed weights a GEMV streams
static double weight_bytes(const Matrix* m) {
    double n = (double)m->rows * m->cols;
    return m->type == DT_F32 ? 4 * n : m->type == DT_BF16 ? 2 * n : m->type == DT_Q8 ? n + 4.0 * n / m->group
         : 0.5 * n + 2.0 * n / m->group;
}

static const char* tname[] = { "f32", "bf16", "q8", "q4" };
enum { NTYPES = 4 };
static int q4_group = 64;           // --q4-group G (export.py's default)

int main(int argc, char** argv) {
    int nth = (int)sysconf(_SC_NPROCESSORS_ONLN), reps = 5, quick = 0, do_gemm = 1, do_gemv = 1, do_attn = 1, gemv_t = 1;
    int small = 0;                      // --small: a smoke run for emulators (qemu): GEMM T/32, 32 MiB
                                        // bandwidth buffer, one copy per GEMV matrix, implies --quick
    const char* only = NULL;            // --only f32|bf16|q8
    const char* isa_cap = NULL;         // --isa scalar|avx2|avxvnni|avx512: run everything at this level (a cap)
    int alt_pf = -1, alt_tpt = 0;       // --alt PF TPT: one more q8 VNNI row ("q8a") with these knobs
                                        // (TPT 0: guided schedule, else TPT equal chunks per thread)
    if (nth < 1) nth = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) nth = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--cpu")) use_cpu_time = 1;
        else if (!strcmp(argv[i], "--isa") && i + 1 < argc) isa_cap = argv[++i];
        else if (!strcmp(argv[i], "--small")) small = quick = 1;
        else if (!strcmp(argv[i], "--gemm")) do_gemv = do_attn = 0;
        else if (!strcmp(argv[i], "--gemv")) do_gemm = do_attn = 0;
        else if (!strcmp(argv[i], "--attn")) do_gemm = do_gemv = 0;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--gemv-t") && i + 1 < argc) gemv_t = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pf") && i + 1 < argc) mm_gemv_pf = mm_gemv_pf_avx2 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tpt") && i + 1 < argc) mm_gemv_tpt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--q8-max-t") && i + 1 < argc) mm_gemv_max_t[DT_Q8] = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--alt") && i + 2 < argc) { alt_pf = atoi(argv[++i]); alt_tpt = atoi(argv[++i]); }
        else if (!strcmp(argv[i], "--q4-group") && i + 1 < argc) q4_group = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--threads N] [--reps N] [--quick | --small] [--gemm | --attn | --gemv] [--only f32|bf16|q8|q4]\n"
                            "       [--cpu (time = this thread's CPU time; use with --threads 1 on a busy machine)]\n"
                            "       [--isa scalar|avx2|avxvnni|avx512 (cap the kernel level, as LLAVA_ISA)]\n"
                            "       [--gemv-t T (GEMV rows, default 1)] [--pf BYTES (q8 GEMV prefetch)] [--tpt N (GEMV tasks/thread)]\n"
                            "       [--alt PF TPT (extra q8 row; TPT 0 = guided)] [--q8-max-t T (q8 GEMV/GEMM threshold)]\n"
                            "       [--q4-group G (q4 group size, a multiple of 8 dividing 4096 and 11008; default 64)]\n", argv[0]);
            return 1;
        }
    }
    if (reps < 1) reps = 1;
    if (q4_group < 8 || q4_group % 8 || 4096 % q4_group || 11008 % q4_group) {
        fprintf(stderr, "bench: --q4-group must be a multiple of 8 dividing 4096 and 11008\n");
        return 1;
    }
    if (gemv_t < 1 || gemv_t > 64) gemv_t = 1;
    if (mm_gemv_tpt < 1) mm_gemv_tpt = 1;
    if (quick) { reps = 3; peak_iters = 5000000; }
    if (small) { reps = 1; peak_iters = 200000; }
    if (use_cpu_time && nth != 1) { fprintf(stderr, "bench: --cpu needs --threads 1\n"); return 1; }
    pool_init(nth);
    mm_detect_isa();
    if (isa_cap) {
        int lv = !strcmp(isa_cap, "scalar") ? MM_SCALAR : !strcmp(isa_cap, "avx2") ? MM_AVX2
               : !strcmp(isa_cap, "avxvnni") ? MM_AVXVNNI : MM_AVX512;
        matmul_set_isa(lv, 1, 1);
    }
    printf("matmul.c bench: %d threads, kernels %s\n", pool_size(), matmul_isa_name());

    // --- peaks, with the instructions of each kernel family this level runs (register-only loops)
    double pk_f512 = 0, pk_f256 = 0, pk_bf16 = 0, pk_vnni = 0, pk_avxvnni = 0, pk_maddubs = 0;
#if MM_X86
    if (mm_isa >= MM_AVX2) { pk_f256 = best_peak(peak_fma256_task, 16); pk_maddubs = best_peak(peak_maddubs_task, 64); }
    if (mm_isa == MM_AVXVNNI) pk_avxvnni = best_peak(peak_avxvnni_task, 64);
    if (mm_isa == MM_AVX512) pk_f512 = best_peak(peak_fma_task, 32);
    if (mm_has_bf16) pk_bf16 = best_peak(peak_bf16_task, 64);
    if (mm_has_vnni) pk_vnni = best_peak(peak_vnni_task, 128);
#endif
    printf("peaks (G(FL)OP/s, 0 = not on this level): f32 FMA zmm %.1f, f32 FMA ymm %.1f, bf16 dot zmm %.1f,\n"
           "       int8 VNNI zmm %.1f, int8 AVX-VNNI ymm %.1f, int8 vpmaddubsw+vpmaddwd ymm %.1f\n",
           pk_f512, pk_f256, pk_bf16, pk_vnni, pk_avxvnni, pk_maddubs);
    // The kernel family (and its peak) of each type's GEMM at this level (mirrors matmul()'s dispatch).
    const char* kname[NTYPES];
    double kpeak[NTYPES];
    kname[DT_F32] = mm_isa == MM_AVX512 ? "avx512 fma" : mm_isa >= MM_AVX2 ? "avx2 fma" : "scalar";
    kpeak[DT_F32] = mm_isa == MM_AVX512 ? pk_f512 : pk_f256;
    kname[DT_BF16] = mm_has_bf16 ? "avx512 bf16dot" : mm_isa >= MM_AVX2 ? "avx2 widen+fma" : "scalar";
    kpeak[DT_BF16] = mm_has_bf16 ? pk_bf16 : pk_f256;
    kname[DT_Q8] = mm_has_vnni ? "avx512 vnni" : mm_isa == MM_AVXVNNI ? "avxvnni ymm" : mm_isa >= MM_AVX2 ? "avx2 maddubs" : "scalar";
    kpeak[DT_Q8] = mm_has_vnni ? pk_vnni : mm_isa == MM_AVXVNNI ? pk_avxvnni : pk_maddubs;
    // GEMV kernels (decode) stream memory: name only
    const char* vname[NTYPES];
    vname[DT_F32] = mm_isa == MM_AVX512 ? "avx512 fma" : mm_isa >= MM_AVX2 ? "avx2 fma" : "scalar";
    vname[DT_BF16] = mm_isa == MM_AVX512 ? "avx512 widen" : mm_isa >= MM_AVX2 ? "avx2 widen" : "scalar";
    vname[DT_Q8] = mm_has_vnni ? "avx512 vnni" : mm_isa >= MM_AVX2 ? "avx2 maddubs" : "scalar";
#if defined(__aarch64__)
    // ARM64: f32 and bf16 (widened in registers) run on fmla, q8 on usdot (i8mm) / sdot (dotprod),
    // both measured against the sdot peak, or on smull+sadalp (plain NEON). Ops per instruction:
    // fmla 4 lanes x 2 = 8; sdot 16 int8 MACs x 2 = 32; an smull2 + sadalp pair 8 MACs x 2 = 16.
    double pk_neon = 0, pk_int8 = 0;
    if (mm_arm_level > MM_ARM_SCALAR) {
        pk_neon = best_peak(peak_neon_fma_task, 8);
        pk_int8 = mm_arm_level >= MM_ARM_DOTPROD ? best_peak(peak_sdot_task, 32) : best_peak(peak_smull_task, 16);
    }
    const char* q8k = mm_arm_level >= MM_ARM_I8MM ? "neon usdot" : mm_arm_level >= MM_ARM_DOTPROD ? "neon sdot"
                    : mm_arm_level > MM_ARM_SCALAR ? "neon smull" : "scalar";
    kname[DT_F32] = vname[DT_F32] = mm_arm_level > MM_ARM_SCALAR ? "neon fmla" : "scalar";
    kname[DT_BF16] = vname[DT_BF16] = mm_arm_level > MM_ARM_SCALAR ? "neon widen+fmla" : "scalar";
    kname[DT_Q8] = vname[DT_Q8] = q8k;
    kpeak[DT_F32] = kpeak[DT_BF16] = pk_neon;
    kpeak[DT_Q8] = pk_int8;
    printf("ARM64 %s peaks: NEON fmla %.1f GFLOP/s, int8 %s %.1f GOP/s (no speed claims from an emulator)\n",
           matmul_isa_name(), pk_neon, mm_arm_level >= MM_ARM_DOTPROD ? "sdot" : "smull+sadalp", pk_int8);
#endif

    // q4 runs on the q8 kernels' dot instructions (its weights are unpacked to int8 in registers)
    kname[DT_Q4] = kname[DT_Q8];
    kpeak[DT_Q4] = kpeak[DT_Q8];
    vname[DT_Q4] = vname[DT_Q8];
#if MM_X86
    if (mm_isa == MM_AVX512 && mm_has_vnni) vname[DT_Q4] = "avx512 vnni";
    else if (mm_isa >= MM_AVX2) vname[DT_Q4] = "avx2 maddubs";     // q4 decode: vpmaddubsw on avx2/avxvnni
#endif

    // --- GEMM
    // T=4616 = 8 frames x 577 (vision tower, batched); T=1170 a long prompt (LLM prefill)
    struct { int T, K, N; } gs[] = { { 4616, 1024, 4096 }, { 4616, 4096, 1024 },
                                     { 1170, 4096, 4096 }, { 1170, 4096, 11008 }, { 1170, 11008, 4096 } };
    int ngs = (int)(sizeof gs / sizeof gs[0]);
    float* x = mm_alloc((size_t)4616 * 4096 * 4);         // the largest T*K and T*N of the shapes
    for (size_t i = 0; i < (size_t)4616 * 4096; i++) x[i] = frand();
    float* y = mm_alloc((size_t)4616 * 4096 * 4);
    if (do_gemm)
        printf("\nGEMM (median of %d)     %9s %9s %9s | best: %9s %8s  %s\n", reps, "ms", "G(FL)OP/s", "% peak", "G(FL)OP/s",
               "% peak", "kernel (% of its own peak)");
    for (int type = 0; type < NTYPES && do_gemm; type++) {
        if (only && strcmp(only, tname[type])) continue;
        double peak = kpeak[type];
        for (int s = 0; s < ngs; s++) {
            int T = small ? gs[s].T / 32 : gs[s].T, K = gs[s].K, N = gs[s].N;
            Matrix m = make_matrix((DType)type, N, K, type == DT_Q4 ? q4_group : 64);
            pack_matrix(&m);
            matmul(y, x, &m, T);                                    // warm-up
            double v[64];
            int nr = reps > 64 ? 64 : reps;
            for (int r = 0; r < nr; r++) {
                double t0 = now_sec();
                matmul(y, x, &m, T);
                v[r] = now_sec() - t0;
            }
            double dt = median(v, nr), gf = 2.0 * T * K * N / dt * 1e-9, gbest = 2.0 * T * K * N / v[0] * 1e-9;
            printf("%-4s T=%-5d %5d->%-5d  %9.2f %9.1f %8.1f%% | %15.1f %7.1f%%  %s\n", tname[type], T, K, N, dt * 1e3, gf,
                   peak > 0 ? 100.0 * gf / peak : 0.0, gbest, peak > 0 ? 100.0 * gbest / peak : 0.0, kname[type]);
            fflush(stdout);
            unpack_matrix(&m);
            free_source(&m);
        }
    }

    // --- attention (kernels.c): the vision tower's (one 336x336 view: 577 positions, 16 heads of 64,
    // f32 keys/values regrouped per head, no mask) and the language model's prefill (32 heads of 128,
    // causal, bf16 or f32 KV cache of 4096 positions). FLOPs: 4 * head_dim per (query, visible key, head).
    // "bf16 dots": q and the probabilities rounded to bf16, vdpbf16ps (AVX512-BF16 only; % of the bf16 peak).
    struct { const char* name; int T, H, hd, causal, bf16, dots; } as[] = {
        { "clip f32", 577, 16, 64, 0, 0, 0 }, { "clip bf16kv", 577, 16, 64, 0, 1, 0 }, { "clip bf16dot", 577, 16, 64, 0, 1, 1 },
        { "llm f32", 1169, 32, 128, 1, 0, 0 },
        { "llm bf16kv", 512, 32, 128, 1, 1, 0 }, { "llm bf16dot", 512, 32, 128, 1, 1, 1 },
        { "llm bf16kv", 1169, 32, 128, 1, 1, 0 }, { "llm bf16dot", 1169, 32, 128, 1, 1, 1 } };
    // kernels.c is vectorised when it is compiled, VL floats wide (zmm in an AVX-512 build, ymm in an
    // AVX2 one), whatever level LLAVA_ISA gives the matmuls: its f32 peak is that width's.
    const char* att_name = kname[DT_F32];
    double att_peak = kpeak[DT_F32];
#if MM_X86
    if (!kernels_scalar() && VL == 16) att_name = "avx512 fma", att_peak = pk_f512 > 0 ? pk_f512 : best_peak(peak_fma_task, 32);
    if (!kernels_scalar() && VL == 8) att_name = "avx2 fma", att_peak = pk_f256;
#endif
    printf("\nattention (median of %d)       %9s %9s %9s  %s\n", reps, "ms", "GFLOP/s", "% peak", "kernel (% of its own peak)");
    for (int s = 0; s < (int)(sizeof as / sizeof as[0]) && do_attn; s++) {
        int bf16_dots = as[s].dots;
        if (bf16_dots && !attention_bf16_available()) continue;   // (an AVX-512 build's, on AVX512-BF16)
        int T = small ? as[s].T / 8 : as[s].T, H = as[s].H, hd = as[s].hd, ctx = as[s].causal ? 4096 : T;
        int D = H * hd;
        size_t kv_n = (size_t)H * ctx * hd;
        float* q = mm_alloc((size_t)T * 3 * D * 4);
        float* o = mm_alloc((size_t)T * D * 4);
        void* k = mm_alloc(kv_n * 4);
        void* v = mm_alloc(kv_n * 4);
        for (size_t i = 0; i < (size_t)T * 3 * D; i++) q[i] = frand();
        for (size_t i = 0; i < kv_n; i++) {
            if (as[s].bf16) { ((uint16_t*)k)[i] = f32_to_bf16(frand()); ((uint16_t*)v)[i] = f32_to_bf16(frand()); }
            else { ((float*)k)[i] = frand(); ((float*)v)[i] = frand(); }
        }
        AttnArgs a = {.out = o, .q = q, .k = k, .v = v, .kv_bf16 = as[s].bf16, .bf16_dots = bf16_dots, .T = T, .n_heads = H, .n_kv_heads = H,
                      .head_dim = hd, .q_stride = 3 * (size_t)D, .kv_stride = hd, .kv_head_stride = (size_t)ctx * hd,
                      .out_stride = D, .causal_offset = as[s].causal ? 0 : -1, .n_keys = T, .scale = 1.0f / sqrtf((float)hd)};
        double flop = 4.0 * hd * H * (as[s].causal ? 0.5 * T * (T + 1.0) : (double)T * T);
        attention(&a);                                              // warm-up
        double v8[64];
        int nr = reps > 64 ? 64 : reps;
        for (int r = 0; r < nr; r++) {
            double t0 = now_sec();
            attention(&a);
            v8[r] = now_sec() - t0;
        }
        double dt = median(v8, nr), gf = flop / dt * 1e-9, peak = bf16_dots ? pk_bf16 : att_peak;
        printf("%-12s T=%-5d %2dx%-3d  %9.2f %9.1f %8.1f%%  %s\n", as[s].name, T, H, hd, dt * 1e3, gf,
               peak > 0 ? 100.0 * gf / peak : 0.0, bf16_dots ? "avx512 bf16dot" : att_name);
        fflush(stdout);
        free(q); free(o); free(k); free(v);
    }

    (void)activation;   // kernels.c's element-wise pass: not timed here
    if (!do_gemv) { free(x); free(y); return 0; }
    // --- GEMV (T=gemv_t, default 1), interleaved with the bandwidth loops. Row 3 ("q8w") is the q8
    // widening kernel (f32 activations) on the same matrices, for a side-by-side with the VNNI one.
    struct { int K, N; } vs[] = { { 4096, 4096 }, { 4096, 11008 }, { 11008, 4096 }, { 4096, 32064 } };
    int nvs = (int)(sizeof vs / sizeof vs[0]);
    enum { MAXC = 8 };
    Matrix mats[NTYPES][4][MAXC];
    int ncopy[NTYPES][4];
    for (int type = 0; type < NTYPES; type++)
        for (int s = 0; s < nvs; s++) {
            ncopy[type][s] = 0;
            if (only && strcmp(only, tname[type])) continue;
            Matrix src = make_matrix((DType)type, vs[s].N, vs[s].K, type == DT_Q4 ? q4_group : 64);
            // enough distinct copies that one pass over them is >= 128 MiB (4x L3)
            int nc = (int)((128.0 * 1048576 + weight_bytes(&src) - 1) / weight_bytes(&src));
            if (nc > MAXC) nc = MAXC;
            if (quick && nc > 2) nc = 2;
            if (small) nc = 1;
            ncopy[type][s] = nc;
            for (int c = 0; c < nc; c++) { mats[type][s][c] = src; mats[type][s][c].packed = NULL; pack_matrix(&mats[type][s][c]); }
            free_source(&src);
            for (int c = 0; c < nc; c++) {
                mats[type][s][c].data = NULL;
                mats[type][s][c].scales = NULL;
                mats[type][s][c].scales_bf16 = NULL;
            }
        }
    BwCtx bw = { NULL, (size_t)1 << (small ? 23 : 28) };    // 1 GiB of floats (--small: 32 MiB)
    float* bwbuf = mm_alloc(bw.n * 4);
    for (size_t i = 0; i < bw.n; i++) bwbuf[i] = 1.0f;
    bw.buf = bwbuf;
    int vr = small ? 1 : quick ? 5 : 15;
    double *t_bw1 = calloc((size_t)vr, sizeof(double)), *t_bw2 = calloc((size_t)vr, sizeof(double));
    double* t_gemv = calloc((size_t)6 * nvs * vr, sizeof(double));
    float* xv = mm_alloc((size_t)gemv_t * 11008 * 4);
    float* yv = mm_alloc((size_t)gemv_t * 32064 * 4);
    for (int i = 0; i < gemv_t * 11008; i++) xv[i] = frand();
    // variants: f32, bf16, q8, q4, q8 widening (AVX-512 only), q8 alt (AVX512-VNNI only)
    enum { V_Q8W = 4, V_Q8A = 5 };
    int nvar = mm_has_vnni ? (alt_pf >= 0 ? 6 : 5) : mm_isa == MM_AVX512 ? 5 : 4;
    for (int r = 0; r < vr; r++) {
#if MM_X86
        if (mm_isa == MM_AVX512) { t_bw1[r] = run_bw(bw_add_task, &bw); t_bw2[r] = run_bw(bw_widen_task, &bw); }
        else if (mm_isa >= MM_AVX2) { t_bw1[r] = t_bw2[r] = run_bw(bw_add256_task, &bw); }
        else
#endif
        { t_bw1[r] = t_bw2[r] = run_bw(bw_plain_task, &bw); }
        for (int var = 0; var < nvar; var++)
            for (int s = 0; s < nvs; s++) {
                int type = var < NTYPES ? var : DT_Q8;
                if (!ncopy[type][s]) continue;
                mm_q8_gemv_vnni = var != V_Q8W;
                int pf0 = mm_gemv_pf, tpt0 = mm_gemv_tpt, gd0 = mm_gemv_guided;
                if (var == V_Q8A) { mm_gemv_pf = alt_pf; mm_gemv_guided = alt_tpt <= 0; mm_gemv_tpt = alt_tpt > 0 ? alt_tpt : 1; }
                double t0 = now_sec();
                for (int c = 0; c < ncopy[type][s]; c++) matmul(yv, xv, &mats[type][s][c], gemv_t);
                t_gemv[(var * nvs + s) * vr + r] =
                    weight_bytes(&mats[type][s][0]) * ncopy[type][s] / (now_sec() - t0) * 1e-9;
                mm_q8_gemv_vnni = 1;
                mm_gemv_pf = pf0; mm_gemv_tpt = tpt0; mm_gemv_guided = gd0;
            }
    }
    double bw1 = median(t_bw1, vr), bw2 = median(t_bw2, vr), bwref = bw1 > bw2 ? bw1 : bw2;
    printf("\nread bandwidth (1 GiB, median of %d, interleaved): add-loop %.1f GB/s, widen-FMA loop %.1f GB/s -> reference %.1f\n",
           vr, bw1, bw2, bwref);
    printf("GEMV T=%-2d                 %9s %9s %9s  %s\n", gemv_t, "ms", "GB/s", "% of ref", "kernel");
    for (int var = 0; var < nvar; var++)
        for (int s = 0; s < nvs; s++) {
            int type = var < NTYPES ? var : DT_Q8;
            if (!ncopy[type][s]) continue;
            double gbs = median(t_gemv + (var * nvs + s) * vr, vr);
            printf("%-4s %5d->%-5d x%d copies  %9.3f %9.1f %8.1f%%  %s\n", var == V_Q8W ? "q8w" : var == V_Q8A ? "q8a" : tname[type], vs[s].K, vs[s].N, ncopy[type][s],
                   weight_bytes(&mats[type][s][0]) / gbs * 1e-6, gbs, 100.0 * gbs / bwref,
                   var == V_Q8W ? "avx512 widen" : vname[type]);
        }
    for (int type = 0; type < NTYPES; type++)
        for (int s = 0; s < nvs; s++)
            for (int c = 0; c < ncopy[type][s]; c++) unpack_matrix(&mats[type][s][c]);
    free(bwbuf); free(x); free(y); free(xv); free(yv); free(t_bw1); free(t_bw2); free(t_gemv);
    return 0;
}
