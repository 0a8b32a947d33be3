"""A small, realistic source server for the demo and the tests.

Seeded through the public client against a real server: experiments with tags and
descriptions (one deleted), runs with params, user and system tags, metric histories with NaN
and ±inf, dataset inputs, nested runs across experiments, finished/failed/running and deleted
runs, and artifacts in nested folders with awkward names.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from migrator.mlflow_io import apply_client_env

EXPERIMENTS = ("demo/classification", "demo/regression", "demo/archived")


@dataclass
class Seeded:
    """What was seeded, for the demo's report and the tests' assertions."""

    experiment_ids: dict[str, str] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    deleted_run_ids: list[str] = field(default_factory=list)
    parent_child: list[tuple[str, str]] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    """What `seed_models` made: model names, the logged model id, the version cases."""


def _write_artifacts(folder: str, i: int) -> None:
    os.makedirs(os.path.join(folder, "plots", "deep"), exist_ok=True)
    with open(os.path.join(folder, "model.txt"), "w") as f:
        f.write(f"weights of run {i}\n" * 20)
    with open(os.path.join(folder, "plots", "loss curve ü.csv"), "w") as f:
        f.write("step,loss\n" + "".join(f"{s},{1 / (s + 1):.4f}\n" for s in range(50)))
    with open(os.path.join(folder, "plots", "deep", "empty.txt"), "w"):
        pass
    with open(os.path.join(folder, "plots", "deep", "random.bin"), "wb") as f:
        f.write(random.Random(i).randbytes(4096))


def seed_source(uri: str, n_runs: int = 40, *, seed: int = 7) -> Seeded:
    """Fill the server at `uri`; returns the ids it made."""
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    apply_client_env()
    rng = random.Random(seed)
    c = MlflowClient(uri)
    out = Seeded()
    for name in EXPERIMENTS:
        exp_id = c.create_experiment(
            name,
            tags={
                "team": "vision" if "class" in name else "forecast",
                "mlflow.note.content": f"Experiment {name}: **demo** data",
            },
        )
        out.experiment_ids[name] = exp_id
    out.experiment_ids["Default"] = "0"
    names = list(out.experiment_ids)
    now = int(time.time() * 1000) - 86_400_000
    parents: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_runs):
            exp_name = names[i % len(names)]
            exp_id = out.experiment_ids[exp_name]
            start = now + i * 60_000
            tags = {
                "mlflow.user": rng.choice(["alice", "bob", "carol"]),
                "mlflow.source.name": "train.py",
                "mlflow.source.type": "LOCAL",
                "owner": "ml-platform",
                "k'ey": "legacy key that log_batch refuses",
            }
            if i % 5 in (3, 4) and parents:  # 3: parent in another experiment
                parent_exp, parent_id = parents[-1]
                tags["mlflow.parentRunId"] = parent_id
            run = c.create_run(exp_id, start_time=start, tags=tags, run_name=f"run-{i:03d}")
            rid = run.info.run_id
            if "mlflow.parentRunId" in tags:
                out.parent_child.append((tags["mlflow.parentRunId"], rid))
            if i % 5 == 0:
                parents.append((exp_id, rid))
            params = [Param(f"p{j}", str(rng.random())) for j in range(10)]
            metrics = [
                Metric(k, rng.random(), start + s * 1000, s)
                for k in ("loss", "accuracy", "lr")
                for s in range(50)
            ]
            metrics += [
                Metric("odd", math.nan, start, 0),
                Metric("odd", math.inf, start + 1, 1),
                Metric("odd", -math.inf, start + 2, 2),
            ]
            c.log_batch(rid, metrics=metrics, params=params, tags=[RunTag("epoch_count", "50")])
            if i % 3 == 0:
                ds = Dataset(
                    name="iris",
                    digest=f"d{i % 4}",
                    source_type="local",
                    source='{"uri": "data/iris.csv"}',
                    schema='{"mlflow_colspec": []}',
                    profile='{"num_rows": 150}',
                )
                c.log_inputs(rid, [DatasetInput(ds, [InputTag("mlflow.data.context", "train")])])
            folder = os.path.join(tmp, str(i))
            _write_artifacts(folder, i)
            c.log_artifacts(rid, folder)
            status = "FAILED" if i % 11 == 10 else "FINISHED"
            if i % 13 == 12:
                out.run_ids.append(rid)  # left RUNNING, like a job still in progress
                continue
            c.set_terminated(rid, status, end_time=start + 30_000 + i)
            out.run_ids.append(rid)
            if i % 17 == 16:
                c.delete_run(rid)
                out.deleted_run_ids.append(rid)
    c.delete_experiment(out.experiment_ids["demo/archived"])
    return out


def seed_models(uri: str, seeded: Seeded) -> dict[str, Any]:
    """Registered models and an MLflow 3 logged model over the seeded runs.

    `demo-classifier` has versions 1, 2, 4 and 6 (3 and 5 deleted: gaps to keep): v1 is a
    logged model made by `mlflow.pyfunc.log_model` (Production, alias `champion`); v2 a
    `runs:/` source (Staging); v4 a run's artifact path (Archived, alias `challenger`); v6 the
    files of a run deleted afterwards. `team.forecast model` has one version (a name with a
    dot and a space).
    """
    import mlflow
    from mlflow import MlflowClient

    class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
            return model_input

    apply_client_env()
    with pointing_at(uri):  # the fluent API (start_run, log_model) takes the global URI
        return _seed_models(MlflowClient(uri), seeded, Echo)


@contextlib.contextmanager
def pointing_at(uri: str, registry: bool = False) -> Iterator[None]:
    """Point MLflow's global tracking URI (and with `registry` its registry URI) at `uri`, then
    put back exactly what was there: MLflow keeps them in module globals and in the
    environment (`MLFLOW_TRACKING_URI`, `MLFLOW_REGISTRY_URI`), and one left behind sends
    every later client of this process that does not name its own to `uri`."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = (
        tracking_utils._tracking_uri,
        registry_utils._registry_uri,
        {k: os.environ.get(k) for k in names},
    )
    mlflow.set_tracking_uri(uri)
    if registry:
        mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri, env = before
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _seed_models(c: Any, seeded: Seeded, echo: Any) -> dict[str, Any]:
    """`seed_models`, while the global tracking URI points at the source."""
    import mlflow

    exp_id = seeded.experiment_ids["demo/classification"]
    infos = [c.get_run(r).info for r in seeded.run_ids if r not in seeded.deleted_run_ids]
    runs = [i.run_id for i in infos if i.experiment_id == exp_id and i.status == "FINISHED"]
    reg_run = next(
        i.run_id for i in infos if i.experiment_id == seeded.experiment_ids["demo/regression"]
    )
    with mlflow.start_run(experiment_id=exp_id, run_name="train-classifier") as run:
        mlflow.log_param("lr", "0.01")
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        pyfunc_log.setLevel(logging.ERROR)  # its CloudPickle caution is about our own object
        try:
            info = mlflow.pyfunc.log_model(
                name="classifier",
                python_model=echo(),
                params={"threshold": "0.5"},
                model_type="classifier",
                pip_requirements=["mlflow"],
                tags={"stage": "candidate"},
            )
        finally:
            pyfunc_log.setLevel(level)
        mlflow.log_metric("val_acc", 0.93, step=3, model_id=info.model_id)
    train_run = run.info.run_id
    # An evaluation: a run that read the logged model, and a metric of the model on a dataset.
    from mlflow.entities import Dataset, DatasetInput, LoggedModelInput

    evaluation = c.create_run(exp_id, run_name="evaluate-classifier").info.run_id
    ds = Dataset(name="iris-test", digest="t1", source_type="local", source='{"uri": "t.csv"}')
    c.log_inputs(evaluation, [DatasetInput(ds, [])], models=[LoggedModelInput(info.model_id)])
    c.log_metric(
        evaluation,
        "eval_acc",
        0.91,
        step=1,
        model_id=info.model_id,
        dataset_name=ds.name,
        dataset_digest=ds.digest,
    )
    c.set_terminated(evaluation, "FINISHED")
    # A model input may name any experiment's logged model: an evaluation in an experiment
    # that holds none of its own.
    elsewhere = c.create_run(
        seeded.experiment_ids["demo/regression"], run_name="evaluate-classifier-elsewhere"
    ).info.run_id
    c.log_inputs(elsewhere, models=[LoggedModelInput(info.model_id)])
    c.set_terminated(elsewhere, "FINISHED")
    name = "demo-classifier"
    c.create_registered_model(name, tags={"owner": "vision"}, description="Classifies **iris**")
    c.create_model_version(
        name,
        info.model_uri,
        run_id=train_run,
        model_id=info.model_id,
        description="first",
        tags={"validated": "yes"},
    )
    c.create_model_version(name, f"runs:/{runs[0]}/plots", run_id=runs[0])
    c.create_model_version(name, f"runs:/{runs[1]}/plots", run_id=runs[1])
    art = c.get_run(runs[1]).info.artifact_uri
    c.create_model_version(name, f"{art}/plots", run_id=runs[1], description="artifact path")
    c.create_model_version(name, f"runs:/{runs[2]}/plots", run_id=runs[2])
    doomed = c.create_run(exp_id, run_name="deleted-after-registration").info.run_id
    c.log_text(doomed, "weights", "model/weights.txt")
    c.create_model_version(name, f"runs:/{doomed}/model", run_id=doomed, tags={"note": "orphan"})
    c.set_terminated(doomed, "FINISHED")
    c.delete_run(doomed)
    seeded.run_ids += [train_run, evaluation, elsewhere, doomed]
    seeded.deleted_run_ids.append(doomed)
    for gap in ("3", "5"):
        c.delete_model_version(name, gap)
    for version, stage in (("1", "Production"), ("2", "Staging"), ("4", "Archived")):
        c.transition_model_version_stage(name, version, stage)
    c.set_registered_model_alias(name, "champion", "1")
    c.set_registered_model_alias(name, "challenger", "4")
    other = "team.forecast model"
    c.create_registered_model(other)
    c.create_model_version(other, f"runs:/{reg_run}/model.txt", run_id=reg_run)
    seeded.models = {
        "names": [name, other],
        "logged_model_id": info.model_id,
        "train_run": train_run,
        "evaluation_run": evaluation,
        "evaluation_elsewhere": elsewhere,
        "deleted_run": doomed,
        "versions": {name: [1, 2, 4, 6], other: [1]},
    }
    return seeded.models


GENAI_EXPERIMENT = "genai/agent"


def seed_traces(uri: str) -> dict[str, Any]:
    """MLflow 3 traces as applications make them, in experiment `genai/agent`: nested
    `@mlflow.trace` spans with attributes and an event, a trace whose span raised, a trace
    inside a run, one under an active model, one of `mlflow.start_span` blocks with a tag set
    later, and assessments on the first: feedback overridden by a human, an expectation, a
    span-level feedback, an error feedback. Returns their ids."""
    apply_client_env()
    saved = os.environ.get("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING")
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # every trace written on return
    try:
        with pointing_at(uri):  # the fluent tracing API takes the global URI
            return _seed_traces()
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", None)
        else:
            os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = saved


def _seed_traces() -> dict[str, Any]:
    import mlflow
    from mlflow.entities import (
        AssessmentError,
        AssessmentSource,
        AssessmentSourceType,
        SpanEvent,
        SpanType,
    )

    exp_id = mlflow.set_experiment(GENAI_EXPERIMENT).experiment_id
    ids: dict[str, Any] = {"experiment_id": exp_id}

    @mlflow.trace(span_type=SpanType.TOOL)  # type: ignore[untyped-decorator]
    def lookup(city: str) -> dict[str, Any]:
        return {"city": city, "temp_c": 21.5}

    @mlflow.trace(span_type=SpanType.LLM, attributes={"model": "fake-gpt"})  # type: ignore[untyped-decorator]
    def llm(prompt: str) -> str:
        return f"answer to: {prompt}"

    @mlflow.trace(name="agent", span_type=SpanType.AGENT)  # type: ignore[untyped-decorator]
    def agent(question: str) -> str:
        info = lookup("Paris")
        with mlflow.start_span(name="post-process", span_type=SpanType.CHAIN) as s:
            s.set_inputs({"info": info})
            s.set_attribute("custom.k", [1, 2, 3])
            s.add_event(SpanEvent(name="checkpoint", attributes={"step": 1, "note": "hello"}))
            out = llm(question)
            s.set_outputs({"out": out})
        mlflow.update_current_trace(
            tags={"team": "search"}, metadata={"app.version": "1.2.3"}, client_request_id=question
        )
        return str(out)

    @mlflow.trace  # type: ignore[untyped-decorator]
    def failing(x: int) -> int:
        with mlflow.start_span("inner-ok") as s:
            s.set_inputs({"x": x})
            s.set_outputs(x * 2)
        raise ValueError("boom from failing")

    agent("What is the weather?")
    ids["nested"] = mlflow.get_last_active_trace_id()
    try:
        failing(3)
    except ValueError:
        pass
    ids["error"] = mlflow.get_last_active_trace_id()
    with mlflow.start_run(run_name="traced-run") as run:
        agent("inside a run?")
        ids["in_run"] = mlflow.get_last_active_trace_id()
        ids["run_id"] = run.info.run_id
    model = mlflow.set_active_model(name="agent-model")
    agent("with an active model")
    ids["in_model"] = mlflow.get_last_active_trace_id()
    ids["model_id"] = model.model_id
    mlflow.clear_active_model()
    with mlflow.start_span("manual-root", span_type=SpanType.RETRIEVER, attributes={"k": "v"}) as r:
        r.set_inputs({"query": "docs?"})
        with mlflow.start_span("manual-child") as child:
            child.set_outputs(["doc1", "doc2"])
        r.set_outputs({"n": 2})
    ids["manual"] = mlflow.get_last_active_trace_id()
    mlflow.set_trace_tag(ids["manual"], "post.tag", "added later")
    # A link to the run made afterwards (an association, not the trace's own metadata).
    mlflow.MlflowClient().link_traces_to_run([ids["manual"]], ids["run_id"])

    t = ids["nested"]
    llm_span = next(s for s in mlflow.get_trace(t).data.spans if s.name == "llm")
    judge = AssessmentSource(source_type=AssessmentSourceType.LLM_JUDGE, source_id="gpt-judge")
    first = mlflow.log_feedback(
        trace_id=t,
        name="relevance",
        value=0.6,
        source=judge,
        rationale="partly",
        metadata={"judge_version": "v1"},
    )
    human = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id="alice@example.com")
    override = mlflow.override_feedback(
        trace_id=t,
        assessment_id=first.assessment_id,
        value=0.9,
        rationale="fully relevant",
        source=human,
    )
    mlflow.log_expectation(
        trace_id=t, name="expected_answer", value={"text": "sunny", "temp": 21}, source=human
    )
    code = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id="checks.py")
    mlflow.log_feedback(
        trace_id=t, name="llm_quality", value="good", span_id=llm_span.span_id, source=code
    )
    mlflow.log_feedback(
        trace_id=t,
        name="toxicity",
        error=AssessmentError(error_code="RATE_LIMIT_EXCEEDED", error_message="rate limited"),
        source=judge,
    )
    ids["overridden"], ids["override"] = first.assessment_id, override.assessment_id
    ids["traces"] = [ids[k] for k in ("nested", "error", "in_run", "in_model", "manual")]
    return ids


def seed_prompts(uri: str, traces: dict[str, Any]) -> dict[str, Any]:
    """The prompt registry: `qa` (text) with versions 1, 3 and 4 (2 deleted: a gap), commit
    messages, version tags, a `model_config` and a `response_format`, aliases and a prompt
    tag, linked to the `genai/agent` experiment, its version 3 linked to the traced run and
    to a trace; `chat` (a chat template) with one version. `traces`: what `seed_traces` made."""
    from mlflow import MlflowClient

    apply_client_env()
    c = MlflowClient(uri, registry_uri=uri)
    with pointing_at(uri, registry=True):  # the link helpers look objects up globally
        c.register_prompt(
            "qa", "Answer {{question}} briefly.", commit_message="first", tags={"author": "alice"}
        )
        c.register_prompt("qa", "Answer {{question}}.", commit_message="second")
        c.register_prompt(
            "qa",
            "Answer {{question}} in {{lang}}.",
            commit_message="third",
            model_config={"model_name": "gpt-4o", "temperature": 0.2, "max_tokens": 100},
            response_format={"type": "object", "properties": {"answer": {"type": "string"}}},
        )
        c.delete_prompt_version("qa", "2")
        c.create_prompt_version(
            "qa",
            "Answer {{question}} in {{lang}}, kindly.",
            description="fourth",
            tags={"reviewed": "yes"},
        )
        c.set_prompt_version_tag("qa", 3, "stage", "prod")
        c.set_prompt_tag("qa", "owner", "nlp-team")
        c.set_prompt_tag("qa", "_mlflow_experiment_ids", f",{traces['experiment_id']},")
        c.set_prompt_alias("qa", "production", 3)
        c.set_prompt_alias("qa", "newest", 4)
        c.register_prompt(
            "chat",
            [
                {"role": "system", "content": "You are {{style}}."},
                {"role": "user", "content": "{{q}}"},
            ],
            commit_message="chat v1",
        )
        c.link_prompt_version_to_run(traces["run_id"], "prompts:/qa/3")
        c.link_prompt_versions_to_trace([c.get_prompt_version("qa", 3)], traces["nested"])
    return {"names": ["qa", "chat"], "versions": {"qa": [1, 3, 4], "chat": [1]}}


def seed_datasets(uri: str, traces: dict[str, Any]) -> dict[str, Any]:
    """An evaluation dataset `qa-eval` linked to `genai/agent`, with tags and records: one by
    a human with expectations, one from a document with a plain-text output, one with inputs
    only, and one made from the first seeded trace (its source is that trace)."""
    import mlflow
    from mlflow.genai.datasets import create_dataset

    apply_client_env()
    with pointing_at(uri):  # datasets load and merge records through the global URI
        ds = create_dataset(
            name="qa-eval", experiment_id=[traces["experiment_id"]], tags={"team": "nlp"}
        )
        ds.merge_records(
            [
                {
                    "inputs": {"question": "2+2?"},
                    "outputs": {"answer": "4"},
                    "expectations": {"expected_answer": "4"},
                    "tags": {"difficulty": "easy"},
                    "source": {"source_type": "HUMAN", "source_data": {"user_id": "bob"}},
                },
                {
                    "inputs": {"question": "Capital of France?"},
                    "outputs": "Paris",
                    "source": {"source_type": "DOCUMENT", "source_data": {"doc_uri": "s3://d/fr"}},
                },
                {"inputs": {"question": "no expectations here"}},
            ]
        )
        ds.merge_records([mlflow.get_trace(traces["nested"])])
    return {"dataset_id": ds.dataset_id, "records": 4}


def seed_scorers(uri: str, traces: dict[str, Any]) -> dict[str, Any]:
    """Scorers registered to `genai/agent`: an LLM judge made by `make_judge` with two versions,
    and the built-in `Safety` judge."""
    from mlflow.genai.judges import make_judge
    from mlflow.genai.scorers import Safety

    apply_client_env()
    exp = traces["experiment_id"]
    with pointing_at(uri):  # the scorer registry takes the global URI
        for words in ("Is {{ outputs }} polite?", "Is {{ outputs }} polite and short?"):
            judge = make_judge(
                name="tone",
                instructions=words,
                model="openai:/gpt-4o-mini",
                feedback_value_type=str,
            )
            judge.register(experiment_id=exp)
        Safety(model="openai:/gpt-4o-mini").register(experiment_id=exp)
    return {"names": ["safety", "tone"], "versions": {"tone": [1, 2], "safety": [1]}}


def source_summary(uri: str) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    c = MlflowClient(uri)
    exps = c.search_experiments(view_type=ViewType.ALL)
    runs = c.search_runs(
        [e.experiment_id for e in exps], run_view_type=ViewType.ALL, max_results=50000
    )
    models = c.search_registered_models()
    versions = sum(len(c.search_model_versions(f"name = '{m.name}'")) for m in models)
    logged = c.search_logged_models(experiment_ids=[e.experiment_id for e in exps])
    traces = c.search_traces(
        locations=[e.experiment_id for e in exps], include_spans=False, max_results=500
    )
    prompts = c.search_prompts()
    return {
        "experiments": len(exps),
        "runs": len(runs),
        "registered models": len(models),
        "versions": versions,
        "logged models": len(logged),
        "traces": len(traces),
        "prompts": len(prompts),
    }
