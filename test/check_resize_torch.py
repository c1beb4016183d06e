#!/usr/bin/env python3
"""One-off cross-check of video.c against real torch/torchvision/transformers (CPU).
Not run by `make test` (needs torch); run from the repository root:

    python3 test/check_resize_torch.py

1. The LCG test image (doc/preprocessing.md#test-vectors), 1280x720 -> 597x336 with torchvision: its hash and
   sum must be the ones test/test_video.c expects of video.c.
2. resize_plane_u8 / resize_rgb_u8 vs torchvision.transforms.v2.functional.resize(uint8 CHW,
   BICUBIC, antialias=True), byte for byte, on real frames (ffmpeg RGB24 of the test clips)
   and random images, for up- and downscales to many sizes.
3. load_video (raw RGB24 input) vs transformers' LlavaNextVideoVideoProcessor built locally with
   the LLaVA-NeXT-Video preprocessor settings (shortest_edge S, crop S, CLIP mean/std), for
   S = 336, 64, 32: pixel_values_videos compared bit for bit.
video.c is compiled to a shared library and called through ctypes (it has no main).
"""
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as tvF
import transformers

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tmp = tempfile.mkdtemp()
lib_path = os.path.join(tmp, "libvideo.so")
subprocess.check_call(["gcc", "-O3", "-march=native", "-shared", "-fPIC", "-o", lib_path,
                       os.path.join(ROOT, "video.c"), "-lm"])
lib = ctypes.CDLL(lib_path)
u8p = ctypes.POINTER(ctypes.c_uint8)
lib.resize_plane_u8.argtypes = [u8p, ctypes.c_int, ctypes.c_int, u8p, ctypes.c_int, ctypes.c_int]
lib.resize_rgb_u8.argtypes = [u8p, ctypes.c_int, ctypes.c_int, u8p, ctypes.c_int, ctypes.c_int]


class Video(ctypes.Structure):
    _fields_ = [("n_frames", ctypes.c_int), ("size", ctypes.c_int), ("pixels", ctypes.POINTER(ctypes.c_float)),
                ("width", ctypes.c_int), ("height", ctypes.c_int), ("total_frames", ctypes.c_int),
                ("indices", ctypes.POINTER(ctypes.c_int))]


f3 = ctypes.c_float * 3
lib.load_video.argtypes = [ctypes.POINTER(Video), ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int, f3, f3]
lib.free_video.argtypes = [ctypes.POINTER(Video)]


def c_resize_chw(img, w, h):
    """img: uint8 (3, H, W) -> (3, h, w) with video.c."""
    img = np.ascontiguousarray(img)
    out = np.empty((3, h, w), np.uint8)
    lib.resize_rgb_u8(img.ctypes.data_as(u8p), img.shape[2], img.shape[1], out.ctypes.data_as(u8p), w, h)
    return out


def tv_resize_chw(img, w, h):
    t = torch.from_numpy(np.ascontiguousarray(img))[None]
    return tvF.resize(t, [h, w], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)[0].numpy()


def lcg(H, W, s=1):
    b = bytearray(H * W * 3)
    for i in range(len(b)):
        s = (s * 1103515245 + 12345) & 0xFFFFFFFF
        b[i] = (s >> 16) & 255
    return np.frombuffer(bytes(b), np.uint8).reshape(H, W, 3)


def fnv(b):
    h = 2166136261
    for x in b:
        h = ((h ^ x) * 16777619) & 0xFFFFFFFF
    return h


print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}, "
      f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
fails = 0

# 1. the LCG image of test/test_video.c, resized by torchvision
t = torch.from_numpy(np.ascontiguousarray(lcg(720, 1280).transpose(2, 0, 1)))[None]
r = tvF.resize(t, [336, 597], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)[0]
h, s = fnv(r.numpy().tobytes()), int(r.sum())
ok = (h, s) == (0x49840dae, 76768151)
fails += not ok
print(f"[{'ok' if ok else 'FAIL'}] LCG 1280x720 -> 597x336: {h:#010x} {s} (test_video.c expects 0x49840dae 76768151)")

# 2. resize vs torchvision on real frames and random images
frames = []
for name, W, H in [("city_320x240_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24", 320, 240),
                   ("city_333x187_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24", 333, 187),
                   ("city_352x288_420paldv_Ib_2f.ffmpeg_neighbor_accurate.rgb24", 352, 288)]:
    raw = np.fromfile(os.path.join(ROOT, "test/data", name), np.uint8).reshape(-1, H, W, 3)
    for k in range(raw.shape[0]):
        frames.append((f"{name.split('.')[0]}#{k}", raw[k].transpose(2, 0, 1)))
rng = np.random.default_rng(0)
for (W, H) in [(1280, 720), (97, 61), (640, 480)]:
    frames.append((f"random {W}x{H}", rng.integers(0, 256, (3, H, W), dtype=np.uint8)))
n_cases = n_equal = 0
worst = 0
for label, img in frames:
    H, W = img.shape[1:]
    targets = [(W, H), (W * 336 // min(W, H), H * 336 // min(W, H)), (336, 336), (32, 32), (64, 48), (W // 3 + 1, H // 2 + 1),
               (W * 2 + 1, H), (W, H * 3 - 1), (17, 400), (5, 3)]
    for (w, h) in targets:
        a, b = c_resize_chw(img, w, h), tv_resize_chw(img, w, h)
        n_cases += 1
        eq = np.array_equal(a, b)
        n_equal += eq
        if not eq:
            d = int(np.abs(a.astype(int) - b.astype(int)).max())
            worst = max(worst, d)
            print(f"  differs: {label} {W}x{H} -> {w}x{h}: max {d}, {(a != b).mean() * 100:.3f}% of samples")
ok = n_equal == n_cases
fails += not ok
print(f"[{'ok' if ok else 'FAIL'}] resize vs torchvision uint8 bicubic antialias: {n_equal}/{n_cases} byte-identical"
      + (f" (worst diff {worst})" if worst else ""))

# 3. load_video vs transformers' video processor
from transformers import LlavaNextVideoVideoProcessor  # noqa: E402
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD  # noqa: E402

mean = f3(*np.array(OPENAI_CLIP_MEAN, np.float32))
std = f3(*np.array(OPENAI_CLIP_STD, np.float32))
for name, W, H, nf in [("city_320x240_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24", 320, 240, 4),
                       ("city_333x187_420jpeg_4f.ffmpeg_neighbor_accurate.rgb24", 333, 187, 3),
                       ("city_352x288_420paldv_Ib_2f.ffmpeg_neighbor_accurate.rgb24", 352, 288, 2)]:
    path = os.path.join(ROOT, "test/data", name)
    raw = np.fromfile(path, np.uint8).reshape(-1, H, W, 3)
    for S in (336, 64, 32):
        proc = LlavaNextVideoVideoProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S},
                                            image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, resample=3,
                                            do_resize=True, do_center_crop=True, do_rescale=True,
                                            rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                                            do_sample_frames=False)
        total = raw.shape[0]
        idx = np.arange(0, total, total / nf).astype(int)
        kept = [i for i in range(total) if i in idx]  # read_video_pyav
        ref = proc(videos=[raw[kept]], return_tensors="pt")["pixel_values_videos"][0].numpy()
        v = Video()
        lib.load_video(ctypes.byref(v), path.encode(), W, H, nf, S, mean, std)
        mine = np.ctypeslib.as_array(v.pixels, shape=(v.n_frames, 3, S, S)).copy()
        ok = mine.shape == ref.shape and np.array_equal(mine.view(np.uint32), ref.view(np.uint32))
        fails += not ok
        d = float(np.abs(mine - ref).max()) if mine.shape == ref.shape else float("nan")
        print(f"[{'ok' if ok else 'FAIL'}] load_video vs LlavaNextVideoVideoProcessor {W}x{H} S={S} F={v.n_frames}: "
              f"{'bit-identical' if ok else f'max |diff| {d}'}")
        lib.free_video(ctypes.byref(v))

print("all checks passed" if not fails else f"{fails} checks FAILED")
sys.exit(1 if fails else 0)
