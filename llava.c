/*
 * llava.c: inference for LLaVA-NeXT-Video (llava-hf/LLaVA-NeXT-Video-7B-hf) in a few files of C.
 *
 * A video (or an image) and a question go in; frames are sampled and preprocessed (video.c), run
 * through the CLIP ViT vision tower, average-pooled 2x2, projected into the language model's space by
 * a two-layer GELU MLP, spliced into the prompt in place of the <video> placeholders, and the Llama
 * (Vicuna-7B) decoder streams the answer. Images take LLaVA-NeXT's "anyres" path instead (a base view
 * plus tiles, no pooling, an image_newline after each row of the tile grid), and several images and
 * videos can share one question. Text-only prompts work too.
 *
 * Weights are f32, bf16, q8 (int8 with per-group scales) or q4 (the language model in 4 bits with
 * per-group scales, the vision tower and projector in q8), as export.py wrote them; the KV cache is
 * f32 for f32 weights and bf16 otherwise.
 *
 * It mirrors Hugging Face transformers' LlavaNextVideoForConditionalGeneration module by module; the
 * block functions carry the names of the HF modules they follow (clip_encoder_layer is
 * CLIPEncoderLayer, llama_decoder_layer is LlamaDecoderLayer, ...) and the comments say which line of
 * transformers each step follows where that is not obvious. doc/model.md tells the whole model in
 * prose. The numbers are checked against transformers on tiny random-weight models in test/.
 *
 * The pipeline is a chain of functions that the command line, the tests and a chat loop can all call:
 *   build_model            mmap the checkpoint, check its header, pack the weights for the kernels
 *   load_media             read and preprocess the images and videos (video.c); no model math yet
 *   build_prompt_ids       chat template -> token ids, each placeholder expanded to its feature count
 *   encode_media           vision tower -> (pooling) -> projector -> (anyres packing): feature rows
 *   merge_embeddings       token embeddings with the feature rows scattered into the placeholders
 *   prefill                the prompt through the decoder at any position of the KV cache (a second
 *                          turn appends to the first; it does not restart)
 *   decode_step            one token through the decoder
 *   sample / generate      the next token from the logits; the streaming loop around both
 * run() at the bottom strings them together for one question.
 *
 * What it is not: a server, a batched engine, or a trainer. One prompt, one answer, one process.
 *
 * Build:  make            (gcc -O3 -march=native; libc, libm and pthreads only)
 * Run:    ./llava model.bin -v clip.y4m -p "What happens in this video?"
 *
 * File map (a unity build: the other chapters are #included here, base.c first):
 *   base.c       errors (fatal), checked allocation, timing, bf16 conversion: used by every file
 *   matmul.c     thread pool and y = x W^T (scalar reference + SIMD kernels per instruction set)
 *   kernels.c    attention and the activations (scalar definitions + vectorised versions)
 *   tokenizer.c  Llama SentencePiece BPE, as the HF tokenizer of this model behaves
 *   video.c      Y4M / raw RGB / PPM reading, frame sampling, resize + crop + normalize, anyres tiles
 *   llava.c      this file: checkpoint, blocks, vision tower, projector, Llama, sampler, CLI
 * The machine-specific code (intrinsics, vector types, #if on the instruction set) is in matmul.c and
 * kernels.c only: this file is plain C.
 */
#include "base.c"       // first: every other chapter relies on it
#include "matmul.c"
#include "kernels.c"
#include "tokenizer.c"
#include "video.c"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// Messages on stderr: timings (info) and a progress line that rewrites itself (a terminal only).
// stdout carries the answer alone. -q silences both; errors (fatal) are always printed.

static int g_quiet;     // -q
static int g_progress;  // stderr is a terminal and not -q: show progress lines
static struct { const char* stage; double t0; } g_prog;

__attribute__((format(printf, 1, 2)))
static void info(const char* fmt, ...) {
    if (g_quiet) return;
    if (g_progress && g_prog.stage) { fputs("\r\033[K", stderr); g_prog.stage = NULL; }  // clear a progress line
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

// "stage: done/total (detail), elapsed, ~ETA" in place. A stage starts when its name changes.
static void progress(const char* stage, double done, double total, const char* unit) {
    if (!g_progress) return;
    // "\r\033[K": back to the start of the line and clear it (the ANSI erase-in-line), so the line
    // is rewritten in place; ETA = the time so far per unit done, times the units left.
    double t = now_seconds();
    if (g_prog.stage != stage) { g_prog.stage = stage; g_prog.t0 = t; }
    double el = t - g_prog.t0, left = done > 0 ? el / done * (total - done) : 0;
    fprintf(stderr, "\r\033[K%s: %.0f/%.0f %s, %.1f s, ~%.0f s left", stage, done, total, unit, el, left);
    fflush(stderr);
}

static void progress_frames_read(int n) {  // video.c's hook while a stream is read
    if (g_progress && n % 25 == 0) { fprintf(stderr, "\r\033[Kreading frames: %d", n); fflush(stderr); g_prog.stage = "read"; }
}

// ----------------------------------------------------------------------------
// Config: the 1024-byte file header, field for field as export.py's HEADER_FIELDS

#define LLAVA_MAGIC 0x41564C4C  // "LLVA"
#define LLAVA_VERSION 2      // the format export.py writes; version 1 files load too (re-packed)
#define HEADER_SIZE 1024
#define MAX_PINPOINTS 16

typedef struct {
    uint32_t magic;
    int32_t version;
    int32_t weight_type;  // DType of the matmul weights: 0 f32, 1 bf16, 2 q8, 3 q4 (LLM q4, vision q8)
    int32_t group_size;   // q8, q4: inputs per scale (q4: of the language model's matrices)
    // language model (Llama)
    int32_t dim;          // hidden size, 4096
    int32_t hidden_dim;   // MLP intermediate size, 11008
    int32_t n_layers;     // 32
    int32_t n_heads;      // query heads, 32
    int32_t n_kv_heads;   // key/value heads (< n_heads means grouped-query attention)
    int32_t head_dim;     // 128
    int32_t vocab_size;   // rows of embed_tokens and lm_head, 32064 (padded; the tokenizer has 32002)
    int32_t max_pos;      // max_position_embeddings, the default context length
    float rms_eps;        // 1e-5
    float rope_theta;     // 10000
    float rope_scale;     // linear RoPE scaling factor (2.5 in today's hub config), 1 = none
    // vision tower (CLIP ViT)
    int32_t v_dim;        // 1024
    int32_t v_hidden_dim; // 4096
    int32_t v_layers;     // 24
    int32_t v_heads;      // 16
    int32_t image_size;   // 336
    int32_t patch_size;   // 14
    int32_t n_channels;   // 3
    float v_eps;          // LayerNorm eps, 1e-5
    int32_t v_act;        // 0 quick_gelu, 1 gelu
    int32_t feature_layer;   // index into CLIP's hidden_states tuple, -2 = output of the second-to-last layer
    int32_t select_strategy; // 0 "default": drop CLS, 1 "full": keep it
    // pooling + projector
    int32_t proj_act;     // 0 gelu (erf)
    int32_t pool_stride;  // 2: 24x24 patches -> 12x12 tokens per frame
    // special tokens
    int32_t bos, eos, pad, unk, image_token, video_token;
    // image preprocessing (OpenAI CLIP statistics)
    float image_mean[3], image_std[3];
    // anyres grid pinpoints, (height, width)
    int32_t n_pinpoints;
    int32_t pinpoints[MAX_PINPOINTS][2];
    // the tokenizer blob right after the header
    int32_t n_tokens;
    int32_t tokenizer_bytes;
    // q4 files only (0 in others): the group size of their q8 matrices, the vision tower's and the
    // projector's (a field added after the others, so files written before it read 0 here)
    int32_t vision_group_size;
} Config;

// ----------------------------------------------------------------------------
// Weights: pointers into the memory-mapped file. Per-layer tensors are stacked over layers.

typedef struct {
    float* class_embedding;     // (v_dim,)
    Matrix patch_embedding;     // (v_dim, n_channels*patch*patch), f32: the conv as a matmul over patches
    float* position_embedding;  // (n_patches + 1, v_dim)
    float* pre_ln_w;            // (v_dim,)  "pre_layrnorm" in the checkpoint
    float* pre_ln_b;            // (v_dim,)
    float* ln1_w; float* ln1_b; // (v_layers, v_dim)
    Matrix* wq; float* bq;      // (v_layers) x (v_dim, v_dim); (v_layers, v_dim)
    Matrix* wk; float* bk;
    Matrix* wv; float* bv;
    Matrix* wqkv; float* bqkv;  // (layers run) x (3 v_dim, v_dim); (layers run, 3 v_dim): wq | wk | wv and
                                // bq | bk | bv stacked at load (fuse_weights), NULL when not fused
    Matrix* wo; float* bo;
    float* ln2_w; float* ln2_b; // (v_layers, v_dim)
    Matrix* fc1; float* fc1_b;  // (v_layers) x (v_hidden_dim, v_dim); (v_layers, v_hidden_dim)
    Matrix* fc2; float* fc2_b;  // (v_layers) x (v_dim, v_hidden_dim); (v_layers, v_dim)
    float* post_ln_w; float* post_ln_b; // (v_dim,) unused by LLaVA: it only touches the CLS pooler output
} VisionWeights;

typedef struct {
    Matrix linear_1; float* b1; // (dim, v_dim); (dim,)
    Matrix linear_2; float* b2; // (dim, dim); (dim,)
    float* image_newline;       // (dim,) appended after every row of an anyres image grid
} ProjectorWeights;

typedef struct {
    Matrix embed_tokens;        // (vocab_size, dim)
    float* attn_norm;           // (n_layers, dim)  input_layernorm
    Matrix* wq;                 // (n_layers) x (n_heads*head_dim, dim)
    Matrix* wk;                 // (n_layers) x (n_kv_heads*head_dim, dim)
    Matrix* wv;                 // (n_layers) x (n_kv_heads*head_dim, dim)
    Matrix* wo;                 // (n_layers) x (dim, n_heads*head_dim)
    float* ffn_norm;            // (n_layers, dim)  post_attention_layernorm
    Matrix* w_gate;             // (n_layers) x (hidden_dim, dim)
    Matrix* w_up;               // (n_layers) x (hidden_dim, dim)
    Matrix* w_down;             // (n_layers) x (dim, hidden_dim)
    // Fused at load (fuse_weights, CPU only; NULL otherwise): the rows of wq | wk | wv, and of
    // w_gate | w_up, one matrix each, so one matmul reads the normed input once (see fuse_matrices)
    Matrix* wqkv;               // (n_layers) x (n_heads*head_dim + 2*n_kv_heads*head_dim, dim)
    Matrix* w_gate_up;          // (n_layers) x (2*hidden_dim, dim)
    float* final_norm;          // (dim,)
    Matrix lm_head;             // (vocab_size, dim), untied
} LlmWeights;

// Scratch buffers of the language model for up to `max_rows` tokens at once, plus the KV cache.
typedef struct {
    int max_rows;     // tokens per forward call (prefill is chunked to this)
    int ctx;          // positions in the KV cache
    float* x;         // (max_rows, dim) the residual stream
    float* xb;        // (max_rows, dim) normed input of a block
    float* q;         // (max_rows, n_heads*head_dim); one block holds q, k and v: with fused weights
                      // it is (max_rows, n_heads*head_dim + 2*n_kv_heads*head_dim), each row q | k | v
    float* k;         // (max_rows, n_kv_heads*head_dim) inside q's block (unfused weights)
    float* v;         // (max_rows, n_kv_heads*head_dim) inside q's block (unfused weights)
    float* att;       // (max_rows, n_heads*head_dim) attention output before o_proj
    float* hb;        // (max_rows, hidden_dim): gate; with fused weights (max_rows, 2*hidden_dim), gate | up
    float* hb2;       // (max_rows, hidden_dim): up; with fused weights silu(gate) * up
    float* logits;    // (vocab_size,) of the last row
    // The KV cache, (n_layers, n_kv_heads, ctx, head_dim): each head's keys contiguous, so decode streams
    // them instead of hopping pages. f32 for f32 weights (the fidelity tests); bf16 for bf16 and q8 weights,
    // which halves its memory (2.1 GB for 4,096 positions at 7B) and what each decode step reads.
    int kv_bf16;
    void* key_cache;
    void* value_cache;
    float* inv_freq;    // (head_dim/2,) RoPE frequencies, already divided by the linear scale
    float* rope_cos;    // (max_rows, head_dim/2) cos of the angles of the rows in flight
    float* rope_sin;    // (max_rows, head_dim/2)
    double progress_base, progress_total;  // prefill's rows done before this chunk, and in all (progress line)
} RunState;

// Scratch of the vision tower for a batch of up to max_views views (video frames or anyres tiles, each
// image_size x image_size). n_pos = n_patches + 1 rows per view: the CLS token, then the patches.
// All views of a batch go through every matmul together.
typedef struct {
    int max_views;  // views per batch this state was built for
    float* patches; // (max_views * n_patches, n_channels * patch * patch) views cut into flat patches
    float* x;       // (max_views * n_pos, v_dim) the residual stream
    float* xb;      // (max_views * n_pos, v_dim) normed input of a block, then a projection's output
    float* q;       // (max_views * n_pos, v_dim) queries (first the patch embeddings, see clip_embeddings);
                    // one block holds q, k and v: with fused weights (max_views * n_pos, 3 v_dim), q | k | v
    float* k;       // (max_views * n_pos, v_dim) keys, inside q's block (unfused weights)
    float* v;       // (max_views * n_pos, v_dim) values, inside q's block (unfused weights)
    void* kh;       // (max_views, v_heads, n_pos, head_dim) k regrouped per head for attention, f32 or bf16
    void* vh;       // (max_views, v_heads, n_pos, head_dim) v regrouped per head
    float* att;     // (max_views * n_pos, v_dim) attention output before out_proj
    float* hb;      // (max_views * n_pos, v_hidden_dim) the MLP's hidden layer
} VisionState;

typedef struct {
    Config config;
    VisionWeights vision;
    ProjectorWeights projector;
    LlmWeights llm;
    Tokenizer tokenizer;
    RunState state;
    VisionState vision_state;  // built for a batch of views while the vision tower runs
    const char* path;  // for error messages
    void* data;        // the mmap
    size_t file_size;
} Model;

// Accelerator hooks: all NULL in the CPU build. llava.cu (make llava_cuda) fills them in, and each
// stage below that names one hands its work to the GPU when it is set (the rest stays this file's).
struct VideoFeatures; struct ImageFeatures;
static struct {
    void (*load_weights)(Model* m);                         // build_model: instead of packing for the CPU
    void (*build_state)(Model* m, int ctx, int max_rows);   // the scratch and the KV cache live there
    void (*free_state)(RunState* s);
    void (*video_features)(Model* m, struct VideoFeatures* vf);
    void (*image_features)(Model* m, struct ImageFeatures* f);
    void (*prefill)(Model* m, const float* embeds, int T, int pos, float* all_logits);
    void (*decode_step)(Model* m, int token, int pos);
} llava_accel;


// ----------------------------------------------------------------------------
// Checkpoint: mmap the file, check the header, hand out tensors in export.py's order

// A cursor over the mapped file that refuses to run past its end (a truncated file is an error,
// never an out-of-bounds read).
typedef struct {
    const char* path;
    char* base;
    size_t size, offset;
} Cursor;

// Tensor sizes are computed in 64 bits (check_config's bounds keep every product far below 2^64), so a
// header with huge dimensions meets this bounds check with its true size even where size_t has 32
// bits, instead of a wrapped-around small one.
static void* cursor_take(Cursor* c, uint64_t bytes) {
    c->offset = align_up(c->offset, 64);  // every tensor starts 64-byte aligned (export.py)
    if (c->offset > c->size || bytes > c->size - c->offset)
        fatal("%s: file is truncated (a tensor at byte %zu needs %llu bytes, the file has %zu)",
              c->path, c->offset, (unsigned long long)bytes, c->size);
    void* p = c->base + c->offset;
    c->offset += (size_t)bytes;
    return p;
}

static float* take_f32(Cursor* c, uint64_t count) { return cursor_take(c, count * sizeof(float)); }

// Bytes of a (rows, cols) matrix's values in the file (q8: 1 per weight, q4: 2 weights per byte;
// the scales follow separately).
static uint64_t matrix_data_bytes(DType type, int rows, int cols) {
    uint64_t n = (uint64_t)rows * cols;
    return type == DT_F32 ? 4 * n : type == DT_BF16 ? 2 * n : type == DT_Q8 ? n : n / 2;
}

// n_stack matrices of (rows, cols) in the given weight type, stored back to back (q8 / q4: all the
// values, then all scales: f32 for q8, bf16 for q4). Returns an array of n_stack Matrix views.
static Matrix* take_matrices(Cursor* c, int n_stack, int rows, int cols, DType type, int group) {
    uint64_t per = (uint64_t)rows * cols, bytes = matrix_data_bytes(type, rows, cols);
    char* data = cursor_take(c, n_stack * bytes);   // (a truncated file stops here, before the allocation)
    float* scales = NULL;
    uint16_t* scales_bf16 = NULL;
    if (type == DT_Q8) scales = take_f32(c, n_stack * per / group);
    if (type == DT_Q4) scales_bf16 = cursor_take(c, n_stack * per / group * sizeof(uint16_t));
    Matrix* m = xcalloc(n_stack, sizeof(Matrix));
    for (int l = 0; l < n_stack; l++) {
        m[l].type = type;
        m[l].rows = rows;
        m[l].cols = cols;
        m[l].data = data + l * bytes;
        m[l].scales = scales ? scales + l * per / group : NULL;
        m[l].scales_bf16 = scales_bf16 ? scales_bf16 + l * per / group : NULL;
        m[l].group = group;
        m[l].packed = NULL;
    }
    return m;
}

// Format 2: the same stack in the kernels' panel layout (matmul.c's pack_matrix, written by export.py):
// every matrix's panels, then every matrix's panel scales. The Matrix views point at them (panels,
// panel_scales); attach_panels later hands them to the kernels or turns them into rows.
static Matrix* take_panels(Cursor* c, int n_stack, int rows, int cols, DType type, int group) {
    Matrix shape = {.type = type, .rows = rows, .cols = cols, .group = group};
    uint64_t bytes, scale_bytes;
    matrix_panel_bytes(&shape, &bytes, &scale_bytes);
    char* data = cursor_take(c, n_stack * bytes);   // (a truncated file stops here, before the allocation)
    char* scales = scale_bytes ? cursor_take(c, n_stack * scale_bytes) : NULL;
    Matrix* m = xcalloc(n_stack, sizeof(Matrix));
    for (int l = 0; l < n_stack; l++) {
        m[l] = shape;
        m[l].panels = data + l * bytes;
        m[l].panel_scales = scales ? scales + l * scale_bytes : NULL;
    }
    return m;
}

static const char* weight_type_name(const Config* p) {
    return p->weight_type == DT_F32 ? "f32" : p->weight_type == DT_BF16 ? "bf16" : p->weight_type == DT_Q8 ? "q8"
         : "q4 (vision q8)";
}

// Refuses a header that is not ours, or whose numbers would make the forward passes read out of
// bounds, overflow a size product, or divide by zero. Everything after it may trust the Config.
static void check_config(const Config* p, const char* path) {
    // The file is little-endian (export.py writes '<' structs and numpy's little-endian arrays). On a
    // big-endian host the magic reads byte-swapped: say so instead of calling the file foreign.
    if (p->magic == __builtin_bswap32(LLAVA_MAGIC))
        fatal("%s: this is a llava.c model file, but this host is big-endian and the file is little-endian; "
              "big-endian hosts are not supported", path);
    if (p->magic != LLAVA_MAGIC)
        fatal("%s: not a llava.c model file (bad magic; convert a Hugging Face checkpoint with export.py)", path);
    if (p->version != 1 && p->version != 2)
        fatal("%s: unknown format version %d, this build reads versions 1 and 2 (re-export with this export.py)",
              path, p->version);
    if (p->weight_type < 0 || p->weight_type > 3) fatal("%s: unknown weight type %d", path, p->weight_type);
    // group sizes: at most 65536 (far above any sensible group), q8 a multiple of 4 (the packed
    // int8 word), q4 a multiple of 8 (the packed nibble word, MM_Q4_GROUP_MULT)
    if (p->weight_type == DT_Q8 && (p->group_size <= 0 || p->group_size % 4 || p->group_size > 65536))
        fatal("%s: bad q8 group size %d (a positive multiple of 4)", path, p->group_size);
    if (p->weight_type == DT_Q4 && (p->group_size <= 0 || p->group_size % MM_Q4_GROUP_MULT || p->group_size > 65536))
        fatal("%s: bad q4 group size %d (a positive multiple of %d)", path, p->group_size, MM_Q4_GROUP_MULT);
    if (p->weight_type == DT_Q4 && (p->vision_group_size <= 0 || p->vision_group_size % 4 || p->vision_group_size > 65536))
        fatal("%s: bad q8 group size %d of the vision matrices of a q4 file (a positive multiple of 4)", path,
              p->vision_group_size);
    if (p->weight_type != DT_Q8 && p->weight_type != DT_Q4 && p->group_size != 0)
        fatal("%s: group size %d on a %s file (only q8 and q4 files have groups; export.py writes 0)", path,
              p->group_size, p->weight_type == DT_F32 ? "f32" : "bf16");
    if (p->weight_type != DT_Q4 && p->vision_group_size != 0)
        fatal("%s: vision group size %d on a %s file (only q4 files have one; export.py writes 0)", path,
              p->vision_group_size, weight_type_name(p));
    // Enums: what the forward passes know how to compute.
    if (p->v_act != 0 && p->v_act != 1) fatal("%s: unknown vision activation %d (0 quick_gelu, 1 gelu)", path, p->v_act);
    if (p->proj_act != 0) fatal("%s: unknown projector activation %d (0 gelu)", path, p->proj_act);
    if (p->select_strategy != 0 && p->select_strategy != 1)
        fatal("%s: unknown vision feature select strategy %d (0 default, 1 full)", path, p->select_strategy);
    // Floats: finite and in the range where the formulas mean something (NaN fails every comparison).
    const struct { const char* name; float v, lo, hi; } fr[] = {
        {"rms_eps", p->rms_eps, 1e-12f, 1.0f}, {"v_eps", p->v_eps, 1e-12f, 1.0f},
        {"rope_theta", p->rope_theta, 1.0f, 1e12f}, {"rope_scale", p->rope_scale, 1e-3f, 1e6f},
        {"image_mean[0]", p->image_mean[0], 0.0f, 1.0f}, {"image_mean[1]", p->image_mean[1], 0.0f, 1.0f},
        {"image_mean[2]", p->image_mean[2], 0.0f, 1.0f}, {"image_std[0]", p->image_std[0], 1e-6f, 1e3f},
        {"image_std[1]", p->image_std[1], 1e-6f, 1e3f}, {"image_std[2]", p->image_std[2], 1e-6f, 1e3f},
    };
    for (size_t i = 0; i < sizeof(fr) / sizeof(fr[0]); i++)
        if (!(fr[i].v >= fr[i].lo && fr[i].v <= fr[i].hi))
            fatal("%s: header field %s = %g is outside [%g, %g]", path, fr[i].name, fr[i].v, fr[i].lo, fr[i].hi);
    // Bounds that keep every size product far from overflow and every loop sane.
    const struct { const char* name; int v, lo, hi; } r[] = {
        {"dim", p->dim, 1, 65536}, {"hidden_dim", p->hidden_dim, 1, 262144}, {"n_layers", p->n_layers, 1, 1024},
        {"n_heads", p->n_heads, 1, 1024}, {"n_kv_heads", p->n_kv_heads, 1, 1024}, {"head_dim", p->head_dim, 2, 4096},
        {"vocab_size", p->vocab_size, 1, 1 << 22}, {"max_pos", p->max_pos, 1, 1 << 24},
        {"v_dim", p->v_dim, 1, 65536}, {"v_hidden_dim", p->v_hidden_dim, 1, 262144},
        {"v_layers", p->v_layers, 1, 1024}, {"v_heads", p->v_heads, 1, 1024},
        {"image_size", p->image_size, 1, 8192}, {"patch_size", p->patch_size, 1, 1024},
        {"n_channels", p->n_channels, 1, 4}, {"pool_stride", p->pool_stride, 1, 64},
        {"n_tokens", p->n_tokens, 1, p->vocab_size}, {"tokenizer_bytes", p->tokenizer_bytes, 0, 1 << 30},
        {"n_pinpoints", p->n_pinpoints, 0, MAX_PINPOINTS},
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++)
        if (r[i].v < r[i].lo || r[i].v > r[i].hi)
            fatal("%s: header field %s = %d is outside [%d, %d]", path, r[i].name, r[i].v, r[i].lo, r[i].hi);
    // Shapes the blocks rely on: GQA needs whole groups of query heads per kv head, RoPE pairs
    // dimension j with j + head_dim/2, CLIP splits v_dim into equal heads.
    if (p->n_heads % p->n_kv_heads || p->head_dim % 2)
        fatal("%s: %d heads is not a multiple of %d kv heads, or head_dim %d is odd", path, p->n_heads,
              p->n_kv_heads, p->head_dim);
    if (p->v_dim % p->v_heads) fatal("%s: v_dim %d is not a multiple of v_heads %d", path, p->v_dim, p->v_heads);
    // The patch grid (24 x 24 for 336 / 14) must cut evenly into patches and into pooling windows.
    int grid = p->image_size / p->patch_size;
    if (p->image_size % p->patch_size || grid % p->pool_stride)
        fatal("%s: image_size %d, patch_size %d and pool_stride %d do not tile", path, p->image_size,
              p->patch_size, p->pool_stride);
    for (int i = 0; i < p->n_pinpoints; i++) {  // anyres tiles must be whole S x S patches
        int ph = p->pinpoints[i][0], pw = p->pinpoints[i][1], s = p->image_size;
        if (ph < s || pw < s || ph % s || pw % s || ph > 64 * s || pw > 64 * s)
            fatal("%s: grid pinpoint %dx%d (h x w) is not a multiple of image_size %d (at most 64x)", path, ph, pw, s);
    }
    // hidden_states has v_layers + 1 entries (the embeddings, then each layer), indexed like Python
    if (p->feature_layer < -(p->v_layers + 1) || p->feature_layer > p->v_layers)
        fatal("%s: feature_layer %d out of range for %d vision layers", path, p->feature_layer, p->v_layers);
    // Token ids: inside the tokenizer (pad and unk may be -1: none), and the four that steer the
    // pipeline distinct from each other (a placeholder that is also EOS would end every answer).
    const char* id_names[] = {"bos", "eos", "image_token", "video_token", "pad", "unk"};
    const int ids[] = {p->bos, p->eos, p->image_token, p->video_token, p->pad, p->unk};
    for (int i = 0; i < 6; i++)
        if (ids[i] < (i >= 4 ? -1 : 0) || ids[i] >= p->n_tokens)
            fatal("%s: header field %s = %d is outside the tokenizer's %d tokens", path, id_names[i], ids[i], p->n_tokens);
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            if (ids[i] == ids[j]) fatal("%s: header fields %s and %s are the same token %d", path, id_names[i], id_names[j], ids[i]);
    if (p->weight_type == DT_Q8 || p->weight_type == DT_Q4) {
        // every matmul's input width must hold whole quantization groups: the vision tower's and the
        // projector's (q8, with the q4 file's own vision group), then the language model's
        int gv = p->weight_type == DT_Q4 ? p->vision_group_size : p->group_size;
        const char* tl = p->weight_type == DT_Q4 ? "q4" : "q8";
        const int kv[] = {p->v_dim, p->v_hidden_dim, p->dim}, kl[] = {p->dim, p->n_heads * p->head_dim, p->hidden_dim};
        for (int i = 0; i < 3; i++)
            if (kv[i] % gv) fatal("%s: dimension %d is not a multiple of the q8 group %d", path, kv[i], gv);
        for (int i = 0; i < 3; i++)
            if (kl[i] % p->group_size) fatal("%s: dimension %d is not a multiple of the %s group %d", path, kl[i], tl,
                                             p->group_size);
    }
}

// Tensors in the order export.py's tensor_plan writes them.
static void memory_map_weights(Model* m, Cursor* c) {
    Config* p = &m->config;
    // One weight type for every matmul, except in q4 files: the language model's matrices (embed_tokens
    // and lm_head included) are q4 with group_size, the vision tower's and the projector's q8 with
    // vision_group_size (4 bits cost the small CLIP tower too much accuracy for little speed).
    DType wt = (DType)p->weight_type, wv = wt;
    int G = p->group_size, Gv = G;
    if (wt == DT_Q4) { wv = DT_Q8; Gv = p->vision_group_size; }
    int Dv = p->v_dim, Dvh = p->v_hidden_dim, Lv = p->v_layers, P = p->patch_size;
    int npos = (p->image_size / P) * (p->image_size / P) + 1;  // 24 x 24 patches + CLS = 577 at 336 / 14

    // CLIP vision tower. The norms, biases and embeddings are always f32 (small, and LayerNorm wants
    // them exact); the patch embedding is f32 too (a 588-wide conv run once per view); the six big
    // matrices of every layer are in the file's weight type.
    // Format 1 stores the matmul weights as rows, format 2 in the kernels' panels, with q|k|v and
    // gate|up already fused (fuse_weights builds them at load for format 1).
    Matrix* (*take)(Cursor*, int, int, int, DType, int) = p->version == 1 ? take_matrices : take_panels;
    VisionWeights* v = &m->vision;
    v->class_embedding = take_f32(c, Dv);
    Matrix* pe = take(c, 1, Dv, p->n_channels * P * P, DT_F32, 0);
    v->patch_embedding = *pe;
    free(pe);
    v->position_embedding = take_f32(c, (uint64_t)npos * Dv);
    v->pre_ln_w = take_f32(c, Dv);
    v->pre_ln_b = take_f32(c, Dv);
    v->ln1_w = take_f32(c, (size_t)Lv * Dv);
    v->ln1_b = take_f32(c, (size_t)Lv * Dv);
    if (p->version == 1) {
        v->wq = take_matrices(c, Lv, Dv, Dv, wv, Gv);  v->bq = take_f32(c, (size_t)Lv * Dv);
        v->wk = take_matrices(c, Lv, Dv, Dv, wv, Gv);  v->bk = take_f32(c, (size_t)Lv * Dv);
        v->wv = take_matrices(c, Lv, Dv, Dv, wv, Gv);  v->bv = take_f32(c, (size_t)Lv * Dv);
    } else {
        v->wqkv = take_panels(c, Lv, 3 * Dv, Dv, wv, Gv);
        v->bq = take_f32(c, (size_t)Lv * Dv);
        v->bk = take_f32(c, (size_t)Lv * Dv);
        v->bv = take_f32(c, (size_t)Lv * Dv);
    }
    v->wo = take(c, Lv, Dv, Dv, wv, Gv);  v->bo = take_f32(c, (size_t)Lv * Dv);
    v->ln2_w = take_f32(c, (size_t)Lv * Dv);
    v->ln2_b = take_f32(c, (size_t)Lv * Dv);
    v->fc1 = take(c, Lv, Dvh, Dv, wv, Gv); v->fc1_b = take_f32(c, (size_t)Lv * Dvh);
    v->fc2 = take(c, Lv, Dv, Dvh, wv, Gv); v->fc2_b = take_f32(c, (size_t)Lv * Dv);
    v->post_ln_w = take_f32(c, Dv);
    v->post_ln_b = take_f32(c, Dv);

    // The multi-modal projector (v_dim -> dim -> dim) and the image_newline row of anyres images.
    ProjectorWeights* pr = &m->projector;
    Matrix* l1 = take(c, 1, p->dim, Dv, wv, Gv);
    pr->linear_1 = *l1;
    free(l1);
    pr->b1 = take_f32(c, p->dim);
    Matrix* l2 = take(c, 1, p->dim, p->dim, wv, Gv);
    pr->linear_2 = *l2;
    free(l2);
    pr->b2 = take_f32(c, p->dim);
    pr->image_newline = take_f32(c, p->dim);

    // The Llama decoder: embed_tokens, then per-layer stacks in the order of one layer's forward pass,
    // then the final norm and the untied lm_head. The embedding table is stored in the weight type too
    // (dequantize_row reads one row per token: rows in both formats).
    LlmWeights* w = &m->llm;
    int L = p->n_layers, D = p->dim, F = p->hidden_dim;
    int qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    Matrix* emb = take_matrices(c, 1, p->vocab_size, D, wt, G);
    w->embed_tokens = *emb;
    free(emb);
    w->attn_norm = take_f32(c, (size_t)L * D);
    if (p->version == 1) {
        w->wq = take_matrices(c, L, qd, D, wt, G);
        w->wk = take_matrices(c, L, kvd, D, wt, G);
        w->wv = take_matrices(c, L, kvd, D, wt, G);
    } else {
        w->wqkv = take_panels(c, L, qd + 2 * kvd, D, wt, G);
    }
    w->wo = take(c, L, D, qd, wt, G);
    w->ffn_norm = take_f32(c, (size_t)L * D);
    if (p->version == 1) {
        w->w_gate = take_matrices(c, L, F, D, wt, G);
        w->w_up = take_matrices(c, L, F, D, wt, G);
    } else {
        w->w_gate_up = take_panels(c, L, 2 * F, D, wt, G);
    }
    w->w_down = take(c, L, D, F, wt, G);
    w->final_norm = take_f32(c, D);
    Matrix* head = take(c, 1, p->vocab_size, D, wt, G);
    w->lm_head = *head;
    free(head);
    // The file must end exactly after the last tensor (plus its alignment padding): a header that
    // disagrees with the data is caught here, before any tensor is read.
    c->offset = align_up(c->offset, 64);
    if (c->offset != c->size)
        fatal("%s: %zu bytes of unexpected data after the last tensor (file does not match its header)",
              c->path, c->size - c->offset);
}

// Tells the kernel it may drop the mapped file pages of [p, p + bytes) (whole pages inside the range only).
// They fault back in from the page cache if anything reads them again.
static void release_pages(const void* p, size_t bytes) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + bytes) & ~(page - 1);
    if (hi > lo) madvise((void*)lo, hi - lo, MADV_DONTNEED);
}

// Packs one weight for the fast kernels and, when the kernel keeps its own copy, releases the file
// pages it came from, so a 7B model is never held twice in RAM.
static void pack_and_release(Matrix* w) {
    if (w->packed) return;  // a fused matrix: packed, and its sources released, by fuse_matrices
    pack_matrix(w);
    if (w->packed) release_pages(w->data, matrix_data_bytes(w->type, w->rows, w->cols));
}

// Number of CLIP encoder layers to run: hidden_states[0] is the embeddings (after pre-LN), hidden_states[i]
// the output of layer i, so feature_layer -2 of 24 layers means the output of layer 23 and the last
// layer never needs to run (vision_feature_layer in LlavaNextVideoModel.get_image_features: it takes
// image_outputs.hidden_states[vision_feature_layer]).
static int vision_layers_needed(const Config* p) {
    return p->feature_layer < 0 ? p->v_layers + 1 + p->feature_layer : p->feature_layer;
}

// Calls fn on every matmul weight the forward passes use (CLIP layers past the feature layer are not):
// the fused matrices where fuse_weights built them, instead of their parts.
static void for_each_matrix(Model* m, void (*fn)(Matrix*)) {
    Config* p = &m->config;
    VisionWeights* v = &m->vision;
    LlmWeights* w = &m->llm;
    for (int l = 0; l < vision_layers_needed(p); l++) {
        if (v->wqkv) fn(&v->wqkv[l]);
        else { fn(&v->wq[l]); fn(&v->wk[l]); fn(&v->wv[l]); }
        fn(&v->wo[l]); fn(&v->fc1[l]); fn(&v->fc2[l]);
    }
    fn(&v->patch_embedding);
    fn(&m->projector.linear_1);
    fn(&m->projector.linear_2);
    for (int l = 0; l < p->n_layers; l++) {
        if (w->wqkv) fn(&w->wqkv[l]);
        else { fn(&w->wq[l]); fn(&w->wk[l]); fn(&w->wv[l]); }
        fn(&w->wo[l]);
        if (w->w_gate_up) fn(&w->w_gate_up[l]);
        else { fn(&w->w_gate[l]); fn(&w->w_up[l]); }
        fn(&w->w_down[l]);
    }
    fn(&w->lm_head);
}

// One matrix whose rows are those of parts[0], then parts[1], ... (same type, cols and group): y =
// x W^T over it computes every output column with the same dot product as the part's own matmul
// (the kernels' results depend on the input row and the weight column alone, not on the column's
// neighbours or on N), so fused outputs are bit-identical to separate ones, and x is read, packed or
// quantized once instead of once per part. The rows are copied into `scratch` (reused for every
// matrix: fresh memory per copy would cost a page fault per 4 KB) for pack_matrix; the panels then
// hold the weights and the parts' file pages are released, so the resident weights do not grow.
// Without packing (LLAVA_ISA=scalar, or a level that packs nothing) the matrix keeps its own copy
// of the rows as its data, and the file pages are released all the same.
typedef struct { char* data; char* scales; } FuseScratch;   // room for the largest fused matrix

// Bytes of one row's group scales: f32 for q8, bf16 for q4, none for f32 and bf16 weights.
static size_t row_scale_bytes(const Matrix* w) {
    size_t n = w->type == DT_Q8 || w->type == DT_Q4 ? (size_t)w->cols / w->group : 0;
    return n * (w->type == DT_Q8 ? sizeof(float) : sizeof(uint16_t));
}

static const void* matrix_scales(const Matrix* w) {
    return w->type == DT_Q8 ? (const void*)w->scales : (const void*)w->scales_bf16;
}

// memcpy of several (dst, src, bytes) segments split over the thread pool: the sources are mapped file
// pages, so the copy is mostly page faults, which the threads take in parallel (as pack_matrix does).
#define FUSE_MAX_SEGMENTS 6
typedef struct { int n, n_tasks; char* dst[FUSE_MAX_SEGMENTS]; const char* src[FUSE_MAX_SEGMENTS]; size_t bytes[FUSE_MAX_SEGMENTS]; } CopyArgs;
static void copy_task(void* ctx, int task) {
    const CopyArgs* c = ctx;
    for (int i = 0; i < c->n; i++) {
        size_t a = c->bytes[i] * task / c->n_tasks, b = c->bytes[i] * (task + 1) / c->n_tasks;
        memcpy(c->dst[i] + a, c->src[i] + a, b - a);
    }
}

static Matrix fuse_matrices(Matrix* const parts[], int n, FuseScratch* scratch) {
    Matrix f = *parts[0];
    f.rows = 0;
    for (int i = 0; i < n; i++) f.rows += parts[i]->rows;
    size_t row_bytes = matrix_data_bytes(f.type, 1, f.cols), row_scales = row_scale_bytes(&f);
    size_t data_bytes = (size_t)f.rows * row_bytes, scale_bytes = (size_t)f.rows * row_scales;
    if (n > FUSE_MAX_SEGMENTS / 2) fatal("internal: fusing %d matrices, at most %d", n, FUSE_MAX_SEGMENTS / 2);
    CopyArgs copy = {.n_tasks = pool_size() * 4};   // 4 tasks per thread: uneven progress evens out
    for (int i = 0, r = 0; i < n; r += parts[i]->rows, i++) {
        copy.dst[copy.n] = scratch->data + (size_t)r * row_bytes;
        copy.src[copy.n] = parts[i]->data;
        copy.bytes[copy.n++] = (size_t)parts[i]->rows * row_bytes;
        if (!row_scales) continue;
        copy.dst[copy.n] = scratch->scales + (size_t)r * row_scales;
        copy.src[copy.n] = matrix_scales(parts[i]);
        copy.bytes[copy.n++] = (size_t)parts[i]->rows * row_scales;
    }
    pool_for(copy.n_tasks, copy_task, &copy);
    const char* scales = scratch->scales;
    f.data = scratch->data;
    f.scales = f.type == DT_Q8 ? (const float*)scales : NULL;
    f.scales_bf16 = f.type == DT_Q4 ? (const uint16_t*)scales : NULL;
    f.packed = NULL;
    pack_matrix(&f);
    if (f.packed) {  // the kernels read only the panels
        f.data = NULL;
        f.scales = NULL;
        f.scales_bf16 = NULL;
    } else {         // the unpacked kernels read the rows: a copy of its own
        f.data = memcpy(xmalloc(data_bytes), scratch->data, data_bytes);
        char* own = row_scales ? memcpy(xmalloc(scale_bytes), scratch->scales, scale_bytes) : NULL;
        f.scales = f.type == DT_Q8 ? (const float*)own : NULL;
        f.scales_bf16 = f.type == DT_Q4 ? (const uint16_t*)own : NULL;
    }
    for (int i = 0; i < n; i++) release_pages(parts[i]->data, (size_t)parts[i]->rows * row_bytes);
    return f;
}

// Room in the scratch for fusing `rows` rows shaped like `part` (data, scales): grows *data, *scales.
static void fuse_room(const Matrix* part, size_t rows, size_t* data, size_t* scales) {
    size_t d = rows * matrix_data_bytes(part->type, 1, part->cols), s = rows * row_scale_bytes(part);
    if (d > *data) *data = d;
    if (s > *scales) *scales = s;
}

// Builds the fused matrices of the forward passes, layer by layer (one layer's copy in flight at a
// time): CLIP's q/k/v (and their biases), the language model's q/k/v and gate/up. (In a q4 file the
// CLIP tower is q8 and the language model q4: the scratch is sized for the larger of each.)
static void fuse_weights(Model* m) {
    Config* p = &m->config;
    VisionWeights* v = &m->vision;
    LlmWeights* w = &m->llm;
    int Lv = vision_layers_needed(p), Dv = p->v_dim;
    int qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    size_t data_room = 0, scale_room = 0;
    if (Lv > 0) fuse_room(&v->wq[0], (size_t)3 * Dv, &data_room, &scale_room);
    if (p->n_layers > 0) {
        fuse_room(&w->wq[0], (size_t)qd + 2 * kvd, &data_room, &scale_room);
        fuse_room(&w->w_gate[0], (size_t)2 * p->hidden_dim, &data_room, &scale_room);
    }
    FuseScratch scratch = {xmalloc(data_room), scale_room ? xmalloc(scale_room) : NULL};
    if (Lv > 0) v->wqkv = xcalloc(Lv, sizeof(Matrix));
    for (int l = 0; l < Lv; l++) {
        Matrix* qkv[] = {&v->wq[l], &v->wk[l], &v->wv[l]};
        v->wqkv[l] = fuse_matrices(qkv, 3, &scratch);
    }
    w->wqkv = xcalloc(p->n_layers, sizeof(Matrix));
    w->w_gate_up = xcalloc(p->n_layers, sizeof(Matrix));
    for (int l = 0; l < p->n_layers; l++) {
        Matrix* qkv[] = {&w->wq[l], &w->wk[l], &w->wv[l]};
        Matrix* gate_up[] = {&w->w_gate[l], &w->w_up[l]};
        w->wqkv[l] = fuse_matrices(qkv, 3, &scratch);
        w->w_gate_up[l] = fuse_matrices(gate_up, 2, &scratch);
    }
    free(scratch.data);
    free(scratch.scales);
}

// CLIP's fused q/k/v projection adds the three biases in one: bq | bk | bv per layer (both formats).
static void fuse_vision_biases(Model* m) {
    VisionWeights* v = &m->vision;
    int Lv = vision_layers_needed(&m->config), Dv = m->config.v_dim;
    v->bqkv = xmalloc((size_t)(Lv > 0 ? Lv : 1) * 3 * Dv * sizeof(float));
    const float* b[] = {v->bq, v->bk, v->bv};
    for (int l = 0; l < Lv; l++)
        for (int i = 0; i < 3; i++)
            memcpy(v->bqkv + ((size_t)l * 3 + i) * Dv, b[i] + (size_t)l * Dv, (size_t)Dv * sizeof(float));
}

// Format 2 on the CPU (attach_panels): the kernels read each matrix's panels where they lie in the
// mapped file, so nothing is copied and the pages load as the first pass touches them. The portable
// loop (LLAVA_ISA=scalar, CPUs without SIMD kernels) and the GPU upload read rows instead
// (panels_to_rows): they are rebuilt from the panels once, owned by the Matrix (free_model), and the
// panels' file pages released.
static void panels_to_rows(Matrix* w) {
    size_t scale_bytes = (size_t)w->rows * row_scale_bytes(w);
    uint64_t bytes, panel_scale_bytes;
    void* data = xmalloc(matrix_data_bytes(w->type, w->rows, w->cols));
    void* scales = scale_bytes ? xmalloc(scale_bytes) : NULL;
    matrix_panels_to_rows(w, w->panels, w->panel_scales, data, scales);
    w->data = data;
    w->scales = w->type == DT_Q8 ? scales : NULL;
    w->scales_bf16 = w->type == DT_Q4 ? scales : NULL;
    matrix_panel_bytes(w, &bytes, &panel_scale_bytes);
    release_pages(w->panels, bytes);
    if (panel_scale_bytes) release_pages(w->panel_scales, panel_scale_bytes);
}

static void attach_panels(Matrix* w) {
    if (!matrix_use_panels(w, w->panels, w->panel_scales)) panels_to_rows(w);
}

// Rows [r0, r0 + rows) of a fused matrix that holds rows (attach_panels made them) as a matrix of
// its own: format 2's q, k, v and gate, up for the GPU upload, which reads them separately.
static void fused_part(Matrix* part, const Matrix* f, int r0, int rows) {
    *part = *f;
    part->rows = rows;
    part->data = (const char*)f->data + (size_t)r0 * matrix_data_bytes(f->type, 1, f->cols);
    size_t ng = f->group ? (size_t)f->cols / f->group : 0;
    part->scales = f->scales ? f->scales + (size_t)r0 * ng : NULL;
    part->scales_bf16 = f->scales_bf16 ? f->scales_bf16 + (size_t)r0 * ng : NULL;
    part->panels = part->panel_scales = NULL;
}

// Format 2 for the GPU: rows for every matrix, and views of the fused matrices' parts, which llava.cu uploads one by one.
static void rows_for_accelerator(Model* m) {
    Config* p = &m->config;
    VisionWeights* v = &m->vision;
    LlmWeights* w = &m->llm;
    for_each_matrix(m, panels_to_rows);
    int Lv = vision_layers_needed(p), Dv = p->v_dim, L = p->n_layers, F = p->hidden_dim;
    int qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    Matrix** parts[] = {&v->wq, &v->wk, &v->wv, &w->wq, &w->wk, &w->wv, &w->w_gate, &w->w_up};
    for (int i = 0; i < 8; i++) *parts[i] = xcalloc(i < 3 ? (Lv > 0 ? Lv : 1) : L, sizeof(Matrix));
    for (int l = 0; l < Lv; l++)
        for (int i = 0; i < 3; i++) fused_part(&(*parts[i])[l], &v->wqkv[l], i * Dv, Dv);
    for (int l = 0; l < L; l++) {
        fused_part(&w->wq[l], &w->wqkv[l], 0, qd);
        fused_part(&w->wk[l], &w->wqkv[l], qd, kvd);
        fused_part(&w->wv[l], &w->wqkv[l], qd + kvd, kvd);
        fused_part(&w->w_gate[l], &w->w_gate_up[l], 0, F);
        fused_part(&w->w_up[l], &w->w_gate_up[l], F, F);
    }
}

// Bytes of memory this process may use: physical RAM, or less under an address-space limit (ulimit -v).
static size_t memory_available(void) {
    // sysconf may return -1 (unknown): then no limit is assumed rather than refusing every model.
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t ram = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : SIZE_MAX;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && (size_t)rl.rlim_cur < ram) ram = rl.rlim_cur;
    return ram;
}

// Opens and maps a model file: header (1024 bytes) | tokenizer blob | tensors, each 64-byte aligned, in
// export.py's order. The weights stay in the page cache, shared and read-only (MAP_PRIVATE: never
// written); the matmul weights are then packed for the kernels and their file pages released.
static void build_model(Model* m, const char* path) {
    memset(m, 0, sizeof(*m));
    m->path = path;
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer; it is refused
    // by the regular-file check right after. (It does not affect reading a regular file or mmap.)
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) fatal("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) fatal("%s: not a regular file", path);
    m->file_size = (size_t)st.st_size;
    if (m->file_size < HEADER_SIZE) fatal("%s: too small to be a llava.c model (%zu bytes)", path, m->file_size);
    m->data = mmap(NULL, m->file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->data == MAP_FAILED) fatal("%s: mmap failed: %s", path, strerror(errno));
#if defined(MADV_HUGEPAGE)
    // Format 2's kernels stream their weights from these pages: ask for 2 MB pages (Linux then reads the
    // file into 2 MB page-cache folios and maps them whole), the TLB reach pack_matrix's buffers have.
    // Only a hint: an error (no transparent huge pages for files) is ignored.
    madvise(m->data, m->file_size, MADV_HUGEPAGE);
#endif
    memcpy(&m->config, m->data, sizeof(Config));  // a copy: the header is read as a struct, fields in file order
    check_config(&m->config, path);

    Cursor c = {path, m->data, m->file_size, HEADER_SIZE};
    if ((size_t)m->config.tokenizer_bytes > m->file_size - HEADER_SIZE)
        fatal("%s: file is truncated inside the tokenizer", path);
    build_tokenizer(&m->tokenizer, (unsigned char*)m->data + HEADER_SIZE, m->config.tokenizer_bytes,
                    m->config.n_tokens, path);
    c.offset += m->config.tokenizer_bytes;
    memory_map_weights(m, &c);
    // Every token reads every weight, so the file must fit in memory (format 2 runs from the page cache,
    // format 1 packs into RAM): refuse up front, not after paging gigabytes in and out.
    size_t have = memory_available();
    if (m->file_size > have)
        fatal("%s: the model needs %.1f GB of memory for its weights, this machine has %.1f GB", path,
              m->file_size / 1e9, have / 1e9);
    if (llava_accel.load_weights) {
        if (m->config.version == 2) rows_for_accelerator(m);
        llava_accel.load_weights(m);
    } else if (m->config.version == 1) {
        double t0 = now_seconds();
        fuse_weights(m);                           // q/k/v and gate/up, packed as they are built
        for_each_matrix(m, pack_and_release);      // the kernels' panel layout, packed once
        fuse_vision_biases(m);
        info("%s: format 1: packing the weights took %.1f s; re-export with this export.py (format 2) to load "
             "without packing\n", path, now_seconds() - t0);
    } else {
        for_each_matrix(m, attach_panels);         // nothing to pack: the file is in the kernels' layout
        fuse_vision_biases(m);
    }
}

static void free_rows(Matrix* w) {
    free((void*)w->data);
    free((void*)w->scales);
    free((void*)w->scales_bf16);
}

// Frees the packed weights, the per-layer Matrix arrays and the tokenizer, and unmaps the file.
static void free_model(Model* m) {
    for_each_matrix(m, unpack_matrix);
    VisionWeights* v = &m->vision;
    LlmWeights* w = &m->llm;
    // Format 1: the fused matrices own their rows when they were not packed (fuse_matrices). Format
    // 2: every matrix owns the rows panels_to_rows made. free(NULL) otherwise.
    if (m->config.version == 2) for_each_matrix(m, free_rows);
    Matrix* fused[] = {v->wqkv, w->wqkv, w->w_gate_up};
    int n_fused[] = {vision_layers_needed(&m->config), m->config.n_layers, m->config.n_layers};
    for (int i = 0; i < 3 && m->config.version == 1; i++)
        for (int l = 0; fused[i] && l < n_fused[i]; l++) free_rows(&fused[i][l]);
    free(v->bqkv);
    Matrix* stacks[] = {v->wq, v->wk, v->wv, v->wqkv, v->wo, v->fc1, v->fc2, w->wq, w->wk, w->wv, w->wqkv,
                        w->wo, w->w_gate, w->w_up, w->w_gate_up, w->w_down};
    for (size_t i = 0; i < sizeof(stacks) / sizeof(stacks[0]); i++) free(stacks[i]);
    free_tokenizer(&m->tokenizer);
    munmap(m->data, m->file_size);
}


// ----------------------------------------------------------------------------
// Neural-net blocks, each the plain formula of the PyTorch module it stands for. The ones that need
// SIMD to be fast, the activations (quick_gelu, gelu, silu) and attention, are in kernels.c, each
// with its scalar definition beside it; the norms, RoPE and the residual adds stay here as plain
// loops (they touch each value once or twice and are bound by memory, not arithmetic).

// The norms' sums, in double (over 1024-4096 values they should not be the error term): sum of
// (x - c)^2 if square, else of x. Value i goes to partial sum i % 8 and the eight are added pairwise
// at the end: a fixed order, whatever the vector width, and eight independent chains that the
// compiler puts in vector lanes (one running sum is a chain of dependent adds, 4 cycles each: the
// vision tower's LayerNorm took 4.3% of its time that way, 2.1% this way).
#define NORM_LANES 8
static inline double norm_sum(const float* x, int n, double c, int square) {
    double s[NORM_LANES] = {0};
    int i = 0;
    for (; i + NORM_LANES <= n; i += NORM_LANES)
        for (int j = 0; j < NORM_LANES; j++) s[j] += square ? (x[i + j] - c) * (x[i + j] - c) : x[i + j];
    for (int j = 0; j < NORM_LANES && i + j < n; j++) s[j] += square ? (x[i + j] - c) * (x[i + j] - c) : x[i + j];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// torch.nn.LayerNorm over the last dim: biased variance, in f32.
static void layernorm(float* out, const float* x, const float* w, const float* b, int n, float eps) {
    double mean = norm_sum(x, n, 0, 0) / n;
    double var = norm_sum(x, n, mean, 1) / n;
    float r = (float)(1.0 / sqrt(var + eps));
    for (int i = 0; i < n; i++) out[i] = ((float)(x[i] - mean) * r) * w[i] + b[i];
}

// LlamaRMSNorm: y = w * (x / sqrt(mean(x^2) + eps)).
static void rmsnorm(float* out, const float* x, const float* w, int n, float eps) {
    double ss = norm_sum(x, n, 0, 1);
    float r = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * r);
}


// Norms over (T, n) buffers, split over the thread pool by blocks of rows (each row is computed
// alone, so any split gives the same bits). At 4,616 vision rows they are not negligible.
// 32 rows of 1,024-4,096 floats is 128-512 KB per task: big enough to amortise a dispatch, small
// enough that 4,616 rows make ~145 tasks to balance over the threads.
#define ROWS_PER_TASK 32
typedef struct {
    float* y;        // (T, n) output
    const float* x;  // (T, n) input rows
    const float* w;  // (n,) norm weight
    const float* b;  // (n,) LayerNorm bias, or NULL
    int T, n;
    float eps;
    int kind;        // ROWS_LAYERNORM, ROWS_RMSNORM: y = norm(x)
} RowArgs;
enum { ROWS_LAYERNORM, ROWS_RMSNORM };

// Row t of a norm (kind ROWS_LAYERNORM or ROWS_RMSNORM) into out: for norm_rows, and as the row
// function of matmul_rows, where a projection's input is made row by row inside the matmul (where
// it packs or quantizes its activations), never written out as a whole.
static void norm_row(const void* ctx, int t, float* out) {
    const RowArgs* a = ctx;
    const float* x = a->x + (size_t)t * a->n;
    if (a->kind == ROWS_LAYERNORM) layernorm(out, x, a->w, a->b, a->n, a->eps);
    else rmsnorm(out, x, a->w, a->n, a->eps);
}

static void rows_task(void* ctx, int task) {
    const RowArgs* a = ctx;
    int t1 = (task + 1) * ROWS_PER_TASK < a->T ? (task + 1) * ROWS_PER_TASK : a->T;
    for (int t = task * ROWS_PER_TASK; t < t1; t++) norm_row(a, t, a->y + (size_t)t * a->n);
}

static void for_rows(RowArgs a) { pool_for((a.T + ROWS_PER_TASK - 1) / ROWS_PER_TASK, rows_task, &a); }

// LayerNorm(x) (b != NULL) or RMSNorm(x) (b == NULL) of each of T rows of n, as row arguments: written
// to y by norm_rows, or made inside a matmul by matmul_rows(..., norm_row, &args, ...).
static RowArgs norm_args(float* y, const float* x, const float* w, const float* b, int T, int n, float eps) {
    return (RowArgs){y, x, w, b, T, n, eps, b ? ROWS_LAYERNORM : ROWS_RMSNORM};
}

static void norm_rows(float* y, const float* x, const float* w, const float* b, int T, int n, float eps) {
    for_rows(norm_args(y, x, w, b, T, n, eps));
}

// What follows a linear layer, as matmul_then's epilogue (an MMBlockFn: applied to each tile of the
// output while the GEMM has it in L1, instead of a pass over the whole output that reads it back from
// memory): a bias, y += b; a bias and an activation, y = act(y + b) (kernels.c's bias_activation_block:
// the bits of adding b, then the activation); or the residual add after a linear, r += y + b, in HF's
// order (the bias belongs to the linear: r + (y + b)), r shaped as y.
typedef struct {
    const float* b;   // (n,) bias, or NULL (post_residual)
    float* r;         // post_residual: the (T, n) rows that take the sum
    int act;          // post_bias_act: ACT_QUICK_GELU or ACT_GELU
    int T;            // post_bias_act: rows of the whole output (bias_activation_block needs them)
} Post;

// r[i] += y[i] + b[i] for i in [c0, c1), y or b NULL for none (0 added in their place, as written).
static void add_span(float* r, const float* y, const float* b, int c0, int c1) {
    for (int i = c0; i < c1; i++) r[i] += (y ? y[i] : 0.0f) + (b ? b[i] : 0.0f);
}

static void post_bias(const void* ctx, float* y, size_t ldy, int t0, int t1, int c0, int c1) {
    const Post* p = ctx;
    for (int t = t0; t < t1; t++) add_span(y + (size_t)t * ldy, NULL, p->b, c0, c1);
}

static void post_bias_act(const void* ctx, float* y, size_t ldy, int t0, int t1, int c0, int c1) {
    const Post* p = ctx;
    bias_activation_block(y, p->b, p->T, ldy, p->act, t0, t1, c0, c1);
}

static void post_residual(const void* ctx, float* y, size_t ldy, int t0, int t1, int c0, int c1) {
    const Post* p = ctx;
    for (int t = t0; t < t1; t++) add_span(p->r + (size_t)t * ldy, y + (size_t)t * ldy, p->b, c0, c1);
}

// RoPE in the HF "rotate_half" layout: dims (j, j + head_dim/2) rotate together by pos * inv_freq[j]
// (modeling_llama.py apply_rotary_pos_emb). Meta's layout pairs (2j, 2j+1) instead; we keep HF's so
// the weights are used exactly as stored. cos/sin (head_dim/2,) are those of this row's position.
static void rope(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float* v = x + (size_t)h * head_dim;
        for (int j = 0; j < half; j++) {
            float a = v[j], b = v[j + half];
            v[j] = a * cos_t[j] - b * sin_t[j];
            v[j + half] = b * cos_t[j] + a * sin_t[j];
        }
    }
}

// cos and sin of pos * inv_freq[j] for one position; the angle is rounded to f32 first, as HF's
// inv_freq @ position_ids is computed in f32.
static void rope_angles(float* cos_t, float* sin_t, int pos, const float* inv_freq, int half) {
    for (int j = 0; j < half; j++) {
        float angle = (float)pos * inv_freq[j];
        cos_t[j] = cosf(angle);
        sin_t[j] = sinf(angle);
    }
}

// Row `row` of a weight matrix as f32 (the embedding lookup, whatever the weight type): out (cols,).
// q8 / q4 is the integer value times its group's scale, exactly the weight the matmuls compute with.
static void dequantize_row(float* out, const Matrix* w, int row) {
    size_t off = (size_t)row * w->cols;
    if (w->type == DT_F32) {
        memcpy(out, (const float*)w->data + off, w->cols * sizeof(float));
    } else if (w->type == DT_BF16) {
        const uint16_t* b = (const uint16_t*)w->data + off;
        for (int i = 0; i < w->cols; i++) out[i] = bf16_to_f32(b[i]);
    } else if (w->type == DT_Q8) {
        const int8_t* q = (const int8_t*)w->data + off;
        const float* s = w->scales + off / w->group;
        for (int i = 0; i < w->cols; i++) out[i] = q[i] * s[i / w->group];
    } else {                        // q4: two weights per byte (low nibble first), w = (u - 8) * scale
        const uint8_t* b = (const uint8_t*)w->data + off / 2;
        const uint16_t* s = w->scales_bf16 + off / w->group;
        for (int i = 0; i < w->cols; i++)
            out[i] = (float)((i & 1 ? b[i / 2] >> 4 : b[i / 2] & 0x0f) - MM_Q4_OFFSET) * bf16_to_f32(s[i / w->group]);
    }
}



// Writes n values at element `index` of a KV cache of f32 or bf16 (round to nearest even, base.c's
// f32_to_bf16; reading back is exact, bf16_to_f32).
static void store_kv(void* cache, size_t index, const float* x, int n, int bf16) {
    if (!bf16) { memcpy((float*)cache + index, x, n * sizeof(float)); return; }
    uint16_t* h = (uint16_t*)cache + index;
    for (int i = 0; i < n; i++) h[i] = f32_to_bf16(x[i]);
}

// Rows of heads to a per-head layout, the way attention reads keys and values: row t (at src + t *
// stride) holds n_heads slices of head_dim values; slice h goes to element (h * head_stride + t) *
// head_dim of dst, as f32 or bf16. One pool task per head.
typedef struct {
    void* dst;
    const float* src;
    size_t stride, head_stride;
    int T, head_dim, bf16;
} HeadScatter;

static void scatter_heads_task(void* ctx, int h) {
    const HeadScatter* c = ctx;
    for (int t = 0; t < c->T; t++)
        store_kv(c->dst, ((size_t)h * c->head_stride + t) * c->head_dim, c->src + (size_t)t * c->stride + (size_t)h * c->head_dim,
                 c->head_dim, c->bf16);
}

static void scatter_heads(void* dst, const float* src, int T, int n_heads, int head_dim, size_t stride,
                          size_t head_stride, int bf16) {
    HeadScatter c = {dst, src, stride, head_stride, T, head_dim, bf16};
    pool_for(n_heads, scatter_heads_task, &c);
}


// ----------------------------------------------------------------------------
// Vision tower: CLIP ViT (modeling_clip.py CLIPVisionTransformer), all views of a batch at once

// Allocates the vision scratch for max_views views (see VisionState for every buffer's shape). At 7B
// shapes and 8 frames: 4,616 rows x (8 x 1024 + 4096) floats + the patches, about 230 MB. matmul.c's
// mm_alloc: buffers of 4 MB and more are 2 MB-aligned and advised for transparent huge pages, so the
// first touch faults 2 MB at a time instead of 4 KB, and attention's strided reads of q (a row every
// 12 KB) and the GEMM tiles' rows miss the TLB less (8-frame question, q8, Zen 5: vision 2.54 -> 2.47 s,
// medians of 4 interleaved runs; where THP is "always" this changes nothing).
static void build_vision_state(VisionState* s, const Config* p, int max_views) {
    int g = p->image_size / p->patch_size, n_pos = g * g + 1;
    size_t rows = (size_t)max_views * n_pos, D = p->v_dim;
    s->max_views = max_views;
    s->patches = mm_alloc((size_t)max_views * g * g * p->n_channels * p->patch_size * p->patch_size * sizeof(float));
    s->x = mm_alloc(rows * D * sizeof(float));
    s->xb = mm_alloc(rows * D * sizeof(float));
    s->q = mm_alloc(3 * rows * D * sizeof(float));  // q, k, v: fused rows, or three blocks
    s->k = s->q + rows * D;
    s->v = s->k + rows * D;
    s->kh = mm_alloc(rows * D * sizeof(float));
    s->vh = mm_alloc(rows * D * sizeof(float));
    s->att = mm_alloc(rows * D * sizeof(float));
    s->hb = mm_alloc(rows * p->v_hidden_dim * sizeof(float));
}

static void free_vision_state(VisionState* s) {
    free(s->patches); free(s->x); free(s->xb); free(s->q);
    free(s->kh); free(s->vh); free(s->att); free(s->hb);
    memset(s, 0, sizeof(*s));
}

// CLIPVisionEmbeddings, then pre_layrnorm: pixels (B, C, S, S) -> s->x (B, n_pos, v_dim), which is
// hidden_states[0] of the HF module.
static void clip_embeddings(Model* m, VisionState* s, const float* pixels, int B) {
    Config* p = &m->config;
    VisionWeights* w = &m->vision;
    int S = p->image_size, P = p->patch_size, C = p->n_channels, g = S / P;
    int np = g * g, N = np + 1, D = p->v_dim;
    // patch_embedding is a stride-P conv without bias: a matmul of each flattened (C, P, P) patch with
    // the (D, C*P*P) kernel. Patches are unrolled in (c, y, x) order to match the weight layout.
    int K = C * P * P;
    for (int b = 0; b < B; b++)
        for (int py = 0; py < g; py++)
            for (int px = 0; px < g; px++) {
                float* dst = s->patches + ((size_t)b * np + py * g + px) * K;
                for (int c = 0; c < C; c++)
                    for (int y = 0; y < P; y++)
                        memcpy(dst + (c * P + y) * P,
                               pixels + (((size_t)b * C + c) * S + py * P + y) * S + px * P, P * sizeof(float));
            }
    float* pe = s->q;  // (B * np, D) patch embeddings; q is not needed until the first layer
    matmul(pe, s->patches, &w->patch_embedding, B * np);
    // [CLS, patches] + position embeddings (position 0 is the CLS token's), then pre_layrnorm.
    for (int b = 0; b < B; b++)
        for (int t = 0; t < N; t++) {
            float* row = s->x + ((size_t)b * N + t) * D;
            const float* src = t == 0 ? w->class_embedding : pe + ((size_t)b * np + t - 1) * D;
            for (int i = 0; i < D; i++) row[i] = src[i] + w->position_embedding[(size_t)t * D + i];
            layernorm(row, row, w->pre_ln_w, w->pre_ln_b, D, p->v_eps);
        }
}

// The vision tower's q, k, v projection epilogue (matmul_then): the bias, then the block's k and v
// columns regrouped per head into kh and vh, (view, head, position, head_dim), as attention reads
// them, f32 or bf16 (store_kv's rounding): scatter_heads' result without a pass of its own.
typedef struct {
    const float* b;     // the bias of all of y's columns
    void* dst[2];       // kh, vh (either NULL: not in this matmul's output)
    int col[2];         // the columns of y where k (dst[0]) and v (dst[1]) start
    int N, D, hd, bf16; // positions per view, v_dim, head_dim; dst holds bf16
} QkvPost;

static void post_qkv(const void* ctx, float* y, size_t ldy, int t0, int t1, int c0, int c1) {
    const QkvPost* p = ctx;
    int H = p->D / p->hd;
    for (int t = t0; t < t1; t++) {
        float* yr = y + (size_t)t * ldy;
        add_span(yr, NULL, p->b, c0, c1);
        for (int d = 0; d < 2; d++) {
            if (!p->dst[d]) continue;
            int a = c0 > p->col[d] ? c0 : p->col[d], z = c1 < p->col[d] + p->D ? c1 : p->col[d] + p->D;
            for (int c = a, run; c < z; c += run) {   // one head's columns at a time
                int h = (c - p->col[d]) / p->hd, i = (c - p->col[d]) % p->hd;
                run = p->hd - i < z - c ? p->hd - i : z - c;
                size_t at = (((size_t)(t / p->N) * H + h) * p->N + t % p->N) * p->hd + i;
                store_kv(p->dst[d], at, yr + c, run, p->bf16);
            }
        }
    }
}

// CLIPEncoderLayer l over B views in s->x (B * n_pos rows), in place:
//   h = h + out_proj(self_attn(layer_norm1(h)))
//   h = h + fc2(act(fc1(layer_norm2(h))))       act = quick_gelu for CLIP ViT-L/14-336
static void clip_encoder_layer(Model* m, VisionState* s, int l, int B) {
    Config* p = &m->config;
    VisionWeights* w = &m->vision;
    int g = p->image_size / p->patch_size, N = g * g + 1, D = p->v_dim, Dh = p->v_hidden_dim;
    int H = p->v_heads, hd = D / H;
    int rows = B * N;
    // CLIPAttention: q, k, v projections with biases. Fused (fuse_weights): one matmul writes rows
    // q | k | v (stride 3D); otherwise three, into three blocks (stride D). The same values either way.
    // layer_norm1 is made row by row inside the q|k|v matmul (matmul_rows), or written to xb for three.
    // Each view attends only to itself, with no mask. K and V are regrouped per head as the projection
    // writes them (post_qkv), (view, head, position, head_dim), so every attention task reads its keys
    // contiguously. A model that is not f32 on a CPU whose attention has bf16 dot products (kernels.c)
    // gets them as bf16 and runs on those, as PyTorch's bf16 CLIP does; otherwise f32.
    int bf16 = p->weight_type != DT_F32 && attention_bf16_available();
    size_t elem = bf16 ? sizeof(uint16_t) : sizeof(float);
    RowArgs ln1 = norm_args(s->xb, s->x, w->ln1_w + (size_t)l * D, w->ln1_b + (size_t)l * D, rows, D, p->v_eps);
    float* q = s->q;
    size_t qs = D;  // row stride of q
    if (w->wqkv) {
        QkvPost post = {w->bqkv + (size_t)l * 3 * D, {s->kh, s->vh}, {D, 2 * D}, N, D, hd, bf16};
        matmul_then(s->q, NULL, norm_row, &ln1, &w->wqkv[l], rows, post_qkv, &post);
        qs = 3 * (size_t)D;
    } else {
        for_rows(ln1);
        Post bq = {.b = w->bq + (size_t)l * D};
        QkvPost pk = {w->bk + (size_t)l * D, {s->kh, NULL}, {0, 0}, N, D, hd, bf16};
        QkvPost pv = {w->bv + (size_t)l * D, {NULL, s->vh}, {0, 0}, N, D, hd, bf16};
        matmul_then(q, s->xb, NULL, NULL, &w->wq[l], rows, post_bias, &bq);
        matmul_then(s->k, s->xb, NULL, NULL, &w->wk[l], rows, post_qkv, &pk);
        matmul_then(s->v, s->xb, NULL, NULL, &w->wv[l], rows, post_qkv, &pv);
    }
    for (int b = 0; b < B; b++) {
        size_t off = (size_t)b * N * D;  // a view takes the same N * D values in both layouts
        AttnArgs a = {.out = s->att + off, .q = q + (size_t)b * N * qs, .k = (char*)s->kh + off * elem,
                      .v = (char*)s->vh + off * elem, .kv_bf16 = bf16, .bf16_dots = 1, .T = N,
                      .n_heads = H, .n_kv_heads = H, .head_dim = hd,
                      .q_stride = qs, .kv_stride = hd, .kv_head_stride = (size_t)N * hd, .out_stride = D,
                      .causal_offset = -1, .n_keys = N, .scale = 1.0f / sqrtf((float)hd)};
        attention(&a);
    }
    Post out = {.b = w->bo + (size_t)l * D, .r = s->x};   // out_proj's bias, then the residual
    matmul_then(s->xb, s->att, NULL, NULL, &w->wo[l], rows, post_residual, &out);
    // CLIPMLP
    RowArgs ln2 = norm_args(NULL, s->x, w->ln2_w + (size_t)l * D, w->ln2_b + (size_t)l * D, rows, D, p->v_eps);
    Post fc1 = {.b = w->fc1_b + (size_t)l * Dh, .act = p->v_act == 0 ? ACT_QUICK_GELU : ACT_GELU, .T = rows};
    matmul_then(s->hb, NULL, norm_row, &ln2, &w->fc1[l], rows, post_bias_act, &fc1);
    Post fc2 = {.b = w->fc2_b + (size_t)l * D, .r = s->x};
    matmul_then(s->xb, s->hb, NULL, NULL, &w->fc2[l], rows, post_residual, &fc2);
}

// pixels (B, C, S, S) -> features (B, n_out, v_dim): CLIP's hidden_states[feature_layer] (the layers
// after it never run), n_out = patches (strategy "default": CLS dropped) or patches + 1 ("full").
// B <= m->vision_state.max_views.
static void vision_forward(Model* m, const float* pixels, int B, float* features) {
    Config* p = &m->config;
    VisionState* s = &m->vision_state;
    if (B > s->max_views) fatal("internal: a batch of %d views, the vision state holds %d", B, s->max_views);
    int g = p->image_size / p->patch_size, N = g * g + 1, D = p->v_dim;
    clip_embeddings(m, s, pixels, B);
    for (int l = 0; l < vision_layers_needed(p); l++) {
        clip_encoder_layer(m, s, l, B);
        progress("vision", l + 1, vision_layers_needed(p), "layers");
    }
    // vision_feature_select_strategy "default" drops CLS (position 0); "full" keeps it.
    int skip = p->select_strategy == 0 ? 1 : 0;
    for (int b = 0; b < B; b++)
        memcpy(features + (size_t)b * (N - skip) * D, s->x + ((size_t)b * N + skip) * D,
               (size_t)(N - skip) * D * sizeof(float));
}

// ----------------------------------------------------------------------------
// Pooling and projector (LlavaNextVideoPooler, LlavaNextVideoMultiModalProjector)

// Features per frame after pooling: (grid/stride)^2, 144 for the 7B model.
static int video_tokens_per_frame(const Config* p) {
    int g = p->image_size / p->patch_size / p->pool_stride;
    return g * g;
}

// (F, g*g, v_dim) patch features (CLS already dropped) -> (F, (g/s)^2, v_dim): AvgPool2d(s, s) over the
// patch grid. The pool comes BEFORE the projector in get_video_features.
// Loops: frame f, output cell (i, j) of the (g/s) x (g/s) grid, then the s x s input patches of that
// cell, summed over the whole feature vector (D), then scaled by 1/(s*s) once.
static void average_pool(float* out, const float* in, int F, int g, int s, int D) {
    int go = g / s;
    float inv = 1.0f / (s * s);
    for (int f = 0; f < F; f++)
        for (int i = 0; i < go; i++)
            for (int j = 0; j < go; j++) {
                float* o = out + (((size_t)f * go + i) * go + j) * D;
                memset(o, 0, D * sizeof(float));
                for (int dy = 0; dy < s; dy++)
                    for (int dx = 0; dx < s; dx++) {
                        const float* x = in + (((size_t)f * g + i * s + dy) * g + j * s + dx) * D;
                        for (int d = 0; d < D; d++) o[d] += x[d];
                    }
                for (int d = 0; d < D; d++) o[d] *= inv;
            }
}

// LlavaNextVideoMultiModalProjector: linear_1 -> GELU (erf) -> linear_2, (T, v_dim) -> (T, dim).
static void multi_modal_projector(Model* m, float* out, const float* in, int T) {
    ProjectorWeights* w = &m->projector;
    int D = m->config.dim;
    float* h = xmalloc((size_t)T * D * sizeof(float));  // (T, dim) the hidden layer
    Post b1 = {.b = w->b1, .act = ACT_GELU, .T = T}, b2 = {.b = w->b2};
    matmul_then(h, in, NULL, NULL, &w->linear_1, T, post_bias_act, &b1);
    matmul_then(out, h, NULL, NULL, &w->linear_2, T, post_bias, &b2);
    free(h);
}

// ----------------------------------------------------------------------------
// .npy files (numpy's format: a magic, a Python-dict header, raw little-endian data) for --dump
// and for the test hooks that feed golden inputs.

// Writes data (shape[0] x ... x shape[ndim-1] elements of elem bytes) as DIR/NAME, version 1.0 of the
// format: "\x93NUMPY", version 1 0, a little-endian u16 header length, then the header, a Python dict
// literal padded with spaces and ended by '\n'. descr is numpy's dtype string ('<f4', '<i4').
static void write_npy(const char* dir, const char* name, const char* descr, const void* data, size_t elem,
                      int ndim, const int64_t* shape) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE* f = fopen(path, "wb");
    if (!f) fatal("%s: cannot write: %s", path, strerror(errno));
    char header[256], dims[160] = "";  // dims: "2, 3" (a 1-tuple needs its comma: "5,")
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        char d[32];
        snprintf(d, sizeof(d), "%lld%s", (long long)shape[i], ndim == 1 ? "," : i + 1 < ndim ? ", " : "");
        strcat(dims, d);
        count *= (size_t)shape[i];
    }
    int n = snprintf(header, sizeof(header), "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;  // header padded so the data is 64-aligned
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)((n + pad + 1) & 0xff),
                             (unsigned char)((n + pad + 1) >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(header, 1, n, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    if (fwrite(data, elem, count, f) != count || fclose(f) != 0) fatal("%s: write failed", path);
}

// Reads a .npy of dtype float32 ('<f4'), uint8 ('|u1') or int32 ('<i4'). Returns the data (malloc'd),
// its shape and element size.
static void* read_npy(const char* path, char* descr_out, int* ndim, int64_t shape[8]) {
    FILE* f = fopen(path, "rb");
    if (!f) fatal("%s: cannot open: %s", path, strerror(errno));
    unsigned char pre[10];
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) || pre[6] != 1)
        fatal("%s: not a version-1 .npy file", path);
    size_t hl = pre[8] | (size_t)pre[9] << 8;
    char* h = xcalloc(hl + 1, 1);
    if (fread(h, 1, hl, f) != hl) fatal("%s: truncated .npy header", path);
    const char* d = strstr(h, "'descr': '");
    const char* s = strstr(h, "'shape': (");
    if (!d || !s || strstr(h, "'fortran_order': True") || strnlen(d + 10, 3) < 3)  // 3: "<f4"
        fatal("%s: unsupported .npy header", path);
    memcpy(descr_out, d + 10, 3);
    descr_out[3] = 0;
    size_t elem = !strcmp(descr_out, "<f4") || !strcmp(descr_out, "<i4") ? 4 : !strcmp(descr_out, "|u1") ? 1 : 0;
    if (!elem) fatal("%s: unsupported dtype %s (need float32, int32 or uint8)", path, descr_out);
    *ndim = 0;
    size_t count = 1;
    for (s += 10; *s && *s != ')' && *ndim < 8;) {
        char* end;
        long long v = strtoll(s, &end, 10);
        if (end == s) break;
        if (v < 0 || v > (1LL << 40)) fatal("%s: bad shape", path);
        shape[(*ndim)++] = v;
        count *= (size_t)v;
        s = end;
        while (*s == ',' || *s == ' ') s++;
    }
    free(h);
    void* data = xmalloc(count * elem);
    if (fread(data, elem, count, f) != count) fatal("%s: truncated .npy data", path);
    fclose(f);
    return data;
}

// ----------------------------------------------------------------------------
// Media: images and videos in, feature rows out
//
// Reading and preprocessing (video.c) are kept apart from the model math, so that a prompt can be
// checked and its length known before the vision tower spends seconds per view:
//   load_media    every -i image -> anyres views, every -v video -> sampled frames (pixel values)
//   encode_media  the vision tower, pooling (videos), projector, packing (images) -> feature rows

#define MAX_MEDIA 16  // images and videos each, per prompt

typedef struct VideoFeatures {
    int F;                   // frames of all videos together
    float* pixel_values;     // (F, C, S, S)
    float* vision_features;  // (F, g*g, v_dim) CLIP's selected layer, CLS dropped
    float* video_features;   // (F * per_frame, dim) pooled and projected: what the <video> positions get
} VideoFeatures;

typedef struct ImageFeatures {
    int n;                   // images, in the order of -i
    ImagePatches* patches;   // (n) anyres geometry of each image (video.c); pixels moved to `pixel_values`
    int* n_rows;             // (n) <image> tokens = feature rows of each image
    int total_patches;       // sum of patches[k].n_patches
    int total_rows;          // sum of n_rows
    float* pixel_values;     // (total_patches, C, S, S) every image's views, base first within each image
    float* vision_features;  // (total_patches, g*g, v_dim) selected layer, CLS dropped
    float* image_features;   // (total_rows, dim) what the <image> positions get, image after image
} ImageFeatures;

// Everything one prompt shows the model: the images, and the videos as one batch of frames of which
// video_frames[k] belong to video k (in the order of -v).
typedef struct {
    ImageFeatures images;
    VideoFeatures videos;
    int n_videos;
    int video_frames[MAX_MEDIA];
} Media;

// What to load: paths in prompt order (images first, then videos, as the chat template puts them).
typedef struct {
    const char* const* image_paths; int n_images;
    const char* const* video_paths; int n_videos;
    int frames;            // frames sampled per video
    int raw_w, raw_h;      // raw RGB24 video size (0: the videos are Y4M)
    const char* pixels;    // test hook: one "video" of preprocessed frames from a .npy (see load_pixels)
} MediaPaths;

// Reads and preprocesses every image (video.c) and counts its tokens; the model runs later.
static void load_images(Model* m, const char* const* paths, int n, ImageFeatures* f) {
    Config* p = &m->config;
    int S = p->image_size, C = p->n_channels;
    size_t per_patch = (size_t)C * S * S;
    memset(f, 0, sizeof(*f));
    if (n == 0) return;
    if (C != 3) fatal("%s: images need 3 input channels, the model has %d", m->path, C);
    f->n = n;
    f->patches = xcalloc((size_t)n, sizeof(ImagePatches));
    f->n_rows = xcalloc((size_t)n, sizeof(int));
    for (int k = 0; k < n; k++) {
        Image im;
        load_image(&im, paths[k]);
        ImagePatches* ip = &f->patches[k];
        preprocess_image(ip, &im, S, &p->pinpoints[0][0], p->n_pinpoints, p->image_mean, p->image_std);
        f->n_rows[k] = image_num_tokens(im.height, im.width, S, p->patch_size, &p->pinpoints[0][0], p->n_pinpoints);
        info("image: %s, %dx%d, grid %dx%d of %dx%d tiles + base, %d tokens\n", paths[k], im.width,
                im.height, ip->cols, ip->rows, S, S, f->n_rows[k]);
        free_image(&im);
        // append this image's views to the batch
        size_t have = (size_t)f->total_patches * per_patch, add = (size_t)ip->n_patches * per_patch;
        f->pixel_values = xrealloc(f->pixel_values, (have + add) * sizeof(float));
        memcpy(f->pixel_values + have, ip->pixels, add * sizeof(float));
        free(ip->pixels);
        ip->pixels = NULL;
        f->total_patches += ip->n_patches;
        f->total_rows += f->n_rows[k];
    }
}

// Appends the sampled, preprocessed frames of one video file to the batch.
// The frames of every video form one batch (one pass of the vision tower); video_frames[k] remembers
// how many belong to video k, which sets how many <video> tokens its placeholder expands to.
static void load_video_frames(Model* m, Media* md, const char* path, const MediaPaths* in) {
    Config* p = &m->config;
    VideoFeatures* vf = &md->videos;
    Video video;
    load_video(&video, path, in->raw_w, in->raw_h, in->frames, p->image_size, p->image_mean, p->image_std);
    size_t frame = (size_t)p->n_channels * p->image_size * p->image_size;
    vf->pixel_values = xrealloc(vf->pixel_values, ((size_t)vf->F + video.n_frames) * frame * sizeof(float));
    memcpy(vf->pixel_values + (size_t)vf->F * frame, video.pixels, (size_t)video.n_frames * frame * sizeof(float));
    vf->F += video.n_frames;
    md->video_frames[md->n_videos++] = video.n_frames;
    info("video: %dx%d, %d frame%s, sampled %d\n", video.width, video.height, video.total_frames,
         video.total_frames == 1 ? "" : "s",
            video.n_frames);
    free_video(&video);
}

// Test hook (--pixels): preprocessed frames from a .npy of shape (F, C, S, S), float32 pixel values or
// uint8 levels (normalised here exactly as the processor does), standing for one video. It lets the
// tests feed transformers' own pixel_values and check the model apart from the preprocessing.
static void load_pixels(Model* m, Media* md, const char* path) {
    Config* p = &m->config;
    int S = p->image_size, C = p->n_channels;
    char descr[4];
    int ndim;
    int64_t shape[8];
    void* data = read_npy(path, descr, &ndim, shape);
    if (ndim != 4 || shape[0] < 1 || shape[0] > 4096 || shape[1] != C || shape[2] != S || shape[3] != S)
        fatal("%s: expected pixels of shape (F, %d, %d, %d) with 1 <= F <= 4096", path, C, S, S);
    VideoFeatures* vf = &md->videos;
    vf->F = (int)shape[0];
    md->n_videos = 1;
    md->video_frames[0] = vf->F;
    size_t count = (size_t)vf->F * C * S * S;
    if (!strcmp(descr, "|u1")) {  // uint8 levels: normalise exactly like the processor
        vf->pixel_values = xmalloc(count * sizeof(float));
        float table[3][256];
        normalize_table(table, p->image_mean, p->image_std);
        for (size_t i = 0; i < count; i++)
            vf->pixel_values[i] = table[(i / ((size_t)S * S)) % C][((unsigned char*)data)[i]];
        free(data);
    } else if (!strcmp(descr, "<f4")) {
        vf->pixel_values = data;
    } else {
        fatal("%s: pixels must be float32 or uint8", path);
    }
}

// Reads every image and video of a prompt (or the --pixels hook instead of the videos).
static void load_media(Model* m, const MediaPaths* in, Media* md) {
    memset(md, 0, sizeof(*md));
    if (in->pixels) load_pixels(m, md, in->pixels);
    else
        for (int k = 0; k < in->n_videos; k++) load_video_frames(m, md, in->video_paths[k], in);
    load_images(m, in->image_paths, in->n_images, &md->images);
}

// Frames -> CLIP (one batch) -> 2x2 average pool -> projector: LlavaNextVideoModel.get_video_features.
static void video_features(Model* m, VideoFeatures* vf) {
    Config* p = &m->config;
    int g = p->image_size / p->patch_size, D = p->v_dim, F = vf->F;
    if (p->select_strategy != 0) fatal("%s: the video path needs select strategy 'default'", m->path);
    if (llava_accel.video_features) { llava_accel.video_features(m, vf); return; }
    vf->vision_features = xmalloc((size_t)F * g * g * D * sizeof(float));  // CLS dropped
    build_vision_state(&m->vision_state, p, F);
    vision_forward(m, vf->pixel_values, F, vf->vision_features);
    free_vision_state(&m->vision_state);
    int per = video_tokens_per_frame(p);
    float* pooled = xmalloc((size_t)F * per * D * sizeof(float));  // (F, per, v_dim)
    average_pool(pooled, vf->vision_features, F, g, p->pool_stride, D);
    vf->video_features = xmalloc((size_t)F * per * p->dim * sizeof(float));
    multi_modal_projector(m, vf->video_features, pooled, F * per);
    free(pooled);
}

// One image: feat (P, g*g, dim) projected patch features, view 0 the base -> out (n_rows, dim)
// (pack_image_features of modeling_llava_next_video.py; doc/model.md, "Images (anyres)"). The tiles'
// g x g feature maps are stitched into one (rows*g) x (cols*g) map (tile row-major, as
// divide_to_patches cut them), the rows or columns that only saw padding are dropped (unpad_image),
// and image_newline closes every remaining row; the base image's g*g features go first.
static int pack_image_features(Model* m, const ImagePatches* ip, const float* feat, float* out) {
    Config* p = &m->config;
    int g = p->image_size / p->patch_size, D = p->dim;
    size_t row = (size_t)D * sizeof(float);
    memcpy(out, feat, (size_t)g * g * row);  // base
    int top, n_r, left, n_c;
    unpad_window(ip->height, ip->width, ip->rows * g, ip->cols * g, &top, &n_r, &left, &n_c);
    float* o = out + (size_t)g * g * D;
    for (int y = top; y < top + n_r; y++) {
        int ty = y / g, py = y % g;  // tile row, patch row inside the tile
        for (int x = left; x < left + n_c; x++) {
            int tx = x / g, px = x % g;
            memcpy(o, feat + ((size_t)(1 + ty * ip->cols + tx) * g * g + (size_t)py * g + px) * D, row);
            o += D;
        }
        memcpy(o, m->projector.image_newline, row);
        o += D;
    }
    return (int)((o - out) / D);
}

// CLIP on every view of every image (no pooling for images), the projector, then the packing:
// LlavaNextVideoModel.get_image_features followed by pack_image_features.
static void image_features(Model* m, ImageFeatures* f) {
    Config* p = &m->config;
    int g = p->image_size / p->patch_size, np = g * g, Dv = p->v_dim, D = p->dim;
    if (p->select_strategy != 0) fatal("%s: the image path needs select strategy 'default'", m->path);
    if (llava_accel.image_features) { llava_accel.image_features(m, f); return; }
    f->vision_features = xmalloc((size_t)f->total_patches * np * Dv * sizeof(float));
    f->image_features = xmalloc((size_t)f->total_rows * D * sizeof(float));
    size_t per_patch = (size_t)p->n_channels * p->image_size * p->image_size;
    int max_views = 0;
    for (int k = 0; k < f->n; k++)
        if (f->patches[k].n_patches > max_views) max_views = f->patches[k].n_patches;
    build_vision_state(&m->vision_state, p, max_views);
    int first = 0, rows = 0;
    for (int k = 0; k < f->n; k++) {  // one image at a time keeps the CLIP batch (and its memory) small
        int P = f->patches[k].n_patches;
        float* vis = f->vision_features + (size_t)first * np * Dv;
        vision_forward(m, f->pixel_values + (size_t)first * per_patch, P, vis);
        float* proj = xmalloc((size_t)P * np * D * sizeof(float));  // (P, g*g, dim)
        multi_modal_projector(m, proj, vis, P * np);
        int got = pack_image_features(m, &f->patches[k], proj, f->image_features + (size_t)rows * D);
        if (got != f->n_rows[k]) fatal("internal: image %d packed into %d rows, expected %d", k, got, f->n_rows[k]);
        free(proj);
        first += P;
        rows += got;
    }
    free_vision_state(&m->vision_state);
}

// The vision side of a prompt: every image's and every video's feature rows (images first, as
// LlavaNextVideoModel.forward scatters them), with the time per view on stderr. Returns the seconds.
static double encode_media(Model* m, Media* md) {
    ImageFeatures* im = &md->images;
    VideoFeatures* vf = &md->videos;
    if (im->n == 0 && vf->F == 0) return 0.0;
    double t = now_seconds();
    if (im->n > 0) image_features(m, im);
    if (vf->F > 0) video_features(m, vf);
    t = now_seconds() - t;
    int views = im->total_patches + vf->F;  // images: base view + tiles each; videos: frames
    char what[64];
    if (im->n > 0 && vf->F > 0) snprintf(what, sizeof(what), "%d image views + %d frames", im->total_patches, vf->F);
    else if (im->n > 0) snprintf(what, sizeof(what), "%d image views", im->total_patches);
    else snprintf(what, sizeof(what), "%d frame%s", vf->F, vf->F == 1 ? "" : "s");
    info("vision: %s in %.2f s (%.0f ms each)\n", what, t, 1000 * t / views);
    return t;
}

static void free_image_features(ImageFeatures* f) {
    for (int k = 0; k < f->n; k++) free_image_patches(&f->patches[k]);
    free(f->patches); free(f->n_rows); free(f->pixel_values); free(f->vision_features); free(f->image_features);
    memset(f, 0, sizeof(*f));
}

static void free_media(Media* md) {
    free_image_features(&md->images);
    free(md->videos.pixel_values); free(md->videos.vision_features); free(md->videos.video_features);
    memset(md, 0, sizeof(*md));
}

// ----------------------------------------------------------------------------
// Prompt: chat template, placeholder expansion, merged input embeddings

// The chat template of the checkpoint (its chat_template.json; doc/model.md, "Prompt and chat
// template"), one user turn: "USER: ", then "<image>\n" per image and
// "<video>\n" per video (all images first, whatever order they were given in), then the text and one
// space, then "ASSISTANT:".
static char* chat_prompt(const char* question, int n_images, int n_videos) {
    size_t n = strlen(question) + 64 + 9 * ((size_t)n_images + n_videos);
    char* s = xmalloc(n);
    strcpy(s, "USER: ");
    for (int i = 0; i < n_images; i++) strcat(s, "<image>\n");
    for (int i = 0; i < n_videos; i++) strcat(s, "<video>\n");
    strcat(s, question);
    strcat(s, " ASSISTANT:");
    return s;
}

// The k-th <image> placeholder becomes image_counts[k] copies of itself and the k-th <video>
// video_counts[k] (LlavaNextVideoProcessor does this on the text; doing it on the ids is the same, since
// a placeholder is always its own token). Placeholders and media must pair up one to one, as in the
// processor. Returns the new length.
static int expand_placeholders(int** ids, int n, int image_token, const int* image_counts, int n_images,
                               int video_token, const int* video_counts, int n_videos) {
    int ni = 0, nv = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        int t = (*ids)[i];
        if (t == image_token && ni < n_images) total += (size_t)image_counts[ni];
        else if (t == video_token && nv < n_videos) total += (size_t)video_counts[nv];
        else total++;
        ni += t == image_token;
        nv += t == video_token;
    }
    if (ni != n_images)
        fatal("the prompt has %d <image> placeholder%s for %d image%s (-i)", ni, ni == 1 ? "" : "s", n_images,
              n_images == 1 ? "" : "s");
    if (nv != n_videos)
        fatal("the prompt has %d <video> placeholder%s for %d video%s (-v)", nv, nv == 1 ? "" : "s", n_videos,
              n_videos == 1 ? "" : "s");
    if (total > (size_t)1 << 30) fatal("the expanded prompt is too long (%zu tokens)", total);
    int* out = xmalloc(total * sizeof(int));
    int j = 0;
    ni = nv = 0;
    for (int i = 0; i < n; i++) {
        int t = (*ids)[i], r = t == image_token ? image_counts[ni++] : t == video_token ? video_counts[nv++] : 1;
        for (int k = 0; k < r; k++) out[j++] = t;
    }
    free(*ids);
    *ids = out;
    return j;
}

// len bytes of text -> malloc'd ids (*n of them), with bos in front unless bos < 0.
static int* tokenize(Tokenizer* tok, const char* text, size_t len, int bos, int* n) {
    // SentencePiece never makes more tokens than bytes (+ BOS, + a prefix space): len + 16 is a safe cap
    int cap = (int)(len + 16 < (size_t)1 << 30 ? len + 16 : (size_t)1 << 30);
    int* ids = xmalloc((size_t)cap * sizeof(int));
    *n = encode(tok, text, len, bos, ids, cap);
    return ids;
}

// The ids of one question: the chat template around it (or the text as is, raw), tokenized (with BOS
// when bos is set: a conversation has one, at its start), then every placeholder expanded to the
// feature rows of its image or video. *T gets the length.
static int* build_prompt_ids(Model* m, const char* question, int raw, int bos, const Media* md, int* T) {
    Config* p = &m->config;
    char* text = raw ? xstrdup(question) : chat_prompt(question, md->images.n, md->n_videos);
    int n;
    int* ids = tokenize(&m->tokenizer, text, strlen(text), bos ? p->bos : -1, &n);
    free(text);
    int per_video[MAX_MEDIA];
    for (int k = 0; k < md->n_videos; k++) per_video[k] = md->video_frames[k] * video_tokens_per_frame(p);
    *T = expand_placeholders(&ids, n, p->image_token, md->images.n_rows, md->images.n, p->video_token, per_video,
                             md->n_videos);
    return ids;
}

// inputs_embeds: embed_tokens for text tokens; the image feature rows (n_image_rows, dim) written into the
// <image> positions in order, and the video rows (n_video_rows, dim) into the <video> positions
// (get_placeholder_mask + masked_scatter, images then videos, as LlavaNextVideoModel.forward).
static float* merge_embeddings(Model* m, const int* ids, int T, const float* image_features, int n_image_rows,
                               const float* video_features, int n_video_rows) {
    Config* p = &m->config;
    int D = p->dim, used_i = 0, used_v = 0, count_i = 0, count_v = 0;
    for (int t = 0; t < T; t++) {
        count_i += ids[t] == p->image_token;
        count_v += ids[t] == p->video_token;
    }
    if (count_i != n_image_rows)
        fatal("image features and image tokens do not match: %d <image> tokens in the prompt, %d features%s",
              count_i, n_image_rows, n_image_rows ? "" : " (no image given: pass one with -i)");
    if (count_v != n_video_rows)
        fatal("video features and video tokens do not match: %d <video> tokens in the prompt, %d features%s",
              count_v, n_video_rows, n_video_rows ? "" : " (no video given: pass one with -v)");
    float* e = xmalloc((size_t)T * D * sizeof(float));
    for (int t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= p->vocab_size) fatal("token id %d outside the vocabulary (%d)", ids[t], p->vocab_size);
        if (ids[t] == p->image_token)
            memcpy(e + (size_t)t * D, image_features + (size_t)used_i++ * D, D * sizeof(float));
        else if (ids[t] == p->video_token)
            memcpy(e + (size_t)t * D, video_features + (size_t)used_v++ * D, D * sizeof(float));
        else
            dequantize_row(e + (size_t)t * D, &m->llm.embed_tokens, ids[t]);
    }
    return e;
}

// ----------------------------------------------------------------------------
// Language model: Llama (modeling_llama.py), batched over the rows of a prompt chunk

// Prompt rows per forward call. Prefill runs in chunks of this many rows, so the scratch (two
// hidden_dim-wide buffers dominate: 2 x 512 x 11008 floats = 45 MB at 7B) does not grow with the
// prompt; bigger chunks would not make the matmuls faster (their tiles are 6-14 rows).
#define PREFILL_CHUNK 512

// matmul.c's mm_alloc (huge pages for big buffers: build_vision_state), zeroed as calloc's memory is.
static void* mm_calloc(size_t bytes) { return memset(mm_alloc(bytes), 0, bytes); }

// ctx: positions the KV cache holds; max_rows: rows per forward call (at most PREFILL_CHUNK is enough).
static void build_state(Model* m, int ctx, int max_rows) {
    Config* p = &m->config;
    RunState* s = &m->state;
    if (llava_accel.build_state) { llava_accel.build_state(m, ctx, max_rows); return; }
    int D = p->dim, qd = p->n_heads * p->head_dim, kvd = p->n_kv_heads * p->head_dim;
    s->ctx = ctx;
    s->max_rows = max_rows;
    // The activations: mm_alloc (huge pages, as the vision scratch's), zeroed as calloc's were. The KV
    // cache stays calloc's: 4 KB pages are committed as positions fill it, where huge pages would
    // commit 2 MB of every head's rows at the first token (all of a 4,096-position cache, 2.1 GB at 7B).
    s->x = mm_calloc((size_t)max_rows * D * sizeof(float));
    s->xb = mm_calloc((size_t)max_rows * D * sizeof(float));
    s->q = mm_calloc((size_t)max_rows * (qd + 2 * kvd) * sizeof(float));  // q, k, v: fused rows, or three blocks
    s->k = s->q + (size_t)max_rows * qd;
    s->v = s->k + (size_t)max_rows * kvd;
    s->att = mm_calloc((size_t)max_rows * qd * sizeof(float));
    s->hb = mm_calloc((size_t)max_rows * p->hidden_dim * (m->llm.w_gate_up ? 2 : 1) * sizeof(float));
    s->hb2 = mm_calloc((size_t)max_rows * p->hidden_dim * sizeof(float));
    s->logits = xcalloc(p->vocab_size, sizeof(float));
    s->kv_bf16 = p->weight_type != DT_F32;
    size_t kv_elem = s->kv_bf16 ? sizeof(uint16_t) : sizeof(float);
    size_t kv_bytes = 2 * (size_t)p->n_layers * ctx * kvd * kv_elem, have = memory_available();
    if (kv_bytes > have / 2)  // the weights take (most of) the rest
        fatal("%s: a KV cache of %d positions needs %.1f GB, more than half of the %.1f GB of memory; "
              "lower the context with -c", m->path, ctx, kv_bytes / 1e9, have / 1e9);
    s->key_cache = xcalloc((size_t)p->n_layers * ctx * kvd, kv_elem);
    s->value_cache = xcalloc((size_t)p->n_layers * ctx * kvd, kv_elem);
    // inv_freq[j] = 1 / theta^(2j/head_dim), then / factor for linear scaling; f32 like
    // LlamaRotaryEmbedding (modeling_rope_utils: _compute_linear_scaling_rope_parameters).
    s->inv_freq = xcalloc(p->head_dim / 2, sizeof(float));
    s->rope_cos = xcalloc((size_t)max_rows * (p->head_dim / 2), sizeof(float));
    s->rope_sin = xcalloc((size_t)max_rows * (p->head_dim / 2), sizeof(float));
    for (int j = 0; j < p->head_dim / 2; j++) {
        float inv = 1.0f / powf(p->rope_theta, (float)(2 * j) / (float)p->head_dim);
        s->inv_freq[j] = inv / p->rope_scale;
    }
}

static void free_state(RunState* s) {
    if (llava_accel.free_state) llava_accel.free_state(s);
    free(s->x); free(s->xb); free(s->q); free(s->att);
    free(s->hb); free(s->hb2); free(s->logits); free(s->key_cache); free(s->value_cache); free(s->inv_freq);
    free(s->rope_cos); free(s->rope_sin);
    memset(s, 0, sizeof(*s));
}

// LlamaDecoderLayer l over T rows in s->x at positions pos..pos+T-1, in place:
//   h = h + o_proj(self_attn(input_layernorm(h)))
//   h = h + down_proj(silu(gate_proj(m)) * up_proj(m)),   m = post_attention_layernorm(h)
// The rows' keys and values go into the KV cache at their positions, so a later call (the next chunk,
// a decode step, the next turn of a chat) sees them.
static void llama_decoder_layer(Model* m, int l, int T, int pos) {
    Config* p = &m->config;
    LlmWeights* w = &m->llm;
    RunState* s = &m->state;
    int D = p->dim, hd = p->head_dim, F = p->hidden_dim;
    int qd = p->n_heads * hd, kvd = p->n_kv_heads * hd;
    // LlamaAttention: q/k/v projections (no biases), RoPE on q and k only, then k and v go to the
    // cache at positions pos..pos+T-1 (so this chunk's queries see themselves and everything before).
    // Fused (fuse_weights): one matmul writes rows q | k | v, its input input_layernorm(x) made row by
    // row inside it (matmul_rows); otherwise the norm goes to xb for three matmuls into three blocks.
    RowArgs attn_norm = norm_args(s->xb, s->x, w->attn_norm + (size_t)l * D, NULL, T, D, p->rms_eps);
    float *q = s->q, *k = s->k, *v = s->v;
    size_t qs = qd, kvs = kvd;  // row strides of q and of k, v
    if (w->wqkv) {
        matmul_rows(s->q, norm_row, &attn_norm, &w->wqkv[l], T);
        k = q + qd, v = k + kvd, qs = kvs = (size_t)qd + 2 * kvd;
    } else {
        for_rows(attn_norm);
        matmul(q, s->xb, &w->wq[l], T);
        matmul(k, s->xb, &w->wk[l], T);
        matmul(v, s->xb, &w->wv[l], T);
    }
    size_t kv_elem = s->kv_bf16 ? sizeof(uint16_t) : sizeof(float), layer = (size_t)l * s->ctx * kvd;
    char* kc = (char*)s->key_cache + layer * kv_elem;    // this layer's (n_kv_heads, ctx, head_dim)
    char* vc = (char*)s->value_cache + layer * kv_elem;
    for (int t = 0; t < T; t++) {
        const float* c = s->rope_cos + (size_t)t * (hd / 2);
        const float* sn = s->rope_sin + (size_t)t * (hd / 2);
        rope(q + (size_t)t * qs, p->n_heads, hd, c, sn);
        rope(k + (size_t)t * kvs, p->n_kv_heads, hd, c, sn);
    }
    scatter_heads(kc + (size_t)pos * hd * kv_elem, k, T, p->n_kv_heads, hd, kvs, s->ctx, s->kv_bf16);
    scatter_heads(vc + (size_t)pos * hd * kv_elem, v, T, p->n_kv_heads, hd, kvs, s->ctx, s->kv_bf16);
    // softmax(q k^T / sqrt(head_dim) + causal mask) v. An f32 model: in f32 like the eager path (and
    // SDPA). A bf16 cache (bf16, q8, q4 models): q and the probabilities may be rounded to bf16 as well,
    // as PyTorch's bf16 attention does, for vdpbf16ps where the CPU has it (kernels.c).
    AttnArgs a = {.out = s->att, .q = q, .k = kc, .v = vc, .T = T, .n_heads = p->n_heads,
                  .n_kv_heads = p->n_kv_heads, .head_dim = hd, .q_stride = qs, .kv_stride = hd,
                  .kv_head_stride = (size_t)s->ctx * hd, .kv_bf16 = s->kv_bf16, .bf16_dots = 1, .out_stride = qd,
                  .causal_offset = pos,
                  .scale = 1.0f / sqrtf((float)hd)};
    attention(&a);
    Post residual = {.r = s->x};
    matmul_then(s->xb, s->att, NULL, NULL, &w->wo[l], T, post_residual, &residual);
    // LlamaMLP (hidden_act silu): the gate and up projections, combined element-wise. Fused: one
    // matmul writes rows gate | up into hb (post_attention_layernorm made inside it, as above), and
    // silu(gate) * up goes to hb2, contiguous for down_proj.
    RowArgs ffn_norm = norm_args(s->xb, s->x, w->ffn_norm + (size_t)l * D, NULL, T, D, p->rms_eps);
    if (w->w_gate_up) {
        matmul_rows(s->hb, norm_row, &ffn_norm, &w->w_gate_up[l], T);
        activation_rows(s->hb2, s->hb, s->hb + F, T, F, 2 * (size_t)F, ACT_SILU_MUL);
        matmul_then(s->xb, s->hb2, NULL, NULL, &w->w_down[l], T, post_residual, &residual);
    } else {
        for_rows(ffn_norm);
        matmul(s->hb, s->xb, &w->w_gate[l], T);
        matmul(s->hb2, s->xb, &w->w_up[l], T);
        activation(s->hb, s->hb2, (size_t)T * F, ACT_SILU_MUL);
        matmul_then(s->xb, s->hb, NULL, NULL, &w->w_down[l], T, post_residual, &residual);
    }
}

// Runs T rows of input embeddings (in s->x) at positions pos..pos+T-1 through the decoder, filling
// the KV cache. On return s->x holds the final-normed hidden states of all T rows. T <= max_rows.
static void llm_forward(Model* m, int T, int pos) {
    Config* p = &m->config;
    RunState* s = &m->state;
    int hd = p->head_dim;
    for (int t = 0; t < T; t++)  // the same angles serve every layer, and q and k
        rope_angles(s->rope_cos + (size_t)t * (hd / 2), s->rope_sin + (size_t)t * (hd / 2), pos + t, s->inv_freq, hd / 2);
    for (int l = 0; l < p->n_layers; l++) {
        llama_decoder_layer(m, l, T, pos);
        if (T > 1) progress("prompt", s->progress_base + (double)T * (l + 1) / p->n_layers, s->progress_total, "tokens");
    }
    // model.norm; lm_head is applied by the caller, to the rows it needs (only the last, unless dumping)
    norm_rows(s->x, s->x, m->llm.final_norm, NULL, T, p->dim, p->rms_eps);
}

// Runs T embedding rows (T, dim) through the decoder at positions pos..pos+T-1, in chunks of
// max_rows, appending to whatever the KV cache already holds before pos (a first prompt has pos 0; a
// second chat turn continues where the first one stopped). Leaves the logits of the last row in
// s->logits; with all_logits != NULL it also writes (T, vocab) logits of every row.
static void prefill(Model* m, const float* embeds, int T, int pos, float* all_logits) {
    RunState* s = &m->state;
    int D = m->config.dim, V = m->config.vocab_size;
    if (pos < 0 || T < 0 || T > s->ctx - pos)
        fatal("internal: prefill of %d rows at position %d overflows the context of %d", T, pos, s->ctx);
    if (llava_accel.prefill) { llava_accel.prefill(m, embeds, T, pos, all_logits); return; }
    for (int t0 = 0; t0 < T; t0 += s->max_rows) {
        int n = T - t0 < s->max_rows ? T - t0 : s->max_rows;
        memcpy(s->x, embeds + (size_t)t0 * D, (size_t)n * D * sizeof(float));
        s->progress_base = t0;
        s->progress_total = T;
        llm_forward(m, n, pos + t0);
        if (all_logits) matmul(all_logits + (size_t)t0 * V, s->x, &m->llm.lm_head, n);
        // The last row again on its own (not copied from all_logits): a one-row matmul may round
        // differently from a many-row one (bf16 activations), and --dump must not change the answer.
        if (t0 + n == T) matmul(s->logits, s->x + (size_t)(n - 1) * D, &m->llm.lm_head, 1);
    }
}

// One token at position pos (the KV cache holds 0..pos-1) -> s->logits.
static void decode_step(Model* m, int token, int pos) {
    RunState* s = &m->state;
    if (pos < 0 || pos >= s->ctx) fatal("internal: decode at position %d outside the context of %d", pos, s->ctx);
    if (llava_accel.decode_step) { llava_accel.decode_step(m, token, pos); return; }
    dequantize_row(s->x, &m->llm.embed_tokens, token);
    llm_forward(m, 1, pos);
    matmul(s->logits, s->x, &m->llm.lm_head, 1);
}

// ----------------------------------------------------------------------------
// Sampler: greedy, temperature, top-p (nucleus), with a seeded xorshift RNG (as llama2.c)

typedef struct {
    float temperature;  // 0 = greedy (argmax), HF's default for this model
    float topp;         // nucleus threshold in (0, 1]; 1 = off
    uint64_t rng;
    int* index;         // (vocab,) scratch for top-p sorting
    int vocab;
} Sampler;

// seed: any 64-bit value. It is scrambled once (splitmix64's finalizer) into the xorshift state, so
// nearby seeds (0, 1, 2, ...) give unrelated streams, and a state of 0 (which xorshift never leaves)
// is replaced.
static void build_sampler(Sampler* s, int vocab, float temperature, float topp, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    s->temperature = temperature;
    s->topp = topp;
    s->rng = z ? z : 1;
    s->index = xmalloc((size_t)vocab * sizeof(int));
    s->vocab = vocab;
}

static void free_sampler(Sampler* s) {
    free(s->index);
    s->index = NULL;
}

static uint32_t random_u32(uint64_t* state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(uint64_t* state) { return (random_u32(state) >> 8) / 16777216.0f; }

static int argmax(const float* x, int n) {
    int best = 0;  // first maximum on ties, like torch.argmax
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

static const float* g_sort_probs;  // qsort has no context argument
static int cmp_prob_desc(const void* a, const void* b) {
    float pa = g_sort_probs[*(const int*)a], pb = g_sort_probs[*(const int*)b];
    return pa > pb ? -1 : pa < pb ? 1 : *(const int*)a - *(const int*)b;
}

// The next token from the logits of the last position (overwritten: they become probabilities).
// Greedy is argmax, as HF's generate with do_sample=False. Otherwise the logits are divided by the
// temperature, softmaxed, and one uniform draw r in [0, 1) picks the token where the running sum of
// the probabilities first exceeds r (or of the top-p nucleus, renormalised).
static int sample(Sampler* s, float* logits) {
    for (int i = 0; i < s->vocab; i++)  // NaN or inf: the model's arithmetic broke down, no token is right
        if (!isfinite(logits[i]))
            fatal("the logits hold %s (token %d): the model's activations overflowed (a broken or "
                  "mis-exported weight file?)", isnan(logits[i]) ? "NaN" : "inf", i);
    if (s->temperature == 0.0f) return argmax(logits, s->vocab);
    int best = argmax(logits, s->vocab);
    for (int i = 0; i < s->vocab; i++) logits[i] /= s->temperature;
    // A temperature so small that logit/t overflows (t = 1e-40) is greedy in the limit.
    for (int i = 0; i < s->vocab; i++)
        if (!isfinite(logits[i])) return best;
    softmax(logits, s->vocab);
    float r = random_f32(&s->rng);
    if (s->topp <= 0.0f || s->topp >= 1.0f) {  // plain multinomial sampling
        float cdf = 0;
        for (int i = 0; i < s->vocab; i++) {
            cdf += logits[i];
            if (r < cdf) return i;
        }
        return s->vocab - 1;
    }
    // top-p: keep the most probable tokens whose mass reaches topp, renormalise, sample among them.
    // Tokens below (1 - topp) / (vocab - 1) can never be in the nucleus, so they are not sorted.
    float cutoff = (1.0f - s->topp) / (s->vocab - 1);
    int n = 0;
    for (int i = 0; i < s->vocab; i++) if (logits[i] >= cutoff) s->index[n++] = i;
    if (n == 0) return best;  // cannot happen with finite probabilities (the largest is >= 1/vocab), but
                              // never index[-1]
    g_sort_probs = logits;
    qsort(s->index, n, sizeof(int), cmp_prob_desc);
    float mass = 0;  // probability of the nucleus: the sorted head up to and including `last`
    int last = n - 1;
    for (int i = 0; i < n; i++) {
        mass += logits[s->index[i]];
        if (mass > s->topp) { last = i; break; }
    }
    float x = r * mass, cdf = 0;  // r scaled to the nucleus mass: sampling from the renormalised head
    for (int i = 0; i <= last; i++) {
        cdf += logits[s->index[i]];
        if (x < cdf) return s->index[i];
    }
    return s->index[last];
}

// ----------------------------------------------------------------------------
// Generation: sample, print, decode, until EOS or the token budget

// What one answer cost, and why it ended.
typedef struct {
    int n_generated;   // tokens sampled (an end token included)
    int n_decoded;     // of them run through the decoder (all but the last one)
    double ttft;       // seconds from t_ref to the first token
    double seconds;    // the whole generation
    const char* stop;  // "end token" or "max tokens" (the caller knows when that was the context's end)
} GenStats;

// Starts from the logits in m->state (those of the last prompt row, at position pos - 1) and
// generates up to max_new tokens, the first at position pos: each is sampled, streamed to stdout as
// text (a character spelled with several byte tokens is printed when it is complete) and, unless it
// is EOS or the last, run through the decoder. The ids go to out (max_new).
// t_ref, ref_name: the time and the name of the moment "time to first token" on stderr counts from.
static GenStats generate(Model* m, Sampler* sampler, int pos, int max_new, int* out, double t_ref,
                         const char* ref_name) {
    Tokenizer* tok = &m->tokenizer;
    GenStats g = {0, 0, 0.0, 0.0, "max tokens"};
    Detokenizer detok;  // streams UTF-8 safely: a character split over byte tokens is printed whole
    build_detokenizer(&detok, tok);
    double t0 = now_seconds();
    while (g.n_generated < max_new) {
        int next = sample(sampler, m->state.logits);
        out[g.n_generated++] = next;
        if (g.n_generated == 1) {
            g.ttft = now_seconds() - t_ref;
            info("time to first token: %.2f s after %s\n", g.ttft, ref_name);
        }
        if (next == m->config.eos) { g.stop = "end token"; break; }
        const char* piece = detokenize(tok, &detok, next);
        fwrite(piece, 1, detok.n_text, stdout);  // n_text: a <0x00> byte token is a real NUL
        fflush(stdout);
        if (g.n_generated == max_new) break;
        decode_step(m, next, pos++);
        g.n_decoded++;
    }
    const char* rest = detokenize_flush(tok, &detok);
    fwrite(rest, 1, detok.n_text, stdout);
    free_detokenizer(&detok);
    if (g.n_generated > 0) printf("\n");
    fflush(stdout);  // the answer's last line before the statistics on stderr, even through a pipe
    g.seconds = now_seconds() - t0;
    if (g.n_generated > 0)
        info("generated: %d tokens in %.2f s (%.2f tokens/s decoding)\n", g.n_generated, g.seconds,
             g.n_decoded > 0 ? g.n_decoded / g.seconds : 0.0);
    return g;
}

// --save-frames: every view that enters the vision tower as an S x S PPM file (the frames of each
// video, the base view and tiles of each image). The pixels are the 8-bit levels the processor
// normalised: each float is mapped back through the normalisation table, which is one-to-one.
static void save_views(const char* dir, Model* m, const char* prefix, const float* pixels, int n_views, int first) {
    Config* p = &m->config;
    int S = p->image_size;
    float table[3][256];
    normalize_table(table, p->image_mean, p->image_std);
    unsigned char* rgb = xmalloc((size_t)3 * S * S);  // (S, S, 3) interleaved, as PPM stores it
    for (int v = 0; v < n_views; v++) {
        const float* px = pixels + (size_t)v * 3 * S * S;  // (3, S, S) planes
        for (int c = 0; c < 3; c++) {
            float step = table[c][1] - table[c][0];  // the table is increasing: 1 / (std * 255) per level
            for (size_t i = 0; i < (size_t)S * S; i++) {
                float x = px[(size_t)c * S * S + i];
                int u = (int)lrintf((x - table[c][0]) / step);  // the level, up to rounding of the table
                u = u < 0 ? 0 : u > 255 ? 255 : u;
                while (u > 0 && table[c][u] > x) u--;  // exact: the level whose table value is x
                while (u < 255 && table[c][u] < x) u++;
                rgb[i * 3 + c] = (unsigned char)u;
            }
        }
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s%03d.ppm", dir, prefix, first + v);
        FILE* f = fopen(path, "wb");
        if (!f) fatal("%s: cannot write: %s", path, strerror(errno));
        fprintf(f, "P6\n%d %d\n255\n", S, S);
        if (fwrite(rgb, 1, (size_t)3 * S * S, f) != (size_t)3 * S * S || fclose(f) != 0) fatal("%s: write failed", path);
    }
    free(rgb);
}

// Writes video<k>_frame<i>.ppm and image<k>_view<i>.ppm (view 0 the base image, then the tiles row by row).
static void save_frames(const char* dir, Model* m, const Media* md) {
    Config* p = &m->config;
    size_t view = (size_t)3 * p->image_size * p->image_size;
    char prefix[64];
    for (int k = 0, first = 0; k < md->n_videos; first += md->video_frames[k++]) {
        snprintf(prefix, sizeof(prefix), "video%d_frame", k + 1);
        save_views(dir, m, prefix, md->videos.pixel_values + (size_t)first * view, md->video_frames[k], 0);
    }
    for (int k = 0, first = 0; k < md->images.n; first += md->images.patches[k++].n_patches) {
        snprintf(prefix, sizeof(prefix), "image%d_view", k + 1);
        save_views(dir, m, prefix, md->images.pixel_values + (size_t)first * view, md->images.patches[k].n_patches, 0);
    }
    info("saved the views the vision tower sees in %s\n", dir);
}

// --json: a JSON string of n bytes of (possibly invalid) UTF-8: invalid bytes become U+FFFD.
// (Byte tokens can spell invalid UTF-8; JSON must be valid Unicode, so such bytes are replaced.)
static void json_write_string(FILE* f, const char* s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { fprintf(f, "\\%c", c); i++; continue; }
        if (c < 0x20) { fprintf(f, "\\u%04x", c); i++; continue; }
        if (c < 0x80) { fputc(c, f); i++; continue; }
        int len = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
        int ok = len > 0 && i + len <= n;
        for (int k = 1; ok && k < len; k++) ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
        if (ok && len == 3) {  // no overlong forms, no surrogates
            unsigned c1 = (unsigned char)s[i + 1];
            ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
        }
        if (ok && len == 4) {
            unsigned c1 = (unsigned char)s[i + 1];
            ok = !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
        }
        if (ok) { fwrite(s + i, 1, (size_t)len, f); i += (size_t)len; }
        else { fputs("\\ufffd", f); i++; }
    }
    fputc('"', f);
}

// ----------------------------------------------------------------------------
// --dump: the intermediate tensors of a run as .npy files, for ports to compare against. A hook
// outside the math: it only reads what the pipeline computed.

static void dump_f32(const char* dir, const char* name, const float* x, int ndim, const int64_t* shape) {
    write_npy(dir, name, "<f4", x, sizeof(float), ndim, shape);
}

// Everything up to the decoder's input: ids, pixels, vision features, feature rows, inputs_embeds.
static void dump_prompt(const char* dir, Model* m, const int* ids, int T, const Media* md, const float* embeds) {
    Config* p = &m->config;
    int S = p->image_size, C = p->n_channels, g = S / p->patch_size;  // (parse_args made dir)
    int64_t sh[1] = {T};
    write_npy(dir, "input_ids.npy", "<i4", ids, 4, 1, sh);
    const VideoFeatures* vf = &md->videos;
    if (vf->F > 0) {
        int64_t px[4] = {vf->F, C, S, S}, vs[3] = {vf->F, g * g, p->v_dim};
        int64_t vv[2] = {(int64_t)vf->F * video_tokens_per_frame(p), p->dim};
        dump_f32(dir, "pixel_values.npy", vf->pixel_values, 4, px);
        dump_f32(dir, "vision_features.npy", vf->vision_features, 3, vs);
        dump_f32(dir, "video_features.npy", vf->video_features, 2, vv);
    }
    const ImageFeatures* im = &md->images;
    if (im->n > 0) {
        int32_t* sizes = xmalloc((size_t)im->n * 2 * sizeof(int32_t));  // (n, 2): height, width
        for (int k = 0; k < im->n; k++) {
            sizes[2 * k] = im->patches[k].height;
            sizes[2 * k + 1] = im->patches[k].width;
        }
        int64_t is[2] = {im->n, 2};
        write_npy(dir, "image_sizes.npy", "<i4", sizes, 4, 2, is);
        free(sizes);
        int64_t px[4] = {im->total_patches, C, S, S}, vs[3] = {im->total_patches, g * g, p->v_dim};
        int64_t fs[2] = {im->total_rows, p->dim};
        dump_f32(dir, "image_pixel_values.npy", im->pixel_values, 4, px);
        dump_f32(dir, "image_vision_features.npy", im->vision_features, 3, vs);
        dump_f32(dir, "image_features.npy", im->image_features, 2, fs);
    }
    int64_t es[2] = {T, p->dim};
    dump_f32(dir, "inputs_embeds.npy", embeds, 2, es);
}

// ----------------------------------------------------------------------------
// Command line

#define LLAVA_VERSION_STRING "llava.c 0.4 (model file format 2; reads 1 too)"

static void usage(int code) {
    fprintf(code ? stderr : stdout,
        "usage: llava MODEL.bin [options]\n"
        "  -p TEXT          question, wrapped in the chat template; - reads it from stdin\n"
        "                   \"USER: [<image>\\n per image][<video>\\n per video]TEXT ASSISTANT:\"\n"
        "                   without -p, and with stdin a terminal, llava starts a chat (-m chat)\n"
        "  -i FILE          image: binary PPM/PGM (P6/P5, any maxval) or .y4m (first frame), - for stdin;\n"
        "                   repeat for several images (convert others: ffmpeg -i x.jpg x.ppm)\n"
        "  -v FILE          video: .y4m, or - for a Y4M stream on stdin (any video: ffmpeg -i x.mp4\n"
        "                   -f yuv4mpegpipe - | ./llava MODEL.bin -v - ...), or raw RGB24 with -W/-H; repeatable\n"
        "  -f, --frames N   frames sampled uniformly from each video (default 8)\n"
        "  -W N, -H N       width and height of raw RGB24 video (then every -v is raw RGB24 of that size)\n"
        "  -n N             max new tokens (default 256; 0 = run the prompt only)\n"
        "  -t, --temp F     temperature (default 0 = greedy, as the model's generation_config);\n"
        "                   llama.cpp's --temp\n"
        "  -k, --top-p F    top-p, in (0, 1] (default 0.9; used when -t > 0); llama.cpp's --top-p\n"
        "  -s, --seed N     random seed, 0 to 2^64-1 (default: from the clock and the process id, printed)\n"
        "  -c N             context length in tokens (default: the model's max_position_embeddings)\n"
        "  -m MODE          generate (default) | chat | encode (stdin text -> ids) | decode (stdin ids -> text)\n"
        "  -y TEXT          system prompt for chat (put before the first USER turn)\n"
        "  -q, --quiet      no progress lines and no timings on stderr (errors only)\n"
        "  --json           one JSON line on stderr at the end: answer, token counts, timings, seed, memory\n"
        "  --save-frames DIR  the sampled, resized and cropped frames (and image views) as PPM files:\n"
        "                   exactly the pixels that enter the vision tower\n"
        "  --raw            use -p as the prompt as is, without the chat template\n"
        "  --ids \"1 2 ..\"   the prompt as token ids (placeholders included), no tokenizer or template\n"
        "  --pixels FILE    test hook: preprocessed frames as .npy, (F,C,S,S) float32 or uint8 levels\n"
        "  --dump DIR       write the intermediate tensors of the run as .npy files into DIR\n"
        "  --threads N      worker threads (default: all cores)\n"
        "  --max-stream-frames N  frames a -v - stream may have (default 18000: 10 min at 30 fps; each is\n"
        "                   spooled to a temporary file, 339 KB at 336x336)\n"
        "  --version, -h, --help\n"
        "chat commands: /image FILE, /video FILE (attach to the next question), /clear, /quit\n");
    exit(code);
}

// The command line, parsed (see usage() for each flag's meaning and default).
typedef struct {
    const char* model_path;
    const char* prompt;                  // -p
    const char* image_paths[MAX_MEDIA];  // -i, in order
    const char* video_paths[MAX_MEDIA];  // -v, in order
    int n_images, n_videos;
    const char* ids;                     // --ids: the prompt as token ids
    const char* pixels_path;             // --pixels (test hook)
    const char* dump_dir;                // --dump
    const char* save_frames;             // --save-frames
    const char* mode;                    // -m generate | chat | encode | decode
    const char* system;                  // -y: chat system prompt
    int raw;                             // --raw: -p without the chat template
    int frames;                          // -f: frames sampled per video
    int raw_w, raw_h;                    // -W, -H: raw RGB24 video size
    int steps;                           // -n: max new tokens
    int ctx;                             // -c: context length (0: the model's max_pos)
    int threads;                         // --threads (0: all cores)
    int stdin_media;                     // how many -i/-v inputs are "-"
    int quiet, json;                     // -q, --json
    float temperature, topp;             // -t, -k
    uint64_t seed;                       // -s
    int seed_given;                      // 0: the seed was drawn (and is printed)
} Args;

static int parse_int(const char* flag, const char* s, int lo, int hi) {
    char* end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || errno == ERANGE || v < lo || v > hi)
        fatal("%s expects an integer in [%d, %d], got '%s'", flag, lo, hi, s);
    return (int)v;
}

static float parse_float(const char* flag, const char* s, float lo, float hi) {
    char* end;
    float v = strtof(s, &end);
    if (*s == 0 || *end != 0 || !(v >= lo && v <= hi)) fatal("%s expects a number in [%g, %g], got '%s'", flag, lo, hi, s);
    return v;
}

// A seed: a decimal integer in [0, 2^64). strtoull alone would take "-1" (as 2^64 - 1) and "abc" (as 0).
static uint64_t parse_seed(const char* flag, const char* s) {
    char* end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || *end != 0 || errno == ERANGE)
        fatal("%s expects an integer in [0, 18446744073709551615], got '%s'", flag, s);
    return (uint64_t)v;
}

// An input file named on the command line must exist and be a file (or a pipe), checked before the
// weights load: a typo should not cost the seconds of loading a 7B model.
static void check_input_path(const char* flag, const char* path) {
    if (!strcmp(path, "-")) return;
    struct stat st;
    if (stat(path, &st) != 0) fatal("%s: cannot open (%s): %s", path, flag, strerror(errno));
    if (S_ISDIR(st.st_mode)) fatal("%s: is a directory (%s needs a file)", path, flag);
    if (access(path, R_OK) != 0) fatal("%s: cannot read (%s): %s", path, flag, strerror(errno));
}

// An output directory (--dump, --save-frames): created if missing (its parent must exist).
static void make_output_dir(const char* flag, const char* dir) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) fatal("%s: exists and is not a directory (%s)", dir, flag);
    } else if (mkdir(dir, 0755) != 0) {
        fatal("%s: cannot create (%s): %s", dir, flag, strerror(errno));
    }
    if (access(dir, W_OK) != 0) fatal("%s: cannot write (%s): %s", dir, flag, strerror(errno));
}

// Flags that take a value, in their short and long spellings; anything else starting with '-' that
// is not a switch (--raw, -q, --json, ...) is an unknown option.
static int takes_value(const char* f) {
    static const char* const names[] = {"-p", "-i", "-v", "-f", "--frames", "-W", "-H", "-n", "-t", "--temp",
        "-k", "--top-p", "-s", "--seed", "-c", "-m", "-y", "--ids", "--pixels", "--dump", "--save-frames",
        "--threads", "--max-stream-frames"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(f, names[i])) return 1;
    return 0;
}

// argv -> Args. Order: switches, then flags with a value (validated as they are read), then the checks
// that need several flags at once, then every path on the command line: all before the weights load.
static Args parse_args(int argc, char** argv) {
    Args a = {0};
    a.frames = 8;
    a.steps = 256;
    a.topp = 0.9f;
    a.mode = "generate";
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) usage(0);
    if (argc >= 2 && !strcmp(argv[1], "--version")) { printf("%s\n", LLAVA_VERSION_STRING); exit(0); }
    if (argc < 2 || argv[1][0] == '-') usage(1);
    a.model_path = argv[1];
    for (int i = 2; i < argc; i++) {
        const char* f = argv[i];
        if (!strcmp(f, "--raw")) { a.raw = 1; continue; }
        if (!strcmp(f, "-q") || !strcmp(f, "--quiet")) { a.quiet = 1; continue; }
        if (!strcmp(f, "--json")) { a.json = 1; continue; }
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) usage(0);
        if (!strcmp(f, "--version")) { printf("%s\n", LLAVA_VERSION_STRING); exit(0); }
        if (!takes_value(f)) fatal("unknown option '%s' (see ./llava -h)", f);
        if (i + 1 >= argc) fatal("%s needs a value (see ./llava -h)", f);
        const char* v = argv[++i];
        if (!strcmp(f, "-p")) a.prompt = v;
        else if (!strcmp(f, "-i") || !strcmp(f, "-v")) {
            int* n = f[1] == 'i' ? &a.n_images : &a.n_videos;
            if (*n == MAX_MEDIA) fatal("at most %d %s per prompt", MAX_MEDIA, f[1] == 'i' ? "images (-i)" : "videos (-v)");
            (f[1] == 'i' ? a.image_paths : a.video_paths)[(*n)++] = v;
            if (!strcmp(v, "-") && a.stdin_media++) fatal("only one -i/-v input can be stdin ('-')");
        }
        else if (!strcmp(f, "-f") || !strcmp(f, "--frames")) a.frames = parse_int(f, v, 1, 1024);
        else if (!strcmp(f, "-W")) a.raw_w = parse_int(f, v, 1, 1 << 16);
        else if (!strcmp(f, "-H")) a.raw_h = parse_int(f, v, 1, 1 << 16);
        else if (!strcmp(f, "-n")) a.steps = parse_int(f, v, 0, 1 << 24);
        else if (!strcmp(f, "-t") || !strcmp(f, "--temp")) a.temperature = parse_float(f, v, 0.0f, 100.0f);
        else if (!strcmp(f, "-k") || !strcmp(f, "--top-p")) a.topp = parse_float(f, v, 0.0f, 1.0f);
        else if (!strcmp(f, "-s") || !strcmp(f, "--seed")) { a.seed = parse_seed(f, v); a.seed_given = 1; }
        else if (!strcmp(f, "-c")) a.ctx = parse_int(f, v, 1, 1 << 24);
        else if (!strcmp(f, "-m")) a.mode = v;
        else if (!strcmp(f, "-y")) a.system = v;
        else if (!strcmp(f, "--ids")) a.ids = v;
        else if (!strcmp(f, "--pixels")) a.pixels_path = v;
        else if (!strcmp(f, "--dump")) a.dump_dir = v;
        else if (!strcmp(f, "--save-frames")) a.save_frames = v;
        else if (!strcmp(f, "--threads")) a.threads = parse_int(f, v, 1, 1024);
        else if (!strcmp(f, "--max-stream-frames")) video_max_stream_frames = parse_int(f, v, 1, 1 << 30);
    }
    if (strcmp(a.mode, "generate") && strcmp(a.mode, "chat") && strcmp(a.mode, "encode") && strcmp(a.mode, "decode"))
        fatal("-m must be generate, chat, encode or decode, got '%s'", a.mode);
    // No question and a person at the keyboard: chat, as llama-mtmd-cli does.
    if (!strcmp(a.mode, "generate") && !a.prompt && !a.ids && isatty(STDIN_FILENO)) a.mode = "chat";
    if (a.prompt && !strcmp(a.prompt, "-") && a.stdin_media) fatal("-p - and an -i/-v input cannot both read stdin");
    if (!strcmp(a.mode, "chat") && a.stdin_media) fatal("chat reads questions from stdin: media cannot come from '-'");
    // Everything that names a file is checked now, before the weights load.
    check_input_path("model", a.model_path);
    for (int k = 0; k < a.n_images; k++) check_input_path("-i", a.image_paths[k]);
    for (int k = 0; k < a.n_videos; k++) check_input_path("-v", a.video_paths[k]);
    if (a.pixels_path) check_input_path("--pixels", a.pixels_path);
    if (a.dump_dir) make_output_dir("--dump", a.dump_dir);
    if (a.save_frames) make_output_dir("--save-frames", a.save_frames);
    if (!strcmp(a.mode, "generate") && !a.prompt && !a.ids) fatal("no prompt: give -p \"question\" (or --ids, or -m chat)");
    if (!a.seed_given) {  // the clock's nanoseconds and the process id: runs started together differ
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        a.seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    }
    return a;
}

static char* read_stream(FILE* f, size_t* len) {
    size_t cap = 1 << 16, n = 0;
    char* buf = xmalloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (n + 1 == cap) buf = xrealloc(buf, cap *= 2);
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

// Parses "1 3148 1001" (spaces, commas or newlines) into ids.
static int* parse_ids(const char* s, int* n) {
    size_t cap = 64;
    int* ids = xmalloc(cap * sizeof(int));
    *n = 0;
    while (*s) {
        while (*s && (isspace((unsigned char)*s) || *s == ',')) s++;
        if (!*s) break;
        char* end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > INT32_MAX) fatal("--ids / decode input: '%.20s' is not a token id", s);
        if ((size_t)*n == cap) ids = xrealloc(ids, (cap *= 2) * sizeof(int));
        ids[(*n)++] = (int)v;
        s = end;
    }
    return ids;
}

// ----------------------------------------------------------------------------
// Chat: several turns over one KV cache
//
// The checkpoint's template over a whole conversation is the single-turn one repeated, each turn
// appended to the last: "[SYSTEM ]USER: [<image>\n...][<video>\n...]Q1 ASSISTANT: A1 USER: Q2 ASSISTANT:"
// (a system message has no role prefix; every text is followed by one space; no </s> after an
// answer). So a turn is tokenized on its own and prefilled at the position where the previous answer
// ended: the history, its images and videos included, is never recomputed. The answer's tokens stay
// in the cache as they were generated, and an end token (EOS) is not kept, as the template has none.

#define CHAT_LINE_MAX 65536  // longest line read from stdin

typedef struct {
    Model* m;
    Sampler sampler;
    int pos;                   // positions of the KV cache in use: the conversation so far
    int* ids;                  // (ctx) every token id in the cache, in order (for --dump)
    const char* system;        // -y: system prompt, or NULL
    int max_new;               // -n: new tokens per answer at most
    const MediaPaths* defaults;// frame count and raw video size for /video
    char* images[MAX_MEDIA]; int n_images;  // /image and /video given for the next question (owned copies)
    char* videos[MAX_MEDIA]; int n_videos;
} Chat;

// Forgets the media queued for the next question (the copies of their paths).
static void chat_drop_media(Chat* c) {
    for (int k = 0; k < c->n_images; k++) free(c->images[k]);
    for (int k = 0; k < c->n_videos; k++) free(c->videos[k]);
    c->n_images = c->n_videos = 0;
}

// One question with the media queued for it: template, encode media, prefill at the end of the cache,
// generate the answer into the cache. Returns 0 when the context cannot hold it (nothing is changed).
static int chat_turn(Chat* c, const char* question) {
    Model* m = c->m;
    Config* p = &m->config;
    RunState* s = &m->state;
    // The media attached with /image and /video (or -i/-v for the first question) are read now and
    // belong to this question only; their paths are freed as soon as they are read.
    MediaPaths in = *c->defaults;
    in.image_paths = (const char* const*)c->images; in.n_images = c->n_images;
    in.video_paths = (const char* const*)c->videos; in.n_videos = c->n_videos;
    in.pixels = NULL;
    Media media;
    load_media(m, &in, &media);
    chat_drop_media(c);
    // The turn's text: the system prompt before the first user turn, then the user turn; BOS only at
    // the very start of the conversation.
    int first = c->pos == 0;
    char* turn = chat_prompt(question, media.images.n, media.n_videos);
    size_t n = strlen(turn) + (c->system ? strlen(c->system) + 1 : 0) + 1;
    char* text = xmalloc(n);
    snprintf(text, n, "%s%s%s", first && c->system ? c->system : "", first && c->system ? " " : "", turn);
    free(turn);
    int T;
    int* ids = build_prompt_ids(m, text, 1, first, &media, &T);  // raw: the template is already applied
    free(text);
    // +1: room for at least one answer token. A question that does not fit changes nothing, so the
    // conversation can go on with a shorter one, or start over with /clear.
    if (c->pos + T + 1 > s->ctx) {
        fprintf(stderr, "context full: this question needs %d positions, %d of %d are left; /clear starts over\n",
                T + 1, s->ctx - c->pos, s->ctx);
        free(ids);
        free_media(&media);
        return 0;
    }
    // The vision tower runs on this question's media only; everything earlier is already in the cache.
    encode_media(m, &media);
    float* embeds = merge_embeddings(m, ids, T, media.images.image_features, media.images.total_rows,
                                     media.videos.video_features, media.videos.F * video_tokens_per_frame(p));
    double t0 = now_seconds();
    prefill(m, embeds, T, c->pos, NULL);  // appended at position c->pos: the history is not recomputed
    memcpy(c->ids + c->pos, ids, (size_t)T * sizeof(int));
    c->pos += T;
    info("prompt: %d tokens in %.2f s, %d of %d positions used\n", T, now_seconds() - t0, c->pos, s->ctx);
    free(embeds);
    free(ids);
    free_media(&media);
    // The answer. generate() leaves the last token it sampled out of the cache (there is nothing to
    // predict after it); a chat needs it there for the next turn, unless it is EOS.
    int room = s->ctx - c->pos;
    int max_new = c->max_new < room ? c->max_new : room;
    GenStats g = generate(m, &c->sampler, c->pos, max_new, c->ids + c->pos, t0, "the question");
    int n_gen = g.n_generated;
    int kept = n_gen > 0 && c->ids[c->pos + n_gen - 1] == p->eos ? n_gen - 1 : n_gen;  // EOS is not kept
    if (kept > 0 && kept == n_gen) decode_step(m, c->ids[c->pos + n_gen - 1], c->pos + n_gen - 1);
    c->pos += kept;
    if (n_gen == room && kept == n_gen) fprintf(stderr, "context full: the answer stopped at %d positions; /clear starts over\n", s->ctx);
    return 1;
}

// Reads questions from stdin until /quit or end of input. Lines starting with / are commands.
static void run_chat(Model* m, const Args* a, const MediaPaths* defaults) {
    Config* p = &m->config;
    // A conversation may grow to the whole context, so the KV cache is built for all of it up front
    // (bf16 at 7B: 2.1 GB for 4,096 positions), and prefill runs in chunks of PREFILL_CHUNK rows.
    int ctx = a->ctx ? a->ctx : p->max_pos;
    build_state(m, ctx, PREFILL_CHUNK);
    Chat c = {.m = m, .system = a->system, .max_new = a->steps, .defaults = defaults};
    c.ids = xmalloc((size_t)ctx * sizeof(int));
    build_sampler(&c.sampler, p->vocab_size, a->temperature, a->topp, a->seed);
    for (int k = 0; k < a->n_images; k++) c.images[c.n_images++] = xstrdup(a->image_paths[k]);  // for the first question
    for (int k = 0; k < a->n_videos; k++) c.videos[c.n_videos++] = xstrdup(a->video_paths[k]);
    int interactive = isatty(STDIN_FILENO);  // a person typing: greet and prompt; a script: stay silent
    if (interactive)
        fprintf(stderr, "chat: type a question; /image FILE and /video FILE attach media to the next one, "
                        "/clear forgets the conversation, /quit (or Ctrl-D) ends\n");
    if (a->prompt) chat_turn(&c, a->prompt);
    char* line = xmalloc(CHAT_LINE_MAX);
    for (;;) {
        if (interactive) { fputs("USER: ", stderr); fflush(stderr); }
        if (!fgets(line, CHAT_LINE_MAX, stdin)) break;
        size_t len = strlen(line);  // the line without its end (\n, or \r\n from a Windows file)
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) continue;
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) break;
        if (!strcmp(line, "/clear")) {
            c.pos = 0;  // the cache is simply overwritten from position 0
            chat_drop_media(&c);
            info("(conversation cleared)\n");
        } else if (!strncmp(line, "/image ", 7) || !strncmp(line, "/video ", 7)) {
            int is_image = line[1] == 'i';
            int* n = is_image ? &c.n_images : &c.n_videos;
            const char* path = line + 7;
            if (*n == MAX_MEDIA) { fprintf(stderr, "at most %d per question\n", MAX_MEDIA); continue; }
            if (access(path, R_OK) != 0) { fprintf(stderr, "%s: cannot read: %s\n", path, strerror(errno)); continue; }
            (is_image ? c.images : c.videos)[(*n)++] = xstrdup(path);
            info("(%s %s attached to the next question)\n", is_image ? "image" : "video", path);
        } else if (line[0] == '/') {
            fprintf(stderr, "unknown command %s (/image FILE, /video FILE, /clear, /quit)\n", line);
        } else {
            chat_turn(&c, line);
        }
    }
    if (a->dump_dir) {  // (parse_args made the folder)
        int64_t sh[1] = {c.pos};
        write_npy(a->dump_dir, "chat_ids.npy", "<i4", c.ids, 4, 1, sh);
    }
    chat_drop_media(&c);
    free(line);
    free(c.ids);
    free_sampler(&c.sampler);
    free_state(&m->state);
}

// n ids -> malloc'd text (*len bytes; it may hold a NUL from <0x00>), as HF's decode with
// skip_special_tokens=True.
static char* decode_text(Tokenizer* tok, const int* ids, int n, size_t* len) {
    size_t cap = (size_t)n * (tok->max_piece_len + 3) + 1;  // enough for any ids (tokenizer.c)
    char* out = xmalloc(cap);
    *len = decode_ids(tok, ids, n, out, cap);
    return out;
}

// -m encode: text on stdin -> ids on stdout (BOS first, no template).
static void run_encode(Model* m) {
    size_t len;
    char* text = read_stream(stdin, &len);
    int n;
    int* ids = tokenize(&m->tokenizer, text, len, m->config.bos, &n);
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    free(text);
}

// -m decode: ids on stdin -> text on stdout (special tokens dropped, as skip_special_tokens=True).
static void run_decode(Model* m) {
    size_t len;
    char* text = read_stream(stdin, &len);
    int n;
    int* ids = parse_ids(text, &n);
    for (int i = 0; i < n; i++)  // as --ids: an id the tokenizer does not have is an error, not nothing
        if (ids[i] >= m->tokenizer.n_tokens)
            fatal("-m decode: token id %d outside the vocabulary (%d tokens)", ids[i], m->tokenizer.n_tokens);
    size_t len_out;
    char* out = decode_text(&m->tokenizer, ids, n, &len_out);
    fwrite(out, 1, len_out, stdout);  // may hold a NUL byte from <0x00>
    printf("\n");
    free(out); free(ids); free(text);
}

// What --json reports of a run.
typedef struct {
    int prompt_tokens, generated_tokens;
    const char* stop;
    uint64_t seed;
    double load_s, vision_s;
    int views;
    double prefill_s;
    GenStats gen;
    double peak_gb;
} RunReport;

// The --json line: the answer (decoded like the streamed text), token counts, timings, seed, memory.
static void json_report(Model* m, const RunReport* r, const int* generated) {
    Config* p = &m->config;
    size_t len;
    char* answer = decode_text(&m->tokenizer, generated, r->generated_tokens, &len);
    fprintf(stderr, "{\"answer\": ");
    json_write_string(stderr, answer, len);
    fprintf(stderr, ", \"prompt_tokens\": %d, \"generated_tokens\": %d, \"stop\": \"%s\", \"seed\": %llu, "
            "\"load_s\": %.3f, \"vision_s\": %.3f, \"views\": %d, \"prefill_s\": %.3f, \"prefill_tokens_per_s\": %.3f, "
            "\"time_to_first_token_s\": %.3f, \"decode_s\": %.3f, \"decode_tokens_per_s\": %.3f, "
            "\"peak_memory_gb\": %.3f, \"weights\": \"%s\", \"threads\": %d}\n",
            r->prompt_tokens, r->generated_tokens, r->stop, (unsigned long long)r->seed, r->load_s, r->vision_s,
            r->views, r->prefill_s, r->prefill_s > 0 ? r->prompt_tokens / r->prefill_s : 0.0, r->gen.ttft,
            r->gen.seconds, r->gen.n_decoded > 0 ? r->gen.n_decoded / r->gen.seconds : 0.0, r->peak_gb,
            weight_type_name(p), pool_size());
    free(answer);
}

// Messages, threads, the model; the load line (counted from t_start). Returns when loading finished.
static double start(const Args* a, Model* m, double t_start) {
    g_quiet = a->quiet;
    g_progress = !a->quiet && isatty(STDERR_FILENO);
    if (g_progress) video_stream_progress = progress_frames_read;
    pool_init(a->threads > 0 ? a->threads : (int)sysconf(_SC_NPROCESSORS_ONLN));
    build_model(m, a->model_path);
    Config* p = &m->config;
    double t_loaded = now_seconds();
    if (!strcmp(a->mode, "encode") || !strcmp(a->mode, "decode")) return t_loaded;
    info("load: %.2f s (%s weights, %d threads)\n", t_loaded - t_start, weight_type_name(p), pool_size());
    if (!a->seed_given && a->temperature > 0) info("seed: %llu\n", (unsigned long long)a->seed);
    if (a->ctx > p->max_pos)
        info("warning: -c %d is past the model's %d trained positions; answers may degrade there\n", a->ctx, p->max_pos);
    return t_loaded;
}

// One question about some media, answered on stdout: the pipeline of the functions above.
static int run(Args* a) {
    Model model;
    Model* m = &model;
    double t_start = now_seconds(), t_loaded = start(a, m, t_start);
    Config* p = &m->config;
    if (strcmp(a->mode, "generate") != 0) {  // the other modes: tokenizer only, or a conversation
        MediaPaths in = {a->image_paths, a->n_images, a->video_paths, a->n_videos, a->frames, a->raw_w, a->raw_h, NULL};
        if (!strcmp(a->mode, "encode")) run_encode(m);
        else if (!strcmp(a->mode, "decode")) run_decode(m);
        else run_chat(m, a, &in);
        free_model(m);
        return 0;
    }
    MediaPaths in = {a->image_paths, a->n_images, a->video_paths, a->n_videos, a->frames, a->raw_w, a->raw_h,
                     a->pixels_path};

    // 1. The media, read and preprocessed; 2. the prompt ids (the question in the chat template, or
    //    --ids as given), so that the prompt's length is known before the model runs.
    Media media;
    load_media(m, &in, &media);
    if (a->save_frames) save_frames(a->save_frames, m, &media);
    int T;
    int* ids;
    char* question = a->prompt && !strcmp(a->prompt, "-") ? read_stream(stdin, &(size_t){0}) : NULL;
    if (a->ids) ids = parse_ids(a->ids, &T);
    else ids = build_prompt_ids(m, question ? question : a->prompt, a->raw, 1, &media, &T);
    free(question);
    if (T == 0) fatal("empty prompt");
    int ctx = a->ctx ? a->ctx : p->max_pos;
    if (T > ctx) fatal("the prompt is %d tokens, longer than the context of %d (raise it with -c)", T, ctx);
    int steps = T + a->steps > ctx ? ctx - T : a->steps;

    // 3. Vision tower -> feature rows, scattered into the token embeddings.
    double t_vision = encode_media(m, &media);
    float* embeds = merge_embeddings(m, ids, T, media.images.image_features, media.images.total_rows,
                                     media.videos.video_features, media.videos.F * video_tokens_per_frame(p));
    if (a->dump_dir) dump_prompt(a->dump_dir, m, ids, T, &media, embeds);

    // 4. Prefill the whole prompt, then generate token by token.
    build_state(m, T + steps, T < PREFILL_CHUNK ? T : PREFILL_CHUNK);  // the cache holds what this run can reach
    float* all_logits = a->dump_dir ? xmalloc((size_t)T * p->vocab_size * sizeof(float)) : NULL;
    double t0 = now_seconds();
    prefill(m, embeds, T, 0, all_logits);
    double t_prefill = now_seconds() - t0;
    info("prompt: %d tokens in %.2f s (%.1f tokens/s)\n", T, t_prefill, T / t_prefill);
    Sampler sampler;
    build_sampler(&sampler, p->vocab_size, a->temperature, a->topp, a->seed);
    int* generated = xmalloc(((size_t)steps + 1) * sizeof(int));
    GenStats g = generate(m, &sampler, T, steps, generated, t_loaded, "loading");
    const char* stop = g.n_generated == 0 ? "no new tokens (-n 0 or a full context)"
                     : !strcmp(g.stop, "end token") ? "end token" : steps < a->steps ? "context full" : "-n limit";
    if (g.n_generated > 0) info("stopped: %s\n", stop);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double peak_gb = ru.ru_maxrss / 1048576.0;  // ru_maxrss is in KB on Linux
    info("peak memory: %.2f GB\n", peak_gb);
    if (a->dump_dir) {
        int64_t ls[2] = {T, p->vocab_size}, gs[1] = {g.n_generated};
        dump_f32(a->dump_dir, "logits.npy", all_logits, 2, ls);
        write_npy(a->dump_dir, "generated.npy", "<i4", generated, 4, 1, gs);
    }
    if (a->json) {
        RunReport r = {T, g.n_generated, stop, a->seed, t_loaded - t_start, t_vision,
                       media.images.total_patches + media.videos.F, t_prefill, g, peak_gb};
        json_report(m, &r, generated);
    }
    free(all_logits); free(generated); free(embeds); free(ids);
    free_sampler(&sampler);
    free_media(&media);
    free_state(&m->state);
    free_model(m);
    return 0;
}

#ifdef LLAVA_CUDA
#include "llava.cu"  // the GPU's host half: sets llava_accel (make llava_cuda)
#endif

#ifndef TESTING
int main(int argc, char** argv) {
    Args a = parse_args(argc, argv);
    return run(&a);
}
#else
// Tests drive the pieces above directly; the command line is still compiled (so it cannot rot), and
// referenced here so that -Wall does not call it unused.
static const struct { Args (*parse)(int, char**); int (*run)(Args*); } llava_cli __attribute__((unused)) = {
    parse_args, run};
#endif
