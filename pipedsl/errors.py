"""Exceptions raised by pipedsl.

User code keeps its own exception types: when a task fails, the run raises the
exception the job raised, with a note naming the job and the task. The classes
below cover what pipedsl itself reports::

    PipedslError
    ├── TraceError            (also a TypeError) a future used as a value while tracing
    ├── GraphError            a cycle, an unknown job, a duplicate name
    ├── StoreError            the artifact store could not be read or written
    │   └── ArtifactMissing   a cached entry whose payload is gone or corrupt
    ├── SerializationError    no serializer could write or read a value
    ├── RunError              the run failed, was killed or timed out
    │   ├── RunCancelled
    │   └── TaskTimeout       (also a TimeoutError) a task ran past its timeout
    └── RemoteTaskError       stands in for an exception that could not be sent back
"""

from __future__ import annotations

import sys

__all__ = [
    "ArtifactMissing",
    "GraphError",
    "PipedslError",
    "RemoteTaskError",
    "RunCancelled",
    "RunError",
    "SerializationError",
    "StoreError",
    "TaskTimeout",
    "TraceError",
    "add_note",
]


class PipedslError(Exception):
    """Base class of the errors raised by pipedsl itself."""


class TraceError(PipedslError, TypeError):
    """A future was used where its value is needed while a workflow is traced."""


class GraphError(PipedslError, ValueError):
    """The graph of a workflow is invalid (cycle, unknown or duplicate job)."""


class StoreError(PipedslError, OSError):
    """The artifact store could not be read or written."""


class ArtifactMissing(StoreError):
    """A cached entry exists but its payload is missing or fails its checksum."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"artifact of task {key!r} is unusable: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.key, self.reason))


class SerializationError(PipedslError, TypeError):
    """No serializer could write or read a value."""


class RunError(PipedslError, RuntimeError):
    """A run did not complete."""


class RunCancelled(RunError):
    """A run was killed before it completed."""


class TaskTimeout(RunError, TimeoutError):
    """A task ran longer than its job's ``timeout``."""


class RemoteTaskError(PipedslError):
    """An exception raised in a worker that could not be rebuilt in the caller.

    Keeps the original type name, message and traceback text, so the failure is
    still readable when the exception class needs constructor arguments that
    pickling does not carry.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` so tracebacks print it under the message."""
    if sys.version_info >= (3, 11):
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
    else:  # pragma: no cover - Python 3.10 keeps notes but does not print them
        notes = list(getattr(exc, "__notes__", []))
        if note not in notes:
            notes.append(note)
            try:
                exc.__notes__ = notes  # type: ignore[attr-defined]
            except AttributeError:
                pass
