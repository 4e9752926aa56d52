"""Cache keys: code versions, value fingerprints, explanations."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipedsl
from pipedsl import fingerprint, job, register_fingerprint, workflow
from pipedsl.codeversion import code_version

from conftest import ROOT

DRIVER = textwrap.dedent(
    """
    import json, sys, warnings
    sys.path.insert(0, sys.argv[1])
    import pipeline_module
    run = pipeline_module.pipeline.run(store=sys.argv[2], progress=False)
    print(json.dumps({
        "result": run.result(),
        "counts": run.counts(),
        "keys": sorted(t.key for t in run.tasks),
        "ran": sorted(t.job for t in run.tasks if t.status == "done"),
        "explain": run.explain(),
    }))
    """
)


def run_module(tmp_path, source: str, seed: str = "0") -> dict:
    """Write ``source`` as a module and run its ``pipeline`` in a fresh process."""
    folder = tmp_path / "project"
    folder.mkdir(exist_ok=True)
    (folder / "pipeline_module.py").write_text(textwrap.dedent(source))
    for cached in folder.glob("__pycache__"):
        for item in cached.iterdir():
            item.unlink()
    env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(folder), str(tmp_path / "store")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_body_edit_changes_result(tmp_path):
    source = """
    from pipedsl import job, workflow

    @job
    def value() -> int:
        return 2

    @workflow
    def pipeline() -> int:
        return value()
    """
    assert run_module(tmp_path, source)["result"] == 2
    assert run_module(tmp_path, source)["counts"] == {"cached": 1}
    edited = run_module(tmp_path, source.replace("return 2", "return 3"))
    assert edited["result"] == 3
    assert edited["counts"] == {"done": 1}
    assert "the job's source changed" in edited["explain"][0]


def test_blank_lines_comments_and_moves_keep_key(tmp_path):
    source = """
    from pipedsl import job, workflow

    @job
    def value() -> int:
        '''Two.'''
        return 2

    @workflow
    def pipeline() -> int:
        return value()
    """
    first = run_module(tmp_path, source)
    moved = """
    # a comment above everything


    from pipedsl import job, workflow

    @workflow
    def pipeline() -> int:
        return value()

    # the job now sits below the workflow, with a comment inside
    @job
    def value() -> int:
        '''Two, documented differently.'''
        # a comment in the body
        return 2
    """
    second = run_module(tmp_path, moved)
    assert second["counts"] == {"cached": 1}
    assert second["keys"] == first["keys"]


def test_helper_edit_reruns_job(tmp_path):
    source = """
    from pipedsl import job, workflow

    def rounded(x):
        return round(x, 1)

    @job
    def measure() -> float:
        return rounded(3.14159)

    @workflow
    def pipeline() -> float:
        return measure()
    """
    assert run_module(tmp_path, source)["result"] == 3.1
    edited = run_module(tmp_path, source.replace("round(x, 1)", "round(x, 3)"))
    assert edited["result"] == 3.142
    assert any("helper pipeline_module.rounded changed" in e for e in edited["explain"])


def test_helper_in_other_module_tracked(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "helpers.py").write_text("def scale(x):\n    return x * 2\n")
    source = """
    import helpers
    from pipedsl import job, workflow

    @job
    def compute() -> int:
        return helpers.scale(5)

    @workflow
    def pipeline() -> int:
        return compute()
    """
    assert run_module(tmp_path, source)["result"] == 10
    (folder / "helpers.py").write_text("def scale(x):\n    return x * 3\n")
    assert run_module(tmp_path, source)["result"] == 15


def test_global_constant_edit_reruns(tmp_path):
    source = """
    from pipedsl import job, workflow

    UNIT = "km"

    @job
    def describe(distance: float) -> str:
        return f"{distance} {UNIT}"

    @workflow
    def pipeline() -> str:
        return describe(4.0)
    """
    assert run_module(tmp_path, source)["result"] == "4.0 km"
    edited = run_module(tmp_path, source.replace('UNIT = "km"', 'UNIT = "mi"'))
    assert edited["result"] == "4.0 mi"
    assert "global UNIT changed" in edited["explain"][0]


def test_default_argument_edit_reruns(tmp_path):
    source = """
    from pipedsl import job, workflow

    @job
    def scaled(x: int, scale: int = 2) -> int:
        return x * scale

    @workflow
    def pipeline() -> list:
        return [scaled(5), scaled(5, scale=10)]
    """
    assert run_module(tmp_path, source)["result"] == [10, 50]
    edited = run_module(tmp_path, source.replace("scale: int = 2", "scale: int = 3"))
    assert edited["result"] == [15, 50]


def test_job_called_inside_job_tracked(tmp_path):
    source = """
    from pipedsl import job, workflow

    @job
    def inner(x: int) -> int:
        return x + 1

    @job
    def outer(x: int) -> int:
        return inner.fn(x) * 10

    @workflow
    def pipeline() -> int:
        return outer(1)
    """
    assert run_module(tmp_path, source)["result"] == 20
    assert run_module(tmp_path, source.replace("x + 1", "x + 2"))["result"] == 30


def test_upstream_change_reruns_dependents_only(tmp_path):
    source = """
    from pipedsl import job, workflow

    @job
    def load() -> int:
        return 1

    @job
    def other() -> int:
        return 100

    @job
    def train(x: int) -> int:
        return x * 2

    @workflow
    def pipeline() -> list:
        return [train(load()), other()]
    """
    run_module(tmp_path, source)
    edited = run_module(tmp_path, source.replace("return 1\n", "return 5\n"))
    assert edited["result"] == [10, 100]
    assert edited["ran"] == ["load", "train"]
    assert edited["counts"] == {"done": 2, "cached": 1}
    assert any("upstream task load" in line for line in edited["explain"])


def test_frozenset_and_dict_hit_across_hash_seeds(tmp_path):
    source = """
    from pipedsl import job, workflow

    @job
    def combine(tags: frozenset, weights: dict) -> list:
        return sorted(tags) + sorted(weights)

    @workflow
    def pipeline() -> list:
        return combine(frozenset({"a", "b", "c", "d"}), {"x": 1, "y": 2, "z": 3})
    """
    first = run_module(tmp_path, source, seed="1")
    second = run_module(tmp_path, source, seed="4242")
    assert first["counts"] == {"done": 1}
    assert second["counts"] == {"cached": 1}
    assert first["keys"] == second["keys"]


def test_pinned_version_ignores_source(tmp_path):
    source = """
    from pipedsl import job, workflow

    @job(version="1")
    def value() -> int:
        return 2

    @workflow
    def pipeline() -> int:
        return value()
    """
    run_module(tmp_path, source)
    edited = run_module(tmp_path, source.replace("return 2", "return 3"))
    assert edited["result"] == 2
    assert edited["counts"] == {"cached": 1}
    bumped = run_module(tmp_path, source.replace('version="1"', 'version="2"'))
    assert bumped["result"] == 2


def test_closure_values_distinguish_factory_jobs():
    def make(offset: int):
        @job(name="shift")
        def shift(x: int) -> int:
            return x + offset

        return shift

    ten, twenty = make(10), make(20)

    @workflow
    def pipeline() -> tuple:
        return (ten(1), twenty(1))

    assert pipeline() == (11, 21)
    assert code_version(ten.fn).digest != code_version(twenty.fn).digest


def test_frozen_dataclass_hidden_field_counts():
    @dataclasses.dataclass(frozen=True)
    class Config:
        rate: float
        secret_seed: int = dataclasses.field(repr=False, compare=False)

    @job
    def use(config: Config) -> int:
        return config.secret_seed

    @workflow
    def pipeline(config: Config) -> int:
        return use(config)

    assert pipeline(Config(0.1, 1)) == 1
    assert pipeline(Config(0.1, 2)) == 2


def test_numpy_layouts_give_distinct_fingerprints():
    base = np.arange(6, dtype="int32")
    keys = {fingerprint(base), fingerprint(base.reshape(2, 3)), fingerprint(base.view("int16"))}
    assert len(keys) == 3
    assert fingerprint(base[::2]) == fingerprint(np.array([0, 2, 4], dtype="int32"))


def test_dataframe_column_names_count():
    first = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    second = pd.DataFrame({"x": [1, 2], "y": [3, 4]})
    assert fingerprint(first) != fingerprint(second)
    assert fingerprint(first) == fingerprint(first.copy())
    third = first.astype("int32")
    assert fingerprint(first) != fingerprint(third)
    reindexed = first.set_axis([10, 11])
    assert fingerprint(first) != fingerprint(reindexed)


def test_type_tags_give_five_keys():
    @job
    def echo(value: object) -> str:
        return repr(value)

    keys = {echo(v).key for v in (1, "1", 1.0, b"1", True)}
    assert len(keys) == 5


def test_pinned_digests():
    # Changing these values means every stored cache key changes: do it only
    # on purpose, with a note for users.
    assert fingerprint(1) == "7111b2dd83f527f989110967c64d0d77"
    assert fingerprint("hello") == "7ec8cad6a2c8efbe49983769eda1014a"
    assert fingerprint([1, 2.5, None]) == "21f7a01d38faa8e302298bb6450ada6b"
    assert fingerprint({"b": 1, "a": (True, b"x")}) == "7eb9fd64de9244ec687096be26742bb7"
    assert fingerprint(frozenset({3, 1, 2})) == "9a1a5d6a95cbcdb16d764297c449cc03"
    assert fingerprint(np.arange(4, dtype="float64")) == "295228aa2182e9ad4e91f1adca0446dd"


def test_unfingerprintable_argument_not_cached_with_warning():
    class Opaque:
        pass

    @job
    def consume(thing: object) -> int:
        return 1

    @workflow
    def pipeline(thing: object) -> int:
        return consume(thing)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert pipeline(Opaque()) == 1
    messages = [str(w.message) for w in caught]
    assert any("'thing'" in m and "consume" in m and "register_fingerprint" in m for m in messages)
    assert pipeline.run(Opaque()).counts() == {"done": 1}


def test_register_fingerprint_enables_cache():
    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

    register_fingerprint(Point, lambda p: (p.x, p.y))

    @job
    def norm(p: Point) -> int:
        return p.x * p.x + p.y * p.y

    @workflow
    def pipeline(p: Point) -> int:
        return norm(p)

    assert pipeline(Point(3, 4)) == 25
    assert pipeline.run(Point(3, 4)).counts() == {"cached": 1}
    assert pipeline.run(Point(4, 3)).counts() == {"done": 1}


def test_lookup_never_calls_eq_or_bool():
    class Strict:
        def __eq__(self, other):
            raise AssertionError("== called")

        def __bool__(self):
            raise AssertionError("bool called")

        __hash__ = object.__hash__

    register_fingerprint(Strict, lambda s: "strict")

    @job
    def take(value: object) -> int:
        return 1

    @workflow
    def pipeline() -> int:
        return take({"k": Strict(), "j": [Strict()]})

    assert pipeline() == 1
    assert pipeline() == 1


def test_reference_cycle_is_unfingerprintable():
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(pipedsl.Unfingerprintable, match="cycle"):
        fingerprint(cycle)


def test_plan_lists_cached_and_to_run():
    @job
    def step(x: int) -> int:
        return x

    @workflow
    def pipeline(n: int) -> list:
        return [step(i) for i in range(n)]

    pipeline(2)
    plan = pipeline.plan(3)
    assert len(plan.cached) == 2
    assert len(plan.to_run) == 1


def test_third_party_code_contributes_package_version():
    @job
    def mean(values: list) -> float:
        return float(np.mean(values))

    parts = mean.code_version().parts
    assert any(name.startswith("package numpy") for name in parts)
    assert f"numpy=={np.__version__}" in parts.values()


def test_lambda_without_source_warns_once():
    namespace: dict = {}
    exec("fn = lambda x: x + 1", namespace)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = code_version(namespace["fn"])
        code_version(namespace["fn"])
    assert len([w for w in caught if "cannot be read" in str(w.message)]) == 1
    exec("fn = lambda x: x + 2", namespace)
    assert code_version(namespace["fn"]).digest != first.digest


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=20), st.binary(max_size=20),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
        st.frozensets(st.integers(), max_size=4),
    ),
    max_leaves=12,
)


def _canonical(value):
    """A structure that is equal exactly when two values must share a key."""
    if isinstance(value, float):
        return ("float", value.hex() if value == value else "nan")
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, repr(_canonical(v))) for k, v in value.items())))
    if isinstance(value, frozenset):
        return ("frozenset", tuple(sorted(value)))
    return (type(value).__name__, value)


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_fingerprint_equal_iff_canonical_equal(first, second):
    same = _canonical(first) == _canonical(second)
    assert (fingerprint(first) == fingerprint(second)) == same


@settings(max_examples=100, deadline=None)
@given(values)
def test_fingerprint_stable_on_copy(value):
    import copy

    assert fingerprint(value) == fingerprint(copy.deepcopy(value))


CODE_EDITS = {
    "decorator argument": (
        {"deco.py": "import functools\ndef scale(k):\n    def wrap(fn):\n"
         "        @functools.wraps(fn)\n        def inner(*a):\n"
         "            return k * fn(*a)\n        return inner\n    return wrap\n"},
        "from deco import scale\n@job\n@scale(2)\ndef value() -> int:\n    return 1\n",
        ("@scale(2)", "@scale(3)"), 2, 3,
    ),
    "partial arguments": (
        {},
        "import functools\ndef mul(a, b):\n    return a * b\n"
        "half = functools.partial(mul, b=2)\n@job\ndef value() -> int:\n    return half(1)\n",
        ("b=2", "b=3"), 2, 3,
    ),
    "two lambdas on one line": (
        {},
        "first, second = (lambda: 1), (lambda: 10)\n"
        "@job\ndef value() -> int:\n    return first() + second()\n",
        ("(lambda: 10)", "(lambda: 20)"), 11, 21,
    ),
    "factory closures sharing a name": (
        {},
        "def make(k):\n    def inner():\n        return k\n    return inner\n"
        "two = make(2)\nthree = make(3)\n@job\ndef value() -> int:\n    return two() + three()\n",
        ("two = make(2)", "two = make(5)"), 5, 8,
    ),
    "base class method": (
        {"base.py": "class Base:\n    def k(self):\n        return 1\n"},
        "from base import Base\nclass Child(Base):\n    pass\n"
        "@job\ndef value() -> int:\n    return Child().k()\n",
        None, 1, 2,
    ),
    "bound method global": (
        {"model.py": "class Model:\n    def predict(self):\n        return 1\n"},
        "from model import Model\npredict = Model().predict\n"
        "@job\ndef value() -> int:\n    return predict()\n",
        None, 1, 2,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CODE_EDITS))
def test_code_edit_changes_key(tmp_path, case):
    files, body, edit, before, after = CODE_EDITS[case]
    folder = tmp_path / "project"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    source = "from pipedsl import job, workflow\n" + body + (
        "@workflow\ndef pipeline() -> int:\n    return value()\n"
    )
    assert run_module(tmp_path, source)["result"] == before
    if edit is None:
        # The edit is in the helper module: 1 becomes 2.
        for name, text in files.items():
            (folder / name).write_text(text.replace("return 1", "return 2"))
        edited = source
    else:
        edited = source.replace(*edit)
    second = run_module(tmp_path, edited)
    assert second["result"] == after
    assert second["counts"] == {"done": 1}


def test_values_that_once_collided_differ():
    import collections

    pairs = [
        (pd.Series([1, "a"], dtype=object), pd.Series(["1", "a"], dtype=object)),
        (pd.Series([None, 1.0], dtype=object), pd.Series([float("nan"), 1.0], dtype=object)),
        (np.ma.array([1, 2, 3], mask=[0, 1, 0]), np.ma.array([1, 2, 3], mask=[0, 0, 0])),
        (
            np.zeros(2, dtype=[("a", "<i8"), ("b", "<f8")]),
            np.zeros(2, dtype=[("x", "<i8"), ("y", "<f8")]),
        ),
        (
            pd.Series(pd.Categorical(["a", "b"], categories=["a", "b"], ordered=True)),
            pd.Series(pd.Categorical(["a", "b"], categories=["b", "a"], ordered=True)),
        ),
        (collections.Counter(a=1), {"a": 1}),
        (collections.namedtuple("P", "x y")(1, 2), collections.namedtuple("P", "a b")(1, 2)),
    ]
    for first, second in pairs:
        assert fingerprint(first) != fingerprint(second), (first, second)


def test_datetimes_and_huge_ints_fingerprint():
    frame = pd.DataFrame({"t": pd.to_datetime(["2020-01-01", "2021-01-01"])})
    assert fingerprint(frame) != fingerprint(frame.iloc[::-1].reset_index(drop=True))
    assert fingerprint(np.array(["2020-01-01"], dtype="M8[D]")) != fingerprint(
        np.array(["2020-01-02"], dtype="M8[D]")
    )
    assert fingerprint(10**5000) != fingerprint(10**5000 + 1)
    assert fingerprint(-(10**30)) != fingerprint(10**30)
