"""Loading encoder weights into detectors: format detection, key conversion, checkpointer.

Accepted files (all read with ``torch.load(weights_only=True)``; detectron2 .pkl files with an
unpickler that only rebuilds numpy arrays, so no file can run code):
  * this project's pretraining checkpoint: {"model": {"encoder.*", decoder keys...}, ...}
  * its encoder export: {"model": encoder state dict}
  * official GreenMIM / SimMIM pretraining checkpoints ("encoder." prefix, mask_token, decoder)
  * Microsoft Swin classification checkpoints ({"model": ...}, head.*, attn_mask buffers,
    relative_position_index buffers)
  * a bare encoder state dict, or any of the above under "state_dict" / "module" / DDP "module."

The encoder is found by its patch embedding: the prefix in front of ``patch_embed.proj.weight``
(Swin) or ``patch_embeds.0.proj.weight`` (Twins-SVT, timm / official names) is the encoder prefix, whatever it is ("encoder.", "backbone.bottom_up.encoder.", "").
Everything outside it (decoders, heads, mask tokens) is dropped and counted, never loaded.
"""
from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "ArchitectureMismatchError",
    "ConversionReport",
    "load_checkpoint_file",
    "extract_state_dict",
    "convert_encoder_state_dict",
    "resize_relative_position_bias_table",
    "load_encoder_weights",
    "describe_encoder_arch",
    "GreenCheckpointer",
]

_PATCH_EMBED_KEY = "patch_embed.proj.weight"
_TWINS_PATCH_EMBED_KEY = "patch_embeds.0.proj.weight"
_ENCODER_ROOTS = ("layers.", "patch_embed.", "patch_embeds.", "blocks.", "pos_block.")  # encoder-layout keys
_BIAS_TABLE = "relative_position_bias_table"
# encoder entries that are never loaded: rebuilt buffers, and pretraining/classification extras
_REBUILT_BUFFERS = ("attn_mask", "relative_position_index", "relative_coords_table")
_KNOWN_ARCHS = {  # (embed_dim, depths) -> name, for error messages only
    (96, (2, 2, 6, 2)): "swin_tiny",
    (96, (2, 2, 18, 2)): "swin_small",
    (128, (2, 2, 18, 2)): "swin_base",
    (192, (2, 2, 18, 2)): "swin_large",
}
_KNOWN_TWINS = {
    (64, (2, 2, 10, 4)): "twins_svt_small",
    (96, (2, 2, 18, 2)): "twins_svt_base",
    (128, (2, 2, 18, 2)): "twins_svt_large",
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line that says why and what to do."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint's encoder is not the model's encoder (different widths, depths or heads)."""


@dataclass
class ConversionReport:
    """What `convert_encoder_state_dict` did, for the one-line summary."""

    source: str = ""
    fmt: str = ""
    prefix: str = ""
    loaded: int = 0
    resized: List[str] = field(default_factory=list)
    window_change: Optional[Tuple[int, int]] = None
    dropped: Dict[str, int] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} encoder tensors from {self.source or 'state dict'} ({self.fmt})"]
        if self.resized:
            old, new = self.window_change or ("?", "?")
            parts.append(f"resized {len(self.resized)} relative position bias tables (window {old} -> {new})")
        if self.dropped:
            dropped = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items()))
            parts.append(f"dropped {sum(self.dropped.values())} entries not used here ({dropped})")
        parts.append(f"missing encoder tensors: {len(self.missing)}" + _examples(self.missing))
        if self.unexpected:
            parts.append(f"unexpected entries: {len(self.unexpected)}" + _examples(self.unexpected))
        return "; ".join(parts)


def _examples(names: List[str], k: int = 3) -> str:
    if not names:
        return ""
    more = ", ..." if len(names) > k else ""
    return " (" + ", ".join(names[:k]) + more + ")"


# ---------------------------------------------------------------------------------------------
# reading files


def _safe_globals() -> list:
    """Plain data types that training scripts pickle next to the weights: argparse namespaces and
    numpy scalars/arrays (metrics, epochs). Nothing here can run code when unpickled."""
    import numpy as np

    try:  # numpy 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray
    allowed: list = [argparse.Namespace, multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def load_checkpoint_file(path: str, *, trust_pickle: bool = False) -> Any:
    """torch.load(path, weights_only=True) on CPU, with one-line errors for the usual failures.

    The loading and its messages are greenmim.engine.checkpoint.load's (one implementation for
    pretraining and detection); this adds the plain-data types other projects pickle next to
    their weights. trust_pickle=True (tools/convert_checkpoint.py --trust-pickle only) loads with
    weights_only=False: for trusted legacy files that pickle config objects next to the weights.
    """
    from greenmim.engine.checkpoint import CheckpointLoadError, load

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if trust_pickle:
        logger.warning("loading %s with weights_only=False: only do this for files you trust", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return load(path, map_location="cpu", safe_globals=_safe_globals())
    except CheckpointLoadError as e:
        raise CheckpointError(str(e)) from None


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
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
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


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The tensor dict of a loaded checkpoint: obj["model"] / ["state_dict"] / ["module"] / obj."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "module", "model_state"):
            if key in obj and _is_tensor_mapping(obj[key]):
                return dict(obj[key])
        if _is_tensor_mapping(obj):
            return dict(obj)
        # some checkpoints mix tensors with a few numbers at the top level
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if any(k.endswith(_PATCH_EMBED_KEY) for k in tensors):
            return tensors
    raise CheckpointError(
        f"{source} is not a state dict: expected a dict of tensors or one under 'model'/'state_dict' "
        f"(found {type(obj).__name__}" + (f" with keys {sorted(obj)[:6]}" if isinstance(obj, Mapping) else "") + ")"
    )


def find_encoder_prefix(keys) -> Optional[str]:
    """Prefix in front of the patch embedding weight ("" for a bare encoder), None if absent."""
    prefixes = [k[: -len(key)] for k in keys for key in (_PATCH_EMBED_KEY, _TWINS_PATCH_EMBED_KEY)
                if k.endswith(key) and (len(k) == len(key) or k[-len(key) - 1] == ".")]
    if not prefixes:
        return None
    # the shortest one: e.g. "encoder." rather than a nested "teacher.encoder." in odd files
    return min(prefixes, key=len)


def _drop_reason(name: str) -> Optional[str]:
    """Category for encoder-relative keys that are never loaded, else None."""
    last = name.rsplit(".", 1)[-1]
    if last in _REBUILT_BUFFERS:
        return last
    top = name.split(".", 1)[0]
    if top in ("mask_token", "head", "fc", "classifier", "avgpool"):
        return top
    return None


# ---------------------------------------------------------------------------------------------
# relative position bias tables


def _window_of(table_len: int) -> int:
    side = int(round(math.sqrt(table_len)))
    if side * side != table_len or side % 2 == 0:
        raise CheckpointError(f"relative position bias table with {table_len} rows is not (2w-1)^2")
    return (side + 1) // 2


def resize_relative_position_bias_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """Resizes a Swin bias table [(2w-1)^2, heads] to window_size by bicubic interpolation.

    The table is a (2w-1) x (2w-1) grid of relative offsets (-w+1..w-1 on each axis) per head.
    align_corners=True maps the grid's end points and its centre (offset 0,0) onto the new grid's,
    so the bias of a token to itself is kept exactly and the offsets scale uniformly.
    """
    old_side = 2 * _window_of(table.shape[0]) - 1
    new_side = 2 * window_size - 1
    if old_side == new_side:
        return table
    heads = table.shape[1]
    grid = table.float().T.reshape(1, heads, old_side, old_side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=True)
    return grid.reshape(heads, new_side * new_side).T.contiguous().to(table.dtype)


# ---------------------------------------------------------------------------------------------
# arch description for error messages


def describe_encoder_arch(sd: Mapping[str, torch.Tensor]) -> str:
    """"swin_base (embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window=7)"."""
    if _TWINS_PATCH_EMBED_KEY in sd:
        return _describe_twins(sd)
    w = sd.get(_PATCH_EMBED_KEY)
    embed_dim = int(w.shape[0]) if w is not None else None
    blocks: Dict[int, set] = collections.defaultdict(set)
    heads: Dict[int, int] = {}
    window = None
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            blocks[i].add(j)
            if k.endswith(_BIAS_TABLE) and v.dim() == 2:
                heads.setdefault(i, int(v.shape[1]))
                if window is None:
                    try:
                        window = _window_of(v.shape[0])
                    except CheckpointError:
                        pass
    depths = [len(blocks[i]) for i in sorted(blocks)]
    num_heads = [heads.get(i) for i in sorted(blocks)]
    name = _KNOWN_ARCHS.get((embed_dim, tuple(depths)), "custom swin")
    return f"{name} (embed_dim={embed_dim}, depths={depths}, num_heads={num_heads}, window={window})"


def _describe_twins(sd: Mapping[str, torch.Tensor]) -> str:
    """"twins_svt_base (embed_dims=[96, 192, 384, 768], depths=[2, 2, 18, 2])"."""
    dims = [int(sd[f"patch_embeds.{i}.proj.weight"].shape[0]) for i in range(4) if f"patch_embeds.{i}.proj.weight" in sd]
    blocks: Dict[int, set] = collections.defaultdict(set)
    for k in sd:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.", k)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    depths = [len(blocks[i]) for i in sorted(blocks)]
    name = _KNOWN_TWINS.get((dims[0] if dims else None, tuple(depths)), "custom twins")
    return f"{name} (embed_dims={dims}, depths={depths})"


# ---------------------------------------------------------------------------------------------
# conversion


def convert_encoder_state_dict(
    checkpoint: Any,
    target: Optional[Mapping[str, torch.Tensor]] = None,
    *,
    source: str = "",
    strict: bool = True,
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Turns any supported checkpoint into an encoder state dict (Microsoft Swin key layout).

    Args:
        checkpoint: a loaded checkpoint object or a state dict.
        target: the encoder's own state dict (names -> tensors); when given, bias tables are
            resized to its window size, shapes are checked and missing/unexpected keys found.
        source: a name for messages (usually the file path).
        strict: raise ArchitectureMismatchError when the checkpoint's encoder does not match
            the target (shape mismatch, missing or extra encoder tensors).

    Returns:
        (state dict without prefix, report).
    """
    sd = extract_state_dict(checkpoint, source or "checkpoint")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    prefix = find_encoder_prefix(sd)
    if prefix is None:
        raise CheckpointError(
            f"{source or 'checkpoint'} holds no Swin or Twins encoder (no '*{_PATCH_EMBED_KEY}' or "
            f"'*{_TWINS_PATCH_EMBED_KEY}' among "
            f"{len(sd)} tensors, e.g. {sorted(sd)[:3]})"
        )
    report = ConversionReport(source=source, prefix=prefix)
    dropped: collections.Counter = collections.Counter()
    encoder: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            dropped[k.split(".", 1)[0] or k] += 1  # decoder*, mask_token, projector, ...
            continue
        name = k[len(prefix):]
        reason = _drop_reason(name)
        if reason is not None:
            dropped[reason] += 1
            continue
        encoder[name] = v
    has_decoder = any(k.startswith("decoder") for k in sd)
    if prefix == "encoder." and has_decoder:
        report.fmt = "MIM pretraining checkpoint (encoder + decoder)"
    elif prefix == "":
        report.fmt = "encoder state dict" + (" (classification head dropped)" if dropped.get("head") else "")
    else:
        report.fmt = f"checkpoint with encoder under '{prefix}'"

    if target is not None:
        encoder = _match_target(encoder, target, report, dropped, source, strict)
    report.dropped = dict(dropped)
    report.loaded = len(encoder)
    return encoder, report


def _match_target(encoder, target, report, dropped, source, strict):
    out: Dict[str, torch.Tensor] = {}
    mismatched: List[str] = []
    for name, value in encoder.items():
        if name not in target:
            if name.startswith("norm."):
                # final classification norm; detection drops it (see GreenSwinBackbone)
                dropped["norm"] += 1
            else:
                report.unexpected.append(name)
            continue
        want = target[name].shape
        if name.endswith(_BIAS_TABLE) and value.shape != want and value.dim() == 2 and value.shape[1] == want[1]:
            old_w, new_w = _window_of(value.shape[0]), _window_of(want[0])
            value = resize_relative_position_bias_table(value, new_w)
            report.resized.append(name)
            report.window_change = (old_w, new_w)
        if value.shape != want:
            mismatched.append(f"{name}: checkpoint {list(value.shape)} vs model {list(want)}")
            continue
        out[name] = value
    report.missing = [k for k in target if k not in encoder and _drop_reason(k) is None]
    encoder_layout = [k for k in report.unexpected if k.startswith(_ENCODER_ROOTS)]
    if strict and (mismatched or report.missing or encoder_layout):
        details = []
        if mismatched:
            details.append(f"{len(mismatched)} tensors differ in shape (e.g. {mismatched[0]})")
        if report.missing:
            details.append(f"{len(report.missing)} model tensors missing{_examples(report.missing, 2)}")
        if encoder_layout:
            details.append(f"{len(encoder_layout)} extra checkpoint tensors{_examples(encoder_layout, 2)}")
        raise ArchitectureMismatchError(
            f"architecture mismatch: {source or 'checkpoint'} holds {describe_encoder_arch(encoder)} "
            f"but the model is {describe_encoder_arch(target)}: " + "; ".join(details)
            + ". Use the config of the checkpoint's arch (or a checkpoint of the config's arch)."
        )
    return out


def load_encoder_weights(encoder: nn.Module, checkpoint: Any, *, strict: bool = True) -> ConversionReport:
    """Loads a file path / checkpoint object / state dict into an encoder module; returns the report."""
    source = checkpoint if isinstance(checkpoint, str) else ""
    obj = load_checkpoint_file(checkpoint) if isinstance(checkpoint, str) else checkpoint
    sd, report = convert_encoder_state_dict(obj, encoder.state_dict(), source=source, strict=strict)
    encoder.load_state_dict(sd, strict=False)
    return report


# ---------------------------------------------------------------------------------------------
# detectron2 checkpointer


def _find_green_encoder(model: nn.Module) -> Tuple[str, nn.Module]:
    from .backbone import GreenSwinBackbone

    for name, module in model.named_modules():
        if isinstance(module, GreenSwinBackbone):
            return (name + "." if name else "") + "encoder.", module.encoder
    raise CheckpointError("the model has no GreenSwinBackbone to load encoder weights into")


def _make_checkpointer_class():
    from detectron2.checkpoint import DetectionCheckpointer
    from greenmim.engine.checkpoint import CheckpointWriteError, atomic_save, atomic_write

    class GreenCheckpointer(DetectionCheckpointer):
        """DetectionCheckpointer that also loads pretraining/encoder/Swin checkpoints.

        For a .pth/.pt/.bin file whose encoder prefix is not the model's own (i.e. anything but
        a checkpoint of this very detector), the encoder is converted with
        `convert_encoder_state_dict` and loaded into the model's GreenSwinBackbone; the rest of
        the detector keeps its initialisation, and one summary line is logged. Detector
        checkpoints (training snapshots, model_final.pth) and .pkl files load as detectron2 does,
        except that nothing is unpickled beyond numpy arrays; snapshots are saved atomically.
        """

        def save(self, name: str, **kwargs: Any) -> None:
            """fvcore's save, made crash-safe: the snapshot and the `last_checkpoint` tag are each
            written to a temporary file, fsynced and renamed (greenmim.engine.checkpoint.
            atomic_write), and the tag is renamed only after the snapshot is complete, so a
            kill at any moment leaves --resume a complete checkpoint to continue from."""
            if not self.save_dir or not self.save_to_disk:
                return
            data = {"model": self.model.state_dict()}
            for key, obj in self.checkpointables.items():
                data[key] = obj.state_dict()
            data.update(kwargs)
            basename = f"{name}.pth"
            save_file = os.path.join(self.save_dir, basename)
            self.logger.info("Saving checkpoint to %s", save_file)
            try:
                atomic_save(data, save_file)
                self.tag_last_checkpoint(basename)
            except CheckpointWriteError as e:
                last = self.get_checkpoint_file() if self.has_checkpoint() else ""
                kept = (f"the last complete snapshot {os.path.basename(last)} is intact" if last
                        else "no earlier snapshot exists")
                raise CheckpointError(
                    f"cannot write {save_file}: {e.reason}; {kept} — free disk space (or point "
                    f"train.output_dir elsewhere), then continue with --resume") from None

        def tag_last_checkpoint(self, last_filename_basename: str) -> None:
            atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                         lambda f: f.write(last_filename_basename.encode()), inject_faults=False)

        def _load_file(self, filename: str) -> Dict[str, Any]:
            if filename.endswith(".pkl"):
                # detectron2 would pickle.load it (arbitrary code); read numpy arrays only
                data = load_pickle_weights(filename)
                if not isinstance(data, dict):
                    raise CheckpointError(f"{filename} is not a weight file (a pickled {type(data).__name__})")
                if "model" in data and "__author__" in data:
                    return data
                data = data.get("blobs", data)
                data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
                return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
            obj = load_checkpoint_file(filename)
            try:
                sd = extract_state_dict(obj, filename)
            except CheckpointError:
                sd = None
            model_prefix = None
            try:
                model_prefix, encoder = _find_green_encoder(self.model)
            except CheckpointError:
                pass
            ckpt_prefix = find_encoder_prefix(sd) if sd is not None else None
            stripped = ckpt_prefix
            if stripped and stripped.startswith("module."):
                stripped = stripped[len("module."):]
            if model_prefix is None or ckpt_prefix is None or stripped == model_prefix:
                # a checkpoint of the whole detector (or not ours): load it the detectron2 way
                if isinstance(obj, Mapping) and "model" in obj:
                    return dict(obj)
                return {"model": sd if sd is not None else obj}
            converted, report = convert_encoder_state_dict(
                obj, encoder.state_dict(), source=filename, strict=True
            )
            return {
                "model": {model_prefix + k: v for k, v in converted.items()},
                "__greenmim_report__": report,
            }

        def _load_model(self, checkpoint: Dict[str, Any]):
            report = checkpoint.pop("__greenmim_report__", None)
            if report is None:
                return super()._load_model(checkpoint)
            incompatible = self.model.load_state_dict(checkpoint.pop("model"), strict=False)
            n_new = len(incompatible.missing_keys)
            logger.info(
                "GreenCheckpointer: %s; %d detector tensors outside the encoder (output norms, FPN, "
                "RPN, ROI heads) keep their fresh initialisation",
                report.summary(),
                n_new,
            )
            return None  # fvcore: nothing further to report

    return GreenCheckpointer


def __getattr__(name: str):
    # detectron2 is imported lazily so that the conversion functions (and tools/convert_checkpoint)
    # work without it.
    if name == "GreenCheckpointer":
        cls = _make_checkpointer_class()
        globals()["GreenCheckpointer"] = cls
        return cls
    raise AttributeError(name)
