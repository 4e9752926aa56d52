"""Run records: what happened in a run, as plain dataclasses and JSON."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

__all__ = ["RunRecord", "TaskRecord"]


_LEAF_TYPES = frozenset({str, int, float, bool, type(None)})


def _copy_plain(value: Any) -> Any:
    """Copy nested dicts, lists and tuples; like ``dataclasses.asdict`` on them.

    ``asdict`` deep-copies every leaf through ``copy.deepcopy``, which made
    writing the record of a 1,000-task run take about 0.1 s. Record fields
    hold JSON-like values, so copying the containers is enough.
    """
    kind = type(value)
    if kind in _LEAF_TYPES:
        return value
    if kind is dict:
        return {
            key: item if type(item) in _LEAF_TYPES else _copy_plain(item)
            for key, item in value.items()
        }
    if kind is list or kind is tuple:
        return kind(item if type(item) in _LEAF_TYPES else _copy_plain(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return copy.deepcopy(value)


def _fields_to_dict(record: Any, names: tuple[str, ...]) -> dict[str, Any]:
    result = {}
    for name in names:
        value = getattr(record, name)
        result[name] = value if type(value) in _LEAF_TYPES else _copy_plain(value)
    return result


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
        return _fields_to_dict(self, _TASK_FIELDS)

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
        data = _fields_to_dict(self, _RUN_FIELDS)
        data["tasks"] = [task.to_dict() for task in self.tasks]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names and k != "tasks"}
        record = cls(**values)
        record.tasks = [TaskRecord.from_dict(t) for t in data.get("tasks", [])]
        return record


_TASK_FIELDS = tuple(field.name for field in dataclasses.fields(TaskRecord))
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord) if f.name != "tasks")
