#!/usr/bin/env python3
"""Joins the Google Benchmark JSON of bench_adapter_cpu (Eigen and OpenBLAS builds) with the
PyTorch peer's JSON lines and prints a markdown table: times in ms, ratio to our own base GEMM
(measured in the same binary run) and ratio to PyTorch's LoRA for the same shape and pass.
Then, when share.json (bench_share_cpu) is there, the sharing-axis table: one model::Gpt training
step per arm, measured interleaved with LoRA of the same rank, and the sharing overhead parts."""
import json
import sys
from pathlib import Path


def load_gbench(path):
    rows = {}
    for b in json.loads(Path(path).read_text())["benchmarks"]:
        name, *args = b["name"].split("/")
        kv = dict(a.split(":") for a in args if ":" in a)
        key = (name, int(kv["T"]), int(kv["d"]), int(kv["bwd"]))
        rows[key] = {"ms": b["real_time"], "ratio": b.get("ratio_to_base")}
    return rows


def share_table(path):
    benches = json.loads(path.read_text())["benchmarks"]
    print("| arm (Gpt 8x256, 4 heads, batch 8 x 64, all 4 modules) | trainable | step ms | "
          "LoRA step ms (interleaved) | arm/LoRA (median) | arm/LoRA (means) |")
    print("|---|---|---|---|---|---|")
    for b in benches:
        if not b["name"].startswith("gpt_step/"):
            continue
        print(f"| {b['name'].split('/')[1]} | {int(b['trainable'])} | {b['real_time']:.1f} "
              f"| {b['lora_ms']:.1f} | {b['ratio_to_lora']:.3f} | {b['ratio_of_means']:.3f} |")
    parts = [b for b in benches if b["name"].startswith("share_")]
    if parts:
        print()
        print("| sharing overhead per step | us |")
        print("|---|---|")
        for b in parts:
            print(f"| {'/'.join(b['name'].split('/')[:2])} | {b['real_time']:.1f} |")


def main():
    out = Path(sys.argv[1])
    if not (out / "eigen.json").exists():  # bench/run_cpu.sh --share-only
        share_table(out / "share.json")
        return
    ours = {"eigen": load_gbench(out / "eigen.json"), "openblas": load_gbench(out / "blas.json")}
    torch = {}
    for line in (out / "torch.jsonl").read_text().splitlines():
        r = json.loads(line)
        torch[(r["name"], r["T"], r["d"], r["bwd"])] = r["ms"]
    print("| shape | pass | torch base | torch LoRA | backend | base | LoRA | LoRA/base | LoRA-SP | SP/base | LoRA/torch LoRA |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, T, d, bwd) in sorted(k for k in torch if k[0] == "base_gemm"):
        for backend, rows in ours.items():
            base = rows[("base_gemm", T, d, bwd)]
            lora = rows[("lora_r16", T, d, bwd)]
            sp = rows[("lora_sp_r16", T, d, bwd)]
            t_lora = torch[("lora_r16", T, d, bwd)]
            print(f"| T={T} d={d} r=16 | {'fwd+bwd' if bwd else 'fwd'} | {torch[('base_gemm', T, d, bwd)]:.2f} "
                  f"| {t_lora:.2f} | {backend} | {base['ms']:.2f} | {lora['ms']:.2f} | {lora['ratio']:.3f} "
                  f"| {sp['ms']:.2f} | {sp['ratio']:.3f} | {lora['ms'] / t_lora:.3f} |")
    if (out / "share.json").exists():
        print()
        share_table(out / "share.json")


if __name__ == "__main__":
    main()
