"""The workloads in Prefect 3: tasks submitted from a flow, results cached.

``run_one`` points ``PREFECT_HOME`` and the local result storage at
``BENCH_CACHE_DIR`` before this module is imported, so each measurement gets
its own database and cache, and the cached re-run reads the first run's.
"""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

CACHED = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}


@task(**CACHED)
def inc(x: int) -> int:
    return x + 1


@task(**CACHED)
def total(values: list[int]) -> int:
    return sum(values)


@task(**CACHED)
def nap(index: int, seconds: float) -> int:
    time.sleep(seconds)
    return index


@flow(log_prints=False)
def chain_flow(n: int) -> int:
    value = 0
    for _ in range(n):
        value = inc.submit(value)
    return value.result()


@flow(log_prints=False)
def fanout_flow(n: int) -> int:
    return total.submit([inc.submit(i) for i in range(n)]).result()


@flow(log_prints=False)
def sleeps_flow(count: int, seconds: float) -> int:
    return total.submit([nap.submit(i, seconds) for i in range(count)]).result()


def chain(n: int):
    return chain_flow(n), {}


def fanout(n: int):
    return fanout_flow(n), {}


def sleeps(count: int, seconds: float):
    return sleeps_flow(count, seconds), {}
