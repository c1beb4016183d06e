// test_matmul.c -- matmul.c's fast paths against matmul_ref, thread-count determinism, pool, edge cases.
// Build: gcc -O3 -march=native -Wall -Wextra -pthread -o /tmp/test_matmul test/test_matmul.c -lm
//        (also -O0 -fsanitize=address,undefined). Prints "N passed, N failed"; exits 1 on any failure.
//
// Tolerances (per output element, S = sum_k |w_k * x_k|, the natural scale of summation errors):
// * f32 paths and every GEMV/widening path (f32 activations): |y - ref| <= 1e-5 * S (summation order).
// * bf16 GEMM (vdpbf16ps): activations are rounded to bf16 first, so the kernel itself is checked
//   against matmul_ref run on bf16-rounded activations (1e-5 * S), and against the f32 reference with
//   the rigorous bound |sum w (x_bf16 - x)| <= 2^-8 * S (RNE to 8 significant bits).
// * q8 GEMM and q8 GEMV (VNNI, T <= mm_gemv_max_t[DT_Q8]): checked exactly against a reference that quantizes the activations with the
//   same mm_quantize_group (integer dot per group, then scales; 1e-5 relative for the f32 epilogue),
//   and against the f32 reference with the rigorous bound sum_g scale_x[g]/2 * sum_k |w_k| (rounding
//   each activation to the nearest multiple of its group scale). Both quantize the activations the
//   same way, so a row's result must not depend on the path: the VNNI GEMV of one row is checked bit
//   for bit against the same row inside a GEMM (test_q8_gemv).
// * q4 (every path, every level): bit-identical to matmul_ref, whose q4 arithmetic is the definition
//   (activations quantized by mm_quantize_group, exact int32 group dots, one fma per group in group
//   order); and matmul_ref itself against a double-precision product of the dequantized weights and the
//   f32 activations within the rigorous activation-rounding bound sum_g scale_x[g]/2 * sum_k |w_k|
//   (+ 1e-5 S for the f32 epilogue).

#include "../matmul.c"

static int n_pass, n_fail;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng_u32(void) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}
static float rng_uniform(void) { return (rng_u32() >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }   // [-1, 1)

static void check(int ok, const char* what) {
    if (ok) n_pass++;
    else { n_fail++; fprintf(stderr, "FAIL: %s\n", what); }
}

// A test matrix with its own storage.
typedef struct { Matrix m; void* data; float* scales; uint16_t* scales_bf16; } TestMat;

static TestMat make_mat(DType type, int N, int K, int G) {
    TestMat t = { { .type = type, .rows = N, .cols = K, .group = G }, NULL, NULL, NULL };
    size_t n = (size_t)N * K;
    if (type == DT_F32) {
        float* d = malloc(n * 4);
        for (size_t i = 0; i < n; i++) d[i] = rng_uniform();
        t.data = d;
    } else if (type == DT_BF16) {
        uint16_t* d = malloc(n * 2);
        for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(rng_uniform());
        t.data = d;
    } else if (type == DT_Q4) {
        // random nibbles (every value 0..15, i.e. w -8..7, the extremes included), bf16 scales
        uint8_t* d = malloc(n / 2 + 1);
        for (size_t i = 0; i < n / 2; i++) d[i] = (uint8_t)(rng_u32() & 0xff);
        size_t ns = (size_t)N * (K / G);
        t.scales_bf16 = malloc(ns * 2 + 2);
        for (size_t i = 0; i < ns; i++) t.scales_bf16[i] = f32_to_bf16(0.001f + 0.01f * (rng_uniform() + 1.0f));
        if (N > 2 && K / G > 1) {       // one all-zero weight group (nibbles 8) with scale 0
            memset(d + (size_t)1 * K / 2, 0x88, (size_t)G / 2);
            t.scales_bf16[(size_t)1 * (K / G)] = 0;
        }
        t.data = d;
    } else {
        int8_t* d = malloc(n);
        for (size_t i = 0; i < n; i++) d[i] = (int8_t)((int)(rng_u32() % 255) - 127);
        t.scales = malloc((size_t)N * (K / G) * 4);
        for (size_t i = 0; i < (size_t)N * (K / G); i++) t.scales[i] = 0.001f + 0.01f * (rng_uniform() + 1.0f);
        if (N > 2 && K / G > 1) {       // one all-zero weight group with scale 0 (as export writes them)
            memset(d + (size_t)1 * K, 0, (size_t)G);
            t.scales[(size_t)1 * (K / G)] = 0.0f;
        }
        t.data = d;
    }
    t.m.data = t.data;
    t.m.scales = t.scales;
    t.m.scales_bf16 = t.scales_bf16;
    return t;
}

static void free_mat(TestMat* t) { unpack_matrix(&t->m); free(t->data); free(t->scales); free(t->scales_bf16); }

static float* make_x(int T, int K) {
    float* x = malloc((size_t)T * K * 4 + 4);
    for (size_t i = 0; i < (size_t)T * K; i++) {
        float v = rng_uniform();
        if (rng_u32() % 64 == 0) v *= 20.0f;    // a few outliers, as in real activations
        x[i] = v;
    }
    return x;
}

static float w_at(const Matrix* m, int n, int k) {
    size_t i = (size_t)n * m->cols + k;
    if (m->type == DT_F32) return ((const float*)m->data)[i];
    if (m->type == DT_BF16) return bf16_to_f32(((const uint16_t*)m->data)[i]);
    if (m->type == DT_Q4) return (float)mm_q4_weight(m, n, k);     // the scale: per group, by callers
    return (float)((const int8_t*)m->data)[i];       // q8: the scale is applied per group by callers
}

static double w_scale(const Matrix* m, int n, int k) {  // the group scale of w[n][k] (1 if none)
    size_t gi = (size_t)n * (m->cols / (m->group > 0 ? m->group : 1)) + k / (m->group > 0 ? m->group : 1);
    if (m->type == DT_Q8) return m->scales[gi];
    if (m->type == DT_Q4) return bf16_to_f32(m->scales_bf16[gi]);
    return 1.0;
}

// S[t][n] = sum_k |w x| (with dequantized weights)
static double* abs_scale(const Matrix* m, const float* x, int T) {
    int N = m->rows, K = m->cols;
    double* s = malloc((size_t)T * N * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                double wv = w_at(m, n, k) * w_scale(m, n, k);
                acc += fabs(wv * x[(size_t)t * K + k]);
            }
            s[(size_t)t * N + n] = acc;
        }
    return s;
}

// |y - ref| <= rel * S + bound (bound may be NULL); prints the worst element on failure
static int close_enough(const float* y, const float* ref, const double* S, const double* bound,
                        double rel, size_t n, const char* what) {
    double worst = 0.0;
    size_t wi = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double lim = rel * S[i] + (bound ? bound[i] : 0.0) + 1e-30;
        double d = fabs((double)y[i] - (double)ref[i]);
        if (!(d <= lim)) bad++;
        double r = d / lim;
        if (!(r <= worst)) { worst = r; wi = i; }
    }
    if (bad)
        fprintf(stderr, "  %s: %d/%zu elements out of tolerance; worst at %zu: got %.9g want %.9g (err/limit %.3g)\n",
                what, bad, n, wi, y[wi], ref[wi], worst);
    return bad == 0;
}

// q8 reference with quantized activations (what the VNNI kernel computes), and the rigorous bound
// of the activation rounding: sum_g s_x[g]/2 * sum_k |w dequantized|.
static void ref_q8_quantized(float* y, double* bound, const float* x, const Matrix* m, int T) {
    int N = m->rows, K = m->cols, G = m->group, ng = K / G;
    int8_t* q = malloc((size_t)K);
    float* sx = malloc((size_t)ng * 4);
    for (int t = 0; t < T; t++) {
        for (int g = 0; g < ng; g++) (void)mm_quantize_group(x + (size_t)t * K + (size_t)g * G, G, q + (size_t)g * G, &sx[g]);
        for (int n = 0; n < N; n++) {
            double acc = 0.0, b = 0.0;
            const int8_t* wn = (const int8_t*)m->data + (size_t)n * K;
            for (int g = 0; g < ng; g++) {
                long long isum = 0;
                double wabs = 0.0;
                for (int k = g * G; k < (g + 1) * G; k++) { isum += (long long)wn[k] * q[k]; wabs += abs(wn[k]); }
                double sw = m->scales[(size_t)n * ng + g];
                acc += sw * (double)sx[g] * (double)isum;
                b += sx[g] * 0.5 * sw * wabs;
            }
            y[(size_t)t * N + n] = (float)acc;
            bound[(size_t)t * N + n] = b * 1.0001;
        }
    }
    free(q);
    free(sx);
}

// q4: the exact product of the dequantized weights and the f32 activations (double), and the bound
// of the activation rounding, as in ref_q8_quantized: sum_g s_x[g]/2 * sum_k |w dequantized|.
static void ref_q4_exact(double* y, double* bound, const float* x, const Matrix* m, int T) {
    int N = m->rows, K = m->cols, G = m->group, ng = K / G;
    int8_t* q = malloc((size_t)K);
    float* sx = malloc((size_t)ng * 4);
    for (int t = 0; t < T; t++) {
        for (int g = 0; g < ng; g++) (void)mm_quantize_group(x + (size_t)t * K + (size_t)g * G, G, q + (size_t)g * G, &sx[g]);
        for (int n = 0; n < N; n++) {
            double acc = 0.0, b = 0.0;
            for (int g = 0; g < ng; g++) {
                double wabs = 0.0;
                for (int k = g * G; k < (g + 1) * G; k++) {
                    double wv = w_at(m, n, k) * w_scale(m, n, k);
                    acc += wv * x[(size_t)t * K + k];
                    wabs += fabs(wv);
                }
                b += sx[g] * 0.5 * wabs;
            }
            y[(size_t)t * N + n] = acc;
            bound[(size_t)t * N + n] = b * 1.0001;
        }
    }
    free(q);
    free(sx);
}

static const char* type_name[] = { "f32", "bf16", "q8", "q4" };

// Which path will matmul take (mirrors matmul()'s choice, for naming and tolerances)? Low precision:
// bf16 GEMM with vdpbf16ps (activations rounded to bf16), and q8 on every SIMD level (activations
// quantized to int8) except the AVX-512 widening kernel (mm_q8_gemv_vnni = 0, a bench/test knob).
static int uses_lowprec_gemm(const Matrix* m, int T) {
#if defined(__aarch64__)
    (void)T;    // ARM64: every packed q8 path (GEMV and GEMM, every level above scalar) quantizes
    return m->packed && mm_arm_level > MM_ARM_SCALAR && m->type == DT_Q8;
#endif
    if (!m->packed || mm_isa == MM_SCALAR) return 0;
    if (m->type == DT_Q8)
        return !(mm_isa == MM_AVX512 && !mm_q8_gemv_vnni && (!mm_has_vnni || T <= mm_gemv_max_t[DT_Q8]));
    if (mm_isa != MM_AVX512 || T <= mm_gemv_max_t[m->type]) return 0;
    return m->type == DT_BF16 && mm_has_bf16;
}

// Largest T that takes the q8 GEMV (decode) path at the current level.
static int q8_gemv_max_t(void) {
#if MM_X86
    return mm_isa == MM_AVX512 && mm_has_vnni ? mm_gemv_max_t[DT_Q8] : mm_gemv_max_t_avx2[DT_Q8];
#else
    return mm_gemv_max_t[DT_Q8];  // (the x86 q8 tests that ask are not run on other targets)
#endif
}

static void test_case(DType type, int T, int N, int K, int G, int pack) {
    char what[200];
    snprintf(what, sizeof what, "%s isa=%s T=%d N=%d K=%d G=%d%s", type_name[type], matmul_isa_name(), T, N, K, G,
             pack ? "" : " (unpacked)");
    TestMat tm = make_mat(type, N, K, G);
    Matrix* m = &tm.m;
    if (pack) pack_matrix(m);
    float* x = make_x(T, K);
    size_t ny = (size_t)T * N;
    float* ref = malloc(ny * 4);
    float* y1 = malloc(ny * 4);
    float* y2 = malloc(ny * 4);
    float* y3 = malloc(ny * 4);
    matmul_ref(ref, x, m, T);
    double* S = abs_scale(m, x, T);
    pool_init(1);
    matmul(y1, x, m, T);
    pool_init(2);
    matmul(y2, x, m, T);
    pool_init(3);
    matmul(y3, x, m, T);
    pool_init(2);
    char msg[300];
    snprintf(msg, sizeof msg, "%s: 1/2/3 threads bit-identical", what);
    check(memcmp(y1, y2, ny * 4) == 0 && memcmp(y1, y3, ny * 4) == 0, msg);

    if (type == DT_Q4) {
        // the path matmul took (GEMV or GEMM, any level) must give matmul_ref's bits ...
        snprintf(msg, sizeof msg, "%s: q4 bit-identical to matmul_ref", what);
        check(memcmp(y2, ref, ny * 4) == 0, msg);
        if (memcmp(y2, ref, ny * 4) != 0)
            for (size_t i = 0; i < ny; i++)
                if (y2[i] != ref[i]) { fprintf(stderr, "  first difference at %zu: %.9g vs %.9g\n", i, y2[i], ref[i]); break; }
        // ... and matmul_ref is the dequantized product up to the activation rounding (+ f32 sums)
        double *ex = malloc(ny * sizeof(double)), *bound = malloc(ny * sizeof(double));
        float* exf = malloc(ny * 4);
        ref_q4_exact(ex, bound, x, m, T);
        for (size_t i = 0; i < ny; i++) exf[i] = (float)ex[i];
        snprintf(msg, sizeof msg, "%s: q4 matmul_ref vs dequantized f64 product (activation rounding bound)", what);
        check(close_enough(ref, exf, S, bound, 1e-5, ny, msg), msg);
        free(ex); free(bound); free(exf);
    } else if (!uses_lowprec_gemm(m, T)) {
        snprintf(msg, sizeof msg, "%s: vs matmul_ref (1e-5 S)", what);
        check(close_enough(y2, ref, S, NULL, 1e-5, ny, msg), msg);
    } else if (type == DT_BF16) {
        // kernel exactness: reference on bf16-rounded activations
        float* xr = malloc((size_t)T * K * 4);
        for (size_t i = 0; i < (size_t)T * K; i++) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
        float* refr = malloc(ny * 4);
        matmul_ref(refr, xr, m, T);
        double* Sr = abs_scale(m, xr, T);
        snprintf(msg, sizeof msg, "%s: bf16 GEMM vs ref on bf16-rounded x (1e-5 S)", what);
        check(close_enough(y2, refr, Sr, NULL, 1e-5, ny, msg), msg);
        snprintf(msg, sizeof msg, "%s: bf16 GEMM vs f32 ref (2^-8 S + 1e-5 S)", what);
        check(close_enough(y2, ref, S, NULL, 1.0 / 256 + 1e-5, ny, msg), msg);
        free(xr); free(refr); free(Sr);
    } else {
        float* refq = malloc(ny * 4);
        double* bound = malloc(ny * sizeof(double));
        ref_q8_quantized(refq, bound, x, m, T);
        const char* path = T > q8_gemv_max_t() ? "GEMM" : "GEMV";
        snprintf(msg, sizeof msg, "%s: q8 %s vs quantized-activation ref (1e-5 S)", what, path);
        check(close_enough(y2, refq, S, NULL, 1e-5, ny, msg), msg);
        snprintf(msg, sizeof msg, "%s: q8 %s vs f32 ref (activation rounding bound)", what, path);
        check(close_enough(y2, ref, S, bound, 1e-5, ny, msg), msg);
        free(refq); free(bound);
    }
    free(x); free(ref); free(y1); free(y2); free(y3); free(S);
    free_mat(&tm);
}

// NaN in one activation row poisons exactly that row; zero / tiny rows give exact zeros (q8: scale 0).
static void test_special(DType type, int T, int N, int K, int G) {
    char msg[200];
    TestMat tm = make_mat(type, N, K, G);
    pack_matrix(&tm.m);
    float* x = make_x(T, K);
    for (int k = 0; k < K; k++) x[(size_t)1 * K + k] = 0.0f;        // row 1: zeros
    for (int k = 0; k < K; k++) x[(size_t)2 * K + k] = 1e-38f * (k % 3 - 1); // row 2: tiny (denormal-ish)
    x[(size_t)0 * K + K / 2] = NAN;                                 // row 0: one NaN
    float* y = malloc((size_t)T * N * 4);
    matmul(y, x, &tm.m, T);
    int nan_ok = 1, zero_ok = 1, tiny_ok = 1, rest_ok = 1;
    for (int n = 0; n < N; n++) {
        if (y[n] == y[n]) nan_ok = 0;
        if (y[(size_t)1 * N + n] != 0.0f) zero_ok = 0;
        if (!(fabsf(y[(size_t)2 * N + n]) < 1e-30f)) tiny_ok = 0;
        for (int t = 3; t < T; t++) if (y[(size_t)t * N + n] != y[(size_t)t * N + n]) rest_ok = 0;
    }
    snprintf(msg, sizeof msg, "%s isa=%s T=%d special rows: NaN row is NaN", type_name[type], matmul_isa_name(), T);
    check(nan_ok, msg);
    snprintf(msg, sizeof msg, "%s isa=%s T=%d special rows: zero row is 0", type_name[type], matmul_isa_name(), T);
    check(zero_ok, msg);
    snprintf(msg, sizeof msg, "%s isa=%s T=%d special rows: tiny row ~0", type_name[type], matmul_isa_name(), T);
    check(tiny_ok, msg);
    snprintf(msg, sizeof msg, "%s isa=%s T=%d special rows: other rows finite", type_name[type], matmul_isa_name(), T);
    check(rest_ok, msg);
    free(x); free(y);
    free_mat(&tm);
}

// q8 decode path (T <= q8_gemv_max_t()) on ragged shapes: the GEMV against the
// quantized-activation reference, 1 vs 2 threads bit-identical, each row bit-identical to the same
// row computed by the q8 GEMM (same quantization, same per-group arithmetic), and on AVX-512 the
// widening kernel (mm_q8_gemv_vnni = 0: f32 activations) against matmul_ref.
static void test_q8_gemv(void) {
    struct { int N, K, G; } sh[] = { { 1, 4, 4 }, { 31, 12, 4 }, { 33, 40, 8 }, { 45, 96, 32 }, { 70, 100, 20 },
                                     { 100, 128, 64 }, { 64, 1088, 64 }, { 17, 72, 72 }, { 40, 2048, 128 } };
    int nsh = (int)(sizeof sh / sizeof sh[0]), tmax = q8_gemv_max_t();
    for (int s = 0; s < nsh; s++) {
        int N = sh[s].N, K = sh[s].K, G = sh[s].G, TG = tmax + 4;  // TG rows: a GEMM
        TestMat tm = make_mat(DT_Q8, N, K, G);
        pack_matrix(&tm.m);
        float* x = make_x(TG, K);
        x[(size_t)1 * K + K - 1] *= 50.0f;                          // an outlier that sets a group's scale
        float* yg = malloc((size_t)TG * N * 4);
        pool_init(2);
        matmul(yg, x, &tm.m, TG);
        for (int T = 1; T <= tmax; T++) {
            char what[200], msg[300];
            snprintf(what, sizeof what, "q8 GEMV isa=%s T=%d N=%d K=%d G=%d", matmul_isa_name(), T, N, K, G);
            size_t ny = (size_t)T * N;
            float *y1 = malloc(ny * 4), *y2 = malloc(ny * 4), *refq = malloc(ny * 4), *ref = malloc(ny * 4);
            double* bound = malloc(ny * sizeof(double));
            double* S = abs_scale(&tm.m, x, T);
            ref_q8_quantized(refq, bound, x, &tm.m, T);
            matmul_ref(ref, x, &tm.m, T);
            pool_init(1);
            matmul(y1, x, &tm.m, T);
            pool_init(2);
            matmul(y2, x, &tm.m, T);
            snprintf(msg, sizeof msg, "%s: 1/2 threads bit-identical", what);
            check(memcmp(y1, y2, ny * 4) == 0, msg);
            snprintf(msg, sizeof msg, "%s: vs quantized-activation ref (1e-5 S)", what);
            check(close_enough(y2, refq, S, NULL, 1e-5, ny, msg), msg);
            snprintf(msg, sizeof msg, "%s: vs f32 ref (activation rounding bound)", what);
            check(close_enough(y2, ref, S, bound, 1e-5, ny, msg), msg);
            snprintf(msg, sizeof msg, "%s: rows bit-identical to the q8 GEMM (T=%d)", what, TG);
            check(memcmp(y2, yg, ny * 4) == 0, msg);
            // rows at an offset (the last T rows of x) give the same as those GEMM rows
            matmul(y1, x + (size_t)(TG - T) * K, &tm.m, T);
            snprintf(msg, sizeof msg, "%s: last rows bit-identical to the q8 GEMM", what);
            check(memcmp(y1, yg + (size_t)(TG - T) * N, ny * 4) == 0, msg);
            if (mm_isa == MM_AVX512) {      // the AVX-512 widening kernel (f32 activations), a knob
                mm_q8_gemv_vnni = 0;
                matmul(y1, x, &tm.m, T);
                mm_q8_gemv_vnni = 1;
                snprintf(msg, sizeof msg, "%s: widening kernel vs matmul_ref (1e-5 S)", what);
                check(close_enough(y1, ref, S, NULL, 1e-5, ny, msg), msg);
            }
            free(y1); free(y2); free(refq); free(ref); free(bound); free(S);
        }
        free(x); free(yg);
        free_mat(&tm);
    }
}

// pool: every task runs exactly once; nested pool_for and a matmul inside a task run inline.
static atomic_int task_hits[1000];
static void count_task(void* ctx, int t) { (void)ctx; atomic_fetch_add(&task_hits[t], 1); }
typedef struct { Matrix* m; const float* x; float* y; int T; } NestCtx;
static void nested_task(void* vctx, int t) {
    NestCtx* c = vctx;
    pool_for(10, count_task, NULL);
    matmul(c->y + (size_t)t * c->T * c->m->rows, c->x, c->m, c->T);
}

static void test_pool(void) {
    for (int nth = 1; nth <= 3; nth++) {
        pool_init(nth);
        for (int rep = 0; rep < 200; rep++) {
            for (int i = 0; i < 1000; i++) atomic_store(&task_hits[i], 0);
            int nt = 1 + rep * 5;
            pool_for(nt, count_task, NULL);
            int ok = 1;
            for (int i = 0; i < nt; i++) ok &= atomic_load(&task_hits[i]) == 1;
            if (!ok) { check(0, "pool_for runs every task exactly once"); return; }
        }
        check(pool_size() == nth, "pool_size");
        check(1, "pool_for runs every task exactly once");
    }
    pool_init(2);
    TestMat tm = make_mat(DT_F32, 40, 64, 0);
    pack_matrix(&tm.m);
    int T = 20;
    float* x = make_x(T, 64);
    float* y = malloc((size_t)4 * T * 40 * 4);
    float* ref = malloc((size_t)T * 40 * 4);
    for (int i = 0; i < 1000; i++) atomic_store(&task_hits[i], 0);
    NestCtx c = { &tm.m, x, y, T };
    pool_for(4, nested_task, &c);
    matmul(ref, x, &tm.m, T);
    int ok = 1;
    for (int t = 0; t < 4; t++) ok &= memcmp(y + (size_t)t * T * 40, ref, (size_t)T * 40 * 4) == 0;
    for (int i = 0; i < 10; i++) ok &= atomic_load(&task_hits[i]) == 4;
    check(ok, "nested pool_for / matmul inside a task");
    free(x); free(y); free(ref);
    free_mat(&tm);
}

// The kernel levels: every configuration matmul_set_isa can select, best first.
typedef struct { const char* name; int level, vnni, bf16; } IsaCfg;
static const IsaCfg cfgs[] = {
    { "avx512+vnni+bf16", MM_AVX512, 1, 1 }, { "avx512+vnni", MM_AVX512, 1, 0 }, { "avx512+bf16", MM_AVX512, 0, 1 },
    { "avx512", MM_AVX512, 0, 0 }, { "avxvnni", MM_AVXVNNI, 0, 0 }, { "avx2", MM_AVX2, 0, 0 }, { "scalar", MM_SCALAR, 0, 0 },
};
enum { NCFG = sizeof cfgs / sizeof cfgs[0] };

// Does this CPU have configuration c? (matmul_set_isa never raises, so ask it and compare.)
static int have_cfg(int c) {
    matmul_set_isa(cfgs[c].level, cfgs[c].vnni, cfgs[c].bf16);
    return mm_isa == cfgs[c].level && mm_has_vnni == cfgs[c].vnni && mm_has_bf16 == cfgs[c].bf16;
}

// q8 on every SIMD level quantizes the activations the same way and computes the same exact int32
// group dots and f32 epilogue: the outputs must be bit-identical across levels (AVX2 vpmaddubsw,
// AVX-VNNI, AVX512-VNNI, AVX-512 without VNNI), for GEMV and GEMM sizes alike.
static void test_q8_levels(const int* have) {
    struct { int N, K, G; } sh[] = { { 45, 96, 32 }, { 70, 128, 8 }, { 33, 256, 64 }, { 100, 512, 128 }, { 17, 40, 4 } };
    for (int s = 0; s < (int)(sizeof sh / sizeof sh[0]); s++) {
        TestMat tm = make_mat(DT_Q8, sh[s].N, sh[s].K, sh[s].G);
        pack_matrix(&tm.m);
        for (int T = 1; T <= 20; T++) {
            float* x = make_x(T, sh[s].K);
            size_t ny = (size_t)T * sh[s].N;
            float *y0 = malloc(ny * 4), *y = malloc(ny * 4);
            int first = -1;
            for (int c = 0; c < NCFG; c++) {
                if (!have[c] || cfgs[c].level == MM_SCALAR) continue;
                matmul_set_isa(cfgs[c].level, cfgs[c].vnni, cfgs[c].bf16);
                matmul(first < 0 ? y0 : y, x, &tm.m, T);
                if (first < 0) { first = c; continue; }
                char msg[300];
                snprintf(msg, sizeof msg, "q8 T=%d N=%d K=%d G=%d: %s bit-identical to %s", T, sh[s].N, sh[s].K,
                         sh[s].G, cfgs[c].name, cfgs[first].name);
                check(memcmp(y0, y, ny * 4) == 0, msg);
            }
            free(x); free(y0); free(y);
        }
        free_mat(&tm);
    }
}

#if defined(__aarch64__)
// ARM64: the kernels at every level this CPU has (neon, dotprod, i8mm; under qemu-user pick the CPU
// with -cpu or QEMU_CPU), then scalar. test_case checks f32/bf16 against matmul_ref (1e-5 S) and q8
// exactly against the quantized-activation reference, with 1/2/3 threads bit-identical.
// Then the promise of the ARM q8 arithmetic: one matrix, packed once, gives the same bits at every
// level, on the GEMV and the GEMM path (a row of a T <= MM_ARM_GEMV_MAX_T call equals that row of a
// bigger GEMM call), because the integer dots are exact and the epilogue is shared.
static void test_arm_q8_levels(int max_level) {
    struct { int N, K, G; } sh[] = { { 1, 4, 4 }, { 31, 12, 4 }, { 33, 40, 8 }, { 45, 96, 32 }, { 70, 100, 20 },
                                     { 100, 128, 64 }, { 64, 1088, 64 }, { 17, 72, 72 }, { 40, 2048, 128 } };
    int Ts[] = { 1, 2, 3, 4, 9, 20 };
    for (int s = 0; s < (int)(sizeof sh / sizeof sh[0]); s++) {
        // the same rows of x at every T: T <= 3 is the GEMV, more is the GEMM (8-row tiles, tails)
        int N = sh[s].N, K = sh[s].K, G = sh[s].G, TG = 20;
        TestMat tm = make_mat(DT_Q8, N, K, G);
        pack_matrix(&tm.m);
        float* x = make_x(TG, K);
        x[(size_t)1 * K + K - 1] *= 50.0f;                          // an outlier that sets a group's scale
        float* y0 = malloc((size_t)TG * N * 4);                     // the best level's result
        float* y = malloc((size_t)TG * N * 4);
        float* yg = malloc((size_t)TG * N * 4);                     // the GEMM of all TG rows
        for (int ti = 0; ti < (int)(sizeof Ts / sizeof Ts[0]); ti++) {
            int T = Ts[ti];
            size_t ny = (size_t)T * N;
            char msg[300];
            for (int lv = max_level; lv >= MM_ARM_NEON; lv--) {
                matmul_set_isa(lv, 0, 0);                       // the matrix stays packed as it is
                pool_init(lv == max_level ? 2 : 3);             // and the thread count does not matter
                matmul(lv == max_level ? y0 : y, x, &tm.m, T);
                if (lv == max_level) {
                    matmul(yg, x, &tm.m, TG);
                    snprintf(msg, sizeof msg, "q8 isa=%s T=%d N=%d K=%d G=%d: rows bit-identical to the GEMM (T=%d)",
                             matmul_isa_name(), T, N, K, G, TG);
                    check(memcmp(y0, yg, ny * 4) == 0, msg);
                    continue;
                }
                snprintf(msg, sizeof msg, "q8 isa=%s T=%d N=%d K=%d G=%d: bit-identical to %s", matmul_isa_name(), T,
                         N, K, G, lv + 1 == max_level ? "the level above" : "the best level");
                check(memcmp(y, y0, ny * 4) == 0, msg);
            }
        }
        free(x); free(y0); free(y); free(yg);
        free_mat(&tm);
    }
    matmul_set_isa(max_level, 0, 0);
    pool_init(2);
}

static void test_arm(int quick) {
    mm_detect_arm();
    int max_level = mm_arm_level;
    printf("cpu: %s\n", matmul_isa_name());
    // best level first, then each lower one (a level the CPU lacks is never selected: the cap only
    // lowers); shapes: N not a multiple of 32 (panel tails), K odd (bf16 pair padding), G = 4..64
    for (int lv = max_level; lv >= MM_ARM_SCALAR; lv--) {
        matmul_set_isa(lv, 0, 0);
        for (int T = 1; T <= 21; T++) {                             // GEMV (T <= 3), GEMM tails, 2-3 tiles
            if (lv == MM_ARM_SCALAR && T > 5 && T != 21) continue;  // scalar: the portable loops
            test_case(DT_F32, T, 100, 96, 0, 1);
            test_case(DT_F32, T, 33, 37, 0, 1);                     // odd K, N = 32 + 1
            test_case(DT_BF16, T, 100, 96, 0, 1);
            test_case(DT_BF16, T, 31, 37, 0, 1);                    // odd K: zero-padded pair
            test_case(DT_Q8, T, 100, 128, 64, 1);
            test_case(DT_Q8, T, 45, 96, 32, 1);
            test_case(DT_Q8, T, 17, 40, 4, 1);                      // tiny groups
            test_case(DT_Q4, T, 100, 128, 64, 1);
            test_case(DT_Q4, T, 45, 96, 32, 1);
            test_case(DT_Q4, T, 17, 40, 8, 1);
        }
        if (!quick && lv == max_level) {
            test_case(DT_F32, 577, 70, 96, 0, 1);
            test_case(DT_BF16, 577, 70, 96, 0, 1);
            test_case(DT_Q8, 577, 70, 128, 64, 1);
            test_case(DT_Q4, 577, 70, 128, 64, 1);
        }
        test_case(DT_Q8, 9, 20, 60, 6, 1);                          // group % 4 != 0: portable path
        test_case(DT_F32, 16, 64, 64, 0, 0);                        // never packed: portable path
        for (int type = 0; type < 4; type++) {
            test_special((DType)type, 3, 50, 128, 64);
            test_special((DType)type, 4, 50, 128, 64);
            test_special((DType)type, 20, 50, 128, 64);
        }
    }
    matmul_set_isa(max_level, 0, 0);
    // cross-level and GEMV/GEMM bit identity for q8 (needs at least NEON: scalar keeps f32 activations)
    if (max_level > MM_ARM_SCALAR) test_arm_q8_levels(max_level);
    test_case(DT_F32, 300, 1, 1, 0, 1);                             // degenerate shapes
    test_case(DT_Q8, 30, 64, 2048, 64, 1);                          // long K
    test_case(DT_Q4, 30, 64, 2048, 64, 1);
    test_case(DT_BF16, 30, 64, 2048, 0, 1);
    test_case(DT_F32, 30, 64, 2048, 0, 1);
}
#endif

// Model files of format 2 store the panels pack_matrix makes: matrix_panel_bytes must size them as
// pack_matrix lays them out, matrix_panels_to_rows must give back the rows and scales exactly, and
// a matrix reading a copy of the panels in place (matrix_use_panels) must compute what the packed one
// does, bit for bit. Runs at the CPU's best level (where pack_matrix packs).
static void test_panels(void) {
    const struct { DType type; int N, K, G; } cases[] = {
        {DT_F32, 33, 37, 0}, {DT_F32, 64, 96, 0}, {DT_BF16, 31, 37, 0}, {DT_BF16, 70, 96, 0},
        {DT_Q8, 45, 96, 32}, {DT_Q8, 17, 40, 4}, {DT_Q4, 70, 256, 32}, {DT_Q4, 17, 40, 8},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char what[160];
        snprintf(what, sizeof what, "panels %s N=%d K=%d G=%d", type_name[cases[i].type], cases[i].N, cases[i].K, cases[i].G);
        TestMat tm = make_mat(cases[i].type, cases[i].N, cases[i].K, cases[i].G);
        pack_matrix(&tm.m);
        const MMPacked* p = tm.m.packed;
        if (!p) { printf("  skip %s: this CPU's kernels read no panels\n", what); free_mat(&tm); return; }
        uint64_t bytes, scale_bytes;
        matrix_panel_bytes(&tm.m, &bytes, &scale_bytes);
        const void* ps = p->s ? (const void*)p->s : (const void*)p->s16;
        check(bytes == (size_t)p->np * p->kw * 128 && (scale_bytes != 0) == (ps != NULL), what);
        // rows back from the panels
        size_t data_bytes = (size_t)cases[i].N * cases[i].K * (cases[i].type == DT_F32 ? 4 : cases[i].type == DT_BF16 ? 2 : 1);
        if (cases[i].type == DT_Q4) data_bytes /= 2;
        size_t ng = cases[i].G ? (size_t)cases[i].K / cases[i].G : 0;
        size_t row_scales = (size_t)cases[i].N * ng * (cases[i].type == DT_Q8 ? 4 : 2);
        void* rows = malloc(data_bytes);
        void* scales = malloc(row_scales + 1);
        matrix_panels_to_rows(&tm.m, p->w, ps, rows, scales);
        const void* want_scales = cases[i].type == DT_Q8 ? (const void*)tm.scales : (const void*)tm.scales_bf16;
        check(!memcmp(rows, tm.data, data_bytes) && (!ng || !memcmp(scales, want_scales, row_scales)), what);
        // the kernels reading a copy of the panels in place
        void* copy = aligned_alloc(64, align_up(bytes, 64));
        void* copy_s = scale_bytes ? aligned_alloc(64, align_up(scale_bytes, 64)) : NULL;
        memcpy(copy, p->w, bytes);
        if (copy_s) memcpy(copy_s, ps, scale_bytes);
        Matrix lent = {.type = tm.m.type, .rows = tm.m.rows, .cols = tm.m.cols, .group = tm.m.group};
        check(matrix_use_panels(&lent, copy, copy_s), what);
        int T = 5;
        float* x = make_x(T, cases[i].K);
        float* y1 = malloc((size_t)T * cases[i].N * 4);
        float* y2 = malloc((size_t)T * cases[i].N * 4);
        matmul(y1, x, &tm.m, T);
        matmul(y2, x, &lent, T);
        check(!memcmp(y1, y2, (size_t)T * cases[i].N * 4), what);
        unpack_matrix(&lent);       // frees the view, not the lent panels
        free(copy); free(copy_s); free(rows); free(scales); free(x); free(y1); free(y2);
        free_mat(&tm);
    }
}

// matmul_rows: the rows made by a function give matmul's bits on the same rows, on every path (GEMV,
// GEMM with the rows made inside the packer, the portable loop), 1 and 2 threads. matmul_then: the
// epilogue applied to each GEMM tile (or to all of y on the other paths) gives the bits of matmul
// followed by the same function over all of y, each element changed exactly once (the test epilogue
// y = 3y + t/4 + c/2 is not idempotent: a block done twice, or skipped, shows), with x given and with
// its rows made by the function.
typedef struct { const float* x; int K; } RowCopy;
static void row_copy(const void* ctx, int t, float* row) {
    const RowCopy* c = ctx;
    memcpy(row, c->x + (size_t)t * c->K, (size_t)c->K * sizeof(float));
}
static void post_test(const void* ctx, float* y, size_t ldy, int t0, int t1, int c0, int c1) {
    (void)ctx;
    for (int t = t0; t < t1; t++)
        for (int c = c0; c < c1; c++) y[(size_t)t * ldy + c] = 3.0f * y[(size_t)t * ldy + c] + 0.25f * t + 0.5f * c;
}
static void test_rows(DType type, int T, int N, int K, int G, int pack) {
    TestMat tm = make_mat(type, N, K, G);
    if (pack) pack_matrix(&tm.m);
    float* x = make_x(T, K);
    float *y1 = malloc((size_t)T * N * 4), *y2 = malloc((size_t)T * N * 4);
    RowCopy c = { x, K };
    int same_rows = 1, same_then = 1;
    for (int nth = 1; nth <= 2; nth++) {
        pool_init(nth);
        matmul(y1, x, &tm.m, T);
        memset(y2, 0xff, (size_t)T * N * 4);
        matmul_rows(y2, row_copy, &c, &tm.m, T);
        same_rows &= !memcmp(y1, y2, (size_t)T * N * 4);
        post_test(NULL, y1, N, 0, T, 0, N);
        for (int rows = 0; rows < 2; rows++) {
            memset(y2, 0xff, (size_t)T * N * 4);
            matmul_then(y2, rows ? NULL : x, row_copy, &c, &tm.m, T, post_test, NULL);
            same_then &= !memcmp(y1, y2, (size_t)T * N * 4);
        }
    }
    char what[160];
    snprintf(what, sizeof what, "matmul_rows = matmul, %s isa=%s T=%d N=%d K=%d G=%d%s", type_name[type], matmul_isa_name(),
             T, N, K, G, pack ? "" : " (unpacked)");
    check(same_rows, what);
    snprintf(what, sizeof what, "matmul_then = matmul + epilogue, %s isa=%s T=%d N=%d K=%d G=%d%s", type_name[type],
             matmul_isa_name(), T, N, K, G, pack ? "" : " (unpacked)");
    check(same_then, what);
    free(x); free(y1); free(y2);
    free_mat(&tm);
}
static void test_rows_all(void) {
    int Ts[] = { 1, 2, 3, 4, 7, 15, 40 };
    for (int i = 0; i < (int)(sizeof Ts / sizeof Ts[0]); i++) {
        test_rows(DT_F32, Ts[i], 40, 37, 0, 1);
        test_rows(DT_BF16, Ts[i], 40, 64, 0, 1);
        test_rows(DT_BF16, Ts[i], 300, 64, 0, 1);       // several weight blocks
        test_rows(DT_Q8, Ts[i], 70, 128, 32, 1);
        test_rows(DT_Q8, Ts[i], 300, 128, 32, 1);
        test_rows(DT_Q4, Ts[i], 40, 64, 16, 1);
        test_rows(DT_Q4, Ts[i], 70, 64, 16, 1);
    }
    test_rows(DT_Q8, 9, 20, 64, 8, 0);   // never packed: the portable loop
}

// The AVX-512 q8 and q4 GEMMs take their row tiles in groups (mm_q8_group_bytes of packed activations,
// 4 MB): groups of one tile and of three give the bits of one group, for 1, 2 and 3 threads.
static void test_q8_row_groups(void) {
#if MM_X86
    if (!(mm_isa == MM_AVX512 && mm_has_vnni)) return;
    int T = 200, N = 100, K = 256;
    for (int type = DT_Q8; type <= DT_Q4; type++) {
        TestMat tm = make_mat((DType)type, N, K, 64);
        pack_matrix(&tm.m);
        float* x = make_x(T, K);
        size_t ny = (size_t)T * N;
        float *y0 = malloc(ny * 4), *y = malloc(ny * 4);
        size_t keep = mm_q8_group_bytes;
        matmul(y0, x, &tm.m, T);
        for (int tiles = 1; tiles <= 3; tiles += 2)
            for (int threads = 1; threads <= 3; threads++) {
                mm_q8_group_bytes = (size_t)tiles * K * MM_Q8_MR - 1;   // `tiles` tiles per group (q8 and q4)
                pool_init(threads);
                memset(y, 0, ny * 4);
                matmul(y, x, &tm.m, T);
                char msg[200];
                snprintf(msg, sizeof msg, "%s GEMM T=%d N=%d K=%d in row groups of %d tile(s), %d thread(s): same bits",
                         type_name[type], T, N, K, tiles, threads);
                check(memcmp(y, y0, ny * 4) == 0, msg);
            }
        mm_q8_group_bytes = keep;
        pool_init(2);
        free(x); free(y0); free(y);
        free_mat(&tm);
    }
#endif
}

int main(int argc, char** argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    test_pool();
    test_panels();
#if defined(__aarch64__)
    test_arm(quick);                    // ARM64 levels instead of the x86 configurations below
    test_rows_all();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
#endif
    mm_detect_isa();
    int max_isa = mm_isa, vnni = mm_has_vnni, bf16 = mm_has_bf16;
    printf("cpu: %s\n", matmul_isa_name());
    int have[NCFG];
    char skipped[400] = "";
    for (int c = 0; c < NCFG; c++) {
        have[c] = have_cfg(c);
        if (!have[c]) {
            size_t l = strlen(skipped);
            snprintf(skipped + l, sizeof skipped - l, "%s%s", l ? ", " : "", cfgs[c].name);
        }
    }
    int Ts[] = { 1, 2, 3, 5, 13, 14, 15, 577 };
    for (int c = 0; c < NCFG; c++) {
        if (!have[c]) continue;
        matmul_set_isa(cfgs[c].level, cfgs[c].vnni, cfgs[c].bf16);
        for (int ti = 0; ti < (int)(sizeof Ts / sizeof Ts[0]); ti++) {
            int T = Ts[ti];
            if (T == 577 && (quick || c >= 2)) continue;
            int N1 = T == 577 ? 70 : 100;
            test_case(DT_F32, T, N1, 96, 0, 1);
            test_case(DT_F32, T, 33, 37, 0, 1);         // odd K, N = 32 + 1
            test_case(DT_BF16, T, N1, 96, 0, 1);
            test_case(DT_BF16, T, 31, 37, 0, 1);        // odd K: zero-padded pair
            test_case(DT_Q8, T, N1, 128, 64, 1);
            test_case(DT_Q8, T, 45, 96, 32, 1);
            test_case(DT_Q8, T, 17, 40, 4, 1);          // tiny groups
            test_case(DT_Q4, T, N1, 128, 64, 1);
            test_case(DT_Q4, T, 45, 96, 32, 1);
            test_case(DT_Q4, T, 17, 40, 8, 1);          // the smallest q4 group, N < one panel
        }
        for (int T = 1; T <= 20; T++) {                 // every T around the GEMV/GEMM switch and tile edges
            test_case(DT_F32, T, 47, 29, 0, 1);
            test_case(DT_BF16, T, 47, 29, 0, 1);        // odd K
            test_case(DT_Q8, T, 50, 64, 8, 1);
            test_case(DT_Q8, T, 50, 256, 128, 1);
            test_case(DT_Q4, T, 50, 64, 8, 1);
            test_case(DT_Q4, T, 70, 256, 32, 1);        // rows: 2 panels + 6
        }
        test_case(DT_Q4, 13, 33, 64, 16, 0);            // never packed: the portable reference path
        test_case(DT_Q8, 9, 20, 60, 6, 1);              // group % 4 != 0: portable path
        test_case(DT_F32, 16, 64, 64, 0, 0);            // never packed: portable path
        if (cfgs[c].level >= MM_AVX2) test_q8_gemv();
        test_rows_all();
        for (int type = 0; type < 4; type++) {
            test_special((DType)type, 3, 50, 128, 64);
            test_special((DType)type, 4, 50, 128, 64);
            test_special((DType)type, 20, 50, 128, 64);
        }
    }
    test_q8_levels(have);
    matmul_set_isa(max_isa, vnni, bf16);
    test_q8_row_groups();
    test_case(DT_F32, 300, 1, 1, 0, 1);                 // degenerate shapes
    test_case(DT_Q8, 30, 64, 2048, 64, 1);              // long K
    test_case(DT_Q4, 30, 64, 2048, 64, 1);
    test_case(DT_Q4, 7, 100, 4096, 32, 1);
    test_case(DT_BF16, 30, 64, 2048, 0, 1);
    test_case(DT_F32, 30, 64, 2048, 0, 1);
    if (skipped[0]) printf("skipped: %s (CPU lacks it, or LLAVA_ISA caps it)\n", skipped);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
