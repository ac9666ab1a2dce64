"""Random masking of 32 px units, the data that tells the green encoder what is visible.

A mask is a bool tensor [B, H/32, W/32] with True = masked. Every sample keeps the same number of
visible units, so visible tokens of a batch stack into dense [B, N, C] tensors at every stage.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple, Union

import torch

MASK_UNIT = 32  # pixels; equals the total stride of hierarchical ViTs, so stages stay aligned


def mask_grid_size(img_size: Union[int, Sequence[int]], unit: int = MASK_UNIT) -> Tuple[int, int]:
    """(rows, cols) of the unit grid for an image size, or ValueError if it does not tile."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if h <= 0 or w <= 0 or h % unit or w % unit:
        raise ValueError(
            f"image size {h}x{w} is not a positive multiple of the {unit} px mask unit; "
            f"use e.g. {max(unit, round(h / unit) * unit)}x{max(unit, round(w / unit) * unit)}")
    return h // unit, w // unit


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """[B, Hu, Wu] -> [B, Hu*factor, Wu*factor]: each unit's value over its factor x factor cells
    (tokens of a stage, pixels, key/value cells)."""
    return mask.repeat_interleave(factor, 1).repeat_interleave(factor, 2)


def num_visible_units(num_units: int, ratio: float) -> int:
    """Units kept visible: int(num_units * (1 - ratio)), at least one."""
    return max(1, int(num_units * (1.0 - ratio)))


class MaskGenerator:
    """Draws unit masks with a fixed visible count.

    Args:
        img_size: int or (H, W), multiples of 32.
        ratio: fraction of units to mask, in [0, 1).
        shared: one mask for the whole batch (the paper's setting, allows planning the grouping
            once per step) or an independent mask per sample.
        seed: seed of the generator's own RNG (None: drawn from torch's global RNG).
    """

    def __init__(self, img_size: Union[int, Sequence[int]] = 224, ratio: float = 0.75,
                 shared: bool = True, seed: Optional[int] = None, unit: int = MASK_UNIT):
        if not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"mask ratio {ratio} is outside [0, 1); pass e.g. 0.75")
        self.grid = mask_grid_size(img_size, unit)
        self.ratio = float(ratio)
        self.shared = bool(shared)
        self.num_units = self.grid[0] * self.grid[1]
        self.num_visible = num_visible_units(self.num_units, self.ratio)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(2**62, ()).item()))

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

    def draw(self, batch_size: int) -> "UnitMask":
        """The next mask as a UnitMask: valid by construction, shared flag known (no checks later)."""
        return UnitMask(self(batch_size), self.shared)

    def __call__(self, batch_size: int) -> torch.Tensor:
        """Returns a bool mask [batch_size, rows, cols], True = masked (on the CPU)."""
        draws = 1 if self.shared else batch_size
        noise = torch.rand(draws, self.num_units, generator=self.generator)
        keep = noise.argsort(dim=1)[:, : self.num_visible]
        mask = torch.ones(draws, self.num_units, dtype=torch.bool)
        mask.scatter_(1, keep, False)
        mask = mask.view(draws, *self.grid)
        return mask.expand(batch_size, -1, -1).clone() if self.shared else mask


def check_mask_shape(mask: torch.Tensor, batch_size: int, grid: Tuple[int, int]) -> None:
    """The checks that need no look at the mask's values (no host sync): dtype and shape."""
    if mask.dtype != torch.bool or mask.dim() != 3 or tuple(mask.shape) != (batch_size, *grid):
        raise ValueError(
            f"mask must be a bool tensor of shape [{batch_size}, {grid[0]}, {grid[1]}] "
            f"(True = masked 32 px unit), got {mask.dtype} {tuple(mask.shape)}")


def check_mask(mask: torch.Tensor, batch_size: int, grid: Tuple[int, int]) -> int:
    """Validates a unit mask and returns the per-sample visible count."""
    check_mask_shape(mask, batch_size, grid)
    visible = (~mask).flatten(1).sum(1)
    if not bool((visible == visible[0]).all()):
        raise ValueError(
            f"every sample needs the same number of visible units, got {visible.tolist()}; "
            "draw masks with greenmim.data.masking.MaskGenerator")
    if int(visible[0]) == 0:
        raise ValueError("the mask hides every unit; keep at least one unit visible")
    return int(visible[0])


@dataclasses.dataclass(frozen=True)
class UnitMask:
    """A unit mask checked once, carrying what the check found, so models downstream neither check
    it again nor compare samples to find out whether the batch shares one mask.

    Attributes:
        mask: bool [B, Hu, Wu], True = masked, the same visible count in every sample.
        shared: every sample has the same mask (the sparse path then plans one sample).
    Make one with MaskGenerator.draw or as_unit_mask; models take it wherever they take a mask.
    """
    mask: torch.Tensor
    shared: bool

    @property
    def plan_mask(self) -> torch.Tensor:
        """The masks to plan from: [1, Hu, Wu] when shared, else [B, Hu, Wu]."""
        return self.mask[:1] if self.shared else self.mask

    def to(self, device, non_blocking: bool = False) -> "UnitMask":
        return UnitMask(self.mask.to(device, non_blocking=non_blocking), self.shared)

    def pin_memory(self) -> "UnitMask":  # DataLoader(pin_memory=True) calls this
        return UnitMask(self.mask.pin_memory(), self.shared)


def plan_mask_of(mask: Union[torch.Tensor, UnitMask]) -> torch.Tensor:
    """The host mask a planner plans from: a UnitMask's plan_mask (checked when it was made, so
    not again), or a bool tensor [P, Hu, Wu] checked here."""
    if isinstance(mask, UnitMask):
        return mask.plan_mask.cpu()
    mask = mask.cpu()
    check_mask(mask, mask.shape[0], tuple(mask.shape[1:]))
    return mask


def as_unit_mask(mask: Union[torch.Tensor, UnitMask], batch_size: int, grid: Tuple[int, int],
                 plans=None) -> UnitMask:
    """The one place a model checks its mask argument.

    A UnitMask was checked when it was made: only its shape is compared here. A bool tensor that
    comes with plans was checked where it was planned: shape only, and `shared` is read off the
    plans (one planned sample). Any other tensor is checked here, with one host read that also
    finds whether every sample has the same mask.
    """
    if isinstance(mask, UnitMask):
        check_mask_shape(mask.mask, batch_size, grid)
        return mask
    if plans is not None:
        check_mask_shape(mask, batch_size, grid)
        return UnitMask(mask, plans.plan_samples == 1)
    host = mask.cpu()  # the one device -> host copy, when the mask lives on a GPU
    check_mask(host, batch_size, grid)
    return UnitMask(mask, bool((host == host[:1]).all()))
