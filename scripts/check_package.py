"""The installed-package half of scripts/check_package.sh; runs in the fresh venv, outside the checkout.

Checks, each failure one line at the end (exit status 1):
  * every module of the source tree's greenmim and greenmim_det imports, from the installed
    wheel (a subpackage left out of the wheel fails here, not at a user's first run);
  * every console script of the wheel answers --help;
  * every third-party module the code imports belongs to a distribution the wheel declares:
    greenmim's in the core dependencies, greenmim_det's in the core or the `detection` extra
    (detectron2 itself is not on PyPI and is installed separately).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata as metadata
import importlib.util
import os
import re
import subprocess
import sys
from typing import Dict, List, Set

ROOTS = {"greenmim": ("pretrain", "greenmim"), "greenmim_det": ("projects", "GreenMIM", "greenmim_det")}
# imported by the code, declared elsewhere on purpose: (module, why)
NOT_DECLARED = {"detectron2": "not on PyPI: scripts/install_detectron2.sh or its source",
                "spconv": "optional backend, the `sparse` extra (CUDA builds are other names)"}


def source_modules(source: str) -> Dict[str, str]:
    """Dotted name -> file of every module under ROOTS in the checkout."""
    out = {}
    for top, parts in ROOTS.items():
        root = os.path.join(source, *parts)
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), root)[:-3].split(os.sep)
                    rel = rel[:-1] if rel[-1] == "__init__" else rel
                    out[".".join([top, *rel])] = os.path.join(folder, f)
    return out


def third_party_imports(path: str) -> Set[str]:
    """Top-level names of the absolute imports in a file (function-level ones included)."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ROOTS}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(dist: metadata.Distribution) -> Dict[str, Set[str]]:
    """Extra ("" for the core) -> normalised names of the distributions it requires."""
    out: Dict[str, Set[str]] = {"": set()}
    for req in dist.requires or []:
        name = normalise(re.match(r"[A-Za-z0-9._-]+", req).group(0))
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        out.setdefault(extra.group(1) if extra else "", set()).add(name)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", required=True, help="the checkout (read for its module list only)")
    p.add_argument("--site", required=True, help="site-packages the wheel was installed into")
    p.add_argument("--bin", required=True, help="the venv's bin folder (console scripts)")
    args = p.parse_args()
    site = os.path.realpath(args.site)
    errors: List[str] = []
    modules = source_modules(args.source)
    has_detectron2 = importlib.util.find_spec("detectron2") is not None

    imported = 0
    for name in sorted(modules):
        if name.startswith("greenmim_det") and not has_detectron2:
            continue
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the check fails
            errors.append(f"import {name}: {type(e).__name__}: {e}")
            continue
        where = os.path.realpath(getattr(module, "__file__", "") or "")
        if not where.startswith(site + os.sep):
            errors.append(f"import {name} came from {where}, not from the installed wheel")
        imported += 1
    print(f"[package] imported {imported} modules from the wheel"
          + ("" if has_detectron2 else " (greenmim_det skipped: no detectron2 in this environment)"))

    dist = metadata.distribution("greenmim")
    scripts = sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts")
    if not scripts:
        errors.append("the wheel declares no console scripts")
    for script in scripts:
        if script == "greenmim-train-det" and not has_detectron2:
            continue
        run = subprocess.run([os.path.join(args.bin, script), "--help"], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        if run.returncode != 0 or "usage:" not in run.stdout:
            tail = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
            errors.append(f"{script} --help: exit status {run.returncode}: {tail}")
    print(f"[package] console scripts answer --help: {', '.join(scripts)}")

    requires = declared(dist)
    owners = {k: [normalise(d) for d in v] for k, v in metadata.packages_distributions().items()}
    for name, path in sorted(modules.items()):
        allowed = requires[""] | (requires.get("detection", set()) if name.startswith("greenmim_det") else set())
        for module in sorted(third_party_imports(path)):
            if module in NOT_DECLARED:
                continue
            dists = owners.get(module)
            if not dists:
                errors.append(f"{name} imports {module}, which no installed distribution provides")
            elif not allowed & set(dists):
                errors.append(f"{name} imports {module} ({dists[0]}), which pyproject.toml does not declare"
                              + (" in dependencies or the detection extra" if name.startswith("greenmim_det")
                                 else " in dependencies"))
    print(f"[package] declared dependencies cover the imports (core: {', '.join(sorted(requires['']))})")

    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
