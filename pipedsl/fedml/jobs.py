"""FedML's class-based ``Job`` and ``JobStatus``, run by pipedsl's scheduler.

A :class:`Job` keeps the interface of ``fedml.workflow.Job`` (fedml 0.9.6):
subclasses implement :meth:`Job.run`, :meth:`Job.status` and :meth:`Job.kill`,
read ``input_data_dict`` and fill ``output_data_dict``. Each job becomes one
pipedsl task whose function calls ``run()``, then polls ``status()`` with
exponential backoff until the status is terminal, and calls ``kill()`` when
the task is cancelled.
"""

from __future__ import annotations

import abc
import enum
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from ..codeversion import CodeVersion, code_version
from ..dsl import Job as FunctionJob
from ..errors import RunError
from ..graph import Future
from ..hashing import register_fingerprint

__all__ = [
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotStarted",
    "JobStatus",
    "NullJob",
    "PollPolicy",
]

logger = logging.getLogger(__name__)


class JobStatus(enum.Enum):
    """Status of a class-based job, as ``fedml.workflow.JobStatus`` defines it."""

    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    UNDETERMINED = "UNDETERMINED"

    @classmethod
    def get_job_status_from_run_status(cls, run_status: Any) -> JobStatus:
        """Map a FedML ``RunStatus`` (enum member or its name) to a JobStatus.

        Every ``RunStatus`` of fedml 0.9.6 has an entry in :data:`RUN_STATUS_MAP`;
        an unknown value maps to ``UNDETERMINED``, as in FedML.

        Examples
        --------
        >>> JobStatus.get_job_status_from_run_status("CLUSTER_QUEUE")
        <JobStatus.PROVISIONING: 'PROVISIONING'>
        >>> JobStatus.get_job_status_from_run_status("KILLED")
        <JobStatus.FAILED: 'FAILED'>
        """
        name = getattr(run_status, "value", run_status)
        return RUN_STATUS_MAP.get(str(name), cls.UNDETERMINED)

    @property
    def terminal(self) -> bool:
        """True for FINISHED and FAILED."""
        return self in (JobStatus.FINISHED, JobStatus.FAILED)


#: ``fedml.api.constants.RunStatus`` value -> JobStatus. STOPPING counts as
#: failed because a run only stops when someone stopped it, as in fedml 0.9.6.
RUN_STATUS_MAP: dict[str, JobStatus] = {
    "NOT_STARTED": JobStatus.PROVISIONING,
    "QUEUED": JobStatus.PROVISIONING,
    "PRE_QUEUE": JobStatus.PROVISIONING,
    "CLUSTER_QUEUE": JobStatus.PROVISIONING,
    "PROVISIONING": JobStatus.PROVISIONING,
    "STARTING": JobStatus.RUNNING,
    "LAUNCHED": JobStatus.RUNNING,
    "RUNNING": JobStatus.RUNNING,
    "FINISHED": JobStatus.FINISHED,
    "STOPPING": JobStatus.FAILED,
    "KILLED": JobStatus.FAILED,
    "FAILED": JobStatus.FAILED,
    "ABANDONED": JobStatus.FAILED,
    "ERROR": JobStatus.FAILED,
    "BLOCKED": JobStatus.FAILED,
    "INVALID": JobStatus.FAILED,
    "UNDETERMINED": JobStatus.UNDETERMINED,
}


class JobFailed(RunError):
    """A class-based job reported FAILED, or UNDETERMINED for too long."""

    def __init__(self, job_name: str, reason: str) -> None:
        super().__init__(f"job {job_name!r} failed: {reason}")
        self.job_name = job_name
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_name, self.reason))


class JobCancelled(RunError):
    """A class-based job was killed because the workflow stopped."""

    def __init__(self, job_name: str, reason: str) -> None:
        super().__init__(f"job {job_name!r} was killed: {reason}")
        self.job_name = job_name
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job_name, self.reason))


class JobNotStarted(JobCancelled):
    """A class-based job was not started because the workflow was stopping."""


class PollPolicy:
    """Polling schedule of ``Job.status()``: backoff and UNDETERMINED tolerance.

    Parameters
    ----------
    interval:
        Seconds before the first status check after ``run()`` returns.
    max_interval:
        Cap of the wait between checks; each wait doubles the previous one,
        and a change of status resets the wait to ``interval``.
    undetermined_timeout:
        Seconds a job may report UNDETERMINED without interruption before it
        counts as failed.

    Examples
    --------
    >>> policy = PollPolicy(interval=0.05, max_interval=2.0, undetermined_timeout=30)
    >>> policy.delays(5)
    [0.05, 0.1, 0.2, 0.4, 0.8]
    """

    def __init__(
        self,
        interval: float = 0.05,
        max_interval: float = 5.0,
        undetermined_timeout: float = 60.0,
    ) -> None:
        for label, value in (
            ("interval", interval),
            ("max_interval", max_interval),
            ("undetermined_timeout", undetermined_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(
                    f"poll {label} must be a non-negative number of seconds, got {value!r}"
                )
        if max_interval < interval:
            raise ValueError(
                f"poll max_interval ({max_interval!r}) must be at least interval "
                f"({interval!r}); raise max_interval or lower interval"
            )
        self.interval = float(interval)
        self.max_interval = float(max_interval)
        self.undetermined_timeout = float(undetermined_timeout)

    def __repr__(self) -> str:
        return (
            f"PollPolicy(interval={self.interval}, max_interval={self.max_interval}, "
            f"undetermined_timeout={self.undetermined_timeout})"
        )

    def delays(self, count: int) -> list[float]:
        """Return the first ``count`` waits between checks of an unchanged status."""
        delays = []
        delay = self.interval
        for _ in range(count):
            delays.append(delay)
            delay = min(delay * 2, self.max_interval)
        return delays


class Job(abc.ABC):
    """A class-based job: ``run()`` starts it, ``status()`` reports on it.

    The interface is the one of ``fedml.workflow.Job`` in fedml 0.9.6, so a
    subclass written for FedML runs here after changing its import.

    Class attributes
    ----------------
    deterministic:
        ``True`` stores the job's output and reuses it while the class code,
        the job's state and its inputs stay the same. Default ``False``: the
        job runs on every workflow run.
    cache_attributes:
        Names of the instance attributes that define a deterministic job
        (its configuration). ``None`` (the default) uses every public
        attribute except ``input_data_dict`` and ``output_data_dict``, so list
        them when ``run()`` stores other state on ``self``. Attributes holding
        a :class:`JobStatus` are left out either way.

    Examples
    --------
    >>> class Double(Job):
    ...     deterministic = True
    ...     def run(self):
    ...         self.output_data_dict = {"x": 2 * self.input_data_dict["x"]}
    ...     def status(self):
    ...         return JobStatus.FINISHED
    ...     def kill(self):
    ...         pass
    >>> job = Double("double")
    >>> job.set_inputs({"x": 3})
    >>> job.run()
    >>> job.get_outputs()
    {'x': 6}
    """

    deterministic: ClassVar[bool] = False
    cache_attributes: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"a job name must be a non-empty string, got {name!r}; pass "
                "Job(name='train') or similar"
            )
        self.name = name
        self.input_data_dict: dict[Any, Any] = {}
        self.output_data_dict: dict[Any, Any] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @abc.abstractmethod
    def run(self) -> None:
        """Start the job; it may return before the work is done."""

    @abc.abstractmethod
    def status(self) -> JobStatus:
        """Return the job's current :class:`JobStatus`."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the job if it is still running."""

    def failure_reason(self) -> str | None:
        """Return why the job failed, for the workflow's error; None if unknown."""
        return None

    def append_input(self, input_job_name: str, input: dict[Any, Any]) -> None:  # noqa: A002
        """Add the output of job ``input_job_name`` to this job's inputs."""
        self.input_data_dict[input_job_name] = input

    def set_inputs(self, inputs: dict[Any, Any]) -> None:
        """Replace this job's inputs with ``inputs``."""
        self.input_data_dict = inputs

    def get_outputs(self) -> dict[Any, Any]:
        """Return the job's outputs (``output_data_dict``)."""
        return self.output_data_dict

    def __call__(self, inputs: Mapping[Any, Any] | None = None, /, **named: Any) -> Future[Any]:
        """Add this job to the pipedsl workflow being traced; return its output future.

        ``inputs`` and the keyword arguments together form ``input_data_dict``;
        futures in them (outputs of other jobs) become dependencies.

        Examples
        --------
        >>> from pipedsl import workflow
        >>> class Square(Job):
        ...     def run(self):
        ...         self.output_data_dict = {"y": self.input_data_dict["x"] ** 2}
        ...     def status(self):
        ...         return JobStatus.FINISHED
        ...     def kill(self):
        ...         pass
        >>> @workflow
        ... def pipeline(x: int = 3) -> dict:
        ...     return Square("square")(x=x)
        >>> pipeline(4, executor="inline", store="memory://doctest-fedml", progress=False)
        {'y': 16}
        """
        merged = dict(inputs or {})
        merged.update(named)
        return class_job_task(self).call(merged)


class NullJob(Job):
    """A job that copies its inputs to its outputs, as in FedML."""

    def __init__(self, name: str = "NullJob") -> None:
        super().__init__(name)

    def run(self) -> None:
        self.output_data_dict = dict(self.input_data_dict)

    def status(self) -> JobStatus:
        return JobStatus.FINISHED

    def kill(self) -> None:
        return None


# -- fingerprints and code versions of class-based jobs --------------------------


def _job_state(job: Job) -> Any:
    """Return what identifies a job instance in a cache key."""
    kind = type(job)
    label = f"{kind.__module__}.{kind.__qualname__}"
    if not kind.deterministic:
        # Not cached anyway (cache=False adds a fresh nonce), so the state,
        # which may hold unfingerprintable run handles, is left out.
        return (label, job.name, "nondeterministic")
    names = kind.cache_attributes
    if names is None:
        # JobStatus values are run state that run() changes, not configuration.
        names = tuple(
            name
            for name, value in vars(job).items()
            if not name.startswith("_")
            and name not in ("input_data_dict", "output_data_dict")
            and not isinstance(value, JobStatus)
        )
    missing = [name for name in names if not hasattr(job, name)]
    if missing:
        raise AttributeError(
            f"job {job.name!r} lists {missing!r} in cache_attributes, but has no such "
            f"attribute; set them in {kind.__name__}.__init__ or remove them from the list"
        )
    return (label, tuple((name, getattr(job, name)) for name in sorted(names)))


register_fingerprint(Job, _job_state)


def _class_holder(cls: type) -> Any:
    def holder() -> type:
        return cls

    return holder


def class_code_version(cls: type) -> CodeVersion:
    """Return the code version of a Job subclass and its user-defined bases."""
    parts: dict[str, str] = {}
    volatile = None
    for klass in cls.__mro__:
        if klass is Job or klass is object or klass is abc.ABC:
            continue
        version = code_version(_class_holder(klass))
        # The holder's own source is the same for every class: drop it.
        parts.update({k: v for k, v in version.parts.items() if k != "source"})
        volatile = volatile or version.volatile
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(parts):
        digest.update(f"{name}={parts[name]}\n".encode())
    return CodeVersion(digest.hexdigest(), parts, volatile)


# -- running a class-based job as a task -----------------------------------------


class RunContext:
    """State shared by the tasks of one workflow run: the abort signal."""

    def __init__(self, kill_on_failure: bool = True) -> None:
        self.abort = threading.Event()
        self.reason = ""
        self.kill_on_failure = kill_on_failure
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}

    def stop(self, reason: str) -> None:
        if not self.abort.is_set():
            self.reason = reason
            self.abort.set()


def _normalise_status(job: Job, value: Any) -> JobStatus:
    if isinstance(value, JobStatus):
        return value
    if value is None:
        # FedML's launch jobs return None before a run id exists.
        return JobStatus.UNDETERMINED
    name = getattr(value, "name", value)
    if isinstance(name, str) and name in JobStatus.__members__:
        return JobStatus[name]
    raise TypeError(
        f"{type(job).__name__}.status() of job {job.name!r} returned {value!r}; "
        "return a pipedsl.fedml.JobStatus member such as JobStatus.FINISHED"
    )


class ClassJobRunner:
    """Runs one class-based job to a terminal status; the function of its task."""

    def __init__(self, policy: PollPolicy, context: RunContext | None = None) -> None:
        self.policy = policy
        self.context = context or RunContext(kill_on_failure=False)

    def __getstate__(self) -> dict[str, Any]:
        # The abort event cannot cross processes; a copy gets its own.
        return {"policy": self.policy}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.policy = state["policy"]
        self.context = RunContext(kill_on_failure=False)

    def execute(self, job: Job, inputs: dict[Any, Any]) -> dict[Any, Any]:
        """Set the inputs, run the job, poll until it ends; return its outputs."""
        context = self.context
        if context.abort.is_set():
            raise JobNotStarted(job.name, f"not started because {context.reason}")
        job.input_data_dict = dict(inputs)
        context.started[job.name] = time.time()
        try:
            job.run()
            self._wait(job)
        except JobCancelled:
            raise
        except BaseException:
            if context.kill_on_failure:
                context.stop(f"job {job.name!r} failed")
            raise
        finally:
            context.ended[job.name] = time.time()
        outputs = job.get_outputs()
        if outputs is None:
            return {}
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"{type(job).__name__}.get_outputs() of job {job.name!r} returned "
                f"{type(outputs).__name__} {outputs!r:.200}; return a dict (set "
                "self.output_data_dict in run())"
            )
        return dict(outputs)

    def _wait(self, job: Job) -> None:
        policy = self.policy
        context = self.context
        delay = policy.interval
        previous: JobStatus | None = None
        undetermined_since: float | None = None
        while True:
            # The status comes first, so a job that ended while another one
            # failed is reported as finished or failed, not as killed.
            status = _normalise_status(job, job.status())
            now = time.monotonic()
            if status is JobStatus.FINISHED:
                return
            if status is JobStatus.FAILED:
                reason = job.failure_reason() or "its status() returned FAILED"
                raise JobFailed(job.name, reason)
            if context.abort.is_set():
                self._kill(job)
                raise JobCancelled(job.name, context.reason)
            if status is JobStatus.UNDETERMINED:
                if undetermined_since is None:
                    undetermined_since = now
                elif now - undetermined_since > policy.undetermined_timeout:
                    raise JobFailed(
                        job.name,
                        f"its status() returned UNDETERMINED for more than "
                        f"{policy.undetermined_timeout:g}s; raise undetermined_timeout "
                        "if the backend needs longer to report",
                    )
            else:
                undetermined_since = None
            if status is not previous:
                logger.debug("job %s is %s", job.name, status.value)
                delay = policy.interval
                previous = status
            context.abort.wait(delay)
            delay = min(delay * 2, policy.max_interval)

    @staticmethod
    def _kill(job: Job) -> None:
        try:
            job.kill()
        except Exception as exc:  # noqa: BLE001 - the workflow reports the cause
            logger.warning("kill() of job %s failed: %s: %s", job.name, type(exc).__name__, exc)
        else:
            logger.info("killed job %s", job.name)


class ClassJobTask(FunctionJob[Any, dict[Any, Any]]):
    """The pipedsl job behind a class-based job: its code version covers the class."""

    def __init__(self, job: Job, runner: ClassJobRunner) -> None:
        super().__init__(runner.execute, name=job.name, cache=type(job).deterministic)
        self.class_job = job
        self.runner = runner

    def __repr__(self) -> str:
        return f"<ClassJobTask {self.name} of {type(self.class_job).__name__}>"

    def code_version(self) -> CodeVersion:
        return class_code_version(type(self.class_job))

    def call(self, inputs: dict[Any, Any]) -> Future[dict[Any, Any]]:
        """Create the task of the job with ``inputs``; return its output future."""
        return self(self.class_job, inputs)

    def _tuple_arity(self) -> int | None:
        return None


def class_job_task(
    job: Job, policy: PollPolicy | None = None, context: RunContext | None = None
) -> ClassJobTask:
    """Wrap ``job`` as a pipedsl job that runs and polls it."""
    return ClassJobTask(job, ClassJobRunner(policy or PollPolicy(), context))
