"""Module-level jobs for the dynamic-graph suite (importable by workers)."""

from __future__ import annotations

import time

from pipedsl import job, when, workflow


@job
def load(n: int) -> list:
    return [i * 10 for i in range(n)]


@job
def train(shard: int, scale: int = 1) -> dict:
    return {"shard": shard, "weight": shard * scale}


@job
def summarize(models: list) -> int:
    return sum(m["weight"] for m in models)


@workflow
def per_shard(n: int) -> int:
    return summarize(train.map(load(n), scale=2))


@job
def accuracy(level: float) -> float:
    return level


@job
def meets(score: float, bar: float) -> bool:
    return score >= bar


@job
def deploy(score: float) -> str:
    return f"deployed at {score}"


@job
def report(score: float) -> str:
    return f"kept the old model, score {score}"


@workflow
def release(level: float, bar: float = 0.9) -> str:
    score = accuracy(level)
    return when(
        meets(score, bar),
        then=lambda: deploy(score),
        otherwise=lambda: report(score),
    )


@job
def newton_step(x: float) -> float:
    return (x + 2.0 / x) / 2.0


@job(dynamic=True)
def converge(x: float, tolerance: float = 1e-10):
    """Iterate Newton steps for sqrt(2) until they stop moving."""
    following = newton_step.fn(x)
    if abs(following - x) < tolerance:
        return x
    return converge(newton_step(x), tolerance)


@workflow
def square_root() -> float:
    return converge(1.0)


@job(timeout=1)
def stuck() -> int:
    time.sleep(30)
    return 0


@workflow
def inner_stage() -> int:
    return stuck()


@workflow
def outer_pipeline() -> int:
    return summarize([{"weight": inner_stage()}])


@job
def sometimes(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"cannot handle {x}")
    return x


@job(cache=False)
def timed(x: int) -> tuple:
    started = time.time()
    time.sleep(0.2)
    return (started, time.time())
