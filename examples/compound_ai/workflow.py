"""The compound AI workflow: an image goes through the PCA, then the classifier.

Each model runs behind its own HTTP endpoint (see ``model_server.py``). The
endpoint URLs come from environment variables, so the same module serves
against any deployment::

    COMPOUND_AI_PCA_URL=http://127.0.0.1:8101/predict \\
    COMPOUND_AI_CLASSIFIER_URL=http://127.0.0.1:8102/predict \\
    pipedsl serve examples/compound_ai/workflow.py:classify_digit --port 8000

``COMPOUND_AI_CACHE=0`` calls both endpoints on every request instead of
reusing cached answers for a repeated image.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, Field

from pipedsl import workflow
from pipedsl.endpoints import Endpoint


class Pixels(BaseModel):
    """An 8x8 digit image, row by row, with values from 0 to 16."""

    pixels: list[float] = Field(min_length=64, max_length=64)


class Features(BaseModel):
    """The PCA projection of an image."""

    features: list[float]


class Prediction(BaseModel):
    """The predicted digit and the probability of each of the ten digits."""

    label: int
    probabilities: list[float]


CACHE = os.environ.get("COMPOUND_AI_CACHE", "1") != "0"

pca = Endpoint(
    os.environ.get("COMPOUND_AI_PCA_URL", "http://127.0.0.1:8101/predict"),
    name="pca",
    version="1",
    request=Pixels,
    response=Features,
    timeout="10s",
    retries=3,
    max_concurrency=8,
    cache=CACHE,
)
classifier = Endpoint(
    os.environ.get("COMPOUND_AI_CLASSIFIER_URL", "http://127.0.0.1:8102/predict"),
    name="classifier",
    version="1",
    request=Features,
    response=Prediction,
    timeout="10s",
    retries=3,
    max_concurrency=8,
    cache=CACHE,
)


@workflow
def classify_digit(
    pixels: Annotated[list[float], Field(min_length=64, max_length=64)],
) -> Prediction:
    """Project an 8x8 image with the PCA endpoint, then classify the projection."""
    return classifier(pca(Pixels(pixels=pixels)))
