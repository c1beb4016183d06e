/*
Tests for tokenizer.c against sentencepiece, llama.cpp's vectors and the Hugging Face tokenizer.

    gcc -O2 -Wall -Wextra -o test_tokenizer test/test_tokenizer.c && ./test_tokenizer [TOKENIZER.tok]

Run from the repository root (it reads test/data/ and test/goldens/). Without an argument the vocabulary is
read from test/data/tokenizer.model (a small protobuf reader below) plus the two added tokens <video> = 32000
and <image> = 32001, the same records export.py writes; with an argument, from that raw tokenizer blob
(`python3 export.py --tokenizer-only test/data/tokenizer.model OUT.tok`), which checks export.py too.

What is checked (exit status 1 on any failure, "N passed, N failed" at the end):
 1. sentencepiece vectors (the .jsonl files in test/data): encode_sentencepiece() gives sp.encode()'s ids, and
    decode_ids() of those ids gives sp.decode()'s text.
 2. llama.cpp's .inp/.out vectors (HF fast Llama-2 tokenizer, legacy, which is sentencepiece behaviour).
 3. Hugging Face goldens (test/goldens/tokenizer_hf*.jsonl, from test/make_tokenizer_goldens.py): encode()
    with BOS gives HF's ids and decode_ids() gives HF decode(skip_special_tokens=True), on hand-picked
    prompts (chat template, special tokens, edge cases), decode-only id lists, and every sentencepiece text.
    The streaming Detokenizer gives the same text, in chunks that are whole UTF-8 characters.
 4. Template prompts with their ids written out (doc/model.md#tokenizer, #placeholder-expansion):
    "USER: <video>\nHi", and the model card's question with 1 and with 1152 (8 frames x 144) <video> tokens;
    buffer limits; and speed (a 5,000-token prompt must take well under a second).
*/
#define TESTING
#include "../llava.c"

#include <time.h>

// ----------------------------------------------------------------------------
// Bookkeeping

static int n_pass = 0, n_fail = 0;

// Counts one check; prints the first few failures of each section with a description.
static int check(int ok, int* shown, const char* fmt, const char* what) {
    if (ok) { n_pass++; return 1; }
    n_fail++;
    if ((*shown)++ < 5) fprintf(stderr, fmt, what);
    return 0;
}

static char* read_file(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s (run the test from the repository root)\n", path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* buf = xmalloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) { fprintf(stderr, "%s: short read\n", path); exit(1); }
    fclose(f);
    buf[n] = '\0';
    if (size) *size = (size_t)n;
    return buf;
}

// ----------------------------------------------------------------------------
// tokenizer.model (protobuf) -> tokenizer blob, so the test needs no Python

static uint64_t pb_varint(const unsigned char** p, const unsigned char* end) {
    uint64_t v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) return v;
    }
    fprintf(stderr, "tokenizer.model: bad varint\n");
    exit(1);
}

// Skips a field of wire type wt; returns 0 on an unknown wire type.
static int pb_skip(const unsigned char** p, const unsigned char* end, int wt) {
    size_t n;
    if (wt == 0) { pb_varint(p, end); return 1; }
    if (wt == 1) n = 8; else if (wt == 5) n = 4; else if (wt == 2) n = (size_t)pb_varint(p, end); else return 0;
    if (n > (size_t)(end - *p)) return 0;
    *p += n;
    return 1;
}

static void blob_add(unsigned char** blob, size_t* size, float score, int32_t type, const char* piece, uint32_t len) {
    *blob = realloc(*blob, *size + 12 + len);
    if (!*blob) { fprintf(stderr, "out of memory\n"); exit(1); }
    memcpy(*blob + *size, &score, 4);
    memcpy(*blob + *size + 4, &type, 4);
    memcpy(*blob + *size + 8, &len, 4);
    memcpy(*blob + *size + 12, piece, len);
    *size += 12 + len;
}

// ModelProto field 1 = repeated SentencePiece {1: piece (string), 2: score (float), 3: type (enum, default 1)}.
static unsigned char* blob_from_sentencepiece_model(const char* path, size_t* blob_size) {
    size_t n;
    const unsigned char* data = (const unsigned char*)read_file(path, &n);
    const unsigned char *p = data, *end = data + n;
    unsigned char* blob = NULL;
    *blob_size = 0;
    while (p < end) {
        uint64_t key = pb_varint(&p, end);
        if ((key >> 3) != 1 || (key & 7) != 2) {
            if (!pb_skip(&p, end, (int)(key & 7))) { fprintf(stderr, "%s: bad protobuf\n", path); exit(1); }
            continue;
        }
        size_t len = (size_t)pb_varint(&p, end);
        if (len > (size_t)(end - p)) { fprintf(stderr, "%s: bad protobuf\n", path); exit(1); }
        const unsigned char *q = p, *qend = p + len;
        const char* piece = ""; uint32_t piece_len = 0; float score = 0; int32_t type = 1;
        while (q < qend) {
            uint64_t k = pb_varint(&q, qend);
            if (k == ((1 << 3) | 2)) { piece_len = (uint32_t)pb_varint(&q, qend); piece = (const char*)q; q += piece_len; }
            else if (k == ((2 << 3) | 5)) {  // fixed32: little-endian on the wire, whatever the host
                uint32_t u = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
                memcpy(&score, &u, 4);
                q += 4;
            }
            else if (k == ((3 << 3) | 0)) type = (int32_t)pb_varint(&q, qend);
            else if (!pb_skip(&q, qend, (int)(k & 7))) { fprintf(stderr, "%s: bad protobuf\n", path); exit(1); }
        }
        blob_add(&blob, blob_size, score, type, piece, piece_len);
        p += len;
    }
    // The two added tokens of LLaVA-NeXT-Video (added_tokens.json), as export.py appends them.
    blob_add(&blob, blob_size, 0.0f, PIECE_USER_DEFINED, "<video>", 7);
    blob_add(&blob, blob_size, 0.0f, PIECE_USER_DEFINED, "<image>", 7);
    free((void*)data);
    return blob;
}

// ----------------------------------------------------------------------------
// Tiny JSON field readers (enough for the case files: flat objects, known keys)

// Pointer to the value of "key" in a one-line JSON object, or NULL.
static const char* json_value(const char* line, const char* key) {
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char* p = strstr(line, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    return p;
}

// A hex string value -> bytes (malloc'd, NUL-terminated); -1 if the key is missing.
static long json_hex(const char* line, const char* key, char** out) {
    const char* p = json_value(line, key);
    if (!p || *p != '"') return -1;
    p++;
    const char* e = strchr(p, '"');
    size_t n = (size_t)(e - p) / 2;
    *out = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(p + 2 * i, "%2x", &v);
        (*out)[i] = (char)v;
    }
    (*out)[n] = '\0';
    return (long)n;
}

// An array of ints; returns the count, -1 if the key is missing.
static int json_ints(const char* line, const char* key, int* out, int max) {
    const char* p = json_value(line, key);
    if (!p || *p != '[') return -1;
    p++;
    int n = 0;
    while (*p && *p != ']') {
        char* e;
        long v = strtol(p, &e, 10);
        if (e == p) { p++; continue; }
        if (n < max) out[n] = (int)v;
        n++;
        p = e;
    }
    return n;
}

static void put_utf8(char* out, size_t* n, unsigned cp) {
    if (cp < 0x80) out[(*n)++] = (char)cp;
    else if (cp < 0x800) { out[(*n)++] = (char)(0xC0 | cp >> 6); out[(*n)++] = (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) { out[(*n)++] = (char)(0xE0 | cp >> 12); out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[(*n)++] = (char)(0x80 | (cp & 0x3F)); }
    else { out[(*n)++] = (char)(0xF0 | cp >> 18); out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F)); out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[(*n)++] = (char)(0x80 | (cp & 0x3F)); }
}

// A string value, JSON escapes undone (\uXXXX with surrogate pairs) -> UTF-8 (malloc'd); -1 if missing.
static long json_string(const char* line, const char* key, char** out) {
    const char* p = json_value(line, key);
    if (!p || *p != '"') return -1;
    p++;
    char* s = xmalloc(strlen(p) + 1);  // the UTF-8 is never longer than its escaped form
    size_t n = 0;
    while (*p && *p != '"') {
        if (*p != '\\') { s[n++] = *p++; continue; }
        p++;
        char c = *p++;
        if (c == 'n') s[n++] = '\n'; else if (c == 't') s[n++] = '\t'; else if (c == 'r') s[n++] = '\r';
        else if (c == 'b') s[n++] = '\b'; else if (c == 'f') s[n++] = '\f';
        else if (c == 'u') {
            unsigned cp, lo;
            sscanf(p, "%4x", &cp);
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p[0] == '\\' && p[1] == 'u') {
                sscanf(p + 2, "%4x", &lo);
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(s, &n, cp);
        } else s[n++] = c;  // \" \\ \/
    }
    s[n] = '\0';
    *out = s;
    return (long)n;
}

// ----------------------------------------------------------------------------
// Helpers for comparing

#define MAX_IDS 65536
static int got[MAX_IDS], want[MAX_IDS];

static int ids_equal(const int* a, int na, const int* b, int nb) {
    return na == nb && memcmp(a, b, (size_t)na * sizeof(int)) == 0;
}

static void print_ids(const char* label, const int* ids, int n) {
    fprintf(stderr, "    %s (%d):", label, n);
    for (int i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

static char* decode_alloc(const Tokenizer* t, const int* ids, int n, size_t* len) {
    size_t cap = (size_t)n * ((size_t)t->max_piece_len + 3) + 1;
    char* out = xmalloc(cap);
    *len = decode_ids(t, ids, n, out, cap);
    if (*len >= cap) { fprintf(stderr, "decode_ids needed %zu bytes, more than the documented bound %zu\n", *len, cap); exit(1); }
    return out;
}

// Streams ids through a Detokenizer; checks that every chunk is whole UTF-8 characters. Returns the text.
static char* stream_alloc(const Tokenizer* t, const int* ids, int n, size_t* len, int* chunks_ok) {
    Detokenizer d;
    build_detokenizer(&d, t);
    size_t cap = (size_t)n * ((size_t)t->max_piece_len + 16) + 16, m = 0;
    char* out = xmalloc(cap);
    *chunks_ok = 1;
    for (int i = 0; i <= n; i++) {
        const char* s = i < n ? detokenize(t, &d, ids[i]) : detokenize_flush(t, &d);
        const unsigned char* u = (const unsigned char*)s;
        for (size_t k = 0; k < d.n_text;) {
            int l = tok_utf8_len(u + k, d.n_text - k);
            if (l == 0) { *chunks_ok = 0; break; }
            k += (size_t)l;
        }
        memcpy(out + m, s, d.n_text);
        m += d.n_text;
    }
    free_detokenizer(&d);
    out[m] = '\0';
    *len = m;
    return out;
}

typedef struct { int n, ids_ok, dec_ok, stream_ok; } Tally;

static void report(const char* name, const Tally* c, int has_dec, int has_stream) {
    printf("%-40s %4d cases: ids %d/%d", name, c->n, c->ids_ok, c->n);
    if (has_dec) printf(", decode %d/%d", c->dec_ok, c->n);
    if (has_stream) printf(", stream %d/%d", c->stream_ok, c->n);
    printf("\n");
}

// ----------------------------------------------------------------------------
// 1. sentencepiece case files

static void test_sentencepiece_file(Tokenizer* t, const char* path) {
    char* data = read_file(path, NULL);
    Tally c = {0};
    int shown = 0;
    for (char* line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        char *text = NULL, *decoded = NULL, case_id[64] = "?";  // set by json_* (NULL keeps -O3 quiet)
        long len = json_hex(line, "text_utf8_hex", &text);
        if (len < 0) len = json_hex(line, "bytes_hex", &text);  // the invalid-UTF-8 file
        int nw = json_ints(line, "ids", want, MAX_IDS);
        long nd = json_string(line, "decoded", &decoded);
        const char* v = json_value(line, "case_id");
        if (v) sscanf(v, "\"%63[^\"]", case_id);
        if (len < 0 || nw < 0 || nd < 0) { fprintf(stderr, "%s: unreadable line\n", path); exit(1); }
        c.n++;

        int n = encode_sentencepiece(t, text, (size_t)len, got, MAX_IDS);
        if (check(ids_equal(got, n, want, nw), &shown, "  FAIL %s: sentencepiece ids differ\n", case_id)) c.ids_ok++;
        else if (shown <= 5) { print_ids("want", want, nw); print_ids("got ", got, n); }

        size_t dl;
        char* dec = decode_alloc(t, want, nw, &dl);
        if (check(dl == (size_t)nd && memcmp(dec, decoded, dl) == 0, &shown, "  FAIL %s: decoded text differs\n", case_id)) c.dec_ok++;
        free(dec); free(text); free(decoded);
    }
    free(data);
    report(path, &c, 1, 0);
}

// ----------------------------------------------------------------------------
// 2. llama.cpp .inp / .out

static void test_llamacpp(Tokenizer* t, const char* inp_path, const char* out_path) {
    char* inp = read_file(inp_path, NULL);
    char* out = read_file(out_path, NULL);
    const char* sep = "\n__ggml_vocab_test__\n";
    char* text = inp;
    char* line = out;
    Tally c = {0};
    int shown = 0;
    for (char* e; (e = strstr(text, sep)) != NULL; text = e + strlen(sep)) {
        char* eol = strchr(line, '\n');
        if (!eol) { fprintf(stderr, "%s: fewer lines than tests\n", out_path); exit(1); }
        *eol = '\0';
        int nw = 0;
        for (char* p = line; *p;) {
            char* q;
            long v = strtol(p, &q, 10);
            if (q == p) break;
            want[nw++] = (int)v;
            p = q;
        }
        line = eol + 1;
        c.n++;
        int n = encode_sentencepiece(t, text, (size_t)(e - text), got, MAX_IDS);
        char name[32];
        snprintf(name, sizeof(name), "#%d", c.n - 1);
        if (check(ids_equal(got, n, want, nw), &shown, "  FAIL llama.cpp vector %s\n", name)) c.ids_ok++;
    }
    free(inp); free(out);
    report(inp_path, &c, 0, 0);
}

// ----------------------------------------------------------------------------
// 3. Hugging Face goldens

// Byte runs that are not valid UTF-8 but start or end with a valid character: the one place where streaming
// output differs from HF (see the Detokenizer comment in tokenizer.c). Expected streaming text.
static const struct { const char* name; const char* text; } stream_exceptions[] = {
    { "bytes_valid_then_truncated", "\xE4\xBD\xA0\xEF\xBF\xBD" },  // "你" + U+FFFD; HF: 4 x U+FFFD
    { "bytes_truncated_then_valid", "\xEF\xBF\xBD\xE4\xBD\xA0" },  // U+FFFD + "你"; HF: 4 x U+FFFD
};

static void test_hf_file(Tokenizer* t, const char* path) {
    char* data = read_file(path, NULL);
    Tally c = {0};
    int shown = 0, first = 1;
    for (char* line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
        if (first) { first = 0; continue; }  // versions line
        char name[64] = "?", *text = NULL, *decoded;
        const char* v = json_value(line, "name");
        if (!v) v = json_value(line, "case_id");
        if (v) sscanf(v, "\"%63[^\"]", name);
        long len = json_hex(line, "text_utf8_hex", &text);
        int nw = json_ints(line, "ids", want, MAX_IDS);
        long nd = json_hex(line, "decoded_hex", &decoded);
        if (nw < 0 || nd < 0) { fprintf(stderr, "%s: unreadable line\n", path); exit(1); }
        c.n++;

        if (len >= 0) {  // an encode case (with BOS, as the model sees it)
            int n = encode(t, text, (size_t)len, 1, got, MAX_IDS);
            if (check(ids_equal(got, n, want, nw), &shown, "  FAIL %s: HF ids differ\n", name)) c.ids_ok++;
            else if (shown <= 5) { print_ids("want", want, nw); print_ids("got ", got, n); }
        } else c.ids_ok++;  // decode-only case

        size_t dl, sl;
        int chunks_ok;
        char* dec = decode_alloc(t, want, nw, &dl);
        if (check(dl == (size_t)nd && memcmp(dec, decoded, dl) == 0, &shown, "  FAIL %s: HF decode differs\n", name)) c.dec_ok++;
        else if (shown <= 5) fprintf(stderr, "    want \"%s\"\n    got  \"%s\"\n", decoded, dec);

        const char* stream_want = decoded;
        size_t stream_want_len = (size_t)nd;
        for (size_t k = 0; k < sizeof(stream_exceptions) / sizeof(stream_exceptions[0]); k++)
            if (strcmp(name, stream_exceptions[k].name) == 0) { stream_want = stream_exceptions[k].text; stream_want_len = strlen(stream_want); }
        char* str = stream_alloc(t, want, nw, &sl, &chunks_ok);
        if (check(chunks_ok && sl == stream_want_len && memcmp(str, stream_want, sl) == 0, &shown,
                  "  FAIL %s: streaming text differs or splits a character\n", name)) c.stream_ok++;
        free(dec); free(str); free(text); free(decoded);
    }
    free(data);
    report(path, &c, 1, 1);
}

// ----------------------------------------------------------------------------
// 4. Template prompts with known ids, limits, speed

static void test_template_prompts(Tokenizer* t) {
    int shown = 0;
    const char* a = "USER: <video>\nHi";
    int want_a[] = { 1, 3148, 1001, 29901, 29871, 32000, 13, 18567 };
    int n = encode(t, a, strlen(a), 1, got, MAX_IDS);
    check(ids_equal(got, n, want_a, 8), &shown, "  FAIL %s\n", "USER: <video>\\nHi");

    // The standard single-video prompt, before and after the processor expands <video> to 8 x 144 copies.
    const char* q = "\nWhy is this video funny? ASSISTANT:";
    int head[] = { 1, 3148, 1001, 29901, 29871 };
    int tail[] = { 13, 11008, 338, 445, 4863, 2090, 1460, 29973, 319, 1799, 9047, 13566, 29901 };
    for (int copies = 1; copies <= 1152; copies += 1151) {
        size_t cap = 16 + 7 * (size_t)copies + strlen(q) + 1, len = 0;
        char* prompt = xmalloc(cap);
        len += (size_t)sprintf(prompt, "USER: ");
        for (int i = 0; i < copies; i++) len += (size_t)sprintf(prompt + len, "<video>");
        len += (size_t)sprintf(prompt + len, "%s", q);
        n = encode(t, prompt, len, 1, got, MAX_IDS);
        int ok = n == 5 + copies + 13 && memcmp(got, head, sizeof(head)) == 0 &&
                 memcmp(got + 5 + copies, tail, sizeof(tail)) == 0;
        for (int i = 0; i < copies && ok; i++) ok = got[5 + i] == 32000;
        char what[64];
        snprintf(what, sizeof(what), "template prompt with %d <video> (%d ids)", copies, n);
        check(ok, &shown, "  FAIL %s\n", what);
        if (copies == 1152) {  // exactly enough room is fine
            int exact = encode(t, prompt, len, 1, got, 1170);
            check(exact == 1170, &shown, "  FAIL %s\n", "encode with max_ids == the id count");
        }
        free(prompt);
    }

    // decode_ids with a small buffer: cut, NUL-terminated, returns the full length.
    int ids[] = { 1, 15043, 3186 };  // <s> ▁Hello ▁world
    char small[6];
    size_t need = decode_ids(t, ids, 3, small, sizeof(small));
    check(need == 11 && strcmp(small, "Hello") == 0, &shown, "  FAIL %s\n", "decode_ids truncation");
    check(strcmp(token_piece(t, 15043), "▁Hello") == 0 && strcmp(token_piece(t, 32063), "") == 0, &shown,
          "  FAIL %s\n", "token_piece");
    printf("%-40s %4d checks, %d failed\n", "template prompts and limits", 7, shown);
}

static double now_s(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);  // C11; wall clock is fine for a coarse bound
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_speed(Tokenizer* t) {
    int shown = 0;
    // A realistic prompt: the vim tutor texts of the case file, joined, cut to about 5,000 tokens.
    char* data = read_file("test/data/tokenizer_cases.jsonl", NULL);
    size_t cap = 1 << 20, len = 0;
    char* prompt = xmalloc(cap);
    for (char* line = strtok(data, "\n"); line && len < 40000; line = strtok(NULL, "\n")) {
        char* text;
        long n = json_hex(line, "text_utf8_hex", &text);
        if (n > 0 && len + (size_t)n < cap) { memcpy(prompt + len, text, (size_t)n); len += (size_t)n; }
        free(text);
    }
    free(data);
    int n = encode(t, prompt, len, 1, got, MAX_IDS);
    while (n > 5000) { len -= len / 50; n = encode(t, prompt, len, 1, got, MAX_IDS); }
    double t0 = now_s();
    int reps = 20;
    for (int r = 0; r < reps; r++) n = encode(t, prompt, len, 1, got, MAX_IDS);
    double dt = (now_s() - t0) / reps;
    printf("%-40s %d ids from %zu bytes in %.2f ms\n", "speed: mixed-script prompt", n, len, 1e3 * dt);
    check(dt < 1.0, &shown, "  FAIL %s\n", "a 5,000-token prompt takes over a second");

    // Worst cases for the merge loop: 100,000 spaces (whitespace pieces merge last), and one long word.
    for (int k = 0; k < 2; k++) {
        size_t m = 100000;
        memset(prompt, k == 0 ? ' ' : 'a', m);
        t0 = now_s();
        n = encode(t, prompt, m, 1, got, MAX_IDS);
        dt = now_s() - t0;
        printf("%-40s %d ids from %zu bytes in %.2f ms\n", k == 0 ? "speed: 100,000 spaces" : "speed: 100,000 x 'a'", n, m, 1e3 * dt);
        check(dt < 1.0, &shown, "  FAIL %s\n", "a 100,000-byte piece takes over a second");
    }
    free(prompt);
}

// ----------------------------------------------------------------------------

// 300,000 special pieces of mixed lengths (a hostile header may declare millions): the tokenizer sorts
// them longest first in well under a second (an insertion sort took 9 s for 160,000), keeping id
// order among equal lengths, and still matches the longest one in a text.
static void test_many_specials(void) {
    int shown = 0, n = 300000;
    size_t cap = (size_t)n * 24, off = 0;
    unsigned char* blob = xmalloc(cap);
    for (int id = 0; id < n; id++) {
        char piece[16];
        int len = snprintf(piece, sizeof(piece), "<s%d>", id % 1000 == 7 ? id : id % 97);  // many equal pieces
        float score = 0.0f;
        int32_t type = 3;  // control: a special piece
        uint32_t ulen = (uint32_t)len;
        memcpy(blob + off, &score, 4); memcpy(blob + off + 4, &type, 4); memcpy(blob + off + 8, &ulen, 4);
        memcpy(blob + off + 12, piece, (size_t)len);
        off += 12 + (size_t)len;
    }
    Tokenizer t;
    double t0 = now_s();
    build_tokenizer(&t, blob, off, -1, "many specials");
    double dt = now_s() - t0;
    printf("%-40s %d special pieces sorted in %.3f s\n", "hostile: many special pieces", t.n_specials, dt);
    check(dt < 1.0, &shown, "  FAIL %s\n", "sorting 300,000 special pieces takes over a second");
    int sorted = 1;
    for (int i = 1; i < t.n_specials; i++) {
        int a = t.specials[i - 1], b = t.specials[i];
        if (t.vocab_len[a] < t.vocab_len[b] || (t.vocab_len[a] == t.vocab_len[b] && a > b)) sorted = 0;
    }
    check(sorted, &shown, "  FAIL %s\n", "special pieces not sorted longest first, then by id");
    int ids[8];
    int m = encode(&t, "<s1007>", 7, -1, ids, 8);  // "<s1007>" (id 1007) beats "<s10>" (id 10) and others
    check(m == 1 && ids[0] == 1007, &shown, "  FAIL %s\n", "the longest special piece does not win");
    free_tokenizer(&t);
    free(blob);
}

int main(int argc, char** argv) {
    size_t blob_size;
    unsigned char* blob;
    const char* source;
    if (argc > 1) { blob = (unsigned char*)read_file(argv[1], &blob_size); source = argv[1]; }
    else { blob = blob_from_sentencepiece_model("test/data/tokenizer.model", &blob_size); source = "test/data/tokenizer.model"; }
    Tokenizer t;
    build_tokenizer(&t, blob, blob_size, -1, source);
    free(blob);  // build_tokenizer keeps copies
    printf("vocabulary: %d tokens from %s\n", t.n_tokens, source);
    if (t.n_tokens != 32002) { fprintf(stderr, "expected 32002 tokens (32000 + <video> + <image>)\n"); return 1; }

    test_sentencepiece_file(&t, "test/data/tokenizer_cases.jsonl");
    test_sentencepiece_file(&t, "test/data/tokenizer_cases_invalid_utf8.jsonl");
    test_sentencepiece_file(&t, "test/data/ggml-vocab-llama-spm.cases.jsonl");
    test_llamacpp(&t, "test/data/ggml-vocab-llama-spm.gguf.inp", "test/data/ggml-vocab-llama-spm.gguf.out");
    test_hf_file(&t, "test/goldens/tokenizer_hf.jsonl");
    test_hf_file(&t, "test/goldens/tokenizer_hf_sp_texts.jsonl");
    test_template_prompts(&t);
    test_speed(&t);
    test_many_specials();

    free_tokenizer(&t);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail == 0 ? 0 : 1;
}
