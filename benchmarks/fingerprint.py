"""Throughput of pipedsl.fingerprint on large arrays, and its cost on small values.

Large C-contiguous numpy arrays are hashed in place with xxh3-128, so their
fingerprint should run near the speed of xxhash itself; the table shows both.
A strided view is copied to a contiguous buffer first, which the last large
row measures. Small values (the arguments of most tasks) are timed per call.

Usage: ``python benchmarks/fingerprint.py [--max-mib 1024] [--write-docs PATH]``.
``--write-docs`` replaces the text between the ``fingerprint`` markers of PATH.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import xxhash

from pipedsl.hashing import fingerprint

BEGIN = "<!-- fingerprint:begin -->"
END = "<!-- fingerprint:end -->"


def best_of(function: Callable[[], Any], repeat: int) -> float:
    """Return the shortest of ``repeat`` wall times of ``function()``, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def large_rows(max_mib: int, repeat: int) -> list[str]:
    rows = []
    mib = 64
    while mib <= max_mib:
        array = np.random.default_rng(0).random(mib * 2**20 // 8)
        size = array.nbytes
        ours = best_of(lambda: fingerprint(array), repeat)
        raw = best_of(lambda: xxhash.xxh3_128_digest(memoryview(array).cast("B")), repeat)
        rows.append(
            f"| float64, {mib} MiB, contiguous | {size / ours / 1e9:.2f} | "
            f"{size / raw / 1e9:.2f} |"
        )
        mib *= 4
    array = np.random.default_rng(0).random(max_mib * 2**20 // 8)
    strided = array[::2]
    seconds = best_of(lambda: fingerprint(strided), repeat)
    rows.append(
        f"| float64, every 2nd element of {max_mib} MiB (copied first) | "
        f"{strided.nbytes / seconds / 1e9:.2f} | |"
    )
    return rows


def small_rows(repeat: int) -> list[str]:
    values: list[tuple[str, Any]] = [
        ("int", 12345),
        ("str, 20 characters", "a" * 20),
        ("float", 0.125),
        ("tuple of 3 ints", (1, 2, 3)),
        ("dict, 10 str keys to ints", {f"key{i}": i for i in range(10)}),
        ("list of 1,000 ints", list(range(1000))),
        ("numpy array, 100 float64", np.arange(100, dtype=np.float64)),
    ]
    calls = 2000
    rows = []
    for title, value in values:
        fingerprint(value)

        def loop(value: Any = value) -> None:
            for _ in range(calls):
                fingerprint(value)

        seconds = best_of(loop, repeat) / calls
        rows.append(f"| {title} | {seconds * 1e6:.1f} |")
    return rows


def render(max_mib: int, repeat: int) -> str:
    machine = (
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"xxhash {xxhash.VERSION}"
    )
    lines = [
        f"Machine: {machine}. Best of {repeat} runs.",
        "",
        "Command: `" + " ".join(["python", "benchmarks/fingerprint.py", *sys.argv[1:]]) + "`",
        "",
        "| array | `fingerprint` GB/s | xxh3-128 alone GB/s |",
        "| --- | --- | --- |",
        *large_rows(max_mib, repeat),
        "",
        "| small value | µs per `fingerprint` call |",
        "| --- | --- |",
        *small_rows(repeat),
    ]
    return "\n".join(lines) + "\n"


def write_docs(path: str, body: str) -> None:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    start = text.find(BEGIN)
    stop = text.find(END)
    if start < 0 or stop < start:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block to replace")
    text = text[: start + len(BEGIN)] + "\n" + body + text[stop:]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--max-mib", type=int, default=1024, help="size of the largest array, in MiB"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("--write-docs", metavar="PATH", help="update the table in PATH")
    args = parser.parse_args()
    body = render(args.max_mib, args.repeat)
    print(body)
    if args.write_docs:
        write_docs(args.write_docs, body)
        print(f"updated {args.write_docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
