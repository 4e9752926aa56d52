"""Bad input gets a clear error; nothing runs or hangs."""

from __future__ import annotations

import json
import math

import pytest

import pipedsl
from pipedsl import job, workflow


@job
def one() -> int:
    return 1


@workflow
def single() -> int:
    return one()


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_max_workers_validated(workers):
    with pytest.raises(ValueError, match="max_workers"):
        single.run(max_workers=workers)


@pytest.mark.parametrize("run_id", ["../../escaped", "a/b", "", ".hidden", "x" * 200])
def test_run_id_validated(run_id):
    with pytest.raises(ValueError, match="invalid run_id"):
        single.run(run_id=run_id)


def test_custom_run_id_accepted():
    run = single.run(run_id="nightly-2026.12.04")
    assert run.run_id == "nightly-2026.12.04"
    assert pipedsl.load_run("nightly-2026.12.04").status == "done"


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, "soon", "10 parsecs"])
def test_bad_timeouts_rejected(timeout):
    with pytest.raises(ValueError, match="timeout"):
        job(timeout=timeout)(lambda: 1)


@pytest.mark.parametrize(
    "options", [{"retry_delay": math.nan}, {"backoff": 0.5}, {"retries": -1}, {"retries": 1.5}]
)
def test_bad_retry_options_rejected(options):
    with pytest.raises(ValueError):
        job(**options)(lambda: 1)


def test_workflow_rejects_unknown_option():
    with pytest.raises(TypeError, match="bogus"):
        workflow(bogus=1)(lambda: 1)


def test_with_options_rejects_unknown_option():
    with pytest.raises(TypeError, match="bogus"):
        single.with_options(bogus=1)


def test_unknown_executor_rejected():
    with pytest.raises(ValueError, match="unknown executor 'nope'"):
        single.run(executor="nope")
    with pytest.raises(ValueError, match="unknown executor"):
        pipedsl.configure(executor="nope")


def test_future_returned_without_dynamic_fails():
    @job
    def leaks() -> object:
        return one()

    @workflow
    def pipeline() -> object:
        return leaks()

    with pytest.raises(TypeError, match="dynamic=True"):
        pipeline()
    assert pipeline.plan().cached == []


def test_corrupt_upstream_manifest_reruns(tmp_path):
    @job
    def produce(n: int) -> list:
        return list(range(n))

    @job
    def consume(xs: list, factor: int) -> int:
        return sum(xs) * factor

    @workflow
    def pipeline(factor: int) -> int:
        return consume(produce(4), factor)

    assert pipeline(1) == 6
    store = pipedsl.get_config().open_store()
    manifest = next(store.iter_manifests(produce.name))
    path = store.manifest_path(produce.name, manifest["key"])
    broken = {k: v for k, v in manifest.items() if k != "object"}
    with open(path, "w") as handle:
        json.dump(broken, handle)
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert pipeline(2) == 12
    assert pipeline(3) == 18


def test_unknown_serializer_in_manifest_reruns():
    @job
    def produce() -> list:
        return [1, 2]

    @job
    def consume(xs: list, factor: int) -> int:
        return sum(xs) * factor

    @workflow
    def pipeline(factor: int) -> int:
        return consume(produce(), factor)

    assert pipeline(1) == 3
    store = pipedsl.get_config().open_store()
    manifest = next(store.iter_manifests(produce.name))
    path = store.manifest_path(produce.name, manifest["key"])
    with open(path, "w") as handle:
        json.dump({**manifest, "serializer": "no-such-format"}, handle)
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert pipeline(2) == 6


def test_rerun_task_record_not_marked_cached():
    @job
    def produce() -> list:
        # Large enough to be stored under objects/, not inside the manifest.
        return [5] * 2000

    @workflow
    def pipeline() -> list:
        return produce()

    pipeline()
    store = pipedsl.get_config().open_store()
    manifest = next(store.iter_manifests(produce.name))
    store.remove_object(manifest["object"])
    with pytest.warns(RuntimeWarning):
        run = pipeline.run()
    assert run.result() == [5] * 2000
    record = run.tasks[0]
    assert record.status == "done"
    assert record.cached is False


def test_store_path_that_is_a_file_rejected(tmp_path):
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    with pytest.raises(pipedsl.StoreError, match="is a file, not a folder"):
        single.run(store=str(target))


def test_option_typo_suggests_option():
    with pytest.raises(TypeError, match="did you mean the run option 'max_workers'"):
        single.run(max_worker=2)


def test_comparison_on_future_points_to_when():
    with pytest.raises(TypeError, match="pipedsl.when"):
        one() > 2


def test_loop_interval_zero_allowed():
    handle = single.run(loop=True, interval="0s", max_iterations=2)
    assert handle.result() == 1
    assert len(handle.runs) == 2


def test_explain_compares_with_closest_entry():
    @job
    def train(kind: str, seed: int) -> str:
        return f"{kind}-{seed}"

    @workflow
    def pipeline(seed: int) -> list:
        return [train("logreg", seed), train("forest", seed)]

    pipeline(1)
    run = pipeline.run(2)
    lines = run.explain()
    assert len(lines) == 2
    for line in lines:
        assert "argument 'seed' changed" in line
        assert "'kind'" not in line
