/*
tokenizer.c: the Llama-2 SentencePiece BPE tokenizer of LLaVA-NeXT-Video-7B, done the way the Hugging Face
tokenizer of that model does it (transformers LlamaTokenizer(Fast), legacy=False, add_prefix_space=True).

It is #included into llava.c (unity build): no main, libc and base.c only (fatal, xmalloc), so it compiles
on its own (`make test` checks that). The vocabulary comes from the tokenizer blob that
export.py writes after the model header (or alone into a .tok file): for each token id 0..n_tokens-1,
f32 score, i32 type, u32 len, then len bytes of the piece ("▁Hello", "<0x0A>", "<s>", "<video>").
Piece types are sentencepiece's: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.

Encoding (doc/model.md, "Tokenizer"), what HF does:
  1. Split the input on the special tokens, i.e. every piece of type 2, 3 or 4 (<unk>, <s>, </s>, <video>,
     <image>): exact byte match, leftmost then longest, spaces around them kept. Each becomes its id.
  2. In every text piece in between, ' ' becomes '▁' (U+2581). Only the piece that starts at offset 0 of
     the input gets a '▁' put in front, and only if it does not already start with '▁' or ' ' (Metaspace
     pre-tokenizer, prepend_scheme "first"). So "<video>\nHi" gives <0x0A> Hi, not ▁ <0x0A> Hi.
  3. BPE each piece: start from its characters, repeatedly merge the adjacent pair whose concatenation is
     the vocabulary piece with the highest score (leftmost pair on ties), until no pair is in the vocabulary.
     Characters that are not in the vocabulary fall back to their UTF-8 bytes as <0xNN> tokens.
  4. Put BOS in front.
Bytes that are not valid UTF-8 each become U+FFFD first, as sentencepiece's normalizer does (HF cannot
see them: Python strings are always valid).

Decoding (HF decode(ids, skip_special_tokens=True)): drop special ids (types 2, 3, 4, and ids outside the
vocabulary such as the padded embedding rows 32002..32063), '▁' -> ' ' in normal pieces, runs of byte tokens
are joined into UTF-8 text (a run that is not valid UTF-8 becomes one U+FFFD per byte, as HF's ByteFallback
decoder does), then exactly one leading space of the whole text is removed (Strip(left=1)).

Not here: sampling (BPE dropout), unigram models, normalizers other than identity (this model has none),
user-defined pieces inside the sentencepiece vocabulary (this vocabulary has none; they would be matched as
special tokens here).

Deliberate differences from plain sentencepiece (encode_sentencepiece below does what sentencepiece does,
for the tests): sentencepiece always puts '▁' in front (" Hello" -> ▁ ▁Hello; HF: ▁Hello) and treats "<s>" in
the text as plain text ([529, 29879, 29958]; HF: 1). BPE merge order is sentencepiece's (by piece score), which
is also the order of the merges in the hub's tokenizer.json; transformers 5.x, when it builds the tokenizer
from tokenizer.model alone, ranks merges by piece id instead and splits runs of spaces differently.
*/

#include "base.c"  // fatal, xmalloc: the only project file this one needs

// ----------------------------------------------------------------------------
// Tokenizer: the vocabulary and its lookup tables

// sentencepiece piece types (sentencepiece_model.proto)
enum { PIECE_NORMAL = 1, PIECE_UNKNOWN = 2, PIECE_CONTROL = 3, PIECE_USER_DEFINED = 4,
       PIECE_UNUSED = 5, PIECE_BYTE = 6 };

typedef struct {
    int n_tokens;           // ids 0..n_tokens-1 (the model's vocab_size may be larger: padded rows)
    char** vocab;           // (n_tokens) piece bytes, NUL-terminated copies ("▁Hello", "<0x0A>")
    int* vocab_len;         // (n_tokens) byte length of each piece (a piece may contain a NUL byte)
    float* scores;          // (n_tokens) BPE priority: the pair whose merge has the higher score goes first
    int* types;             // (n_tokens) PIECE_* type
    short* byte_value;      // (n_tokens) 0..255 for byte pieces "<0xNN>", -1 for every other piece
    int byte_id[256];       // id of the piece "<0xNN>" for each byte value (byte fallback), -1 if none
    int unk_id;             // id of the unknown piece, used if a byte piece is missing (never, for Llama)
    int* hash;              // (hash_mask + 1) open-addressing table piece -> id of the normal pieces, -1 empty
    size_t hash_mask;       // table size - 1 (a power of two, at least twice n_tokens)
    int* specials;          // (n_specials) ids of types 2, 3, 4, longest piece first: matched in the input
    int n_specials;
    unsigned char special_first[256];  // 1 if some special piece starts with this byte (fast skip)
    int max_piece_len;      // longest piece in bytes (sizes the streaming buffer)
    char* arena;            // storage behind vocab[]
} Tokenizer;

// FNV-1a: simple, good enough for ~32k short keys in a half-empty table.
static uint32_t tok_hash(const char* s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 16777619u; }
    return h;
}

// Id of the normal piece with exactly these bytes, or -1.
static int tok_lookup(const Tokenizer* t, const char* s, size_t n) {
    for (size_t i = tok_hash(s, n) & t->hash_mask;; i = (i + 1) & t->hash_mask) {
        int id = t->hash[i];
        if (id < 0) return -1;
        if ((size_t)t->vocab_len[id] == n && memcmp(t->vocab[id], s, n) == 0) return id;
    }
}

// 0..255 if the piece is exactly "<0xNN>" (two hex digits, either case, as HF's ByteFallback reads it), else -1.
static int tok_parse_byte_piece(const char* p, int len) {
    if (len != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static int tok_is_special_type(int type) {
    return type == PIECE_UNKNOWN || type == PIECE_CONTROL || type == PIECE_USER_DEFINED;
}

// Parses the blob (see the top of the file). n_tokens >= 0: exactly that many records, and anything after
// them must be zero padding. n_tokens < 0: as many records as the blob holds (a .tok file).
// path_for_errors names the file in error messages.
typedef struct { int len, id; } TokSpecial;
static int tok_cmp_special(const void* a, const void* b) {  // longer first, then lower id
    const TokSpecial *x = a, *y = b;
    return x->len != y->len ? (x->len > y->len ? -1 : 1) : (x->id > y->id) - (x->id < y->id);
}

void build_tokenizer(Tokenizer* t, const unsigned char* blob, size_t blob_size, int n_tokens,
                     const char* path_for_errors) {
    const char* path = path_for_errors ? path_for_errors : "tokenizer";
    memset(t, 0, sizeof(*t));
    // First pass: count the records and check that every one fits in the blob.
    size_t off = 0, text_bytes = 0;
    int n = 0;
    while (n_tokens < 0 || n < n_tokens) {
        if (n_tokens < 0) {  // stop at the end, or where only zero padding is left
            size_t k = off;
            while (k < blob_size && blob[k] == 0) k++;
            if (k == blob_size) break;
        }
        if (blob_size - off < 12) {
            fatal("%s: tokenizer data ends inside token %d (offset %zu of %zu bytes)", path, n, off, blob_size);
        }
        uint32_t len;
        memcpy(&len, blob + off + 8, 4);
        if (len == 0 || len > 65536 || len > blob_size - off - 12) {  // sentencepiece pieces are short
            fatal("%s: token %d has a bad length %u (offset %zu of %zu bytes)", path, n, len, off, blob_size);
        }
        off += 12 + (size_t)len;
        text_bytes += (size_t)len + 1;
        n++;
        if (n == 0x7fffffff) fatal("%s: too many tokens", path);
    }
    for (size_t k = off; k < blob_size; k++) {
        if (blob[k] != 0) {
            fatal("%s: %zu unexpected bytes after the %d tokens of the tokenizer data", path, blob_size - off, n);
        }
    }
    if (n == 0) fatal("%s: the tokenizer data holds no tokens", path);

    t->n_tokens = n;
    t->vocab = xmalloc((size_t)n * sizeof(char*));
    t->vocab_len = xmalloc((size_t)n * sizeof(int));
    t->scores = xmalloc((size_t)n * sizeof(float));
    t->types = xmalloc((size_t)n * sizeof(int));
    t->byte_value = xmalloc((size_t)n * sizeof(short));
    t->arena = xmalloc(text_bytes);
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    t->unk_id = 0;
    size_t hash_size = 64;
    while (hash_size < 2 * (size_t)n) hash_size *= 2;
    t->hash_mask = hash_size - 1;
    t->hash = xmalloc(hash_size * sizeof(int));
    for (size_t i = 0; i < hash_size; i++) t->hash[i] = -1;

    // Second pass: copy the pieces (the blob may be mmapped and unaligned: memcpy every field).
    off = 0;
    char* dst = t->arena;
    int n_unk = 0;
    for (int id = 0; id < n; id++) {
        float score; int32_t type; uint32_t len;
        memcpy(&score, blob + off, 4);
        memcpy(&type, blob + off + 4, 4);
        memcpy(&len, blob + off + 8, 4);
        if (type < PIECE_NORMAL || type > PIECE_BYTE) {
            fatal("%s: token %d has unknown piece type %d (expected 1..6)", path, id, (int)type);
        }
        memcpy(dst, blob + off + 12, len);
        dst[len] = '\0';
        t->vocab[id] = dst;
        t->vocab_len[id] = (int)len;
        t->scores[id] = score;
        t->types[id] = type;
        dst += len + 1;
        off += 12 + (size_t)len;
        if ((int)len > t->max_piece_len) t->max_piece_len = (int)len;

        int bv = type == PIECE_BYTE ? tok_parse_byte_piece(t->vocab[id], (int)len) : -1;
        t->byte_value[id] = (short)bv;
        if (bv >= 0 && t->byte_id[bv] < 0) t->byte_id[bv] = id;
        if (type == PIECE_UNKNOWN && n_unk++ == 0) t->unk_id = id;
        if (type == PIECE_NORMAL) {  // only normal pieces take part in BPE (sentencepiece does the same)
            size_t i = tok_hash(t->vocab[id], len) & t->hash_mask;
            while (t->hash[i] >= 0 && !(t->vocab_len[t->hash[i]] == (int)len && memcmp(t->vocab[t->hash[i]], t->vocab[id], len) == 0))
                i = (i + 1) & t->hash_mask;
            if (t->hash[i] < 0) t->hash[i] = id;  // a duplicate piece keeps its first id
        }
        if (tok_is_special_type(type)) t->n_specials++;
    }

    t->specials = xmalloc((size_t)(t->n_specials ? t->n_specials : 1) * sizeof(int));
    int k = 0;
    for (int id = 0; id < n; id++) {
        if (!tok_is_special_type(t->types[id])) continue;
        t->specials[k++] = id;
        t->special_first[(unsigned char)t->vocab[id][0]] = 1;
    }
    // Longest first, so the first special piece that matches at a position is the longest one there
    // (HF matches added tokens leftmost-longest); equal lengths keep id order. qsort, not an insertion
    // sort: a hostile file may declare millions of special pieces.
    TokSpecial* order = xmalloc((size_t)(t->n_specials ? t->n_specials : 1) * sizeof(TokSpecial));
    for (int i = 0; i < t->n_specials; i++) order[i] = (TokSpecial){t->vocab_len[t->specials[i]], t->specials[i]};
    qsort(order, (size_t)t->n_specials, sizeof(TokSpecial), tok_cmp_special);
    for (int i = 0; i < t->n_specials; i++) t->specials[i] = order[i].id;
    free(order);
}

void free_tokenizer(Tokenizer* t) {
    free(t->vocab); free(t->vocab_len); free(t->scores); free(t->types); free(t->byte_value);
    free(t->hash); free(t->specials); free(t->arena);
    memset(t, 0, sizeof(*t));
}

// The piece of a token as stored ("▁Hello", "<0x0A>", "<s>"), "" for ids outside the vocabulary.
const char* token_piece(const Tokenizer* t, int id) {
    return id >= 0 && id < t->n_tokens ? t->vocab[id] : "";
}

// ----------------------------------------------------------------------------
// UTF-8

// Byte length of the valid UTF-8 character at s[0..n), or 0 if the bytes there are not one. "Valid" is the
// strict definition that sentencepiece's DecodeUTF8 and Rust's String::from_utf8 (HF) share: no overlong
// forms, no surrogates U+D800..U+DFFF, nothing above U+10FFFF, no missing continuation bytes.
// lo/hi: the allowed range of the second byte, which carries those rules; later bytes are 0x80..0xBF.
static int tok_utf8_expect(unsigned c, unsigned* lo, unsigned* hi) {
    *lo = 0x80; *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) { if (c == 0xE0) *lo = 0xA0; if (c == 0xED) *hi = 0x9F; return 3; }
    if (c >= 0xF0 && c <= 0xF4) { if (c == 0xF0) *lo = 0x90; if (c == 0xF4) *hi = 0x8F; return 4; }
    return 0;  // 0x80..0xC1 (continuation byte, overlong lead) or 0xF5..0xFF
}

static int tok_utf8_len(const unsigned char* s, size_t n) {
    unsigned lo, hi;
    int len = tok_utf8_expect(s[0], &lo, &hi);
    if (len <= 1 || (size_t)len > n) return len == 1 ? 1 : 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++) if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

static const char TOK_SPACE[] = "\xE2\x96\x81";  // U+2581 '▁', sentencepiece's visible space
static const char TOK_FFFD[] = "\xEF\xBF\xBD";   // U+FFFD replacement character

// ----------------------------------------------------------------------------
// Encoding: BPE of one text piece

typedef struct { int* ids; int n, max; } TokOut;  // where encode writes ids

static void tok_emit(TokOut* o, int id) {
    if (o->n >= o->max) {
        fatal("encode: the text needs more than %d tokens (the size of the id buffer)", o->max);
    }
    o->ids[o->n++] = id;
}

typedef struct { float score; int left, right, size; } TokPair;  // a candidate merge of two symbols

// Heap order: higher score first; on equal scores the leftmost pair, as sentencepiece's agenda does.
static int tok_pair_before(const TokPair* a, const TokPair* b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void tok_heap_push(TokPair* heap, int* n, TokPair p) {
    int i = (*n)++;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!tok_pair_before(&p, &heap[parent])) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = p;
}

static TokPair tok_heap_pop(TokPair* heap, int* n) {
    TokPair top = heap[0], last = heap[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && tok_pair_before(&heap[c + 1], &heap[c])) c++;
        if (!tok_pair_before(&heap[c], &last)) break;
        heap[i] = heap[c];
        i = c;
    }
    if (*n > 0) heap[i] = last;
    return top;
}

// The symbols of one piece: a doubly linked list over the normalized text. Merging a pair grows the left
// symbol and empties the right one (len 0), so stale heap entries are recognised by their sizes.
typedef struct {
    const char* text;   // normalized piece: valid UTF-8, '▁' for spaces
    int* start;         // (n) byte offset of each symbol in text
    int* len;           // (n) byte length, 0 once merged into its left neighbour
    int* prev; int* next;
    TokPair* heap; int n_heap;
} TokSymbols;

static void tok_try_pair(const Tokenizer* t, TokSymbols* s, int left, int right) {
    if (left < 0 || right < 0) return;
    int size = s->len[left] + s->len[right];
    int id = tok_lookup(t, s->text + s->start[left], (size_t)size);
    if (id < 0) return;
    TokPair p = { t->scores[id], left, right, size };
    tok_heap_push(s->heap, &s->n_heap, p);
}

// Normalizes text[0..len) (spaces -> '▁', invalid UTF-8 bytes -> U+FFFD each, '▁' in front if add_prefix),
// runs BPE on it and appends the ids to out.
static void tok_encode_piece(const Tokenizer* t, const char* text, size_t len, int add_prefix, TokOut* out) {
    if (len == 0) return;  // nothing, not even the prefix (sentencepiece: "" -> [])
    if (len > (size_t)0x7fffffff / 4) fatal("encode: text piece of %zu bytes is too long", len);
    // Every input byte becomes at most 3 bytes and at most one symbol; the prefix adds 3 bytes and 1 symbol.
    size_t n_max = len + 1;
    char* buf = xmalloc(3 * n_max);
    int* ints = xmalloc(4 * n_max * sizeof(int));
    TokSymbols s = { buf, ints, ints + n_max, ints + 2 * n_max, ints + 3 * n_max,
                     xmalloc(3 * n_max * sizeof(TokPair)), 0 };  // each merge pushes at most 2 pairs

    int nb = 0, n = 0;
    if (add_prefix) { memcpy(buf, TOK_SPACE, 3); s.start[n] = 0; s.len[n++] = 3; nb = 3; }
    const unsigned char* u = (const unsigned char*)text;
    for (size_t i = 0; i < len;) {
        int l = tok_utf8_len(u + i, len - i);
        s.start[n] = nb;
        if (u[i] == ' ') { memcpy(buf + nb, TOK_SPACE, 3); nb += 3; i += 1; }
        else if (l == 0) { memcpy(buf + nb, TOK_FFFD, 3); nb += 3; i += 1; }  // one U+FFFD per bad byte
        else { memcpy(buf + nb, u + i, (size_t)l); nb += l; i += (size_t)l; }
        s.len[n] = nb - s.start[n];
        n++;
    }
    for (int i = 0; i < n; i++) { s.prev[i] = i - 1; s.next[i] = i + 1 < n ? i + 1 : -1; }

    // BPE: take the best pair, merge it, offer the new symbol's pairs with its neighbours.
    for (int i = 0; i + 1 < n; i++) tok_try_pair(t, &s, i, i + 1);
    while (s.n_heap > 0) {
        TokPair p = tok_heap_pop(s.heap, &s.n_heap);
        if (s.len[p.left] == 0 || s.len[p.right] == 0 || s.len[p.left] + s.len[p.right] != p.size) continue;
        s.len[p.left] += s.len[p.right];
        s.len[p.right] = 0;
        s.next[p.left] = s.next[p.right];
        if (s.next[p.right] >= 0) s.prev[s.next[p.right]] = p.left;
        tok_try_pair(t, &s, s.prev[p.left], p.left);
        tok_try_pair(t, &s, p.left, s.next[p.left]);
    }

    // Symbols left are vocabulary pieces or single characters; a character not in the vocabulary is
    // spelled as its UTF-8 bytes with the <0xNN> pieces (byte fallback).
    for (int i = 0; i >= 0; i = s.next[i]) {
        int id = tok_lookup(t, buf + s.start[i], (size_t)s.len[i]);
        if (id >= 0) { tok_emit(out, id); continue; }
        for (int k = 0; k < s.len[i]; k++) {
            int b = t->byte_id[(unsigned char)buf[s.start[i] + k]];
            tok_emit(out, b >= 0 ? b : t->unk_id);
        }
    }
    free(buf); free(ints); free(s.heap);
}

// ----------------------------------------------------------------------------
// Encoding: the whole text

// Id of the special piece that starts at text[i], the longest if several do, or -1.
static int tok_match_special(const Tokenizer* t, const char* text, size_t len, size_t i) {
    if (!t->special_first[(unsigned char)text[i]]) return -1;
    for (int k = 0; k < t->n_specials; k++) {
        int id = t->specials[k];
        size_t l = (size_t)t->vocab_len[id];
        if (l <= len - i && memcmp(text + i, t->vocab[id], l) == 0) return id;
    }
    return -1;
}

static int tok_starts_with_space(const char* s, size_t len) {
    return (len >= 1 && s[0] == ' ') || (len >= 3 && memcmp(s, TOK_SPACE, 3) == 0);
}

// Text -> ids like the HF tokenizer of this model (see the top of the file). bos >= 0 is put in front.
// Returns the number of ids written to out_ids; exits with an error if that would be more than max_ids.
int encode(Tokenizer* t, const char* text, size_t len, int bos, int* out_ids, int max_ids) {
    TokOut out = { out_ids, 0, max_ids };
    if (bos >= 0) tok_emit(&out, bos);
    size_t start = 0;  // where the current text piece began
    for (size_t i = 0; i < len;) {
        int id = tok_match_special(t, text, len, i);
        if (id < 0) { i++; continue; }
        // The text before the special token; only the piece at offset 0 may get the '▁' prefix.
        tok_encode_piece(t, text + start, i - start, start == 0 && !tok_starts_with_space(text, i), &out);
        tok_emit(&out, id);
        i += (size_t)t->vocab_len[id];
        start = i;
    }
    tok_encode_piece(t, text + start, len - start, start == 0 && !tok_starts_with_space(text, len), &out);
    return out.n;
}

// Text -> ids like plain sentencepiece (sp.encode(text)): no special-token matching ("<s>" is text), '▁'
// always put in front. Not used for inference; the tests check the BPE against sentencepiece with it.
int encode_sentencepiece(Tokenizer* t, const char* text, size_t len, int* out_ids, int max_ids) {
    TokOut out = { out_ids, 0, max_ids };
    tok_encode_piece(t, text, len, 1, &out);
    return out.n;
}

// ----------------------------------------------------------------------------
// Decoding

// Output with HF's Strip(left=1): the first byte of the whole text is dropped if it is a space.
// Bytes beyond cap-1 are counted but not stored (snprintf style), so the caller can see the size needed.
typedef struct { char* buf; size_t cap, n; int strip; } TokWriter;

static void tok_write(TokWriter* w, const char* s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (w->strip) { w->strip = 0; if (s[i] == ' ') continue; }
        if (w->n + 1 < w->cap) w->buf[w->n] = s[i];
        w->n++;
    }
}

// A normal piece: '▁' -> ' ' (HF decoders.Replace), everything else as is.
static void tok_write_piece(TokWriter* w, const char* p, int len) {
    for (int i = 0; i < len;) {
        if (i + 3 <= len && memcmp(p + i, TOK_SPACE, 3) == 0) { tok_write(w, " ", 1); i += 3; }
        else { tok_write(w, p + i, 1); i++; }
    }
}

// A finished run of byte tokens (HF decoders.ByteFallback): the bytes if the whole run is valid UTF-8,
// otherwise one U+FFFD per byte, even for the bytes that would have formed valid characters.
static void tok_write_byte_run(TokWriter* w, const unsigned char* run, size_t n) {
    int valid = 1;
    for (size_t i = 0; i < n && valid;) {
        int l = tok_utf8_len(run + i, n - i);
        if (l == 0) valid = 0; else i += (size_t)l;
    }
    if (valid) tok_write(w, (const char*)run, n);
    else for (size_t i = 0; i < n; i++) tok_write(w, TOK_FFFD, 3);
}

static int tok_is_dropped(const Tokenizer* t, int id) {
    return id < 0 || id >= t->n_tokens || tok_is_special_type(t->types[id]);
}

// Ids -> text like HF decode(ids, skip_special_tokens=True). Writes at most cap-1 bytes plus a NUL to out
// and returns the length of the whole text: if that is >= cap, the text was cut (a cap of
// n * (max_piece_len + 3) + 1 always suffices). The text may contain NUL bytes (from <0x00>).
size_t decode_ids(const Tokenizer* t, const int* ids, int n, char* out, size_t cap) {
    TokWriter w = { out, cap, 0, 1 };
    unsigned char* run = xmalloc((size_t)(n > 0 ? n : 1));  // the current run of byte tokens
    size_t n_run = 0;
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        if (tok_is_dropped(t, id)) continue;  // skipped before HF's decoders run: a run continues across it
        if (t->byte_value[id] >= 0) { run[n_run++] = (unsigned char)t->byte_value[id]; continue; }
        if (n_run > 0) { tok_write_byte_run(&w, run, n_run); n_run = 0; }
        tok_write_piece(&w, t->vocab[id], t->vocab_len[id]);
    }
    if (n_run > 0) tok_write_byte_run(&w, run, n_run);
    free(run);
    if (cap > 0) out[w.n < cap ? w.n : cap - 1] = '\0';
    return w.n;
}

// ----------------------------------------------------------------------------
// Streaming decoding (printing tokens as they are generated)

// Gives the text of each new token as soon as it can be printed: a UTF-8 character spelled with byte tokens
// is held back until its last byte arrives, so a terminal never gets half a character. Same text as
// decode_ids on the same ids, except for byte runs that are not valid UTF-8: HF turns the whole run into
// U+FFFD, but characters already printed cannot be taken back, so here only the bytes that do not form a
// character become U+FFFD (one each). Call decode_ids on all the ids when the exact HF text is needed.
typedef struct {
    unsigned char pending[4];  // bytes of a character still waiting for its continuation bytes
    int n_pending, need;       // how many are held, how many the character has
    unsigned lo, hi;           // allowed range of its second byte
    int at_start;              // nothing printed yet: strip one leading space (HF Strip(left=1))
    char* text;                // (max_piece_len + 32) what the latest call returns, NUL-terminated
    size_t n_text;             // its length (it may contain a NUL from <0x00>)
} Detokenizer;

void build_detokenizer(Detokenizer* d, const Tokenizer* t) {
    memset(d, 0, sizeof(*d));
    d->at_start = 1;
    d->text = xmalloc((size_t)t->max_piece_len + 32);
}

void free_detokenizer(Detokenizer* d) { free(d->text); d->text = NULL; }

// Writes the held bytes as one U+FFFD each (they will never form a character).
static void tok_flush_pending(Detokenizer* d, TokWriter* w) {
    for (int i = 0; i < d->n_pending; i++) tok_write(w, TOK_FFFD, 3);
    d->n_pending = 0;
}

static void tok_stream_byte(Detokenizer* d, TokWriter* w, unsigned char b) {
    if (d->n_pending > 0) {
        int ok = d->n_pending == 1 ? (b >= d->lo && b <= d->hi) : (b & 0xC0) == 0x80;
        if (ok) {
            d->pending[d->n_pending++] = b;
            if (d->n_pending == d->need) { tok_write(w, (const char*)d->pending, (size_t)d->need); d->n_pending = 0; }
            return;
        }
        tok_flush_pending(d, w);  // broken sequence; b may still start a new one
    }
    int need = tok_utf8_expect(b, &d->lo, &d->hi);
    if (need == 1) tok_write(w, (const char*)&b, 1);
    else if (need == 0) tok_write(w, TOK_FFFD, 3);
    else { d->pending[0] = b; d->n_pending = 1; d->need = need; }
}

static const char* tok_stream_finish(Detokenizer* d, TokWriter* w) {
    d->at_start = w->strip;
    d->n_text = w->n;
    d->text[w->n] = '\0';
    return d->text;
}

// The text that token adds to the output (often "", never NULL). The pointer is valid until the next call.
const char* detokenize(const Tokenizer* t, Detokenizer* d, int token) {
    TokWriter w = { d->text, (size_t)t->max_piece_len + 32, 0, d->at_start };
    if (tok_is_dropped(t, token)) return tok_stream_finish(d, &w);
    if (t->byte_value[token] >= 0) tok_stream_byte(d, &w, (unsigned char)t->byte_value[token]);
    else { tok_flush_pending(d, &w); tok_write_piece(&w, t->vocab[token], t->vocab_len[token]); }
    return tok_stream_finish(d, &w);
}

// At the end of generation: the held bytes of an unfinished character, as U+FFFD each.
const char* detokenize_flush(const Tokenizer* t, Detokenizer* d) {
    TokWriter w = { d->text, (size_t)t->max_piece_len + 32, 0, d->at_start };
    tok_flush_pending(d, &w);
    return tok_stream_finish(d, &w);
}
