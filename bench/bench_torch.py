"""PyTorch CPU baseline for bench/bench.c: the same GEMM shapes, y = x @ W^T, in f32 and bf16.

Run: python3 bench/bench_torch.py [--threads 2] [--reps 5]
Prints GFLOP/s (medians) so the ratio to `make bench` can be read off directly. PyTorch has no
int8-weight / f32-activation CPU matmul comparable to our q8 path, so q8 is not measured here.
"""
import argparse
import time

import torch

SHAPES = [(4616, 1024, 4096), (4616, 4096, 1024), (1170, 4096, 4096), (1170, 4096, 11008), (1170, 11008, 4096)]


def gflops(dtype, T, K, N, reps):
    """Median GFLOP/s of torch.nn.functional.linear on (T, K) x (N, K)^T, after one warm-up call."""
    x = torch.randn(T, K).to(dtype)
    w = torch.randn(N, K).to(dtype)
    with torch.no_grad():
        torch.nn.functional.linear(x, w)            # warm-up (and oneDNN weight reorder, if any)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times.append(time.perf_counter() - t0)
    times.sort()
    return 2.0 * T * K * N / times[len(times) // 2] * 1e-9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"mkldnn bf16 {torch.backends.mkldnn.is_available()}")
    print(f"{'type':5s} {'T':>5s} {'K->N':>12s} {'ms':>9s} {'GFLOP/s':>9s}")
    for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        for T, K, N in SHAPES:
            g = gflops(dtype, T, K, N, args.reps)
            print(f"{name:5s} {T:5d} {K:5d}->{N:<6d} {2.0 * T * K * N / g * 1e-6:9.2f} {g:9.1f}", flush=True)


if __name__ == "__main__":
    main()
