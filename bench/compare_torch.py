"""
compare_torch.py: our GEMM against PyTorch's CPU matmul on the same shapes, side by side in one run.

    python3 bench/compare_torch.py [--threads 2] [--reps 5]      (make bench-torch)

Runs ./build/bench --gemm (our kernels, f32 and bf16) and then bench/bench_torch.py's shapes in this
process with torch.nn.functional.linear, and prints GFLOP/s and the ratio ours / PyTorch per shape.
PyTorch has no int8-weight CPU matmul comparable to q8, so q8 is not compared. Needs torch.
"""
import argparse
import re
import subprocess
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_torch  # noqa: E402
import torch  # noqa: E402


def ours(threads, reps):
    out = subprocess.run(["./build/bench", "--gemm", "--threads", str(threads), "--reps", str(reps)],
                         capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        m = re.match(r"^(f32|bf16|q8)\s+T=(\d+)\s+(\d+)->(\d+)\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            res[(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))] = float(m.group(6))
        if line.startswith("peaks"):
            print(line)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mine = ours(args.threads, args.reps)
    print("torch %s, %d threads" % (torch.__version__, torch.get_num_threads()))
    print("%-5s %5s %13s %10s %10s %7s" % ("type", "T", "K->N", "ours", "PyTorch", "ratio"))
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        for T, K, N in bench_torch.SHAPES:
            a = mine.get((name, T, K, N))
            b = bench_torch.gflops(dtype, T, K, N, args.reps)
            print("%-5s %5d %6d->%-6d %10.1f %10.1f %6.2fx" % (name, T, K, N, a or 0, b, (a or 0) / b))


if __name__ == "__main__":
    main()
