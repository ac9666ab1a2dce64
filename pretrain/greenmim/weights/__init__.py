"""Encoder weights in and out the way users hold them.

    read_weights(path)                       raw state dict of any supported file, no code run
    load_encoder_weights(encoder, ckpt)      any layout into a greenmim encoder; returns a
                                             LoadReport whose summary() is the one-line report
    write_weights(encoder_sd, path, fmt)     our layout, timm's, or a detectron2 model file

Files: .pth/.pt/.bin (weights_only), .pkl (numpy only), .safetensors. Layouts: ours / export,
official GreenMIM / SimMIM, Microsoft Swin, timm / Hugging Face hub Swin and Twins, detectron2
model files (greenmim.weights.layouts). Errors are CheckpointError (a greenmim.config.UserError).
"""
from .archs import arch_name, describe_encoder_arch, timm_model_name
from .bias_table import resize_relative_position_bias_table
from .convert import convert_encoder_state_dict, load_encoder_weights
from .errors import ArchitectureMismatchError, CheckpointError, LayoutError
from .files import load_pickle_weights, read_file, read_weights
from .layouts import classifier_head, extract_state_dict, find_encoder_prefix
from .report import LoadReport
from .writers import FORMATS, save_safetensors, timm_state_dict, write_weights

__all__ = [
    "FORMATS", "ArchitectureMismatchError", "CheckpointError", "LayoutError", "LoadReport",
    "arch_name", "classifier_head", "convert_encoder_state_dict", "describe_encoder_arch", "extract_state_dict",
    "find_encoder_prefix", "load_encoder_weights", "load_pickle_weights", "read_file", "read_weights",
    "resize_relative_position_bias_table", "save_safetensors", "timm_model_name", "timm_state_dict",
    "write_weights",
]
