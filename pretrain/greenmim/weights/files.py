"""Reading weight files without running code from them.

    .pth / .pt / .bin   torch.load(weights_only=True) (plus plain-data types scripts pickle)
    .pkl                detectron2 / Caffe2 model files, through an unpickler that only rebuilds
                        numpy arrays and plain Python values
    .safetensors        the safetensors package: no pickle at all
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
from typing import Any, Dict

import numpy as np
import torch

from ..file_io import CheckpointLoadError, load
from .errors import CheckpointError
from .layouts import extract_state_dict

logger = logging.getLogger(__name__)

SUFFIXES = (".pth", ".pt", ".bin", ".pkl", ".safetensors")


def _safe_globals() -> list:
    """Plain data types that training scripts pickle next to the weights: argparse namespaces and
    numpy scalars/arrays (metrics, epochs). Nothing here can run code when unpickled."""
    try:  # numpy 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray
    allowed: list = [argparse.Namespace, multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 / Caffe2 model-zoo .pkl files: dicts of numpy arrays and plain
    Python values. Any other global (a function or class a malicious file would call) is refused
    before it is looked up, so nothing in the file can run."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
        ("_codecs", "encode"),  # how Python 2 pickles byte strings (latin1)
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or (module.startswith("numpy.dtypes") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def load_pickle_weights(path: str) -> Any:
    """A .pkl weight file, unpickled with _NumpyOnlyUnpickler; one-line CheckpointError otherwise."""
    _check_exists(path)
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds pickled code or objects beyond numpy arrays ({e}); nothing was executed. "
            f"If you trust the file, rewrite it with tools/convert_checkpoint.py --trust-pickle {path} OUT.pth"
        ) from None
    except Exception as e:  # noqa: BLE001 - one clear line
        raise CheckpointError(f"cannot read {path} as a pickled weight file ({type(e).__name__}: {e})") from None


def load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    """A .safetensors file as a state dict on the CPU; one-line CheckpointError when unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_exists(path)
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot read {path} as a safetensors file ({type(e).__name__}: {first}); it is truncated, "
            f"corrupt or not a safetensors file — download or convert it again") from None


def load_torch_file(path: str) -> Any:
    """torch.load(path, weights_only=True) on the CPU, with greenmim.file_io.load's one-line
    errors, plus the plain-data types other projects pickle next to their weights."""
    _check_exists(path)
    try:
        return load(path, map_location="cpu", safe_globals=_safe_globals())
    except CheckpointLoadError as e:
        raise CheckpointError(str(e)) from None


def read_file(path: str, *, trust_pickle: bool = False) -> Any:
    """The object in a weight file, by its extension (see the module docstring).

    trust_pickle=True (tools/convert_checkpoint.py --trust-pickle only) reads a .pth with
    weights_only=False: for trusted legacy files that pickle config objects next to the weights.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    if path.endswith(".pkl"):
        return load_pickle_weights(path)
    if trust_pickle:
        _check_exists(path)
        logger.warning("loading %s with weights_only=False: only do this for files you trust", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    return load_torch_file(path)


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """The raw state dict (name -> tensor) in any supported file, keys as stored; never unpickles
    code. Checkpoints that nest it ({"model": ...}, {"state_dict": ...}) are unwrapped."""
    return extract_state_dict(read_file(path), os.fspath(path))


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path} (no such file)")
