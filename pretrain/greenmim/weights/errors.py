"""The errors of weight loading: each message is one line that says what is wrong and what to do."""
from __future__ import annotations

from ..config import UserError


class CheckpointError(UserError):
    """A weight file or state dict that cannot be used (unreadable, pickled code, no encoder)."""


class LayoutError(CheckpointError):
    """The weights are of the model's architecture but in a key layout that cannot be mapped."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint's encoder is not the model's encoder (different widths, depths or heads)."""
