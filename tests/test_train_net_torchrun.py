"""tools/train_net.py under torchrun on CPUs: 2 gloo processes share the batch, train with DDP,
evaluate on both shards and write one model_final.pth and one set of COCO metrics."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("detectron2")

from conftest import REPO, SIDE, coco_overrides  # noqa: E402
from test_detection import T1X, TINY  # noqa: E402


@pytest.fixture(scope="module")
def coco(make_coco):
    return make_coco(num_train=4, num_val=3, img_size=64)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_cpu_processes_train_evaluate_and_save_once(coco, tmp_path):
    out = tmp_path / "run"
    opts = TINY + coco_overrides(coco, num_train_iters_batch=4) + [
        f"dataloader.train.mapper.augmentations.0.short_edge_length={SIDE}",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
        "train.max_iter=6", "train.eval_period=0", "train.log_period=2", "train.seed=0",
        "train.checkpointer.period=1000", f"train.output_dir={out}",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "tools", "train_net.py"), "--config-file", T1X, *opts]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    log = res.stdout + res.stderr
    assert "World size: 2" in log, log[-3000:]
    assert os.path.isfile(out / "model_final.pth")
    metrics = json.load(open(out / "inference" / "coco_metrics.json"))["metrics"]
    for task in ("bbox", "segm"):
        assert math.isfinite(metrics[task]["AP"]), metrics
    lines = [json.loads(x) for x in open(out / "metrics.json").read().splitlines() if x.endswith("}")]
    assert max(r["iteration"] for r in lines if "total_loss" in r) == 5
