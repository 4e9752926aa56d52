"""Two processes on one local store compute a task once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pipedsl

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
    time.sleep(0.3)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    outputs = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in (first, second)]
    assert [o["value"] for o in outputs] == [41, 41]
    assert len(os.listdir(markers)) == 1
    statuses = sorted(o["statuses"]["slow"] for o in outputs)
    assert statuses == ["cached", "done"]
    leases = tmp_path / "store" / "leases"
    assert not leases.exists() or os.listdir(leases) == []


def test_stale_lease_of_dead_process_is_broken(tmp_path):
    store = pipedsl.ArtifactStore(str(tmp_path / "store"))
    key = "job-" + "cd" * 16
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    path = store.lease_path(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    import socket

    with open(path, "w") as handle:
        json.dump({"pid": int(dead), "host": socket.gethostname(), "time": time.time()}, handle)
    assert store.acquire_lease(key)
    assert not store.acquire_lease(key)
    store.release_lease(key)
    assert not store.lease_held(key)


def test_failed_owner_lets_other_run_compute(tmp_path):
    from pipedsl import job, workflow

    @job
    def value() -> int:
        return 5

    @workflow
    def pipeline() -> int:
        return value()

    store = pipedsl.ArtifactStore(str(tmp_path / "store"))
    graph = pipeline.trace()
    key = next(iter(graph.tasks))
    # A live process (this one, seen from "another run") holds the lease,
    # then gives it up without a result.
    assert store.acquire_lease(key)
    run = pipeline.submit(store=str(tmp_path / "store"))
    time.sleep(0.3)
    assert run.status == "running"
    store.release_lease(key)
    assert run.result(timeout=10) == 5
