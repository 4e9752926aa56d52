"""Scheduling overhead of pipedsl next to dask.delayed and peer frameworks.

Every measurement runs in a fresh interpreter (``benchmarks/peers/run_one.py``)
so imports and caches of one system never touch another, and systems take
turns within each repeat so that a slow moment of the machine hits all of
them. Reported figures are medians over ``--repeat`` runs.

Workloads, all of no-op tasks that add one to an integer:

* ``chain``: n tasks, each taking the previous one's output;
* ``fanout``: n independent tasks and one task summing their outputs;
* ``cached``: the fan-out again in a new process against the first run's
  cache; the time is that of the run call alone, imports excluded;
* ``sleeps``: four tasks sleeping 0.5 s each and a join (ideal: 0.5 s);
* at ``--big`` tasks (default 10,000), pipedsl's trace, run and cached re-run
  of the chain and the fan-out, and dask's run, with peak memory;
* ``leak``: the 1,000-task fan-out run six times in one process, with the
  Python heap measured by ``tracemalloc`` after each run.

pipedsl runs on its default thread executor with a local artifact store, so
every task writes its payload, its manifest and the run record. Peers that
support caching run with it on (Prefect: ``INPUTS + TASK_SOURCE`` with
persisted results; redun: its call cache in SQLite; flytekit: ``cache=True``
with the local cache). dask.delayed has no cache.

Run ``make bench`` to install the peers into ``.bench-venv`` and run this
script there; ``python benchmarks/overhead.py --systems pipedsl,dask`` works
in the project venv. ``--write-docs docs/benchmarks.md`` replaces the table
between the ``overhead`` markers of that file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_ONE = os.path.join(HERE, "peers", "run_one.py")
PEERS = ("prefect", "redun", "flytekit")
ALL_SYSTEMS = ("pipedsl", "dask", *PEERS)
CACHING = ("pipedsl", "prefect", "redun", "flytekit")
BEGIN = "<!-- overhead:begin -->"
END = "<!-- overhead:end -->"


def _run_one(
    python: str,
    system: str,
    workload: str,
    n: int,
    cache_dir: str,
    *,
    warmup: bool = False,
    timeout: float = 900,
) -> dict[str, Any]:
    """Run one measurement in a new interpreter; return its JSON report."""
    env = dict(os.environ, BENCH_CACHE_DIR=cache_dir, BENCH_N=str(n))
    if warmup and system == "flytekit" and workload != "sleeps":
        # The warm-up calls the sleep workflow, compiled with this length.
        env["BENCH_SLEEP_SECONDS"] = "0"
    command = [python, RUN_ONE, system, workload, str(n)]
    if warmup:
        command.append("--warmup")
    started = time.perf_counter()
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{system} {workload} {n} failed:\n" + "\n".join(tail))
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["process_wall"] = wall
    return report


def _check(report: dict[str, Any], expected: Any, cached: bool = False) -> None:
    if report["result"] != expected:
        raise RuntimeError(
            f"{report['system']} {report['workload']} returned {report['result']!r}, "
            f"expected {expected!r}"
        )
    counts = report["counts"]
    if cached and counts and set(counts) != {"cached"}:
        raise RuntimeError(f"{report['system']} cached re-run executed tasks: {counts}")


def _available(python: str, system: str) -> str | None:
    """Return None if ``system`` imports in ``python``, else the error line."""
    module = {"flytekit": "flytekit"}.get(system, system)
    done = subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"import {module} failed"


def _versions(python: str, systems: list[str]) -> dict[str, str]:
    names = {"pipedsl": "pipedsl", "dask": "dask", **{p: p for p in PEERS}}
    code = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [python, "-c", code, *[names[s] for s in systems]],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[1]:.1f} over the last 5 min at the end"
    return (
        f"{os.cpu_count()} cores ({model}){memory}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}{load}"
    )


def _git_commit() -> str:
    done = subprocess.run(
        ["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


class Bench:
    """Runs the measurements and keeps their medians."""

    def __init__(self, args: argparse.Namespace, systems: list[str]) -> None:
        self.args = args
        self.systems = systems
        self.root = tempfile.mkdtemp(prefix="pipedsl-bench-")
        self.times: dict[tuple[str, str], list[float]] = {}
        self.extra: dict[str, Any] = {}
        self.failures: dict[tuple[str, str], str] = {}

    def _fresh(self) -> str:
        return tempfile.mkdtemp(dir=self.root)

    def _measure(
        self, system: str, label: str, workload: str, n: int, expected: Any, **kw: Any
    ) -> dict[str, Any] | None:
        if (system, label) in self.failures:
            return None
        cache_dir = kw.pop("cache_dir", None) or self._fresh()
        cached = kw.pop("cached", False)
        try:
            report = _run_one(self.args.python, system, workload, n, cache_dir, **kw)
            _check(report, expected, cached=cached)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            self.failures[(system, label)] = str(exc)
            print(f"  {system} {label}: FAILED: {str(exc).splitlines()[0]}", flush=True)
            return None
        self.times.setdefault((system, label), []).append(report["seconds"])
        print(f"  {system:8s} {label:14s} {report['seconds']:8.3f} s", flush=True)
        return report

    def run(self) -> None:
        n = self.args.n
        fan_total = n * (n + 1) // 2
        for repeat in range(self.args.repeat):
            print(f"repeat {repeat + 1}/{self.args.repeat}", flush=True)
            for system in self.systems:
                self._measure(system, "chain", "chain", n, n, warmup=True)
                self._measure(system, "fanout", "fanout", n, fan_total, warmup=True)
                self._measure(system, "sleeps", "sleeps", 4, 6, warmup=True)
        self._cached(n, fan_total)
        if self.args.big and "pipedsl" in self.systems:
            self._big()
        if "pipedsl" in self.systems and not self.args.skip_leak:
            report = _run_one(self.args.python, "pipedsl", "leak", 6, self._fresh())
            self.extra["leak"] = report["result"]

    def _cached(self, n: int, fan_total: int) -> None:
        for system in self.systems:
            if system not in CACHING:
                continue
            cache_dir = self._fresh()
            first = self._measure(
                system, "fanout-first", "fanout", n, fan_total, cache_dir=cache_dir
            )
            if first is None:
                continue
            for _ in range(self.args.repeat):
                report = self._measure(
                    system, "cached", "fanout", n, fan_total,
                    cache_dir=cache_dir, cached=True, warmup=True,
                )  # fmt: skip
                if system != "pipedsl":
                    continue
                # Also without a warm-up: the first run call of a new process.
                report = self._measure(
                    system, "cached-cold", "fanout", n, fan_total,
                    cache_dir=cache_dir, cached=True,
                )  # fmt: skip
                if report is not None:
                    self.extra.setdefault("pipedsl-cached-process", []).append(
                        report["process_wall"]
                    )

    def _big(self) -> None:
        big = self.args.big
        fan_total = big * (big + 1) // 2
        for repeat in range(self.args.repeat):
            print(f"{big} tasks, repeat {repeat + 1}/{self.args.repeat}", flush=True)
            self._measure("pipedsl", f"trace-{big}", "trace", big, 2 * big + 1)
            self._measure("pipedsl", "trace-1k", "trace", 1000, 2001)
            for workload, expected in (("chain", big), ("fanout", fan_total)):
                cache_dir = self._fresh()
                report = self._measure(
                    "pipedsl", f"{workload}-{big}", workload, big, expected,
                    cache_dir=cache_dir, warmup=True,
                )  # fmt: skip
                if report is not None:
                    self.extra.setdefault(f"rss-{workload}-{big}", []).append(
                        (report["rss_before_mib"], report["peak_rss_mib"])
                    )
                self._measure(
                    "pipedsl", f"{workload}-{big}-cached", workload, big, expected,
                    cache_dir=cache_dir, cached=True,
                )  # fmt: skip
                cache_dir = self._fresh()
                self._measure(
                    "pipedsl", f"{workload}-1k-fill", workload, 1000,
                    1000 if workload == "chain" else 500500, cache_dir=cache_dir,
                )  # fmt: skip
                self._measure(
                    "pipedsl", f"{workload}-1k-cached", workload, 1000,
                    1000 if workload == "chain" else 500500, cache_dir=cache_dir, cached=True,
                )  # fmt: skip
                if "dask" in self.systems:
                    self._measure("dask", f"{workload}-{big}", workload, big, expected, warmup=True)

    def median(self, system: str, label: str) -> float | None:
        values = self.times.get((system, label))
        return statistics.median(values) if values else None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _seconds(value: float | None) -> str:
    return "failed" if value is None else f"{value:.3f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return ""
    return f" ({value / base:.2f}x)"


def render(bench: Bench, notes: dict[str, str], versions: dict[str, str]) -> str:
    """Return the Markdown tables and notes for docs/benchmarks.md."""
    args = bench.args
    n = args.n
    lines = [
        f"Machine: {_machine()}. Commit {_git_commit()}. "
        f"Medians of {args.repeat} runs, each in a new process.",
        "",
        "Command: `" + " ".join(["python", "benchmarks/overhead.py", *sys.argv[1:]]) + "`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        f"Seconds (ratio to dask.delayed on its threaded scheduler) for {n:,} no-op "
        "tasks:",
        "",
        f"| system | chain {n:,} | fan-out {n:,} + join | cached re-run of the fan-out "
        "| 4 x 0.5 s sleeps + join |",
        "| --- | --- | --- | --- | --- |",
    ]
    dask_chain = bench.median("dask", "chain")
    dask_fan = bench.median("dask", "fanout")
    for system in bench.systems:
        chain = bench.median(system, "chain")
        fan = bench.median(system, "fanout")
        cached = bench.median(system, "cached")
        sleeps = bench.median(system, "sleeps")
        cached_text = "no cache" if system not in CACHING else _seconds(cached)
        if system == "dask":
            chain_text, fan_text = _seconds(chain), _seconds(fan)
        else:
            chain_text = _seconds(chain) + _ratio(chain, dask_chain)
            fan_text = _seconds(fan) + _ratio(fan, dask_fan)
        lines.append(
            f"| {system} | {chain_text} | {fan_text} | {cached_text} | {_seconds(sleeps)} |"
        )
    for system, note in notes.items():
        lines.append(f"| {system} | not measured: {note} | | | |")
    ours = bench.median("pipedsl", "cached")
    flyte = bench.median("flytekit", "cached")
    lines.append("")
    if ours is not None:
        cold = bench.median("pipedsl", "cached-cold")
        processes = bench.extra.get("pipedsl-cached-process", [])
        text = f"pipedsl's cached re-run takes {ours:.3f} s for the run call after a warm-up"
        if cold is not None and processes:
            text += (
                f", {cold:.3f} s as the first call of a new process, and "
                f"{statistics.median(processes):.3f} s for that whole process "
                "(interpreter start and imports included)"
            )
        text += "."
        if flyte:
            text += f" Flyte's cached run takes {flyte / ours:.1f} times as long."
        lines.append(text)
        lines.append("")
    if args.big and bench.median("pipedsl", f"chain-{args.big}") is not None:
        lines.extend(_render_big(bench))
    if "leak" in bench.extra:
        sizes = ", ".join(f"{size / 2**20:.1f}" for size in bench.extra["leak"])
        lines.append(
            "Python heap (MiB, `tracemalloc`, after `gc.collect()`) after each of six "
            f"fan-outs of 1,000 tasks in one process: {sizes}."
        )
        lines.append("")
    for (system, label), error in sorted(bench.failures.items()):
        first = error.splitlines()[-1] if error else "no output"
        lines.append(f"- {system} {label} failed: `{first[:300]}`")
    return "\n".join(lines).rstrip() + "\n"


def _render_big(bench: Bench) -> list[str]:
    big = bench.args.big
    lines = [
        f"pipedsl at 1,000 and {big:,} tasks (seconds). Growth is the {big:,}-task "
        f"time over {big / 1000:g} times the 1,000-task time: 1.00 is linear.",
        "",
        f"| measurement | 1,000 | {big:,} | per-task growth |",
        "| --- | --- | --- | --- |",
    ]
    scale = big / 1000
    rows = [
        ("trace chain + fan-out", "trace-1k", f"trace-{big}"),
        ("chain run", "chain", f"chain-{big}"),
        ("fan-out run", "fanout", f"fanout-{big}"),
        ("chain cached re-run", "chain-1k-cached", f"chain-{big}-cached"),
        ("fan-out cached re-run", "fanout-1k-cached", f"fanout-{big}-cached"),
    ]
    for title, small_label, big_label in rows:
        small = bench.median("pipedsl", small_label)
        large = bench.median("pipedsl", big_label)
        growth = f"{large / (small * scale):.2f}" if small and large else ""
        lines.append(f"| {title} | {_seconds(small)} | {_seconds(large)} | {growth} |")
    for workload in ("chain", "fanout"):
        dask_big = bench.median("dask", f"{workload}-{big}")
        if dask_big is not None:
            ours = bench.median("pipedsl", f"{workload}-{big}")
            small = bench.median("dask", workload)
            lines.append(
                f"| dask {workload} run (pipedsl's ratio to it) | {_seconds(small)}"
                f"{_ratio(bench.median('pipedsl', workload), small)} | {_seconds(dask_big)}"
                f"{_ratio(ours, dask_big)} | |"
            )
    lines.append("")
    for workload in ("chain", "fanout"):
        samples = bench.extra.get(f"rss-{workload}-{big}")
        if samples:
            before = statistics.median(s[0] for s in samples)
            peak = statistics.median(s[1] for s in samples)
            lines.append(
                f"Peak resident memory of the {big:,}-task {workload} run: {peak:.0f} MiB "
                f"({peak - before:.0f} MiB above the {before:.0f} MiB before the run)."
            )
    lines.append("")
    return lines


def write_docs(path: str, body: str) -> None:
    """Replace the text between the overhead markers of ``path`` with ``body``."""
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help="comma-separated systems to measure; peers that do not import are skipped",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("-n", type=int, default=1000, help="tasks in the chain and fan-out")
    parser.add_argument(
        "--big", type=int, default=10_000, help="tasks in the large graphs; 0 skips them"
    )
    parser.add_argument("--skip-leak", action="store_true", help="skip the repeated-run check")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that runs each measurement"
    )
    parser.add_argument("--write-docs", metavar="PATH", help="update the table in PATH")
    args = parser.parse_args()

    requested = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(requested) - set(ALL_SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(ALL_SYSTEMS)}")
    notes: dict[str, str] = {}
    systems = []
    for system in requested:
        error = _available(args.python, system)
        if error is None:
            systems.append(system)
        elif system in PEERS:
            notes[system] = f"`{error}` (install with `make bench`)"
            print(f"skipping {system}: {error}", flush=True)
        else:
            raise SystemExit(f"{system} does not import in {args.python}: {error}")

    bench = Bench(args, systems)
    try:
        bench.run()
    finally:
        bench.close()
    body = render(bench, notes, _versions(args.python, systems))
    print()
    print(body)
    if args.write_docs:
        write_docs(args.write_docs, body)
        print(f"updated {args.write_docs}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
