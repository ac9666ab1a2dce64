"""Detectron2 backbones around the dense path of any greenmim encoder: Green Swin
(`arch="swin_tiny"` ...) and Green Twins-SVT (`arch="twins_svt_base"` ...) alike.

`GreenBackbone` wraps `greenmim.build_encoder(arch, ...)` and exposes the four stage outputs
as res2..res5 (strides 4/8/16/32), each passed through its own LayerNorm: the encoder returns the
stage outputs *before* any norm, and a fresh per-stage norm is the usual Swin detection recipe.
`build_green_fpn` / `build_green_swin_fpn_backbone` put detectron2's FPN on top (p2..p6).

The module takes plain constructor arguments, so LazyConfig files build it with
`L(GreenBackbone)(arch="swin_tiny", ...)`; the yacs adapter `build_green_swin_fpn_backbone`
is the only place that reads a CfgNode (keys added by `add_green_swin_config`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

import greenmim

__all__ = [
    "GreenBackbone",
    "build_green_fpn",
    "build_green_swin_backbone",
    "build_green_swin_fpn_backbone",
    "add_green_swin_config",
    "STAGE_NAMES",
]

STAGE_NAMES = ("res2", "res3", "res4", "res5")


class GreenBackbone(Backbone):
    """The dense path of a greenmim encoder (Swin or Twins-SVT) as a detectron2 Backbone.

    Input: images [B, 3, H, W] with H, W multiples of 32 (``size_divisibility``; detectron2's
    ImageList pads to it). Output: dict name -> [B, C_i, H / 2^(i+2), W / 2^(i+2)] for the names
    in ``out_features`` (a subset of res2..res5).

    Args:
        arch: encoder name for ``greenmim.build_encoder`` (swin_tiny/small/base/large,
            twins_svt_small/base/large).
        out_features: stage outputs to return, in order. The encoder always runs all four stages;
            leaving out res5 leaves its parameters unused (DDP then needs find_unused_parameters).
        frozen_stages: -1 trains everything; 0 freezes the patch embedding; k >= 1 also freezes
            stages 0..k-1 and their output norms (kept in eval mode, so no drop path there).
        drop_path_rate: stochastic depth rate of the encoder (linearly increasing over blocks).
        window_size: attention window size (the checkpoint loader resizes bias tables to it).
        use_checkpoint: activation checkpointing in the encoder blocks (saves memory, costs time).
        embed_dim, depths, num_heads: override the arch's widths/depths (None = arch default);
            tests use this for tiny models.
        img_size: the encoder's reference size. The encoder gives a stage whose grid at this size
            is no larger than the window a single unshifted window (Swin classification); for
            detection every stage should use shifted windows of `window_size` (inputs are padded
            per window), so the default is large enough for that: max(1024, 32 * (window + 1)).
        encoder_kwargs: any further keyword overrides for ``greenmim.build_encoder``.
        norm_eps: eps of the per-stage output LayerNorms.
    """

    def __init__(
        self,
        arch: str = "swin_tiny",
        *,
        out_features: Sequence[str] = STAGE_NAMES,
        frozen_stages: int = -1,
        drop_path_rate: float = 0.2,
        window_size: int = 7,
        use_checkpoint: bool = False,
        embed_dim: Optional[int] = None,
        depths: Optional[Sequence[int]] = None,
        num_heads: Optional[Sequence[int]] = None,
        img_size: Optional[int] = None,
        encoder_kwargs: Optional[dict] = None,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        overrides = dict(encoder_kwargs or {})
        if img_size is None:
            img_size = max(1024, 32 * (window_size + 1))
        overrides.update(window_size=window_size, drop_path_rate=drop_path_rate, img_size=img_size)
        for key, value in (("embed_dim", embed_dim), ("depths", depths), ("num_heads", num_heads)):
            if value is not None:
                overrides[key] = list(value) if key != "embed_dim" else int(value)
        self.arch = arch
        self.encoder = greenmim.build_encoder(arch, **overrides)
        # The final norm belongs to classification; dense outputs never use it. Removing it keeps
        # DDP (find_unused_parameters=False) happy and keeps it out of the optimizer.
        if getattr(self.encoder, "norm", None) is not None:
            self.encoder.norm = nn.Identity()

        unknown = [name for name in out_features if name not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"out_features must be a non-empty subset of {list(STAGE_NAMES)}, got {list(out_features)}"
            )
        self._out_features = list(out_features)
        channels = list(self.encoder.num_features)
        self._stage_channels = dict(zip(STAGE_NAMES, channels))
        self._out_feature_channels = {n: self._stage_channels[n] for n in self._out_features}
        self._out_feature_strides = {n: 2 ** (i + 2) for i, n in enumerate(STAGE_NAMES) if n in self._out_features}
        # one output norm per stage; stages that are not returned get none (no unused params)
        self.out_norms = nn.ModuleDict(
            {n: nn.LayerNorm(self._stage_channels[n], eps=norm_eps) for n in self._out_features}
        )

        num_stages = len(channels)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in [-1, {num_stages}], got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self._freeze_stages()
        if use_checkpoint:
            self.encoder.set_grad_checkpointing(True)

    # ------------------------------------------------------------------ freezing
    def _frozen_modules(self) -> List[nn.Module]:
        """What the encoder says to freeze for frozen_stages, plus the out norms of those stages."""
        modules = list(self.encoder.frozen_modules(self.frozen_stages))
        return modules + [self.out_norms[STAGE_NAMES[i]] for i in range(max(self.frozen_stages, 0))
                          if STAGE_NAMES[i] in self.out_norms]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen parts stay in eval mode (drop path off) even while the detector trains
        for module in self._frozen_modules():
            module.eval()
        return self

    # ------------------------------------------------------------------ detectron2 API
    @property
    def size_divisibility(self) -> int:
        return 32

    @property
    def padding_constraints(self) -> Dict[str, int]:  # used by newer detectron2 versions
        return {"size_divisibility": 32}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: [B, 3, H, W] -> {name: [B, C_i, H / s_i, W / s_i]}."""
        if x.dim() != 4 or x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"GreenBackbone expects [B, 3, H, W] with H, W multiples of 32, got {tuple(x.shape)}"
            )
        stages = self.encoder(x)
        outputs = {}
        for name, feat in zip(STAGE_NAMES, stages):
            if name in self.out_norms:
                # LayerNorm over channels: NCHW -> NHWC -> norm -> NCHW
                feat = self.out_norms[name](feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
                outputs[name] = feat
        return outputs

    # ------------------------------------------------------------------ optimiser helpers
    def no_weight_decay(self) -> set:
        """Encoder parameter names (relative to this module) that must not be weight-decayed."""
        names = getattr(self.encoder, "no_weight_decay", lambda: set())()
        return {"encoder." + n for n in names}


def build_green_fpn(
    arch: str = "swin_tiny",
    *,
    out_channels: int = 256,
    fpn_norm: str = "",
    fuse_type: str = "sum",
    **backbone_kwargs,
) -> FPN:
    """GreenBackbone (res2..res5) + FPN (p2..p5) + max-pool p6, as in Mask R-CNN FPN."""
    backbone_kwargs.setdefault("out_features", STAGE_NAMES)
    bottom_up = GreenBackbone(arch, **backbone_kwargs)
    return FPN(
        bottom_up=bottom_up,
        in_features=list(bottom_up._out_features),
        out_channels=out_channels,
        norm=fpn_norm,
        top_block=LastLevelMaxPool(),
        fuse_type=fuse_type,
    )


# ---------------------------------------------------------------------------------------------
# yacs adapters (MODEL.BACKBONE.NAME: "build_green_swin_fpn_backbone")
# Their names and the MODEL.GREEN_SWIN keys are strings inside users' YAML files, so they keep
# the names they were published with although MODEL.GREEN_SWIN.ARCH may name a Twins encoder.


def add_green_swin_config(cfg: CfgNode) -> CfgNode:
    """Adds MODEL.GREEN_SWIN.* (the GreenBackbone arguments) to a yacs config, in place."""
    cfg.MODEL.GREEN_SWIN = CfgNode()
    cfg.MODEL.GREEN_SWIN.ARCH = "swin_tiny"
    cfg.MODEL.GREEN_SWIN.OUT_FEATURES = list(STAGE_NAMES)
    cfg.MODEL.GREEN_SWIN.FROZEN_STAGES = -1
    cfg.MODEL.GREEN_SWIN.DROP_PATH_RATE = 0.2
    cfg.MODEL.GREEN_SWIN.WINDOW_SIZE = 7
    cfg.MODEL.GREEN_SWIN.USE_CHECKPOINT = False
    # 0 / [] = the arch's default
    cfg.MODEL.GREEN_SWIN.EMBED_DIM = 0
    cfg.MODEL.GREEN_SWIN.DEPTHS = []
    cfg.MODEL.GREEN_SWIN.NUM_HEADS = []
    cfg.MODEL.GREEN_SWIN.IMG_SIZE = 0
    return cfg


def _backbone_kwargs_from_cfg(cfg: CfgNode) -> dict:
    c = cfg.MODEL.GREEN_SWIN
    return dict(
        arch=c.ARCH,
        out_features=list(c.OUT_FEATURES),
        frozen_stages=c.FROZEN_STAGES,
        drop_path_rate=c.DROP_PATH_RATE,
        window_size=c.WINDOW_SIZE,
        use_checkpoint=c.USE_CHECKPOINT,
        embed_dim=c.EMBED_DIM or None,
        depths=list(c.DEPTHS) or None,
        num_heads=list(c.NUM_HEADS) or None,
        img_size=c.IMG_SIZE or None,
    )


def _check_input_shape(input_shape: Optional[ShapeSpec]) -> None:
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(f"Green backbones take 3-channel images, got {input_shape.channels} channels")


@BACKBONE_REGISTRY.register()
def build_green_swin_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> GreenBackbone:
    """yacs: the bare backbone (res2..res5), e.g. for RetinaNet-style heads with their own neck."""
    _check_input_shape(input_shape)
    kwargs = _backbone_kwargs_from_cfg(cfg)
    return GreenBackbone(kwargs.pop("arch"), **kwargs)


@BACKBONE_REGISTRY.register()
def build_green_swin_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """yacs: GreenBackbone + FPN; reads MODEL.GREEN_SWIN.* and MODEL.FPN.*."""
    _check_input_shape(input_shape)
    kwargs = _backbone_kwargs_from_cfg(cfg)
    bottom_up = GreenBackbone(kwargs.pop("arch"), **kwargs)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
