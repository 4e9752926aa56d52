"""The workloads in dask.delayed on the threaded scheduler (no caching)."""

from __future__ import annotations

import time

from dask import delayed


def inc(x: int) -> int:
    return x + 1


def total(values: list[int]) -> int:
    return sum(values)


def nap(index: int, seconds: float) -> int:
    time.sleep(seconds)
    return index


def chain(n: int):
    value = 0
    for _ in range(n):
        value = delayed(inc)(value)
    return value.compute(scheduler="threads"), {}


def fanout(n: int):
    result = delayed(total)([delayed(inc)(i) for i in range(n)])
    return result.compute(scheduler="threads"), {}


def sleeps(count: int, seconds: float):
    result = delayed(total)([delayed(nap)(i, seconds) for i in range(count)])
    return result.compute(scheduler="threads"), {}
