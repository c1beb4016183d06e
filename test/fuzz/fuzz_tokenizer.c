// fuzz_tokenizer.c: libFuzzer harness for tokenizer.c: build_tokenizer on a fuzzed vocabulary blob, then
// encode, encode_sentencepiece, decode_ids and the streaming Detokenizer (detokenize, detokenize_flush) on
// fuzzed text and fuzzed ids; or the same text work on the real 32000-piece vocabulary.
//
// Input: byte 0 flags, then
//   flags & 1, and the real vocabulary is available: everything after byte 0 is the text.
//     The real vocabulary is the tokenizer blob of $LLAVA_FUZZ_MODEL (default build/models/tiny_b_q8.bin,
//     which `make fuzz` and `make test` export first); without it these inputs use the blob path below.
//   otherwise: bytes 1-2 blob length L (little-endian), then L bytes of blob, then the text.
//     flags & 2: n_tokens = flags >> 2 (exactly that many records, zero padding after), else -1 (all).
// The text is also read as little-endian int16 ids (negative and out-of-range ones included) for
// decode_ids and the streaming decoder.
// Invariants checked (abort = a finding): encode never runs out of a 4 * len + 16 id buffer, every id it
// writes is a valid one, decode_ids fits in n * (max_piece_len + 3) + 1 and reports the same length with a
// small buffer, and where neither text holds a U+FFFD the streamed text equals decode_ids' text.
#include "fuzz_common.h"
#include "../../llava.c"

static Tokenizer fuzz_real;
static int fuzz_have_real;

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    (void)argc; (void)argv;
    const char* path = getenv("LLAVA_FUZZ_MODEL");
    if (!path || !*path) path = "build/models/tiny_b_q8.bin";
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "fuzz_tokenizer: %s not found: the real-vocabulary mode is off\n", path); return 0; }
    Config c;
    if (fread(&c, sizeof(c), 1, f) == 1 && c.tokenizer_bytes > 0 && fseek(f, HEADER_SIZE, SEEK_SET) == 0) {
        unsigned char* blob = malloc((size_t)c.tokenizer_bytes);
        if (blob && fread(blob, 1, (size_t)c.tokenizer_bytes, f) == (size_t)c.tokenizer_bytes) {
            build_tokenizer(&fuzz_real, blob, (size_t)c.tokenizer_bytes, c.n_tokens, path);
            fuzz_have_real = 1;
        }
        free(blob);
    }
    fclose(f);
    return 0;
}

static int has_fffd(const char* s, size_t n) { return memmem(s, n, "\xEF\xBF\xBD", 3) != NULL; }

// decode_ids and the streaming decoder on the same ids, cross-checked.
static void fuzz_decode(Tokenizer* t, const int* ids, int n) {
    size_t cap = (size_t)n * ((size_t)t->max_piece_len + 3) + 1;
    char* out = malloc(cap);
    size_t len;
    FUZZ_MUST(len = decode_ids(t, ids, n, out, cap));
    if (len >= cap) { fprintf(stderr, "decode_ids: %zu bytes, more than the documented %zu\n", len, cap - 1); abort(); }
    char small[5];
    size_t len2;
    FUZZ_MUST(len2 = decode_ids(t, ids, n, small, (size_t)n % 6));
    if (len2 != len || (n % 6 && memcmp(small, out, len < (size_t)n % 6 - 1 ? len : (size_t)n % 6 - 1) != 0)) {
        fprintf(stderr, "decode_ids: cut output differs (%zu vs %zu)\n", len2, len);
        abort();
    }
    Detokenizer d;
    FUZZ_MUST(build_detokenizer(&d, t));
    char* stream = malloc(cap * 3 + 16);  // each id adds at most its piece or 4 held bytes as U+FFFD
    size_t ns = 0;
    for (int i = 0; i < n; i++) {
        const char* s;
        FUZZ_MUST(s = detokenize(t, &d, ids[i]));
        if (s != d.text || d.n_text > (size_t)t->max_piece_len + 31) abort();
        memcpy(stream + ns, s, d.n_text);
        ns += d.n_text;
    }
    FUZZ_MUST(detokenize_flush(t, &d));
    memcpy(stream + ns, d.text, d.n_text);
    ns += d.n_text;
    if (!has_fffd(out, len) && !has_fffd(stream, ns) && (ns != len || memcmp(stream, out, len) != 0)) {
        fprintf(stderr, "streamed text (%zu bytes) differs from decode_ids (%zu bytes)\n", ns, len);
        abort();
    }
    free_detokenizer(&d);
    free(stream);
    free(out);
}

static void fuzz_text(Tokenizer* t, const uint8_t* text, size_t len) {
    int max = (int)(4 * len + 16), n;
    int* ids = malloc((size_t)max * sizeof(int));
    int bos = len ? text[0] % 3 == 0 ? -1 : (int)(text[0] % (unsigned)t->n_tokens) : 1 % t->n_tokens;
    FUZZ_MUST(n = encode(t, (const char*)text, len, bos, ids, max));
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_tokens) { fprintf(stderr, "encode wrote id %d\n", ids[i]); abort(); }
    fuzz_decode(t, ids, n);
    FUZZ_MUST(n = encode_sentencepiece(t, (const char*)text, len, ids, max));
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_tokens) { fprintf(stderr, "encode_sentencepiece wrote id %d\n", ids[i]); abort(); }
    // the text as raw ids
    int nr = (int)(len / 2);
    for (int i = 0; i < nr; i++) ids[i] = (int16_t)(text[2 * i] | text[2 * i + 1] << 8);
    fuzz_decode(t, ids, nr);
    for (int i = 0; i < nr; i++) { const char* p; FUZZ_MUST(p = token_piece(t, ids[i])); (void)p; }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    int flags = data[0];
    if ((flags & 1) && fuzz_have_real) {
        fuzz_text(&fuzz_real, data + 1, size - 1);
        return 0;
    }
    if (size < 3) return 0;
    size_t L = (size_t)data[1] | (size_t)data[2] << 8;
    if (L > size - 3) L = size - 3;
    const uint8_t* blob = data + 3;
    const uint8_t* text = blob + L;
    size_t tlen = size - 3 - L;
    int n_tokens = (flags & 2) ? flags >> 2 : -1;
    static Tokenizer t;
    int ok;
    FUZZ_TRY(ok, build_tokenizer(&t, blob, L, n_tokens, "fuzz"));
    if (!ok) return 0;
    fuzz_text(&t, text, tlen);
    free_tokenizer(&t);
    return 0;
}
