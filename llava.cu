/*
 * llava.cu: the GPU path of llava.c. The same checkpoint (f32, bf16 or q8), the same command line, the
 * same --dump files, on one NVIDIA GPU. Build: make llava_cuda (nvcc + cuBLAS); run: ./llava_cuda
 * with llava's arguments. NOT YET RUN ON A GPU: it compiles warning-free; see README, "GPU (CUDA)".
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
 *   T = 1 (decode, and the last row's lm_head): gemv_kernel, one warp per output row, reading the weights
 *       as stored: f32, bf16, or int8 with per-group f32 scales (x stays f32: y = sum_g s_g sum q x).
 *   T > 1 (prefill, vision batch, projector): cuBLAS. f32 weights: f32 GEMM with the pedantic compute type
 *       (no TF32), for the fidelity tests. bf16: tensor-core GEMM, activations rounded to bf16 first (as the
 *       CPU's AVX512-BF16 GEMM does), f32 accumulation. q8: the same bf16 GEMM on a bf16 copy of the weights
 *       dequantized once at load (q * s is exact in f32; rounding it to bf16 costs <= 2^-9 relative), so a
 *       q8 model holds int8 for decode AND bf16 for prefill on the GPU (7 + 14 GB at 7B).
 * Everything else is written here: RMSNorm / LayerNorm (one block per row), RoPE (HF rotate_half, linear
 * scaling), the KV store (bf16 cache for bf16/q8 weights, f32 for f32, as llava.c), attention
 * (flash-style: online softmax over tiles of 32 keys per (query block, head); no T x T matrix), the
 * activations, the 2x2 pooling, the projector, the anyres packing with image_newline.
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
#include <stdio.h>

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

// One warp per output row: the lanes stride over the row 4 weights at a time (f32: 16 bytes, bf16: 8,
// q8: 4 bytes + the group's scale; cols % 4 == 0), so a warp reads 128-512 contiguous bytes per step.
// Rows whose width is not a multiple of 4 take the scalar loop. f32 accumulation, then a warp sum.
#define GEMV_WARPS 8
__global__ static void gemv_kernel(float* y, const float* x, GpuMatrix w) {
    int row = blockIdx.x * GEMV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= w.rows) return;
    size_t base = (size_t)row * w.cols;
    float sum = 0.0f;
    if (w.cols % 4 == 0) {
#pragma unroll 4
        for (int i = lane * 4; i < w.cols; i += 128) {
            float4 xv = *(const float4*)(x + i);
            float a, b, c, d;
            if (w.type == 0) {
                float4 v = *(const float4*)((const float*)w.data + base + i);
                a = v.x; b = v.y; c = v.z; d = v.w;
            } else if (w.type == 1) {
                uint2 v = *(const uint2*)((const uint16_t*)w.data + base + i);
                a = __uint_as_float(v.x << 16); b = __uint_as_float(v.x & 0xffff0000u);
                c = __uint_as_float(v.y << 16); d = __uint_as_float(v.y & 0xffff0000u);
            } else {  // q8: the 4 values share one scale (group % 4 == 0)
                char4 v = *(const char4*)((const int8_t*)w.data + base + i);
                float s = w.scales[(base + i) / w.group];
                a = v.x * s; b = v.y * s; c = v.z * s; d = v.w * s;
            }
            sum += a * xv.x + b * xv.y + c * xv.z + d * xv.w;
        }
    } else {
        for (int i = lane; i < w.cols; i += 32) {
            size_t j = base + i;
            float wv = w.type == 0 ? ((const float*)w.data)[j]
                     : w.type == 1 ? bf16_bits_to_f32(((const uint16_t*)w.data)[j])
                                   : ((const int8_t*)w.data)[j] * w.scales[j / w.group];
            sum += wv * x[i];
        }
    }
    sum = warp_sum(sum);
    if (lane == 0) y[row] = sum;
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
        gemv_kernel<<<blocks_for(w->rows, GEMV_WARPS), GEMV_WARPS * 32>>>(y, x, *w);
        LAUNCH_CHECK();
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

// RoPE, HF rotate_half layout: dims (j, j + head_dim/2) of each head rotate together. x (T, n_heads * hd).
__global__ static void rope_kernel(float* x, const float* cos_t, const float* sin_t, int T, int n_heads, int hd) {
    int half = hd / 2;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // one (row, head, j) pair per thread
    if (i >= (size_t)T * n_heads * half) return;
    int j = (int)(i % half), t = (int)(i / ((size_t)n_heads * half));
    size_t h = i / half % n_heads;
    float* v = x + ((size_t)t * n_heads + h) * hd;
    float c = cos_t[(size_t)t * half + j], s = sin_t[(size_t)t * half + j];
    float a = v[j], b = v[j + half];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
}

// k, v rows (T, n_kv * hd) -> the layer's cache (n_kv, ctx, hd) at positions pos.. (llava.c's store_kv).
__global__ static void store_kv_kernel(void* kc, void* vc, const float* k, const float* v, int T, int n_kv, int hd,
                                       int ctx, int pos, int bf16) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * n_kv * hd) return;
    int d = (int)(i % hd), h = (int)(i / hd % n_kv), t = (int)(i / ((size_t)n_kv * hd));
    size_t dst = ((size_t)h * ctx + pos + t) * hd + d;
    if (bf16) {
        ((uint16_t*)kc)[dst] = f32_to_bf16_bits(k[i]);
        ((uint16_t*)vc)[dst] = f32_to_bf16_bits(v[i]);
    } else {
        ((float*)kc)[dst] = k[i];
        ((float*)vc)[dst] = v[i];
    }
}

// Row `token` of embed_tokens as f32 (llava.c's dequantize_row), straight into the residual stream.
__global__ static void embed_kernel(float* out, GpuMatrix w, int token) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= w.cols) return;
    size_t j = (size_t)token * w.cols + i;
    out[i] = w.type == 0 ? ((const float*)w.data)[j]
           : w.type == 1 ? bf16_bits_to_f32(((const uint16_t*)w.data)[j])
                         : ((const int8_t*)w.data)[j] * w.scales[j / w.group];
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

static void gpu_attention(const GpuAttn* a, int batch) {
    if (a->head_dim > ATT_MAX_HD) llava_cuda_fatal("CUDA: head_dim %d > %d is not supported", a->head_dim, ATT_MAX_HD);
    size_t smem = (size_t)(ATT_WARPS * a->head_dim + ATT_TILE * (a->head_dim + 1) + ATT_TILE * a->head_dim) * sizeof(float);
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
    a.causal_offset = -1; a.n_keys = N; a.scale = 1.0f / sqrtf((float)hd);
    a.q_batch = a.kv_batch = a.out_batch = (size_t)N * D;  // each view attends only to itself
    gpu_attention(&a, B);
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
        for (int l = 0; l < d->v_layers_run; l++) gpu_clip_encoder_layer(g, &s, l, B);
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

extern "C" void gpu_build_state(GpuModel* g, int ctx, int max_rows) {
    const GpuDims* d = &g->d;
    int D = d->dim, qd = d->n_heads * d->head_dim, kvd = d->n_kv_heads * d->head_dim, half = d->head_dim / 2;
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
}

extern "C" void gpu_free_state(GpuModel* g) {
    float* bufs[] = {g->x, g->xb, g->q, g->k, g->v, g->att, g->hb, g->hb2, g->logits, g->all_logits,
                     (float*)g->key_cache, (float*)g->value_cache, g->inv_freq, g->rope_cos, g->rope_sin};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) gpu_release(g, bufs[i]);
    g->x = g->xb = g->q = g->k = g->v = g->att = g->hb = g->hb2 = g->logits = g->all_logits = NULL;
    g->key_cache = g->value_cache = NULL;
    g->inv_freq = g->rope_cos = g->rope_sin = NULL;
    g->ctx = g->max_rows = 0;
}

// LlamaDecoderLayer l over T rows in g->x at positions pos..pos+T-1, in place; their keys and values go
// into the cache first, so the chunk's queries see themselves and everything before.
static void gpu_llama_decoder_layer(GpuModel* g, int l, int T, int pos) {
    const GpuDims* d = &g->d;
    const GpuWeights* w = &g->w;
    int D = d->dim, hd = d->head_dim, F = d->hidden_dim;
    int qd = d->n_heads * hd, kvd = d->n_kv_heads * hd, half = hd / 2;
    gpu_norm_rows(g->xb, g->x, w->attn_norm + (size_t)l * D, NULL, T, D, d->rms_eps);
    gpu_matmul(g, g->q, g->xb, &w->wq[l], T);
    gpu_matmul(g, g->k, g->xb, &w->wk[l], T);
    gpu_matmul(g, g->v, g->xb, &w->wv[l], T);
    rope_kernel<<<blocks_for((size_t)T * d->n_heads * half, 256), 256>>>(g->q, g->rope_cos, g->rope_sin, T, d->n_heads, hd);
    LAUNCH_CHECK();
    rope_kernel<<<blocks_for((size_t)T * d->n_kv_heads * half, 256), 256>>>(g->k, g->rope_cos, g->rope_sin, T,
                                                                             d->n_kv_heads, hd);
    LAUNCH_CHECK();
    size_t layer = (size_t)l * g->ctx * kvd * (g->kv_bf16 ? 2 : 4);  // bytes
    char* kc = (char*)g->key_cache + layer;
    char* vc = (char*)g->value_cache + layer;
    store_kv_kernel<<<blocks_for((size_t)T * kvd, 256), 256>>>(kc, vc, g->k, g->v, T, d->n_kv_heads, hd, g->ctx, pos,
                                                                g->kv_bf16);
    LAUNCH_CHECK();
    GpuAttn a = {};
    a.out = g->att; a.q = g->q; a.k = kc; a.v = vc;
    a.T = T; a.n_heads = d->n_heads; a.n_kv_heads = d->n_kv_heads; a.head_dim = hd;
    a.q_stride = qd; a.out_stride = qd; a.kv_stride = hd; a.kv_head_stride = (size_t)g->ctx * hd;
    a.kv_bf16 = g->kv_bf16; a.causal_offset = pos; a.n_keys = pos + T; a.scale = 1.0f / sqrtf((float)hd);
    gpu_attention(&a, 1);
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
