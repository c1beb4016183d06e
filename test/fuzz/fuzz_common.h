// fuzz_common.h: what every harness in test/fuzz/ shares. Include it first, then `#include "../../llava.c"`.
//
// The problem: the project reports bad input with fatal() -> exit(1) (base.c), and libFuzzer takes any
// exit inside LLVMFuzzerTestOneInput for a crash. base.c is not ours to change, so this header, included
// before the project, turns exit() into a longjmp back to the harness:
//
//   #define exit(c) fuzz_exit(c)   after every system header the project uses has been included (so no
//                                  declaration is rewritten), so fatal()'s exit(1), and matmul.c's, jump
//                                  back to FUZZ_TRY in the harness. No linker tricks (-Wl,--wrap=exit): it
//                                  builds the same with gcc, clang and on macOS, with or without libFuzzer.
//
// A longjmp out of fatal() skips the frees, fcloses and munmaps on the way out (the program would have
// exited). Run millions of times that leaks memory, file descriptors (fopen: EMFILE after ~1000 inputs)
// and mappings, so the same trick tracks what the project acquires while a harness says so
// (fuzz_tracking = 1): malloc/calloc/realloc/aligned_alloc/free, fopen/tmpfile/fclose, open/close,
// mmap/munmap. After a fatal() every resource still held is released; after a normal return the list is
// forgotten (the project released everything itself, and what it keeps on purpose, such as kernels.c's
// thread-local attention scratch, is not freed behind its back). That keeps LeakSanitizer usable: a
// leak it reports is one on a path that did not call fatal().
//
// Phases where fatal() must not happen (e.g. encoding with a big enough id buffer, the forward pass of a
// model the loader accepted) set fuzz_fatal_ok = 0: an exit there aborts, which libFuzzer reports.

#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#define TESTING  // compiles llava.c's main() out
#define _GNU_SOURCE
// Every system header the project includes, before the macros below exist.
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

// ---- exit -> longjmp

static jmp_buf fuzz_jmp;
static int fuzz_armed;       // FUZZ_TRY is active: exit() jumps back to it
static int fuzz_fatal_ok = 1;  // 0: an exit() now is a bug (abort, so libFuzzer reports it)

__attribute__((noreturn)) static void fuzz_exit(int code) {
    if (fuzz_armed && fuzz_fatal_ok) {
        fuzz_armed = 0;
        longjmp(fuzz_jmp, 1);
    }
    if (fuzz_armed) {
        fprintf(stderr, "fuzz: exit(%d) where no error was expected: aborting\n", code);
        abort();
    }
    exit(code);
}

// ---- resource tracking (a hash set of live malloc blocks, small lists of files, fds and maps)

static int fuzz_tracking;
static void** fuzz_blocks;  // open addressing; NULL empty, FUZZ_TOMB deleted
static size_t fuzz_blocks_cap, fuzz_blocks_used;
#define FUZZ_TOMB ((void*)1)

static size_t fuzz_hash(void* p) { return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull); }

static void fuzz_block_add(void* p);
static void fuzz_blocks_grow(void) {
    void** old = fuzz_blocks;
    size_t oc = fuzz_blocks_cap;
    fuzz_blocks_cap = oc ? oc * 2 : 1024;
    fuzz_blocks = calloc(fuzz_blocks_cap, sizeof(void*));
    if (!fuzz_blocks) abort();
    fuzz_blocks_used = 0;
    for (size_t i = 0; i < oc; i++)
        if (old[i] && old[i] != FUZZ_TOMB) fuzz_block_add(old[i]);
    free(old);
}
static void fuzz_block_add(void* p) {
    if (!p) return;
    if ((fuzz_blocks_used + 1) * 2 > fuzz_blocks_cap) fuzz_blocks_grow();
    size_t m = fuzz_blocks_cap - 1, i = fuzz_hash(p) & m;
    while (fuzz_blocks[i] && fuzz_blocks[i] != FUZZ_TOMB) i = (i + 1) & m;
    fuzz_blocks[i] = p;
    fuzz_blocks_used++;
}
static void fuzz_block_del(void* p) {
    if (!p || !fuzz_blocks_cap) return;
    size_t m = fuzz_blocks_cap - 1, i = fuzz_hash(p) & m;
    for (; fuzz_blocks[i]; i = (i + 1) & m)
        if (fuzz_blocks[i] == p) { fuzz_blocks[i] = FUZZ_TOMB; return; }  // tombstones count as used
}

#define FUZZ_MAX_RES 64
static FILE* fuzz_files[FUZZ_MAX_RES];
static int fuzz_fds[FUZZ_MAX_RES];
static struct { void* p; size_t n; } fuzz_maps[FUZZ_MAX_RES];
static int fuzz_n_files, fuzz_n_fds, fuzz_n_maps;

static void* fuzz_malloc(size_t n) { void* p = malloc(n); if (fuzz_tracking) fuzz_block_add(p); return p; }
static void* fuzz_calloc(size_t c, size_t n) { void* p = calloc(c, n); if (fuzz_tracking) fuzz_block_add(p); return p; }
static void* fuzz_aligned_alloc(size_t a, size_t n) { void* p = aligned_alloc(a, n); if (fuzz_tracking) fuzz_block_add(p); return p; }
static void fuzz_free(void* p) { fuzz_block_del(p); free(p); }
static void* fuzz_realloc(void* p, size_t n) {
    void* old = p;
    fuzz_block_del(old);  // before realloc: p is dead once it succeeds
    void* q = realloc(p, n);
    if (q) { if (fuzz_tracking) fuzz_block_add(q); }
    else fuzz_block_add(old);  // failed: the old block is still live (and was tracked)
    return q;
}
static FILE* fuzz_track_file(FILE* f) {
    if (f && fuzz_tracking && fuzz_n_files < FUZZ_MAX_RES) fuzz_files[fuzz_n_files++] = f;
    return f;
}
static FILE* fuzz_fopen(const char* path, const char* mode) { return fuzz_track_file(fopen(path, mode)); }
static FILE* fuzz_tmpfile(void) { return fuzz_track_file(tmpfile()); }
static int fuzz_fclose(FILE* f) {
    for (int i = 0; i < fuzz_n_files; i++)
        if (fuzz_files[i] == f) { fuzz_files[i] = fuzz_files[--fuzz_n_files]; break; }
    return fclose(f);
}
static int fuzz_open(const char* path, int flags, ...) {
    int fd = open(path, flags, 0);
    if (fd >= 0 && fuzz_tracking && fuzz_n_fds < FUZZ_MAX_RES) fuzz_fds[fuzz_n_fds++] = fd;
    return fd;
}
static int fuzz_close(int fd) {
    for (int i = 0; i < fuzz_n_fds; i++)
        if (fuzz_fds[i] == fd) { fuzz_fds[i] = fuzz_fds[--fuzz_n_fds]; break; }
    return close(fd);
}
static void* fuzz_mmap(void* a, size_t n, int prot, int flags, int fd, off_t off) {
    void* p = mmap(a, n, prot, flags, fd, off);
    if (p != MAP_FAILED && fuzz_tracking && fuzz_n_maps < FUZZ_MAX_RES) {
        fuzz_maps[fuzz_n_maps].p = p;
        fuzz_maps[fuzz_n_maps++].n = n;
    }
    return p;
}
static int fuzz_munmap(void* p, size_t n) {
    for (int i = 0; i < fuzz_n_maps; i++)
        if (fuzz_maps[i].p == p) { fuzz_maps[i] = fuzz_maps[--fuzz_n_maps]; break; }
    return munmap(p, n);
}

// After a fatal(): release everything still tracked. After a normal return: forget it.
static void fuzz_release(int after_fatal) {
    for (size_t i = 0; i < fuzz_blocks_cap; i++) {
        if (after_fatal && fuzz_blocks[i] && fuzz_blocks[i] != FUZZ_TOMB) free(fuzz_blocks[i]);
        fuzz_blocks[i] = NULL;
    }
    fuzz_blocks_used = 0;
    for (int i = 0; i < fuzz_n_files; i++) if (after_fatal) fclose(fuzz_files[i]);
    for (int i = 0; i < fuzz_n_fds; i++) if (after_fatal) close(fuzz_fds[i]);
    for (int i = 0; i < fuzz_n_maps; i++) if (after_fatal) munmap(fuzz_maps[i].p, fuzz_maps[i].n);
    fuzz_n_files = fuzz_n_fds = fuzz_n_maps = 0;
}

// FUZZ_TRY(ok, stmt): runs stmt with tracking on; sets ok to 1 if it finished, 0 if it called fatal() (and
// then everything it held has been released). setjmp is the whole controlling expression of an if, as C
// requires. Locals that stmt changes and the caller reads on the 0 path must be volatile (or static).
#define FUZZ_TRY(ok, stmt)                                      \
    do {                                                        \
        if (setjmp(fuzz_jmp) == 0) {                            \
            fuzz_try_begin();                                   \
            stmt;                                               \
            (ok) = fuzz_try_end(0);                             \
        } else {                                                \
            (ok) = fuzz_try_end(1);                             \
        }                                                       \
    } while (0)
static void fuzz_try_begin(void) { fuzz_armed = 1; fuzz_tracking = 1; fuzz_fatal_ok = 1; }
static int fuzz_try_end(int fataled) {
    fuzz_armed = 0;
    fuzz_tracking = 0;
    fuzz_release(fataled);
    return !fataled;
}

// FUZZ_MUST(stmt): stmt must not call fatal() (an exit aborts); nothing tracked.
#define FUZZ_MUST(stmt) do { fuzz_armed = 1; fuzz_fatal_ok = 0; stmt; fuzz_armed = 0; fuzz_fatal_ok = 1; } while (0)

// A private temporary file for harnesses whose API takes a path.
static char fuzz_tmp_path[4096];
static pid_t fuzz_tmp_owner;
static void fuzz_remove_tmp(void) { if (fuzz_tmp_path[0] && getpid() == fuzz_tmp_owner) unlink(fuzz_tmp_path); }
__attribute__((unused)) static void fuzz_make_tmp(const char* tag) {
    if (fuzz_tmp_path[0]) return;
    fuzz_tmp_owner = getpid();  // forked replay children share the file: only its creator removes it
    const char* dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fuzz_tmp_path, sizeof(fuzz_tmp_path), "%s/llava_fuzz_%s_%d", dir, tag, (int)getpid());
    atexit(fuzz_remove_tmp);  // libFuzzer's normal end and the replay driver's exit remove it
}
__attribute__((unused)) static void fuzz_write_tmp(const uint8_t* data, size_t n) {
    FILE* f = fopen(fuzz_tmp_path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) { perror(fuzz_tmp_path); abort(); }
}

#define exit(c) fuzz_exit(c)
#define malloc(n) fuzz_malloc(n)
#define calloc(c, n) fuzz_calloc(c, n)
#define realloc(p, n) fuzz_realloc(p, n)
#define aligned_alloc(a, n) fuzz_aligned_alloc(a, n)
#define free(p) fuzz_free(p)
#define fopen(p, m) fuzz_fopen(p, m)
#define tmpfile() fuzz_tmpfile()
#define fclose(f) fuzz_fclose(f)
#define open(...) fuzz_open(__VA_ARGS__)
#define close(fd) fuzz_close(fd)
#define mmap(a, n, p, f, d, o) fuzz_mmap(a, n, p, f, d, o)
#define munmap(p, n) fuzz_munmap(p, n)

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerInitialize(int* argc, char*** argv);

#endif  // FUZZ_COMMON_H
