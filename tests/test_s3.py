"""S3 stores against a real moto server over HTTP.

The tests point every AWS setting of the environment at nothing (no keys, an
endpoint on a closed port), so a request that does not use the store's
storage_options fails loudly instead of reaching another endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading

import boto3
import pytest

import pipedsl
from pipedsl import File, job, workflow
from pipedsl.cache import collect_garbage, list_entries, remove_entries
from pipedsl.store import ArtifactStore

from conftest import free_port

pytestmark = pytest.mark.s3


@pytest.fixture
def hostile_aws_env(monkeypatch, tmp_path):
    """Remove AWS credentials from the environment and aim its endpoint at a dead port."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


def _client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _keys(endpoint: str, url: str) -> list[str]:
    """List every key under the store URL, straight from the server."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    paginator = _client(endpoint).get_paginator("list_objects_v2")
    keys = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys.extend(item["Key"][len(prefix) + 1 :] for item in page.get("Contents", []))
    return sorted(keys)


@job(name="s3_numbers")
def numbers(n: int) -> list[int]:
    return list(range(n))


@job(name="s3_big")
def big(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


@job(name="s3_total")
def total(values: list[int], data: bytes) -> int:
    return sum(values) + len(data)


@workflow
def s3_pipeline(n: int = 5, size: int = 2 * 2**20) -> int:
    return total(numbers(n), big(size))


def test_configure_s3_store(s3_store_url, moto_server):
    url, options = s3_store_url
    pipedsl.configure(store=url, storage_options=options)
    run = s3_pipeline.run(4)
    assert run.result() == 6 + 2 * 2**20
    keys = _keys(moto_server, url)
    assert sum(k.startswith("tasks/s3_") for k in keys) == 3
    assert any(k.startswith(f"runs/{run.run_id}") for k in keys)
    assert s3_pipeline.run(4).counts() == {"cached": 3}


def test_every_operation_uses_storage_options(
    s3_store_url, moto_server, hostile_aws_env, tmp_path
):
    url, options = s3_store_url
    store = ArtifactStore(url, options, download_cache=str(tmp_path / "cache"), inline_limit=0)
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(2**20))

    manifest = store.save("train", "train-0a1b", {"model": File(source), "acc": 0.9})
    keys = _keys(moto_server, url)
    assert "tasks/train/0a1b.json" in keys
    assert f"objects/{manifest['object'][:2]}/{manifest['object']}" in keys
    assert len([k for k in keys if k.startswith("objects/")]) == 2

    loaded = store.load(store.read_manifest("train", "train-0a1b"))
    assert open(loaded["model"].path, "rb").read() == source.read_bytes()
    assert store.cached_keys("train") == {"0a1b"}
    store.write_record("20260101-000000-abcdef", {"status": "done", "started": 0.0})
    store.request_kill("20260101-000000-abcdef")
    assert store.kill_requested("20260101-000000-abcdef")
    assert store.list_runs() == ["20260101-000000-abcdef"]
    assert [entry["key"] for entry in list_entries(store)] == ["train-0a1b"]

    assert remove_entries(store, job="train") == 1
    assert "tasks/train/0a1b.json" not in _keys(moto_server, url)
    report = collect_garbage(store, older_than=0, keep_live_runs=False)
    assert report["objects_removed"] == 2
    assert [k for k in _keys(moto_server, url) if not k.startswith("runs/")] == []


def test_processes_executor_gets_store_options(s3_store_url, hostile_aws_env):
    url, options = s3_store_url
    run = s3_pipeline.run(3, store=url, storage_options=options, executor="processes")
    assert run.result() == 3 + 2 * 2**20
    again = s3_pipeline.run(3, 4096, store=url, storage_options=options, executor="processes")
    assert again.result() == 3 + 4096
    assert again.counts() == {"cached": 1, "done": 2}


def test_pipedsl_store_env_with_aws_env(s3_store_url, moto_server, tmp_path):
    url, _ = s3_store_url
    code = (
        "import pipedsl\n"
        "@pipedsl.job(name='env_square')\n"
        "def square(x): return x * x\n"
        "@pipedsl.workflow\n"
        "def flow(x: int = 3): return square(x)\n"
        "print(flow.run(7, executor='inline', progress=False).result())\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "PIPEDSL_"))
    }
    env.update(
        PIPEDSL_STORE=url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto_server,
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "49"
    assert any(k.startswith("tasks/env_square/") for k in _keys(moto_server, url))
    assert not (tmp_path / ".pipedsl").exists()


def test_large_file_uses_multipart_upload(s3_store_url, moto_server, tmp_path):
    url, options = s3_store_url
    store = ArtifactStore(url, options, download_cache=str(tmp_path / "cache"))
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(40 * 2**20))
    manifest = store.save("train", "train-1", File(source))
    (digest,) = manifest["files"]
    bucket, _, prefix = url[len("s3://") :].partition("/")
    head = _client(moto_server).head_object(
        Bucket=bucket, Key=f"{prefix}/objects/{digest[:2]}/{digest}"
    )
    # A multipart ETag ends in -<number of parts>: 40 MiB in 16 MiB parts.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == 40 * 2**20


def test_download_cache_setting_and_limit(s3_store_url, tmp_path):
    url, options = s3_store_url
    cache = tmp_path / "my-cache"
    pipedsl.configure(
        store=url, storage_options=options,
        download_cache=str(cache), download_cache_size=int(2.5 * 2**20),
    )  # fmt: skip
    store = pipedsl.get_config().open_store()
    assert store.download_cache == str(cache)
    paths = []
    for index in range(3):
        source = tmp_path / f"part{index}.bin"
        source.write_bytes(bytes([index]) * 2**20)
        manifest = store.save("shard", f"shard-{index}", File(source))
        loaded = store.load(manifest)
        paths.append(loaded.path)
        assert paths[-1].startswith(str(cache))
        assert open(paths[-1], "rb").read() == source.read_bytes()
    # Three 1 MiB files in a 2.5 MiB cache: the least recently used one went.
    assert [os.path.exists(p) for p in paths] == [False, True, True]
    # Reading it again downloads it again.
    again = store.load(store.read_manifest("shard", "shard-0")).path
    assert open(again, "rb").read() == b"\x00" * 2**20


def test_concurrent_readers_share_download_cache(s3_store_url, tmp_path):
    url, options = s3_store_url
    cache = str(tmp_path / "shared-cache")
    store = ArtifactStore(url, options, download_cache=cache)
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(24 * 2**20))
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    manifest = store.save("prep", "prep-1", File(source))
    digest = manifest["files"][0]

    code = (
        "import hashlib, json, os, sys\n"
        "from pipedsl.store import ArtifactStore\n"
        "store = ArtifactStore(sys.argv[1], json.loads(sys.argv[2]), download_cache=sys.argv[3])\n"
        "path = store.local_object(sys.argv[4], 'data.bin')\n"
        "print(hashlib.sha256(open(path, 'rb').read()).hexdigest())\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, json.dumps(options), cache, digest],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    thread_results: list[str] = []

    def read() -> None:
        path = ArtifactStore(url, options, download_cache=cache).local_object(digest, "data.bin")
        thread_results.append(hashlib.sha256(open(path, "rb").read()).hexdigest())

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert stdout.strip() == expected
    assert thread_results == [expected] * 3
    leftovers = [
        name for _, _, names in os.walk(cache) for name in names if ".part-" in name
    ]
    assert leftovers == []
