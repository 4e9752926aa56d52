"""FedML launch jobs and the fedml executor, against a local stand-in for fedml.api."""

from __future__ import annotations

import http.server
import importlib.util
import inspect
import json
import os
import sys
import threading
import time

import pytest

import fedml_standin
from pipedsl import TaskTimeout, job, workflow
from pipedsl.fedml import (
    FedMLExecutor,
    JobStatus,
    LaunchJob,
    ModelDeployJob,
    ModelInferenceJob,
    PollPolicy,
    TrainJob,
    Workflow,
    WorkflowFailed,
)
from pipedsl.fedml.jobs import RUN_STATUS_MAP


@pytest.fixture
def fedml_api(monkeypatch):
    # The jobs of this module must be importable where FedML runs them, as
    # user code installed on the FedML machine would be.
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.abspath(__file__)))
    api = fedml_standin.install()
    yield api
    fedml_standin.uninstall()


def write_yaml(folder, name, job_commands, bootstrap=""):
    workspace = folder / f"{name}-workspace"
    workspace.mkdir()
    path = folder / f"{name}.yaml"
    path.write_text(
        json.dumps({"workspace": workspace.name, "bootstrap": bootstrap, "job": job_commands})
    )
    return str(path)


def fast_workflow(name="launch"):
    return Workflow(name, store="memory://fedml-launch", max_poll_interval=0.1)


# -- status mapping ----------------------------------------------------------------


def test_every_run_status_maps(fedml_api):
    from fedml.api.constants import RunStatus

    assert {member.value for member in RunStatus} == set(RUN_STATUS_MAP)
    expected = {
        JobStatus.PROVISIONING: {"NOT_STARTED", "QUEUED", "PRE_QUEUE", "CLUSTER_QUEUE", "PROVISIONING"},
        JobStatus.RUNNING: {"STARTING", "LAUNCHED", "RUNNING"},
        JobStatus.FINISHED: {"FINISHED"},
        JobStatus.FAILED: {"STOPPING", "KILLED", "FAILED", "ABANDONED", "ERROR", "BLOCKED", "INVALID"},
        JobStatus.UNDETERMINED: {"UNDETERMINED"},
    }
    for job_status, names in expected.items():
        for name in names:
            assert JobStatus.get_job_status_from_run_status(RunStatus[name]) is job_status, name
    assert JobStatus.get_job_status_from_run_status("SOMETHING_NEW") is JobStatus.UNDETERMINED


# -- launch jobs -----------------------------------------------------------------------


def test_launch_job_runs_yaml_commands(fedml_api, tmp_path):
    marker = tmp_path / "marker.txt"
    path = write_yaml(
        tmp_path, "hello", f"echo bootstrapped-$FEDML_CURRENT_RUN_ID > {marker}", "true"
    )
    launch = LaunchJob("hello", path, api_key="secret-key")
    flow = fast_workflow()
    flow.add_job(launch)
    flow.run()
    assert marker.read_text().strip() == f"bootstrapped-{launch.run_id}"
    assert flow.get_workflow_output() == {"run_id": launch.run_id}
    launches = [kw for name, kw in fedml_api.calls if name == "launch_job"]
    assert launches == [{"yaml_file": path, "api_key": "secret-key"}]
    assert all(kw["api_key"] == "secret-key" for _, kw in fedml_api.calls)


def test_fedml_names_for_yaml_and_key(fedml_api, tmp_path):
    path = write_yaml(tmp_path, "train", "true")
    train = TrainJob("train", job_yaml_absolute_path=path, job_api_key="k")
    assert train.job_yaml == path
    assert train.api_key == "k"
    with pytest.raises(TypeError, match="both job_yaml and job_yaml_absolute_path"):
        LaunchJob("x", path, job_yaml_absolute_path=path)


def test_failed_run_names_job_and_status(fedml_api, tmp_path):
    path = write_yaml(tmp_path, "broken", "exit 3")
    flow = fast_workflow()
    flow.add_job(LaunchJob("broken", path))
    with pytest.raises(WorkflowFailed, match=r"job 'broken'.*RunStatus FAILED"):
        flow.run()


def test_launch_rejected_reports_code(fedml_api, tmp_path):
    fedml_api.required_api_key = "right"
    path = write_yaml(tmp_path, "denied", "true")
    flow = fast_workflow()
    flow.add_job(LaunchJob("denied", path, api_key="wrong"))
    with pytest.raises(WorkflowFailed, match=r"returned code 10: LAUNCH_REQUEST_FAILED"):
        flow.run()


def test_missing_yaml_named(fedml_api, tmp_path):
    flow = fast_workflow()
    flow.add_job(LaunchJob("ghost", str(tmp_path / "ghost.yaml")))
    with pytest.raises(WorkflowFailed, match=r"ghost.yaml' of job 'ghost' not found"):
        flow.run()


def test_undetermined_then_finished_passes(fedml_api, tmp_path):
    from fedml.api.constants import RunStatus

    path = write_yaml(tmp_path, "flaky", "sleep 0.3")

    class Flaky(LaunchJob):
        def run(self):
            super().run()
            fedml_api.queue_statuses(
                self.run_id,
                [RunStatus.PRE_QUEUE, RunStatus.UNDETERMINED, RunStatus.UNDETERMINED],
            )

    flaky = Flaky("flaky", path)
    flow = fast_workflow()
    flow.add_job(flaky)
    flow.run()
    statuses = [kw for name, kw in fedml_api.calls if name == "run_status"]
    assert len(statuses) >= 4
    assert flow.get_job_status("flaky") is JobStatus.FINISHED


def test_failure_stops_other_runs(fedml_api, tmp_path):
    slow_path = write_yaml(tmp_path, "slow", "sleep 30")
    bad_path = write_yaml(tmp_path, "bad", "sleep 0.3; exit 1")
    slow = LaunchJob("slow", slow_path)
    flow = fast_workflow()
    flow.add_job(slow)
    flow.add_job(LaunchJob("bad", bad_path))
    started = time.monotonic()
    with pytest.raises(WorkflowFailed) as info:
        flow.run()
    assert time.monotonic() - started < 10
    assert list(info.value.failed) == ["bad"]
    assert info.value.killed == ["slow"]
    stops = [kw for name, kw in fedml_api.calls if name == "run_stop"]
    assert stops == [{"run_id": slow.run_id, "api_key": None}]
    assert fedml_api.run_info(slow.run_id)["process"].poll() is not None


def test_missing_fedml_explains_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "fedml", None)
    monkeypatch.setitem(sys.modules, "fedml.api", None)
    flow = fast_workflow()
    flow.add_job(LaunchJob("train", write_yaml(tmp_path, "train", "true")))
    with pytest.raises(WorkflowFailed) as info:
        flow.run()
    assert "pip install 'pipedsl[fedml]'" in str(info.value)


def test_deploy_job_sets_endpoint_name(fedml_api, tmp_path):
    path = write_yaml(tmp_path, "deploy", "true")
    deploy = ModelDeployJob("deploy", endpoint_name="digits-ep", job_yaml_absolute_path=path)
    flow = fast_workflow()
    flow.add_job(deploy)
    flow.run()
    config = fedml_api.run_info(deploy.run_id)["config"]
    assert config["serving_args"] == {"endpoint_name": "digits-ep"}
    assert flow.get_workflow_output() == {
        "run_id": deploy.run_id,
        "endpoint_id": deploy.run_id,
        "endpoint_name": "digits-ep",
    }
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".deploy.yaml")]
    assert leftovers == []


def test_inference_job_posts_to_url():
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's method name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((body, self.headers["Authorization"]))
            payload = json.dumps({"prediction": sum(body["pixels"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/predict"
        infer = ModelInferenceJob("infer", job_api_key="token", inference_url=url)
        flow = fast_workflow()
        flow.add_job(infer)
        flow.set_workflow_input({"pixels": [1, 2, 3]})
        flow.run()
        assert flow.get_workflow_output() == {"prediction": 6}
        assert received == [({"pixels": [1, 2, 3]}, "Bearer token")]

        broken = ModelInferenceJob("broken", inference_url=url + "-missing-port:1")
        flow = fast_workflow()
        flow.add_job(broken)
        with pytest.raises(WorkflowFailed, match="inference request to"):
            flow.run()
    finally:
        server.shutdown()


def test_inference_job_without_url_named():
    flow = fast_workflow()
    flow.add_job(ModelInferenceJob("infer"))
    with pytest.raises(WorkflowFailed, match=r"job 'infer' has no inference URL"):
        flow.run()


# -- the fedml executor -----------------------------------------------------------------


@job
def square(x: int) -> int:
    return x * x


@job
def total(values: list) -> dict:
    return {"total": sum(values), "pid": os.getpid()}


@job
def explode(x: int) -> int:
    raise KeyError(f"no row {x}")


@job(timeout=1.0)
def hang() -> int:
    time.sleep(60)
    return 0


def executor():
    return FedMLExecutor(
        api_key="exec-key",
        python=sys.executable,
        poll=PollPolicy(interval=0.05, max_interval=0.2, undetermined_timeout=30),
    )


@pytest.mark.slow
@pytest.mark.s3
def test_executor_runs_tasks_through_s3(fedml_api, s3_store_url):
    url, options = s3_store_url

    @workflow
    def squares(n: int) -> dict:
        return total([square(i) for i in range(n)])

    run = squares.run(3, executor=executor(), store=url, storage_options=options, progress=False)
    result = run.result()
    assert result["total"] == 0 + 1 + 4
    assert result["pid"] != os.getpid()
    launches = [kw for name, kw in fedml_api.calls if name == "launch_job"]
    assert len(launches) == 4
    assert {kw["api_key"] for kw in launches} == {"exec-key"}
    # Only the two URLs cross FedML: the YAML holds no value and no secret.
    for run_id, info in fedml_api._runs.items():
        text = json.dumps(info["config"])
        assert "pipedsl.worker s3://" in text
        assert "testing" not in text
    rerun = squares.run(3, executor=executor(), store=url, storage_options=options, progress=False)
    assert rerun.counts().get("cached") == 4


@pytest.mark.s3
def test_executor_reports_task_error(fedml_api, s3_store_url):
    url, options = s3_store_url
    with pytest.raises(KeyError, match="no row 7"):
        explode(7).result(executor=executor(), store=url, storage_options=options, progress=False)


@pytest.mark.s3
def test_executor_timeout_stops_run(fedml_api, s3_store_url):
    url, options = s3_store_url
    with pytest.raises(TaskTimeout):
        hang().result(executor=executor(), store=url, storage_options=options, progress=False)
    deadline = time.time() + 5
    stops = []
    while not stops and time.time() < deadline:
        stops = [kw for name, kw in fedml_api.calls if name == "run_stop"]
        time.sleep(0.05)
    assert len(stops) == 1
    assert fedml_api.run_info(stops[0]["run_id"])["process"].poll() is not None


def test_executor_yaml_computing_and_resource_checks(tmp_path):
    fedml_executor = FedMLExecutor(python="python3", bootstrap="pip install pipedsl")
    fedml_executor.check_resources("train", {"gpus": 2, "resource_type": "A100"})
    with pytest.raises(ValueError, match=r"job 'train' requests resources \['cpus'\]"):
        fedml_executor.check_resources("train", {"cpus": 4})

    from pipedsl import ArtifactStore
    from pipedsl.fedml.launch import _Launch
    from pipedsl.worker import TaskSpec

    store = ArtifactStore("s3://bucket/prefix", {"key": "id", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})
    spec = TaskSpec("square-abc", square, (2,), {}, store, {})
    launch = _Launch(spec, "bucket/prefix/fedml-tasks/t", str(tmp_path))
    import yaml

    config = yaml.safe_load(fedml_executor.job_yaml(spec, {"gpus": 2}, launch))
    assert config["workspace"] == "workspace"
    assert config["bootstrap"] == "pip install pipedsl"
    assert config["computing"] == {"minimum_num_gpus": 2}
    assert "python3 -m pipedsl.worker s3://bucket/prefix/fedml-tasks/t/spec.pkl" in config["job"]
    assert "endpoint_url" in config["job"]
    assert '"secret"' not in config["job"]
    assert '"key"' not in config["job"]


def test_executor_rejects_memory_store(fedml_api):
    with pytest.raises(ValueError, match="cannot read an in-memory store"):
        square(2).result(executor=executor(), store="memory://x", progress=False)


# -- the stand-in against the real fedml ------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("fedml") is None, reason="fedml is not installed"
)
def test_standin_signatures_match_fedml():
    import fedml.api as real

    standin = fedml_standin.install()
    try:
        for name in ("launch_job", "run_status", "run_stop"):
            expected = list(inspect.signature(getattr(real, name)).parameters)
            assert list(inspect.signature(getattr(standin, name)).parameters) == expected
        real_members = {m.value for m in real.RunStatus}
        assert real_members == {m.value for m in standin.RunStatus}
    finally:
        fedml_standin.uninstall()
