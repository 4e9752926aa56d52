"""Train and evaluate two classifiers on scikit-learn's bundled digits data.

The pipeline collects the data, splits and scales it, trains a logistic
regression and a random forest at the same time, saves each model as a
checkpoint file artifact, and evaluates both on the held-out split. Run it
twice: the second run takes every task from the artifact store.

    python examples/digits/pipeline.py [--store URL] [--executor NAME]
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time

import numpy as np

from pipedsl import File, job, workflow


@job
def collect() -> dict:
    """Load the 1,797 8x8 digit images that ship with scikit-learn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return {"images": digits.data.astype(np.float32), "labels": digits.target.astype(np.int64)}


@job
def split(data: dict, test_fraction: float = 0.25, seed: int = 0) -> tuple[dict, dict]:
    """Shuffle with a fixed seed and split into train and test sets."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data["labels"]))
    cut = int(len(order) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return (
        {"x": data["images"][train], "y": data["labels"][train]},
        {"x": data["images"][test], "y": data["labels"][test]},
    )


@job
def fit_scaler(train: dict) -> dict:
    """Per-pixel mean and standard deviation of the training images."""
    return {"mean": train["x"].mean(axis=0), "std": train["x"].std(axis=0) + 1e-6}


@job
def scale(split_data: dict, scaler: dict) -> dict:
    return {"x": (split_data["x"] - scaler["mean"]) / scaler["std"], "y": split_data["y"]}


@job(retries=1)
def train(train_set: dict, model: str, seed: int = 0) -> File:
    """Fit one model and save it as a checkpoint file."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if model == "logistic":
        estimator = LogisticRegression(max_iter=2000, C=0.5)
    elif model == "forest":
        estimator = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
    else:
        raise ValueError(f"unknown model {model!r}; use 'logistic' or 'forest'")
    estimator.fit(train_set["x"], train_set["y"])
    folder = tempfile.mkdtemp(prefix="pipedsl-digits-")
    path = os.path.join(folder, f"{model}.pkl")
    with open(path, "wb") as handle:
        pickle.dump(estimator, handle)
    return File(path)


@job
def evaluate(checkpoint: File, test_set: dict) -> dict:
    """Accuracy and per-class recall of a saved model on the test split."""
    with checkpoint.open("rb") as handle:
        estimator = pickle.load(handle)
    predicted = estimator.predict(test_set["x"])
    accuracy = float((predicted == test_set["y"]).mean())
    recall = {
        str(label): float((predicted[test_set["y"] == label] == label).mean())
        for label in range(10)
    }
    return {"accuracy": round(accuracy, 4), "worst_class_recall": round(min(recall.values()), 4)}


@workflow
def digits_pipeline(test_fraction: float = 0.25, seed: int = 0) -> dict:
    data = collect()
    train_raw, test_raw = split(data, test_fraction, seed)
    scaler = fit_scaler(train_raw)
    train_set, test_set = scale(train_raw, scaler), scale(test_raw, scaler)
    metrics = {}
    for model in ("logistic", "forest"):
        checkpoint = train(train_set, model, seed)
        metrics[model] = evaluate(checkpoint, test_set)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="artifact store URL (default ./.pipedsl)")
    parser.add_argument("--executor", default=None, help="inline, threads, processes or dask")
    options = parser.parse_args()

    started = time.perf_counter()
    run = digits_pipeline.run(store=options.store, executor=options.executor)
    metrics = run.result()
    elapsed = time.perf_counter() - started
    counts = run.counts()
    for model, values in metrics.items():
        print(f"{model:<9} accuracy {values['accuracy']:.4f}  "
              f"worst-class recall {values['worst_class_recall']:.4f}")
    print(
        f"run {run.run_id}: {counts.get('done', 0)} tasks executed, "
        f"{counts.get('cached', 0)} from cache, {elapsed:.2f}s"
    )


if __name__ == "__main__":
    main()
