// fuzz_media.c: libFuzzer harness for video.c's readers: Y4M and raw RGB24 video (load_video), PPM/PGM/Y4M
// still images (load_image) and the anyres preprocessing of what they return, from a file and from a pipe
// on stdin (the streaming path: no seeking, frames spooled to a tmpfile).
//
// Input: 4 bytes of parameters, then the file.
//   byte 0  mode % 6: 0 load_video Y4M file, 1 load_video raw RGB24 file, 2 load_image file,
//                     3 load_video Y4M from stdin, 4 raw RGB24 from stdin, 5 load_image from stdin
//   byte 1  bits 0-2: S = 2 * (1 + bits) (video frame size / anyres tile, 2..16: small keeps runs fast)
//           bits 3-5: frames to sample, 1..8
//   byte 2, 3  raw RGB24 width and height, 1..64
// Pipe modes use at most 60000 bytes (they are written to the pipe before reading: it holds 64 KiB).
// Build: make fuzz (libFuzzer) or the replay driver (make test). See fuzz_common.h for fatal().
#include "fuzz_common.h"
#include "../../llava.c"

static const float fuzz_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float fuzz_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    (void)argc; (void)argv;
    fuzz_make_tmp("media");
    return 0;
}

// Puts data on stdin through a pipe (the reader sees a non-seekable stream).
static void fuzz_stdin_from(const uint8_t* data, size_t n) {
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); abort(); }
    if (n && write(fds[1], data, n) != (ssize_t)n) { perror("write"); abort(); }
    close(fds[1]);
    if (dup2(fds[0], 0) < 0) { perror("dup2"); abort(); }
    close(fds[0]);
    clearerr(stdin);
    __fpurge(stdin);  // drop what the previous input left in stdin's buffer
}

static void fuzz_image(const char* path) {
    static Image im;
    static ImagePatches ip;
    memset(&im, 0, sizeof(im));
    int ok;
    FUZZ_TRY(ok, load_image(&im, path));
    if (!ok) return;
    // preprocess with a small S (the image was accepted: nothing below may fail)
    int S = 4, patch = 2;
    const int32_t pin[] = {4, 8, 8, 4, 8, 8, 4, 12, 12, 4};
    FUZZ_MUST(preprocess_image(&ip, &im, S, pin, 5, fuzz_mean, fuzz_std));
    int n;
    FUZZ_MUST(n = image_num_tokens(im.height, im.width, S, patch, pin, 5));
    if (n <= 0) abort();
    free_image_patches(&ip);
    free_image(&im);
}

static void fuzz_video(const char* path, int raw_w, int raw_h, int n_frames, int S) {
    static Video v;
    memset(&v, 0, sizeof(v));
    int ok;
    FUZZ_TRY(ok, load_video(&v, path, raw_w, raw_h, n_frames, S, fuzz_mean, fuzz_std));
    if (!ok) return;
    if (v.n_frames < 1 || v.n_frames > n_frames + 1 || v.size != S) abort();
    for (int i = 0; i < v.n_frames; i++)
        if (v.indices[i] < 0 || v.indices[i] >= v.total_frames || (i && v.indices[i] <= v.indices[i - 1])) abort();
    free_video(&v);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 4) return 0;
    int mode = data[0] % 6, S = 2 * (1 + (data[1] & 7)), n_frames = 1 + ((data[1] >> 3) & 7);
    int raw_w = 1 + data[2] % 64, raw_h = 1 + data[3] % 64;
    data += 4;
    size -= 4;
    if (mode >= 3) {
        if (size > 60000) size = 60000;
        fuzz_stdin_from(data, size);
    } else {
        fuzz_write_tmp(data, size);
    }
    const char* path = mode >= 3 ? "-" : fuzz_tmp_path;
    switch (mode) {
    case 0: case 3: fuzz_video(path, 0, 0, n_frames, S); break;
    case 1: case 4: fuzz_video(path, raw_w, raw_h, n_frames, S); break;
    default: fuzz_image(path); break;
    }
    return 0;
}
