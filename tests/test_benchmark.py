"""tools/benchmarks/suite.py end to end on a toy grid: RESULTS.md with every section, the PNG, the JSON."""
import json
import os
import sys

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools", "benchmarks"))  # the suite imports its neighbours by name

import suite  # noqa: E402
from flops import gmac_per_image  # noqa: E402

TINY = '{"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}'


def test_suite_writes_results(tmp_path):
    res = suite.main([
        "--archs", "swin_tiny", "--img-sizes", "64", "--mask-ratios", "0.5", "--batch-size", "2",
        "--iters", "1", "--warmup", "0", "--threads", "1", "--encoder-kwargs", TINY,
        "--decoder-dim", "16", "--no-memory", "--plan-batch", "4", "--loader-workers", "0", "--loader-images", "8",
        "--out", str(tmp_path)])
    text = (tmp_path / "RESULTS.md").read_text()
    for section in ("Green vs dense", "Per-sample masks", "Planning", "Data loading", "CPU (1 threads)"):
        assert section in text, section
    assert (tmp_path / "results.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [c["mode"] for c in saved["cases"]] == ["step", "encoder"]
    for case in res["cases"]:
        assert "error" not in case, case.get("error")
        assert case["speedup"] > 0 and case["green_gmac"] < case["dense_gmac"]
        assert case["efficiency"] == case["speedup"] / case["flop_ratio"]
    assert len(res["planning"]) == 3 and all(len(p["padding"]) == 4 for p in res["planning"])
    # --render rewrites the report from the JSON without measuring
    suite.main(["--render", str(tmp_path / "results.json"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "RESULTS.md").read_text() == text


def test_sdpa_flop_handler_counts_both_matmuls():
    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 16)
    assert gmac_per_image(Attention(), (q, k, v)) * 1e9 * 2 == 2 * 4 * 10 * 6 * (8 + 16)
