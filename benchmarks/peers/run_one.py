"""Time one workload of one system in this (fresh) interpreter.

Usage: ``python benchmarks/peers/run_one.py SYSTEM WORKLOAD N [--warmup]``.
Prints one JSON line: the wall time of the timed call, its result, task
counts where the system reports them, and peak resident memory. The caller
sets ``BENCH_CACHE_DIR`` to an empty folder for a cold run, or to the folder
of an earlier run for a cached re-run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time

MODULES = {
    "pipedsl": "pipedsl_impl",
    "dask": "dask_impl",
    "prefect": "prefect_impl",
    "redun": "redun_impl",
    "flytekit": "flyte_impl",
}
FRAMEWORKS = {
    "pipedsl": "pipedsl",
    "dask": "dask",
    "prefect": "prefect",
    "redun": "redun",
    "flytekit": "flytekit",
}


def _configure_environment(system: str, cache_dir: str) -> None:
    """Point each framework's state (database, cache) at ``cache_dir``."""
    os.makedirs(cache_dir, exist_ok=True)
    if system == "prefect":
        os.environ["PREFECT_HOME"] = os.path.join(cache_dir, "prefect-home")
        os.environ["PREFECT_LOCAL_STORAGE_PATH"] = os.path.join(cache_dir, "results")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        # The ephemeral API server migrates a new SQLite database on start,
        # which takes longer than the default 20 s on a loaded 2-core machine.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    elif system == "flytekit":
        os.environ["HOME"] = cache_dir
        os.environ.setdefault("FLYTE_SDK_LOGGING_LEVEL", "40")


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=sorted(MODULES))
    parser.add_argument("workload", choices=["chain", "fanout", "sleeps", "trace", "leak"])
    parser.add_argument("n", type=int, help="tasks (chain, fanout), sleeps, or runs (leak)")
    parser.add_argument("--seconds", type=float, default=0.5, help="seconds each sleep task sleeps")
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="run two 0 s sleep tasks and a join before timing (starts servers and "
        "thread pools; their cache entries differ from every timed workload's)",
    )
    args = parser.parse_args()

    cache_dir = os.environ.setdefault("BENCH_CACHE_DIR", os.path.abspath(".bench-cache"))
    _configure_environment(args.system, cache_dir)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    started = time.perf_counter()
    importlib.import_module(FRAMEWORKS[args.system])
    framework_import = time.perf_counter() - started
    started = time.perf_counter()
    impl = importlib.import_module(MODULES[args.system])
    # Flyte compiles its workflows here, at import.
    module_import = time.perf_counter() - started

    # Flyte's sleep workflow is compiled with fixed lengths, so a warm-up call
    # of it would fill the cache the sleeps measurement then reads.
    if args.warmup and not (args.system == "flytekit" and args.workload == "sleeps"):
        impl.sleeps(2, 0.0)
    rss_before = _rss_mib()

    started = time.perf_counter()
    counts: dict[str, int] = {}
    if args.workload == "chain":
        result, counts = impl.chain(args.n)
    elif args.workload == "fanout":
        result, counts = impl.fanout(args.n)
    elif args.workload == "sleeps":
        result, counts = impl.sleeps(args.n, args.seconds)
    elif args.workload == "trace":
        result = impl.trace("chain", args.n) + impl.trace("fanout", args.n)
    else:
        result = impl.repeated(1000, args.n)
    seconds = time.perf_counter() - started

    print(
        json.dumps(
            {
                "system": args.system,
                "workload": args.workload,
                "n": args.n,
                "seconds": seconds,
                "result": result,
                "counts": counts,
                "framework_import": framework_import,
                "module_import": module_import,
                "rss_before_mib": rss_before,
                "peak_rss_mib": _rss_mib(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
