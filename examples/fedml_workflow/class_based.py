"""FedML's workflow example on the digits data, with only the import changed.

DataCollection, Training and Evaluation are ``Job`` subclasses written as for
``fedml.workflow``; switching to pipedsl is the single import line below.
DataCollection and Training are marked deterministic, so a second run
takes them from the artifact store and only Evaluation runs again.

    python examples/fedml_workflow/class_based.py [--store URL]
"""

from __future__ import annotations

import argparse

from pipedsl.fedml import Job, JobStatus, Workflow


class DataCollection(Job):
    deterministic = True

    def __init__(self, name):
        super().__init__(name)
        self.run_status = JobStatus.PROVISIONING

    def run(self):
        from sklearn.datasets import load_digits

        self.run_status = JobStatus.RUNNING
        digits = load_digits()
        fraction = self.input_data_dict.get("test_fraction", 0.25)
        cut = int(len(digits.target) * (1 - fraction))
        self.output_data_dict = {
            "train": ((digits.data[:cut] / 16).tolist(), digits.target[:cut].tolist()),
            "test": ((digits.data[cut:] / 16).tolist(), digits.target[cut:].tolist()),
        }
        self.run_status = JobStatus.FINISHED

    def status(self):
        return self.run_status

    def kill(self):
        self.run_status = JobStatus.FAILED


class Training(Job):
    deterministic = True

    def __init__(self, name):
        super().__init__(name)
        self.run_status = JobStatus.PROVISIONING

    def run(self):
        from sklearn.linear_model import LogisticRegression

        self.run_status = JobStatus.RUNNING
        features, labels = self.input_data_dict["data_collection"]["train"]
        model = LogisticRegression(max_iter=2000, C=0.5).fit(features, labels)
        self.output_data_dict = {
            "coef": model.coef_.tolist(),
            "intercept": model.intercept_.tolist(),
            "classes": model.classes_.tolist(),
        }
        self.run_status = JobStatus.FINISHED

    def status(self):
        return self.run_status

    def kill(self):
        self.run_status = JobStatus.FAILED


class Evaluation(Job):
    def __init__(self, name):
        super().__init__(name)
        self.run_status = JobStatus.PROVISIONING

    def run(self):
        import numpy as np

        self.run_status = JobStatus.RUNNING
        weights = self.input_data_dict["training"]
        features, labels = self.input_data_dict["data_collection"]["test"]
        scores = np.asarray(features) @ np.asarray(weights["coef"]).T + weights["intercept"]
        predicted = np.asarray(weights["classes"])[scores.argmax(axis=1)]
        accuracy = float((predicted == np.asarray(labels)).mean())
        self.output_data_dict = {"accuracy": round(accuracy, 4)}
        self.run_status = JobStatus.FINISHED

    def status(self):
        return self.run_status

    def kill(self):
        self.run_status = JobStatus.FAILED


def build_workflow(store: str | None = None) -> Workflow:
    data_collection = DataCollection("data_collection")
    training = Training("training")
    evaluation = Evaluation("evaluation")

    workflow = Workflow(name="ml_workflow", store=store)
    workflow.add_job(data_collection)
    workflow.add_job(training, dependencies=[data_collection])
    workflow.add_job(evaluation, dependencies=[training, data_collection])
    workflow.set_workflow_input({"test_fraction": 0.25})
    return workflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="artifact store URL (default ./.pipedsl)")
    options = parser.parse_args()
    workflow = build_workflow(options.store)
    run = workflow.run()
    print(f"accuracy {workflow.get_workflow_output()['accuracy']:.4f}")
    print(f"status {workflow.get_workflow_status().value}, run {run.run_id}: {run.counts()}")


if __name__ == "__main__":
    main()
