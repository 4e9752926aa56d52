"""Tasks, futures and graphs: what tracing a workflow produces.

Calling a job creates a :class:`Task` (one call of the job with its
arguments) and returns a :class:`Future` that refers to it. Futures passed as
arguments, also inside lists, tuples, dicts, sets and dataclass fields, become
the task's dependencies. Nothing runs while a graph is traced.

A task's cache key is a Merkle hash computed before anything runs:
``hash(job name, code version, fingerprints of plain arguments, keys of the
upstream tasks whose futures are arguments)``. Keys of a whole graph are known
at trace time, so a cached run needs only existence checks, and a downstream
key never depends on whether an upstream value was computed or loaded.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import inspect
import logging
import uuid
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .codeversion import CodeVersion, code_version
from .errors import TraceError
from .hashing import Fingerprinter, Unfingerprintable, _HANDLERS, fingerprint

if TYPE_CHECKING:
    from .dsl import Job

__all__ = ["Future", "Graph", "Task", "TaskStatus", "iter_futures", "substitute"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TaskStatus(str, enum.Enum):
    """State of a task in a run; the last five are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    CACHED = "cached"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (TaskStatus.PENDING, TaskStatus.RUNNING)

    def __str__(self) -> str:
        return self.value


class Task:
    """One call of a job with its arguments: a vertex of the graph."""

    __slots__ = (
        "job", "args", "kwargs", "deps", "after", "scope", "key", "info", "limit",
        "tolerant", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        job: Job[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        after: tuple[Future[Any], ...] = (),
        scope: tuple[str, ...] = (),
    ) -> None:
        self.job = job
        self.args = args
        self.kwargs = kwargs
        # Upstream tasks in first-seen order, from data flow and from ``after``.
        deps: dict[int, Task] = {}
        for future in iter_futures((args, kwargs)):
            deps.setdefault(id(future._task), future._task)
        for future in after:
            deps.setdefault(id(future._task), future._task)
        self.deps = list(deps.values())
        self.after = after
        self.scope = scope
        # Set by Graph when keys are computed.
        self.key: str | None = None
        self.info: KeyInfo | None = None
        # (group name, max tasks of the group running at once), set by map().
        self.limit: tuple[str, int] | None = None
        # True when the task receives failed inputs as ElementFailed values
        # instead of being skipped (the gather task of a tolerant map).
        self.tolerant = False

    def __repr__(self) -> str:
        return f"<Task {self.key or self.job.name}>"


@dataclasses.dataclass
class KeyInfo:
    """The parts of a cache key, kept so a cache miss can be explained."""

    code: CodeVersion
    inputs: dict[str, str]
    upstream: dict[str, str]
    cacheable: bool
    reason: str | None = None


# -- futures --------------------------------------------------------------------


def _misuse(future: Future[Any], what: str, instead: str) -> TraceError:
    job = future._task.job.name
    return TraceError(
        f"{what} a future of job {job!r}, whose value does not exist while the "
        f"workflow is traced. {instead}"
    )


class Future(Generic[T]):
    """Lazy handle on the output of a task (or a part of it).

    ``future[0]``, ``future["key"]`` and ``future.attr`` give futures of parts
    of the value. A future of a job annotated to return ``tuple[A, B]`` unpacks
    into two futures. Outside a workflow, :meth:`result` runs what is needed and
    returns the value.
    """

    __slots__ = ("_task", "_path")
    _task: Task
    _path: tuple[tuple[str, Any], ...]

    def __init__(self, task: Task, path: tuple[tuple[str, Any], ...] = ()) -> None:
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_path", path)

    # -- parts --
    def __getitem__(self, item: Any) -> Future[Any]:
        if isinstance(item, Future):
            raise _misuse(item, "Indexing with", "Pass both futures to a job and index inside it.")
        return Future(self._task, (*self._path, ("item", item)))

    def __getattr__(self, name: str) -> Future[Any]:
        if name.startswith("__") or name in ("_ipython_canary_method_should_not_exist_",):
            raise AttributeError(name)
        if name.startswith("_repr_") or name.startswith("_ipython"):
            raise AttributeError(name)
        return Future(self._task, (*self._path, ("attr", name)))

    def __setattr__(self, name: str, value: Any) -> None:
        raise _misuse(self, f"Setting attribute {name!r} on", "Futures are read-only.")

    def __iter__(self) -> Iterator[Future[Any]]:
        arity = self._task.job._tuple_arity() if not self._path else None
        if arity is None:
            raise _misuse(
                self,
                "Iterating over",
                f"To run a job once per element, use {self._task.job.name}-like "
                "`other_job.map(future)`; to unpack a fixed-size tuple, annotate the "
                "job's return type as tuple[A, B].",
            )
        return iter([self[i] for i in range(arity)])

    def __bool__(self) -> bool:
        raise _misuse(
            self,
            "Testing the truth of",
            "Branch on the value inside a job, or use pipedsl.when(condition, then=..., "
            "otherwise=...).",
        )

    def __len__(self) -> int:
        raise _misuse(self, "Taking len() of", "Compute the length inside a job.")

    def __format__(self, spec: str) -> str:
        raise _misuse(self, "Formatting", "Build the string inside a job that takes the future.")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Future):
            return self is other
        raise _misuse(self, "Comparing", "Compare values inside a job.")

    def __hash__(self) -> int:
        return id(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Future, (self._task, self._path))

    def __contains__(self, item: object) -> bool:
        raise _misuse(self, "Testing membership in", "Test membership inside a job.")

    def __index__(self) -> int:
        raise _misuse(self, "Using as an index", "Index inside a job.")

    def __repr__(self) -> str:
        path = "".join(f"[{p!r}]" if kind == "item" else f".{p}" for kind, p in self._path)
        key = self._task.key
        return f"<Future {self._task.job.name}{path}{' ' + key if key else ''}>"

    def __str__(self) -> str:
        return repr(self)

    def _repr_html_(self) -> str:
        import html

        return f"<code>{html.escape(repr(self))}</code>"

    @property
    def key(self) -> str:
        """Cache key of the task behind this future, computed on first use."""
        if self._task.key is None:
            Graph.build([self._task])
        assert self._task.key is not None
        return self._task.key

    @property
    def job(self) -> Job[Any, Any]:
        return self._task.job

    def result(self, **options: Any) -> T:
        """Run the task and what it depends on, and return this future's value.

        ``options`` are the run options of :meth:`Workflow.run`
        (``executor``, ``store``, ``refresh``...).
        """
        from .runs import run_graph

        graph = Graph.build([self._task], outputs=self, name=self._task.job.name)
        return run_graph(graph, options).result()  # type: ignore[no-any-return]


_COMPARISONS = {"__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">="}


def _fail_operator(name: str) -> Any:
    def method(self: Future[Any], *args: Any) -> Any:
        if name in _COMPARISONS:
            raise _misuse(
                self,
                f"Comparing ({_COMPARISONS[name]})",
                "Compare inside a job that returns a bool, and branch on it with "
                "pipedsl.when(condition, then=..., otherwise=...).",
            )
        raise _misuse(
            self,
            f"Applying {name} to",
            "Operators need values: do the arithmetic inside a job that takes the future.",
        )

    method.__name__ = name
    return method


for _op in (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
    "__truediv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__",
    "__rmod__", "__pow__", "__rpow__", "__matmul__", "__rmatmul__", "__neg__",
    "__pos__", "__abs__", "__invert__", "__lt__", "__le__", "__gt__", "__ge__",
    "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__",
    "__int__", "__float__", "__complex__", "__round__", "__lshift__", "__rshift__",
):  # fmt: skip
    setattr(Future, _op, _fail_operator(_op))


def _fingerprint_future(fp: Fingerprinter, value: Future[Any]) -> None:
    task = value._task
    if task.key is None:
        raise TraceError(f"the key of upstream task {task.job.name!r} is not computed yet")
    fp.tag("future", f"{task.key}{value._path!r}")


_HANDLERS[Future] = _fingerprint_future


# -- walking argument structures -----------------------------------------------


def iter_futures(value: Any) -> Iterator[Future[Any]]:
    """Yield the futures inside ``value`` (lists, tuples, dicts, sets, dataclasses)."""
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is Future:
            yield item
        elif kind in (list, tuple, set, frozenset):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(reversed(list(item)) if kind in (list, tuple) else item)
        elif kind is dict:
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(reversed(list(item.values())))
                stack.extend(k for k in item if type(k) is Future)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        elif isinstance(item, (list, tuple, dict)):
            # Subclasses (namedtuple, OrderedDict...) are walked like their base.
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(item.values() if isinstance(item, dict) else item)


def apply_path(value: Any, path: tuple[tuple[str, Any], ...]) -> Any:
    for kind, part in path:
        value = value[part] if kind == "item" else getattr(value, part)
    return value


def substitute(value: Any, resolve: Any) -> Any:
    """Return ``value`` with each future replaced by ``resolve(future)``.

    Containers are rebuilt only when they contain a future.
    """
    kind = type(value)
    if kind is Future:
        return resolve(value)
    if kind in (list, tuple, set, frozenset):
        items = [substitute(item, resolve) for item in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return kind(items)
    if kind is dict:
        changed = False
        result = {}
        for key, item in value.items():
            new_key = substitute(key, resolve) if type(key) is Future else key
            new_item = substitute(item, resolve)
            changed = changed or new_key is not key or new_item is not item
            result[new_key] = new_item
        return result if changed else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for field in dataclasses.fields(value):
            if not field.init:
                continue
            old = getattr(value, field.name)
            new = substitute(old, resolve)
            if new is not old:
                changes[field.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        items = [substitute(item, resolve) for item in value]
        return value if all(a is b for a, b in zip(items, value)) else kind(*items)
    if isinstance(value, (list, tuple)):
        items = [substitute(item, resolve) for item in value]
        return value if all(a is b for a, b in zip(items, value)) else kind(items)
    if isinstance(value, dict):
        return kind((k, substitute(v, resolve)) for k, v in value.items())
    return value


# -- tracing ----------------------------------------------------------------------


class TraceContext:
    """Collects the tasks created while a workflow function runs."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self.scope: tuple[str, ...] = ()


tracing: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "pipedsl_tracing", default=None
)


# -- the graph --------------------------------------------------------------------


class Graph:
    """Tasks by key in topological order, plus the outputs of the workflow.

    Attributes
    ----------
    tasks:
        ``{key: Task}``; two calls of a job with the same key are one task.
    outputs:
        The workflow's return value, with futures in it.
    name:
        Name of the workflow (or job) the graph was traced from.
    """

    def __init__(self, tasks: dict[str, Task], outputs: Any, name: str) -> None:
        self.tasks = tasks
        self.outputs = outputs
        self.name = name

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks.values())

    def __repr__(self) -> str:
        return f"<Graph {self.name!r}: {len(self.tasks)} tasks>"

    def dependencies(self, key: str) -> list[str]:
        """Keys of the tasks ``key`` depends on."""
        return [dep.key for dep in self.tasks[key].deps if dep.key is not None]

    def dependents(self) -> dict[str, list[str]]:
        """Map each key to the keys of the tasks that depend on it."""
        result: dict[str, list[str]] = {key: [] for key in self.tasks}
        for key, task in self.tasks.items():
            for dep in task.deps:
                if dep.key is not None and key not in result[dep.key]:
                    result[dep.key].append(key)
        return result

    def _repr_svg_(self) -> str | None:
        from .display import graph_svg

        return graph_svg(self)

    def _repr_html_(self) -> str:
        from .display import graph_html

        return graph_html(self)

    def to_dot(self, statuses: dict[str, str] | None = None) -> str:
        from .display import graph_dot

        return graph_dot(self, statuses)

    def to_mermaid(self, statuses: dict[str, str] | None = None) -> str:
        from .display import graph_mermaid

        return graph_mermaid(self, statuses)

    @classmethod
    def build(cls, tasks: list[Task], outputs: Any = None, name: str = "graph") -> Graph:
        """Order ``tasks`` and their upstream tasks, and compute every key."""
        roots = list(tasks) + [f._task for f in iter_futures(outputs)]
        ordered = _topological(roots)
        versions: dict[int, CodeVersion] = {}
        by_key: dict[str, Task] = {}
        for task in ordered:
            if task.key is None:
                _compute_key(task, versions)
            assert task.key is not None
            by_key.setdefault(task.key, task)
        return cls(by_key, outputs, name)


def _topological(roots: list[Task]) -> list[Task]:
    order: list[Task] = []
    done: set[int] = set()
    for root in roots:
        if id(root) in done:
            continue
        stack: list[tuple[Task, int]] = [(root, 0)]
        while stack:
            task, index = stack.pop()
            if index < len(task.deps):
                stack.append((task, index + 1))
                dep = task.deps[index]
                if id(dep) not in done:
                    stack.append((dep, 0))
                continue
            if id(task) not in done:
                done.add(id(task))
                order.append(task)
    return order


_warned_unfingerprintable: set[tuple[str, str]] = set()


def _compute_key(task: Task, versions: dict[int, CodeVersion]) -> None:
    job = task.job
    version = versions.get(id(job))
    if version is None:
        version = job.code_version()
        versions[id(job)] = version

    arguments = job._bind(task.args, task.kwargs)
    inputs: dict[str, str] = {}
    reason: str | None = None
    for name, value in arguments.items():
        try:
            inputs[name] = fingerprint(value)
        except (Unfingerprintable, TypeError, ValueError, OverflowError) as exc:
            # A handler failing on an odd value (an unhashable cell in an
            # object column) means no fingerprint, not a failed trace.
            reason = (
                f"argument {name!r} of job {job.name!r}: {exc}. The task is not "
                "cached; register a fingerprint to cache it"
            )
            if (job.name, name) not in _warned_unfingerprintable:
                _warned_unfingerprintable.add((job.name, name))
                warnings.warn(f"pipedsl: {reason}", RuntimeWarning, stacklevel=6)
            inputs[name] = "unfingerprintable-" + uuid.uuid4().hex
    # Arguments that are futures, by name, mapped to the upstream job's name, so
    # an explanation can report "upstream task train changed".
    upstream = {
        name: value._task.job.name for name, value in arguments.items() if type(value) is Future
    }
    after = [f._task.key for f in task.after]

    cacheable = job.cache and reason is None and version.volatile is None
    if version.volatile is not None and reason is None:
        reason = f"job {job.name!r} reads {version.volatile}; the task is not cached"
    if not job.cache:
        reason = f"job {job.name!r} is marked cache=False"

    digest = Fingerprinter()
    digest.tag("task", job.name)
    digest.tag("code", version.digest)
    for name in sorted(inputs):
        digest.tag("arg", f"{name}={inputs[name]}")
    for key in after:
        digest.tag("after", key or "")
    if not cacheable:
        # A fresh nonce: this task, and every task downstream of it, runs anew.
        digest.tag("nonce", uuid.uuid4().hex)
    task.key = f"{job.name}-{digest.hexdigest()}"
    task.info = KeyInfo(version, inputs, upstream, cacheable, reason)


def signature_of(fn: Any) -> inspect.Signature:
    return inspect.signature(fn)
