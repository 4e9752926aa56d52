"""The examples run end to end on real data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT


def run_script(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip


@pytest.mark.slow
def test_sweep_widening_grid_trains_new_only(tmp_path):
    script = os.path.join(ROOT, "examples", "sweep", "sweep.py")
    store = str(tmp_path / "store")
    first = run_script(script, "--grid-size", "3", "--store", store, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "trained 3 of 3 candidates" in first.stdout
    assert "deployed C=" in first.stdout
    # A grid of 5 keeps the centre and ends of the grid of 3.
    second = run_script(script, "--grid-size", "5", "--store", store, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "trained 2 of 5 candidates" in second.stdout
    strict = run_script(script, "--grid-size", "5", "--bar", "0.999", "--store", store,
                        cwd=tmp_path)  # fmt: skip
    assert "kept the current model" in strict.stdout
    assert "every candidate's score came from the cache" in strict.stdout


CTRL_C_SCRIPT = """
import os, sys, time
from pipedsl import job, workflow

@job(cache=False)
def sleeper(seconds: float, tag: int) -> int:
    time.sleep(seconds)
    return tag

@workflow
def pipeline() -> list:
    return [sleeper(30, 1), sleeper(30, 2)]

if __name__ == "__main__":
    from pipedsl.executors.process import shared_process_executor
    executor = shared_process_executor(2)
    run = None
    try:
        run = pipeline.submit(executor=executor, store=sys.argv[1], progress=False)
        while len(executor._workers) < 2:
            time.sleep(0.05)
        print(" ".join(str(w.process.pid) for w in executor._workers), flush=True)
        run.result()
    except KeyboardInterrupt:
        # Ctrl-C may arrive before result() waits. Kill the run the way
        # result() does, so the outcome is the same either way.
        if run is not None and not run.done():
            run.kill()
            run.wait(10)
        print("interrupted", run.status if run else "not started", flush=True)
        raise SystemExit(130)
"""


@pytest.mark.slow
def test_ctrl_c_cancels_run_and_workers(tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "store")],
        stdout=subprocess.PIPE, text=True, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert process.stdout is not None
    pids = [int(p) for p in process.stdout.readline().split()]
    assert len(pids) == 2
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "interrupted cancelled" in output
    time.sleep(1)
    assert [p for p in pids if os.path.exists(f"/proc/{p}")] == []


NO_GUARD = """
from pipedsl import job, workflow

def helper(x):
    return x + 1

@job
def step(x: int) -> int:
    return helper(x) * 2

@workflow
def pipeline(x: int = 1) -> int:
    return step(x)

print("value", pipeline(executor="processes", store=STORE, progress=False))
"""


def test_script_without_main_guard_on_processes(tmp_path):
    script = tmp_path / "noguard.py"
    script.write_text(NO_GUARD.replace("STORE", repr(str(tmp_path / "store"))))
    done = run_script(str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("value 4") == 1


def test_script_and_cli_share_cache_entries(tmp_path):
    script = tmp_path / "shared.py"
    script.write_text(NO_GUARD.replace("STORE", repr(str(tmp_path / "store")))
                      .replace('executor="processes"', 'executor="threads"'))  # fmt: skip
    first = run_script(str(script), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "pipedsl", "--store", str(tmp_path / "store"), "run",
         f"{script}:pipeline"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "0 executed, 1 cached" in cli.stdout + cli.stderr
