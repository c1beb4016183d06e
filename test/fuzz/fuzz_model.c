// fuzz_model.c: libFuzzer harness for the checkpoint loader (build_model: header checks, tokenizer blob,
// tensor layout, packing) and, for every file it accepts, a short forward pass (build_state with a tiny
// context, prefill of three token ids, one decode_step).
//
// The input is laid over the first bytes of a real tiny model, $LLAVA_FUZZ_MODEL (default
// build/models/tiny_b_q8.bin: `python3 export.py test/models/tiny_b build/models/tiny_b_q8.bin --dtype q8
// --group-size 8`, 3.7 MB): file = input ++ base[len(input):], run with -max_len=4096. Why an overlay and
// not whole files: every interesting check is in the 1 KiB header and at the start of the tokenizer blob
// behind it (sizes, counts, enums, floats, token ids, the blob's first records), while a whole 3.7 MB file
// per input would make each run ~1000x slower and leave libFuzzer's mutators lost in weights that only feed
// arithmetic. The tensor data stays real, so a mutated header still meets a consistent file often enough
// to reach packing and the forward pass (the seed is the unmodified first 4 KiB: it loads and runs).
// File size is fixed (the base's): header fields that disagree with it are how truncation is reached.
// The file lives in /dev/shm (or $TMPDIR); only the overlaid bytes are rewritten per input.
#include "fuzz_common.h"
#include "../../llava.c"

#define FUZZ_MODEL_MAX 4096
static uint8_t* fuzz_base;
static size_t fuzz_base_size;
static int fuzz_fd = -1;

static void fuzz_pwrite(const uint8_t* p, size_t n) {
    if (pwrite(fuzz_fd, p, n, 0) != (ssize_t)n) { perror("pwrite"); abort(); }
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    (void)argc; (void)argv;
    const char* path = getenv("LLAVA_FUZZ_MODEL");
    if (!path || !*path) path = "build/models/tiny_b_q8.bin";
    FILE* f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) != 0) {
        fprintf(stderr, "fuzz_model: cannot read %s (export it: python3 export.py test/models/tiny_b "
                        "build/models/tiny_b_q8.bin --dtype q8 --group-size 8, or set LLAVA_FUZZ_MODEL)\n", path);
        abort();
    }
    fuzz_base_size = (size_t)ftell(f);
    fuzz_base = malloc(fuzz_base_size);
    rewind(f);
    if (fread(fuzz_base, 1, fuzz_base_size, f) != fuzz_base_size || fuzz_base_size < FUZZ_MODEL_MAX) abort();
    fclose(f);
    fuzz_make_tmp("model");
    fuzz_write_tmp(fuzz_base, fuzz_base_size);
    fuzz_fd = open(fuzz_tmp_path, O_WRONLY);
    if (fuzz_fd < 0) abort();
    return 0;
}

static Model fuzz_m;

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > FUZZ_MODEL_MAX) size = FUZZ_MODEL_MAX;
    fuzz_pwrite(data, size);
    int ok;
    FUZZ_TRY(ok, build_model(&fuzz_m, fuzz_tmp_path));
    fuzz_pwrite(fuzz_base, size);  // back to the base for the next input
    if (!ok) return 0;
    Model* m = &fuzz_m;
    Config* p = &m->config;
    // three prompt ids that are not media placeholders (merge_embeddings would want features for those)
    int ids[3] = {p->bos, 0, 0}, n = 1;
    for (int id = p->n_tokens - 1; id >= 0 && n < 3; id--)
        if (id != p->image_token && id != p->video_token) ids[n++] = id;
    float* e;
    FUZZ_MUST(build_state(m, 8, 2));
    FUZZ_MUST(e = merge_embeddings(m, ids, n, NULL, 0, NULL, 0));
    FUZZ_MUST(prefill(m, e, n, 0, NULL));
    int next = argmax(m->state.logits, p->vocab_size);
    if (next < 0 || next >= p->vocab_size) abort();
    FUZZ_MUST(decode_step(m, next, n));
    free(e);
    free_state(&m->state);
    free_model(m);
    return 0;
}
