// kernels.c -- the machine-specific chapter beside matmul.c: attention and the element-wise activations.
//
// What it does
//   Every operation here has two versions side by side: a plain scalar one that DEFINES it (the
//   formula of the PyTorch module it stands for, one element or one query row at a time) and a fast
//   one, vectorised with GCC/clang vector extensions sized for the build target (16 floats with
//   AVX-512, 8 with AVX/AVX2, 4 otherwise: SSE2, NEON, or plain scalars the compiler lowers them to)
//   and split over matmul.c's thread pool.
//     activation()  quick_gelu (CLIP), gelu (projector), silu(gate) * up (Llama MLP) over big buffers;
//                   bias_activation_block(): act(x + b) on one block of a matmul's output (its epilogue)
//     attention()   softmax(q k^T * scale [+ causal mask]) v per head, grouped-query heads, keys and
//                   values f32 or bf16 (the KV cache of bf16/q8/q4 models); with bf16 keys and values
//                   when the caller allows it (bf16_dots), prompts and the vision tower run on vdpbf16ps
//                   where the CPU has AVX512-BF16, q and the probabilities rounded to bf16 as well
//   The scalar versions run when the environment says LLAVA_ISA=scalar (as for matmul.c), so a porter
//   can run the whole model on the plain C of this file and compare.
//
// Numerics: the fast paths sum in a different order from the scalar ones (lane-wise partial sums,
// a polynomial exp), so they agree to float rounding (~1e-6 relative), not bit for bit (the bf16 dot
// block path: to the scalar definition on bf16-rounded q and probabilities, ~1e-5); each path on
// its own is deterministic and independent of the thread count (every output element is computed by
// one task, in a fixed order). test/test_blocks.c checks both against a naive T x T attention.
//
// What it does not do: the matmuls (matmul.c), the norms, RoPE and the residual adds (llava.c: plain
// loops over rows, already fast enough), flash-style tiling over the keys (a task holds one score
// row per key, keys x 32 floats, which is 640 KB at 5,000 keys: the whole context of this model).
//
// Build: #included into llava.c after base.c and matmul.c (it uses pool_for, matmul_isa_name and
// matmul.c's CPU detection). Target-specific code is selected at compile time by the vector width
// alone, with one exception: the AVX512-BF16 attention block (attention_block_bf16_task), written with
// intrinsics because vdpbf16ps has no vector-extension form, compiled in AVX-512 builds only and chosen
// at run time when the CPU has the instruction.

#include <math.h>

// LLAVA_ISA=scalar: the scalar definitions run instead of the vectorised code (read once).
static int kernels_scalar(void) {
    static int scalar = -1;
    if (scalar < 0) scalar = strcmp(matmul_isa_name(), "scalar") == 0;
    return scalar;
}

// ----------------------------------------------------------------------------
// The scalar definitions

// softmax over n values in place: exp(x - max) / sum, the sum in double (a vocabulary of 32,064
// probabilities should not lose its tail to float rounding).
static void softmax(float* x, int n) {
    float max = x[0];
    for (int i = 1; i < n; i++) if (x[i] > max) max = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

// Exact GELU, torch.nn.functional.gelu: 0.5 x (1 + erf(x / sqrt 2)). Used by the projector.
static float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// CLIP's quick_gelu: x * sigmoid(1.702 x).
static float quick_gelu(float x) { return x / (1.0f + expf(-1.702f * x)); }

// Llama's hidden_act "silu" (torch.nn.functional.silu): x * sigmoid(x).
static float silu(float x) { return x / (1.0f + expf(-x)); }

// ----------------------------------------------------------------------------
// The native vector of the build target

// 16 floats with AVX-512, 8 with AVX, 4 otherwise (SSE, NEON, or plain scalars the compiler lowers it
// to). A block of attention queries is two of them.
#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
#if defined(__i386__) && !defined(__SSE__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // every vf function is static: there is no ABI to keep
#endif
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

// where(m, a, b) lane-wise: m is -1 (all bits set) where true, as vector comparisons return.
static vf vselect(vi m, vf a, vf b) {
    return (vf)(((vi)a & m) | ((vi)b & ~m));  // same-size vector casts keep the bits
}

// a > b ? a : b lane-wise (b where either is NaN): one vmaxps on x86, which computes exactly this.
static vf vmax(vf a, vf b) {
#if MM_X86 && VL == 16
    return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif MM_X86 && VL == 8
    return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
    return vselect(a > b, a, b);
#endif
}

// exp(x) for x <= 0, lane-wise, to ~1 ulp (Cephes expf: x = n ln2 + r, |r| <= ln2/2, a degree-6
// polynomial for e^r, then 2^n through the exponent bits). Below -87 it returns 0.
#if MM_X86 && VL == 16
// With AVX-512 the same arithmetic in fewer instructions, the same bits (checked on every one of the
// 2^32 inputs): the floor is one vrndscaleps instead of convert, compare, correct and convert back;
// 2^n is applied by vscalefps (p * 2^n, exactly the product below); the masks are k registers. The
// multiply-adds are fused where GCC fuses the portable form's (its default -ffp-contract=fast), so
// an AVX-512 build gives the bits it gave before.
static vf vexp_neg(vf v) {
    __m512 x = (__m512)v;
    __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_mask_mov_ps(x, underflow, _mm512_set1_ps(-87.0f));
    __m512 fx = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
    __m512 nf = _mm512_roundscale_ps(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return (vf)_mm512_maskz_mov_ps(~underflow, _mm512_scalef_ps(p, nf));
}
#else
static vf vexp_neg(vf x) {
    const vi underflow = x < -87.0f;
    x = vselect(underflow, (vf){0} - 87.0f, x);
    vf fx = x * 1.44269504088896341f + 0.5f;
    vi n = __builtin_convertvector(fx, vi);
    n += __builtin_convertvector(n, vf) > fx;  // truncation -> floor (a true comparison is -1)
    vf nf = __builtin_convertvector(n, vf);
    vf r = x - nf * 0.693359375f - nf * -2.12194440e-4f;
    vf p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    p = p * (vf)((n + 127) << 23);  // 2^n: n + 127 in the exponent field
    return vselect(underflow, (vf){0}, p);
}
#endif

// sigmoid(z) = 1 / (1 + e^-z), lane-wise. It uses exp(-|z|) <= 1, so vexp_neg serves both signs:
// z >= 0 -> 1/(1+e), z < 0 -> e/(1+e), and neither branch can overflow.
static vf vsigmoid(vf z) {
    vf e = vexp_neg(vselect(z < 0.0f, z, -z));
    return vselect(z < 0.0f, e, (vf){0} + 1.0f) / (1.0f + e);
}

// ----------------------------------------------------------------------------
// Activations over big buffers, VL lanes at a time and split over the thread pool (the vision MLP
// alone applies quick_gelu to 4,616 x 4,096 values per layer).

enum { ACT_QUICK_GELU, ACT_GELU, ACT_SILU_MUL };
typedef struct {
    float* out;        // (rows * n,) the results, contiguous (may be x itself when stride == n)
    const float* x;    // rows of n inputs, row r at x + r * stride
    const float* y;    // the "up" projection for ACT_SILU_MUL, rows at the same stride, else unused
    size_t n, stride;  // elements per row, floats from one row to the next
    size_t total;      // rows * n
    int act;
} ActArgs;
// Elements per task: 64 KB of x, big enough that a task costs far more than its dispatch (~1 us),
// small enough that the 4,616 x 4,096 vision buffer still makes over a thousand tasks to balance.
#define ACT_CHUNK 16384

// The activation of one vector (quick_gelu; silu(x) * y) and of one element (also GELU, which has no
// vector form here: erf): the two forms round differently, so every pass below says which it uses.
static inline vf act_vec(vf x, vf y, int act) {
    return act == ACT_QUICK_GELU ? x * vsigmoid(1.702f * x) : x * vsigmoid(x) * y;   // silu(gate) * up
}
static inline float act_scalar(float x, float y, int act) {
    return act == ACT_QUICK_GELU ? quick_gelu(x) : act == ACT_GELU ? gelu(x) : silu(x) * y;
}

// Element e of the rows (e = r * n + c) is read from row r, column c. The vector loop and the scalar
// tail split the elements by e alone, exactly as for one contiguous buffer, so strided rows give the
// same bits as their contiguous copy would (the vector and scalar forms round differently).
static void activation_task(void* ctx, int task) {
    const ActArgs* a = ctx;
    size_t i0 = (size_t)task * ACT_CHUNK, i1 = i0 + ACT_CHUNK < a->total ? i0 + ACT_CHUNK : a->total, i = i0;
    size_t r = i / a->n, c = i % a->n;      // row and column of element i
    // erf has no vector form here, so the projector's GELU (4096 x rows, small) runs the scalar loop
    if (a->act != ACT_GELU && !kernels_scalar())
        for (; i + VL <= i1; i += VL) {
            vf x, y = {0};
            if (c + VL <= a->n) {           // the VL elements lie in one row
                memcpy(&x, a->x + r * a->stride + c, sizeof(x));
                if (a->act == ACT_SILU_MUL) memcpy(&y, a->y + r * a->stride + c, sizeof(y));
            } else {                        // they straddle rows: gather them one by one
                for (size_t l = 0, rr = r, cc = c; l < VL; l++, cc++) {
                    if (cc == a->n) { cc = 0; rr++; }
                    x[l] = a->x[rr * a->stride + cc];
                    if (a->act == ACT_SILU_MUL) y[l] = a->y[rr * a->stride + cc];
                }
            }
            x = act_vec(x, y, a->act);
            memcpy(a->out + i, &x, sizeof(x));
            for (c += VL; c >= a->n; c -= a->n) r++;
        }
    for (; i < i1; i++) {  // the tail, or everything with LLAVA_ISA=scalar
        float x = a->x[r * a->stride + c];
        a->out[i] = act_scalar(x, a->act == ACT_SILU_MUL ? a->y[r * a->stride + c] : 0.0f, a->act);
        if (++c == a->n) { c = 0; r++; }
    }
}

// out (rows, n) = act(x), or silu(x) * y, for rows of x and y `stride` floats apart.
static void activation_rows(float* out, const float* x, const float* y, size_t rows, size_t n, size_t stride, int act) {
    ActArgs a = {out, x, y, n, stride, rows * n, act};
    if (a.total == 0) return;
    pool_for((int)((a.total + ACT_CHUNK - 1) / ACT_CHUNK), activation_task, &a);
}

// x = act(x), or x = silu(x) * y, over n contiguous elements.
static void activation(float* x, const float* y, size_t n, int act) { activation_rows(x, x, y, 1, n, n, act); }

// x = act(x + b) in place on one block of x (rows, n), rows [t0, t1) x columns [c0, c1), b a bias of n,
// act ACT_QUICK_GELU or ACT_GELU: a linear's bias and the activation after it, as the matmul's epilogue
// (llava.c's post_bias_act). Each element gets the bits of adding b (one f32 add) and then activation()'s
// pass over all of x: the vector form, or the scalar one for x's last rows * n % VL elements (and for
// GELU, and everywhere with LLAVA_ISA=scalar), wherever the block boundaries fall.
static inline void bias_activation_block(float* x, const float* b, size_t rows, size_t n, int act, int t0, int t1,
                                         int c0, int c1) {
    size_t vec_end = act == ACT_GELU || kernels_scalar() ? 0 : rows * n - rows * n % VL;   // vector form below
    for (size_t t = t0; t < (size_t)t1; t++) {
        float* xr = x + t * n;
        for (size_t c = c0; c < (size_t)c1; c += VL) {
            size_t m = (size_t)c1 - c < VL ? (size_t)c1 - c : VL, e = t * n + c;
            if (e + VL <= vec_end && m == VL) {   // a whole vector
                vf v, bv;
                memcpy(&v, xr + c, sizeof(v));
                memcpy(&bv, b + c, sizeof(bv));
                v = act_vec(v + bv, (vf){0}, act);
                memcpy(xr + c, &v, sizeof(v));
                continue;
            }
            if (e < vec_end) {              // the vector form on the first m lanes (or fewer)
                vf v = {0}, bv = {0};
                memcpy(&v, xr + c, m * sizeof(float));
                memcpy(&bv, b + c, m * sizeof(float));
                v = act_vec(v + bv, (vf){0}, act);
                memcpy(xr + c, &v, (e + m <= vec_end ? m : vec_end - e) * sizeof(float));
            }
            for (size_t l = e + m <= vec_end ? m : e < vec_end ? vec_end - e : 0; l < m; l++)   // the scalar form
                xr[c + l] = act_scalar(xr[c + l] + b[c + l], 0.0f, act);
        }
    }
}

// ----------------------------------------------------------------------------
// Attention: softmax(q k^T * scale + causal mask) v per head, for the vision tower (no mask) and the
// language model (causal, grouped-query, keys from the KV cache).
//
// Three paths, one result up to float rounding:
//   attention_ref         one (query row, head) per task: scores, softmax, weighted sum of the values,
//                         scalar loops. The definition; what LLAVA_ISA=scalar runs.
//   attention_row_task    the same per row, vectorised over head_dim: decode (one query row) and very
//                         short prompts. Scores 4 keys per step (each key's lanes summed as a tree),
//                         a lane-wise softmax, the output row held in registers while the values stream.
//   attention_block_task  prefill and the vision tower. Work is split into (head, block of
//                         ATTN_LANES query rows) tasks, all blocks of a head back to back so its K and
//                         V stay in cache. Within a task the queries are the lanes of two native
//                         vectors (32 lanes as a zmm pair with AVX-512, 16 as a ymm pair with AVX, 8
//                         otherwise), so the score block is kept transposed, S^T (keys x lanes), and
//                         the softmax is lane-wise: max, exp and sum run down the key rows with no
//                         horizontal reductions. A task's scratch is keys x lanes floats (640 KB at
//                         5,000 keys with AVX-512), never the T x T matrix.
//   attention_block_bf16_task  the block path on vdpbf16ps (AVX512-BF16): bf16 keys and values read as
//                         they are, q and the probabilities rounded to bf16, twice the products per
//                         instruction. Only where the caller allows it (AttnArgs.bf16_dots).

#define ATTN_LANES (2 * VL)  // queries per block: two vectors
#define ATTN_CHUNK 128       // keys per copied chunk of the K or V cache (64 KB at head_dim 128: stays in L2)
// Rows per register block: ATTN_KB x 2 accumulators + 2 operands + a broadcast. 8 with 32 vector
// registers (AVX-512, AArch64); 4 with the 16 of AVX2 and SSE, where 8 spilled (AVX2 on a Zen 5: the
// vision tower's attention 55 -> 69% of the ymm FMA peak). The results do not depend on it.
#if VL == 16 || defined(__aarch64__)
#define ATTN_KB 8
#else
#define ATTN_KB 4
#endif
// Below this many query rows the block path would leave most of its ATTN_LANES lanes idle, and the
// row path, vectorised over head_dim instead, is faster (decode is T = 1).
#define ATTN_ROW_MAX_T 8

// One attention call: T query rows against the keys/values of one sequence. Strides are in elements,
// so the same struct describes the CLIP layout (rows of all heads) and the KV cache (per-head rows).
typedef struct {
    float* out;        // (T, n_heads*head_dim), row stride out_stride
    const float* q;    // (T, n_heads*head_dim), row stride q_stride
    const void* k;     // keys of positions 0..S-1: head h, position s at k[h*kv_head_stride + s*kv_stride]
    const void* v;     // values, the same layout
    int kv_bf16;       // k and v hold bf16 (uint16) instead of f32
    int bf16_dots;     // with bf16 k and v: q and the probabilities may be rounded to bf16 too, so the
                       // products run on vdpbf16ps where the CPU has AVX512-BF16 (a bf16 model's
                       // semantics in PyTorch); 0 keeps every path in f32
    int T, n_heads, n_kv_heads, head_dim;
    size_t q_stride, kv_stride, kv_head_stride, out_stride;
    int causal_offset; // causal: query t sees keys 0..causal_offset+t; -1 = no mask (CLIP)
    int n_keys;        // keys when there is no mask
    float scale;       // 1/sqrt(head_dim)
    const uint32_t* vp; // set by attention() for the bf16 path: every kv head's values zipped in pairs
} AttnArgs;

// Per-thread scratch that grows as needed and is kept for the next call (a malloc per task would page-
// fault its way through hundreds of KB every time): matmul.c's per-thread grow-or-reuse buffer.
static float* attn_scratch(size_t floats) { return mm_thread_scratch(MM_TLS_ATTN, floats * sizeof(float)); }

static int attn_blocks(const AttnArgs* a) { return (a->T + ATTN_LANES - 1) / ATTN_LANES; }

// Block task `task`: head *h, query rows t0.. (nq of them). All blocks of a head run back to back
// (its K and V stay in cache), the longest causal block first.
static void block_of(const AttnArgs* a, int task, int* h, int* t0, int* nq) {
    int blocks = attn_blocks(a);
    *h = task / blocks;
    *t0 = (blocks - 1 - task % blocks) * ATTN_LANES;
    *nq = a->T - *t0 < ATTN_LANES ? a->T - *t0 : ATTN_LANES;
}

// Start bringing the query rows of the task this thread will probably run next (the pool hands out
// tasks in order, so about pool_size() later) into L2: rows of a (T, heads * head_dim) matrix that was
// written long ago, read 32 rows a head_dim slice apart, which the hardware prefetcher does not foresee.
// Rows [part * nq / parts, (part + 1) * nq / parts) of that block: the bf16 task spreads the parts over
// its P V product, one per VP tile, rather than 32 rows x 8 lines at once. Called once the keys are
// done with. Always inlined: as a function of its own GCC finds nothing in it but prefetches, takes it
// for free of side effects and deletes the calls (GCC 12 did, until 2026-11-30: the 512-token prompt's
// query loads then took ~3x as long as from cache).
static inline __attribute__((always_inline)) void prefetch_q(const AttnArgs* a, int task, int part, int parts) {
    int next = task + pool_size(), h, t0, nq;
    if (next >= attn_blocks(a) * a->n_heads) return;
    block_of(a, next, &h, &t0, &nq);
    for (int j = part * nq / parts; j < (part + 1) * nq / parts; j++) {
        const char* row = (const char*)(a->q + (size_t)(t0 + j) * a->q_stride + (size_t)h * a->head_dim);
        for (size_t off = 0; off < a->head_dim * sizeof(float); off += 64) __builtin_prefetch(row + off, 0, 2);
    }
}

// n rows of head_dim keys or values starting at element `first` of `base`, as contiguous f32: in place
// when they already are (an f32 KV cache), else copied (strided rows) or widened (bf16) into `scratch`.
static const float* kv_rows(const AttnArgs* a, const void* base, size_t first, int n, float* scratch) {
    int hd = a->head_dim;
    if (!a->kv_bf16 && a->kv_stride == (size_t)hd) return (const float*)base + first;
    for (int r = 0; r < n; r++) {
        size_t at = first + (size_t)r * a->kv_stride;
        float* dst = scratch + (size_t)r * hd;
        if (a->kv_bf16)
            for (int i = 0; i < hd; i++) dst[i] = bf16_to_f32(((const uint16_t*)base)[at + i]);
        else
            memcpy(dst, (const float*)base + at, hd * sizeof(float));
    }
    return scratch;
}

// Where a block task's scores go: key row k of S^T (two vectors, lane j = query t0 + j) gets the
// scores times `scale`, with the causal mask applied (query j, at position causal_offset + t0 + j, sees
// keys up to its own position: -inf past it; keys up to the block's first position pos[0][0] are seen by
// every lane, so only the last few rows compare), and the lane-wise running maxima m[0], m[1] take them
// in. pos[0], pos[1]: the lanes' positions (block_positions). scale: a->scale on the f32 path; 1 on the
// bf16 path, which applies it inside its exp (block_softmax_pairs).
static inline __attribute__((always_inline)) void put_scores(const AttnArgs* a, vf* st, int k, vf s0, vf s1,
                                                             const vi pos[2], vf m[2], float scale) {
    s0 *= scale, s1 *= scale;
    if (a->causal_offset >= 0 && k > pos[0][0]) {
        vi key = (vi){0} + k;
        s0 = vselect(key > pos[0], (vf){0} - INFINITY, s0);
        s1 = vselect(key > pos[1], (vf){0} - INFINITY, s1);
    }
    m[0] = vmax(s0, m[0]);
    m[1] = vmax(s1, m[1]);
    st[2 * (size_t)k] = s0, st[2 * (size_t)k + 1] = s1;
}

static void block_positions(const AttnArgs* a, int t0, vi pos[2], vf m[2]) {
    for (int j = 0; j < VL; j++) pos[0][j] = a->causal_offset + t0 + j, pos[1][j] = a->causal_offset + t0 + VL + j;
    m[0] = m[1] = (vf){0} - INFINITY;
}

// The middle of a block task: S^T (n key rows, masked, with the lanes' maxima m) becomes the softmax
// numerators exp(s - max) in place, lane-wise; the sums go to *sum0, *sum1 (the division by the sum
// is applied to the output at the end).
static void block_softmax(vf* st, int n, const vf m[2], vf* sum0, vf* sum1) {
    vf s0 = {0}, s1 = {0};
    for (int k = 0; k < n; k++) {
        st[2 * k] = vexp_neg(st[2 * k] - m[0]);
        st[2 * k + 1] = vexp_neg(st[2 * k + 1] - m[1]);
        s0 += st[2 * k];
        s1 += st[2 * k + 1];
    }
    *sum0 = s0, *sum1 = s1;
}

// In an AVX-512 build the block tasks' transposes (Q^T in, O^T out) move 16 x 16 blocks in registers
// (matmul.c's mm512_transpose16) where head_dim is a multiple of 16; elsewhere element by element.
#if MM_X86 && VL == 16 && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define ATTN_TRANSPOSE16 1
#else
#define ATTN_TRANSPOSE16 0
#endif

// The start of a block task: Q^T (hd rows of two vectors) from the nq query rows t0.., lanes past the
// last query zero (their results are never written). Each query row is read once, contiguously (its
// rows are q_stride apart: reading down the columns would touch 32 rows per element).
static void block_load_q(const AttnArgs* a, vf* qt, int h, int t0, int nq) {
    int hd = a->head_dim;
#if ATTN_TRANSPOSE16
    if (hd % 16 == 0) {
        for (int half = 0; half < 2; half++)
            for (int i0 = 0; i0 < hd; i0 += 16) {
                __m512 r[16], o[16];
                for (int l = 0; l < 16; l++) {
                    int j = 16 * half + l;
                    r[l] = j < nq ? _mm512_loadu_ps(a->q + (size_t)(t0 + j) * a->q_stride + (size_t)h * hd + i0)
                                  : _mm512_setzero_ps();
                }
                mm512_transpose16(r, o);
                for (int l = 0; l < 16; l++) qt[2 * (i0 + l) + half] = (vf)o[l];
            }
        return;
    }
#endif
    for (int j = 0; j < ATTN_LANES; j++) {
        const float* qr = j < nq ? a->q + (size_t)(t0 + j) * a->q_stride + (size_t)h * hd : NULL;
        for (int i = 0; i < hd; i++) ((float*)&qt[2 * i])[j] = qr ? qr[i] : 0.0f;
    }
}

// The end of a block task: O^T / sum, written out as the nq query rows.
static void block_store(const AttnArgs* a, vf* ot, vf sum0, vf sum1, int h, int t0, int nq) {
    int hd = a->head_dim;
#if ATTN_TRANSPOSE16
    if (hd % 16 == 0) {
        for (int half = 0; half < 2; half++)
            for (int d0 = 0; d0 < hd; d0 += 16) {
                __m512 r[16], o[16];
                for (int l = 0; l < 16; l++) r[l] = (__m512)(ot[2 * (d0 + l) + half] / (half ? sum1 : sum0));
                mm512_transpose16(r, o);
                for (int l = 0; l < 16 && 16 * half + l < nq; l++)
                    _mm512_storeu_ps(a->out + (size_t)(t0 + 16 * half + l) * a->out_stride + (size_t)h * hd + d0, o[l]);
            }
        return;
    }
#endif
    for (int i = 0; i < hd; i++) {
        ot[2 * i] /= sum0;
        ot[2 * i + 1] /= sum1;
    }
    for (int j = 0; j < nq; j++) {
        float* o = a->out + (size_t)(t0 + j) * a->out_stride + (size_t)h * hd;
        for (int d = 0; d < hd; d++) o[d] = ((const float*)&ot[2 * d])[j];
    }
}

// Two consecutive bf16 values x[0], x[1] of a key or value row as exact f32 broadcasts from one 32-bit
// load: the word holds x[0] in its low half and x[1] in its high half, and a bf16 is the high half of
// its f32. (What kv_rows' widening computes, without the copy.)
static inline __attribute__((always_inline)) void bf16_pair(const uint16_t* x, vf* lo, vf* hi) {
    int32_t w;
    memcpy(&w, x, sizeof(w));
    vi v = (vi){0} + w;
    *lo = (vf)(v << 16);
    *hi = (vf)(v & ((vi){0} - 65536));   // -65536 = 0xffff0000
}

static void attention_block_task(void* ctx, int task) {
    const AttnArgs* a = ctx;
    int h, t0, nq;
    block_of(a, task, &h, &t0, &nq);
    int hd = a->head_dim, kvh = h / (a->n_heads / a->n_kv_heads);  // GQA: n_heads/n_kv_heads share a kv head
    int n = a->causal_offset >= 0 ? a->causal_offset + t0 + nq : a->n_keys;  // keys any lane can see
    size_t ks = a->kv_stride;
    size_t head = (size_t)kvh * a->kv_head_stride;
    // In AVX/AVX2 builds a bf16 cache with contiguous rows (the language model's) is read in place, two
    // values per load (bf16_pair): AVX2 level on a Zen 5, 7B prompt attention 63-66 -> 69-70% of the
    // FMA peak. Other keys and values, and other builds, go through kv_rows' f32 chunks: AVX-512 folds
    // an f32 broadcast into the FMA ({1to16}), and the shift and mask per pair made it 13% slower there.
    int pairs = VL == 8 && a->kv_bf16 && ks == (size_t)hd && hd % 2 == 0;
    const uint16_t* kb = (const uint16_t*)a->k + head;
    const uint16_t* vb = (const uint16_t*)a->v + head;

    // Scratch: Q^T (hd rows of two vectors), S^T (n rows), O^T (hd rows), and a chunk of K or V rows
    // copied out of the strided cache (its rows are a page apart: reading them in place thrashes the TLB).
    vf* qt = (vf*)attn_scratch((size_t)(2 * hd + n) * ATTN_LANES + (size_t)ATTN_CHUNK * hd);
    vf* st = qt + 2 * hd;
    vf* ot = st + 2 * (size_t)n;
    float* kv = (float*)(ot + 2 * hd);  // (ATTN_CHUNK, hd)
    block_load_q(a, qt, h, t0, nq);
    // S^T = K Q^T * scale, masked.
    vi pos[2];
    vf m[2];
    block_positions(a, t0, pos, m);
    for (int c0 = 0; c0 < n; c0 += ATTN_CHUNK) {
        int cn = n - c0 < ATTN_CHUNK ? n - c0 : ATTN_CHUNK;
        const float* kr = pairs ? NULL : kv_rows(a, a->k, head + (size_t)c0 * ks, cn, kv);
        int r = 0;
        for (; r + ATTN_KB <= cn; r += ATTN_KB) {  // ATTN_KB key rows share each Q^T load
            vf c[ATTN_KB][2] = {{{0}}};
            if (pairs) {
                const uint16_t* k0 = kb + (size_t)(c0 + r) * hd;
                for (int i = 0; i < hd; i += 2) {
                    vf q0 = qt[2 * i], q1 = qt[2 * i + 1], q2 = qt[2 * i + 2], q3 = qt[2 * i + 3];
#pragma GCC unroll 8
                    for (int u = 0; u < ATTN_KB; u++) {
                        vf x0, x1;
                        bf16_pair(k0 + (size_t)u * hd + i, &x0, &x1);
                        c[u][0] += x0 * q0;
                        c[u][1] += x0 * q1;
                        c[u][0] += x1 * q2;
                        c[u][1] += x1 * q3;
                    }
                }
            } else {
                const float* k0 = kr + (size_t)r * hd;
                for (int i = 0; i < hd; i++) {
                    vf q0 = qt[2 * i], q1 = qt[2 * i + 1];
#pragma GCC unroll 8
                    for (int u = 0; u < ATTN_KB; u++) {
                        float x = k0[(size_t)u * hd + i];
                        c[u][0] += x * q0;
                        c[u][1] += x * q1;
                    }
                }
            }
#pragma GCC unroll 8
            for (int u = 0; u < ATTN_KB; u++) put_scores(a, st, c0 + r + u, c[u][0], c[u][1], pos, m, a->scale);
        }
        for (; r < cn; r++) {
            vf c0v = {0}, c1v = {0};
            for (int i = 0; i < hd; i++) {
                float x = pairs ? bf16_to_f32(kb[(size_t)(c0 + r) * hd + i]) : kr[(size_t)r * hd + i];
                c0v += x * qt[2 * i];
                c1v += x * qt[2 * i + 1];
            }
            put_scores(a, st, c0 + r, c0v, c1v, pos, m, a->scale);
        }
    }
    vf sum0, sum1;
    block_softmax(st, n, m, &sum0, &sum1);
    prefetch_q(a, task, 0, 1);   // K is done with: room in L2 for the next block's queries
    // O^T = V^T P^T.
    for (int i = 0; i < 2 * hd; i++) ot[i] = (vf){0};
    for (int c0 = 0; c0 < n; c0 += ATTN_CHUNK) {
        int cn = n - c0 < ATTN_CHUNK ? n - c0 : ATTN_CHUNK;
        const float* vr = pairs ? NULL : kv_rows(a, a->v, head + (size_t)c0 * ks, cn, kv);
        const uint16_t* vbc = vb + (size_t)c0 * hd;   // the chunk's rows when read in place
        const vf* p = st + 2 * (size_t)c0;
        int i = 0;
        for (; i + ATTN_KB <= hd; i += ATTN_KB) {  // ATTN_KB head_dim rows share each P row load
            vf c[ATTN_KB][2];
#pragma GCC unroll 8
            for (int u = 0; u < ATTN_KB; u++) {
                c[u][0] = ot[2 * (i + u)];
                c[u][1] = ot[2 * (i + u) + 1];
            }
            for (int k = 0; k < cn; k++) {
                vf p0 = p[2 * k], p1 = p[2 * k + 1];
                if (pairs) {
                    const uint16_t* vk = vbc + (size_t)k * hd + i;
#pragma GCC unroll 8
                    for (int u = 0; u < ATTN_KB; u += 2) {
                        vf x0, x1;
                        bf16_pair(vk + u, &x0, &x1);
                        c[u][0] += x0 * p0;
                        c[u][1] += x0 * p1;
                        c[u + 1][0] += x1 * p0;
                        c[u + 1][1] += x1 * p1;
                    }
                } else {
                    const float* vk = vr + (size_t)k * hd + i;
#pragma GCC unroll 8
                    for (int u = 0; u < ATTN_KB; u++) {
                        c[u][0] += vk[u] * p0;
                        c[u][1] += vk[u] * p1;
                    }
                }
            }
#pragma GCC unroll 8
            for (int u = 0; u < ATTN_KB; u++) {
                ot[2 * (i + u)] = c[u][0];
                ot[2 * (i + u) + 1] = c[u][1];
            }
        }
        for (; i < hd; i++)
            for (int k = 0; k < cn; k++) {
                float x = pairs ? bf16_to_f32(vbc[(size_t)k * hd + i]) : vr[(size_t)k * hd + i];
                ot[2 * i] += x * p[2 * k];
                ot[2 * i + 1] += x * p[2 * k + 1];
            }
    }
    block_store(a, ot, sum0, sum1, h, t0, nq);
}


#if MM_X86 && VL == 16   // an AVX-512 build (the vectors are zmm): the kernel carries its own target
// The block task on AVX512-BF16 (attention_block_bf16_task): a bf16 key/value cache with bf16_dots,
// the same blocks, scratch roles and softmax as above, with both products on vdpbf16ps, which
// multiplies PAIRS of bf16 and adds them to f32 lanes: lane j += x[2j] y[2j] + x[2j+1] y[2j+1]
// (products exact, f32 sums; denormals flushed). So every operand is laid out as pairs:
//   S^T = K Q^T: pairs along head_dim. A key row's (k[2i], k[2i+1]) is one 32-bit word of the cache,
//         broadcast; Q^T is stored as QP (head_dim/2 rows of two vectors), lane j of row i holding
//         bf16(q_j[2i]) | bf16(q_j[2i+1]) << 16. q is rounded to bf16 here.
//   O^T = V^T P^T: pairs along the keys. P^T becomes PP (key pair rows: lane j of row kp holds
//         bf16(p_j[2kp]) | bf16(p_j[2kp+1]) << 16), written over S^T in place; V becomes VP (rows of
//         head_dim words: v[2kp][i] | v[2kp+1][i] << 16), from which each head_dim index's pair is
//         broadcast. VP is made once per call for every kv head (zip_values_task) and shared by all
//         the head's query blocks. A task's odd last key is paired with a zero probability (its VP
//         row holds the next key's values, or zeros after the call's last key).
// Twice the products per instruction of the f32 FMA, and the bf16 cache is read as it is, without
// widening. Rounding q and p to bf16 costs ~2^-9 relative each (the test's bound: test_blocks).

// Keys the call's last query sees, and VP's rows per kv head: those keys in pairs.
static int attn_call_keys(const AttnArgs* a) { return a->causal_offset >= 0 ? a->causal_offset + a->T : a->n_keys; }
static int zip_rows(const AttnArgs* a) { return (attn_call_keys(a) + 1) / 2; }
// The rows VP's tiles are laid out for: zip_rows rounded up to an odd number, so the tiles are an odd
// multiple of 32 bytes apart. zip_values_task stores a row into every tile in turn; tiles a power of two
// apart would put all those stores into one L1 set (256 key pairs, a 512-token prompt: tiles 8 KB
// apart, the zip ~4x slower per row than at 1169 tokens).
static int vp_rows(const AttnArgs* a) { return zip_rows(a) | 1; }

// VP of kv head `kvh` (one pool task each), once per call for all its query blocks: row kp zips the
// value rows 2kp and 2kp + 1, word i = v[2kp][i] | v[2kp+1][i] << 16 (a zero row after an odd last
// key), stored in tiles of ATTN_KB words (vp_at): the product reads one tile from the first key pair to
// the last with its ATTN_KB x 2 accumulators in registers, a sequential stream with no reloads.
static size_t vp_at(const AttnArgs* a, int kp, int i) {
    int i0 = i - i % ATTN_KB, w = a->head_dim - i0 < ATTN_KB ? a->head_dim - i0 : ATTN_KB;
    return (size_t)i0 * vp_rows(a) + (size_t)kp * w + (size_t)(i - i0);
}

MM_TGT_BF16 static void zip_values_task(void* ctx, int kvh) {
    const AttnArgs* a = ctx;
    int hd = a->head_dim, rows = zip_rows(a), stride = vp_rows(a), n = attn_call_keys(a);
    const uint16_t* vb = (const uint16_t*)a->v + (size_t)kvh * a->kv_head_stride;
    uint32_t* vp = (uint32_t*)a->vp + (size_t)kvh * stride * hd;
    const __m512i zip_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                            39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i zip_hi = _mm512_add_epi16(zip_lo, _mm512_set1_epi16(16));
    _Static_assert(ATTN_KB == 8, "16 zipped words (one zmm) are two VP tiles' rows");
    for (int kp = 0; kp < rows; kp++) {
        const uint16_t* v0 = vb + (size_t)2 * kp * a->kv_stride;
        const uint16_t* v1 = 2 * kp + 1 < n ? v0 + a->kv_stride : NULL;
        int i = 0;
        if (v1)
            for (; i + 32 <= hd; i += 32) {   // words j of v0 and j + 32 (v1) side by side: four tiles' rows
                __m512i x0 = _mm512_loadu_si512((const void*)(v0 + i)), x1 = _mm512_loadu_si512((const void*)(v1 + i));
                __m512i lo = _mm512_permutex2var_epi16(x0, zip_lo, x1), hi = _mm512_permutex2var_epi16(x0, zip_hi, x1);
                uint32_t* dst = vp + (size_t)i * stride + (size_t)kp * ATTN_KB;   // vp_at(a, kp, i)
                _mm256_storeu_si256((__m256i*)dst, _mm512_castsi512_si256(lo));
                _mm256_storeu_si256((__m256i*)(dst + (size_t)ATTN_KB * stride), _mm512_extracti64x4_epi64(lo, 1));
                _mm256_storeu_si256((__m256i*)(dst + (size_t)2 * ATTN_KB * stride), _mm512_castsi512_si256(hi));
                _mm256_storeu_si256((__m256i*)(dst + (size_t)3 * ATTN_KB * stride), _mm512_extracti64x4_epi64(hi, 1));
            }
        for (; i < hd; i++) vp[vp_at(a, kp, i)] = v0[i] | (v1 ? (uint32_t)v1[i] << 16 : 0);
    }
}

// 2^u lane-wise for u <= 0, to ~2.5e-6 relative: u = n + f with n = round(u) (the 1.5 * 2^23 trick) and
// |f| <= 1/2, 2^f = e^(f ln2) by the degree-5 Taylor polynomial (|f ln2| <= ln2/2: error < 2.5e-6),
// then vscalefps multiplies by 2^n. Only the polynomial's 5 FMAs take a slot of the pipes the dot
// products run on (the max, adds and vscalefps do not); the softmax below works in base 2 to keep it so.
// Below u = -152 (-inf included) it returns exactly 0: p * 2^-152 < 2^-150 rounds to zero; NaN stays NaN.
// For the bf16 attention, whose probabilities are rounded to bf16 (2^-9) next.
MM_TGT_BF16 static inline __m512 exp2_neg_bf16(__m512 u) {
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    u = _mm512_max_ps(_mm512_set1_ps(-152.0f), u);   // (vmaxps returns its second operand for a NaN: kept)
    __m512 n = _mm512_sub_ps(_mm512_add_ps(u, magic), magic);
    __m512 f = _mm512_sub_ps(u, n);   // exact: u and n are within 1/2 of each other
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.3333558e-3f), f, _mm512_set1_ps(9.6181291e-3f));  // ln2^5/5!, ln2^4/4!
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));    // ln2^3/3!
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022651f));      // ln2^2/2!
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69314718f));      // ln2
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// The bf16 path's softmax, S^T (n key rows of unscaled scores, the lanes' maxima m) -> PP in place:
// pair row kp (two vectors) holds the numerators exp(scale * (s - max)) of key rows 2kp and 2kp + 1
// rounded to bf16, lane j = bf16(p_j[2kp]) | bf16(p_j[2kp+1]) << 16, and *sum0, *sum1 their f32 sums
// in key order (the division by the sum is applied to the output at the end). One pass: each score
// row is read once and each pair row written once. exp(scale * (s - max)) = 2^u with
// u = s * (scale log2 e) - max * (scale log2 e), one FMA (scale > 0, so the maximum of the scaled
// scores is scale * max). An odd last key is paired with a -inf row: 2^-inf is 0.
MM_TGT_BF16 static void block_softmax_pairs(vf* st, int n, const vf m[2], float scale, vf* sum0, vf* sum1) {
    if (n % 2) st[2 * n] = st[2 * n + 1] = (vf){0} - INFINITY;
    const __m512i zip = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    float c = scale * 1.44269504088896341f;
    vf s0 = {0}, s1 = {0}, cv = (vf){0} + c, b0 = -c * m[0], b1 = -c * m[1];
    for (int kp = 0; kp < (n + 1) / 2; kp++) {
        __m512 e0 = exp2_neg_bf16((__m512)(st[4 * kp] * cv + b0)), e1 = exp2_neg_bf16((__m512)(st[4 * kp + 1] * cv + b1));
        __m512 o0 = exp2_neg_bf16((__m512)(st[4 * kp + 2] * cv + b0)), o1 = exp2_neg_bf16((__m512)(st[4 * kp + 3] * cv + b1));
        s0 += (vf)e0, s1 += (vf)e1;
        s0 += (vf)o0, s1 += (vf)o1;
        // cvtne2ps: words 0-15 = bf16(second operand), 16-31 = bf16(first); zip pairs word j with j + 16
        st[2 * kp] = (vf)_mm512_permutexvar_epi16(zip, (__m512i)_mm512_cvtne2ps_pbh(o0, e0));
        st[2 * kp + 1] = (vf)_mm512_permutexvar_epi16(zip, (__m512i)_mm512_cvtne2ps_pbh(o1, e1));
    }
    *sum0 = s0, *sum1 = s1;
}

// Rows r..r+nk-1 of S^T (nk = ATTN_KB or 1) from the key rows r.. of kb (a kv head's keys) and QP,
// through put_scores. both = 0 when every lane of the first vector is masked for these keys (causal,
// keys after its last query): its rows are -inf without a product, exactly what the mask makes of them.
MM_TGT_BF16 static inline __attribute__((always_inline)) void bf16_scores(const AttnArgs* a, const vf* qp, const uint16_t* kb,
                                                                       vf* st, int r, int nk, int both,
                                                                       const vi pos[2], vf m[2]) {
    const uint16_t* k0 = kb + (size_t)r * a->kv_stride;
    __m512 c[ATTN_KB][2];
#pragma GCC unroll 8
    for (int u = 0; u < nk; u++) c[u][0] = c[u][1] = _mm512_setzero_ps();
    for (int i = 0; i < a->head_dim / 2; i++) {
        __m512bh q0 = (__m512bh)qp[2 * i], q1 = (__m512bh)qp[2 * i + 1];
#pragma GCC unroll 8
        for (int u = 0; u < nk; u++) {
            uint32_t pair;
            memcpy(&pair, k0 + (size_t)u * a->kv_stride + 2 * i, sizeof(pair));
            __m512bh kk = (__m512bh)_mm512_set1_epi32((int)pair);
            if (both) c[u][0] = _mm512_dpbf16_ps(c[u][0], kk, q0);
            c[u][1] = _mm512_dpbf16_ps(c[u][1], kk, q1);
        }
    }
#pragma GCC unroll 8
    for (int u = 0; u < nk; u++)
        put_scores(a, st, r + u, both ? (vf)c[u][0] : (vf){0} - INFINITY, (vf)c[u][1], pos, m, 1.0f);
}

MM_TGT_BF16 static void attention_block_bf16_task(void* ctx, int task) {
    const AttnArgs* a = ctx;
    int h, t0, nq;
    block_of(a, task, &h, &t0, &nq);
    int hd = a->head_dim, hp = hd / 2, kvh = h / (a->n_heads / a->n_kv_heads);
    int n = a->causal_offset >= 0 ? a->causal_offset + t0 + nq : a->n_keys;
    int n2 = (n + 1) / 2;   // key pairs
    const uint16_t* kb = (const uint16_t*)a->k + (size_t)kvh * a->kv_head_stride;

    // Scratch: QP (hp rows of two vectors), S^T (2 * n2 rows; the pair rows PP reuse it), O^T (hd rows).
    // VP was made once for the whole call (zip_values): this kv head's rows.
    vf* qp = (vf*)attn_scratch((size_t)(2 * hp + 4 * n2 + 2 * hd) * ATTN_LANES / 2);
    vf* st = qp + 2 * hp;
    vf* ot = st + 4 * (size_t)n2;
    const uint32_t* vp_head = a->vp + (size_t)kvh * vp_rows(a) * hd;
    // QP: a query row rounded to bf16 (vcvtne2ps2bf16) IS its pairs, word i = (q[2i], q[2i+1]); 16 rows
    // x 16 words at a time are transposed into the lanes (head_dim a multiple of 32; else one by one).
    for (int half = 0; half < 2 && hd % 32 == 0; half++)
        for (int i0 = 0; i0 < hp; i0 += 16) {
            __m512 r[16], o[16];
            for (int l = 0; l < 16; l++) {
                int j = 16 * half + l;
                r[l] = _mm512_setzero_ps();   // lanes past the last query
                if (j >= nq) continue;
                const float* qr = a->q + (size_t)(t0 + j) * a->q_stride + (size_t)h * hd + 2 * i0;
                r[l] = (__m512)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(qr + 16), _mm512_loadu_ps(qr));
            }
            mm512_transpose16(r, o);
            for (int l = 0; l < 16; l++) qp[2 * (i0 + l) + half] = (vf)o[l];
        }
    for (int j = 0; j < ATTN_LANES && hd % 32; j++) {
        const float* qr = j < nq ? a->q + (size_t)(t0 + j) * a->q_stride + (size_t)h * hd : NULL;
        for (int i = 0; i < hp; i++)
            ((uint32_t*)&qp[2 * i])[j] = qr ? f32_to_bf16(qr[2 * i]) | (uint32_t)f32_to_bf16(qr[2 * i + 1]) << 16 : 0;
    }
    // S^T = K Q^T, masked (unscaled: block_softmax_pairs applies the scale), ATTN_KB keys per register
    // block, read in place from the cache. Causal: the keys from nb on come after the first vector's
    // last query, so every lane of it is masked for them and only the second vector's products are made.
    vi pos[2];
    vf m[2];
    block_positions(a, t0, pos, m);
    int nb = a->causal_offset >= 0 && nq > VL ? a->causal_offset + t0 + VL : n;
    int r = 0;
    for (; r + ATTN_KB <= nb; r += ATTN_KB) bf16_scores(a, qp, kb, st, r, ATTN_KB, 1, pos, m);
    for (; r < nb; r++) bf16_scores(a, qp, kb, st, r, 1, 1, pos, m);
    for (; r + ATTN_KB <= n; r += ATTN_KB) bf16_scores(a, qp, kb, st, r, ATTN_KB, 0, pos, m);
    for (; r < n; r++) bf16_scores(a, qp, kb, st, r, 1, 0, pos, m);
    vf sum0, sum1;
    block_softmax_pairs(st, n, m, a->scale, &sum0, &sum1);
    // O^T = V^T P^T, ATTN_KB head_dim indices (one VP tile) at a time over all the key pairs; the
    // next block's queries are prefetched a part per tile (K is done with: room in L2 for them). The
    // key pairs from nb2 on are past nb, masked for the first vector: its probabilities there are 0,
    // and adding 0 x v leaves a sum as it is, so the full tiles skip those products (finite values;
    // the narrower last tile, head_dim not a multiple of ATTN_KB, makes them, to the same sums).
    int nb2 = (nb + 1) / 2;
    for (int i = 0; i < hd; i += ATTN_KB) {
        int w = hd - i < ATTN_KB ? hd - i : ATTN_KB;
        prefetch_q(a, task, i / ATTN_KB, (hd + ATTN_KB - 1) / ATTN_KB);
        const uint32_t* vt = vp_head + vp_at(a, 0, i);
        if (w == ATTN_KB) {
            __m512 c[ATTN_KB][2];
#pragma GCC unroll 8
            for (int u = 0; u < ATTN_KB; u++) c[u][0] = c[u][1] = _mm512_setzero_ps();
            int kp = 0;
            for (; kp < nb2; kp++) {
                __m512bh p0 = (__m512bh)st[2 * kp], p1 = (__m512bh)st[2 * kp + 1];
                const uint32_t* vr = vt + (size_t)kp * ATTN_KB;
#pragma GCC unroll 8
                for (int u = 0; u < ATTN_KB; u++) {
                    __m512bh vv = (__m512bh)_mm512_set1_epi32((int)vr[u]);
                    c[u][0] = _mm512_dpbf16_ps(c[u][0], vv, p0);
                    c[u][1] = _mm512_dpbf16_ps(c[u][1], vv, p1);
                }
            }
            for (; kp < n2; kp++) {   // the first vector's probabilities are 0 here: no products
                __m512bh p1 = (__m512bh)st[2 * kp + 1];
                const uint32_t* vr = vt + (size_t)kp * ATTN_KB;
#pragma GCC unroll 8
                for (int u = 0; u < ATTN_KB; u++)
                    c[u][1] = _mm512_dpbf16_ps(c[u][1], (__m512bh)_mm512_set1_epi32((int)vr[u]), p1);
            }
#pragma GCC unroll 8
            for (int u = 0; u < ATTN_KB; u++) ot[2 * (i + u)] = (vf)c[u][0], ot[2 * (i + u) + 1] = (vf)c[u][1];
        } else
            for (int u = 0; u < w; u++) {   // the last, narrower tile (head_dim not a multiple of ATTN_KB)
                __m512 c0v = _mm512_setzero_ps(), c1v = _mm512_setzero_ps();
                for (int kp = 0; kp < n2; kp++) {
                    __m512bh vv = (__m512bh)_mm512_set1_epi32((int)vt[(size_t)kp * w + u]);
                    c0v = _mm512_dpbf16_ps(c0v, vv, (__m512bh)st[2 * kp]);
                    c1v = _mm512_dpbf16_ps(c1v, vv, (__m512bh)st[2 * kp + 1]);
                }
                ot[2 * (i + u)] = (vf)c0v, ot[2 * (i + u) + 1] = (vf)c1v;
            }
    }
    block_store(a, ot, sum0, sum1, h, t0, nq);
}
// The bf16 path of attention(): VP for every kv head, then the block tasks.
static void attention_bf16(const AttnArgs* args) {
    static void* vp;        // (the caller's thread also runs block tasks: not its attn_scratch)
    static size_t bytes;
    AttnArgs a = *args;
    a.vp = mm_scratch_in(&vp, &bytes, (size_t)a.n_kv_heads * vp_rows(&a) * a.head_dim * sizeof(uint32_t), 0);
    pool_for(a.n_kv_heads, zip_values_task, &a);
    pool_for(attn_blocks(&a) * a.n_heads, attention_block_bf16_task, &a);
}

#define ATTN_HAVE_BF16 1
#else
#define ATTN_HAVE_BF16 0
#define attention_bf16 attention_ref  // never chosen: attention_bf16_available() is 0
#endif

// Dot product and y += a*x over n floats, VL at a time (unaligned loads through memcpy), scalar tail.
static float dot_f32(const float* a, const float* b, int n) {
    vf acc = {0};
    int i = 0;
    for (; i + VL <= n; i += VL) {
        vf x, y;
        memcpy(&x, a + i, sizeof(x));
        memcpy(&y, b + i, sizeof(y));
        acc += x * y;
    }
    float sum = 0;
    for (int j = 0; j < VL; j++) sum += acc[j];
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static void axpy_f32(float* y, float a, const float* x, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL) {
        vf xv, yv;
        memcpy(&xv, x + i, sizeof(xv));
        memcpy(&yv, y + i, sizeof(yv));
        yv += a * xv;
        memcpy(y + i, &yv, sizeof(yv));
    }
    for (; i < n; i++) y[i] += a * x[i];
}

// The same over a bf16 row (a KV cache of a bf16/q8 model): widen VL halves to f32 in registers.
typedef uint16_t vh __attribute__((vector_size(VL * sizeof(uint16_t))));

static vf widen_bf16(const uint16_t* p) {
    vh h;
    memcpy(&h, p, sizeof(h));
    return (vf)(__builtin_convertvector(h, vi) << 16);
}

static float dot_bf16(const float* a, const uint16_t* b, int n) {
    vf acc = {0};
    int i = 0;
    for (; i + VL <= n; i += VL) {
        vf x;
        memcpy(&x, a + i, sizeof(x));
        acc += x * widen_bf16(b + i);
    }
    float sum = 0;
    for (int j = 0; j < VL; j++) sum += acc[j];
    for (; i < n; i++) sum += a[i] * bf16_to_f32(b[i]);
    return sum;
}

static void axpy_bf16(float* y, float a, const uint16_t* x, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL) {
        vf yv;
        memcpy(&yv, y + i, sizeof(yv));
        yv += a * widen_bf16(x + i);
        memcpy(y + i, &yv, sizeof(yv));
    }
    for (; i < n; i++) y[i] += a * bf16_to_f32(x[i]);
}

// The sum of a vector's lanes as a tree (halves added, log2(VL) steps) rather than lane by lane: a
// decode step reduces one vector per key, and the serial chain was most of the score loop's work.
static float hsum(vf v) {
#if VL == 16
    typedef float v8 __attribute__((vector_size(32)));
    v8 h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#elif VL == 8
    vf h = v;
#endif
#if VL >= 8
    typedef float v4 __attribute__((vector_size(16)));
    v4 w = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
#else
    vf w = v;
#endif
    return (w[0] + w[2]) + (w[1] + w[3]);
}

// One vector of a key or value row: VL floats, or VL bf16 widened (bf16 is a compile-time constant
// in every caller, so each loop below is compiled once per cache type without a branch inside).
static inline __attribute__((always_inline)) vf kv_vec(const void* base, size_t at, int bf16) {
    if (bf16) return widen_bf16((const uint16_t*)base + at);
    vf x;
    memcpy(&x, (const float*)base + at, sizeof(x));
    return x;
}

#define ATTN_ROW_KEYS 4     // keys per step of the score loop: four dot products side by side
#define ATTN_ROW_STRIP 8    // vectors of the output row held in registers while the values stream
// Decode streams a head's keys, then its values, from the cache: rows of head_dim values one after
// the other, read once. The hardware prefetchers stop at every 4 KB page (the cache is in 4 KB pages:
// llava.c's build_state), so each row loop also prefetches the row ATTN_ROW_PF bytes ahead: 7B q8
// decode attention at position 1168, 32 layers, 2 threads on a Zen 5 with 67 GB/s of read bandwidth:
// 38 -> 58 GB/s (without it, ~38 GB/s whatever the bandwidth; 4, 8 and 16 KB ahead measured alike).
#define ATTN_ROW_PF 8192

// Prefetch row `row` (< n) of a key or value cache into L1, `ahead` rows ahead of the one being read.
static inline __attribute__((always_inline)) void row_prefetch(const void* base, size_t at, size_t stride, int row,
                                                               int n, int ahead, int hd, int bf16) {
    if (row + ahead >= n) return;
    const char* r = (const char*)base + (at + (size_t)ahead * stride) * (bf16 ? 2 : 4);
    for (int off = 0; off < hd * (bf16 ? 2 : 4); off += 64) __builtin_prefetch(r + off, 0, 3);
}

// scores[s] = q . k_s * scale for keys 0..n-1 of one head (head_dim a multiple of VL).
static inline __attribute__((always_inline)) void row_scores(float* att, const float* q, const AttnArgs* a,
                                                             size_t head, int n, int bf16) {
    int hd = a->head_dim, s = 0, ahead = ATTN_ROW_PF / (hd * (bf16 ? 2 : 4)) + 1;
    size_t ks = a->kv_stride;
    for (; s + ATTN_ROW_KEYS <= n; s += ATTN_ROW_KEYS) {
        size_t at = head + (size_t)s * ks;
        vf acc[ATTN_ROW_KEYS] = {{0}};
        for (int j = 0; j < ATTN_ROW_KEYS; j++) row_prefetch(a->k, at + j * ks, ks, s + j, n, ahead, hd, bf16);
        for (int i = 0; i < hd; i += VL) {
            vf x;
            memcpy(&x, q + i, sizeof(x));
            for (int j = 0; j < ATTN_ROW_KEYS; j++) acc[j] += x * kv_vec(a->k, at + j * ks + i, bf16);
        }
        for (int j = 0; j < ATTN_ROW_KEYS; j++) att[s + j] = hsum(acc[j]) * a->scale;
    }
    for (; s < n; s++) {
        vf acc = {0};
        for (int i = 0; i < hd; i += VL) {
            vf x;
            memcpy(&x, q + i, sizeof(x));
            acc += x * kv_vec(a->k, head + (size_t)s * ks + i, bf16);
        }
        att[s] = hsum(acc) * a->scale;
    }
}

// o = sum_s p_s v_s over keys 0..n-1, o in strips of `strip` vectors that stay in registers while
// every value row streams through once per strip (strip divides head_dim / VL).
static inline __attribute__((always_inline)) void row_values(float* o, const float* p, const AttnArgs* a,
                                                             size_t head, int n, int strip, int bf16) {
    int hd = a->head_dim, ahead = ATTN_ROW_PF / (hd * (bf16 ? 2 : 4)) + 1;
    for (int c = 0; c < hd; c += strip * VL) {
        vf acc[ATTN_ROW_STRIP] = {{0}};
        for (int s = 0; s < n; s++) {
            size_t at = head + (size_t)s * a->kv_stride + c;
            if (c == 0) row_prefetch(a->v, at, a->kv_stride, s, n, ahead, hd, bf16);   // (later strips: from L2)
            for (int j = 0; j < ATTN_ROW_STRIP; j++)
                if (j < strip) acc[j] += p[s] * kv_vec(a->v, at + (size_t)j * VL, bf16);
        }
        for (int j = 0; j < strip; j++) memcpy(o + c + j * VL, &acc[j], sizeof(vf));
    }
}

// softmax in place, lane-wise exp (vexp_neg, ~1 ulp) and lane partial sums, the lanes' total in double.
static void softmax_vec(float* x, int n) {
    vf mv;
    int i = 0;
    float max = x[0];
    if (n >= VL) {
        memcpy(&mv, x, sizeof(mv));
        for (i = VL; i + VL <= n; i += VL) {
            vf y;
            memcpy(&y, x + i, sizeof(y));
            mv = vselect(y > mv, y, mv);
        }
        for (int j = 0; j < VL; j++) if (mv[j] > max) max = mv[j];
    }
    for (int k = i; k < n; k++) if (x[k] > max) max = x[k];
    vf sv = {0};
    double sum = 0;
    for (i = 0; i + VL <= n; i += VL) {
        vf y;
        memcpy(&y, x + i, sizeof(y));
        y = vexp_neg(y - max);
        sv += y;
        memcpy(x + i, &y, sizeof(y));
    }
    for (int j = 0; j < VL; j++) sum += sv[j];
    for (; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
    float inv = (float)(1.0 / sum);
    for (i = 0; i < n; i++) x[i] *= inv;
}

// One query row (decode): scores over the keys, softmax, then the weighted sum of the values.
// Memory-bound on the KV cache (each key and value row is read once per head). Task = t * n_heads + h.
static void attention_row_task(void* ctx, int task) {
    const AttnArgs* a = ctx;
    int h = task % a->n_heads, t = task / a->n_heads;
    int hd = a->head_dim, kvh = h / (a->n_heads / a->n_kv_heads);
    int n = a->causal_offset >= 0 ? a->causal_offset + t + 1 : a->n_keys;
    float* att = attn_scratch((size_t)n + 16);
    const float* q = a->q + (size_t)t * a->q_stride + (size_t)h * hd;
    float* o = a->out + (size_t)t * a->out_stride + (size_t)h * hd;
    size_t head = (size_t)kvh * a->kv_head_stride;
    int strip = ATTN_ROW_STRIP;
    while (strip > 1 && (hd / VL) % strip) strip /= 2;
    if (hd % VL == 0) {     // every real model (head_dim 64, 128)
        if (a->kv_bf16) row_scores(att, q, a, head, n, 1);
        else row_scores(att, q, a, head, n, 0);
        softmax_vec(att, n);
        if (a->kv_bf16) row_values(o, att, a, head, n, strip, 1);
        else row_values(o, att, a, head, n, strip, 0);
        return;
    }
    for (int s = 0; s < n; s++) {   // head_dim not a multiple of the vector: one key at a time
        size_t at = head + (size_t)s * a->kv_stride;
        float dot = a->kv_bf16 ? dot_bf16(q, (const uint16_t*)a->k + at, hd) : dot_f32(q, (const float*)a->k + at, hd);
        att[s] = dot * a->scale;
    }
    softmax(att, n);
    memset(o, 0, hd * sizeof(float));
    for (int s = 0; s < n; s++) {
        size_t at = head + (size_t)s * a->kv_stride;
        if (a->kv_bf16) axpy_bf16(o, att[s], (const uint16_t*)a->v + at, hd);
        else axpy_f32(o, att[s], (const float*)a->v + at, hd);
    }
}


// The definition, one (query row t, head h) per task, task = t * n_heads + h: scores s_j = q . k_j *
// scale for the keys the row may see, p = softmax(s), out = sum_j p_j v_j. Scalar loops, f32
// accumulation (bf16 keys and values are widened exactly).
static void attention_ref_task(void* ctx, int task) {
    const AttnArgs* a = ctx;
    int h = task % a->n_heads, t = task / a->n_heads;
    int hd = a->head_dim, kvh = h / (a->n_heads / a->n_kv_heads);  // GQA: n_heads/n_kv_heads share a kv head
    int n = a->causal_offset >= 0 ? a->causal_offset + t + 1 : a->n_keys;  // the causal mask: keys 0..pos
    float* p = attn_scratch((size_t)n);  // (n,) scores, then probabilities
    const float* q = a->q + (size_t)t * a->q_stride + (size_t)h * hd;
    const float* k32 = a->k; const uint16_t* k16 = a->k;  // the keys as f32 or as bf16, per kv_bf16
    const float* v32 = a->v; const uint16_t* v16 = a->v;
    size_t head = (size_t)kvh * a->kv_head_stride;
    for (int j = 0; j < n; j++) {
        size_t at = head + (size_t)j * a->kv_stride;
        float dot = 0.0f;
        for (int i = 0; i < hd; i++) dot += q[i] * (a->kv_bf16 ? bf16_to_f32(k16[at + i]) : k32[at + i]);
        p[j] = dot * a->scale;
    }
    softmax(p, n);
    float* o = a->out + (size_t)t * a->out_stride + (size_t)h * hd;
    for (int i = 0; i < hd; i++) o[i] = 0.0f;
    for (int j = 0; j < n; j++) {
        size_t at = head + (size_t)j * a->kv_stride;
        for (int i = 0; i < hd; i++) o[i] += p[j] * (a->kv_bf16 ? bf16_to_f32(v16[at + i]) : v32[at + i]);
    }
}

static void attention_ref(const AttnArgs* a) {
    pool_for(a->T * a->n_heads, attention_ref_task, (void*)a);
}

// Whether attention(a) runs the block path on vdpbf16ps: allowed (bf16 cache, bf16_dots), an AVX-512
// build on a CPU with AVX512-BF16 not capped by LLAVA_ISA, a prompt long enough for the block path.
static int attention_bf16_available(void) { return ATTN_HAVE_BF16 && !kernels_scalar() && mm_has_bf16; }
static int attention_bf16_dots(const AttnArgs* a) {
    return a->kv_bf16 && a->bf16_dots && a->head_dim % 2 == 0 && a->T >= ATTN_ROW_MAX_T && attention_bf16_available();
}

// The fast path for the CPU and the shape at hand (see above).
static void attention(const AttnArgs* a) {
    if (kernels_scalar()) attention_ref(a);
    else if (a->T < ATTN_ROW_MAX_T) pool_for(a->T * a->n_heads, attention_row_task, (void*)a);
    else if (attention_bf16_dots(a)) attention_bf16(a);
    else pool_for(attn_blocks(a) * a->n_heads, attention_block_task, (void*)a);
}
