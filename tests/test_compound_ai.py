"""The compound AI example end to end: trained models behind real servers."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from conftest import ROOT, free_port
from pipedsl import workflow
from pipedsl.endpoints import Endpoint, EndpointSchemaError
from pipedsl.serve import BackgroundServer

EXAMPLE = os.path.join(ROOT, "examples", "compound_ai")
sys.path.insert(0, EXAMPLE)

import models  # noqa: E402
from model_server import create_model_app  # noqa: E402

pytestmark = pytest.mark.slow


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not healthy within {seconds}s")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train both models with the example workflow; load them in this process."""
    store = str(tmp_path_factory.mktemp("compound") / "store")
    result = models.train_models.run(store=store, progress=False).result()
    with open(result["pca"].path, "rb") as handle:
        pca = pickle.load(handle)
    with open(result["classifier"].path, "rb") as handle:
        classifier = pickle.load(handle)
    return {
        "store": store,
        "pca_path": result["pca"].path,
        "classifier_path": result["classifier"].path,
        "accuracy": result["accuracy"],
        "pca": pca,
        "classifier": classifier,
    }


@pytest.fixture(scope="module")
def deployment(trained, tmp_path_factory):
    """Both model servers and the served workflow, each a process on 127.0.0.1."""
    processes: list[subprocess.Popen] = []
    logs = tmp_path_factory.mktemp("logs")

    def start(args: list[str], health: str, name: str, env=None) -> None:
        log = open(logs / f"{name}.log", "wb")
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        processes.append(process)
        _wait_healthy(health, process)

    ports = {name: free_port() for name in ("pca", "classifier", "serve", "uncached")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    server = os.path.join(EXAMPLE, "model_server.py")
    try:
        for kind in ("pca", "classifier"):
            start(
                [sys.executable, server, kind, trained[f"{kind}_path"], "--port", str(ports[kind])],
                urls[kind] + "/health",
                kind,
            )
        env = {
            "COMPOUND_AI_PCA_URL": urls["pca"] + "/predict",
            "COMPOUND_AI_CLASSIFIER_URL": urls["classifier"] + "/predict",
        }
        target = os.path.join(EXAMPLE, "workflow.py") + ":classify_digit"
        for name, cache in (("serve", "1"), ("uncached", "0")):
            start(
                [
                    sys.executable, "-m", "pipedsl.serve", target,
                    "--port", str(ports[name]),
                    "--store", trained["store"] + "-" + name,
                    "--log-level", "warning",
                ],
                urls[name] + "/health",
                name,
                env={**env, "COMPOUND_AI_CACHE": cache},
            )  # fmt: skip
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.data.astype(np.float64), data.target


def _hits(url: str) -> int:
    return int(httpx.get(url + "/stats").json()["requests"])


def test_models_learn_digits(trained):
    assert trained["accuracy"] >= 0.9
    assert trained["pca"].n_components_ == 16


def test_model_endpoints_match_models(deployment, trained, digits):
    images, _ = digits
    for index in (0, 17, 1000):
        features = httpx.post(
            deployment["pca"] + "/predict", json={"pixels": images[index].tolist()}
        ).json()["features"]
        expected = trained["pca"].transform(images[index : index + 1])[0]
        np.testing.assert_allclose(features, expected, rtol=1e-12, atol=1e-12)
        answer = httpx.post(
            deployment["classifier"] + "/predict", json={"features": features}
        ).json()
        probabilities = trained["classifier"].predict_proba(expected.reshape(1, -1))[0]
        np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-12)


def test_served_workflow_matches_direct_models(deployment, trained, digits):
    images, labels = digits
    indexes = list(range(0, 1797, 90))
    direct = trained["classifier"].predict_proba(trained["pca"].transform(images[indexes]))
    correct = 0
    for row, index in enumerate(indexes):
        response = httpx.post(
            deployment["serve"] + "/run", json={"pixels": images[index].tolist()}, timeout=30
        )
        assert response.status_code == 200, response.text
        output = response.json()["output"]
        assert output["label"] == int(np.argmax(direct[row]))
        np.testing.assert_allclose(output["probabilities"], direct[row], atol=1e-12)
        correct += output["label"] == labels[index]
    assert correct >= 0.9 * len(indexes)


def test_served_workflow_cache(deployment, digits):
    images, _ = digits
    payload = {"pixels": images[42].tolist()}
    before = (_hits(deployment["pca"]), _hits(deployment["classifier"]))
    first = httpx.post(deployment["serve"] + "/run", json=payload, timeout=30).json()
    second = httpx.post(deployment["serve"] + "/run", json=payload, timeout=30).json()
    after = (_hits(deployment["pca"]), _hits(deployment["classifier"]))
    assert first["output"] == second["output"]
    assert first["tasks"] == {"done": 2}
    assert second["tasks"] == {"cached": 2}
    assert after == (before[0] + 1, before[1] + 1)


def test_uncached_workflow_calls_models_each_time(deployment, digits):
    images, _ = digits
    payload = {"pixels": images[43].tolist()}
    before = (_hits(deployment["pca"]), _hits(deployment["classifier"]))
    for _ in range(2):
        body = httpx.post(deployment["uncached"] + "/run", json=payload, timeout=30).json()
        assert body["tasks"] == {"done": 2}
    after = (_hits(deployment["pca"]), _hits(deployment["classifier"]))
    assert after == (before[0] + 2, before[1] + 2)


def test_served_workflow_rejects_bad_image(deployment):
    short = httpx.post(deployment["serve"] + "/run", json={"pixels": [0.0] * 10})
    assert short.status_code == 422
    assert "'pixels'" in short.json()["error"]
    text = httpx.post(deployment["serve"] + "/run", json={"pixels": "a picture"})
    assert text.status_code == 422
    assert text.json()["errors"][0]["field"] == "pixels"


def test_renamed_output_field_names_both_models(trained, digits):
    # A PCA server that returns {"embedding": ...} where the classifier
    # expects "features".
    import workflow as example

    images, _ = digits
    renamed = create_model_app("pca", trained["pca_path"], output_field="embedding")
    real = create_model_app("classifier", trained["classifier_path"])
    with BackgroundServer(renamed, port=free_port()) as pca_server, BackgroundServer(
        real, port=free_port()
    ) as classifier_server:
        pca = Endpoint(pca_server.url + "/predict", name="pca", request=example.Pixels)
        classifier = Endpoint(
            classifier_server.url + "/predict",
            name="classifier",
            request=example.Features,
            response=example.Prediction,
        )

        @workflow
        def classify(pixels: list[float]) -> dict:
            return classifier(pca(example.Pixels(pixels=pixels)))

        with pytest.raises(EndpointSchemaError) as caught:
            classify(images[0].tolist(), progress=False)
        message = str(caught.value)
        assert "'pca'" in message
        assert "'classifier' (Features)" in message
        assert "field 'features'" in message
        assert "['embedding']" in message
        assert json.loads(httpx.get(classifier_server.url + "/stats").text) == {"requests": 0}


def test_deploy_models_stops_servers_after_run(trained, tmp_path, monkeypatch):
    import deploy as example_deploy

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    urls = example_deploy.deploy_models.run(keep=False, store=trained["store"], progress=False)
    result = urls.result()
    assert result["accuracy"] == trained["accuracy"]
    # Once the run has ended its callbacks stop both servers.
    deadline = time.monotonic() + 15
    down = set()
    while time.monotonic() < deadline and len(down) < 2:
        for name in ("pca", "classifier"):
            try:
                httpx.get(result[name].replace("/predict", "/health"), timeout=0.5)
            except httpx.TransportError:
                down.add(name)
        time.sleep(0.2)
    assert down == {"pca", "classifier"}
