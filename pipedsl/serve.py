"""Serve a workflow as an HTTP endpoint (Starlette on uvicorn).

Routes of the app that :func:`create_app` builds:

``POST /run``
    A JSON object of workflow inputs, validated against the workflow's
    signature and type hints. Each request is a run of its own, with its own run
    record. The response body is ``{"run_id": ..., "output": ..., "tasks": {...}}``.
``GET /health``
    ``{"status": "ok", "workflow": ...}``; never needs the token.
``GET /openapi.json``
    An OpenAPI 3.1 schema of the routes, with the inputs' JSON schema.

Errors: invalid JSON or inputs get 422 with the failing parameter named, a
missing or wrong bearer token 401, a body over the size limit 413, a failed
run 500 naming the job that failed. Tracebacks appear in responses only with
``debug=True``. Only JSON crosses the wire.

Runs block, so they execute on a thread pool of ``max_concurrency`` threads
and the event loop stays free to accept requests and respond to health checks.

Examples
--------
>>> from pipedsl import job, workflow
>>> @job
... def double(x: int) -> int:
...     return 2 * x
>>> @workflow
... def doubled(x: int) -> int:
...     return double(x)
>>> app = create_app(doubled, store="memory://serve-doctest")
>>> sorted(route.path for route in app.routes)
['/health', '/openapi.json', '/run']
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import importlib
import importlib.util
import inspect
import logging
import math
import os
import sys
import threading
import time
import traceback
import typing
from collections.abc import Callable
from typing import Any

import click

from .dsl import Workflow, parse_duration

__all__ = ["BackgroundServer", "create_app", "load_workflow", "serve", "serve_command"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1 << 20

# Eight requests traced at once on CPython 3.11.7 made the ast.parse calls of
# code versioning raise "SystemError: AST constructor recursion depth mismatch".
# Runs are therefore traced one at a time (milliseconds each) and run concurrently.
_trace_lock = threading.Lock()


# -- inputs and outputs ---------------------------------------------------------------


def input_model(workflow: Workflow[Any, Any]) -> Any:
    """Build the pydantic model of a workflow's JSON inputs from its signature.

    Parameters without a type hint accept any JSON value. Validation is strict:
    ``"5"`` is not an ``int``, and unknown fields are rejected.
    """
    import pydantic

    try:
        hints = typing.get_type_hints(workflow.fn, include_extras=True)
    except Exception:  # noqa: BLE001 - hints naming types that are not importable
        hints = {}
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(workflow.fn).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise TypeError(
                f"workflow {workflow.name!r} has positional-only parameter {name!r}; "
                "a served workflow takes its inputs by name"
            )
        annotation = hints.get(name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[name] = (annotation, default)
    config = pydantic.ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return pydantic.create_model(f"{workflow.name}_inputs", __config__=config, **fields)


def _output_schema(workflow: Workflow[Any, Any]) -> dict[str, Any]:
    import pydantic

    try:
        annotation = typing.get_type_hints(workflow.fn, include_extras=True).get("return", Any)
        return pydantic.TypeAdapter(annotation).json_schema()
    except Exception:  # noqa: BLE001 - a return type with no JSON schema
        return {}


def to_json(value: Any) -> Any:
    """Convert a workflow output to JSON values.

    Pydantic models, dataclasses, numpy arrays and scalars, tuples and sets are
    converted; anything else that JSON cannot hold raises TypeError.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"output contains the float {value!r}, which JSON cannot hold")
        return value
    if hasattr(value, "model_dump") and not isinstance(value, type):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return to_json(value.tolist())
    raise TypeError(
        f"output of type {type(value).__module__}.{type(value).__qualname__} is not "
        "JSON-serialisable; return plain values, dataclasses or pydantic models"
    )


def _field_errors(exc: Any) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        errors.append({"field": location, "message": error["msg"], "type": error["type"]})
    return errors


# -- the app --------------------------------------------------------------------------


@dataclasses.dataclass
class _Settings:
    workflow: Workflow[Any, Any]
    run_options: dict[str, Any]
    token: str | None
    max_body: int
    debug: bool
    run_timeout: float | None
    pool: concurrent.futures.ThreadPoolExecutor
    model: Any


def create_app(
    workflow: Workflow[Any, Any],
    *,
    store: Any = None,
    executor: Any = None,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    max_concurrency: int = 8,
    run_timeout: float | str | None = None,
    debug: bool = False,
    **run_options: Any,
) -> Any:
    """Build a Starlette app that runs ``workflow`` on ``POST /run``.

    Parameters
    ----------
    workflow:
        A ``@workflow`` function; its parameters are the JSON inputs.
    store, executor, run_options:
        Run options of every request's run (see :meth:`Workflow.run`).
    token:
        Bearer token that ``POST /run`` and ``GET /openapi.json`` require in an
        ``Authorization: Bearer <token>`` header; None serves without auth.
    max_body:
        Maximum request body size in bytes; larger bodies get 413.
    max_concurrency:
        Runs executed at once; further requests wait for a free thread.
    run_timeout:
        Seconds (or ``"30s"``) a request waits for its run before the run is
        killed and the response is 504. None waits as long as the run takes.
    debug:
        Include tracebacks in 500 responses.

    Examples
    --------
    >>> from pipedsl import workflow
    >>> @workflow
    ... def echo(text: str) -> str:
    ...     return text
    >>> app = create_app(echo, token="s3cret", max_body=4096)
    """
    from starlette.applications import Starlette
    from starlette.routing import Route

    if not isinstance(workflow, Workflow):
        raise TypeError(
            f"create_app needs a @workflow function, got {workflow!r}; decorate it "
            "with @pipedsl.workflow"
        )
    if max_body < 1 or max_concurrency < 1:
        raise ValueError(
            f"max_body and max_concurrency must be positive, got {max_body!r} and "
            f"{max_concurrency!r}"
        )
    options = {"store": store, "executor": executor, "progress": False, **run_options}
    settings = _Settings(
        workflow=workflow,
        run_options={k: v for k, v in options.items() if v is not None or k == "progress"},
        token=token,
        max_body=max_body,
        debug=debug,
        run_timeout=parse_duration(run_timeout, "run_timeout"),
        pool=concurrent.futures.ThreadPoolExecutor(
            max_concurrency, thread_name_prefix="pipedsl-serve"
        ),
        model=input_model(workflow),
    )

    async def run(request: Any) -> Any:
        return await _handle_run(settings, request)

    async def health(request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "workflow": workflow.name})

    async def openapi(request: Any) -> Any:
        from starlette.responses import JSONResponse

        denied = _check_token(settings, request)
        if denied is not None:
            return denied
        return JSONResponse(_openapi(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        settings.pool.shutdown(wait=False, cancel_futures=True)

    app = Starlette(
        debug=False,
        routes=[
            Route("/run", run, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.pipedsl = settings
    return app


def _error(status: int, message: str, **extra: Any) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, **extra}, status_code=status)


def _check_token(settings: _Settings, request: Any) -> Any:
    if settings.token is None:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), settings.token.encode()
    ):
        return None
    response = _error(401, "missing or invalid bearer token; send 'Authorization: Bearer <token>'")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _read_body(settings: _Settings, request: Any) -> bytes | Any:
    """Return the body, or an error response if it is larger than the limit."""
    declared = request.headers.get("content-length")
    too_large = f"request body is larger than the limit of {settings.max_body} bytes"
    if declared is not None:
        if not declared.isdigit():
            return _error(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > settings.max_body:
            return _error(413, too_large)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > settings.max_body:
            return _error(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


async def _handle_run(settings: _Settings, request: Any) -> Any:
    import pydantic
    from starlette.responses import JSONResponse

    denied = _check_token(settings, request)
    if denied is not None:
        return denied
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        return _error(415, f"POST /run takes application/json, got {content_type or 'none'!r}")
    body = await _read_body(settings, request)
    if not isinstance(body, bytes):
        return body
    try:
        inputs = settings.model.model_validate_json(body or b"{}", strict=True)
    except pydantic.ValidationError as exc:
        errors = _field_errors(exc)
        logger.info("rejected inputs of %s: %s", settings.workflow.name, errors[:3])
        first = errors[0]
        name = first["field"] or "(body)"
        return _error(
            422,
            f"invalid input {name!r} for workflow {settings.workflow.name!r}: "
            f"{first['message']}",
            errors=errors,
        )
    kwargs = {name: getattr(inputs, name) for name in type(inputs).model_fields}

    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        handle, outcome = await loop.run_in_executor(settings.pool, _execute, settings, kwargs)
    except pydantic.ValidationError as exc:
        # A model built from the inputs while the workflow was traced rejected them.
        errors = _field_errors(exc)
        logger.info("rejected inputs of %s: %s", settings.workflow.name, errors[:3])
        return _error(
            422,
            f"invalid input for workflow {settings.workflow.name!r}: {exc.title} field "
            f"{errors[0]['field']!r}: {errors[0]['message']}",
            errors=errors,
        )
    except Exception as exc:  # noqa: BLE001 - reported to the client as a 500
        message = (
            f"workflow {settings.workflow.name!r} failed while it was traced: "
            f"{type(exc).__name__}: {exc}"
        )
        logger.error("%s", message)
        extra = {"traceback": _format(exc)} if settings.debug else {}
        return _error(500, message, **extra)
    if outcome is None:
        return _error(
            504,
            f"run {handle.run_id} of workflow {settings.workflow.name!r} did not finish "
            f"within {settings.run_timeout:g}s and was killed",
            run_id=handle.run_id,
        )
    if isinstance(outcome, Exception):
        return _run_failed(settings, handle, outcome)
    logger.info(
        "run %s done in %.3fs: %s", handle.run_id, time.perf_counter() - started,
        handle.counts(),
    )  # fmt: skip
    return JSONResponse({"run_id": handle.run_id, "output": outcome[0], "tasks": handle.counts()})


def _execute(settings: _Settings, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Run the workflow on a pool thread; return (run, (output,) or error or None)."""
    with _trace_lock:
        handle = settings.workflow.submit(**kwargs, **settings.run_options)
    if not handle.wait(settings.run_timeout):
        handle.kill()
        handle.wait(10)
        logger.warning("run %s killed after %.1fs", handle.run_id, settings.run_timeout)
        return handle, None
    try:
        return handle, (to_json(handle.result()),)
    except Exception as exc:  # noqa: BLE001 - reported to the client as a 500
        return handle, exc


def _run_failed(settings: _Settings, handle: Any, exc: Exception) -> Any:
    failed = [task for task in handle.tasks if task.status == "failed"]
    job = failed[0].job if failed else None
    if job is not None:
        message = f"job {job!r} failed in run {handle.run_id}: {type(exc).__name__}: {exc}"
    else:
        message = f"run {handle.run_id} failed: {type(exc).__name__}: {exc}"
    logger.error("%s", message)
    extra: dict[str, Any] = {"run_id": handle.run_id, "job": job}
    if settings.debug:
        extra["traceback"] = _format(exc)
    return _error(500, message, **extra)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _openapi(settings: _Settings) -> dict[str, Any]:
    workflow = settings.workflow
    inputs = settings.model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = inputs.pop("$defs", {})
    error = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }
    json_error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"pipedsl workflow {workflow.name}",
            "version": "1",
            "description": inspect.getdoc(workflow.fn) or "",
        },
        "paths": {
            "/run": {
                "post": {
                    "summary": f"Run workflow {workflow.name}",
                    "operationId": "run",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Inputs"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The run finished",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "run_id": {"type": "string"},
                                            "output": _output_schema(workflow),
                                            "tasks": {
                                                "type": "object",
                                                "additionalProperties": {"type": "integer"},
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        "401": {"description": "Missing or invalid token", "content": json_error},
                        "413": {"description": "Body too large", "content": json_error},
                        "422": {"description": "Invalid inputs", "content": json_error},
                        "500": {"description": "The run failed", "content": json_error},
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Health check",
                    "operationId": "health",
                    "responses": {"200": {"description": "The server is up"}},
                }
            },
        },
        "components": {"schemas": {**definitions, "Inputs": inputs, "Error": error}},
    }
    if settings.token is not None:
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        schema["paths"]["/run"]["post"]["security"] = [{"bearer": []}]
    return schema


# -- running a server -----------------------------------------------------------------


def serve(
    workflow: Workflow[Any, Any],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    **app_options: Any,
) -> None:
    """Serve ``workflow`` on ``host:port`` until interrupted.

    ``app_options`` go to :func:`create_app`. The default host accepts
    connections from this machine only; pass ``host="0.0.0.0"`` to listen on
    every interface, together with a ``token``.
    """
    import uvicorn

    app = create_app(workflow, **app_options)
    logger.info("serving workflow %s on http://%s:%d", workflow.name, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """A uvicorn server on a daemon thread, for tests and notebooks.

    Examples
    --------
    >>> from pipedsl import workflow
    >>> @workflow
    ... def echo(text: str) -> str:
    ...     return text
    >>> import httpx
    >>> with BackgroundServer(create_app(echo)) as server:  # doctest: +SKIP
    ...     httpx.post(server.url + "/run", json={"text": "hi"}).json()["output"]
    'hi'
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start the server and wait until it accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"server on {self.host}:{self.port} did not start within {timeout:g}s"
                )
            time.sleep(0.01)
        if self.port == 0:
            sockets = self._server.servers[0].sockets
            self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_workflow(target: str) -> Workflow[Any, Any]:
    """Import ``module:name`` or ``path/to/file.py:name`` and return the workflow."""
    module_name, _, attribute = target.rpartition(":")
    if not module_name or not attribute:
        raise click.BadParameter(
            f"invalid target {target!r}; use module:workflow or path/to/file.py:workflow"
        )
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.exists(path):
            raise click.BadParameter(f"file {path} not found (from target {target!r})")
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    value = getattr(module, attribute, None)
    if not isinstance(value, Workflow):
        raise click.BadParameter(
            f"{target!r} is {type(value).__name__}, not a @workflow; name a function "
            "decorated with @pipedsl.workflow"
        )
    return value


def _size(value: str) -> int:
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20}
    text = value.strip().lower()
    number = text.rstrip("kmb")
    unit = text[len(number):]
    if not number.isdigit() or unit not in units:
        raise click.BadParameter(f"invalid size {value!r}; use bytes or e.g. 64k, 4m")
    return int(number) * units[unit]


@click.command("serve")
@click.argument("target")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option(
    "--token",
    envvar="PIPEDSL_SERVE_TOKEN",
    default=None,
    help="Bearer token for POST /run and /openapi.json [env PIPEDSL_SERVE_TOKEN].",
)
@click.option("--store", default=None, help="Artifact store URL of the runs.")
@click.option("--executor", default=None, help="Executor of the runs (threads, inline...).")
@click.option("--max-body", default="1m", show_default=True, help="Body size limit, e.g. 64k.")
@click.option(
    "--max-concurrency", default=8, show_default=True, type=int, help="Runs at once."
)
@click.option("--run-timeout", default=None, help="Seconds, or e.g. 30s, before a run is killed.")
@click.option("--debug", is_flag=True, help="Include tracebacks in 500 responses.")
@click.option("--log-level", default="info", show_default=True, help="uvicorn log level.")
def serve_command(
    target: str,
    host: str,
    port: int,
    token: str | None,
    store: str | None,
    executor: str | None,
    max_body: str,
    max_concurrency: int,
    run_timeout: str | None,
    debug: bool,
    log_level: str,
) -> None:
    """Serve the workflow TARGET (module:workflow or file.py:workflow) over HTTP."""
    workflow = load_workflow(target)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        click.echo(
            f"warning: serving on {host} without --token; anyone who can reach this "
            "host can start runs",
            err=True,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(
        workflow,
        host,
        port,
        log_level=log_level,
        store=store,
        executor=executor,
        token=token,
        max_body=_size(max_body),
        max_concurrency=max_concurrency,
        run_timeout=run_timeout,
        debug=debug,
    )


def _main(argv: list[str] | None = None) -> Callable[..., Any]:
    return serve_command.main(argv, prog_name="python -m pipedsl.serve")  # type: ignore[no-any-return]


if __name__ == "__main__":
    _main()
