"""The task runner that executors call: load inputs, call the job, store the output.

:func:`execute` is the only callable executors receive. It reads inputs that
did not travel inline from the artifact store, calls the function with
retries, writes the output and its manifest, and returns an :class:`Outcome`.
A failed attempt writes nothing, so a failed task is never cached.

``python -m pipedsl.worker SPEC_URL OUTCOME_URL`` runs one task from a spec
pickled with cloudpickle in the artifact store; remote executors (FedML
launch) use it as their entry command.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import logging
import sys
import time
import traceback
from typing import Any

import cloudpickle

from .artifacts import (
    bind_lazy_parameters,
    current_store,
    lazy_parameters,
    open_lazy_input,
    wrap_lazy_input,
)
from .errors import ArtifactMissing, RemoteTaskError, SerializationError, add_note
from .graph import apply_path
from .store import ArtifactStore

__all__ = ["Outcome", "Ref", "TaskSpec", "execute"]

logger = logging.getLogger(__name__)

# The id of the run whose task executes in this context. Jobs that start a
# resource for the run append a callback to RUN_END_CALLBACKS[run_id]; the run
# calls them when it ends, if it ran in this process.
current_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pipedsl_current_run_id", default=None
)
RUN_END_CALLBACKS: dict[str, list[Any]] = collections.defaultdict(list)

class _NoValue:
    """Marks an outcome whose value stayed in the store; one instance per process."""

    def __repr__(self) -> str:
        return "NO_VALUE"

    def __reduce__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Any = _NoValue()


@dataclasses.dataclass(frozen=True)
class Ref:
    """An input to load from the store: the output of task ``key``, then ``path``."""

    job: str
    key: str
    path: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass
class TaskSpec:
    """Everything a worker needs to run one task."""

    key: str
    job: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    store: ArtifactStore
    meta: dict[str, Any]
    save: bool = True
    # Values whose payload is larger travel back as a reference only; None
    # returns every value in memory (thread and inline executors).
    inline_limit: int | None = None
    # True when some argument is a Ref to load from the store.
    has_refs: bool = False


@dataclasses.dataclass
class Outcome:
    """The result of one task, returned by a worker to the scheduler."""

    key: str
    ok: bool
    value: Any = NO_VALUE
    manifest: dict[str, Any] | None = None
    error: BaseException | None = None
    traceback_text: str = ""
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    missing: str | None = None
    # The error's __cause__, carried apart because pickling drops it.
    cause: BaseException | None = None


def _resolve_inputs(spec: TaskSpec) -> tuple[tuple[Any, ...], dict[str, Any]]:
    # Parameters annotated File or Artifact[T] get lazy handles, not values.
    lazy = lazy_parameters(spec.job.fn)
    if not spec.has_refs and not lazy:
        return spec.args, spec.kwargs
    loaded: dict[str, Any] = {}

    def load(ref: Ref) -> Any:
        if ref.key not in loaded:
            manifest = spec.store.read_manifest(ref.job, ref.key)
            if manifest is None:
                raise ArtifactMissing(ref.key, "its manifest is gone")
            loaded[ref.key] = load_checked(spec.store, manifest, ref.key)
        return apply_path(loaded[ref.key], ref.path)

    def handle(kind: type, value: Any) -> Any:
        if type(value) is Ref:
            return open_lazy_input(
                kind, spec.store, value.job, value.key, value.path, lambda: load(value)
            )
        return wrap_lazy_input(kind, _substitute_refs(value, load), spec.store)

    args, kwargs = spec.args, spec.kwargs
    if lazy:
        args, kwargs = bind_lazy_parameters(spec.job.fn, lazy, args, kwargs, handle)
    args = tuple(_substitute_refs(a, load) for a in args)
    kwargs = {k: _substitute_refs(v, load) for k, v in kwargs.items()}
    return args, kwargs


def load_checked(store: ArtifactStore, manifest: dict[str, Any], key: str) -> Any:
    """Load a manifest's value; an unusable manifest raises ArtifactMissing."""
    try:
        return store.load(manifest)
    except ArtifactMissing:
        raise
    except (KeyError, TypeError, ValueError, SerializationError) as exc:
        # A manifest without its fields, or naming an unknown serializer: the
        # task that wrote it runs again.
        raise ArtifactMissing(key, f"its manifest is unusable ({type(exc).__name__}: {exc})") from exc


def _substitute_refs(value: Any, load: Any) -> Any:
    kind = type(value)
    if kind is Ref:
        return load(value)
    if kind in (list, tuple, set, frozenset):
        return kind(_substitute_refs(item, load) for item in value)
    if kind is dict:
        return {k: _substitute_refs(v, load) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: _substitute_refs(getattr(value, f.name), load)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    return value


def _portable(exc: BaseException, text: str) -> BaseException:
    """Return ``exc`` if it survives pickling, else a RemoteTaskError for it."""
    try:
        clone = cloudpickle.loads(cloudpickle.dumps(exc))
        if type(clone) is not type(exc):
            raise TypeError("type changed")
        return exc
    except Exception:
        replacement = RemoteTaskError(
            f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), text
        )
        return replacement


def _returns_futures(value: Any) -> bool:
    from .graph import Future, iter_futures

    if type(value) is Future:
        return True
    # Look inside small containers only, so large outputs cost nothing extra.
    if type(value) in (list, tuple, dict, set) and len(value) <= 256:
        return next(iter_futures(value), None) is not None
    return False


def execute(spec: TaskSpec) -> Outcome:
    """Run one task: load inputs, call the job with retries, store the output."""
    job = spec.job
    outcome = Outcome(spec.key, ok=False, started=time.time())
    token = current_store.set(spec.store)
    run_token = current_run_id.set(spec.meta.get("run_id"))
    try:
        try:
            args, kwargs = _resolve_inputs(spec)
        except ArtifactMissing as exc:
            outcome.missing = exc.key
            outcome.error = exc
            outcome.ended = time.time()
            return outcome

        delay = job.retry_delay
        attempt = 0
        while True:
            attempt += 1
            started = time.time()
            try:
                value = job.fn(*args, **kwargs)
            except ArtifactMissing as exc:
                # Artifact.load() inside the job found an upstream payload gone
                # or corrupt: the scheduler re-runs that upstream task.
                outcome.missing = exc.key
                outcome.error = exc
                outcome.ended = time.time()
                return outcome
            except BaseException as exc:
                retry = (
                    attempt <= job.retries
                    and isinstance(exc, job.retry_on)
                    and isinstance(exc, Exception)
                )
                outcome.attempts.append(
                    {
                        "attempt": attempt,
                        "started": started,
                        "ended": time.time(),
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )
                if retry:
                    logger.info(
                        "retry   %s attempt %d failed (%s: %s); next in %.1fs",
                        spec.key, attempt, type(exc).__name__, exc, delay,
                    )  # fmt: skip
                    time.sleep(delay)
                    delay *= job.backoff
                    continue
                if not isinstance(exc, Exception):
                    raise
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                outcome.error = exc
                outcome.traceback_text = text
                outcome.ended = time.time()
                return outcome
            break

        outcome.attempts.append({"attempt": attempt, "started": started, "ended": time.time()})
        if not job.dynamic and _returns_futures(value):
            outcome.error = TypeError(
                f"job {job.name!r} returned futures of other jobs; mark it "
                "@job(dynamic=True) so that the scheduler runs them, or call .fn(...) "
                "inside it to compute values directly"
            )
            outcome.ended = time.time()
            return outcome
        manifest = None
        if spec.save:
            manifest = spec.store.save(
                job.name, spec.key, value, {**spec.meta, "attempts": attempt}
            )
        outcome.manifest = manifest
        if spec.inline_limit is None or manifest is None or manifest["size"] <= spec.inline_limit:
            outcome.value = value
        outcome.ok = True
        outcome.ended = time.time()
        return outcome
    except Exception as exc:
        # Failures of pipedsl itself (serialization, store I/O) fail the task.
        add_note(exc, f"while storing the output of task {spec.key}")
        outcome.error = exc
        outcome.traceback_text = "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        )
        outcome.ended = time.time()
        return outcome
    finally:
        current_store.reset(token)
        current_run_id.reset(run_token)


def execute_remote(spec: TaskSpec) -> Outcome:
    """Run :func:`execute` in another process and make the outcome picklable."""
    outcome = execute(spec)
    if outcome.error is not None:
        error = _portable(outcome.error, outcome.traceback_text)
        if error is outcome.error:
            cause = error.__cause__ or error.__context__
            add_note(error, "Traceback in the worker:\n" + outcome.traceback_text.rstrip())
            error.__traceback__ = None
            if cause is not None:
                outcome.cause = _portable(cause, "")
                outcome.cause.__traceback__ = None
        outcome.error = error
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pipedsl.worker SPEC_URL OUTCOME_URL``."""
    import fsspec

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m pipedsl.worker SPEC_URL OUTCOME_URL", file=sys.stderr)
        return 2
    spec_url, outcome_url = argv
    with fsspec.open(spec_url, "rb") as handle:
        spec = cloudpickle.load(handle)
    outcome = execute_remote(spec)
    with fsspec.open(outcome_url, "wb") as handle:
        cloudpickle.dump(outcome, handle)
    if not outcome.ok:
        print(outcome.traceback_text or repr(outcome.error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Under ``python -m`` this file is ``__main__``, a second copy of the
    # module: run the imported ``pipedsl.worker`` so that outcomes pickle
    # NO_VALUE and other names by reference to it.
    from pipedsl.worker import main as _main

    sys.exit(_main())
