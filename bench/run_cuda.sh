#!/usr/bin/env bash
# Runs the CUDA benchmarks side by side in one go: bench_adapter_cuda (loralab, bf16, cuBLAS base)
# and PEFT (bench/peers/peft_layer.py), then prints one markdown table with the ratios and the
# CUDA issue's targets, PASS/FAIL each (bench/summarize_cuda.py). Needs a CUDA device, and for the
# peer a Python with PyTorch (CUDA build) and peft: PYTHON=/path/to/python to choose it.
# Usage: bench/run_cuda.sh [output directory, default build/default/bench-results-cuda]
# Exit status: the summarizer's (0 all targets pass, 1 one fails, 2 a number is missing), or 77
# when there is no CUDA device.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/build/default/bench-results-cuda}"
python="${PYTHON:-python3}"
mkdir -p "$out"
if [ ! -f "$root/build/default/build.ninja" ]; then
  (cd "$root" && cmake --preset default >&2)
fi
cmake --build "$root/build/default" --target bench_adapter_cuda >&2
status=0
"$root/build/default/bench/bench_adapter_cuda" --benchmark_out="$out/loralab.json" \
  --benchmark_out_format=json >&2 || status=$?
if [ "$status" -eq 77 ]; then
  echo "[bench] no CUDA device on this machine: nothing was measured" >&2
  exit 77
elif [ "$status" -ne 0 ]; then
  echo "[bench] bench_adapter_cuda failed with status $status" >&2
  exit "$status"
fi
"$python" "$root/bench/peers/peft_layer.py" > "$out/peft.jsonl"
python3 "$root/bench/summarize_cuda.py" "$out"
