"""The FedML workflow example: class-based and @job versions agree on digits."""

from __future__ import annotations

import importlib.util
import os

import pytest

from pipedsl.fedml import JobStatus

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "fedml_workflow"
)


def load(name):
    spec = importlib.util.spec_from_file_location(f"fedml_example_{name}", f"{EXAMPLE}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_example_both_front_ends_agree(tmp_path):
    class_based = load("class_based")
    function_based = load("function_based")
    store = str(tmp_path / "store")

    flow = class_based.build_workflow(store)
    first = flow.run(progress=False)
    accuracy = flow.get_workflow_output()["accuracy"]
    assert accuracy > 0.85
    assert flow.get_workflow_status() is JobStatus.FINISHED
    assert first.counts() == {"done": 3}

    again = class_based.build_workflow(store).run(progress=False)
    assert again.counts() == {"cached": 2, "done": 1}

    run = function_based.ml_workflow.run(0.25, store=store, progress=False)
    assert run.result()["accuracy"] == pytest.approx(accuracy, abs=1e-4)


def test_example_imports_only_pipedsl_fedml():
    with open(f"{EXAMPLE}/class_based.py", encoding="utf-8") as handle:
        source = handle.read()
    assert "from pipedsl.fedml import Job, JobStatus, Workflow" in source
    assert "import fedml" not in source
