"""Serializers: choice by type, exact round trips, user serializers, failures."""

from __future__ import annotations

import threading

import pytest

from pipedsl import SerializationError, Serializer, job, register_serializer, workflow
from pipedsl.serializers import get_serializer
from pipedsl.store import ArtifactStore


def _roundtrip(store: ArtifactStore, value, key: str = "demo-1"):
    manifest = store.save("demo", key, value)
    return manifest["serializer"], store.load(store.read_manifest("demo", key))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"raw", "bytes"),
        (bytearray(b"raw"), "bytes"),
        ({"a": [1, 2.5, True, None]}, "json"),
        (2**80, "json"),
        ({1: "int key"}, "pickle"),
        (float("nan"), "pickle"),
        ([1, (2, 3)], "pickle"),
        ({"s": {1, 2}}, "pickle"),
    ],
)
def test_serializer_chosen_by_type(store, value, expected):
    name, loaded = _roundtrip(store, value)
    assert name == expected
    if value != value:  # nan
        assert loaded != loaded
    else:
        assert loaded == value
        assert type(loaded) is (bytes if expected == "bytes" else type(value))


def test_numpy_arrays(store):
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(6, dtype="int16").reshape(2, 3)
    name, loaded = _roundtrip(store, array)
    assert name == "npy"
    assert loaded.dtype == numpy.int16
    assert (loaded == array).all()
    objects = numpy.array([{"a": 1}, None], dtype=object)
    name, loaded = _roundtrip(store, objects, "demo-2")
    assert name == "pickle"
    assert loaded[0] == {"a": 1}


def test_parquet_data_frames(store):
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pandas.DataFrame({"x": [1, 2, 3], "y": ["a", "b", None]})
    name, loaded = _roundtrip(store, frame)
    assert name == "parquet"
    pandas.testing.assert_frame_equal(loaded, frame)
    numbered = pandas.DataFrame({0: [1.5], 1: [2.5]})
    name, loaded = _roundtrip(store, numbered, "demo-2")
    assert name == "pickle"
    pandas.testing.assert_frame_equal(loaded, numbered)


def test_torch_tensors_when_installed(store):
    torch = pytest.importorskip("torch")
    state = {"weight": torch.arange(4.0)}
    name, loaded = _roundtrip(store, state)
    assert name == "torch"
    assert torch.equal(loaded["weight"], state["weight"])


def test_cloudpickle_fallback(store):
    offset = 7
    name, loaded = _roundtrip(store, lambda x: x + offset)
    assert name == "cloudpickle"
    assert loaded(1) == 8


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class Point3(Point):
    pass


class PointSerializer(Serializer):
    name = "test-point-v1"

    def can_write(self, value):
        return isinstance(value, Point)

    def dumps(self, value, store):
        return f"{type(value).__name__},{value.x},{value.y}".encode()

    def loads(self, data, store):
        kind, x, y = data.decode().split(",")
        return {"Point": Point, "Point3": Point3}[kind](int(x), int(y))


def test_registered_serializer_used_for_subclasses(store):
    register_serializer(Point, PointSerializer())
    name, loaded = _roundtrip(store, Point3(1, 2))
    assert name == "test-point-v1"
    assert type(loaded) is Point3
    assert (loaded.x, loaded.y) == (1, 2)
    assert get_serializer("test-point-v1").name == "test-point-v1"


def test_register_serializer_rejects_bad_input():
    class Other(Serializer):
        name = "json"

        def can_write(self, value):
            return False

        def dumps(self, value, store):
            return b""

        def loads(self, data, store):
            return None

    with pytest.raises(ValueError, match="already used by JsonSerializer"):
        register_serializer(Point, Other())
    with pytest.raises(TypeError, match="Serializer instance"):
        register_serializer(Point, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a type"):
        register_serializer("Point", PointSerializer())  # type: ignore[arg-type]
    unnamed = PointSerializer()
    unnamed.name = ""
    with pytest.raises(ValueError, match="non-empty name"):
        register_serializer(Point, unnamed)


def test_serializer_returning_text_fails(store):
    class Note:
        pass

    class BrokenSerializer(Serializer):
        name = "test-broken-note"

        def can_write(self, value):
            return isinstance(value, Note)

        def dumps(self, value, store):
            return "not bytes"

        def loads(self, data, store):
            return Note()

    register_serializer(Note, BrokenSerializer())
    with pytest.raises(SerializationError, match="must return bytes"):
        store.save("demo", "demo-1", Note())
    assert store.read_manifest("demo", "demo-1") is None


def test_unknown_serializer_name_on_load(store):
    manifest = store.save("demo", "demo-1", [1])
    manifest["serializer"] = "from-the-future"
    with pytest.raises(SerializationError, match="register_serializer"):
        store.load(manifest)


def test_unwritable_output_fails_task_and_stores_nothing(tmp_path):
    store = ArtifactStore(str(tmp_path / "unwritable"))

    @job(name="make_lock")
    def make_lock(n: int) -> object:
        return {"lock": threading.Lock(), "n": n}

    @workflow
    def flow(n: int = 1) -> object:
        return make_lock(n)

    run = flow.run(1, store=store, executor="inline")
    assert run.status == "failed"
    with pytest.raises(SerializationError) as info:
        run.result()
    message = str(info.value)
    assert "'make_lock'" in message
    assert "builtins.dict" in message
    assert "register_serializer" in message
    assert list(store.iter_manifests()) == []
    assert list(store.iter_objects()) == []
