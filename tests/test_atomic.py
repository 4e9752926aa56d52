"""Atomic writes: a killed writer leaves nothing that later runs trust."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pipedsl

from conftest import ROOT

WRITER = """
import sys, pipedsl
store = pipedsl.ArtifactStore(sys.argv[1])
print("start", flush=True)
store.save("writer", "writer-" + "ab" * 16, b"x" * (400 * 1024 * 1024))
print("done", flush=True)
"""


def test_killed_writer_leaves_no_entry(tmp_path):
    root = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "start"
    # Kill while the payload is being written.
    deadline = time.time() + 30
    while time.time() < deadline:
        partial = [p for p in root.rglob("*") if p.is_file()]
        if partial:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    store = pipedsl.ArtifactStore(str(root))
    assert store.cached_keys("writer") == set()
    assert store.read_manifest("writer", "writer-" + "ab" * 16) is None
    visible = [
        p for p in (root / "objects").rglob("*")
        if p.is_file() and not p.name.startswith(".tmp-")
    ]  # fmt: skip
    for path in visible:
        # Anything under its final name is complete.
        assert path.stat().st_size == 400 * 1024 * 1024


def test_partial_manifest_name_never_listed(tmp_path):
    store = pipedsl.ArtifactStore(str(tmp_path / "store"))
    folder = tmp_path / "store" / "tasks" / "job"
    folder.mkdir(parents=True)
    (folder / ".tmp-abc").write_text("{")
    assert store.cached_keys("job") == set()
