"""Any supported checkpoint -> the encoder state dict of a given model, and loading it in place."""
from __future__ import annotations

import collections
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .archs import describe_encoder_arch
from .bias_table import resize_relative_position_bias_table, window_of
from .errors import ArchitectureMismatchError, LayoutError
from .files import read_file
from .layouts import ENCODER_ROOTS, drop_reason, extract_state_dict, split_encoder
from .report import LoadReport, examples

_BIAS_TABLE = "relative_position_bias_table"


def convert_encoder_state_dict(
    checkpoint: Any,
    target: Optional[Mapping[str, torch.Tensor]] = None,
    *,
    source: str = "",
    strict: bool = True,
) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    """Turns any supported checkpoint into an encoder state dict in our key layout.

    Args:
        checkpoint: a loaded checkpoint object or a state dict (see greenmim.weights.layouts).
        target: the encoder's own state dict (names -> tensors); when given, bias tables are
            resized to its window size, shapes are checked and missing/unexpected keys found.
        source: a name for messages (usually the file path).
        strict: raise when the checkpoint's encoder does not fill the target exactly:
            LayoutError when the tensors are the model's under other names,
            ArchitectureMismatchError when shapes, depths or widths differ.

    Returns:
        (state dict without prefix, report).
    """
    sd = extract_state_dict(checkpoint, source or "checkpoint")
    encoder, layout, dropped = split_encoder(sd, source or "checkpoint")
    report = LoadReport(source=source, fmt=layout.name, prefix=layout.prefix)
    if target is not None:
        encoder = _match_target(encoder, target, report, dropped, source or "checkpoint", strict)
    report.dropped = dict(dropped)
    report.loaded = len(encoder)
    return encoder, report


def _match_target(encoder, target, report: LoadReport, dropped: collections.Counter, source: str, strict: bool):
    out: Dict[str, torch.Tensor] = {}
    mismatched: List[str] = []
    for name, value in encoder.items():
        if name not in target:
            if name.startswith("norm."):
                # the final classification norm; detection backbones have their own output norms
                dropped["norm"] += 1
            else:
                report.unexpected.append(name)
            continue
        want = target[name].shape
        if name.endswith(_BIAS_TABLE) and value.shape != want and value.dim() == 2 and value.shape[1] == want[1]:
            old_w, new_w = window_of(value.shape[0]), window_of(want[0])
            value = resize_relative_position_bias_table(value, new_w)
            report.resized.append(name)
            report.window_change = (old_w, new_w)
        if value.shape != want:
            mismatched.append(f"{name}: checkpoint {list(value.shape)} vs model {list(want)}")
            continue
        out[name] = value
    report.missing = [k for k in target if k not in encoder and drop_reason(k) is None]
    extra = [k for k in report.unexpected if k.startswith(ENCODER_ROOTS)]
    if strict and (mismatched or report.missing or extra):
        renamed = _same_tensors_other_names(encoder, target, report.missing, extra)
        if not mismatched and renamed:
            ours, theirs = renamed
            raise LayoutError(
                f"{source} holds this model's tensors under other names ({len(extra)} keys, e.g. "
                f"checkpoint '{theirs}' where the model has '{ours}'): a key layout this loader does "
                f"not know ({report.fmt}); rename the keys to the layouts listed in the README")
        details = []
        if mismatched:
            details.append(f"{len(mismatched)} tensors differ in shape (e.g. {mismatched[0]})")
        if report.missing:
            details.append(f"{len(report.missing)} model tensors missing{examples(report.missing, 2)}")
        if extra:
            details.append(f"{len(extra)} extra checkpoint tensors{examples(extra, 2)}")
        raise ArchitectureMismatchError(
            f"architecture mismatch: {source} holds {describe_encoder_arch(encoder)} "
            f"but the model is {describe_encoder_arch(target)}: " + "; ".join(details)
            + ". Use the config of the checkpoint's arch (or a checkpoint of the config's arch).")
    return out


def _same_tensors_other_names(encoder, target, missing: List[str], extra: List[str]) -> Optional[Tuple[str, str]]:
    """(model name, checkpoint name) of a renamed pair when the missing and extra tensors have
    the same shapes one for one, i.e. the file differs from the model in names only."""
    if not missing or len(missing) != len(extra):
        return None
    shapes = lambda sd, names: sorted(tuple(sd[k].shape) for k in names)  # noqa: E731
    if shapes(target, missing) != shapes(encoder, extra):
        return None
    first = sorted(missing)[0]
    theirs = next(k for k in sorted(extra) if encoder[k].shape == target[first].shape)
    return first, theirs


def load_encoder_weights(encoder: nn.Module, checkpoint: Any, *, strict: bool = True) -> LoadReport:
    """Loads a weight file (any supported suffix and layout) or a loaded checkpoint / state dict
    into a greenmim encoder (Swin or Twins), in place; returns the report.

    Non-encoder entries (decoder, mask token, classification head, detector heads) are dropped
    and counted in the report. Errors are CheckpointError subclasses with one line.
    """
    is_path = isinstance(checkpoint, (str, os.PathLike))
    source = os.fspath(checkpoint) if is_path else ""
    obj = read_file(source) if is_path else checkpoint
    sd, report = convert_encoder_state_dict(obj, encoder.state_dict(), source=source, strict=strict)
    encoder.load_state_dict(sd, strict=False)
    return report
