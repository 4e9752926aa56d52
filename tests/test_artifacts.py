"""File artifacts and lazy handles: what a job parameter receives, and memory use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Optional

import pytest

from pipedsl import Artifact, File, job, workflow
from pipedsl.artifacts import lazy_parameters
from pipedsl.store import ArtifactStore

from conftest import ROOT

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB, above the inline limit of processes


@job(name="art_produce")
def produce(tag: int) -> bytes:
    return PAYLOAD


@job(name="art_describe")
def describe(data: Artifact[bytes], tag: int) -> dict:
    return {
        "handle": type(data).__name__,
        "size": data.size,
        "serializer": data.serializer,
        "path_size": os.path.getsize(data.path),
    }


@job(name="art_load")
def load_prefix(data: Artifact[bytes], tag: int) -> bytes:
    return data.load()[:4]


@job(name="art_file")
def file_info(data: File, tag: int) -> dict:
    with data.open() as handle:
        head = handle.read(4)
    return {"handle": type(data).__name__, "size": os.path.getsize(data.path), "head": list(head)}


@workflow
def describe_flow(tag: int = 0) -> dict:
    return describe(produce(0), tag)


@workflow
def file_flow(tag: int = 0) -> dict:
    return file_info(produce(0), tag)


@pytest.mark.parametrize("executor", ["inline", "threads", "processes"])
def test_artifact_parameter_gets_handle(executor):
    result = describe_flow.run(1, executor=executor).result()
    assert result == {
        "handle": "Artifact",
        "size": len(PAYLOAD),
        "serializer": "bytes",
        "path_size": len(PAYLOAD),
    }


@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_artifact_handle_reads_no_payload(executor, tmp_path):
    store = ArtifactStore(str(tmp_path / "lazy-store"))
    assert describe_flow.run(1, store=store, executor=executor).result()["size"] == len(PAYLOAD)
    manifest = next(store.iter_manifests("art_produce"))
    # Same size, other bytes: any load of the payload would fail its checksum.
    path = store.object_path(manifest["object"])
    os.chmod(path, 0o644)
    with open(path, "wb") as handle:
        handle.write(b"\x00" * manifest["size"])
    run = describe_flow.run(2, store=store, executor=executor)
    assert run.result()["size"] == len(PAYLOAD)
    assert run.counts() == {"cached": 1, "done": 1}

    @workflow
    def loading_flow(tag: int = 0) -> bytes:
        return load_prefix(produce(0), tag)

    # A job that calls load() does read the payload, sees the corruption,
    # and the scheduler runs the producer again.
    with pytest.warns(RuntimeWarning, match="checksum"):
        assert loading_flow.run(3, store=store, executor=executor).result() == PAYLOAD[:4]


@pytest.mark.parametrize("cached", [False, True])
def test_file_parameter_on_bytes_output(cached):
    if cached:
        file_flow.run(0).result()  # stores produce; the next run loads a Ref
    result = file_flow.run(1).result()
    assert result == {"handle": "File", "size": len(PAYLOAD), "head": [0, 1, 2, 3]}


def test_in_memory_artifact_handle(store):
    handle = Artifact.from_value({"a": [1, 2]}, store)
    assert handle.load() == {"a": [1, 2]}
    assert handle.serializer == "json"
    assert handle.size == len(b'{"a":[1,2]}')
    with open(handle.path, "rb") as stored:
        assert stored.read() == b'{"a":[1,2]}'
    assert "in memory" in repr(handle)


def test_artifact_handle_missing_manifest(store):
    from pipedsl import ArtifactMissing

    handle = Artifact(store, "gone", "gone-1234")
    with pytest.raises(ArtifactMissing, match="manifest"):
        handle.size


def test_lazy_parameter_detection():
    def annotated(a: File, b: Artifact[int], c: Artifact, d: int, e: Optional[File]) -> None:
        pass

    def as_strings(a: "File", b: "pipedsl.Artifact[list[int]]", c: "Artifacts") -> None:  # noqa: F821
        pass

    def variadic(*files: File, **named: Artifact[int]) -> None:
        pass

    assert lazy_parameters(annotated) == {"a": File, "b": Artifact, "c": Artifact}
    assert lazy_parameters(as_strings) == {"a": File, "b": Artifact}
    assert lazy_parameters(variadic) == {}


_MEMORY_PROBE = """
import json, os, resource, sys
from pipedsl import File
from pipedsl.store import ArtifactStore

url, options, size, workdir = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
source = os.path.join(workdir, "large.bin")
block = os.urandom(4 * 2**20)
with open(source, "wb") as out:
    for index in range(size // len(block)):
        out.write(index.to_bytes(8, "little") + block[8:])
del block
store = ArtifactStore(url, options, download_cache=os.path.join(workdir, "cache"))
store.save("probe", "probe-0", b"warm up")  # imports and connections
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
manifest = store.save("probe", "probe-1", {"weights": File(source)})
loaded = store.load(manifest)["weights"]
downloaded = os.path.getsize(loaded.path)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "downloaded": downloaded}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_large_file_memory_stays_bounded(backend, request, tmp_path):
    size = 300 * 2**20
    if backend == "local":
        url, options = str(tmp_path / "big-store"), {}
    else:
        url, options = request.getfixturevalue("s3_store_url")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MEMORY_PROBE), url, json.dumps(options),
         str(size), str(tmp_path)],
        capture_output=True, text=True, timeout=280, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["downloaded"] == size
    # Peak RSS grows by less than a third of the file: 32 MiB of upload parts
    # in flight plus client buffers, never the whole file.
    assert figures["growth_kib"] * 1024 < size / 3
