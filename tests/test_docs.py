"""The documentation site: a strict MkDocs build and checks against the code."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import click
import pytest
import yaml

from pipedsl.cli import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


class _Loader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose !!python/name tags only MkDocs resolves."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages(items) -> list[str]:
    pages = []
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages.extend(nav_pages(value))
        else:
            pages.append(value)
    return pages


def test_nav_pages_exist():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)
    pages = nav_pages(config["nav"])
    assert len(pages) >= 10
    for page in pages:
        assert (DOCS / page).is_file(), f"{page} is in the nav but missing"
    for required in ("s3.md", "fedml.md", "compound-ai.md", "benchmarks.md"):
        assert required in pages


def test_cli_reference_covers_every_command():
    text = (DOCS / "how-to" / "cli.md").read_text()
    context = click.Context(cli)
    for name in cli.list_commands(context):
        assert f"## pipedsl {name}" in text, f"docs/how-to/cli.md lacks `pipedsl {name}`"
    for sub in ("ls", "rm", "gc"):
        assert f"pipedsl cache {sub}" in text


def test_notebooks_named_in_docs_exist():
    text = (DOCS / "how-to" / "notebooks.md").read_text()
    named = re.findall(r"`(\w+\.ipynb)`", text)
    assert named
    for name in named:
        assert (ROOT / "notebooks" / name).is_file(), name


def test_digits_picture_matches_pipeline():
    svg = (DOCS / "img" / "digits-graph.svg").read_text()
    sys.path.insert(0, str(ROOT / "examples" / "digits"))
    try:
        from pipeline import digits_pipeline
    finally:
        sys.path.pop(0)
    graph = digits_pipeline.trace()
    assert svg.count('class="node"') == len(graph)
    for task in graph:
        assert f">{task.job.name}<" in svg


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    executable = shutil.which("mkdocs", path=os.path.dirname(sys.executable))
    command = [executable] if executable else [sys.executable, "-m", "mkdocs"]
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [*command, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    # Docstrings were rendered, not only headings.
    assert "Make a function a job" in api
    assert "Wait for the run and return the workflow" in api
    concepts = (tmp_path / "site" / "concepts" / "index.html").read_text()
    assert "What the code version covers" in concepts
