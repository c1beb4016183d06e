#!/usr/bin/env python3
"""Writes the seed corpora of test/fuzz/ (committed; rerun only to change them):
   python3 test/fuzz/make_seeds.py [build/models/tiny_b_q8.bin]
media: small synthetic Y4M (every chroma family, ranges, frame parameters), raw RGB24, PPM/PGM, each with
the 4-byte parameter prefix of fuzz_media.c; tokenizer: texts for the real vocabulary and small vocabulary
blobs with texts; model: the first 4 KiB (and the 1 KiB header) of the tiny q8 model."""
import os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def put(harness, name, data):
    d = os.path.join(root, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def pattern(n, k=7):
    return bytes((i * k + 13) % 256 for i in range(n))

def y4m(w, h, c, frames, extra="", frame_line=b"FRAME\n", depth=8, cw=None, ch=None, planes=3):
    sx, sy = {"420": (1, 1), "411": (2, 0), "422": (1, 0), "444": (0, 0), "mon": (0, 0)}[c[:3]]
    cw = (w + (1 << sx) - 1) >> sx
    ch = (h + (1 << sy) - 1) >> sy
    bps = 2 if depth > 8 else 1
    size = (w * h + (planes - 1) * cw * ch) * bps if planes > 1 else w * h * bps
    hdr = f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C{c}{extra}\n".encode()
    body = b""
    for i in range(frames):
        px = pattern(size, 7 + i)
        if bps == 2:  # keep samples inside the bit depth
            px = b"".join(struct.pack("<H", (px[j] * 4 + i) & ((1 << depth) - 1)) for j in range(0, size, 2))[:size]
        body += frame_line + px
    return hdr + body

def pre(mode, S=2, frames=3, w=4, h=3):
    return bytes([mode, (S & 7) | ((frames - 1) & 7) << 3, w, h])

put("media", "y4m_420jpeg", pre(0) + y4m(8, 6, "420jpeg", 3))
put("media", "y4m_444_full", pre(0, 1, 1) + y4m(5, 3, "444", 2, " XCOLORRANGE=FULL"))
put("media", "y4m_422_frameparams", pre(0, 3, 2) + y4m(6, 4, "422", 3, frame_line=b"FRAME Ixyz\n"))
put("media", "y4m_411", pre(0) + y4m(8, 2, "411", 2))
put("media", "y4m_mono", pre(0, 0, 1) + y4m(4, 4, "mono", 2, planes=1))
put("media", "y4m_420p10", pre(0) + y4m(6, 4, "420p10", 1, " XYSCSS=420P10 XCOLORRANGE=LIMITED", depth=10))
put("media", "y4m_444alpha", pre(0) + y4m(3, 3, "444alpha", 1, planes=4))
put("media", "y4m_stream_420mpeg2", pre(3, 2, 2) + y4m(7, 5, "420mpeg2", 4))
put("media", "raw_rgb_4x3", pre(1, 1, 2, 3, 2) + pattern(4 * 3 * 3 * 3))
put("media", "raw_rgb_stream", pre(4, 1, 1, 2, 2) + pattern(3 * 3 * 3 * 2))
put("media", "ppm_p6", pre(2) + b"P6\n# a comment\n5 4\n255\n" + pattern(5 * 4 * 3))
put("media", "ppm_p6_16bit", pre(2) + b"P6 3 2 1000\n" + pattern(3 * 2 * 6))
put("media", "pgm_p5_maxval15", pre(2) + b"P5\n4 3\n15\n" + bytes(b % 16 for b in pattern(12)))
put("media", "image_y4m", pre(2) + y4m(6, 4, "420jpeg", 1))
put("media", "image_stream_ppm", pre(5) + b"P6\n2 2\n255\n" + pattern(12))

# tokenizer: real-vocabulary texts (flags bit 0)
texts = [b"Hello world", b"<video>\nWhat is happening in this video?", b"USER: <image>\n Describe it. ASSISTANT:",
         "h\u00e9llo  \u65e5\u672c\u8a9e \U0001F389 \u2581x".encode(), b"bad \x80\xff\xc3 utf8 \xe2\x96", b" <s></s><unk>  \n\t"]
for i, t in enumerate(texts):
    put("tokenizer", f"real_text_{i}", bytes([1]) + t)

def rec(score, typ, piece):
    return struct.pack("<fiI", score, typ, len(piece)) + piece

def blob(bytes_list):
    b = rec(0, 2, b"<unk>") + rec(0, 3, b"<s>") + rec(0, 3, b"</s>")
    for v in bytes_list:
        b += rec(0, 6, f"<0x{v:02X}>".encode())
    sp = "\u2581".encode()
    for s, p in [(-1, sp), (-2, b"h"), (-3, b"e"), (-4, b"l"), (-5, b"o"), (-6, sp + b"h"), (-7, b"ll"),
                 (-8, b"he"), (-9, b"llo"), (-10, b"hello"), (-11, sp + b"hello"), (-12, "\u00e9".encode())]:
        b += rec(s, 1, p)
    return b + rec(0, 4, b"<video>") + rec(0, 5, b"unused")

small = blob([0x00, 0x0A, 0x20, 0x80, 0xA9, 0xC3, 0xE2, 0x96, 0x81, 0xEF, 0xBF, 0xBD])
text = "hello <video> h\u00e9llo\x80 hellohello".encode() + b"\x80\xc3"
put("tokenizer", "blob_small", bytes([0]) + struct.pack("<H", len(small)) + small + text)
put("tokenizer", "blob_small_padded", bytes([0]) + struct.pack("<H", len(small) + 8) + small + bytes(8) + b"he<video>llo")
two = rec(0, 2, b"<unk>") + rec(0, 3, b"<s>") + bytes(8)  # n_tokens = 2 given in the flags, zero padding
put("tokenizer", "blob_counted", bytes([2 | (2 << 2)]) + struct.pack("<H", len(two)) + two + b"ab <s>")
put("tokenizer", "blob_bytes_only", bytes([0]) + struct.pack("<H", 4 * 18) +
    b"".join(rec(0, 6, f"<0x{v:02x}>".encode()) for v in (0x41, 0xC3, 0xA9, 0x0A)) + "A\u00e9\nZ".encode())

model = sys.argv[1] if len(sys.argv) > 1 else "build/models/tiny_b_q8.bin"
with open(model, "rb") as f:
    head = f.read(4096)
put("model", "tiny_b_q8_first4k", head)
put("model", "tiny_b_q8_header", head[:1024])
