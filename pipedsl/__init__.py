"""pipedsl: plain Python functions as cached, concurrent pipelines.

Examples
--------
>>> from pipedsl import job, workflow
>>> @job
... def load(n: int) -> list[int]:
...     return list(range(n))
>>> @job
... def total(xs: list[int]) -> int:
...     return sum(xs)
>>> @workflow
... def pipeline(n: int = 10) -> int:
...     return total(load(n))
>>> pipeline(4, store="memory://doctest-init", progress=False)
6
"""

from __future__ import annotations

from .artifacts import Artifact, Directory, File
from .config import Config, configure, get_config
from .dsl import Job, Workflow, job, workflow
from .dynamic import MapResult, when
from .loop import LoopRun, no_improvement
from .errors import (
    ArtifactMissing,
    GraphError,
    PipedslError,
    RemoteTaskError,
    RunCancelled,
    RunError,
    SerializationError,
    StoreError,
    TaskTimeout,
    TraceError,
)
from .graph import Future, Graph, Task, TaskStatus
from .hashing import Unfingerprintable, fingerprint, register_fingerprint
from .records import RunRecord, TaskRecord
from .runs import Plan, Run, load_run
from .serializers import Serializer, register_serializer
from .store import ArtifactStore

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ArtifactMissing",
    "ArtifactStore",
    "Config",
    "Directory",
    "File",
    "Future",
    "Graph",
    "GraphError",
    "Job",
    "LoopRun",
    "MapResult",
    "PipedslError",
    "Plan",
    "RemoteTaskError",
    "Run",
    "RunCancelled",
    "RunError",
    "RunRecord",
    "SerializationError",
    "Serializer",
    "StoreError",
    "Task",
    "TaskRecord",
    "TaskStatus",
    "TaskTimeout",
    "TraceError",
    "Unfingerprintable",
    "Workflow",
    "configure",
    "fingerprint",
    "get_config",
    "job",
    "load_run",
    "no_improvement",
    "register_fingerprint",
    "register_serializer",
    "when",
    "workflow",
]
