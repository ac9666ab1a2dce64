#!/usr/bin/env bash
# Install detectron2 into the venv (called by scripts/setup.sh; see README "Installing detectron2").
#
# Route, first that applies:
#   (a) DETECTRON2_SRC=/path/to/official/detectron2 checkout: build it (users with internet/GitHub).
#   (b) a working detectron2 is already importable in the venv: keep it.
#   (c) offline: the pb1-detectron2==0.6 sdist from PyPI (upstream v0.6 under another name) lacks
#       its C++ sources, so it is built with GreenMIM's own minimal _C (scripts/detectron2_c).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --no-build-isolation --no-deps)  # setup.py imports torch: use the venv's
export MAX_JOBS="${MAX_JOBS:-2}"  # these machines have 2 cores

# Hash of what the offline build is made of, so a change to it rebuilds (route c only).
OFFLINE_KEY="$(cat "$ROOT/scripts/install_detectron2.sh" "$ROOT/scripts/detectron2_c/vision.cpp" | sha256sum | cut -c1-16)"
MARKER="$VENV/.detectron2-offline-build"

works() {  # the imports GreenMIM relies on, plus a model-zoo config lookup
  "$PY" - <<'EOF' >/dev/null 2>&1
import detectron2, detectron2.layers, detectron2.modeling, detectron2.evaluation
from detectron2 import model_zoo
model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
EOF
}

if [ -n "${DETECTRON2_SRC:-}" ]; then
  echo "[detectron2] installing from DETECTRON2_SRC=$DETECTRON2_SRC"
  # Builds CUDA ops when a GPU is visible (or FORCE_CUDA=1), as upstream documents.
  "${PIP[@]}" -e "$DETECTRON2_SRC"
  rm -f "$MARKER"
elif works && { [ ! -f "$MARKER" ] || [ "$(cat "$MARKER")" = "$OFFLINE_KEY" ]; }; then
  echo "[detectron2] already installed: $("$PY" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
  exit 0
else
  SRC="$VENV/src"  # inside the ignored venv, so the build tree never reaches git
  BUILD="$SRC/detectron2-0.6"
  mkdir -p "$SRC/dl"
  echo "[detectron2] offline route: pb1-detectron2==0.6 sdist + GreenMIM's minimal _C"
  # pip is the registry client; it prepares metadata by running setup.py, hence torch in the venv
  # and --no-build-isolation. An already downloaded sdist is reused.
  "$PY" -m pip download --no-deps --no-build-isolation --no-binary :all: -d "$SRC/dl" "pb1-detectron2==0.6"
  rm -rf "$BUILD" && mkdir -p "$BUILD"
  tar -xzf "$SRC/dl/pb1-detectron2-0.6.tar.gz" -C "$BUILD" --strip-components=1
  # setup.py only packages model-zoo configs from a top-level configs/ folder.
  mv "$BUILD/detectron2/model_zoo/configs" "$BUILD/configs"
  # setup.py always compiles detectron2/layers/csrc/vision.cpp: drop in our own module.
  mkdir -p "$BUILD/detectron2/layers/csrc"
  cp "$ROOT/scripts/detectron2_c/vision.cpp" "$BUILD/detectron2/layers/csrc/vision.cpp"
  # v0.6 still uses numpy aliases removed in numpy 1.24 (np.bool in polygon masks, np.int in
  # the train-loader histogram, ...) and PIL's Image.LINEAR (removed in Pillow 10). Replace them
  # with what upstream later switched to, so numpy 2 works.
  find "$BUILD/detectron2" "$BUILD/projects" -name '*.py' -print0 | xargs -0 sed -i -E \
    -e 's/\bnp\.(bool|int|float|str|object)\b/\1/g' -e 's/\bImage\.LINEAR\b/Image.BILINEAR/g'
  # CPU-only build even on a GPU machine: our _C has no CUDA code.
  CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 "${PIP[@]}" "$BUILD"
  echo "$OFFLINE_KEY" > "$MARKER"
fi

works || { echo "[detectron2] install failed: detectron2 does not import" >&2; "$PY" -c "import detectron2.modeling, detectron2.evaluation, detectron2.model_zoo"; exit 1; }
echo "[detectron2] ok: $("$PY" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
