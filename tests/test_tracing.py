"""Tracing: futures, nested arguments, unpacking, misuse errors, graphs."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import Calls

from pipedsl import Future, TraceError, job, workflow


@job
def load(n: int) -> list[int]:
    return list(range(n))


@job
def split(xs: list[int]) -> tuple[list[int], list[int]]:
    half = len(xs) // 2
    return xs[:half], xs[half:]


@job
def total(values: object) -> int:
    def flatten(value):
        if isinstance(value, dict):
            return sum(flatten(v) for v in value.values())
        if isinstance(value, (list, tuple, set, frozenset)):
            return sum(flatten(v) for v in value)
        if dataclasses.is_dataclass(value):
            return sum(flatten(getattr(value, f.name)) for f in dataclasses.fields(value))
        return value

    return flatten(values)


@dataclasses.dataclass(frozen=True)
class Pair:
    left: object
    right: object


def test_job_call_returns_future_without_running():
    calls = Calls()

    @job
    def record(x: int) -> int:
        calls.append(x)
        return x

    future = record(3)
    assert isinstance(future, Future)
    assert calls == []
    assert future.result() == 3
    assert calls == [3]


def test_fn_is_undecorated_function():
    assert load.fn(3) == [0, 1, 2]


def test_tuple_annotation_unpacks():
    @workflow
    def pipeline(n: int = 6) -> dict:
        train, test = split(load(n))
        return {"train": train, "test": test}

    assert pipeline(6) == {"train": [0, 1, 2], "test": [3, 4, 5]}


def test_futures_nested_in_containers_are_edges():
    @workflow
    def pipeline() -> int:
        a, b, c, d, e = (load(n) for n in (1, 2, 3, 4, 5))
        structure = {"list": [a], "tuple": (b,), "dict": {"k": c}, "pair": Pair(d, [e])}
        return total(structure)

    graph = pipeline.trace()
    total_task = [t for t in graph if t.job.name == "total"][0]
    assert len(total_task.deps) == 5
    # 0 + (0+1) + (0+1+2) + (0+1+2+3) + (0+1+2+3+4)
    assert pipeline() == 20


def test_futures_in_set_argument():
    @job
    def ident(x: int) -> int:
        return x

    @workflow
    def pipeline() -> int:
        return total({ident(1), ident(2)})

    assert pipeline() == 3


def test_item_and_attribute_futures():
    @job
    def make() -> dict:
        return {"a": [10, 20], "pair": Pair(1, 2)}

    @job
    def add(x: int, y: int) -> int:
        return x + y

    @workflow
    def pipeline() -> int:
        value = make()
        return add(value["a"][1], value["pair"].right)

    assert pipeline() == 22


@pytest.mark.parametrize(
    "misuse, fragment",
    [
        (lambda f: bool(f), "pipedsl.when"),
        (lambda f: len(f), "len()"),
        (lambda f: [x for x in f], ".map"),
        (lambda f: f + 1, "__add__"),
        (lambda f: f"{f}", "Formatting"),
        (lambda f: f == 3, "Comparing"),
        (lambda f: 3 in f, "membership"),
    ],
)
def test_trace_time_misuse_raises_type_error(misuse, fragment):
    future = load(3)
    with pytest.raises(TypeError) as info:
        misuse(future)
    assert isinstance(info.value, TraceError)
    assert "'load'" in str(info.value)
    assert fragment in str(info.value)


def test_if_future_in_workflow_raises():
    @workflow
    def pipeline() -> int:
        if load(3):
            return 1
        return 0

    with pytest.raises(TypeError, match="truth"):
        pipeline.trace()


def test_bad_job_call_names_job():
    with pytest.raises(TypeError, match="invalid call of job 'load'"):
        load(1, 2)


def test_workflow_calling_workflow_inlines_graph():
    @workflow
    def inner(n: int) -> int:
        return total(load(n))

    @workflow
    def outer() -> list:
        return [inner(3), inner(4)]

    graph = outer.trace()
    assert len(graph) == 4
    scopes = {t.scope for t in graph}
    assert len(scopes) == 1
    assert scopes.pop()[-1].endswith("inner")
    assert outer() == [3, 6]


def test_identical_calls_share_one_task():
    calls = Calls()

    @job
    def count(x: int) -> int:
        calls.append(x)
        return x

    @workflow
    def pipeline() -> list:
        return [count(1), count(1), count(2)]

    graph = pipeline.trace()
    assert len(graph) == 2
    assert pipeline() == [1, 1, 2]
    assert sorted(calls) == [1, 2]


def test_cache_false_job_runs_each_call():
    calls = Calls()

    @job(cache=False)
    def sample(x: int) -> int:
        calls.append(x)
        return x

    @workflow
    def pipeline() -> list:
        return [sample(1), sample(1)]

    assert len(pipeline.trace()) == 2
    assert pipeline() == [1, 1]
    assert pipeline() == [1, 1]
    assert len(calls) == 4


def test_after_adds_ordering_only_dependency():
    order = Calls()

    @job(cache=False)
    def upload(name: str) -> str:
        import time

        time.sleep(0.2)
        order.append("upload")
        return name

    @job(cache=False)
    def notify(message: str) -> str:
        order.append("notify")
        return message

    @workflow
    def pipeline() -> str:
        done = upload("model")
        return notify.after(done)("uploaded")

    graph = pipeline.trace()
    notify_task = [t for t in graph if t.job.name.endswith("notify")][0]
    assert [d.job.name for d in notify_task.deps] == [upload.name]
    assert pipeline() == "uploaded"
    assert order == ["upload", "notify"]


def test_after_rejects_non_futures():
    with pytest.raises(TypeError, match="takes futures"):
        load.after(3)


def test_trace_runs_nothing():
    calls = Calls()

    @job
    def side(x: int) -> int:
        calls.append(x)
        return x

    @workflow
    def pipeline() -> int:
        return side(1)

    graph = pipeline.trace()
    assert len(graph) == 1
    assert calls == []


def test_future_repr_shows_job_and_key():
    future = load(3)
    text = repr(future)
    assert "load" in text
    assert future.key.startswith("load-")
    assert future.key in repr(future)


def test_workflow_option_names_reach_parameters():
    @workflow
    def pipeline(store: str = "x") -> str:
        return store

    assert pipeline(store="abc") == "abc"


def test_async_job_rejected():
    async def coroutine() -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        job(coroutine)
