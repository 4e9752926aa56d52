"""FedML's class-based ``Workflow``, built on pipedsl's scheduler.

:class:`Workflow` keeps the names and call shapes of ``fedml.workflow.Workflow``
(fedml 0.9.6): ``add_job(job, dependencies=[...])``, ``set_workflow_input``,
``run``, ``get_workflow_status``, ``get_job_status``, ``get_workflow_output``,
``get_all_jobs_outputs`` and ``metadata``. Underneath, each job is a pipedsl
task, so it starts as soon as its own dependencies finish, every root job
receives the workflow input, and deterministic jobs are cached in the
artifact store. ``run()`` calls no FedML cloud API.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..dsl import Job as FunctionJob
from ..errors import GraphError, RunCancelled, RunError
from ..graph import Future, Graph
from ..runs import Run, start_graph
from .jobs import Job, JobCancelled, JobNotStarted, JobStatus, PollPolicy, RunContext, class_job_task

__all__ = ["AdjacencyList", "Metadata", "Node", "Workflow", "WorkflowFailed"]

logger = logging.getLogger(__name__)

AnyJob = Job | FunctionJob[Any, Any]

_RUN_OPTIONS = frozenset(
    {"executor", "store", "storage_options", "refresh", "progress", "max_workers"}
)

# pipedsl task status -> JobStatus reported by get_job_status().
_TASK_TO_JOB_STATUS = {
    "pending": JobStatus.PROVISIONING,
    "running": JobStatus.RUNNING,
    "done": JobStatus.FINISHED,
    "cached": JobStatus.FINISHED,
    "failed": JobStatus.FAILED,
    "skipped": JobStatus.FAILED,
    "cancelled": JobStatus.FAILED,
}


@dataclasses.dataclass(frozen=True)
class Node:
    """A job of the workflow graph, as in FedML's metadata."""

    name: str
    job: Any

    def __repr__(self) -> str:
        return f"Node(name={self.name!r})"


@dataclasses.dataclass(frozen=True)
class Metadata:
    """The graph of a workflow: nodes, dependencies and topological levels.

    ``graph`` maps each node to the set of nodes it depends on.
    ``topological_order`` is a tuple of sets, as FedML's ``toposort`` returns
    it: the nodes of each set depend only on nodes of earlier sets.
    """

    nodes: frozenset[Node]
    topological_order: tuple[frozenset[Node], ...]
    graph: Mapping[Node, frozenset[Node]]


@dataclasses.dataclass(frozen=True)
class AdjacencyList:
    """A job and the jobs it depends on."""

    job: Any
    dependencies: tuple[Any, ...]


class WorkflowFailed(RunError):
    """A workflow run ended with failed jobs; names each of them.

    Attributes
    ----------
    failed:
        ``{job name: error text}`` of the jobs that failed on their own.
    killed:
        Names of running jobs killed because another job failed.
    not_started:
        Names of jobs that never started.
    """

    def __init__(
        self,
        workflow: str,
        failed: dict[str, str],
        killed: list[str],
        not_started: list[str],
    ) -> None:
        lines = [f"workflow {workflow!r} failed: {len(failed)} job(s) failed"]
        lines += [f"  job {name!r}: {error}" for name, error in failed.items()]
        if killed:
            lines.append(f"  killed while running: {', '.join(killed)}")
        if not_started:
            lines.append(f"  not started: {', '.join(not_started)}")
        super().__init__("\n".join(lines))
        self.workflow = workflow
        self.failed = failed
        self.killed = killed
        self.not_started = not_started

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.workflow, self.failed, self.killed, self.not_started))


def _job_types_text(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__} {value!r:.120}"


class Workflow:
    """Jobs linked by dependencies, run by pipedsl's scheduler.

    Parameters
    ----------
    name:
        Name of the workflow in run records and logs.
    loop:
        ``True`` runs the whole workflow again after each run, until
        ``max_iterations`` runs or until ``until(output)`` returns true.
        Without either stop rule it loops until :meth:`kill`, as FedML does.
    api_key, workflow_type:
        Accepted for compatibility with FedML and stored; ``run()`` sends
        nothing to FedML's cloud.
    interval:
        Seconds to wait between loop iterations.
    max_iterations:
        Stop looping after this many runs.
    until:
        ``until(output) -> bool`` is called with :meth:`get_workflow_output`
        after each run; a true result stops the loop.
    poll_interval, max_poll_interval:
        First and maximum wait in seconds between ``status()`` calls of a
        running job; the wait doubles after each unchanged status.
    undetermined_timeout:
        Seconds a job may report UNDETERMINED before it counts as failed.
    executor, store, storage_options, max_workers, refresh, progress:
        Run options of pipedsl (see :meth:`pipedsl.Workflow.run`). The default
        executor is ``"threads"``, since class-based jobs mostly wait on
        remote work.

    Examples
    --------
    >>> from pipedsl.fedml import Job, JobStatus, Workflow
    >>> class Add(Job):
    ...     def __init__(self, name, amount):
    ...         super().__init__(name)
    ...         self.amount = amount
    ...     def run(self):
    ...         inputs = self.input_data_dict
    ...         start = inputs["x"] if "x" in inputs else inputs["first"]["x"]
    ...         self.output_data_dict = {"x": start + self.amount}
    ...     def status(self):
    ...         return JobStatus.FINISHED
    ...     def kill(self):
    ...         pass
    >>> first, second = Add("first", 1), Add("second", 10)
    >>> flow = Workflow(name="adder", store="memory://doctest-fedml-wf")
    >>> flow.add_job(first)
    >>> flow.add_job(second, dependencies=[first])
    >>> flow.set_workflow_input({"x": 5})
    >>> _ = flow.run()
    >>> flow.get_workflow_output()
    {'x': 16}
    >>> flow.get_workflow_status()
    <JobStatus.FINISHED: 'FINISHED'>
    """

    def __init__(
        self,
        name: str,
        loop: bool = False,
        api_key: str | None = None,
        workflow_type: Any = None,
        *,
        interval: float = 0.0,
        max_iterations: int | None = None,
        until: Callable[[Any], bool] | None = None,
        poll_interval: float = 0.05,
        max_poll_interval: float = 5.0,
        undetermined_timeout: float = 60.0,
        executor: Any = "threads",
        store: Any = None,
        storage_options: dict[str, Any] | None = None,
        max_workers: int | None = None,
        refresh: bool = False,
        progress: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a workflow name must be a non-empty string, got {name!r}")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
            raise ValueError(f"interval must be a non-negative number of seconds, got {interval!r}")
        if max_iterations is not None and (
            isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1
        ):
            raise ValueError(f"max_iterations must be a positive int or None, got {max_iterations!r}")
        if until is not None and not callable(until):
            raise TypeError(
                f"until must be a function of the workflow output returning a bool, "
                f"got {_job_types_text(until)}"
            )

        self.name = name
        self._loop = bool(loop)
        self.api_key = api_key
        self.workflow_type = workflow_type
        self.interval = float(interval)
        self.max_iterations = max_iterations
        self.until = until
        self.poll_policy = PollPolicy(poll_interval, max_poll_interval, undetermined_timeout)
        self.options: dict[str, Any] = {
            "executor": executor,
            "store": store,
            "storage_options": storage_options,
            "max_workers": max_workers,
            "refresh": refresh,
            "progress": progress,
        }

        self.jobs: dict[str, AdjacencyList] = {}
        self.input: dict[Any, Any] = {}
        self.iterations = 0
        self.last_run: Run[Any] | None = None
        self._fixed_inputs: dict[str, dict[Any, Any]] = {}
        self._metadata: Metadata | None = None
        self._keys: dict[str, str] = {}
        self._outputs: dict[str, Any] = {}
        self._context: RunContext | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self.jobs)} jobs>"

    # -- FedML's properties ---------------------------------------------------------

    @property
    def loop(self) -> bool:
        """Whether :meth:`run` repeats the workflow."""
        return self._loop

    @loop.setter
    def loop(self, value: bool) -> None:
        self._loop = bool(value)

    @property
    def metadata(self) -> Metadata | None:
        """Nodes, dependency graph and topological levels of the last run."""
        return self._metadata

    @staticmethod
    def get_workflow(workflow_name: str | None = None) -> Workflow:
        """Return an empty workflow named ``workflow_name`` or ``$FEDML_CURRENT_WORKFLOW``."""
        name = workflow_name or os.environ.get("FEDML_CURRENT_WORKFLOW")
        if not name:
            raise ValueError(
                "no workflow name given and FEDML_CURRENT_WORKFLOW is not set; "
                "pass get_workflow('name')"
            )
        return Workflow(name)

    # -- building ---------------------------------------------------------------------

    def add_job(self, job: AnyJob, dependencies: Sequence[AnyJob] | None = None) -> None:
        """Add ``job``, which starts once every job in ``dependencies`` finished.

        ``job`` is a :class:`pipedsl.fedml.Job` or a pipedsl ``@job``
        function. A class-based job receives each dependency's output under
        the dependency's name in ``input_data_dict``; a function job receives
        it as the keyword argument of that name. Jobs may be added in any
        order: dependencies on jobs never added, and cycles, are reported by
        :meth:`run`.

        Raises
        ------
        TypeError
            ``job`` or a dependency is not a job, or ``dependencies`` is not a list.
        GraphError
            A job of the same name was added already, or the job depends on itself.
        """
        if not isinstance(job, (Job, FunctionJob)):
            raise TypeError(
                f"workflow {self.name!r} takes pipedsl.fedml.Job instances or pipedsl "
                f"@job functions, got {_job_types_text(job)}"
            )
        if dependencies is None:
            dependencies = []
        if isinstance(dependencies, (Job, FunctionJob)) or not isinstance(
            dependencies, (list, tuple)
        ):
            raise TypeError(
                f"dependencies of job {job.name!r} must be a list of jobs, got "
                f"{_job_types_text(dependencies)}; pass dependencies=[other_job]"
            )
        for dependency in dependencies:
            if not isinstance(dependency, (Job, FunctionJob)):
                raise TypeError(
                    f"dependency of job {job.name!r} is not a job: "
                    f"{_job_types_text(dependency)}; pass the job objects added with add_job"
                )
            if dependency is job:
                raise GraphError(
                    f"job {job.name!r} cannot depend on itself in workflow {self.name!r}"
                )
        if job.name in self.jobs:
            raise GraphError(
                f"workflow {self.name!r} already has a job named {job.name!r}; "
                "give each job a unique name"
            )
        unique: dict[int, AnyJob] = {}
        for dependency in dependencies:
            unique.setdefault(id(dependency), dependency)
        self.jobs[job.name] = AdjacencyList(job, tuple(unique.values()))
        if isinstance(job, Job):
            self._fixed_inputs[job.name] = dict(job.input_data_dict)

    def set_workflow_input(self, input: dict[Any, Any]) -> None:  # noqa: A002
        """Set the input dict that every root job (one without dependencies) receives."""
        if not isinstance(input, Mapping):
            raise TypeError(
                f"the input of workflow {self.name!r} must be a dict, got "
                f"{_job_types_text(input)}"
            )
        self.input = dict(input)

    def get_job_dependencies(self, job_name: str) -> list[AnyJob]:
        """Return the jobs that job ``job_name`` depends on."""
        return list(self._entry(job_name).dependencies)

    # -- validation -------------------------------------------------------------------

    def _entry(self, job_name: str) -> AdjacencyList:
        entry = self.jobs.get(job_name)
        if entry is None:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise GraphError(
                f"workflow {self.name!r} has no job named {job_name!r}; its jobs: {known}"
            )
        return entry

    def _resolve(self) -> Metadata:
        """Check the dependencies and return the graph with its topological levels."""
        if not self.jobs:
            raise GraphError(
                f"workflow {self.name!r} has no jobs; add them with add_job() before run()"
            )
        for name, entry in self.jobs.items():
            for dependency in entry.dependencies:
                added = self.jobs.get(dependency.name)
                if added is None:
                    raise GraphError(
                        f"job {name!r} depends on job {dependency.name!r}, which was "
                        f"never added to workflow {self.name!r}; call "
                        f"add_job({dependency.name}) before run()"
                    )
                if added.job is not dependency:
                    raise GraphError(
                        f"job {name!r} depends on a job named {dependency.name!r} that "
                        f"is not the one added to workflow {self.name!r}; pass the "
                        "same object to add_job and to dependencies"
                    )
        nodes = {name: Node(name, entry.job) for name, entry in self.jobs.items()}
        waiting = {name: {d.name for d in entry.dependencies} for name, entry in self.jobs.items()}
        levels: list[frozenset[Node]] = []
        placed: set[str] = set()
        while len(placed) < len(nodes):
            level = [n for n, deps in waiting.items() if n not in placed and deps <= placed]
            if not level:
                raise GraphError(
                    f"workflow {self.name!r} has a dependency cycle: "
                    f"{' -> '.join(self._find_cycle(waiting, placed))}; remove one of "
                    "these dependencies"
                )
            levels.append(frozenset(nodes[n] for n in level))
            placed.update(level)
        graph = {
            nodes[name]: frozenset(nodes[d] for d in deps) for name, deps in waiting.items()
        }
        return Metadata(frozenset(nodes.values()), tuple(levels), types.MappingProxyType(graph))

    @staticmethod
    def _find_cycle(waiting: dict[str, set[str]], placed: set[str]) -> list[str]:
        start = sorted(n for n in waiting if n not in placed)[0]
        path = [start]
        seen = {start: 0}
        current = start
        while True:
            current = sorted(d for d in waiting[current] if d not in placed)[0]
            if current in seen:
                return path[seen[current] :] + [current]
            seen[current] = len(path)
            path.append(current)

    # -- running ----------------------------------------------------------------------

    def run(self, **options: Any) -> Run[Any]:
        """Run the workflow (repeatedly in loop mode) and return the last :class:`Run`.

        ``options`` override the run options given to the constructor
        (``executor``, ``store``, ``storage_options``, ``refresh``,
        ``progress``, ``max_workers``).

        Raises
        ------
        GraphError
            A job depends on a job never added, or the dependencies form a cycle.
        WorkflowFailed
            A job failed; the error names each failed job, and running jobs
            were killed with ``kill()``.
        RunCancelled
            :meth:`kill` was called.
        """
        unknown = set(options) - _RUN_OPTIONS
        if unknown:
            raise TypeError(
                f"unknown run option(s) {sorted(unknown)} for workflow {self.name!r}; "
                f"valid options: {sorted(_RUN_OPTIONS)}"
            )
        merged = {**self.options, **options}
        self._stop.clear()
        self.iterations = 0
        while True:
            run = self._run_once(merged)
            self.iterations += 1
            if not self.loop:
                return run
            if self.max_iterations is not None and self.iterations >= self.max_iterations:
                logger.info("workflow %s stops after %d iterations", self.name, self.iterations)
                return run
            if self.until is not None and self.until(self.get_workflow_output()):
                logger.info(
                    "workflow %s stops: until() is true after iteration %d",
                    self.name,
                    self.iterations,
                )
                return run
            if self._stop.wait(self.interval):
                raise RunCancelled(
                    f"workflow {self.name!r} was killed after {self.iterations} iteration(s)"
                )

    def kill(self) -> None:
        """Kill the running jobs (``kill()`` of each) and stop the loop."""
        self._stop.set()
        with self._lock:
            context, run = self._context, self.last_run
        if context is not None:
            context.stop(f"workflow {self.name!r} was killed")
        if run is not None:
            run.kill()

    def _trace(self, metadata: Metadata, context: RunContext) -> dict[str, Future[Any]]:
        futures: dict[str, Future[Any]] = {}
        for level in metadata.topological_order:
            for node in sorted(level, key=lambda n: n.name):
                entry = self.jobs[node.name]
                upstream = {d.name: futures[d.name] for d in entry.dependencies}
                received = upstream if entry.dependencies else dict(self.input)
                if isinstance(entry.job, Job):
                    inputs = {**self._fixed_inputs.get(node.name, {}), **received}
                    task = class_job_task(entry.job, self.poll_policy, context)
                    futures[node.name] = task.call(inputs)
                else:
                    futures[node.name] = self._call_function_job(entry.job, received)
        return futures

    def _call_function_job(self, job: FunctionJob[Any, Any], kwargs: dict[Any, Any]) -> Future[Any]:
        try:
            return job(**kwargs)
        except TypeError as exc:
            source = "its dependencies" if self.jobs[job.name].dependencies else "the workflow input"
            raise GraphError(
                f"function job {job.name!r} cannot take {sorted(kwargs)!r} from {source} as "
                f"keyword arguments ({exc}); name its parameters after its dependencies, "
                "or after the keys of the workflow input for a root job"
            ) from None

    def _run_once(self, options: dict[str, Any]) -> Run[Any]:
        metadata = self._resolve()
        context = RunContext(kill_on_failure=True)
        futures = self._trace(metadata, context)
        graph = Graph.build([], outputs=futures, name=self.name)
        self._metadata = metadata
        self._keys = {name: future.key for name, future in futures.items()}
        self._outputs = {}
        params = {"input": repr(self.input)[:200]}
        run_options = {"on_failure": "stop", **options}
        with self._lock:
            self._context = context
            self.last_run = start_graph(graph, run_options, params)
            run = self.last_run
        if self._stop.is_set():
            self.kill()
        run.wait()
        try:
            outputs = run.result()
        except BaseException as exc:
            self._collect_partial_outputs()
            if isinstance(exc, RunCancelled) or self._stop.is_set():
                raise
            raise self._failure(run) from exc
        for name, value in outputs.items():
            job = self.jobs[name].job
            if isinstance(job, Job):
                job.output_data_dict = value
        self._outputs = dict(outputs)
        return run

    def _collect_partial_outputs(self) -> None:
        statuses = self._statuses()
        for name, entry in self.jobs.items():
            if isinstance(entry.job, Job) and statuses.get(name) == "done":
                self._outputs[name] = entry.job.get_outputs()

    def _failure(self, run: Run[Any]) -> WorkflowFailed:
        records = {record.key: record for record in run.tasks}
        failed: dict[str, str] = {}
        killed: list[str] = []
        not_started: list[str] = []
        for name, key in self._keys.items():
            record = records[key]
            if record.status == "failed":
                error = record.error or "failed without an error message"
                if error.startswith(JobNotStarted.__name__ + ":"):
                    not_started.append(name)
                elif error.startswith(JobCancelled.__name__ + ":"):
                    killed.append(name)
                else:
                    failed[name] = error
            elif record.status in ("skipped", "cancelled", "pending"):
                not_started.append(name)
        return WorkflowFailed(self.name, failed, killed, not_started)

    # -- status and outputs -----------------------------------------------------------

    def _statuses(self) -> dict[str, str]:
        if self.last_run is None:
            return {}
        by_key = self.last_run.statuses()
        return {name: by_key.get(key, "pending") for name, key in self._keys.items()}

    def get_job_status(self, job_name: str) -> JobStatus:
        """Return the status of job ``job_name`` in the current or last run.

        A job waiting for its dependencies is PROVISIONING; one that was
        skipped or killed is FAILED; before the first run every job is
        UNDETERMINED.
        """
        self._entry(job_name)
        status = self._statuses().get(job_name)
        if status is None:
            return JobStatus.UNDETERMINED
        return _TASK_TO_JOB_STATUS[status]

    def get_workflow_status(self) -> JobStatus:
        """Return RUNNING, FINISHED or FAILED for the current or last run.

        Before the first run the status is UNDETERMINED.
        """
        run = self.last_run
        if run is None:
            return JobStatus.UNDETERMINED
        status = run.status
        if status == "running":
            return JobStatus.RUNNING
        if status == "done":
            return JobStatus.FINISHED
        return JobStatus.FAILED

    def get_workflow_output(self) -> Any:
        """Return the output of the leaf job, or ``{name: output}`` for several leaves.

        A leaf job is one no other job depends on. With one leaf, the result
        is that job's output dict, as in FedML. With several leaves the
        result is a dict keyed by leaf job name, where FedML returned the
        output of whichever job came last in its topological order.
        """
        if self._metadata is None:
            raise RunError(f"workflow {self.name!r} has not run yet; call run() first")
        required = {d.name for entry in self.jobs.values() for d in entry.dependencies}
        leaves = [name for name in self._keys if name not in required]
        missing = [name for name in leaves if name not in self._outputs]
        if missing:
            raise RunError(
                f"workflow {self.name!r} has no output of job(s) {missing}; they did not "
                f"finish (workflow status {self.get_workflow_status().value})"
            )
        if len(leaves) == 1:
            return self._outputs[leaves[0]]
        return {name: self._outputs[name] for name in leaves}

    def get_all_jobs_outputs(self) -> dict[str, Any]:
        """Return ``{job name: output}`` of every job that finished in the last run."""
        return dict(self._outputs)

    def job_timings(self) -> dict[str, tuple[float | None, float | None]]:
        """Return ``{job name: (started, ended)}`` of the last run, in epoch seconds."""
        if self.last_run is None:
            return {}
        records = {record.key: record for record in self.last_run.tasks}
        return {
            name: (records[key].started, records[key].ended) for name, key in self._keys.items()
        }

