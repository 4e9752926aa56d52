"""Graphs shaped at run time: map, when, dynamic jobs, nested workflows."""

from __future__ import annotations

import time

import pytest

import pipedsl
from pipedsl import MapResult, TaskTimeout, job, workflow

import jobs_for_dynamic as jobs


@pytest.fixture(params=["threads", "processes", "dask"])
def executor(request):
    if request.param == "dask":
        from pipedsl.executors.dask import DaskExecutor

        return DaskExecutor(request.getfixturevalue("dask_client"))
    return request.param


def test_map_over_runtime_list_adds_one_task(executor):
    first = jobs.per_shard.run(3, executor=executor)
    assert first.result() == 2 * (0 + 10 + 20)
    trained = [t for t in first.tasks if t.job == "train"]
    assert len(trained) == 3
    assert all(t.status == "done" for t in trained)

    second = jobs.per_shard.run(4, executor=executor)
    assert second.result() == 2 * (0 + 10 + 20 + 30)
    trained = [t for t in second.tasks if t.job == "train"]
    assert sorted(t.status for t in trained) == ["cached", "cached", "cached", "done"]


def test_iterating_future_points_to_map():
    with pytest.raises(TypeError, match=r"\.map"):
        for _ in jobs.load(3):
            pass


def test_when_runs_only_chosen_branch(executor):
    good = jobs.release.run(0.95, executor=executor)
    assert good.result() == "deployed at 0.95"
    ran = {t.job for t in good.tasks}
    assert "deploy" in ran
    assert "report" not in ran

    bad = jobs.release.run(0.5, executor=executor)
    assert bad.result() == "kept the old model, score 0.5"
    ran = {t.job for t in bad.tasks}
    assert "report" in ran
    assert "deploy" not in ran


def test_when_rejects_non_callable_branch():
    with pytest.raises(TypeError, match="lambda"):
        pipedsl.when(jobs.meets(1.0, 0.5), then=jobs.deploy(1.0))


def test_dynamic_convergence_tasks_cached(executor):
    run = jobs.square_root.run(executor=executor)
    assert abs(run.result() - 2 ** 0.5) < 1e-9
    steps = [t for t in run.tasks if t.job == "newton_step"]
    levels = [t for t in run.tasks if t.job == "converge"]
    assert len(steps) >= 4
    assert len(levels) == len(steps) + 1
    assert all(t.status == "done" for t in run.tasks)
    again = jobs.square_root.run(executor=executor, refresh=False)
    assert again.counts() == {"cached": 1}
    # Forcing the outer task to re-run finds every inner task in the cache.
    from pipedsl.store import ArtifactStore

    store = pipedsl.get_config().open_store()
    outer = run.tasks[0]
    store.delete_entry(outer.job, outer.key)
    third = jobs.square_root.run(executor=executor)
    # The first inner level is found in the cache, so the chain below it is
    # not expanded again.
    assert third.counts() == {"done": 1, "cached": 2}
    assert abs(third.result() - 2 ** 0.5) < 1e-9
    del ArtifactStore


def test_timeout_in_sub_workflow_fails_parent(executor):
    if executor not in ("threads", "processes"):
        pytest.skip("timeouts interrupt tasks on the thread and process executors")
    started = time.perf_counter()
    run = jobs.outer_pipeline.submit(executor=executor)
    run.wait(20)
    assert run.status == "failed"
    with pytest.raises(TaskTimeout):
        run.result()
    assert time.perf_counter() - started < 15
    stuck = [t for t in run.tasks if t.job == "stuck"][0]
    assert stuck.scope[-1].endswith("inner_stage")


def test_map_on_error_continue_reports_failures():
    @workflow
    def tolerant() -> list:
        return jobs.sometimes.map([1, 2, 3, 4, 6], on_error="continue")

    run = tolerant.run()
    result = run.result()
    assert isinstance(result, MapResult)
    assert result == [1, 2, None, 4, None]
    assert set(result.errors) == {2, 4}
    assert "cannot handle 3" in result.errors[2]
    assert run.status == "done"


def test_map_on_error_fail_fails_run():
    @workflow
    def strict() -> list:
        return jobs.sometimes.map([1, 3])

    with pytest.raises(ValueError, match="cannot handle 3"):
        strict()


def test_map_max_parallel_bounds_concurrency():
    @workflow
    def bounded() -> list:
        return jobs.timed.map(list(range(6)), max_parallel=2)

    spans = bounded()
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2
    assert len(spans) == 6


def test_map_over_concrete_list_is_traced():
    @workflow
    def concrete() -> int:
        return jobs.summarize(jobs.train.map([1, 2, 3]))

    graph = concrete.trace()
    assert len([t for t in graph if t.job.name == "train"]) == 3
    assert concrete() == 6


def test_map_arguments_validated():
    with pytest.raises(ValueError, match="on_error"):
        jobs.train.map([1], on_error="ignore")
    with pytest.raises(ValueError, match="max_parallel"):
        jobs.train.map([1], max_parallel=0)
    with pytest.raises(TypeError, match="list"):
        jobs.train.map(5)


def test_dynamic_job_returning_plain_value_is_cached():
    @job(dynamic=True)
    def maybe_expand(n: int):
        return n if n < 0 else [jobs.newton_step(float(i + 1)) for i in range(n)]

    @workflow
    def pipeline(n: int):
        return maybe_expand(n)

    assert pipeline(-1) == -1
    assert pipeline.run(-1).counts() == {"cached": 1}
    assert pipeline(2) == [1.5, 1.5]
