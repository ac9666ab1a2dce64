"""The end-to-end demo (tools/demo.py) in its --quick form: every stage on toy sizes, the output
folder layout, summary.json, and the reuse of finished stages on a re-run. CPU, about a minute."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("detectron2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "tools", "demo.py")
STAGES = ["data", "pretrain", "export", "finetune", "evaluate", "detections", "reconstruction"]


def _run(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return subprocess.run([sys.executable, DEMO, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    start = time.monotonic()
    # --procs 2: pretraining and fine-tuning run under torchrun (the demo's default is 1 process)
    proc = _run(["--quick", "--procs", "2", "--output", str(out)])
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc, seconds


def test_quick_demo_output_folder(quick_demo):
    out, proc, seconds = quick_demo
    for rel in ("data/annotations/instances_train.json", "data/annotations/instances_val.json", "data/train",
                "pretrain/checkpoint-last.pth", "encoder.pth", "finetune/model_final.pth",
                "finetune/inference/coco_metrics.json", "reconstruction.png", "summary.json"):
        assert (out / rel).exists(), rel
    for stage in STAGES:
        assert (out / "stages" / f"{stage}.json").is_file(), stage
        assert (out / "logs" / f"{stage}.log").is_file() or stage == "evaluate", stage
    # progress per stage on the console, and the AP table at the end
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}]" in proc.stdout
    assert "| model | task | AP |" in proc.stdout
    # the report: the last line points at it, and every picture it embeds is there
    assert proc.stdout.strip().splitlines()[-1].endswith(os.path.join(str(out), "report.md"))
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    assert linked[0] == "curves.png" and sum(p.startswith("detections/") for p in linked) == 2, linked
    assert all((out / p).is_file() for p in linked) and "reconstruction.png" in linked


def test_quick_demo_summary(quick_demo):
    out, _, _ = quick_demo
    summary = json.loads((out / "summary.json").read_text())
    assert set(STAGES) <= set(summary["stages"])
    assert all(summary["stages"][s]["seconds"] >= 0 for s in STAGES)
    assert summary["total_seconds"] > 0
    for task in ("bbox", "segm"):
        assert "AP" in summary["metrics"]["pretrained"][task]  # a toy model's AP may be 0 or null
    pictures = summary["pictures"]
    assert "reconstruction.png" in pictures
    assert sum(p.startswith("detections/") for p in pictures) == 2
    for p in pictures:
        assert (out / p).is_file() and (out / p).stat().st_size > 1000, p
    assert summary["settings"]["quick"] is True and summary["settings"]["procs"] == 2


def test_quick_demo_rerun_reuses_stages(quick_demo):
    out, _, _ = quick_demo
    before = json.loads((out / "stages" / "finetune.json").read_text())["run_id"]
    start = time.monotonic()
    proc = _run(["--quick", "--procs", "2", "--output", str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("reusing it") == len(STAGES)
    assert json.loads((out / "stages" / "finetune.json").read_text())["run_id"] == before
    assert time.monotonic() - start < 60
    summary = json.loads((out / "summary.json").read_text())
    assert all(summary["stages"][s]["reused"] for s in STAGES)


def test_demo_rejects_bad_sizes(tmp_path):
    proc = _run(["--quick", "--output", str(tmp_path / "o"), "--img-size", "100"], timeout=60)
    assert proc.returncode != 0
    assert "multiple of 32" in proc.stderr
    assert not (tmp_path / "o").exists()
    proc = _run(["--quick", "--output", str(tmp_path / "o"), "--procs", "3"], timeout=60)  # batch 2
    assert proc.returncode != 0
    assert "--procs must be positive and divide --batch-size (2), got 3" in proc.stderr
    assert not (tmp_path / "o").exists()
