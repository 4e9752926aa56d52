"""The same pipeline as class_based.py, written with pipedsl's ``@job``.

    python examples/fedml_workflow/function_based.py [--store URL]
"""

from __future__ import annotations

import argparse

import numpy as np

from pipedsl import job, workflow


@job
def data_collection(test_fraction: float = 0.25) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    cut = int(len(digits.target) * (1 - test_fraction))
    return {
        "train": (digits.data[:cut] / 16, digits.target[:cut]),
        "test": (digits.data[cut:] / 16, digits.target[cut:]),
    }


@job
def training(data: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    features, labels = data["train"]
    model = LogisticRegression(max_iter=2000, C=0.5).fit(features, labels)
    return {"coef": model.coef_, "intercept": model.intercept_, "classes": model.classes_}


@job
def evaluation(weights: dict, data: dict) -> dict:
    features, labels = data["test"]
    scores = features @ weights["coef"].T + weights["intercept"]
    predicted = weights["classes"][scores.argmax(axis=1)]
    return {"accuracy": round(float((predicted == labels).mean()), 4)}


@workflow
def ml_workflow(test_fraction: float = 0.25) -> dict:
    data = data_collection(test_fraction)
    return evaluation(training(data), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="artifact store URL (default ./.pipedsl)")
    options = parser.parse_args()
    run = ml_workflow.run(0.25, store=options.store)
    print(f"accuracy {run.result()['accuracy']:.4f}")
    print(f"run {run.run_id}: {run.counts()}")


if __name__ == "__main__":
    main()
