#!/usr/bin/env bash
# The real programs on a GPU, every mode the README offers, in one call (<= 10 minutes on an
# H100/H200: ~7 for the pretraining runs, whose compiled ones spend minutes compiling, ~2 for detection): pretrain/main_pretrain.py runs (tools/benchmarks/gpu_programs.py), then the Mask R-CNN
# check (gpu_detection_check.sh) when its carried wheels are there. Results under $OUT:
# gpu_programs.json / .md (one line per run) and the detection check's files.
#   OUT=/tmp/gpu bash tools/benchmarks/gpu_programs.sh                    # defaults: batch 32, 4 runs at a time
#   OUT=/tmp/p bash tools/benchmarks/gpu_programs.sh --tiny --device cpu --modes eager   # dry run on a CPU
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${OUT:-gpu_programs_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/pretrain${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
"$PY" -c "import torch, timm, numpy, yaml, PIL" \
  || { echo "error: python3 needs torch, timm, numpy, pyyaml and pillow" >&2; exit 2; }
timeout 480 "$PY" tools/benchmarks/gpu_programs.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_programs.log"
status=${PIPESTATUS[0]}
if [ -x tools/benchmarks/gpu_detection_check.sh ] && [ "${SKIP_DETECTION:-0}" != 1 ]; then
  bash tools/benchmarks/gpu_detection_check.sh || status=1
fi
exit "$status"
