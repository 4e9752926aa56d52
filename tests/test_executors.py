"""One behavioural suite, run on every executor."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

import pipedsl
from pipedsl import RemoteTaskError, TaskTimeout, workflow

import jobs_for_executors as jobs
from conftest import ROOT


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}},
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(params=["inline", "threads", "processes", "dask", "ray"])
def executor(request):
    if request.param == "dask":
        from pipedsl.executors.dask import DaskExecutor

        return DaskExecutor(request.getfixturevalue("dask_client"))
    if request.param == "ray":
        request.getfixturevalue("ray_session")
        from pipedsl.executors.ray import RayExecutor

        return RayExecutor()
    return request.param


@workflow
def arithmetic(n: int) -> dict:
    parts = [jobs.add(i, i) for i in range(n)]
    return {"total": jobs.total(parts), "first": parts[0]}


def test_values_and_cache(executor):
    run = arithmetic.run(4, executor=executor)
    assert run.result() == {"total": 12, "first": 0}
    assert run.counts() == {"done": 5}
    again = arithmetic.run(4, executor=executor)
    assert again.result() == {"total": 12, "first": 0}
    assert again.counts() == {"cached": 5}


def test_original_exception_type(executor):
    @workflow
    def broken() -> int:
        return jobs.fail_with("value")

    with pytest.raises(ValueError, match="bad value") as info:
        broken(executor=executor)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "fail_with" in notes


def test_chained_cause_survives(executor):
    @workflow
    def broken() -> int:
        return jobs.fail_with("chained")

    with pytest.raises(RuntimeError, match="outer") as info:
        broken(executor=executor)
    cause = info.value.__cause__
    assert isinstance(cause, KeyError)
    if executor not in ("inline", "threads"):
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "Traceback in the worker" in notes
        assert "KeyError" in notes


def test_exception_needing_args_reported(executor):
    @workflow
    def broken() -> int:
        return jobs.fail_with("needs-args")

    with pytest.raises(Exception) as info:
        broken(executor=executor)
    error = info.value
    if isinstance(error, RemoteTaskError):
        assert error.type_name.endswith("NeedsArgs")
        assert "code 7: detail" in error.message
        assert "fail_with" in error.traceback_text
    else:
        assert isinstance(error, jobs.NeedsArgs)
        assert error.code == 7


def test_failed_root_skips_chain(executor):
    @workflow
    def chain() -> int:
        return jobs.add(jobs.add(jobs.fail_with("value"), 1), 1)

    run = chain.submit(executor=executor)
    run.wait(60)
    statuses = [t.status for t in run.tasks]
    assert statuses == ["failed", "skipped", "skipped"]
    assert run.status == "failed"


def test_retries_then_success_cached(executor, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()

    @workflow
    def retrying() -> str:
        return jobs.flaky(str(markers))

    started = time.perf_counter()
    run = retrying.run(executor=executor)
    elapsed = time.perf_counter() - started
    assert run.result() == "ok after 3"
    attempts = run.tasks[0].attempts
    assert len(attempts) == 3
    assert "OSError" in attempts[0]["error"]
    # Delays of 0.2 s then 0.4 s (backoff 2).
    assert elapsed >= 0.6
    assert retrying.run(executor=executor).counts() == {"cached": 1}
    assert len(os.listdir(markers)) == 3


@pytest.mark.parametrize("name", ["threads", "processes", "ray"])
def test_timeout_fails_run_quickly(name, request):
    if name == "ray":
        request.getfixturevalue("ray_session")
        from pipedsl.executors.ray import RayExecutor

        name = RayExecutor()

    @workflow
    def slow() -> int:
        return jobs.too_slow()

    started = time.perf_counter()
    with pytest.raises(TaskTimeout, match="too_slow"):
        slow(executor=name)
    assert time.perf_counter() - started < 10
    assert isinstance(TaskTimeout("x"), TimeoutError)


def test_large_value_travels_through_store(executor):
    @workflow
    def pipeline() -> int:
        return jobs.length(jobs.big(3 * 1024 * 1024))

    assert pipeline(executor=executor) == 3 * 1024 * 1024


def test_independent_tasks_run_concurrently(executor):
    if executor == "inline":
        pytest.skip("the inline executor runs one task at a time by design")

    @workflow
    def sleeps() -> int:
        return jobs.total([jobs.sleep_then(1.0, i) for i in range(2)])

    sleeps(executor=executor)  # warm up worker processes
    started = time.perf_counter()
    assert sleeps(executor=executor) == 1
    assert time.perf_counter() - started < 1.9


def test_resources_rejected_where_unsupported():
    from pipedsl import job

    @job(resources={"gpus": 1})
    def needs_gpu() -> int:
        return 1

    @workflow
    def pipeline() -> int:
        return needs_gpu()

    with pytest.raises(ValueError, match="cannot honour"):
        pipeline(executor="threads")


def test_dask_resources_checked(dask_client):
    from pipedsl import job
    from pipedsl.executors.dask import DaskExecutor

    @job(resources={"gpus": 1})
    def needs_gpu() -> int:
        return 1

    @workflow
    def pipeline() -> int:
        return needs_gpu()

    with pytest.raises(ValueError, match="no Dask worker offers it"):
        pipeline(executor=DaskExecutor(dask_client))


def test_ray_resources_checked(ray_session):
    from pipedsl import job
    from pipedsl.executors.ray import RayExecutor

    @job(resources={"gpus": 1})
    def needs_gpu() -> int:
        return 1

    @job(resources={"cpus": 1, "memory": "64MiB"})
    def modest() -> int:
        return 2

    @workflow
    def pipeline() -> int:
        return needs_gpu()

    @workflow
    def small() -> int:
        return modest()

    with pytest.raises(ValueError, match="offers 0"):
        pipeline(executor=RayExecutor())
    assert small(executor=RayExecutor()) == 2


def test_process_kill_leaves_no_worker():
    from pipedsl.executors.process import ProcessExecutor

    executor = ProcessExecutor(max_workers=2)

    @workflow
    def sleepy() -> list:
        return [jobs.sleep_then(30, 1), jobs.sleep_then(30, 2)]

    run = sleepy.submit(executor=executor)
    deadline = time.time() + 20
    while time.time() < deadline and len(executor._workers) < 2:
        time.sleep(0.05)
    pids = [w.process.pid for w in executor._workers]
    assert len(pids) == 2
    run.kill()
    assert run.wait(5)
    executor.shutdown()
    time.sleep(2)
    alive = [p for p in pids if os.path.exists(f"/proc/{p}") and _not_zombie(p)]
    assert alive == []
    assert run.status == "cancelled"
    assert {t.status for t in run.tasks} == {"cancelled"}
    with pytest.raises(pipedsl.RunCancelled):
        run.result()


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_submit_returns_at_once_and_status_progresses():
    @workflow
    def sleepy() -> int:
        return jobs.sleep_then(0.5, 3)

    started = time.perf_counter()
    run = sleepy.submit()
    assert time.perf_counter() - started < 0.4
    assert run.status == "running"
    assert not run.wait(timeout=0.05)
    assert run.result() == 3
    assert run.status == "done"
    assert set(run.statuses().values()) == {"done"}


def test_kill_from_another_process_by_run_id():
    @workflow
    def sleepy() -> int:
        return jobs.sleep_then(20, 3)

    run = sleepy.submit()
    store = pipedsl.get_config().store
    code = (
        "import sys, pipedsl; "
        f"pipedsl.ArtifactStore({store!r}).request_kill({run.run_id!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.wait(10)
    assert run.status == "cancelled"
    record = pipedsl.load_run(run.run_id)
    assert record.status == "cancelled"


def test_resume_reuses_successful_tasks(tmp_path):
    flag = tmp_path / "fixed"

    from pipedsl import job

    @job
    def maybe_fail(path: str) -> int:
        if not os.path.exists(path):
            raise RuntimeError("not fixed yet")
        return 1

    @workflow
    def pipeline(path: str) -> int:
        return jobs.total([jobs.add(1, 2), jobs.add(3, 4), maybe_fail(path)])

    run = pipeline.submit(str(flag), on_failure="continue")
    run.wait()
    assert run.counts() == {"done": 2, "failed": 1, "skipped": 1}
    flag.write_text("ok")
    second = pipeline.run(str(flag))
    assert second.result() == 11
    assert second.counts() == {"cached": 2, "done": 2}


def test_loop_mode_feeds_output_and_stops():
    from pipedsl import job

    @job
    def improve(loss: float) -> float:
        return max(loss - 0.25, 0.2)

    @workflow
    def training(loss: float = 1.0) -> float:
        return improve(loss)

    handle = training.run(
        loop=True, feed="loss", max_iterations=10, until=lambda out: out <= 0.5
    )
    assert handle.result() == 0.5
    assert handle.outputs == [0.75, 0.5]
    assert len(handle.runs) == 2


def test_loop_no_improvement_rule_and_interval():
    from pipedsl import job, no_improvement

    @job
    def evaluate(epoch: int) -> dict:
        return {"epoch": epoch, "loss": [0.9, 0.5, 0.4, 0.45, 0.47][min(epoch, 4)]}

    @workflow
    def training(epoch: int = 0) -> dict:
        return evaluate(epoch)

    started = time.perf_counter()
    handle = training.run(
        loop=True, interval=0.1, max_iterations=20,
        feed=lambda out, kwargs: {"epoch": out["epoch"] + 1},
        until=no_improvement("loss", patience=2),
    )  # fmt: skip
    result = handle.result()
    assert result["epoch"] == 4
    assert time.perf_counter() - started >= 0.4


def test_loop_option_without_loop_rejected():
    with pytest.raises(TypeError, match="loop=True"):
        arithmetic.run(2, max_iterations=3)


MAIN_SCRIPT = textwrap.dedent(
    """
    import dataclasses, sys
    from pipedsl import job, workflow

    @dataclasses.dataclass
    class Summary:
        count: int
        label: str

    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        def apply(self, x):
            return x * self.factor

    OFFSET = 5

    @job
    def scale(x: int) -> int:
        return Scaler(3).apply(x) + OFFSET

    @job
    def summarize(values: list) -> Summary:
        return Summary(len(values), "scaled")

    @workflow
    def pipeline() -> Summary:
        return summarize([scale(i) for i in range(3)])

    if __name__ == "__main__":
        result = pipeline(executor=sys.argv[1], store=sys.argv[2], progress=False)
        assert isinstance(result, Summary), type(result)
        print(dataclasses.asdict(result))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["processes", "dask"])
def test_jobs_defined_in_main_run_remotely(tmp_path, name):
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), name, str(tmp_path / "store")],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "{'count': 3, 'label': 'scaled'}" in done.stdout
