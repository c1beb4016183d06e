"""
check_quant.py: export.py's quantizers on weights distributed like a real Llama's, for make test.

    python3 test/check_quant.py

A 1024 x 4096 matrix of N(0, 0.02) weights with 6 outlier input columns (x10: the few large input
features real Llama layers have, which inflate the scale of every group they fall in), and 64 rows of
N(0, 1) activations. Prints, for q8 and q4 at the group sizes llava.c supports, the relative RMS error
of the weights and of y = x W^T, and checks what must hold whatever the numbers:
  * q4 bytes decode (nibble by nibble, here) to what export.dequantize_q4 says llava.c computes with;
  * every q4 weight is within half a step (|s| / 2) of the original, except values clamped at +7
    (the far side of a group whose largest magnitude is mapped to -8), within one step plus what the
    scale's bf16 rounding (2^-9 relative at most) adds at 8 steps: 1 + 8 * 2^-8 steps;
  * finer groups are more accurate (q4 32 < q4 64), and the 16-level q4 grid beats a symmetric
    -7..7 one at the same group (the reason for export.py's choice);
  * q8 errors stay below 1% and q4 errors below 20% (RMS, relative; measured ~0.9% and ~11-14%).
Prints "N passed, N failed"; exits 1 on a failure. Needs numpy only.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import export  # noqa: E402

n_pass = n_fail = 0


def check(ok, what, detail=""):
    global n_pass, n_fail
    n_pass, n_fail = n_pass + bool(ok), n_fail + (not ok)
    print("  %s %-64s %s" % ("ok  " if ok else "FAIL", what, detail))


def rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


def dequantize_q8(w, group):
    q, s = export.quantize_q8(w, group, "w")
    return (q.astype(np.float32).reshape(s.shape[0], s.shape[1], -1) * s[:, :, None]).reshape(w.shape)


def q4_symmetric(w, group):
    """The alternative grid: s = max|w| / 7, q in -7..7 (15 levels), bf16 scale."""
    g = w.reshape(w.shape[0], -1, group)
    s = export.bf16_to_f32(export.f32_to_bf16(np.abs(g).max(axis=2) / np.float32(7)))
    inv = np.divide(np.float32(1), s, out=np.zeros_like(s), where=s != 0)
    return (np.clip(np.rint(g * inv[:, :, None]), -7, 7) * s[:, :, None]).reshape(w.shape)


def main():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, 4096), dtype=np.float32) * np.float32(0.02)
    w[:, rng.choice(4096, 6, replace=False)] *= 10           # outlier input columns
    x = rng.standard_normal((64, 4096), dtype=np.float32)
    y = x @ w.T
    print("quantization error, N(0, 0.02) weights with 6 outlier columns (x10), 1024 x 4096:")
    print("  %-32s %14s %14s" % ("format", "weights rel RMS", "y = xW^T rel RMS"))
    res = {}
    cases = [("q8 group 64 (8.5 bits)", "q8", 64), ("q4 group 32 (4.5 bits)", "q4", 32),
             ("q4 group 64 (4.25 bits)", "q4", 64), ("q4 -7..7 grid, group 32", "sym", 32)]
    for label, kind, group in cases:
        if kind == "q8":
            d = dequantize_q8(w, group)
        elif kind == "q4":
            d = export.dequantize_q4(*export.quantize_q4(w, group, "w"), group)
        else:
            d = q4_symmetric(w, group)
        res[(kind, group)] = (rel_rms(d, w), rel_rms(x @ d.T, y))
        print("  %-32s %13.4f%% %13.4f%%" % (label, 100 * res[(kind, group)][0], 100 * res[(kind, group)][1]))

    for group in (32, 64):
        u, s_bits = export.quantize_q4(w, group, "w")
        # decode the bytes independently of dequantize_q4: input 2i = low nibble, 2i+1 = high
        q = np.empty(w.shape, np.int32)
        q[:, 0::2] = (u & 0x0F).astype(np.int32) - 8
        q[:, 1::2] = (u >> 4).astype(np.int32) - 8
        s = export.bf16_to_f32(s_bits)
        d = q.reshape(w.shape[0], -1, group) * s[:, :, None]
        d = d.reshape(w.shape)
        check(np.array_equal(d, export.dequantize_q4(u, s_bits, group)), "q4 group %d: bytes decode to dequantize_q4" % group)
        step = np.repeat(np.abs(s), group, axis=1)
        err = np.abs(d - w)
        clamped = q == 7
        clamp_bound = 1 + 8 * 2.0 ** -8          # |w| <= |m| = 8 |s exact| <= 8 |s bf16| (1 + 2^-8)
        ok = (np.all(err[~clamped] <= step[~clamped] * 0.5 * (1 + 1e-6)) and
              np.all(err[clamped] <= step[clamped] * clamp_bound * (1 + 1e-6)))
        check(ok, "q4 group %d: each weight within s/2 (clamped at +7: %.3f s)" % (group, clamp_bound),
              "max err/s %.3f" % float((err / np.maximum(step, 1e-30)).max()))
        check(q.min() >= -8 and q.max() <= 7 and (q == -8).any(), "q4 group %d: values in -8..7, -8 used" % group)
    check(res[("q4", 32)][0] < res[("q4", 64)][0], "q4: group 32 more accurate than group 64")
    check(res[("q4", 32)][0] < res[("sym", 32)][0], "q4: the 16-level grid beats the symmetric 15-level one")
    check(res[("q8", 64)][0] < 0.01 and res[("q8", 64)][1] < 0.01, "q8 group 64: below 1% RMS (weights and y)")
    check(max(res[("q4", 32)] + res[("q4", 64)]) < 0.20, "q4: below 20% RMS (weights and y)")
    print("%d passed, %d failed" % (n_pass, n_fail))
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
