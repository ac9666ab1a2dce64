"""A resumable pipeline of stages, each one a run of a command-line tool (the demo is one).

    runner = StageRunner(out_dir)
    for i, stage in enumerate(stages, 1):
        results[stage.name] = runner.execute(i, len(stages), stage)

A stage that finished writes `<out>/stages/<name>.json` (its settings, its results, a run id, the
run ids of the stages it read, wall and CPU time). A re-run reuses the stage while its settings and
those run ids are unchanged and the files it owns exist; otherwise it deletes what the stage owns
and runs it again, so everything downstream of a changed stage is redone too. A stage marked
keep_partial continues an unfinished run of the same settings (`<name>.started.json`) instead of
starting over (pretraining resumes from its checkpoint). The runner only ever deletes the paths
that its stages declare they own.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..json_files import read_json, write_json


class StageError(Exception):
    """A stage failed; the message says which and where its log is."""


def fmt_time(seconds: float) -> str:
    """Seconds as m:ss."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def run_tool(cmd: List[str], log_path: str, show: Optional[Callable[[str], bool]] = None, verbose: bool = False,
             env_extra: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> None:
    """Runs cmd in `cwd`, copying its output to log_path and, filtered by `show` (None or verbose:
    everything), to the console. Raises StageError on a non-zero exit, after printing the log's tail.
    The command is echoed with paths under `cwd` made relative, so it can be pasted there."""
    base = os.path.abspath(cwd or os.getcwd())
    printable = " ".join(os.path.relpath(c, base) if os.path.isabs(c) and c.startswith(base) else c for c in cmd)
    print(f"  $ {printable}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", **(env_extra or {}))
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(f"$ {printable}\n".encode())
        proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pending = b""
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            log.write(chunk)
            log.flush()
            if show is None or verbose:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in lines:
                text = line.decode("utf-8", "replace")
                if text.strip() and show(text):
                    print("    " + text.strip()[:160], flush=True)
        rc = proc.wait()
    if rc != 0:
        with open(log_path, "rb") as f:
            tail = f.read().decode("utf-8", "replace").splitlines()[-25:]
        print("\n".join("    | " + line for line in tail), file=sys.stderr)
        raise StageError(f"`{printable}` failed with exit status {rc}; full output in {log_path}")


@dataclass
class Stage:
    name: str
    title: str
    settings: Dict  # JSON-able; a change redoes the stage
    run: Callable[[], Dict]  # returns the stage's results (JSON-able, stored in its marker)
    depends: Sequence[str] = ()  # stages whose outputs it reads: a redone one redoes this one
    owns: Sequence[str] = ()  # paths inside the output folder it writes (deleted when it is redone)
    keep_partial: bool = False  # an unfinished run with the same settings continues


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def remove(path: str) -> None:
    """Deletes a file or a folder tree, if it is there."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


@dataclass
class StageRunner:
    out: str
    markers: Dict[str, Dict] = field(default_factory=dict)  # name -> marker of this run's stages
    times: Dict[str, Dict] = field(default_factory=dict)  # name -> seconds, cpu_seconds, reused

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def marker_path(self, name: str, kind: str = "json") -> str:
        return self.path("stages", f"{name}.{kind}")

    def is_fresh(self, stage: Stage) -> bool:
        """Whether the stage's last finished run still holds: same settings, same inputs, files there."""
        marker = read_json(self.marker_path(stage.name))
        if not marker or marker.get("settings") != stage.settings:
            return False
        for dep in stage.depends:
            dep_marker = self.markers.get(dep) or read_json(self.marker_path(dep))
            if not dep_marker or marker.get("inputs", {}).get(dep) != dep_marker.get("run_id"):
                return False
        return all(os.path.exists(self.path(p)) for p in stage.owns)

    def clean(self, name: str, owns: Sequence[str]) -> None:
        """Deletes what stage `name` owns and its markers."""
        for rel in owns:
            remove(self.path(rel))
        for kind in ("json", "started.json"):
            remove(self.marker_path(name, kind))

    def execute(self, index: int, total: int, stage: Stage) -> Dict:
        """Reuses or runs stage (number `index` of `total`, for the progress line); its results."""
        header = f"[{index}/{total}] {stage.title}"
        if self.is_fresh(stage):
            marker = read_json(self.marker_path(stage.name))
            print(f"{header}: done before ({fmt_time(marker['seconds'])}), reusing it", flush=True)
            self.markers[stage.name] = marker
            self.times[stage.name] = {"seconds": marker["seconds"], "cpu_seconds": marker.get("cpu_seconds"),
                                      "reused": True}
            return marker["results"]
        started = read_json(self.marker_path(stage.name, "started.json"))
        if os.path.exists(self.marker_path(stage.name)) or not (
            stage.keep_partial and started and started.get("settings") == stage.settings
        ):
            self.clean(stage.name, stage.owns)
        else:
            print(f"{header}: continuing an unfinished run", flush=True)
        print(f"{header} ...", flush=True)
        write_json(self.marker_path(stage.name, "started.json"), {"settings": stage.settings})
        load0 = os.getloadavg()
        cpu0 = _children_cpu()
        t0 = time.monotonic()
        results = stage.run()
        seconds = time.monotonic() - t0
        cpu = _children_cpu() - cpu0
        marker = {
            "stage": stage.name,
            "run_id": uuid.uuid4().hex,
            "settings": stage.settings,
            "inputs": {dep: self.markers[dep]["run_id"] for dep in stage.depends},
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1),
            "load_average": [round(x, 2) for x in (*load0, *os.getloadavg())],  # 1/5/15 min at start, end
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "results": results,
        }
        write_json(self.marker_path(stage.name), marker)
        os.remove(self.marker_path(stage.name, "started.json"))
        self.markers[stage.name] = marker
        self.times[stage.name] = {"seconds": marker["seconds"], "cpu_seconds": marker["cpu_seconds"],
                                  "reused": False}
        print(f"    done in {fmt_time(seconds)} (CPU time of the tool {fmt_time(cpu)}, "
              f"load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
        return results
