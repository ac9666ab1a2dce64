#!/usr/bin/env bash
# Fetch, on a machine with package-registry access, everything a GPU machine without detectron2
# needs for tools/benchmarks/gpu_detection_check.sh, into an ignored folder that a device call
# carries (`carry: [".whl"]`). That machine has python3 with torch, torchvision, timm, numpy,
# pillow, pyyaml, tqdm and a C++ compiler, and no registry (nor tensorboard: train_net then writes
# metrics to the console and metrics.json only); it lacks detectron2 and
# most of detectron2's own requirements (below). OpenCV is not needed: detectron2 imports it only
# where it exists, and the check draws its data with PIL.
#
#   bash tools/benchmarks/fetch_device_wheels.sh                              # cp312 -> .whl/
#   PYVER=3.11 DEST=.whl311 bash tools/benchmarks/fetch_device_wheels.sh     # cp311, local dry run
#
# Versions: the ones the project's venv is tested with (requirements.txt, scripts/setup.sh).
# Pillow is not carried: no Pillow<10 wheel exists for cp312, and scripts/install_detectron2.sh
# patches detectron2 v0.6's one Pillow-10 break (Image.LINEAR) at build time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYVER="${PYVER:-3.12}"
DEST="${DEST:-.whl}"
PY="${PYTHON:-python3}"
VENV_PY="${VENV_PY:-$ROOT/.venv/bin/python}"  # has torch, which detectron2's setup.py imports

# Binary wheels for the target interpreter (platform tags as the device notes give them).
BINARY=(pycocotools==2.0.11 faster-coco-eval==1.8.0)
# Pure-Python wheels. setuptools<81: detectron2.model_zoo imports pkg_resources, which 81 removed
# (the GPU machine's own setuptools may be newer); it also builds detectron2 there. tabulate,
# portalocker and cloudpickle should be there already, but cost 0.2 MB against a wasted device run.
PURE=(iopath==0.1.9 omegaconf==2.3.1 hydra-core==1.3.8 yacs==0.1.8 termcolor==3.3.0 setuptools==80.10.2
      tabulate==0.10.0 portalocker==4.4.2 cloudpickle==3.1.3)
# Published as sdists only; built into py3-none-any wheels here so the device needs no build step.
SDIST_PURE=(fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3)
D2_SDIST=pb1-detectron2-0.6.tar.gz

mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}" "${PURE[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "${SDIST_PURE[@]}"

# detectron2 itself travels as its sdist and is built on the device (it links against the
# device's torch). scripts/install_detectron2.sh keeps a downloaded copy in the venv: reuse it.
if [ ! -f "$DEST/$D2_SDIST" ]; then
  if [ -f "$ROOT/.venv/src/dl/$D2_SDIST" ]; then
    cp "$ROOT/.venv/src/dl/$D2_SDIST" "$DEST/"
  else
    # pip prepares its metadata by running setup.py, which imports torch: the venv's python
    "$VENV_PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: -d "$DEST" pb1-detectron2==0.6
  fi
fi

# One version of each package: two wheels of one name stop the device's `pip install *.whl`.
dupes="$(ls "$DEST" | sed -n 's/^\([A-Za-z0-9_.]*\)-[0-9].*\.whl$/\1/p' | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
[ -z "$dupes" ] || { echo "error: $DEST holds two versions of: $(echo $dupes); delete the old ones" >&2; exit 1; }
ls -1 "$DEST"
echo "total $(du -cb "$DEST"/* | tail -1 | cut -f1 | numfmt --to=iec) in $DEST (cp${PYVER/./})"
