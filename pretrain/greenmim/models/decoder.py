"""The light MAE-style decoder of GreenMIM: one unit = one token, pixels of every unit predicted.

The encoder hands over the visible tokens of its last stage, one per visible 32 px unit, in
row-major order of their unit positions. The decoder puts each of them back at ITS OWN unit
position (the reference code put them where its noise ordering said, which scrambles them),
fills the masked units with a learned token, adds a fixed 2-D sin-cos position embedding, runs a
few ViT blocks and predicts the 32x32x3 pixels of every unit.
"""
from __future__ import annotations

from functools import partial
from typing import Tuple

import torch
from torch import nn
from timm.models.vision_transformer import Block

from .pos_embed import sincos_2d


def restore_by_position(visible: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Scatters visible tokens back onto the full unit grid.

    Args:
        visible: [B, N, D] tokens of the visible units, in row-major order of their positions.
        mask: bool [B, rows, cols] (True = masked) with N False entries per sample.
        fill: [1, 1, D] token for the masked units.
    Returns:
        [B, rows*cols, D]; position p holds visible[b, k] where p is the k-th visible position of
        sample b in row-major order, and `fill` where mask[b] is True.
    """
    b, n, d = visible.shape
    flat = mask.flatten(1)
    num_units = flat.shape[1]
    if flat.shape[0] != b:
        raise ValueError(f"mask batch {flat.shape[0]} does not match the {b} samples of the latents")
    # A stable sort of the mask bits lists the visible positions first, in row-major order, then the
    # masked ones; its inverse permutation maps [visible tokens, fill tokens] onto the grid.
    # Everything stays on the device: no host synchronisation.
    order = torch.sort(flat.to(torch.uint8), dim=1, stable=True).indices
    inverse = torch.argsort(order, dim=1)
    tokens = torch.cat([visible, fill.to(visible.dtype).expand(b, num_units - n, d)], dim=1)
    return torch.gather(tokens, 1, inverse.unsqueeze(-1).expand(-1, -1, d))


class MIMDecoder(nn.Module):
    """Linear embed -> mask tokens + restore by position -> sin-cos pos embed -> blocks -> pixels.

    Args:
        in_dim: channels of the encoder's last stage (after its LayerNorm).
        grid: (rows, cols) of the unit grid of the training image size (others are handled too).
        dim, depth, num_heads, mlp_ratio: size of the decoder transformer (paper: 512, 1, 16, 4).
        unit: mask unit in pixels (32) and in_chans: image channels; the head predicts
            unit*unit*in_chans values per unit, ordered (row, col, channel) within the unit.
    """

    def __init__(self, in_dim: int, grid: Tuple[int, int], dim: int = 512, depth: int = 1,
                 num_heads: int = 16, mlp_ratio: float = 4.0, unit: int = 32, in_chans: int = 3):
        super().__init__()
        self.grid = tuple(grid)
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, self.grid).unsqueeze(0), persistent=False)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth))
        self.norm = norm_layer(dim)
        self.pred = nn.Linear(dim, unit * unit * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def position_embedding(self, grid: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        if tuple(grid) == self.grid:
            return self.pos_embed.to(like.dtype)
        return sincos_2d(self.pos_embed.shape[-1], grid).to(like).unsqueeze(0)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latent [B, N, in_dim] (visible units, row-major), mask bool [B, rows, cols]
        -> [B, rows*cols, unit*unit*in_chans] predicted pixels of every unit."""
        x = self.embed(latent)
        x = restore_by_position(x, mask, self.mask_token)
        x = x + self.position_embedding(mask.shape[1:], x)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))
