"""Running graphs: concurrency, failures, statuses, caching, records."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import pipedsl
from pipedsl import TaskStatus, job, load_run, workflow

from conftest import ROOT, Calls


@job(cache=False)
def nap(seconds: float, tag: int) -> int:
    time.sleep(seconds)
    return tag


@job
def join(values: list) -> int:
    return sum(values)


def test_independent_sleeps_overlap():
    @workflow
    def pipeline() -> int:
        return join([nap(0.5, i) for i in range(4)])

    started = time.perf_counter()
    assert pipeline() == 6
    elapsed = time.perf_counter() - started
    # Four 0.5 s sleeps in sequence would take 2 s.
    assert elapsed < 1.5


def test_second_run_executes_no_job():
    calls = Calls()

    @job
    def step(x: int) -> int:
        calls.append(x)
        return x + 1

    @workflow
    def pipeline(n: int = 3) -> int:
        value = n
        for _ in range(3):
            value = step(value)
        return value

    first = pipeline.run(3)
    assert first.result() == 6
    assert first.counts() == {"done": 3}
    second = pipeline.run(3)
    assert second.result() == 6
    assert second.counts() == {"cached": 3}
    assert len(calls) == 3


def test_failure_raises_original_type_with_note():
    @job
    def parse(text: str) -> int:
        return int(text)

    @workflow
    def pipeline() -> int:
        return join([parse("4"), parse("x")])

    with pytest.raises(ValueError) as info:
        pipeline()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "parse" in notes
    assert "failed in task" in notes
    assert info.value.__traceback__ is not None


def test_failed_chain_marks_dependents_skipped():
    started = Calls()

    @job
    def t1() -> int:
        raise RuntimeError("boom")

    @job
    def t2(x: int) -> int:
        started.append("t2")
        return x

    @job
    def t3(x: int) -> int:
        started.append("t3")
        return x

    @workflow
    def pipeline() -> int:
        return t3(t2(t1()))

    run = pipeline.submit()
    run.wait()
    assert run.status == "failed"
    by_job = {r.job.rpartition(".")[2]: r.status for r in run.tasks}
    assert by_job == {"t1": "failed", "t2": "skipped", "t3": "skipped"}
    assert started == []
    with pytest.raises(RuntimeError, match="boom"):
        run.result()


def test_failure_in_nested_output_fails_run():
    @job
    def parse(text: str) -> int:
        return int(text)

    @workflow
    def pipeline() -> dict:
        return {"good": [parse("4")], "groups": [[parse("x")], [parse("5")]]}

    run = pipeline.submit(on_failure="continue")
    run.wait()
    assert run.status == "failed"
    statuses = sorted(r.status for r in run.tasks)
    assert statuses == ["done", "done", "failed"]


def test_running_branch_finishes_and_is_kept():
    @job
    def fail_fast() -> int:
        time.sleep(0.1)
        raise KeyError("bad")

    @job
    def slow_ok() -> int:
        time.sleep(0.6)
        return 7

    @workflow
    def pipeline() -> list:
        return [fail_fast(), slow_ok()]

    run = pipeline.submit()
    run.wait()
    assert run.status == "failed"
    status = {r.job.rpartition(".")[2]: r.status for r in run.tasks}
    assert status == {"fail_fast": "failed", "slow_ok": "done"}
    # The finished branch is reused by the next run.
    plan = pipeline.plan()
    assert len(plan.cached) == 1


def test_stop_policy_cancels_unstarted_tasks():
    @job
    def fail() -> int:
        raise ValueError("no")

    @job
    def later(x: int) -> int:
        return x

    @workflow
    def pipeline() -> list:
        return [fail(), later(1), later(2)]

    run = pipeline.submit(executor="inline")
    run.wait()
    statuses = [r.status for r in run.tasks]
    assert statuses[0] == "failed"
    assert set(statuses[1:]) == {"cancelled"}
    assert all(TaskStatus(s).terminal for s in statuses)


def test_failed_task_is_never_cached():
    attempts = Calls()

    @job
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("transient")
        return 5

    @workflow
    def pipeline() -> int:
        return flaky()

    with pytest.raises(OSError):
        pipeline()
    assert pipeline() == 5
    assert len(attempts) == 2
    assert pipeline.run().counts() == {"cached": 1}


def test_refresh_forces_execution():
    calls = Calls()

    @job
    def step() -> int:
        calls.append(1)
        return 1

    @workflow
    def pipeline() -> int:
        return step()

    pipeline()
    pipeline(refresh=True)
    assert len(calls) == 2


def test_run_record_is_written(store):
    @job
    def square(x: int) -> int:
        return x * x

    @workflow
    def pipeline(n: int = 3) -> list:
        return [square(i) for i in range(n)]

    run = pipeline.run(3)
    record = load_run(run.run_id)
    assert record.status == "done"
    assert record.workflow.endswith("pipeline")
    assert len(record.tasks) == 3
    assert all(t.status == "done" for t in record.tasks)
    assert all(t.ended >= t.started for t in record.tasks)
    path = os.path.join(str(pipedsl.get_config().store), "runs", f"{run.run_id}.json")
    with open(path) as handle:
        assert json.load(handle)["run_id"] == run.run_id
    failed = pipeline.run(3, refresh=True)
    assert failed.status == "done"


def test_error_text_in_record():
    @job
    def broken() -> int:
        raise ZeroDivisionError("divide")

    @workflow
    def pipeline() -> int:
        return broken()

    run = pipeline.submit()
    run.wait()
    record = load_run(run.run_id)
    task = record.tasks[0]
    assert task.status == "failed"
    assert "ZeroDivisionError: divide" in task.error
    assert "Traceback" in (task.traceback or "") or task.traceback is None
    assert record.status == "failed"


def test_runs_inside_running_event_loop():
    @job
    def value() -> int:
        return 41

    @workflow
    def pipeline() -> int:
        return value()

    async def cell() -> int:
        # A notebook cell runs while the kernel's loop is running.
        return pipeline()

    assert asyncio.run(cell()) == 41


def test_concurrent_runs_share_slow_task():
    calls = Calls()
    lock = threading.Lock()

    @job
    def slow(x: int) -> int:
        with lock:
            calls.append(x)
        time.sleep(0.5)
        return x * 2

    @workflow
    def pipeline() -> int:
        return slow(21)

    results = []

    def run() -> None:
        results.append(pipeline())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42, 42]
    assert calls == [21]


def test_inline_executor_runs_in_caller_thread():
    seen = Calls()

    @job(cache=False)
    def where() -> str:
        seen.append(threading.current_thread().name)
        return "ok"

    @workflow
    def pipeline() -> str:
        return where()

    assert pipeline(executor="inline") == "ok"
    assert seen and seen[0].startswith("pipedsl-run")


def test_unserializable_output_fails_with_clear_error():
    @job
    def make_lock() -> object:
        return threading.Lock()

    @workflow
    def pipeline() -> object:
        return make_lock()

    with pytest.raises(pipedsl.SerializationError) as info:
        pipeline()
    message = str(info.value)
    assert "make_lock" in message
    assert "register_serializer" in message
    assert pipeline.plan().cached == []


def test_example_pipeline_twice(tmp_path):
    script = os.path.join(ROOT, "examples", "digits", "pipeline.py")
    env = dict(os.environ, PYTHONPATH=ROOT)
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, script, "--store", str(tmp_path / "demo-store")],
            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert "9 tasks executed, 0 from cache" in outputs[0]
    assert "0 tasks executed, 9 from cache" in outputs[1]
    accuracy = [line for line in outputs[1].splitlines() if line.startswith("logistic")]
    assert float(accuracy[0].split()[2]) > 0.9
