"""The GPU suite's data rows: the loader alone (per decoding path) and pretraining end to end from
a JPEG folder, beside the step's speed on images already on the device.

    loader rows: img/s, CPU cores the loader used, device ms per batch spent decoding, for
                 data.decode=pil and (on CUDA) gpu, with the workers drawing and planning masks
                 as training does;
    end to end:  pretrain/main_pretrain.py on an ImageNet-like JPEG folder (500x375, q90),
                 Swin-B, bf16, CUDA graphs, data.decode=auto, median img/s after warm-up.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loader_rows(img: int, batch: int, workers: int, device: str, arch: str, tiny: bool) -> List[dict]:
    from loader import loader_images_per_s
    rows = []
    for decode in (["pil", "gpu"] if device.startswith("cuda") else ["pil"]):
        r = loader_images_per_s(img, batch, workers, batches=2 if tiny else 30, num_images=16 if tiny else 2048,
                                decode=decode, device=device, plan=arch)
        rows.append({"decode": decode, "workers": workers, "batch": batch, **r})
    return rows


def end_to_end(batch: int, workers: int, device: str, steps: int, out_dir: str, tiny: bool) -> Dict:
    """img/s of the real program from JPEG files (median of the steps after the first 50)."""
    from loader import jpeg_folder
    per_epoch = max(steps // 2, 1)
    folder = jpeg_folder(batch * per_epoch, unique=64 if tiny else 2048)
    config = "tiny_cpu.yaml" if tiny else "greenmim_swin_base_w7.yaml"
    overrides = [f"data.path={folder}", "data.decode=auto", f"data.num_workers={workers}",
                 f"train.batch_size={batch}", "train.epochs=2", "train.warmup_epochs=0",
                 f"train.max_steps={steps}", "model.static_shapes=true", "mask.in_workers=true",
                 "log.every_steps=1", "log.tensorboard=false", "log.progress_bar=false",
                 "log.vis_every_epochs=0", "checkpoint.every_epochs=0", "checkpoint.every_steps=0",
                 "export_encoder=false", f"device={device}", f"output_dir={out_dir}", "resume=none"]
    if device.startswith("cuda"):
        overrides += ["train.cuda_graphs=true", "train.amp=bf16"]
    cmd = [sys.executable, os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config",
           os.path.join(ROOT, "configs", "pretrain", config), *overrides]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "pretrain") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    first_line = next((ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()), "")
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip().splitlines()[-1:]}")
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    skip = 2 if tiny else 50
    rates = [r["img_per_s"] for r in recs if "img_per_s" in r and r["step"] > skip and r["step"] % per_epoch != 1]
    return {"img_per_s": statistics.median(rates), "steps": len(recs), "batch": batch, "workers": workers,
            "cpu_cores": os.cpu_count(), "first_log_line": first_line[:200]}
