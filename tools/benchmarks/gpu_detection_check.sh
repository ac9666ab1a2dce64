#!/usr/bin/env bash
# The detection part of the GPU check: one tools/train_net.py Mask R-CNN run with the Green
# Swin-T backbone on CUDA (30 iterations on generated COCO-format shapes, then COCO evaluation),
# detectron2 built first where it is absent. Results: $OUT/gpu_detection.jsonl (one line),
# $OUT/gpu_detection.md (a table row) and $OUT/gpu_detection.log (the end of the run's output).
# Sized for about 2 minutes on an H100/H200, the detectron2 build included (on these 2-core CPU
# machines, in a python3.11 without detectron2: install and build 32-40 s, the tiny run 17-40 s).
#
# On a machine without detectron2 and without a registry (the GPU machine), carry .whl from
# tools/benchmarks/fetch_device_wheels.sh: its wheels go into $SITE (pip --target; nothing of the
# machine's own Python is changed) and detectron2 is built from the sdist in it by
# scripts/install_detectron2.sh, the project's one offline route.
#   OUT=/tmp/d bash tools/benchmarks/gpu_detection_check.sh                       # CUDA
#   DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/d bash tools/benchmarks/gpu_detection_check.sh
# Variables: PYTHON (python3), DEVICE (cuda), WHL (.whl), SITE (/tmp/site), WORK (/tmp/...),
# MAX_JOBS (nproc; the detectron2 build's compile jobs); extra arguments go to
# gpu_detection_check.py (e.g. --iters 50 --batch-size 16).
# Two halves, for a caller that builds early (gpu_run.sh, during the timed suite, niced): with
# SETUP_ONLY=1 it stops after the set-up (a failed set-up still writes its FAIL row), recording it in
# $WORK/setup.done; SKIP_SETUP=1 then runs only the check, with what setup.done says (the same
# WORK and SITE). Without either, both run as one.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-gpu_detection_out}"
DEVICE="${DEVICE:-cuda}"
WHL="$(cd "${WHL:-$ROOT/.whl}" 2>/dev/null && pwd || echo "${WHL:-$ROOT/.whl}")"
SITE="${SITE:-/tmp/site}"
WORK="${WORK:-${TMPDIR:-/tmp}/greenmim_gpu_detection}"
HELPER="$ROOT/tools/benchmarks/gpu_detection_check.py"
PY="$(command -v "${PYTHON:-python3}")" || { echo "error: no ${PYTHON:-python3} on PATH" >&2; exit 2; }
mkdir -p "$OUT" "$WORK"
SETUP_LOG="$WORK/setup.log"
SETUP_DONE="$WORK/setup.done"  # line 1: set-up seconds, line 2: how detectron2 got here
[ "${SKIP_SETUP:-0}" = 1 ] || : > "$SETUP_LOG"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# The reason in one line, the most specific first: the compiler's first error, the last Python
# exception (pip's own "subprocess-exited-with-error" says nothing), pip's first ERROR line.
reason() {
  { grep -E -m1 ': (fatal )?error: ' "$SETUP_LOG" \
    || grep -E '^\s*[A-Za-z_.]*(Error|Exception): ' "$SETUP_LOG" | tail -n1 \
    || grep -E -m1 '^ERROR' "$SETUP_LOG" || tail -n1 "$SETUP_LOG"; } | sed 's/^\s*//' | cut -c1-300
}

# A failed set-up still leaves the check's row (status FAIL and the reason) under $OUT.
fail() {
  tail -n 60 "$SETUP_LOG" > "$OUT/gpu_detection.log"
  "$PY" "$HELPER" --out "$OUT" --device "$DEVICE" --setup-error "$1"
  exit 1
}

missing="$("$PY" - <<'EOF'
import importlib.util
need = ["torch", "torchvision", "timm", "numpy", "PIL", "yaml", "tqdm"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)" || fail "$PY does not run"
[ -z "$missing" ] || fail "$PY lacks $missing, which the check expects the machine to have"

if [ "${SKIP_SETUP:-0}" = 1 ]; then
  [ -f "$SETUP_DONE" ] || fail "no finished set-up in $WORK (SKIP_SETUP=1 needs a SETUP_ONLY=1 run first)"
  { read -r setup_s; read -r setup; } < "$SETUP_DONE"
  echo "[detection check] set-up done before: $setup in ${setup_s} s"
  exec "$PY" "$HELPER" --out "$OUT" --device "$DEVICE" --work-dir "$WORK/run" --setup "$setup" \
    --setup-s "$setup_s" --setup-log "$SETUP_LOG" "$@"
fi
rm -f "$SETUP_DONE"

t0=$(date +%s)
if "$PY" -c "import detectron2" >/dev/null 2>&1; then
  setup="detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)') as installed"
else
  ls "$WHL"/*.whl >/dev/null 2>&1 && ls "$WHL"/pb1-detectron2-*.tar.gz >/dev/null 2>&1 \
    || fail "no detectron2 and no wheels in $WHL: run tools/benchmarks/fetch_device_wheels.sh where pip works and carry the folder"
  echo "[detection check] installing the carried wheels into $SITE" | tee -a "$SETUP_LOG"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHL"/*.whl >> "$SETUP_LOG" 2>&1 || fail "pip could not install the wheels in $WHL: $(reason)"

  # torch builds extensions with $CXX (else c++) and links with Python's configured compiler; the
  # GPU machine's compiler sits outside the usual names (/opt/gcc/bin), so name one that exists.
  pick() { local c; for c in "$@"; do command -v "$c" 2>/dev/null && return 0; done; return 1; }
  sys_cc="$("$PY" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')"
  sys_cxx="$("$PY" -c 'import sysconfig; print((sysconfig.get_config_var("CXX") or "c++").split()[0])')"
  if [ -z "${CC:-}" ] && ! command -v "$sys_cc" >/dev/null; then
    CC="$(pick gcc cc /opt/gcc/bin/gcc clang)" || fail "no C compiler found (gcc, cc, /opt/gcc/bin/gcc)"
    export CC
  fi
  if [ -z "${CXX:-}" ] && { ! command -v "$sys_cxx" >/dev/null || ! command -v c++ >/dev/null; }; then
    CXX="$(pick g++ c++ /opt/gcc/bin/g++ clang++)" || fail "no C++ compiler found (g++, c++, /opt/gcc/bin/g++)"
    export CXX
  fi
  echo "[detection check] building detectron2 (CC=${CC:-$sys_cc} CXX=${CXX:-c++})" | tee -a "$SETUP_LOG"

  # scripts/install_detectron2.sh installs into a venv's python; a venv-shaped folder whose python
  # is this interpreter lets it run unchanged, pip's environment variables point it at the
  # carried sdist (no index) and install into $SITE.
  D2ENV="$WORK/d2env"
  mkdir -p "$D2ENV/bin"
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$PY" > "$D2ENV/bin/python"
  chmod +x "$D2ENV/bin/python"
  VENV="$D2ENV" MAX_JOBS="${MAX_JOBS:-$(nproc)}" PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHL" PIP_TARGET="$SITE" PIP_UPGRADE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 bash "$ROOT/scripts/install_detectron2.sh" >> "$SETUP_LOG" 2>&1 \
    || fail "detectron2 did not build: $(reason)"
  setup="detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)' 2>/dev/null) built here"
fi
setup_s=$(( $(date +%s) - t0 ))
echo "[detection check] $setup in ${setup_s} s" | tee -a "$SETUP_LOG"
printf '%s\n%s\n' "$setup_s" "$setup" > "$SETUP_DONE"
[ "${SETUP_ONLY:-0}" = 1 ] && exit 0

"$PY" "$HELPER" --out "$OUT" --device "$DEVICE" --work-dir "$WORK/run" --setup "$setup" --setup-s "$setup_s" \
  --setup-log "$SETUP_LOG" "$@"
