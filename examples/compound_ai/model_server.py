"""Serve one model of the compound AI example over HTTP on 127.0.0.1.

    python examples/compound_ai/model_server.py pca PCA_CHECKPOINT --port 8101
    python examples/compound_ai/model_server.py classifier CLF_CHECKPOINT --port 8102

Routes: ``POST /predict`` (the PCA takes ``{"pixels": [64 numbers]}`` and
returns ``{"features": [...]}``; the classifier takes ``{"features": [...]}``
and returns ``{"label": int, "probabilities": [10 numbers]}``), ``GET /health``
and ``GET /stats`` (``{"requests": n}``: predictions served so far).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import load_checkpoint  # noqa: E402

logger = logging.getLogger("compound_ai.model_server")

INPUT_FIELD = {"pca": "pixels", "classifier": "features"}


def create_model_app(kind: str, checkpoint: str, output_field: str | None = None) -> Starlette:
    """Build the app of one model; ``output_field`` renames the PCA's output field."""
    if kind not in INPUT_FIELD:
        raise ValueError(f"unknown model kind {kind!r}; use 'pca' or 'classifier'")
    estimator: Any = load_checkpoint(checkpoint)
    input_field = INPUT_FIELD[kind]
    stats = {"requests": 0}

    async def predict(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            row = np.asarray(body[input_field], dtype=np.float64).reshape(1, -1)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse(
                {"error": f"invalid request: needs a list of numbers in {input_field!r} ({exc})"},
                status_code=422,
            )
        expected = estimator.n_features_in_
        if row.shape[1] != expected:
            return JSONResponse(
                {"error": f"{input_field!r} has {row.shape[1]} values; expected {expected}"},
                status_code=422,
            )
        stats["requests"] += 1
        if kind == "pca":
            features = estimator.transform(row)[0].tolist()
            return JSONResponse({output_field or "features": features})
        probabilities = estimator.predict_proba(row)[0]
        label = int(estimator.classes_[int(np.argmax(probabilities))])
        return JSONResponse({"label": label, "probabilities": probabilities.tolist()})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": kind})

    async def read_stats(request: Request) -> JSONResponse:
        return JSONResponse(stats)

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health),
            Route("/stats", read_stats),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(INPUT_FIELD), help="which model to serve")
    parser.add_argument("checkpoint", help="path of the model's pickle checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8101, help="TCP port")
    parser.add_argument("--output-field", default=None, help="rename the PCA output field")
    options = parser.parse_args()
    app = create_model_app(options.kind, options.checkpoint, options.output_field)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
