"""Module-level jobs shared by the executor suite (importable by workers)."""

from __future__ import annotations

import os
import time

from pipedsl import job


class NeedsArgs(Exception):
    """An exception whose constructor needs two arguments."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


@job
def add(a: int, b: int) -> int:
    return a + b


@job(cache=False)
def sleep_then(seconds: float, tag: int) -> int:
    time.sleep(seconds)
    return tag


@job
def total(values: list) -> int:
    return sum(values)


@job
def fail_with(kind: str) -> int:
    if kind == "value":
        raise ValueError("bad value")
    if kind == "chained":
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise RuntimeError("outer") from exc
    if kind == "needs-args":
        raise NeedsArgs(7, "detail")
    return 0


@job(timeout=1)
def too_slow() -> int:
    time.sleep(60)
    return 1


@job
def pid() -> int:
    return os.getpid()


@job(retries=2, retry_delay=0.2, backoff=2.0, retry_on=(OSError,))
def flaky(marker_dir: str) -> str:
    attempts = len(os.listdir(marker_dir))
    with open(os.path.join(marker_dir, f"attempt-{attempts}"), "w"):
        pass
    if attempts < 2:
        raise OSError(f"transient failure {attempts}")
    return f"ok after {attempts + 1}"


@job
def big(n: int) -> bytes:
    return b"x" * n


@job
def length(data: bytes) -> int:
    return len(data)
