"""A hyperparameter sweep over a list that a job computes at run time.

``candidates`` decides which regularisation strengths to try from the size
of the training set, so the number of models is known only once the data is
loaded. ``score.map`` trains and scores one model per candidate, at most two
at a time; each candidate is its own cached task, so widening the grid
trains only the new candidates. ``when`` deploys the best model only if it
clears the accuracy bar.

    python examples/sweep/sweep.py [--bar 0.95] [--grid-size 5] [--store URL]
"""

from __future__ import annotations

import argparse

import numpy as np

from pipedsl import job, when, workflow


@job
def load_digits_split(seed: int = 0) -> dict:
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    cut = int(0.75 * len(order))
    return {
        "x_train": data.data[order[:cut]] / 16.0,
        "y_train": data.target[order[:cut]],
        "x_test": data.data[order[cut:]] / 16.0,
        "y_test": data.target[order[cut:]],
    }


@job
def candidates(data: dict, grid_size: int) -> list[float]:
    """Regularisation strengths around 1/n, as many as ``grid_size``."""
    n = len(data["y_train"])
    centre = np.log10(1000.0 / n)
    return [float(c) for c in np.round(np.logspace(centre - 2, centre + 2, grid_size), 6)]


@job
def score(strength: float, data: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=strength, max_iter=3000)
    model.fit(data["x_train"], data["y_train"])
    accuracy = float(model.score(data["x_test"], data["y_test"]))
    return {"C": strength, "accuracy": round(accuracy, 4)}


@job
def best(results: list) -> dict:
    return max(results, key=lambda result: result["accuracy"])


@job
def clears(result: dict, bar: float) -> bool:
    return result["accuracy"] >= bar


@job
def deploy(result: dict) -> str:
    return f"deployed C={result['C']} (accuracy {result['accuracy']})"


@workflow
def sweep(grid_size: int = 5, bar: float = 0.95) -> dict:
    data = load_digits_split()
    results = score.map(candidates(data, grid_size), data=data, max_parallel=2)
    winner = best(results)
    decision = when(
        clears(winner, bar),
        then=lambda: deploy(winner),
        otherwise=lambda: "kept the current model",
    )
    return {"results": results, "best": winner, "decision": decision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid-size", type=int, default=5)
    parser.add_argument("--bar", type=float, default=0.95)
    parser.add_argument("--store", default=None)
    parser.add_argument("--executor", default=None)
    options = parser.parse_args()
    run = sweep.run(options.grid_size, options.bar, store=options.store, executor=options.executor)
    output = run.result()
    for result in output["results"]:
        print(f"C={result['C']:<10g} accuracy {result['accuracy']:.4f}")
    print(output["decision"])
    trained = [t for t in run.tasks if t.job == "score"]
    fresh = sum(1 for t in trained if t.status == "done")
    if trained:
        print(f"run {run.run_id}: trained {fresh} of {len(trained)} candidates")
    else:
        # The map's gathered results were a cache hit, so it was not expanded.
        print(f"run {run.run_id}: every candidate's score came from the cache")


if __name__ == "__main__":
    main()
