"""The Dask executor: tasks on a ``dask.distributed`` cluster.

Accepts an existing ``distributed.Client``, a scheduler address such as
``tcp://127.0.0.1:8786``, or nothing, in which case a ``LocalCluster`` with
worker processes on 127.0.0.1 is started for the run and closed after it.
Job ``resources`` become Dask worker resources (``{"cpus": 2}`` becomes
``resources={"cpus": 2}``), so workers must be started with matching
``--resources``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
from typing import Any

from ..worker import TaskSpec, execute_remote
from .base import Executor, parse_memory

__all__ = ["DaskExecutor"]

logger = logging.getLogger(__name__)


def _extend_path(path: list[str]) -> None:
    sys.path[:] = path + [p for p in sys.path if p not in path]


class DaskExecutor(Executor):
    name = "dask"
    in_process = False

    def __init__(self, client: Any = None, max_workers: int | None = None) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ImportError(
                "the 'dask' executor needs dask.distributed; install it with "
                "pip install 'pipedsl[dask]'"
            ) from None
        self._own = None
        if client is None:
            cluster = LocalCluster(
                n_workers=max_workers or 2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                # The scheduler's HTTP routes listen on loopback too.
                dashboard_address="127.0.0.1:0",
            )
            client = Client(cluster)
            self._own = (client, cluster)
        elif isinstance(client, str):
            client = Client(client)
            self._own = (client, None)
        self.client = client
        if self._own is not None and self._own[1] is not None:
            # Workers of a cluster started here import the user's modules the
            # way this process does.
            client.run(_extend_path, list(sys.path))
        self._futures: dict[int, Any] = {}

    def submit(self, spec: TaskSpec, resources: dict[str, Any]) -> concurrent.futures.Future[Any]:
        dask_resources = {}
        for name, amount in resources.items():
            dask_resources[name] = parse_memory(amount) if name == "memory" else amount
        remote = self.client.submit(
            execute_remote, spec, pure=False, key=f"{spec.key}-{id(spec):x}",
            resources=dask_resources or None,
        )  # fmt: skip
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        self._futures[id(future)] = remote

        def done(remote_future: Any) -> None:
            self._futures.pop(id(future), None)
            if future.done():
                return
            try:
                future.set_result(remote_future.result())
            except BaseException as exc:  # noqa: BLE001 - reported via the future
                future.set_exception(exc)

        remote.add_done_callback(done)
        return future

    def cancel(self, future: concurrent.futures.Future[Any]) -> None:
        remote = self._futures.pop(id(future), None)
        if remote is not None:
            # NOTE: Dask cannot interrupt a task already running in a worker
            # thread; the run moves on and the worker finishes it in the
            # background.
            self.client.cancel(remote, force=True)
        if not future.done():
            future.cancel()

    def check_resources(self, job_name: str, resources: dict[str, Any]) -> None:
        if not resources:
            return
        info = self.client.scheduler_info()
        available: dict[str, float] = {}
        for worker in info.get("workers", {}).values():
            for name, amount in worker.get("resources", {}).items():
                available[name] = max(available.get(name, 0), amount)
        for name, amount in resources.items():
            needed = parse_memory(amount) if name == "memory" else amount
            if available.get(name, 0) < needed:
                raise ValueError(
                    f"job {job_name!r} requests {name}={amount!r}, but no Dask worker "
                    f"offers it (workers offer {available or 'no resources'}); start "
                    f"workers with --resources \"{name}={needed}\""
                )

    def shutdown(self) -> None:
        if self._own is not None:
            client, cluster = self._own
            client.close()
            if cluster is not None:
                cluster.close()
            self._own = None
