"""Green Swin Transformer: one encoder, a dense path for detection and a sparse path for MIM
(the forward contract is GreenEncoder's, encoder_base.py).
State-dict keys follow the original Swin layout, so public Swin / SimMIM / GreenMIM weights load.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from timm.layers import PatchEmbed

from ..data.masking import MASK_UNIT, UnitMask, plan_mask_of, upsample_mask
from .swin_blocks import PatchMerging, SwinBlock
from .encoder_base import ATTENTION_MODES, GreenEncoder, check_img_size, pair
from .tensor_tree import plans_to  # noqa: F401  (public here too)
from .token_layout import gather_tokens, merge_index, stage_layouts
from .ragged_plan import RaggedPlan
from .sparse_plans import SparsePlans
from .static_shapes import static_shapes_for, with_static_fallback
from .window_plans import GroupPlan, WindowPlan, compute_dtype

@functools.lru_cache(maxsize=64)  # detection sees a handful of padded sizes: build each once
def _cached_window_plan(height: int, width: int, window: int, shift: int, device: torch.device) -> WindowPlan:
    return WindowPlan.build(height, width, window, shift, None, device)


def _window_plan(height: int, width: int, window: int, shift: int, device: torch.device) -> WindowPlan:
    # torch.compile traces the build (on the device) and folds it into its graph; a cache there
    # would only be bypassed, with a warning.
    if torch.compiler.is_compiling():
        return WindowPlan.build(height, width, window, shift, None, device)
    return _cached_window_plan(height, width, window, shift, device)


@dataclasses.dataclass
class SwinPlans(SparsePlans):
    """The sparse path's indices of one step. attention: per stage, the (regular, shifted) window
    plans (GroupPlan or RaggedPlan); merge: per stage transition, long [P*N_{i+1}*4] positions of
    each merged token's 2x2 inputs."""
    attention: List[Tuple[object, object]]
    merge: List[torch.Tensor]


@dataclasses.dataclass(frozen=True)
class SparsePlanner:
    """Builds every index of the sparse path from a unit mask, on the host, from plain values.

    Picklable and weight-free, so planning can run wherever the masks are drawn, e.g. in
    DataLoader workers (`encoder.planner()`), overlapping the next step's planning with this
    step's compute; the encoder then takes the result: `encoder(images, mask, plans=plans)`.
    Group plans (the default mode) hold only tensors and move with `plans_to`; a ragged plan holds
    a FlexAttention BlockMask built for one device, so make those where they run.
    """
    windows: Tuple[int, ...]       # window size of each stage
    shifts: Tuple[int, ...]        # shift of each stage's odd blocks (0: no shifted windows)
    tokens_per_unit: int           # tokens along a 32 px mask unit at stage 1
    attn_mode: str = "auto"
    static_shapes: bool = False    # pad groups to fixed (G, g) tables (see static_shapes.py)

    def __call__(self, unit_mask: Union[UnitMask, torch.Tensor], device=None) -> SwinPlans:
        """unit_mask: a UnitMask (checked when it was drawn) or bool [P, Hu, Wu] (checked here);
        P = 1: shared by the batch -> SwinPlans, index tensors on `device` (default: CPU)."""
        unit_mask = plan_mask_of(unit_mask)
        layouts = stage_layouts(unit_mask, len(self.windows), self.tokens_per_unit)
        dev = device if device is not None else torch.device("cpu")
        shapes = (static_shapes_for(self.windows, self.shifts, self.tokens_per_unit, tuple(unit_mask.shape[1:]),
                                    layouts[-1].rows.shape[1], unit_mask.shape[0]) if self.static_shapes else None)
        attention, fallback = with_static_fallback(lambda caps: self._attention_plans(layouts, caps, dev), shapes)
        merge = [merge_index(a, b).to(dev, non_blocking=True) for a, b in zip(layouts, layouts[1:])]
        return SwinPlans(layouts[0].flat_index.to(dev, non_blocking=True), unit_mask.shape[0], fallback,
                         attention, merge)

    def _attention_plans(self, layouts, capacities, dev) -> list:
        """(regular, shifted) plans of every stage; capacities: per stage ((G, g), (G, g)) or None."""
        plan_cls = RaggedPlan if self.attn_mode == "ragged" else GroupPlan
        attention = []
        for i, (window, shift, lay) in enumerate(zip(self.windows, self.shifts, layouts)):
            kw = [{} if capacities is None else {"static": capacities[i][k]} for k in (0, 1)]
            regular = plan_cls.build(lay.rows, lay.cols, lay.height, lay.width, window, 0, dev, **kw[0])
            shifted = (plan_cls.build(lay.rows, lay.cols, lay.height, lay.width, window, shift, dev, **kw[1])
                       if shift else regular)
            attention.append((regular, shifted))
        return attention


class SwinStage(nn.Module):
    """A stage's blocks followed (except in the last stage) by patch merging, as in Swin's BasicLayer."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, shift_size: int,
                 mlp_ratio: float, qkv_bias: bool, drop_path: Sequence[float], downsample: bool):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.blocks = nn.ModuleList([
            SwinBlock(dim, num_heads, window_size, shifted=(j % 2 == 1 and shift_size > 0),
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path[j])
            for j in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None
        self.grad_checkpointing = False

    def block_biases(self, plans, dtype: torch.dtype) -> List[torch.Tensor]:
        """Every block's attention bias (relative position bias + window mask), one gather per
        plan for all blocks that use it, in the compute dtype (no per-block cast)."""
        biases: List[Optional[torch.Tensor]] = [None] * len(self.blocks)
        for shifted in (False, True):
            ids = [j for j, blk in enumerate(self.blocks) if blk.shifted == shifted]
            plan = plans[1 if shifted else 0]
            if not ids or not hasattr(plan, "pair_bias"):  # ragged plans add the bias in-kernel
                continue
            tables = torch.stack([self.blocks[j].attn.relative_position_bias_table for j in ids])
            for j, bias in zip(ids, plan.pair_bias(tables, dtype).unbind(0)):
                biases[j] = bias
        return biases

    def run_blocks(self, x: torch.Tensor, plans) -> torch.Tensor:
        """plans: (regular, shifted) attention plans for this stage's layout."""
        biases = self.block_biases(plans, compute_dtype(x))
        memos = ({}, {})  # indices each plan derives once for this forward, shared by its blocks
        for block, bias in zip(self.blocks, biases):
            plan, memo = (plans[1], memos[1]) if block.shifted else (plans[0], memos[0])
            if self.grad_checkpointing and x.requires_grad:
                x = cp.checkpoint(block, x, plan, bias, memo, use_reentrant=False)
            else:
                x = block(x, plan, bias, memo)
        return x


class GreenSwinTransformer(GreenEncoder):
    """Swin Transformer encoder that can compute on visible tokens only.

    Args:
        img_size: pretraining/reference size (int or (H, W), multiples of 32). It fixes each stage's
            window: a stage whose grid is no larger than `window_size` uses one window of its grid
            size and no shift (original Swin). Other input sizes (multiples of 32) also run.
        window_size: Swin window size (7, 14, ...).
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        attn_mode: sparse-path attention: "group" (windows packed into padded groups, SDPA),
            "ragged" (no padding, FlexAttention) or "auto" (the faster one as measured: group on
            CPU and on H100, where FlexAttention's backward costs more than the padding it saves).
        static_shapes: sparse-path tensors get shapes that depend on batch, image size, visible
            count and mask kind only, never on the mask (CUDA graphs, torch.compile without
            recompiles); see static_shapes.py. Group attention only.
    """

    def __init__(self, img_size=224, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, attn_mode: str = "auto", static_shapes: bool = False):
        super().__init__()
        if attn_mode not in ATTENTION_MODES:
            raise ValueError(f"attn_mode '{attn_mode}' is not one of {ATTENTION_MODES}")
        if static_shapes and attn_mode == "ragged":
            raise ValueError("static_shapes pads window groups to fixed sizes; it needs "
                             "attn_mode 'group' or 'auto', not 'ragged'")
        self.attn_mode = attn_mode
        self.static_shapes = bool(static_shapes)
        self.img_size = pair(img_size)
        check_img_size(self.img_size)
        if MASK_UNIT % (patch_size * 2 ** (len(depths) - 1)):
            raise ValueError(f"patch_size {patch_size} with {len(depths)} stages does not align "
                             f"with the {MASK_UNIT} px mask unit")
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads need one entry per stage")
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.depths, self.num_heads = tuple(depths), tuple(num_heads)
        self.window_size = window_size
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        self.tokens_per_unit = MASK_UNIT // patch_size

        self.patch_embed = PatchEmbed(img_size=self.img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, norm_layer=nn.LayerNorm,
                                      output_fmt="NHWC", strict_img_size=False)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            grid = min(s // (patch_size * 2 ** i) for s in self.img_size)
            win, shift = (grid, 0) if grid <= window_size else (window_size, window_size // 2)
            self.layers.append(SwinStage(
                self.num_features[i], depth, heads, win, shift, mlp_ratio, qkv_bias,
                dpr[sum(depths[:i]): sum(depths[: i + 1])], downsample=i < len(depths) - 1))
        self.norm = nn.LayerNorm(self.num_features[-1])  # Swin's final norm; used by MIM decoders
        self.init_weights()

    no_decay_keywords = ("relative_position_bias_table",)

    # ---- timm-style model surface (the rest is GreenEncoder's) ---------------------------------
    def stem_module(self) -> nn.Module:
        return self.patch_embed

    def stage_modules(self, i: int) -> List[nn.Module]:
        return [self.layers[i]]  # its blocks and the patch merging that leaves it

    def layer_id(self, name: str) -> int:
        """Layer-decay id of a parameter name (relative to the encoder): patch_embed is 0, block j
        of stage i is sum(depths[:i]) + j + 1, stage i's patch merging shares the id of its last
        block, the rest (the final norm) sum(depths)."""
        parts = name.split(".")
        if parts[0] == "patch_embed":
            return 0
        if parts[0] == "layers" and len(parts) > 2:
            i = int(parts[1])
            if parts[2] == "blocks":
                return sum(self.depths[:i]) + int(parts[3]) + 1
            if parts[2] == "downsample":
                return sum(self.depths[: i + 1])
        return sum(self.depths)

    # ---- forward (dispatch: GreenEncoder.forward) -----------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(images)  # [B, H/4, W/4, C]

    def forward_dense(self, x: torch.Tensor, unit_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        outs = []
        for i, stage in enumerate(self.layers):
            b, h, w, _ = x.shape
            token_mask = None
            if unit_mask is not None:
                per_unit = self.tokens_per_unit >> i
                token_mask = upsample_mask(unit_mask, per_unit)
            plans = [WindowPlan.build(h, w, stage.window_size, shift, token_mask, x.device)
                     if token_mask is not None else _window_plan(h, w, stage.window_size, shift, x.device)
                     for shift in (0, stage.shift_size)]
            x = stage.run_blocks(x, plans)
            outs.append(x.permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outs

    def forward_sparse(self, images: torch.Tensor, plans: SwinPlans) -> List[torch.Tensor]:
        p = plans.plan_samples
        b = images.shape[0]
        # Tokens travel as one [B*N, C] matrix: every linear layer is then a single addmm, with no
        # reshapes around it (about 480 fewer ops per Swin-B forward + backward).
        x = self._embed_visible(images, plans.embed_index, p)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage.run_blocks(x, plans.attention[i])
            outs.append(x.view(b, -1, x.shape[-1]))
            if stage.downsample is not None:
                x = stage.downsample.forward_sparse(x, plans.merge[i], p, batch=b)
        return outs

    def _embed_visible(self, images: torch.Tensor, index: torch.Tensor, plan_samples: int) -> torch.Tensor:
        """Patch embedding of the visible patches only: the stride-4 conv is a linear map of each
        4x4 patch, so it runs on gathered patches with the conv's own weights. -> [B*N, C]"""
        b, c, h, w = images.shape
        ps = self.patch_size
        patches = images.view(b, c, h // ps, ps, w // ps, ps).permute(0, 2, 4, 1, 3, 5)
        patches = gather_tokens(patches.reshape(b, (h // ps) * (w // ps), c * ps * ps), index, plan_samples)
        patches = patches.flatten(0, 1)
        proj = self.patch_embed.proj
        return self.patch_embed.norm(F.linear(patches, proj.weight.flatten(1), proj.bias))

    def planner(self) -> SparsePlanner:
        """This encoder's planner: plain values, picklable (see SparsePlanner)."""
        return SparsePlanner(tuple(s.window_size for s in self.layers), tuple(s.shift_size for s in self.layers),
                             self.tokens_per_unit, self.attn_mode, self.static_shapes)
