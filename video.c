// video.c: video and image input, and their preprocessing, for llava.c
//
// What it does, in the order a frame meets it:
//   1. reads frames from a YUV4MPEG2 (.y4m) file or pipe, or from headerless
//      RGB24 (-W w -H h), from a path or from stdin ("-");
//   2. converts YUV to RGB the way ffmpeg's swscale does for
//      `-pix_fmt rgb24 -sws_flags neighbor+accurate_rnd+full_chroma_int+bitexact`
//      (BT.601, limited or full range, point-sampled chroma, swscale's own
//      integer arithmetic, bit for bit);
//   3. picks frames like the model card: np.arange(0, total, total/N).astype(int),
//      then keeps what its read_video_pyav keeps (distinct indices < total);
//   4. preprocesses each picked frame like transformers' torchvision video
//      processor (doc/preprocessing.md, "Video frames, end to end"): shortest-edge resize to S with torch's
//      uint8 antialiased bicubic kernel, center crop S×S (floor offsets, 4.57+),
//      then (float(u8) - mean*255) / (std*255) in float32, CHW;
//   5. reads still images (binary PPM/PGM exactly as Pillow decodes them, or
//      the first frame of a Y4M) and cuts them into LLaVA-NeXT "anyres" patches
//      like transformers' LlavaNextImageProcessor (doc/preprocessing.md, "Anyres tiles"): best grid
//      pinpoint, aspect-keeping resize, zero padding, S×S tiles plus the whole
//      image squeezed to S×S; and counts the <image> tokens an image takes.
//
// What it does not do: decode compressed video (convert with ffmpeg first:
// `ffmpeg -i in.mp4 -f yuv4mpegpipe - | ./llava ... -v -`) or compressed
// images (`ffmpeg -i in.jpg -pix_fmt rgb24 out.ppm`; JPEG decoders, Pillow's
// included, may differ from ffmpeg's by a level here and there), use a frame's
// interlacing or chroma siting (ffmpeg ignores both here too), read alpha
// (the 444alpha plane is skipped, as swscale does for rgb24).
// Known difference from ffmpeg 5.1: 8-bit Cmono tagged XCOLORRANGE=LIMITED.
// ffmpeg's unscaled gray8->rgb24 path ignores the tag and copies Y (R=G=B=Y);
// we honour it, (Y-16)*255/219 as for YUV and as ffmpeg itself does for
// mono9..mono16. Everything else matched ffmpeg 5.1.9 bit for bit (every 8-bit
// YUV triple in both ranges, 4:2:0/4:2:2/4:1:1/4:4:4, odd sizes, 9..16 bit).
// Why not PyAV's default conversion: the reference pipeline's to_ndarray uses
// swscale's fast (non-accurate, interpolated-chroma) path, which is neither
// reproducible across CPUs nor specified; this exact mode is the stand-in.
//
// No main: this file is #included into llava.c (unity build). libc and base.c only:
// it compiles on its own (`make test` checks that).
// Self-test: gcc -O3 -march=native -o /tmp/test_video test/test_video.c -lm
//
// Floating point: the only float code whose result could change under FMA
// contraction (-march=native turns on FMA, and GCC contracts across statements
// by default) is the bicubic kernel in resize_axis_build. It routes every
// product through vmul(), a volatile store that forbids fusing. The rest is
// integer, or float ops with nothing to fuse (a subtract then a true divide;
// the anyres sizes and the PPM level table: products, quotients, no sums).
// `#pragma STDC FP_CONTRACT OFF` is not used because GCC ignores it.
//
// Files above 2 GiB need a 64-bit `long` (fseek/ftell): true on 64-bit Linux
// and macOS, not on Windows.

#include "base.c"  // fatal, xmalloc: the only project file this one needs
#include <math.h>
// The preprocessing must round like numpy and PyTorch: float and double arithmetic in IEEE single and
// double precision. x87 (32-bit x86 without SSE2) evaluates in 80-bit precision and moves frame
// indices and resize sizes by one; the Makefile adds -msse2 -mfpmath=sse there. (1 and 2 are the
// excess-precision methods; 16, which GCC reports for CPUs with AVX512-FP16, concerns _Float16 only.)
#if defined(__FLT_EVAL_METHOD__) && (__FLT_EVAL_METHOD__ == 1 || __FLT_EVAL_METHOD__ == 2)
#error "video.c needs IEEE float/double evaluation: on 32-bit x86 build with -msse2 -mfpmath=sse"
#endif
#include <strings.h>

// ----------------------------------------------------------------------------
// Public API

typedef struct {
    int n_frames;      // F: frames kept (N, fewer if total < N, or N+1: see video_frame_list)
    int size;          // S: output height = width
    float* pixels;     // (F, 3, S, S) normalized, RGB, CHW, like pixel_values_videos[0]
    int width, height; // size of the source frames
    int total_frames;  // frames in the source
    int* indices;      // (F) frame indices into the source, increasing, distinct
} Video;

// Reads a video and preprocesses n_frames of it into v->pixels.
// path: a .y4m file, or "-" for stdin. raw_w, raw_h > 0: the input is headerless
// RGB24 of that size instead (frames back to back); 0 for Y4M.
// size: the model's image_size (any even S, 336 for the real model).
// mean/std: the model's image_mean/image_std (float32, as in the checkpoint).
// On any error prints one line "video: PATH: what" to stderr and exits 1.
void load_video(Video* v, const char* path, int raw_w, int raw_h, int n_frames,
                int size, const float mean[3], const float std[3]);
void free_video(Video* v);

// Still images (PPM/PGM as Pillow reads them, or the first frame of a Y4M) and
// LLaVA-NeXT "anyres" preprocessing, as transformers' LlavaNextImageProcessor.
typedef struct {
    int width, height; // W, H
    uint8_t* rgb;      // (3, H, W) planar RGB, 8-bit
} Image;

typedef struct {
    int n_patches;            // P = 1 + rows * cols
    int size;                 // S: side of every patch (the model's image_size)
    int rows, cols;           // tile grid: best_h / S, best_w / S
    int width, height;        // original image size (HF image_sizes holds (height, width))
    int best_h, best_w;       // the grid pinpoint select_best_resolution picked
    int resized_h, resized_w; // image size after the resize for patching, before padding
    float* pixels;            // (P, 3, S, S) normalized: patch 0 = base image, then tiles row-major
} ImagePatches;

// load_image: path = .ppm/.pgm (binary P6/P5, any maxval) or .y4m (first frame),
//   "-" = stdin. Errors: one line "llava: error: PATH: what", exit 1.
// preprocess_image: anyres patches of an image; pinpoints (n_pinpoints, 2) as
//   (h, w), each a multiple of S (Config.pinpoints); mean/std as for load_video.
// image_num_tokens: how many <image> tokens the processor writes for an image
//   of h x w (= rows of features the model scatters into them): S/patch_size
//   squared for the base, then the unpadded grid with one newline per row.
void load_image(Image* im, const char* path);
void free_image(Image* im);
void preprocess_image(ImagePatches* p, const Image* im, int S, const int32_t* pinpoints, int n_pinpoints,
                      const float mean[3], const float std[3]);
void free_image_patches(ImagePatches* p);
int image_num_tokens(int h, int w, int S, int patch_size, const int32_t* pinpoints, int n_pinpoints);

// Lower-level pieces (also used by tests and by the anyres image path):
// sample_frame_indices: numpy's np.arange(0, total, total/n).astype(int) (n or
//   n+1 values, may repeat or equal total) into out (room for n+1); returns count.
// video_frame_list: the frames the model card's read_video_pyav keeps for those
//   indices: increasing, distinct, < total (room for n+1); returns count.
// resize_plane_u8: one uint8 plane src (sh, sw) -> dst (dh, dw), torch's CPU
//   antialiased bicubic (F.interpolate(uint8, mode="bicubic", antialias=True)).
// resize_rgb_u8: the same on 3 planes, src (3, sh, sw) -> dst (3, dh, dw).
// resize_crop_rgb_u8: shortest-edge resize to S then center crop:
//   rgb (3, h, w) -> out (3, S, S).
// normalize_table: table[c][u] = (float)((float)u - f32(mean*255)) / f32(std*255).
int sample_frame_indices(int total, int n, int* out);
int video_frame_list(int total, int n, int* out);
void resize_plane_u8(const uint8_t* src, int sw, int sh, uint8_t* dst, int dw, int dh);
void resize_rgb_u8(const uint8_t* src, int sw, int sh, uint8_t* dst, int dw, int dh);
void resize_crop_rgb_u8(const uint8_t* rgb, int w, int h, int S, uint8_t* out);
void normalize_table(float table[3][256], const float mean[3], const float std[3]);
// Anyres pieces, each named after the transformers function it mirrors:
// select_best_resolution: the pinpoint (h, w) for an h x w image.
// patch_output_size: get_patch_output_size, the aspect-keeping resize target.
// anyres_geometry: all sizes of preprocess_image, no pixels (p->pixels = NULL).
// anyres_patches_u8: the patches as uint8 levels, out (P, 3, S, S).
// unpad_window: unpad_image on a feature grid of cur_h x cur_w for an image of
//   orig_h x orig_w: keep rows [top, top+rows) and columns [left, left+cols).
void select_best_resolution(int h, int w, const int32_t* pinpoints, int n_pinpoints, int* best_h, int* best_w);
void patch_output_size(int h, int w, int th, int tw, int* new_h, int* new_w);
void anyres_geometry(ImagePatches* g, int w, int h, int S, const int32_t* pinpoints, int n_pinpoints);
void anyres_patches_u8(const ImagePatches* g, const uint8_t* rgb, uint8_t* out);
void unpad_window(int orig_h, int orig_w, int cur_h, int cur_w, int* top, int* rows, int* left, int* cols);

// ----------------------------------------------------------------------------
// Errors and checked helpers

#define VIDEO_MAX_DIM 16384 // largest accepted width or height

// ----------------------------------------------------------------------------
// Frame sampling
//
// The model card samples `indices = np.arange(0, total, total/N).astype(int)`.
// numpy computes the length as ceil(total / step) in float64 (step = total/N,
// also float64) and element i as i*step (its fill loop is start + i*delta with
// start 0), truncated toward zero by astype(int). Float rounding of total/step
// makes the length N+1 for some totals (5385 of the 128000 pairs total 1..2000,
// N 1..64), and then the extra index is either a real frame (total 61, N 7:
// ... 52 60) or equal to total (total 17, N 7: 0 2 4 7 9 12 14 17). total < N repeats
// indices (total 3, N 8: 0 0 0 1 1 1 2 2).
// The card's read_video_pyav then walks the decoded frames and keeps frame i
// `if i in indices`: repeats collapse to one frame and an index >= total is
// never met. video_frame_list reproduces that, so F can be < N or N+1.

int sample_frame_indices(int total, int n, int* out) {
    if (total <= 0 || n <= 0) return 0;
    double step = (double)total / (double)n;
    int count = (int)ceil((double)total / step); // n or n+1 (test: total <= 2000, n <= 64)
    if (count > n + 1) count = n + 1; // cannot happen; keeps `out` in bounds regardless
    for (int i = 0; i < count; i++) out[i] = (int)((double)i * step);
    return count;
}

int video_frame_list(int total, int n, int* out) {
    int count = sample_frame_indices(total, n, out), k = 0;
    for (int i = 0; i < count; i++) // numpy's indices are non-decreasing
        if (out[i] < total && (k == 0 || out[i] != out[k - 1])) out[k++] = out[i];
    return k;
}

// ----------------------------------------------------------------------------
// Resize: torch's CPU uint8 antialiased bicubic (doc/preprocessing.md, "Resize")
//
// Separable: horizontal pass first into a uint8 buffer (rounded and saturated),
// then vertical. A pass whose size does not change is skipped. Per axis the
// weights are Keys cubic (a = -0.5) stretched by the scale when downscaling,
// normalized in double, then turned into int16 with `prec` fraction bits,
// where prec is the largest value <= 22 that keeps the largest weight of the
// whole axis below 2^15.

typedef struct {
    int in, out;   // axis length before and after
    int first;     // outputs [first, first+count) are stored (a crop window)
    int count;
    int ksize;     // stride of w: the most taps any output can have
    int prec;      // fixed-point fraction bits of w
    int* lo;       // (count) first input index of each stored output
    int* n;        // (count) number of taps of each stored output
    int16_t* w;    // (count, ksize) weights, zero past n
} ResizeAxis;

// Product rounded to double before anything else sees it: the volatile store
// keeps the compiler from fusing it with a following add (FMA contraction).
static double vmul(double a, double b) {
    volatile double r = a * b;
    return r;
}

// Keys cubic convolution kernel with a = -0.5 (torch aa_filter, Pillow).
static double resize_cubic(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return vmul(vmul(vmul(a + 2.0, x) - (a + 3.0), x), x) + 1.0;
    if (x < 2.0) return vmul(vmul(vmul(a, x) - 5.0 * a, x) + 8.0 * a, x) - 4.0 * a;
    return 0.0;
}

// Taps of output i: bounds and normalized double weights (w has room for ksize).
static int resize_taps(int in, double scale, double support, double invscale, int ksize,
                       int i, int* lo_out, double* w) {
    double center = scale * (i + 0.5);
    int64_t lo = (int64_t)(center - support + 0.5); // C cast truncates, as torch
    if (lo < 0) lo = 0;
    int64_t hi = (int64_t)(center + support + 0.5);
    if (hi > in) hi = in;
    int64_t n = hi - lo;
    if (n < 0) n = 0;
    if (n > ksize) n = ksize;
    double total = 0.0;
    for (int j = 0; j < n; j++) {
        w[j] = resize_cubic(((double)(j + lo) - center + 0.5) * invscale);
        total += w[j];
    }
    if (total != 0.0)
        for (int j = 0; j < n; j++) w[j] /= total;
    *lo_out = (int)lo;
    return (int)n;
}

// Builds the int16 table of axis in -> out, storing outputs [first, first+count).
// prec depends on the largest weight over ALL outputs (torch computes it over the
// whole axis), so every output is visited once even if only a window is stored.
static void resize_axis_build(ResizeAxis* ax, int in, int out, int first, int count) {
    double scale = (double)in / (double)out;
    double support = (scale >= 1.0) ? 2.0 * scale : 2.0; // interp_size/2 * scale
    int ksize = (int)ceil(support) * 2 + 1;
    double invscale = (scale >= 1.0) ? 1.0 / scale : 1.0;
    double* w = xmalloc((size_t)ksize * sizeof(double));
    double wmax = 0.0;
    for (int i = 0; i < out; i++) {
        int lo, n = resize_taps(in, scale, support, invscale, ksize, i, &lo, w);
        for (int j = 0; j < n; j++)
            if (w[j] > wmax) wmax = w[j];
    }
    int prec = 0;
    while (prec < 22 && (int)(0.5 + wmax * (double)(1 << (prec + 1))) < (1 << 15)) prec++;

    ax->in = in; ax->out = out; ax->first = first; ax->count = count;
    ax->ksize = ksize; ax->prec = prec;
    ax->lo = xmalloc((size_t)count * sizeof(int));
    ax->n = xmalloc((size_t)count * sizeof(int));
    ax->w = xmalloc((size_t)count * ksize * sizeof(int16_t));
    for (int k = 0; k < count; k++) {
        int n = resize_taps(in, scale, support, invscale, ksize, first + k, &ax->lo[k], w);
        ax->n[k] = n;
        int16_t* wi = ax->w + (size_t)k * ksize;
        for (int j = 0; j < ksize; j++) {
            double v = (j < n) ? w[j] * (double)(1 << prec) : 0.0; // exact (power of 2)
            wi[j] = (int16_t)(v < 0 ? (int)(v - 0.5) : (int)(v + 0.5)); // half away from 0
        }
    }
    free(w);
}

static void resize_axis_free(ResizeAxis* ax) {
    free(ax->lo); free(ax->n); free(ax->w);
    memset(ax, 0, sizeof(*ax));
}

// Rounds the fixed-point sum back to a byte: +0.5, floor shift, saturate.
static inline uint8_t resize_sat8(int32_t acc, int prec) {
    int32_t v = acc >> prec; // arithmetic shift = floor (gcc/clang on every target we use)
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// One plane: src (sh, sw) resized to (dh, dw) but only the window
// [y0, y0+ch) x [x0, x0+cw) of that result is written to dst (ch, cw).
// tmp needs sh*cw bytes. Equal to resizing fully then cropping, because every
// output sample depends only on its own taps.
static void resize_plane_window(const uint8_t* src, int sw, int sh, int dw, int dh,
                                int x0, int y0, int cw, int ch, uint8_t* dst, uint8_t* tmp) {
    ResizeAxis ax = {0}, ay = {0};
    int do_h = (dw != sw), do_v = (dh != sh);
    // horizontal: src (sh, sw) -> tmp (sh, cw), only the rows the vertical pass reads
    int r0 = 0, r1 = sh;
    if (do_v) {
        resize_axis_build(&ay, sh, dh, y0, ch);
        r0 = ay.lo[0];
        r1 = ay.lo[ch - 1] + ay.n[ch - 1];
    } else {
        r0 = y0; r1 = y0 + ch;
    }
    if (do_h) {
        resize_axis_build(&ax, sw, dw, x0, cw);
        int32_t half = 1 << (ax.prec - 1);
        for (int y = r0; y < r1; y++) {
            const uint8_t* s = src + (size_t)y * sw;
            uint8_t* t = tmp + (size_t)y * cw;
            for (int x = 0; x < cw; x++) {
                const uint8_t* sp = s + ax.lo[x];
                const int16_t* wp = ax.w + (size_t)x * ax.ksize;
                int32_t acc = half;
                for (int k = 0; k < ax.n[x]; k++) acc += (int32_t)sp[k] * wp[k];
                t[x] = resize_sat8(acc, ax.prec);
            }
        }
    } else {
        for (int y = r0; y < r1; y++) memcpy(tmp + (size_t)y * cw, src + (size_t)y * sw + x0, (size_t)cw);
    }
    // vertical: tmp (sh, cw) -> dst (ch, cw)
    if (do_v) {
        int32_t half = 1 << (ay.prec - 1);
        for (int y = 0; y < ch; y++) {
            const int16_t* wp = ay.w + (size_t)y * ay.ksize;
            const uint8_t* t0 = tmp + (size_t)ay.lo[y] * cw;
            uint8_t* d = dst + (size_t)y * cw;
            for (int x = 0; x < cw; x++) {
                int32_t acc = half;
                for (int k = 0; k < ay.n[y]; k++) acc += (int32_t)t0[(size_t)k * cw + x] * wp[k];
                d[x] = resize_sat8(acc, ay.prec);
            }
        }
    } else {
        memcpy(dst, tmp + (size_t)y0 * cw, (size_t)ch * cw);
    }
    resize_axis_free(&ax);
    resize_axis_free(&ay);
}

void resize_plane_u8(const uint8_t* src, int sw, int sh, uint8_t* dst, int dw, int dh) {
    uint8_t* tmp = xmalloc((size_t)sh * dw);
    resize_plane_window(src, sw, sh, dw, dh, 0, 0, dw, dh, dst, tmp);
    free(tmp);
}

void resize_rgb_u8(const uint8_t* src, int sw, int sh, uint8_t* dst, int dw, int dh) {
    for (int c = 0; c < 3; c++)
        resize_plane_u8(src + (size_t)c * sw * sh, sw, sh, dst + (size_t)c * dw * dh, dw, dh);
}

// Target size of the shortest-edge resize (transformers get_resize_output_image_size
// with default_to_square=False): the short side becomes S, the long side
// int(S*long/short) with an exact integer product and a float64 division.
static void shortest_edge_size(int w, int h, int S, int* nw, int* nh) {
    int shortside = w < h ? w : h, longside = w < h ? h : w;
    int newlong = (int)((double)((int64_t)S * longside) / (double)shortside);
    if (w <= h) { *nw = S; *nh = newlong; }
    else        { *nh = S; *nw = newlong; }
}

void resize_crop_rgb_u8(const uint8_t* rgb, int w, int h, int S, uint8_t* out) {
    int nw, nh;
    shortest_edge_size(w, h, S, &nw, &nh);
    // center crop, transformers >= 4.57: int((n - S) / 2.0) = floor for n >= S
    // (4.52-4.56 rounded half to even instead; see doc/preprocessing.md, "Crop and normalize")
    int x0 = (nw - S) / 2, y0 = (nh - S) / 2;
    uint8_t* tmp = xmalloc((size_t)h * S);
    for (int c = 0; c < 3; c++)
        resize_plane_window(rgb + (size_t)c * w * h, w, h, nw, nh, x0, y0, S, S,
                            out + (size_t)c * S * S, tmp);
    free(tmp);
}

// ----------------------------------------------------------------------------
// Normalization (doc/preprocessing.md, "Crop and normalize")
//
// transformers fuses rescale and normalize: M = f32(mean) * 255, S = f32(std) * 255
// (float32 products; 255 = 1/rescale_factor exactly), then per element
// (float(u8) - M) / S, a float32 subtract and a float32 true division. Only
// 3 x 256 results exist, so they are tabulated.

void normalize_table(float table[3][256], const float mean[3], const float std[3]) {
    for (int c = 0; c < 3; c++) {
        float m = mean[c] * 255.0f, s = std[c] * 255.0f;
        for (int u = 0; u < 256; u++) {
            float d = (float)u - m;
            table[c][u] = d / s;
        }
    }
}

// ----------------------------------------------------------------------------
// YUV4MPEG2 header
//
// "YUV4MPEG2" then space-separated tags up to '\n': W<width> H<height> (required),
// F<n:d> frame rate, I<p|t|b|m|?> interlacing, A<n:d> pixel aspect, C<chroma>,
// X<vendor> (XCOLORRANGE=FULL|LIMITED is used; XYSCSS=... names the chroma when
// C is missing; the rest are ignored), unknown tags ignored. Each frame is a
// "FRAME" line (possibly with parameters) then the planes Y, Cb, Cr (and alpha
// for 444alpha), row-major, no padding. Samples are bytes for 8-bit formats and
// 16-bit little-endian words (value in the low bits) for p9..p16 and mono9..16.

typedef struct {
    int width, height;
    int sx, sy;           // chroma subsampling as shifts: 4:2:0 -> 1,1, 4:2:2 -> 1,0, 4:1:1 -> 2,0
    int n_planes;         // 1 mono, 3 YUV, 4 YUV + alpha (alpha ignored)
    int depth;            // bits per sample, 8..16
    int full_range;       // 1 if XCOLORRANGE=FULL (or mono without XCOLORRANGE), else 0
    char chroma[16];      // the C tag as written (for messages)
    int fps_n, fps_d;     // F tag (0:0 if absent)
    int aspect_n, aspect_d; // A tag (0:0 if absent)
    char interlace;       // I tag ('?' if absent)
    int cw, ch;           // chroma plane size: ceil(W / 2^sx), ceil(H / 2^sy)
    size_t frame_bytes;   // bytes of one frame's planes (without its FRAME line)
} Y4mInfo;

// Known C tags. The 420 variants differ only in chroma siting, which swscale
// does not use for this conversion (ffmpeg 5.1), so they decode the same.
static const struct { const char* name; int sx, sy, planes, depth; } y4m_chromas[] = {
    {"420jpeg", 1, 1, 3, 8}, {"420mpeg2", 1, 1, 3, 8}, {"420paldv", 1, 1, 3, 8},
    {"420", 1, 1, 3, 8}, {"411", 2, 0, 3, 8}, {"422", 1, 0, 3, 8}, {"444", 0, 0, 3, 8},
    {"444alpha", 0, 0, 4, 8}, {"mono", 0, 0, 1, 8},
    {"420p9", 1, 1, 3, 9}, {"422p9", 1, 0, 3, 9}, {"444p9", 0, 0, 3, 9},
    {"420p10", 1, 1, 3, 10}, {"422p10", 1, 0, 3, 10}, {"444p10", 0, 0, 3, 10},
    {"420p12", 1, 1, 3, 12}, {"422p12", 1, 0, 3, 12}, {"444p12", 0, 0, 3, 12},
    {"420p14", 1, 1, 3, 14}, {"422p14", 1, 0, 3, 14}, {"444p14", 0, 0, 3, 14},
    {"420p16", 1, 1, 3, 16}, {"422p16", 1, 0, 3, 16}, {"444p16", 0, 0, 3, 16},
    {"mono9", 0, 0, 1, 9}, {"mono10", 0, 0, 1, 10}, {"mono12", 0, 0, 1, 12},
    {"mono16", 0, 0, 1, 16},
};

static int y4m_find_chroma(const char* tok, size_t len, int upper) {
    for (size_t i = 0; i < sizeof(y4m_chromas) / sizeof(y4m_chromas[0]); i++) {
        const char* nm = y4m_chromas[i].name;
        if (strlen(nm) != len) continue;
        size_t j = 0;
        for (; j < len; j++) {
            char c = tok[j];
            if (upper && c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a'); // XYSCSS=420P10
            if (c != nm[j]) break;
        }
        if (j == len) return (int)i;
    }
    return -1;
}

// Parses a strictly positive decimal integer of at most 9 digits (no sign).
static int y4m_parse_int(const char* s, size_t len, int* out) {
    if (len == 0 || len > 9) return 0;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

// "n:d" with two non-negative integers.
static int y4m_parse_ratio(const char* s, size_t len, int* n, int* d) {
    const char* colon = memchr(s, ':', len);
    if (!colon) return 0;
    size_t l1 = (size_t)(colon - s), l2 = len - l1 - 1;
    if (l1 == 1 && s[0] == '0') *n = 0; else if (!y4m_parse_int(s, l1, n)) return 0;
    if (l2 == 1 && colon[1] == '0') *d = 0; else if (!y4m_parse_int(colon + 1, l2, d)) return 0;
    return 1;
}

// line: the header line without its '\n' (NUL-terminated). Dies on errors.
static void y4m_parse_header(const char* path, const char* line, Y4mInfo* y) {
    memset(y, 0, sizeof(*y));
    y->interlace = '?';
    if (strncmp(line, "YUV4MPEG2", 9) != 0 || (line[9] != ' ' && line[9] != '\0'))
        fatal("%s: not a YUV4MPEG2 file (bad magic; raw RGB24 needs -W and -H)", path);
    int ci = -1, alt_ci = -1, range = -1; // range: -1 unspecified, 0 limited, 1 full
    int have_w = 0, have_h = 0;
    const char* p = line + 9;
    while (*p) {
        while (*p == ' ') p++;
        if (!*p) break;
        const char* tok = p;
        while (*p && *p != ' ') p++;
        size_t len = (size_t)(p - tok);
        const char* val = tok + 1;
        size_t vlen = len - 1;
        switch (tok[0]) {
        case 'W':
            if (!y4m_parse_int(val, vlen, &y->width)) fatal("%s: bad width tag '%.*s' in Y4M header", path, (int)len, tok);
            have_w = 1;
            break;
        case 'H':
            if (!y4m_parse_int(val, vlen, &y->height)) fatal("%s: bad height tag '%.*s' in Y4M header", path, (int)len, tok);
            have_h = 1;
            break;
        case 'C':
            ci = y4m_find_chroma(val, vlen, 0);
            if (ci < 0) fatal("%s: unsupported Y4M chroma format '%.*s'", path, (int)vlen, val);
            break;
        case 'I':
            if (vlen != 1 || !strchr("ptbm?", val[0])) fatal("%s: bad interlace tag '%.*s' in Y4M header", path, (int)len, tok);
            y->interlace = val[0];
            break;
        case 'F':
            if (!y4m_parse_ratio(val, vlen, &y->fps_n, &y->fps_d)) fatal("%s: bad frame rate tag '%.*s' in Y4M header", path, (int)len, tok);
            break;
        case 'A':
            if (!y4m_parse_ratio(val, vlen, &y->aspect_n, &y->aspect_d)) fatal("%s: bad aspect tag '%.*s' in Y4M header", path, (int)len, tok);
            break;
        case 'X':
            if (vlen == 15 && memcmp(val, "COLORRANGE=FULL", 15) == 0) range = 1;
            if (vlen == 18 && memcmp(val, "COLORRANGE=LIMITED", 18) == 0) range = 0;
            if (vlen > 6 && memcmp(val, "YSCSS=", 6) == 0) alt_ci = y4m_find_chroma(val + 6, vlen - 6, 1);
            break;
        default: // unknown tags are ignored, as the format asks
            break;
        }
    }
    if (!have_w || !have_h) fatal("%s: Y4M header lacks the %s tag", path, have_w ? "H (height)" : "W (width)");
    if (y->width < 1 || y->height < 1 || y->width > VIDEO_MAX_DIM || y->height > VIDEO_MAX_DIM)
        fatal("%s: Y4M frame size %dx%d out of range (1..%d)", path, y->width, y->height, VIDEO_MAX_DIM);
    if (ci < 0) ci = (alt_ci >= 0) ? alt_ci : 0; // the format's default is 420jpeg
    y->sx = y4m_chromas[ci].sx; y->sy = y4m_chromas[ci].sy;
    y->n_planes = y4m_chromas[ci].planes; y->depth = y4m_chromas[ci].depth;
    snprintf(y->chroma, sizeof(y->chroma), "%s", y4m_chromas[ci].name);
    // Range: ffmpeg tags frames from XCOLORRANGE; without it swscale assumes
    // limited range for YUV but full range for gray (its handle_jpeg()).
    y->full_range = (range >= 0) ? range : (y->n_planes == 1);
    y->cw = -((-y->width) >> y->sx);  // ceil(W / 2^sx)
    y->ch = -((-y->height) >> y->sy); // ceil(H / 2^sy)
    size_t bps = y->depth > 8 ? 2 : 1;
    size_t luma = (size_t)y->width * y->height, chroma = (size_t)y->cw * y->ch;
    size_t samples = luma + (y->n_planes >= 3 ? 2 * chroma : 0) + (y->n_planes == 4 ? luma : 0);
    y->frame_bytes = samples * bps; // <= 4 * 16384^2 * 2 = 2 GiB, fits in size_t
}

// ----------------------------------------------------------------------------
// YUV -> RGB, swscale-exact
//
// ffmpeg 5.1 swscale with accurate_rnd + full_chroma_int + bitexact, same size in
// and out, runs its generic scaled path with 1-tap filters:
//  * input sample v of depth d -> 15-bit  v15 = min((v << 14) >> (d - 1), 32767)
//    (hScale8To15 / hScale16To15 with a unit filter: 8-bit v<<7, 10-bit v<<5,
//    16-bit v>>1). This is the whole high-bit-depth rule: deeper samples keep
//    their extra precision until the final >> 22, nothing is rounded to 8 bits first.
//  * chroma is point-sampled: output column x reads chroma column
//    (floor(xinc/2) + x*xinc) >> 16 with xinc = ((cw << 16) + W/2) / W (same for
//    rows). For even sizes this is x >> sx; for odd ones it drifts (333 wide:
//    columns 167, 169, ... read (x+1)/2), as ffmpeg does.
//  * yuv2rgb_write_full: Y = (v15y*4 - yoff) * cy + 2^21, U = (v15u - 2^14) * 4,
//    R = Y + V*crv, G = Y + V*cgv + U*cgu, B = Y + U*cbu in 32-bit unsigned
//    arithmetic read back as int, clipped to 0..2^30-1 if any of bits 30/31 is set,
//    then >> 22. (The wrap means a very bright pixel with a huge U can come out
//    B = 0 in ffmpeg; we reproduce it.)
//  * coefficients from ff_yuv2rgb_coeffs[BT.601] {104597, 132201, 25675, 53279}
//    as in ff_yuv2rgb_c_init_tables (contrast = saturation = 1<<16, brightness 0).
//  * gray input: U = V = 0, so R = G = B.

typedef struct {
    int32_t yoff, cy, crv, cgv, cgu, cbu;
} YuvCoeffs;

static int32_t yuv_round16(int64_t f) { // swscale roundToInt16
    int64_t r = (f + (1 << 15)) >> 16;
    return (int32_t)(r < -0x8000 ? -0x8000 : r > 0x7fff ? 0x7fff : r);
}

static YuvCoeffs yuv_coeffs(int full_range) {
    int64_t crv = 104597, cbu = 132201, cgu = -25675, cgv = -53279; // BT.601 inverse table
    int64_t cy = 1 << 16, oy = 0;
    if (!full_range) {
        cy = (cy * 255) / 219;
        oy = 16 << 16;
    } else {
        crv = (crv * 224) / 255; cbu = (cbu * 224) / 255; // C division truncates toward 0
        cgu = (cgu * 224) / 255; cgv = (cgv * 224) / 255;
    }
    // contrast/saturation = 1<<16 leave cy, crv, ... unchanged: (x*65536*65536)>>32 = x
    YuvCoeffs k;
    k.cy = yuv_round16(cy * (1 << 13));
    k.yoff = yuv_round16(oy * (1 << 9));
    k.crv = yuv_round16(crv * (1 << 13));
    k.cgv = yuv_round16(cgv * (1 << 13));
    k.cgu = yuv_round16(cgu * (1 << 13));
    k.cbu = yuv_round16(cbu * (1 << 13));
    return k;
}

static inline uint8_t yuv_out8(uint32_t v, int clip) {
    int32_t s = (int32_t)v; // two's complement, as ffmpeg's int R, G, B
    if (clip) s = (s & ~((1 << 30) - 1)) ? ((~s) >> 31) & ((1 << 30) - 1) : s; // av_clip_uintp2(s, 30)
    return (uint8_t)(s >> 22);
}

// swscale's point-sampling source index for each of dst outputs from src inputs.
static void yuv_point_map(int src, int dst, int* map) {
    int64_t inc = (((int64_t)src << 16) + (dst >> 1)) / dst;
    int64_t pos = (128 * inc) >> 8; // ((dstPos*xInc)>>8) - ((srcPos*0x8000)>>7) + (1<<15), both pos 128
    pos -= (128 * 0x8000LL) >> 7;
    for (int i = 0; i < dst; i++) {
        int64_t xx = (pos + (1 << 15)) >> 16;
        map[i] = (int)(xx < 0 ? 0 : xx > src - 1 ? src - 1 : xx);
        pos += inc;
    }
}

// Reads sample i of a plane as swscale's 15-bit intermediate.
static inline int32_t yuv_v15(const uint8_t* plane, size_t i, int depth) {
    int32_t v = depth > 8 ? (int32_t)plane[2 * i] | (int32_t)plane[2 * i + 1] << 8 : plane[i];
    v = (v << 14) >> (depth - 1);
    return v > 32767 ? 32767 : v;
}

// frame: one frame's planes as in the file; rgb: (3, H, W) planar output.
static void yuv_to_rgb(const Y4mInfo* y, const uint8_t* frame, uint8_t* rgb) {
    int W = y->width, H = y->height, d = y->depth;
    size_t bps = d > 8 ? 2 : 1;
    const uint8_t* py = frame;
    const uint8_t* pu = py + (size_t)W * H * bps;
    const uint8_t* pv = pu + (size_t)y->cw * y->ch * bps;
    YuvCoeffs k = yuv_coeffs(y->full_range);
    int* mapx = xmalloc((size_t)W * sizeof(int));
    int* mapy = xmalloc((size_t)H * sizeof(int));
    yuv_point_map(y->cw, W, mapx);
    yuv_point_map(y->ch, H, mapy);
    size_t plane = (size_t)W * H;
    for (int r = 0; r < H; r++) {
        size_t crow = (size_t)mapy[r] * y->cw;
        for (int x = 0; x < W; x++) {
            int32_t Y = yuv_v15(py, (size_t)r * W + x, d) * 4 - k.yoff;
            int32_t U = 0, V = 0;
            if (y->n_planes >= 3) {
                U = (yuv_v15(pu, crow + mapx[x], d) - (128 << 7)) * 4;
                V = (yuv_v15(pv, crow + mapx[x], d) - (128 << 7)) * 4;
            }
            uint32_t Yc = (uint32_t)Y * (uint32_t)k.cy + (1u << 21);
            uint32_t R = Yc + (uint32_t)V * (uint32_t)k.crv;
            uint32_t G = Yc + (uint32_t)V * (uint32_t)k.cgv + (uint32_t)U * (uint32_t)k.cgu;
            uint32_t B = Yc + (uint32_t)U * (uint32_t)k.cbu;
            int clip = ((R | G | B) & 0xC0000000u) != 0;
            size_t o = (size_t)r * W + x;
            rgb[o] = yuv_out8(R, clip);
            rgb[plane + o] = yuv_out8(G, clip);
            rgb[2 * plane + o] = yuv_out8(B, clip);
        }
    }
    free(mapx);
    free(mapy);
}

// ----------------------------------------------------------------------------
// Frame sources: Y4M or raw RGB24, from a seekable file or a stream
//
// Seekable file: the frame count comes from the file size when every FRAME
// line is the plain 6-byte "FRAME\n" (then (size - header) is a multiple of
// 6 + frame_bytes); the FRAME line of each frame read is checked, and of the
// last frame too, and on any surprise (frame parameters, truncation, junk) the
// file is scanned: FRAME line by FRAME line, seeking over the planes, without
// decoding them. Only the sampled frames are ever read and converted.
//
// Stream (a pipe on stdin): the count is unknown until EOF, so every frame is
// converted, resized and cropped as it arrives and its (3, S, S) uint8 result
// is spooled to a tmpfile(); the sampled ones are read back at the end. Cost:
// decode + resize time for every frame (a few ms per 1080p frame), 3*S*S bytes
// of temporary disk per frame (339 KB at S=336: ~1 GB per 3000 frames), and
// one frame of RAM. A regular file redirected to stdin is seekable and takes
// the file path.

// Does the name end like a compressed video container? (Only for a more helpful error message.)
static int video_is_container(const char* path) {
    static const char* const ext[] = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg",
                                      ".flv", ".wmv", ".ts", ".3gp", ".gif"};
    size_t n = strlen(path);
    for (size_t i = 0; i < sizeof(ext) / sizeof(ext[0]); i++) {
        size_t k = strlen(ext[i]);
        if (n > k && strcasecmp(path + n - k, ext[i]) == 0) return 1;
    }
    return 0;
}

// A stream is spooled to disk frame by frame until it ends: an endless one (cat /dev/zero, a camera)
// would fill the disk. The cap, 18,000 frames (10 minutes at 30 fps, 6.1 GB of spool at S = 336), ends
// such a stream with an error instead; --max-stream-frames raises it.
#define VIDEO_MAX_STREAM_FRAMES 18000
static int video_max_stream_frames = VIDEO_MAX_STREAM_FRAMES;
// Called with the number of frames read so far while a stream is read (NULL: nothing). The CLI sets
// it to show progress: a long pipe is otherwise silent for as long as it takes to read.
static void (*video_stream_progress)(int frames_read);

typedef struct {
    const char* path;     // for messages
    FILE* f;
    int is_stdin;
    int raw;              // 1: headerless RGB24, 0: Y4M
    Y4mInfo y;            // Y4M format (for raw: width, height, frame_bytes only)
    long data_start;      // offset of the first frame (after the Y4M header line)
    long file_size;       // seekable sources only
    long* offsets;        // (total) payload offset of each frame, after a scan; NULL if regular
    int total;
} VideoSource;

#define Y4M_MAX_LINE 4096 // longest header or FRAME line accepted

// Reads one line (up to '\n', which is dropped) into buf, which holds cap bytes.
// Returns its length, -1 at EOF before any byte. Dies on a line that does not
// fit or on EOF inside the line.
static int video_read_line(VideoSource* s, char* buf, int cap, const char* what) {
    int n = 0, c;
    while ((c = fgetc(s->f)) != EOF) {
        if (c == '\n') { buf[n] = '\0'; return n; }
        if (n >= cap - 1) fatal("%s: %s line longer than %d bytes", s->path, what, Y4M_MAX_LINE - 1);
        buf[n++] = (char)c;
    }
    if (ferror(s->f)) fatal("%s: read error", s->path);
    if (n == 0) return -1;
    fatal("%s: truncated %s line (no newline before end of file)", s->path, what);
    return -1;
}

static void video_check_frame_line(VideoSource* s, const char* line, int index) {
    if (strncmp(line, "FRAME", 5) != 0 || (line[5] != '\0' && line[5] != ' '))
        fatal("%s: frame %d: expected a FRAME line, found '%.20s'", s->path, index, line);
}

static void video_read_exact(VideoSource* s, uint8_t* buf, size_t n, int index) {
    size_t got = fread(buf, 1, n, s->f);
    if (got != n) {
        if (ferror(s->f)) fatal("%s: read error in frame %d", s->path, index);
        fatal("%s: truncated frame %d: %zu of %zu bytes", s->path, index, got, n);
    }
}

// Scans all FRAME lines of a seekable Y4M, recording payload offsets.
static void y4m_scan(VideoSource* s) {
    char line[Y4M_MAX_LINE];  // on the stack: an error exit leaks nothing
    int cap = 64, n = 0;
    // The offsets live in s from the start, so that an error exit (fatal) leaves nothing unreachable.
    free(s->offsets);
    s->offsets = xmalloc((size_t)cap * sizeof(long));
    if (fseek(s->f, s->data_start, SEEK_SET) != 0) fatal("%s: seek failed", s->path);
    for (;;) {
        if (video_read_line(s, line, Y4M_MAX_LINE, "FRAME") < 0) break;
        video_check_frame_line(s, line, n);
        long pos = ftell(s->f);
        if ((size_t)(s->file_size - pos) < s->y.frame_bytes || pos > s->file_size)
            fatal("%s: truncated frame %d: %ld of %zu bytes", s->path, n, s->file_size - pos, s->y.frame_bytes);
        if (n == cap) {
            if (cap > (1 << 29)) fatal("%s: too many frames", s->path);
            cap *= 2;
            s->offsets = xrealloc(s->offsets, (size_t)cap * sizeof(long));
        }
        s->offsets[n++] = pos;
        if (fseek(s->f, pos + (long)s->y.frame_bytes, SEEK_SET) != 0) fatal("%s: seek failed", s->path);
    }
    s->total = n;
}

// Opens path, reads the Y4M header if any, and on a seekable source counts frames.
// Returns 1 if seekable, 0 for a stream (total unknown).
static int video_open(VideoSource* s, const char* path, int raw_w, int raw_h) {
    memset(s, 0, sizeof(*s));
    s->path = path;
    s->is_stdin = strcmp(path, "-") == 0;
    s->f = s->is_stdin ? stdin : fopen(path, "rb");
    if (!s->f) fatal("%s: cannot open file", path);
    s->raw = raw_w > 0 || raw_h > 0;
    if (s->raw) {
        if (raw_w < 1 || raw_h < 1 || raw_w > VIDEO_MAX_DIM || raw_h > VIDEO_MAX_DIM)
            fatal("%s: raw RGB24 size %dx%d out of range (1..%d, give both -W and -H)", path, raw_w, raw_h, VIDEO_MAX_DIM);
        s->y.width = raw_w; s->y.height = raw_h;
        s->y.frame_bytes = (size_t)raw_w * raw_h * 3;
    } else {
        // The magic is checked before reading a whole line so that a binary
        // file gets "bad magic" rather than "line too long".
        char magic[10];
        size_t got = fread(magic, 1, 9, s->f);
        if (got != 9 || memcmp(magic, "YUV4MPEG2", 9) != 0)
            fatal("%s: %s", path, got == 0 ? "empty input (expected a YUV4MPEG2 header)"
                                  : video_is_container(path)
                                  ? "a compressed video: convert it to YUV4MPEG2 with ffmpeg, e.g. "
                                    "ffmpeg -i in.mp4 -f yuv4mpegpipe - | ./llava MODEL.bin -v - ..."
                                  : "not a YUV4MPEG2 file (bad magic; raw RGB24 needs -W and -H)");
        char line[Y4M_MAX_LINE];  // on the stack: an error exit leaks nothing
        memcpy(line, "YUV4MPEG2", 9);
        if (video_read_line(s, line + 9, Y4M_MAX_LINE - 9, "header") < 0)
            fatal("%s: truncated Y4M header", path);
        y4m_parse_header(path, line, &s->y);
    }
    long here = ftell(s->f);
    s->data_start = here < 0 ? 0 : here;
    if (here < 0 || fseek(s->f, 0, SEEK_END) != 0) return 0; // a pipe
    s->file_size = ftell(s->f);
    if (s->file_size < 0 || fseek(s->f, s->data_start, SEEK_SET) != 0) return 0;
    long data = s->file_size - s->data_start;
    size_t fb = s->y.frame_bytes;
    if (s->raw) {
        if ((size_t)data % fb != 0)
            fatal("%s: raw RGB24 size %ld bytes is not a multiple of the frame size %dx%dx3 = %zu", path,
                      data, s->y.width, s->y.height, fb);
        if ((size_t)data / fb > (size_t)1 << 30) fatal("%s: too many frames", path);
        s->total = (int)((size_t)data / fb);
    } else if ((size_t)data % (fb + 6) == 0 && (size_t)data / (fb + 6) <= (size_t)1 << 30) {
        s->total = (int)((size_t)data / (fb + 6)); // provisional: checked frame by frame
    } else {
        y4m_scan(s);
    }
    if (s->total == 0) fatal("%s: no frames", path);
    return 1;
}

// Is there a plain "FRAME\n" where frame `index` starts if no FRAME line has
// parameters?
static int y4m_plain_frame_line_at(VideoSource* s, int index) {
    char head[6];
    long pos = s->data_start + (long)((size_t)index * (s->y.frame_bytes + 6));
    return fseek(s->f, pos, SEEK_SET) == 0 && fread(head, 1, 6, s->f) == 6 && memcmp(head, "FRAME\n", 6) == 0;
}

// A Y4M counted from its size is trusted only if the first, the last and every
// sampled frame start with a plain FRAME line where the count says; otherwise
// (frame parameters, junk, truncation) the file is scanned. Then idx (room for
// n_frames+1) gets the final sample; returns its length.
static int video_sample_seekable(VideoSource* s, int n_frames, int* idx) {
    if (!s->raw && !s->offsets) {
        int F = video_frame_list(s->total, n_frames, idx);
        for (int k = -2; k < F; k++) {
            int i = k == -2 ? 0 : k == -1 ? s->total - 1 : idx[k];
            if (!y4m_plain_frame_line_at(s, i)) { y4m_scan(s); break; }
        }
        if (s->total == 0) fatal("%s: no frames", s->path);
    }
    return video_frame_list(s->total, n_frames, idx);
}

// Seekable source: reads the planes of frame `index` into buf (frame_bytes).
static void video_read_frame_at(VideoSource* s, int index, uint8_t* buf) {
    long pos;
    if (s->raw) pos = s->data_start + (long)((size_t)index * s->y.frame_bytes);
    else if (s->offsets) pos = s->offsets[index];
    else pos = s->data_start + (long)((size_t)index * (s->y.frame_bytes + 6) + 6);
    if (fseek(s->f, pos, SEEK_SET) != 0) fatal("%s: seek failed", s->path);
    video_read_exact(s, buf, s->y.frame_bytes, index);
}

// Stream: reads the next frame's planes into buf. Returns 0 at a clean EOF.
static int video_read_next(VideoSource* s, uint8_t* buf, int index, char* line) {
    if (s->raw) {
        size_t got = fread(buf, 1, s->y.frame_bytes, s->f);
        if (got == 0 && feof(s->f)) return 0;
        if (got != s->y.frame_bytes) {
            if (ferror(s->f)) fatal("%s: read error in frame %d", s->path, index);
            fatal("%s: raw RGB24 input ends inside frame %d (%zu of %zu bytes): size is not a multiple of the frame size", s->path,
                      index, got, s->y.frame_bytes);
        }
        return 1;
    }
    if (video_read_line(s, line, Y4M_MAX_LINE, "FRAME") < 0) return 0;
    video_check_frame_line(s, line, index);
    video_read_exact(s, buf, s->y.frame_bytes, index);
    return 1;
}

// Planes of one frame -> (3, H, W) planar RGB.
static void video_frame_to_rgb(const VideoSource* s, const uint8_t* buf, uint8_t* rgb) {
    if (!s->raw) { yuv_to_rgb(&s->y, buf, rgb); return; }
    size_t n = (size_t)s->y.width * s->y.height;
    for (size_t i = 0; i < n; i++) {
        rgb[i] = buf[3 * i];
        rgb[n + i] = buf[3 * i + 1];
        rgb[2 * n + i] = buf[3 * i + 2];
    }
}

static void video_close(VideoSource* s) {
    if (s->f && !s->is_stdin) fclose(s->f);
    free(s->offsets);
    memset(s, 0, sizeof(*s));
}

// ----------------------------------------------------------------------------
// load_video

static void video_store(Video* v, int k, const uint8_t* crop, float table[3][256]) {
    size_t ss = (size_t)v->size * v->size;
    float* dst = v->pixels + (size_t)k * 3 * ss;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < ss; i++) dst[c * ss + i] = table[c][crop[c * ss + i]];
}

void load_video(Video* v, const char* path, int raw_w, int raw_h, int n_frames,
                int size, const float mean[3], const float std[3]) {
    memset(v, 0, sizeof(*v));
    if (n_frames < 1 || n_frames > 4096) fatal("%s: number of frames %d out of range (1..4096)", path, n_frames);
    if (size < 2 || size > 4096 || size % 2) fatal("%s: image size %d must be even, 2..4096", path, size);
    float table[3][256];
    normalize_table(table, mean, std);

    VideoSource s;
    int seekable = video_open(&s, path, raw_w, raw_h);
    int W = s.y.width, H = s.y.height, S = size;
    size_t ss3 = (size_t)3 * S * S;
    uint8_t* buf = xmalloc(s.y.frame_bytes);             // one frame as stored
    uint8_t* rgb = xmalloc((size_t)3 * W * H);           // (3, H, W)
    uint8_t* crop = xmalloc(ss3);                        // (3, S, S)
    int* idx = xmalloc((size_t)(n_frames + 1) * sizeof(int));
    v->size = S; // video_store needs it
    v->width = W;
    v->height = H;
    v->indices = idx;

    if (seekable) {
        int F = video_sample_seekable(&s, n_frames, idx);
        v->pixels = xmalloc((size_t)F * ss3 * sizeof(float));
        v->n_frames = F;
        for (int k = 0; k < F; k++) {
            video_read_frame_at(&s, idx[k], buf);
            video_frame_to_rgb(&s, buf, rgb);
            resize_crop_rgb_u8(rgb, W, H, S, crop);
            video_store(v, k, crop, table);
        }
    } else {
        // stream: process every frame, spool the crops, pick at EOF
        FILE* spool = tmpfile();
        if (!spool) fatal("%s: cannot create a temporary file to spool the stream", path);
        char line[Y4M_MAX_LINE];  // on the stack: an error exit leaks nothing
        int total = 0;
        while (video_read_next(&s, buf, total, line)) {
            video_frame_to_rgb(&s, buf, rgb);
            resize_crop_rgb_u8(rgb, W, H, S, crop);
            if (fwrite(crop, 1, ss3, spool) != ss3) fatal("%s: cannot write the temporary spool file (disk full?)", path);
            if (video_stream_progress) video_stream_progress(total + 1);
            if (++total > video_max_stream_frames)
                fatal("%s: the stream has more than %d frames (%.1f GB of temporary spool); raise the limit "
                      "with --max-stream-frames, or cut the video first (ffmpeg -t SECONDS)", path,
                      video_max_stream_frames, (double)video_max_stream_frames * ss3 / 1e9);
        }
        if (total == 0) fatal("%s: no frames", path);
        s.total = total;
        int F = video_frame_list(total, n_frames, idx);
        v->pixels = xmalloc((size_t)F * ss3 * sizeof(float));
        v->n_frames = F;
        for (int k = 0; k < F; k++) {
            if (fseek(spool, (long)((size_t)idx[k] * ss3), SEEK_SET) != 0 || fread(crop, 1, ss3, spool) != ss3)
                fatal("%s: cannot read back the temporary spool file", path);
            video_store(v, k, crop, table);
        }
        fclose(spool);
    }
    v->total_frames = s.total;
    free(buf); free(rgb); free(crop);
    video_close(&s);
}

void free_video(Video* v) {
    free(v->pixels);
    free(v->indices);
    memset(v, 0, sizeof(*v));
}

// ----------------------------------------------------------------------------
// Still images: binary PPM/PGM (P6/P5) and one-frame Y4M
//
// The reference pipeline gives transformers `Image.open(path)` and the image
// processor calls .convert("RGB") on it, so a PPM/PGM is read the way Pillow
// (13.0) reads it:
//  * P6 (RGB) and P5 (gray), maxval 1..65535; samples are 1 byte when
//    maxval < 256, else 2 bytes big-endian. Plain (ASCII) P1-P3, bitmap P4 and
//    PAM (P7) are refused with a hint.
//  * Header: magic, width, height, maxval as decimal tokens separated by
//    whitespace; '#' starts a comment that runs to the end of the line (CR or
//    LF). Exactly one whitespace byte follows maxval, then the raster. Bytes after
//    the raster are ignored (Pillow also reads only the first image of a file).
//  * maxval 255: samples as they are.
//  * P6 with any other maxval, and P5 with maxval < 255: Pillow's "ppm" decoder,
//    out = min(255, round(v / maxval * 255)), float64, Python's round (half to
//    even). For maxval 1, 3, 7, 15, 127 this is an exact multiple (maxval 15:
//    17*v). Samples above maxval (invalid, but Pillow takes them) give 255.
//  * P5 with maxval > 255: Pillow decodes to a 32-bit "I" image scaled to
//    0..65535 (round(v / maxval * 65535)) and convert("RGB") CLIPS that to
//    0..255 rather than scaling it, so everything above 255/65535 of full scale
//    turns white. That is what transformers is given for such a file, so it is
//    what we do; convert a 16-bit PGM to 8 bits first to see the picture.
//  * Gray becomes RGB by repeating the value (Pillow's L->RGB and I->RGB).
// ffmpeg agrees with this for maxval 255 and 2^k-1 <= 255 only: for other 8-bit
// maxvals and 16-bit RGB it differs by 1 level in places (its fixed-point
// scaling), and for 16-bit gray it scales instead of clipping.
//
// A Y4M file is read by the video reader (same header rules and YUV->RGB
// conversion as for -v) and its FIRST frame is the image; later frames are
// ignored. "-" reads either format from stdin.

#define PNM_MAX_TOKEN 9 // digits of a header number (< 10^9)

// The whitespace of the netpbm formats (and of Pillow's reader): space, \t, \n, \v, \f, \r.
static int pnm_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

// A header token, with the stream position kept in *c (the next unread byte).
// Skips whitespace and comments before it; stops at the first byte that is not
// a digit (left in *c). Returns the value, dies on anything else.
static int pnm_read_number(FILE* f, const char* path, int* c, const char* what) {
    for (;;) {
        while (pnm_space(*c)) *c = fgetc(f);
        if (*c != '#') break;
        while (*c != EOF && *c != '\n' && *c != '\r') *c = fgetc(f);
    }
    if (*c == EOF) fatal("%s: PPM/PGM header ends before the %s", path, what);
    if (*c < '0' || *c > '9')
        fatal("%s: bad %s in PPM/PGM header: byte 0x%02x ('%c') is not a digit", path, what, *c,
                  *c >= 32 && *c < 127 ? *c : '?');
    int v = 0, n = 0;
    while (*c >= '0' && *c <= '9') {
        if (++n > PNM_MAX_TOKEN) fatal("%s: %s in PPM/PGM header has more than %d digits", path, what, PNM_MAX_TOKEN);
        v = v * 10 + (*c - '0');
        *c = fgetc(f);
    }
    // a token ends at whitespace, a comment or the end of the file; "12x" is an error
    if (*c != EOF && *c != '#' && !pnm_space(*c))
        fatal("%s: bad %s in PPM/PGM header: byte 0x%02x ('%c') after the number", path, what, *c,
                  *c >= 32 && *c < 127 ? *c : '?');
    return v;
}

// Sample value -> 8-bit level, Pillow's rules above, for every possible stored
// value (256 or 65536 entries: samples above maxval are legal input here).
static uint8_t* pnm_level_table(int maxval, int gray) {
    size_t n = maxval < 256 ? 256 : 65536;
    uint8_t* t = xmalloc(n);
    double out_max = (gray && maxval > 255) ? 65535.0 : 255.0; // Pillow's "I" mode for deep gray
    for (size_t v = 0; v < n; v++) {
        if (maxval == 255 || (gray && maxval == 65535)) { // Pillow's raw decoders: no scaling
            t[v] = (uint8_t)(v > 255 ? 255 : v);
            continue;
        }
        // Python: min(out_max, round(v / maxval * out_max)); rint rounds half to even
        // in the default rounding mode, like Python's round. Two float64 ops and a
        // rounding: nothing for the compiler to contract.
        double x = rint((double)v / (double)maxval * out_max);
        if (x > out_max) x = out_max;
        t[v] = (uint8_t)(x > 255.0 ? 255.0 : x); // the "I" -> RGB clip (a no-op for RGB)
    }
    return t;
}

// After the 2-byte magic "P5"/"P6": header, raster, conversion to planar RGB.
static void pnm_read(Image* im, FILE* f, const char* path, int gray) {
    int c = fgetc(f);
    if (!pnm_space(c) && c != '#')
        fatal("%s: not a PPM/PGM file (no whitespace after the magic number)", path);
    int w = pnm_read_number(f, path, &c, "width");
    int h = pnm_read_number(f, path, &c, "height");
    int maxval = pnm_read_number(f, path, &c, "maxval");
    if (w < 1 || h < 1 || w > VIDEO_MAX_DIM || h > VIDEO_MAX_DIM)
        fatal("%s: image size %dx%d out of range (1..%d)", path, w, h, VIDEO_MAX_DIM);
    if (maxval < 1 || maxval > 65535) fatal("%s: maxval %d out of range (1..65535)", path, maxval);
    // the raster starts after exactly one whitespace byte (c holds it)
    if (!pnm_space(c))
        fatal("%s: PPM/PGM header: expected one whitespace byte between maxval and the pixel data", path);

    int ch = gray ? 1 : 3, bps = maxval < 256 ? 1 : 2;
    size_t np = (size_t)w * h, bytes = np * ch * bps;
    // On a file, check the size before allocating: a short file must not cost
    // a 1.6 GB buffer first.
    long here = ftell(f);
    if (here >= 0 && fseek(f, 0, SEEK_END) == 0) {
        long end = ftell(f);
        if (end >= 0 && (size_t)(end - here) < bytes)
            fatal("%s: truncated pixel data: %ld of %zu bytes for %dx%d %s, maxval %d", path, end - here, bytes, w, h,
                      gray ? "gray" : "RGB", maxval);
        if (fseek(f, here, SEEK_SET) != 0) fatal("%s: seek failed", path);
    }
    uint8_t* raw = xmalloc(bytes);
    size_t got = fread(raw, 1, bytes, f);
    if (got != bytes) {
        if (ferror(f)) fatal("%s: read error", path);
        fatal("%s: truncated pixel data: %zu of %zu bytes for %dx%d %s, maxval %d", path, got, bytes, w, h,
                  gray ? "gray" : "RGB", maxval);
    }
    uint8_t* lut = pnm_level_table(maxval, gray);
    im->width = w;
    im->height = h;
    im->rgb = xmalloc(3 * np);
    for (size_t i = 0; i < np; i++)
        for (int k = 0; k < 3; k++) {
            size_t s = i * ch + (gray ? 0 : k); // sample index in the file (HWC)
            unsigned v = bps == 1 ? raw[s] : (unsigned)raw[2 * s] << 8 | raw[2 * s + 1];
            im->rgb[(size_t)k * np + i] = lut[v];
        }
    free(lut);
    free(raw);
}

// After the 2 bytes "YU": the rest of the Y4M header, then the first frame.
static void y4m_image_read(Image* im, FILE* f, const char* path, int is_stdin) {
    VideoSource s;
    memset(&s, 0, sizeof(s));
    s.path = path;
    s.f = f;
    s.is_stdin = is_stdin;
    char line[Y4M_MAX_LINE];  // on the stack: an error exit leaks nothing
    memcpy(line, "YU", 2);
    if (fread(line + 2, 1, 7, f) != 7 || memcmp(line, "YUV4MPEG2", 9) != 0)
        fatal("%s: unknown image format (expected a binary PPM/PGM, P6/P5, or a Y4M file)", path);
    if (video_read_line(&s, line + 9, Y4M_MAX_LINE - 9, "header") < 0) fatal("%s: truncated Y4M header", path);
    y4m_parse_header(path, line, &s.y);
    uint8_t* buf = xmalloc(s.y.frame_bytes);
    if (!video_read_next(&s, buf, 0, line)) fatal("%s: no frames", path);
    im->width = s.y.width;
    im->height = s.y.height;
    im->rgb = xmalloc((size_t)3 * im->width * im->height);
    video_frame_to_rgb(&s, buf, im->rgb);
    free(buf);
}

void load_image(Image* im, const char* path) {
    memset(im, 0, sizeof(*im));
    int is_stdin = strcmp(path, "-") == 0;
    FILE* f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) fatal("%s: cannot open file", path);
    int c0 = fgetc(f), c1 = fgetc(f);
    if (c0 == EOF) fatal("%s: empty input (expected a PPM/PGM or Y4M image)", path);
    if (c0 == 'P' && (c1 == '6' || c1 == '5')) {
        pnm_read(im, f, path, c1 == '5');
    } else if (c0 == 'P' && c1 >= '1' && c1 <= '4') {
        fatal("%s: P%c (%s) is not supported: only binary P6 (RGB) and P5 (gray); "
              "convert with `ffmpeg -i in -pix_fmt rgb24 out.ppm`", path, c1, c1 == '4' || c1 == '1' ? "bitmap" : "ASCII");
    } else if (c0 == 'Y' && c1 == 'U') {
        y4m_image_read(im, f, path, is_stdin);
    } else {
        fatal("%s: unknown image format (expected a binary PPM/PGM, P6/P5, or a Y4M file; "
              "convert with `ffmpeg -i in.jpg -pix_fmt rgb24 out.ppm`)", path);
    }
    if (!is_stdin) fclose(f);
}

void free_image(Image* im) {
    free(im->rgb);
    memset(im, 0, sizeof(*im));
}

// ----------------------------------------------------------------------------
// Anyres image preprocessing (LLaVA-NeXT; doc/preprocessing.md, "Anyres tiles"; the model side in
// doc/model.md, "Images (anyres)")
//
// transformers 5.x LlavaNextImageProcessor (the torchvision backend, the
// default class) does, for an image of W x H and tile size S (336):
//   1. select_best_resolution: the pinpoint (th, tw) that keeps the most of the
//      image's pixels when it is fitted inside, ties to the least waste, then
//      to the earlier pinpoint;
//   2. resize (aspect kept) to get_patch_output_size: the side that limits the
//      fit becomes tw or th, the other ceil(side * scale) (float64);
//   3. zero-pad (uint8 black) to th x tw, centred, the odd pixel right/bottom;
//   4. cut into (th/S) x (tw/S) tiles, row-major;
//   5. the base image: the original resized straight to S x S (aspect not kept);
//   6. [base] + tiles, each normalized like a video frame.
// Resizes are the same torch uint8 antialiased bicubic as for video frames. The
// model later stitches the tiles' features back into one grid, crops the rows or
// columns that only saw padding (unpad_image) and ends every row with a learned
// newline vector; image_num_tokens counts the result as the processor does.

// Sizes are at most 16384 and pinpoints at most 64*S, so the int64 products cannot overflow.
void select_best_resolution(int h, int w, const int32_t* pinpoints, int n_pinpoints, int* best_h, int* best_w) {
    int64_t max_eff = 0, min_waste = INT64_MAX;
    *best_h = *best_w = 0;
    for (int i = 0; i < n_pinpoints; i++) {
        int ph = pinpoints[2 * i], pw = pinpoints[2 * i + 1];
        double sw = (double)pw / w, sh = (double)ph / h;
        double scale = sw < sh ? sw : sh; // Python min(): the first on a tie, the same value
        int64_t dw = (int64_t)((double)w * scale), dh = (int64_t)((double)h * scale); // int() truncates
        int64_t eff = dw * dh < (int64_t)w * h ? dw * dh : (int64_t)w * h;
        int64_t waste = (int64_t)pw * ph - eff;
        // An image so thin that it keeps no pixel anywhere (1 x 2000) has eff 0 for
        // every pinpoint; HF then still takes the first (0 == 0 and waste < inf).
        if (eff > max_eff || (eff == max_eff && waste < min_waste)) {
            max_eff = eff;
            min_waste = waste;
            *best_h = ph;
            *best_w = pw;
        }
    }
}

void patch_output_size(int h, int w, int th, int tw, int* new_h, int* new_w) {
    double sw = (double)tw / w, sh = (double)th / h;
    if (sw < sh) {
        *new_w = tw;
        double c = ceil((double)h * sw); // e.g. 400 * (336/300) = 448.00000000000006 -> 449
        *new_h = c < th ? (int)c : th;
    } else {
        *new_h = th;
        double c = ceil((double)w * sh);
        *new_w = c < tw ? (int)c : tw;
    }
}

// Python's int(round(x, 7)) for x >= 0. round(x, 7) rounds the exact binary
// value of x to 7 decimals (half to even), so the integer part goes up exactly
// when x >= (n+1) - 5e-8, n = floor(x); ties cannot happen (5e-8 is not a binary
// fraction). (n+1) - x is exact here (Sterbenz), and as the double 5e-8 is just
// BELOW the real 5e-8, "d < 5e-8" is "d <= 5e-8 as a double" for any double d.
static int round7_int(double x) {
    double n = floor(x);
    if ((n + 1.0) - x <= 5e-8) n += 1.0;
    return (int)n;
}

void unpad_window(int orig_h, int orig_w, int cur_h, int cur_w, int* top, int* rows, int* left, int* cols) {
    *top = *left = 0;
    *rows = cur_h;
    *cols = cur_w;
    double orig_ar = (double)orig_w / orig_h, cur_ar = (double)cur_w / cur_h;
    if (orig_ar > cur_ar) { // wider than the grid: padding was added above and below
        int nh = round7_int((double)orig_h * ((double)cur_w / orig_w));
        int pad = (cur_h - nh) / 2; // cur_h >= nh here, so C division = Python's //
        *top = pad;
        *rows = cur_h - 2 * pad; // the slice [pad, cur_h - pad)
    } else {
        int nw = round7_int((double)orig_w * ((double)cur_h / orig_h));
        int pad = (cur_w - nw) / 2;
        *left = pad;
        *cols = cur_w - 2 * pad;
    }
}

// Pinpoints must be positive multiples of S, or the tiles would not be square.
static void anyres_check_pinpoints(int S, const int32_t* pinpoints, int n_pinpoints) {
    if (n_pinpoints < 1) fatal("%s: the model has no grid pinpoints, so it cannot take images", "anyres");
    for (int i = 0; i < n_pinpoints; i++) {
        int ph = pinpoints[2 * i], pw = pinpoints[2 * i + 1];
        if (ph < S || pw < S || ph % S || pw % S || ph > 64 * S || pw > 64 * S)
            fatal("%s: grid pinpoint %dx%d (h x w) is not a multiple of the image size %d (at most 64x)", "anyres",
                      ph, pw, S);
    }
}

void anyres_geometry(ImagePatches* g, int w, int h, int S, const int32_t* pinpoints, int n_pinpoints) {
    memset(g, 0, sizeof(*g));
    if (w < 1 || h < 1 || w > VIDEO_MAX_DIM || h > VIDEO_MAX_DIM)
        fatal("%s: image size %dx%d out of range (1..%d)", "anyres", w, h, VIDEO_MAX_DIM);
    anyres_check_pinpoints(S, pinpoints, n_pinpoints);
    g->width = w;
    g->height = h;
    g->size = S;
    select_best_resolution(h, w, pinpoints, n_pinpoints, &g->best_h, &g->best_w);
    patch_output_size(h, w, g->best_h, g->best_w, &g->resized_h, &g->resized_w);
    g->rows = g->best_h / S;
    g->cols = g->best_w / S;
    g->n_patches = 1 + g->rows * g->cols;
}

int image_num_tokens(int h, int w, int S, int patch_size, const int32_t* pinpoints, int n_pinpoints) {
    ImagePatches g;
    anyres_geometry(&g, w, h, S, pinpoints, n_pinpoints);
    int grid = S / patch_size; // features per tile side (24)
    int top, rows, left, cols;
    unpad_window(h, w, g.rows * grid, g.cols * grid, &top, &rows, &left, &cols);
    return grid * grid + rows * cols + rows; // base + unpadded grid + one newline per row
}

void anyres_patches_u8(const ImagePatches* g, const uint8_t* rgb, uint8_t* out) {
    int W = g->width, H = g->height, S = g->size;
    int nw = g->resized_w, nh = g->resized_h, tw = g->best_w, th = g->best_h;
    size_t ss = (size_t)S * S;
    // patch 0: the base image, the whole original squeezed to S x S
    resize_rgb_u8(rgb, W, H, out, S, S);
    // tiles: resize (aspect kept), then read through the zero padding
    uint8_t* r = xmalloc((size_t)3 * nw * nh);
    resize_rgb_u8(rgb, W, H, r, nw, nh);
    int left = (tw - nw) / 2, top = (th - nh) / 2; // floor: the odd pixel goes right/bottom
    for (int ty = 0; ty < g->rows; ty++)
        for (int tx = 0; tx < g->cols; tx++) {
            uint8_t* tile = out + (size_t)(1 + ty * g->cols + tx) * 3 * ss;
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < S; y++) {
                    uint8_t* d = tile + (size_t)c * ss + (size_t)y * S;
                    int sy = ty * S + y - top; // row in the resized image
                    memset(d, 0, (size_t)S);
                    if (sy < 0 || sy >= nh) continue;
                    int x0 = tx * S - left, x1 = x0 + S; // columns [x0, x1) of the resized image
                    int a = x0 < 0 ? 0 : x0, b = x1 > nw ? nw : x1;
                    if (a < b) memcpy(d + (a - x0), r + ((size_t)c * nh + sy) * nw + a, (size_t)(b - a));
                }
        }
    free(r);
}

void preprocess_image(ImagePatches* p, const Image* im, int S, const int32_t* pinpoints, int n_pinpoints,
                      const float mean[3], const float std[3]) {
    anyres_geometry(p, im->width, im->height, S, pinpoints, n_pinpoints);
    size_t ss = (size_t)S * S, n = (size_t)p->n_patches * 3 * ss;
    uint8_t* u8 = xmalloc(n);
    anyres_patches_u8(p, im->rgb, u8);
    float table[3][256];
    normalize_table(table, mean, std);
    p->pixels = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p->pixels[i] = table[(i / ss) % 3][u8[i]];
    free(u8);
}

void free_image_patches(ImagePatches* p) {
    free(p->pixels);
    memset(p, 0, sizeof(*p));
}
