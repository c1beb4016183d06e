/*
 * llava.cu: the GPU path of llava.c. The same checkpoint (f32, bf16 or q8), the same command line, the
 * same --dump files, on one NVIDIA GPU. Build: make llava_cuda (nvcc + cuBLAS); run: ./llava_cuda
 * with llava's arguments. Tested on an H200 (make test_cuda; README, "GPU (CUDA)", has its speed).
 *
 * One file, two halves, two compilers:
 *   the device half (#ifdef __CUDACC__)  compiled by nvcc: the kernels and the GPU forward passes,
 *                  gpu_clip_encoder_layer, gpu_llama_decoder_layer, ... one for each CPU function of
 *                  llava.c that does math, under the same name with a gpu_ prefix.
 *   the host half  (#else)               plain C, compiled by the C compiler as part of llava.c:
 *                  `gcc -DLLAVA_CUDA llava.c` includes this file at the end of llava.c, so it sees
 *                  the Model and every CPU chapter. It fills llava.c's llava_accel hooks, and from then
 *                  on build_model leaves the weights unpacked (they go to the GPU at the first stage that
 *                  needs it, so -m encode / decode never start the GPU), and video_features,
 *                  image_features, build_state, prefill and decode_step run here. Everything else
 *                  (the checkpoint reader, video decoding and preprocessing, the tokenizer, the chat
 *                  template, merge_embeddings, the sampler, chat mode, --dump, main) is llava.c's own
 *                  code, not a copy. The same define turns any test program into a GPU one
 *                  (build/test_model_cuda is test/test_model.c with -DLLAVA_CUDA).
 * The two halves talk through the plain-C interface below (numbers and pointers only, no C++).
 *
 * Where the data lives: the weights go to the GPU once (build_model); the vision batch, the LLM
 * activations and the KV cache stay there. Per prompt, the preprocessed pixels and the merged input
 * embeddings go up; the vision features (needed on the host by --dump and merge_embeddings) and the
 * last position's logits come back, and per decode step only the logits (vocab floats).
 *
 * Matmuls, y (T, N) = x (T, K) W^T:
 *   T = 1 (decode, and the last row's lm_head): gemv_kernel, GEMV_ROWS output rows per warp, reading the
 *       weights as stored: f32, bf16, or int8 with per-group f32 scales (x stays f32: y = sum_g s_g sum q x).
 *   T > 1 (prefill, vision batch, projector): cuBLAS. f32 weights: f32 GEMM with the pedantic compute type
 *       (no TF32), for the fidelity tests. bf16: tensor-core GEMM, activations rounded to bf16 first (as the
 *       CPU's AVX512-BF16 GEMM does), f32 accumulation. q8: the same bf16 GEMM on a bf16 copy of the weights
 *       dequantized once at load (q * s is exact in f32; rounding it to bf16 costs <= 2^-9 relative), so a
 *       q8 model holds int8 for decode AND bf16 for prefill on the GPU (7 + 14 GB at 7B).
 * Everything else is written here: RMSNorm / LayerNorm (one block per row), RoPE (HF rotate_half, linear
 * scaling), the KV store (bf16 cache for bf16/q8 weights, f32 for f32, as llava.c), attention (three
 * kernels, all flash-style, online softmax, no T x T matrix: f32 for f32 weights, bf16 tensor cores for
 * bf16/q8 weights, split over the keys for decode), the activations, the 2x2 pooling, the projector, the
 * anyres packing with image_newline.
 *
 * Every CUDA and cuBLAS call is checked: CUDA_CHECK / CUBLAS_CHECK name the call, the file and the line,
 * and end the program through llava.c's fatal() (base.c), like every other error.
 */

#include <stddef.h>
#include <stdint.h>

// ----------------------------------------------------------------------------
// The interface between the halves (both compilers read this part)

// The numbers of llava.c's Config the GPU passes need.
typedef struct {
    int weight_type, group;   // DType of matmul.c: 0 f32, 1 bf16, 2 q8; q8 group size
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, vocab_size;
    float rms_eps, rope_theta, rope_scale;
    int v_dim, v_hidden_dim, v_layers_run, v_heads, image_size, patch_size, n_channels, v_act, pool_stride;
    float v_eps;
} GpuDims;

// One weight matrix on the device, (rows, cols) row-major: y = x W^T.
typedef struct {
    int type, rows, cols, group;  // as matmul.c's Matrix
    void* data;                   // device: f32, bf16 bits or int8
    float* scales;                // device: q8 (rows, cols / group) scales, else NULL
    uint16_t* bf16;               // device: bf16 weights for the tensor-core GEMM (bf16: = data; q8: a
                                  // dequantized copy; f32: NULL, the GEMM reads data as f32)
} GpuMatrix;

// The weights on the device, as llava.c's VisionWeights, ProjectorWeights, LlmWeights. Vectors are
// device pointers; stacked per-layer vectors are (layers, n); matrix arrays are host arrays of
// GpuMatrix, one per layer. Only the CLIP layers that run (v_layers_run) are uploaded.
typedef struct {
    float *class_embedding, *position_embedding, *pre_ln_w, *pre_ln_b;
    GpuMatrix patch_embedding;  // always f32, as in the file
    float *ln1_w, *ln1_b, *bq, *bk, *bv, *bo, *ln2_w, *ln2_b, *fc1_b, *fc2_b;
    GpuMatrix *v_wq, *v_wk, *v_wv, *v_wo, *fc1, *fc2;
    GpuMatrix linear_1, linear_2;
    float *b1, *b2, *image_newline;
    GpuMatrix embed_tokens, lm_head;
    float *attn_norm, *ffn_norm, *final_norm;
    GpuMatrix *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
} GpuWeights;

typedef struct GpuModel GpuModel;

#ifdef __cplusplus
extern "C" {
#endif
// device half
GpuModel* gpu_create(const GpuDims* d);                      // picks device 0, starts cuBLAS
void gpu_destroy(GpuModel* g);                               // frees everything it allocated
GpuWeights* gpu_weights(GpuModel* g);                        // for the loader to fill
float* gpu_upload(GpuModel* g, const void* host, size_t bytes);
GpuMatrix gpu_upload_matrix(GpuModel* g, int type, int rows, int cols, int group, const void* data,
                            const float* scales);
size_t gpu_bytes_allocated(const GpuModel* g);
size_t gpu_memory_free(void);                                // bytes the device has free now
void gpu_set_progress(GpuModel* g, void (*fn)(double done, double total));  // vision progress, in views
const char* gpu_device_name(void);
void gpu_build_state(GpuModel* g, int ctx, int max_rows);
void gpu_free_state(GpuModel* g);
void gpu_video_features(GpuModel* g, const float* pixels, int F, float* vision_features, float* video_features);
void gpu_image_features(GpuModel* g, const float* pixels, int n_views, int tile_cols, int top, int n_r, int left,
                        int n_c, float* vision_features, float* rows);
void gpu_prefill(GpuModel* g, const float* embeds, int T, int pos, float* all_logits, float* logits);
void gpu_decode_step(GpuModel* g, int token, int pos, float* logits);
// host half: base.c's fatal(), for the device half's errors
void llava_cuda_fatal(const char* fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
// ============================================================================
// The device half (nvcc)

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA_CHECK(call) cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cublas_check((call), #call, __FILE__, __LINE__)
#define LAUNCH_CHECK() cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

static void cuda_check(cudaError_t e, const char* call, const char* file, int line) {
    if (e != cudaSuccess) llava_cuda_fatal("CUDA: %s failed at %s:%d: %s", call, file, line, cudaGetErrorString(e));
}

static void cublas_check(cublasStatus_t s, const char* call, const char* file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS)
        llava_cuda_fatal("cuBLAS: %s failed at %s:%d: status %d", call, file, line, (int)s);
}

static int blocks_for(size_t n, int threads) { return (int)((n + threads - 1) / threads); }

#define MAX_ALLOCS 4096  // device buffers a model can own (7B: ~250 weights + scratch)

struct GpuModel {
    GpuDims d;
    GpuWeights w;
    cublasHandle_t blas;
    void* allocs[MAX_ALLOCS];  // everything gpu_alloc handed out, freed by gpu_destroy
    size_t alloc_bytes[MAX_ALLOCS];
    int n_allocs;
    // the LLM's state (gpu_build_state), as llava.c's RunState
    int ctx, max_rows, kv_bf16;
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2, *logits, *all_logits;
    void *key_cache, *value_cache;
    float *inv_freq, *rope_cos, *rope_sin;
    float* part;  // decode attention's per-chunk partial results (n_heads, chunks, head_dim + 2)
    size_t part_elems;
    void (*progress)(double done, double total);  // the host's progress line (NULL: none)
    // a bf16 copy of a GEMM's activations (grown on demand)
    uint16_t* xbf;
    size_t xbf_elems;
};

static void* gpu_alloc(GpuModel* g, size_t bytes) {
    if (g->n_allocs == MAX_ALLOCS) llava_cuda_fatal("CUDA: more than %d device buffers", MAX_ALLOCS);
    void* p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        llava_cuda_fatal("CUDA: out of GPU memory allocating %.2f GB (%.2f GB already held, %.2f of %.2f GB free): %s",
                         bytes / 1e9, gpu_bytes_allocated(g) / 1e9, free_b / 1e9, total_b / 1e9, cudaGetErrorString(e));
    }
    g->allocs[g->n_allocs] = p;
    g->alloc_bytes[g->n_allocs++] = bytes;
    return p;
}

static void gpu_release(GpuModel* g, void* p) {  // frees one buffer of gpu_alloc's (NULL: nothing)
    if (!p) return;
    for (int i = 0; i < g->n_allocs; i++)
        if (g->allocs[i] == p) {
            CUDA_CHECK(cudaFree(p));
            g->allocs[i] = g->allocs[--g->n_allocs];
            g->alloc_bytes[i] = g->alloc_bytes[g->n_allocs];
            return;
        }
    llava_cuda_fatal("internal: freeing a device buffer that was not allocated here");
}

static float* gpu_floats(GpuModel* g, size_t n) { return (float*)gpu_alloc(g, n * sizeof(float)); }

extern "C" size_t gpu_bytes_allocated(const GpuModel* g) {
    size_t n = 0;
    for (int i = 0; i < g->n_allocs; i++) n += g->alloc_bytes[i];
    return n;
}

extern "C" size_t gpu_memory_free(void) {
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return free_b;
}

extern "C" void gpu_set_progress(GpuModel* g, void (*fn)(double done, double total)) { g->progress = fn; }

extern "C" const char* gpu_device_name(void) {
    static cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    return prop.name;
}

extern "C" GpuModel* gpu_create(const GpuDims* d) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
        llava_cuda_fatal("CUDA: no GPU found (cudaGetDeviceCount: %s, %d devices); ./llava runs on the CPU",
                         e != cudaSuccess ? cudaGetErrorString(e) : "ok", n);
    CUDA_CHECK(cudaSetDevice(0));
    GpuModel* g = (GpuModel*)calloc(1, sizeof(GpuModel));
    if (!g) llava_cuda_fatal("out of memory");
    g->d = *d;
    CUBLAS_CHECK(cublasCreate(&g->blas));
    return g;
}

extern "C" void gpu_destroy(GpuModel* g) {
    while (g->n_allocs > 0) gpu_release(g, g->allocs[g->n_allocs - 1]);
    CUBLAS_CHECK(cublasDestroy(g->blas));
    GpuMatrix* stacks[] = {g->w.v_wq, g->w.v_wk, g->w.v_wv, g->w.v_wo, g->w.fc1, g->w.fc2, g->w.wq, g->w.wk,
                           g->w.wv, g->w.wo, g->w.w_gate, g->w.w_up, g->w.w_down};
    for (size_t i = 0; i < sizeof(stacks) / sizeof(stacks[0]); i++) free(stacks[i]);
    free(g);
}

extern "C" GpuWeights* gpu_weights(GpuModel* g) { return &g->w; }

extern "C" float* gpu_upload(GpuModel* g, const void* host, size_t bytes) {
    void* p = gpu_alloc(g, bytes);
    CUDA_CHECK(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice));
    return (float*)p;
}

// ----------------------------------------------------------------------------
// Reductions (a warp's 32 lanes, a block's warps) and bf16

__device__ static float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The sum of v over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
__device__ static float block_sum(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < n_warps ? partial[lane] : 0.0f;
    return warp_sum(v);
}

__device__ static float bf16_bits_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

// round to nearest even, as base.c's f32_to_bf16 (and a NaN stays a NaN)
__device__ static uint16_t f32_to_bf16_bits(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

__global__ static void to_bf16_kernel(uint16_t* out, const float* x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16_bits(x[i]);
}

// q8 -> bf16 at load: w = q * s (exact in f32), then rounded to bf16.
__global__ static void dequantize_q8_kernel(uint16_t* out, const int8_t* q, const float* s, size_t n, int group) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16_bits((float)q[i] * s[i / group]);
}

// A matrix on the device, data uninitialised (the bench fills it with random numbers).
static GpuMatrix gpu_new_matrix(GpuModel* g, int type, int rows, int cols, int group) {
    GpuMatrix m = {type, rows, cols, group, NULL, NULL, NULL};
    size_t n = (size_t)rows * cols, elem = type == 0 ? 4 : type == 1 ? 2 : 1;
    m.data = gpu_alloc(g, n * elem);
    if (type == 2) m.scales = gpu_floats(g, n / group);
    if (type == 1) m.bf16 = (uint16_t*)m.data;
    if (type == 2) m.bf16 = (uint16_t*)gpu_alloc(g, n * sizeof(uint16_t));
    return m;
}

// q8: the bf16 copy the GEMMs read, from data and scales (after they are filled).
static void gpu_finish_matrix(GpuMatrix* m) {
    if (m->type != 2) return;
    size_t n = (size_t)m->rows * m->cols;
    dequantize_q8_kernel<<<blocks_for(n, 256), 256>>>(m->bf16, (const int8_t*)m->data, m->scales, n, m->group);
    LAUNCH_CHECK();
}

extern "C" GpuMatrix gpu_upload_matrix(GpuModel* g, int type, int rows, int cols, int group, const void* data,
                                       const float* scales) {
    GpuMatrix m = gpu_new_matrix(g, type, rows, cols, group);
    size_t n = (size_t)rows * cols, elem = type == 0 ? 4 : type == 1 ? 2 : 1;
    CUDA_CHECK(cudaMemcpy(m.data, data, n * elem, cudaMemcpyHostToDevice));
    if (type == 2) CUDA_CHECK(cudaMemcpy(m.scales, scales, n / group * sizeof(float), cudaMemcpyHostToDevice));
    gpu_finish_matrix(&m);
    return m;
}

// ----------------------------------------------------------------------------
// Matmul: y (T, rows) = x (T, cols) W^T

// GEMV_ROWS output rows per warp, GEMV_WARPS warps per block. Each lane reads 16 bytes of each row per
// step (f32: 4 weights, bf16: 8, q8: 16 + their group's scale) and the x values they meet once, for all
// GEMV_ROWS rows (x is re-read per row otherwise, 4x the weight bytes for q8); a warp streams 512
// contiguous bytes per row per step, and several steps are in flight (unrolled): decode is a read of
// every weight, and this is where its bandwidth is won. Rows whose width is not a multiple of the
// vector (or q8 groups smaller than it) take the scalar loop. f32 accumulation, then warp sums.
#define GEMV_WARPS 4
#define GEMV_ROWS 2

template <int TYPE> struct GemvVec;  // how many weights one lane reads per step, and their dot with x
template <> struct GemvVec<0> {
    static constexpr int N = 4;
    __device__ static float dot(const GpuMatrix& w, int row, int i, const float* x) {
        float4 v = *(const float4*)((const float*)w.data + (size_t)row * w.cols + i);
        return v.x * x[0] + v.y * x[1] + v.z * x[2] + v.w * x[3];
    }
};
template <> struct GemvVec<1> {
    static constexpr int N = 8;
    __device__ static float dot(const GpuMatrix& w, int row, int i, const float* x) {
        uint4 v = *(const uint4*)((const uint16_t*)w.data + (size_t)row * w.cols + i);
        return __uint_as_float(v.x << 16) * x[0] + __uint_as_float(v.x & 0xffff0000u) * x[1] +
               __uint_as_float(v.y << 16) * x[2] + __uint_as_float(v.y & 0xffff0000u) * x[3] +
               __uint_as_float(v.z << 16) * x[4] + __uint_as_float(v.z & 0xffff0000u) * x[5] +
               __uint_as_float(v.w << 16) * x[6] + __uint_as_float(v.w & 0xffff0000u) * x[7];
    }
};
template <> struct GemvVec<2> {  // 16 int8 weights of one group (group % 16 == 0): sum q x, then * s
    static constexpr int N = 16;
    __device__ static float dot(const GpuMatrix& w, int row, int i, const float* x) {
        // the group's scale: (row * cols + i) / group = row * (cols / group) + i / group, in 32-bit
        // arithmetic (a 64-bit division is a long software routine on the GPU, once per 16 weights)
        float scale = w.scales[(size_t)row * (unsigned)(w.cols / w.group) + (unsigned)i / (unsigned)w.group];
        int4 v = *(const int4*)((const int8_t*)w.data + (size_t)row * w.cols + i);
        const int words[4] = {v.x, v.y, v.z, v.w};
        float sum = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++)
            sum += (float)(int8_t)(words[k]) * x[4 * k] + (float)(int8_t)(words[k] >> 8) * x[4 * k + 1] +
                   (float)(int8_t)(words[k] >> 16) * x[4 * k + 2] + (float)(int8_t)(words[k] >> 24) * x[4 * k + 3];
        return sum * scale;
    }
};

__device__ static float weight_at(const GpuMatrix& w, size_t j) {
    return w.type == 0 ? ((const float*)w.data)[j]
         : w.type == 1 ? bf16_bits_to_f32(((const uint16_t*)w.data)[j])
                       : ((const int8_t*)w.data)[j] * w.scales[j / w.group];
}

// sums[r] = W[row0 + r] . x for r < GEMV_ROWS (rows past the end: 0), summed over the warp (every lane
// gets them). vec: the rows allow TYPE's vector loads.
template <int TYPE> __device__ static void row_dots(const GpuMatrix& w, int row0, const float* x, bool vec, float* sums) {
    const int N = GemvVec<TYPE>::N;
    int lane = threadIdx.x % 32, n_rows = min(GEMV_ROWS, w.rows - row0);
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) sums[r] = 0.0f;
    if (vec) {
#pragma unroll 4
        for (int i = lane * N; i < w.cols; i += 32 * N) {
            float xv[N];
#pragma unroll
            for (int k = 0; k < N; k += 4) *(float4*)(xv + k) = *(const float4*)(x + i + k);
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++)
                if (r < n_rows) sums[r] += GemvVec<TYPE>::dot(w, row0 + r, i, xv);
        }
    } else {
        for (int i = lane; i < w.cols; i += 32)
            for (int r = 0; r < n_rows; r++) sums[r] += weight_at(w, (size_t)(row0 + r) * w.cols + i) * x[i];
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) sums[r] = warp_sum(sums[r]);
}

// y = W x (accumulate = 0) or y += W x (1: the residual add of decode, fused), for up to GEMV_MAX_JOBS
// matrices that read the same x in one launch (decode's q, k and v projections): the blocks are dealt
// out to the matrices in order, the rows of a block all in one matrix.
#define GEMV_MAX_JOBS 3
typedef struct {
    int n;                                 // matrices
    GpuMatrix w[GEMV_MAX_JOBS];
    float* y[GEMV_MAX_JOBS];
    int first_block[GEMV_MAX_JOBS + 1];    // blocks [first_block[i], first_block[i + 1]) are matrix i's
} GemvJobs;

template <int TYPE> __global__ static void gemv_kernel(GemvJobs jobs, const float* x, int accumulate, bool vec) {
    int job = 0;
    while (job + 1 < jobs.n && (int)blockIdx.x >= jobs.first_block[job + 1]) job++;
    const GpuMatrix& w = jobs.w[job];
    float* y = jobs.y[job];
    int row0 = ((blockIdx.x - jobs.first_block[job]) * GEMV_WARPS + threadIdx.x / 32) * GEMV_ROWS;
    if (row0 >= w.rows) return;
    float sums[GEMV_ROWS];
    row_dots<TYPE>(w, row0, x, vec, sums);
    if (threadIdx.x % 32 != 0) return;
    for (int r = 0; r < GEMV_ROWS && row0 + r < w.rows; r++)
        y[row0 + r] = accumulate ? y[row0 + r] + sums[r] : sums[r];
}

// The Llama MLP's first half for one token: y = silu(W_gate x) * (W_up x), the same rows of both per warp.
template <int TYPE> __global__ static void gemv_swiglu_kernel(float* y, const float* x, GpuMatrix wg, GpuMatrix wu, bool vec) {
    int row0 = (blockIdx.x * GEMV_WARPS + threadIdx.x / 32) * GEMV_ROWS;
    if (row0 >= wg.rows) return;
    float gate[GEMV_ROWS], up[GEMV_ROWS];
    row_dots<TYPE>(wg, row0, x, vec, gate);
    row_dots<TYPE>(wu, row0, x, vec, up);
    if (threadIdx.x % 32 != 0) return;
    for (int r = 0; r < GEMV_ROWS && row0 + r < wg.rows; r++) y[row0 + r] = gate[r] / (1.0f + expf(-gate[r])) * up[r];
}

static bool gemv_vectorizable(const GpuMatrix* w) {
    int n = w->type == 0 ? 4 : w->type == 1 ? 8 : 16;
    return w->cols % n == 0 && (w->type != 2 || w->group % n == 0);
}

// y_i = W_i x (or +=) for the n matrices of ws (same type and width), one launch.
static void gpu_gemv_n(int n, float* const* ys, const float* x, const GpuMatrix* const* ws, int accumulate) {
    GemvJobs jobs;
    memset(&jobs, 0, sizeof(jobs));
    jobs.n = n;
    bool vec = true;
    for (int i = 0; i < n; i++) {
        jobs.w[i] = *ws[i];
        jobs.y[i] = ys[i];
        jobs.first_block[i + 1] = jobs.first_block[i] + blocks_for(ws[i]->rows, GEMV_WARPS * GEMV_ROWS);
        vec = vec && gemv_vectorizable(ws[i]);
    }
    int type = ws[0]->type, blocks = jobs.first_block[n], threads = GEMV_WARPS * 32;
    if (type == 0) gemv_kernel<0><<<blocks, threads>>>(jobs, x, accumulate, vec);
    else if (type == 1) gemv_kernel<1><<<blocks, threads>>>(jobs, x, accumulate, vec);
    else gemv_kernel<2><<<blocks, threads>>>(jobs, x, accumulate, vec);
    LAUNCH_CHECK();
}

static void gpu_gemv(float* y, const float* x, const GpuMatrix* w, int accumulate) { gpu_gemv_n(1, &y, x, &w, accumulate); }

static void gpu_gemv_swiglu(float* y, const float* x, const GpuMatrix* wg, const GpuMatrix* wu) {
    int blocks = blocks_for(wg->rows, GEMV_WARPS * GEMV_ROWS), threads = GEMV_WARPS * 32;
    bool vec = gemv_vectorizable(wg);
    if (wg->type == 0) gemv_swiglu_kernel<0><<<blocks, threads>>>(y, x, *wg, *wu, vec);
    else if (wg->type == 1) gemv_swiglu_kernel<1><<<blocks, threads>>>(y, x, *wg, *wu, vec);
    else gemv_swiglu_kernel<2><<<blocks, threads>>>(y, x, *wg, *wu, vec);
    LAUNCH_CHECK();
}

// The bf16 copy of x that a tensor-core GEMM reads.
static uint16_t* gpu_x_bf16(GpuModel* g, const float* x, size_t n) {
    if (n > g->xbf_elems) {
        gpu_release(g, g->xbf);
        g->xbf = (uint16_t*)gpu_alloc(g, n * sizeof(uint16_t));
        g->xbf_elems = n;
    }
    to_bf16_kernel<<<blocks_for(n, 256), 256>>>(g->xbf, x, n);
    LAUNCH_CHECK();
    return g->xbf;
}

// matmul.c's matmul(): GEMV for one row, cuBLAS for more. cuBLAS is column-major: y^T (rows x T) =
// W^T (as stored, row-major (rows, cols) = column-major (cols, rows), so op T) times x^T (cols x T).
static void gpu_matmul(GpuModel* g, float* y, const float* x, const GpuMatrix* w, int T) {
    if (T == 1) {
        gpu_gemv(y, x, w, 0);
        return;
    }
    const float one = 1.0f, zero = 0.0f;
    if (w->type == 0) {  // f32: exact f32 products, no TF32 (the fidelity path)
        CUBLAS_CHECK(cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, T, w->cols, &one, w->data, CUDA_R_32F,
                                  w->cols, x, CUDA_R_32F, w->cols, &zero, y, CUDA_R_32F, w->rows,
                                  CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
    } else {  // bf16 and q8: bf16 x bf16 tensor cores, f32 accumulation and output
        const uint16_t* xb = gpu_x_bf16(g, x, (size_t)T * w->cols);
        CUBLAS_CHECK(cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, T, w->cols, &one, w->bf16, CUDA_R_16BF,
                                  w->cols, xb, CUDA_R_16BF, w->cols, &zero, y, CUDA_R_32F, w->rows,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

// ----------------------------------------------------------------------------
// Blocks: llava.c's norms, residual adds, RoPE, KV store, activations

#define NORM_THREADS 256

// torch.nn.LayerNorm over each row of n: biased variance, f32 (one block per row; in place is fine).
__global__ static void layernorm_kernel(float* out, const float* x, const float* w, const float* b, int n, float eps) {
    const float* xr = x + (size_t)blockIdx.x * n;
    float* o = out + (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
    float mean = block_sum(s) / n;
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
    float r = (float)(1.0 / sqrt((double)(block_sum(v) / n) + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = ((xr[i] - mean) * r) * w[i] + b[i];
}

// LlamaRMSNorm: y = w * (x / sqrt(mean(x^2) + eps)).
__global__ static void rmsnorm_kernel(float* out, const float* x, const float* w, int n, float eps) {
    const float* xr = x + (size_t)blockIdx.x * n;
    float* o = out + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    float r = (float)(1.0 / sqrt((double)block_sum(ss) / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = w[i] * (xr[i] * r);
}

// llava.c's norm_rows: LayerNorm (b != NULL) or RMSNorm (b == NULL) of each of T rows of n.
static void gpu_norm_rows(float* y, const float* x, const float* w, const float* b, int T, int n, float eps) {
    if (b) layernorm_kernel<<<T, NORM_THREADS>>>(y, x, w, b, n, eps);
    else rmsnorm_kernel<<<T, NORM_THREADS>>>(y, x, w, n, eps);
    LAUNCH_CHECK();
}

// y += x + b over (T, n): a bias (x NULL), a residual (b NULL), or both, as llava.c's add_rows.
__global__ static void add_rows_kernel(float* y, const float* x, const float* b, size_t total, int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] += (x ? x[i] : 0.0f) + (b ? b[i % n] : 0.0f);
}

static void gpu_add_rows(float* y, const float* x, const float* b, int T, int n) {
    size_t total = (size_t)T * n;
    add_rows_kernel<<<blocks_for(total, 256), 256>>>(y, x, b, total, n);
    LAUNCH_CHECK();
}

// kernels.c's activations, the same formulas (expf, erff: accurate, not the fast intrinsics).
enum { GPU_QUICK_GELU, GPU_GELU, GPU_SILU_MUL };
__global__ static void activation_kernel(float* x, const float* y, size_t n, int act) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (act == GPU_QUICK_GELU) x[i] = v / (1.0f + expf(-1.702f * v));
    else if (act == GPU_GELU) x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    else x[i] = v / (1.0f + expf(-v)) * y[i];
}

static void gpu_activation(float* x, const float* y, size_t n, int act) {
    activation_kernel<<<blocks_for(n, 256), 256>>>(x, y, n, act);
    LAUNCH_CHECK();
}

// cos and sin of (pos + t) * inv_freq[j] for the T rows in flight (llava.c's rope_angles; the angle is
// rounded to f32 first, as HF computes inv_freq @ position_ids in f32).
__global__ static void rope_angles_kernel(float* cos_t, float* sin_t, const float* inv_freq, int T, int pos, int half) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * half) return;
    float angle = (float)(pos + i / half) * inv_freq[i % half];
    cos_t[i] = cosf(angle);
    sin_t[i] = sinf(angle);
}

// RoPE (HF rotate_half layout: dims j and j + head_dim/2 of each head rotate together) on the queries
// in place and on the keys, and the rotated keys and the values into the layer's cache (n_kv, ctx, hd)
// at positions pos.. (llava.c's rope + store_kv, one launch). One thread per (row, head, j < hd/2) of
// the n_heads query heads followed by the n_kv key/value heads.
__global__ static void rope_store_kernel(float* q, const float* k, const float* v, void* kc, void* vc,
                                         const float* cos_t, const float* sin_t, int T, int n_heads, int n_kv,
                                         int hd, int ctx, int pos, int bf16) {
    int half = hd / 2, heads = n_heads + n_kv;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * heads * half) return;
    int j = (int)(i % half), h = (int)(i / half % heads), t = (int)(i / ((size_t)heads * half));
    float c = cos_t[(size_t)t * half + j], s = sin_t[(size_t)t * half + j];
    if (h < n_heads) {
        float* row = q + ((size_t)t * n_heads + h) * hd;
        float a = row[j], b = row[j + half];
        row[j] = a * c - b * s;
        row[j + half] = b * c + a * s;
        return;
    }
    h -= n_heads;
    const float* kr = k + ((size_t)t * n_kv + h) * hd;
    const float* vr = v + ((size_t)t * n_kv + h) * hd;
    float a = kr[j], b = kr[j + half];
    float k0 = a * c - b * s, k1 = b * c + a * s;
    size_t dst = ((size_t)h * ctx + pos + t) * hd + j;
    if (bf16) {
        ((uint16_t*)kc)[dst] = f32_to_bf16_bits(k0);
        ((uint16_t*)kc)[dst + half] = f32_to_bf16_bits(k1);
        ((uint16_t*)vc)[dst] = f32_to_bf16_bits(vr[j]);
        ((uint16_t*)vc)[dst + half] = f32_to_bf16_bits(vr[j + half]);
    } else {
        ((float*)kc)[dst] = k0;
        ((float*)kc)[dst + half] = k1;
        ((float*)vc)[dst] = vr[j];
        ((float*)vc)[dst + half] = vr[j + half];
    }
}

// Row `token` of embed_tokens as f32 (llava.c's dequantize_row), straight into the residual stream.
__global__ static void embed_kernel(float* out, GpuMatrix w, int token) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < w.cols) out[i] = weight_at(w, (size_t)token * w.cols + i);
}

// ----------------------------------------------------------------------------
// Attention, flash-style: softmax(q k^T * scale [+ causal mask]) v without a score matrix.
//
// A block takes ATT_WARPS queries of one head (one warp each) and walks the keys in tiles of 32: the
// block loads a tile of K and V into shared memory (as f32, from an f32 or bf16 cache), lane j of every
// warp scores key j of the tile against its query, and the warp folds the tile into its running max m,
// sum l and output accumulator (online softmax: acc and l are rescaled by exp(m_old - m_new)). Lane
// `lane` owns output dims lane, lane + 32, ... (head_dim <= ATT_MAX_HD). Under the causal mask, query t
// sees keys 0..causal_offset + t; the block stops at the last key its last query sees.
#define ATT_WARPS 8
#define ATT_TILE 32
#define ATT_MAX_HD 128

typedef struct {
    float* out;
    const float* q;
    const void* k;
    const void* v;
    int T, n_heads, n_kv_heads, head_dim;
    int q_stride, out_stride;  // floats between rows of q and of out
    int kv_stride;             // elements between positions of k and v
    size_t kv_head_stride;     // elements between kv heads
    int kv_bf16;
    int causal_offset;         // -1: no mask (CLIP); else query t sees keys 0..causal_offset + t
    int lowp;                  // 1: bf16 rounding of q, k, v and p is acceptable (bf16 and q8 weights)
    int n_keys;
    float scale;
    size_t q_batch, kv_batch, out_batch;  // elements between the views of a batch (blockIdx.z)
} GpuAttn;

__global__ static void attention_kernel(GpuAttn a) {
    extern __shared__ float smem[];
    int hd = a.head_dim, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int h = blockIdx.y, b = blockIdx.z, kvh = h / (a.n_heads / a.n_kv_heads);
    int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    int active = t < a.T;
    float* sq = smem;                      // (ATT_WARPS, hd) the queries, pre-scaled
    float* sk = sq + ATT_WARPS * hd;       // (ATT_TILE, hd + 1) keys (+1: no bank conflicts for lane j)
    float* sv = sk + ATT_TILE * (hd + 1);  // (ATT_TILE, hd) values
    const float* qrow = a.q + b * a.q_batch + (size_t)t * a.q_stride + (size_t)h * hd;
    for (int d = lane; d < hd; d += 32) sq[warp * hd + d] = active ? qrow[d] * a.scale : 0.0f;
    int t_last = min(a.T - 1, t0 + ATT_WARPS - 1);
    int n_block = a.causal_offset < 0 ? a.n_keys : min(a.n_keys, a.causal_offset + t_last + 1);
    int n_mine = a.causal_offset < 0 ? a.n_keys : min(a.n_keys, a.causal_offset + t + 1);
    size_t kv_base = b * a.kv_batch + (size_t)kvh * a.kv_head_stride;
    float m = -INFINITY, l = 0.0f, acc[ATT_MAX_HD / 32];
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) acc[i] = 0.0f;
    for (int k0 = 0; k0 < n_block; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile is consumed (and sq written, the first time)
        for (int i = threadIdx.x; i < ATT_TILE * hd; i += blockDim.x) {
            int j = i / hd, d = i % hd, key = k0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (key < n_block) {
                size_t off = kv_base + (size_t)key * a.kv_stride + d;
                kv = a.kv_bf16 ? bf16_bits_to_f32(((const uint16_t*)a.k)[off]) : ((const float*)a.k)[off];
                vv = a.kv_bf16 ? bf16_bits_to_f32(((const uint16_t*)a.v)[off]) : ((const float*)a.v)[off];
            }
            sk[j * (hd + 1) + d] = kv;
            sv[j * hd + d] = vv;
        }
        __syncthreads();
        if (!active) continue;
        int key = k0 + lane;
        float s = -INFINITY;
        if (key < n_mine) {
            s = 0.0f;
            for (int d = 0; d < hd; d++) s += sq[warp * hd + d] * sk[lane * (hd + 1) + d];
        }
        float m_tile = warp_max(s);
        if (m_tile == -INFINITY) continue;  // every key of this tile is masked for this query
        float m_new = fmaxf(m, m_tile);
        float p = expf(s - m_new);           // 0 for a masked key
        float corr = expf(m - m_new);        // 0 the first time (m = -inf)
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++) acc[i] *= corr;
        for (int j = 0; j < ATT_TILE; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
            for (int i = 0; i < ATT_MAX_HD / 32; i++) {
                int d = lane + 32 * i;
                if (d < hd) acc[i] += pj * sv[j * hd + d];
            }
        }
        m = m_new;
    }
    if (!active) return;
    float* orow = a.out + b * a.out_batch + (size_t)t * a.out_stride + (size_t)h * hd;
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) {
        int d = lane + 32 * i;
        if (d < hd) orow[d] = acc[i] / l;
    }
}

// One query per head (decode), split over the keys (flash-decoding): the block (chunk c, head h) takes
// keys c*DEC_CHUNK.. of the cache; thread j scores key j against the query (the query in shared memory,
// the key row read whole by its thread, so the loads of all keys are in flight at once), the block
// takes the chunk's max m_c and sum l_c of exp(s - m_c), then each warp adds exp(s - m_c) v over a
// quarter of the keys (lanes over head dims, coalesced rows) and the warps' sums are added: acc_c.
// attention_merge then combines the chunks of each head: out = sum_c acc_c e^(m_c - M) / sum_c l_c
// e^(m_c - M), M = max m_c. Enough blocks to fill the card at T = 1, which a query-parallel kernel
// cannot do, and no long chains of dependent loads (decode is latency-bound here, not arithmetic-bound).
#define DEC_CHUNK 128
#define DEC_THREADS DEC_CHUNK  // a thread per key of the chunk
#define DEC_WARPS (DEC_THREADS / 32)

__device__ static float block_max(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < n_warps ? partial[lane] : -INFINITY;
    return warp_max(v);
}

__device__ static float cache_at(const void* c, size_t i, int bf16) {
    return bf16 ? bf16_bits_to_f32(((const uint16_t*)c)[i]) : ((const float*)c)[i];
}

__global__ static void attention_decode_kernel(GpuAttn a, float* part) {
    extern __shared__ float smem[];
    int hd = a.head_dim, h = blockIdx.y, c = blockIdx.x, n_chunks = gridDim.x;
    int kvh = h / (a.n_heads / a.n_kv_heads), warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int k0 = c * DEC_CHUNK, n = min(a.n_keys, k0 + DEC_CHUNK) - k0;
    float* sq = smem;                 // (hd) the query, pre-scaled
    float* ss = sq + hd;              // (DEC_CHUNK) exp(s - m)
    float* sacc = ss + DEC_CHUNK;     // (DEC_WARPS, hd) each warp's share of sum p v
    for (int d = threadIdx.x; d < hd; d += blockDim.x) sq[d] = a.q[(size_t)h * hd + d] * a.scale;
    __syncthreads();
    const size_t kv_base = (size_t)kvh * a.kv_head_stride + (size_t)k0 * a.kv_stride;
    int j = threadIdx.x;
    float s = -INFINITY;
    if (j < n) {
        s = 0.0f;
#pragma unroll 8
        for (int d = 0; d < hd; d++) s += sq[d] * cache_at(a.k, kv_base + (size_t)j * a.kv_stride + d, a.kv_bf16);
    }
    float m = block_max(s);
    float p = j < n ? expf(s - m) : 0.0f;
    ss[j] = p;
    float l = block_sum(p);  // (its __syncthreads also publishes ss)
    float acc[ATT_MAX_HD / 32];
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++) acc[i] = 0.0f;
#pragma unroll 4
    for (int jj = warp; jj < n; jj += DEC_WARPS) {
        float pj = ss[jj];
        size_t row = kv_base + (size_t)jj * a.kv_stride;
#pragma unroll
        for (int i = 0; i < ATT_MAX_HD / 32; i++)
            if (lane + 32 * i < hd) acc[i] += pj * cache_at(a.v, row + lane + 32 * i, a.kv_bf16);
    }
#pragma unroll
    for (int i = 0; i < ATT_MAX_HD / 32; i++)
        if (lane + 32 * i < hd) sacc[warp * hd + lane + 32 * i] = acc[i];
    __syncthreads();
    float* out = part + ((size_t)h * n_chunks + c) * (hd + 2);  // (m, l, acc[hd])
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.0f;
        for (int w = 0; w < DEC_WARPS; w++) sum += sacc[w * hd + d];
        out[2 + d] = sum;
    }
    if (threadIdx.x == 0) { out[0] = m; out[1] = l; }
}

__global__ static void attention_merge_kernel(float* o, const float* part, int n_chunks, int hd) {
    int h = blockIdx.x;
    const float* p = part + (size_t)h * n_chunks * (hd + 2);
    float M = -INFINITY;
    for (int c = 0; c < n_chunks; c++) M = fmaxf(M, p[(size_t)c * (hd + 2)]);
    float L = 0.0f;
    for (int c = 0; c < n_chunks; c++) L += p[(size_t)c * (hd + 2) + 1] * expf(p[(size_t)c * (hd + 2)] - M);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f;
        for (int c = 0; c < n_chunks; c++) acc += p[(size_t)c * (hd + 2) + 2 + d] * expf(p[(size_t)c * (hd + 2)] - M);
        o[(size_t)h * hd + d] = acc / L;
    }
}

// Attention of many queries on the tensor cores, for bf16 and q8 weights (the LLM's prompt over its bf16
// cache, causal; the CLIP tower's views, f32 q/k/v, no mask): the same online softmax as
// attention_kernel, on tiles of FA_Q queries x FA_K keys, with q k^T and p v as 16x16x16 bf16 MMAs (f32
// accumulation). A block holds FA_Q = 64 queries of one head of one view (a warp per 16); per key tile
// each warp computes its 16 x 64 scores S into shared memory, takes two lanes per query row for the
// softmax (max, exp, rescale of its output row), writes p as bf16, and adds p V to its output rows O,
// which live in shared memory as f32 between tiles (wmma's register layout is opaque, so the per-row
// rescale happens there). Rounding: q (pre-scaled), k, v (already bf16 in the LLM's cache) and p to
// bf16; sums in f32. f32 weights never come here: their fidelity path keeps attention_kernel's f32.
#define FA_Q 64
#define FA_K 64
#define FA_WARPS (FA_Q / 16)
#define FA_PAD 8  // bf16 row padding (wmma wants leading dimensions of 8 bf16 / 4 floats; it also skews banks)

typedef struct { int ldh, lds, ldp, ldo; size_t q_off, k_off, v_off, s_off, p_off, o_off, bytes; } FaLayout;

__host__ __device__ static FaLayout fa_layout(int hd) {
    FaLayout f;
    f.ldh = hd + FA_PAD;      // Q, K, V rows (bf16)
    f.lds = FA_K + 4;         // S rows (f32)
    f.ldp = FA_K + FA_PAD;    // P rows (bf16)
    f.ldo = hd + 4;           // O rows (f32)
    f.q_off = 0;
    f.k_off = f.q_off + (size_t)FA_Q * f.ldh * 2;
    f.v_off = f.k_off + (size_t)FA_K * f.ldh * 2;
    f.s_off = f.v_off + (size_t)FA_K * f.ldh * 2;
    f.p_off = f.s_off + (size_t)FA_Q * f.lds * 4;
    f.o_off = f.p_off + (size_t)FA_Q * f.ldp * 2;
    f.bytes = f.o_off + (size_t)FA_Q * f.ldo * 4;
    return f;
}

// 8 f32 (32-byte aligned) -> 8 bf16, round to nearest even, packed as the 16 bytes of a shared-memory row.
__device__ static uint4 f32x8_to_bf16x8(const float* x) {
    float4 lo = *(const float4*)x, hi = *(const float4*)(x + 4);
    const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = (uint32_t)f32_to_bf16_bits(v[2 * i]) | (uint32_t)f32_to_bf16_bits(v[2 * i + 1]) << 16;
    return make_uint4(w[0], w[1], w[2], w[3]);
}

__global__ static void attention_wmma_kernel(GpuAttn a) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    int hd = a.head_dim, h = blockIdx.y, b = blockIdx.z, kvh = h / (a.n_heads / a.n_kv_heads);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, t0 = blockIdx.x * FA_Q;
    FaLayout f = fa_layout(hd);
    const float* q = a.q + b * a.q_batch;
    __nv_bfloat16* sQ = (__nv_bfloat16*)(fa_smem + f.q_off);
    __nv_bfloat16* sK = (__nv_bfloat16*)(fa_smem + f.k_off);
    __nv_bfloat16* sV = (__nv_bfloat16*)(fa_smem + f.v_off);
    float* sS = (float*)(fa_smem + f.s_off);
    __nv_bfloat16* sP = (__nv_bfloat16*)(fa_smem + f.p_off);
    float* sO = (float*)(fa_smem + f.o_off);
    for (int i = threadIdx.x; i < FA_Q * hd; i += blockDim.x) {  // the queries, scaled, as bf16; O = 0
        int r = i / hd, d = i % hd, t = t0 + r;
        float qv = t < a.T ? q[(size_t)t * a.q_stride + (size_t)h * hd + d] * a.scale : 0.0f;
        sQ[r * f.ldh + d] = __float2bfloat16_rn(qv);
        sO[r * f.ldo + d] = 0.0f;
    }
    // this lane's query row (two lanes per row) and its visible keys
    int r = warp * 16 + lane / 2, half = lane % 2, t = t0 + r;
    int causal = a.causal_offset >= 0;
    int n_mine = t >= a.T ? 0 : causal ? min(a.n_keys, a.causal_offset + t + 1) : a.n_keys;
    int n_block = causal ? min(a.n_keys, a.causal_offset + min(a.T - 1, t0 + FA_Q - 1) + 1) : a.n_keys;
    float m = -INFINITY, l = 0.0f;
    size_t kv_base = b * a.kv_batch + (size_t)kvh * a.kv_head_stride;
    int vecs = hd / 8;  // pieces of 8 values (16 bytes as bf16) per K/V row
    for (int k0 = 0; k0 < n_block; k0 += FA_K) {
        __syncthreads();  // the previous tile's K and V are consumed (and sQ, sO written, the first time)
        for (int i = threadIdx.x; i < FA_K * vecs; i += blockDim.x) {
            int j = i / vecs, c = i % vecs, key = k0 + j;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (key < n_block) {
                size_t off = kv_base + (size_t)key * a.kv_stride + c * 8;
                if (a.kv_bf16) {
                    kv = *(const uint4*)((const uint16_t*)a.k + off);
                    vv = *(const uint4*)((const uint16_t*)a.v + off);
                } else {
                    kv = f32x8_to_bf16x8((const float*)a.k + off);
                    vv = f32x8_to_bf16x8((const float*)a.v + off);
                }
            }
            *(uint4*)(sK + j * f.ldh + c * 8) = kv;
            *(uint4*)(sV + j * f.ldh + c * 8) = vv;
        }
        __syncthreads();
        // S (this warp's 16 rows x FA_K keys) = Q K^T
        for (int n = 0; n < FA_K / 16; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
            wmma::fill_fragment(s, 0.0f);
            for (int kk = 0; kk < hd / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kb;
                wmma::load_matrix_sync(qa, sQ + warp * 16 * f.ldh + kk * 16, f.ldh);
                wmma::load_matrix_sync(kb, sK + n * 16 * f.ldh + kk * 16, f.ldh);
                wmma::mma_sync(s, qa, kb, s);
            }
            wmma::store_matrix_sync(sS + warp * 16 * f.lds + n * 16, s, f.lds, wmma::mem_row_major);
        }
        __syncwarp();
        // online softmax of row r over this tile: this lane takes keys half*32 .. half*32+31
        float* srow = sS + r * f.lds + half * (FA_K / 2);
        float tile_max = -INFINITY;
        for (int j = 0; j < FA_K / 2; j++)
            if (k0 + half * (FA_K / 2) + j < n_mine) tile_max = fmaxf(tile_max, srow[j]);
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        float m_new = fmaxf(m, tile_max);
        float corr = m_new == -INFINITY ? 1.0f : expf(m - m_new);  // exp(-inf) = 0 the first time
        float sum = 0.0f;
        __nv_bfloat16* prow = sP + r * f.ldp + half * (FA_K / 2);
        for (int j = 0; j < FA_K / 2; j++) {
            float p = k0 + half * (FA_K / 2) + j < n_mine ? expf(srow[j] - m_new) : 0.0f;
            prow[j] = __float2bfloat16_rn(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * corr + sum;
        m = m_new;
        float* orow = sO + r * f.ldo + half * (hd / 2);
        for (int d = 0; d < hd / 2; d++) orow[d] *= corr;
        __syncwarp();
        // O (this warp's 16 rows x hd) += P V
        for (int n = 0; n < hd / 16; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
            wmma::load_matrix_sync(o, sO + warp * 16 * f.ldo + n * 16, f.ldo, wmma::mem_row_major);
            for (int kk = 0; kk < FA_K / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vb;
                wmma::load_matrix_sync(pa, sP + warp * 16 * f.ldp + kk * 16, f.ldp);
                wmma::load_matrix_sync(vb, sV + kk * 16 * f.ldh + n * 16, f.ldh);
                wmma::mma_sync(o, pa, vb, o);
            }
            wmma::store_matrix_sync(sO + warp * 16 * f.ldo + n * 16, o, f.ldo, wmma::mem_row_major);
        }
        __syncwarp();
    }
    if (t >= a.T) return;
    float* out = a.out + b * a.out_batch + (size_t)t * a.out_stride + (size_t)h * hd + half * (hd / 2);
    const float* orow = sO + r * f.ldo + half * (hd / 2);
    for (int d = 0; d < hd / 2; d++) out[d] = orow[d] / l;
#endif
}

// Which attention kernel runs: the split-key one for a single query (decode); the tensor-core one for
// bf16 and q8 weights (unless LLAVA_CUDA_ATTN=simple, which the tests use to check one against the
// other); attention_kernel otherwise (f32 weights).
static int gpu_tensor_attention_on = -1;  // -1: not decided yet; bench_cuda sets it to time both

static int gpu_tensor_attention(void) {
    if (gpu_tensor_attention_on < 0) {
        const char* e = getenv("LLAVA_CUDA_ATTN");
        int major = 0;
        CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
        gpu_tensor_attention_on = major >= 8 && !(e && !strcmp(e, "simple"));
    }
    return gpu_tensor_attention_on;
}

static void gpu_attention(GpuModel* g, const GpuAttn* a, int batch) {
    int hd = a->head_dim;
    if (hd > ATT_MAX_HD) llava_cuda_fatal("CUDA: head_dim %d > %d is not supported", hd, ATT_MAX_HD);
    if (a->T == 1 && batch == 1 && a->causal_offset >= 0) {
        int n_chunks = (a->n_keys + DEC_CHUNK - 1) / DEC_CHUNK;
        if ((size_t)a->n_heads * n_chunks * (hd + 2) > g->part_elems)
            llava_cuda_fatal("internal: decode attention scratch too small");
        size_t smem = (size_t)(hd + DEC_CHUNK + DEC_WARPS * hd) * sizeof(float);
        attention_decode_kernel<<<dim3(n_chunks, a->n_heads), DEC_THREADS, smem>>>(*a, g->part);
        LAUNCH_CHECK();
        attention_merge_kernel<<<a->n_heads, 128>>>(a->out, g->part, n_chunks, hd);
        LAUNCH_CHECK();
        return;
    }
    int aligned = hd % 16 == 0 && a->kv_stride % 8 == 0 && a->kv_head_stride % 8 == 0 && a->kv_batch % 8 == 0;
    if (a->lowp && aligned && gpu_tensor_attention()) {
        FaLayout f = fa_layout(hd);
        static size_t opted_in = 0;  // the shared memory this kernel may take, raised once past 48 KB
        if (f.bytes > opted_in) {
            CUDA_CHECK(cudaFuncSetAttribute(attention_wmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)f.bytes));
            opted_in = f.bytes;
        }
        attention_wmma_kernel<<<dim3(blocks_for(a->T, FA_Q), a->n_heads, batch), FA_WARPS * 32, f.bytes>>>(*a);
        LAUNCH_CHECK();
        return;
    }
    size_t smem = (size_t)(ATT_WARPS * hd + ATT_TILE * (hd + 1) + ATT_TILE * hd) * sizeof(float);
    dim3 grid(blocks_for(a->T, ATT_WARPS), a->n_heads, batch);
    attention_kernel<<<grid, ATT_WARPS * 32, smem>>>(*a);
    LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// Vision tower: CLIP ViT on a batch of views (llava.c's clip_embeddings, clip_encoder_layer,
// vision_forward), the batch's activations on the device

#define VISION_BATCH 16  // views per pass of the tower (8 frames of a video go in one)

typedef struct {
    int B;  // views in this batch
    float *patches, *x, *xb, *q, *k, *v, *att, *hb;
} GpuVisionState;

static GpuVisionState gpu_build_vision_state(GpuModel* g, int max_views) {
    const GpuDims* d = &g->d;
    int gr = d->image_size / d->patch_size, n_pos = gr * gr + 1;
    size_t rows = (size_t)max_views * n_pos, D = d->v_dim;
    GpuVisionState s;
    s.B = 0;
    s.patches = gpu_floats(g, (size_t)max_views * gr * gr * d->n_channels * d->patch_size * d->patch_size);
    s.x = gpu_floats(g, rows * D);
    s.xb = gpu_floats(g, rows * D);
    s.q = gpu_floats(g, rows * D);
    s.k = gpu_floats(g, rows * D);
    s.v = gpu_floats(g, rows * D);
    s.att = gpu_floats(g, rows * D);
    s.hb = gpu_floats(g, rows * d->v_hidden_dim);
    return s;
}

static void gpu_free_vision_state(GpuModel* g, GpuVisionState* s) {
    float* bufs[] = {s->patches, s->x, s->xb, s->q, s->k, s->v, s->att, s->hb};
    for (int i = 0; i < 8; i++) gpu_release(g, bufs[i]);
}

// pixels (B, C, S, S) -> patches (B * g * g, C * P * P), each patch unrolled in (c, y, x) order.
__global__ static void im2col_kernel(float* patches, const float* pixels, int B, int C, int S, int P) {
    int g = S / P, K = C * P * P;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * g * g * K) return;
    int k = (int)(i % K), patch = (int)(i / K % ((size_t)g * g)), b = (int)(i / ((size_t)K * g * g));
    int c = k / (P * P), y = k / P % P, x = k % P, py = patch / g, px = patch % g;
    patches[i] = pixels[(((size_t)b * C + c) * S + py * P + y) * S + px * P + x];
}

// x (B, N, D) = [class_embedding, patch embeddings] + position_embedding.
__global__ static void clip_rows_kernel(float* x, const float* pe, const float* cls, const float* pos, int B, int N, int D) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * N * D) return;
    int d = (int)(i % D), t = (int)(i / D % N), b = (int)(i / ((size_t)D * N));
    float src = t == 0 ? cls[d] : pe[((size_t)b * (N - 1) + t - 1) * D + d];
    x[i] = src + pos[(size_t)t * D + d];
}

// CLIPVisionEmbeddings, then pre_layrnorm: pixels (device) -> s->x, hidden_states[0].
static void gpu_clip_embeddings(GpuModel* g, GpuVisionState* s, const float* pixels, int B) {
    const GpuDims* d = &g->d;
    int S = d->image_size, P = d->patch_size, C = d->n_channels, gr = S / P, np = gr * gr, N = np + 1, D = d->v_dim;
    size_t n = (size_t)B * np * C * P * P;
    im2col_kernel<<<blocks_for(n, 256), 256>>>(s->patches, pixels, B, C, S, P);
    LAUNCH_CHECK();
    gpu_matmul(g, s->q, s->patches, &g->w.patch_embedding, B * np);  // the stride-P conv, as a matmul
    clip_rows_kernel<<<blocks_for((size_t)B * N * D, 256), 256>>>(s->x, s->q, g->w.class_embedding,
                                                                   g->w.position_embedding, B, N, D);
    LAUNCH_CHECK();
    gpu_norm_rows(s->x, s->x, g->w.pre_ln_w, g->w.pre_ln_b, B * N, D, d->v_eps);
}

// CLIPEncoderLayer l over the B views in s->x, in place (llava.c's clip_encoder_layer). Attention reads
// q, k, v in their (view, position, v_dim) layout through strides: no regrouping per head.
static void gpu_clip_encoder_layer(GpuModel* g, GpuVisionState* s, int l, int B) {
    const GpuDims* d = &g->d;
    const GpuWeights* w = &g->w;
    int gr = d->image_size / d->patch_size, N = gr * gr + 1, D = d->v_dim, Dh = d->v_hidden_dim;
    int H = d->v_heads, hd = D / H, rows = B * N;
    gpu_norm_rows(s->xb, s->x, w->ln1_w + (size_t)l * D, w->ln1_b + (size_t)l * D, rows, D, d->v_eps);
    gpu_matmul(g, s->q, s->xb, &w->v_wq[l], rows); gpu_add_rows(s->q, NULL, w->bq + (size_t)l * D, rows, D);
    gpu_matmul(g, s->k, s->xb, &w->v_wk[l], rows); gpu_add_rows(s->k, NULL, w->bk + (size_t)l * D, rows, D);
    gpu_matmul(g, s->v, s->xb, &w->v_wv[l], rows); gpu_add_rows(s->v, NULL, w->bv + (size_t)l * D, rows, D);
    GpuAttn a = {};
    a.out = s->att; a.q = s->q; a.k = s->k; a.v = s->v;
    a.T = N; a.n_heads = H; a.n_kv_heads = H; a.head_dim = hd;
    a.q_stride = D; a.out_stride = D; a.kv_stride = D; a.kv_head_stride = hd; a.kv_bf16 = 0;
    a.causal_offset = -1; a.n_keys = N; a.scale = 1.0f / sqrtf((float)hd); a.lowp = d->weight_type != 0;
    a.q_batch = a.kv_batch = a.out_batch = (size_t)N * D;  // each view attends only to itself
    gpu_attention(g, &a, B);
    gpu_matmul(g, s->xb, s->att, &w->v_wo[l], rows);
    gpu_add_rows(s->x, s->xb, w->bo + (size_t)l * D, rows, D);
    gpu_norm_rows(s->xb, s->x, w->ln2_w + (size_t)l * D, w->ln2_b + (size_t)l * D, rows, D, d->v_eps);
    gpu_matmul(g, s->hb, s->xb, &w->fc1[l], rows);
    gpu_add_rows(s->hb, NULL, w->fc1_b + (size_t)l * Dh, rows, Dh);
    gpu_activation(s->hb, NULL, (size_t)rows * Dh, d->v_act == 0 ? GPU_QUICK_GELU : GPU_GELU);
    gpu_matmul(g, s->xb, s->hb, &w->fc2[l], rows);
    gpu_add_rows(s->x, s->xb, w->fc2_b + (size_t)l * D, rows, D);
}

// pixels (n_views, C, S, S) on the host -> features (n_views, g*g, v_dim) on the device: CLIP's selected
// layer with CLS dropped (llava.c's vision_forward, select strategy "default"), VISION_BATCH views a pass.
static void gpu_vision_forward(GpuModel* g, const float* pixels, int n_views, float* features) {
    const GpuDims* d = &g->d;
    int gr = d->image_size / d->patch_size, N = gr * gr + 1, D = d->v_dim;
    size_t per_view = (size_t)d->n_channels * d->image_size * d->image_size;
    int max_views = n_views < VISION_BATCH ? n_views : VISION_BATCH;
    GpuVisionState s = gpu_build_vision_state(g, max_views);
    float* px = gpu_floats(g, max_views * per_view);
    for (int v0 = 0; v0 < n_views; v0 += max_views) {
        int B = n_views - v0 < max_views ? n_views - v0 : max_views;
        CUDA_CHECK(cudaMemcpy(px, pixels + v0 * per_view, B * per_view * sizeof(float), cudaMemcpyHostToDevice));
        gpu_clip_embeddings(g, &s, px, B);
        for (int l = 0; l < d->v_layers_run; l++) {
            gpu_clip_encoder_layer(g, &s, l, B);
            if (g->progress) {  // only on a terminal: then waiting for each layer costs nothing that shows
                CUDA_CHECK(cudaDeviceSynchronize());
                g->progress(v0 + (double)B * (l + 1) / d->v_layers_run, n_views);
            }
        }
        for (int b = 0; b < B; b++)  // drop CLS (position 0) of every view
            CUDA_CHECK(cudaMemcpy(features + ((size_t)(v0 + b) * (N - 1)) * D, s.x + ((size_t)b * N + 1) * D,
                                  (size_t)(N - 1) * D * sizeof(float), cudaMemcpyDeviceToDevice));
    }
    gpu_release(g, px);
    gpu_free_vision_state(g, &s);
}

// ----------------------------------------------------------------------------
// Pooling, projector, anyres packing (llava.c's average_pool, multi_modal_projector, pack_image_features)

// (F, g, g, D) -> (F, g/s, g/s, D): AvgPool2d(s, s) over each frame's patch grid.
__global__ static void average_pool_kernel(float* out, const float* in, int F, int g, int s, int D) {
    int go = g / s;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)F * go * go * D) return;
    int d = (int)(i % D), j = (int)(i / D % go), r = (int)(i / ((size_t)D * go) % go), f = (int)(i / ((size_t)D * go * go));
    float sum = 0.0f;
    for (int dy = 0; dy < s; dy++)
        for (int dx = 0; dx < s; dx++) sum += in[(((size_t)f * g + r * s + dy) * g + j * s + dx) * D + d];
    out[i] = sum * (1.0f / (s * s));
}

// linear_1 -> GELU (erf) -> linear_2, (T, v_dim) -> (T, dim), all on the device.
static void gpu_multi_modal_projector(GpuModel* g, float* out, const float* in, int T) {
    int D = g->d.dim;
    float* h = gpu_floats(g, (size_t)T * D);
    gpu_matmul(g, h, in, &g->w.linear_1, T);
    gpu_add_rows(h, NULL, g->w.b1, T, D);
    gpu_activation(h, NULL, (size_t)T * D, GPU_GELU);
    gpu_matmul(g, out, h, &g->w.linear_2, T);
    gpu_add_rows(out, NULL, g->w.b2, T, D);
    gpu_release(g, h);
}

// One image's rows: the base view's g*g features, then the unpadded window (rows top..top+n_r, columns
// left..left+n_c) of the tiles' stitched (rows*g) x (cols*g) map, image_newline after each of its rows.
// One block per output row.
__global__ static void pack_image_kernel(float* out, const float* feat, const float* newline, int g, int tile_cols,
                                         int top, int left, int n_c, int D) {
    int r = blockIdx.x;
    const float* src;
    if (r < g * g) {
        src = feat + (size_t)r * D;  // base
    } else {
        int rr = r - g * g, y = top + rr / (n_c + 1), xi = rr % (n_c + 1);
        if (xi == n_c) {
            src = newline;
        } else {
            int x = left + xi, ty = y / g, py = y % g, tx = x / g, px = x % g;
            src = feat + ((size_t)(1 + ty * tile_cols + tx) * g * g + (size_t)py * g + px) * D;
        }
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) out[(size_t)r * D + i] = src[i];
}

// llava.c's video_features: frames -> CLIP -> pool -> projector. The selected CLIP layer (for --dump)
// and the projected rows come back to the host.
extern "C" void gpu_video_features(GpuModel* g, const float* pixels, int F, float* vision_features,
                                   float* video_features) {
    const GpuDims* d = &g->d;
    int gr = d->image_size / d->patch_size, s = d->pool_stride, per = (gr / s) * (gr / s), Dv = d->v_dim;
    float* vis = gpu_floats(g, (size_t)F * gr * gr * Dv);
    gpu_vision_forward(g, pixels, F, vis);
    float* pooled = gpu_floats(g, (size_t)F * per * Dv);
    size_t n = (size_t)F * per * Dv;
    average_pool_kernel<<<blocks_for(n, 256), 256>>>(pooled, vis, F, gr, s, Dv);
    LAUNCH_CHECK();
    float* proj = gpu_floats(g, (size_t)F * per * d->dim);
    gpu_multi_modal_projector(g, proj, pooled, F * per);
    CUDA_CHECK(cudaMemcpy(vision_features, vis, (size_t)F * gr * gr * Dv * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(video_features, proj, (size_t)F * per * d->dim * sizeof(float), cudaMemcpyDeviceToHost));
    gpu_release(g, proj);
    gpu_release(g, pooled);
    gpu_release(g, vis);
}

// llava.c's image_features for one image of n_views views (base first): CLIP -> projector -> packing.
// The unpadded window comes from the host (video.c's unpad_window). rows gets g*g + n_r*(n_c+1) rows.
extern "C" void gpu_image_features(GpuModel* g, const float* pixels, int n_views, int tile_cols, int top, int n_r,
                                   int left, int n_c, float* vision_features, float* rows) {
    const GpuDims* d = &g->d;
    int gr = d->image_size / d->patch_size, np = gr * gr, Dv = d->v_dim, D = d->dim;
    float* vis = gpu_floats(g, (size_t)n_views * np * Dv);
    gpu_vision_forward(g, pixels, n_views, vis);
    float* proj = gpu_floats(g, (size_t)n_views * np * D);
    gpu_multi_modal_projector(g, proj, vis, n_views * np);
    int n_rows = np + n_r * (n_c + 1);
    float* out = gpu_floats(g, (size_t)n_rows * D);
    pack_image_kernel<<<n_rows, 256>>>(out, proj, g->w.image_newline, gr, tile_cols, top, left, n_c, D);
    LAUNCH_CHECK();
    CUDA_CHECK(cudaMemcpy(vision_features, vis, (size_t)n_views * np * Dv * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(rows, out, (size_t)n_rows * D * sizeof(float), cudaMemcpyDeviceToHost));
    gpu_release(g, out);
    gpu_release(g, proj);
    gpu_release(g, vis);
}

// ----------------------------------------------------------------------------
// Language model: Llama (llava.c's build_state, llama_decoder_layer, llm_forward, prefill, decode_step)

#define GPU_MAX_ROWS 2048

extern "C" void gpu_build_state(GpuModel* g, int ctx, int max_rows) {
    const GpuDims* d = &g->d;
    int D = d->dim, qd = d->n_heads * d->head_dim, kvd = d->n_kv_heads * d->head_dim, half = d->head_dim / 2;
    // The GPU takes a whole prompt per forward pass where it can (up to GPU_MAX_ROWS rows): the CPU's
    // PREFILL_CHUNK suits its caches, while the tensor cores want tall GEMMs and attention wants all
    // queries of a head in one launch.
    if (max_rows < ctx) max_rows = ctx < GPU_MAX_ROWS ? ctx : GPU_MAX_ROWS;
    g->ctx = ctx;
    g->max_rows = max_rows;
    g->x = gpu_floats(g, (size_t)max_rows * D);
    g->xb = gpu_floats(g, (size_t)max_rows * D);
    g->q = gpu_floats(g, (size_t)max_rows * qd);
    g->k = gpu_floats(g, (size_t)max_rows * kvd);
    g->v = gpu_floats(g, (size_t)max_rows * kvd);
    g->att = gpu_floats(g, (size_t)max_rows * qd);
    g->hb = gpu_floats(g, (size_t)max_rows * d->hidden_dim);
    g->hb2 = gpu_floats(g, (size_t)max_rows * d->hidden_dim);
    g->logits = gpu_floats(g, d->vocab_size);
    g->all_logits = NULL;  // allocated by the first prefill that dumps them
    g->kv_bf16 = d->weight_type != 0;  // as llava.c: f32 cache for f32 weights, bf16 otherwise
    size_t kv_bytes = (size_t)d->n_layers * ctx * kvd * (g->kv_bf16 ? 2 : 4);
    g->key_cache = gpu_alloc(g, kv_bytes);
    g->value_cache = gpu_alloc(g, kv_bytes);
    CUDA_CHECK(cudaMemset(g->key_cache, 0, kv_bytes));
    CUDA_CHECK(cudaMemset(g->value_cache, 0, kv_bytes));
    // inv_freq as llava.c's build_state computes it (the same host libm powf)
    float* inv = (float*)malloc(half * sizeof(float));
    if (!inv) llava_cuda_fatal("out of memory");
    for (int j = 0; j < half; j++)
        inv[j] = 1.0f / powf(d->rope_theta, (float)(2 * j) / (float)d->head_dim) / d->rope_scale;
    g->inv_freq = gpu_upload(g, inv, half * sizeof(float));
    free(inv);
    g->rope_cos = gpu_floats(g, (size_t)max_rows * half);
    g->rope_sin = gpu_floats(g, (size_t)max_rows * half);
    g->part_elems = (size_t)d->n_heads * ((ctx + DEC_CHUNK - 1) / DEC_CHUNK) * (d->head_dim + 2);
    g->part = gpu_floats(g, g->part_elems);
}

extern "C" void gpu_free_state(GpuModel* g) {
    float* bufs[] = {g->x, g->xb, g->q, g->k, g->v, g->att, g->hb, g->hb2, g->logits, g->all_logits,
                     (float*)g->key_cache, (float*)g->value_cache, g->inv_freq, g->rope_cos, g->rope_sin, g->part};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) gpu_release(g, bufs[i]);
    g->x = g->xb = g->q = g->k = g->v = g->att = g->hb = g->hb2 = g->logits = g->all_logits = NULL;
    g->key_cache = g->value_cache = NULL;
    g->inv_freq = g->rope_cos = g->rope_sin = g->part = NULL;
    g->part_elems = 0;
    g->ctx = g->max_rows = 0;
}

// LlamaDecoderLayer l over T rows in g->x at positions pos..pos+T-1, in place; their keys and values go
// into the cache first, so the chunk's queries see themselves and everything before. For one row
// (decode) q, k and v are one launch, the residual adds ride in the GEMVs and gate/up/SiLU are one
// kernel: decode is a chain of small launches, and each one saved is a few microseconds of a ~4 ms step.
static void gpu_llama_decoder_layer(GpuModel* g, int l, int T, int pos) {
    const GpuDims* d = &g->d;
    const GpuWeights* w = &g->w;
    int D = d->dim, hd = d->head_dim, F = d->hidden_dim;
    int qd = d->n_heads * hd, kvd = d->n_kv_heads * hd, half = hd / 2;
    gpu_norm_rows(g->xb, g->x, w->attn_norm + (size_t)l * D, NULL, T, D, d->rms_eps);
    if (T == 1) {  // q, k, v in one launch
        float* ys[] = {g->q, g->k, g->v};
        const GpuMatrix* ws[] = {&w->wq[l], &w->wk[l], &w->wv[l]};
        gpu_gemv_n(3, ys, g->xb, ws, 0);
    } else {
        gpu_matmul(g, g->q, g->xb, &w->wq[l], T);
        gpu_matmul(g, g->k, g->xb, &w->wk[l], T);
        gpu_matmul(g, g->v, g->xb, &w->wv[l], T);
    }
    size_t layer = (size_t)l * g->ctx * kvd * (g->kv_bf16 ? 2 : 4);  // bytes
    char* kc = (char*)g->key_cache + layer;
    char* vc = (char*)g->value_cache + layer;
    size_t n_rot = (size_t)T * (d->n_heads + d->n_kv_heads) * half;
    rope_store_kernel<<<blocks_for(n_rot, 256), 256>>>(g->q, g->k, g->v, kc, vc, g->rope_cos, g->rope_sin, T,
                                                       d->n_heads, d->n_kv_heads, hd, g->ctx, pos, g->kv_bf16);
    LAUNCH_CHECK();
    GpuAttn a = {};
    a.out = g->att; a.q = g->q; a.k = kc; a.v = vc;
    a.T = T; a.n_heads = d->n_heads; a.n_kv_heads = d->n_kv_heads; a.head_dim = hd;
    a.q_stride = qd; a.out_stride = qd; a.kv_stride = hd; a.kv_head_stride = (size_t)g->ctx * hd;
    a.kv_bf16 = g->kv_bf16; a.causal_offset = pos; a.n_keys = pos + T; a.scale = 1.0f / sqrtf((float)hd);
    a.lowp = g->kv_bf16;
    gpu_attention(g, &a, 1);
    if (T == 1) {
        gpu_gemv(g->x, g->att, &w->wo[l], 1);  // x += Wo att
        gpu_norm_rows(g->xb, g->x, w->ffn_norm + (size_t)l * D, NULL, 1, D, d->rms_eps);
        gpu_gemv_swiglu(g->hb, g->xb, &w->w_gate[l], &w->w_up[l]);
        gpu_gemv(g->x, g->hb, &w->w_down[l], 1);  // x += W_down h
        return;
    }
    gpu_matmul(g, g->xb, g->att, &w->wo[l], T);
    gpu_add_rows(g->x, g->xb, NULL, T, D);
    gpu_norm_rows(g->xb, g->x, w->ffn_norm + (size_t)l * D, NULL, T, D, d->rms_eps);
    gpu_matmul(g, g->hb, g->xb, &w->w_gate[l], T);
    gpu_matmul(g, g->hb2, g->xb, &w->w_up[l], T);
    gpu_activation(g->hb, g->hb2, (size_t)T * F, GPU_SILU_MUL);
    gpu_matmul(g, g->xb, g->hb, &w->w_down[l], T);
    gpu_add_rows(g->x, g->xb, NULL, T, D);
}

// T rows in g->x at positions pos..pos+T-1 through the decoder; g->x ends final-normed.
static void gpu_llm_forward(GpuModel* g, int T, int pos) {
    const GpuDims* d = &g->d;
    int half = d->head_dim / 2;
    rope_angles_kernel<<<blocks_for((size_t)T * half, 256), 256>>>(g->rope_cos, g->rope_sin, g->inv_freq, T, pos, half);
    LAUNCH_CHECK();
    for (int l = 0; l < d->n_layers; l++) gpu_llama_decoder_layer(g, l, T, pos);
    gpu_norm_rows(g->x, g->x, g->w.final_norm, NULL, T, d->dim, d->rms_eps);
}

// embeds (T, dim) on the host at positions pos.. in chunks of max_rows; the last row's logits -> logits
// (host), and with all_logits != NULL every row's (T, vocab).
extern "C" void gpu_prefill(GpuModel* g, const float* embeds, int T, int pos, float* all_logits, float* logits) {
    int D = g->d.dim, V = g->d.vocab_size;
    if (all_logits && !g->all_logits) g->all_logits = gpu_floats(g, (size_t)g->max_rows * V);
    for (int t0 = 0; t0 < T; t0 += g->max_rows) {
        int n = T - t0 < g->max_rows ? T - t0 : g->max_rows;
        CUDA_CHECK(cudaMemcpy(g->x, embeds + (size_t)t0 * D, (size_t)n * D * sizeof(float), cudaMemcpyHostToDevice));
        gpu_llm_forward(g, n, pos + t0);
        if (all_logits) {
            gpu_matmul(g, g->all_logits, g->x, &g->w.lm_head, n);
            CUDA_CHECK(cudaMemcpy(all_logits + (size_t)t0 * V, g->all_logits, (size_t)n * V * sizeof(float),
                                  cudaMemcpyDeviceToHost));
        }
        // the last row on its own (GEMV), as llava.c: --dump must not change the answer
        if (t0 + n == T) gpu_matmul(g, g->logits, g->x + (size_t)(n - 1) * D, &g->w.lm_head, 1);
    }
    CUDA_CHECK(cudaMemcpy(logits, g->logits, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost));
}

// One token at position pos -> logits (host): the only transfer of a decode step.
extern "C" void gpu_decode_step(GpuModel* g, int token, int pos, float* logits) {
    int V = g->d.vocab_size;
    embed_kernel<<<blocks_for(g->d.dim, 256), 256>>>(g->x, g->w.embed_tokens, token);
    LAUNCH_CHECK();
    gpu_llm_forward(g, 1, pos);
    gpu_matmul(g, g->logits, g->x, &g->w.lm_head, 1);
    CUDA_CHECK(cudaMemcpy(logits, g->logits, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost));
}

#else
// ============================================================================
// The host half (plain C, #included at the end of llava.c when LLAVA_CUDA is defined)

static GpuModel* g_gpu;   // one model per process, as llava.c
static Model* g_pending;  // build_model's model, until its weights are on the GPU

void llava_cuda_fatal(const char* fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fatal("%s", msg);
}

static GpuMatrix cuda_matrix(const Matrix* w) {
    return gpu_upload_matrix(g_gpu, w->type, w->rows, w->cols, w->group, w->data, w->scales);
}

static float* cuda_floats(const float* x, size_t n) { return gpu_upload(g_gpu, x, n * sizeof(float)); }

static GpuMatrix* cuda_matrices(const Matrix* ms, int n) {
    GpuMatrix* out = xcalloc((size_t)n, sizeof(GpuMatrix));
    for (int l = 0; l < n; l++) out[l] = cuda_matrix(&ms[l]);
    return out;
}

static size_t g_q8_copy_bytes;  // count_q8_copy's sum
static void count_q8_copy(Matrix* w) {
    if (w->type == DT_Q8) g_q8_copy_bytes += (size_t)w->rows * w->cols * 2;
}

static void cuda_vision_progress(double done, double total) { progress("vision", done, total, "views"); }

// Every weight the forward passes use goes to the GPU, once, straight from the mmap (nothing is
// packed for the CPU); the file's pages are released after. Called by the first hook that needs the GPU,
// so -m encode / -m decode (the tokenizer alone) never start it.
static void cuda_upload_weights(Model* m) {
    Config* p = &m->config;
    if (p->weight_type == DT_Q4)    // the GPU kernels know f32, bf16 and q8 (matmul.c's DType 0-2)
        fatal("%s: q4 weights are not supported by llava_cuda yet (export f32, bf16 or q8 for the GPU)", m->path);
    int Lv = vision_layers_needed(p), Dv = p->v_dim, Dvh = p->v_hidden_dim, D = p->dim, L = p->n_layers;
    int g = p->image_size / p->patch_size;
    GpuDims d = {.weight_type = p->weight_type, .group = p->group_size, .dim = D, .hidden_dim = p->hidden_dim,
                 .n_layers = L, .n_heads = p->n_heads, .n_kv_heads = p->n_kv_heads, .head_dim = p->head_dim,
                 .vocab_size = p->vocab_size, .rms_eps = p->rms_eps, .rope_theta = p->rope_theta,
                 .rope_scale = p->rope_scale, .v_dim = Dv, .v_hidden_dim = Dvh, .v_layers_run = Lv,
                 .v_heads = p->v_heads, .image_size = p->image_size, .patch_size = p->patch_size,
                 .n_channels = p->n_channels, .v_act = p->v_act, .pool_stride = p->pool_stride, .v_eps = p->v_eps};
    g_gpu = gpu_create(&d);
    // The weights as stored, plus the bf16 copy of every q8 matrix the prefill GEMMs read: refused here,
    // before uploading gigabytes, rather than by the allocation that runs out.
    g_q8_copy_bytes = 0;
    for_each_matrix(m, count_q8_copy);
    size_t need = m->file_size + g_q8_copy_bytes, have = gpu_memory_free();
    if (need > have)
        fatal("%s: the model needs %.1f GB of GPU memory for its weights, the GPU (%s) has %.1f GB free", m->path,
              need / 1e9, gpu_device_name(), have / 1e9);
    gpu_set_progress(g_gpu, cuda_vision_progress);
    GpuWeights* w = gpu_weights(g_gpu);
    VisionWeights* v = &m->vision;
    w->class_embedding = cuda_floats(v->class_embedding, Dv);
    w->position_embedding = cuda_floats(v->position_embedding, (size_t)(g * g + 1) * Dv);
    w->pre_ln_w = cuda_floats(v->pre_ln_w, Dv);
    w->pre_ln_b = cuda_floats(v->pre_ln_b, Dv);
    w->patch_embedding = cuda_matrix(&v->patch_embedding);
    float** vecs[] = {&w->ln1_w, &w->ln1_b, &w->bq, &w->bk, &w->bv, &w->bo, &w->ln2_w, &w->ln2_b, &w->fc2_b};
    float* srcs[] = {v->ln1_w, v->ln1_b, v->bq, v->bk, v->bv, v->bo, v->ln2_w, v->ln2_b, v->fc2_b};
    for (int i = 0; i < 9; i++) *vecs[i] = cuda_floats(srcs[i], (size_t)Lv * Dv);
    w->fc1_b = cuda_floats(v->fc1_b, (size_t)Lv * Dvh);
    w->v_wq = cuda_matrices(v->wq, Lv); w->v_wk = cuda_matrices(v->wk, Lv);
    w->v_wv = cuda_matrices(v->wv, Lv); w->v_wo = cuda_matrices(v->wo, Lv);
    w->fc1 = cuda_matrices(v->fc1, Lv); w->fc2 = cuda_matrices(v->fc2, Lv);
    ProjectorWeights* pr = &m->projector;
    w->linear_1 = cuda_matrix(&pr->linear_1); w->b1 = cuda_floats(pr->b1, D);
    w->linear_2 = cuda_matrix(&pr->linear_2); w->b2 = cuda_floats(pr->b2, D);
    w->image_newline = cuda_floats(pr->image_newline, D);
    LlmWeights* lw = &m->llm;
    w->embed_tokens = cuda_matrix(&lw->embed_tokens);
    w->attn_norm = cuda_floats(lw->attn_norm, (size_t)L * D);
    w->ffn_norm = cuda_floats(lw->ffn_norm, (size_t)L * D);
    w->final_norm = cuda_floats(lw->final_norm, D);
    w->wq = cuda_matrices(lw->wq, L); w->wk = cuda_matrices(lw->wk, L); w->wv = cuda_matrices(lw->wv, L);
    w->wo = cuda_matrices(lw->wo, L);
    w->w_gate = cuda_matrices(lw->w_gate, L); w->w_up = cuda_matrices(lw->w_up, L);
    w->w_down = cuda_matrices(lw->w_down, L);
    w->lm_head = cuda_matrix(&lw->lm_head);
    release_pages(m->data, m->file_size);  // everything is on the GPU now (merge_embeddings faults rows back)
    info("gpu: %s, %.2f GB of weights on the device\n", gpu_device_name(), gpu_bytes_allocated(g_gpu) / 1e9);
}

static void cuda_load_weights(Model* m) { g_pending = m; }  // build_model's hook

static void gpu_ready(void) {
    if (g_gpu) return;
    if (!g_pending) fatal("internal: the GPU path ran before build_model");
    cuda_upload_weights(g_pending);
}

// build_state's hook: the scratch and the KV cache on the device; the host keeps only the logits.
static void cuda_build_state(Model* m, int ctx, int max_rows) {
    RunState* s = &m->state;
    memset(s, 0, sizeof(*s));
    s->ctx = ctx;
    s->max_rows = max_rows;
    s->kv_bf16 = m->config.weight_type != DT_F32;
    s->logits = xcalloc(m->config.vocab_size, sizeof(float));
    gpu_ready();
    gpu_build_state(g_gpu, ctx, max_rows);
}

static void cuda_free_state(RunState* s) {
    (void)s;  // free_state frees s->logits itself
    if (g_gpu) gpu_free_state(g_gpu);
}

static void cuda_video_features(Model* m, VideoFeatures* vf) {
    Config* p = &m->config;
    int g = p->image_size / p->patch_size, F = vf->F;
    vf->vision_features = xmalloc((size_t)F * g * g * p->v_dim * sizeof(float));
    vf->video_features = xmalloc((size_t)F * video_tokens_per_frame(p) * p->dim * sizeof(float));
    gpu_ready();
    gpu_video_features(g_gpu, vf->pixel_values, F, vf->vision_features, vf->video_features);
}

static void cuda_image_features(Model* m, ImageFeatures* f) {
    Config* p = &m->config;
    int g = p->image_size / p->patch_size, np = g * g;
    size_t per_patch = (size_t)p->n_channels * p->image_size * p->image_size;
    f->vision_features = xmalloc((size_t)f->total_patches * np * p->v_dim * sizeof(float));
    f->image_features = xmalloc((size_t)f->total_rows * p->dim * sizeof(float));
    gpu_ready();
    int first = 0, rows = 0;
    for (int k = 0; k < f->n; k++) {
        const ImagePatches* ip = &f->patches[k];
        int top, n_r, left, n_c;
        unpad_window(ip->height, ip->width, ip->rows * g, ip->cols * g, &top, &n_r, &left, &n_c);
        int got = np + n_r * (n_c + 1);
        if (got != f->n_rows[k]) fatal("internal: image %d packs into %d rows, expected %d", k, got, f->n_rows[k]);
        gpu_image_features(g_gpu, f->pixel_values + (size_t)first * per_patch, ip->n_patches, ip->cols, top, n_r,
                           left, n_c, f->vision_features + (size_t)first * np * p->v_dim,
                           f->image_features + (size_t)rows * p->dim);
        first += ip->n_patches;
        rows += got;
    }
}

static void cuda_prefill(Model* m, const float* embeds, int T, int pos, float* all_logits) {
    gpu_prefill(g_gpu, embeds, T, pos, all_logits, m->state.logits);
}

static void cuda_decode_step(Model* m, int token, int pos) { gpu_decode_step(g_gpu, token, pos, m->state.logits); }

__attribute__((constructor)) static void cuda_install_hooks(void) {
    llava_accel.load_weights = cuda_load_weights;
    llava_accel.build_state = cuda_build_state;
    llava_accel.free_state = cuda_free_state;
    llava_accel.video_features = cuda_video_features;
    llava_accel.image_features = cuda_image_features;
    llava_accel.prefill = cuda_prefill;
    llava_accel.decode_step = cuda_decode_step;
}

#endif  // __CUDACC__
