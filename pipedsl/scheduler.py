"""The scheduler: walks a graph, reuses cached tasks, submits ready ones.

State per task is one :class:`TaskStatus`; the loop below runs on one thread
and is the only writer of that state. It works like this:

1. *Plan.* One listing of ``tasks/<job>/`` per job in the store decides which
   keys are cached (the keys are Merkle hashes known before the run).
2. *Ready queue.* A task whose dependencies are all finished is ready. A cached
   ready task is finished on the spot, on the scheduler thread, without loading
   its value. Any other ready task becomes a :class:`TaskSpec` and goes to the
   executor, whose executor future posts the outcome to an event queue.
3. *Events.* Outcomes, timeouts, kill requests and the periodic record flush
   drive the loop; nothing polls with sleep.

Values stay in memory for in-process executors and are released once every
dependent has started. A dependent of a cached task receives a :class:`Ref`
and loads the value where it runs. If that payload turns out to be missing
or corrupt, the cached task runs again and its dependents wait for it.

One computation per key: runs in one process share a running task through an
in-process registry. On a local store, each run also announces the keys it
will compute, in one file per run. A run of another process that starts later
waits for the manifests of those keys while the announcing process lives,
instead of computing them too.
NOTE: object stores (S3) have no announcements, so two machines may both
compute a key; both then write the same complete artifact.

Dynamic tasks (``@job(dynamic=True)``, ``map`` over a future, ``when``)
return futures; their tasks join the graph while it runs, and the dynamic
task finishes with their resolved value.

Failures: with ``on_failure="stop"`` nothing new starts after a failure,
running tasks finish, dependents of the failed task are ``skipped`` and the
others ``cancelled``. With ``"continue"``, every branch that does not depend
on a failure runs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import heapq
import logging
import os
import queue
import socket
import threading
import time
import warnings
from typing import Any

from .errors import RunCancelled, TaskTimeout, add_note
from .executors.base import Executor
from .graph import Future, Graph, TaskStatus, iter_futures
from .records import RunRecord, TaskRecord
from .store import ArtifactStore
from .worker import NO_VALUE, Outcome, Ref, TaskSpec, load_checked

__all__ = ["Scheduler"]

logger = logging.getLogger("pipedsl.run")

# Outputs up to this size (bytes) travel back from out-of-process executors in
# the outcome. Larger ones stay in the store and are loaded where needed.
INLINE_LIMIT = 1 << 20


class _Inflight:
    """Tasks being computed in this process, so concurrent runs share them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[tuple[str, str], concurrent.futures.Future[Any]] = {}

    def claim(self, store: str, key: str) -> concurrent.futures.Future[Any] | None:
        """Return None if the caller now owns ``key``, else the owner's future."""
        with self._lock:
            existing = self._futures.get((store, key))
            if existing is not None:
                return existing
            self._futures[(store, key)] = concurrent.futures.Future()
            return None

    def release(self, store: str, key: str, outcome: Outcome | None) -> None:
        with self._lock:
            future = self._futures.pop((store, key), None)
        if future is not None:
            future.set_result(outcome)


INFLIGHT = _Inflight()


class Scheduler:
    """Runs one graph to completion; see the module docstring."""

    def __init__(
        self,
        graph: Graph,
        store: ArtifactStore,
        executor: Executor,
        *,
        run_id: str,
        refresh: bool = False,
        on_failure: str = "stop",
        progress: bool | None = None,
        record_interval: float = 2.0,
        params: dict[str, str] | None = None,
        max_workers: int | None = None,
    ) -> None:
        self.graph = graph
        self.store = store
        self.executor = executor
        self.run_id = run_id
        self.refresh = refresh
        self.on_failure = on_failure
        self.record_interval = record_interval
        self._base_interval = record_interval
        self.capacity = max_workers or executor.capacity or 0

        tasks = graph.tasks
        self.status: dict[str, TaskStatus] = dict.fromkeys(tasks, TaskStatus.PENDING)
        self.dependents = graph.dependents()
        self.deps_left = {key: len(set(graph.dependencies(key))) for key in tasks}
        self.uses_left = {key: len(self.dependents[key]) for key in tasks}
        self.output_keys = {f._task.key for f in iter_futures(graph.outputs)}
        self.values: dict[str, Any] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, BaseException] = {}
        self.failure_order: list[str] = []
        self.hits: set[str] = set()
        self.running: dict[str, concurrent.futures.Future[Any]] = {}
        self.shared: set[str] = set()
        self.deadlines: list[tuple[float, str]] = []
        self.rerun_waiters: dict[str, list[str]] = collections.defaultdict(list)
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.ready: collections.deque[str] = collections.deque()
        self.stopping = False
        self.killed = False
        self.finished = threading.Event()
        # Dynamic tasks waiting for the tasks they returned: parent -> (value, keys).
        self.dynamic_pending: dict[str, tuple[Any, set[str]]] = {}
        self.waiting_parents: dict[str, list[str]] = collections.defaultdict(list)
        # Keys whose values must stay in memory (outputs of dynamic tasks).
        self.protected: set[str] = set()
        # map(max_parallel=...): running count and deferred keys per group.
        self.group_running: collections.Counter[str] = collections.Counter()
        self.group_deferred: dict[str, collections.deque[str]] = collections.defaultdict(
            collections.deque
        )
        self._listings: dict[str, set[str]] = {}
        self._announced = False
        # Keys another process computes: key -> (next check time, delay).
        self.external: dict[str, tuple[float, float]] = {}
        # Key digests announced by earlier runs still running: digest -> run id.
        self.claimed: dict[str, str] = {}

        self.record = RunRecord(
            run_id=run_id,
            workflow=graph.name,
            started=time.time(),
            executor=executor.name,
            store=store.url,
            params=params or {},
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        self.task_records: dict[str, TaskRecord] = {}
        for key, task in tasks.items():
            info = task.info
            assert info is not None
            self.task_records[key] = TaskRecord(
                key=key,
                job=task.job.name,
                code_version=info.code.digest,
                code_parts=info.code.parts,
                inputs=info.inputs,
                upstream=info.upstream,
                dependencies=graph.dependencies(key),
                scope=list(task.scope),
                not_cached_because=info.reason,
            )
        self.record.tasks = list(self.task_records.values())
        self._progress = _make_progress(progress, len(tasks), graph.name)
        self._last_flush = 0.0

    # -- public ----------------------------------------------------------------------

    def kill(self) -> None:
        """Ask the loop to cancel queued tasks and stop running ones."""
        self.events.put(("kill",))

    def run(self) -> None:
        """Run the graph; fills statuses, values and the run record."""
        try:
            self._plan()
            self._flush(force=True)
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised by Run
            self.record.error = f"{type(exc).__name__}: {exc}"
            self.errors.setdefault("__run__", exc)
            self.failure_order.append("__run__")
            for key, future in list(self.running.items()):
                self.executor.cancel(future)
                self._set(key, TaskStatus.CANCELLED)
        finally:
            self._close()

    # -- planning --------------------------------------------------------------------

    def _plan(self) -> None:
        for task in self.graph:
            self.executor.check_resources(task.job.name, task.job.resources)
        if not self.refresh:
            by_job: dict[str, list[str]] = collections.defaultdict(list)
            for key, task in self.graph.tasks.items():
                if task.info is not None and task.info.cacheable:
                    by_job[task.job.name].append(key)
            for job, keys in by_job.items():
                stored = self._listing(job)
                self.hits.update(k for k in keys if k.rpartition("-")[2] in stored)
        self._announce()
        for key in self.graph.tasks:
            if self.deps_left[key] == 0:
                self.ready.append(key)

    def _announce(self) -> None:
        planned = [
            key for key, task in self.graph.tasks.items()
            if task.info is not None and task.info.cacheable and key not in self.hits
        ]  # fmt: skip
        if not planned or not self.store.is_local:
            return
        announced = self.store.announce_run(self.run_id, planned)
        self._announced = True
        # Only runs announced earlier are waited for, with ties broken by run
        # id. The order is total, so no two runs wait for each other.
        mine = (announced, self.run_id)
        for run_id, (when, digests) in sorted(self.store.active_runs().items()):
            if (when, run_id) < mine:
                for digest in digests:
                    self.claimed.setdefault(digest, run_id)

    def _listing(self, job: str) -> set[str]:
        if job not in self._listings:
            self._listings[job] = self.store.cached_keys(job)
        return self._listings[job]

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            while self.ready and not self.stopping:
                if self.capacity and len(self.running) >= self.capacity:
                    break
                key = self.ready.popleft()
                if self.status[key] is not TaskStatus.PENDING:
                    continue
                limit = self.graph.tasks[key].limit
                if limit is not None and key not in self.hits:
                    group, maximum = limit
                    if self.group_running[group] >= maximum:
                        self.group_deferred[group].append(key)
                        continue
                    self.group_running[group] += 1
                self._start(key)
            if (
                not self.running
                and not self.shared
                and not self.dynamic_pending
                and not self.external
                and (self.stopping or not self.ready)
            ):
                if self.stopping or not self._load_outputs():
                    break
                continue
            self._wait_event()

    def _wait_event(self) -> None:
        now = time.time()
        timeout = max(0.0, self._last_flush + self.record_interval - now)
        if self.deadlines:
            timeout = min(timeout, max(0.0, self.deadlines[0][0] - now))
        if self.external:
            next_check = min(check for check, _ in self.external.values())
            timeout = min(timeout, max(0.0, next_check - now))
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            event = None
        if event is not None:
            self._handle(event)
            # Drain what else arrived, without blocking.
            while True:
                try:
                    self._handle(self.events.get_nowait())
                except queue.Empty:
                    break
        self._check_deadlines()
        if self.external:
            self._check_external()
        if time.time() - self._last_flush >= self.record_interval:
            if self.store.kill_requested(self.run_id):
                self._handle(("kill",))
            self._flush()

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "done":
            _, key, future = event
            if self.running.get(key) is not future:
                return  # abandoned after a timeout or a kill
            del self.running[key]
            try:
                outcome = future.result()
            except BaseException as exc:  # noqa: BLE001 - the executor failed
                outcome = Outcome(key, ok=False, error=exc, ended=time.time())
            self._complete(key, outcome)
        elif kind == "shared":
            _, key, future = event
            if self.status[key] is not TaskStatus.RUNNING or key not in self.shared:
                return
            self.shared.discard(key)
            outcome = future.result()
            if outcome is not None and outcome.ok:
                if outcome.value is not NO_VALUE:
                    self.values[key] = outcome.value
                self.manifests[key] = outcome.manifest
                self._set(key, TaskStatus.CACHED)
                self._finish(key)
            else:
                self.status[key] = TaskStatus.PENDING
                self._start(key)
        elif kind == "kill":
            self._kill()

    # -- starting tasks ----------------------------------------------------------------

    def _start(self, key: str) -> None:
        task = self.graph.tasks[key]
        if key in self.hits:
            self._set(key, TaskStatus.CACHED)
            self._finish(key)
            return

        cacheable = task.info is not None and task.info.cacheable
        if cacheable:
            owner = INFLIGHT.claim(self.store.url, key)
            if owner is not None:
                # Another run in this process computes the same key: wait for it.
                self.shared.add(key)
                self._set(key, TaskStatus.RUNNING)
                owner.add_done_callback(lambda f, k=key: self.events.put(("shared", k, f)))
                return
        self._submit(key)

    def _submit(self, key: str) -> None:
        """Hand the task to the executor, unless another process computes it."""
        task = self.graph.tasks[key]
        cacheable = task.info is not None and task.info.cacheable
        if key.rpartition("-")[2] in self.claimed:
            # An earlier run in another process announced this key: look for
            # its manifest, with backoff, instead of computing it a second time.
            # Runs of this process must not wait on this one meanwhile (they
            # may be the ones the other process's run depends on), so the
            # in-process claim is given up.
            INFLIGHT.release(self.store.url, key, None)
            self._set(key, TaskStatus.RUNNING)
            self.external[key] = (time.time() + 0.05, 0.05)
            return

        has_refs = False

        def resolve(future: Future[Any]) -> Any:
            nonlocal has_refs
            upstream = future._task.key
            assert upstream is not None
            if upstream in self.values:
                value = self.values[upstream]
                from .graph import apply_path

                return apply_path(value, future._path)
            has_refs = True
            return Ref(future._task.job.name, upstream, future._path)

        from .graph import substitute

        args = tuple(substitute(a, resolve) for a in task.args)
        kwargs = {k: substitute(v, resolve) for k, v in task.kwargs.items()}
        info = task.info
        assert info is not None
        spec = TaskSpec(
            key=key,
            job=task.job,
            args=args,
            kwargs=kwargs,
            store=self.store,
            meta={
                "run_id": self.run_id,
                "code_version": info.code.digest,
                "code_parts": info.code.parts,
                "inputs": info.inputs,
                "upstream": info.upstream,
            },
            # A dynamic job returns futures: the scheduler stores its value
            # once they are resolved, so the worker sends it back as is.
            save=not task.job.dynamic and (cacheable or not self.executor.in_process),
            inline_limit=None if self.executor.in_process or task.job.dynamic else INLINE_LIMIT,
            has_refs=has_refs,
        )
        self._release_inputs(key)
        self._set(key, TaskStatus.RUNNING)
        try:
            future = self.executor.submit(spec, task.job.resources)
        except BaseException as exc:  # noqa: BLE001 - e.g. the spec cannot be pickled
            self._complete(key, Outcome(key, ok=False, error=exc, ended=time.time()))
            return
        self.running[key] = future
        if task.job.timeout is not None:
            heapq.heappush(self.deadlines, (time.time() + task.job.timeout, key))
        future.add_done_callback(lambda f, k=key: self.events.put(("done", k, f)))

    def _release_inputs(self, key: str) -> None:
        for dep in set(self.graph.dependencies(key)):
            self.uses_left[dep] -= 1
            if self.uses_left[dep] <= 0 and dep not in self.output_keys:
                if dep not in self.protected:
                    self.values.pop(dep, None)

    # -- finishing tasks ---------------------------------------------------------------

    def _complete(self, key: str, outcome: Outcome) -> None:
        record = self.task_records[key]
        record.attempts = outcome.attempts
        if outcome.started:
            record.started = outcome.started
        record.ended = outcome.ended or time.time()
        task = self.graph.tasks[key]

        if outcome.missing is not None and outcome.missing in self.graph.tasks:
            # Give up the claim on this key: the task starts again, and claims
            # it again, once the missing input has been recomputed.
            INFLIGHT.release(self.store.url, key, None)
            self._rerun_missing(outcome.missing, key, outcome.error)
            return

        if outcome.ok and task.job.dynamic:
            INFLIGHT.release(self.store.url, key, None)
            self._expand(key, outcome.value)
            return

        if outcome.ok:
            INFLIGHT.release(self.store.url, key, outcome)
            if outcome.value is not NO_VALUE:
                self.values[key] = outcome.value
            if outcome.manifest is not None:
                self.manifests[key] = outcome.manifest
                record.size = outcome.manifest.get("size")
            self._set(key, TaskStatus.DONE)
            self._finish(key)
            return

        INFLIGHT.release(self.store.url, key, None)
        error = outcome.error or RuntimeError(f"task {key} failed without an exception")
        if outcome.cause is not None and error.__cause__ is None:
            error.__cause__ = outcome.cause
        add_note(error, f"pipedsl: job {task.job.name!r} failed in task {key} (run {self.run_id})")
        record.error = f"{type(error).__name__}: {error}"
        record.traceback = outcome.traceback_text or None
        self._fail(key, error)

    def _fail(self, key: str, error: BaseException) -> None:
        self.errors[key] = error
        self._set(key, TaskStatus.FAILED)
        self._release_group(key)
        dependents = self.dependents[key]
        if dependents and all(self.graph.tasks[d].tolerant for d in dependents):
            # Every dependent is the gather task of a tolerant map: it receives
            # the failure as a value, and the run goes on.
            from .dynamic import ElementFailed

            self.values[key] = ElementFailed(f"{type(error).__name__}: {error}")
            self._finish(key)
            return
        self.failure_order.append(key)
        self._skip_dependents(key)
        for parent in self.waiting_parents.pop(key, []):
            if self.status[parent] is TaskStatus.RUNNING:
                self.dynamic_pending.pop(parent, None)
                self._fail(parent, error)
        if self.on_failure == "stop":
            self.stopping = True

    def _release_group(self, key: str) -> None:
        limit = self.graph.tasks[key].limit
        if limit is None or key in self.hits:
            return
        group = limit[0]
        self.group_running[group] -= 1
        if self.group_deferred[group]:
            self.ready.append(self.group_deferred[group].popleft())

    # -- dynamic tasks -----------------------------------------------------------------

    def _expand(self, key: str, value: Any) -> None:
        """Add the tasks a dynamic task returned to the run, then wait for them."""
        futures = list(iter_futures(value))
        if not futures:
            self._resolve_dynamic(key, value)
            return
        sub = Graph.build([f._task for f in futures])
        for new_key, task in sub.tasks.items():
            if new_key not in self.graph.tasks:
                self._add_task(new_key, task)
        waiting = set()
        for future in futures:
            upstream = future._task.key
            assert upstream is not None
            self.protected.add(upstream)
            if self.status[upstream] not in (TaskStatus.DONE, TaskStatus.CACHED):
                waiting.add(upstream)
                self.waiting_parents[upstream].append(key)
        self.dynamic_pending[key] = (value, waiting)
        if not waiting:
            self._resolve_dynamic(key, value)

    def _add_task(self, key: str, task: Any) -> None:
        info = task.info
        assert info is not None
        self.graph.tasks[key] = task
        self.status[key] = TaskStatus.PENDING
        self.dependents[key] = []
        self.uses_left[key] = 0
        dependencies = list(dict.fromkeys(d.key for d in task.deps))
        unfinished = 0
        for dep in dependencies:
            self.dependents[dep].append(key)
            self.uses_left[dep] += 1
            if self.status[dep] not in (TaskStatus.DONE, TaskStatus.CACHED):
                unfinished += 1
        self.deps_left[key] = unfinished
        record = TaskRecord(
            key=key,
            job=task.job.name,
            code_version=info.code.digest,
            code_parts=info.code.parts,
            inputs=info.inputs,
            upstream=info.upstream,
            dependencies=dependencies,
            scope=list(task.scope),
            not_cached_because=info.reason,
        )
        self.task_records[key] = record
        self.record.tasks.append(record)
        if not self.refresh and info.cacheable:
            if key.rpartition("-")[2] in self._listing(task.job.name):
                self.hits.add(key)
        if self._progress is not None:
            self._progress.grow()
        if any(self.status[d] in (TaskStatus.FAILED, TaskStatus.SKIPPED) for d in dependencies):
            self._set(key, TaskStatus.SKIPPED)
        elif unfinished == 0:
            self.ready.append(key)

    def _value_of(self, key: str) -> Any:
        if key not in self.values:
            task = self.graph.tasks[key]
            manifest = self.manifests.get(key) or self.store.read_manifest(task.job.name, key)
            if manifest is None:
                from .errors import ArtifactMissing

                raise ArtifactMissing(key, "its manifest is gone")
            self.values[key] = load_checked(self.store, manifest, key)
        return self.values[key]

    def _resolve_dynamic(self, key: str, value: Any) -> None:
        from .graph import apply_path, substitute

        self.dynamic_pending.pop(key, None)
        task = self.graph.tasks[key]
        try:
            resolved = substitute(
                value, lambda f: apply_path(self._value_of(f._task.key), f._path)
            )
            if task.info is not None and task.info.cacheable:
                manifest = self.store.save(
                    task.job.name, key, resolved, {"run_id": self.run_id,
                    "code_version": task.info.code.digest, "code_parts": task.info.code.parts,
                    "inputs": task.info.inputs, "upstream": task.info.upstream},
                )  # fmt: skip
                self.manifests[key] = manifest
                self.task_records[key].size = manifest.get("size")
        except Exception as exc:  # noqa: BLE001 - reported as the task's failure
            self._fail(key, exc)
            return
        self.values[key] = resolved
        self.task_records[key].ended = time.time()
        self._set(key, TaskStatus.DONE)
        self._finish(key)

    def _skip_dependents(self, key: str) -> None:
        stack = list(self.dependents[key])
        while stack:
            dependent = stack.pop()
            if self.status[dependent] is TaskStatus.PENDING:
                self._set(dependent, TaskStatus.SKIPPED)
                stack.extend(self.dependents[dependent])

    def _rerun_missing(self, missing: str, waiter: str, error: BaseException | None) -> None:
        warnings.warn(
            f"pipedsl: cached output of {missing} is unusable ({error}); running it again",
            RuntimeWarning,
            stacklevel=2,
        )
        self.hits.discard(missing)
        self.store.delete_entry(self.graph.tasks[missing].job.name, missing)
        self.status[waiter] = TaskStatus.PENDING
        self.rerun_waiters[missing].append(waiter)
        if self.status[missing] is not TaskStatus.RUNNING:
            self.status[missing] = TaskStatus.PENDING
            self._start(missing)

    def _finish(self, key: str) -> None:
        if self.status[key] is not TaskStatus.FAILED:
            self._release_group(key)
        for parent in self.waiting_parents.pop(key, []):
            pending = self.dynamic_pending.get(parent)
            if pending is not None:
                pending[1].discard(key)
                if not pending[1]:
                    self._resolve_dynamic(parent, pending[0])
        waiters = self.rerun_waiters.pop(key, None)
        if waiters is not None:
            # A re-run of a cached task: its dependents were counted already.
            self.ready.extend(waiters)
            return
        for dependent in self.dependents[key]:
            self.deps_left[dependent] -= 1
            if self.deps_left[dependent] == 0 and self.status[dependent] is TaskStatus.PENDING:
                self.ready.append(dependent)

    def _check_external(self) -> None:
        if self.stopping:
            for key in self.external:
                self._set(key, TaskStatus.CANCELLED)
            self.external.clear()
            return
        now = time.time()
        for key, (check, delay) in list(self.external.items()):
            if check > now:
                continue
            task = self.graph.tasks[key]
            manifest = self.store.read_manifest(task.job.name, key)
            if manifest is not None:
                del self.external[key]
                self.manifests[key] = manifest
                self.hits.add(key)
                self._set(key, TaskStatus.CACHED)
                self._finish(key)
            elif self.claimed.get(key.rpartition("-")[2]) not in self.store.active_runs():
                # The other run ended without a result: compute it here.
                del self.external[key]
                self.claimed.pop(key.rpartition("-")[2], None)
                self.status[key] = TaskStatus.PENDING
                self._submit(key)
            else:
                delay = min(delay * 1.5, 1.0)
                self.external[key] = (now + delay, delay)

    def _check_deadlines(self) -> None:
        now = time.time()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, key = heapq.heappop(self.deadlines)
            future = self.running.pop(key, None)
            if future is None:
                continue
            self.executor.cancel(future)
            job = self.graph.tasks[key].job
            error = TaskTimeout(
                f"job {job.name!r} timed out after {job.timeout:g}s in task {key}; raise "
                f"its timeout with @job(timeout=...) if it needs longer"
            )
            record = self.task_records[key]
            record.ended = now
            record.error = f"TaskTimeout: {error}"
            INFLIGHT.release(self.store.url, key, None)
            self._fail(key, error)

    def _kill(self) -> None:
        self.killed = True
        self.stopping = True
        for key, future in list(self.running.items()):
            self.executor.cancel(future)
            self._set(key, TaskStatus.CANCELLED)
            INFLIGHT.release(self.store.url, key, None)
        self.running.clear()
        for key in self.shared:
            self._set(key, TaskStatus.CANCELLED)
        self.shared.clear()
        for key in self.external:
            self._set(key, TaskStatus.CANCELLED)
        self.external.clear()

    # -- outputs ---------------------------------------------------------------------

    def _load_outputs(self) -> bool:
        """Load cached outputs into memory; return True if a task must re-run."""
        for key in self.output_keys:
            if key in self.values or self.status[key] not in (TaskStatus.CACHED, TaskStatus.DONE):
                continue
            task = self.graph.tasks[key]
            manifest = self.manifests.get(key) or self.store.read_manifest(task.job.name, key)
            try:
                if manifest is None:
                    from .errors import ArtifactMissing

                    raise ArtifactMissing(key, "its manifest is gone")
                self.values[key] = self.store.load(manifest)
            except Exception as exc:  # noqa: BLE001 - ArtifactMissing or a corrupt payload
                warnings.warn(
                    f"pipedsl: cached output of {key} is unusable ({exc}); running it again",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.hits.discard(key)
                self.store.delete_entry(task.job.name, key)
                self.status[key] = TaskStatus.PENDING
                self._start(key)
                return True
        return False

    # -- state and records -----------------------------------------------------------

    def _set(self, key: str, status: TaskStatus) -> None:
        previous = self.status[key]
        self.status[key] = status
        record = self.task_records[key]
        record.status = status.value
        now = time.time()
        if status is TaskStatus.RUNNING:
            record.started = now
            record.cached = False
        elif status is TaskStatus.CACHED:
            record.cached = True
            record.started = record.ended = now
        elif status.terminal and record.ended is None:
            record.ended = now
        if logger.isEnabledFor(logging.INFO):
            duration = record.duration
            logger.info(
                "%-9s %s %s%s",
                status.value,
                self.graph.tasks[key].job.name,
                key.rpartition("-")[2][:8],
                f" {duration:.3f}s" if duration is not None and status.terminal else "",
            )
        if self._progress is not None and status.terminal and not previous.terminal:
            self._progress.update(status)

    def _flush(self, force: bool = False) -> None:
        started = time.time()
        try:
            self.store.write_record(self.run_id, self.record.to_dict())
        except Exception as exc:  # noqa: BLE001 - a record write must not fail the run
            logger.warning("could not write run record %s: %s", self.run_id, exc)
        self._last_flush = time.time()
        # Large records (10,000 tasks take about 0.1 s to write) are written
        # less often, so periodic writes stay under about 5 % of the run.
        self.record_interval = max(self._base_interval, 20 * (self._last_flush - started))

    def _close(self) -> None:
        for key, status in self.status.items():
            if status is TaskStatus.PENDING:
                self._set(key, TaskStatus.CANCELLED)
            elif status is TaskStatus.RUNNING:
                self._set(key, TaskStatus.CANCELLED)
        if self.killed:
            self.record.status = "cancelled"
        elif self.failure_order:
            self.record.status = "failed"
            if self.record.error is None:
                first = self.errors[self.failure_order[0]]
                self.record.error = f"{type(first).__name__}: {first}"
        else:
            self.record.status = "done"
        self.record.ended = time.time()
        if self._announced:
            self.store.retire_run(self.run_id)
        self._flush(force=True)
        if self._progress is not None:
            self._progress.close()
        self.finished.set()

    def first_error(self) -> BaseException:
        if self.killed:
            done = sum(
                1 for s in self.status.values() if s in (TaskStatus.DONE, TaskStatus.CACHED)
            )
            return RunCancelled(
                f"run {self.run_id} of {self.graph.name!r} was killed; {done} finished "
                "tasks are stored and a re-run reuses them"
            )
        error = self.errors[self.failure_order[0]]
        others = [k for k in self.failure_order[1:] if k != "__run__"]
        if others:
            add_note(error, f"pipedsl: {len(others)} more task(s) failed: {', '.join(others)}")
        return error


class _Progress:
    def __init__(self, total: int, name: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=name, unit="task", leave=True)
        self.counts: collections.Counter[str] = collections.Counter()

    def grow(self) -> None:
        self.bar.total += 1
        self.bar.refresh()

    def update(self, status: TaskStatus) -> None:
        self.counts[status.value] += 1
        self.bar.update(1)
        self.bar.set_postfix(dict(self.counts), refresh=False)

    def close(self) -> None:
        self.bar.close()


def _make_progress(progress: bool | None, total: int, name: str) -> _Progress | None:
    if progress is False:
        return None
    if progress is None:
        import sys

        interactive = "ipykernel" in sys.modules or sys.stderr.isatty()
        if not interactive or total <= 5:
            return None
    try:
        return _Progress(total, name)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
