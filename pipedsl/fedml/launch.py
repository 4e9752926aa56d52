"""FedML launch: jobs that launch a job YAML, and the ``"fedml"`` executor.

Everything here talks to FedML only through four functions of ``fedml.api``
(fedml 0.9.6): ``launch_job(yaml_file, api_key=...)`` returning a
``LaunchResult`` (``run_id``, ``result_code``, ``result_message``),
``run_status(run_id=..., api_key=...)`` returning ``(run_list, RunStatus)``,
and ``run_stop(run_id, api_key=...)``. ``fedml`` is imported on first use,
so pipedsl works without it.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any

import cloudpickle

from ..errors import RunCancelled, RunError
from ..executors.base import Executor
from ..store import safe_name
from ..worker import TaskSpec
from .jobs import Job, JobStatus, PollPolicy

__all__ = [
    "FedMLExecutor",
    "LaunchJob",
    "ModelDeployJob",
    "ModelInferenceJob",
    "TrainJob",
    "fedml_api",
]

logger = logging.getLogger(__name__)


def fedml_api() -> Any:
    """Import and return ``fedml.api``, or raise ImportError saying how to install it."""
    try:
        import fedml.api
    except ImportError as exc:
        raise ImportError(
            f"FedML launch needs the fedml package, which cannot be imported ({exc}); "
            "install it with: pip install 'pipedsl[fedml]'"
        ) from exc
    return fedml.api


# -- class-based launch jobs ------------------------------------------------------


class LaunchJob(Job):
    """A job that launches a FedML job YAML and follows the FedML run.

    Parameters
    ----------
    name:
        Name of the job in the workflow.
    job_yaml:
        Path of the FedML job YAML (``workspace``, ``job``, ``bootstrap``,
        ``computing``...). ``job_yaml_absolute_path`` is FedML's name for it.
    api_key:
        FedML API key; ``None`` uses the key FedML has stored after
        ``fedml login``. ``job_api_key`` is FedML's name for it.

    Each ``RunStatus`` maps to a :class:`JobStatus` through
    :meth:`JobStatus.get_job_status_from_run_status`. A failed status query
    counts as UNDETERMINED, which the workflow tolerates for its
    ``undetermined_timeout``. The output dict contains ``run_id``.

    NOTE: the job's ``input_data_dict`` is not sent to the launched run, and
    the run's own outputs are not read back. FedML's ``TrainJob`` does both
    through its cloud storage.

    Examples
    --------
    >>> job = LaunchJob("train", "train_job.yaml", api_key=None)
    >>> job.run_id is None
    True
    """

    def __init__(
        self,
        name: str,
        job_yaml: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        *,
        job_yaml_absolute_path: str | os.PathLike[str] | None = None,
        job_api_key: str | None = None,
    ) -> None:
        super().__init__(name)
        if job_yaml is not None and job_yaml_absolute_path is not None:
            raise TypeError(
                f"job {name!r} got both job_yaml and job_yaml_absolute_path; pass one"
            )
        if api_key is not None and job_api_key is not None:
            raise TypeError(f"job {name!r} got both api_key and job_api_key; pass one")
        path = job_yaml if job_yaml is not None else job_yaml_absolute_path
        self.job_yaml = None if path is None else os.path.abspath(os.fspath(path))
        self.api_key = api_key if api_key is not None else job_api_key
        self.run_id: str | None = None
        self.launch_result: Any = None
        self.launch_result_code = 0
        self.launch_result_message: str | None = None
        self.run_status: Any = None

    # FedML's attribute names.
    @property
    def job_yaml_absolute_path(self) -> str | None:
        return self.job_yaml

    @property
    def job_api_key(self) -> str | None:
        return self.api_key

    def _yaml_to_launch(self) -> str:
        """Return the YAML path to launch; subclasses may write a modified copy."""
        if self.job_yaml is None:
            raise ValueError(
                f"job {self.name!r} has no job YAML; pass job_yaml='path/to/job.yaml'"
            )
        if not os.path.isfile(self.job_yaml):
            raise FileNotFoundError(
                f"job YAML {self.job_yaml!r} of job {self.name!r} not found; pass the "
                "path of an existing FedML job YAML"
            )
        return self.job_yaml

    def run(self) -> None:
        """Launch the job YAML with ``fedml.api.launch_job``."""
        api = fedml_api()
        self.run_id = None
        self.run_status = None
        result = api.launch_job(self._yaml_to_launch(), api_key=self.api_key)
        self.launch_result = result
        self.launch_result_code = int(getattr(result, "result_code", -1))
        self.launch_result_message = getattr(result, "result_message", None)
        run_id = getattr(result, "run_id", None)
        if run_id not in (None, "", 0, "0"):
            self.run_id = str(run_id)
        if self.launch_result_code != 0 or self.run_id is None:
            logger.error(
                "launch of job %s failed: code %s, %s",
                self.name,
                self.launch_result_code,
                self.launch_result_message,
            )
        else:
            logger.info("launched job %s as FedML run %s", self.name, self.run_id)
        self.output_data_dict = {"run_id": self.run_id}

    def status(self) -> JobStatus:
        """Query ``fedml.api.run_status`` and map the RunStatus to a JobStatus."""
        if self.launch_result_code != 0:
            return JobStatus.FAILED
        if self.run_id is None:
            return JobStatus.FAILED if self.launch_result is not None else JobStatus.UNDETERMINED
        try:
            _, run_status = fedml_api().run_status(run_id=self.run_id, api_key=self.api_key)
        except Exception as exc:  # noqa: BLE001 - reported as UNDETERMINED, which is bounded
            logger.warning(
                "status query of FedML run %s (job %s) failed: %s: %s",
                self.run_id,
                self.name,
                type(exc).__name__,
                exc,
            )
            return JobStatus.UNDETERMINED
        self.run_status = run_status
        return JobStatus.get_job_status_from_run_status(run_status)

    def kill(self) -> None:
        """Stop the FedML run with ``fedml.api.run_stop``."""
        if self.run_id is None:
            return
        stopped = fedml_api().run_stop(self.run_id, api_key=self.api_key)
        logger.info("stopped FedML run %s of job %s: %s", self.run_id, self.name, stopped)

    def failure_reason(self) -> str | None:
        if self.launch_result is not None and (self.launch_result_code != 0 or not self.run_id):
            return (
                f"FedML launch of {self.job_yaml} returned code {self.launch_result_code}: "
                f"{self.launch_result_message}"
            )
        if self.run_status is not None:
            status = getattr(self.run_status, "value", self.run_status)
            return f"FedML run {self.run_id} ended with RunStatus {status}"
        return None


class TrainJob(LaunchJob):
    """A training job launched from a FedML job YAML (FedML's ``TrainJob``)."""

    def __init__(
        self,
        name: str,
        job_yaml_absolute_path: str | os.PathLike[str] | None = None,
        job_api_key: str | None = None,
    ) -> None:
        super().__init__(name, job_yaml_absolute_path, job_api_key)


class ModelDeployJob(LaunchJob):
    """A deploy job: launches its YAML with ``serving_args.endpoint_name`` set.

    The output dict contains ``run_id``, ``endpoint_id`` (the launch's
    ``inner_id``) and ``endpoint_name``.
    """

    def __init__(
        self,
        name: str,
        endpoint_name: str | None = None,
        job_yaml_absolute_path: str | os.PathLike[str] | None = None,
        job_api_key: str | None = None,
    ) -> None:
        super().__init__(name, job_yaml_absolute_path, job_api_key)
        self.endpoint_name = endpoint_name
        self._launched_copy: str | None = None

    def _yaml_to_launch(self) -> str:
        path = super()._yaml_to_launch()
        if self.endpoint_name is None:
            return path
        import yaml  # a dependency of fedml, so present wherever launching works

        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
        config.setdefault("serving_args", {})["endpoint_name"] = self.endpoint_name
        folder = os.path.dirname(path)
        copy = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.yaml")
        with open(copy, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle)
        self._launched_copy = copy
        return copy

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self._launched_copy is not None and os.path.exists(self._launched_copy):
                os.unlink(self._launched_copy)
            self._launched_copy = None
        inner_id = getattr(self.launch_result, "inner_id", None)
        self.output_data_dict = {
            "run_id": self.run_id,
            "endpoint_id": inner_id,
            "endpoint_name": self.endpoint_name,
        }


class ModelInferenceJob(Job):
    """Sends one JSON request to a deployed model's inference URL.

    The URL is ``inference_url``, or the ``inference_url`` found in the
    output of a dependency. The request body is ``request_body``, or else
    the job's input dict. The JSON response becomes the output dict.

    NOTE: FedML looks the URL up from ``endpoint_id`` through its cloud
    model cards API; this job does not, so the URL must be given or come
    from a dependency.
    """

    def __init__(
        self,
        name: str,
        endpoint_id: str | None = None,
        job_api_key: str | None = None,
        *,
        inference_url: str | None = None,
        request_body: Any = None,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(name)
        self.endpoint_id = endpoint_id
        self.job_api_key = job_api_key
        self.inference_url = inference_url
        self.request_body = request_body
        self.timeout = timeout
        self._status = JobStatus.PROVISIONING
        self._error: str | None = None

    def _url(self) -> str:
        if self.inference_url:
            return self.inference_url
        for value in self.input_data_dict.values():
            if isinstance(value, dict) and value.get("inference_url"):
                return str(value["inference_url"])
        raise ValueError(
            f"job {self.name!r} has no inference URL: pass inference_url=..., or depend "
            "on a job whose output has an 'inference_url'"
        )

    def run(self) -> None:
        url = self._url()
        body = self.request_body if self.request_body is not None else self.input_data_dict
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.job_api_key:
            headers["Authorization"] = f"Bearer {self.job_api_key}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        self._status = JobStatus.RUNNING
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                payload = json.loads(response.read() or b"{}")
        except (OSError, ValueError) as exc:
            self._status = JobStatus.FAILED
            self._error = f"inference request to {url} failed: {type(exc).__name__}: {exc}"
            logger.error("job %s: %s", self.name, self._error)
            return
        self.output_data_dict = payload if isinstance(payload, dict) else {"response": payload}
        self._status = JobStatus.FINISHED

    def status(self) -> JobStatus:
        return self._status

    def kill(self) -> None:
        return None

    def failure_reason(self) -> str | None:
        return self._error


# -- the executor -------------------------------------------------------------------

_SECRET = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)
_COMPUTING = {
    "gpus": "minimum_num_gpus",
    "resource_type": "resource_type",
    "maximum_cost_per_hour": "maximum_cost_per_hour",
    "device_type": "device_type",
}


def _public_options(options: Any) -> Any:
    """Return storage options without credentials, which the remote side supplies."""
    if isinstance(options, dict):
        return {
            k: _public_options(v)
            for k, v in options.items()
            if not (isinstance(k, str) and _SECRET.search(k) and k != "key_prefix")
        }
    return options


def _yaml_scalar(value: Any) -> str:
    # A JSON string, number or bool is also a valid YAML scalar.
    return json.dumps(value)


class _Launch:
    """A task launched on FedML: its run id and the URLs of its spec and outcome."""

    def __init__(self, spec: TaskSpec, folder: str, workspace_root: str) -> None:
        self.key = spec.key
        self.job = spec.job.name
        self.store = spec.store
        self.folder = folder
        self.spec_path = f"{folder}/spec.pkl"
        self.outcome_path = f"{folder}/outcome.pkl"
        self.local = workspace_root
        self.run_id: str | None = None
        self.cancelled = threading.Event()


class FedMLExecutor(Executor):
    """Runs each task as a FedML launch job (``executor="fedml"``).

    For each task the executor pickles the :class:`~pipedsl.worker.TaskSpec`
    into the artifact store, writes a workspace and a job YAML whose entry
    command is ``python -m pipedsl.worker SPEC_URL OUTCOME_URL``, launches
    it with ``fedml.api.launch_job`` and polls ``fedml.api.run_status``.
    Only the two URLs travel through FedML: inputs and outputs go through
    the store, which must therefore be reachable from the FedML machines
    (S3 or similar, not ``memory://``). Storage options without credentials
    are exported to the job as ``FSSPEC_<PROTOCOL>``; credentials must come
    from the remote environment (for S3, ``AWS_ACCESS_KEY_ID`` and so on).
    Jobs travel pickled with cloudpickle: those defined in ``__main__`` go by
    value, and those of an importable module need that module installed on
    the FedML machine (``bootstrap`` can install it).

    Parameters
    ----------
    api_key:
        FedML API key; ``None`` uses the stored login.
    python:
        Python command on the FedML machine.
    bootstrap:
        Shell commands run before the job, e.g. ``"pip install pipedsl[s3]"``.
    job_type:
        FedML ``job_type`` of the YAML.
    poll:
        Status polling policy (backoff and UNDETERMINED tolerance).
    workspace_root:
        Local folder for the generated workspaces (default: the temp folder).

    Examples
    --------
    >>> executor = FedMLExecutor(python="python3", bootstrap="pip install pipedsl[s3]")
    >>> executor.check_resources("train", {"gpus": 1})
    """

    name = "fedml"
    in_process = False
    capacity = 0

    def __init__(
        self,
        api_key: str | None = None,
        *,
        python: str = "python",
        bootstrap: str = "",
        job_type: str = "train",
        poll: PollPolicy | None = None,
        workspace_root: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.python = python
        self.bootstrap = bootstrap
        self.job_type = job_type
        self.poll = poll or PollPolicy(interval=0.05, max_interval=5.0, undetermined_timeout=120.0)
        self.workspace_root = workspace_root
        self._lock = threading.Lock()
        self._launches: dict[int, _Launch] = {}
        self._closed = threading.Event()

    def check_resources(self, job_name: str, resources: dict[str, Any]) -> None:
        unknown = sorted(set(resources) - set(_COMPUTING))
        if unknown:
            raise ValueError(
                f"job {job_name!r} requests resources {unknown!r}, which a FedML job YAML "
                f"cannot express; use {sorted(_COMPUTING)} (they become its computing "
                "section) or run it on another executor"
            )

    # -- building the launch ---------------------------------------------------------

    def job_yaml(self, spec: TaskSpec, resources: dict[str, Any], launch: _Launch) -> str:
        """Return the text of the job YAML that runs ``spec``."""
        store = spec.store
        spec_url = self._url(store, launch.spec_path)
        outcome_url = self._url(store, launch.outcome_path)
        lines = []
        protocol = store.fs.protocol
        protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        options = _public_options(store.storage_options)
        if options and protocol not in ("file", "local"):
            env = f"FSSPEC_{protocol.upper()}"
            lines.append(f"export {env}={shlex.quote(json.dumps(options))}")
        lines.append(
            f"{self.python} -m pipedsl.worker {shlex.quote(spec_url)} {shlex.quote(outcome_url)}"
        )
        computing = {_COMPUTING[k]: v for k, v in resources.items()}
        text = [
            f"workspace: {_yaml_scalar('workspace')}",
            f"job_type: {_yaml_scalar(self.job_type)}",
            f"bootstrap: {_yaml_scalar(self.bootstrap)}",
            f"job: {_yaml_scalar(chr(10).join(lines))}",
        ]
        if computing:
            text.append("computing:")
            text += [f"  {k}: {_yaml_scalar(v)}" for k, v in sorted(computing.items())]
        return "\n".join(text) + "\n"

    @staticmethod
    def _url(store: Any, path: str) -> str:
        if store.is_local:
            return path
        protocol = store.fs.protocol
        protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        return f"{protocol}://{path}"

    def _prepare(self, spec: TaskSpec, resources: dict[str, Any]) -> tuple[_Launch, str]:
        store = spec.store
        if store.url.startswith("memory://"):
            raise ValueError(
                f"the fedml executor cannot run job {spec.job.name!r} with store "
                f"{store.url!r}: FedML machines cannot read an in-memory store; use "
                "an S3 (or other shared) store URL"
            )
        name = f"{safe_name(spec.key)}-{uuid.uuid4().hex[:8]}"
        folder = f"{store.root}/fedml-tasks/{name}"
        local = tempfile.mkdtemp(prefix=f"pipedsl-fedml-{safe_name(spec.job.name)}-",
                                 dir=self.workspace_root)
        launch = _Launch(spec, folder, local)

        store.fs.makedirs(folder, exist_ok=True)
        store.fs.pipe_file(launch.spec_path, cloudpickle.dumps(spec))
        workspace = os.path.join(local, "workspace")
        os.makedirs(workspace)
        with open(os.path.join(workspace, "task.json"), "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "key": spec.key,
                    "job": spec.job.name,
                    "spec": self._url(store, launch.spec_path),
                    "outcome": self._url(store, launch.outcome_path),
                },
                handle,
                indent=2,
            )

        yaml_path = os.path.join(local, "job.yaml")
        with open(yaml_path, "w", encoding="utf-8") as handle:
            handle.write(self.job_yaml(spec, resources, launch))
        return launch, yaml_path

    # -- the executor interface --------------------------------------------------------

    def submit(self, spec: TaskSpec, resources: dict[str, Any]) -> concurrent.futures.Future[Any]:
        api = fedml_api()
        launch, yaml_path = self._prepare(spec, resources)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._launches[id(future)] = launch
        thread = threading.Thread(
            target=self._follow,
            args=(api, launch, yaml_path, future),
            name=f"pipedsl-fedml-{launch.job}",
            daemon=True,
        )
        thread.start()
        return future

    def _follow(
        self, api: Any, launch: _Launch, yaml_path: str, future: concurrent.futures.Future[Any]
    ) -> None:
        try:
            outcome = self._launch_and_wait(api, launch, yaml_path)
        except BaseException as exc:  # noqa: BLE001 - reported through the future
            _resolve(future, error=exc)
        else:
            _resolve(future, outcome=outcome)
        finally:
            with self._lock:
                self._launches.pop(id(future), None)
            self._cleanup(launch)

    def _launch_and_wait(self, api: Any, launch: _Launch, yaml_path: str) -> Any:
        result = api.launch_job(yaml_path, api_key=self.api_key)
        code = getattr(result, "result_code", -1)
        run_id = getattr(result, "run_id", None)
        if code != 0 or run_id in (None, "", 0, "0"):
            raise RunError(
                f"FedML could not launch job {launch.job!r} (task {launch.key}): code "
                f"{code}, {getattr(result, 'result_message', None)}; check the API key "
                "and the computing resources requested"
            )
        launch.run_id = str(run_id)
        logger.info("task %s runs as FedML run %s", launch.key, launch.run_id)
        if launch.cancelled.is_set():
            api.run_stop(launch.run_id, api_key=self.api_key)
            raise RunCancelled(f"task {launch.key} was cancelled")
        status = self._wait(api, launch)
        outcome = self._read_outcome(launch)
        if outcome is not None:
            return outcome
        raise RunError(
            f"FedML run {launch.run_id} of job {launch.job!r} (task {launch.key}) ended "
            f"with {status} and wrote no outcome to {self._url(launch.store, launch.outcome_path)}; "
            "read its logs with `fedml run logs` to see why the worker did not start"
        )

    def _wait(self, api: Any, launch: _Launch) -> str:
        delay = self.poll.interval
        undetermined_since: float | None = None
        previous = None
        while True:
            if launch.cancelled.is_set() or self._closed.is_set():
                raise RunCancelled(f"task {launch.key} was cancelled")
            try:
                _, run_status = api.run_status(run_id=launch.run_id, api_key=self.api_key)
                status = JobStatus.get_job_status_from_run_status(run_status)
            except Exception as exc:  # noqa: BLE001 - a transient query failure
                logger.warning("status query of FedML run %s failed: %s", launch.run_id, exc)
                run_status, status = "query failed", JobStatus.UNDETERMINED
            name = str(getattr(run_status, "value", run_status))
            if status.terminal:
                return f"RunStatus {name}"
            now = time.monotonic()
            if status is JobStatus.UNDETERMINED:
                undetermined_since = undetermined_since or now
                if now - undetermined_since > self.poll.undetermined_timeout:
                    raise RunError(
                        f"FedML run {launch.run_id} of job {launch.job!r} reported "
                        f"UNDETERMINED for more than {self.poll.undetermined_timeout:g}s; "
                        "raise FedMLExecutor(poll=PollPolicy(undetermined_timeout=...))"
                    )
            else:
                undetermined_since = None
            if name != previous:
                previous = name
                delay = self.poll.interval
            launch.cancelled.wait(delay)
            delay = min(delay * 2, self.poll.max_interval)

    def _read_outcome(self, launch: _Launch) -> Any:
        fs = launch.store.fs
        try:
            fs.invalidate_cache(launch.folder)
            data = fs.cat_file(launch.outcome_path)
        except FileNotFoundError:
            return None
        return cloudpickle.loads(data)

    def _cleanup(self, launch: _Launch) -> None:
        shutil.rmtree(launch.local, ignore_errors=True)
        try:
            launch.store.fs.rm(launch.folder, recursive=True)
        except (FileNotFoundError, OSError) as exc:
            logger.debug("could not remove %s: %s", launch.folder, exc)

    def cancel(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            launch = self._launches.get(id(future))
        if launch is None:
            return
        launch.cancelled.set()
        if launch.run_id is not None:
            try:
                fedml_api().run_stop(launch.run_id, api_key=self.api_key)
            except Exception as exc:  # noqa: BLE001 - the run is abandoned either way
                logger.warning("run_stop of FedML run %s failed: %s", launch.run_id, exc)
            else:
                logger.info("stopped FedML run %s of task %s", launch.run_id, launch.key)
        _resolve(future, error=RunCancelled(f"task {launch.key} was cancelled"))

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            running = list(self._launches.values())
        for launch in running:
            launch.cancelled.set()
            if launch.run_id is not None:
                logger.warning("stopping FedML run %s of task %s at shutdown", launch.run_id, launch.key)
                try:
                    fedml_api().run_stop(launch.run_id, api_key=self.api_key)
                except Exception as exc:  # noqa: BLE001 - shutting down regardless
                    logger.warning("run_stop of FedML run %s failed: %s", launch.run_id, exc)


def _resolve(
    future: concurrent.futures.Future[Any],
    outcome: Any = None,
    error: BaseException | None = None,
) -> None:
    """Resolve ``future`` unless cancel() resolved it first."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        pass
