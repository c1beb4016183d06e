// bench/bandwidth.c: a DRAM read-bandwidth probe, the roof that decode speed is measured against.
//
//     cc -O3 -march=native -o build/bandwidth bench/bandwidth.c -pthread
//     ./build/bandwidth [THREADS=2] [MIB=1024] [REPS=5]
//
// Fills a MIB-sized buffer (far larger than any cache), then REPS times lets THREADS threads each sum
// their own contiguous slice of it (the sum is only there so that the loads cannot be dropped) and
// prints the median over the reps as one line:
//     read bandwidth: 23.41 GB/s (2 threads, 1024 MiB, median of 5)
// GB is 1e9 bytes. bench/vs_llamacpp.sh runs it between the model runs. Never fails on speed.
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const uint64_t* p;
    size_t n;
    uint64_t sum;
} Slice;

static void* read_slice(void* arg) {
    Slice* s = arg;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;  // 8 chains: one cache line
    for (size_t i = 0; i + 8 <= s->n; i += 8) {
        a0 += s->p[i]; a1 += s->p[i + 1]; a2 += s->p[i + 2]; a3 += s->p[i + 3];
        a4 += s->p[i + 4]; a5 += s->p[i + 5]; a6 += s->p[i + 6]; a7 += s->p[i + 7];
    }
    s->sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static int arg(int argc, char** argv, int i, int def, int max) {
    if (argc <= i) return def;
    int v = atoi(argv[i]);
    if (v < 1 || v > max) {
        fprintf(stderr, "usage: bandwidth [THREADS=2] [MIB=1024] [REPS=5]\n");
        exit(2);
    }
    return v;
}

int main(int argc, char** argv) {
    int threads = arg(argc, argv, 1, 2, 1024), mib = arg(argc, argv, 2, 1024, 1 << 20), reps = arg(argc, argv, 3, 5, 1000);
    size_t bytes = (size_t)mib << 20, n = bytes / 8, per = n / threads / 8 * 8;
    uint64_t* buf = aligned_alloc(64, bytes);
    if (!buf) {
        fprintf(stderr, "bandwidth: cannot allocate %d MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++) buf[i] = i;  // touch every page (and keep them distinct from zero pages)
    pthread_t* tid = malloc(threads * sizeof *tid);
    Slice* sl = malloc(threads * sizeof *sl);
    double* gbs = malloc(reps * sizeof *gbs);
    uint64_t check = 0;
    for (int r = -1; r < reps; r++) {  // rep -1: warm-up, not counted
        double t0 = now();
        for (int t = 0; t < threads; t++) {
            sl[t] = (Slice){buf + t * per, per, 0};
            if (pthread_create(&tid[t], NULL, read_slice, &sl[t])) {
                fprintf(stderr, "bandwidth: pthread_create failed\n");
                return 1;
            }
        }
        for (int t = 0; t < threads; t++) {
            pthread_join(tid[t], NULL);
            check += sl[t].sum;
        }
        double dt = now() - t0;
        if (r >= 0) gbs[r] = (double)per * threads * 8 / dt * 1e-9;
    }
    qsort(gbs, reps, sizeof *gbs, cmp_double);
    double med = reps % 2 ? gbs[reps / 2] : 0.5 * (gbs[reps / 2 - 1] + gbs[reps / 2]);
    printf("read bandwidth: %.2f GB/s (%d threads, %d MiB, median of %d)\n", med, threads, mib, reps);
    if (check == 42) printf("\n");  // keeps the sums alive
    free(buf), free(tid), free(sl), free(gbs);
    return 0;
}
