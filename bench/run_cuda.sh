#!/usr/bin/env bash
# Runs the CUDA benchmarks side by side in one go.
#  1. Adapter layer: bench_adapter_cuda (loralab, bf16, cuBLAS base) and PEFT
#     (bench/peers/peft_layer.py), then one markdown table with the ratios and the CUDA issue's
#     targets, PASS/FAIL each (bench/summarize_cuda.py).
#  2. GPT-2 124M LoRA fine-tuning: bench_gpt2_cuda in bf16, plain and --recompute, and PyTorch +
#     PEFT (bench/peers/peft_gpt2.py), eager and --compile; one JSON line each in
#     OUTDIR/gpt2_*.jsonl (an arm that fails leaves an "error" line and the others still run),
#     then bench/summarize_gpt2.py prints the table and writes it into docs/PERFORMANCE.md
#     (between the gpt2-bench markers; GPT2_UPDATE_DOCS=0 leaves the docs alone).
#  3. Sharing schemes: bench_share_cuda in bf16, forward + backward time of MoS, pure sharing and
#     PRoLoRA over LoRA's at the same rank on the GPT-2 124M shape at context 128, one JSON line
#     per scheme in OUTDIR/share.jsonl (informative: no target, does not change the exit status).
#  4. Dropout framework: bench_dropout_cuda in bf16, forward + backward time of HiddenKey-,
#     HiddenKey (second forward for the KL) and HiddenKey with both branches over plain LoRA's on
#     the same shape, one JSON line per arm in OUTDIR/dropout.jsonl (informative, like 3.).
#  5. GaLore projector refresh: bench_galore_cuda (a 4096 x 4096 fp32 gradient at rank 128: exact
#     cuSOLVER SVD vs the randomized range finder, power iterations 2, oversample 8; ms per
#     refresh and the subspace distance between them) and PyTorch's torch.linalg.svd and
#     torch.svd_lowrank on the same kind of matrix (bench/peers/torch_svd.py), one JSON line per
#     method in OUTDIR/galore.jsonl; target: randomized refresh <= 50 ms (a miss makes the exit
#     status at least 1).
# Needs a CUDA device, and for the peers a Python with PyTorch (CUDA build), transformers and
# peft: PYTHON=/path/to/python to choose it. About 3 to 6 minutes on an H100 once built.
# Usage: bench/run_cuda.sh [output directory, default build/default/bench-results-cuda]
# Exit status: the worse of the two summarizers' and the GaLore target's (0 all targets pass, 1
# one fails, 2 a number is missing), a failed adapter benchmark's status, or 77 when there is no
# CUDA device.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/build/default/bench-results-cuda}"
python="${PYTHON:-python3}"
arm_timeout="${GPT2_ARM_TIMEOUT:-600}"  # seconds per GPT-2 arm (torch.compile takes the longest)
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$root"
if [ ! -f "$root/build/default/build.ninja" ]; then
  (cd "$root" && cmake --preset default >&2)
fi
cmake --build "$root/build/default" --target bench_adapter_cuda >&2

# ---- 1. adapter layer ------------------------------------------------------------------------
status=0
"$root/build/default/bench/bench_adapter_cuda" --benchmark_out="$out/loralab.json" \
  --benchmark_out_format=json >&2 || status=$?
if [ "$status" -eq 77 ]; then
  echo "[bench] no CUDA device on this machine: nothing was measured" >&2
  exit 77
elif [ "$status" -ne 0 ]; then
  echo "[bench] bench_adapter_cuda failed with status $status; going on with GPT-2" >&2
else
  peer_status=0
  "$python" "$root/bench/peers/peft_layer.py" > "$out/peft.jsonl" || peer_status=$?
  [ "$peer_status" -eq 0 ] || echo "[bench] peft_layer.py failed with status $peer_status" >&2
  python3 "$root/bench/summarize_cuda.py" "$out" || status=$?
fi

# ---- 2. GPT-2 124M fine-tuning ---------------------------------------------------------------
echo "[bench] GPT-2 124M LoRA fine-tuning: loralab bf16, bf16 --recompute, PEFT, PEFT+compile" >&2
rm -f "$out"/gpt2_*.jsonl
build_status=0
cmake --build "$root/build/default" --target bench_gpt2_cuda >&2 || build_status=$?

# run_arm NAME FALLBACK_JSON_FIELDS COMMAND...: COMMAND's stdout goes to OUTDIR/gpt2_NAME.jsonl;
# when it exits non-zero without printing an "error" line, one is added (FALLBACK names the arm).
run_arm() {
  local name="$1" fields="$2" file="$out/gpt2_$1.jsonl" rc=0
  shift 2
  echo "[bench] gpt2 $name: $*" >&2
  timeout "$arm_timeout" "$@" > "$file" || rc=$?
  if [ "$rc" -ne 0 ] && ! grep -q '"error"' "$file"; then
    local why="exited with status $rc without a result"
    [ "$rc" -ne 124 ] || why="timed out after ${arm_timeout}s (GPT2_ARM_TIMEOUT)"
    echo "{$fields, \"error\": \"$why\"}" >> "$file"
  fi
  echo "[bench] gpt2 $name: exit status $rc" >&2
}

gpt2_bin="build/default/bench/bench_gpt2_cuda"  # relative: the JSON records the command
if [ "$build_status" -eq 0 ]; then
  run_arm loralab_bf16 '"impl": "loralab", "dtype": "bf16", "recompute": false' \
    "$gpt2_bin" --dtype bf16 --json
  run_arm loralab_bf16_recompute '"impl": "loralab", "dtype": "bf16", "recompute": true' \
    "$gpt2_bin" --dtype bf16 --recompute --json
else
  for arm in loralab_bf16 loralab_bf16_recompute; do
    recompute=false; [ "$arm" = loralab_bf16 ] || recompute=true
    echo "{\"impl\": \"loralab\", \"dtype\": \"bf16\", \"recompute\": $recompute, \"error\": \"bench_gpt2_cuda did not build (status $build_status)\"}" \
      > "$out/gpt2_$arm.jsonl"
  done
fi
run_arm peft '"impl": "peft"' "$python" bench/peers/peft_gpt2.py
run_arm peft_compile '"impl": "peft+compile"' "$python" bench/peers/peft_gpt2.py --compile

device="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
update=(--update "$root/docs/PERFORMANCE.md")
[ "${GPT2_UPDATE_DOCS:-1}" != 0 ] || update=()
gpt2_status=0
python3 "$root/bench/summarize_gpt2.py" --device "$device" --command "bench/run_cuda.sh" \
  ${update[@]+"${update[@]}"} "$out" || gpt2_status=$?
[ "$gpt2_status" -le "$status" ] || status=$gpt2_status

# ---- 3. sharing schemes over LoRA ------------------------------------------------------------
echo "[bench] sharing schemes over LoRA (forward + backward, bf16, GPT-2 124M shape, T=128)" >&2
share_status=0
cmake --build "$root/build/default" --target bench_share_cuda >&2 || share_status=$?
if [ "$share_status" -eq 0 ]; then
  timeout "$arm_timeout" "$root/build/default/bench/bench_share_cuda" --dtype bf16 --json \
    > "$out/share.jsonl" || share_status=$?
fi
if [ "$share_status" -ne 0 ]; then
  echo "[bench] bench_share_cuda failed with status $share_status" >&2
else
  cat "$out/share.jsonl"
fi

# ---- 4. dropout framework over LoRA ----------------------------------------------------------
echo "[bench] HiddenKey over LoRA (forward + backward, bf16, GPT-2 124M shape, T=128)" >&2
dropout_status=0
cmake --build "$root/build/default" --target bench_dropout_cuda >&2 || dropout_status=$?
if [ "$dropout_status" -eq 0 ]; then
  timeout "$arm_timeout" "$root/build/default/bench/bench_dropout_cuda" --dtype bf16 --json \
    > "$out/dropout.jsonl" || dropout_status=$?
fi
if [ "$dropout_status" -ne 0 ]; then
  echo "[bench] bench_dropout_cuda failed with status $dropout_status" >&2
else
  cat "$out/dropout.jsonl"
fi

# ---- 5. GaLore projector refresh -------------------------------------------------------------
echo "[bench] GaLore projector refresh (4096 x 4096 fp32, rank 128): exact SVD vs randomized" >&2
galore_status=0
cmake --build "$root/build/default" --target bench_galore_cuda >&2 || galore_status=$?
rm -f "$out/galore.jsonl"
if [ "$galore_status" -eq 0 ]; then
  timeout "$arm_timeout" "$root/build/default/bench/bench_galore_cuda" --json \
    > "$out/galore.jsonl" || galore_status=$?
fi
peer_status=0
timeout "$arm_timeout" "$python" "$root/bench/peers/torch_svd.py" >> "$out/galore.jsonl" \
  || peer_status=$?
[ "$peer_status" -eq 0 ] || echo "[bench] torch_svd.py failed with status $peer_status" >&2
[ ! -f "$out/galore.jsonl" ] || cat "$out/galore.jsonl"
# The target: loralab's randomized refresh within 50 ms (2 when the number is missing).
target_status=0
python3 - "$out/galore.jsonl" <<'PY' || target_status=$?
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = [r for r in rows if r.get("impl") == "loralab" and r.get("method") == "randomized"]
if not ours or "ms" not in ours[0]:
    print("[bench] GaLore: no randomized refresh time from bench_galore_cuda", file=sys.stderr)
    sys.exit(2)
r = ours[0]
ok = r["ms"] <= r.get("target_ms", 50.0)
peers = {(x["impl"], x["method"]): x["ms"] for x in rows if "ms" in x}
print(f"[bench] GaLore randomized refresh {r['ms']:.2f} ms (target <= {r.get('target_ms', 50.0):g} "
      f"ms: {'PASS' if ok else 'FAIL'}), subspace distance to exact {r['subspace_distance']:.3g}; "
      + ", ".join(f"{i} {m} {v:.2f} ms" for (i, m), v in sorted(peers.items())), file=sys.stderr)
sys.exit(0 if ok else 1)
PY
[ "$galore_status" -eq 0 ] || { echo "[bench] bench_galore_cuda failed with status $galore_status" >&2; target_status=2; }
[ "$target_status" -le "$status" ] || status=$target_status
exit "$status"
