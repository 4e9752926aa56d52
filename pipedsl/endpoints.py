"""HTTP inference endpoints as jobs, and local model servers as run resources.

An :class:`Endpoint` describes one HTTP inference endpoint: its URL, the
model behind it, the request and response models checked at the boundary,
and how to call it (timeout, retries, concurrency limit). Calling an endpoint
inside a workflow adds a task whose output is the validated response, cached
like any task output under a key built from the endpoint URL, the model name
and version, and the request body::

    pca = Endpoint("http://127.0.0.1:8101/predict", name="pca",
                   request=Pixels, response=Features)
    classifier = Endpoint("http://127.0.0.1:8102/predict", name="classifier",
                          request=Features, response=Prediction)

    @workflow
    def classify(pixels: list[float]) -> Prediction:
        return classifier(pca(Pixels(pixels=pixels)))

Chaining is checked twice. While the workflow is traced, the response model
of the upstream endpoint must provide every required field of the request
model of the downstream one. When the task runs, the actual value is
validated against the request model. Either failure raises
:class:`EndpointSchemaError` naming both endpoints, both models and the field.

:class:`ChatEndpoint` speaks the OpenAI chat-completions format.
:func:`deploy` starts a local model server process for a run and returns its
URL once its health check passes.

Request and response models are pydantic models or dataclasses. Transient
failures (connection errors, timeouts, HTTP 429 and 5xx) are retried inside
the task with exponential backoff, honouring ``Retry-After``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from .dsl import Job, parse_duration
from .errors import PipedslError
from .graph import Future
from .hashing import fingerprint, register_fingerprint

__all__ = [
    "ChatEndpoint",
    "ChatResponse",
    "Endpoint",
    "EndpointError",
    "EndpointSchemaError",
    "ModelServer",
    "call_endpoint",
    "deploy",
]

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# Transport failures that are retried: the request may not have reached the
# model, or the model did not respond in time.
RETRY_ERRORS = (httpx.TransportError,)


class EndpointError(PipedslError):
    """An endpoint call failed: an HTTP error status, a transport error, bad JSON.

    ``status`` is the HTTP status of the last attempt, or None if no response
    arrived.
    """

    def __init__(self, message: str, endpoint: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status


class EndpointSchemaError(EndpointError, ValueError):
    """A request or response does not match the endpoint's declared model.

    ``field`` names the first field that failed, e.g. ``features``.
    """

    def __init__(
        self, message: str, endpoint: str = "", status: int | None = None, field: str = ""
    ) -> None:
        super().__init__(message, endpoint, status)
        self.field = field


# -- request and response models ---------------------------------------------------


def _is_pydantic(model: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    return (
        pydantic is not None
        and isinstance(model, type)
        and issubclass(model, pydantic.BaseModel)
    )


def _model_name(model: Any) -> str:
    return getattr(model, "__qualname__", None) or type(model).__name__


def _model_fields(model: type) -> tuple[set[str], set[str]]:
    """Return the (all, required) field names of a pydantic model or dataclass."""
    if _is_pydantic(model):
        fields = model.model_fields  # type: ignore[attr-defined]
        names = {info.alias or name for name, info in fields.items()}
        required = {info.alias or name for name, info in fields.items() if info.is_required()}
        return names, required
    if dataclasses.is_dataclass(model):
        names = set()
        required = set()
        for field in dataclasses.fields(model):
            if not field.init:
                continue
            names.add(field.name)
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                required.add(field.name)
        return names, required
    raise TypeError(
        f"invalid endpoint model {model!r}; use a pydantic BaseModel subclass or a "
        "dataclass"
    )


def _to_plain(value: Any) -> Any:
    """Convert a pydantic model or dataclass (also nested) to JSON-ready values."""
    if hasattr(value, "model_dump") and not isinstance(value, type):
        return value.model_dump(mode="json", by_alias=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return value


def _first_problem(model: type, data: Any) -> tuple[str, str]:
    """Validate ``data`` against ``model``; return ("", "") or (field, reason)."""
    if _is_pydantic(model):
        import pydantic

        try:
            model.model_validate(data)  # type: ignore[attr-defined]
        except pydantic.ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            field = ".".join(str(part) for part in error["loc"]) or "(root)"
            return field, error["msg"]
        return "", ""
    if not isinstance(data, Mapping):
        return "(root)", f"expected a JSON object, got {type(data).__name__}"
    names, required = _model_fields(model)
    for name in sorted(required):
        if name not in data:
            return name, "Field required"
    for name in sorted(data):
        if name not in names:
            return name, "unexpected field"
    return "", ""


def _build(model: type, data: Any) -> Any:
    if _is_pydantic(model):
        return model.model_validate(data)  # type: ignore[attr-defined]
    return model(**data)


# -- endpoints ---------------------------------------------------------------------


class Endpoint:
    """An HTTP inference endpoint that takes and returns one JSON object.

    Parameters
    ----------
    url:
        Full URL that requests are POSTed to, e.g.
        ``http://127.0.0.1:8101/predict``.
    name:
        Model name, used in task names, logs and errors (default: the URL path).
    request, response:
        Pydantic models or dataclasses that the request body and the response
        body must match. None accepts any JSON object.
    version:
        Model version. Together with ``url``, ``name`` and the request body it
        forms the cache key of a call, so a new version is never served from the
        cache of the old one.
    timeout:
        Seconds (or ``"30s"``, ``"2m"``) for one HTTP attempt.
    retries:
        Further attempts after a connection error, a timeout or an HTTP 429 or
        5xx response.
    backoff:
        Seconds before the first retry; each later retry waits twice as long,
        up to ``max_backoff``. A ``Retry-After`` header, when longer, wins, up
        to ``max_retry_after`` seconds.
    max_concurrency:
        Maximum requests in flight to this URL from this process.
    cache:
        False for non-deterministic endpoints: every run calls them again.
    headers:
        Extra HTTP headers, e.g. ``{"Authorization": "Bearer ..."}``. They are
        not part of the cache key and not shown by ``repr``.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Features:
    ...     features: list[float]
    >>> classifier = Endpoint(
    ...     "http://127.0.0.1:8102/predict", name="classifier", request=Features,
    ...     timeout="10s", retries=2, max_concurrency=4,
    ... )
    >>> classifier
    <Endpoint classifier http://127.0.0.1:8102/predict>
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        request: type | None = None,
        response: type | None = None,
        version: str | None = None,
        timeout: float | str = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        max_concurrency: int | None = None,
        cache: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(
                f"invalid endpoint URL {url!r}; use an absolute http:// or https:// URL"
            )
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, got {retries!r}")
        if backoff < 0 or max_backoff < 0 or max_retry_after < 0:
            raise ValueError(
                f"backoff, max_backoff and max_retry_after must be >= 0, got {backoff!r}, "
                f"{max_backoff!r} and {max_retry_after!r}"
            )
        if max_concurrency is not None and (
            not isinstance(max_concurrency, int) or max_concurrency < 1
        ):
            raise ValueError(
                f"max_concurrency must be a positive int or None, got {max_concurrency!r}"
            )
        for model in (request, response):
            if model is not None:
                _model_fields(model)
        self.url = str(parsed)
        self.name = name or parsed.path.strip("/").replace("/", ".") or parsed.host
        self.request = request
        self.response = response
        self.version = None if version is None else str(version)
        self.timeout = parse_duration(timeout, "endpoint timeout")
        self.retries = retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.max_concurrency = max_concurrency
        self.cache = cache
        self.headers = dict(headers or {})
        self._job: Job[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.url}>"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(vars(self))
        state["_job"] = None
        return state

    def cache_identity(self) -> tuple[Any, ...]:
        """Return what identifies this endpoint in cache keys: URL, model, version."""
        return (
            self.url,
            self.name,
            self.version,
            _model_path(self.request),
            _model_path(self.response),
        )

    # -- inside workflows --

    @property
    def job(self) -> Job[Any, Any]:
        """The job whose tasks call this endpoint, named ``endpoint.<name>``."""
        if self._job is None:
            self._job = Job(
                _request_job,
                name=f"endpoint.{self.name}",
                cache=self.cache,
            )
        return self._job

    def __call__(self, payload: Any) -> Future[Any]:
        """Add a task that sends ``payload`` and returns the validated response.

        ``payload`` is a request model instance, a dict, or the future of
        another endpoint's response. For a future, the two endpoints' models are
        checked against each other now, before anything runs.
        """
        source = None
        if isinstance(payload, Future):
            upstream = _endpoint_of(payload)
            if upstream is not None:
                source = upstream.name
                self._check_chain(upstream)
        return self.job(self, payload, source)

    def _check_chain(self, upstream: Endpoint) -> None:
        if self.request is None or upstream.response is None:
            return
        provided, _ = _model_fields(upstream.response)
        _, required = _model_fields(self.request)
        missing = sorted(required - provided)
        if missing:
            raise EndpointSchemaError(
                f"output of endpoint {upstream.name!r} ({_model_name(upstream.response)}) "
                f"does not match the input of endpoint {self.name!r} "
                f"({_model_name(self.request)}): field {missing[0]!r} is required by "
                f"{_model_name(self.request)} but {_model_name(upstream.response)} has "
                f"only {sorted(provided)}. Rename the field in one of the two models, or "
                f"convert the value in a job between the two calls",
                endpoint=self.name,
                field=missing[0],
            )

    # -- the HTTP exchange --

    def request_body(self, payload: Any) -> dict[str, Any]:
        """Return the JSON body that sends ``payload``."""
        body = _to_plain(payload)
        if not isinstance(body, dict):
            raise EndpointSchemaError(
                f"request to endpoint {self.name!r} must be a JSON object, got "
                f"{type(body).__name__}: {body!r:.200}",
                endpoint=self.name,
                field="(root)",
            )
        return body

    def parse_response(self, data: Any) -> Any:
        """Return the response value built from the decoded JSON ``data``."""
        if self.response is None:
            return data
        return _build(self.response, data)

    def send(self, payload: Any, source: str | None = None) -> Any:
        """Validate ``payload``, POST it with retries, and return the parsed response.

        This is what a task of :attr:`job` runs; it also works outside any
        workflow. ``source`` names the endpoint that produced ``payload``, for
        error messages.
        """
        self._validate_request(payload, source)
        body = self.request_body(payload)
        data = self._post(body)
        if self.response is not None:
            field, reason = _first_problem(self.response, data)
            if field:
                raise EndpointSchemaError(
                    f"response of endpoint {self.name!r} does not match "
                    f"{_model_name(self.response)}: field {field!r}: {reason}; the "
                    f"response has fields {_keys(data)}. Fix the server or the "
                    f"response model",
                    endpoint=self.name,
                    field=field,
                )
        return self.parse_response(data)

    def _validate_request(self, payload: Any, source: str | None) -> None:
        if self.request is None:
            return
        data = _to_plain(payload)
        field, reason = _first_problem(self.request, data)
        if not field:
            return
        if source is not None:
            origin = f"output of endpoint {source!r} ({_model_name(type(payload))})"
        else:
            origin = f"request ({_model_name(type(payload))})"
        raise EndpointSchemaError(
            f"{origin} does not match the input of endpoint {self.name!r} "
            f"({_model_name(self.request)}): field {field!r}: {reason}; the value has "
            f"fields {_keys(data)}. Rename the field on one side, or convert the value "
            "in a job before the call",
            endpoint=self.name,
            field=field,
        )

    def _post(self, body: dict[str, Any]) -> Any:
        client = _client(self.timeout)
        attempt = 0
        delay = self.backoff
        with _limiter(self.url, self.max_concurrency):
            while True:
                attempt += 1
                wait: float | None = None
                try:
                    response = client.post(self.url, json=body, headers=self.headers)
                except RETRY_ERRORS as exc:
                    if attempt > self.retries:
                        raise EndpointError(
                            f"endpoint {self.name!r} at {self.url} failed after {attempt} "
                            f"attempt(s): {type(exc).__name__}: {exc}; check that the "
                            "server is running, or raise timeout= or retries=",
                            endpoint=self.name,
                        ) from exc
                    reason = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code < 400:
                        return self._decode(response)
                    if response.status_code not in RETRY_STATUS or attempt > self.retries:
                        raise EndpointError(
                            f"endpoint {self.name!r} at {self.url} returned HTTP "
                            f"{response.status_code} after {attempt} attempt(s): "
                            f"{response.text[:500]}",
                            endpoint=self.name,
                            status=response.status_code,
                        )
                    reason = f"HTTP {response.status_code}"
                    wait = _retry_after(response.headers.get("retry-after"))
                pause = min(delay, self.max_backoff)
                if wait is not None:
                    pause = max(pause, min(wait, self.max_retry_after))
                logger.warning(
                    "endpoint %s attempt %d of %d failed (%s); retrying in %.2fs",
                    self.name, attempt, self.retries + 1, reason, pause,
                )  # fmt: skip
                time.sleep(pause)
                delay *= 2

    def _decode(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EndpointError(
                f"endpoint {self.name!r} at {self.url} returned HTTP "
                f"{response.status_code} with a body that is not JSON ({exc}): "
                f"{response.text[:200]!r}",
                endpoint=self.name,
                status=response.status_code,
            ) from exc


def _model_path(model: type | None) -> str | None:
    if model is None:
        return None
    return f"{model.__module__}.{model.__qualname__}"


def _keys(data: Any) -> list[str]:
    return sorted(str(key) for key in data) if isinstance(data, Mapping) else []


def _endpoint_of(future: Future[Any]) -> Endpoint | None:
    """Return the endpoint whose task produced ``future``, if any."""
    task = future._task
    if future._path or task.job.fn is not _request_job or not task.args:
        return None
    endpoint = task.args[0]
    return endpoint if isinstance(endpoint, Endpoint) else None


def _retry_after(value: str | None) -> float | None:
    """Parse a Retry-After header: delta seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


register_fingerprint(Endpoint, lambda endpoint: endpoint.cache_identity())


def _request_job(endpoint: Endpoint, payload: Any, source: str | None = None) -> Any:
    return endpoint.send(payload, source)


def call_endpoint(endpoint: Endpoint, payload: Any) -> Future[Any]:
    """Add a task that calls ``endpoint`` with ``payload``; same as ``endpoint(payload)``.

    Examples
    --------
    >>> echo = Endpoint("http://127.0.0.1:9/echo", name="echo")
    >>> call_endpoint(echo, {"x": 1}).job.name
    'endpoint.echo'
    """
    return endpoint(payload)


# -- shared HTTP clients and concurrency limits -------------------------------------

_lock = threading.Lock()
_clients: dict[float | None, httpx.Client] = {}
_limiters: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def _client(timeout: float | None) -> httpx.Client:
    """Return this process's pooled client for ``timeout``."""
    with _lock:
        client = _clients.get(timeout)
        if client is None:
            client = httpx.Client(
                timeout=timeout,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
                trust_env=False,
            )
            _clients[timeout] = client
        return client


class _NoLimit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _limiter(url: str, limit: int | None) -> Any:
    # NOTE: the limit applies per process, so runs on a process, Dask or Ray
    # executor can have up to `limit` requests in flight per worker process.
    if limit is None:
        return _NoLimit()
    with _lock:
        semaphore = _limiters.get((url, limit))
        if semaphore is None:
            semaphore = threading.BoundedSemaphore(limit)
            _limiters[(url, limit)] = semaphore
        return semaphore


# -- OpenAI chat completions --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChatResponse:
    """The first choice of a chat completion, with the model that wrote it."""

    content: str
    model: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChatEndpoint(Endpoint):
    """An endpoint in the OpenAI chat-completions format.

    ``url`` is the server's base URL (``http://127.0.0.1:8000/v1``) or the full
    ``.../chat/completions`` URL. ``model`` goes into every request body and,
    with ``url`` and the messages, into the cache key. ``options`` are extra
    body fields such as ``temperature``. The payload of a call is a prompt
    string or a list of ``{"role": ..., "content": ...}`` messages, and the
    output is a :class:`ChatResponse`.

    Sampling with a temperature above zero is not deterministic, so pass
    ``cache=False`` unless the same completion may be reused.

    Examples
    --------
    >>> chat = ChatEndpoint("http://127.0.0.1:8000/v1", model="tiny-chat",
    ...                     options={"temperature": 0})
    >>> chat.url
    'http://127.0.0.1:8000/v1/chat/completions'
    >>> chat.request_body("Hi")["messages"]
    [{'role': 'user', 'content': 'Hi'}]
    """

    def __init__(
        self,
        url: str,
        *,
        model: str,
        options: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        **settings: Any,
    ) -> None:
        if not url.rstrip("/").endswith("/chat/completions"):
            url = url.rstrip("/") + "/chat/completions"
        headers = dict(settings.pop("headers", None) or {})
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        for unsupported in ("request", "response"):
            if unsupported in settings:
                raise TypeError(
                    f"ChatEndpoint does not take {unsupported}=; its request is a "
                    "prompt or a message list and its response a ChatResponse"
                )
        super().__init__(url, name=settings.pop("name", model), headers=headers, **settings)
        self.model = model
        self.options = dict(options or {})

    def cache_identity(self) -> tuple[Any, ...]:
        return (*super().cache_identity(), self.model, fingerprint(self.options))

    def request_body(self, payload: Any) -> dict[str, Any]:
        if isinstance(payload, str):
            messages: list[Any] = [{"role": "user", "content": payload}]
        elif isinstance(payload, Sequence):
            messages = [_to_plain(message) for message in payload]
        else:
            raise EndpointSchemaError(
                f"chat endpoint {self.name!r} takes a prompt string or a list of "
                f"messages, got {type(payload).__name__}",
                endpoint=self.name,
                field="messages",
            )
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping) or "role" not in message:
                raise EndpointSchemaError(
                    f"message {index} to chat endpoint {self.name!r} needs a 'role' and "
                    f"a 'content', got {message!r:.200}",
                    endpoint=self.name,
                    field=f"messages.{index}.role",
                )
        return {**self.options, "model": self.model, "messages": messages}

    def parse_response(self, data: Any) -> ChatResponse:
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise EndpointSchemaError(
                f"response of chat endpoint {self.name!r} has no "
                f"choices[0].message.content ({type(exc).__name__}: {exc}); got fields "
                f"{_keys(data)}",
                endpoint=self.name,
                field="choices",
            ) from None
        usage = data.get("usage") or {}
        return ChatResponse(
            content=content if isinstance(content, str) else json.dumps(content),
            model=str(data.get("model", self.model)),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
        )

    def send(self, payload: Any, source: str | None = None) -> ChatResponse:
        return self.parse_response(self._post(self.request_body(payload)))


# -- local model servers --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelServer:
    """How to start a local model server process and check that it is healthy.

    Parameters
    ----------
    command:
        The program and its arguments. ``{port}`` in any argument is replaced
        by the port the server must listen on.
    port:
        Port on 127.0.0.1; None picks a free one.
    health_path:
        Path that returns HTTP 200 once the server is ready.
    url_path:
        Path appended to the base URL in the value :func:`deploy` returns.
    ttl:
        Seconds (or ``"30m"``) after which the server is stopped, even if a run
        still uses it. Later deployments of the same server reuse it until then.
    keep:
        False stops the server when the run that deployed it ends. True keeps it
        for later runs, until ``ttl``.
    startup_timeout:
        Seconds to wait for the first healthy response.
    env:
        Extra environment variables for the process.
    state_dir:
        Folder of the registry of running servers (default
        ``$XDG_STATE_HOME/pipedsl/servers`` or ``~/.local/state/pipedsl/servers``).

    Examples
    --------
    >>> server = ModelServer(("python", "-m", "http.server", "{port}"), ttl="10m")
    >>> server.ttl
    '10m'
    """

    command: tuple[str, ...]
    port: int | None = None
    health_path: str = "/health"
    url_path: str = ""
    ttl: float | str = "1h"
    keep: bool = False
    startup_timeout: float = 60.0
    env: tuple[tuple[str, str], ...] = ()
    state_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.command, str) or not self.command:
            raise ValueError(
                f"ModelServer command must be a non-empty tuple of arguments, got "
                f"{self.command!r}; split a shell line with shlex.split"
            )
        object.__setattr__(self, "command", tuple(self.command))
        if isinstance(self.env, Mapping):
            object.__setattr__(self, "env", tuple(sorted(self.env.items())))
        parse_duration(self.ttl, "ttl")

    def deploy_key(self) -> str:
        """Return the registry key: a fingerprint of the command, port, env and paths."""
        return fingerprint(
            ("model-server", self.command, self.port, self.health_path, self.url_path, self.env)
        )


def _state_dir(server: ModelServer) -> str:
    if server.state_dir:
        return server.state_dir
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "pipedsl", "servers")


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        response = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(pid: int, registry: str | None = None) -> None:
    """Stop the supervisor process ``pid`` (and so its server), then drop its entry."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    if registry is not None:
        try:
            with open(registry) as handle:
                entry = json.load(handle)
            if entry.get("pid") == pid:
                os.remove(registry)
        except (OSError, ValueError):
            pass
    logger.info("stopped model server process group %d", pid)


def _reuse(server: ModelServer, registry: str) -> str | None:
    try:
        with open(registry) as handle:
            entry = json.load(handle)
    except (OSError, ValueError):
        return None
    url, pid, expires = entry.get("url"), entry.get("pid"), entry.get("expires", 0)
    if not isinstance(pid, int) or not _alive(pid):
        return None
    # A server about to expire is replaced rather than reused.
    if expires - time.time() < min(30.0, server.startup_timeout):
        return None
    if not _healthy(entry.get("health", "")):
        return None
    return str(url)


def deploy_server(server: ModelServer) -> str:
    """Start ``server`` (or reuse a healthy one) and return its URL.

    The process runs under a supervisor (``python -m pipedsl.endpoints
    supervise``) in its own process group. The supervisor stops it after the
    TTL even if this process is gone. Inside a run with ``keep=False``, the
    server is also stopped when the run ends.
    """
    registry_dir = _state_dir(server)
    os.makedirs(registry_dir, exist_ok=True)
    registry = os.path.join(registry_dir, f"{server.deploy_key()}.json")
    url = _reuse(server, registry)
    if url is not None:
        logger.info("reusing model server at %s", url)
        return url

    port = server.port or _free_port()
    base = f"http://127.0.0.1:{port}"
    health = base + server.health_path
    command = [part.replace("{port}", str(port)) for part in server.command]
    ttl = parse_duration(server.ttl, "ttl")
    assert ttl is not None
    log_path = os.path.join(registry_dir, f"{server.deploy_key()}.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipedsl.endpoints", "supervise", f"{ttl:g}", "--", *command],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **dict(server.env)},
            start_new_session=True,
        )
    deadline = time.monotonic() + server.startup_timeout
    while not _healthy(health, timeout=1.0):
        if process.poll() is not None:
            raise EndpointError(
                f"model server {command!r} exited with code {process.returncode} before "
                f"its health check {health} passed; see its output in {log_path}",
                endpoint=health,
            )
        if time.monotonic() > deadline:
            _stop(process.pid)
            raise EndpointError(
                f"model server {command!r} did not pass its health check {health} within "
                f"{server.startup_timeout:g}s; raise startup_timeout or see {log_path}",
                endpoint=health,
            )
        time.sleep(0.1)

    url = base + server.url_path
    entry = {"url": url, "health": health, "pid": process.pid, "expires": time.time() + ttl}
    temporary = f"{registry}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        json.dump(entry, handle)
    os.replace(temporary, registry)
    logger.info("started model server %s at %s (pid %d)", command[0], url, process.pid)

    from .worker import RUN_END_CALLBACKS, current_run_id

    run_id = current_run_id.get()
    if not server.keep and run_id is not None:
        # NOTE: only runs whose tasks execute in this process (inline and
        # thread executors) call this; elsewhere the TTL stops the server.
        RUN_END_CALLBACKS[run_id].append(lambda: _stop(process.pid, registry))
    return url


#: The job that deploys a :class:`ModelServer`; it runs on every run and reuses
#: a healthy server from the registry when one is there.
deploy: Job[[ModelServer], str] = Job(deploy_server, name="deploy", cache=False)


def _supervise(argv: list[str]) -> int:
    """Run a command until it exits or ``ttl`` seconds pass."""
    ttl = float(argv[0])
    command = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    child = subprocess.Popen(command)

    def forward(signum: int, frame: Any) -> None:
        child.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        return child.wait(timeout=ttl)
    except subprocess.TimeoutExpired:
        child.terminate()
        try:
            return child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()


if __name__ == "__main__":
    if sys.argv[1:2] != ["supervise"] or len(sys.argv) < 4:
        print("usage: python -m pipedsl.endpoints supervise TTL -- COMMAND...", file=sys.stderr)
        sys.exit(2)
    sys.exit(_supervise(sys.argv[2:]))
