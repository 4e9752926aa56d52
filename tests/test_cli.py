"""The pipedsl command, run as real subprocesses against local and S3 stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from pipedsl.cli import parse_storage_options

FLOWS = '''
import time
from typing import Literal

from pipedsl import job, workflow


@job
def numbers(n: int) -> list:
    return list(range(n))


@job
def scaled(xs: list, factor: float) -> list:
    return [x * factor for x in xs]


@job
def total(xs: list) -> float:
    return sum(xs)


@workflow
def pipe(n: int, factor: float = 2.0, label: str = "sum", mode: Literal["a", "b"] = "a",
         verbose: bool = False) -> dict:
    return {"label": label, "total": total(scaled(numbers(n), factor))}


@job
def broken(n: int) -> int:
    raise ValueError(f"bad input {n}")


@workflow
def failing(n: int = 1) -> int:
    return broken(n)


@job
def sleepy(i: int) -> int:
    time.sleep(30)
    return i


@workflow
def slow(width: int = 2) -> list:
    return [sleepy(i) for i in range(width)]
'''


def pipedsl(*args: str, cwd, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m pipedsl ARGS`` and return the completed process."""
    environment = dict(os.environ)
    environment.pop("PIPEDSL_STORE", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pipedsl", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project(tmp_path):
    (tmp_path / "flows.py").write_text(FLOWS)
    return tmp_path


def test_run_prints_result_then_caches(project):
    first = pipedsl("--store", "store", "run", "flows:pipe", "--n", "4", cwd=project)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"label": "sum", "total": 12.0}
    assert "3 executed, 0 cached" in first.stderr

    again = pipedsl("--store", "store", "run", "flows:pipe", "--param", "n=4", cwd=project)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["total"] == 12.0
    assert "0 executed, 3 cached" in again.stderr

    # A new factor reruns scaled and total only; numbers stays cached.
    changed = pipedsl("--store", "store", "run", "flows:pipe", "--n", "4", "--factor", "0.5",
                      cwd=project)  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["total"] == 3.0
    assert "2 executed, 1 cached" in changed.stderr


def test_run_help_lists_workflow_params(project):
    result = pipedsl("run", "flows:pipe", "--help", cwd=project)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # help text wraps at any width
    assert "--n INTEGER" in text
    assert "required" in text
    assert "--factor FLOAT" in text
    assert "default: 2.0" in text
    assert "--mode [a|b]" in text
    assert "--verbose / --no-verbose" in text


def test_run_typed_params_and_flags(project):
    result = pipedsl(
        "--store", "store", "run", "flows:pipe", "--n", "3", "--label", "x y",
        "--mode", "b", "--verbose", "--json", cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["status"] == "done"
    assert payload["result"] == {"label": "x y", "total": 6.0}
    assert payload["counts"] == {"done": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "flows:pipe", "--n", "abc"], "'abc' is not a valid integer"),
        (["run", "flows:pipe"], "needs parameter(s) n"),
        (["run", "flows:pipe", "--n", "2", "--mode", "c"], "'c' is not one of"),
        (["run", "flows:pipe", "--param", "nope=1", "--n", "1"], "has no parameter 'nope'"),
        (["run", "flows:pipe", "--param", "n"], "not of the form name=value"),
        (["run", "flows:missing"], "has no attribute 'missing'"),
        (["run", "nomodule:pipe"], "cannot import module 'nomodule'"),
        (["run", "flows:numbers"], "is a job, not a workflow"),
        (["run", "flows"], "module:workflow"),
        (["run", "flows:pipe", "--n", "1", "--executor", "gpu"], "unknown executor 'gpu'"),
        (["--storage-option", "novalue", "runs"], "not of the form key=value"),
        (["cache", "rm"], "name KEYs, --job NAME, or --all"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_usage_errors_exit_two(project, args, message):
    result = pipedsl(*args, cwd=project)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_failed_run_exits_one_with_one_line(project):
    result = pipedsl("--store", "store", "run", "flows:failing", "--n", "7", cwd=project)
    assert result.returncode == 1
    assert "error: ValueError: bad input 7" in result.stderr
    assert "Traceback" not in result.stderr
    assert "failed" in result.stderr

    verbose = pipedsl("--verbose", "--store", "store", "run", "flows:failing", cwd=project)
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr
    assert "raise ValueError" in verbose.stderr


def test_file_target_on_process_executor(project, tmp_path):
    # Loaded by path and not importable by name elsewhere: workers get the
    # functions by value.
    other = tmp_path / "elsewhere"
    other.mkdir()
    target = f"{project / 'flows.py'}:pipe"
    result = pipedsl("--store", str(tmp_path / "store"), "run", target, "--n", "5",
                     "--executor", "processes", cwd=other)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == 20.0


def test_runs_show_status(project):
    ok = pipedsl("--store", "store", "run", "flows:pipe", "--n", "2", "--run-id", "run-ok",
                 cwd=project)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    bad = pipedsl("--store", "store", "run", "flows:failing", "--run-id", "run-bad", cwd=project)
    assert bad.returncode == 1

    listing = pipedsl("--store", "store", "runs", cwd=project)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["RUN", "ID", "WORKFLOW"]
    # Newest first.
    assert lines[1].split()[:3] == ["run-bad", "failing", "failed"]
    assert lines[2].split()[:3] == ["run-ok", "pipe", "done"]
    assert lines[2].split()[-3:] == ["3", "0", "0"]

    as_json = pipedsl("--store", "store", "runs", "--json", "--workflow", "pipe", cwd=project)
    runs = json.loads(as_json.stdout)
    assert [r["run_id"] for r in runs] == ["run-ok"]
    assert runs[0]["counts"] == {"done": 3}

    shown = pipedsl("--store", "store", "show", "run-bad", cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert "status    failed" in shown.stdout
    assert "broken" in shown.stdout
    assert "ValueError: bad input 1" in shown.stdout
    assert "Traceback" in shown.stdout  # the task's traceback, from the record

    assert pipedsl("--store", "store", "status", "run-ok", cwd=project).returncode == 0
    failed = pipedsl("--store", "store", "status", "latest", cwd=project)
    assert failed.returncode == 1
    assert failed.stdout.startswith("run-bad failed: 1/1 tasks finished")

    missing = pipedsl("--store", "store", "show", "nope", cwd=project)
    assert missing.returncode == 1
    assert "no run 'nope'" in missing.stderr


def test_kill_stops_run_in_other_process(project):
    env = dict(os.environ, PIPEDSL_STORE=str(project / "store"))
    env.pop("PIPEDSL_EXECUTOR", None)
    running = subprocess.Popen(
        [sys.executable, "-m", "pipedsl", "run", "flows:slow", "--run-id", "long-run",
         "--executor", "processes"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            status = pipedsl("status", "long-run", cwd=project, env={"PIPEDSL_STORE": "store"})
            if status.returncode == 0 and "running" in status.stdout:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"run never started: {status.stdout} {status.stderr}")
        killed_at = time.time()
        kill = pipedsl("kill", "long-run", cwd=project, env={"PIPEDSL_STORE": "store"})
        assert kill.returncode == 0, kill.stderr
        assert "kill requested for run long-run" in kill.stdout
        _, stderr = running.communicate(timeout=20)
        elapsed = time.time() - killed_at
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 1, stderr
    assert "RunCancelled" in stderr
    # The scheduler polls for kill requests every 2 s; sleepy() takes 30 s.
    assert elapsed < 10
    final = pipedsl("status", "long-run", cwd=project, env={"PIPEDSL_STORE": "store"})
    assert final.returncode == 1
    assert "cancelled" in final.stdout
    again = pipedsl("kill", "long-run", cwd=project, env={"PIPEDSL_STORE": "store"})
    assert "already ended (cancelled)" in again.stdout


def test_why_names_changed_source(project):
    assert pipedsl("--store", "store", "run", "flows:pipe", "--n", "3", cwd=project).returncode == 0
    nothing = pipedsl("--store", "store", "why", "flows:pipe", "--n", "3", cwd=project)
    assert nothing.returncode == 0, nothing.stderr
    assert "every task of pipe would be taken from the cache" in nothing.stdout

    flows = project / "flows.py"
    flows.write_text(flows.read_text().replace("x * factor", "x * factor + 1"))
    before = pipedsl("--store", "store", "why", "flows:pipe", "--n", "3", cwd=project)
    assert before.returncode == 0, before.stderr
    lines = before.stdout.splitlines()
    assert lines[0] == "scaled: the job's source changed"
    assert lines[1].startswith("total: upstream task scaled")
    assert len(lines) == 2

    rerun = pipedsl("--store", "store", "run", "flows:pipe", "--n", "3", cwd=project)
    assert "2 executed, 1 cached" in rerun.stderr
    after = pipedsl("--store", "store", "why", "latest", cwd=project)
    assert after.stdout.splitlines()[0] == "scaled: the job's source changed"


def test_graph_formats(project):
    mermaid = pipedsl("graph", "flows:pipe", "--n", "2", cwd=project)
    assert mermaid.returncode == 0, mermaid.stderr
    assert mermaid.stdout.startswith("flowchart TD")
    assert mermaid.stdout.count("-->") == 2

    dot = pipedsl("graph", "flows:pipe", "--n", "2", "--format", "dot", cwd=project)
    assert dot.stdout.startswith('digraph "pipe" {')

    # --plan colours what the store holds.
    pipedsl("--store", "store", "run", "flows:pipe", "--n", "2", cwd=project)
    planned = pipedsl("--store", "store", "graph", "flows:pipe", "--n", "2", "--factor", "3",
                      "--plan", cwd=project)  # fmt: skip
    assert planned.stdout.count(":::cached") == 1
    assert planned.stdout.count(":::pending") == 2

    html = pipedsl("graph", "flows:pipe", "--n", "2", "-o", "graph.html", cwd=project)
    assert html.returncode == 0, html.stderr
    assert "<div" in (project / "graph.html").read_text()


def test_graph_svg_without_dot_fails_clearly(project, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = pipedsl("graph", "flows:pipe", "--n", "2", "-o", "graph.svg", cwd=project,
                     env={"PATH": str(empty)})  # fmt: skip
    assert result.returncode == 1
    assert "Graphviz 'dot' program is not installed" in result.stderr
    assert not (project / "graph.svg").exists()


@pytest.mark.skipif(not __import__("shutil").which("dot"), reason="Graphviz is not installed")
def test_graph_svg_with_dot(project):
    result = pipedsl("graph", "flows:pipe", "--n", "2", "-o", "graph.svg", cwd=project)
    assert result.returncode == 0, result.stderr
    svg = (project / "graph.svg").read_text()
    assert "<svg" in svg
    assert ">numbers<" in svg


def test_cache_ls_rm_gc(project):
    assert pipedsl("--store", "store", "run", "flows:pipe", "--n", "2", cwd=project).returncode == 0
    listing = pipedsl("--store", "store", "cache", "ls", "--json", cwd=project)
    assert listing.returncode == 0, listing.stderr
    entries = json.loads(listing.stdout)
    assert sorted(e["job"] for e in entries) == ["numbers", "scaled", "total"]

    table = pipedsl("--store", "store", "cache", "ls", "--job", "numbers", cwd=project)
    assert table.stdout.splitlines()[0].split()[:2] == ["JOB", "KEY"]
    assert len(table.stdout.splitlines()) == 2

    removed = pipedsl("--store", "store", "cache", "rm", "--job", "total", cwd=project)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("removed 1 entries")
    rerun = pipedsl("--store", "store", "run", "flows:pipe", "--n", "2", cwd=project)
    assert "1 executed, 2 cached" in rerun.stderr

    dry = pipedsl("--store", "store", "cache", "gc", "--older-than", "0", "--dry-run",
                  "--no-keep-live-runs", cwd=project)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "entries removed: 3" in dry.stdout
    assert len(json.loads(pipedsl("--store", "store", "cache", "ls", "--json",
                                  cwd=project).stdout)) == 3  # fmt: skip

    gc = pipedsl("--store", "store", "cache", "gc", "--older-than", "0",
                 "--no-keep-live-runs", cwd=project)  # fmt: skip
    assert gc.returncode == 0, gc.stderr
    assert "entries removed: 3" in gc.stdout
    assert json.loads(pipedsl("--store", "store", "cache", "ls", "--json",
                              cwd=project).stdout) == []  # fmt: skip

    bad_age = pipedsl("--store", "store", "cache", "gc", "--older-than", "soon", cwd=project)
    assert bad_age.returncode == 2


def test_serve_is_registered(project):
    result = pipedsl("serve", "--help", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Usage: pipedsl serve" in result.stdout


@pytest.mark.s3
@pytest.mark.slow
def test_s3_store_run_runs_show(project, s3_store_url):
    url, options = s3_store_url
    endpoint = options["client_kwargs"]["endpoint_url"]
    flags = [
        "--store", url,
        "--storage-option", "key=testing",
        "--storage-option", "secret=testing",
        "--storage-option", f"client_kwargs.endpoint_url={endpoint}",
        "--storage-option", "client_kwargs.region_name=us-east-1",
    ]  # fmt: skip
    first = pipedsl(*flags, "run", "flows:pipe", "--n", "3", "--run-id", "s3-run", cwd=project)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["total"] == 6.0

    # The same store through environment variables only.
    env = {
        "PIPEDSL_STORE": url,
        "PIPEDSL_STORAGE_OPTIONS": json.dumps(options),
    }
    again = pipedsl("run", "flows:pipe", "--n", "3", cwd=project, env=env)
    assert again.returncode == 0, again.stderr
    assert "0 executed, 3 cached" in again.stderr

    listing = pipedsl("runs", "--json", cwd=project, env=env)
    assert [r["run_id"] for r in json.loads(listing.stdout)][-1] == "s3-run"
    shown = pipedsl(*flags, "show", "s3-run", cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert f"store     {url}" in shown.stdout
    entries = json.loads(pipedsl("cache", "ls", "--json", cwd=project, env=env).stdout)
    assert len(entries) == 3


def test_storage_options_nesting(monkeypatch):
    monkeypatch.setenv("PIPEDSL_STORAGE_OPTIONS", '{"anon": false, "client_kwargs": {"a": 1}}')
    options = parse_storage_options(
        ["client_kwargs.endpoint_url=http://127.0.0.1:9", "use_ssl=false", "retries=3"]
    )
    assert options == {
        "anon": False,
        "client_kwargs": {"a": 1, "endpoint_url": "http://127.0.0.1:9"},
        "use_ssl": False,
        "retries": 3,
    }


def test_main_module_version(project):
    result = pipedsl("--version", cwd=project)
    assert result.returncode == 0
    assert "pipedsl" in result.stdout
    assert textwrap.dedent(result.stdout).strip().endswith("0.1.0")
