"""``@job`` and ``@workflow``: plain functions that trace into graphs.

Calling a job returns a :class:`~pipedsl.graph.Future` and runs nothing.
Calling a workflow traces its function (each job call adds a task) and then
runs the graph; :meth:`Workflow.trace` stops after tracing. This module never
imports the scheduler at import time: tracing and running stay apart.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
import sys
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from typing_extensions import ParamSpec

from .codeversion import CodeVersion, code_version
from .graph import Future, Graph, Task, TraceContext, tracing
from .hashing import _HANDLERS

if TYPE_CHECKING:
    from .runs import Plan, Run

__all__ = ["Job", "Workflow", "job", "parse_duration", "workflow"]

P = ParamSpec("P")
R = TypeVar("R")

# Options of Workflow.run / submit / Future.result; a workflow parameter of
# the same name takes precedence and the option is then set with with_options.
RUN_OPTIONS = frozenset(
    {
        "executor",
        "store",
        "storage_options",
        "refresh",
        "on_failure",
        "progress",
        "max_workers",
        "loop",
        "interval",
        "max_iterations",
        "until",
        "feed",
        "run_id",
    }
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: float | str | None, what: str = "timeout") -> float | None:
    """Parse ``10``, ``"10s"``, ``"10m"``, ``"2h"`` or ``"30d"`` into seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"invalid {what} {value!r}; use seconds as a number or a string "
                "such as '30s', '10m', '2h' or '7d'"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be a positive, finite number of seconds, got {value!r}")
    return seconds


class Job(Generic[P, R]):
    """A function whose calls are tasks of a graph.

    Create jobs with :func:`job`. Calling a job returns a future;
    :attr:`fn` is the undecorated function, for unit tests.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        version: str | None = None,
        cache: bool = True,
        retries: int = 0,
        retry_delay: float = 0.0,
        backoff: float = 1.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        timeout: float | str | None = None,
        resources: dict[str, Any] | None = None,
        dynamic: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@job needs a function, got {fn!r}")
        if isinstance(fn, (Job, Workflow)):
            raise TypeError(f"{fn!r} is already a job or workflow; decorate the function once")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"@job does not take async functions ({fn.__qualname__}); wrap the "
                "coroutine with asyncio.run inside a plain function"
            )
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, got {retries!r}")
        finite = math.isfinite(retry_delay) and math.isfinite(backoff)
        if not finite or retry_delay < 0 or backoff < 1:
            raise ValueError(
                f"retry_delay must be >= 0 and backoff >= 1, got {retry_delay!r} and {backoff!r}"
            )
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        self.fn = fn
        default = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "job")
        self.name: str = str(name or default).replace("<locals>.", "").replace("<lambda>", "lambda")
        self.version = None if version is None else str(version)
        self.cache = cache
        self.retries = retries
        self.retry_delay = float(retry_delay)
        self.backoff = float(backoff)
        self.retry_on = tuple(retry_on)
        self.timeout = parse_duration(timeout)
        self.resources = dict(resources or {})
        self.dynamic = dynamic
        self._signature = inspect.signature(fn)
        self._arity: int | None | bool = False
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<Job {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        return self._call(args, kwargs, ())

    def _call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], after: tuple[Future[Any], ...]
    ) -> Future[R]:
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"invalid call of job {self.name!r}: {exc}") from None
        context = tracing.get()
        task = Task(self, args, kwargs, after, context.scope if context else ())
        if context is not None:
            context.tasks.append(task)
        return Future(task)

    def after(self, *futures: Future[Any]) -> Callable[P, Future[R]]:
        """Return a caller whose task also waits for ``futures`` to finish.

        An ordering-only dependency, for jobs with side effects::

            done = upload(model)
            notify.after(done)("model uploaded")
        """
        for future in futures:
            if not isinstance(future, Future):
                raise TypeError(
                    f"{self.name}.after() takes futures, got {type(future).__name__}: {future!r}"
                )

        def call(*args: P.args, **kwargs: P.kwargs) -> Future[R]:
            return self._call(args, kwargs, tuple(futures))

        return call

    def map(
        self,
        items: Any,
        *,
        max_parallel: int | None = None,
        on_error: str = "fail",
        **fixed: Any,
    ) -> Future[list[Any]]:
        """Call the job once per element of ``items``; see :mod:`pipedsl.dynamic`."""
        from .dynamic import map_job

        return map_job(self, items, max_parallel=max_parallel, on_error=on_error, fixed=fixed)

    def code_version(self) -> CodeVersion:
        """Return the code version of this job (source, helpers, globals)."""
        if self.version is not None:
            return CodeVersion(f"pinned-{self.version}", {"version": self.version})
        frozen = self.__dict__.get("_frozen_code")
        if frozen is not None:
            return frozen  # type: ignore[no-any-return]
        return code_version(self.fn)

    def __reduce__(self) -> Any:
        # A job importable from its module travels by reference, so a worker
        # and the scheduler share one definition and compute the same keys.
        module = sys.modules.get(getattr(self.fn, "__module__", "") or "")
        qualname = getattr(self.fn, "__qualname__", "")
        if (
            module is not None
            and module.__name__ not in ("__main__", "__mp_main__")
            and "<locals>" not in qualname
            and getattr(module, qualname, None) is self
        ):
            return (_import_job, (module.__name__, qualname))
        # Otherwise (a notebook, a script's __main__, a factory) it travels by
        # value, with the code version the sender computed: a copy's source
        # cannot be read on the other side.
        state = dict(self.__dict__)
        state["_frozen_code"] = self.code_version()
        return (_rebuild_job, (state,))

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind(*args, **kwargs)
        return dict(bound.arguments)

    def _tuple_arity(self) -> int | None:
        if self._arity is False:
            self._arity = None
            try:
                hints = typing.get_type_hints(self.fn)
            except Exception:  # annotations naming undefined types
                hints = getattr(self.fn, "__annotations__", {})
            annotation = hints.get("return")
            if typing.get_origin(annotation) is tuple:
                parts = typing.get_args(annotation)
                if parts and Ellipsis not in parts:
                    self._arity = len(parts)
        return self._arity  # type: ignore[return-value]


def _import_job(module: str, qualname: str) -> Job[Any, Any]:
    import importlib

    job = importlib.import_module(module)
    for part in qualname.split("."):
        job = getattr(job, part)
    return job  # type: ignore[return-value]


def _rebuild_job(state: dict[str, Any]) -> Job[Any, Any]:
    job = Job.__new__(Job)
    job.__dict__.update(state)
    return job


class Workflow(Generic[P, R]):
    """A function that composes jobs; calling it traces and runs the graph.

    Create workflows with :func:`workflow`.
    """

    def __init__(self, fn: Callable[P, R], *, name: str | None = None, **options: Any) -> None:
        if not callable(fn):
            raise TypeError(f"@workflow needs a function, got {fn!r}")
        unknown = set(options) - RUN_OPTIONS
        if unknown:
            raise TypeError(
                f"unknown run option(s) {sorted(unknown)} for workflow "
                f"{getattr(fn, '__qualname__', fn)!r}; valid options: {sorted(RUN_OPTIONS)}"
            )
        self.fn = fn
        self.name = name or fn.__qualname__.replace("<locals>.", "")
        self.options = options
        self._signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<Workflow {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        context = tracing.get()
        if context is not None:
            # Called from another workflow: inline its tasks under a scope.
            self._check_call(args, kwargs)
            outer = context.scope
            context.scope = (*outer, self.name)
            try:
                return self.fn(*args, **kwargs)
            finally:
                context.scope = outer
        return self.run(*args, **kwargs).result()

    def with_options(self, **options: Any) -> Workflow[P, R]:
        """Return a copy of this workflow with different run options.

        Examples
        --------
        >>> @workflow
        ... def pipeline(n: int = 3) -> int:
        ...     return n
        >>> fast = pipeline.with_options(executor="inline", progress=False)
        """
        unknown = set(options) - RUN_OPTIONS
        if unknown:
            raise TypeError(
                f"unknown run option(s) {sorted(unknown)} for workflow {self.name!r}; "
                f"valid options: {sorted(RUN_OPTIONS)}"
            )
        copy = Workflow(self.fn, name=self.name, **{**self.options, **options})
        return copy

    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        params = self._signature.parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        options = dict(self.options)
        call_kwargs = {}
        for name, value in kwargs.items():
            if name in RUN_OPTIONS and name not in params and not accepts_any:
                options[name] = value
            else:
                call_kwargs[name] = value
        return call_kwargs, options

    def _check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            hint = ""
            for name in kwargs:
                close = difflib.get_close_matches(name, sorted(RUN_OPTIONS), n=1)
                if name not in self._signature.parameters and close:
                    hint = f"; did you mean the run option {close[0]!r}?"
            raise TypeError(f"invalid call of workflow {self.name!r}: {exc}{hint}") from None

    def trace(self, *args: P.args, **kwargs: P.kwargs) -> Graph:
        """Trace the workflow into a :class:`Graph` without running anything."""
        call_kwargs, _ = self._split(kwargs)
        return self._trace(args, call_kwargs)

    def _trace(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Graph:
        self._check_call(args, kwargs)
        context = TraceContext()
        context.scope = ()
        token = tracing.set(context)
        try:
            outputs = self.fn(*args, **kwargs)
        finally:
            tracing.reset(token)
        return Graph.build(context.tasks, outputs, self.name)

    def run(self, *args: P.args, **kwargs: P.kwargs) -> Run[R]:
        """Trace and run the workflow; return the finished :class:`Run`.

        Keyword arguments named like run options (``executor``, ``store``,
        ``refresh``, ``on_failure``, ``progress``, ``loop``...) set those
        options, unless the workflow has a parameter of that name.
        """
        handle = self.submit(*args, **kwargs)
        handle.wait()
        return handle

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Run[R]:
        """Start the workflow in the background and return its :class:`Run` at once."""
        from .runs import start_workflow

        call_kwargs, options = self._split(kwargs)
        self._check_call(args, call_kwargs)
        return start_workflow(self, args, call_kwargs, options)

    def plan(self, *args: P.args, **kwargs: P.kwargs) -> Plan:
        """List which tasks would run and which are cached, running nothing."""
        from .runs import plan_graph

        call_kwargs, options = self._split(kwargs)
        return plan_graph(self._trace(args, call_kwargs), options)


def _fingerprint_job(fp: Any, value: Job[Any, Any]) -> None:
    # A job passed as an argument (to map, for instance) is keyed by its code.
    fp.tag("job", f"{value.name}:{value.code_version().digest}")


_HANDLERS[Job] = _fingerprint_job


@overload
def job(fn: Callable[P, R], /) -> Job[P, R]: ...


@overload
def job(
    *,
    name: str | None = None,
    version: str | None = None,
    cache: bool = True,
    retries: int = 0,
    retry_delay: float = 0.0,
    backoff: float = 1.0,
    retry_on: tuple[type[BaseException], ...] | type[BaseException] = (Exception,),
    timeout: float | str | None = None,
    resources: dict[str, Any] | None = None,
    dynamic: bool = False,
) -> Callable[[Callable[P, R]], Job[P, R]]: ...


def job(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a job: calling it returns a :class:`Future`.

    Parameters
    ----------
    name:
        Name in logs, records and the artifact store (default: the qualified name).
    version:
        Pins the code version; the source is then not tracked.
    cache:
        ``False`` runs the job on every run and never reuses its output.
    retries, retry_delay, backoff, retry_on:
        Retry a failing task up to ``retries`` times, sleeping ``retry_delay``
        seconds, multiplied by ``backoff`` after each attempt, for exceptions
        of the ``retry_on`` types.
    timeout:
        Seconds, or a string such as ``"10m"``, from the task's start.
    resources:
        ``{"cpus": 2, "gpus": 1, "memory": "8GiB"}`` for Dask and Ray.
    dynamic:
        The function may call jobs and return futures; the scheduler runs the
        tasks it returns at run time (see :mod:`pipedsl.dynamic`).

    Examples
    --------
    >>> @job
    ... def add(a: int, b: int) -> int:
    ...     return a + b
    >>> add(1, 2).result(executor="inline", store="memory://doctest", progress=False)
    3
    >>> add.fn(1, 2)
    3
    """
    if fn is not None:
        return Job(fn, **options)

    def decorate(function: Callable[P, R]) -> Job[P, R]:
        return Job(function, **options)

    return decorate


@overload
def workflow(fn: Callable[P, R], /) -> Workflow[P, R]: ...


@overload
def workflow(
    *, name: str | None = None, **options: Any
) -> Callable[[Callable[P, R]], Workflow[P, R]]: ...


def workflow(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a workflow: jobs called inside it form its graph.

    Examples
    --------
    >>> @job
    ... def double(x: int) -> int:
    ...     return 2 * x
    >>> @workflow
    ... def pipeline(n: int = 2) -> dict:
    ...     return {"result": double(double(n))}
    >>> pipeline(3, executor="inline", store="memory://doctest", progress=False)
    {'result': 12}
    """
    if fn is not None:
        return Workflow(fn, **options)

    def decorate(function: Callable[P, R]) -> Workflow[P, R]:
        return Workflow(function, **options)

    return decorate
