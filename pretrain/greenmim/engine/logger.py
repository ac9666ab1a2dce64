"""Training feedback on the main process: progress bar, JSON-lines log, TensorBoard scalars."""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(seconds)))


class TrainLogger:
    """Args:
        output_dir: where log.jsonl and tensorboard/ go (None: nothing written).
        enabled: False on non-main processes (everything becomes a no-op).
        tensorboard: write TensorBoard event files (skipped with a note if tensorboard is missing).
        progress_bar: show a tqdm bar (loss, lr, img/s, ETA of the whole run).
    """

    def __init__(self, output_dir: Optional[str], enabled: bool = True, tensorboard: bool = True,
                 progress_bar: bool = True):
        self.enabled = enabled
        self.output_dir = output_dir
        self.use_bar = progress_bar
        self.bar = None
        self.writer = None
        self.jsonl = None
        if not enabled or output_dir is None:
            return
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "log.jsonl")
        _drop_partial_last_line(path)
        self.jsonl = open(path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))
            except ImportError:
                self.info("tensorboard is not installed; skipping TensorBoard logging")

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    # progress bar ------------------------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int, steps: int, start_step: int) -> None:
        if not (self.enabled and self.use_bar):
            return
        from tqdm import tqdm
        self.bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{epochs}",
                        dynamic_ncols=True, leave=True, file=sys.stderr)

    def update_bar(self, n: int, loss: float, lr: float, img_per_s: float, eta_s: float) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {img_per_s:.1f} img/s "
                                 f"ETA {_fmt_eta(eta_s)}", refresh=False)
        self.bar.update(n)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # records -----------------------------------------------------------------------------------
    def log(self, record: Dict[str, Any], step: int, scalars: bool = True) -> None:
        """Appends one JSON line (plus "time"); numbers also go to TensorBoard as train/<key>."""
        if not self.enabled:
            return
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({**record, "time": time.time()}) + "\n")
        if self.writer is not None and scalars:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.end_epoch()
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _drop_partial_last_line(path: str) -> None:
    """A run killed while writing a line leaves it unfinished; appending after it would glue the
    next record to it and break every JSON-lines reader. Cut the file back to its last newline.
    (Steps logged after the last checkpoint are logged again on resume; readers keep the later.)"""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
