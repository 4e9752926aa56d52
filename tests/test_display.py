"""Pictures of graphs and runs: DOT, Mermaid, SVG with and without Graphviz, HTML."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ElementTree

import pytest

import pipedsl
from pipedsl import display, job, workflow


@job
def load(n: int) -> list:
    return list(range(n))


@job
def square(xs: list) -> list:
    return [x * x for x in xs]


@job
def total(xs: list) -> int:
    return sum(xs)


@job
def explode(xs: list) -> int:
    raise RuntimeError("boom <b>")


@workflow
def features(xs: list) -> list:
    return square(xs)


@workflow
def nested(n: int = 3) -> dict:
    xs = load(n)
    return {"total": total(features(xs)), "size": total(xs)}


@workflow
def broken(n: int = 2) -> dict:
    xs = load(n)
    return {"bad": total(explode(xs)), "good": total(square(xs))}


@pytest.fixture
def no_dot(monkeypatch):
    """Hide the Graphviz binary, as on a machine without Graphviz."""
    original = shutil.which
    monkeypatch.setattr(
        display.shutil, "which", lambda name, *a, **k: None if name == "dot" else original(name)
    )


def test_dot_edges_and_cluster():
    graph = nested.trace()
    text = graph.to_dot()
    assert text.startswith('digraph "nested" {')
    assert text.count("->") == 3
    # The sub-workflow is one cluster holding exactly the square task.
    cluster = re.search(r"subgraph cluster_\d+ \{(.*?)\n  \}", text, re.S)
    assert cluster is not None
    assert 'label="features"' in cluster.group(1)
    assert 'label="square"' in cluster.group(1)
    assert 'label="load"' not in cluster.group(1)


def test_dot_labels_tell_tasks_apart():
    graph = nested.trace()
    text = display.graph_dot(graph)
    # total appears twice; each label carries something to tell them apart.
    labels = re.findall(r'label="(total[^"]*)"', text)
    assert len(labels) == 2
    assert labels[0] != labels[1]


def test_dot_escapes_quotes():
    @job(name='say "hi"')
    def greet() -> str:
        return "hi"

    @workflow
    def hello() -> str:
        return greet()

    text = display.graph_dot(hello.trace())
    assert 'label="say \\"hi\\""' in text


def test_mermaid_statuses_and_subgraph():
    graph = nested.trace()
    keys = list(graph.tasks)
    statuses = {keys[0]: "cached", keys[1]: "failed"}
    text = graph.to_mermaid(statuses)
    assert text.startswith("flowchart TD")
    assert ":::cached" in text
    assert ":::failed" in text
    assert "classDef cached fill:#c8e6c9" in text
    assert "classDef failed fill:#ef9a9a" in text
    assert 'subgraph s0["features"]' in text
    assert text.count("-->") == 3
    # Tasks without a status get no class.
    assert text.count(":::") == 2


def test_svg_falls_back_without_dot(no_dot):
    graph = nested.trace()
    assert display.dot_available() is False
    assert graph._repr_svg_() is None
    page = graph._repr_html_()
    assert "<svg" not in page
    assert page.count('class="pd-task"') == 4
    assert 'class="pd-scope"><span>features</span>' in page
    assert "Mermaid source" in page
    with pytest.raises(FileNotFoundError, match="Graphviz"):
        display.render_dot(graph.to_dot())


def test_html_fallback_rows_by_depth(no_dot):
    page = display.graph_html(nested.trace())
    rows = re.findall(r'<div class="pd-row">(.*?)</div></div>(?=<div class="pd-row">|</div>)',
                      page)  # fmt: skip
    assert len(rows) >= 3
    assert "<b>load</b>" in rows[0]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_svg_with_dot_is_valid_xml():
    graph = nested.trace()
    keys = list(graph.tasks)
    svg = display.graph_svg(graph, {keys[0]: "done"})
    assert svg is not None
    root = ElementTree.fromstring(svg)
    assert root.tag.endswith("svg")
    assert display.STATUS_COLORS["done"] in svg
    assert "features" in svg
    assert graph._repr_html_().count("<svg") == 1


def test_run_html_table(no_dot, tmp_path):
    run = broken.run(store=str(tmp_path / "store"), on_failure="continue", progress=False)
    page = run._repr_html_()
    assert "Run " + run.run_id in page
    assert run.status == "failed"
    # One row per task with its status cell coloured.
    rows = re.findall(r"<tr><td", page)
    assert len(rows) == len(run.graph)
    assert "boom &lt;b&gt;" in page  # errors are escaped
    assert "<b>boom" not in page
    assert f'background:{display.STATUS_COLORS["failed"]}">failed' in page
    assert f'background:{display.STATUS_COLORS["skipped"]}">skipped' in page
    assert page.count('class="pd-task"') == len(run.graph)


def test_run_html_cached_sizes(no_dot, tmp_path):
    store = str(tmp_path / "store")
    first = nested.run(store=store, progress=False)
    second = nested.run(store=store, progress=False)
    assert second.counts() == {"cached": 4}
    page = display.run_html(second)
    cells = re.findall(r'<td style="text-align:right">([^<]*)</td>', page)
    sizes = cells[1::2]
    assert len(sizes) == 4
    assert all(size.endswith(" B") for size in sizes)
    assert sizes == re.findall(r'<td style="text-align:right">([^<]*)</td>',
                               display.run_html(first))[1::2]  # fmt: skip


def test_run_record_draws_like_graph(no_dot, tmp_path):
    store = str(tmp_path / "store")
    run = nested.run(store=store, progress=False)
    record = pipedsl.load_run(run.run_id, store)
    text = display.graph_mermaid(record)
    assert text.count("-->") == 3
    assert text.count(":::done") == 4
    assert 'subgraph s0["features"]' in text
    page = display.run_html(record)
    assert page.count("<tr><td") == 4


def test_draw_rejects_other_types():
    with pytest.raises(TypeError, match="pass a Graph or a RunRecord"):
        display.graph_dot(["not", "a", "graph"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.123, "0.12s"), (12.34, "12.3s"), (125, "2m05s"), (7300, "2h01m")],
)
def test_format_duration(seconds, text):
    assert display.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**30, "5.0 GiB")],
)
def test_format_size(size, text):
    assert display.format_size(size) == text
