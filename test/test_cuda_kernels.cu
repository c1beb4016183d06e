/*
 * test_cuda_kernels.cu: llava.cu's kernels on the shapes of the real model, against plain host loops in
 * double precision. The tiny goldens of `make test` have head_dim 8, 32-wide rows and q8 groups of 8, so
 * they never reach the vector GEMV, the tensor-core attention (head_dim % 16 == 0) or a decode attention
 * of several key chunks; this program does, with 7B-like widths kept small enough to run in a second.
 *
 *   build/test_cuda_kernels        (make test_cuda runs it first)
 *
 * Checked, as max |gpu - ref| / max |ref|:
 *   gemv f32 / bf16 / q8 (group 64 and 32), vector and scalar widths, y = W x and y += W x: 1e-5
 *     (f32 sums of the same products in another order).
 *   gemv_swiglu (silu(W_gate x) * W_up x): 1e-5.
 *   decode attention (one query, keys split into chunks of DEC_CHUNK, merged): 1e-5, f32 and bf16 caches.
 *   prompt attention (causal, over the cache) and CLIP attention (views, no mask), f32 kernel: 1e-5;
 *     tensor-core kernel: 2e-2 (its queries, probabilities and f32 keys/values are rounded to bf16,
 *     2^-9 relative each, on random data whose softmax is spread over many keys).
 * Last line: "N passed, N failed".
 */
#include "../llava.cu"

#include <stdarg.h>

extern "C" void llava_cuda_fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("test_cuda_kernels: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static int passed, failed;

static void check(double err, double tol, const char* what) {
    int ok = err <= tol;  // (a NaN fails)
    printf("  %-4s %-62s max rel err %.3g (tol %.0e)\n", ok ? "ok" : "FAIL", what, err, tol);
    ok ? passed++ : failed++;
}

static uint64_t rng_state = 88172645463325252ull;
static float uniform(void) {  // xorshift64 -> [-1, 1)
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return (float)(rng_state >> 40) / 8388608.0f - 1.0f;
}

static uint16_t host_bf16(float f) {  // round to nearest even (no NaNs here)
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
static float host_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static double max_rel(const float* a, const double* ref, size_t n) {
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - ref[i]));
        if (a[i] != a[i]) e = INFINITY;
        s = fmax(s, fabs(ref[i]));
    }
    return e / (s > 0 ? s : 1);
}

static void* to_device(const void* host, size_t bytes) {
    void* p;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    CUDA_CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    return p;
}

static float* from_device(const float* dev, size_t n) {
    float* h = (float*)malloc(n * sizeof(float));
    CUDA_CHECK(cudaMemcpy(h, dev, n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

// A random (rows, cols) matrix of the given type on the device, and its values as the kernels see them.
static GpuMatrix random_matrix(int type, int rows, int cols, int group, double* values) {
    size_t n = (size_t)rows * cols;
    GpuMatrix m = {type, rows, cols, group, NULL, NULL, NULL};
    if (type == 0) {
        float* w = (float*)malloc(n * 4);
        for (size_t i = 0; i < n; i++) values[i] = w[i] = uniform();
        m.data = to_device(w, n * 4);
        free(w);
    } else if (type == 1) {
        uint16_t* w = (uint16_t*)malloc(n * 2);
        for (size_t i = 0; i < n; i++) { w[i] = host_bf16(uniform()); values[i] = host_f32(w[i]); }
        m.data = to_device(w, n * 2);
        free(w);
    } else {
        int8_t* q = (int8_t*)malloc(n);
        float* s = (float*)malloc(n / group * 4);
        for (size_t i = 0; i < n / group; i++) s[i] = (1.5f + uniform()) / 127;
        for (size_t i = 0; i < n; i++) { q[i] = (int8_t)(127 * uniform()); values[i] = (double)q[i] * s[i / group]; }
        m.data = to_device(q, n);
        m.scales = (float*)to_device(s, n / group * 4);
        free(q);
        free(s);
    }
    return m;
}

static void free_matrix(GpuMatrix* m) {
    CUDA_CHECK(cudaFree(m->data));
    if (m->scales) CUDA_CHECK(cudaFree(m->scales));
}

static void test_gemv(int type, int rows, int cols, int group) {
    const char* names[] = {"f32", "bf16", "q8"};
    double* W = (double*)malloc((size_t)rows * cols * sizeof(double));
    double* U = (double*)malloc((size_t)rows * cols * sizeof(double));
    GpuMatrix w = random_matrix(type, rows, cols, group, W), u = random_matrix(type, rows, cols, group, U);
    float* x = (float*)malloc(cols * 4);
    float* y0 = (float*)malloc(rows * 4);
    for (int i = 0; i < cols; i++) x[i] = uniform();
    for (int i = 0; i < rows; i++) y0[i] = uniform();
    float* dx = (float*)to_device(x, cols * 4);
    float* dy = (float*)to_device(y0, rows * 4);
    double *ref = (double*)malloc(rows * sizeof(double)), *ref_acc = (double*)malloc(rows * sizeof(double));
    double* ref_glu = (double*)malloc(rows * sizeof(double));
    for (int r = 0; r < rows; r++) {
        double s = 0, su = 0;
        for (int i = 0; i < cols; i++) { s += W[(size_t)r * cols + i] * x[i]; su += U[(size_t)r * cols + i] * x[i]; }
        ref[r] = s;
        ref_acc[r] = y0[r] + s;
        ref_glu[r] = s / (1 + exp(-s)) * su;
    }
    char what[128];
    const char* path = gemv_vectorizable(&w) ? "vector" : "scalar";
    gpu_gemv(dy, dx, &w, 1);
    float* got = from_device(dy, rows);
    char shape[64];
    snprintf(shape, sizeof shape, "%s %dx%d%s", names[type], rows, cols, type == 2 ? (group == 64 ? " g64" : group == 32 ? " g32" : " g8") : "");
    snprintf(what, sizeof what, "gemv %s (%s): y += W x", shape, path);
    check(max_rel(got, ref_acc, rows), 1e-5, what);
    free(got);
    gpu_gemv(dy, dx, &w, 0);
    got = from_device(dy, rows);
    snprintf(what, sizeof what, "gemv %s (%s): y = W x", shape, path);
    check(max_rel(got, ref, rows), 1e-5, what);
    free(got);
    {  // two matrices in one launch (as decode's q, k, v): W x and U x
        float* du;
        CUDA_CHECK(cudaMalloc(&du, rows * 4));
        float* ys[] = {dy, du};
        const GpuMatrix* ws[] = {&w, &u};
        gpu_gemv_n(2, ys, dx, ws, 0);
        float *gw = from_device(dy, rows), *gu = from_device(du, rows);
        double* ref_u = (double*)malloc(rows * sizeof(double));
        for (int r = 0; r < rows; r++) {
            double su = 0;
            for (int i = 0; i < cols; i++) su += U[(size_t)r * cols + i] * x[i];
            ref_u[r] = su;
        }
        snprintf(what, sizeof what, "gemv %s (%s): two matrices, one launch", shape, path);
        check(fmax(max_rel(gw, ref, rows), max_rel(gu, ref_u, rows)), 1e-5, what);
        free(gw); free(gu); free(ref_u);
        CUDA_CHECK(cudaFree(du));
    }
    gpu_gemv_swiglu(dy, dx, &w, &u);
    got = from_device(dy, rows);
    snprintf(what, sizeof what, "gemv_swiglu %s (%s)", shape, path);
    check(max_rel(got, ref_glu, rows), 1e-5, what);
    free(got);
    free_matrix(&w); free_matrix(&u);
    CUDA_CHECK(cudaFree(dx)); CUDA_CHECK(cudaFree(dy));
    free(W); free(U); free(x); free(y0); free(ref); free(ref_acc); free(ref_glu);
}

// Attention against double loops. pos >= 0: the LLM's causal attention of T queries at positions pos..
// over its cache layout (n_kv, ctx, hd) of pos + T keys. pos < 0: the CLIP tower's, `batch` views of T
// positions each, q, k, v all (view, position, heads * hd), no mask. GQA when n_kv < n_heads.
static void test_attention(int T, int pos, int n_heads, int n_kv, int hd, int bf16, int tensor, int batch) {
    int causal = pos >= 0, qd = n_heads * hd, n_keys = causal ? pos + T : T, ctx = causal ? pos + T + 5 : T;
    GpuAttn a = {};
    a.T = T; a.n_heads = n_heads; a.n_kv_heads = n_kv; a.head_dim = hd; a.q_stride = qd; a.out_stride = qd;
    a.kv_stride = causal ? hd : n_kv * hd;
    a.kv_head_stride = causal ? (size_t)ctx * hd : hd;
    a.kv_batch = (size_t)n_kv * ctx * hd;
    a.q_batch = a.out_batch = (size_t)T * qd;
    a.kv_bf16 = bf16; a.causal_offset = causal ? pos : -1; a.n_keys = n_keys; a.lowp = tensor;
    double scale = 1 / sqrt((double)hd);
    a.scale = (float)scale;
    size_t kv_elems = batch * a.kv_batch, q_elems = batch * a.q_batch;
    float* q = (float*)malloc(q_elems * 4);
    double *K = (double*)calloc(kv_elems, sizeof(double)), *V = (double*)calloc(kv_elems, sizeof(double));
    float *kf = (float*)calloc(kv_elems, 4), *vf = (float*)calloc(kv_elems, 4);
    uint16_t *kb = (uint16_t*)calloc(kv_elems, 2), *vb = (uint16_t*)calloc(kv_elems, 2);
    for (size_t i = 0; i < q_elems; i++) q[i] = 2 * uniform();
    for (size_t i = 0; i < kv_elems; i++) {
        kf[i] = 2 * uniform(); vf[i] = uniform();
        kb[i] = host_bf16(kf[i]); vb[i] = host_bf16(vf[i]);
        K[i] = bf16 ? host_f32(kb[i]) : kf[i];
        V[i] = bf16 ? host_f32(vb[i]) : vf[i];
    }
    double* ref = (double*)malloc(q_elems * sizeof(double));
    double* s = (double*)malloc(n_keys * sizeof(double));
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < n_heads; h++) {
                int n = causal ? pos + t + 1 : n_keys;
                const double *Kh = K + b * a.kv_batch + (size_t)(h / (n_heads / n_kv)) * a.kv_head_stride,
                             *Vh = V + b * a.kv_batch + (size_t)(h / (n_heads / n_kv)) * a.kv_head_stride;
                const float* qr = q + b * a.q_batch + (size_t)t * qd + h * hd;
                double m = -INFINITY, l = 0;
                for (int j = 0; j < n; j++) {
                    double dot = 0;
                    for (int d = 0; d < hd; d++) dot += qr[d] * Kh[(size_t)j * a.kv_stride + d];
                    s[j] = dot * scale;
                    m = fmax(m, s[j]);
                }
                for (int j = 0; j < n; j++) l += s[j] = exp(s[j] - m);
                for (int d = 0; d < hd; d++) {
                    double o = 0;
                    for (int j = 0; j < n; j++) o += s[j] * Vh[(size_t)j * a.kv_stride + d];
                    ref[b * a.q_batch + (size_t)t * qd + h * hd + d] = o / l;
                }
            }
    GpuModel g;
    memset(&g, 0, sizeof g);
    g.part_elems = (size_t)n_heads * ((ctx + DEC_CHUNK - 1) / DEC_CHUNK) * (hd + 2);
    CUDA_CHECK(cudaMalloc(&g.part, g.part_elems * 4));
    float* dout;
    CUDA_CHECK(cudaMalloc(&dout, q_elems * 4));
    a.out = dout;
    a.q = (float*)to_device(q, q_elems * 4);
    a.k = bf16 ? to_device(kb, kv_elems * 2) : to_device(kf, kv_elems * 4);
    a.v = bf16 ? to_device(vb, kv_elems * 2) : to_device(vf, kv_elems * 4);
    int saved = gpu_tensor_attention();
    gpu_tensor_attention_on = tensor;
    gpu_attention(&g, &a, batch);
    gpu_tensor_attention_on = saved;
    float* got = from_device(dout, q_elems);
    int on_tensor = T > 1 && tensor && hd % 16 == 0;
    const char* kernel = T == 1 && causal ? "decode (split keys)" : on_tensor ? "tensor cores" : "f32 kernel";
    char what[160];
    if (causal)
        snprintf(what, sizeof what, "attention %s: T %d at %d, heads %d/%d, hd %d, %s cache", kernel, T, pos, n_heads,
                 n_kv, hd, bf16 ? "bf16" : "f32");
    else
        snprintf(what, sizeof what, "attention %s: %d views x %d, heads %d, hd %d, no mask", kernel, batch, T, n_heads, hd);
    check(max_rel(got, ref, q_elems), on_tensor ? 2e-2 : 1e-5, what);
    CUDA_CHECK(cudaFree(dout)); CUDA_CHECK(cudaFree((void*)a.q)); CUDA_CHECK(cudaFree((void*)a.k));
    CUDA_CHECK(cudaFree((void*)a.v)); CUDA_CHECK(cudaFree(g.part));
    free(got); free(q); free(K); free(V); free(kf); free(vf); free(kb); free(vb); free(ref); free(s);
}

int main(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("test_cuda_kernels: SKIPPED: no GPU\n0 passed, 0 failed\n");
        return 0;
    }
    printf("test_cuda_kernels: %s\n", gpu_device_name());
    for (int type = 0; type < 3; type++) {
        test_gemv(type, 300, 1024, 64);  // vector loads
        test_gemv(type, 77, 520, 8);     // 520 = 8 x 65: bf16 vector, f32 vector, q8 scalar (group 8)
    }
    test_gemv(2, 129, 2048, 32);
    test_gemv(0, 33, 75, 1);  // odd width: scalar loop
    for (int bf16 = 0; bf16 < 2; bf16++) {
        test_attention(1, 700, 8, 2, 128, bf16, 1, 1);   // decode: 701 keys, 6 chunks, the last partly filled
        test_attention(1, 0, 4, 4, 64, bf16, 1, 1);      // the first token
        test_attention(1, 255, 4, 1, 80, bf16, 1, 1);    // 256 keys: exactly two chunks
        test_attention(150, 37, 4, 2, 128, bf16, 0, 1);  // prompt, f32 kernel
    }
    test_attention(150, 37, 4, 2, 128, 1, 1, 1);  // prompt, tensor cores, continuing at 37
    test_attention(200, 0, 2, 2, 64, 1, 1, 1);
    test_attention(70, 300, 2, 1, 80, 1, 1, 1);   // head_dim 80, one partly filled query block
    test_attention(5, 9, 2, 2, 128, 1, 1, 1);     // a short chat turn
    test_attention(577, -1, 4, 4, 64, 0, 1, 2);   // CLIP: 2 views of 577 positions, f32 q/k/v, tensor cores
    test_attention(577, -1, 4, 4, 64, 0, 0, 2);   // the same on the f32 kernel
    test_attention(50, -1, 2, 2, 48, 0, 1, 3);    // a small tower, head_dim 48
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
