"""
export_dequantized.py: the f32 twin of a q4 (or q8) export, for make test.

    python3 test/export_dequantized.py HF_DIR OUT.bin --dtype q4 --group-size 32 --vision-group-size 8
                                       [--vision-dtype q4]

Writes an f32 model file whose matmul weights are exactly the values the quantized file stands for:
each matrix goes through export.py's own quantizer and back (q4: the language model's matrices, q8 the
vision tower's and projector's, as a q4 file holds them). The quantized file and this one then hold the
same weights, and what separates their outputs is only what the kernels do at run time -- the int8
quantization of the activations -- so run_tests.sh can compare them with a tolerance near q8's instead
of the tolerance of the 4-bit weights themselves (which on the tiny models' large N(0, 0.2) weights move
the logits by 10-80%). A wrong nibble order, scale layout or kernel shows up there as an order-1 error.
Needs numpy only.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import export  # noqa: E402


def dequantize_q8(a, group, name):
    q, s = export.quantize_q8(a, group, name)
    return (q.astype(np.float32).reshape(s.shape[0], s.shape[1], -1) * s[:, :, None]).reshape(a.shape)


class DequantizedWriter(export.Writer):
    """export.Writer that writes every matmul weight in f32, as its quantized file dequantizes it."""
    qtype, q_group, q_vision_group = "q4", 32, 64   # set by main() (Writer's own group fields say f32)
    vision_q4 = False   # --vision-dtype q4: the vision tower and projector in q4 too (a measurement)

    def matrix(self, name, arrays, rows=False):
        out = []
        for a in arrays:
            if self.qtype == "q4" and (not self.vision or self.vision_q4):
                g = self.q_vision_group if self.vision else self.q_group
                u, s = export.quantize_q4(a, g, name)
                out.append(export.dequantize_q4(u, s, g))
            else:
                out.append(dequantize_q8(a, self.q_vision_group if self.qtype == "q4" else self.q_group, name))
        super().matrix(name, out, rows)   # dtype f32: written as they are


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=["q4", "q8"], default="q4")
    ap.add_argument("--group-size", type=int, required=True)
    ap.add_argument("--vision-group-size", type=int, default=export.Q8_GROUP)
    ap.add_argument("--vision-dtype", choices=["q4", "q8"], default="q8", help="q4: what the vision tower and "
                    "projector would lose in 4 bits (llava.c's q4 files keep them in q8)")
    args = ap.parse_args()
    DequantizedWriter.qtype, DequantizedWriter.q_group = args.dtype, args.group_size
    DequantizedWriter.q_vision_group = args.vision_group_size
    DequantizedWriter.vision_q4 = args.vision_dtype == "q4"
    export.Writer = DequantizedWriter
    export.export(args.src, args.out, "f32", 0)


if __name__ == "__main__":
    main()
