"""Checks `key=value` overrides of a LazyConfig before detectron2 applies them.

detectron2's `LazyConfig.apply_overrides` creates any key it is given, so a misspelt
`train.max_iters=1000` is silently ignored and a misspelt model argument fails later with a
TypeError deep inside `instantiate`. Here every key must exist in the config, or name an argument
of the callable a LazyCall node builds (e.g. `dataloader.train.dataset.json_file` for
`get_coco_dataset_dicts`); otherwise one line names the key and the closest valid ones.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterable, List, Optional

from omegaconf import DictConfig, ListConfig

__all__ = ["UnknownConfigKeyError", "check_override_keys"]


class UnknownConfigKeyError(KeyError):
    """An override names a key the config does not have; str() is the one-line message."""

    def __str__(self) -> str:
        return str(self.args[0])


def _parameters(target: Any) -> Optional[List[str]]:
    """Keyword arguments of a LazyCall target; None when it takes **kwargs or cannot be read."""
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:  # noqa: BLE001 - unknown target: let instantiate report it
            return None
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _unknown(key: str, prefix: str, part: str, choices: List[str]) -> UnknownConfigKeyError:
    close = difflib.get_close_matches(part, choices, n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(prefix + c for c in close)}?" if close
            else f"valid keys under {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(choices)[:12])}")
    return UnknownConfigKeyError(f"unknown config key '{key}' in the overrides; {hint}")


def check_override_keys(cfg: DictConfig, overrides: Iterable[str]) -> None:
    """Raises UnknownConfigKeyError for the first `key=value` whose key is not in cfg (see module)."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        node: Any = cfg
        parts = key.split(".")
        for i, part in enumerate(parts):
            prefix = ".".join(parts[:i]) + ("." if i else "")
            if isinstance(node, DictConfig):
                if part in node:
                    child = node._get_node(part)  # not node[part]: no interpolation is resolved
                    node = child if isinstance(child, (DictConfig, ListConfig)) else child._value()
                    continue
                choices = [str(k) for k in node.keys() if k != "_target_"]
                if "_target_" in node:
                    params = _parameters(node._get_node("_target_")._value())
                    if params is None or part in params:
                        break  # an argument of the LazyCall's target: detectron2 passes it on
                    choices += params
                raise _unknown(key, prefix, part, sorted(set(choices)))
            if isinstance(node, (ListConfig, list)):
                if part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                    child = node._get_node(int(part)) if isinstance(node, ListConfig) else node[int(part)]
                    node = child if isinstance(child, (DictConfig, ListConfig)) else getattr(child, "_value", lambda: child)()
                    continue
                raise UnknownConfigKeyError(f"config key '{key}': {prefix.rstrip('.')} is a list of "
                                            f"{len(node)} items, '{part}' is not an index of it")
            if node is None:
                break  # an unset section (None): setting a sub-key creates it, as detectron2 does
            raise UnknownConfigKeyError(f"config key '{key}': {prefix.rstrip('.')} is a value "
                                        f"({type(node).__name__}), not a section with key '{part}'")
