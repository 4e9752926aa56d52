"""Stand-in for ``fedml.api``: launch, status and stop of runs, run locally.

``launch_job`` does what FedML's agent does with a job YAML, on this
machine: in the YAML's ``workspace`` folder it runs the ``bootstrap``
commands and then the ``job`` commands with bash, in a new process group,
with ``FEDML_CURRENT_RUN_ID`` set. ``run_status`` reports QUEUED on the
first query of a run, then RUNNING, FINISHED (exit code 0), FAILED (any
other exit code) or KILLED (after ``run_stop``). Tests can queue statuses to
report first with :func:`queue_statuses`, and read every call in
:data:`calls`.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
from typing import Any, List, Optional

import yaml

from .constants import RunStatus
from .modules.launch import LaunchResult

__all__ = ["RunStatus", "launch_job", "run_status", "run_stop"]

#: Every call as (function name, keyword arguments).
calls: list[tuple[str, dict[str, Any]]] = []
#: API key that launch_job accepts; None accepts any.
required_api_key: Optional[str] = None

_lock = threading.Lock()
_ids = itertools.count(1000)
_runs: dict[str, dict[str, Any]] = {}


class RunList:
    """The ``run_list`` part of run_status's answer: the runs that matched."""

    def __init__(self, run_ids: list[str]) -> None:
        self.run_list = run_ids


def reset() -> None:
    """Stop every run and forget calls and settings."""
    global required_api_key
    stop_all()
    calls.clear()
    _runs.clear()
    required_api_key = None


def stop_all() -> None:
    for run_id in list(_runs):
        _terminate(run_id)


def queue_statuses(run_id: str, statuses: list[RunStatus]) -> None:
    """Make the next run_status calls for ``run_id`` report ``statuses`` first."""
    with _lock:
        _runs[str(run_id)]["queued"].extend(statuses)


def run_info(run_id: str) -> dict[str, Any]:
    return _runs[str(run_id)]


def launch_job(
    yaml_file: str,
    api_key: str = None,
    resource_id: str = None,
    device_server: str = None,
    device_edges: List[str] = None,
    feature_entry_point: Any = None,
) -> LaunchResult:
    calls.append(("launch_job", {"yaml_file": yaml_file, "api_key": api_key}))
    if required_api_key is not None and api_key != required_api_key:
        return LaunchResult(result_code=10, result_message="LAUNCH_REQUEST_FAILED")
    try:
        with open(yaml_file, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        return LaunchResult(result_code=3, result_message=f"INVALID_PARAMS: {exc}")
    if not isinstance(config, dict) or not isinstance(config.get("job"), str):
        return LaunchResult(result_code=3, result_message="INVALID_PARAMS: no job commands")
    folder = os.path.dirname(os.path.abspath(yaml_file))
    workspace = os.path.join(folder, str(config.get("workspace", ".")))
    if not os.path.isdir(workspace):
        return LaunchResult(result_code=3, result_message=f"INVALID_PARAMS: no workspace {workspace}")
    run_id = str(next(_ids))
    script = "set -e\n" + str(config.get("bootstrap") or "") + "\n" + config["job"] + "\n"
    log_path = os.path.join(folder, f"run-{run_id}.log")
    log = open(log_path, "wb")
    env = dict(os.environ, FEDML_CURRENT_RUN_ID=run_id)
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=workspace,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    with _lock:
        _runs[run_id] = {
            "process": process,
            "config": config,
            "log": log_path,
            "queried": False,
            "stopped": False,
            "queued": [],
        }
    return LaunchResult(
        result_code=0,
        result_message="Your job has been launched successfully.",
        run_id=run_id,
        inner_id=run_id,
    )


def run_status(
    run_name: str = None, run_id: str = None, platform: str = "falcon", api_key: str = None
) -> (RunList, RunStatus):
    calls.append(("run_status", {"run_id": run_id, "api_key": api_key}))
    with _lock:
        run = _runs.get(str(run_id))
        if run is None:
            return RunList([]), RunStatus.UNDETERMINED
        if run["queued"]:
            return RunList([run_id]), run["queued"].pop(0)
        first = not run["queried"]
        run["queried"] = True
    if run["stopped"]:
        return RunList([run_id]), RunStatus.KILLED
    code = run["process"].poll()
    if code is None:
        return RunList([run_id]), RunStatus.QUEUED if first else RunStatus.RUNNING
    return RunList([run_id]), RunStatus.FINISHED if code == 0 else RunStatus.FAILED


def run_stop(run_id: str, platform: str = "falcon", api_key: str = None) -> bool:
    calls.append(("run_stop", {"run_id": run_id, "api_key": api_key}))
    if str(run_id) not in _runs:
        return False
    _terminate(str(run_id))
    return True


def _terminate(run_id: str) -> None:
    run = _runs[run_id]
    process = run["process"]
    if process.poll() is None:
        run["stopped"] = True
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
