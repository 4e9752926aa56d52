"""Executors that run tasks in this process: inline and threads."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from typing import Any

from ..worker import TaskSpec, execute
from .base import Executor

__all__ = ["InlineExecutor", "ThreadExecutor"]


class InlineExecutor(Executor):
    """Runs each task in the caller's thread, one at a time, for debugging."""

    name = "inline"
    in_process = True
    capacity = 1

    def submit(self, spec: TaskSpec, resources: dict[str, Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        future.set_result(execute(spec))
        return future

    def check_resources(self, job_name: str, resources: dict[str, Any]) -> None:
        # One task at a time on this machine: CPU and memory requests are
        # trivially met, an accelerator request is not checked.
        return None


class ThreadExecutor(Executor):
    """Runs tasks on daemon worker threads.

    Daemon threads, rather than ``ThreadPoolExecutor``'s, so that a task
    abandoned after its timeout does not keep the interpreter from exiting.
    """

    name = "threads"
    in_process = True

    def __init__(self, max_workers: int | None = None) -> None:
        self.capacity = max_workers or max(16, (os.cpu_count() or 1) + 4)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0
        self._closed = False

    def submit(self, spec: TaskSpec, resources: dict[str, Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._idle == 0 and len(self._threads) < self.capacity:
                thread = threading.Thread(
                    target=self._work, name=f"pipedsl-worker-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1
        self._queue.put((future, spec))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, spec = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(execute(spec))
                except BaseException as exc:  # noqa: BLE001 - reported via the future
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def check_resources(self, job_name: str, resources: dict[str, Any]) -> None:
        if set(resources) - {"cpus", "memory"}:
            super().check_resources(job_name, resources)

    def shutdown(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
