"""The process executor: tasks in long-lived worker processes.

Each worker process runs one task at a time. Specs travel pickled with
cloudpickle, so jobs, helpers and classes defined in ``__main__`` (a script
or a notebook) are shipped by value. Cancelling a task, or a task timing out,
kills its worker process, and a fresh one takes its place. Workers are daemon
processes, so none outlives the interpreter that started them.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from ..errors import RunError
from ..worker import TaskSpec, execute_remote
from .base import Executor

__all__ = ["ProcessExecutor"]

logger = logging.getLogger(__name__)


def _worker_main(conn: Connection, path: list[str]) -> None:
    """Loop of a worker process: receive a pickled spec, send the outcome."""
    # The parent's import path, so jobs in the user's modules import here too.
    sys.path[:] = path + [p for p in sys.path if p not in path]
    # Ctrl-C reaches the whole process group; the parent decides what to
    # cancel and kills this process if needed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        spec = cloudpickle.loads(payload)
        outcome = execute_remote(spec)
        try:
            data = cloudpickle.dumps(outcome)
        except Exception as exc:  # noqa: BLE001 - the value cannot be pickled
            outcome.value = None
            outcome.ok = False
            outcome.error = RunError(
                f"the output of task {spec.key} cannot be sent back to the "
                f"scheduler: {exc}"
            )
            data = cloudpickle.dumps(outcome)
        conn.send_bytes(data)


_start_lock = threading.Lock()


def _preparation_without_main(original: Any) -> Any:
    def prepare(name: str) -> dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data  # type: ignore[no-any-return]

    return prepare


class _Worker:
    def __init__(self, context: Any) -> None:
        import multiprocessing.spawn as spawn

        parent, child = context.Pipe()
        self.conn = parent
        self.process = context.Process(
            target=_worker_main, args=(child, list(sys.path)), daemon=True
        )
        # Spawned and fork-server children import the parent's __main__ before
        # running anything; a script that runs a workflow at module level
        # would then run it again in every worker and deadlock. Workers never
        # need __main__: specs carry its functions and classes by value.
        with _start_lock:
            original = spawn.get_preparation_data
            spawn.get_preparation_data = _preparation_without_main(original)
            try:
                self.process.start()
            finally:
                spawn.get_preparation_data = original
        child.close()
        self.future: concurrent.futures.Future[Any] | None = None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        try:
            self.conn.close()
        except OSError:  # closed already by the driving thread
            pass


class ProcessExecutor(Executor):
    """Runs tasks in up to ``max_workers`` worker processes."""

    name = "processes"
    in_process = False

    def __init__(self, max_workers: int | None = None, start_method: str | None = None) -> None:
        self.capacity = max_workers or os.cpu_count() or 1
        if start_method is None:
            start_method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server would otherwise import the script's __main__ too.
            self._context.set_forkserver_preload(["pipedsl.worker"])
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, spec: TaskSpec, resources: dict[str, Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        payload = cloudpickle.dumps(spec)
        with self._lock:
            if len(self._threads) < self.capacity:
                thread = threading.Thread(target=self._drive, daemon=True, name="pipedsl-proc")
                self._threads.append(thread)
                thread.start()
        self._queue.put((future, payload))
        return future

    def _drive(self) -> None:
        """Feed one worker process at a time from the queue, replacing dead ones."""
        worker: _Worker | None = None
        while True:
            item = self._queue.get()
            if item is None:
                break
            future, payload = item
            if not future.set_running_or_notify_cancel():
                continue
            if worker is None or not worker.process.is_alive():
                try:
                    worker = _Worker(self._context)
                except Exception as exc:  # noqa: BLE001 - reported via the future
                    worker = None
                    future.set_exception(
                        RunError(
                            f"could not start a worker process ({exc}). A script that "
                            "runs a workflow on the process executor must call it under "
                            "`if __name__ == \"__main__\":`, because worker processes "
                            "import the script's main module"
                        )
                    )
                    continue
                with self._lock:
                    self._workers.append(worker)
            worker.future = future
            try:
                worker.conn.send_bytes(payload)
                data = worker.conn.recv_bytes()
                outcome = cloudpickle.loads(data)
            except (EOFError, OSError, ConnectionError) as exc:
                code = worker.process.exitcode
                worker.kill()
                with self._lock:
                    if worker in self._workers:
                        self._workers.remove(worker)
                worker = None
                if not future.done():
                    future.set_exception(
                        RunError(f"worker process ended (exit code {code}) while running a task: {exc}")
                    )
                continue
            worker.future = None
            if not future.done():
                future.set_result(outcome)
        if worker is not None:
            worker.kill()

    def cancel(self, future: concurrent.futures.Future[Any]) -> None:
        if future.cancel():
            return
        with self._lock:
            running = [w for w in self._workers if w.future is future]
        for worker in running:
            logger.debug("killing worker process %s", worker.process.pid)
            worker.kill()

    def shutdown(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.kill()


_shared: dict[int | None, ProcessExecutor] = {}
_shared_lock = threading.Lock()


def shared_process_executor(max_workers: int | None = None) -> ProcessExecutor:
    """Return the process-wide executor for ``max_workers``, creating it once."""
    with _shared_lock:
        executor = _shared.get(max_workers)
        if executor is None:
            executor = ProcessExecutor(max_workers)
            _shared[max_workers] = executor
            atexit.register(executor.shutdown)
        return executor
