#!/usr/bin/env bash
# The GPU run: every GPU benchmark and GPU check of GreenMIM in one go, <= 8 minutes on an
# H100/H200, results in $OUT/gpu_results.json and $OUT/gpu_results.md (plus the card's details).
# Needs python3 with torch, timm, numpy and pyyaml on the machine; the package runs from this
# checkout (no install, no detectron2, no fvcore).
#   OUT=/tmp/gpu bash tools/benchmarks/gpu_suite.sh                 # defaults: Swin-B 224, batch 128, bf16
#   OUT=/tmp/gpu bash tools/benchmarks/gpu_suite.sh --batch-size 64 # extra arguments go to gpu_suite.py
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${OUT:-gpu_suite_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/pretrain${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
"$PY" -c "import torch, timm, numpy, yaml; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" \
  | tee "$OUT/environment.txt" || { echo "error: python3 needs torch, timm, numpy and pyyaml" >&2; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
# 420 s of cases (the suite skips and lists what does not fit), a hard stop at 470 s.
timeout 470 "$PY" tools/benchmarks/gpu_suite.py --out "$OUT" --budget-s 420 "$@" 2>&1 | tee "$OUT/gpu_suite.log"
exit "${PIPESTATUS[0]}"
