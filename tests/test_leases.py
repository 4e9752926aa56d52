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


def test_announcement_of_dead_process_removed(tmp_path):
    store = pipedsl.ArtifactStore(str(tmp_path / "store"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    folder = tmp_path / "store" / "active"
    folder.mkdir(parents=True)
    body = {"pid": int(dead), "host": socket.gethostname(), "time": time.time(), "keys": ["ab"]}
    (folder / "old-run.json").write_text(json.dumps(body))
    store.announce_run("new-run", ["job-cd"])
    runs = store.active_runs()
    assert set(runs) == {"new-run"}
    assert runs["new-run"][1] == {"cd"}
    assert not (folder / "old-run.json").exists()
    store.retire_run("new-run")
    assert store.active_runs() == {}


def test_run_waits_for_earlier_announcement(tmp_path):
    @job
    def value() -> int:
        return 5

    @workflow
    def pipeline() -> int:
        return value()

    root = str(tmp_path / "store")
    store = pipedsl.ArtifactStore(root)
    key = next(iter(pipeline.trace().tasks))
    # A live process (this one, as "another run") announced the key earlier.
    store.announce_run("earlier-run", [key])
    run = pipeline.submit(store=root)
    time.sleep(0.5)
    assert run.status == "running"
    # That run ends without computing it: this run computes it itself.
    store.retire_run("earlier-run")
    assert run.result(timeout=10) == 5
    assert run.tasks[0].status == "done"
