#!/usr/bin/env bash
# CI check of the package as users install it (`pip install .`, no -e): build the wheel from a
# copy of the checkout, install it into a fresh venv that sees neither the source tree nor the
# editable install, import every module of greenmim and greenmim_det, run each console script's
# --help, and compare the wheel's declared dependencies with what the code imports.
#
# The fresh venv takes torch & co. from .venv (no 5 GB download): its site-packages gets a .pth
# naming a folder of links to .venv's site-packages entries, minus greenmim's own (the editable
# finder and its dist-info). A .pth only adds its folder to sys.path; .pth files inside that
# folder are not run, so no editable hook can load the sources either.
#
#   bash scripts/check_package.sh         (called by .ci/run after `make test`; ~1 min)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/greenmim-package.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH  # the check is about what the installed package finds on its own

# 1. The wheel, built from a copy: what git tracks plus new files it does not ignore (a build
#    in the checkout would leave build/ and *.egg-info behind).
mkdir -p "$WORK/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | xargs -0 cp --parents -t "$WORK/src")
else  # an unpacked release: everything but the venv and build outputs
  tar -C "$ROOT" --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude=./output --exclude=./outputs -cf - . | tar -C "$WORK/src" -xf -
fi
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src" >/dev/null
WHEEL="$(ls "$WORK"/dist/greenmim-*.whl)"
echo "[package] built $(basename "$WHEEL")"

# 2. A fresh venv that borrows .venv's third-party packages, not greenmim.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$WORK/deps"
for entry in "$SITE"/*; do
  case "$(basename "$entry")" in
    greenmim*|__editable__*|*.pth) ;;  # our editable install, and .pth hooks (never run from here)
    *) ln -s "$entry" "$WORK/deps/" ;;
  esac
done
"$PY" -m venv --without-pip "$WORK/venv"
NEW="$WORK/venv/bin/python"
NEW_SITE="$("$NEW" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$WORK/deps" > "$NEW_SITE/greenmim-check-deps.pth"
"$NEW" -m pip install -q --no-deps --no-index "$WHEEL"
echo "[package] installed into a fresh venv (no -e)"

# 3. Imports, console scripts, dependencies: from a folder outside the checkout.
cd "$WORK"
"$NEW" "$ROOT/scripts/check_package.py" --source "$ROOT" --site "$NEW_SITE" --bin "$WORK/venv/bin"
