#!/usr/bin/env python3
"""Joins the JSON lines of bench_gpt2_cuda (loralab) and bench/peers/peft_gpt2.py (PyTorch + PEFT,
eager and torch.compile) into one markdown table: tokens/s, peak memory, and both as ratios to
eager PEFT (= 1.0), then checks the issue's target: some loralab bf16 row at >= 2x PEFT's
tokens/s with a peak memory <= PEFT's.

Usage: python3 bench/summarize_gpt2.py [--device NAME] [--command CMD] [--update FILE.md]
                                        PATH [PATH ...]
PATH is a file of JSON lines or a folder (its gpt2_*.jsonl files are read). --update FILE.md
replaces the text between the lines `<!-- gpt2-bench:begin -->` and `<!-- gpt2-bench:end -->`
of FILE.md with the table (only when at least one row has a measured number).
Exit status: 0 when the target is met, 1 when it is not, 2 when loralab's or PEFT's number is
missing (or the input cannot be read).
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

BEGIN = "<!-- gpt2-bench:begin -->"
END = "<!-- gpt2-bench:end -->"
GIB = 1024.0 ** 3
ORDER = {"peft": 0, "peft+compile": 1, "loralab": 2}


def load(paths):
    """Every JSON object of the given files (or of the gpt2_*.jsonl files of given folders)."""
    rows = []
    for p in map(Path, paths):
        files = sorted(p.glob("gpt2_*.jsonl")) if p.is_dir() else [p]
        for f in files:
            for n, line in enumerate(f.read_text().splitlines(), 1):
                line = line.strip()
                if not line.startswith("{"):
                    continue  # stray output
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    rows.append({"impl": f"{f.name}:{n}", "error": f"unreadable JSON ({e})"})
    return rows


def label(r):
    impl = r.get("impl", "?")
    if impl == "loralab":
        return "loralab" + (" + recompute" if r.get("recompute") else "")
    names = {"peft": "PyTorch + PEFT", "peft+compile": "PyTorch + PEFT, torch.compile"}
    return names.get(impl, impl)


def precision(r):
    if r.get("impl") == "loralab":
        dtype = r.get("dtype", "?")
        return "bf16 (fp32 adapters, moments)" if dtype == "bf16" else dtype
    attn = r.get("attn", "?")
    base = (r.get("config") or {}).get("base_dtype", "fp32")
    return f"bf16 autocast, {base} base, attn {attn}"


def num(r, key):
    v = r.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or not b else a / b


def loss_text(r):
    a, b = num(r, "loss_first"), num(r, "loss_last")
    return "n/a" if a is None or b is None else f"{a:.3f} -> {b:.3f}"


def first(rows, impl, **match):
    """The first row of `impl` with a number that matches `match`."""
    for r in rows:
        if r.get("impl") == impl and num(r, "tokens_per_s") is not None and all(
                r.get(k) == v for k, v in match.items()):
            return r
    return None


def render(rows, device, command):
    """(markdown text, exit status)."""
    rows = sorted(rows, key=lambda r: (ORDER.get(r.get("impl"), 3), bool(r.get("recompute"))))
    peft = first(rows, "peft")
    peft_tps = num(peft, "tokens_per_s") if peft else None
    peft_peak = num(peft, "peak_bytes") if peft else None
    if not device:
        device = next((r["device"] for r in rows if r.get("device")), "unknown device")
    versions = next(({k: r[k] for k in ("torch", "transformers", "peft") if k in r}
                     for r in rows if r.get("impl", "").startswith("peft") and "torch" in r), {})
    cfg = next((r["config"] for r in rows
                if isinstance(r.get("config"), dict) and "d_model" in r["config"]), {})

    out = []
    out.append(f"Measured on **{device}**, {datetime.date.today().isoformat()}"
               + (", " + ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else "")
               + ".")
    if cfg:
        out.append("")
        out.append(f"Config: {cfg.get('layers')} layers, d {cfg.get('d_model')}, "
                   f"{cfg.get('heads')} heads, vocabulary {cfg.get('vocab')}, batch "
                   f"{cfg.get('batch')} x {cfg.get('context')} tokens, LoRA r={cfg.get('rank')} "
                   f"alpha={cfg.get('alpha')} on c_attn, attn.c_proj, c_fc, mlp.c_proj; AdamW lr "
                   f"{cfg.get('lr')}; {cfg.get('warmup')} warm-up + {cfg.get('steps')} timed "
                   "steps.")
    out.append("")
    out.append("| implementation | precision | tokens/s | ms/step | peak memory (GiB) "
               "| device used (GiB) | tokens/s vs PEFT | peak vs PEFT | loss first -> last |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            out.append(f"| {label(r)} | {precision(r)} | error: "
                       f"{str(r['error']).splitlines()[0][:300].replace('|', '/')} "
                       "| | | | | | |")
            continue
        tps, peak = num(r, "tokens_per_s"), num(r, "peak_bytes")
        used = num(r, "device_used_bytes")
        out.append("| " + " | ".join([
            label(r), precision(r), fmt(tps, ",.0f"), fmt(num(r, "step_ms"), ".1f"),
            fmt(None if peak is None else peak / GIB, ".2f"),
            fmt(None if used is None else used / GIB, ".2f"),
            fmt(ratio(tps, peft_tps), ".2f") + "x", fmt(ratio(peak, peft_peak), ".2f") + "x",
            loss_text(r)]) + " |")
    out.append("")
    out.append("Peak memory: `torch.cuda.max_memory_allocated()` for PEFT, the peak of loralab's "
               "device allocations for loralab (both from before the model is built; neither "
               "counts the CUDA context; loralab's leaves out cuBLAS workspaces, which recent "
               "PyTorch allocates through its caching allocator and so counts). Device used: "
               "growth of "
               "`cudaMemGetInfo` total - free from right after context creation to the end "
               "(includes PyTorch's caching-allocator reserve and library workspaces).")

    # The target: >= 2x eager PEFT's tokens/s at <= its peak memory, by some loralab bf16 row.
    ours = [r for r in rows if r.get("impl") == "loralab" and r.get("dtype") == "bf16"
            and num(r, "tokens_per_s") is not None and num(r, "peak_bytes") is not None]
    out.append("")
    if peft_tps is None or peft_peak is None or not ours:
        missing = "PEFT (eager)" if peft_tps is None or peft_peak is None else "loralab bf16"
        out.append(f"Target (>= 2x PEFT tokens/s at <= PEFT peak memory): **MISSING** "
                   f"(no number from {missing}).")
        status = 2
    else:
        lines, status = [], 1
        for r in ours:
            s, m = r["tokens_per_s"] / peft_tps, r["peak_bytes"] / peft_peak
            ok = s >= 2.0 and m <= 1.0
            status = 0 if ok else status
            lines.append(f"{label(r)}: {s:.2f}x tokens/s, {m:.2f}x peak memory: "
                         f"{'PASS' if ok else 'FAIL'}")
        verdict = "PASS" if status == 0 else "FAIL"
        out.append(f"Target (>= 2x PEFT tokens/s at <= PEFT peak memory): **{verdict}** "
                   f"({'; '.join(lines)}).")
        compiled = first(rows, "peft+compile")
        if compiled:
            best = max(ours, key=lambda r: r["tokens_per_s"])
            out.append(f"Against torch.compile'd PEFT: {label(best)} at "
                       f"{best['tokens_per_s'] / compiled['tokens_per_s']:.2f}x its tokens/s, "
                       f"{fmt(ratio(num(best, 'peak_bytes'), num(compiled, 'peak_bytes')), '.2f')}x"
                       f" its peak memory.")
    if command:
        out.append("")
        out.append(f"Command (from the repository root): `{command}`")
    cmds = [r["command"] for r in rows if r.get("command")]
    if cmds:
        out.append("")
        out.append("Each row ran as:")
        out.append("")
        out.extend(f"    {c}" for c in cmds)
    return "\n".join(out) + "\n", status


def update(path, text):
    """Replaces the block between the markers of `path` with `text`; False when they are absent."""
    doc = Path(path).read_text()
    b, e = doc.find(BEGIN), doc.find(END)
    if b < 0 or e < b:
        return False
    Path(path).write_text(doc[:b + len(BEGIN)] + "\n" + text + doc[e:])
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="JSON-lines files or folders with gpt2_*.jsonl")
    p.add_argument("--device", default="", help="GPU name (nvidia-smi --query-gpu=name)")
    p.add_argument("--command", default="", help="the command that produced the numbers")
    p.add_argument("--update", metavar="FILE.md", help="rewrite the gpt2-bench block of FILE.md")
    args = p.parse_args()
    try:
        rows = load(args.paths)
    except OSError as e:
        print(f"summarize_gpt2.py: {e}", file=sys.stderr)
        return 2
    if not rows:
        print("summarize_gpt2.py: no JSON lines found in " + ", ".join(args.paths),
              file=sys.stderr)
        return 2
    text, status = render(rows, args.device.strip(), args.command)
    print(text, end="")
    if args.update:
        if not any(num(r, "tokens_per_s") is not None for r in rows):
            print(f"summarize_gpt2.py: nothing was measured; {args.update} left as it is",
                  file=sys.stderr)
        elif update(args.update, text):
            print(f"summarize_gpt2.py: updated {args.update}", file=sys.stderr)
        else:
            print(f"summarize_gpt2.py: {args.update} has no {BEGIN} ... {END} block",
                  file=sys.stderr)
            return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
