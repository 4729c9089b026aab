#!/usr/bin/env bash
# Runs the CPU benchmarks side by side in one go: loralab with Eigen's own GEMM, loralab with
# Eigen routed to OpenBLAS (EIGEN_USE_BLAS), and PyTorch (bench/peers/torch_lora_cpu.py), then
# prints one table with the ratios. Needs python3-torch (Debian) and libopenblas0-pthread.
# Usage: bench/run_cpu.sh [output directory, default build/default/bench-results]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/build/default/bench-results}"
mkdir -p "$out"
cmake --build "$root/build/default" --target bench_adapter_cpu bench_adapter_cpu_blas >&2
echo "[bench] OpenBLAS in use by torch: $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu 2>/dev/null || echo unknown)" >&2
"$root/build/default/bench/bench_adapter_cpu" --benchmark_format=json --benchmark_out="$out/eigen.json" \
  --benchmark_out_format=json >&2
"$root/build/default/bench/bench_adapter_cpu_blas" --benchmark_format=json --benchmark_out="$out/blas.json" \
  --benchmark_out_format=json >&2
/usr/bin/python3 "$root/bench/peers/torch_lora_cpu.py" > "$out/torch.jsonl"
python3 "$root/bench/summarize_cpu.py" "$out"
