"""Registered models, model versions and MLflow 3 logged models, on real servers.

The source (conftest) holds `demo-classifier` with versions 1, 2, 4 and 6 (3 and 5 deleted),
stages, aliases and descriptions; v1 registered from a logged model made by
`mlflow.pyfunc.log_model`, v2 from `runs:/`, v4 from a run's artifact path, v6 from a run
deleted afterwards. Deleted runs are not migrated here, so v6's files are staged from the
version's own source.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

import duckdb
import mlflow
import pytest
from mlflow import MlflowClient

from migrator.cli import main
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.manifest import read_verify
from migrator.pipeline import run_command
from migrator.seed import pointing_at
from migrator.staging import open_staging

from .conftest import Source, folder_hashes, s3_staging

NAME = "demo-classifier"
OTHER = "team.forecast model"


@pytest.fixture(scope="module")
def target_models(workdir: Any) -> Any:
    from migrator import services

    with services.mlflow_server("target-models", services.POSTGRES, workdir) as svc:
        yield svc


@pytest.fixture(scope="module")
def done(source: Source, target_models: Any, s3: Any) -> dict[str, Any]:
    opts = Options(source=source.url, target=target_models.url, staging=s3_staging(),
                   ray_address="none")
    first = run_command("migrate", opts, make_executor)
    second = run_command("migrate", opts, make_executor)
    verified = run_command("verify", opts, make_executor)
    src, tgt = MlflowClient(source.url), MlflowClient(target_models.url)
    runs = {r.info.run_id: r for r in tgt.search_runs(
        [e.experiment_id for e in tgt.search_experiments()], max_results=5000)}
    by_source = {r.data.tags["mlflow_exim.run_info.run_id"]: rid for rid, r in runs.items()}
    return {"opts": opts, "first": first, "second": second, "verified": verified, "src": src,
            "tgt": tgt, "by_source": by_source, "target": target_models}


def versions(c: MlflowClient, name: str) -> dict[int, Any]:
    return {int(v.version): v for v in c.search_model_versions(f"name = '{name}'")}


def using(server: str) -> contextlib.AbstractContextManager[None]:
    """`models:/` URIs resolve against the global registry URI: point it at `server`."""
    return pointing_at(server, registry=True)


def tree_hashes(uri: str, server: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp, using(server):
        return folder_hashes(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))


def test_first_run_migrates_every_model_and_version(done: dict[str, Any]) -> None:
    first = done["first"]
    assert first.ok, first.render()
    assert first.models == {"imported": 2}
    assert first.versions == {"imported": 5}
    assert first.logged_models == {"tagged": 1}


def test_version_numbers_gaps_stages_aliases_and_descriptions_equal(done: dict[str, Any]) -> None:
    src, tgt = done["src"], done["tgt"]
    for name in (NAME, OTHER):
        s, t = versions(src, name), versions(tgt, name)
        assert sorted(t) == sorted(s)
        for n, v in s.items():
            assert (t[n].current_stage, t[n].description) == (v.current_stage, v.description)
            user = {k: x for k, x in t[n].tags.items() if not k.startswith("mlflow_exim.")}
            assert user == v.tags
    assert sorted(versions(tgt, NAME)) == [1, 2, 4, 6]  # 3 and 5 stay gaps
    assert tgt.get_registered_model(NAME).aliases == src.get_registered_model(NAME).aliases
    assert tgt.get_registered_model(NAME).description == "Classifies **iris**"
    assert tgt.get_registered_model(NAME).tags["owner"] == "vision"


def test_sources_point_to_the_migrated_runs_and_logged_models(
    done: dict[str, Any], source: Source
) -> None:
    src, tgt, by_source = done["src"], done["tgt"], done["by_source"]
    s, t = versions(src, NAME), versions(tgt, NAME)
    # v1: a logged model → the migrated logged model, run remapped
    target_model = t[1].source.removeprefix("models:/")
    lm = tgt.get_logged_model(target_model)
    assert lm.tags["mlflow_exim.field.model_id"] == source.seeded.models["logged_model_id"]
    assert t[1].run_id == by_source[s[1].run_id]
    # v2: runs:/<source run>/plots → runs:/<target run>/plots
    assert t[2].source == f"runs:/{by_source[s[2].run_id]}/plots"
    # v4: the source run's artifact path → the target run's
    art = tgt.get_run(by_source[s[4].run_id]).info.artifact_uri
    assert t[4].source == f"{art}/plots" and t[4].run_id == by_source[s[4].run_id]
    # v6: its run is deleted (not migrated): files staged from the version, held by a logged model
    holder = tgt.get_logged_model(t[6].source.removeprefix("models:/"))
    assert holder.tags["mlflow_exim.model_version"] == f"{NAME}/6"
    assert not t[6].run_id
    assert t[6].tags["mlflow_exim.field.run_id"] == source.seeded.models["deleted_run"]
    # every version's files resolve on the target, identical to the source's
    for n in (1, 2, 4, 6):
        want = tree_hashes(f"models:/{NAME}/{n}", source.url)
        assert want and tree_hashes(f"models:/{NAME}/{n}", done["target"].url) == want, n


def test_source_tags_keep_every_version_and_model_field(done: dict[str, Any]) -> None:
    src, tgt = done["src"], done["tgt"]
    s, t = versions(src, NAME)[2], versions(tgt, NAME)[2]
    tags = t.tags
    assert tags["mlflow_exim.field.version"] == "2"
    assert tags["mlflow_exim.field.creation_timestamp"] == str(s.creation_timestamp)
    assert tags["mlflow_exim.field.last_updated_timestamp"] == str(s.last_updated_timestamp)
    assert tags["mlflow_exim.field.source"] == s.source
    assert tags["mlflow_exim.field.run_id"] == s.run_id
    assert tags["mlflow_exim.field.current_stage"] == "Staging"
    assert tags["mlflow_exim.field.status"] == "READY"
    model = tgt.get_registered_model(NAME).tags
    assert model["mlflow_exim.field.name"] == NAME
    assert model["mlflow_exim.field.creation_timestamp"] == str(
        src.get_registered_model(NAME).creation_timestamp
    )


def test_logged_model_keeps_its_attributes_metrics_links_and_loads(
    done: dict[str, Any], source: Source
) -> None:
    src, tgt, by_source = done["src"], done["tgt"], done["by_source"]
    s = src.get_logged_model(source.seeded.models["logged_model_id"])
    t = tgt.get_logged_model(versions(tgt, NAME)[1].source.removeprefix("models:/"))
    assert (t.name, t.model_type, str(t.status)) == (s.name, s.model_type, str(s.status))
    assert t.params == s.params
    assert t.tags["stage"] == "candidate"
    assert t.tags["mlflow_exim.field.creation_timestamp"] == str(s.creation_timestamp)
    train = by_source[source.seeded.models["train_run"]]
    assert t.source_run_id == train
    evaluation = by_source[source.seeded.models["evaluation_run"]]
    got = sorted((m.key, m.value, m.step, m.run_id, m.dataset_name, m.dataset_digest)
                 for m in t.metrics)
    assert got == [("eval_acc", 0.91, 1, evaluation, "iris-test", "t1"),
                   ("val_acc", 0.93, 3, train, None, None)]
    outputs = tgt.get_run(train).outputs.model_outputs
    assert [o.model_id for o in outputs] == [t.model_id]
    inputs = tgt.get_run(evaluation).inputs.model_inputs
    assert [i.model_id for i in inputs] == [t.model_id]
    # read from an experiment that holds no logged model (a search leaves model inputs out)
    elsewhere = by_source[source.seeded.models["evaluation_elsewhere"]]
    assert [i.model_id for i in tgt.get_run(elsewhere).inputs.model_inputs] == [t.model_id]
    # into a folder of our own: without one, MLflow downloads into a temporary folder that
    # nobody removes
    with using(done["target"].url), tempfile.TemporaryDirectory() as tmp:
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=tmp)
        assert model.predict(["a", "b"]) == ["a", "b"]


def test_manifests_hold_one_row_per_model_version_and_logged_model(done: dict[str, Any]) -> None:
    staging = open_staging(done["opts"].staging)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("models", "model_versions", "logged_models"):
            with open(os.path.join(tmp, f"{name}.parquet"), "wb") as f:
                f.write(staging.read_bytes(f"manifests/{name}.parquet"))
        q = lambda sql: duckdb.sql(sql.replace("@", tmp + "/")).fetchall()  # noqa: E731
        assert q("select name, target_name, n_versions, state from '@models.parquet' "
                 "order by name") == [(NAME, NAME, 4, "imported"), (OTHER, OTHER, 1, "imported")]
        rows = q("select version, target_version, len(artifact_files), state "
                 "from '@model_versions.parquet' where name = 'demo-classifier' order by 1")
        assert rows == [(1, 1, 0, "imported"), (2, 2, 0, "imported"), (4, 4, 0, "imported"),
                        (6, 6, 1, "imported")]
        assert q("select count(*), min(state) from '@logged_models.parquet'") == [(1, "tagged")]


def test_rerun_creates_nothing_twice(done: dict[str, Any]) -> None:
    second, tgt = done["second"], done["tgt"]
    assert second.ok and not second.actions
    assert second.versions == {"imported": 5}
    assert sorted(versions(tgt, NAME)) == [1, 2, 4, 6]
    exps = [e.experiment_id for e in tgt.search_experiments()]
    # the migrated logged model and the one holding v6's files, once each
    assert len(tgt.search_logged_models(experiment_ids=exps)) == 2


def test_verify_covers_models_versions_and_logged_models(done: dict[str, Any]) -> None:
    report = done["verified"].verify
    assert report.ok, report.render()
    counts = report.counts()
    assert counts[("registered_model", "match")] == 2
    assert counts[("model_version", "match")] == 5
    assert counts[("logged_model", "match")] == 1


def test_audit_looks_up_models_versions_and_logged_models(
    done: dict[str, Any], source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = done["opts"].staging
    capsys.readouterr()
    assert main(["audit", "--staging", staging, "--model", NAME, "--version", "6",
                 "--format", "json"]) == 0
    (v6,) = json.loads(capsys.readouterr().out)
    src_v6 = versions(done["src"], NAME)[6]
    assert (v6["version"], v6["target_version"], v6["source"]) == (6, 6, src_v6.source)
    assert v6["run_id"] == source.seeded.models["deleted_run"] and v6["artifact_files"] == 1
    assert v6["creation_timestamp"] == src_v6.creation_timestamp
    assert main(["audit", "--staging", staging, "--model", NAME]) == 0
    table = capsys.readouterr().out
    assert table.count("target_version") == 4 and "champion" in table
    lm_id = source.seeded.models["logged_model_id"]
    assert main(["audit", "--staging", staging, "--source-model-id", lm_id,
                 "--format", "json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["target_model_id"] == versions(done["tgt"], NAME)[1].source.removeprefix(
        "models:/")
    assert main(["audit", "--staging", staging, "--target-model-id", rec["target_model_id"],
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["source_model_id"] == lm_id
    assert main(["audit", "--staging", staging, "--summary", "--format", "json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["model_versions"] == {"imported": 5}
    assert counts["registered_models"] == {"imported": 2}
    assert counts["verified"]["model_version"] == 5
    assert main(["audit", "--staging", staging, "--model", "nope"]) == 1


def test_verify_reports_changed_models(done: dict[str, Any]) -> None:
    """Runs last in this module: it changes the target."""
    tgt, opts = done["tgt"], done["opts"]
    tgt.set_registered_model_alias(NAME, "champion", "2")
    tgt.update_model_version(NAME, "4", description="edited")
    tgt.set_logged_model_tags(versions(tgt, NAME)[1].source.removeprefix("models:/"),
                              {"stage": "prod"})
    report = run_command("verify", opts, make_executor).verify
    bad = {(r["object_type"], r["source_id"]): r["differences"]
           for r in read_verify(open_staging(opts.staging)) if r["outcome"] != "match"}
    assert bad == {
        ("registered_model", NAME): ["aliases"],
        ("model_version", f"{NAME}/4"): ["description"],
        ("logged_model", done["src"].get_logged_model(
            versions(done["src"], NAME)[1].source.removeprefix("models:/")).model_id): ["tags"],
    }
    assert not report.ok
