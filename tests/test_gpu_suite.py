"""The GPU suite's code path on the CPU (tiny model): it writes its JSON and Markdown, measures the
first case and lists what the time budget skipped."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_suite_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "benchmarks", "gpu_suite.sh"), "--device", "cpu", "--tiny",
                           "--iters", "1", "--warmup", "1", "--budget-s", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((out / "gpu_results.json").read_text())
    assert [c["case"] for c in results["cases"]] == ["swin compiled shared"]
    case = results["cases"][0]
    assert case["dense_s"] > 0 and case["green_s"] > 0 and case["fallback_masks"] >= 0
    assert "twins eager shared" in results["skipped"] and "loader" in results["skipped"]
    assert case["green_vs_eager"]["grad_rel_diff"] < 1e-5  # the captured (compiled) step equals eager
    md = (out / "gpu_results.md").read_text()
    assert "swin compiled shared" in md and "Skipped (time budget)" in md
