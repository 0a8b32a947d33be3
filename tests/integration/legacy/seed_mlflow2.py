"""Seed an MLflow 2.x server with MLflow 2's own client, as its users filled it.

Run by the interpreter of the old MLflow's venv (not the project's: it must not import
`migrator`), with the server's URL as its one argument; prints what it made as one JSON object
on its last line of output.

What it makes, the shapes an upgrade from MLflow 2 has to carry:
- two experiments with tags and a description, one more that is deleted;
- runs with params, user and system tags, metric histories (NaN too), a dataset input
  (MLflow 2.4+), artifacts in nested folders; a parent with two children, one child in the
  other experiment; a failed run; a deleted run;
- a model logged by `mlflow.sklearn.log_model` (run-level artifacts with an `MLmodel`: MLflow 2
  has no logged models), registered as versions 1-3 of `legacy-iris` (version 2 deleted: a
  gap), version 3 in stage `Production` and under alias `champion` (aliases: MLflow 2.3+),
  and version 4 created with its source as `runs:/<id>/model` (`register_model` stores the
  resolved `mlflow-artifacts:/…` location instead);
- on MLflow 2.21+, a prompt with two versions (a registered model underneath).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")


def main(url: str) -> dict:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    c = MlflowClient(url, registry_uri=url)
    out: dict = {"mlflow_version": mlflow.__version__, "runs": {}, "versions": {}}
    exps = {}
    for name in ("legacy/train", "legacy/eval", "legacy/gone"):
        exps[name] = c.create_experiment(
            name, tags={"team": "ml", "mlflow.note.content": f"{name}: made by MLflow 2"}
        )
    out["experiments"] = exps
    base = 1_650_000_000_000

    def run(exp: str, i: int, parent: str | None = None, status: str = "FINISHED") -> str:
        tags = {"mlflow.user": "legacy-user", "mlflow.source.name": "train.py", "k": str(i)}
        if parent:
            tags["mlflow.parentRunId"] = parent
        r = c.create_run(exps[exp], start_time=base + i * 1000, tags=tags, run_name=f"r{i}")
        rid = r.info.run_id
        metrics = [Metric("loss", 1.0 / (s + 1), base + s, s) for s in range(30)]
        metrics.append(Metric("nan", math.nan, base, 0))
        c.log_batch(rid, metrics=metrics, params=[Param("lr", str(0.1 * i)), Param("i", str(i))],
                    tags=[RunTag("stage", "train")])
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "plots", "deep"))
            with open(os.path.join(d, "notes.txt"), "w") as f:
                f.write(f"run {i}\n" * 10)
            with open(os.path.join(d, "plots", "deep", "curve.csv"), "w") as f:
                f.write("".join(f"{s},{s * s}\n" for s in range(20)))
            c.log_artifacts(rid, d)
        c.set_terminated(rid, status, end_time=base + i * 1000 + 500)
        out["runs"][rid] = {"experiment": exp, "parent": parent, "status": status}
        return rid

    parent = run("legacy/train", 1)
    run("legacy/train", 2, parent=parent)
    run("legacy/eval", 3, parent=parent)  # a child in another experiment
    run("legacy/train", 4, status="FAILED")
    deleted = run("legacy/train", 5)
    c.delete_run(deleted)
    out["deleted_run"] = deleted
    run("legacy/gone", 6)
    c.delete_experiment(exps["legacy/gone"])

    # A dataset input (MLflow 2.4+).
    out["datasets"] = hasattr(mlflow, "log_input")
    if out["datasets"]:
        import pandas as pd

        with mlflow.start_run(experiment_id=exps["legacy/eval"], run_name="with-dataset") as r:
            frame = pd.DataFrame({"x": [1, 2, 3], "y": [0, 1, 0]})
            mlflow.log_input(mlflow.data.from_pandas(frame, name="tiny"), context="training")
            mlflow.log_metric("acc", 0.9)
            out["runs"][r.info.run_id] = {"experiment": "legacy/eval", "parent": None,
                                           "status": "FINISHED", "dataset": "tiny"}

    # A model logged the MLflow 2 way (run artifacts with an MLmodel), registered thrice.
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=200).fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    trained = []
    for i in (1, 2):
        with mlflow.start_run(experiment_id=exps["legacy/train"], run_name=f"train-{i}") as r:
            mlflow.log_param("C", 1.0)
            mlflow.sklearn.log_model(model, "model")
            trained.append(r.info.run_id)
            out["runs"][r.info.run_id] = {"experiment": "legacy/train", "parent": None,
                                           "status": "FINISHED", "model": True}
    name = "legacy-iris"
    c.create_registered_model(name, tags={"owner": "ml"}, description="made by MLflow 2")
    for rid in (trained[0], trained[0], trained[1]):
        mv = mlflow.register_model(f"runs:/{rid}/model", name)
        out["versions"][mv.version] = {"source": mv.source, "run_id": mv.run_id}
    # The client call that keeps a `runs:/` source as it is (register_model resolves it).
    mv = c.create_model_version(name, f"runs:/{trained[1]}/model", trained[1])
    out["versions"][mv.version] = {"source": mv.source, "run_id": mv.run_id}
    c.delete_model_version(name, "2")
    out["versions"].pop("2")
    c.transition_model_version_stage(name, "3", "Production")
    out["aliases"] = hasattr(c, "set_registered_model_alias")  # MLflow 2.3+
    if out["aliases"]:
        c.set_registered_model_alias(name, "champion", "3")
    c.update_model_version(name, "1", description="first")
    c.set_model_version_tag(name, "1", "validated", "yes")
    out["model"] = name
    # A prompt (MLflow 2.21+: a registered model tagged `mlflow.prompt.is_prompt`).
    out["prompts"] = 0
    if hasattr(mlflow, "register_prompt"):
        mlflow.register_prompt("legacy-greeting", "Hello {{name}}", commit_message="first")
        mlflow.register_prompt("legacy-greeting", "Hi {{name}}!", commit_message="second")
        out["prompts"] = 1
    out["predict_input"] = [[0.5], [2.5]]
    out["predictions"] = [int(p) for p in model.predict([[0.5], [2.5]])]
    return out


if __name__ == "__main__":
    result = main(sys.argv[1])
    print(json.dumps(result))
