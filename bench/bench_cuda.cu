/*
 * bench_cuda.cu: llava.cu's forward passes on 7B shapes (LLaVA-NeXT-Video-7B: CLIP ViT-L/14-336 with 23
 * layers run, Vicuna-7B), bf16 and q8, against the roofline of the card measured in the same run.
 *
 *   make bench_cuda        (./build/bench_cuda [--decode N] [--only bf16|q8])
 *
 * The weights are random numbers made on the GPU by a hash kernel (no 14 GB file, no host copy), so
 * the timings are of the kernels alone; the answers mean nothing. Measured:
 *   peaks    HBM bandwidth: a float4 copy kernel over 2 x 1 GiB (bytes read + written / time);
 *            tensor-core peak: cuBLAS bf16 x bf16 -> f32 GEMM, 8192^3.
 *   vision   8 frames (577 tokens each) through CLIP, pooling and the projector: ms per frame, and
 *            FLOP/s as a fraction of the tensor peak.
 *   prefill  a 1,170-token prompt (8 frames x 144 + text) in one pass: tokens/s, fraction of the
 *            tensor peak; the causal attention of one layer alone, tensor-core and f32 kernels;
 *            the time to first token (vision + prefill).
 *   decode   N tokens after that prompt: tokens/s, and the bytes one step must read (every weight of
 *            the decoder and lm_head as stored + the KV cache so far) per second as a fraction of the
 *            measured bandwidth; and the GEMVs alone (every decoder matrix and lm_head, back to back).
 * Timings include the host transfers the real program makes (pixels and embeddings up, features and
 * logits down).
 */
#include "../llava.cu"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" void llava_cuda_fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("bench_cuda: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// Random weights on the device

__device__ static float hash_uniform(uint64_t i, uint64_t seed) {  // splitmix64 -> [-1, 1)
    uint64_t z = i + seed * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) / 8388608.0f - 1.0f;
}

// type 0: f32 offset + scale*u; 1: bf16 of that; 2: int8 in [-127, 127]
__global__ static void fill_kernel(void* p, size_t n, int type, uint64_t seed, float offset, float scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float u = hash_uniform(i, seed);
    if (type == 0) ((float*)p)[i] = offset + scale * u;
    else if (type == 1) ((uint16_t*)p)[i] = f32_to_bf16_bits(offset + scale * u);
    else ((int8_t*)p)[i] = (int8_t)(127.0f * u);
}

static uint64_t g_seed = 1;

static void fill(void* p, size_t n, int type, float offset, float scale) {
    fill_kernel<<<blocks_for(n, 256), 256>>>(p, n, type, g_seed++, offset, scale);
    LAUNCH_CHECK();
}

static float* random_vec(GpuModel* g, size_t n, float offset, float scale) {
    float* p = gpu_floats(g, n);
    fill(p, n, 0, offset, scale);
    return p;
}

// A (rows, cols) weight, entries ~ U(-0.02, 0.02) (q8: int8 times scales of 0.02 / 127).
static GpuMatrix random_matrix(GpuModel* g, int type, int rows, int cols, int group) {
    GpuMatrix m = gpu_new_matrix(g, type, rows, cols, group);
    size_t n = (size_t)rows * cols;
    fill(m.data, n, type, 0.0f, 0.02f);
    if (type == 2) fill(m.scales, n / group, 0, 0.02f / 127, 0.0f);
    gpu_finish_matrix(&m);
    return m;
}

static GpuMatrix* random_matrices(GpuModel* g, int n, int type, int rows, int cols, int group) {
    GpuMatrix* m = (GpuMatrix*)calloc(n, sizeof(GpuMatrix));
    for (int l = 0; l < n; l++) m[l] = random_matrix(g, type, rows, cols, group);
    return m;
}

static GpuDims dims_7b(int type) {
    GpuDims d;
    memset(&d, 0, sizeof(d));
    d.weight_type = type; d.group = type == 2 ? 64 : 0;  // export.py's default q8 group
    d.dim = 4096; d.hidden_dim = 11008; d.n_layers = 32; d.n_heads = 32; d.n_kv_heads = 32; d.head_dim = 128;
    d.vocab_size = 32064; d.rms_eps = 1e-5f; d.rope_theta = 10000.0f; d.rope_scale = 2.5f;
    d.v_dim = 1024; d.v_hidden_dim = 4096; d.v_layers_run = 23; d.v_heads = 16; d.image_size = 336;
    d.patch_size = 14; d.n_channels = 3; d.v_act = 0; d.pool_stride = 2; d.v_eps = 1e-5f;
    return d;
}

static GpuModel* random_model(int type) {
    GpuDims d = dims_7b(type);
    GpuModel* g = gpu_create(&d);
    GpuWeights* w = gpu_weights(g);
    int Dv = d.v_dim, Dvh = d.v_hidden_dim, Lv = d.v_layers_run, D = d.dim, F = d.hidden_dim, L = d.n_layers, G = d.group;
    int gr = d.image_size / d.patch_size, K = d.n_channels * d.patch_size * d.patch_size;
    int qd = d.n_heads * d.head_dim, kvd = d.n_kv_heads * d.head_dim;
    w->class_embedding = random_vec(g, Dv, 0, 0.02f);
    w->position_embedding = random_vec(g, (size_t)(gr * gr + 1) * Dv, 0, 0.02f);
    w->pre_ln_w = random_vec(g, Dv, 1, 0.1f); w->pre_ln_b = random_vec(g, Dv, 0, 0.1f);
    w->patch_embedding = random_matrix(g, 0, Dv, K, 0);
    float** vecs[] = {&w->ln1_w, &w->ln1_b, &w->bq, &w->bk, &w->bv, &w->bo, &w->ln2_w, &w->ln2_b, &w->fc2_b};
    for (int i = 0; i < 9; i++) *vecs[i] = random_vec(g, (size_t)Lv * Dv, i == 0 || i == 6 ? 1.0f : 0.0f, 0.1f);
    w->fc1_b = random_vec(g, (size_t)Lv * Dvh, 0, 0.1f);
    w->v_wq = random_matrices(g, Lv, type, Dv, Dv, G); w->v_wk = random_matrices(g, Lv, type, Dv, Dv, G);
    w->v_wv = random_matrices(g, Lv, type, Dv, Dv, G); w->v_wo = random_matrices(g, Lv, type, Dv, Dv, G);
    w->fc1 = random_matrices(g, Lv, type, Dvh, Dv, G); w->fc2 = random_matrices(g, Lv, type, Dv, Dvh, G);
    w->linear_1 = random_matrix(g, type, D, Dv, G); w->b1 = random_vec(g, D, 0, 0.1f);
    w->linear_2 = random_matrix(g, type, D, D, G); w->b2 = random_vec(g, D, 0, 0.1f);
    w->image_newline = random_vec(g, D, 0, 0.1f);
    w->embed_tokens = random_matrix(g, type, d.vocab_size, D, G);
    w->attn_norm = random_vec(g, (size_t)L * D, 1, 0.1f);
    w->ffn_norm = random_vec(g, (size_t)L * D, 1, 0.1f);
    w->final_norm = random_vec(g, D, 1, 0.1f);
    w->wq = random_matrices(g, L, type, qd, D, G); w->wk = random_matrices(g, L, type, kvd, D, G);
    w->wv = random_matrices(g, L, type, kvd, D, G); w->wo = random_matrices(g, L, type, D, qd, G);
    w->w_gate = random_matrices(g, L, type, F, D, G); w->w_up = random_matrices(g, L, type, F, D, G);
    w->w_down = random_matrices(g, L, type, D, F, G);
    w->lm_head = random_matrix(g, type, d.vocab_size, D, G);
    CUDA_CHECK(cudaDeviceSynchronize());
    return g;
}

// ----------------------------------------------------------------------------
// The card's peaks, measured

__global__ static void copy_kernel(float4* dst, const float4* src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

static double measure_bandwidth(void) {  // bytes/s
    size_t bytes = (size_t)1 << 30, n = bytes / sizeof(float4);
    float4 *a, *b;
    CUDA_CHECK(cudaMalloc(&a, bytes));
    CUDA_CHECK(cudaMalloc(&b, bytes));
    CUDA_CHECK(cudaMemset(a, 0, bytes));
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    copy_kernel<<<sms * 8, 256>>>(b, a, n);  // warm-up
    LAUNCH_CHECK();
    int reps = 20;
    CUDA_CHECK(cudaEventRecord(e0));
    for (int r = 0; r < reps; r++) copy_kernel<<<sms * 8, 256>>>(r % 2 ? a : b, r % 2 ? b : a, n);
    LAUNCH_CHECK();
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    return 2.0 * bytes * reps / (ms * 1e-3);
}

static double measure_tensor_peak(void) {  // FLOP/s of a bf16 GEMM, f32 accumulation
    int n = 8192;
    size_t elems = (size_t)n * n;
    uint16_t *a, *b;
    float* c;
    CUDA_CHECK(cudaMalloc(&a, elems * 2));
    CUDA_CHECK(cudaMalloc(&b, elems * 2));
    CUDA_CHECK(cudaMalloc(&c, elems * 4));
    fill(a, elems, 1, 0, 1);
    fill(b, elems, 1, 0, 1);
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    const float one = 1.0f, zero = 0.0f;
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    int reps = 10;
    for (int r = -2; r < reps; r++) {  // two warm-ups
        if (r == 0) CUDA_CHECK(cudaEventRecord(e0));
        CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n,
                                  &zero, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    CUDA_CHECK(cudaEventRecord(e1));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    CUBLAS_CHECK(cublasDestroy(h));
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    CUDA_CHECK(cudaFree(c));
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    return 2.0 * n * (double)n * n * reps / (ms * 1e-3);
}

// ----------------------------------------------------------------------------

static float* host_random(size_t n, unsigned seed) {
    float* x = (float*)malloc(n * sizeof(float));
    if (!x) llava_cuda_fatal("out of memory");
    srand(seed);
    for (size_t i = 0; i < n; i++) x[i] = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    return x;
}

static void bench_model(int type, double bw, double peak, int n_decode) {
    const char* name = type == 1 ? "bf16" : "q8";
    double t = now_s();
    GpuModel* g = random_model(type);
    const GpuDims* d = &g->d;
    printf("\n%s: 7B-shaped random weights, %.2f GB on the device (made in %.2f s)\n", name,
           gpu_bytes_allocated(g) / 1e9, now_s() - t);

    // vision: 8 frames -> CLIP (23 layers) -> pool -> projector
    int F = 8, S = d->image_size, gr = S / d->patch_size, N = gr * gr + 1, per = (gr / 2) * (gr / 2);
    float* pixels = host_random((size_t)F * 3 * S * S, 1);
    float* vis = (float*)malloc((size_t)F * gr * gr * d->v_dim * sizeof(float));
    float* vid = (float*)malloc((size_t)F * per * d->dim * sizeof(float));
    gpu_video_features(g, pixels, F, vis, vid);  // warm-up (cuBLAS heuristics, allocations)
    int reps = 3;
    t = now_s();
    for (int r = 0; r < reps; r++) gpu_video_features(g, pixels, F, vis, vid);
    double tv = (now_s() - t) / reps;
    double Dv = d->v_dim, Dvh = d->v_hidden_dim;
    double vflops = F * (2.0 * N * (4 * Dv * Dv + 2 * Dv * Dvh) * d->v_layers_run     // projections + MLP
                         + 4.0 * N * N * Dv * d->v_layers_run                          // q k^T and p v
                         + 2.0 * (N - 1) * 3 * d->patch_size * d->patch_size * Dv      // patch embedding
                         + 2.0 * per * (Dv * d->dim + (double)d->dim * d->dim));       // projector
    printf("  vision   %d frames x %d tokens: %.2f ms/frame, %.1f TFLOP/s = %.0f%% of the tensor peak\n", F, N,
           1e3 * tv / F, vflops / tv / 1e12, 100 * vflops / tv / peak);

    // prefill: 1,170 tokens in one pass, then decode
    int T = 1170;
    gpu_build_state(g, T + n_decode + 1, 512);
    float* embeds = host_random((size_t)T * d->dim, 2);
    float* logits = (float*)malloc((size_t)d->vocab_size * sizeof(float));
    gpu_prefill(g, embeds, T, 0, NULL, logits);  // warm-up
    t = now_s();
    gpu_prefill(g, embeds, T, 0, NULL, logits);
    double tp = now_s() - t;
    double D = d->dim, Fh = d->hidden_dim, L = d->n_layers;
    double per_token = 2.0 * L * (4 * D * D + 3 * D * Fh);  // q, k, v, o (kv heads = heads) and the MLP
    double att_flops = 4.0 * (T * (T + 1) / 2.0) * D;       // one layer's q k^T and p v, causal
    double pflops = T * per_token + att_flops * L + 2.0 * D * d->vocab_size;
    printf("  prefill  %d tokens: %.3f s, %.0f tokens/s, %.1f TFLOP/s = %.0f%% of the tensor peak\n", T, tp, T / tp,
           pflops / tp / 1e12, 100 * pflops / tp / peak);
    for (int tensor = 1; tensor >= 0; tensor--) {  // layer 0's attention over the prompt, both kernels
        GpuAttn a = {};
        int hd = d->head_dim;
        a.out = g->att; a.q = g->q; a.k = g->key_cache; a.v = g->value_cache;
        a.T = T; a.n_heads = d->n_heads; a.n_kv_heads = d->n_kv_heads; a.head_dim = hd;
        a.q_stride = d->n_heads * hd; a.out_stride = d->n_heads * hd; a.kv_stride = hd;
        a.kv_head_stride = (size_t)g->ctx * hd; a.kv_bf16 = g->kv_bf16; a.causal_offset = 0; a.n_keys = T;
        a.scale = 1.0f / sqrtf((float)hd); a.lowp = g->kv_bf16;
        int saved = gpu_tensor_attention();
        gpu_tensor_attention_on = tensor;
        gpu_attention(g, &a, 1);  // warm-up
        CUDA_CHECK(cudaDeviceSynchronize());
        int reps = 10;
        t = now_s();
        for (int r = 0; r < reps; r++) gpu_attention(g, &a, 1);
        CUDA_CHECK(cudaDeviceSynchronize());
        double ta = (now_s() - t) / reps;
        gpu_tensor_attention_on = saved;
        printf("  attention %s: %.3f ms per layer (x %d layers = %.1f ms), %.1f TFLOP/s\n",
               tensor ? "tensor cores (bf16)" : "f32 kernel         ", 1e3 * ta, (int)L, 1e3 * ta * L,
               att_flops / ta / 1e12);
    }
    printf("  first token: vision %.1f ms + prefill %.1f ms = %.3f s for the 8-frame prompt\n", 1e3 * tv, 1e3 * tp,
           tv + tp);

    t = now_s();
    for (int i = 0; i < n_decode; i++) gpu_decode_step(g, 1 + i, T + i, logits);
    double td = (now_s() - t) / n_decode;
    double wbytes = type == 1 ? 2.0 : 1.0 + 4.0 / d->group;  // per weight, as read by the GEMV
    double weights = (L * (4 * D * D + 3 * D * Fh) + D * d->vocab_size) * wbytes;
    double kv = 2.0 * L * (T + n_decode / 2.0) * D * 2;     // bf16 keys and values, average position
    printf("  decode   %d tokens after the prompt: %.2f ms/token, %.1f tokens/s, %.0f GB/s = %.0f%% of the "
           "copy bandwidth (%.2f GB weights + %.2f GB KV per token)\n", n_decode, 1e3 * td, 1 / td,
           (weights + kv) / td / 1e9, 100 * (weights + kv) / td / bw, weights / 1e9, kv / 1e9);
    {  // the GEMVs alone: what the decode step's matmuls reach without the small kernels between them
        const GpuWeights* w = &g->w;
        int reps = 5;
        CUDA_CHECK(cudaDeviceSynchronize());
        t = now_s();
        for (int r = 0; r < reps; r++) {
            for (int l = 0; l < d->n_layers; l++) {
                const GpuMatrix* ms[] = {&w->wq[l], &w->wk[l], &w->wv[l], &w->wo[l], &w->w_gate[l], &w->w_up[l], &w->w_down[l]};
                for (int i = 0; i < 7; i++) gpu_gemv(i == 6 ? g->xb : g->hb, i == 6 ? g->hb : g->xb, ms[i], 0);
            }
            gpu_gemv(g->logits, g->x, &w->lm_head, 0);
        }
        CUDA_CHECK(cudaDeviceSynchronize());
        double tg = (now_s() - t) / reps;
        printf("  gemv     every decoder matrix + lm_head: %.2f ms, %.0f GB/s = %.0f%% of the copy bandwidth\n",
               1e3 * tg, weights / tg / 1e9, 100 * weights / tg / bw);
    }
    free(pixels); free(vis); free(vid); free(embeds); free(logits);
    gpu_destroy(g);
}

int main(int argc, char** argv) {
    int n_decode = 64, only = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--decode") && i + 1 < argc) n_decode = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) { i++; only = !strcmp(argv[i], "bf16") ? 1 : 2; }
        else { fprintf(stderr, "usage: bench_cuda [--decode N] [--only bf16|q8]\n"); return 2; }
    }
    if (n_decode < 1) n_decode = 1;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        printf("bench_cuda: SKIPPED: no GPU (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 0;
    }
    CUDA_CHECK(cudaSetDevice(0));
    printf("bench_cuda: %s\n", gpu_device_name());
    double bw = measure_bandwidth(), peak = measure_tensor_peak();
    printf("  peaks    copy bandwidth %.0f GB/s; bf16 tensor-core GEMM (cuBLAS, 8192^3) %.0f TFLOP/s\n", bw / 1e9,
           peak / 1e12);
    if (only != 2) bench_model(1, bw, peak, n_decode);
    if (only != 1) bench_model(2, bw, peak, n_decode);
    return 0;
}
