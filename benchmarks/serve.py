"""Overhead of ``pipedsl serve`` over calling the two model endpoints directly.

Trains the compound AI example's models, starts both model servers and the
served ``classify_digit`` workflow as processes on 127.0.0.1, and measures:

* latency per request of the direct chain (client -> PCA -> classifier)
  against ``POST /run`` of the served workflow, with endpoint caching off (each
  request calls both models) and on (a repeated image, served from the store);
* requests per second with 1 and with 8 concurrent clients.

Every phase sends a bounded number of requests to loopback addresses only.

    python benchmarks/serve.py [--requests 200] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import httpx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "compound_ai")
sys.path.insert(0, EXAMPLE)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], health: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    process = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args} exited with code {process.returncode}")
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{health} was not healthy within 60s")


def measure(call: Callable[[int], None], requests: int, clients: int) -> dict[str, float]:
    """Send ``requests`` calls from ``clients`` threads; return latency and rate."""
    latencies: list[float] = []

    def one(index: int) -> None:
        started = time.perf_counter()
        call(index)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "mean_ms": 1000 * statistics.fmean(latencies),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(len(latencies) * 0.95) - 1],
        "rps": requests / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per phase")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests first")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8], help="client thread counts"
    )
    options = parser.parse_args()
    if options.requests < 1 or options.requests > 5000:
        parser.error("--requests must be between 1 and 5000")

    import models
    from sklearn.datasets import load_digits

    workdir = tempfile.mkdtemp(prefix="pipedsl-bench-serve-")
    trained = models.train_models.run(store=os.path.join(workdir, "train"), progress=False)
    checkpoints = trained.result()
    images = load_digits().data.astype(np.float64)

    ports = {name: free_port() for name in ("pca", "classifier", "cached", "uncached")}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    processes = []
    try:
        for kind in ("pca", "classifier"):
            processes.append(
                start(
                    [
                        sys.executable, os.path.join(EXAMPLE, "model_server.py"), kind,
                        checkpoints[kind].path, "--port", str(ports[kind]),
                    ],
                    url[kind] + "/health",
                )  # fmt: skip
            )
        env = {
            "COMPOUND_AI_PCA_URL": url["pca"] + "/predict",
            "COMPOUND_AI_CLASSIFIER_URL": url["classifier"] + "/predict",
        }
        target = os.path.join(EXAMPLE, "workflow.py") + ":classify_digit"
        for name, cache in (("cached", "1"), ("uncached", "0")):
            processes.append(
                start(
                    [
                        sys.executable, "-m", "pipedsl.serve", target, "--port",
                        str(ports[name]), "--store", os.path.join(workdir, name),
                        "--log-level", "warning", "--max-concurrency", "8",
                    ],
                    url[name] + "/health",
                    env={**env, "COMPOUND_AI_CACHE": cache},
                )  # fmt: skip
            )

        client = httpx.Client(
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
            timeout=60,
            trust_env=False,
        )

        def direct(index: int) -> None:
            pixels = images[index % len(images)].tolist()
            features = client.post(url["pca"] + "/predict", json={"pixels": pixels})
            features.raise_for_status()
            answer = client.post(url["classifier"] + "/predict", json=features.json())
            answer.raise_for_status()

        def served(name: str, same_image: bool) -> Callable[[int], None]:
            def call(index: int) -> None:
                row = 0 if same_image else index % len(images)
                response = client.post(
                    url[name] + "/run", json={"pixels": images[row].tolist()}
                )
                response.raise_for_status()

            return call

        phases = {
            "direct: PCA then classifier": direct,
            "pipedsl serve, endpoint cache off": served("uncached", False),
            "pipedsl serve, cached (same image)": served("cached", True),
        }
        rows = []
        for label, call in phases.items():
            for index in range(options.warmup):
                call(index)
            for clients in options.concurrency:
                result = measure(call, options.requests, clients)
                rows.append((label, clients, result))
                print(
                    f"{label:<38} clients={clients:<2} mean {result['mean_ms']:7.2f} ms  "
                    f"p50 {result['p50_ms']:7.2f} ms  p95 {result['p95_ms']:7.2f} ms  "
                    f"{result['rps']:7.1f} req/s",
                    flush=True,
                )
        client.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)

    print()
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {options.requests} requests per row"
    )
    print("| path | clients | mean ms | p50 ms | p95 ms | req/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, clients, result in rows:
        print(
            f"| {label} | {clients} | {result['mean_ms']:.2f} | {result['p50_ms']:.2f} | "
            f"{result['p95_ms']:.2f} | {result['rps']:.1f} |"
        )
    baseline = {clients: result for label, clients, result in rows if label.startswith("direct")}
    for label, clients, result in rows:
        if not label.startswith("direct") and clients == 1 and 1 in baseline:
            overhead = result["p50_ms"] - baseline[1]["p50_ms"]
            print(f"per-request overhead at p50, 1 client, {label}: {overhead:+.2f} ms")


if __name__ == "__main__":
    main()
