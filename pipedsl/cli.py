"""The ``pipedsl`` command: run workflows, draw them, inspect and kill runs.

::

    pipedsl run examples/digits/pipeline.py:digits_pipeline --seed 1
    pipedsl graph mypackage.flows:train --format svg -o graph.svg
    pipedsl runs
    pipedsl show latest
    pipedsl why latest
    pipedsl kill 20261204-171502-3fa2c1
    pipedsl cache gc --older-than 30d

Every command takes the artifact store from ``--store``, else from
``$PIPEDSL_STORE``, else ``./.pipedsl``. Storage options come from
``--storage-option key=value`` (dots in the key reach nested options) and
from ``$PIPEDSL_STORAGE_OPTIONS`` as a JSON object.

Exit codes: 0 when the command succeeded, 1 when a run failed or an operation
failed, 2 for a usage error (an unknown option, an invalid value, a target
that cannot be imported).
"""

from __future__ import annotations

import ast
import datetime
import enum
import importlib
import importlib.util
import json
import logging
import os
import pathlib
import socket
import sys
import time
import traceback
import types
import typing
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["cli", "main"]

logger = logging.getLogger(__name__)

EXECUTOR_NAMES = ("inline", "threads", "processes", "dask", "ray", "fedml")
RUN_STATES = ("running", "done", "failed", "cancelled")

# Set by the group's callback; read by main() when it reports an error.
_state = {"verbose": 0, "quiet": 0}


class CLIError(click.ClickException):
    """An operation failed: printed as one line, exit code 1."""

    exit_code = 1


# -- settings shared by every command -----------------------------------------------


def _parse_value(text: str) -> Any:
    """Read ``text`` as JSON (numbers, true, lists...), else keep the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_storage_options(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``key=value`` strings into fsspec storage options.

    ``$PIPEDSL_STORAGE_OPTIONS`` (a JSON object) gives the base; each item
    overrides one key, and dots in a key reach nested dictionaries, so
    ``client_kwargs.endpoint_url=http://127.0.0.1:9000`` sets the S3 endpoint.
    """
    options: dict[str, Any] = {}
    environment = os.environ.get("PIPEDSL_STORAGE_OPTIONS")
    if environment:
        try:
            options = json.loads(environment)
        except ValueError as exc:
            raise click.UsageError(
                f"$PIPEDSL_STORAGE_OPTIONS is not valid JSON: {exc}"
            ) from None
        if not isinstance(options, dict):
            raise click.UsageError("$PIPEDSL_STORAGE_OPTIONS must be a JSON object")
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(
                f"{item!r} is not of the form key=value", param_hint="--storage-option"
            )
        target = options
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise click.BadParameter(
                    f"{parent!r} is set to a value, so {name!r} cannot nest in it",
                    param_hint="--storage-option",
                )
        target[leaf] = _parse_value(text)
    return options


class Settings:
    """The store URL and options of this invocation."""

    def __init__(self, store: str | None, storage_options: dict[str, Any]) -> None:
        self.store_url = store
        self.storage_options = storage_options

    def open_store(self) -> Any:
        from .config import get_config

        return get_config().open_store(self.store_url, self.storage_options)


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.find_object(Settings)
    assert settings is not None
    return settings


def _command_store(ctx: click.Context, store: str | None) -> Settings:
    """Return settings with a command's own ``--store`` applied, if given."""
    settings = _settings(ctx)
    if store:
        return Settings(store, settings.storage_options)
    return settings


def _configure_logging(verbose: int, quiet: int) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("pipedsl").setLevel(level)
    # Dask sets its own loggers to INFO with their own handlers; keep them to
    # warnings unless -vv asks for everything.
    for name in ("distributed", "ray"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else max(level, logging.WARNING))


# -- lazy subcommands -----------------------------------------------------------------

LAZY_COMMANDS = {"serve": ("pipedsl.serve", "serve_command", "serve")}


class PipedslGroup(click.Group):
    """A group whose optional commands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            return _load_lazy(cmd_name)
        return super().get_command(ctx, cmd_name)


def _load_lazy(name: str) -> click.Command:
    module_name, attribute, extra = LAZY_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        command = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"

        @click.command(
            name=name,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            help=f"Unavailable here ({reason}).",
            short_help="(unavailable: see --help)",
        )
        def unavailable() -> None:
            raise CLIError(
                f"`pipedsl {name}` could not be loaded ({reason}); install it with "
                f"pip install 'pipedsl[{extra}]'"
            )

        return unavailable
    if not isinstance(command, click.Command):
        raise CLIError(f"{module_name}.{attribute} is not a click command")
    return command


@click.group(cls=PipedslGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    envvar="PIPEDSL_STORE",
    metavar="URL",
    help="Artifact store: a folder, s3://bucket/prefix or any fsspec URL "
    "[env PIPEDSL_STORE; default ./.pipedsl].",
)
@click.option(
    "--storage-option",
    "storage_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec storage option, repeatable; a dotted key sets a nested option, "
    "e.g. client_kwargs.endpoint_url=http://127.0.0.1:9000 "
    "[env PIPEDSL_STORAGE_OPTIONS as a JSON object].",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log each task (-v) or debug details (-vv), and print tracebacks of errors.",
)
@click.option("-q", "--quiet", count=True, help="Print only errors; no progress bar.")
@click.version_option(package_name="pipedsl")
@click.pass_context
def cli(
    ctx: click.Context,
    store: str | None,
    storage_options: tuple[str, ...],
    verbose: int,
    quiet: int,
) -> None:
    """Run pipedsl workflows and inspect their runs and artifact store."""
    _state["verbose"] = verbose
    _state["quiet"] = quiet
    _configure_logging(verbose, quiet)
    ctx.obj = Settings(store, parse_storage_options(storage_options))


# -- loading a workflow from module:name or path.py:name -----------------------------


def _import_target(target: str) -> Any:
    """Import ``module:attribute`` or ``path/to/file.py:attribute`` and return it."""
    location, sep, attribute = target.rpartition(":")
    if not sep or not location or not attribute:
        raise click.BadParameter(
            f"{target!r} is not of the form module:workflow or path/to/file.py:workflow",
            param_hint="TARGET",
        )
    if location.endswith(".py") or os.sep in location or "/" in location:
        module = _import_path(location)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            if getattr(exc, "name", None) and location.startswith(str(exc.name)):
                raise click.BadParameter(
                    f"cannot import module {location!r} ({exc}); run from the folder "
                    "that contains it or install it",
                    param_hint="TARGET",
                ) from None
            raise
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise click.BadParameter(
                f"module {module.__name__!r} has no attribute {attribute!r}",
                param_hint="TARGET",
            ) from None
    return value


def _import_path(location: str) -> types.ModuleType:
    path = pathlib.Path(location).expanduser().resolve()
    if not path.is_file():
        raise click.BadParameter(f"file {location!r} not found", param_hint="TARGET")
    folder = str(path.parent)
    # The file's folder goes on sys.path and PYTHONPATH, so sibling imports
    # work here and in worker processes.
    if folder not in sys.path:
        sys.path.insert(0, folder)
    current = os.environ.get("PYTHONPATH", "")
    if folder not in current.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (folder, current) if p)
    name = path.stem if path.stem.isidentifier() else "pipedsl_target"
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(path):
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise click.BadParameter(f"cannot load {location!r} as Python", param_hint="TARGET")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    # Workers in other processes cannot import a file by path: ship its
    # functions by value instead.
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module


def load_workflow(target: str) -> Any:
    """Return the :class:`~pipedsl.dsl.Workflow` that ``target`` names."""
    from .dsl import Job, Workflow

    value = _import_target(target)
    if isinstance(value, Job):
        raise click.BadParameter(
            f"{target!r} is a job, not a workflow; wrap its call in a @workflow",
            param_hint="TARGET",
        )
    if not isinstance(value, Workflow):
        raise click.BadParameter(
            f"{target!r} is a {type(value).__name__}, not a @workflow", param_hint="TARGET"
        )
    return value


# -- workflow parameters from type hints -----------------------------------------------


class LiteralParam(click.ParamType):
    """A Python literal or JSON value (lists, dicts...), else the plain string."""

    name = "value"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            pass
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value


class SequenceParam(click.ParamType):
    """A list: JSON (``[1, 2]``) or comma-separated items of one type."""

    def __init__(self, item: click.ParamType, container: type) -> None:
        self.item = item
        self.container = container
        self.name = f"{item.name}[,...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return self.container(value)
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                self.fail(f"{value!r} is not a JSON list", param, ctx)
        else:
            items = [part.strip() for part in text.split(",") if part.strip()]
        return self.container(self.item.convert(item, param, ctx) for item in items)


def _param_type(annotation: Any) -> tuple[click.ParamType, bool]:
    """Return a click type for a type hint, and whether it is a bool."""
    origin = typing.get_origin(annotation)
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(types, "UnionType", None)) and len(arguments) == 1:
        return _param_type(arguments[0])
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if all(isinstance(c, str) for c in choices):
            return click.Choice(list(choices)), False
        return LiteralParam(), False
    if origin in (list, tuple, set, frozenset, Sequence):
        item = arguments[0] if arguments else str
        container = {tuple: tuple, set: set, frozenset: frozenset}.get(origin, list)
        item_type, _ = _param_type(item)
        return SequenceParam(item_type, container), False
    if annotation is bool:
        return click.BOOL, True
    if annotation is int:
        return click.INT, False
    if annotation is float:
        return click.FLOAT, False
    if annotation is str:
        return click.STRING, False
    if isinstance(annotation, type) and issubclass(annotation, pathlib.PurePath):
        return click.Path(path_type=annotation), False
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return EnumParam(annotation), False
    return LiteralParam(), False


class EnumParam(click.Choice):
    """Members of an enum by name."""

    def __init__(self, enum_type: type[enum.Enum]) -> None:
        super().__init__([member.name for member in enum_type])
        self.enum_type = enum_type

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, self.enum_type):
            return value
        return self.enum_type[super().convert(value, param, ctx)]


class WorkflowParams:
    """The parameters of a workflow, with click types from its type hints."""

    def __init__(self, workflow: Any) -> None:
        import inspect

        self.workflow = workflow
        try:
            hints = typing.get_type_hints(workflow.fn)
        except Exception:  # noqa: BLE001 - annotations naming undefined types
            hints = dict(getattr(workflow.fn, "__annotations__", {}))
        self.params: dict[str, inspect.Parameter] = {}
        self.types: dict[str, click.ParamType] = {}
        self.flags: set[str] = set()
        for name, parameter in inspect.signature(workflow.fn).parameters.items():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            annotation = hints.get(name, parameter.annotation)
            if annotation is inspect.Parameter.empty and parameter.default is not None:
                if parameter.default is not inspect.Parameter.empty:
                    annotation = type(parameter.default)
            param_type, is_flag = _param_type(annotation)
            self.params[name] = parameter
            self.types[name] = param_type
            if is_flag:
                self.flags.add(name)

    def options(self, taken: set[str]) -> list[click.Option]:
        """Return one ``--name`` option per parameter whose name is free."""
        import inspect

        result = []
        for name, parameter in self.params.items():
            dashed = name.replace("_", "-")
            if name in taken or dashed in taken:
                continue
            declarations = [f"--{dashed}"]
            default = parameter.default
            required = default is inspect.Parameter.empty
            show = "required" if required else f"default: {default!r}"
            kind = self.types[name]
            if name in self.flags:
                flag_names = [f"--{dashed}/--no-{dashed}"]
                option = click.Option(
                    [*flag_names, "param_" + name],
                    default=None,
                    show_default=False,
                    help=f"Workflow parameter {name} (bool) [{show}].",
                )
            else:
                option = click.Option(
                    [*declarations, "param_" + name],
                    type=kind,
                    default=None,
                    show_default=False,
                    help=f"Workflow parameter {name} ({kind.name}) [{show}].",
                )
            result.append(option)
        return result

    def convert(self, name: str, text: str) -> Any:
        if name not in self.params:
            known = ", ".join(self.params) or "none"
            raise click.BadParameter(
                f"workflow {self.workflow.name!r} has no parameter {name!r} "
                f"(its parameters: {known})",
                param_hint="--param",
            )
        return self.types[name].convert(text, None, None)

    def collect(self, pairs: Sequence[str], given: dict[str, Any]) -> dict[str, Any]:
        """Merge ``--param name=value`` pairs and ``--name value`` options."""
        import inspect

        values: dict[str, Any] = {}
        for pair in pairs:
            name, sep, text = pair.partition("=")
            if not sep:
                raise click.BadParameter(
                    f"{pair!r} is not of the form name=value", param_hint="--param"
                )
            values[name.strip().replace("-", "_")] = self.convert(
                name.strip().replace("-", "_"), text
            )
        for key, value in given.items():
            if key.startswith("param_") and value is not None:
                values[key[len("param_") :]] = value
        missing = [
            name
            for name, parameter in self.params.items()
            if parameter.default is inspect.Parameter.empty and name not in values
        ]
        if missing:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in missing)
            raise click.UsageError(
                f"workflow {self.workflow.name!r} needs parameter(s) {', '.join(missing)}; "
                f"pass {flags} or --param NAME=VALUE"
            )
        return values


class WorkflowCommand(click.Command):
    """A command whose TARGET workflow adds one option per workflow parameter.

    The target is imported while the arguments are parsed, so
    ``pipedsl run module:workflow --help`` lists the workflow's parameters.
    """

    def __init__(self, *args: Any, target_optional: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_params = list(self.params)
        self.target_optional = target_optional

    def _find_target(self, args: list[str]) -> str | None:
        value_options = {
            name
            for param in self.base_params
            if isinstance(param, click.Option) and not param.is_flag and not param.count
            for name in param.opts
        }
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg == "--":
                continue
            if arg.startswith("-"):
                if "=" not in arg and arg in value_options:
                    skip = True
                continue
            return arg
        return None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        target = self._find_target(list(args))
        self.params = list(self.base_params)
        if target is not None and ":" in target:
            try:
                workflow = load_workflow(target)
            except click.BadParameter as exc:
                exc.ctx = ctx
                raise
            params = WorkflowParams(workflow)
            taken = {
                name.lstrip("-")
                for param in self.base_params
                for name in getattr(param, "opts", [])
            }
            self.params.extend(params.options(taken))
            ctx.meta["pipedsl.workflow"] = workflow
            ctx.meta["pipedsl.params"] = params
        return super().parse_args(ctx, args)


def _workflow_call(ctx: click.Context, pairs: Sequence[str], given: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    workflow = ctx.meta.get("pipedsl.workflow")
    params: WorkflowParams | None = ctx.meta.get("pipedsl.params")
    if workflow is None or params is None:
        raise click.UsageError("TARGET must be of the form module:workflow or file.py:workflow")
    return workflow, params.collect(pairs, given)


def _validate_executor(ctx: click.Context, param: Any, value: str | None) -> str | None:
    if value is None:
        return None
    if value in EXECUTOR_NAMES or value.startswith(("tcp://", "tls://", "inproc://")):
        return value
    raise click.BadParameter(
        f"unknown executor {value!r}; choose one of {', '.join(EXECUTOR_NAMES)} "
        "or a Dask scheduler address such as tcp://127.0.0.1:8786"
    )


PARAM_HELP = "Workflow parameter as NAME=VALUE, repeatable; same as --NAME VALUE."


# -- pipedsl run -------------------------------------------------------------------------


def _print_result(value: Any) -> None:
    try:
        text = json.dumps(value, indent=2, sort_keys=False)
    except (TypeError, ValueError):
        text = repr(value)
    click.echo(text)


def _summary_line(run_id: str, counts: dict[str, int], elapsed: float, status: str) -> str:
    from .display import format_duration

    executed = counts.get("done", 0)
    cached = counts.get("cached", 0)
    failed = counts.get("failed", 0)
    other = sum(v for k, v in counts.items() if k not in ("done", "cached", "failed"))
    text = (
        f"run {run_id} {status}: {executed} executed, {cached} cached, {failed} failed"
    )
    if other:
        text += f", {other} skipped or cancelled"
    return text + f", {format_duration(elapsed)}"


@cli.command(cls=WorkflowCommand)
@click.argument("target", metavar="TARGET")
@click.option("--param", "pairs", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.option(
    "--executor",
    callback=_validate_executor,
    metavar="NAME",
    help=f"Where tasks run: {', '.join(EXECUTOR_NAMES)} or a Dask scheduler address "
    "[default: threads, or $PIPEDSL_EXECUTOR].",
)
@click.option("--max-workers", type=click.IntRange(min=1), help="Tasks running at once, at most.")
@click.option("--refresh", is_flag=True, help="Run every task again, ignoring the cache.")
@click.option(
    "--on-failure",
    type=click.Choice(["stop", "continue"]),
    help="After a task fails: start nothing new (stop, the default) or run "
    "every branch that does not depend on it (continue).",
)
@click.option("--run-id", metavar="ID", help="Run id to record the run under [default: new].")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar [default: when stderr is a terminal and there are > 5 tasks].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result and run summary as JSON.")
@click.pass_context
def run(
    ctx: click.Context,
    target: str,
    pairs: tuple[str, ...],
    store: str | None,
    executor: str | None,
    max_workers: int | None,
    refresh: bool,
    on_failure: str | None,
    run_id: str | None,
    progress: bool | None,
    as_json: bool,
    **given: Any,
) -> None:
    """Run the workflow TARGET (module:workflow or path/to/file.py:workflow).

    Workflow parameters become options, typed from the workflow's type hints;
    put TARGET before --help to list them. The result is printed to stdout as
    JSON when it can be, else as its repr; the run summary goes to stderr.
    Exit code 1 when the run failed or was killed.
    """
    workflow, values = _workflow_call(ctx, pairs, given)
    settings = _command_store(ctx, store)
    if _state.get("quiet"):
        progress = False
    options: dict[str, Any] = {
        "store": settings.open_store(),
        "executor": executor,
        "max_workers": max_workers,
        "refresh": refresh or None,
        "on_failure": on_failure,
        "run_id": run_id,
        "progress": progress,
    }
    options = {k: v for k, v in options.items() if v is not None or k == "progress"}
    started = time.perf_counter()
    handle = workflow.with_options(**options).submit(**values)
    click.echo(f"run {handle.run_id} of {workflow.name} started", err=True)
    try:
        handle.wait()
    except KeyboardInterrupt:
        click.echo(f"run {handle.run_id} killed", err=True)
        sys.exit(130)
    elapsed = time.perf_counter() - started
    counts = handle.counts()
    status = handle.status
    if status != "done":
        try:
            handle.result()
        except BaseException as exc:  # noqa: BLE001 - reported, then exit code 1
            if _state["verbose"]:
                traceback.print_exception(type(exc), exc, exc.__traceback__)
            else:
                message = str(exc).splitlines()[0] if str(exc) else ""
                click.echo(f"error: {type(exc).__name__}: {message}", err=True)
                for note in getattr(exc, "__notes__", ()):
                    click.echo(f"  {note}", err=True)
        click.echo(_summary_line(handle.run_id, counts, elapsed, status), err=True)
        click.echo(
            f"see `pipedsl show {handle.run_id}` for tracebacks and "
            f"`pipedsl run ...` again to resume from the stored tasks",
            err=True,
        )
        if as_json:
            click.echo(json.dumps({"run_id": handle.run_id, "status": status, "counts": counts}))
        sys.exit(1)
    result = handle.result()
    if as_json:
        payload = {"run_id": handle.run_id, "status": status, "counts": counts}
        try:
            json.dumps(result)
            payload["result"] = result
        except (TypeError, ValueError):
            payload["result"] = repr(result)
        click.echo(json.dumps(payload, indent=2))
    else:
        _print_result(result)
    click.echo(_summary_line(handle.run_id, counts, elapsed, status), err=True)


# -- pipedsl graph ---------------------------------------------------------------------

GRAPH_FORMATS = ("mermaid", "dot", "svg", "png", "html")


@cli.command(cls=WorkflowCommand)
@click.argument("target", metavar="TARGET")
@click.option("--param", "pairs", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(GRAPH_FORMATS),
    help="Output format [default: from the -o suffix, else mermaid]. svg and png "
    "need the Graphviz dot program.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE, not stdout.")
@click.option(
    "--plan",
    is_flag=True,
    help="Colour each task by whether the store already holds it (cached) or it would run.",
)
@click.option("--store", metavar="URL", help="Artifact store URL for --plan.")
@click.pass_context
def graph(
    ctx: click.Context,
    target: str,
    pairs: tuple[str, ...],
    fmt: str | None,
    output: str | None,
    plan: bool,
    store: str | None,
    **given: Any,
) -> None:
    """Draw the task graph of the workflow TARGET, running nothing."""
    from . import display

    workflow, values = _workflow_call(ctx, pairs, given)
    traced = workflow.trace(**values)
    statuses = None
    if plan:
        from .runs import plan_graph

        result = plan_graph(traced, {"store": _command_store(ctx, store).open_store()})
        statuses = {key: "cached" for key in result.cached}
        statuses.update({key: "pending" for key in result.to_run})
    if fmt is None:
        suffix = pathlib.Path(output).suffix.lstrip(".").lower() if output else ""
        fmt = {"mmd": "mermaid", "gv": "dot", "htm": "html"}.get(suffix, suffix)
        if fmt not in GRAPH_FORMATS:
            fmt = "mermaid"
    data: bytes
    if fmt == "mermaid":
        data = display.graph_mermaid(traced, statuses).encode()
    elif fmt == "dot":
        data = display.graph_dot(traced, statuses).encode()
    elif fmt == "html":
        data = display.graph_html(traced, statuses).encode()
    else:
        try:
            data = display.render_dot(display.graph_dot(traced, statuses), fmt)
        except FileNotFoundError as exc:
            raise CLIError(f"{exc} (for example --format mermaid)") from None
        except RuntimeError as exc:
            raise CLIError(str(exc)) from None
    if output:
        pathlib.Path(output).write_bytes(data)
        click.echo(f"wrote {fmt} picture of {len(traced)} tasks to {output}", err=True)
    elif fmt == "png":
        raise click.UsageError("--format png writes binary data; pass -o FILE")
    else:
        click.echo(data.decode(), nl=False)


# -- reading run records ------------------------------------------------------------------


def _resolve_run_id(store: Any, text: str) -> str:
    """Accept a full run id, ``latest``, or a unique prefix or suffix of one."""
    ids = store.list_runs()
    if text == "latest":
        if not ids:
            raise CLIError(f"no runs in store {store.url}")
        started = {}
        for run_id in ids[-50:]:
            data = store.read_record(run_id)
            if data is not None:
                started[run_id] = float(data.get("started") or 0.0)
        # Generated ids sort by start time; the newest 50 are compared by
        # their recorded start so an id given with --run-id is found too.
        return max(started, key=lambda r: (started[r], r)) if started else str(ids[-1])
    if text in ids:
        return text
    matches = [run_id for run_id in ids if run_id.startswith(text) or run_id.endswith(text)]
    if len(matches) == 1:
        return str(matches[0])
    if not matches:
        raise CLIError(f"no run {text!r} in store {store.url}; list runs with `pipedsl runs`")
    raise CLIError(f"{text!r} matches {len(matches)} runs ({', '.join(matches[:5])}); give more of the id")


def _load_record(store: Any, run_id: str) -> Any:
    from .records import RunRecord

    data = store.read_record(run_id)
    if data is None:
        raise CLIError(f"no run {run_id!r} in store {store.url}; list runs with `pipedsl runs`")
    return RunRecord.from_dict(data)


def _effective_status(record: Any) -> str:
    """The record's status, or ``lost`` for a running run whose process is gone.

    Only runs started on this host can be checked.
    """
    if record.status != "running" or not record.pid or record.host != socket.gethostname():
        return str(record.status)
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return "lost"
    except PermissionError:
        return "running"
    return "running"


def _started_text(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: set[int] = frozenset()) -> str:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(values: Sequence[str]) -> str:
        parts = []
        for index, value in enumerate(values):
            if index in right:
                parts.append(value.rjust(widths[index]))
            else:
                parts.append(value.ljust(widths[index]))
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


@cli.command()
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Number of most recent runs to list.")
@click.option("--workflow", "workflow_name", metavar="NAME", help="Only runs of this workflow.")
@click.option("--status", type=click.Choice([*RUN_STATES, "lost"]), help="Only runs in this status.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.pass_context
def runs(
    ctx: click.Context,
    limit: int,
    workflow_name: str | None,
    status: str | None,
    as_json: bool,
    store: str | None,
) -> None:
    """List recent runs, newest first, with their task counts.

    RUN counts tasks executed, CACHED tasks taken from the store. A run shown
    as ``lost`` was recorded as running by a process on this host that no
    longer exists.
    """
    from .display import format_duration

    from .records import RunRecord

    target = _command_store(ctx, store).open_store()
    # Ids given with --run-id need not sort by time, so every record is read
    # and sorted by its start time.
    # NOTE: this is one read per run; a store with many thousands of runs on
    # an object store lists slowly.
    records = []
    for run_id in target.list_runs():
        data = target.read_record(run_id)
        if data is not None:
            records.append(RunRecord.from_dict(data))
    records.sort(key=lambda r: (r.started, r.run_id), reverse=True)
    rows = []
    summaries = []
    for record in records:
        if len(rows) >= limit:
            break
        if workflow_name and record.workflow != workflow_name:
            continue
        state = _effective_status(record)
        if status and state != status:
            continue
        counts = record.counts()
        duration = (record.ended or time.time()) - record.started if record.started else None
        rows.append(
            [
                record.run_id,
                record.workflow,
                state,
                _started_text(record.started),
                format_duration(duration),
                counts.get("done", 0),
                counts.get("cached", 0),
                counts.get("failed", 0),
            ]
        )
        summaries.append(
            {
                "run_id": record.run_id,
                "workflow": record.workflow,
                "status": state,
                "started": record.started,
                "ended": record.ended,
                "duration": duration,
                "counts": counts,
            }
        )
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    if not rows:
        click.echo(f"no runs in store {target.url}", err=True)
        return
    headers = ["RUN ID", "WORKFLOW", "STATUS", "STARTED", "DURATION", "RUN", "CACHED", "FAILED"]
    click.echo(_table(headers, rows, right={4, 5, 6, 7}))


@cli.command()
@click.argument("run_id", metavar="RUN_ID")
@click.option("--json", "as_json", is_flag=True, help="Print the whole run record as JSON.")
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.pass_context
def show(ctx: click.Context, run_id: str, as_json: bool, store: str | None) -> None:
    """Show a run: its settings, one line per task, and the errors of failed tasks.

    RUN_ID is a run id, a unique prefix or suffix of one, or ``latest``.
    """
    from .display import format_duration, format_size

    target = _command_store(ctx, store).open_store()
    record = _load_record(target, _resolve_run_id(target, run_id))
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2, default=str))
        return
    state = _effective_status(record)
    duration = None if record.ended is None else record.ended - record.started
    counts = ", ".join(f"{n} {s}" for s, n in sorted(record.counts().items()))
    click.echo(f"run       {record.run_id}")
    click.echo(f"workflow  {record.workflow}")
    click.echo(f"status    {state} ({counts})")
    click.echo(f"started   {_started_text(record.started)} on {record.host} (pid {record.pid})")
    click.echo(f"duration  {format_duration(duration)}")
    click.echo(f"executor  {record.executor}")
    click.echo(f"store     {record.store}")
    if record.params:
        params = ", ".join(f"{k}={v}" for k, v in record.params.items())
        click.echo(f"params    {params}")
    if record.error:
        click.echo(f"error     {record.error.splitlines()[0]}")
    click.echo("")
    rows = []
    for task in record.tasks:
        attempts = len(task.attempts) if task.attempts else (1 if task.status in ("done", "failed") else 0)
        rows.append(
            [
                task.job,
                task.key.rpartition("-")[2][:12],
                task.status,
                format_duration(task.duration),
                format_size(task.size),
                attempts,
                "/".join(task.scope),
            ]
        )
    headers = ["JOB", "KEY", "STATUS", "DURATION", "SIZE", "ATTEMPTS", "SCOPE"]
    click.echo(_table(headers, rows, right={3, 4, 5}))
    for task in record.tasks:
        if task.status != "failed":
            continue
        click.echo("")
        click.echo(f"task {task.key} ({task.job}) failed: {task.error}")
        if task.traceback:
            click.echo(task.traceback.rstrip())


@cli.command()
@click.argument("run_id", metavar="RUN_ID")
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.pass_context
def status(ctx: click.Context, run_id: str, store: str | None) -> None:
    """Print the status of a run and its task counts.

    Exit code 0 when the run is done or still running, 1 when it failed, was
    cancelled or was lost.
    """
    target = _command_store(ctx, store).open_store()
    record = _load_record(target, _resolve_run_id(target, run_id))
    state = _effective_status(record)
    counts = record.counts()
    total = len(record.tasks)
    finished = sum(counts.get(s, 0) for s in ("done", "cached", "failed", "skipped", "cancelled"))
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    click.echo(f"{record.run_id} {state}: {finished}/{total} tasks finished ({parts})")
    if state not in ("done", "running"):
        sys.exit(1)


@cli.command()
@click.argument("run_id", metavar="RUN_ID")
@click.option(
    "--wait/--no-wait",
    default=False,
    help="Wait until the run records that it stopped.",
)
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait with --wait.")
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.pass_context
def kill(ctx: click.Context, run_id: str, wait: bool, timeout: float, store: str | None) -> None:
    """Ask a running run to stop, from any process that can reach the store.

    The run checks for the request every 2 seconds (the record interval),
    cancels queued tasks and stops running ones. Tasks that finished stay
    stored, so running the workflow again resumes from them.
    """
    target = _command_store(ctx, store).open_store()
    resolved = _resolve_run_id(target, run_id)
    record = _load_record(target, resolved)
    if record.status != "running":
        click.echo(f"run {resolved} already ended ({record.status}); nothing to kill")
        return
    target.request_kill(resolved)
    click.echo(f"kill requested for run {resolved}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        record = _load_record(target, resolved)
        if record.status != "running":
            click.echo(f"run {resolved} stopped ({record.status})")
            return
    raise CLIError(f"run {resolved} still running after {timeout:g}s")


@cli.command(cls=WorkflowCommand)
@click.argument("target", metavar="RUN_ID|TARGET")
@click.option("--param", "pairs", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.pass_context
def why(
    ctx: click.Context, target: str, pairs: tuple[str, ...], store: str | None, **given: Any
) -> None:
    """Explain why tasks were, or would be, executed instead of cached.

    With a RUN_ID (or ``latest``), explain each task that ran in that run.
    With a TARGET (module:workflow or file.py:workflow), trace the workflow
    with its parameters and explain each task a run would execute now.
    """
    from .explain import explain_graph, explain_run

    target_store = _command_store(ctx, store).open_store()
    if ":" in target:
        workflow, values = _workflow_call(ctx, pairs, given)
        lines = explain_graph(workflow.trace(**values), target_store)
        empty = f"every task of {workflow.name} would be taken from the cache"
    else:
        record = _load_record(target_store, _resolve_run_id(target_store, target))
        lines = explain_run(record, target_store)
        empty = f"no task of run {record.run_id} was executed: all came from the cache"
    if not lines:
        click.echo(empty)
        return
    for line in lines:
        click.echo(line)


# -- pipedsl cache -------------------------------------------------------------------------


def _cache_module() -> Any:
    try:
        from . import cache
    except ImportError as exc:
        raise CLIError(f"the cache commands are unavailable: {exc}") from None
    return cache


@cli.group()
def cache() -> None:
    """List, remove and garbage-collect cached task outputs."""


ENTRY_COLUMNS = ("job", "key", "size", "created", "last_used", "run_id")


def _entry_cell(name: str, value: Any) -> str:
    from .display import format_size

    if value is None:
        return "-"
    if name == "size" and isinstance(value, (int, float)):
        return format_size(int(value))
    if name in ("created", "last_used") and isinstance(value, (int, float)):
        return _started_text(value)
    if name == "key" and isinstance(value, str):
        return value.rpartition("-")[2][:16] or value
    return str(value)


@cache.command("ls")
@click.option("--job", metavar="NAME", help="Only entries of this job.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.pass_context
def cache_ls(ctx: click.Context, job: str | None, as_json: bool, store: str | None) -> None:
    """List the cached task outputs in the store."""
    module = _cache_module()
    target = _command_store(ctx, store).open_store()
    entries = module.list_entries(target, job=job)
    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        click.echo(f"no cached entries in store {target.url}", err=True)
        return
    columns = [c for c in ENTRY_COLUMNS if any(c in entry for entry in entries)]
    rows = [[_entry_cell(c, entry.get(c)) for c in columns] for entry in entries]
    headers = [c.upper().replace("_", " ") for c in columns]
    right = {columns.index("size")} if "size" in columns else set()
    click.echo(_table(headers, rows, right=right))
    total = sum(int(e.get("size") or 0) for e in entries)
    from .display import format_size

    click.echo(f"{len(entries)} entries, {format_size(total)}", err=True)


@cache.command("rm")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@click.option("--job", metavar="NAME", help="Remove the entries of this job.")
@click.option("--all", "remove_all", is_flag=True, help="Remove every entry of the store.")
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.pass_context
def cache_rm(
    ctx: click.Context, keys: tuple[str, ...], job: str | None, remove_all: bool, store: str | None
) -> None:
    """Remove cached entries by KEY, by --job, or --all of them.

    The next run executes the removed tasks again.
    """
    if not keys and not job and not remove_all:
        raise click.UsageError("name KEYs, --job NAME, or --all")
    if remove_all and (keys or job):
        raise click.UsageError("--all removes every entry; do not combine it with KEYs or --job")
    module = _cache_module()
    target = _command_store(ctx, store).open_store()
    removed = module.remove_entries(target, job=job, keys=list(keys) or None)
    click.echo(f"removed {removed} entries from {target.url}")


@cache.command("gc")
@click.option(
    "--older-than",
    default="30d",
    show_default=True,
    metavar="AGE",
    help="Remove entries created longer ago than this: seconds or 30s, 10m, 2h, 7d, 2w.",
)
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option(
    "--keep-live-runs/--no-keep-live-runs",
    default=True,
    show_default=True,
    help="Keep entries that runs still in progress depend on.",
)
@click.option("--store", metavar="URL", help="Artifact store URL; overrides the global --store.")
@click.pass_context
def cache_gc(
    ctx: click.Context, older_than: str, dry_run: bool, keep_live_runs: bool, store: str | None
) -> None:
    """Remove old entries and payloads that no entry refers to."""
    module = _cache_module()
    try:
        module.parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    target = _command_store(ctx, store).open_store()
    report = module.collect_garbage(
        target, older_than=older_than, dry_run=dry_run, keep_live_runs=keep_live_runs
    )
    if dry_run:
        click.echo("dry run: nothing was removed")
    from .display import format_size

    for name, value in report.items():
        if name == "dry_run":
            continue
        if isinstance(value, (list, tuple, set)):
            value = len(value)
        if name.startswith("bytes") and isinstance(value, int):
            value = format_size(value)
        click.echo(f"{name.replace('_', ' ')}: {value}")


# -- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (used by ``pipedsl`` and tests)."""
    _state["verbose"] = 0
    _state["quiet"] = 0
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="pipedsl",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line unless --verbose
        if _state["verbose"]:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        else:
            message = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"error: {type(exc).__name__}: {message}", err=True)
            click.echo("run with --verbose for the traceback", err=True)
        return 1
    # click returns the exit code of --help and --version.
    return result if isinstance(result, int) else 0
