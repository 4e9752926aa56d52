"""Graphs shaped at run time: map, conditionals and dynamic jobs.

A traced graph is fixed before anything runs. Three constructs extend it
while the run goes on, without giving up cache keys:

``job.map(items, **fixed)``
    One task per element. With a list known at trace time the tasks are
    created while tracing; with a future of a list, a dynamic task creates
    them once the list exists. Each element is its own cached task, keyed by
    the element's fingerprint, so adding one element runs one task.
    ``max_parallel`` bounds how many run at once; ``on_error="continue"``
    keeps going past failed elements and reports them in :class:`MapResult`.

``when(condition, then=..., otherwise=...)``
    ``then`` and ``otherwise`` are functions that call jobs; only the branch
    chosen by the condition's value runs and appears in the run record.

``@job(dynamic=True)``
    The function may call jobs and return futures (also nested in lists or
    dicts, and by calling itself); the scheduler adds the returned tasks to
    the run's graph, runs them, and gives the dynamic task the resolved value.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .graph import Future, iter_futures
from .hashing import Fingerprinter, _HANDLERS

if TYPE_CHECKING:
    from .dsl import Job

__all__ = ["MapResult", "map_job", "when"]

_groups = itertools.count()


class MapResult(list):  # type: ignore[type-arg]
    """The list of results of a map; failed elements hold None.

    ``errors`` maps the index of each failed element to its error text.
    """

    def __init__(self, values: list[Any], errors: dict[int, str]) -> None:
        super().__init__(values)
        self.errors = errors

    def __reduce__(self) -> tuple[Any, ...]:
        return (MapResult, (list(self), self.errors))


class ElementFailed:
    """Placeholder the scheduler passes for a failed element of a tolerant map."""

    def __init__(self, error: str) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"ElementFailed({self.error!r})"


def _gather(results: list[Any]) -> list[Any]:
    errors = {i: r.error for i, r in enumerate(results) if isinstance(r, ElementFailed)}
    if not errors:
        return list(results)
    values = [None if isinstance(r, ElementFailed) else r for r in results]
    return MapResult(values, errors)


def _expand(job: Job[Any, Any], items: list[Any], options: dict[str, Any]) -> Future[Any]:
    from .dsl import Job

    if not isinstance(items, (list, tuple)):
        raise TypeError(
            f"{job.name}.map() needs a list or a future of a list, got "
            f"{type(items).__name__}: {items!r}"
        )
    group = f"map-{next(_groups)}"
    max_parallel = options["max_parallel"]
    futures = []
    for item in items:
        future = job(item, **options["fixed"])
        if max_parallel:
            future._task.limit = (group, max_parallel)
        futures.append(future)
    gather = Job(_gather, name=f"{job.name}.gather", version="1")
    gathered = gather(futures)
    if options["on_error"] == "continue":
        gathered._task.tolerant = True
    return gathered


def _map_dynamic(job: Job[Any, Any], items: list[Any], options: dict[str, Any]) -> Future[Any]:
    return _expand(job, items, options)


def map_job(
    job: Job[Any, Any],
    items: Any,
    *,
    max_parallel: int | None,
    on_error: str,
    fixed: dict[str, Any],
) -> Future[list[Any]]:
    """Implement :meth:`Job.map`; see the module docstring."""
    from .dsl import Job

    if on_error not in ("fail", "continue"):
        raise ValueError(f"on_error must be 'fail' or 'continue', got {on_error!r}")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise ValueError(f"max_parallel must be a positive int, got {max_parallel!r}")
    options = {"max_parallel": max_parallel, "on_error": on_error, "fixed": fixed}
    if isinstance(items, Future):
        expander = Job(_map_dynamic, name=f"{job.name}.map", version="1", dynamic=True)
        return expander(job, items, options)
    return _expand(job, items, options)


def _choose(
    condition: Any, then: Callable[[], Any], otherwise: Callable[[], Any] | None
) -> Any:
    if condition:
        return then()
    return otherwise() if otherwise is not None else None


_when_job: Job[Any, Any] | None = None


def when(
    condition: Any,
    then: Callable[[], Any],
    otherwise: Callable[[], Any] | None = None,
) -> Future[Any]:
    """Run ``then()`` or ``otherwise()`` depending on a future's value.

    Examples
    --------
    >>> from pipedsl import job, workflow
    >>> @job
    ... def accuracy() -> float:
    ...     return 0.97
    >>> @job
    ... def passed(score: float, bar: float) -> bool:
    ...     return score >= bar
    >>> @job
    ... def deploy(score: float) -> str:
    ...     return f"deployed at {score}"
    >>> @workflow
    ... def release() -> str:
    ...     score = accuracy()
    ...     return when(passed(score, 0.9), then=lambda: deploy(score),
    ...                 otherwise=lambda: "kept the old model")
    >>> release(executor="inline", store="memory://doctest-when", progress=False)
    'deployed at 0.97'
    """
    global _when_job
    from .dsl import Job

    for name, branch in (("then", then), ("otherwise", otherwise)):
        if branch is not None and not callable(branch):
            raise TypeError(
                f"when() needs functions for then/otherwise so that only one branch "
                f"runs; got {name}={branch!r}. Write {name}=lambda: job(...)"
            )
    if _when_job is None:
        _when_job = Job(_choose, name="when", version="1", dynamic=True)
    return _when_job(condition, then, otherwise)


def _fingerprint_function(fp: Fingerprinter, value: types.FunctionType) -> None:
    # Functions passed as arguments (branches of when, map options) are keyed
    # by their code version, which covers closure values and futures.
    from .codeversion import code_version

    fp.tag("function", code_version(value).digest)


_HANDLERS[types.FunctionType] = _fingerprint_function


def returned_futures(value: Any) -> list[Future[Any]]:
    """Return the futures in a dynamic task's returned value."""
    return list(iter_futures(value))
