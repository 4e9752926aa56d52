"""Serving a workflow over HTTP: validation, auth, limits, runs and caching."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from conftest import free_port
from pipedsl import job, load_run, workflow
from pipedsl.endpoints import Endpoint
from pipedsl.serve import BackgroundServer, create_app, serve_command
from test_endpoints import ScriptedServer


@job
def scale(values: list[float], factor: int) -> list[float]:
    return [value * factor for value in values]


@job
def explode(reason: str) -> str:
    raise ValueError(f"refusing to work: {reason}")


@job
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


class Summary(BaseModel):
    total: float
    count: int


@job
def summarise(values: list[float]) -> Summary:
    return Summary(total=sum(values), count=len(values))


@workflow
def scaled(values: list[float], factor: int = 2, label: str = "x") -> dict:
    """Multiply each value by factor."""
    return {"label": label, "values": scale(values, factor), "summary": summarise(values)}


@workflow
def failing(reason: str) -> str:
    return explode(reason)


@workflow
def sleepy(seconds: float) -> float:
    return nap(seconds)


@pytest.fixture
def serve_app(tmp_path):
    """Start an app for a workflow; yield a function that returns its base URL."""
    servers: list[BackgroundServer] = []

    def start(wf, **options) -> str:
        options.setdefault("store", str(tmp_path / "store"))
        server = BackgroundServer(create_app(wf, **options), port=free_port()).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


# -- inputs -----------------------------------------------------------------------------


def test_run_returns_json_output(serve_app):
    url = serve_app(scaled)
    response = httpx.post(url + "/run", json={"values": [1.5, 2], "factor": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["output"] == {
        "label": "x",
        "values": [4.5, 6.0],
        "summary": {"total": 3.5, "count": 2},
    }
    assert body["tasks"] == {"done": 2}
    assert body["run_id"]


def test_string_for_int_is_422(serve_app):
    url = serve_app(scaled)
    response = httpx.post(url + "/run", json={"values": [1.0], "factor": "3"})
    assert response.status_code == 422
    body = response.json()
    assert "'factor'" in body["error"]
    assert "valid integer" in body["error"]
    assert body["errors"][0]["field"] == "factor"


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({}, "values", "Field required"),
        ({"values": [1.0], "scale": 2}, "scale", "Extra inputs"),
        ({"values": ["a"]}, "values.0", "valid number"),
        ({"values": [1.0], "factor": 2.5}, "factor", "valid integer"),
        ({"values": [1.0], "label": 5}, "label", "valid string"),
    ],
)
def test_invalid_inputs_name_field(serve_app, payload, field, words):
    url = serve_app(scaled)
    response = httpx.post(url + "/run", json=payload)
    assert response.status_code == 422
    body = response.json()
    assert body["errors"][0]["field"] == field
    assert words in body["error"]


def test_malformed_json_and_content_type(serve_app):
    url = serve_app(scaled)
    broken = httpx.post(
        url + "/run", content=b'{"values": [1', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    assert "Invalid JSON" in broken.json()["error"]
    form = httpx.post(url + "/run", data={"values": "1"})
    assert form.status_code == 415
    assert "application/json" in form.json()["error"]


def test_body_size_limit(serve_app):
    url = serve_app(scaled, max_body=256)
    big = httpx.post(url + "/run", json={"values": [1.0] * 200})
    assert big.status_code == 413
    assert "256 bytes" in big.json()["error"]

    def chunks():
        yield b'{"values": ['
        for _ in range(100):
            yield b"1.0, "
        yield b"1.0]}"

    streamed = httpx.post(
        url + "/run", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    small = httpx.post(url + "/run", json={"values": [1.0]})
    assert small.status_code == 200


# -- auth, health and schema --------------------------------------------------------------


def test_bearer_token(serve_app):
    url = serve_app(scaled, token="s3cret")
    assert httpx.post(url + "/run", json={"values": [1.0]}).status_code == 401
    wrong = httpx.post(
        url + "/run", json={"values": [1.0]}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    right = httpx.post(
        url + "/run", json={"values": [1.0]}, headers={"Authorization": "Bearer s3cret"}
    )
    assert right.status_code == 200
    assert httpx.get(url + "/openapi.json").status_code == 401
    assert httpx.get(url + "/health").status_code == 200


def test_openapi_schema(serve_app):
    url = serve_app(scaled)
    schema = httpx.get(url + "/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    inputs = schema["components"]["schemas"]["Inputs"]
    assert inputs["required"] == ["values"]
    assert inputs["properties"]["factor"] == {"default": 2, "title": "Factor", "type": "integer"}
    assert inputs["additionalProperties"] is False
    operation = schema["paths"]["/run"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Inputs"
    }
    assert set(operation["responses"]) >= {"200", "422", "500"}
    assert "Multiply each value" in schema["info"]["description"]


def test_health(serve_app):
    url = serve_app(scaled)
    assert httpx.get(url + "/health").json() == {"status": "ok", "workflow": "scaled"}


# -- runs -------------------------------------------------------------------------------


def test_failed_run_names_job_without_traceback(serve_app):
    url = serve_app(failing)
    response = httpx.post(url + "/run", json={"reason": "tired"})
    assert response.status_code == 500
    body = response.json()
    assert body["job"] == "explode"
    assert "job 'explode' failed" in body["error"]
    assert "refusing to work: tired" in body["error"]
    assert "traceback" not in body
    assert "Traceback" not in response.text
    assert "test_serve.py" not in response.text


def test_failed_run_traceback_in_debug(serve_app):
    url = serve_app(failing, debug=True)
    body = httpx.post(url + "/run", json={"reason": "tired"}).json()
    assert "Traceback" in body["traceback"]
    assert "refusing to work" in body["traceback"]


def test_concurrent_requests_get_own_runs(serve_app, tmp_path):
    url = serve_app(scaled, max_concurrency=4)

    def post(i: int) -> dict:
        return httpx.post(url + "/run", json={"values": [float(i)], "factor": 3}).json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(post, range(8)))
    assert [body["output"]["values"] for body in bodies] == [[3.0 * i] for i in range(8)]
    run_ids = {body["run_id"] for body in bodies}
    assert len(run_ids) == 8
    for run_id in run_ids:
        record = load_run(run_id, str(tmp_path / "store"))
        assert record.status == "done"
        assert record.workflow == "scaled"


def test_runs_do_not_block_event_loop(serve_app):
    url = serve_app(sleepy, max_concurrency=2)
    thread = threading.Thread(
        target=httpx.post, args=(url + "/run",), kwargs={"json": {"seconds": 1.5}, "timeout": 10}
    )
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert httpx.get(url + "/health").status_code == 200
    assert time.monotonic() - started < 0.5
    thread.join()


def test_run_timeout_kills_run(serve_app):
    url = serve_app(sleepy, run_timeout=0.5)
    started = time.monotonic()
    response = httpx.post(url + "/run", json={"seconds": 3.0}, timeout=10)
    assert response.status_code == 504
    assert "did not finish within 0.5s" in response.json()["error"]
    assert time.monotonic() - started < 2.9


# -- cached endpoint jobs -----------------------------------------------------------------


def _double_answer(body: dict) -> dict:
    return {"values": [2 * value for value in body["values"]]}


@pytest.mark.parametrize(("cache", "hits_after_two"), [(True, 1), (False, 2)])
def test_identical_requests_and_endpoint_cache(serve_app, cache, hits_after_two):
    with ScriptedServer(handler=_double_answer) as model:
        doubler = Endpoint(model.url, name="doubler", cache=cache)

        @workflow
        def doubled(values: list[float]) -> dict:
            return doubler({"values": values})

        url = serve_app(doubled)
        first = httpx.post(url + "/run", json={"values": [1.0, 2.0]}).json()
        second = httpx.post(url + "/run", json={"values": [1.0, 2.0]}).json()
        assert first["output"] == second["output"] == {"values": [2.0, 4.0]}
        assert model.hits == hits_after_two
        assert first["tasks"] == {"done": 1}
        assert second["tasks"] == ({"cached": 1} if cache else {"done": 1})


# -- the click command --------------------------------------------------------------------


def test_serve_command_rejects_bad_target(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(serve_command, ["no_colon_here"])
    assert missing.exit_code == 2
    assert "module:workflow" in missing.output
    module = tmp_path / "not_a_workflow.py"
    module.write_text("value = 3\n")
    wrong = runner.invoke(serve_command, [f"{module}:value"])
    assert wrong.exit_code == 2
    assert "not a @workflow" in wrong.output


def test_serve_command_options_in_help():
    result = CliRunner().invoke(serve_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--token", "--max-body", "--run-timeout"):
        assert option in result.output
    assert "127.0.0.1" in result.output
    assert "PIPEDSL_SERVE_TOKEN" in result.output
