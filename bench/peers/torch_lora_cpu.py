#!/usr/bin/python3
"""PyTorch side of bench/adapter_cpu.cpp: the same shapes and passes, fp32, on the CPU.

A frozen nn.Linear plus a LoRA branch written as HF PEFT's lora.Linear.forward does it
(result = base(x) + lora_B(lora_A(dropout(x))) * scaling, dropout 0), timed for
  base forward, base forward + input-gradient backward, LoRA forward, LoRA forward + backward
(backward = dX, dA, dB; W frozen). Prints one JSON object per line, which bench/run_cpu.sh joins
with Google Benchmark's JSON. Runs on Debian's python3-torch (/usr/bin/python3), with as many
threads as the machine has cores.

Usage: /usr/bin/python3 bench/peers/torch_lora_cpu.py [--min-time SECONDS]
"""
import argparse
import json
import os
import time

import torch

SHAPES = [(2048, 1024, 16), (512, 4096, 16)]  # (T, d = in = out, r), as in issue 2


def timed(fn, min_time):
    for _ in range(3):  # warm up allocator and BLAS threads
        fn()
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and iters >= 5:
            return elapsed / iters


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    for T, d, r in SHAPES:
        base = torch.nn.Linear(d, d, bias=False)
        base.weight.requires_grad_(False)
        lora_a = torch.nn.Linear(d, r, bias=False)
        lora_b = torch.nn.Linear(r, d, bias=False)  # random B: the same work as a trained adapter
        scaling = 32.0 / r
        x = torch.randn(T, d)
        gy = torch.randn(T, d)

        def lora(inp):
            return base(inp) + lora_b(lora_a(inp)) * scaling

        def base_fwd():
            with torch.no_grad():
                base(x)

        def base_fwd_bwd():
            xi = x.detach().requires_grad_(True)
            base(xi).backward(gy)

        def lora_fwd():
            with torch.no_grad():
                lora(x)

        def lora_fwd_bwd():
            lora_a.weight.grad = None
            lora_b.weight.grad = None
            xi = x.detach().requires_grad_(True)
            lora(xi).backward(gy)

        for name, fn, bwd in [("base_gemm", base_fwd, 0), ("base_gemm", base_fwd_bwd, 1),
                              ("lora_r16", lora_fwd, 0), ("lora_r16", lora_fwd_bwd, 1)]:
            secs = timed(fn, args.min_time)
            print(json.dumps({"peer": "torch", "name": name, "T": T, "d": d, "bwd": bwd,
                              "ms": secs * 1e3, "threads": torch.get_num_threads(),
                              "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
