#!/usr/bin/env python3
"""PyTorch + PEFT side of bench/gpt2_cuda.cpp: LoRA fine-tuning of a GPT-2 124M-shaped model.

The model is transformers' GPT2LMHeadModel built from a GPT2Config (12 layers, d 768, 12 heads,
context 1024, vocabulary 50257 by default; every size is a flag) with random weights (seeded,
transformers' GPT-2 init) and every dropout probability 0 (loralab's arm has no dropout). PEFT
puts LoRA r=16, alpha=32, dropout 0 on target_modules=["c_attn", "c_proj", "c_fc"]; PEFT matches
module names by suffix, so "c_proj" hits both attn.c_proj and mlp.c_proj: the four linears of
every block, as loralab's default targets. fan_in_fan_out=True because GPT-2 uses Conv1D
(weights stored [in x out]).

Each step: a new random token batch [batch x context] (fixed seed, drawn on the GPU), labels =
inputs (transformers shifts them, so the loss covers the same next-token pairs as loralab's),
forward + loss under torch.autocast(cuda, bfloat16), backward, AdamW (lr 1e-4, weight decay 0.01
as loralab's default) over the trainable parameters, zero_grad(set_to_none=True). `--warmup`
steps first (with --compile they include the compilation), then `--steps` timed steps between
two torch.cuda.synchronize() calls; tokens/s = batch * context * steps / seconds.

Memory: torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats() before the
model is built (peak_bytes; weights, activations, gradients, optimizer state), plus the caching
allocator's peak reserve (peak_reserved_bytes) and the device-wide (total - free) growth from
torch.cuda.mem_get_info() since the CUDA context was created (device_used_bytes, the same
measure as bench_gpt2_cuda's).

Prints one JSON line on stdout. When torch, transformers or peft is missing, there is no CUDA
device, or anything fails (e.g. torch.compile), the line carries "error" and the exit status is
still 0, so bench/run_cuda.sh goes on with the other arms.

Usage: python3 bench/peers/peft_gpt2.py [--compile] [--steps 20] [--warmup 5] [--batch 8] ...
"""
import argparse
import json
import sys
import time
import traceback


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--context", type=int, default=1024, help="sequence length of every row")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="wrap the PEFT model in torch.compile")
    p.add_argument("--attn-implementation", default=None,
                   help="transformers attention: sdpa (default when supported), eager, "
                        "flash_attention_2, ...")
    p.add_argument("--base-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="dtype of the frozen GPT-2 weights (autocast runs the math in bf16 "
                        "either way; fp32 is the usual PEFT + autocast recipe)")
    p.add_argument("--adamw", choices=["fused", "foreach", "default"], default="fused",
                   help="torch.optim.AdamW implementation (fused: one kernel, as loralab's)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="transformers' gradient checkpointing (not used by run_cuda.sh)")
    return p.parse_args()


def config_of(args):
    return {"layers": args.layers, "d_model": args.d_model, "heads": args.heads,
            "context": args.context, "vocab": args.vocab, "batch": args.batch,
            "rank": args.rank, "alpha": args.alpha,
            "targets": ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"], "lr": args.lr,
            "steps": args.steps, "warmup": args.warmup, "seed": args.seed,
            "base_dtype": args.base_dtype, "adamw": args.adamw,
            "gradient_checkpointing": args.gradient_checkpointing}


def emit(record):
    print(json.dumps(record), flush=True)


def build_model(torch, transformers, args):
    """GPT2LMHeadModel with random weights and no dropout; returns (model, attention used)."""
    config = transformers.GPT2Config(
        vocab_size=args.vocab, n_positions=args.context, n_embd=args.d_model,
        n_layer=args.layers, n_head=args.heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # loralab's arm has no dropout
        use_cache=False)  # training: no key/value cache
    wanted = [args.attn_implementation] if args.attn_implementation else ["sdpa", "eager"]
    errors = []
    for attn in wanted:
        torch.manual_seed(args.seed)
        try:
            # from_config(attn_implementation=...) exists since transformers 4.36; it raises when
            # the model class does not support the implementation (older GPT-2: no sdpa).
            model = transformers.AutoModelForCausalLM.from_config(config,
                                                                  attn_implementation=attn)
        except (ValueError, TypeError, ImportError) as e:
            errors.append(f"{attn}: {e}")
            continue
        used = getattr(model.config, "_attn_implementation", None) or attn
        return model, used
    if args.attn_implementation is None:  # very old transformers: no attn_implementation at all
        torch.manual_seed(args.seed)
        return transformers.GPT2LMHeadModel(config), "eager (transformers default)"
    raise RuntimeError("attention implementation unavailable: " + "; ".join(errors))


def make_optimizer(torch, params, args):
    kwargs = {"lr": args.lr, "weight_decay": 0.01}
    if args.adamw == "fused":
        kwargs["fused"] = True
    elif args.adamw == "foreach":
        kwargs["foreach"] = True
    try:
        return torch.optim.AdamW(params, **kwargs), args.adamw
    except (TypeError, RuntimeError, ValueError):  # an old torch without fused AdamW
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01), "default"


def run(torch, transformers, peft, args, record):
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # any fp32 matmul outside autocast
    torch.backends.cudnn.allow_tf32 = True
    torch.cuda.init()
    torch.cuda.synchronize()
    free0, total = torch.cuda.mem_get_info()
    torch.cuda.reset_peak_memory_stats()
    record["device"] = torch.cuda.get_device_name(device)

    model, attn = build_model(torch, transformers, args)
    record["attn"] = attn
    if args.base_dtype == "bf16":
        model = model.to(torch.bfloat16)
    model = model.to(device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    alpha = int(args.alpha) if args.alpha.is_integer() else args.alpha
    lora = peft.LoraConfig(
        r=args.rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
        # "c_proj" matches by suffix both attn.c_proj and mlp.c_proj in PEFT: all four linears.
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True)  # GPT-2's Conv1D stores weights [in x out]
    model = peft.get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    record["trainable_params"] = sum(p.numel() for p in params)
    record["adapter_dtype"] = str(params[0].dtype).replace("torch.", "") if params else None
    opt, record["adamw"] = make_optimizer(torch, params, args)
    record["config"]["adamw"] = record["adamw"]

    step_fn = model
    if args.compile:
        step_fn = torch.compile(model)

    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    shape = (args.batch, args.context)

    def train_step():
        tokens = torch.randint(0, args.vocab, shape, device=device, generator=gen)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = step_fn(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    losses = []
    t_warm = time.perf_counter()
    for _ in range(args.warmup):
        losses.append(train_step())
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        losses.append(train_step())
    torch.cuda.synchronize()
    t1 = time.perf_counter()

    seconds = t1 - t0
    free1, _ = torch.cuda.mem_get_info()
    record["tokens_per_s"] = args.batch * args.context * args.steps / seconds
    record["step_ms"] = 1e3 * seconds / args.steps
    record["warmup_s"] = t0 - t_warm
    record["peak_bytes"] = torch.cuda.max_memory_allocated()
    record["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    record["device_used_bytes"] = (total - free1) - (total - free0)
    record["loss_first"] = float(losses[0]) if losses else None
    record["loss_last"] = float(losses[-1]) if losses else None


def main():
    args = parse_args()
    record = {"impl": "peft+compile" if args.compile else "peft", "dtype": "bf16-autocast",
              "command": " ".join(["python3"] + sys.argv), "config": config_of(args)}
    try:
        import torch
        record["torch"] = torch.__version__
        import transformers
        record["transformers"] = transformers.__version__
        import peft
        record["peft"] = peft.__version__
    except ImportError as e:
        record["error"] = f"missing Python package: {e} (needs torch with CUDA, transformers, peft)"
        emit(record)
        return 0
    if not torch.cuda.is_available():
        record["error"] = "no CUDA device visible to PyTorch (torch.cuda.is_available() is False)"
        emit(record)
        return 0
    try:
        run(torch, transformers, peft, args, record)
    except Exception as e:  # torch.compile failures, out of memory, API drift: report, go on
        traceback.print_exc(file=sys.stderr)
        record["error"] = f"{type(e).__name__}: {e}"[:2000]
        for key in ("tokens_per_s", "step_ms", "peak_bytes"):
            record.pop(key, None)
    emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
