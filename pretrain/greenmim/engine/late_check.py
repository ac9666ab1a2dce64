"""A step's finite-loss / finite-gradient check without a host sync in the step.

Reading the loss and the gradient norm on the host right after the backward makes the host wait
for the GPU every step; until the next step is launched the GPU then idles while the host runs
the optimiser's Python, logs, and fetches and copies the next batch (a few ms against a captured
green step of ~35 ms). Instead the optimiser step is gated on the device: the fused AdamW takes a
`found_inf` flag (the one torch.amp.GradScaler passes) and leaves weights, moments and step
counts untouched when it is set. The two values travel to page-locked host memory without
waiting, and the host reads them one step later, after it has launched the next step's forward
and backward. A non-finite step stops training then, with its own step number, before any later
update is applied and before its step hook (the periodic checkpoint) runs: the weights it leaves
are the last finite step's, as with a check before the update.
"""
from __future__ import annotations

from typing import List, Optional

import torch


def supports_late_check(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
    """Whether optimizer.step() honours a device-side skip flag (fused Adam/AdamW: CPU and
    CUDA) and no GradScaler owns the skipping (fp16 AMP keeps its own per-step check)."""
    return (not scaler.is_enabled() and getattr(optimizer, "_step_supports_amp_scaling", False)
            and all(g.get("fused") for g in optimizer.param_groups))


class StepOutcome:
    """The mean loss and the gradient norm of one optimiser step, on their way to the host.

    values: float [2] on the training device (loss, norm); step, epoch, lr: what the step's log
    line and error message report.
    """

    def __init__(self, values: torch.Tensor, step: int, epoch: int, lr: float):
        self.step, self.epoch, self.lr = step, epoch, lr
        values = self._values = values.detach().float()
        if values.is_cuda:
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            # blocking: the host thread sleeps while it waits instead of spinning on a core
            # that the loader's workers and the decoding thread can use
            self._ready: Optional[torch.cuda.Event] = torch.cuda.Event(blocking=True)
            self._ready.record()
        else:
            self._host, self._ready = values.cpu(), None

    def skip_flag(self) -> torch.Tensor:
        """float [] on the device: 1.0 when the loss or the norm is not finite (gated_step's skip)."""
        return (~torch.isfinite(self._values)).any().float()

    def read(self) -> List[float]:
        """[loss, norm] on the host; waits for this copy only (the stream may be further on)."""
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()


def gated_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step() that changes nothing where skip (float [] on the device) is 1.0."""
    optimizer.grad_scale, optimizer.found_inf = None, skip
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf
