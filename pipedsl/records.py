"""Run records: what happened in a run, as plain dataclasses and JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["RunRecord", "TaskRecord"]


@dataclasses.dataclass
class TaskRecord:
    """The account of one task in a run."""

    key: str
    job: str
    status: str = "pending"
    cached: bool = False
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    traceback: str | None = None
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    size: int | None = None
    code_version: str = ""
    code_parts: dict[str, str] = dataclasses.field(default_factory=dict)
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    upstream: dict[str, str] = dataclasses.field(default_factory=dict)
    dependencies: list[str] = dataclasses.field(default_factory=list)
    scope: list[str] = dataclasses.field(default_factory=list)
    not_cached_because: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass
class RunRecord:
    """The account of one run, stored as ``runs/<run id>.json``."""

    run_id: str
    workflow: str
    status: str = "running"
    started: float = 0.0
    ended: float | None = None
    executor: str = ""
    store: str = ""
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None
    host: str = ""
    pid: int = 0
    tasks: list[TaskRecord] = dataclasses.field(default_factory=list)

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def counts(self) -> dict[str, int]:
        """Return the number of tasks in each status."""
        result: dict[str, int] = {}
        for task in self.tasks:
            result[task.status] = result.get(task.status, 0) + 1
        return result

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names and k != "tasks"}
        record = cls(**values)
        record.tasks = [TaskRecord.from_dict(t) for t in data.get("tasks", [])]
        return record
