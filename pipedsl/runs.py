"""Runs: starting a graph, watching it, and reading it back later.

:class:`Run` is the handle returned by :meth:`Workflow.run` and
:meth:`Workflow.submit`. The scheduler works on a background thread, so the
synchronous API never touches an asyncio loop and works in a Jupyter cell.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import threading
import uuid
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .config import get_config
from .errors import RunError
from .executors import make_executor
from .graph import Future, Graph, apply_path, substitute
from .records import RunRecord, TaskRecord
from .scheduler import Scheduler
from .store import ArtifactStore

if TYPE_CHECKING:
    from .dsl import Workflow

__all__ = ["Plan", "Run", "load_run", "new_run_id", "plan_graph", "run_graph"]

R = TypeVar("R")


def new_run_id() -> str:
    """Return a run id that sorts by start time: ``20261204-171502-3fa2c1``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _options(options: dict[str, Any]) -> dict[str, Any]:
    config = get_config()
    resolved = {
        "store": config.store,
        "storage_options": config.storage_options,
        "executor": config.executor,
        "max_workers": config.max_workers,
        "progress": config.progress,
        "on_failure": config.on_failure,
        "refresh": False,
        "run_id": None,
    }
    resolved.update({k: v for k, v in options.items() if v is not None or k == "progress"})
    workers = resolved["max_workers"]
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"max_workers must be a positive int, got {workers!r}")
    run_id = resolved["run_id"]
    if run_id is not None and not _RUN_ID.match(str(run_id)):
        raise ValueError(
            f"invalid run_id {run_id!r}: use letters, digits, '.', '_' and '-' only, "
            "starting with a letter or digit (at most 128 characters)"
        )
    if resolved["on_failure"] not in ("stop", "continue"):
        raise ValueError(
            f"on_failure must be 'stop' or 'continue', got {resolved['on_failure']!r}"
        )
    return resolved


def _open_store(options: dict[str, Any]) -> ArtifactStore:
    store = options["store"]
    if isinstance(store, ArtifactStore):
        return store
    return get_config().open_store(store, options["storage_options"])


class Run(Generic[R]):
    """A run of a graph: status, per-task records, result, kill.

    Examples
    --------
    >>> from pipedsl import job, workflow
    >>> @job
    ... def square(x: int) -> int:
    ...     return x * x
    >>> @workflow
    ... def squares(n: int = 3) -> list:
    ...     return [square(i) for i in range(n)]
    >>> run = squares.run(3, executor="inline", store="memory://doctest", progress=False)
    >>> run.status, run.result()
    ('done', [0, 1, 4])
    """

    def __init__(self, scheduler: Scheduler, owns_executor: bool) -> None:
        self._scheduler = scheduler
        self._owns_executor = owns_executor
        self.run_id = scheduler.run_id
        self.graph = scheduler.graph
        self.store = scheduler.store
        self._thread: threading.Thread | None = None
        # Set once the executor is shut down too, so a caller that exits right
        # after result() does not cut a cluster's shutdown short.
        self._ended = threading.Event()
        self._value: Any = None
        self._resolved = False

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._main, name=f"pipedsl-run-{self.run_id}", daemon=True
        )
        self._thread.start()

    def _main(self) -> None:
        try:
            self._scheduler.run()
        finally:
            if self._owns_executor:
                self._scheduler.executor.shutdown()
            from .worker import RUN_END_CALLBACKS

            try:
                for callback in RUN_END_CALLBACKS.pop(self.run_id, []):
                    callback()
            finally:
                self._ended.set()

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.graph.name!r} {self.status}>"

    @property
    def status(self) -> str:
        """``running``, ``done``, ``failed`` or ``cancelled``."""
        return self._scheduler.record.status if self.done() else "running"

    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends or ``timeout`` seconds pass; True if it ended.

        Ctrl-C while waiting kills the run.
        """
        try:
            return self._ended.wait(timeout)
        except KeyboardInterrupt:
            self.kill()
            self._ended.wait(10)
            raise

    def kill(self) -> None:
        """Cancel queued tasks and stop running ones; finished tasks stay stored."""
        self._scheduler.kill()

    def result(self, timeout: float | None = None) -> R:
        """Wait for the run and return the workflow's value, futures resolved.

        Raises the first failed task's exception, with its original type and a
        note naming the job and task.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"run {self.run_id} did not finish within {timeout}s")
        scheduler = self._scheduler
        if scheduler.killed or scheduler.failure_order:
            raise scheduler.first_error()
        if not self._resolved:
            values = scheduler.values

            def resolve(future: Future[Any]) -> Any:
                return apply_path(values[future._task.key], future._path)

            self._value = substitute(self.graph.outputs, resolve)
            self._resolved = True
        return self._value  # type: ignore[no-any-return]

    @property
    def record(self) -> RunRecord:
        return self._scheduler.record

    @property
    def tasks(self) -> list[TaskRecord]:
        """Per-task records: status, timings, cache hit, error."""
        return self._scheduler.record.tasks

    def statuses(self) -> dict[str, str]:
        """Return ``{task key: status}``."""
        return {key: status.value for key, status in self._scheduler.status.items()}

    def counts(self) -> dict[str, int]:
        return self._scheduler.record.counts()

    def explain(self) -> list[str]:
        """Say, for each task that ran, why it was not served from the cache."""
        from .explain import explain_run

        return explain_run(self.record, self.store)

    def _repr_html_(self) -> str:
        from .display import run_html

        return run_html(self)


def start_workflow(
    workflow: Workflow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> Run[Any]:
    """Trace ``workflow`` and start running it; return its Run at once."""
    if options.get("loop"):
        from .loop import start_loop

        return start_loop(workflow, args, kwargs, options)  # type: ignore[return-value]
    for name in ("loop", "interval", "max_iterations", "until", "feed"):
        if options.get(name) not in (None, False):
            raise TypeError(f"run option {name!r} needs loop=True")
    graph = workflow._trace(args, kwargs)
    params = {k: repr(v)[:200] for k, v in kwargs.items()}
    params.update({f"arg{i}": repr(v)[:200] for i, v in enumerate(args)})
    return start_graph(graph, options, params)


def start_graph(graph: Graph, options: dict[str, Any], params: dict[str, str] | None = None) -> Run[Any]:
    resolved = _options(options)
    store = _open_store(resolved)
    executor, owns = make_executor(resolved["executor"], resolved["max_workers"])
    scheduler = Scheduler(
        graph,
        store,
        executor,
        run_id=resolved["run_id"] or new_run_id(),
        refresh=bool(resolved["refresh"]),
        on_failure=resolved["on_failure"],
        progress=resolved["progress"],
        record_interval=get_config().record_interval,
        params=params,
        max_workers=resolved["max_workers"],
    )
    run: Run[Any] = Run(scheduler, owns)
    run._start()
    return run


def run_graph(graph: Graph, options: dict[str, Any]) -> Run[Any]:
    """Run ``graph`` to completion and return its Run."""
    run = start_graph(graph, options)
    run.wait()
    return run


@dataclasses.dataclass
class Plan:
    """A dry run: the tasks a run would execute and those it would take from the cache."""

    graph: Graph
    cached: list[str]
    to_run: list[str]

    def __repr__(self) -> str:
        return f"<Plan {self.graph.name!r}: {len(self.to_run)} to run, {len(self.cached)} cached>"

    def __str__(self) -> str:
        lines = [f"plan for {self.graph.name}: {len(self.to_run)} to run, {len(self.cached)} cached"]
        for key in self.graph.tasks:
            mark = "cached" if key in self.cached else "run"
            lines.append(f"  {mark:<7} {key}")
        return "\n".join(lines)


def plan_graph(graph: Graph, options: dict[str, Any]) -> Plan:
    """Compute the plan of ``graph`` against the store, running nothing."""
    resolved = _options(options)
    store = _open_store(resolved)
    cached: list[str] = []
    listings: dict[str, set[str]] = {}
    stale: set[str] = set()
    for key, task in graph.tasks.items():
        info = task.info
        assert info is not None
        if resolved["refresh"] or not info.cacheable:
            stale.add(key)
            continue
        if task.job.name not in listings:
            listings[task.job.name] = store.cached_keys(task.job.name)
        if key.rpartition("-")[2] not in listings[task.job.name]:
            stale.add(key)
    # A task whose upstream runs keeps its key (Merkle keys), so a miss
    # upstream does not make a hit downstream stale.
    for key in graph.tasks:
        if key not in stale:
            cached.append(key)
    to_run = [k for k in graph.tasks if k in stale]
    return Plan(graph, cached, to_run)


def load_run(run_id: str, store: str | ArtifactStore | None = None) -> RunRecord:
    """Read a run record from the store, e.g. one written by another process."""
    target = store if isinstance(store, ArtifactStore) else get_config().open_store(store)
    data = target.read_record(run_id)
    if data is None:
        raise RunError(f"no run {run_id!r} in store {target.url}; list runs with `pipedsl runs`")
    return RunRecord.from_dict(data)
