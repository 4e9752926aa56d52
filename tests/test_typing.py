"""Static types: jobs keep their signatures for type checkers.

A ParamSpec keeps each parameter's declared type, so a type checker flags a
future passed where the function declares a plain type; the docs say so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

SAMPLE = textwrap.dedent(
    """
    from typing_extensions import assert_type
    from pipedsl import Future, Run, job, workflow

    @job
    def load(n: int) -> list[int]:
        return list(range(n))

    @job(retries=2)
    def scale(xs: list[int], factor: float = 2.0) -> list[float]:
        return [x * factor for x in xs]

    @workflow
    def pipeline(n: int = 10) -> dict[str, int]:
        return {"n": n}

    assert_type(load(3), Future[list[int]])
    assert_type(scale([1, 2]), Future[list[float]])
    assert_type(load.fn(3), list[int])
    assert_type(pipeline(5), dict[str, int])
    assert_type(pipeline.run(5), Run[dict[str, int]])
    load("three")  # line 22: the only expected error
    """
)


@pytest.mark.slow
def test_mypy_sees_job_signatures(tmp_path):
    pytest.importorskip("mypy")
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), str(sample)],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, done.stdout
    assert "sample.py:22:" in errors[0]
    assert '"str"; expected "int"' in errors[0]


def test_py_typed_marker_ships():
    import pipedsl

    assert os.path.exists(os.path.join(os.path.dirname(pipedsl.__file__), "py.typed"))
