#!/usr/bin/env bash
# Runs the CPU benchmarks side by side in one go: loralab with Eigen's own GEMM, loralab with
# Eigen routed to OpenBLAS (EIGEN_USE_BLAS), and PyTorch (bench/peers/torch_lora_cpu.py), then
# the sharing axis at model level (bench_share_cpu: MoS, pure sharing, PRoLoRA against LoRA of
# the same rank), and prints the tables with the ratios. Needs python3-torch (Debian) and
# libopenblas0-pthread (not for --share-only).
# Usage: bench/run_cpu.sh [--share-only] [output directory, default <build>/bench-results]
# The build directory is build/default, or $LORALAB_BUILD_DIR (configured with
# -DLORALAB_BUILD_BENCH=ON).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
share_only=0
if [[ "${1:-}" == "--share-only" ]]; then
  share_only=1
  shift
fi
build="${LORALAB_BUILD_DIR:-$root/build/default}"
[[ "$build" = /* ]] || build="$root/$build"
out="${1:-$build/bench-results}"
mkdir -p "$out"
if (( share_only )); then
  rm -f "$out/eigen.json" "$out/blas.json" "$out/torch.jsonl"  # no stale tables from another run
  cmake --build "$build" --target bench_share_cpu >&2
else
  cmake --build "$build" --target bench_adapter_cpu bench_adapter_cpu_blas bench_share_cpu >&2
  echo "[bench] OpenBLAS in use by torch: $(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu 2>/dev/null || echo unknown)" >&2
  "$build/bench/bench_adapter_cpu" --benchmark_format=json --benchmark_out="$out/eigen.json" \
    --benchmark_out_format=json >&2
  "$build/bench/bench_adapter_cpu_blas" --benchmark_format=json --benchmark_out="$out/blas.json" \
    --benchmark_out_format=json >&2
  /usr/bin/python3 "$root/bench/peers/torch_lora_cpu.py" > "$out/torch.jsonl"
fi
"$build/bench/bench_share_cpu" --benchmark_format=json --benchmark_out="$out/share.json" \
  --benchmark_out_format=json >&2
python3 "$root/bench/summarize_cpu.py" "$out"
