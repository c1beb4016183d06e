// test/test_video.c: tests of video.c (Y4M/raw reading, YUV->RGB, frame
// sampling, resize/crop/normalize, PPM/PGM images, anyres patches and token
// counts). Exits 1 on any failure; last line "N passed, N failed".
//
// Build and run from the repository root (the fixtures are found relative to it):
//   gcc -O3 -march=native -Wall -Wextra -o /tmp/test_video test/test_video.c -lm && /tmp/test_video
//   gcc -O0 -g -fsanitize=address,undefined -Wall -Wextra -o /tmp/test_video_asan test/test_video.c -lm && /tmp/test_video_asan
// Expected values: the resize/normalize vectors of doc/preprocessing.md#test-vectors
// (torch's uint8 antialiased bicubic, cross-checked by test/check_resize_torch.py), ffmpeg 5.1.9 RGB24
// (test/data/*.rgb24, see test/data/README.md), numpy
// (test/data/sample_indices_numpy.txt from test/gen_sample_table.py), Pillow and
// transformers' LlavaNextImageProcessor (test/goldens/image_tables.txt from
// test/make_goldens.py).
// POSIX only (fork/pipe for the stdin and error-exit tests).

#define TESTING
#include "../llava.c"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// Tiny harness

static int n_pass = 0, n_fail = 0;

static void check(int ok, const char* fmt, ...) {
    if (ok) { n_pass++; return; }
    n_fail++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static uint32_t fnv1a(const uint8_t* p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 16777619u; }
    return h;
}

static uint64_t sum_u8(const uint8_t* p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    return s;
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static uint8_t* read_all(const char* path, size_t* n) {
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s (run from the repository root)\n", path); exit(1); }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t* b = malloc((size_t)sz + 1);
    if (fread(b, 1, (size_t)sz, f) != (size_t)sz) { fprintf(stderr, "short read %s\n", path); exit(1); }
    fclose(f);
    *n = (size_t)sz;
    return b;
}

static void write_all(const char* path, const void* p, size_t n) {
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) { fprintf(stderr, "cannot write %s\n", path); exit(1); }
    fclose(f);
}

// The LCG test image (doc/preprocessing.md#test-vectors): s = s*1103515245 + 12345 mod 2^32, sample
// (s >> 16) & 255, generated in HWC order, returned as (C, H, W) planes.
static uint8_t* lcg_image(int w, int h, int c, uint32_t seed) {
    uint8_t* img = malloc((size_t)w * h * c);
    uint32_t s = seed;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++) {
                s = s * 1103515245u + 12345u;
                img[(size_t)k * w * h + (size_t)y * w + x] = (uint8_t)((s >> 16) & 255);
            }
    return img;
}

static uint8_t* gradient_image(int w, int h) {
    uint8_t* img = malloc((size_t)w * h * 3);
    size_t n = (size_t)w * h;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            size_t i = (size_t)y * w + x;
            img[i] = (uint8_t)(x * 255 / (w - 1));
            img[n + i] = (uint8_t)(y * 255 / (h - 1));
            img[2 * n + i] = (uint8_t)(((x + y) * 3) & 255);
        }
    return img;
}

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

// ----------------------------------------------------------------------------
// Normalization constants and table: float32 mean*255 and std*255, then (u8 - M) / S
// (doc/preprocessing.md#crop-and-normalize)

static void test_normalize(void) {
    const uint32_t M[3] = {0x42f58ab9, 0x42e97df6, 0x42d02ffe};
    const uint32_t S[3] = {0x42890046, 0x428543ab, 0x428ca575};
    for (int c = 0; c < 3; c++) {
        check(f32_bits(CLIP_MEAN[c] * 255.0f) == M[c], "mean*255 channel %d: 0x%08x", c, f32_bits(CLIP_MEAN[c] * 255.0f));
        check(f32_bits(CLIP_STD[c] * 255.0f) == S[c], "std*255 channel %d: 0x%08x", c, f32_bits(CLIP_STD[c] * 255.0f));
    }
    float t[3][256];
    normalize_table(t, CLIP_MEAN, CLIP_STD);
    struct { int c, u; uint32_t bits; } want[] = {
        {0, 0, 0xbfe568dc}, {0, 1, 0xbfe38a80}, {0, 128, 0x3d9c560e}, {0, 255, 0x3ff71542},
        {1, 0, 0xbfe044b7}, {1, 128, 0x3e2cf360}, {1, 255, 0x4004cae4},
        {2, 0, 0xbfbd77d8}, {2, 128, 0x3eae0dc1}, {2, 255, 0x40095661},
        // the levels met in test_end_to_end's 1280x720 LCG crop (u8 -> float)
        {0, 199, 0x3f8e7107}, {1, 106, 0xbe2524f1}, {2, 106, 0x3cde0ff5},
        {0, 148, 0x3ebc9269}, {1, 184, 0x3f8131cb}, {2, 115, 0x3e1ecf57},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        check(f32_bits(t[want[i].c][want[i].u]) == want[i].bits, "normalize c%d u%d: 0x%08x want 0x%08x",
              want[i].c, want[i].u, f32_bits(t[want[i].c][want[i].u]), want[i].bits);
}

// ----------------------------------------------------------------------------
// Per-axis tables of the resize: first tap, tap count and int16 weights of some outputs, and the
// fixed-point precision (doc/preprocessing.md#resize)

typedef struct { int out, lo, n; int w[11]; } AxisRow;

static void check_axis(int in, int out, int prec, int ksize, const AxisRow* rows, int nrows) {
    ResizeAxis ax;
    resize_axis_build(&ax, in, out, 0, out);
    check(ax.prec == prec, "axis %d->%d: prec %d want %d", in, out, ax.prec, prec);
    if (ksize) check(ax.ksize == ksize, "axis %d->%d: ksize %d want %d", in, out, ax.ksize, ksize);
    for (int r = 0; r < nrows; r++) {
        const AxisRow* e = &rows[r];
        int i = e->out, ok = ax.lo[i] == e->lo && ax.n[i] == e->n;
        for (int j = 0; j < e->n; j++) ok &= ax.w[(size_t)i * ax.ksize + j] == e->w[j];
        check(ok, "axis %d->%d out %d: lo %d n %d w0 %d", in, out, i, ax.lo[i], ax.n[i], ax.w[(size_t)i * ax.ksize]);
    }
    // a window build stores the same rows as the full build
    ResizeAxis win;
    int first = out / 3, count = out / 3 + 1;
    resize_axis_build(&win, in, out, first, count);
    int same = win.prec == ax.prec;
    for (int k = 0; k < count; k++) {
        same &= win.lo[k] == ax.lo[first + k] && win.n[k] == ax.n[first + k];
        same &= memcmp(win.w + (size_t)k * win.ksize, ax.w + (size_t)(first + k) * ax.ksize, (size_t)ax.ksize * 2) == 0;
    }
    check(same, "axis %d->%d: window build differs from full build", in, out);
    resize_axis_free(&win);
    resize_axis_free(&ax);
}

static void test_axes(void) {
    AxisRow a[] = {
        {0, 0, 2, {17338, -954}}, {1, 0, 3, {7216, 10257, -1089}}, {2, 0, 4, {-1194, 13614, 4442, -478}},
        {223, 158, 4, {-860, 15620, 1767, -143}}, {446, 317, 3, {-1089, 10257, 7216}}, {447, 318, 2, {-954, 17338}},
    };
    check_axis(320, 448, 14, 5, a, 6);
    AxisRow b[] = {
        {0, 0, 5, {27884, 29909, 10956, -1634, -1580}}, {1, 0, 8, {-2164, 5057, 23452, 28965, 12846, -860, -1760, 0}},
        {2, 1, 9, {-488, -2265, 2991, 21239, 30269, 15865, 30, -2037, -68}},
        {298, 636, 8, {-1305, -1764, 8860, 26977, 26977, 8860, -1764, -1305}},
        {595, 1272, 8, {0, -1760, -860, 12846, 28965, 23452, 5057, -2164}}, {596, 1275, 5, {-1580, -1634, 10956, 29909, 27884}},
    };
    check_axis(1280, 597, 16, 11, b, 6);
    AxisRow c[] = {
        {0, 0, 5, {27904, 29915, 10934, -1643, -1574}}, {1, 0, 8, {-2165, 5074, 23489, 28965, 12805, -877, -1754, 0}},
        {167, 355, 8, {-1467, -1531, 10189, 27877, 26002, 7553, -1956, -1132}}, {335, 715, 5, {-1574, -1643, 10934, 29915, 27904}},
    };
    check_axis(720, 336, 16, 11, c, 4);
    AxisRow d[] = {{0, 0, 2, {16572, -188}}, {1, 0, 3, {742, 16146, -503}}, {671, 638, 2, {-188, 16572}}};
    check_axis(640, 672, 14, 0, d, 3);
    AxisRow e[] = {{0, 0, 2, {16572, -188}}, {1, 0, 3, {742, 16146, -503}}, {503, 478, 2, {-188, 16572}}};
    check_axis(480, 504, 14, 0, e, 3);
    AxisRow f[] = {{0, 0, 5, {16183, 15261, 2838, -1363, -150}}, {1, 0, 7, {-1175, 4652, 15688, 13151, 1747, -1237, -59}},
                   {335, 635, 5, {-150, -1363, 2838, 15261, 16183}}};
    check_axis(640, 336, 15, 9, f, 3);
    AxisRow g[] = {{0, 0, 4, {22684, 11794, -1681, -28}}, {1, 0, 5, {-1239, 14412, 19824, 682, -910}}};
    ResizeAxis ax; // only xmin is given for out 335
    resize_axis_build(&ax, 480, 336, 0, 336);
    check(ax.lo[335] == 476, "axis 480->336 out 335 lo %d", ax.lo[335]);
    resize_axis_free(&ax);
    check_axis(480, 336, 15, 7, g, 2);
}

// ----------------------------------------------------------------------------
// A 6x8 one-plane example (LCG seed 7): each pass, the weights, a downscale and an upscale

static void test_small_example(void) {
    uint8_t* src = lcg_image(8, 6, 1, 7);
    const uint8_t want_src[48] = {108, 78, 116, 146, 19, 37, 34, 46, 49, 161, 205, 19, 190, 18, 237, 66,
                                  105, 102, 206, 36, 252, 35, 215, 218, 141, 32, 151, 97, 106, 6, 149, 110,
                                  194, 138, 212, 3, 19, 104, 40, 212, 87, 30, 60, 93, 238, 110, 94, 192};
    check(memcmp(src, want_src, 48) == 0, "6x8 LCG input (seed 7)");
    uint8_t h[30], o[20], up[99];
    resize_plane_u8(src, 8, 6, h, 5, 6); // horizontal pass only
    const uint8_t want_h[30] = {94, 115, 84, 27, 42, 95, 164, 98, 112, 137, 103, 146, 142, 121, 219,
                                95, 109, 101, 58, 129, 174, 161, 13, 70, 144, 63, 48, 169, 127, 150};
    check(memcmp(h, want_h, 30) == 0, "6x8 -> 6x5 horizontal pass");
    resize_plane_u8(src, 8, 6, o, 5, 4);
    const uint8_t want_o[20] = {94, 133, 87, 56, 71, 97, 150, 130, 118, 191, 126, 132, 69, 63, 141, 105, 89, 111, 107, 148};
    check(memcmp(o, want_o, 20) == 0, "6x8 -> 4x5");
    resize_plane_u8(src, 8, 6, up, 11, 9);
    const uint8_t first[11] = {114, 86, 78, 113, 157, 82, 4, 37, 25, 30, 46};
    const uint8_t last[11] = {83, 45, 25, 51, 80, 188, 237, 115, 90, 136, 195};
    check(memcmp(up, first, 11) == 0 && memcmp(up + 88, last, 11) == 0, "6x8 -> 9x11 first/last rows");
    // the weights of both axes
    ResizeAxis ax, ay;
    resize_axis_build(&ax, 8, 5, 0, 5);
    resize_axis_build(&ay, 6, 4, 0, 4);
    const int16_t x0[4] = {20034, 14060, -597, -729}, x1[6] = {-1241, 9540, 19856, 6129, -1480, -37};
    const int16_t x2[6] = {-1121, 806, 16699, 16699, 806, -1121};
    const int16_t y0[4] = {21474, 12885, -1326, -265}, y1[5] = {-1255, 12194, 20323, 2860, -1355};
    check(ax.prec == 15 && ay.prec == 15, "6x8 -> 4x5 precisions %d %d", ax.prec, ay.prec);
    check(memcmp(ax.w, x0, 8) == 0 && memcmp(ax.w + ax.ksize, x1, 12) == 0 && ax.lo[2] == 1 &&
          memcmp(ax.w + 2 * ax.ksize, x2, 12) == 0, "6x8: horizontal weights");
    check(memcmp(ay.w, y0, 8) == 0 && memcmp(ay.w + ay.ksize, y1, 10) == 0, "6x8: vertical weights");
    resize_axis_free(&ax);
    resize_axis_free(&ay);
    free(src);
}

// ----------------------------------------------------------------------------
// End-to-end hashes (video frames and the image path) of the LCG and gradient images
// (doc/preprocessing.md#test-vectors)

static void test_end_to_end(void) {
    struct { int w, h, grad; int rw, rh; uint32_t rhash; uint64_t rsum; uint32_t chash; uint64_t csum; } c[] = {
        {1280, 720, 0, 597, 336, 0x49840dae, 76768151, 0xade178d3, 43207868},
        {1284, 720, 0, 599, 336, 0xc875347f, 77025392, 0x443290a3, 0},
        {640, 480, 0, 448, 336, 0x2056db68, 57606947, 0x208a0fd2, 43191735},
        {1280, 720, 1, 597, 336, 0x9e28e9b4, 76525895, 0xb111769e, 43056937},
        {640, 480, 1, 448, 336, 0xe86ff5ab, 57461630, 0xf2aee679, 43096356},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        uint8_t* img = c[i].grad ? gradient_image(c[i].w, c[i].h) : lcg_image(c[i].w, c[i].h, 3, 1);
        if (i == 0) {
            // the input itself: CHW hash 0x75cb24be
            check(fnv1a(img, (size_t)3 * c[i].w * c[i].h) == 0x75cb24be, "1280x720 lcg input hash");
        }
        int nw, nh;
        shortest_edge_size(c[i].w, c[i].h, 336, &nw, &nh);
        check(nw == c[i].rw && nh == c[i].rh, "%dx%d: resized size %dx%d", c[i].w, c[i].h, nw, nh);
        size_t rn = (size_t)3 * nw * nh;
        uint8_t* r = malloc(rn);
        resize_rgb_u8(img, c[i].w, c[i].h, r, nw, nh);
        check(fnv1a(r, rn) == c[i].rhash && sum_u8(r, rn) == c[i].rsum, "%dx%d %s resized: hash 0x%08x sum %llu",
              c[i].w, c[i].h, c[i].grad ? "gradient" : "lcg", fnv1a(r, rn), (unsigned long long)sum_u8(r, rn));
        uint8_t* crop = malloc((size_t)3 * 336 * 336);
        resize_crop_rgb_u8(img, c[i].w, c[i].h, 336, crop);
        size_t cn = (size_t)3 * 336 * 336;
        check(fnv1a(crop, cn) == c[i].chash && (c[i].csum == 0 || sum_u8(crop, cn) == c[i].csum),
              "%dx%d %s crop: hash 0x%08x sum %llu", c[i].w, c[i].h, c[i].grad ? "gradient" : "lcg",
              fnv1a(crop, cn), (unsigned long long)sum_u8(crop, cn));
        // crop == the slice of the full resize (floor offsets)
        int x0 = (nw - 336) / 2, y0 = (nh - 336) / 2, same = 1;
        for (int ch = 0; ch < 3; ch++)
            for (int y = 0; y < 336; y++)
                same &= memcmp(crop + ((size_t)ch * 336 + y) * 336, r + ((size_t)ch * nh + y0 + y) * nw + x0, 336) == 0;
        check(same, "%dx%d: windowed crop equals slice of full resize", c[i].w, c[i].h);
        if (i == 0) {
            // some normalized values of the 1280x720 lcg crop
            float t[3][256];
            normalize_table(t, CLIP_MEAN, CLIP_STD);
            struct { int c, y, x; int u8; uint32_t bits; } s[] = {
                {0, 0, 0, 199, 0x3f8e7107}, {1, 0, 0, 106, 0xbe2524f1}, {2, 0, 0, 106, 0x3cde0ff5},
                {0, 0, 335, 148, 0x3ebc9269}, {1, 167, 168, 184, 0x3f8131cb}, {2, 335, 335, 115, 0x3e1ecf57}};
            for (int k = 0; k < 6; k++) {
                uint8_t u = crop[((size_t)s[k].c * 336 + s[k].y) * 336 + s[k].x];
                check(u == s[k].u8 && f32_bits(t[s[k].c][u]) == s[k].bits, "normalized [%d,%d,%d]: u8 %d", s[k].c, s[k].y, s[k].x, u);
            }
        }
        free(crop);
        free(r);
        free(img);
    }
    // anyres image path (resize_rgb_u8 reused; zero padding done here): doc/preprocessing.md#anyres-tiles
    struct { int w, h, grad, rw, rh, tw, th; uint32_t rhash, phash, bhash; } im[] = {
        {640, 480, 0, 672, 504, 672, 672, 0x703bb606, 0x9c909806, 0xef87c44a},
        {300, 400, 0, 336, 449, 336, 672, 0xdf6d2dc0, 0x8a01fc00, 0x746e0e34},
        {640, 480, 1, 672, 504, 672, 672, 0xee3295b8, 0x474bf7b8, 0x206ec3a4},
        {300, 400, 1, 336, 449, 336, 672, 0xc91d4b1e, 0x7e8735de, 0xfd939e8c},
    };
    for (int i = 0; i < 4; i++) {
        uint8_t* img = im[i].grad ? gradient_image(im[i].w, im[i].h) : lcg_image(im[i].w, im[i].h, 3, 1);
        size_t rn = (size_t)3 * im[i].rw * im[i].rh, pn = (size_t)3 * im[i].tw * im[i].th;
        uint8_t* r = malloc(rn);
        uint8_t* p = calloc(pn, 1);
        uint8_t* b = malloc((size_t)3 * 336 * 336);
        resize_rgb_u8(img, im[i].w, im[i].h, r, im[i].rw, im[i].rh);
        int left = (im[i].tw - im[i].rw) / 2, top = (im[i].th - im[i].rh) / 2;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < im[i].rh; y++)
                memcpy(p + ((size_t)c * im[i].th + top + y) * im[i].tw + left, r + ((size_t)c * im[i].rh + y) * im[i].rw, (size_t)im[i].rw);
        resize_rgb_u8(img, im[i].w, im[i].h, b, 336, 336); // the base is the whole original image
        check(fnv1a(r, rn) == im[i].rhash && fnv1a(p, pn) == im[i].phash && fnv1a(b, (size_t)3 * 336 * 336) == im[i].bhash,
              "image path %dx%d %s: resized 0x%08x padded 0x%08x base 0x%08x", im[i].w, im[i].h, im[i].grad ? "gradient" : "lcg",
              fnv1a(r, rn), fnv1a(p, pn), fnv1a(b, (size_t)3 * 336 * 336));
        free(img); free(r); free(p); free(b);
    }
}

// ----------------------------------------------------------------------------
// Y4M -> RGB against ffmpeg

// Decodes every frame of a Y4M file to interleaved RGB24 (like ffmpeg's rawvideo).
static uint8_t* decode_all_rgb24(const char* path, Y4mInfo* info, int* frames) {
    VideoSource s;
    video_open(&s, path, 0, 0);
    int* idx = malloc(sizeof(int) * 2);
    video_sample_seekable(&s, 1, idx); // confirms or scans the frame count
    free(idx);
    size_t n = (size_t)s.y.width * s.y.height;
    uint8_t* out = malloc((size_t)s.total * n * 3);
    uint8_t* buf = malloc(s.y.frame_bytes);
    uint8_t* rgb = malloc(3 * n);
    for (int f = 0; f < s.total; f++) {
        video_read_frame_at(&s, f, buf);
        yuv_to_rgb(&s.y, buf, rgb);
        uint8_t* o = out + (size_t)f * n * 3;
        for (size_t i = 0; i < n; i++) { o[3 * i] = rgb[i]; o[3 * i + 1] = rgb[n + i]; o[3 * i + 2] = rgb[2 * n + i]; }
    }
    *info = s.y;
    *frames = s.total;
    free(buf); free(rgb);
    video_close(&s);
    return out;
}

static void test_yuv_vs_ffmpeg(void) {
    struct { const char* y4m; const char* ref; int frames; } c[] = {
        {"test/data/city_320x240_420jpeg_4f.y4m", "test/data/city_320x240_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24", 4},
        {"test/data/city_333x187_420jpeg_4f.y4m", "test/data/city_333x187_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24", 4},
        {"test/data/city_320x240_444_2f.y4m", "test/data/city_320x240_444_2f.ffmpeg_accurate.rgb24", 2},
        {"test/data/city_320x240_422_2f.y4m", "test/data/city_320x240_422_2f.ffmpeg_neighbor_accurate.rgb24", 2},
        {"test/data/city_320x240_420mpeg2_It_2f.y4m", "test/data/city_320x240_420mpeg2_It_2f.ffmpeg_neighbor_accurate.rgb24", 2},
        {"test/data/city_352x288_420paldv_Ib_2f.y4m", "test/data/city_352x288_420paldv_Ib_2f.ffmpeg_neighbor_accurate.rgb24", 2},
        {"test/data/city_320x240_420p10_2f.y4m", "test/data/city_320x240_420p10_2f.ffmpeg_neighbor_accurate.rgb24", 2},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        Y4mInfo info;
        int frames;
        uint8_t* mine = decode_all_rgb24(c[i].y4m, &info, &frames);
        size_t rn;
        uint8_t* ref = read_all(c[i].ref, &rn);
        size_t n = (size_t)frames * info.width * info.height * 3;
        check(frames == c[i].frames && rn == n, "%s: %d frames, %zu ref bytes", c[i].y4m, frames, rn);
        if (rn != n) { free(mine); free(ref); continue; }
        size_t exact = 0;
        int maxd = 0;
        for (size_t k = 0; k < n; k++) {
            int d = abs((int)mine[k] - (int)ref[k]);
            exact += d == 0;
            if (d > maxd) maxd = d;
        }
        printf("  yuv->rgb %-45s %3dx%-3d %-8s vs ffmpeg: max diff %d, %.4f%% exact\n", c[i].y4m + 10, info.width, info.height,
               info.chroma, maxd, 100.0 * exact / n);
        // 333x187 needs swscale's chroma mapping for odd sizes; we implement it, so all are exact
        check(maxd == 0, "%s: max diff %d vs ffmpeg", c[i].y4m, maxd);
        free(mine); free(ref);
    }
}

// Y planes of the 4:2:0/4:4:4/4:2:2/mono slices are the same bytes (they come from one 4:4:4 master,
// test/data/README.md);
// mono decodes like YUV with neutral chroma (range conversion applied); the
// interlaced and high-bit-depth headers are read.
static void test_y_planes_and_mono(void) {
    const char* files[] = {"test/data/city_320x240_420jpeg_4f.y4m", "test/data/city_320x240_444_2f.y4m",
                           "test/data/city_320x240_422_2f.y4m", "test/data/city_320x240_mono_2f.y4m"};
    uint8_t* y0 = NULL;
    for (int i = 0; i < 4; i++) {
        VideoSource s;
        video_open(&s, files[i], 0, 0);
        check(s.total >= 2 && s.y.width == 320 && s.y.height == 240 && s.y.full_range == 0, "%s header/frame count", files[i]);
        uint8_t* buf = malloc(s.y.frame_bytes);
        uint8_t* ys = malloc((size_t)2 * 320 * 240);
        for (int f = 0; f < 2; f++) {
            video_read_frame_at(&s, f, buf);
            memcpy(ys + (size_t)f * 320 * 240, buf, (size_t)320 * 240);
        }
        if (!y0) y0 = ys;
        else { check(memcmp(y0, ys, (size_t)2 * 320 * 240) == 0, "%s: Y plane equals the 420jpeg one", files[i]); free(ys); }
        free(buf);
        video_close(&s);
    }
    // mono (limited) == 444 with the same Y and U = V = 128
    Y4mInfo mono;
    int frames;
    uint8_t* m = decode_all_rgb24("test/data/city_320x240_mono_2f.y4m", &mono, &frames);
    Y4mInfo yi = mono;
    yi.n_planes = 3; yi.sx = yi.sy = 0; yi.cw = 320; yi.ch = 240;
    size_t n = (size_t)320 * 240;
    uint8_t* frame = malloc(3 * n);
    uint8_t* rgb = malloc(3 * n);
    memcpy(frame, y0, n);
    memset(frame + n, 128, 2 * n);
    yuv_to_rgb(&yi, frame, rgb);
    int same = 1, gray = 1;
    for (size_t i = 0; i < n; i++) {
        same &= m[3 * i] == rgb[i] && m[3 * i + 1] == rgb[n + i] && m[3 * i + 2] == rgb[2 * n + i];
        gray &= m[3 * i] == m[3 * i + 1] && m[3 * i] == m[3 * i + 2];
    }
    check(same && gray, "mono LIMITED: R=G=B = limited-range conversion of Y");
    // the same file tagged FULL: R=G=B=Y (what ffmpeg gives too)
    size_t fn;
    uint8_t* file = read_all("test/data/city_320x240_mono_2f.y4m", &fn);
    char* hdr_end = memchr(file, '\n', fn);
    const char* full = "YUV4MPEG2 W320 H240 F25:1 Ip A1:1 Cmono XCOLORRANGE=FULL";
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_video_%d_monofull.y4m", (int)getpid());
    FILE* f = fopen(path, "wb");
    fwrite(full, 1, strlen(full), f);
    fwrite(hdr_end, 1, fn - (size_t)((uint8_t*)hdr_end - file), f);
    fclose(f);
    Y4mInfo fi;
    uint8_t* mf = decode_all_rgb24(path, &fi, &frames);
    int ident = fi.full_range == 1;
    for (size_t i = 0; i < n; i++) ident &= mf[3 * i] == y0[i] && mf[3 * i + 1] == y0[i] && mf[3 * i + 2] == y0[i];
    check(ident, "mono FULL: R=G=B=Y");
    remove(path);
    free(mf); free(file); free(m); free(frame); free(rgb); free(y0);
    // header fields of the interlaced / PAL / 10-bit clips
    VideoSource s;
    video_open(&s, "test/data/city_320x240_420mpeg2_It_2f.y4m", 0, 0);
    check(s.y.interlace == 't' && s.y.fps_n == 25 && s.y.fps_d == 2 && s.y.sx == 1 && s.y.sy == 1, "420mpeg2 It header");
    video_close(&s);
    video_open(&s, "test/data/city_352x288_420paldv_Ib_2f.y4m", 0, 0);
    check(s.y.interlace == 'b' && s.y.aspect_n == 12 && s.y.aspect_d == 11 && s.y.width == 352, "420paldv Ib header");
    video_close(&s);
    video_open(&s, "test/data/city_320x240_420p10_2f.y4m", 0, 0);
    check(s.y.depth == 10 && s.y.frame_bytes == (size_t)(320 * 240 + 2 * 160 * 120) * 2 && s.total == 2, "420p10 header");
    video_close(&s);
}

// ----------------------------------------------------------------------------
// Frame sampling vs numpy

static void test_sampling(void) {
    FILE* f = fopen("test/data/sample_indices_numpy.txt", "r");
    if (!f) { check(0, "cannot open test/data/sample_indices_numpy.txt"); return; }
    char line[4096];
    int rows = 0, ex = 0;
    int* idx = malloc(sizeof(int) * 70);
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#') continue;
        if (strncmp(line, "ex ", 3) == 0) {
            int total, n, off;
            if (sscanf(line + 3, "%d %d :%n", &total, &n, &off) != 2) { check(0, "bad ex row"); continue; }
            int want[70], nw = 0, v, o2;
            char* p = line + 3 + off;
            while (nw < 70 && sscanf(p, "%d%n", &v, &o2) == 1) { want[nw++] = v; p += o2; }
            int cnt = sample_frame_indices(total, n, idx);
            check(cnt == nw && memcmp(idx, want, sizeof(int) * nw) == 0, "numpy example total %d N %d (count %d want %d)", total, n, cnt, nw);
            ex++;
            continue;
        }
        int n, plus1;
        unsigned hash;
        if (sscanf(line, "%d %d %x", &n, &plus1, &hash) != 3) continue;
        uint32_t h = 2166136261u;
        int p1 = 0;
        for (int total = 1; total <= 2000; total++) {
            int cnt = sample_frame_indices(total, n, idx);
            p1 += cnt == n + 1;
            // the hash is over numpy's int32 little-endian bytes, on every host
            for (int i = -1; i < cnt; i++) {
                uint32_t v = (uint32_t)(i < 0 ? cnt : idx[i]);
                for (int k = 0; k < 4; k++) { h ^= (v >> 8 * k) & 0xFF; h *= 16777619u; }
            }
        }
        check(h == hash && p1 == plus1, "sampling N=%d: hash 0x%08x (want 0x%08x), N+1 cases %d (want %d)", n, h, hash, p1, plus1);
        rows++;
    }
    fclose(f);
    check(rows == 64 && ex >= 5, "numpy table rows %d examples %d", rows, ex);
    // what read_video_pyav keeps
    int cnt = video_frame_list(17, 7, idx);
    check(cnt == 7 && idx[6] == 14, "frame list total 17 N 7: the index 17 == total is dropped (%d)", cnt);
    cnt = video_frame_list(61, 7, idx);
    check(cnt == 8 && idx[7] == 60, "frame list total 61 N 7: 8 frames, last 60 (%d)", cnt);
    cnt = video_frame_list(3, 8, idx);
    check(cnt == 3 && idx[0] == 0 && idx[1] == 1 && idx[2] == 2, "frame list total 3 N 8: 0 1 2 (%d)", cnt);
    cnt = video_frame_list(300, 8, idx);
    check(cnt == 8 && idx[1] == 37 && idx[7] == 262, "frame list total 300 N 8");
    free(idx);
}

// ----------------------------------------------------------------------------
// Error exits: run load_video in a child, expect exit 1 and one stderr line naming the file

// Runs load(path, arg) in a child and expects exit status 1 and exactly one stderr line, starting with
// "llava: error: ", naming the file and containing `want` (if given).
static void expect_child_error(const char* what, const char* path, const char* want,
                               void (*load)(const char* path, void* arg), void* arg) {
    char errpath[64];
    snprintf(errpath, sizeof(errpath), "/tmp/test_video_%d.err", (int)getpid());
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(errpath, "w", stderr)) _exit(99);
        load(path, arg);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    size_t n;
    uint8_t* err = read_all(errpath, &n);
    err[n] = 0;
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += err[i] == '\n';
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 1 && lines == 1 && strstr((char*)err, path) &&
             strstr((char*)err, "llava: error: ") == (char*)err && (!want || strstr((char*)err, want));
    check(ok, "%s: status %d, stderr '%s'", what, WIFEXITED(status) ? WEXITSTATUS(status) : -1, (char*)err);
    free(err);
    remove(errpath);
}

static void load_video_child(const char* path, void* arg) {
    const int* raw = arg;  // raw_w, raw_h
    Video v;
    load_video(&v, path, raw[0], raw[1], 8, 32, CLIP_MEAN, CLIP_STD);
}

static void expect_error(const char* what, const char* path, int raw_w, int raw_h, const char* want_substr) {
    int raw[2] = {raw_w, raw_h};
    expect_child_error(what, path, want_substr, load_video_child, raw);
}

static void test_errors(void) {
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_video_%d_bad.y4m", (int)getpid());
    // small frame: 4x2 420 = 8 + 2*2*1 = 12 bytes
    const uint8_t px[12] = {0};
    struct { const char* name; const char* header; int frames_ok; size_t extra; const char* want; } c[] = {
        {"bad magic", "YUV4MPEG3 W4 H2\n", 1, 0, "magic"},
        {"missing W", "YUV4MPEG2 H2 C420jpeg\n", 1, 0, "W"},
        {"missing H", "YUV4MPEG2 W4 C420jpeg\n", 1, 0, "H"},
        {"zero width", "YUV4MPEG2 W0 H2\n", 1, 0, "out of range"},
        {"negative width", "YUV4MPEG2 W-4 H2\n", 1, 0, "width"},
        {"absurd width", "YUV4MPEG2 W16385 H2\n", 1, 0, "out of range"},
        {"huge height", "YUV4MPEG2 W4 H99999999999\n", 1, 0, "height"},
        {"junk width", "YUV4MPEG2 W4x H2\n", 1, 0, "width"},
        {"unknown chroma", "YUV4MPEG2 W4 H2 C420foo\n", 1, 0, "chroma"},
        {"bad interlace", "YUV4MPEG2 W4 H2 Ix\n", 1, 0, "interlace"},
        {"bad frame rate", "YUV4MPEG2 W4 H2 F25\n", 1, 0, "frame rate"},
        {"no frames", "YUV4MPEG2 W4 H2\n", 0, 0, "no frames"},
        {"truncated frame", "YUV4MPEG2 W4 H2\n", 1, 5, "truncated"},
        {"truncated header", "YUV4MPEG2 W4 H2", -1, 0, "truncated"},
        {"bad FRAME line", "YUV4MPEG2 W4 H2\n", 2, 0, "FRAME"},
        {"empty file", "", -1, 0, "empty"},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        FILE* f = fopen(path, "wb");
        fwrite(c[i].header, 1, strlen(c[i].header), f);
        if (c[i].frames_ok == 1) { fwrite("FRAME\n", 1, 6, f); fwrite(px, 1, 12 - c[i].extra, f); }
        if (c[i].frames_ok == 2) { fwrite("FRAME\n", 1, 6, f); fwrite(px, 1, 12, f); fwrite("FRAMX\n", 1, 6, f); fwrite(px, 1, 12, f); }
        fclose(f);
        expect_error(c[i].name, path, 0, 0, c[i].want);
    }
    // over-long header line
    FILE* f = fopen(path, "wb");
    fputs("YUV4MPEG2 W4 H2", f);
    for (int i = 0; i < 600; i++) fputs(" Xjunkjunk", f);
    fputs("\nFRAME\n", f);
    fwrite(px, 1, 12, f);
    fclose(f);
    expect_error("header line too long", path, 0, 0, "longer");
    // raw RGB24: size not a multiple of the frame size; missing -H
    f = fopen(path, "wb");
    for (int i = 0; i < 4 * 2 * 3 * 3 + 5; i++) fputc(i, f);
    fclose(f);
    expect_error("raw size not a multiple", path, 4, 2, "multiple");
    expect_error("raw without -H", path, 4, 0, "out of range");
    expect_error("missing file", "/tmp/test_video_no_such_file.y4m", 0, 0, "cannot open");
    remove(path);
}

// ----------------------------------------------------------------------------
// load_video: file vs stdin (pipe and redirected file), FRAME parameters, raw RGB

// Makes fd 0 read `data` through a pipe fed by a child; returns the writer pid.
static pid_t stdin_from_pipe(const uint8_t* data, size_t n, int* saved) {
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); exit(1); }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(fds[1], data + off, n - off);
            if (w <= 0) _exit(1);
            off += (size_t)w;
        }
        _exit(0);
    }
    close(fds[1]);
    *saved = dup(0);
    dup2(fds[0], 0);
    close(fds[0]);
    clearerr(stdin);
    return pid;
}

static void stdin_restore(int saved, pid_t pid) {
    fflush(stdin); // glibc: drops input buffered from a seekable fd 0, so the next source starts clean
    dup2(saved, 0);
    close(saved);
    clearerr(stdin);
    if (pid > 0) waitpid(pid, NULL, 0);
}

static int same_video(const Video* a, const Video* b) {
    if (a->n_frames != b->n_frames || a->size != b->size || a->total_frames != b->total_frames ||
        a->width != b->width || a->height != b->height)
        return 0;
    if (memcmp(a->indices, b->indices, sizeof(int) * a->n_frames) != 0) return 0;
    return memcmp(a->pixels, b->pixels, sizeof(float) * a->n_frames * 3 * a->size * a->size) == 0;
}

// Synthetic 4:2:0 clip, W x H, `frames` frames of LCG noise; frame lines may carry parameters.
static uint8_t* make_clip(int W, int H, int frames, int params, size_t* n) {
    int cw = (W + 1) / 2, ch = (H + 1) / 2;
    size_t fb = (size_t)W * H + 2 * (size_t)cw * ch;
    uint8_t* out = malloc(64 + (size_t)frames * (fb + 32));
    size_t o = (size_t)sprintf((char*)out, "YUV4MPEG2 W%d H%d F30000:1001 It A0:0 C420mpeg2 XFOO=bar\n", W, H);
    for (int f = 0; f < frames; f++) {
        if (params && f % 3 == 1) o += (size_t)sprintf((char*)out + o, "FRAME Ib XFOO=%d\n", f);
        else { memcpy(out + o, "FRAME\n", 6); o += 6; }
        uint8_t* px = lcg_image((int)fb, 1, 1, (uint32_t)(f + 1));
        memcpy(out + o, px, fb);
        o += fb;
        free(px);
    }
    *n = o;
    return out;
}

static void test_load_video(void) {
    char path[64], path2[64];
    snprintf(path, sizeof(path), "/tmp/test_video_%d_clip.y4m", (int)getpid());
    snprintf(path2, sizeof(path2), "/tmp/test_video_%d_clip2.y4m", (int)getpid());
    // synthetic: 23 frames of odd size 37x29, 8 sampled, S = 32
    size_t n, n2;
    uint8_t* clip = make_clip(37, 29, 23, 0, &n);
    uint8_t* clip2 = make_clip(37, 29, 23, 1, &n2);
    write_all(path, clip, n);
    write_all(path2, clip2, n2);
    Video a, b, c, d;
    load_video(&a, path, 0, 0, 8, 32, CLIP_MEAN, CLIP_STD);
    int want[9], nw = video_frame_list(23, 8, want);
    check(a.n_frames == nw && a.total_frames == 23 && a.width == 37 && a.height == 29 && a.size == 32 &&
          memcmp(a.indices, want, sizeof(int) * nw) == 0, "synthetic clip: frames/indices");
    load_video(&b, path2, 0, 0, 8, 32, CLIP_MEAN, CLIP_STD);
    check(same_video(&a, &b), "FRAME lines with parameters (scan) give the same result");
    int saved;
    pid_t pid = stdin_from_pipe(clip, n, &saved);
    load_video(&c, "-", 0, 0, 8, 32, CLIP_MEAN, CLIP_STD);
    stdin_restore(saved, pid);
    check(same_video(&a, &c), "stdin pipe (spooled) equals file");
    pid = stdin_from_pipe(clip2, n2, &saved);
    load_video(&d, "-", 0, 0, 8, 32, CLIP_MEAN, CLIP_STD);
    stdin_restore(saved, pid);
    check(same_video(&a, &d), "stdin pipe with FRAME parameters equals file");
    free_video(&b); free_video(&c); free_video(&d);
    // a regular file on stdin is seekable: the file path is used
    saved = dup(0);
    int fd = open(path, O_RDONLY);
    dup2(fd, 0);
    close(fd);
    clearerr(stdin);
    load_video(&b, "-", 0, 0, 8, 32, CLIP_MEAN, CLIP_STD);
    stdin_restore(saved, -1);
    check(same_video(&a, &b), "stdin redirected from a file equals file");
    free_video(&a); free_video(&b);
    // more frames requested than exist: repeats collapse (read_video_pyav)
    load_video(&a, path, 0, 0, 64, 32, CLIP_MEAN, CLIP_STD);
    check(a.n_frames == 23 && a.indices[22] == 22, "64 of 23 frames: %d frames", a.n_frames);
    free_video(&a);
    free(clip); free(clip2);

    // real clip, S = 336: file == stdin pipe == raw RGB24 of ffmpeg's conversion,
    // and pixels == normalize(resize_crop(ffmpeg RGB))
    const char* y4m = "test/data/city_320x240_420jpeg_4f.y4m";
    const char* ref = "test/data/city_320x240_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24";
    load_video(&a, y4m, 0, 0, 3, 336, CLIP_MEAN, CLIP_STD);
    check(a.n_frames == 3 && a.indices[0] == 0 && a.indices[1] == 1 && a.indices[2] == 2 && a.total_frames == 4,
          "real clip: 3 of 4 frames -> 0 1 2");
    load_video(&b, ref, 320, 240, 3, 336, CLIP_MEAN, CLIP_STD);
    check(same_video(&a, &b), "raw RGB24 (ffmpeg's) equals Y4M decode");
    size_t yn, rn;
    uint8_t* ydata = read_all(y4m, &yn);
    pid = stdin_from_pipe(ydata, yn, &saved);
    load_video(&c, "-", 0, 0, 3, 336, CLIP_MEAN, CLIP_STD);
    stdin_restore(saved, pid);
    check(same_video(&a, &c), "real clip via stdin pipe equals file");
    uint8_t* rdata = read_all(ref, &rn);
    pid = stdin_from_pipe(rdata, rn, &saved);
    load_video(&d, "-", 320, 240, 3, 336, CLIP_MEAN, CLIP_STD);
    stdin_restore(saved, pid);
    check(same_video(&a, &d), "raw RGB24 via stdin pipe equals file");
    // by hand
    size_t np = (size_t)320 * 240;
    uint8_t* planar = malloc(3 * np);
    uint8_t* crop = malloc((size_t)3 * 336 * 336);
    float t[3][256];
    normalize_table(t, CLIP_MEAN, CLIP_STD);
    int ok = 1;
    for (int k = 0; k < 3; k++) {
        const uint8_t* fr = rdata + (size_t)a.indices[k] * 3 * np;
        for (size_t i = 0; i < np; i++) { planar[i] = fr[3 * i]; planar[np + i] = fr[3 * i + 1]; planar[2 * np + i] = fr[3 * i + 2]; }
        resize_crop_rgb_u8(planar, 320, 240, 336, crop);
        for (size_t i = 0; i < (size_t)3 * 336 * 336; i++)
            ok &= f32_bits(a.pixels[(size_t)k * 3 * 336 * 336 + i]) == f32_bits(t[i / (336 * 336)][crop[i]]);
    }
    check(ok, "real clip: pixels == normalize(resize_crop(ffmpeg RGB))");
    free(planar); free(crop); free(ydata); free(rdata);
    free_video(&a); free_video(&b); free_video(&c); free_video(&d);
    remove(path);
    remove(path2);
}

// Tiny and extreme shapes: load_video runs (under the sanitizers: without a
// bad access) and the windowed resize+crop equals a full resize then a slice.
static void test_extreme_sizes(void) {
    const int dims[][2] = {{1, 1}, {1, 7}, {7, 1}, {2, 3}, {5, 5}, {3, 400}, {400, 3}, {1, 200}};
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_video_%d_tiny.y4m", (int)getpid());
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++) {
        int w = dims[i][0], h = dims[i][1];
        size_t n;
        uint8_t* clip = make_clip(w, h, 3, 0, &n);
        write_all(path, clip, n);
        for (int S = 2; S <= 8; S += 6) {
            Video v;
            load_video(&v, path, 0, 0, 2, S, CLIP_MEAN, CLIP_STD);
            int finite = v.n_frames == 2;
            for (size_t k = 0; k < (size_t)v.n_frames * 3 * S * S; k++) finite &= isfinite(v.pixels[k]) && fabsf(v.pixels[k]) < 3.0f;
            check(finite, "%dx%d S=%d: load_video", w, h, S);
            free_video(&v);
            uint8_t* img = lcg_image(w, h, 3, (uint32_t)(i + 3));
            int nw, nh;
            shortest_edge_size(w, h, S, &nw, &nh);
            uint8_t* full = malloc((size_t)3 * nw * nh);
            uint8_t* crop = malloc((size_t)3 * S * S);
            resize_rgb_u8(img, w, h, full, nw, nh);
            resize_crop_rgb_u8(img, w, h, S, crop);
            int x0 = (nw - S) / 2, y0 = (nh - S) / 2, same = 1;
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < S; y++)
                    same &= memcmp(crop + ((size_t)c * S + y) * S, full + ((size_t)c * nh + y0 + y) * nw + x0, (size_t)S) == 0;
            check(same, "%dx%d S=%d: windowed crop equals slice of full resize (%dx%d)", w, h, S, nw, nh);
            free(img); free(full); free(crop);
        }
        free(clip);
    }
    remove(path);
}

// ----------------------------------------------------------------------------
// Still images and anyres, against test/goldens/image_tables.txt (written by
// test/make_goldens.py with Pillow 13 and transformers 5.24; see its header)

typedef struct {
    char name[16];
    int S, patch, n;
    int32_t pins[2 * 16]; // (n, 2) as (h, w)
} Geom;

static Geom g_geoms[4];
static int g_n_geoms;

static const Geom* find_geom(const char* name) {
    for (int i = 0; i < g_n_geoms; i++)
        if (!strcmp(g_geoms[i].name, name)) return &g_geoms[i];
    return NULL;
}

// Planar (3, H, W) rgb -> FNV-1a of its bytes.
static uint32_t image_hash(const Image* im) { return fnv1a(im->rgb, (size_t)3 * im->width * im->height); }

// One "pnm" line: write the file, read it back, compare with Pillow's levels.
static void check_pnm_line(char* line, const char* tmp, int* count) {
    char magic[4];
    int maxval, n, off;
    if (sscanf(line, "pnm %3s %d %d%n", magic, &maxval, &n, &off) != 3 || n < 1 || n > 4096) {
        check(0, "image_tables.txt: bad pnm line '%.40s'", line);
        return;
    }
    int gray = !strcmp(magic, "P5"), ch = gray ? 1 : 3, bps = maxval > 255 ? 2 : 1;
    int* s = malloc(sizeof(int) * n);
    char* p = line + off;
    for (int i = 0; i < n; i++) s[i] = (int)strtol(p, &p, 10);
    while (*p == ' ') p++;
    int m = n / ch * 3, ok = *p == ':';
    p++;
    int* lv = malloc(sizeof(int) * m);
    for (int i = 0; i < m; i++) lv[i] = (int)strtol(p, &p, 10);
    FILE* f = fopen(tmp, "wb");
    fprintf(f, "%s\n%d 1\n%d\n", magic, n / ch, maxval);
    for (int i = 0; i < n; i++) {
        if (bps == 2) fputc(s[i] >> 8, f);
        fputc(s[i] & 255, f);
    }
    fclose(f);
    Image im;
    load_image(&im, tmp);
    int w = n / ch, bad = -1;
    ok &= im.width == w && im.height == 1;
    for (int x = 0; ok && x < w; x++)
        for (int c = 0; c < 3; c++)
            if (im.rgb[(size_t)c * w + x] != lv[3 * x + c] && bad < 0) bad = 3 * x + c;
    check(ok && bad < 0, "%s maxval %d: levels as Pillow's (first difference at %d: sample %d -> %d, Pillow %d)",
          magic, maxval, bad, bad >= 0 ? s[(bad / 3) * ch + (gray ? 0 : bad % 3)] : 0,
          bad >= 0 ? im.rgb[(size_t)(bad % 3) * w + bad / 3] : 0, bad >= 0 ? lv[bad] : 0);
    free_image(&im);
    free(s);
    free(lv);
    (*count)++;
}

// Reference anyres patches the slow way: the full resize into a zeroed canvas,
// then slices; must equal anyres_patches_u8.
static int patches_equal_reference(const ImagePatches* g, const uint8_t* rgb, const uint8_t* got) {
    int S = g->size, tw = g->best_w, th = g->best_h, nw = g->resized_w, nh = g->resized_h;
    uint8_t* r = malloc((size_t)3 * nw * nh);
    uint8_t* canvas = calloc((size_t)3 * tw * th, 1);
    uint8_t* base = malloc((size_t)3 * S * S);
    resize_rgb_u8(rgb, g->width, g->height, r, nw, nh);
    resize_rgb_u8(rgb, g->width, g->height, base, S, S);
    int left = (tw - nw) / 2, top = (th - nh) / 2, same = memcmp(base, got, (size_t)3 * S * S) == 0;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < nh; y++)
            memcpy(canvas + ((size_t)c * th + top + y) * tw + left, r + ((size_t)c * nh + y) * nw, (size_t)nw);
    for (int ty = 0; ty < g->rows; ty++)
        for (int tx = 0; tx < g->cols; tx++)
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < S; y++)
                    same &= memcmp(got + (((size_t)(1 + ty * g->cols + tx) * 3 + c) * S + y) * S,
                                   canvas + ((size_t)c * th + ty * S + y) * tw + (size_t)tx * S, (size_t)S) == 0;
    free(r); free(canvas); free(base);
    return same;
}

static void test_image_tables(void) {
    size_t n;
    char* text = (char*)read_all("test/goldens/image_tables.txt", &n);
    text[n] = 0;
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "/tmp/test_video_%d.pnm", (int)getpid());
    int n_pil = 0, n_pnm = 0, n_anyres = 0, n_tokens = 0, n_called = 0;
    float t[3][256];
    normalize_table(t, CLIP_MEAN, CLIP_STD);
    for (char* line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        if (!strncmp(line, "geom ", 5)) {
            Geom* g = &g_geoms[g_n_geoms];
            int off;
            if (g_n_geoms >= 4 || sscanf(line, "geom %15s %d %d %d%n", g->name, &g->S, &g->patch, &g->n, &off) != 4 ||
                g->n < 1 || g->n > 16) { check(0, "bad geom line"); continue; }
            char* p = line + off;
            for (int i = 0; i < 2 * g->n; i++) g->pins[i] = (int32_t)strtol(p, &p, 10);
            g_n_geoms++;
        } else if (!strncmp(line, "pil ", 4)) {
            char file[128], mode[8], path[256];
            int W, H;
            unsigned hash;
            unsigned long long sum;
            sscanf(line, "pil %127s %d %d %7s %x %llu", file, &W, &H, mode, &hash, &sum);
            snprintf(path, sizeof(path), "test/data/%s", file);
            Image im;
            load_image(&im, path);
            size_t bytes = (size_t)3 * im.width * im.height;
            check(im.width == W && im.height == H && image_hash(&im) == hash && sum_u8(im.rgb, bytes) == sum,
                  "%s (%s): %dx%d hash 0x%08x sum %llu, Pillow %dx%d 0x%08x %llu", file, mode, im.width, im.height,
                  image_hash(&im), (unsigned long long)sum_u8(im.rgb, bytes), W, H, hash, sum);
            free_image(&im);
            n_pil++;
        } else if (!strncmp(line, "pnm ", 4)) {
            check_pnm_line(line, tmp, &n_pnm);
        } else if (!strncmp(line, "anyres ", 7)) {
            char gname[16], file[128], path[256];
            int P, bh, bw, rh, rw;
            unsigned hash;
            unsigned long long sum;
            sscanf(line, "anyres %15s %127s %d %d %d %d %d %x %llu", gname, file, &P, &bh, &bw, &rh, &rw, &hash, &sum);
            const Geom* g = find_geom(gname);
            if (!g) { check(0, "anyres line before its geom"); continue; }
            snprintf(path, sizeof(path), "test/data/%s", file);
            Image im;
            load_image(&im, path);
            ImagePatches ip;
            preprocess_image(&ip, &im, g->S, g->pins, g->n, CLIP_MEAN, CLIP_STD);
            size_t ss = (size_t)g->S * g->S, count = (size_t)ip.n_patches * 3 * ss;
            uint8_t* u8 = malloc(count);
            anyres_patches_u8(&ip, im.rgb, u8);
            check(ip.n_patches == P && ip.best_h == bh && ip.best_w == bw && ip.resized_h == rh && ip.resized_w == rw,
                  "%s %s: %d patches, best %dx%d, resized %dx%d (h x w)", gname, file, ip.n_patches, ip.best_h,
                  ip.best_w, ip.resized_h, ip.resized_w);
            check(ip.n_patches == P && fnv1a(u8, count) == hash && sum_u8(u8, count) == sum,
                  "%s %s: patches hash 0x%08x sum %llu, transformers 0x%08x %llu", gname, file, fnv1a(u8, count),
                  (unsigned long long)sum_u8(u8, count), hash, sum);
            int norm_ok = 1;
            for (size_t i = 0; i < count; i++) norm_ok &= f32_bits(ip.pixels[i]) == f32_bits(t[(i / ss) % 3][u8[i]]);
            check(norm_ok, "%s %s: pixels == normalize table of the uint8 patches", gname, file);
            check(patches_equal_reference(&ip, im.rgb, u8), "%s %s: patches == full resize, pad, slice", gname, file);
            free(u8);
            free_image_patches(&ip);
            free_image(&im);
            n_anyres++;
        } else if (!strncmp(line, "tokens ", 7)) {
            char gname[16];
            int W, H, bh, bw, rh, rw, rows, cols, ur, uc, N, called;
            if (sscanf(line, "tokens %15s %d %d %d %d %d %d %d %d %d %d %d %d", gname, &W, &H, &bh, &bw, &rh, &rw,
                       &rows, &cols, &ur, &uc, &N, &called) != 13) { check(0, "bad tokens line"); continue; }
            const Geom* g = find_geom(gname);
            if (!g) { check(0, "tokens line before its geom"); continue; }
            int gbh, gbw, grh, grw, top, nr, left, nc, grid = g->S / g->patch;
            select_best_resolution(H, W, g->pins, g->n, &gbh, &gbw);
            patch_output_size(H, W, gbh, gbw, &grh, &grw);
            unpad_window(H, W, gbh / g->S * grid, gbw / g->S * grid, &top, &nr, &left, &nc);
            int got = image_num_tokens(H, W, g->S, g->patch, g->pins, g->n);
            check(gbh == bh && gbw == bw && grh == rh && grw == rw && gbh / g->S == rows && gbw / g->S == cols &&
                  nr == ur && nc == uc && got == N,
                  "%s %dx%d: best %dx%d resized %dx%d unpadded %dx%d -> %d tokens; transformers %dx%d %dx%d %dx%d -> %d",
                  gname, W, H, gbh, gbw, grh, grw, nr, nc, got, bh, bw, rh, rw, ur, uc, N);
            n_tokens++;
            n_called += called;
        }
    }
    check(g_n_geoms == 2 && n_pil == 4 && n_pnm == 34 && n_anyres == 8 && n_tokens >= 400 && n_called >= 400,
          "image_tables.txt: %d geom, %d pil, %d pnm, %d anyres, %d tokens (%d from processor calls)", g_n_geoms,
          n_pil, n_pnm, n_anyres, n_tokens, n_called);
    remove(tmp);
    free(text);
}

// <image> token counts of doc/model.md#placeholder-expansion, real geometry (W x H).
static void test_image_token_counts(void) {
    const int32_t pins[] = {336, 672, 672, 336, 672, 672, 1008, 336, 336, 1008};
    struct { int w, h, n; } c[] = {{640, 480, 2340}, {1280, 720, 1948}, {375, 500, 2352}, {336, 336, 1176}};
    for (int i = 0; i < 4; i++) {
        int got = image_num_tokens(c[i].h, c[i].w, 336, 14, pins, 5);
        check(got == c[i].n, "image tokens: %dx%d -> %d tokens (want %d)", c[i].w, c[i].h, got, c[i].n);
    }
    // 336x336 (W x H) picks (336, 672) on the tie (select_best_resolution keeps the earlier pinpoint);
    // 300x400 rounds 448.00000000000006 up to 449
    int bh, bw, nh, nw;
    select_best_resolution(336, 336, pins, 5, &bh, &bw);
    check(bh == 336 && bw == 672, "336x336: best %dx%d (h x w)", bh, bw);
    select_best_resolution(400, 300, pins, 5, &bh, &bw);
    patch_output_size(400, 300, bh, bw, &nh, &nw);
    check(bh == 672 && bw == 336 && nh == 449 && nw == 336, "300x400: best %dx%d resized %dx%d", bh, bw, nh, nw);
}

// Header syntax, 16-bit samples, gray, Y4M, stdin; anyres on degenerate shapes.
static void test_image_reader(void) {
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_video_%d_img.ppm", (int)getpid());
    // comments anywhere before maxval, tabs/CR as whitespace, bytes after the raster ignored
    const char hdr[] = "P6\n# made by hand\n2 # width\n\t1\r# maxval next\n255\n";
    const uint8_t px[] = {10, 20, 30, 40, 50, 60, 99, 99};
    FILE* f = fopen(path, "wb");
    fwrite(hdr, 1, strlen(hdr), f);
    fwrite(px, 1, sizeof(px), f);
    fclose(f);
    Image im;
    load_image(&im, path);
    check(im.width == 2 && im.height == 1 && im.rgb[0] == 10 && im.rgb[1] == 40 && im.rgb[2] == 20 &&
          im.rgb[3] == 50 && im.rgb[4] == 30 && im.rgb[5] == 60, "P6 with comments: planar RGB");
    free_image(&im);
    // CRLF after maxval: only the CR ends the header, the LF is the first sample (Pillow and netpbm agree)
    f = fopen(path, "wb");
    fputs("P5 3 1 255\r\n\x07\x08", f);
    fclose(f);
    load_image(&im, path);
    check(im.width == 3 && im.rgb[0] == 10 && im.rgb[1] == 7 && im.rgb[2] == 8 && im.rgb[3] == 10 && im.rgb[8] == 8,
          "P5 after CR LF: the LF is a sample, gray repeated to RGB");
    free_image(&im);
    // the same bytes from a pipe on stdin
    size_t nbytes;
    uint8_t* bytes = read_all("test/data/chelsea_451x300.ppm", &nbytes);
    Image a, b;
    load_image(&a, "test/data/chelsea_451x300.ppm");
    int saved;
    pid_t pid = stdin_from_pipe(bytes, nbytes, &saved);
    load_image(&b, "-");
    stdin_restore(saved, pid);
    check(a.width == b.width && a.height == b.height && !memcmp(a.rgb, b.rgb, (size_t)3 * a.width * a.height),
          "PPM from a pipe on stdin == from the file");
    free_image(&a); free_image(&b); free(bytes);
    // Y4M: the first frame, as the video reader converts it (== ffmpeg's RGB of frame 0)
    load_image(&im, "test/data/city_320x240_444_2f.y4m");
    uint8_t* ref = read_all("test/data/city_320x240_444_2f.ffmpeg_accurate.rgb24", &nbytes);
    int same = im.width == 320 && im.height == 240;
    for (size_t i = 0; same && i < 320 * 240; i++)
        for (int c = 0; c < 3; c++) same &= im.rgb[(size_t)c * 320 * 240 + i] == ref[3 * i + c];
    check(same, "Y4M image == ffmpeg RGB of its first frame");
    free(ref);
    free_image(&im);
    bytes = read_all("test/data/city_320x240_444_2f.y4m", &nbytes);
    pid = stdin_from_pipe(bytes, nbytes, &saved);
    load_image(&b, "-");
    stdin_restore(saved, pid);
    load_image(&a, "test/data/city_320x240_444_2f.y4m");
    check(!memcmp(a.rgb, b.rgb, (size_t)3 * 320 * 240), "Y4M image from a pipe on stdin == from the file");
    free_image(&a); free_image(&b); free(bytes);
    remove(path);

    // degenerate shapes through the whole anyres path (tiny_b and real pinpoints)
    const int32_t pb[] = {64, 128, 128, 64, 128, 128, 192, 64, 64, 192};
    const int32_t pr[] = {336, 672, 672, 336, 672, 672, 1008, 336, 336, 1008};
    const int dims[][2] = {{1, 1}, {1, 2000}, {2000, 1}, {3, 700}, {700, 3}, {64, 64}, {128, 64}, {337, 336}};
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
        for (int k = 0; k < 2; k++) {
            Image src = {dims[i][0], dims[i][1], lcg_image(dims[i][0], dims[i][1], 3, (uint32_t)(i + 11))};
            ImagePatches ip;
            int S = k ? 336 : 64;
            preprocess_image(&ip, &src, S, k ? pr : pb, 5, CLIP_MEAN, CLIP_STD);
            uint8_t* u8 = malloc((size_t)ip.n_patches * 3 * S * S);
            anyres_patches_u8(&ip, src.rgb, u8);
            int finite = 1;
            for (size_t j = 0; j < (size_t)ip.n_patches * 3 * S * S; j++) finite &= isfinite(ip.pixels[j]);
            check(finite && patches_equal_reference(&ip, src.rgb, u8), "%dx%d S=%d: %d patches == reference",
                  src.width, src.height, S, ip.n_patches);
            free(u8);
            free_image_patches(&ip);
            free(src.rgb);
        }
}

// load_image in a child: exit 1 and one stderr line naming the file.
static void load_image_child(const char* path, void* arg) {
    (void)arg;
    Image im;
    load_image(&im, path);
}

static void expect_image_error(const char* what, const char* path, const void* data, size_t n, const char* want) {
    if (data) write_all(path, data, n);
    char label[160];
    snprintf(label, sizeof(label), "image error '%s'", what);
    expect_child_error(label, path, want, load_image_child, NULL);
}

static void test_image_errors(void) {
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_video_%d_bad.ppm", (int)getpid());
    struct { const char* name; const char* bytes; size_t n; const char* want; } c[] = {
        {"empty file", "", 0, "empty"},
        {"unknown format", "GIF89a....", 10, "unknown image format"},
        {"PAM P7", "P7\nWIDTH 1\n", 10, "unknown image format"},
        {"ASCII P3", "P3\n1 1\n255\n1 2 3\n", 17, "ASCII"},
        {"bitmap P4", "P4\n8 1\n\xff", 8, "bitmap"},
        {"no whitespace after magic", "P61 1 255\n\1\2\3", 13, "whitespace"},
        {"header ends early", "P6\n4 4", 6, "before the maxval"},
        {"header ends in a comment", "P6\n4 4 # no maxval", 18, "before the maxval"},
        {"letter for width", "P6\nx 4 255\n", 11, "width"},
        {"junk after width", "P6\n4x 4 255\n", 12, "width"},
        {"negative height", "P6\n4 -4 255\n", 12, "height"},
        {"zero width", "P6\n0 4 255\n", 11, "out of range"},
        {"absurd width", "P6\n16385 1 255\n\0\0\0", 18, "out of range"},
        {"too many digits", "P5\n1 99999999999 255\n", 22, "digits"},
        {"maxval 0", "P5\n1 1 0\n\0", 10, "maxval"},
        {"maxval 65536", "P5\n1 1 65536\n\0\0", 15, "maxval"},
        {"comment right after maxval", "P5\n1 1 255#c\n\7", 14, "whitespace"},
        {"maxval then EOF", "P5\n1 1 255", 10, "whitespace"},
        {"truncated 8-bit raster", "P6\n2 2 255\n\1\2\3\4\5\6\7\10\11\12\13", 22, "truncated pixel data: 11 of 12"},
        {"truncated 16-bit raster", "P5\n2 1 1000\n\0\1\0", 15, "truncated pixel data: 3 of 4"},
        {"huge size, tiny file", "P6\n16384 16384 65535\n\0\0", 23, "truncated pixel data"},
        {"Y4M without frames", "YUV4MPEG2 W4 H2\n", 16, "no frames"},
        {"Y4M truncated frame", "YUV4MPEG2 W4 H2\nFRAME\n\0\0\0", 25, "truncated"},
        {"Y4M bad size", "YUV4MPEG2 W0 H2\nFRAME\n", 22, "out of range"},
        {"not Y4M after YU", "YUV4MPEGX W4 H2\n", 16, "unknown image format"},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) expect_image_error(c[i].name, path, c[i].bytes, c[i].n, c[i].want);
    expect_image_error("missing file", "/tmp/test_video_no_such_image.ppm", NULL, 0, "cannot open");
    remove(path);
}

int main(void) {
    // CI may start us with fd 0 closed; the stdin tests swap fd 0, so make it a real fd first
    if (fcntl(0, F_GETFD) == -1) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd > 0) { dup2(fd, 0); close(fd); }
    }
    test_normalize();
    test_axes();
    test_small_example();
    test_end_to_end();
    test_yuv_vs_ffmpeg();
    test_y_planes_and_mono();
    test_sampling();
    test_errors();
    test_load_video();
    test_extreme_sizes();
    test_image_token_counts();
    test_image_tables();
    test_image_reader();
    test_image_errors();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
