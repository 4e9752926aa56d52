"""Train the two models of the compound AI example on scikit-learn's digits.

Model 1 is a PCA that maps the 64 pixels of an 8x8 digit image to
``n_components`` features. Model 2 is a logistic regression trained on the
PCA output of the training split. Each model is saved as a pickle checkpoint
file artifact, so a second run of :func:`train_models` takes both from the
artifact store.

    python examples/compound_ai/models.py [--store URL]
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile

import numpy as np

from pipedsl import File, job, workflow


@job
def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> dict:
    """Load the 1,797 bundled digit images and split them with a fixed seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    cut = int(len(order) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    x = digits.data.astype(np.float64)
    y = digits.target.astype(np.int64)
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def _save(estimator: object, name: str) -> File:
    folder = tempfile.mkdtemp(prefix="pipedsl-compound-ai-")
    path = os.path.join(folder, f"{name}.pkl")
    with open(path, "wb") as handle:
        pickle.dump(estimator, handle)
    return File(path)


@job
def fit_pca(data: dict, n_components: int = 16, seed: int = 0) -> File:
    """Fit a PCA on the training pixels and save it as a checkpoint."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, random_state=seed).fit(data["x_train"])
    return _save(pca, "pca")


@job
def fit_classifier(data: dict, pca_checkpoint: File) -> File:
    """Fit a logistic regression on the PCA features of the training split."""
    from sklearn.linear_model import LogisticRegression

    pca = load_checkpoint(pca_checkpoint)
    features = pca.transform(data["x_train"])
    classifier = LogisticRegression(max_iter=2000).fit(features, data["y_train"])
    return _save(classifier, "classifier")


@job
def test_accuracy(data: dict, pca_checkpoint: File, classifier_checkpoint: File) -> float:
    """Accuracy of PCA followed by the classifier on the held-out split."""
    pca = load_checkpoint(pca_checkpoint)
    classifier = load_checkpoint(classifier_checkpoint)
    predicted = classifier.predict(pca.transform(data["x_test"]))
    return round(float((predicted == data["y_test"]).mean()), 4)


def load_checkpoint(checkpoint: str | os.PathLike[str]) -> object:
    """Load a pickled scikit-learn estimator written by this example."""
    # Pickle runs code while loading: load only checkpoints this example wrote.
    with open(checkpoint, "rb") as handle:
        return pickle.load(handle)


@workflow
def train_models(n_components: int = 16, seed: int = 0) -> dict:
    """Train both models; return their checkpoints and the test accuracy."""
    data = load_digits_split(seed=seed)
    pca = fit_pca(data, n_components, seed)
    classifier = fit_classifier(data, pca)
    return {"pca": pca, "classifier": classifier, "accuracy": test_accuracy(data, pca, classifier)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="artifact store URL (default ./.pipedsl)")
    options = parser.parse_args()
    models = train_models.run(store=options.store).result()
    print(f"pca checkpoint        {models['pca'].path}")
    print(f"classifier checkpoint {models['classifier'].path}")
    print(f"test accuracy         {models['accuracy']:.4f}")


if __name__ == "__main__":
    main()
