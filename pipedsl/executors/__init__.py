"""Executors: inline, threads, processes, dask, ray and fedml."""

from __future__ import annotations

from typing import Any

from .base import Executor
from .local import InlineExecutor, ThreadExecutor

__all__ = ["Executor", "InlineExecutor", "ThreadExecutor", "make_executor"]


def make_executor(spec: Any, max_workers: int | None = None) -> tuple[Executor, bool]:
    """Return an executor for ``spec`` and whether the caller owns it (must shut it down)."""
    if isinstance(spec, Executor):
        return spec, False
    if spec is None or spec == "threads":
        return ThreadExecutor(max_workers), True
    if spec == "inline":
        return InlineExecutor(), True
    if spec == "processes":
        from .process import shared_process_executor

        # Shared across runs, so later runs find warm worker processes.
        return shared_process_executor(max_workers), False
    if spec == "dask":
        from .dask import DaskExecutor

        return DaskExecutor(None, max_workers), True
    if isinstance(spec, str) and spec.startswith(("tcp://", "tls://", "inproc://")):
        from .dask import DaskExecutor

        return DaskExecutor(spec), True
    if spec == "ray":
        from .ray import RayExecutor

        return RayExecutor(), True
    if spec == "fedml":
        from ..fedml.launch import FedMLExecutor

        return FedMLExecutor(), True
    if type(spec).__module__.startswith("distributed"):
        from .dask import DaskExecutor

        return DaskExecutor(spec), False
    raise ValueError(
        f"unknown executor {spec!r}; use 'inline', 'threads', 'processes', 'dask', "
        "a dask scheduler address, 'ray', 'fedml', a distributed.Client or an Executor"
    )
