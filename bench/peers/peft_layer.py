#!/usr/bin/env python3
"""PEFT side of bench/adapter_cuda.cu: the same shapes and passes, bf16, on the GPU.

A torch.nn.Linear(d, d, bias=False) in bf16 on CUDA, wrapped by peft.get_peft_model with
LoraConfig(r, lora_alpha=32, target_modules=["proj"]) once with lora_dropout=0.0 and once with
0.1, B set to random values (so the branch does the work of a trained adapter). Timed, each with
CUDA events around every iteration on the current stream (the host waits on the stop event, as
bench_adapter_cuda does):
  base forward, base forward + input-gradient backward (W frozen: dX only),
  LoRA forward, LoRA forward + backward (dX, dA, dB; gradients set to None each iteration).
The LoRA module timed is the lora.Linear that PEFT put in place of the target (called directly,
not through PeftModel.forward), i.e. the layer against layer comparison. Forward-only passes run
under torch.no_grad(); the module stays in train mode, so dropout 0.1 is applied.

PEFT's get_peft_model upcasts bf16 adapter weights to fp32 by default (autocast_adapter_dtype);
loralab keeps fp32 master weights but runs its GEMMs on a bf16 copy, so by default the adapter
weights are cast back to bf16 here (--adapter-dtype bf16); --adapter-dtype fp32 times PEFT's
default instead. Prints one JSON object per line, which bench/run_cuda.sh joins with Google
Benchmark's JSON (bench/summarize_cuda.py).

Needs PyTorch with CUDA and peft, and a CUDA device; exits with a message otherwise.
Usage: python3 bench/peers/peft_layer.py [--min-time SECONDS] [--adapter-dtype bf16|fp32]
"""
import argparse
import json
import sys

SHAPES = [(4096, 4096, 16), (8192, 4096, 64), (2048, 8192, 16), (16, 4096, 16)]  # (T, d, r)
DROPOUTS = [(0.0, "lora"), (0.1, "lora_dropout")]  # names as in bench_adapter_cuda


def require_peers():
    """Imports torch and peft, or exits with a message saying what is missing."""
    try:
        import torch
    except ImportError as e:
        sys.exit(f"peft_layer.py: PyTorch is not installed ({e}); this peer needs torch with CUDA")
    try:
        import peft
    except ImportError as e:
        sys.exit(f"peft_layer.py: peft is not installed ({e}); pip install peft")
    if not torch.cuda.is_available():
        sys.exit("peft_layer.py: no CUDA device visible to PyTorch (torch.cuda.is_available() is "
                 "False); run it on a GPU machine")
    return torch, peft


def timed_ms(torch, fn, min_time):
    """Mean milliseconds per call of fn, from CUDA events around each call (after a warm-up)."""
    for _ in range(3):  # cuBLAS heuristics, caching allocator
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    total_ms, iters = 0.0, 0
    while total_ms < min_time * 1e3 or iters < 10:
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        total_ms += start.elapsed_time(stop)
        iters += 1
    return total_ms / iters


def make_block(torch, d):
    """A module with one target Linear named "proj", what get_peft_model wraps."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(d, d, bias=False)

        def forward(self, x):
            return self.proj(x)

    return Block()


def bench_base(torch, x, gy, min_time):
    """(forward ms, forward+backward ms) of the frozen bf16 Linear alone."""
    d = x.shape[1]
    base = torch.nn.Linear(d, d, bias=False, device=x.device, dtype=x.dtype)
    base.weight.requires_grad_(False)

    def fwd():
        with torch.no_grad():
            base(x)

    def fwd_bwd():
        xi = x.detach().requires_grad_(True)
        base(xi).backward(gy)

    return timed_ms(torch, fwd, min_time), timed_ms(torch, fwd_bwd, min_time)


def bench_lora(torch, peft, x, gy, r, dropout, adapter_dtype, min_time):
    """(forward ms, forward+backward ms) of PEFT's lora.Linear around the same bf16 Linear."""
    d = x.shape[1]
    model = make_block(torch, d).to(device=x.device, dtype=x.dtype)
    config = peft.LoraConfig(r=r, lora_alpha=32, target_modules=["proj"], lora_dropout=dropout,
                             bias="none")
    model = peft.get_peft_model(model, config)
    model.train()
    layer = model.base_model.model.proj  # peft.tuners.lora.Linear
    lora_a = layer.lora_A["default"]
    lora_b = layer.lora_B["default"]
    lora_a.to(adapter_dtype)
    lora_b.to(adapter_dtype)
    with torch.no_grad():
        lora_b.weight.uniform_(-1.0, 1.0)  # PEFT starts from B = 0; a trained B does the work

    def fwd():
        with torch.no_grad():
            layer(x)

    def fwd_bwd():
        lora_a.weight.grad = None  # optimizer.zero_grad(set_to_none=True)
        lora_b.weight.grad = None
        xi = x.detach().requires_grad_(True)
        layer(xi).backward(gy)

    return timed_ms(torch, fwd, min_time), timed_ms(torch, fwd_bwd, min_time)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of GPU time per case")
    parser.add_argument("--adapter-dtype", choices=["bf16", "fp32"], default="bf16",
                        help="dtype of lora_A/lora_B (PEFT's own default is fp32)")
    args = parser.parse_args()
    torch, peft = require_peers()
    device = torch.device("cuda")
    dtype = torch.bfloat16
    adapter_dtype = torch.bfloat16 if args.adapter_dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    common = {"peer": "peft", "torch": torch.__version__, "peft": peft.__version__,
              "device": torch.cuda.get_device_name(device), "adapter_dtype": args.adapter_dtype}

    def emit(name, T, d, r, bwd, ms, **extra):
        print(json.dumps({**common, "name": name, "T": T, "d": d, "r": r, "bwd": bwd, "ms": ms,
                          **extra}), flush=True)

    for T, d, r in SHAPES:
        x = torch.rand(T, d, device=device, dtype=dtype) * 2 - 1
        gy = torch.rand(T, d, device=device, dtype=dtype) * 2 - 1
        fwd, fwd_bwd = bench_base(torch, x, gy, args.min_time)
        emit("base_gemm", T, d, r, 0, fwd)
        emit("base_gemm", T, d, r, 1, fwd_bwd)
        for dropout, name in DROPOUTS:
            fwd, fwd_bwd = bench_lora(torch, peft, x, gy, r, dropout, adapter_dtype, args.min_time)
            emit(name, T, d, r, 0, fwd, dropout=dropout)
            emit(name, T, d, r, 1, fwd_bwd, dropout=dropout)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
