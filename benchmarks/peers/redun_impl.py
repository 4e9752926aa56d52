"""The workloads in redun, with a SQLite call cache under ``BENCH_CACHE_DIR``."""

from __future__ import annotations

import os
import sys
import time

from redun import Scheduler, task
from redun.config import Config

redun_namespace = "bench"

CACHE_DIR = os.environ.get("BENCH_CACHE_DIR", ".bench-cache")

# redun walks a chain of 1,000 lazy expressions recursively, past Python's
# default limit of 1,000 frames.
sys.setrecursionlimit(20_000)


@task()
def inc(x: int) -> int:
    return x + 1


@task()
def total(values: list) -> int:
    return sum(values)


@task()
def nap(index: int, seconds: float) -> int:
    time.sleep(seconds)
    return index


@task()
def chain_flow(n: int) -> int:
    value = 0
    for _ in range(n):
        value = inc(value)
    return value


@task()
def fanout_flow(n: int) -> int:
    return total([inc(i) for i in range(n)])


@task()
def sleeps_flow(count: int, seconds: float) -> int:
    return total([nap(i, seconds) for i in range(count)])


def _scheduler() -> Scheduler:
    os.makedirs(CACHE_DIR, exist_ok=True)
    uri = f"sqlite:///{os.path.join(CACHE_DIR, 'redun.db')}"
    scheduler = Scheduler(config=Config({"backend": {"db_uri": uri}}))
    scheduler.load()
    return scheduler


def chain(n: int):
    return _scheduler().run(chain_flow(n)), {}


def fanout(n: int):
    return _scheduler().run(fanout_flow(n)), {}


def sleeps(count: int, seconds: float):
    return _scheduler().run(sleeps_flow(count, seconds)), {}
