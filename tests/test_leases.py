"""Runs in several processes on one local store compute a task once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pipedsl
from pipedsl import job, workflow

from conftest import ROOT

SCRIPT = """
import json, os, sys, time
from pipedsl import job, workflow

@job
def slow(x: int) -> int:
    with open(os.path.join(sys.argv[2], f"ran-{os.getpid()}"), "w"):
        pass
    time.sleep(2)
    return x * 2

@job
def after(y: int) -> int:
    return y + 1

@workflow
def pipeline() -> int:
    return after(slow(20))

run = pipeline.run(store=sys.argv[1], progress=False)
print(json.dumps({"value": run.result(), "statuses": {t.job: t.status for t in run.tasks}}))
"""


def test_two_processes_compute_slow_task_once(tmp_path):
    script = tmp_path / "pipeline.py"
    script.write_text(SCRIPT)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [sys.executable, str(script), str(tmp_path / "store"), str(markers)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(0.5)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    outputs = [
        json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
        for p in (first, second)
    ]
    assert [o["value"] for o in outputs] == [41, 41]
    assert len(os.listdir(markers)) == 1
    statuses = sorted(o["statuses"]["slow"] for o in outputs)
    assert statuses == ["cached", "done"]
    active = tmp_path / "store" / "active"
    assert not active.exists() or os.listdir(active) == []


def _announce_for(store_root, run_id: str, pid: int, keys: list[str]) -> None:
    """Write the announcement another process would write for ``run_id``."""
    folder = os.path.join(store_root, "active")
    os.makedirs(folder, exist_ok=True)
    body = {"pid": pid, "host": socket.gethostname(), "time": time.time(),
            "keys": [k.rpartition("-")[2] for k in keys]}  # fmt: skip
    with open(os.path.join(folder, f"{run_id}.json"), "w") as handle:
        json.dump(body, handle)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_announcements_of_live_and_dead_processes(tmp_path):
    root = str(tmp_path / "store")
    store = pipedsl.ArtifactStore(root)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    live = _sleeper()
    try:
        _announce_for(root, "old-run", int(dead), ["job-ab"])
        _announce_for(root, "other-run", live.pid, ["job-cd"])
        store.announce_run("own-run", ["job-ef"])
        runs = store.active_runs()
        # This process's own runs are left to the in-process registry.
        assert set(runs) == {"other-run"}
        assert runs["other-run"][1] == {"cd"}
        assert not os.path.exists(os.path.join(root, "active", "old-run.json"))
        store.retire_run("own-run")
        assert not os.path.exists(os.path.join(root, "active", "own-run.json"))
    finally:
        live.kill()
        live.wait()


def test_run_waits_for_earlier_announcement(tmp_path):
    @job
    def value() -> int:
        return 5

    @workflow
    def pipeline() -> int:
        return value()

    root = str(tmp_path / "store")
    key = next(iter(pipeline.trace().tasks))
    other = _sleeper()
    try:
        # Another live process announced the key earlier.
        _announce_for(root, "earlier-run", other.pid, [key])
        run = pipeline.submit(store=root)
        time.sleep(0.5)
        assert run.status == "running"
    finally:
        # That process ends without computing it: this run computes it itself.
        other.kill()
        other.wait()
    assert run.result(timeout=10) == 5
    assert run.tasks[0].status == "done"
