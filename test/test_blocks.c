/*
 * test_blocks.c: each neural-net block of llava.c against its textbook formula, computed naively in
 * double. Exits non-zero on any mismatch; the last line is "N passed, N failed".
 */
#define TESTING
#include "../llava.c"

// Debian's aarch64 gcc 12.2 crashes (an internal compiler error in vect_transform_reduction) when it
// vectorizes the fmax reductions below at -O2/-O3. The error maxima need no vectorizing anyway.
#if defined(__aarch64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC optimize("no-tree-loop-vectorize")
#endif

static int g_pass, g_fail;

static void check(int ok, const char* what, double err) {
    printf("  %-4s %-44s max err %.3g\n", ok ? "ok" : "FAIL", what, err);
    if (ok) g_pass++; else g_fail++;
}

static uint64_t g_rng = 42;
static float rnd(void) { return random_f32(&g_rng) * 2.0f - 1.0f; }
static void fill(float* x, size_t n, float scale) { for (size_t i = 0; i < n; i++) x[i] = rnd() * scale; }

static void test_norms(void) {
    int n = 4096;
    float *x = xmalloc(n * 4), *w = xmalloc(n * 4), *b = xmalloc(n * 4), *y = xmalloc(n * 4);
    fill(x, n, 3.0f); fill(w, n, 1.0f); fill(b, n, 1.0f);
    rmsnorm(y, x, w, n, 1e-5f);
    double ss = 0, err = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    for (int i = 0; i < n; i++) {
        double ref = w[i] * x[i] / sqrt(ss / n + 1e-5);
        if (fabs(y[i] - ref) > err) err = fabs(y[i] - ref);
    }
    check(err < 1e-5, "rmsnorm vs w*x/sqrt(mean(x^2)+eps)", err);

    layernorm(y, x, w, b, n, 1e-5f);
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    err = 0;
    for (int i = 0; i < n; i++) {
        double ref = (x[i] - mean) / sqrt(var + 1e-5) * w[i] + b[i];
        if (fabs(y[i] - ref) > err) err = fabs(y[i] - ref);
    }
    check(err < 1e-5, "layernorm vs (x-mean)/sqrt(var+eps)*w+b", err);
    free(x); free(w); free(b); free(y);
}

static void test_activations(void) {
    double e1 = 0, e2 = 0, e3 = 0, e4 = 0;
    for (int i = -2000; i <= 2000; i++) {
        double x = i / 100.0;
        e1 = fmax(e1, fabs(gelu((float)x) - 0.5 * x * (1 + erf(x / sqrt(2.0)))));
        e2 = fmax(e2, fabs(quick_gelu((float)x) - x / (1 + exp(-1.702 * x))));
        e3 = fmax(e3, fabs(silu((float)x) - x / (1 + exp(-x))));
    }
    check(e1 < 1e-5, "gelu vs 0.5x(1+erf(x/sqrt2))", e1);
    check(e2 < 1e-5, "quick_gelu vs x*sigmoid(1.702x)", e2);
    check(e3 < 1e-5, "silu vs x*sigmoid(x)", e3);
    // the vectorised, threaded versions over a buffer with a scalar tail
    size_t n = 40000 + 3;
    float *x = xmalloc(n * 4), *y = xmalloc(n * 4), *z = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) { x[i] = (float)((double)i / n * 40.0 - 20.0); y[i] = 1.5f - (float)i / n; }
    double ea = 0, eb = 0, ec = 0;
    memcpy(z, x, n * 4); activation(z, NULL, n, ACT_QUICK_GELU);
    for (size_t i = 0; i < n; i++) ea = fmax(ea, fabs(z[i] - x[i] / (1 + exp(-1.702 * x[i]))) / fmax(1, fabs(x[i])));
    memcpy(z, x, n * 4); activation(z, y, n, ACT_SILU_MUL);
    for (size_t i = 0; i < n; i++) eb = fmax(eb, fabs(z[i] - x[i] / (1 + exp(-x[i])) * y[i]) / fmax(1, fabs(x[i])));
    memcpy(z, x, n * 4); activation(z, NULL, n, ACT_GELU);
    for (size_t i = 0; i < n; i++) ec = fmax(ec, fabs(z[i] - 0.5 * x[i] * (1 + erf(x[i] / sqrt(2.0)))));
    check(ea < 1e-6, "activation(quick_gelu) vs formula (rel)", ea);
    check(eb < 1e-6, "activation(silu(x)*y) vs formula (rel)", eb);
    check(ec < 1e-5, "activation(gelu) vs formula", ec);
    // activation_rows over strided rows (the fused gate | up output) gives the bits of the contiguous
    // call on the same elements: rows of n = 37 (vector blocks straddle rows at every VL), then a
    // chunk-crossing size, each at stride 2n with the "up" half right after the "gate" half
    size_t shapes[][2] = {{1081, 37}, {7, 6001}};
    for (int sh = 0; sh < 2; sh++) {
        size_t rows = shapes[sh][0], nn = shapes[sh][1], tot = rows * nn;
        float *g = xmalloc(tot * 2 * 4), *out = xmalloc(tot * 4), *ref = xmalloc(tot * 4), *up = xmalloc(tot * 4);
        fill(g, tot * 2, 8.0f);
        for (size_t r = 0; r < rows; r++) {
            memcpy(ref + r * nn, g + r * 2 * nn, nn * 4);
            memcpy(up + r * nn, g + r * 2 * nn + nn, nn * 4);
        }
        activation(ref, up, tot, ACT_SILU_MUL);
        activation_rows(out, g, g + nn, rows, nn, 2 * nn, ACT_SILU_MUL);
        check(memcmp(out, ref, tot * 4) == 0, "activation_rows(silu*up, strided rows) == contiguous, bit for bit", 0);
        // bias_activation_block, a GEMM epilogue's blocks (6 rows x 96 columns, then 5 x 40, cut anywhere
        // in the rows and across the scalar tail), gives the bits of adding the bias first and then
        // activation()'s pass over the whole buffer
        float* bias = xmalloc(nn * 4);
        fill(bias, nn, 3.0f);
        for (int act = ACT_QUICK_GELU; act <= ACT_GELU; act++) {
            for (size_t r = 0; r < rows; r++)
                for (size_t c = 0; c < nn; c++) ref[r * nn + c] = g[r * 2 * nn + c] + bias[c];
            activation(ref, NULL, tot, act);
            for (int cut = 0; cut < 2; cut++) {
                int br = cut ? 5 : 6, bc = cut ? 40 : 96;
                for (size_t r = 0; r < rows; r++) memcpy(out + r * nn, g + r * 2 * nn, nn * 4);
                for (size_t t0 = 0; t0 < rows; t0 += br)
                    for (size_t c0 = 0; c0 < nn; c0 += bc)
                        bias_activation_block(out, bias, rows, nn, act, (int)t0, (int)(t0 + br < rows ? t0 + br : rows), (int)c0,
                                              (int)(c0 + bc < nn ? c0 + bc : nn));
                check(memcmp(out, ref, tot * 4) == 0, act == ACT_GELU ? "bias_activation_block(gelu) in blocks == add, then activation"
                                                                      : "bias_activation_block(quick_gelu) in blocks == add, then activation", 0);
            }
        }
        free(bias);
        free(g); free(out); free(ref); free(up);
    }
    free(x); free(y); free(z);
    float sx[100];
    fill(sx, 100, 20.0f);
    double mx = -1e30, sum = 0, ref[100];
    for (int i = 0; i < 100; i++) mx = fmax(mx, sx[i]);
    for (int i = 0; i < 100; i++) sum += ref[i] = exp(sx[i] - mx);
    softmax(sx, 100);
    for (int i = 0; i < 100; i++) e4 = fmax(e4, fabs(sx[i] - ref[i] / sum));
    check(e4 < 1e-6, "softmax vs exp(x-max)/sum", e4);
    double e5 = 0;  // the lane-wise exp of the attention softmax, in ulps-ish relative error
    for (int i = 0; i <= 87000; i += 32) {
        vf x;
        for (int j = 0; j < VL; j++) x[j] = -(i + j) / 1000.0f - j * 1e-5f;
        vf y = vexp_neg(x);
        for (int j = 0; j < VL; j++) {
            double ref = exp((double)x[j]);
            if (ref > 1e-37) e5 = fmax(e5, fabs(y[j] - ref) / ref);
        }
    }
    check(e5 < 3e-7, "vexp_neg vs exp over [-87, 0] (relative)", e5);
    // and its edges (AVX-512 builds run their own instructions for it): 0 below -87 and at -inf, NaN kept
    vf under = {0}, nanv = {0};
    for (int j = 0; j < VL; j++) under[j] = j == 0 ? -INFINITY : -87.0001f - 10.0f * j, nanv[j] = NAN;
    vf yu = vexp_neg(under), yn = vexp_neg(nanv);
    int edges = 0;
    for (int j = 0; j < VL; j++) edges += yu[j] != 0.0f || yn[j] == yn[j];
    check(edges == 0, "vexp_neg: 0 below -87 and at -inf, NaN stays NaN", edges);
}

// RoPE as the rotation of complex numbers (x[j] + i x[j+half]) * e^(i pos inv_freq[j]).
// rope at position pos, with the angle table computed as llm_forward does
static void rope_at(float* x, int heads, int hd, int pos, const float* inv_freq) {
    float c[64], s[64];
    rope_angles(c, s, pos, inv_freq, hd / 2);
    rope(x, heads, hd, c, s);
}

static void test_rope(void) {
    int heads = 3, hd = 16, half = 8;
    float inv_freq[8], x[48], y[48];
    for (int j = 0; j < half; j++) inv_freq[j] = 1.0f / powf(10000.0f, 2.0f * j / hd) / 2.5f;
    fill(x, 48, 1.0f);
    memcpy(y, x, sizeof(x));
    rope_at(y, heads, hd, 37, inv_freq);
    double err = 0;
    for (int h = 0; h < heads; h++)
        for (int j = 0; j < half; j++) {
            double th = 37.0 * inv_freq[j];
            double re = x[h * hd + j] * cos(th) - x[h * hd + j + half] * sin(th);
            double im = x[h * hd + j] * sin(th) + x[h * hd + j + half] * cos(th);
            err = fmax(err, fmax(fabs(y[h * hd + j] - re), fabs(y[h * hd + j + half] - im)));
        }
    check(err < 1e-5, "rope vs complex rotation (rotate_half pairs)", err);
    // q(p).k(p') depends only on p - p'
    float q[16], k[16], q1[16], k1[16], q2[16], k2[16];
    fill(q, 16, 1.0f); fill(k, 16, 1.0f);
    memcpy(q1, q, 64); memcpy(k1, k, 64); memcpy(q2, q, 64); memcpy(k2, k, 64);
    rope_at(q1, 1, 16, 10, inv_freq); rope_at(k1, 1, 16, 3, inv_freq);
    rope_at(q2, 1, 16, 107, inv_freq); rope_at(k2, 1, 16, 100, inv_freq);
    double d1 = 0, d2 = 0;
    for (int i = 0; i < 16; i++) { d1 += q1[i] * k1[i]; d2 += q2[i] * k2[i]; }
    check(fabs(d1 - d2) < 1e-4, "rope: q.k depends only on relative position", fabs(d1 - d2));
}

// attention() (the fast path for this CPU and shape) and attention_ref() (the scalar definition) each vs
// a naive T x T softmax(QK^T/sqrt(d) + mask) V in double, with grouped-query heads.
// layout 0: K/V rows (S, KV*hd) as the vision tower has them; 1: the KV cache's (KV, S, hd) in f32;
// 2: the same in bf16 (the reference then uses the bf16-rounded values).
// dots: bf16_dots set (layout 2 only). Where attention() then runs on vdpbf16ps, the reference rounds q
// and the softmax numerators exp(s - max) to bf16 as the kernel does (the sum stays unrounded), and
// the bound is 1e-3: f32 sums, and a p whose fast exp (~3e-6 from the exact one) lands on the other side
// of a bf16 rounding boundary moves by 2^-8 of itself. The error against the unrounded reference is
// printed beside it (a wrong pairing of operands gives 0.3-1.2).
static int g_bf16_dots_ran;
static void test_attention_case_dots(int T, int past, int H, int KV, int hd, int causal, int layout, int dots);
static void test_attention_case(int T, int past, int H, int KV, int hd, int causal, int layout) {
    test_attention_case_dots(T, past, H, KV, hd, causal, layout, 0);
}
static void test_attention_case_dots(int T, int past, int H, int KV, int hd, int causal, int layout, int dots) {
    int S = past + T;
    size_t qd = (size_t)H * hd, kvd = (size_t)KV * hd;
    float *q = xmalloc(T * qd * 4), *k = xmalloc(S * kvd * 4), *v = xmalloc(S * kvd * 4);
    float *out = xmalloc(T * qd * 4);
    fill(q, T * qd, 2.0f); fill(k, S * kvd, 2.0f); fill(v, S * kvd, 1.0f);
    float* kc = xmalloc(S * kvd * 4);
    float* vc = xmalloc(S * kvd * 4);  // (KV, S, hd) as f32, or as bf16 in the first half
    for (int s = 0; s < S; s++)
        for (int h = 0; h < KV; h++) {
            size_t src = (size_t)s * kvd + (size_t)h * hd, dst = ((size_t)h * S + s) * hd;
            if (layout == 2)
                for (int i = 0; i < hd; i++) {  // round in place so the reference sees what the cache holds
                    k[src + i] = bf16_to_f32(f32_to_bf16(k[src + i]));
                    v[src + i] = bf16_to_f32(f32_to_bf16(v[src + i]));
                }
            store_kv(kc, dst, k + src, hd, layout == 2);
            store_kv(vc, dst, v + src, hd, layout == 2);
        }
    AttnArgs a = {.out = out, .q = q, .k = k, .v = v, .T = T, .n_heads = H, .n_kv_heads = KV, .head_dim = hd,
                  .q_stride = qd, .kv_stride = kvd, .kv_head_stride = hd, .out_stride = qd,
                  .causal_offset = causal ? past : -1, .n_keys = S, .scale = 1.0f / sqrtf(hd)};
    if (layout > 0) {
        a.k = kc; a.v = vc; a.kv_stride = hd; a.kv_head_stride = (size_t)S * hd; a.kv_bf16 = layout == 2;
    }
    a.bf16_dots = dots;
    int rounded = attention_bf16_dots(&a);   // what attention() is about to run
    g_bf16_dots_ran |= rounded;
    for (int path = 0; path < 2; path++) {
        memset(out, 0, T * qd * 4);
        if (path == 0) attention(&a);
        else attention_ref(&a);
        int r = rounded && path == 0;
        double err = 0, err_exact = 0;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                int kh = h / (H / KV), n = causal ? past + t + 1 : S;
                double sc[1024], mx = -1e30, sum = 0;   // keys: past + T <= 1024 in every case below
                double sx[1024], mxx = -1e30, sumx = 0;  // the unrounded scores, when r
                for (int s = 0; s < n; s++) {
                    double d = 0, dx = 0;
                    for (int i = 0; i < hd; i++) {
                        float qi = q[t * qd + h * hd + i];
                        d += (double)(r ? bf16_to_f32(f32_to_bf16(qi)) : qi) * k[s * kvd + kh * hd + i];
                        dx += (double)qi * k[s * kvd + kh * hd + i];
                    }
                    sc[s] = d / sqrt(hd), sx[s] = dx / sqrt(hd);
                    mx = fmax(mx, sc[s]), mxx = fmax(mxx, sx[s]);
                }
                for (int s = 0; s < n; s++) sum += sc[s] = exp(sc[s] - mx), sumx += sx[s] = exp(sx[s] - mxx);
                for (int i = 0; i < hd; i++) {
                    double o = 0, ox = 0;
                    for (int s = 0; s < n; s++) {
                        double p = r ? bf16_to_f32(f32_to_bf16((float)sc[s])) : sc[s];
                        o += p / sum * v[s * kvd + kh * hd + i];
                        ox += sx[s] / sumx * v[s * kvd + kh * hd + i];
                    }
                    err = fmax(err, fabs(o - out[t * qd + h * hd + i]));
                    err_exact = fmax(err_exact, fabs(ox - out[t * qd + h * hd + i]));
                }
            }
        char what[160];
        snprintf(what, sizeof(what), "%s T=%d past=%d H=%d KV=%d hd=%d %s %s%s", path ? "attention_ref" : "attention",
                 T, past, H, KV, hd, causal ? "causal" : "full",
                 layout == 0 ? "rows" : layout == 1 ? "cache" : "cache-bf16", r ? " vdpbf16ps" : "");
        if (r) {
            size_t l = strlen(what);
            snprintf(what + l, sizeof(what) - l, " (unrounded ref: %.2g)", err_exact);
        }
        check(err < (r ? 1e-3 : 1e-5), what, err);
    }
    free(q); free(k); free(v); free(out); free(kc); free(vc);
}

// The row path (T < ATTN_ROW_MAX_T), the lane-block path with tails, GQA, head_dim not a multiple of 8, no mask.
// A NaN in a key poisons what reads it, on every path (as in PyTorch): with one NaN in the first key of
// kv head 0 (seen by every causal query), every output of the heads on kv head 0 is NaN and every other
// output is finite; for the f32 and bf16 caches, the block path (T = 40), the row path (T = 1) and the
// vdpbf16ps path (bf16_dots).
static void test_attention_nan(void) {
    int H = 4, KV = 2, hd = 64, past = 3;
    for (int cfg = 0; cfg < 6; cfg++) {
        int T = cfg % 2 ? 1 : 40, bf16 = cfg >= 2, dots = cfg >= 4, S = past + T;
        size_t qd = (size_t)H * hd;
        float *q = xmalloc(T * qd * 4), *out = xmalloc(T * qd * 4), *k = xmalloc((size_t)S * hd * 4);
        float *kc = xmalloc((size_t)KV * S * hd * 4), *vc = xmalloc((size_t)KV * S * hd * 4);
        fill(q, T * qd, 1.0f);
        for (int h = 0; h < KV; h++)
            for (int s = 0; s < S; s++) {
                fill(k, hd, 1.0f);
                if (h == 0 && s == 0) k[5] = NAN;
                store_kv(kc, ((size_t)h * S + s) * hd, k, hd, bf16);
                fill(k, hd, 1.0f);
                store_kv(vc, ((size_t)h * S + s) * hd, k, hd, bf16);
            }
        AttnArgs a = {.out = out, .q = q, .k = kc, .v = vc, .kv_bf16 = bf16, .bf16_dots = dots, .T = T, .n_heads = H,
                      .n_kv_heads = KV, .head_dim = hd, .q_stride = qd, .kv_stride = hd, .kv_head_stride = (size_t)S * hd,
                      .out_stride = qd, .causal_offset = past, .n_keys = S, .scale = 0.125f};
        attention(&a);
        int ok = 1;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < hd; i++) ok &= isnan(out[t * qd + h * hd + i]) == (h / (H / KV) == 0);
        char what[120];
        snprintf(what, sizeof what, "attention: a NaN key poisons its heads only (T=%d, %s cache%s)", T,
                 bf16 ? "bf16" : "f32", dots ? ", bf16 dots" : "");
        check(ok, what, 0);
        free(q); free(out); free(k); free(kc); free(vc);
    }
}

static void test_attention(void) {
    for (int layout = 0; layout < 3; layout++) {
        test_attention_case(1, 37, 4, 2, 8, 1, layout);
        test_attention_case(3, 0, 2, 1, 12, 1, layout);
        test_attention_case(70, 5, 4, 2, 8, 1, layout);
        test_attention_case(64, 0, 2, 2, 128, 1, layout);
        test_attention_case(45, 100, 4, 1, 20, 1, layout);
        test_attention_case(1, 150, 2, 2, 128, 1, layout);
        test_attention_case(77, 0, 2, 2, 64, 0, layout);
        // a last block of one row (65 = 2 x 32 + 1 = 4 x 16 + 1; CLIP has 577 = 18 x 32 + 1)
        test_attention_case(65, 0, 2, 2, 64, 0, layout);
        // the vectorised row path (head_dim a multiple of the vector): key counts around its 4-key
        // step, head_dim 48 (3 vectors with AVX-512: strips of one), GQA, several query rows
        test_attention_case(1, 0, 2, 2, 128, 1, layout);
        test_attention_case(1, 2, 4, 2, 64, 1, layout);
        test_attention_case(2, 5, 4, 1, 48, 1, layout);
        test_attention_case(7, 30, 4, 4, 16, 1, layout);
        test_attention_case(5, 600, 2, 1, 128, 1, layout);
    }
    // bf16_dots on a bf16 cache: the vdpbf16ps block path where the CPU has it (odd and even key counts,
    // head_dim not a multiple of 32 or of the 8-row register block (a narrower last VP tile), GQA, more
    // than 128 keys), else the f32 path, checked exactly as above.
    test_attention_case_dots(64, 0, 2, 2, 128, 1, 2, 1);
    test_attention_case_dots(77, 0, 2, 2, 64, 0, 2, 1);
    test_attention_case_dots(45, 100, 4, 1, 20, 1, 2, 1);
    test_attention_case_dots(70, 5, 4, 2, 8, 1, 2, 1);
    test_attention_case_dots(33, 290, 2, 1, 96, 1, 2, 1);
    test_attention_case_dots(9, 0, 2, 2, 6, 0, 2, 1);
    test_attention_case_dots(65, 0, 2, 2, 64, 0, 2, 1);
    test_attention_nan();
    if (!g_bf16_dots_ran) printf("skipped: attention on vdpbf16ps (needs an AVX-512 build on a CPU with AVX512-BF16)\n");
}

static void test_pool(void) {
    int F = 2, g = 6, s = 2, D = 5, go = 3;
    float in[2 * 36 * 5], out[2 * 9 * 5];
    fill(in, sizeof(in) / 4, 1.0f);
    average_pool(out, in, F, g, s, D);
    double err = 0;
    for (int f = 0; f < F; f++)
        for (int i = 0; i < go; i++)
            for (int j = 0; j < go; j++)
                for (int d = 0; d < D; d++) {
                    double r = 0;
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++) r += in[((f * g + 2 * i + dy) * g + 2 * j + dx) * D + d];
                    err = fmax(err, fabs(r / 4 - out[((f * go + i) * go + j) * D + d]));
                }
    check(err < 1e-6, "average_pool vs mean of each 2x2 block", err);
}

static void test_dequantize(void) {
    float f[8] = {1, -2, 3, -4, 5, -6, 7, -8};
    uint16_t b[8];
    for (int i = 0; i < 8; i++) { uint32_t u; memcpy(&u, &f[i], 4); b[i] = u >> 16; }
    int8_t q[8] = {1, -2, 3, -4, 5, -6, 7, -8};
    float sc[2] = {0.5f, 2.0f}, out[8];
    Matrix mb = {.type = DT_BF16, .rows = 1, .cols = 8, .data = b};
    Matrix mq = {.type = DT_Q8, .rows = 1, .cols = 8, .data = q, .scales = sc, .group = 4};
    dequantize_row(out, &mb, 0);
    double e = 0;
    for (int i = 0; i < 8; i++) e = fmax(e, fabs(out[i] - f[i]));
    dequantize_row(out, &mq, 0);
    for (int i = 0; i < 8; i++) e = fmax(e, fabs(out[i] - q[i] * sc[i / 4]));
    check(e == 0, "dequantize_row bf16 and q8 (group scales)", e);
    // q4, row 1 of a 2 x 16 matrix with group 8: byte i = input 2i (low nibble) | 2i+1 (high), u = w + 8;
    // the bf16 scales 0.5 and -2 (exact in bf16)
    uint8_t nib[16];
    int w4[2][16];
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 16; i++) w4[r][i] = (i * 5 + r * 3) % 16 - 8;     // every value -8..7
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < 8; i++) nib[r * 8 + i] = (uint8_t)((w4[r][2 * i] + 8) | (w4[r][2 * i + 1] + 8) << 4);
    uint16_t s4[4] = {f32_to_bf16(1.0f), f32_to_bf16(1.0f), f32_to_bf16(0.5f), f32_to_bf16(-2.0f)};
    Matrix m4 = {.type = DT_Q4, .rows = 2, .cols = 16, .data = nib, .group = 8, .scales_bf16 = s4};
    float out4[16];
    dequantize_row(out4, &m4, 1);
    double e4 = 0;
    for (int i = 0; i < 16; i++) e4 = fmax(e4, fabs(out4[i] - w4[1][i] * (i < 8 ? 0.5 : -2.0)));
    check(e4 == 0, "dequantize_row q4 (nibble order, offset 8, bf16 group scales)", e4);
}

static void test_prompt(void) {
    char* s = chat_prompt("Why is this video funny?", 0, 1);
    check(!strcmp(s, "USER: <video>\nWhy is this video funny? ASSISTANT:"), "chat template with one video", 0);
    free(s);
    s = chat_prompt("Hi", 0, 0);
    check(!strcmp(s, "USER: Hi ASSISTANT:"), "chat template, text only", 0);
    free(s);
    s = chat_prompt("Q", 2, 1);  // all images first, then the videos, as the processor's template
    check(!strcmp(s, "USER: <image>\n<image>\n<video>\nQ ASSISTANT:"), "chat template, two images and a video", 0);
    free(s);
    int* ids = xmalloc(4 * sizeof(int));
    ids[0] = 1; ids[1] = 32000; ids[2] = 13; ids[3] = 32000;
    int three[] = {3, 3};
    int n = expand_placeholders(&ids, 4, 32001, NULL, 0, 32000, three, 2);
    int want[] = {1, 32000, 32000, 32000, 13, 32000, 32000, 32000};
    check(n == 8 && !memcmp(ids, want, sizeof(want)), "placeholder expansion", 0);
    free(ids);
    // each placeholder gets its own medium's count, in order
    ids = xmalloc(6 * sizeof(int));
    int in[] = {1, 32001, 32001, 32000, 13, 32000};
    memcpy(ids, in, sizeof(in));
    int per_image[] = {2, 1}, per_video[] = {1, 3};
    n = expand_placeholders(&ids, 6, 32001, per_image, 2, 32000, per_video, 2);
    int want2[] = {1, 32001, 32001, 32001, 32000, 13, 32000, 32000, 32000};
    check(n == 9 && !memcmp(ids, want2, sizeof(want2)), "placeholder expansion, images and videos", 0);
    free(ids);
}

static void test_sampler(void) {
    float logits[6] = {0.1f, 3.0f, 3.0f, -1.0f, 2.9f, 0.0f};
    Sampler s;
    build_sampler(&s, 6, 0.0f, 0.9f, 7);
    check(sample(&s, logits) == 1, "greedy picks the first maximum (torch.argmax)", 0);
    int counts[6] = {0}, counts2[6] = {0};
    Sampler a, b;  // the same seed twice: the same draws
    build_sampler(&a, 6, 1.0f, 0.5f, 123);
    build_sampler(&b, 6, 1.0f, 0.5f, 123);
    for (int i = 0; i < 2000; i++) {
        float l1[6], l2[6];
        memcpy(l1, logits, sizeof(l1));
        memcpy(l2, logits, sizeof(l2));
        counts[sample(&a, l1)]++;
        counts2[sample(&b, l2)]++;
    }
    // top-p 0.5: tokens 1 and 2 each hold ~0.37 of the mass, so the nucleus is {1, 2}
    check(!memcmp(counts, counts2, sizeof(counts)) && counts[0] + counts[3] + counts[4] + counts[5] == 0 &&
          counts[1] > 800 && counts[2] > 800, "top-p: seeded, nucleus only", 0);
    free_sampler(&s); free_sampler(&a); free_sampler(&b);
}

static void test_npy(void) {
    float x[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    write_npy("/tmp", "llava_test_blocks.npy", "<f4", x, 4, 2, shape);
    char descr[4];
    int nd;
    int64_t sh[8];
    float* y = read_npy("/tmp/llava_test_blocks.npy", descr, &nd, sh);
    check(nd == 2 && sh[0] == 2 && sh[1] == 3 && !memcmp(x, y, sizeof(x)) && !strcmp(descr, "<f4"),
          ".npy write/read round trip", 0);
    free(y);
}

int main(void) {
    pool_init(2);
    test_norms();
    test_activations();
    test_rope();
    test_attention();
    test_pool();
    test_dequantize();
    test_prompt();
    test_sampler();
    test_npy();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
