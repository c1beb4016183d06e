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
    p = subprocess.run(LLAVA + args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
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
    # a format 1 file (rows) whose header claims format 2 (panels): the sizes disagree with the file
    rows = open("build/models/tiny_b_f32_format1.bin", "rb").read()
    mislabeled = os.path.join(tmp, "mislabeled.bin")
    open(mislabeled, "wb").write(rows[:4] + (2).to_bytes(4, "little") + rows[8:])
    expect_error("format 1 data under a format 2 header", [mislabeled, "-p", "hi"], needle=mislabeled)
    # dimensions whose weights could not fit in the file (on a 32-bit host their sizes would wrap)
    huge = bytearray(data)
    huge[16:24] = (65536).to_bytes(4, "little") + (262144).to_bytes(4, "little")   # dim, hidden_dim
    hugedims = os.path.join(tmp, "hugedims.bin")
    open(hugedims, "wb").write(bytes(huge))
    expect_error("header dimensions larger than the file", [hugedims, "-p", "hi"], needle=hugedims)
    # format 1 still loads (packed at load), with a hint to re-export
    rc, out, err = run(["build/models/tiny_b_f32_format1.bin", "-p", "hi", "-n", "1"])
    check(rc == 0 and b"format 1" in err and b"re-export" in err, "a format 1 file loads, with a hint to re-export",
          err.decode(errors="replace").strip().split("\n")[0][:80])
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
    # q4 files: a bad group size (not a multiple of 8, or 0 for the vision matrices), a truncated file,
    # a q4 group size field on a file of another type: one error line each
    q4 = "build/models/tiny_b_q4.bin"
    q4data = open(q4, "rb").read()
    q4trunc = os.path.join(tmp, "truncated_q4.bin")
    open(q4trunc, "wb").write(q4data[: len(q4data) - 1000])
    expect_error("truncated q4 model file", [q4trunc, "-p", "hi"], needle="truncated")
    for i, (edits, needle) in enumerate([({"group_size": ("i", 12)}, "q4 group size 12"),
                                         ({"group_size": ("i", 0)}, "q4 group size 0"),
                                         ({"group_size": ("i", 64)}, "not a multiple of the q4 group 64"),
                                         ({"vision_group_size": ("i", 0)}, "vision matrices"),
                                         ({"vision_group_size": ("i", 6)}, "vision matrices"),
                                         ({"vision_group_size": ("i", 64)}, "not a multiple of the q8 group 64")]):
        bad = patched(tmp, q4, "bad_q4_%d.bin" % i, edits)
        expect_error("q4 header %s refused" % edits, [bad, "-p", "hi"], needle=needle)
    bad = patched(tmp, good, "f32_with_vision_group.bin", {"vision_group_size": ("i", 8)})
    expect_error("vision_group_size on an f32 file refused", [bad, "-p", "hi"], needle="vision group size")


def header_offsets():
    """Byte offset of every header field, from export.py's HEADER_FIELDS (the one definition)."""
    import struct
    sys.path.insert(0, ".")
    import export
    offs, at = {}, 0
    for name, fmt in export.HEADER_FIELDS:
        offs[name] = at
        at += struct.calcsize("<" + fmt)
    return offs


def patched(tmp, src, name, edits):
    """A copy of model src with header fields overwritten: edits = {field: (struct format, value)}."""
    import struct
    data = bytearray(open(src, "rb").read())
    offs = header_offsets()
    for field, (fmt, value) in edits.items():
        values = value if isinstance(value, tuple) else (value,)
        struct.pack_into(fmt if fmt[0] in "<>" else "<" + fmt, data, offs[field], *values)
    path = os.path.join(tmp, name)
    open(path, "wb").write(bytes(data))
    return path


def test_hostile(tmp):
    """Inputs that once crashed, hung or produced silent garbage (each now one error line, or a sane answer)."""
    print("hostile input")
    good = "build/models/tiny_b_f32.bin"
    nan = float("nan")
    for i, (field, fmt, value, needle) in enumerate([
            ("rms_eps", "f", nan, "rms_eps"), ("v_eps", "f", 0.0, "v_eps"), ("rope_theta", "f", float("inf"), "rope_theta"),
            ("rope_scale", "f", -2.5, "rope_scale"), ("v_act", "i", 7, "vision activation"),
            ("proj_act", "i", 3, "projector activation"), ("group_size", "i", 8, "group size"),
            ("unk", "i", 1 << 20, "unk"), ("select_strategy", "i", 5, "select strategy")]):
        bad = patched(tmp, good, "bad%d.bin" % i, {field: (fmt, value)})
        expect_error("header %s = %r refused" % (field, value), [bad, "-p", "hi"], needle=needle)
    bad = patched(tmp, good, "bad_mean.bin", {"image_mean": ("3f", (0.5, nan, 0.5))})
    expect_error("header image_mean with a NaN refused", [bad, "-p", "hi"], needle="image_mean")
    bad = patched(tmp, good, "bad_std.bin", {"image_std": ("3f", (0.5, 0.0, 0.5))})
    expect_error("header image_std of 0 refused", [bad, "-p", "hi"], needle="image_std")
    bad = patched(tmp, good, "same_tokens.bin", {"image_token": ("i", 32000), "video_token": ("i", 32000)})
    expect_error("image_token == video_token refused", [bad, "-p", "hi"], needle="same token")
    swapped = patched(tmp, good, "bigendian.bin", {"magic": (">I", 0x41564C4C)})
    expect_error("a byte-swapped (big-endian) file is named as such", [swapped, "-p", "hi"], needle="endian")

    # A huge (~260 GB), self-consistent header over a sparse file: refused for memory before packing
    # anything (more than the RAM of the machines this runs on, and than one GPU's memory for llava_cuda:
    # at 150 GB an H200, 141 GB, held it).
    if os.path.basename(LLAVA[0]).startswith("qemu-"):
        # qemu-user cannot map a 4 TB file into the emulated address space (the process is killed)
        print("skipped: a self-consistent 260 GB model is refused for memory (under qemu-user)")
    else:
        huge = patched(tmp, good, "huge.bin", {"dim": ("i", 8192), "hidden_dim": ("i", 32768),
                                               "n_layers": ("i", 80)})
        with open(huge, "r+b") as f:
            f.truncate(1 << 42)  # 4 TB, sparse: the loader reports how much of it is unexpected
        rc, out, err = run([huge, "-p", "hi"])
        import re
        m = re.search(rb"(\d+) bytes of unexpected data", err)
        if m:
            with open(huge, "r+b") as f:
                f.truncate((1 << 42) - int(m.group(1)))
            expect_error("a self-consistent 260 GB model is refused for memory", [huge, "-p", "hi"], needle="memory")
        else:
            check(False, "a self-consistent 260 GB model is refused for memory", err.decode(errors="replace")[-80:])
        os.unlink(huge)

    # logits that turn NaN: the last rows of lm_head (the file's last tensor) set to NaN
    data = bytearray(open(good, "rb").read())
    data[-4096:] = np.full(1024, np.nan, dtype=np.float32).tobytes()
    nanmodel = os.path.join(tmp, "nan_logits.bin")
    open(nanmodel, "wb").write(bytes(data))
    expect_error("NaN logits: an error, not token 0", [nanmodel, "-p", "hi", "-n", "4"], needle="NaN")
    expect_error("NaN logits with sampling", [nanmodel, "-p", "hi", "-n", "4", "-t", "0.7"], needle="NaN")

    # a temperature whose logit/t overflows is greedy in the limit (it read index[-1] before)
    rc0, out0, _ = run([good, "-p", "Hi", "-n", "8"])
    rc1, out1, _ = run([good, "-p", "Hi", "-n", "8", "-t", "1e-40", "-k", "0.9"])
    check(rc0 == 0 and rc1 == 0 and out0 == out1, "-t 1e-40 -k 0.9 samples like greedy")

    for seed in ["abc", "-1", "nan", "", "1x", "99999999999999999999999"]:
        expect_error("-s %r refused" % seed, [good, "-p", "hi", "-s", seed], needle="-s")

    fifo = os.path.join(tmp, "model.fifo")
    os.mkfifo(fifo)
    try:
        expect_error("a FIFO as the model: refused, no hang", [fifo, "-p", "hi"], needle="regular file")
    except subprocess.TimeoutExpired:
        check(False, "a FIFO as the model: refused, no hang", "timed out")

    # an endless stream is cut at --max-stream-frames, with an error
    expect_error("an endless stdin stream stops at the frame cap",
                 [good, "-W", "16", "-H", "16", "-v", "-", "-p", "hi", "--max-stream-frames", "50"],
                 stdin=b"\0" * (16 * 16 * 3 * 200), needle="max-stream-frames")

    # .npy headers that end early, and zero frames
    for name, header in [("cut_descr", b"{'descr': '"), ("cut_descr2", b"{'shape': (1,), 'descr': '<f")]:
        path = os.path.join(tmp, name + ".npy")
        open(path, "wb").write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
        expect_error(".npy header ending inside 'descr' (%s)" % name, [good, "--pixels", path, "-p", "hi"],
                     needle=path)
    zero = os.path.join(tmp, "zero_frames.npy")
    np.save(zero, np.zeros((0, 3, 32, 32), dtype=np.float32))
    expect_error("--pixels with 0 frames refused", [good, "--pixels", zero, "-p", "hi"], needle=zero)


def test_chat(tmp):
    """Three turns in one KV cache (video, text, then an image attached with /image) against transformers
    continuing the whole concatenated conversation (test/make_chat_goldens.py)."""
    print("chat")
    d = "test/goldens/chat_tiny_b"
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    gold = np.load(os.path.join(d, "chat_ids.npy"))
    script = "%s\n%s\n/image test/data/%s\n%s\n/quit\n" % (
        meta["turns"][0]["question"], meta["turns"][1]["question"], meta["image"], meta["turns"][2]["question"])
    dump = os.path.join(tmp, "chat")
    args = ["build/models/%s_f32.bin" % meta["model"], "-m", "chat", "-y", meta["system"], "-n",
            str(meta["new_tokens"]), "-v", "test/data/%s.y4m" % meta["clip"], "-f", str(meta["num_frames"]),
            "--dump", dump, "--threads", "2"]
    rc, out, err = run(args, script.encode())
    check(rc == 0, "chat runs three turns", err.decode(errors="replace").strip().split("\n")[-1][:70])
    if rc != 0:
        return
    ids = np.load(os.path.join(dump, "chat_ids.npy"))
    check(ids.tolist() == gold.tolist(), "chat: every id of the conversation equals HF's",
          "%d ids (golden %d)" % (len(ids), len(gold)))
    answers = out.decode("utf-8").split("\n")[:3]
    check(answers == [t["answer_text"] for t in meta["turns"]], "chat: the three streamed answers equal HF decode")
    # /clear starts over: the same first question gives the same first answer
    rc, out2, err = run(args[:-4] + ["--threads", "2"], ("%s\n/clear\n/video test/data/%s.y4m\n%s\n" % (
        meta["turns"][0]["question"], meta["clip"], meta["turns"][0]["question"])).encode())
    lines = out2.decode("utf-8").split("\n")
    check(rc == 0 and len(lines) >= 2 and lines[0] == lines[1] == meta["turns"][0]["answer_text"],
          "chat: /clear, the same video and question, the same answer")
    # a context too small for the next question: one line, the chat goes on
    rc, out3, err = run(["build/models/tiny_b_f32.bin", "-m", "chat", "-c", "24", "-n", "4"],
                        b"Hello there\n" + b"word " * 40 + b"\nHi\n")
    check(rc == 0 and b"context full" in err, "chat: a full context is reported, not fatal",
          err.decode(errors="replace").strip().split("\n")[-1][:70])


def test_compare(tmp):
    """compare.py names the first stage that differs between two --dump folders."""
    print("compare.py")
    a, b = os.path.join(tmp, "cmp_a"), os.path.join(tmp, "cmp_b")
    args = ["build/models/tiny_b_f32.bin", "-v", "test/data/city_320x240_444_2f.y4m", "-p", "Hi", "-n", "3"]
    run(args + ["--dump", a])
    run(args + ["--dump", b])
    p = subprocess.run([sys.executable, "compare.py", a, b], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check(p.returncode == 0 and b"all " in p.stdout, "compare.py: two runs agree at every stage")
    v = np.load(os.path.join(b, "vision_features.npy"))
    v[0, 3, 5] += 0.5
    np.save(os.path.join(b, "vision_features.npy"), v)
    p = subprocess.run([sys.executable, "compare.py", a, b], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check(p.returncode == 1 and b"first stage that differs: vision_features.npy" in p.stdout,
          "compare.py: names the first stage that differs", p.stdout.decode().strip().split("\n")[-1][:60])


def test_terminal(tmp):
    """On a terminal (stderr a pty): progress lines for the vision tower and the prompt; -q: nothing."""
    import pty
    print("terminal")
    args = LLAVA + ["build/models/tiny_b_f32.bin", "-v", "test/data/city_320x240_444_2f.y4m", "-p", "Hi", "-n", "2"]
    for quiet in (False, True):
        master, slave = pty.openpty()
        p = subprocess.Popen(args + (["-q"] if quiet else []), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=slave)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
        out, _ = p.communicate(timeout=120)
        os.close(master)
        if quiet:
            check(p.returncode == 0 and err == b"" and out.strip() != b"", "-q: the answer alone, nothing on stderr")
        else:
            ok = p.returncode == 0 and b"\rvision: " in err.replace(b"\r\x1b[K", b"\r") and b"prompt: " in err
            check(ok, "a terminal gets progress lines (vision layers, prompt)", repr(err[:60]))


def test_usage(tmp):
    """The command line without traps (flags, messages, --json, --save-frames, seeds, stop reasons)."""
    print("command line")
    good = "build/models/tiny_b_f32.bin"
    clip = "test/data/city_320x240_444_2f.y4m"
    expect_error("--bogus is an unknown option", [good, "--bogus", "1", "-p", "hi"], needle="unknown option '--bogus'")
    expect_error("-v on a directory", [good, "-v", "test/data", "-p", "hi"], needle="is a directory")
    mp4 = os.path.join(tmp, "movie.mp4")
    open(mp4, "wb").write(b"\0\0\0\x18ftypmp42" + b"\0" * 100)
    expect_error("-v movie.mp4 hints at the ffmpeg pipe", [good, "-v", mp4, "-p", "hi"], needle="yuv4mpegpipe")
    expect_error("a bad -i path is reported before loading", [good, "-i", "/nonexistent.ppm"], needle="/nonexistent.ppm")
    expect_error("-m decode refuses ids outside the vocabulary", [good, "-m", "decode"], stdin=b"1 99999", needle="99999")
    expect_error("-n with a bad number", [good, "-n", "1e3", "-p", "hi"], needle="-n")
    rc, out, err = run(["--version"])
    check(rc == 0 and out.startswith(b"llava.c"), "--version", out.decode().strip())
    rc, out, err = run(["-h"])
    flags = ["-p", "-i", "-v", "--frames", "--temp", "--top-p", "--seed", "-c", "-m", "-y", "--quiet", "--json",
             "--save-frames", "--raw", "--ids", "--pixels", "--dump", "--threads", "--max-stream-frames", "--version"]
    missing = [f for f in flags if f.encode() not in out]
    check(rc == 0 and not missing, "-h lists every flag", "missing %s" % missing if missing else "")
    rc, out, err = run([good, "-p", "hi", "-n", "3", "-c", "99999"])
    check(rc == 0 and b"warning: -c 99999" in err, "-c past the trained positions warns")
    rc, out, err = run([good, "-p", "hi", "-n", "2"])
    check(rc == 0 and b"stopped: -n limit" in err, "the stop reason is printed (-n)")
    rc, out, err = run([good, "-p", "hi", "-n", "400", "-c", "16"])
    check(rc == 0 and b"stopped: context full" in err, "the stop reason is printed (context)")
    rc, out, err = run([good, "-p", "-", "-n", "4"], stdin=b"hi")
    rc2, out2, _ = run([good, "-p", "hi", "-n", "4"])
    check(rc == 0 and out == out2, "-p - reads the question from stdin")
    # seeds: 0 and 1 differ, the same seed repeats, a drawn seed is printed and reproduces the run
    outs = [run([good, "-p", "Hi", "-n", "12", "-t", "1.0", "-k", "1.0", "-s", s_])[1] for s_ in ("0", "1", "1")]
    check(outs[0] != outs[1] and outs[1] == outs[2], "-s 0 and -s 1 differ; a seed repeats")
    rc, out, err = run([good, "-p", "Hi", "-n", "12", "-t", "1.0", "-k", "1.0"])
    seed = [l for l in err.decode().split("\n") if l.startswith("seed: ")]
    rc2, out2, _ = run([good, "-p", "Hi", "-n", "12", "-t", "1.0", "-k", "1.0", "-s", seed[0][6:]] if seed else [good])
    check(rc == 0 and seed and out2 == out, "a drawn seed is printed and reproduces the run", seed[0] if seed else "")
    # --json: one line, parseable, the answer equal to stdout
    rc, out, err = run([good, "-v", clip, "-p", "Hi", "-n", "5", "--json", "-s", "5", "-t", "0.7"])
    last = err.decode().strip().split("\n")[-1]
    try:
        j = json.loads(last)
    except ValueError:
        j = {}
    ok = rc == 0 and j.get("answer") == out.decode().rstrip("\n") and j.get("generated_tokens") == 5 \
        and j.get("seed") == 5 and j.get("views") == 2 and "time_to_first_token_s" in j and "peak_memory_gb" in j
    check(ok, "--json: one line with the answer, counts, seed, timings", last[:60])
    # --save-frames: the PPM pixels are exactly the levels that were normalised into pixel_values
    frames, dump = os.path.join(tmp, "frames"), os.path.join(tmp, "frames_dump")
    img = "test/data/chelsea_451x300.ppm"
    rc, out, err = run([good, "-v", clip, "-i", img, "-p", "Hi", "-n", "1", "--save-frames", frames, "--dump", dump])
    names = sorted(os.listdir(frames)) if os.path.isdir(frames) else []
    ok = rc == 0 and names == ["image1_view%03d.ppm" % i for i in range(5)] + ["video1_frame%03d.ppm" % i for i in range(2)]
    if ok:
        mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
        std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
        for kind, arr in (("video1_frame", np.load(os.path.join(dump, "pixel_values.npy"))),
                          ("image1_view", np.load(os.path.join(dump, "image_pixel_values.npy")))):
            for i in range(arr.shape[0]):
                raw = open(os.path.join(frames, "%s%03d.ppm" % (kind, i)), "rb").read()
                S = arr.shape[-1]
                u8 = np.frombuffer(raw[-3 * S * S:], dtype=np.uint8).reshape(S, S, 3).transpose(2, 0, 1)
                table = (u8.astype(np.float32) - (mean * 255).astype(np.float32)[:, None, None]) \
                    / (std * 255).astype(np.float32)[:, None, None]
                ok = ok and raw.startswith(b"P6\n%d %d\n255\n" % (S, S)) and np.array_equal(table, arr[i])
    check(ok, "--save-frames: PPMs of exactly the pixels the tower sees", " ".join(names[:2]))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for d, case, meta in golden_cases():
            test_case(d, case, meta, tmp)
        test_errors(tmp)
        test_hostile(tmp)
        test_chat(tmp)
        test_compare(tmp)
        test_terminal(tmp)
        test_usage(tmp)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
