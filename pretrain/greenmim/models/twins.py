"""Green Twins-SVT: one encoder, a dense path for detection and a sparse path for MIM.

Same forward contract as GreenSwinTransformer (GreenEncoder's, encoder_base.py), so GreenMIM,
SimMIM and the Detectron2 backbone use it unchanged.

A stage (Chu et al., "Twins", 2021) is: patch embedding (conv, kernel = stride = 4 for the first
stage, 2 after; LayerNorm), block 0, PEG, blocks 1..; blocks alternate LSA (window attention,
window 7, no shift; even blocks) and GSA (attention to a map sub-sampled by a conv of kernel =
stride = sr, 8/4/2/1; odd blocks). Sparse path (docs/design.md): LSA packs the visible
tokens of each window with the same Group Window Attention planner as Swin; sr and the 32 px unit
align, so GSA's keys/values are exactly those of the visible units; the strided convs and the PEG
run on visible tokens through sparse_conv (spconv or PyTorch).

State-dict keys are those of timm.models.twins / the official Twins release (patch_embeds.i,
blocks.i.j, pos_block.i, norm; no classification head), so their checkpoints load directly.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.utils.checkpoint as cp
from torch import nn

from ..data.masking import MASK_UNIT, upsample_mask
from .sparse_conv import SPARSE_CONV_BACKENDS, embed_visible_patches, recompute_in_backward, strided_conv
from .encoder_base import ATTENTION_MODES, GreenEncoder, check_img_size, init_transformer_weights, pair
from .twins_blocks import BlockNorm, PosConv, TwinsBlock, TwinsPatchEmbed
from .twins_plans import DenseStage, TwinsPlanner, TwinsPlans, dense_kv_mask

# Published Twins-SVT sizes (Chu et al. 2021, Table 2; timm twins_svt_*): widths double per stage.
TWINS_ARCHS: Dict[str, dict] = {
    "twins_svt_small": dict(embed_dim=64, depths=(2, 2, 10, 4), num_heads=(2, 4, 8, 16)),
    "twins_svt_base": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "twins_svt_large": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


class GreenTwinsSVT(GreenEncoder):
    """Twins-SVT encoder that can compute on visible tokens only.

    Args:
        img_size: reference size (int or (H, W), multiples of 32); any multiple of 32 runs.
        patch_size: first patch embedding (4); later stages embed 2x2 patches.
        embed_dim: width of stage 0; stage i has embed_dim * 2**i channels (all published SVTs).
        depths, num_heads, sr_ratios: per stage. Each stage's stride * sr must divide 32 (the mask
            unit), so that GSA's key/value cells never mix visible and masked pixels.
        window_size: LSA window (7). Windows that overhang a grid are padded and the padding is
            masked out of the keys.
        mlp_ratio: MLP hidden width / channels.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        attn_mode: sparse-path LSA: "group" (padded groups, SDPA; "auto" picks it, as for Swin) or
            "ragged" (FlexAttention, forward-only on CPU).
        conv_backend: sparse-path convolutions: "auto", "spconv" or "torch" (see sparse_conv.py).
        static_shapes: sparse-path tensors get shapes that depend on batch, image size, visible
            count and mask kind only, never on the mask (CUDA graphs, torch.compile without
            recompiles); see static_shapes.py. Group attention only.
    """

    def __init__(self, img_size=224, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 64,
                 depths: Sequence[int] = (2, 2, 10, 4), num_heads: Sequence[int] = (2, 4, 8, 16),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), window_size: int = 7, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, attn_mode: str = "auto", conv_backend: str = "auto",
                 static_shapes: bool = False):
        super().__init__()
        self.img_size = pair(img_size)
        self.depths, self.num_heads, self.sr_ratios = tuple(depths), tuple(num_heads), tuple(sr_ratios)
        self._check_args(patch_size, window_size, attn_mode, conv_backend)
        if static_shapes and attn_mode == "ragged":
            raise ValueError("static_shapes pads window groups to fixed sizes; it needs "
                             "attn_mode 'group' or 'auto', not 'ragged'")
        self.attn_mode, self.conv_backend, self.static_shapes = attn_mode, conv_backend, bool(static_shapes)
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.window_size = window_size
        n = len(self.depths)
        self.num_features = [embed_dim * 2 ** i for i in range(n)]
        self.tokens_per_unit = MASK_UNIT // patch_size

        self.patch_embeds = nn.ModuleList(
            TwinsPatchEmbed(in_chans if i == 0 else self.num_features[i - 1], self.num_features[i],
                            patch_size if i == 0 else 2) for i in range(n))
        total = sum(self.depths)  # drop-path rates as plain floats (also under a meta device)
        dpr = [drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        self.blocks = nn.ModuleList()
        for i, depth in enumerate(self.depths):
            first = sum(self.depths[:i])
            self.blocks.append(nn.ModuleList(
                TwinsBlock(self.num_features[i], self.num_heads[i], mlp_ratio, dpr[first + j],
                           window_size=window_size if j % 2 == 0 else None, sr_ratio=self.sr_ratios[i])
                for j in range(depth)))
        self.pos_block = nn.ModuleList(PosConv(c) for c in self.num_features)
        self.norm = BlockNorm(self.num_features[-1])  # Twins' final norm; used by MIM decoders
        self.grad_checkpointing = False
        self.init_weights()

    def _check_args(self, patch_size: int, window_size: int, attn_mode: str, conv_backend: str) -> None:
        n = len(self.depths)
        if attn_mode not in ATTENTION_MODES:
            raise ValueError(f"attn_mode '{attn_mode}' is not one of {ATTENTION_MODES}")
        if conv_backend not in SPARSE_CONV_BACKENDS:
            raise ValueError(f"conv_backend '{conv_backend}' is not one of {SPARSE_CONV_BACKENDS}")
        if not (len(self.num_heads) == len(self.sr_ratios) == n) or n == 0:
            raise ValueError(f"depths {self.depths}, num_heads {self.num_heads} and sr_ratios "
                             f"{self.sr_ratios} need one entry per stage")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        check_img_size(self.img_size)
        for i, sr in enumerate(self.sr_ratios):
            stride = patch_size * 2 ** i
            if sr < 1 or MASK_UNIT % (stride * sr):
                raise ValueError(f"stage {i}: stride {stride} x sr {sr} does not divide the {MASK_UNIT} px "
                                 f"mask unit; use sr_ratios like (8, 4, 2, 1) with patch_size 4")

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Twins' initialisation: Swin's for linears and norms, He-style (fan-out) convolutions.
        init_transformer_weights(m)
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    no_decay_keywords = ("pos_block.",)  # the PEG's depthwise convs, as Twins trains them

    # ---- timm-style model surface (the rest is GreenEncoder's) ---------------------------------
    def layer_id(self, name: str) -> int:
        """Layer-decay id of a parameter name: patch_embeds.0 is 0, block j of stage i is
        sum(depths[:i]) + j + 1, a stage's PEG shares block 0's id, the patch embedding into stage
        i shares the id of stage i-1's last block (like Swin's patch merging), the rest sum(depths)."""
        parts = name.split(".")
        if parts[0] == "patch_embeds":
            i = int(parts[1])
            return 0 if i == 0 else sum(self.depths[:i])
        if parts[0] == "blocks":
            i, j = int(parts[1]), int(parts[2])
            return sum(self.depths[:i]) + j + 1
        if parts[0] == "pos_block":
            return sum(self.depths[: int(parts[1])]) + 1
        return sum(self.depths)

    def stem_module(self) -> nn.Module:
        return self.patch_embeds[0]

    def stage_modules(self, i: int) -> List[nn.Module]:
        """Stage i's blocks and PEG, and the patch embedding that leaves it."""
        leaving = [self.patch_embeds[i + 1]] if i + 1 < len(self.depths) else []
        return [self.blocks[i], self.pos_block[i], *leaving]

    # ---- forward (dispatch: GreenEncoder.forward) -----------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch_embeds[0](images)  # [B, H/4, W/4, C]

    def _run_stage(self, i: int, x: torch.Tensor, ctx) -> torch.Tensor:
        memo = {}  # indices the stage's window plan derives once for this forward
        for j, block in enumerate(self.blocks[i]):
            if self.grad_checkpointing and x.requires_grad:
                x = cp.checkpoint(block, x, ctx, memo, use_reentrant=False)
            else:
                x = block(x, ctx, memo)
            if j == 0:
                x = self.pos_block[i](x, ctx)  # PEG after the first block, as in Twins
        return x

    def forward_dense(self, x: torch.Tensor, unit_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        outs = []
        for i in range(len(self.depths)):
            if i > 0:
                x = self.patch_embeds[i](x.permute(0, 3, 1, 2))
            _, h, w, _ = x.shape
            if unit_mask is None:
                ctx = DenseStage.build(h, w, self.window_size, x.device)
            else:
                per_unit = self.tokens_per_unit >> i
                token_mask = upsample_mask(unit_mask, per_unit)
                kv_mask = dense_kv_mask(unit_mask, per_unit // self.sr_ratios[i])
                ctx = DenseStage.build(h, w, self.window_size, x.device, token_mask, kv_mask)
            x = self._run_stage(i, x, ctx)
            outs.append(x.permute(0, 3, 1, 2).contiguous())
        return outs

    def forward_sparse(self, images: torch.Tensor, plans: TwinsPlans) -> List[torch.Tensor]:
        p = plans.plan_samples
        embed0 = self.patch_embeds[0]
        x = embed0.norm(embed_visible_patches(images, embed0.proj, plans.embed_index, p))
        outs = []
        for i in range(len(self.depths)):
            if i > 0:
                embed = self.patch_embeds[i]
                x = embed.norm(recompute_in_backward(strided_conv, x, embed.proj, plans.embed[i - 1],
                                                     self.conv_backend))
            x = self._run_stage(i, x, plans.stages[i])
            outs.append(x)
        return outs

    def planner(self) -> TwinsPlanner:
        """This encoder's planner: plain values, picklable (see TwinsPlanner)."""
        return TwinsPlanner(self.window_size, self.sr_ratios, self.tokens_per_unit, self.conv_backend,
                            self.attn_mode, self.static_shapes)
