"""The artifact store on every backend: local folder, memory:// and S3 (moto).

One suite, parametrized over the three backends, so each operation the
scheduler and workers use behaves the same everywhere. Cross-process cases
run a second Python process against the same store (local and S3 only,
because memory:// lives in one process).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import xxhash

import pipedsl
from pipedsl import ArtifactMissing, Directory, File, job, workflow
from pipedsl.store import ArtifactStore

from conftest import ROOT, Calls


@pytest.fixture(params=["local", "memory", "s3"])
def any_store(request, tmp_path):
    """An empty store on each backend.

    Payloads always go to ``objects/`` here (``inline_limit=0``), because
    these tests damage payload objects; ``test_inline_*`` cover payloads kept
    inside manifests.
    """
    cache = str(tmp_path / "download-cache")
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "shared-store"), download_cache=cache, inline_limit=0)
    if request.param == "memory":
        return ArtifactStore(
            f"memory://store-{uuid.uuid4().hex}", download_cache=cache, inline_limit=0
        )
    url, options = request.getfixturevalue("s3_store_url")
    return ArtifactStore(url, options, download_cache=cache, inline_limit=0)


@pytest.fixture(params=["local", "memory", "s3"])
def inline_store(request, tmp_path):
    """An empty store on each backend, with small payloads inside manifests."""
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "inline-store"))
    if request.param == "memory":
        return ArtifactStore(f"memory://inline-{uuid.uuid4().hex}")
    url, options = request.getfixturevalue("s3_store_url")
    return ArtifactStore(url, options)


def test_inline_payload_round_trip(inline_store):
    manifest = inline_store.save("small", "small-" + "ab" * 16, {"a": [1, 2, 3]})
    assert "inline" in manifest
    assert list(inline_store.iter_objects()) == []
    stored = inline_store.read_manifest("small", manifest["key"])
    assert inline_store.load(stored) == {"a": [1, 2, 3]}
    big = inline_store.save("big", "big-" + "cd" * 16, b"x" * 5000)
    assert "inline" not in big
    assert inline_store.load(big) == b"x" * 5000


def test_inline_payload_corrupt_reruns(inline_store):
    calls = Calls()

    @job
    def produce(n: int) -> list:
        calls.append(n)
        return list(range(n))

    @job
    def consume(xs: list, factor: int) -> int:
        return sum(xs) * factor

    @workflow
    def pipeline(factor: int) -> int:
        return consume(produce(4), factor)

    assert pipeline.run(1, store=inline_store).result() == 6
    manifest = next(inline_store.iter_manifests(produce.name))
    manifest["inline"] = base64.b64encode(b"[9,9]").decode()
    path = inline_store.manifest_path(produce.name, manifest["key"])
    inline_store._write(path, json.dumps(manifest).encode())
    with pytest.warns(RuntimeWarning, match="unusable"):
        assert pipeline.run(2, store=inline_store).result() == 12
    assert len(calls) == 2


@pytest.fixture(params=["local", "s3"])
def shared_store(request, tmp_path):
    """(url, storage_options) of a store that several processes can open."""
    if request.param == "local":
        return str(tmp_path / "shared-store"), {}
    return request.getfixturevalue("s3_store_url")


def _object_names(store: ArtifactStore) -> list[str]:
    return sorted(entry["name"] for entry in store.iter_objects())


# -- values, manifests, integrity ------------------------------------------------


def test_roundtrip_records_serializer(any_store):
    numpy = pytest.importorskip("numpy")
    cases = {
        "bytes": b"\x00\x01raw",
        "json": {"a": [1, 2.5, None, "x"]},
        "npy": numpy.arange(12, dtype="float32").reshape(3, 4),
        "pickle": (1, {2, 3}),
    }
    for expected, value in cases.items():
        manifest = any_store.save("demo", f"demo-{expected}", value)
        assert manifest["serializer"] == expected
        loaded = any_store.load(any_store.read_manifest("demo", f"demo-{expected}"))
        if expected == "npy":
            assert loaded.dtype == value.dtype
            assert (loaded == value).all()
        else:
            assert loaded == value


def test_manifest_fields(any_store):
    before = time.time()
    manifest = any_store.save("train", "train-abc123", b"payload", {"run_id": "r1"})
    stored = any_store.read_manifest("train", "train-abc123")
    assert stored == manifest
    digest = xxhash.xxh3_128_hexdigest(b"payload")
    assert stored["object"] == digest
    assert stored["checksum"] == f"xxh3_128:{digest}"
    assert stored["size"] == len(b"payload")
    assert stored["serializer"] == "bytes"
    assert stored["producer"]["run_id"] == "r1"
    assert stored["producer"]["pid"] == os.getpid()
    assert stored["created"] >= before


def test_same_bytes_stored_once(any_store):
    any_store.save("first", "first-1", b"shared payload")
    any_store.save("second", "second-2", b"shared payload")
    any_store.save("third", "third-3", b"other payload")
    assert len(_object_names(any_store)) == 2


def test_object_without_manifest_is_no_entry(any_store):
    any_store.put_bytes(b"orphan payload")
    assert any_store.cached_keys("demo") == set()
    assert any_store.read_manifest("demo", "demo-1") is None


def test_missing_payload_raises_artifact_missing(any_store):
    manifest = any_store.save("demo", "demo-1", b"will vanish")
    any_store.remove_object(manifest["object"])
    with pytest.raises(ArtifactMissing, match="not found") as info:
        any_store.load(manifest)
    assert info.value.key == "demo-1"


def test_corrupt_payload_raises_artifact_missing(any_store):
    manifest = any_store.save("demo", "demo-1", b"original bytes")
    path = any_store.object_path(manifest["object"])
    any_store.fs.pipe_file(path, b"tampered bytes")  # same size, other content
    with pytest.raises(ArtifactMissing, match="checksum"):
        any_store.load(manifest)
    any_store.fs.pipe_file(path, b"short")
    with pytest.raises(ArtifactMissing, match="5 bytes"):
        any_store.load(manifest)


def test_existing_manifest_kept_on_second_save(any_store):
    first = any_store.save("demo", "demo-1", [1])
    second = any_store.save("demo", "demo-1", [2])
    assert second == first
    assert any_store.load(any_store.read_manifest("demo", "demo-1")) == [1]


def test_delete_and_list_entries(any_store):
    for index in range(3):
        any_store.save("job a", f"job a-{index:04x}", index)
    any_store.save("other", "other-ffff", "x")
    assert any_store.cached_keys("job a") == {"0000", "0001", "0002"}
    assert any_store.delete_entry("job a", "job a-0001") is True
    assert any_store.delete_entry("job a", "job a-0001") is False
    assert any_store.cached_keys("job a") == {"0000", "0002"}
    keys = sorted(m["key"] for m in any_store.iter_manifests())
    assert keys == ["job a-0000", "job a-0002", "other-ffff"]


def test_run_records_and_kill(any_store):
    assert any_store.list_runs() == []
    any_store.write_record("20260101-000000-aaaaaa", {"status": "running"})
    any_store.write_record("20260101-000001-bbbbbb", {"status": "done"})
    any_store.write_record("20260101-000000-aaaaaa", {"status": "done"})
    assert any_store.list_runs() == ["20260101-000000-aaaaaa", "20260101-000001-bbbbbb"]
    assert any_store.read_record("20260101-000000-aaaaaa") == {"status": "done"}
    assert any_store.read_record("missing") is None
    assert not any_store.kill_requested("20260101-000001-bbbbbb")
    any_store.request_kill("20260101-000001-bbbbbb")
    assert any_store.kill_requested("20260101-000001-bbbbbb")


def test_store_pickles_with_options(any_store):
    any_store.save("demo", "demo-1", {"x": 1})
    clone = pickle.loads(pickle.dumps(any_store))
    assert clone.url == any_store.url
    assert clone.storage_options == any_store.storage_options
    assert clone.load(clone.read_manifest("demo", "demo-1")) == {"x": 1}


def test_file_and_directory_roundtrip(any_store, tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 * 2**20))
    folder = tmp_path / "shard"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "nested" / "b.txt").write_text("beta")
    value = {"model": File(source), "shard": Directory(folder)}
    manifest = any_store.save("train", "train-1", value)
    assert len(manifest["files"]) == 3
    assert len(manifest["directories"]) == 1

    loaded = any_store.load(any_store.read_manifest("train", "train-1"))
    assert loaded["model"].size == 3 * 2**20
    with open(loaded["model"].path, "rb") as handle:
        assert handle.read() == source.read_bytes()
    assert sorted(loaded["shard"].files()) == ["a.txt", "nested/b.txt"]
    shard = loaded["shard"].path
    assert open(os.path.join(shard, "nested", "b.txt")).read() == "beta"
    if not any_store.is_local:
        assert loaded["model"].path.startswith(any_store.download_cache)


def test_missing_file_object_fails_load(any_store, tmp_path):
    source = tmp_path / "data.csv"
    source.write_text("a,b\n1,2\n")
    manifest = any_store.save("prep", "prep-1", File(source))
    any_store.remove_object(manifest["files"][0])
    with pytest.raises(ArtifactMissing, match="file object"):
        any_store.load(manifest)


def test_invalid_url_rejected():
    with pytest.raises(pipedsl.StoreError, match="invalid artifact store URL"):
        ArtifactStore("")
    with pytest.raises(ValueError, match="download_cache_size"):
        ArtifactStore("memory://x", download_cache_size=-1)


# -- through the scheduler -------------------------------------------------------


def _counting_workflow(marker_dir: str):
    """A two-step workflow whose jobs record each execution as a file."""

    @job(name="produce")
    def produce(n: int) -> bytes:
        with open(os.path.join(marker_dir, f"produce-{uuid.uuid4().hex}"), "w"):
            pass
        return bytes(range(256)) * n

    @job(name="consume")
    def consume(data: bytes, factor: int) -> int:
        with open(os.path.join(marker_dir, f"consume-{uuid.uuid4().hex}"), "w"):
            pass
        return len(data) * factor

    @workflow
    def pipeline(n: int = 4, factor: int = 1) -> int:
        return consume(produce(n), factor)

    return pipeline


def _executions(marker_dir, prefix: str) -> int:
    return sum(1 for name in os.listdir(marker_dir) if name.startswith(prefix))


def test_workflow_hits_on_every_backend(any_store, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    pipeline = _counting_workflow(str(markers))
    assert pipeline.run(8, store=any_store).result() == 2048
    again = pipeline.run(8, store=any_store)
    assert again.result() == 2048
    assert again.counts() == {"cached": 2}
    assert _executions(markers, "produce") == 1


@pytest.mark.parametrize("what", ["missing", "corrupt"])
def test_broken_intermediate_payload_reruns(any_store, tmp_path, what):
    markers = tmp_path / "markers"
    markers.mkdir()
    pipeline = _counting_workflow(str(markers))
    assert pipeline.run(4, 1, store=any_store, executor="inline").result() == 1024
    manifest = next(any_store.iter_manifests("produce"))
    if what == "missing":
        any_store.remove_object(manifest["object"])
    else:
        path = any_store.object_path(manifest["object"])
        any_store.fs.pipe_file(path, b"\xff" * manifest["size"])

    # consume re-runs (new factor) and needs produce's payload.
    with pytest.warns(RuntimeWarning, match="unusable"):
        result = pipeline.run(4, 2, store=any_store, executor="inline").result()
    assert result == 2048
    assert _executions(markers, "produce") == 2
    fresh = any_store.read_manifest("produce", manifest["key"])
    assert len(any_store.load(fresh)) == 1024


def test_deleted_output_payload_recomputes(any_store, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    pipeline = _counting_workflow(str(markers))
    assert pipeline.run(2, store=any_store).result() == 512
    manifest = next(any_store.iter_manifests("consume"))
    any_store.remove_object(manifest["object"])
    with pytest.warns(RuntimeWarning, match="not found"):
        assert pipeline.run(2, store=any_store).result() == 512
    assert _executions(markers, "consume") == 2
    assert _executions(markers, "produce") == 1


def test_payload_deleted_by_hand_local(tmp_path):
    """A user deletes objects/ files on disk and keeps tasks/: the run recovers."""
    markers = tmp_path / "markers"
    markers.mkdir()
    pipeline = _counting_workflow(str(markers))
    store_dir = tmp_path / "by-hand"
    assert pipeline.run(3, store=ArtifactStore(str(store_dir), inline_limit=0)).result() == 768
    for folder, _, names in os.walk(store_dir / "objects"):
        for name in names:
            os.unlink(os.path.join(folder, name))
    with pytest.warns(RuntimeWarning, match="running it again"):
        assert pipeline.run(3, store=str(store_dir)).result() == 768
    assert _executions(markers, "consume") == 2


def test_concurrent_threads_run_slow_task_once(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()

    @job
    def slow(x: int) -> int:
        with open(os.path.join(markers, f"slow-{uuid.uuid4().hex}"), "w"):
            pass
        time.sleep(1.0)
        return x * 10

    @workflow
    def pipeline(x: int = 1) -> int:
        return slow(x)

    barrier = threading.Barrier(2)
    results: list[int] = []

    def run() -> None:
        barrier.wait()
        results.append(pipeline.run(7, executor="threads").result())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [70, 70]
    assert _executions(markers, "slow") == 1


# -- across processes ------------------------------------------------------------

_HELPER = '''
from pipedsl import job, workflow


@job
def blob(size: int, seed: int) -> bytes:
    block = bytes((seed + i) % 256 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


@workflow
def make_blob(size: int, seed: int = 0) -> bytes:
    return blob(size, seed)
'''


def _helper_module(tmp_path) -> str:
    name = f"store_helper_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(_HELPER))
    sys.path.insert(0, str(tmp_path))
    return name


def _run_helper(tmp_path, module: str, url: str, options: dict, size: int, seed: int):
    """Start a process that runs make_blob(size, seed) against the store."""
    code = (
        "import json, os, sys\n"
        f"sys.path[:0] = [{str(tmp_path)!r}, {os.path.join(ROOT, 'tests')!r}]\n"
        "import pipedsl\n"
        f"import {module} as helper\n"
        "pipedsl.configure(store=os.environ['STORE_URL'],\n"
        "                  storage_options=json.loads(os.environ['STORE_OPTIONS']))\n"
        f"helper.make_blob.run({size}, {seed}, executor='inline', progress=False).result()\n"
    )
    env = dict(os.environ, STORE_URL=url, STORE_OPTIONS=json.dumps(options))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_reader_sees_none_or_whole_artifact(shared_store, tmp_path):
    url, options = shared_store
    module = _helper_module(tmp_path)
    helper = __import__(module)
    size = 50 * 2**20
    graph = helper.make_blob.trace(size, 3)
    (key,) = graph.tasks
    store = ArtifactStore(url, options)

    writer = _run_helper(tmp_path, module, url, options, size, 3)
    absent = whole = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        manifest = store.read_manifest("blob", key)
        if manifest is None:
            absent += 1
            if writer.poll() is not None:
                break
            continue
        value = store.load(manifest)  # raises on a partial payload
        assert len(value) == size
        whole += 1
        break
    _, stderr = writer.communicate(timeout=120)
    assert writer.returncode == 0, stderr.decode()
    assert absent >= 1
    if whole == 0:  # the writer finished between two polls
        value = store.load(store.read_manifest("blob", key))
        assert len(value) == size
    assert value[:8] == bytes(range(3, 11))


def test_miss_then_other_process_then_hit(shared_store, tmp_path):
    url, options = shared_store
    module = _helper_module(tmp_path)
    helper = __import__(module)
    pipedsl.configure(store=url, storage_options=options)

    plan = helper.make_blob.plan(1000, 9)
    assert len(plan.to_run) == 1

    other = _run_helper(tmp_path, module, url, options, 1000, 9)
    _, stderr = other.communicate(timeout=120)
    assert other.returncode == 0, stderr.decode()

    plan = helper.make_blob.plan(1000, 9)
    assert plan.to_run == []
    run = helper.make_blob.run(1000, 9)
    assert run.counts() == {"cached": 1}
    assert len(run.result()) == 1000
