"""
test_cli.py: the ./llava command line, end to end, against the transformers goldens (numpy only).

For every golden case it runs ./llava the way a user would (the chat template from -p, the real clip
with -v and -f, the photo with -i, --raw, -m encode, -m decode) and checks the token ids, the streamed text, the greedy
tokens and the --dump files. Then it feeds broken input (missing, truncated and foreign files, bad
Y4M, a prompt longer than the context, bad flags) and expects one error line and a non-zero exit.
Last line: "N passed, N failed". Run from the repository root after `make` and the exports of
test/run_tests.sh (build/models/*.bin).
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

LLAVA = os.environ.get("LLAVA", "./llava").split()   # a command prefix, e.g. "qemu-aarch64 -cpu max build-aarch64/llava"
passed = failed = 0


def check(ok, what, detail=""):
    global passed, failed
    print("  %-4s %-50s %s" % ("ok" if ok else "FAIL", what, detail))
    if ok:
        passed += 1
    else:
        failed += 1


def run(args, stdin=b""):
    p = subprocess.run(LLAVA + args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    return p.returncode, p.stdout, p.stderr


def model_of(case):
    return "build/models/%s_f32.bin" % "_".join(case.split("_")[:2])


def golden_cases():
    for d in sorted(glob.glob("test/goldens/tiny_*")):
        with open(os.path.join(d, "meta.json")) as f:
            yield d, os.path.basename(d), json.load(f)


def test_case(d, case, meta, tmp):
    model = model_of(case)
    gold_ids = np.load(os.path.join(d, "input_ids.npy"))
    gold_gen = np.load(os.path.join(d, "generated.npy"))
    print(case)

    # -m encode: the prompt text (placeholders unexpanded for video and image cases) -> HF's ids
    rc, out, err = run([model, "-m", "encode"], meta["prompt"].encode("utf-8"))
    ids = [int(x) for x in out.split()]
    want = [int(t) for i, t in enumerate(gold_ids)
            if i == 0 or not (t in (32000, 32001) and gold_ids[i - 1] == t)]
    check(rc == 0 and ids == want, "-m encode equals the HF tokenizer", "%d ids" % len(ids))

    # -m decode: the golden tokens -> HF's decode(skip_special_tokens=True)
    rc, out, err = run([model, "-m", "decode"], " ".join(map(str, gold_gen)).encode())
    check(rc == 0 and out.decode("utf-8").rstrip("\n") == meta["generated_text"], "-m decode equals HF decode")

    # the user's path: question -> template -> tokens (-> clip -> frames) -> greedy answer, streamed
    dump = os.path.join(tmp, case)
    args = [model, "-n", str(len(gold_gen)), "--dump", dump, "--threads", "2"]
    args += ["--raw", "-p", meta["prompt"]] if meta.get("raw") else ["-p", meta["question"]]
    if meta["kind"] in ("image", "mixed"):
        args += ["-i", "test/data/%s" % meta["image"]]
    if meta["kind"] in ("video", "mixed"):
        args += ["-v", "test/data/%s.y4m" % meta["clip"], "-f", str(meta["num_frames"])]
    rc, out, err = run(args)
    check(rc == 0, "runs", err.decode(errors="replace").strip().split("\n")[-1][:70])
    if rc != 0:
        return
    ids = np.load(os.path.join(dump, "input_ids.npy"))
    check(ids.tolist() == gold_ids.tolist(), "prompt ids (template, placeholders) equal HF's", "T=%d" % len(ids))
    gen = np.load(os.path.join(dump, "generated.npy"))
    check(gen.tolist() == gold_gen.tolist(), "greedy tokens equal HF's", "%d tokens" % len(gen))
    check(out.decode("utf-8").rstrip("\n") == meta["generated_text"], "streamed text equals HF decode")
    logits = np.load(os.path.join(dump, "logits.npy"))
    check(logits.shape == (len(gold_ids), 32064) or logits.shape[0] == len(gold_ids), "logits.npy shape",
          str(logits.shape))
    if meta["kind"] in ("image", "mixed"):
        test_image_dump(d, meta, dump, args, out)
    if meta["kind"] in ("video", "mixed"):
        px = np.load(os.path.join(dump, "pixel_values.npy"))
        gold_u8 = np.load(os.path.join(d, "pixel_values_u8.npy"))
        m = np.array(meta["normalize"]["M"], np.float32)[None, :, None, None]
        s = np.array(meta["normalize"]["S"], np.float32)[None, :, None, None]
        gold_px = (gold_u8.astype(np.float32) - m) / s
        diff = np.abs(px - gold_px) if px.shape == gold_px.shape else np.array([np.inf])
        check(px.shape == gold_px.shape and diff.max() <= 0.016,
              "pixel_values within one level of the processor's",
              "max %.4g, %.3f%% exact" % (diff.max(), 100 * np.mean(diff == 0)))
        # the same clip as a Y4M stream on stdin (-v -): what `ffmpeg ... -f yuv4mpegpipe - |` gives
        args2 = [a if a != "test/data/%s.y4m" % meta["clip"] else "-" for a in args]
        args2[args2.index("--dump") + 1] = dump + "_stdin"
        with open("test/data/%s.y4m" % meta["clip"], "rb") as f:
            rc2, out2, err2 = run(args2, f.read())
        check(rc2 == 0 and out2 == out, "-v - (stdin) gives the same answer")
        for name in ("vision_features", "video_features", "inputs_embeds"):
            a, b = np.load(os.path.join(dump, name + ".npy")), np.load(os.path.join(d, name + ".npy"))
            e = np.abs(a - b).max() / np.abs(b).max() if a.shape == b.shape else np.inf
            check(e <= 1e-4, "%s.npy" % name, "max rel err %.3g" % e)


def fnv1a(data):
    h = 2166136261
    for x in data:
        h = ((h ^ x) * 16777619) & 0xFFFFFFFF
    return h


def test_image_dump(d, meta, dump, args, out):
    """-i: the anyres patches must be the processor's exactly (stored levels, or the hash for tiny_a), the
    packed image features and merged embeddings within 1e-4; the photo from stdin gives the same answer."""
    px = np.load(os.path.join(dump, "image_pixel_values.npy"))
    m = np.array(meta["normalize"]["M"], np.float32)
    s = np.array(meta["normalize"]["S"], np.float32)
    table = (np.arange(256, dtype=np.float32)[None, :] - m[:, None]) / s[:, None]  # (3, 256), as the processor
    ok = px.shape == tuple(meta["image_pixel_values_shape"])
    u8 = np.zeros(px.shape, np.uint8)
    for c in range(3):
        if ok:
            j = np.clip(np.searchsorted(table[c], px[:, c]), 0, 255)
            ok = bool(np.array_equal(table[c][j], px[:, c]))
            u8[:, c] = j
    if ok and os.path.exists(os.path.join(d, "image_pixel_values_u8.npy")):
        ok = bool(np.array_equal(u8, np.load(os.path.join(d, "image_pixel_values_u8.npy"))))
    ok = ok and "0x%08x" % fnv1a(u8.tobytes()) == meta["image_pixel_values_fnv1a"]
    check(ok, "image_pixel_values equal the processor's", "%s, %s" % (px.shape, meta["image_pixel_values_fnv1a"]))
    sizes = np.load(os.path.join(dump, "image_sizes.npy"))
    check(sizes.tolist() == meta["image_sizes"], "image_sizes.npy", str(sizes.tolist()))
    names = ["image_features"] + [n for n in ("image_vision_features", "inputs_embeds")
                                  if os.path.exists(os.path.join(d, n + ".npy"))]
    for name in names:
        a, b = np.load(os.path.join(dump, name + ".npy")), np.load(os.path.join(d, name + ".npy"))
        e = np.abs(a - b).max() / np.abs(b).max() if a.shape == b.shape else np.inf
        check(e <= 1e-4, "%s.npy" % name, "max rel err %.3g" % e)
    # the same photo on stdin (-i -): `ffmpeg -i photo.jpg -f image2pipe -c:v ppm - | ./llava ... -i -`
    img = "test/data/%s" % meta["image"]
    args2 = [a if a != img else "-" for a in args]
    args2[args2.index("--dump") + 1] = dump + "_stdin_image"
    with open(img, "rb") as f:
        rc2, out2, err2 = run(args2, f.read())
    check(rc2 == 0 and out2 == out, "-i - (stdin) gives the same answer")


def expect_error(what, args, stdin=b"", needle=""):
    rc, out, err = run(args, stdin)
    lines = err.decode(errors="replace").strip().split("\n")
    errors = [l for l in lines if "error" in l]  # timing diagnostics may precede it; one error line, last
    ok = rc != 0 and rc < 128 and len(errors) == 1 and errors[0] == lines[-1] and needle in lines[-1]
    check(ok, what, (lines[-1] if lines else "")[:80] + (" (exit %d)" % rc))


def test_errors(tmp):
    print("bad input")
    good = "build/models/tiny_b_f32.bin"
    data = open(good, "rb").read()
    trunc = os.path.join(tmp, "truncated.bin")
    open(trunc, "wb").write(data[: len(data) // 2])
    foreign = os.path.join(tmp, "foreign.bin")
    open(foreign, "wb").write(b"GGUF" + b"\0" * 4096)
    badver = os.path.join(tmp, "badversion.bin")
    open(badver, "wb").write(data[:4] + (99).to_bytes(4, "little") + data[8:4096])
    bady4m = os.path.join(tmp, "bad.y4m")
    open(bady4m, "wb").write(b"YUV4MPEG2 W320 H240 F25:1 C420jpeg\nFRAME\n" + b"\0" * 1000)
    absurd = os.path.join(tmp, "absurd.y4m")
    open(absurd, "wb").write(b"YUV4MPEG2 W99999999 H99999999 C420jpeg\nFRAME\n")
    expect_error("missing model file", ["/nonexistent/model.bin", "-p", "hi"], needle="/nonexistent/model.bin")
    expect_error("truncated model file", [trunc, "-p", "hi"], needle=trunc)
    expect_error("foreign file (bad magic)", [foreign, "-p", "hi"], needle=foreign)
    expect_error("unknown format version", [badver, "-p", "hi"], needle=badver)
    expect_error("missing video file", [good, "-v", "/nonexistent.y4m", "-p", "hi"], needle="/nonexistent.y4m")
    expect_error("truncated Y4M frame", [good, "-v", bady4m, "-p", "hi"], needle=bady4m)
    expect_error("absurd Y4M size", [good, "-v", absurd, "-p", "hi"], needle=absurd)
    expect_error("prompt longer than the context", [good, "-p", "word " * 300, "-c", "64"], needle="context")
    expect_error("unknown flag", [good, "--bogus", "1"])
    expect_error("bad number", [good, "-n", "ten", "-p", "hi"])
    expect_error("video tokens without a video", [good, "--ids", "1 32000 13"], needle="video")
    expect_error("image tokens without an image", [good, "--ids", "1 32001 13"], needle="image")
    badppm = os.path.join(tmp, "bad.ppm")
    open(badppm, "wb").write(b"P6\n4 4\n255\n" + b"\0" * 10)
    expect_error("missing image file", [good, "-i", "/nonexistent.ppm", "-p", "hi"], needle="/nonexistent.ppm")
    expect_error("truncated PPM", [good, "-i", badppm, "-p", "hi"], needle=badppm)
    expect_error("not an image", [good, "-i", "test/data/tokenizer.model", "-p", "hi"], needle="image format")
    expect_error("two media on stdin", [good, "-i", "-", "-v", "-", "-p", "hi"], needle="stdin")
    expect_error("<image> in a raw prompt without -i", [good, "--raw", "-p", "USER: <image>\nhi"],
                 needle="<image>")
    rc, out, err = run([good, "-p", "hi", "-n", "0"])
    check(rc == 0 and out == b"", "-n 0 runs the prompt and prints nothing")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for d, case, meta in golden_cases():
            test_case(d, case, meta, tmp)
        test_errors(tmp)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
