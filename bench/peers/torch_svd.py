#!/usr/bin/env python3
"""PyTorch side of bench/galore_cuda.cpp: the cost of a GaLore projector refresh in torch.

GaLore's own refresh (jiaweizzhao/GaLore, galore_projector.py) is torch.linalg.svd of the fp32
gradient, full_matrices=False; torch.svd_lowrank (Halko et al.'s randomized SVD, q = r +
oversample columns, niter power iterations) is the randomized peer. The gradient is built as
bench_galore_cuda builds it: G = A diag(s) B / sqrt(k) with A [m x k], B [k x n] uniform on
[-sqrt 3, sqrt 3], k = min(m, n), s_i = (1 + i)^-alpha (torch's own random draws, so the same
kind of matrix, not the same bits). Timed with CUDA events around each call after a warm-up; the
host waits on the stop event, as the C++ bench does (its refresh is synchronous). Reports the
median milliseconds and, for svd_lowrank, the distance of its rank-r right subspace to the exact
one, ||P1 P1^T - P2 P2^T||_F / sqrt(2 r) (the C++ bench's metric).

Prints one JSON object per line. Needs PyTorch with CUDA and a CUDA device; exits with a message
otherwise.
Usage: python3 bench/peers/torch_svd.py [--m 4096] [--n 4096] [--rank 128] [--power-iterations 2]
       [--oversample 8] [--alpha 1.0] [--exact-reps 3] [--randomized-reps 20]
"""
import argparse
import json
import statistics
import sys


def require_torch():
    """Imports torch, or exits with a message saying what is missing."""
    try:
        import torch
    except ImportError as e:
        sys.exit(f"torch_svd.py: PyTorch is not installed ({e}); this peer needs torch with CUDA")
    if not torch.cuda.is_available():
        sys.exit("torch_svd.py: no CUDA device visible to PyTorch (torch.cuda.is_available() is "
                 "False); run it on a GPU machine")
    return torch


def timed_ms(torch, fn, warmup, reps):
    """Median and minimum milliseconds per call of fn (CUDA events, the host waits each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--power-iterations", type=int, default=2)
    ap.add_argument("--oversample", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--exact-reps", type=int, default=3)
    ap.add_argument("--randomized-reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch = require_torch()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 GEMMs, as cuBLAS in the C++ bench
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    m, n, r = args.m, args.n, min(args.rank, args.m, args.n)
    k = min(m, n)
    root3 = 3.0 ** 0.5
    a = (torch.rand(m, k, device=dev, generator=gen) * 2 - 1) * root3
    b = (torch.rand(k, n, device=dev, generator=gen) * 2 - 1) * root3
    s = (1.0 + torch.arange(k, device=dev, dtype=torch.float64)) ** (-args.alpha) / k ** 0.5
    g = (a * s.float()) @ b
    right = m >= n  # GaLore's `std`: P = Vh[:r] when m >= n, else U[:, :r]

    def exact():
        return torch.linalg.svd(g, full_matrices=False)

    def lowrank():
        return torch.svd_lowrank(g, q=min(r + args.oversample, k), niter=args.power_iterations)

    exact_ms, exact_min = timed_ms(torch, exact, args.warmup, args.exact_reps)
    lowrank_ms, lowrank_min = timed_ms(torch, lowrank, args.warmup, args.randomized_reps)

    u, _, vh = exact()
    u2, _, v2 = lowrank()
    p1 = (vh[:r] if right else u[:, :r].T).double()  # kept vectors as rows
    p2 = (v2[:, :r].T if right else u2[:, :r].T).double()
    cross = torch.linalg.matrix_norm(p1 @ p2.T) ** 2
    distance = float(torch.sqrt(torch.clamp(2 * r - 2 * cross, min=0) / (2 * r)))

    name = torch.cuda.get_device_name()
    common = {"impl": "torch", "bench": "galore_refresh", "device": name, "m": m, "n": n,
              "rank": r, "alpha": args.alpha, "torch": torch.__version__}
    print(json.dumps({**common, "method": "exact_svd", "solver": "torch.linalg.svd",
                      "ms": exact_ms, "min_ms": exact_min, "reps": args.exact_reps}))
    print(json.dumps({**common, "method": "randomized", "solver": "torch.svd_lowrank",
                      "power_iterations": args.power_iterations, "oversample": args.oversample,
                      "ms": lowrank_ms, "min_ms": lowrank_min, "reps": args.randomized_reps,
                      "subspace_distance": distance}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
