"""The Ray executor: tasks as Ray remote functions (optional extra)."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

from ..worker import TaskSpec, execute_remote
from .base import Executor, parse_memory

__all__ = ["RayExecutor"]


class RayExecutor(Executor):
    name = "ray"
    in_process = False

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError(
                "the 'ray' executor needs ray; install it with pip install 'pipedsl[ray]'"
            ) from None
        self._ray = ray
        if not ray.is_initialized():
            # A local instance listens on loopback only.
            options = {} if address else {"_node_ip_address": "127.0.0.1"}
            ray.init(
                address=address, include_dashboard=False, ignore_reinit_error=True, **options
            )
        self._remote = ray.remote(execute_remote)
        self._refs: dict[int, Any] = {}

    def submit(self, spec: TaskSpec, resources: dict[str, Any]) -> concurrent.futures.Future[Any]:
        options: dict[str, Any] = {}
        if "cpus" in resources:
            options["num_cpus"] = resources["cpus"]
        if "gpus" in resources:
            options["num_gpus"] = resources["gpus"]
        if "memory" in resources:
            options["memory"] = parse_memory(resources["memory"])
        ref = self._remote.options(**options).remote(spec)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        self._refs[id(future)] = ref

        def wait() -> None:
            try:
                result = self._ray.get(ref)
            except BaseException as exc:  # noqa: BLE001 - reported via the future
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)
            self._refs.pop(id(future), None)

        threading.Thread(target=wait, daemon=True).start()
        return future

    def cancel(self, future: concurrent.futures.Future[Any]) -> None:
        ref = self._refs.pop(id(future), None)
        if ref is not None:
            self._ray.cancel(ref, force=True)
        if not future.done():
            future.cancel()

    def check_resources(self, job_name: str, resources: dict[str, Any]) -> None:
        unknown = set(resources) - {"cpus", "gpus", "memory"}
        if unknown:
            raise ValueError(
                f"job {job_name!r} requests {sorted(unknown)}, which the ray executor "
                "does not map; use cpus, gpus and memory"
            )
        # Ray would wait forever for resources no node has: say so instead.
        available = self._ray.cluster_resources()
        names = {"cpus": "CPU", "gpus": "GPU", "memory": "memory"}
        for name, amount in resources.items():
            needed = parse_memory(amount) if name == "memory" else amount
            offered = available.get(names[name], 0)
            if offered < needed:
                raise ValueError(
                    f"job {job_name!r} requests {name}={amount!r}, but the Ray cluster "
                    f"offers {offered:g}; add nodes with it or lower the request"
                )
