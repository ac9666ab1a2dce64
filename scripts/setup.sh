#!/usr/bin/env bash
# `make setup`: create .venv, install requirements.txt, detectron2 and GreenMIM (editable).
# Idempotent: a stamp in .venv records a hash of everything the set-up depends on; when it
# matches, nothing is done (a kept machine skips the ~3-5 min install).
#
# Environment:
#   PYTHON=python3.11            interpreter for the venv (default: python3)
#   SPCONV_PACKAGE=spconv-cu121  spconv build to install instead of the CPU `spconv`
#   DETECTRON2_SRC=/path         official detectron2 checkout to build (see install_detectron2.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
SPCONV_PACKAGE="${SPCONV_PACKAGE:-spconv}"
STAMP="$VENV/.greenmim-setup-stamp"

# Several people/agents may run `make test` in one tree at once: serialise set-ups (a second one
# waits, then finds the stamp up to date).
exec 9>"${TMPDIR:-/tmp}/greenmim-setup-$(printf %s "$ROOT" | sha256sum | cut -c1-12).lock"
flock 9

key="$({ cat requirements.txt pyproject.toml scripts/setup.sh scripts/install_detectron2.sh \
  scripts/detectron2_c/vision.cpp; echo "spconv=$SPCONV_PACKAGE d2src=${DETECTRON2_SRC:-}"; } \
  | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && [ -x "$PY" ]; then
  echo "[setup] .venv is up to date (delete $STAMP to force a re-run)"
  exit 0
fi

start=$SECONDS
[ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"

# requirements.txt with the spconv line swapped for the requested build.
reqs="$VENV/requirements.effective.txt"
sed -E "s/^spconv([[:space:]=<>!~;].*)?$/$SPCONV_PACKAGE/" requirements.txt > "$reqs"
if [ "$SPCONV_PACKAGE" != spconv ] && "$PY" -m pip show -q spconv 2>/dev/null; then
  "$PY" -m pip uninstall -y -q spconv  # the CPU and CUDA builds ship the same `spconv` module
fi
echo "[setup] installing requirements (torch + CUDA libraries, ~5.5 GB)"
"$PY" -m pip install -q --progress-bar off -r "$reqs"
echo "[setup] requirements installed ($((SECONDS - start)) s)"

bash "$ROOT/scripts/install_detectron2.sh"

# GreenMIM itself, editable (pretrain/greenmim -> greenmim, projects/GreenMIM/greenmim_det ->
# greenmim_det). No build isolation: the venv's setuptools is enough and needs no download.
"$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"

"$PY" -W ignore -c "import detectron2, detectron2.modeling, detectron2.evaluation, detectron2.model_zoo, spconv.pytorch, greenmim, greenmim_det"
echo "$key" > "$STAMP"
echo "[setup] done in $((SECONDS - start)) s"
