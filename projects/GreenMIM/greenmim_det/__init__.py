"""GreenMIM's Detectron2 edge: Green Swin / Twins backbones + FPN, checkpoint loading, layer decay, COCO.

Importing the package registers `build_green_swin_fpn_backbone` and `build_green_swin_backbone`
in detectron2's BACKBONE_REGISTRY (for yacs configs). LazyConfig files use the classes directly.
"""
from .backbone import (
    STAGE_NAMES,
    GreenBackbone,
    add_green_swin_config,
    build_green_fpn,
    build_green_swin_backbone,
    build_green_swin_fpn_backbone,
)
from .checkpoint import (
    ArchitectureMismatchError,
    CheckpointError,
    GreenCheckpointer,
    LayoutError,
    convert_encoder_state_dict,
    load_checkpoint_file,
    load_encoder_weights,
    resize_relative_position_bias_table,
)
from .data import DatasetError, get_coco_dataset_dicts, register_coco_dataset
from .optim import (
    get_encoder_layer_decay_param_groups,
    get_swin_layer_decay_param_groups,
    swin_layer_id,
    swin_lr_decay_factors,
)
from .roi_align import SeparableROIAlign, SeparableROIPooler, separable_roi_align

__all__ = [
    "STAGE_NAMES",
    "GreenBackbone",
    "add_green_swin_config",
    "build_green_fpn",
    "build_green_swin_backbone",
    "build_green_swin_fpn_backbone",
    "ArchitectureMismatchError",
    "CheckpointError",
    "GreenCheckpointer",
    "GreenCOCOEvaluator",
    "LayoutError",
    "convert_encoder_state_dict",
    "load_checkpoint_file",
    "load_encoder_weights",
    "resize_relative_position_bias_table",
    "DatasetError",
    "get_coco_dataset_dicts",
    "register_coco_dataset",
    "get_encoder_layer_decay_param_groups",
    "get_swin_layer_decay_param_groups",
    "swin_layer_id",
    "swin_lr_decay_factors",
    "SeparableROIAlign",
    "SeparableROIPooler",
    "separable_roi_align",
]


def __getattr__(name):
    # evaluation pulls in more of detectron2 (pycocotools); load it on first use
    if name == "GreenCOCOEvaluator":
        from .evaluation import GreenCOCOEvaluator

        return GreenCOCOEvaluator
    raise AttributeError(f"module 'greenmim_det' has no attribute {name!r}")
