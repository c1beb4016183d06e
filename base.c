// base.c -- the base chapter of llava.c: what every other file needs, and nothing else.
//
//   errors      fatal(): one "llava: error: ..." line on stderr, then exit(1). Every file reports
//               through it, so every failure of the program reads the same way.
//   allocation  xmalloc / xcalloc / xrealloc / xstrdup: allocation that cannot return NULL (it calls fatal).
//   time        now_seconds(): a monotonic clock, for the timings printed on stderr.
//   numbers     bf16 <-> f32 conversion (the weights and the KV cache of bf16 models) and
//               align_up() for the 64-byte alignment of tensors and SIMD buffers.
//
// Everything here is `static inline`, so a file that uses only part of it compiles without unused-
// function warnings. Every C file of the project #includes this file first and depends on nothing else of the project
// (tokenizer.c, video.c and matmul.c each compile alone with it: `make test` checks that). The
// unity build (llava.c includes the other chapters) includes it several times; the guard below
// makes every include after the first empty.
//
// libc only. Build: nothing to build on its own; it is included.

#ifndef LLAVA_BASE_C
#define LLAVA_BASE_C

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ----------------------------------------------------------------------------
// Errors: one line, one prefix, non-zero exit. Messages name the file and what is wrong, e.g.
// fatal("%s: file is truncated (...)", path). Never returns.

__attribute__((noreturn, format(printf, 1, 2)))
static void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);  // whatever the answer printed so far comes before the error line
    fputs("llava: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

// ----------------------------------------------------------------------------
// Checked allocation. A zero-byte request returns a valid (1-byte) block, so callers never have to
// special-case empty inputs.

static inline void* xmalloc(size_t n) {
    void* p = malloc(n ? n : 1);
    if (!p) fatal("out of memory allocating %zu bytes", n);
    return p;
}

static inline void* xcalloc(size_t count, size_t size) {
    void* p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fatal("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

static inline void* xrealloc(void* p, size_t n) {
    void* q = realloc(p, n ? n : 1);
    if (!q) fatal("out of memory growing a buffer to %zu bytes", n);
    return q;
}

static inline char* xstrdup(const char* s) {
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

// ----------------------------------------------------------------------------
// Time

static inline double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// Numbers

// n rounded up to a multiple of a (a power of two). Tensors in the model file start on 64-byte
// boundaries, the width of a cache line and of an AVX-512 register, so every tensor can be loaded
// with aligned vector loads straight from the mmap.
static inline size_t align_up(size_t n, size_t a) { return (n + a - 1) & ~(a - 1); }

// bfloat16 is the top half of an IEEE f32 (sign, 8 exponent bits, 7 mantissa bits): widening is a
// shift and is exact.
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// f32 -> bf16 bits, rounded to nearest even; a NaN stays a (quiet) NaN. The same as the vcvtneps2bf16
// instruction and as torch's .to(torch.bfloat16) for normal numbers.
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);  // add half an ulp of bf16, plus one if that ulp is odd (ties to even)
    return (uint16_t)(u >> 16);
}

#endif  // LLAVA_BASE_C
