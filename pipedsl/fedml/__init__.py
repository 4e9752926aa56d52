"""FedML's class-based Workflow API on pipedsl's engine, and FedML launch.

Code written for ``fedml.workflow`` runs here after one changed import::

    from pipedsl.fedml import Job, JobStatus, Workflow

Jobs become pipedsl tasks: each starts as soon as its own dependencies
finish, deterministic jobs are cached in the artifact store, and a class-based
job can be called inside a pipedsl ``@workflow``. :class:`LaunchJob` and its
subclasses launch FedML job YAML files through ``fedml.api``, and
``executor="fedml"`` runs each ``@job`` task as a FedML launch job. ``fedml``
itself is imported only when a launch job or the executor needs it.
"""

from __future__ import annotations

from .jobs import (
    Job,
    JobCancelled,
    JobFailed,
    JobNotStarted,
    JobStatus,
    NullJob,
    PollPolicy,
)
from .launch import (
    FedMLExecutor,
    LaunchJob,
    ModelDeployJob,
    ModelInferenceJob,
    TrainJob,
)
from .workflow import Metadata, Node, Workflow, WorkflowFailed

__all__ = [
    "FedMLExecutor",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotStarted",
    "JobStatus",
    "LaunchJob",
    "Metadata",
    "ModelDeployJob",
    "ModelInferenceJob",
    "Node",
    "NullJob",
    "PollPolicy",
    "TrainJob",
    "Workflow",
    "WorkflowFailed",
]
