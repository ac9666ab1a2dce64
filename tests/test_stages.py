"""The resumable stage runner (greenmim.engine.stages) on a toy pipeline: reuse, redo downstream of a
changed stage, continue a partial stage, delete only what stages own, and a failing tool's error."""
from __future__ import annotations

import sys

import pytest

from greenmim.engine.stages import Stage, StageError, StageRunner, run_tool


def _pipeline(tmp_path, calls, first_settings=None, fail_second=False):
    out = tmp_path / "out"

    def first():
        calls.append("first")
        (out / "a.txt").write_text("a")
        return {"a": 1}

    def second():
        calls.append("second")
        if fail_second:
            run_tool([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], str(out / "logs" / "b.log"),
                     cwd=str(tmp_path))
        (out / "b").mkdir(exist_ok=True)
        return {"b": 2}

    return [Stage("first", "make a", first_settings or {"n": 1}, first, owns=["a.txt"]),
            Stage("second", "make b", {}, second, depends=["first"], owns=["b"], keep_partial=True)]


def _run(tmp_path, stages):
    (tmp_path / "out").mkdir(exist_ok=True)
    runner = StageRunner(str(tmp_path / "out"))
    return runner, [runner.execute(i, len(stages), st) for i, st in enumerate(stages, 1)]


def test_rerun_reuses_and_a_changed_stage_redoes_what_reads_it(tmp_path, capsys):
    calls = []
    _, results = _run(tmp_path, _pipeline(tmp_path, calls))
    assert results == [{"a": 1}, {"b": 2}] and calls == ["first", "second"]
    (tmp_path / "out" / "mine.txt").write_text("not a stage's")
    runner, results = _run(tmp_path, _pipeline(tmp_path, calls))
    assert calls == ["first", "second"] and results == [{"a": 1}, {"b": 2}]
    assert all(t["reused"] for t in runner.times.values())
    assert capsys.readouterr().out.count("reusing it") == 2
    _run(tmp_path, _pipeline(tmp_path, calls, first_settings={"n": 2}))
    assert calls == ["first", "second"] * 2
    (tmp_path / "out" / "a.txt").unlink()  # a missing output redoes the stage
    _run(tmp_path, _pipeline(tmp_path, calls, first_settings={"n": 2}))
    assert calls == ["first", "second"] * 3
    assert (tmp_path / "out" / "mine.txt").read_text() == "not a stage's"


def test_failed_stage_raises_with_its_log_and_continues_when_keep_partial(tmp_path, capsys):
    calls = []
    with pytest.raises(StageError, match=r"failed with exit status 3; full output in .*b\.log"):
        _run(tmp_path, _pipeline(tmp_path, calls, fail_second=True))
    assert "boom" in (tmp_path / "out" / "logs" / "b.log").read_text()
    assert (tmp_path / "out" / "stages" / "second.started.json").is_file()
    (tmp_path / "out" / "b").mkdir()  # what the failed run left behind
    (tmp_path / "out" / "b" / "partial").write_text("kept")
    capsys.readouterr()
    _run(tmp_path, _pipeline(tmp_path, calls))
    assert "continuing an unfinished run" in capsys.readouterr().out
    assert (tmp_path / "out" / "b" / "partial").read_text() == "kept"
    assert calls == ["first", "second", "second"]  # the first stage was reused
