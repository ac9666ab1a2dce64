"""Every command shown in README.md still matches the code: the scripts and config files it names
exist, its flags are flags of that script, and its `key=value` overrides are keys of that config.

What this test does not do is run the big forms (ImageNet, COCO, 8 GPUs). Their small forms run
elsewhere in the suite: tools/demo.py --quick (tests/test_demo.py) runs make_synthetic_coco,
main_pretrain, export_encoder, train_net (train + --eval-only), visualize_detections and
visualize_reconstruction; tests/test_pretrain*.py run main_pretrain on one and two processes and
resume; tests/test_detection.py runs train_net --resume / --eval-only and convert_checkpoint.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
from typing import List

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
PROJECT_README = os.path.join(REPO, "projects", "GreenMIM", "README.md")


def _bash_commands(path: str) -> List[List[str]]:
    """The commands of the ```bash blocks of a Markdown file, as argv lists (comments and line
    continuations resolved; environment-variable prefixes dropped; $VARS kept as text)."""
    text = open(path, encoding="utf-8").read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            argv = shlex.split(line)
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
                argv = argv[1:]
            if argv:
                commands.append(argv)
    return commands


def _script_and_args(argv: List[str]):
    """(script path relative to the repository, its arguments) or None for non-Python commands."""
    if argv[0] in ("python", "python3", ".venv/bin/python"):
        return argv[1], argv[2:]
    if argv[0] == "torchrun":
        i = 1
        while i < len(argv) and argv[i].startswith("--"):
            i += 1 if "=" in argv[i] else 2
        return argv[i], argv[i + 1:]
    return None


def _python_commands():
    cmds = _bash_commands(README) + (_bash_commands(PROJECT_README) if os.path.isfile(PROJECT_README) else [])
    out = [c for c in cmds if _script_and_args(c)]
    assert len(out) >= 8, "README.md lost its command examples?"
    return out


def _split(args: List[str]):
    """(flags with their values, key=value overrides)."""
    flags, overrides, i = {}, [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
                flags[k] = v
            elif i + 1 < len(args) and not args[i + 1].startswith("--") and "=" not in args[i + 1]:
                flags[a] = args[i + 1]
                i += 1
            else:
                flags[a] = None
        elif "=" in a:
            overrides.append(a)
        i += 1
    return flags, overrides


def _parser_sources(path: str) -> List[str]:
    """Where a script's flags may be declared: the script, the modules beside it that it imports
    (tools/benchmarks/encoder.py -> setting.py), the package modules it imports (a tool that only
    runs greenmim.cli.convert_checkpoint) and the engine (pretrain/main_pretrain.py builds its
    parser there)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    here = os.path.dirname(path)
    beside = [os.path.join(here, f"{m}.py") for m in sorted(names) if os.path.isfile(os.path.join(here, f"{m}.py"))]
    roots = (os.path.join(REPO, "pretrain"), os.path.join(REPO, "projects", "GreenMIM"))
    beside += [f for m in sorted(names) for f in (os.path.join(r, *m.split(".")) + ".py" for r in roots)
               if m.startswith("greenmim") and os.path.isfile(f)]
    engine = os.path.join(REPO, "pretrain", "greenmim", "engine")
    shared = [os.path.join(REPO, "pretrain", "greenmim", "config.py")]  # config_argument_parser
    return [path] + beside + shared + [os.path.join(engine, f) for f in sorted(os.listdir(engine)) if f.endswith(".py")]


COMMANDS = _python_commands()


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:4])[:60] for c in COMMANDS])
def test_readme_command_matches_code(argv):
    script, args = _script_and_args(argv)
    path = os.path.join(REPO, script)
    assert os.path.isfile(path), f"README names {script}, which does not exist"
    flags, overrides = _split(args)
    source = "\n".join(open(p, encoding="utf-8").read() for p in _parser_sources(path))

    if script.endswith("train_net.py"):
        from detectron2.engine import default_argument_parser

        parser = default_argument_parser()
        known = {o for a in parser._actions for o in a.option_strings}
        for f in flags:
            assert f in known, f"{script} has no flag {f}"
    else:
        for f in flags:
            assert f'"{f}"' in source, f"{script} has no flag {f} (README: {' '.join(argv)})"

    config = flags.get("--config") or flags.get("--config-file")
    if config is None or re.fullmatch(r"[A-Z_]+", config):  # no config, or a placeholder like CFG
        return
    assert os.path.isfile(os.path.join(REPO, config)), f"README names config {config}, which does not exist"
    if config.endswith((".yaml", ".yml")):
        from greenmim.config import load_config
        from greenmim.engine.finetune_config import load_finetune_config

        load = load_finetune_config if config.startswith("configs/finetune/") else load_config
        load(os.path.join(REPO, config), [o for o in overrides if "$" not in o])
    else:
        pytest.importorskip("detectron2")
        from detectron2.config import LazyConfig
        from omegaconf import OmegaConf

        import greenmim_det  # noqa: F401  (registers what the configs import)

        cfg = LazyConfig.load(os.path.join(REPO, config))
        for o in overrides:
            key = o.split("=", 1)[0]
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            assert node is not None and leaf in node, f"{config} has no key {key} (README: {' '.join(argv)})"
