"""Pictures of graphs and runs: Graphviz DOT, Mermaid, SVG and HTML.

A graph is drawn with one box per task, an arrow from each task to the tasks
that take its output, and a cluster per sub-workflow (a workflow called
inside another one; see :attr:`pipedsl.graph.Task.scope`). Boxes are filled
by task status when statuses are given.

:func:`graph_svg` needs the Graphviz ``dot`` program on ``PATH`` and returns
None without it. :func:`graph_html` embeds that SVG, or else draws the graph
with plain HTML and CSS (tasks in rows by depth), so a notebook shows a
picture either way without loading any script. :func:`graph_mermaid` gives
text that GitHub, GitLab and MkDocs render as a diagram.

Every function takes a :class:`~pipedsl.graph.Graph` or a
:class:`~pipedsl.records.RunRecord`, so runs read back from the store with
:func:`pipedsl.load_run` draw the same way as live ones.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import logging
import shutil
import subprocess
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Union

from .graph import Graph, iter_futures
from .records import RunRecord, TaskRecord

if TYPE_CHECKING:
    from .runs import Run

__all__ = [
    "STATUS_COLORS",
    "dot_available",
    "format_duration",
    "format_size",
    "graph_dot",
    "graph_html",
    "graph_mermaid",
    "graph_svg",
    "render_dot",
    "run_html",
]

logger = logging.getLogger(__name__)

#: Fill colour of a task box by status; tasks without a status are white.
STATUS_COLORS: dict[str, str] = {
    "pending": "#eeeeee",
    "running": "#90caf9",
    "done": "#a5d6a7",
    "cached": "#c8e6c9",
    "failed": "#ef9a9a",
    "skipped": "#ffe082",
    "cancelled": "#bdbdbd",
}
_NO_STATUS_COLOR = "#ffffff"
_CLUSTER_COLOR = "#f7f9fc"

# Seconds that `dot` may take for one picture.
DOT_TIMEOUT = 30.0

Drawable = Union[Graph, RunRecord]


@dataclasses.dataclass
class _Node:
    key: str
    label: str
    scope: tuple[str, ...]
    deps: list[str]


# -- the neutral form ---------------------------------------------------------------


def _argument_summary(task: Any, limit: int = 28) -> str:
    """Return the plain (non-future) arguments of a task as short text."""
    parts = []
    for value in task.args:
        if not any(True for _ in iter_futures(value)):
            parts.append(repr(value))
    for name, value in task.kwargs.items():
        if not any(True for _ in iter_futures(value)):
            parts.append(f"{name}={value!r}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _nodes(source: Drawable) -> list[_Node]:
    """Convert a graph or a run record to nodes in topological order."""
    nodes: list[_Node] = []
    if isinstance(source, Graph):
        jobs = [task.job.name for task in source]
        for key, task in source.tasks.items():
            label = task.job.name
            if jobs.count(label) > 1:
                summary = _argument_summary(task)
                label = f"{label}\n{summary}" if summary else f"{label}\n{key[-6:]}"
            deps = [dep for dep in source.dependencies(key) if dep in source.tasks]
            nodes.append(_Node(key, label, tuple(task.scope), list(dict.fromkeys(deps))))
        return nodes
    if isinstance(source, RunRecord):
        keys = {task.key for task in source.tasks}
        jobs = [task.job for task in source.tasks]
        for record in source.tasks:
            label = record.job
            if jobs.count(label) > 1:
                label = f"{label}\n{record.key.rpartition('-')[2][:6]}"
            deps = [dep for dep in record.dependencies if dep in keys]
            nodes.append(
                _Node(record.key, label, tuple(record.scope), list(dict.fromkeys(deps)))
            )
        return nodes
    raise TypeError(f"cannot draw {type(source).__name__}; pass a Graph or a RunRecord")


def _record_statuses(record: RunRecord) -> dict[str, str]:
    return {task.key: task.status for task in record.tasks}


def _resolve_statuses(
    source: Drawable, statuses: dict[str, str] | None
) -> dict[str, str] | None:
    if statuses is None and isinstance(source, RunRecord):
        return _record_statuses(source)
    return statuses


def _scope_tree(nodes: list[_Node]) -> dict[tuple[str, ...], list[_Node]]:
    """Group nodes by scope; every ancestor scope gets an entry too."""
    tree: dict[tuple[str, ...], list[_Node]] = {(): []}
    for node in nodes:
        for depth in range(1, len(node.scope) + 1):
            tree.setdefault(node.scope[:depth], [])
        tree[node.scope].append(node)
    return tree


def _children(tree: dict[tuple[str, ...], list[_Node]], scope: tuple[str, ...]) -> list:
    return [s for s in tree if len(s) == len(scope) + 1 and s[: len(scope)] == scope]


# -- DOT --------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def graph_dot(source: Drawable, statuses: dict[str, str] | None = None) -> str:
    """Return Graphviz DOT source for a graph or a run record.

    Parameters
    ----------
    source:
        A traced :class:`~pipedsl.graph.Graph` or a
        :class:`~pipedsl.records.RunRecord`.
    statuses:
        ``{task key: status}``, for example ``run.statuses()``; each box is
        filled with the colour of its status (see :data:`STATUS_COLORS`). A
        run record uses its own statuses when this is None.

    Examples
    --------
    >>> from pipedsl import job, workflow
    >>> @job
    ... def one() -> int:
    ...     return 1
    >>> @workflow
    ... def tiny() -> int:
    ...     return one()
    >>> print(graph_dot(tiny.trace()).splitlines()[0])
    digraph "tiny" {
    """
    statuses = _resolve_statuses(source, statuses)
    nodes = _nodes(source)
    ids = {node.key: f"t{index}" for index, node in enumerate(nodes)}
    name = source.name if isinstance(source, Graph) else source.workflow
    lines = [
        f"digraph {_dot_string(name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", '
        f'fontsize=11, fillcolor="{_NO_STATUS_COLOR}"];',
        '  edge [color="#607d8b", arrowsize=0.7];',
    ]
    tree = _scope_tree(nodes)
    counter = iter(range(10**9))

    def emit(scope: tuple[str, ...], indent: str) -> None:
        for node in tree[scope]:
            status = statuses.get(node.key) if statuses else None
            tooltip = node.key if status is None else f"{node.key} ({status})"
            attributes = [f"label={_dot_string(node.label)}", f"tooltip={_dot_string(tooltip)}"]
            if status is not None:
                color = STATUS_COLORS.get(status, _NO_STATUS_COLOR)
                attributes.append(f'fillcolor="{color}"')
            lines.append(f"{indent}{ids[node.key]} [{', '.join(attributes)}];")
        for child in _children(tree, scope):
            # Graphviz draws a subgraph as a box only when its name starts
            # with "cluster".
            lines.append(f"{indent}subgraph cluster_{next(counter)} {{")
            lines.append(f"{indent}  label={_dot_string(child[-1])};")
            lines.append(
                f'{indent}  style="rounded,filled"; fillcolor="{_CLUSTER_COLOR}"; '
                'color="#90a4ae"; fontname="Helvetica"; fontsize=11;'
            )
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")

    emit((), "  ")
    for node in nodes:
        for dep in node.deps:
            lines.append(f"  {ids[dep]} -> {ids[node.key]};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_available() -> bool:
    """Return True when the Graphviz ``dot`` program is on ``PATH``."""
    return shutil.which("dot") is not None


def render_dot(dot_source: str, fmt: str = "svg") -> bytes:
    """Render DOT source with Graphviz ``dot`` to ``fmt`` (``svg``, ``png``...).

    Raises
    ------
    FileNotFoundError
        ``dot`` is not on ``PATH``.
    RuntimeError
        ``dot`` failed or timed out; the message contains its error output.
    """
    executable = shutil.which("dot")
    if executable is None:
        raise FileNotFoundError(
            "the Graphviz 'dot' program is not installed; install Graphviz "
            "(for example `apt-get install graphviz`) or use the Mermaid or DOT text"
        )
    try:
        completed = subprocess.run(
            [executable, f"-T{fmt}"],
            input=dot_source.encode(),
            capture_output=True,
            timeout=DOT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"dot -T{fmt} timed out after {DOT_TIMEOUT:g}s") from None
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"dot -T{fmt} failed with exit code {completed.returncode}: {message}")
    return completed.stdout


def graph_svg(source: Drawable, statuses: dict[str, str] | None = None) -> str | None:
    """Return the graph as SVG drawn by Graphviz, or None without ``dot``.

    None tells IPython to fall back to the HTML picture.
    """
    if not dot_available():
        return None
    try:
        svg = render_dot(graph_dot(source, statuses), "svg").decode()
    except (RuntimeError, OSError) as exc:
        logger.warning("could not draw the graph with dot: %s", exc)
        return None
    # Drop the XML prolog and doctype so the SVG can sit inside HTML.
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


# -- Mermaid ----------------------------------------------------------------------------


def _mermaid_label(text: str) -> str:
    # Mermaid reads entity codes such as #quot; inside quoted labels.
    escaped = text.replace('"', "#quot;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = escaped.replace("\n", "<br/>")
    return f'"{escaped}"'


def graph_mermaid(source: Drawable, statuses: dict[str, str] | None = None) -> str:
    """Return a Mermaid ``flowchart`` of a graph or a run record.

    Sub-workflows become ``subgraph`` blocks and statuses become classes
    filled with :data:`STATUS_COLORS`. Put the text in a fenced ``mermaid``
    block of a Markdown file to get a picture on GitHub or in MkDocs.
    """
    statuses = _resolve_statuses(source, statuses)
    nodes = _nodes(source)
    ids = {node.key: f"t{index}" for index, node in enumerate(nodes)}
    lines = ["flowchart TD"]
    tree = _scope_tree(nodes)
    counter = iter(range(10**9))

    def emit(scope: tuple[str, ...], indent: str) -> None:
        for node in tree[scope]:
            status = statuses.get(node.key) if statuses else None
            suffix = f":::{status}" if status in STATUS_COLORS else ""
            lines.append(f"{indent}{ids[node.key]}[{_mermaid_label(node.label)}]{suffix}")
        for child in _children(tree, scope):
            lines.append(f"{indent}subgraph s{next(counter)}[{_mermaid_label(child[-1])}]")
            emit(child, indent + "  ")
            lines.append(f"{indent}end")

    emit((), "  ")
    for node in nodes:
        for dep in node.deps:
            lines.append(f"  {ids[dep]} --> {ids[node.key]}")
    if statuses:
        for status in sorted({s for s in statuses.values() if s in STATUS_COLORS}):
            lines.append(f"  classDef {status} fill:{STATUS_COLORS[status]},stroke:#546e7a")
    return "\n".join(lines) + "\n"


# -- HTML -------------------------------------------------------------------------------


def _levels(nodes: list[_Node]) -> dict[str, int]:
    """Depth of each node: 0 for sources, else one more than its deepest input."""
    level: dict[str, int] = {}
    for node in nodes:  # topological order: inputs come first
        level[node.key] = 1 + max((level.get(dep, 0) for dep in node.deps), default=-1)
    return level


def _html_box(node: _Node, status: str | None, labels: dict[str, str]) -> str:
    color = STATUS_COLORS.get(status or "", _NO_STATUS_COLOR)
    title = html.escape(node.key)
    label = "<br>".join(html.escape(line) for line in node.label.split("\n"))
    inputs = ", ".join(html.escape(labels[dep].split("\n")[0]) for dep in node.deps)
    extra = f'<div class="pd-in">← {inputs}</div>' if inputs else ""
    badge = f'<div class="pd-status">{html.escape(status)}</div>' if status else ""
    return (
        f'<div class="pd-task" title="{title}" style="background:{color}">'
        f"<b>{label}</b>{badge}{extra}</div>"
    )


_HTML_STYLE = (
    "<style>"
    ".pd-graph{font-family:Helvetica,Arial,sans-serif;font-size:12px}"
    ".pd-row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;margin:4px 0}"
    ".pd-task{border:1px solid #78909c;border-radius:6px;padding:4px 8px;color:#212121}"
    ".pd-status,.pd-in{font-size:10px;color:#455a64}"
    ".pd-scope{border:1px dashed #90a4ae;border-radius:6px;padding:2px 6px;"
    f"background:{_CLUSTER_COLOR};display:flex;flex-wrap:wrap;gap:6px;align-items:center}}"
    ".pd-scope>span{font-size:10px;color:#546e7a;width:100%}"
    "</style>"
)


def _html_layers(source: Drawable, statuses: dict[str, str] | None) -> str:
    nodes = _nodes(source)
    labels = {node.key: node.label for node in nodes}
    level = _levels(nodes)
    rows: dict[int, list[_Node]] = {}
    for node in nodes:
        rows.setdefault(level[node.key], []).append(node)
    parts = [_HTML_STYLE, '<div class="pd-graph">']
    for depth in sorted(rows):
        parts.append('<div class="pd-row">')
        # Tasks of one sub-workflow in a row share a dashed box named after it.
        by_scope: dict[tuple[str, ...], list[_Node]] = {}
        for node in rows[depth]:
            by_scope.setdefault(node.scope, []).append(node)
        for scope, members in by_scope.items():
            boxes = "".join(
                _html_box(node, statuses.get(node.key) if statuses else None, labels)
                for node in members
            )
            if scope:
                name = html.escape(" / ".join(scope))
                parts.append(f'<div class="pd-scope"><span>{name}</span>{boxes}</div>')
            else:
                parts.append(boxes)
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def graph_html(source: Drawable, statuses: dict[str, str] | None = None) -> str:
    """Return an HTML picture of a graph or a run record.

    With Graphviz installed this is the SVG of :func:`graph_svg`; without it
    tasks are drawn as coloured boxes in rows by depth, each naming its
    inputs, and the Mermaid text is included in a collapsed block.
    """
    statuses = _resolve_statuses(source, statuses)
    svg = graph_svg(source, statuses)
    if svg is not None:
        return f'<div class="pd-graph">{svg}</div>'
    mermaid = html.escape(graph_mermaid(source, statuses))
    return (
        _html_layers(source, statuses)
        + "<details><summary>Mermaid source</summary>"
        + f"<pre>{mermaid}</pre></details>"
    )


def format_duration(seconds: float | None) -> str:
    """Format seconds as ``0.42s``, ``12.3s``, ``4m05s`` or ``2h10m``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_size(size: int | None) -> str:
    """Format a byte count as ``512 B``, ``1.5 KiB``, ``3.2 MiB``...; ``-`` for None."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def _record_of(run: Run[Any] | RunRecord) -> RunRecord:
    return run if isinstance(run, RunRecord) else run.record


# Cached tasks have no size in the run record; at most this many manifests are
# read to fill it in, so a large run on an object store renders quickly.
MAX_SIZE_LOOKUPS = 200


def _sizes(run: Run[Any] | RunRecord, tasks: Iterable[TaskRecord]) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    store = getattr(run, "store", None)
    lookups = 0
    for task in tasks:
        size = task.size
        if size is None and task.status == "cached" and store is not None:
            if lookups < MAX_SIZE_LOOKUPS:
                lookups += 1
                try:
                    manifest = store.read_manifest(task.job, task.key)
                except OSError as exc:
                    logger.debug("could not read the manifest of %s: %s", task.key, exc)
                    manifest = None
                if manifest is not None:
                    size = manifest.get("size")
        sizes[task.key] = size
    return sizes


def _started(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def run_html(run: Run[Any] | RunRecord) -> str:
    """Return an HTML summary of a run: a table of its tasks and its graph.

    The table has one row per task with its job, status, duration, whether it
    came from the cache, the size of its stored output and its error. Takes a
    live :class:`~pipedsl.runs.Run` or a record from :func:`pipedsl.load_run`.
    """
    record = _record_of(run)
    live = not isinstance(run, RunRecord)
    status = run.status if live else record.status
    statuses = run.statuses() if live else _record_statuses(record)
    # Copies: a live run's scheduler owns its records.
    tasks = [
        dataclasses.replace(task, status=statuses.get(task.key, task.status))
        for task in record.tasks
    ]
    sizes = _sizes(run, tasks)
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.status] = counts.get(task.status, 0) + 1
    summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    ended = record.ended if record.ended is not None else None
    duration = None if ended is None else ended - record.started
    header = (
        f"<p><b>Run {html.escape(record.run_id)}</b> of "
        f"<code>{html.escape(record.workflow)}</code>: "
        f'<span style="background:{STATUS_COLORS.get(status, _NO_STATUS_COLOR)};'
        f'padding:0 4px">{html.escape(status)}</span>, '
        f"started {_started(record.started)}, {format_duration(duration)}; "
        f"{html.escape(summary)}</p>"
    )
    rows = []
    for task in tasks:
        color = STATUS_COLORS.get(task.status, _NO_STATUS_COLOR)
        error = (task.error or "").splitlines()[0] if task.error else ""
        rows.append(
            "<tr>"
            f'<td title="{html.escape(task.key)}">{html.escape(task.job)}</td>'
            f'<td style="background:{color}">{html.escape(task.status)}</td>'
            f'<td style="text-align:right">{format_duration(task.duration)}</td>'
            f"<td>{'yes' if task.status == 'cached' else 'no'}</td>"
            f'<td style="text-align:right">{format_size(sizes.get(task.key))}</td>'
            f"<td><code>{html.escape(error[:200])}</code></td>"
            "</tr>"
        )
    table = (
        '<table class="pd-run">'
        "<thead><tr><th>job</th><th>status</th><th>duration</th><th>cached</th>"
        "<th>artifact size</th><th>error</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    picture = graph_html(run.graph if live else record, statuses)
    return f'<div class="pd-run">{header}{table}{picture}</div>'
