"""MLflow 3 GenAI objects on real servers: traces (spans, assessments, links), the prompt
registry (versions with a gap, chat template, model config, aliases, links) and evaluation
datasets (records of every source kind, one from a trace), with lineage.

A source of its own (not the shared one: these objects live in experiments of their own),
seeded by MLflow's own APIs (`migrator.seed.seed_traces`, `seed_prompts`, `seed_datasets`), migrated with local
Ray to a target on which one of the source's trace ids is already taken by another trace.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from migrator import services
from migrator.config import Options
from migrator.fanout import make_executor
from migrator.lineage import TRACE_ID_TAG
from migrator.pipeline import run_command
from migrator.seed import seed_datasets, seed_prompts, seed_scorers, seed_traces
from migrator.staging import open_staging
from migrator.traces_io import derived_trace_id, tracing

from .conftest import s3_staging


@pytest.fixture(scope="module")
def genai_source(workdir: Path) -> Iterator[dict[str, Any]]:
    with services.mlflow_server("genai-source", services.MYSQL, workdir) as svc:
        traces = seed_traces(svc.url)
        yield {"url": svc.url, "traces": traces, "prompts": seed_prompts(svc.url, traces),
               "dataset": seed_datasets(svc.url, traces), "scorers": seed_scorers(svc.url, traces)}


def squat(source: str, target: str, trace_id: str) -> str:
    """Put a copy of a source trace on the target, in an experiment of its own, under the
    same id (as if another tool had copied it there): the migration must leave it alone."""
    trace = MlflowClient(source).get_trace(trace_id)
    exp = MlflowClient(target).create_experiment("someone-elses")
    from mlflow.entities import TraceInfo, TraceLocation

    info = trace.info
    tc = tracing(target)
    tc.log_spans(exp, trace.data.spans)
    tc.start_trace(TraceInfo(
        trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(exp),
        request_time=info.request_time, execution_duration=info.execution_duration,
        state=info.state, tags={"owner": "someone else"}))
    return exp


@pytest.fixture(scope="module")
def moved(genai_source: dict[str, Any], workdir: Path, ray_local: None) -> Iterator[dict[str, Any]]:
    ids = genai_source["traces"]
    with services.mlflow_server("genai-target", services.POSTGRES, workdir) as target:
        squatter = squat(genai_source["url"], target.url, ids["manual"])
        opts = Options(source=genai_source["url"], target=target.url, staging=s3_staging(),
                       experiments=("genai/*",))
        first = run_command("migrate", opts, make_executor)
        second = run_command("migrate", opts, make_executor)
        verified = run_command("verify", opts, make_executor)
        staging = open_staging(opts.staging)
        manifest = pq.read_table(io.BytesIO(staging.read_bytes("manifests/traces.parquet")))
        yield {"opts": opts, "first": first, "second": second, "verified": verified,
               "target": target.url, "squatter": squatter, "ids": ids,
               "manifest": {r["source_trace_id"]: r for r in manifest.to_pylist()}}


def target_id(moved: dict[str, Any], source_id: str) -> str:
    return moved["manifest"][source_id]["target_trace_id"]


def test_every_trace_moves_once_under_its_own_id_where_free(moved: dict[str, Any]) -> None:
    first, ids = moved["first"], moved["ids"]
    assert first.ok, first.render()
    assert first.objects["traces"] == {"imported": len(ids["traces"])}
    for sid in ids["traces"]:
        want = derived_trace_id(sid) if sid == ids["manual"] else sid
        assert target_id(moved, sid) == want
    tgt = MlflowClient(moved["target"])
    exp = tgt.get_experiment_by_name("genai/agent").experiment_id
    found = tgt.search_traces(locations=[exp], include_spans=False, max_results=100)
    assert sorted(t.info.tags[TRACE_ID_TAG] for t in found) == sorted(ids["traces"])
    # The trace that held the id on the target is untouched, in its own experiment.
    other = tgt.get_trace(ids["manual"])
    assert other.info.trace_location.mlflow_experiment.experiment_id == moved["squatter"]
    assert other.info.tags.get("owner") == "someone else" and TRACE_ID_TAG not in other.info.tags


def test_spans_keep_ids_parents_nanoseconds_status_and_events(moved: dict[str, Any],
                                                              genai_source: dict[str, Any]) -> None:
    src, tgt = MlflowClient(genai_source["url"]), MlflowClient(moved["target"])
    for sid in moved["ids"]["traces"]:
        a, b = src.get_trace(sid), tgt.get_trace(target_id(moved, sid))
        assert [s.span_id for s in a.data.spans] == [s.span_id for s in b.data.spans]
        for x, y in zip(a.data.spans, b.data.spans, strict=True):
            assert (x.name, x.span_type, x.parent_id, x.start_time_ns, x.end_time_ns) == \
                (y.name, y.span_type, y.parent_id, y.start_time_ns, y.end_time_ns)
            assert (x.status.status_code, x.status.description) == \
                (y.status.status_code, y.status.description)
            assert x.inputs == y.inputs and x.outputs == y.outputs
            assert [(e.name, e.timestamp, e.attributes) for e in x.events] == \
                [(e.name, e.timestamp, e.attributes) for e in y.events]
        for f in ("request_time", "execution_duration", "state", "client_request_id",
                  "request_preview", "response_preview"):
            assert getattr(a.info, f) == getattr(b.info, f), f
        # every source system tag kept, the ones each server sets for itself too
        # (`mlflow.artifactLocation`, the spans' location), with the run and logged model
        # links the metadata held on the source; and in the manifest
        system = {k: v for k, v in a.info.tags.items() if k.startswith("mlflow.")}
        assert "mlflow.artifactLocation" in system, a.info.tags
        system.update((k, v) for k, v in a.info.trace_metadata.items()
                      if k in ("mlflow.sourceRun", "mlflow.modelId"))
        copies = {k: v for k, v in b.info.tags.items() if k.startswith("mlflow_exim.mlflow_tag.")}
        assert copies == {"mlflow_exim.mlflow_tag." + k[7:]: v for k, v in system.items()}
        assert dict(moved["manifest"][sid]["tags"]) == a.info.tags
    failed = tgt.get_trace(moved["ids"]["error"])
    raised = [s for s in failed.data.spans if s.status.status_code == "ERROR"]
    assert raised and any(e.name == "exception" for e in raised[0].events)


def test_assessments_keep_ids_times_and_the_override(moved: dict[str, Any],
                                                     genai_source: dict[str, Any]) -> None:
    ids = moved["ids"]
    a = MlflowClient(genai_source["url"]).get_trace(ids["nested"]).info.assessments
    b = MlflowClient(moved["target"]).get_trace(ids["nested"]).info.assessments
    assert len(a) == len(b) == 5
    by_id = {x.assessment_id: x for x in b}
    for x in a:
        y = by_id[x.assessment_id]
        assert x.to_dictionary() == y.to_dictionary(), x.name
    assert by_id[ids["overridden"]].valid is False
    assert by_id[ids["override"]].overrides == ids["overridden"]


def test_links_to_the_run_and_logged_model_are_remapped(moved: dict[str, Any]) -> None:
    ids, tgt = moved["ids"], MlflowClient(moved["target"])
    exp = tgt.get_experiment_by_name("genai/agent").experiment_id
    run = tgt.search_runs([exp], filter_string="attributes.run_name = 'traced-run'")[0]
    in_run = tgt.search_traces(locations=[exp], run_id=run.info.run_id, include_spans=False)
    # made in the run, and linked to it afterwards (under the id it got on the target)
    want = {ids["in_run"], target_id(moved, ids["manual"])}
    assert {t.info.trace_id for t in in_run} == want
    in_run = [t for t in in_run if t.info.trace_id == ids["in_run"]]
    model = tgt.search_logged_models(experiment_ids=[exp], filter_string="name = 'agent-model'")[0]
    in_model = tgt.search_traces(locations=[exp], model_id=model.model_id, include_spans=False)
    assert [t.info.trace_id for t in in_model] == [ids["in_model"]]
    assert in_run[0].info.tags["mlflow_exim.mlflow_tag.sourceRun"] == ids["run_id"]


def test_manifest_verify_and_rerun(moved: dict[str, Any]) -> None:
    rows, ids = moved["manifest"], moved["ids"]
    assert set(rows) == set(ids["traces"])
    row = rows[ids["in_run"]]
    assert row["source_run_id"] == ids["run_id"] and row["target_run_id"]
    assert row["n_spans"] == 4 and row["trace_state"] == "OK" and row["state"] == "imported"
    assert rows[ids["nested"]]["n_assessments"] == 5
    assert rows[ids["error"]]["trace_state"] == "ERROR"
    report = moved["verified"].verify
    assert report.ok, report.render()
    assert report.counts()[("trace", "match")] == len(ids["traces"])
    second = moved["second"]
    assert second.ok and not second.actions and not second.objects_found["traces"].get("new"), second.render()
    assert second.objects_found["traces"] == {"unchanged": len(ids["traces"])}


def prompt_versions(uri: str, name: str) -> dict[int, Any]:
    c = MlflowClient(uri, registry_uri=uri)
    return {int(v.version): c.get_prompt_version(name, v.version)
            for v in c.search_prompt_versions(name)}


def test_prompts_keep_numbers_gaps_content_aliases_and_links(moved: dict[str, Any],
                                                             genai_source: dict[str, Any]) -> None:
    src, tgt = genai_source["url"], moved["target"]
    first = moved["first"]
    assert first.prompts == {"imported": 2} and first.prompt_versions == {"imported": 4}
    for name, numbers in genai_source["prompts"]["versions"].items():
        a, b = prompt_versions(src, name), prompt_versions(tgt, name)
        assert sorted(b) == numbers  # qa: 1, 3, 4 (2 deleted at the source: a gap)
        for n in numbers:
            x, y = a[n], b[n]
            assert (x.template, x.commit_message, x.model_config, x.response_format) == \
                (y.template, y.commit_message, y.model_config, y.response_format), (name, n)
            assert {k: v for k, v in y.tags.items() if not k.startswith("mlflow_exim.")} == x.tags
            assert y.tags["mlflow_exim.field.version"] == str(n)
            assert y.tags["mlflow_exim.field.creation_timestamp"] == str(x.creation_timestamp)
        assert [v.aliases for _, v in sorted(a.items())] == [v.aliases for _, v in sorted(b.items())]
    chat = prompt_versions(tgt, "chat")[1]
    assert not chat.is_text_prompt and chat.template[0]["role"] == "system"
    c = MlflowClient(tgt, registry_uri=tgt)
    assert c.get_prompt_version_by_alias("qa", "production").version == 3
    qa = c.get_prompt("qa")
    exp = c.get_experiment_by_name("genai/agent").experiment_id
    assert qa.tags["owner"] == "nlp-team" and qa.tags["_mlflow_experiment_ids"] == f",{exp},"
    # Linked where the source linked them: the run (tag), the trace (tag and association).
    run = c.search_runs([exp], filter_string="attributes.run_name = 'traced-run'")[0]
    assert "qa" in run.data.tags["mlflow.linkedPrompts"]
    linked = c.search_traces(locations=[exp], filter_string='prompt = "qa/3"', include_spans=False)
    assert [t.info.trace_id for t in linked] == [moved["ids"]["nested"]]
    # Prompts are not registered models: neither kind moved the other.
    assert not c.search_registered_models()
    rows = pq.read_table(io.BytesIO(open_staging(moved["opts"].staging).read_bytes(
        "manifests/prompts.parquet"))).to_pylist()
    assert sorted((r["name"], r["version"], r["target_version"]) for r in rows) == \
        [("chat", 1, 1), ("qa", 1, 1), ("qa", 3, 3), ("qa", 4, 4)]
    assert moved["verified"].verify.counts()[("prompt_version", "match")] == 4


def records(uri: str, dataset_id: str) -> list[dict[str, Any]]:
    store = MlflowClient(uri)._tracking_client.store
    found, _ = store._load_dataset_records(dataset_id, max_results=None)
    keys = ("inputs", "outputs", "expectations", "tags", "source")
    return sorted(json.dumps({k: r.to_dict().get(k) for k in keys}, sort_keys=True)
                   for r in found)


def test_evaluation_datasets_with_every_record(moved: dict[str, Any],
                                               genai_source: dict[str, Any]) -> None:
    source_id = genai_source["dataset"]["dataset_id"]
    rows = pq.read_table(io.BytesIO(open_staging(moved["opts"].staging).read_bytes(
        "manifests/evaluation_datasets.parquet"))).to_pylist()
    assert [(r["source_dataset_id"], r["name"], r["n_records"], r["state"]) for r in rows] == \
        [(source_id, "qa-eval", 4, "imported")]
    target_id = rows[0]["target_dataset_id"]
    tgt = MlflowClient(moved["target"])
    ds = tgt._tracking_client.store.get_dataset(target_id)
    assert ds.name == "qa-eval" and ds.tags["team"] == "nlp"
    assert ds.tags["mlflow_exim.field.dataset_id"] == source_id
    exp = tgt.get_experiment_by_name("genai/agent").experiment_id
    assert tgt._tracking_client.store.get_dataset_experiment_ids(target_id) == [exp]
    assert records(moved["target"], target_id) == records(genai_source["url"], source_id)
    from_trace = [json.loads(r) for r in records(moved["target"], target_id)
                  if json.loads(r)["source"]["source_type"] == "TRACE"]
    assert from_trace[0]["source"]["source_data"]["trace_id"] == moved["ids"]["nested"]
    assert moved["verified"].verify.counts()[("evaluation_dataset", "match")] == 1
    assert len(list(tgt._tracking_client.store.search_datasets())) == 1  # re-run: still one


def test_scorers_keep_every_version(moved: dict[str, Any], genai_source: dict[str, Any]) -> None:
    from migrator.stages.scorers import scorer_versions

    src_exp = moved["ids"]["experiment_id"]
    tgt_exp = MlflowClient(moved["target"]).get_experiment_by_name("genai/agent").experiment_id
    for name, numbers in genai_source["scorers"]["versions"].items():
        a = scorer_versions(genai_source["url"], src_exp, name)
        b = scorer_versions(moved["target"], tgt_exp, name)
        assert sorted(b) == numbers
        assert [a[n]._serialized_scorer for n in numbers] == [b[n]._serialized_scorer for n in numbers]
    assert moved["first"].objects["scorers"] == {"imported": 2}
    assert moved["verified"].verify.counts()[("scorer", "match")] == 2


def test_plan_inventories_every_kind(genai_source: dict[str, Any],
                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from migrator.cli import main

    assert main(["plan", "--source", genai_source["url"], "--staging", str(tmp_path / "x"),
                 "--experiments", "genai/*", "--ray-address", "none"]) == 0
    out = capsys.readouterr().out
    for line in ("logged models: 1", "scorers: 2", "prompts: 2", "prompt versions: 4",
                 "evaluation datasets: 1", "not migrated by this version (count on the source, why):"):
        assert f"  {line}" in out, out
    assert "  traces: 5\n  assessments: 5\n" in out, out
    assert re.search(r"webhooks +0  their signing secrets cannot be read back", out)


def test_new_traces_assessments_and_prompt_versions_move_incrementally(moved: dict[str, Any],
                                                       genai_source: dict[str, Any]) -> None:
    import mlflow

    from migrator.seed import pointing_at

    ids = moved["ids"]
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    try:
        with pointing_at(genai_source["url"]):
            mlflow.log_feedback(trace_id=ids["error"], name="is_correct", value=False)
            mlflow.set_experiment(experiment_id=ids["experiment_id"])
            with mlflow.start_span("late") as span:
                span.set_inputs({"a": 1})
            late = span.trace_id
        MlflowClient(genai_source["url"], registry_uri=genai_source["url"]).create_prompt_version(
            "qa", "Answer {{question}} tersely.", description="fifth")
    finally:
        os.environ.pop("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", None)
    opts = moved["opts"].replace(verify=True)
    again = run_command("migrate", opts, make_executor)
    assert again.ok, again.render()
    assert again.objects_found["traces"] == {"new": 1, "changed": 1, "unchanged": len(ids["traces"]) - 1}
    tgt = MlflowClient(moved["target"])
    assert [a.name for a in tgt.get_trace(ids["error"]).info.assessments] == ["is_correct"]
    assert tgt.get_trace(late).data.spans[0].name == "late"
    assert sorted(prompt_versions(moved["target"], "qa")) == [1, 3, 4, 5]
    assert prompt_versions(moved["target"], "qa")[5].commit_message == "fifth"
    assert again.verify.counts()[("trace", "match")] == len(ids["traces"]) + 1
