"""Cache administration on local and S3 stores: list, remove, garbage collection."""

from __future__ import annotations

import json
import time

import pytest

from pipedsl import File, job, workflow
from pipedsl.cache import collect_garbage, list_entries, parse_age, remove_entries
from pipedsl.store import ArtifactStore

DAY = 86400.0


@pytest.fixture(params=["local", "s3"])
def admin_store(request, tmp_path):
    cache = str(tmp_path / "download-cache")
    if request.param == "local":
        # Payloads go to objects/ (inline_limit=0): these tests collect them.
        return ArtifactStore(str(tmp_path / "admin-store"), download_cache=cache, inline_limit=0)
    url, options = request.getfixturevalue("s3_store_url")
    return ArtifactStore(url, options, download_cache=cache, inline_limit=0)


def _age(store: ArtifactStore, job_name: str, key: str, days: float) -> None:
    """Make an entry look ``days`` old by rewriting its creation time."""
    manifest = store.read_manifest(job_name, key)
    manifest["created"] = time.time() - days * DAY
    store._write(store.manifest_path(job_name, key), json.dumps(manifest).encode())


def _fill(store: ArtifactStore) -> None:
    store.save("train", "train-aaaa", b"model a")
    store.save("train", "train-bbbb", b"model b")
    store.save("score", "score-cccc", {"accuracy": 0.9})


def test_list_entries(admin_store):
    _fill(admin_store)
    entries = list_entries(admin_store)
    assert [e["key"] for e in entries] == ["train-aaaa", "train-bbbb", "score-cccc"]
    assert [e["key"] for e in list_entries(admin_store, job="score")] == ["score-cccc"]
    assert list_entries(admin_store, job="absent") == []
    assert entries[0]["size"] == len(b"model a")


def test_remove_entries_by_job_key_and_digest(admin_store):
    _fill(admin_store)
    assert remove_entries(admin_store, keys=["train-aaaa"]) == 1
    assert remove_entries(admin_store, keys=["cccc"]) == 1
    assert remove_entries(admin_store, keys=["cccc"]) == 0
    assert [e["key"] for e in list_entries(admin_store)] == ["train-bbbb"]
    assert remove_entries(admin_store, job="train") == 1
    assert list_entries(admin_store) == []
    with pytest.raises(TypeError, match="list of task keys"):
        remove_entries(admin_store, keys="train-aaaa")  # type: ignore[arg-type]


def test_remove_all_entries(admin_store):
    _fill(admin_store)
    assert remove_entries(admin_store) == 3
    assert list_entries(admin_store) == []


def test_gc_removes_old_entries_and_orphans(admin_store, tmp_path):
    _fill(admin_store)
    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 4096)
    admin_store.save("pack", "pack-dddd", {"weights": File(source)})
    _age(admin_store, "train", "train-aaaa", 40)
    _age(admin_store, "pack", "pack-dddd", 40)

    dry = collect_garbage(admin_store, older_than="30d", dry_run=True)
    assert dry["entries_removed"] == 2
    assert len(list_entries(admin_store)) == 4

    report = collect_garbage(admin_store, older_than="30d")
    assert report["entries_removed"] == 2
    assert report["entries_kept"] == 2
    # Unreferenced objects are younger than 30 days, so they stay for now.
    assert report["objects_removed"] == 0
    assert [e["key"] for e in list_entries(admin_store)] == ["train-bbbb", "score-cccc"]

    report = collect_garbage(admin_store, older_than=0, keep_live_runs=False)
    # The two remaining entries go too; all five objects (3 payloads, the
    # dict holding the File and the file itself) are then unreferenced.
    assert report["entries_removed"] == 2
    assert report["objects_removed"] == 5
    assert report["bytes_freed"] >= 4096
    assert list(admin_store.iter_objects()) == []


def test_gc_keeps_objects_still_referenced(admin_store):
    admin_store.save("first", "first-1111", b"shared payload")
    admin_store.save("second", "second-2222", b"shared payload")
    admin_store.save("third", "third-3333", b"own payload")
    remove_entries(admin_store, job="first")
    remove_entries(admin_store, job="third")
    report = collect_garbage(admin_store, older_than="1000d")
    assert report["objects_removed"] == 0
    report = collect_garbage(admin_store, older_than=0, keep_live_runs=False)
    assert report["entries_removed"] == 1
    assert report["objects_removed"] == 2

    admin_store.save("fourth", "fourth-4444", b"shared payload")
    admin_store.save("fifth", "fifth-5555", b"shared payload")
    remove_entries(admin_store, job="fourth")
    report = collect_garbage(admin_store, older_than="1000d", keep_live_runs=False)
    assert report["objects_kept"] == 1
    manifest = admin_store.read_manifest("fifth", "fifth-5555")
    assert admin_store.load(manifest) == b"shared payload"


def test_gc_protects_entries_of_recent_runs(admin_store):
    @job(name="gc_step")
    def step(x: int) -> int:
        return x * 2

    @workflow
    def flow(x: int = 1) -> int:
        return step(x)

    run = flow.run(21, store=admin_store)
    assert run.result() == 42
    (entry,) = list_entries(admin_store, job="gc_step")
    _age(admin_store, "gc_step", entry["key"], 40)

    report = collect_garbage(admin_store, older_than="30d")
    assert report["entries_protected"] == 1
    assert report["entries_removed"] == 0
    assert flow.run(21, store=admin_store).counts() == {"cached": 1}

    report = collect_garbage(admin_store, older_than="30d", keep_live_runs=False)
    assert report["entries_removed"] == 1
    assert list_entries(admin_store, job="gc_step") == []


def test_gc_protects_objects_of_live_runs(admin_store):
    # A run still running, started an hour ago: its tasks may have stored
    # payloads whose manifests are not written yet.
    admin_store.write_record(
        "20260101-000000-live00",
        {"status": "running", "started": time.time() - 3600, "ended": None, "tasks": []},
    )
    digest = admin_store.put_bytes(b"payload of a task still running")
    report = collect_garbage(admin_store, older_than=0)
    assert report["objects_removed"] == 0
    assert digest in {o["name"] for o in admin_store.iter_objects()}
    report = collect_garbage(admin_store, older_than=0, keep_live_runs=False)
    assert report["objects_removed"] == 1


def test_parse_age():
    assert parse_age("90m") == 5400.0
    assert parse_age("2w") == 14 * DAY
    assert parse_age(1.5) == 1.5
    for bad in ("soon", "-1d", True, -3):
        with pytest.raises(ValueError, match="age"):
            parse_age(bad)
