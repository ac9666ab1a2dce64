"""tools/demo_classify.py end to end at a toy size: every stage runs, the table has a row per start
and label fraction, finished stages are reused, and a folder of another run is refused."""
from __future__ import annotations

import json
import os

from test_finetune import load_tool

demo = load_tool("demo_classify")

TOY = ["--no-simmim", "--train-per-class", "20", "--val-per-class", "2", "--pretrain-epochs", "1",
       "--epochs", "1", "--epochs-10pct", "1", "--threads", "1",
       "data.img_size=64", "model.encoder.window_size=2", "train.batch_size=8"]


def test_demo_classify_runs_reuses_and_refuses_other_settings(tmp_path, capsys):
    out = str(tmp_path / "dc")
    os.makedirs(out)  # a run that failed before any stage finished: its settings hold nothing back
    with open(os.path.join(out, "times.json"), "w") as f:
        json.dump({"settings": {"sizes": "0.5,0.95"}}, f)
    assert demo.main(["--out", out, *TOY]) == 0
    table = capsys.readouterr().out
    rows = [r for r in table.splitlines() if r.startswith("| random") or r.startswith("| GreenMIM")]
    assert len(rows) == 4 and all(float(r.split("|")[5]) >= 0 for r in rows), table
    with open(os.path.join(out, "data", "DONE")) as f:
        data = json.load(f)
    assert data["silhouette"] and data["sizes"] == [0.3, 0.8]  # the default: large outlines
    with open(os.path.join(out, "times.json")) as f:
        times = json.load(f)
    assert {"pretrain_green", "ft_rand_10pct", "ft_green_100pct"} <= set(times)

    with open(os.path.join(out, "stages.log")) as f:
        before = f.read()
    assert demo.main(["--out", out, *TOY]) == 0  # everything reused: no stage runs again
    assert "] pretrain_green ..." not in capsys.readouterr().out
    with open(os.path.join(out, "stages.log")) as f:
        assert f.read() == before

    other = list(TOY)
    other[TOY.index("--pretrain-epochs") + 1] = "2"
    assert demo.main(["--out", out, *other]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "pretrain_epochs: 1 -> 2" in err and "\n" not in err

    older = tmp_path / "older"  # a folder of an earlier version (no recorded settings)
    older.mkdir()
    (older / "times.json").write_text('{"data": 1.0}')
    assert demo.main(["--out", str(older), *TOY]) == 2
    assert "holds a run with other settings (none recorded)" in capsys.readouterr().err
