"""The workloads in pipedsl, on the thread executor with a local store."""

from __future__ import annotations

import gc
import os
import time
import tracemalloc

from pipedsl import job, workflow


@job
def inc(x: int) -> int:
    return x + 1


@job
def total(values: list[int]) -> int:
    return sum(values)


@job
def nap(index: int, seconds: float) -> int:
    time.sleep(seconds)
    return index


@workflow
def chain_flow(n: int) -> int:
    value = 0
    for _ in range(n):
        value = inc(value)
    return value


@workflow
def fanout_flow(n: int) -> int:
    return total([inc(i) for i in range(n)])


@workflow
def sleeps_flow(count: int, seconds: float) -> int:
    return total([nap(i, seconds) for i in range(count)])


def _store() -> str:
    return os.path.join(os.environ.get("BENCH_CACHE_DIR", ".bench-cache"), "store")


def _run(flow, *args):
    run = flow.run(*args, store=_store(), executor="threads", progress=False)
    return run.result(), run.counts()


def chain(n: int):
    return _run(chain_flow, n)


def fanout(n: int):
    return _run(fanout_flow, n)


def sleeps(count: int, seconds: float):
    return _run(sleeps_flow, count, seconds)


def trace(workload: str, n: int) -> int:
    """Trace a workload without running it; return the number of tasks."""
    flow = {"chain": chain_flow, "fanout": fanout_flow}[workload]
    return len(flow.trace(n))


def repeated(n: int, runs: int) -> list[int]:
    """Run the fan-out ``runs`` times, each into a new store; return heap sizes.

    The sizes are ``tracemalloc``'s count of bytes allocated by Python and
    still live after each run and a full garbage collection.
    """
    base = os.environ.get("BENCH_CACHE_DIR", ".bench-cache")
    sizes = []
    tracemalloc.start()
    try:
        for index in range(runs):
            os.environ["BENCH_CACHE_DIR"] = os.path.join(base, f"leak-{index}")
            fanout(n)
            gc.collect()
            sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
        os.environ["BENCH_CACHE_DIR"] = base
    return sizes
