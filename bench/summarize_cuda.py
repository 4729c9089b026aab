#!/usr/bin/env python3
"""Joins the Google Benchmark JSON of bench_adapter_cuda with the PEFT peer's JSON lines and
prints a markdown table (times in ms, our ratios to our own cuBLAS base measured in the same
binary run, PEFT's ratios to its own base, our LoRA time over PEFT's LoRA time), then checks the
CUDA issue's targets and prints PASS/FAIL for each.

Usage: python3 bench/summarize_cuda.py OUTDIR   (OUTDIR holds loralab.json and peft.jsonl)
Exit status: 0 when every target passes, 1 when one fails, 2 when a number is missing.
"""
import json
import sys
from pathlib import Path

TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
SHAPES = [(4096, 4096, 16), (8192, 4096, 64), (2048, 8192, 16), (16, 4096, 16)]  # (T, d, r)
PASSES = [(0, "fwd"), (1, "fwd+bwd")]


def load_gbench(path):
    """({(name, T, d, r, bwd): {"ms", "ratio", "error"}}, context) from Google Benchmark's JSON;
    the median aggregate wins over single runs when --benchmark_repetitions was used."""
    rows = {}
    data = json.loads(Path(path).read_text())
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name, *args = b.get("run_name", b["name"]).split("/")
        kv = dict(a.split(":", 1) for a in args if ":" in a)
        key = (name, int(kv["T"]), int(kv["d"]), int(kv["r"]), int(kv["bwd"]))
        if key in rows and b.get("run_type") != "aggregate":
            continue  # repetitions: keep the aggregate (or the first run)
        rows[key] = {
            "ms": None if b.get("error_occurred") else b["real_time"] * TO_MS[b.get("time_unit", "ns")],
            "ratio": b.get("ratio_to_base"),
            "error": b.get("error_message"),
        }
    return rows, data.get("context", {})


def load_peer(path):
    """{(name, T, d, r, bwd): ms} from the peer's JSON lines, plus the first line's metadata."""
    rows, meta = {}, {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        rows[(r["name"], r["T"], r["d"], r["r"], r["bwd"])] = r["ms"]
        meta = meta or {k: r[k] for k in ("torch", "peft", "device", "adapter_dtype") if k in r}
    return rows, meta


def fmt(x):
    """Ratios with three decimals."""
    return "n/a" if x is None else f"{x:.3f}"


def fmt_ms(x):
    """Milliseconds with four significant digits (T=16 runs take about 0.01 ms)."""
    return "n/a" if x is None else f"{x:.4g}"


def ms_of(rows, key):
    row = rows.get(key)
    return None if row is None else row["ms"]


def ratio_of(rows, key):
    """Our ratio_to_base counter, or the ratio of the two times when the counter is absent."""
    row = rows.get(key)
    if row is None or row["ms"] is None:
        return None
    if row["ratio"] is not None:
        return row["ratio"]
    base = ms_of(rows, ("base_gemm",) + key[1:])
    return row["ms"] / base if base else None


def div(a, b):
    return None if a is None or not b else a / b


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    ours, context = load_gbench(out / "loralab.json")
    peft, meta = load_peer(out / "peft.jsonl")
    for key, row in sorted(ours.items()):
        if row["error"]:
            print(f"[bench] {'/'.join(map(str, key))}: skipped with error: {row['error']}", file=sys.stderr)

    print(f"loralab: {context.get('cuda_device', 'unknown device')}, {context.get('date', '')}")
    print(f"PEFT: {meta}\n")
    print("| shape | pass | base | LoRA | LoRA/base | LoRA-SP | SP/base | LoRA drop 0.1 | drop/base "
          "| PEFT base | PEFT LoRA | PEFT LoRA/base | PEFT drop 0.1 | PEFT drop/base "
          "| LoRA/PEFT LoRA | drop/PEFT drop |")
    print("|" + "---|" * 16)
    for T, d, r in SHAPES:
        for bwd, label in PASSES:
            def k(name, T=T, d=d, r=r, bwd=bwd):
                return (name, T, d, r, bwd)

            p_base, p_lora, p_drop = (peft.get(k(n)) for n in ("base_gemm", "lora", "lora_dropout"))
            cells = [
                f"T={T} d={d} r={r}", label,
                fmt_ms(ms_of(ours, k("base_gemm"))),
                fmt_ms(ms_of(ours, k("lora"))), fmt(ratio_of(ours, k("lora"))),
                fmt_ms(ms_of(ours, k("lora_sp"))), fmt(ratio_of(ours, k("lora_sp"))),
                fmt_ms(ms_of(ours, k("lora_dropout"))), fmt(ratio_of(ours, k("lora_dropout"))),
                fmt_ms(p_base), fmt_ms(p_lora), fmt(div(p_lora, p_base)),
                fmt_ms(p_drop), fmt(div(p_drop, p_base)),
                fmt(div(ms_of(ours, k("lora")), p_lora)),
                fmt(div(ms_of(ours, k("lora_dropout")), p_drop)),
            ]
            print("| " + " | ".join(cells) + " |")

    # The targets; "faster than PEFT" compares LoRA (dropout 0) with PEFT's LoRA (dropout 0).
    targets = [
        ("LoRA fwd <= 1.15x base at T=4096 d=4096 r=16",
         ratio_of(ours, ("lora", 4096, 4096, 16, 0)), 1.15),
        ("LoRA fwd+bwd <= 1.3x base at T=4096 d=4096 r=16",
         ratio_of(ours, ("lora", 4096, 4096, 16, 1)), 1.3),
        ("LoRA fwd within 1.5x of base at T=16 d=4096 r=16",
         ratio_of(ours, ("lora", 16, 4096, 16, 0)), 1.5),
    ]
    for T, d, r in SHAPES:
        targets.append((f"LoRA fwd+bwd >= 2x faster than PEFT at T={T} d={d} r={r} (ours/PEFT <= 0.5)",
                        div(ms_of(ours, ("lora", T, d, r, 1)), peft.get(("lora", T, d, r, 1))), 0.5))
    print("\n| target | measured | verdict |\n|---|---|---|")
    status = 0
    for what, value, limit in targets:
        if value is None:
            verdict, status = "MISSING", max(status, 2)
        elif value <= limit:
            verdict = "PASS"
        else:
            verdict, status = "FAIL", max(status, 1)
        print(f"| {what} | {fmt(value)} | {verdict} |")
    return status


if __name__ == "__main__":
    sys.exit(main())
