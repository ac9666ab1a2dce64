"""The engine's name for greenmim.faults (the training loop's step faults are read through it).

Fault injection sits below every package because the atomic file writer, which weights, engine
and greenmim_det all use, is one of its points; this module only lets `from . import faults`
inside the engine keep working. Hit counts live in greenmim.faults, so both names share them.
"""
from ..faults import ENV, POINTS, enospc, fires, kill_self, maybe_fail_step, reset

__all__ = ["ENV", "POINTS", "enospc", "fires", "kill_self", "maybe_fail_step", "reset"]
