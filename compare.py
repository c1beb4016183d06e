#!/usr/bin/env python3
"""compare.py: which stage of a port first differs from llava.c (or from another port).

    python3 compare.py DUMP_A DUMP_B [--tol 1e-4]

DUMP_A and DUMP_B are folders written by `./llava ... --dump DIR` (or by a port that writes the same
.npy files). The stages are compared in the order the pipeline computes them; for each file present
in both folders it prints the shape and the largest difference relative to the tensor's scale
(max |a - b| / max |b|), and it names the first stage whose difference is above --tol. Integer files
(ids, generated tokens, image sizes) must be equal. Exit status: 0 if every stage is within the
tolerance, 1 if one is not, 2 if the folders share no stage. Needs numpy only.
"""
import argparse
import os
import sys

import numpy as np

# (file, what it is): the pipeline's order, so the first line over the tolerance is where a port broke
STAGES = [
    ("input_ids.npy", "prompt token ids (template, tokenizer, placeholder expansion)"),
    ("image_sizes.npy", "image sizes (height, width)"),
    ("image_pixel_values.npy", "image views after anyres preprocessing"),
    ("pixel_values.npy", "video frames after resize, crop and normalize"),
    ("image_vision_features.npy", "CLIP features of the image views"),
    ("vision_features.npy", "CLIP features of the video frames (hidden_states[-2], CLS dropped)"),
    ("image_features.npy", "projected and packed image features (with image_newline)"),
    ("video_features.npy", "pooled and projected video features"),
    ("inputs_embeds.npy", "merged input embeddings"),
    ("logits.npy", "logits of every prompt position"),
    ("generated.npy", "generated token ids"),
    ("chat_ids.npy", "every id of a chat conversation"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |a-b| / max|b| allowed per float stage")
    args = ap.parse_args()
    first_bad, compared = None, 0
    for name, what in STAGES:
        pa, pb = os.path.join(args.a, name), os.path.join(args.b, name)
        if not (os.path.exists(pa) and os.path.exists(pb)):
            continue
        a, b = np.load(pa), np.load(pb)
        compared += 1
        if a.shape != b.shape:
            ok, detail = False, "shape %s vs %s" % (a.shape, b.shape)
        elif a.dtype.kind in "iu":
            diff = int(np.count_nonzero(a != b))
            ok, detail = diff == 0, "%d of %d differ" % (diff, a.size) if diff else "equal"
        else:
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            scale = float(np.abs(b64).max()) or 1.0
            err = float(np.abs(a64 - b64).max()) / scale if a.size else 0.0
            ok, detail = err <= args.tol, "max rel err %.3g" % err
        print("%-4s %-28s %-18s %s  (%s)" % ("ok" if ok else "DIFF", name, str(a.shape), detail, what))
        if not ok and first_bad is None:
            first_bad = (name, what)
    if compared == 0:
        print("no stage in common between %s and %s" % (args.a, args.b))
        sys.exit(2)
    if first_bad:
        print("first stage that differs: %s (%s)" % first_bad)
        sys.exit(1)
    print("all %d stages within %g" % (compared, args.tol))


if __name__ == "__main__":
    main()
