"""Shared fixtures: isolated stores, the moto S3 server, the example module path."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

import pipedsl
from pipedsl.config import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    """Give every test its own local store and default settings."""
    config = get_config()
    saved = dict(vars(config))
    monkeypatch.chdir(tmp_path)
    config.store = str(tmp_path / "store")
    config.storage_options = {}
    config.executor = "threads"
    config.max_workers = None
    config.progress = False
    config.on_failure = "stop"
    config.download_cache = str(tmp_path / "download-cache")
    config._stores = {}
    yield
    vars(config).update(saved)


def _extend_path(path):
    sys.path[:] = path + [p for p in sys.path if p not in path]


@pytest.fixture(scope="session")
def dask_client():
    """A real Dask LocalCluster: two worker processes on 127.0.0.1."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )  # fmt: skip
    client = distributed.Client(cluster)
    # Workers import the test modules the way the test session does.
    client.run(_extend_path, list(sys.path))
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def store(tmp_path):
    return pipedsl.ArtifactStore(str(tmp_path / "store"))


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 endpoint over HTTP: moto's standalone server on 127.0.0.1."""
    executable = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"moto_server did not start on {endpoint}")
    yield endpoint
    process.terminate()
    process.wait(10)


@pytest.fixture
def s3_store_url(moto_server, monkeypatch):
    """A fresh bucket on the moto server; returns (url, storage_options)."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"pipedsl-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=moto_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_server, "region_name": "us-east-1"},
    }
    return f"s3://{bucket}/prefix", options


class Calls:
    """Records calls from inside jobs.

    A plain list in a job's closure would be fingerprinted as part of the
    job's code version and change its cache key after each append; an object
    without a fingerprint is recorded by type only.
    """

    def __init__(self) -> None:
        import threading

        self._items: list = []
        self._lock = threading.Lock()

    def append(self, item) -> None:
        with self._lock:
            self._items.append(item)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        return self._items[index]

    def __iter__(self):
        return iter(list(self._items))

    def __eq__(self, other) -> bool:
        return list(self._items) == list(other)

    def __repr__(self) -> str:
        return f"Calls({self._items!r})"
