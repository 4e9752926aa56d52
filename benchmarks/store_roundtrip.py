"""Measure artifact store round trips: a large File through S3, and value throughput.

Starts its own moto S3 server on 127.0.0.1 (needs ``pipedsl[dev]``), then:

1. Round-trips one large file artifact (default 2 GiB) through an S3 store:
   ``store.save`` of a job output ``File(path)`` (multipart upload), then
   ``store.load(...).path`` into an empty download cache (ranged download and
   checksum). This part runs in a child process, so its peak RSS is the peak
   of the round trip alone.
2. Times ``save`` + ``load`` of 1 MB and 100 MB ``bytes`` values through the
   store against ``pipe_file`` + ``cat_file`` of raw fsspec on the same
   filesystem, for a local folder and for S3, and prints the ratios.

Usage::

    python benchmarks/store_roundtrip.py                 # both parts, 2 GiB file
    python benchmarks/store_roundtrip.py --size-mb 300   # smaller file
    python benchmarks/store_roundtrip.py --skip-large    # throughput only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import boto3

from pipedsl import File
from pipedsl.store import ArtifactStore

BLOCK = 16 * 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """Start moto_server on a free local port and return it with its endpoint."""
    executable = shutil.which("moto_server") or os.path.join(
        os.path.dirname(sys.executable), "moto_server"
    )
    port = free_port()
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"moto_server did not start on port {port}")


def s3_options(endpoint: str) -> dict[str, object]:
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


def make_bucket(endpoint: str) -> str:
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    return bucket


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_file(path: str, size: int) -> None:
    """Write ``size`` bytes of distinct blocks without holding more than one block."""
    seed = os.urandom(BLOCK)
    with open(path, "wb") as out:
        written = 0
        index = 0
        while written < size:
            block = index.to_bytes(8, "little") + seed[8:]
            block = block[: size - written]
            out.write(block)
            written += len(block)
            index += 1


def large_child(endpoint: str, bucket: str, size: int, workdir: str) -> None:
    """Round-trip one file of ``size`` bytes and print a JSON line of figures."""
    source = os.path.join(workdir, "large.bin")
    write_file(source, size)
    before = peak_rss_mib()
    store = ArtifactStore(
        f"s3://{bucket}/large",
        s3_options(endpoint),
        download_cache=os.path.join(workdir, "download-cache"),
    )
    started = time.perf_counter()
    manifest = store.save("bench", "bench-large", File(source))
    uploaded = time.perf_counter()
    handle = store.load(manifest)
    local_path = handle.path
    downloaded = time.perf_counter()
    if os.path.getsize(local_path) != size:
        raise RuntimeError(f"downloaded {os.path.getsize(local_path)} bytes, expected {size}")
    print(
        json.dumps(
            {
                "size_mib": size / 2**20,
                "upload_s": uploaded - started,
                "download_s": downloaded - uploaded,
                "peak_rss_before_mib": before,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def timed(fn: object, repeat: int) -> float:
    """Return the best wall time of ``repeat`` calls of ``fn(i)``."""
    best = float("inf")
    for i in range(repeat):
        started = time.perf_counter()
        fn(i)  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


def throughput(store: ArtifactStore, size: int, repeat: int) -> dict[str, float]:
    """Time store save+load against raw pipe_file+cat_file for ``size``-byte values."""
    values = [os.urandom(size) for _ in range(repeat)]
    raw_values = [os.urandom(size) for _ in range(repeat)]
    fs = store.fs
    raw_root = store._path("raw-" + uuid.uuid4().hex[:8])

    def through_store(i: int) -> None:
        manifest = store.save("bench", f"bench-{uuid.uuid4().hex}", values[i])
        if len(store.load(manifest)) != size:
            raise RuntimeError("store round trip returned the wrong size")

    def through_fsspec(i: int) -> None:
        path = f"{raw_root}/{i}"
        if store.is_local:
            os.makedirs(raw_root, exist_ok=True)
        fs.pipe_file(path, raw_values[i])
        if len(fs.cat_file(path)) != size:
            raise RuntimeError("raw round trip returned the wrong size")

    store_s = timed(through_store, repeat)
    raw_s = timed(through_fsspec, repeat)
    mib = size / 2**20
    return {
        "size_mib": mib,
        "store_mib_s": mib / store_s,
        "fsspec_mib_s": mib / raw_s,
        "store_over_fsspec_time": store_s / raw_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="large file size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per size")
    parser.add_argument("--skip-large", action="store_true", help="skip the large file")
    parser.add_argument("--large-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.large_child:
        endpoint, bucket, size, workdir = args.large_child
        large_child(endpoint, bucket, int(size), workdir)
        return

    moto, endpoint = start_moto()
    workdir = tempfile.mkdtemp(prefix="pipedsl-bench-")
    try:
        if not args.skip_large:
            bucket = make_bucket(endpoint)
            size = args.size_mb * 2**20
            output = subprocess.run(
                [sys.executable, __file__, "--large-child", endpoint, bucket, str(size), workdir],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            figures = json.loads(output.strip().splitlines()[-1])
            print(
                f"large file {figures['size_mib']:.0f} MiB via S3 (moto): "
                f"upload {figures['upload_s']:.1f} s, download {figures['download_s']:.1f} s, "
                f"peak RSS {figures['peak_rss_mib']:.0f} MiB "
                f"(before transfer {figures['peak_rss_before_mib']:.0f} MiB)"
            )
            shutil.rmtree(os.path.join(workdir, "download-cache"), ignore_errors=True)
            os.unlink(os.path.join(workdir, "large.bin"))

        stores = {
            "local": ArtifactStore(os.path.join(workdir, "local-store")),
            "s3": ArtifactStore(f"s3://{make_bucket(endpoint)}/values", s3_options(endpoint)),
        }
        print(f"{'backend':<8}{'value':>8}{'store MiB/s':>14}{'fsspec MiB/s':>14}{'ratio':>8}")
        for name, store in stores.items():
            for size in (2**20, 100 * 2**20):
                row = throughput(store, size, args.repeat)
                print(
                    f"{name:<8}{row['size_mib']:>6.0f}MB{row['store_mib_s']:>14.1f}"
                    f"{row['fsspec_mib_s']:>14.1f}{row['store_over_fsspec_time']:>8.2f}"
                )
    finally:
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
