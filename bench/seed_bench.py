"""The benchmark's workload: a realistic tracking server, generated deterministically.

Run `i` of a workload is a pure function of (seed, i): experiment, name, start and end time,
status, user, 10 params, 5 user tags (plus the usual system tags), 5 metrics x 100 steps and
3 artifacts (1 KB, 10 KB in a subfolder, 100 KB). Runs are dealt to experiments round-robin;
every tenth round is nested under the previous round's run of the same experiment (10%).

`write_runs` writes a workload through MlflowClient with a thread pool, the way an ideal
parallel writer would: create_run (tags included), one log_batch (metrics and params),
the artifacts straight through the run's artifact repository, set_terminated. It seeds the
source and is also the write floor (`floors.py write`). The memory benchmark's bare runs are
written with SQL (`seed_sql.py`).
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

BASE_TIME_MS = 1_700_000_000_000  # fixed: the same workload has the same times on every run
METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
PARAM_KEYS = (
    "learning_rate",
    "batch_size",
    "epochs",
    "optimizer",
    "dropout",
    "weight_decay",
    "hidden_units",
    "layers",
    "activation",
    "seed",
)
USERS = ("alice", "bob", "carol", "dave")


@dataclass(frozen=True)
class Workload:
    runs: int = 1000
    experiments: int = 20
    steps: int = 100
    seed: int = 42
    models: int = 3
    versions_per_model: int = 2

    def experiment_name(self, j: int) -> str:
        return f"bench/experiment-{j:03d}"

    def experiment_of(self, i: int) -> int:
        return i % self.experiments

    def parent_of(self, i: int) -> int | None:
        """Every tenth round of runs is nested under the previous round's run."""
        rnd = i // self.experiments
        return i - self.experiments if rnd % 10 == 9 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "experiments": self.experiments,
            "params_per_run": len(PARAM_KEYS),
            "user_tags_per_run": 5,
            "metrics_per_run": len(METRIC_KEYS),
            "steps_per_metric": self.steps,
            "artifacts_per_run": {"count": 3, "bytes": 1024 + 10 * 1024 + 100 * 1024},
            "nested_runs": sum(1 for i in range(self.runs) if self.parent_of(i) is not None),
            "registered_models": self.models,
            "versions_per_model": self.versions_per_model,
        }


@dataclass
class RunData:
    index: int
    experiment: int
    parent: int | None
    name: str
    start_time: int
    end_time: int
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: list[tuple[str, float, int, int]]  # key, value, timestamp, step
    artifacts: list[tuple[str, bytes]]  # relative path, content


def run_data(w: Workload, i: int) -> RunData:
    rng = random.Random(f"{w.seed}:{i}")
    start = BASE_TIME_MS + i * 60_000
    duration = rng.randint(60_000, 3_600_000)
    params = {
        "learning_rate": f"{10 ** rng.uniform(-5, -1):.6g}",
        "batch_size": str(rng.choice([16, 32, 64, 128, 256])),
        "epochs": str(w.steps),
        "optimizer": rng.choice(["adam", "sgd", "adamw", "rmsprop"]),
        "dropout": f"{rng.uniform(0, 0.5):.3f}",
        "weight_decay": f"{10 ** rng.uniform(-6, -2):.6g}",
        "hidden_units": str(rng.choice([64, 128, 256, 512, 1024])),
        "layers": str(rng.randint(1, 12)),
        "activation": rng.choice(["relu", "gelu", "tanh", "silu"]),
        "seed": str(rng.randint(0, 2**31)),
    }
    tags = {
        "mlflow.user": rng.choice(USERS),
        "mlflow.source.name": "train.py",
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": f"{rng.getrandbits(160):040x}",
        "team": rng.choice(["vision", "nlp", "forecasting", "ranking"]),
        "dataset": rng.choice(["imagenet-1k", "wiki-2024", "sales-v3", "clicks-q2"]),
        "model_family": rng.choice(["resnet", "transformer", "gbdt", "mlp"]),
        "priority": rng.choice(["low", "normal", "high"]),
        "ticket": f"ML-{rng.randint(1000, 9999)}",
    }
    metrics = []
    decay = rng.uniform(0.01, 0.1)
    for step in range(w.steps):
        ts = start + step * (duration // max(1, w.steps))
        loss = 2.5 * (1 - decay) ** step + rng.uniform(0, 0.05)
        metrics += [
            ("loss", loss, ts, step),
            ("accuracy", 1 - loss / 2.6, ts, step),
            ("val_loss", loss * rng.uniform(1.0, 1.2), ts, step),
            ("val_accuracy", 1 - loss / 2.4, ts, step),
            ("learning_rate", float(params["learning_rate"]) * 0.99**step, ts, step),
        ]
    artifacts = [
        ("notes.txt", _text(rng, 1024)),
        ("plots/curve.csv", _text(rng, 10 * 1024)),
        ("model.bin", rng.randbytes(100 * 1024)),
    ]
    return RunData(
        index=i,
        experiment=w.experiment_of(i),
        parent=w.parent_of(i),
        name=f"run-{i:06d}",
        start_time=start,
        end_time=start + duration,
        status="FAILED" if i % 25 == 24 else "FINISHED",
        tags=tags,
        params=params,
        metrics=metrics,
        artifacts=artifacts,
    )


def _text(rng: random.Random, size: int) -> bytes:
    line = b"step,value,note\n"
    out = bytearray(line)
    while len(out) < size:
        out += f"{len(out)},{rng.random():.6f},ok\n".encode()
    return bytes(out[:size])


# ---- writing ---------------------------------------------------------------------------------

_local = threading.local()


def client(uri: str) -> Any:
    """One MlflowClient per thread and URI."""
    from migrator.mlflow_io import apply_client_env

    apply_client_env()  # quick-failing retries, no telemetry thread, no "View run" lines
    clients = getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    if uri not in clients:
        from mlflow import MlflowClient

        clients[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return clients[uri]


def create_experiments(uri: str, w: Workload) -> dict[int, str]:
    c = client(uri)
    ids = {}
    for j in range(w.experiments):
        name = w.experiment_name(j)
        existing = c.get_experiment_by_name(name)
        ids[j] = (
            existing.experiment_id
            if existing
            else c.create_experiment(
                name, tags={"team": f"team-{j % 4}", "mlflow.note.content": f"Benchmark {name}"}
            )
        )
    return ids


def write_run(uri: str, d: RunData, experiment_id: str, parent_id: str | None) -> str:
    from mlflow.entities import Metric, Param

    from migrator.mlflow_io import artifact_repo

    c = client(uri)
    tags = dict(d.tags)
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run = c.create_run(experiment_id, start_time=d.start_time, tags=tags, run_name=d.name)
    rid: str = run.info.run_id
    c.log_batch(
        rid,
        metrics=[Metric(k, v, ts, s) for k, v, ts, s in d.metrics],
        params=[Param(k, v) for k, v in d.params.items()],
    )
    with tempfile.TemporaryDirectory(prefix="bench-art-") as tmp:
        for rel, content in d.artifacts:
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
        artifact_repo(uri, run.info.artifact_uri).log_artifacts(tmp)
    c.set_terminated(rid, d.status, end_time=d.end_time)
    return rid


def _in_pool(threads: int, fn: Callable[[int], Any], items: Iterable[int]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))  # re-raises the first error


def write_runs(uri: str, w: Workload, threads: int = 8) -> dict[int, str]:
    """Write the whole workload; returns run index -> run id. Parents first, then children."""
    exp_ids = create_experiments(uri, w)
    ids: dict[int, str] = {}

    def one(i: int) -> None:
        d = run_data(w, i)
        parent = ids[d.parent] if d.parent is not None else None
        ids[i] = write_run(uri, d, exp_ids[d.experiment], parent)

    _in_pool(threads, one, [i for i in range(w.runs) if w.parent_of(i) is None])
    _in_pool(threads, one, [i for i in range(w.runs) if w.parent_of(i) is not None])
    return ids


def seed_models(uri: str, w: Workload, run_ids: dict[int, str]) -> int:
    """A few registered models, each version made from a seeded run (`runs:/<id>/model`)."""
    c = client(uri)
    made = 0
    for m in range(w.models):
        name = f"bench-model-{m}"
        c.create_registered_model(name, tags={"owner": "ml-platform"}, description=f"Model {m}")
        for v in range(w.versions_per_model):
            i = (m * w.versions_per_model + v) % w.runs
            rid = run_ids[i]
            c.create_model_version(name, f"runs:/{rid}/model", run_id=rid, tags={"v": str(v)})
            made += 1
    return made
