"""The workloads in flytekit, executed locally with the local task cache.

Flyte compiles a workflow before running it, so the loop bounds are Python
constants: ``run_one`` sets ``BENCH_N`` (and ``BENCH_SLEEPS``) before the
import. ``HOME`` points at ``BENCH_CACHE_DIR``, where flytekit keeps its
local cache (``~/.flyte/local-cache``).
"""

from __future__ import annotations

import os
import time

from flytekit import task, workflow

N = int(os.environ.get("BENCH_N", "1000"))
SLEEPS = int(os.environ.get("BENCH_SLEEPS", "4"))
SLEEP_SECONDS = float(os.environ.get("BENCH_SLEEP_SECONDS", "0.5"))

CACHED = {"cache": True, "cache_version": "1"}


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


@workflow
def chain_flow() -> int:
    value = inc(x=0)
    for _ in range(N - 1):
        value = inc(x=value)
    return value


@workflow
def fanout_flow() -> int:
    return total(values=[inc(x=i) for i in range(N)])


@workflow
def sleeps_flow() -> int:
    return total(values=[nap(index=i, seconds=SLEEP_SECONDS) for i in range(SLEEPS)])


def _check(n: int) -> None:
    if n != N:
        raise ValueError(f"flyte workflows were compiled for n={N}, not {n}; set BENCH_N")


def chain(n: int):
    _check(n)
    return chain_flow(), {}


def fanout(n: int):
    _check(n)
    return fanout_flow(), {}


def sleeps(count: int, seconds: float):
    return sleeps_flow(), {}
