"""Train both models and start a model server for each on 127.0.0.1.

    python examples/compound_ai/deploy.py [--store URL] [--ttl 30m]

Prints the ``export`` lines that point ``workflow.py`` at the two servers.
The servers keep running for ``--ttl``; running this script again within
that time reuses them instead of starting new ones.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipedsl import File, job, workflow
from pipedsl.endpoints import ModelServer, deploy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from models import train_models  # noqa: E402

SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_server.py")


@job
def server_for(kind: str, checkpoint: File, ttl: str, keep: bool) -> ModelServer:
    """Describe the model server process of one checkpoint."""
    return ModelServer(
        command=(sys.executable, SERVER_SCRIPT, kind, checkpoint.path, "--port", "{port}"),
        url_path="/predict",
        ttl=ttl,
        keep=keep,
    )


@workflow
def deploy_models(n_components: int = 16, ttl: str = "30m", keep: bool = True) -> dict:
    """Train the PCA and the classifier and deploy each behind its own URL."""
    models = train_models(n_components)
    return {
        "pca": deploy(server_for("pca", models["pca"], ttl, keep)),
        "classifier": deploy(server_for("classifier", models["classifier"], ttl, keep)),
        "accuracy": models["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="artifact store URL (default ./.pipedsl)")
    parser.add_argument("--ttl", default="30m", help="how long the servers run, e.g. 30m")
    options = parser.parse_args()
    urls = deploy_models.run(ttl=options.ttl, store=options.store).result()
    print(f"# test accuracy of PCA + classifier: {urls['accuracy']:.4f}")
    print(f"export COMPOUND_AI_PCA_URL={urls['pca']}")
    print(f"export COMPOUND_AI_CLASSIFIER_URL={urls['classifier']}")


if __name__ == "__main__":
    main()
