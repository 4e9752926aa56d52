"""Notebooks executed top to bottom in a real IPython kernel (nbclient + ipykernel)."""

from __future__ import annotations

import json
import os
import pathlib
import textwrap

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.slow


def execute(notebook: nbformat.NotebookNode, cwd: pathlib.Path, timeout: int = 180) -> None:
    """Execute every cell in a fresh python3 kernel; raise on the first error."""
    env = dict(os.environ)
    env.pop("PIPEDSL_STORE", None)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)


def run_cells(cells: list[str], cwd: pathlib.Path) -> list[nbformat.NotebookNode]:
    """Execute ``cells`` in one kernel and return the executed cells."""
    notebook = new_notebook(cells=[new_code_cell(textwrap.dedent(c).strip()) for c in cells])
    execute(notebook, cwd)
    return notebook.cells


def stdout_of(cell: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "")
        for o in cell.outputs
        if o.output_type == "stream" and o.get("name") == "stdout"
    )


def last_json(cell: nbformat.NotebookNode) -> object:
    """Parse the last stdout line of a cell, which the test cells print as JSON."""
    text = stdout_of(cell).strip()
    assert text, f"cell printed nothing to stdout; outputs: {cell.outputs}"
    return json.loads(text.splitlines()[-1])


def test_notebooks_found():
    names = {path.name for path in NOTEBOOKS}
    assert {"quickstart.ipynb", "s3.ipynb", "debugging.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_without_error(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    try:
        execute(notebook, tmp_path)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{exc}")
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert errors == []


SETUP = """
import json, tempfile
import pipedsl
from pipedsl import job, workflow
pipedsl.configure(store=tempfile.mkdtemp(), progress=False)
"""


def test_workflow_call_returns_value_with_loop_running(tmp_path):
    cells = run_cells(
        [
            SETUP,
            """
            import asyncio

            @job
            def add(a: int, b: int) -> int:
                return a + b

            @workflow
            def pipe(n: int) -> int:
                return add(add(n, 1), 2)
            """,
            """
            loop_running = asyncio.get_event_loop().is_running()
            value = pipe(3)
            print(json.dumps([type(value).__name__, value, loop_running]))
            """,
            # The same from inside a coroutine, as in an async cell.
            """
            async def inside():
                return pipe(10), asyncio.get_running_loop().is_running()

            result, running = await inside()
            print(json.dumps([type(result).__name__, result, running]))
            """,
        ],
        tmp_path,
    )
    assert last_json(cells[2]) == ["int", 6, True]
    assert last_json(cells[3]) == ["int", 13, True]


def test_edited_job_cell_reruns_it_and_dependents(tmp_path):
    cells = run_cells(
        [
            SETUP,
            """
            @job
            def source(n: int) -> list:
                return list(range(n))

            @job
            def double(xs: list) -> list:
                return [2 * x for x in xs]

            @job
            def total(xs: list) -> int:
                return sum(xs)

            @job
            def count(xs: list) -> int:
                return len(xs)

            @workflow
            def pipe(n: int = 4) -> dict:
                xs = source(n)
                return {"total": total(double(xs)), "count": count(xs)}
            """,
            """
            first = pipe.run()
            print(json.dumps([first.result(), first.counts()]))
            """,
            # The cell defining double, edited and executed again.
            """
            @job
            def double(xs: list) -> list:
                return [3 * x for x in xs]
            """,
            """
            second = pipe.run()
            ran = sorted(t.job for t in second.tasks if t.status == "done")
            print(json.dumps([second.result(), second.counts(), ran]))
            """,
        ],
        tmp_path,
    )
    assert last_json(cells[2]) == [{"total": 12, "count": 4}, {"done": 4}]
    result, counts, ran = last_json(cells[4])
    assert result == {"total": 18, "count": 4}
    assert counts == {"cached": 2, "done": 2}
    assert ran == ["double", "total"]


def test_cell_dataclass_on_process_executor(tmp_path):
    cells = run_cells(
        [
            SETUP,
            """
            import dataclasses
            import os

            @dataclasses.dataclass
            class Metrics:
                name: str
                score: float
                pid: int

            @job
            def measure(name: str) -> Metrics:
                return Metrics(name, 0.5, os.getpid())

            @workflow
            def pipe() -> list:
                return [measure("a"), measure("b")]
            """,
            """
            values = pipe(executor="processes")
            print(json.dumps([
                [dataclasses.asdict(v) for v in values],
                all(isinstance(v, Metrics) for v in values),
                any(v.pid == os.getpid() for v in values),
            ]))
            """,
        ],
        tmp_path,
    )
    dicts, same_class, in_kernel = last_json(cells[2])
    assert [(d["name"], d["score"]) for d in dicts] == [("a", 0.5), ("b", 0.5)]
    assert same_class is True
    assert in_kernel is False  # computed in worker processes


def test_cell_dataclass_result_is_cached(tmp_path):
    cells = run_cells(
        [
            SETUP,
            """
            import dataclasses

            @dataclasses.dataclass
            class Metrics:
                name: str
                score: float

            @job
            def measure(name: str) -> Metrics:
                return Metrics(name, 0.5)

            @workflow
            def pipe() -> list:
                return [measure("a"), measure("b")]
            """,
            """
            first = pipe.run(executor="processes")
            second = pipe.run(executor="processes")
            values = [dataclasses.asdict(v) for v in second.result()]
            print(json.dumps([first.counts(), second.counts(), values]))
            """,
        ],
        tmp_path,
    )
    first, second, values = last_json(cells[2])
    assert first == {"done": 2}
    assert values == [{"name": "a", "score": 0.5}, {"name": "b", "score": 0.5}]
    assert second == {"cached": 2}


def test_changed_retries_option_takes_effect(tmp_path):
    cells = run_cells(
        [
            SETUP,
            """
            import os, tempfile
            counter = os.path.join(tempfile.mkdtemp(), "attempts")

            def attempt() -> int:
                count = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
                with open(counter, "w") as handle:
                    handle.write(str(count))
                return count
            """,
            """
            @job(retries=1)
            def flaky() -> str:
                if attempt() < 3:
                    raise ConnectionError("not yet")
                return "ok"

            @workflow
            def pipe() -> str:
                return flaky()
            """,
            """
            try:
                outcome = pipe()
            except ConnectionError as error:
                outcome = f"failed: {error}"
            print(json.dumps([outcome, int(open(counter).read())]))
            """,
            # The decorator cell, edited to retries=3, executed again.
            """
            os.remove(counter)

            @job(retries=3)
            def flaky() -> str:
                if attempt() < 3:
                    raise ConnectionError("not yet")
                return "ok"
            """,
            """
            run = pipe.run()
            print(json.dumps([run.result(), int(open(counter).read()), len(run.tasks[0].attempts)]))
            """,
        ],
        tmp_path,
    )
    assert last_json(cells[3]) == ["failed: not yet", 2]
    outcome, attempts, recorded = last_json(cells[5])
    assert outcome == "ok"
    assert attempts == 3
    assert recorded == 3
