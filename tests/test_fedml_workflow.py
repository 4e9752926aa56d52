"""pipedsl.fedml.Workflow: FedML's class-based API on pipedsl's scheduler."""

from __future__ import annotations

import threading
import time

import pytest

import fedml_standin
from pipedsl import GraphError, RunCancelled, RunError, job, workflow
from pipedsl.fedml import Job, JobStatus, PollPolicy, Workflow, WorkflowFailed


class Record(Job):
    """Finishes after ``seconds``; records inputs, timings and status calls."""

    def __init__(self, name, seconds=0.0, output=None, fail=False):
        super().__init__(name)
        self.seconds = seconds
        self.output = output
        self.fail = fail
        self.runs = 0
        self.kills = 0
        self.status_calls = []
        self.started = None
        self.ended = None

    def run(self):
        self.runs += 1
        self.started = time.time()
        self.ended = None
        self.received = dict(self.input_data_dict)

    def status(self):
        now = time.time()
        self.status_calls.append(now)
        if self.kills:
            return JobStatus.FAILED
        if now - self.started < self.seconds:
            return JobStatus.RUNNING
        if self.ended is None:
            self.ended = now
        if self.fail:
            return JobStatus.FAILED
        self.output_data_dict = {"name": self.name, "value": self.output}
        return JobStatus.FINISHED

    def kill(self):
        self.kills += 1


class Flaky(Record):
    """Reports UNDETERMINED ``count`` times, then behaves like Record."""

    def __init__(self, name, count):
        super().__init__(name)
        self.count = count
        self.undetermined = 0

    def status(self):
        if self.undetermined < self.count:
            self.undetermined += 1
            return JobStatus.UNDETERMINED
        return super().status()


class Stuck(Record):
    def status(self):
        self.status_calls.append(time.time())
        return JobStatus.UNDETERMINED


def new_workflow(name="wf", **options):
    options.setdefault("store", "memory://fedml-wf-tests")
    options.setdefault("max_poll_interval", 0.2)
    return Workflow(name=name, **options)


# -- inputs and outputs -------------------------------------------------------------


def test_every_root_receives_workflow_input():
    first, second, merge = Record("first"), Record("second"), Record("merge")
    flow = new_workflow()
    flow.add_job(first)
    flow.add_job(second)
    flow.add_job(merge, dependencies=[first, second])
    flow.set_workflow_input({"lr": 0.1})
    flow.run()
    assert first.received == {"lr": 0.1}
    assert second.received == {"lr": 0.1}
    assert set(merge.received) == {"first", "second"}
    assert merge.received["first"] == {"name": "first", "value": None}


def test_workflow_output_single_and_several_leaves():
    root = Record("root", output=1)
    left, right = Record("left", output=2), Record("right", output=3)
    flow = new_workflow()
    flow.add_job(root)
    flow.add_job(left, dependencies=[root])
    flow.run()
    assert flow.get_workflow_output() == {"name": "left", "value": 2}

    flow = new_workflow()
    for item in (root, left, right):
        flow.add_job(item, dependencies=[] if item is root else [root])
    flow.run()
    assert flow.get_workflow_output() == {
        "left": {"name": "left", "value": 2},
        "right": {"name": "right", "value": 3},
    }
    assert set(flow.get_all_jobs_outputs()) == {"root", "left", "right"}
    assert left.get_outputs() == {"name": "left", "value": 2}


def test_output_before_run_raises():
    flow = new_workflow()
    flow.add_job(Record("only"))
    assert flow.get_workflow_status() is JobStatus.UNDETERMINED
    assert flow.get_job_status("only") is JobStatus.UNDETERMINED
    with pytest.raises(RunError, match="has not run yet"):
        flow.get_workflow_output()


def test_non_dict_outputs_rejected():
    class Bad(Record):
        def get_outputs(self):
            return [1, 2]

    flow = new_workflow()
    flow.add_job(Bad("bad"))
    with pytest.raises(WorkflowFailed, match="'bad'") as info:
        flow.run()
    assert "return a dict" in str(info.value)


def test_invalid_status_value_names_job():
    class Wrong(Record):
        def status(self):
            return "done"

    flow = new_workflow()
    flow.add_job(Wrong("wrong"))
    with pytest.raises(WorkflowFailed) as info:
        flow.run()
    assert "'wrong'" in str(info.value)
    assert "'done'" in str(info.value)
    assert "JobStatus.FINISHED" in str(info.value)


# -- statuses and polling -------------------------------------------------------------


def test_transient_undetermined_is_tolerated():
    flaky = Flaky("flaky", count=2)
    flow = new_workflow(undetermined_timeout=5)
    flow.add_job(flaky)
    flow.run()
    assert flaky.undetermined == 2
    assert flow.get_workflow_status() is JobStatus.FINISHED
    assert flow.get_job_status("flaky") is JobStatus.FINISHED


def test_persistent_undetermined_fails_after_timeout():
    stuck = Stuck("stuck")
    flow = new_workflow(undetermined_timeout=0.3, poll_interval=0.02, max_poll_interval=0.05)
    flow.add_job(stuck)
    started = time.monotonic()
    with pytest.raises(WorkflowFailed, match="UNDETERMINED for more than 0.3s"):
        flow.run()
    assert 0.3 <= time.monotonic() - started < 3
    assert flow.get_job_status("stuck") is JobStatus.FAILED


def test_polling_backs_off_to_cap():
    slow = Record("slow", seconds=1.2)
    flow = new_workflow(poll_interval=0.05, max_poll_interval=0.4)
    flow.add_job(slow)
    flow.run()
    gaps = [b - a for a, b in zip(slow.status_calls, slow.status_calls[1:])]
    # 0.05, 0.1, 0.2, 0.4, 0.4...: about 6 calls where a fixed 0.05 s sleep makes 24.
    assert 4 <= len(slow.status_calls) <= 9
    assert gaps[1] > gaps[0] * 1.5
    assert max(gaps) < 0.4 + 0.15


def test_poll_policy_rejects_bad_values():
    with pytest.raises(ValueError, match="max_interval"):
        PollPolicy(interval=1.0, max_interval=0.5)
    with pytest.raises(ValueError, match="undetermined_timeout"):
        PollPolicy(undetermined_timeout=-1)


# -- graph errors -------------------------------------------------------------------


def test_dependency_never_added_names_it():
    a, b = Record("a"), Record("b")
    flow = new_workflow()
    flow.add_job(b, dependencies=[a])
    with pytest.raises(GraphError, match=r"job 'b' depends on job 'a', which was never added"):
        flow.run()


def test_duplicate_name_rejected():
    flow = new_workflow()
    flow.add_job(Record("same"))
    with pytest.raises(GraphError, match="already has a job named 'same'"):
        flow.add_job(Record("same"))


def test_cycle_reported_with_path():
    a, b, c = Record("a"), Record("b"), Record("c")
    flow = new_workflow()
    flow.add_job(a, dependencies=[c])
    flow.add_job(b, dependencies=[a])
    flow.add_job(c, dependencies=[b])
    with pytest.raises(GraphError, match=r"cycle: a -> c -> b -> a"):
        flow.run()
    assert a.runs == 0


def test_add_job_type_errors():
    flow = new_workflow()
    a = Record("a")
    with pytest.raises(TypeError, match="got builtins.str"):
        flow.add_job("a")
    with pytest.raises(TypeError, match=r"dependencies=\[other_job\]"):
        flow.add_job(Record("b"), dependencies=a)
    with pytest.raises(GraphError, match="cannot depend on itself"):
        flow.add_job(a, dependencies=[a])
    with pytest.raises(GraphError, match="not the one added"):
        flow.add_job(Record("a2"))
        flow.add_job(Record("c"), dependencies=[Record("a2")])
        flow.run()


# -- scheduling ----------------------------------------------------------------------


@pytest.mark.slow
def test_branch_starts_without_waiting_for_level():
    a = Record("A")
    b, c = Record("B", seconds=2.0), Record("C", seconds=0.2)
    d, e = Record("D"), Record("E")
    flow = new_workflow(poll_interval=0.02, max_poll_interval=0.05)
    flow.add_job(a)
    flow.add_job(b, dependencies=[a])
    flow.add_job(c, dependencies=[a])
    flow.add_job(d, dependencies=[b])
    flow.add_job(e, dependencies=[c])
    flow.run()
    assert e.started - c.ended < 0.5
    assert e.started < b.ended - 1.0
    assert d.started >= b.ended
    timings = flow.job_timings()
    assert timings["E"][0] < timings["B"][1]


def test_failure_kills_running_jobs():
    all_started = threading.Barrier(3, timeout=5)

    class Failing(Record):
        def run(self):
            super().run()
            all_started.wait()

    class Slow(Record):
        def run(self):
            super().run()
            all_started.wait()

    slow = Slow("slow", seconds=30)
    bad, also_bad = Failing("bad", fail=True), Failing("also_bad", fail=True)
    after = Record("after")
    flow = new_workflow(poll_interval=0.02, max_poll_interval=0.05)
    flow.add_job(slow)
    flow.add_job(bad)
    flow.add_job(also_bad)
    flow.add_job(after, dependencies=[bad])
    started = time.monotonic()
    with pytest.raises(WorkflowFailed) as info:
        flow.run()
    assert time.monotonic() - started < 5
    error = info.value
    assert error.__cause__ is not None
    assert sorted(error.failed) == ["also_bad", "bad"]
    assert error.killed == ["slow"]
    assert error.not_started == ["after"]
    assert "job 'bad'" in str(error)
    assert "job 'also_bad'" in str(error)
    assert slow.kills == 1
    assert bad.kills == 0
    assert after.runs == 0
    assert flow.get_workflow_status() is JobStatus.FAILED
    assert flow.get_job_status("slow") is JobStatus.FAILED


def test_workflow_runs_twice():
    first, second = Record("first"), Record("second")
    flow = new_workflow()
    flow.add_job(first)
    flow.add_job(second, dependencies=[first])
    flow.set_workflow_input({"round": 1})
    run_one = flow.run()
    flow.set_workflow_input({"round": 2})
    run_two = flow.run()
    assert run_one.run_id != run_two.run_id
    assert run_one.status == "done"
    assert run_two.status == "done"
    assert first.runs == 2
    assert second.runs == 2
    assert first.received == {"round": 2}
    assert flow.metadata is not None


def test_metadata_levels():
    a, b, c = Record("a"), Record("b"), Record("c")
    flow = new_workflow()
    flow.add_job(c, dependencies=[a, b])
    flow.add_job(a)
    flow.add_job(b, dependencies=[a])
    flow.run()
    levels = [sorted(node.name for node in level) for level in flow.metadata.topological_order]
    assert levels == [["a"], ["b"], ["c"]]
    by_name = {node.name: node for node in flow.metadata.nodes}
    assert {n.name for n in flow.metadata.graph[by_name["c"]]} == {"a", "b"}


def test_kill_stops_running_jobs():
    slow = Record("slow", seconds=30)
    flow = new_workflow(poll_interval=0.02, max_poll_interval=0.05)
    flow.add_job(slow)
    errors = []

    def target():
        try:
            flow.run()
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.time() + 5
    while slow.started is None and time.time() < deadline:
        time.sleep(0.02)
    flow.kill()
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], RunCancelled)
    deadline = time.time() + 2
    while slow.kills == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert slow.kills == 1


# -- loop mode -------------------------------------------------------------------------


def test_loop_max_iterations_and_interval():
    counter = Record("counter")
    flow = new_workflow(loop=True, max_iterations=3, interval=0.1)
    flow.add_job(counter)
    started = time.monotonic()
    flow.run()
    assert counter.runs == 3
    assert flow.iterations == 3
    assert time.monotonic() - started >= 0.2


def test_loop_until_predicate():
    class Count(Record):
        def status(self):
            result = super().status()
            if result is JobStatus.FINISHED:
                self.output_data_dict = {"runs": self.runs}
            return result

    counter = Count("counter")
    flow = new_workflow(loop=True, until=lambda output: output["runs"] >= 4)
    flow.add_job(counter)
    flow.run()
    assert counter.runs == 4
    assert flow.get_workflow_output() == {"runs": 4}


def test_loop_options_validated():
    with pytest.raises(ValueError, match="max_iterations"):
        Workflow("wf", loop=True, max_iterations=0)
    with pytest.raises(TypeError, match="until must be a function"):
        Workflow("wf", loop=True, until=5)


# -- caching ---------------------------------------------------------------------------


class Deterministic(Record):
    deterministic = True
    cache_attributes = ("scale",)

    def __init__(self, name, scale=1):
        super().__init__(name)
        self.scale = scale

    def status(self):
        self.output_data_dict = {"y": self.input_data_dict["x"] * self.scale}
        return JobStatus.FINISHED


def test_deterministic_job_cached_by_state_and_input(tmp_path):
    store = str(tmp_path / "cache-store")
    scaler = Deterministic("scale", scale=2)
    flow = new_workflow(store=store)
    flow.add_job(scaler)
    flow.set_workflow_input({"x": 3})
    flow.run()
    flow.run()
    assert scaler.runs == 1
    assert flow.get_workflow_output() == {"y": 6}

    flow.set_workflow_input({"x": 4})
    flow.run()
    assert scaler.runs == 2
    assert flow.get_workflow_output() == {"y": 8}

    scaler.scale = 3
    flow.run()
    assert scaler.runs == 3
    assert flow.get_workflow_output() == {"y": 12}


def test_nondeterministic_job_runs_every_time(tmp_path):
    plain = Record("plain")
    flow = new_workflow(store=str(tmp_path / "store"))
    flow.add_job(plain)
    flow.run()
    flow.run()
    assert plain.runs == 2


def test_missing_cache_attribute_named():
    class Broken(Deterministic):
        cache_attributes = ("scale", "epochs")

    flow = new_workflow()
    flow.add_job(Broken("broken"))
    flow.set_workflow_input({"x": 1})
    with pytest.raises(AttributeError, match=r"job 'broken' lists \['epochs'\]"):
        flow.run()


# -- two front ends ----------------------------------------------------------------------


@job
def add_offset(first: dict, offset: int = 10) -> dict:
    return {"value": first["value"] + offset}


def test_function_job_in_class_workflow():
    first = Record("first", output=5)
    after = Record("after")
    flow = new_workflow()
    flow.add_job(first)
    flow.add_job(add_offset, dependencies=[first])
    flow.add_job(after, dependencies=[add_offset])
    flow.run()
    assert after.received == {"add_offset": {"value": 15}}
    assert flow.get_all_jobs_outputs()["add_offset"] == {"value": 15}


def test_function_job_root_gets_workflow_input_as_keywords():
    @job
    def scale(x: int, factor: int) -> dict:
        return {"y": x * factor}

    flow = new_workflow()
    flow.add_job(scale)
    flow.set_workflow_input({"x": 4, "factor": 3})
    flow.run()
    assert flow.get_workflow_output() == {"y": 12}

    flow.set_workflow_input({"x": 4})
    with pytest.raises(GraphError, match=r"scale' cannot take \['x'\] from the workflow input"):
        flow.run()


def test_class_job_inside_pipedsl_workflow():
    first = Record("first", output=7)
    second = Record("second", output=8)

    @workflow
    def pipeline(n: int) -> dict:
        collected = first(n=n)
        return {"offset": add_offset(collected, offset=n), "second": second(first=collected)}

    result = pipeline(3, executor="threads", store="memory://fedml-front", progress=False)
    assert result == {"offset": {"value": 10}, "second": {"name": "second", "value": 8}}
    assert first.received == {"n": 3}
    assert second.received == {"first": {"name": "first", "value": 7}}


def test_no_fedml_api_called_by_run():
    api = fedml_standin.install()
    try:
        flow = new_workflow()
        flow.add_job(Record("a"))
        flow.run()
        assert api.calls == []
    finally:
        fedml_standin.uninstall()
