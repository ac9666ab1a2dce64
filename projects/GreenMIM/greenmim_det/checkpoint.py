"""detectron2's checkpointer over greenmim.weights: any encoder file initialises a detector.

`GreenCheckpointer` is detectron2's DetectionCheckpointer with three changes:
  * a file that holds an encoder only (any layout greenmim.weights knows: ours, GreenMIM / SimMIM,
    Microsoft Swin, timm / Hugging Face hub, a detectron2 file written by
    tools/convert_checkpoint.py --format detectron2; .pth/.pt/.bin/.pkl/.safetensors) is
    converted and loaded into the model's GreenBackbone encoder, and ONE line reports it;
  * nothing in a file is executed: .pth with weights_only=True, .pkl with a numpy-only unpickler;
  * snapshots are saved atomically (temporary file, fsync, rename).
A checkpoint of the whole detector (training snapshots, model_final.pth) loads as detectron2 does.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from greenmim.file_io import CheckpointWriteError, atomic_save, atomic_write
from greenmim.weights import (
    ArchitectureMismatchError,
    CheckpointError,
    LayoutError,
    convert_encoder_state_dict,
    describe_encoder_arch,
    extract_state_dict,
    find_encoder_prefix,
    load_encoder_weights,
    load_pickle_weights,
    read_file,
    resize_relative_position_bias_table,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ArchitectureMismatchError", "CheckpointError", "GreenCheckpointer", "LayoutError",
    "convert_encoder_state_dict", "describe_encoder_arch", "extract_state_dict", "find_encoder_prefix",
    "load_checkpoint_file", "load_encoder_weights", "load_pickle_weights", "resize_relative_position_bias_table",
]


def load_checkpoint_file(path: str, *, trust_pickle: bool = False) -> Any:
    """The object in a weight file (greenmim.weights.read_file)."""
    return read_file(path, trust_pickle=trust_pickle)


def find_green_encoder(model: nn.Module) -> Tuple[str, nn.Module]:
    """(state-dict prefix, module) of the encoder inside the model's GreenBackbone."""
    from .backbone import GreenBackbone

    for name, module in model.named_modules():
        if isinstance(module, GreenBackbone):
            return (name + "." if name else "") + "encoder.", module.encoder
    raise CheckpointError("the model has no GreenBackbone to load encoder weights into")


def _encoder_only(sd: Mapping[str, Any], prefix: Optional[str]) -> bool:
    """True when every tensor of sd is an encoder tensor (a weight file, not a detector snapshot)."""
    if prefix is None:
        return False
    strip = lambda k: k[len("module."):] if k.startswith("module.") else k  # noqa: E731
    return all(strip(k).startswith(prefix) for k in sd)


class GreenCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that also loads encoder weights of every layout greenmim.weights
    reads (see the module docstring) and saves snapshots crash-safely."""

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's save, made crash-safe: the snapshot and the `last_checkpoint` tag are each
        written to a temporary file, fsynced and renamed (greenmim.engine.checkpoint.
        atomic_write), and the tag is renamed only after the snapshot is complete, so a kill at
        any moment leaves --resume a complete checkpoint to continue from."""
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
            return self._load_pickle(filename)
        obj = read_file(filename)
        try:
            sd = extract_state_dict(obj, filename)
        except CheckpointError:
            sd = None
        try:
            model_prefix, encoder = find_green_encoder(self.model)
        except CheckpointError:
            model_prefix = encoder = None
        ckpt_prefix = find_encoder_prefix(sd) if sd is not None else None
        stripped = ckpt_prefix[len("module."):] if ckpt_prefix and ckpt_prefix.startswith("module.") else ckpt_prefix
        if model_prefix is None or ckpt_prefix is None or (stripped == model_prefix and not _encoder_only(sd, ckpt_prefix)):
            # a checkpoint of the whole detector (or not ours): load it the detectron2 way
            if isinstance(obj, Mapping) and "model" in obj:
                return dict(obj)
            return {"model": sd if sd is not None else obj}
        converted, report = convert_encoder_state_dict(obj, encoder.state_dict(), source=filename, strict=True)
        return {"model": {model_prefix + k: v for k, v in converted.items()}, "__greenmim_report__": report}

    @staticmethod
    def _load_pickle(filename: str) -> Dict[str, Any]:
        # detectron2 would pickle.load it (arbitrary code); read numpy arrays only
        data = load_pickle_weights(filename)
        if not isinstance(data, dict):
            raise CheckpointError(f"{filename} is not a weight file (a pickled {type(data).__name__})")
        if "model" in data and "__author__" in data:
            return data
        data = data.get("blobs", data)
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _load_model(self, checkpoint: Dict[str, Any]):
        report = checkpoint.pop("__greenmim_report__", None)
        if report is None:
            return super()._load_model(checkpoint)
        incompatible = self.model.load_state_dict(checkpoint.pop("model"), strict=False)
        logger.info(
            "GreenCheckpointer: %s; %d detector tensors outside the encoder (output norms, FPN, "
            "RPN, ROI heads) keep their fresh initialisation", report.summary(), len(incompatible.missing_keys))
        return None  # fvcore: nothing further to report
