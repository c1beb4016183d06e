/*
 * test_formats.c: a model's format 2 file (panels, q|k|v and gate|up fused) holds exactly the weights of
 * its format 1 file (rows), as the readers of rows see them: the portable loop and llava_cuda, which
 * rebuild rows from the panels at load (panels_to_rows) and read q, k, v, gate and up as views into
 * the fused rows (rows_for_accelerator). Every matmul weight the forward passes use is compared byte
 * for byte, values and scales.
 *
 *   test_formats MODEL_format1.bin MODEL.bin
 *
 * (The SIMD kernels' side, panels read in place, is checked by run_tests.sh's formats_agree: --dump
 * of both files bit for bit.) Exits non-zero on any difference; the last line is "N passed, N failed".
 */
#define TESTING
#include "../llava.c"

static int n_pass, n_fail;

static void no_upload(Model* m) { (void)m; }   // the accelerator hook: build_model leaves the rows as loaded

static void same(const Matrix* a, const Matrix* b, const char* name, int layer) {
    int ok = a->type == b->type && a->rows == b->rows && a->cols == b->cols && a->group == b->group;
    if (ok) {
        ok = !memcmp(a->data, b->data, matrix_data_bytes(a->type, a->rows, a->cols));
        size_t sb = (size_t)a->rows * row_scale_bytes(a);
        if (ok && sb) ok = !memcmp(matrix_scales(a), matrix_scales(b), sb);
    }
    if (ok) n_pass++;
    else { n_fail++; printf("  FAIL %s[%d]: format 2 differs from format 1\n", name, layer); }
}

int main(int argc, char** argv) {
    if (argc != 3) { fprintf(stderr, "usage: test_formats MODEL_format1.bin MODEL.bin\n"); return 2; }
    llava_accel.load_weights = no_upload;
    Model m1, m2;
    build_model(&m1, argv[1]);
    build_model(&m2, argv[2]);
    if (m1.config.version != 1 || m2.config.version != 2) fatal("expected a format 1 and a format 2 file");
    const Config* p = &m1.config;
    VisionWeights *v1 = &m1.vision, *v2 = &m2.vision;
    LlmWeights *w1 = &m1.llm, *w2 = &m2.llm;
    for (int l = 0; l < vision_layers_needed(p); l++) {
        const Matrix* a[] = {v1->wq, v1->wk, v1->wv, v1->wo, v1->fc1, v1->fc2};
        const Matrix* b[] = {v2->wq, v2->wk, v2->wv, v2->wo, v2->fc1, v2->fc2};
        const char* names[] = {"vision wq", "vision wk", "vision wv", "vision wo", "vision fc1", "vision fc2"};
        for (int i = 0; i < 6; i++) same(&a[i][l], &b[i][l], names[i], l);
    }
    same(&v1->patch_embedding, &v2->patch_embedding, "patch_embedding", 0);
    same(&m1.projector.linear_1, &m2.projector.linear_1, "projector linear_1", 0);
    same(&m1.projector.linear_2, &m2.projector.linear_2, "projector linear_2", 0);
    same(&w1->embed_tokens, &w2->embed_tokens, "embed_tokens", 0);
    for (int l = 0; l < p->n_layers; l++) {
        const Matrix* a[] = {w1->wq, w1->wk, w1->wv, w1->wo, w1->w_gate, w1->w_up, w1->w_down};
        const Matrix* b[] = {w2->wq, w2->wk, w2->wv, w2->wo, w2->w_gate, w2->w_up, w2->w_down};
        const char* names[] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};
        for (int i = 0; i < 7; i++) same(&a[i][l], &b[i][l], names[i], l);
    }
    same(&w1->lm_head, &w2->lm_head, "lm_head", 0);
    free_model(&m1);
    free_model(&m2);
    printf("%s against %s: every matmul weight\n%d passed, %d failed\n", argv[2], argv[1], n_pass, n_fail);
    return n_fail ? 1 : 0;
}
