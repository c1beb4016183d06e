#!/usr/bin/env python3
"""Writes test/data/sample_indices_numpy.txt: what numpy gives for the model card's
frame sampling, np.arange(0, total, total/N).astype(int), so that test_video.c can
check video.c's sample_frame_indices against it without Python.

For each N in 1..64 one line "N plus1 hash": plus1 = how many totals in 1..2000 give
N+1 indices instead of N, hash = FNV-1a 32-bit over the little-endian int32 stream
[count, idx0, idx1, ...] for total = 1, 2, ..., 2000 in that order. Then some
explicit "ex total N : indices" rows for readable failures.

Run: python3 test/gen_sample_table.py > test/data/sample_indices_numpy.txt
"""
import numpy as np


def fnv1a(data, h=2166136261):
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def sample(total, n):
    return np.arange(0, total, total / n).astype(int)


print(f"# numpy {np.__version__}: np.arange(0, total, total/N).astype(int), total 1..2000, N 1..64")
print("# N plus1 fnv1a(int32le [count, idx...] for total = 1..2000)")
for n in range(1, 65):
    h = 2166136261
    plus1 = 0
    for total in range(1, 2001):
        a = sample(total, n)
        assert len(a) in (n, n + 1)
        plus1 += len(a) == n + 1
        h = fnv1a(np.array([len(a)] + list(a), dtype="<i4").tobytes(), h)
    print(f"{n} {plus1} 0x{h:08x}")
for total, n in [(300, 8), (17, 7), (7, 3), (3, 8), (1, 5), (16, 8), (16, 32), (2000, 64), (1999, 63), (1000, 32)]:
    a = sample(total, n)
    print(f"ex {total} {n} : " + " ".join(str(int(x)) for x in a))
