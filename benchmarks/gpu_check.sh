#!/usr/bin/env bash
# What a lent GPU should prove, in about 8 minutes on one H200 (issue 18, item 6).
#
#     bash benchmarks/gpu_check.sh [OUT]     # from the repository root; OUT: the logs' folder
#
# 1. the CUDA parametrisations of the layer tests (they skip, saying so, on a machine without one);
# 2. training and sampling throughput of Glow against normflows, side by side, in float32 and
#    channels_last, with torch.compile rows, then the same under bfloat16 autocast for every system;
# 3. memory-saving backprop against plain autograd, with the GPU's peak memory;
# 4. five minutes of Glow on MNIST (bfloat16 AMP, batch 256) and its test bits/dim (the target is
#    <= 1.10 in 5 minutes), written to OUT, not to the shipped folder.
#
# Each step's output goes to OUT/<step>.log and the summary lines to OUT/summary.txt. Without a
# CUDA device the script stops at once and says so. MNIST comes from FLOWLIB_DATA (or the cache);
# the peers (normflows) from benchmarks/requirements-peers.txt.
set -uo pipefail
OUT="${1:-runs/gpu_check}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

"$PY" - <<'EOF' | tee -a "$SUMMARY" || exit 1
import sys
import torch
if not torch.cuda.is_available():
    print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check")
    sys.exit(1)
print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

FAILED=0
step() {  # step NAME COMMAND...: run it, keep its log, record its time and exit status
    local name="$1"; shift
    echo "== $name: $*" | tee -a "$SUMMARY"
    local start=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $status after $((SECONDS - start)) s" | tee -a "$SUMMARY"
    [ "$status" -eq 0 ] || FAILED=1
}

step cuda_tests "$PY" -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_layers_autograd.py tests/test_conditional.py tests/test_splines.py
step throughput "$PY" benchmarks/throughput.py --device cuda --train-batch 256 --sample-batch 1024 \
    --rounds 6 --channels-last --compile
step throughput_bf16 "$PY" benchmarks/throughput.py --device cuda --train-batch 256 --sample-batch 1024 \
    --rounds 6 --channels-last --amp bf16
step memory "$PY" benchmarks/reversible_memory.py --device cuda --batch 65536
step mnist_glow "$PY" scripts/train_image_flow.py --model glow --data mnist --minutes 5 --device cuda \
    --amp bf16 --batch 256 --lr 3e-3 --iw-samples 4 --threads 8 --fresh --no-readme \
    --out "$OUT/glow_mnist_gpu.pt" --state "$OUT/glow_mnist_gpu.fit.pt"
grep -h "test bits/dim" "$OUT/mnist_glow.log" | tee -a "$SUMMARY"
exit "$FAILED"
