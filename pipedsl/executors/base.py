"""The executor interface: where a task runs.

The scheduler decides *what* runs next; an executor decides *where*. An
executor receives a :class:`~pipedsl.worker.TaskSpec` and returns a
``concurrent.futures.Future`` (called an *executor future*, to tell it from a
pipedsl :class:`~pipedsl.graph.Future`) that resolves to an
:class:`~pipedsl.worker.Outcome`. Executors never see the graph.

Implementations must:

* resolve the executor future with the outcome, or with an exception when the
  task could not be run at all (a worker process died);
* honour :meth:`cancel` by stopping the task if it can (kill a process, cancel
  a Dask future) and resolve its future soon after;
* raise :class:`ValueError` from :meth:`check_resources` for a resource request
  they cannot honour, rather than ignore it.
"""

from __future__ import annotations

import abc
import concurrent.futures
from typing import Any

from ..worker import TaskSpec

__all__ = ["Executor", "parse_memory"]


def parse_memory(value: Any) -> int:
    """Parse ``"8GiB"``, ``"512MB"`` or a number of bytes into bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    units = {
        "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
        "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "b": 1,
        "k": 2**10, "m": 2**20, "g": 2**30,
    }  # fmt: skip
    lowered = text.lower()
    for suffix in sorted(units, key=len, reverse=True):
        if lowered.endswith(suffix):
            number = lowered[: -len(suffix)].strip()
            try:
                return int(float(number) * units[suffix])
            except ValueError:
                break
    raise ValueError(f"invalid memory size {value!r}; use bytes or a string like '8GiB'")


class Executor(abc.ABC):
    """Runs task specs and reports their outcomes through executor futures."""

    #: Name used in run records and ``configure(executor=...)``.
    name: str = "executor"
    #: True when tasks run in this process, so values pass without copies.
    in_process: bool = False
    #: Tasks the scheduler may have submitted at once; 0 means no bound.
    capacity: int = 0

    @abc.abstractmethod
    def submit(self, spec: TaskSpec, resources: dict[str, Any]) -> concurrent.futures.Future[Any]:
        """Start running ``spec``; return an executor future of its outcome."""

    def cancel(self, future: concurrent.futures.Future[Any]) -> None:
        """Stop the task behind ``future`` if possible; the default does nothing."""
        future.cancel()

    def check_resources(self, job_name: str, resources: dict[str, Any]) -> None:
        """Raise ValueError when ``resources`` cannot be honoured."""
        if resources:
            raise ValueError(
                f"job {job_name!r} requests resources {resources!r}, which the "
                f"{self.name!r} executor cannot honour; run it on the 'dask' or "
                "'ray' executor, or remove resources="
            )

    def shutdown(self) -> None:
        """Release what the executor holds (threads, processes, clients)."""
