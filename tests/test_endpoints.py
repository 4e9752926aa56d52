"""Endpoint jobs against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import os
import sys
import time

import httpx
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conftest import free_port
from pipedsl import job, workflow
from pipedsl.endpoints import (
    ChatEndpoint,
    ChatResponse,
    Endpoint,
    EndpointError,
    EndpointSchemaError,
    ModelServer,
    _retry_after,
    call_endpoint,
    deploy,
)
from pipedsl.serve import BackgroundServer


class Pixels(BaseModel):
    pixels: list[float]


class Features(BaseModel):
    features: list[float]


class Embedding(BaseModel):
    embedding: list[float]


class Label(BaseModel):
    label: int


@dataclasses.dataclass
class Doubled:
    values: list[float]


class ScriptedServer:
    """A model server whose responses follow a script; it counts requests.

    ``script`` is a list of (status, headers, body) returned in order, the last
    one repeated. Each response waits ``delay`` seconds first.
    """

    def __init__(self, script=None, delay: float = 0.0, handler=None) -> None:
        self.script = list(script or [(200, {}, None)])
        self.delay = delay
        self.handler = handler
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.times: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        app = Starlette(routes=[Route("/predict", self.predict, methods=["POST"])])
        self.server = BackgroundServer(app, port=free_port())

    @property
    def hits(self) -> int:
        return len(self.bodies)

    async def predict(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        self.times.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            index = min(len(self.bodies) - 1, len(self.script) - 1)
            status, headers, answer = self.script[index]
            if answer is None:
                answer = self.handler(body) if self.handler else {"echo": body}
            return JSONResponse(answer, status_code=status, headers=headers)
        finally:
            self.in_flight -= 1

    def __enter__(self) -> ScriptedServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url + "/predict"


def pca_answer(body: dict) -> dict:
    return {"features": [value / 16 for value in body["pixels"][:4]]}


def classifier_answer(body: dict) -> dict:
    return {"label": int(sum(body["features"]) * 10) % 10}


# -- retries -----------------------------------------------------------------------


def test_retry_after_two_503s():
    script = [(503, {}, {"error": "warming up"})] * 2 + [(200, {}, None)]
    with ScriptedServer(script, handler=pca_answer) as server:
        pca = Endpoint(server.url, name="pca", response=Features, retries=2, backoff=0.05)

        @workflow
        def embed(pixels: list[float]) -> Features:
            return pca(Pixels(pixels=pixels))

        run = embed.run([16.0, 8.0, 0.0, 4.0], progress=False)
        assert run.status == "done"
        assert run.result() == Features(features=[1.0, 0.5, 0.0, 0.25])
        assert server.hits == 3
        # Exponential backoff: 0.05 s, then 0.1 s.
        assert server.times[1] - server.times[0] >= 0.05
        assert server.times[2] - server.times[1] >= 0.1


def test_retries_exhausted_names_status():
    with ScriptedServer([(503, {}, {"error": "down"})]) as server:
        flaky = Endpoint(server.url, name="flaky", retries=2, backoff=0.01)
        with pytest.raises(EndpointError) as caught:
            call_endpoint(flaky, {"x": 1}).result(progress=False)
        assert caught.value.status == 503
        assert "flaky" in str(caught.value)
        assert "after 3 attempt(s)" in str(caught.value)
        assert server.hits == 3


def test_client_error_not_retried():
    with ScriptedServer([(404, {}, {"error": "no such model"})]) as server:
        missing = Endpoint(server.url, name="missing", retries=3, backoff=0.01)
        with pytest.raises(EndpointError) as caught:
            missing.send({"x": 1})
        assert caught.value.status == 404
        assert "no such model" in str(caught.value)
        assert server.hits == 1


def test_429_honours_retry_after_seconds():
    script = [(429, {"Retry-After": "1"}, {"error": "slow down"}), (200, {}, None)]
    with ScriptedServer(script) as server:
        limited = Endpoint(server.url, name="limited", retries=1, backoff=0.01)
        assert limited.send({"x": 1}) == {"echo": {"x": 1}}
        assert server.hits == 2
        assert server.times[1] - server.times[0] >= 0.95


def test_retry_after_is_capped():
    script = [(503, {"Retry-After": "3600"}, {}), (200, {}, None)]
    with ScriptedServer(script) as server:
        capped = Endpoint(server.url, retries=1, backoff=0.01, max_retry_after=0.2)
        started = time.monotonic()
        capped.send({"x": 1})
        assert time.monotonic() - started < 5
        assert server.hits == 2


def test_retry_after_http_date():
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after(later) <= 31
    assert _retry_after("7") == 7.0
    assert _retry_after("soon") is None
    assert _retry_after(None) is None


def test_connection_refused_retried_then_fails():
    port = free_port()
    nowhere = Endpoint(f"http://127.0.0.1:{port}/predict", name="nowhere", retries=2, backoff=0.01)
    with pytest.raises(EndpointError) as caught:
        nowhere.send({"x": 1})
    message = str(caught.value)
    assert "nowhere" in message
    assert "after 3 attempt(s)" in message
    assert "ConnectError" in message
    assert caught.value.status is None


def test_timeout_per_attempt():
    with ScriptedServer(delay=1.0) as server:
        slow = Endpoint(server.url, name="slow", timeout=0.2, retries=1, backoff=0.01)
        started = time.monotonic()
        with pytest.raises(EndpointError, match="ReadTimeout"):
            slow.send({"x": 1})
        assert time.monotonic() - started < 1.5
        assert server.hits == 2


# -- request and response models ---------------------------------------------------


def test_chain_mismatch_found_while_tracing():
    # The declared models disagree: no request is sent at all.
    pca = Endpoint("http://127.0.0.1:9/predict", name="pca", request=Pixels, response=Embedding)
    classifier = Endpoint(
        "http://127.0.0.1:9/classify", name="classifier", request=Features, response=Label
    )

    @workflow
    def classify(pixels: list[float]) -> Label:
        return classifier(pca(Pixels(pixels=pixels)))

    with pytest.raises(EndpointSchemaError) as caught:
        classify.trace([1.0])
    message = str(caught.value)
    assert "'pca' (Embedding)" in message
    assert "'classifier' (Features)" in message
    assert "'features'" in message
    assert "embedding" in message
    assert caught.value.field == "features"


def test_chain_mismatch_found_at_run_time():
    # pca declares no response model and returns {"embedding": [...]}.
    with ScriptedServer(handler=lambda body: {"embedding": [0.5]}) as pca_server, ScriptedServer(
        handler=classifier_answer
    ) as classifier_server:
        pca = Endpoint(pca_server.url, name="pca", request=Pixels)
        classifier = Endpoint(
            classifier_server.url, name="classifier", request=Features, response=Label
        )

        @workflow
        def classify(pixels: list[float]) -> Label:
            return classifier(pca(Pixels(pixels=pixels)))

        run = classify.run([1.0], progress=False)
        assert run.status == "failed"
        with pytest.raises(EndpointSchemaError) as caught:
            run.result()
        message = str(caught.value)
        assert "output of endpoint 'pca'" in message
        assert "endpoint 'classifier' (Features)" in message
        assert "field 'features'" in message
        assert "['embedding']" in message
        assert caught.value.field == "features"
        assert pca_server.hits == 1
        assert classifier_server.hits == 0


def test_response_model_mismatch():
    with ScriptedServer(handler=lambda body: {"embedding": [1.0]}) as server:
        pca = Endpoint(server.url, name="pca", response=Features)
        with pytest.raises(EndpointSchemaError) as caught:
            pca.send({"pixels": [1.0]})
        message = str(caught.value)
        assert "response of endpoint 'pca' does not match Features" in message
        assert "field 'features'" in message
        assert caught.value.field == "features"


def test_dataclass_models_and_dict_payload():
    with ScriptedServer(handler=lambda body: {"values": [2 * v for v in body["values"]]}) as server:
        doubler = Endpoint(server.url, name="doubler", request=Doubled, response=Doubled)
        assert doubler.send({"values": [1.0, 2.5]}) == Doubled([2.0, 5.0])
        with pytest.raises(EndpointSchemaError, match="field 'values': Field required"):
            doubler.send({"numbers": [1.0]})
        assert server.hits == 1


def test_invalid_endpoint_settings():
    with pytest.raises(ValueError, match="invalid endpoint URL"):
        Endpoint("127.0.0.1:8000/predict")
    with pytest.raises(ValueError, match="retries"):
        Endpoint("http://127.0.0.1:1/p", retries=-1)
    with pytest.raises(ValueError, match="max_concurrency"):
        Endpoint("http://127.0.0.1:1/p", max_concurrency=0)
    with pytest.raises(TypeError, match="invalid endpoint model"):
        Endpoint("http://127.0.0.1:1/p", request=dict)


# -- caching -------------------------------------------------------------------------


def test_cached_endpoint_calls_once():
    with ScriptedServer(handler=pca_answer) as server:
        pca = Endpoint(server.url, name="pca", request=Pixels, response=Features)

        @workflow
        def embed(pixels: list[float]) -> Features:
            return pca(Pixels(pixels=pixels))

        first = embed.run([16.0], progress=False)
        second = embed.run([16.0], progress=False)
        assert first.result() == second.result() == Features(features=[1.0])
        assert first.counts() == {"done": 1}
        assert second.counts() == {"cached": 1}
        assert server.hits == 1
        embed.run([8.0], progress=False)
        assert server.hits == 2


def test_cache_key_covers_version_not_timeout():
    with ScriptedServer(handler=pca_answer) as server:
        for endpoint in (
            Endpoint(server.url, name="pca", version="1"),
            Endpoint(server.url, name="pca", version="1", timeout=5, retries=1),
            Endpoint(server.url, name="pca", version="2"),
        ):
            call_endpoint(endpoint, {"pixels": [16.0]}).result(progress=False)
        # The second differs only in timeout and retries, so it reuses the first response.
        assert server.hits == 2


def test_uncached_endpoint_calls_every_run():
    with ScriptedServer(handler=pca_answer) as server:
        sampler = Endpoint(server.url, name="sampler", cache=False)

        @workflow
        def sample(pixels: list[float]) -> dict:
            return sampler({"pixels": pixels})

        first = sample.run([16.0], progress=False)
        second = sample.run([16.0], progress=False)
        assert first.counts() == second.counts() == {"done": 1}
        assert server.hits == 2


def test_headers_not_in_repr_or_key():
    with ScriptedServer(handler=pca_answer) as server:
        secret = Endpoint(server.url, name="pca", headers={"Authorization": "Bearer hunter2"})
        other = Endpoint(server.url, name="pca", headers={"Authorization": "Bearer other"})
        assert "hunter2" not in repr(secret)
        assert call_endpoint(secret, {"pixels": [1.0]}).key == call_endpoint(
            other, {"pixels": [1.0]}
        ).key
        secret.send({"pixels": [16.0]})
        assert server.headers[0]["authorization"] == "Bearer hunter2"


# -- concurrency limit ---------------------------------------------------------------


def test_max_concurrency_limits_in_flight():
    with ScriptedServer(delay=0.2, handler=pca_answer) as server:
        pca = Endpoint(server.url, name="pca", max_concurrency=2, cache=False)

        @job
        def payload(i: int) -> dict:
            return {"pixels": [float(i)]}

        @workflow
        def embed_all(n: int) -> list:
            return [pca(payload(i)) for i in range(n)]

        started = time.monotonic()
        results = embed_all.run(6, executor="threads", progress=False).result()
        elapsed = time.monotonic() - started
        assert [r["features"] for r in results] == [[i / 16] for i in range(6)]
        assert server.hits == 6
        assert server.max_in_flight == 2
        assert elapsed >= 0.55  # three waves of 0.2 s


# -- OpenAI chat completions ------------------------------------------------------------


class TinyChatServer:
    """An OpenAI-compatible chat-completions server that upper-cases the prompt."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.authorization: list[str | None] = []
        app = Starlette(
            routes=[Route("/v1/chat/completions", self.complete, methods=["POST"])]
        )
        self.server = BackgroundServer(app, port=free_port())

    async def complete(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(body)
        self.authorization.append(request.headers.get("authorization"))
        if not isinstance(body.get("messages"), list) or "model" not in body:
            return JSONResponse(
                {"error": {"message": "model and messages are required"}}, status_code=400
            )
        last = body["messages"][-1]["content"]
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": last.upper()},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": len(last.split()),
                    "completion_tokens": len(last.split()),
                    "total_tokens": 2 * len(last.split()),
                },
            }
        )


@pytest.fixture
def chat_server():
    server = TinyChatServer()
    server.server.start()
    yield server
    server.server.stop()


def test_chat_endpoint_round_trip(chat_server):
    chat = ChatEndpoint(
        chat_server.server.url + "/v1",
        model="tiny-upper",
        options={"temperature": 0},
        api_key="sk-local",
    )

    @workflow
    def shout(text: str) -> ChatResponse:
        return chat([{"role": "system", "content": "shout"}, {"role": "user", "content": text}])

    answer = shout("hello there", progress=False)
    assert answer == ChatResponse(
        content="HELLO THERE",
        model="tiny-upper",
        finish_reason="stop",
        prompt_tokens=2,
        completion_tokens=2,
    )
    request = chat_server.requests[0]
    assert request["model"] == "tiny-upper"
    assert request["temperature"] == 0
    assert request["messages"][0] == {"role": "system", "content": "shout"}
    assert chat_server.authorization[0] == "Bearer sk-local"
    # Cached by URL, model and messages.
    assert shout("hello there", progress=False) == answer
    assert len(chat_server.requests) == 1
    assert shout("bye", progress=False).content == "BYE"
    assert len(chat_server.requests) == 2


def test_chat_endpoint_uncached_and_prompt(chat_server):
    chat = ChatEndpoint(chat_server.server.url + "/v1/chat/completions", model="m", cache=False)
    assert chat.send("abc").content == "ABC"
    call_endpoint(chat, "abc").result(progress=False)
    call_endpoint(chat, "abc").result(progress=False)
    assert len(chat_server.requests) == 3
    assert chat_server.requests[0]["messages"] == [{"role": "user", "content": "abc"}]


def test_chat_endpoint_bad_input_and_error(chat_server):
    chat = ChatEndpoint(chat_server.server.url + "/v1", model="m")
    with pytest.raises(EndpointSchemaError, match="'role'"):
        chat.send([{"content": "no role"}])
    with pytest.raises(EndpointSchemaError, match="prompt string or a list"):
        chat.send(42)
    wrong = ChatEndpoint(chat_server.server.url + "/v2", model="m", retries=0)
    with pytest.raises(EndpointError) as caught:
        wrong.send("hi")
    assert caught.value.status == 404
    assert len(chat_server.requests) == 0


# -- deploying a local model server ----------------------------------------------------

HEALTH_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _server_spec(tmp_path, **options) -> ModelServer:
    script = tmp_path / "health_server.py"
    script.write_text(HEALTH_SERVER)
    return ModelServer(
        command=(sys.executable, str(script), "{port}"),
        url_path="/predict",
        state_dir=str(tmp_path / "servers"),
        startup_timeout=20,
        **options,
    )


def _wait_until_down(url: str, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
        except httpx.TransportError:
            return True
        time.sleep(0.1)
    return False


def test_deploy_stops_when_run_ends(tmp_path):
    server = _server_spec(tmp_path, keep=False)

    @job
    def probe(url: str) -> int:
        return httpx.get(url.replace("/predict", "/health")).status_code

    @workflow
    def use_server() -> dict:
        url = deploy(server)
        return {"url": url, "status": probe(url)}

    result = use_server(progress=False)
    assert result["status"] == 200
    assert result["url"].startswith("http://127.0.0.1:")
    assert result["url"].endswith("/predict")
    assert _wait_until_down(result["url"].replace("/predict", "/health"))
    assert not os.listdir(tmp_path / "servers") or all(
        name.endswith(".log") for name in os.listdir(tmp_path / "servers")
    )


def test_deploy_reuses_healthy_server(tmp_path):
    server = _server_spec(tmp_path, keep=True, ttl="2m")

    @workflow
    def start() -> str:
        return deploy(server)

    first = start(progress=False)
    try:
        second_run = start.run(progress=False)
        assert second_run.result() == first
        assert second_run.counts() == {"done": 1}
        # A server whose process died is replaced by a new one.
        registry = [n for n in os.listdir(tmp_path / "servers") if n.endswith(".json")]
        assert len(registry) == 1
        import json

        entry = json.loads((tmp_path / "servers" / registry[0]).read_text())
        os.killpg(entry["pid"], 15)
        assert _wait_until_down(entry["health"])
        third = start(progress=False)
        assert third != first
        assert httpx.get(third.replace("/predict", "/health")).status_code == 200
    finally:
        for name in os.listdir(tmp_path / "servers"):
            if name.endswith(".json"):
                import json

                pid = json.loads((tmp_path / "servers" / name).read_text())["pid"]
                try:
                    os.killpg(pid, 15)
                except ProcessLookupError:
                    pass


def test_deploy_ttl_stops_server(tmp_path):
    server = _server_spec(tmp_path, keep=True, ttl=1.5)
    url = deploy.fn(server)
    health = url.replace("/predict", "/health")
    assert httpx.get(health).status_code == 200
    assert _wait_until_down(health, seconds=8)


def test_deploy_reports_crashing_server(tmp_path):
    crash = ModelServer(
        command=(sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"),
        state_dir=str(tmp_path / "servers"),
        startup_timeout=10,
    )
    with pytest.raises(EndpointError) as caught:
        deploy.fn(crash)
    message = str(caught.value)
    assert "exited with code 3" in message
    assert ".log" in message


def test_model_server_rejects_shell_string():
    with pytest.raises(ValueError, match="shlex.split"):
        ModelServer(command="python serve.py")  # type: ignore[arg-type]
