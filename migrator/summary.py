"""What a command did: counts by object and state, the failures by name, the figures."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from migrator.manifest import Row

#: Failed objects the summary lists at most (the manifests have them all).
SHOWN = 50


@dataclass
class Summary:
    """What a command did, for the closing table and the exit code."""

    command: str
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    experiments: Counter[str] = field(default_factory=Counter)
    runs: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    """Runs in scope by what the manifests knew: new, re-synced, resumed, unchanged."""
    logged_models: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    prompts: Counter[str] = field(default_factory=Counter)
    prompt_versions: Counter[str] = field(default_factory=Counter)
    objects: dict[str, Counter[str]] = field(default_factory=dict)
    """Traces, evaluation datasets… by final state (`ObjectDriver`s), by their label."""
    objects_found: dict[str, Counter[str]] = field(default_factory=dict)
    """The same, by what the manifests knew of them: new, changed, unchanged."""
    failed: list[Row] = field(default_factory=list)
    """The first `SHOWN` failed objects (all of them are in the manifests)."""
    n_failed: int = 0
    servers: list[str] = field(default_factory=list)
    """What each server is and lacks (`capabilities.notes`), said once."""
    staging: str = ""
    verify: Any = None
    """The VerifyReport of `verify`, or of `migrate --verify`."""

    @property
    def ok(self) -> bool:
        return not self.n_failed and (self.verify is None or self.verify.ok)

    def add_failed(self, rows: Iterable[Row]) -> None:
        """Count failed objects, keeping the first `SHOWN` to list: however many fail, the
        summary holds no more."""
        for r in rows:
            self.n_failed += 1
            if len(self.failed) < SHOWN:
                self.failed.append(r)

    def render(self) -> str:
        if self.command == "verify" and self.verify is not None:
            return str(self.verify.render())
        n_runs = sum(self.runs.values())
        rate = n_runs / self.elapsed if self.elapsed > 0 else 0.0
        lines = [
            f"{self.command}: {sum(self.experiments.values())} experiments, {n_runs} runs "
            f"in {self.elapsed:.1f} s ({rate:.1f} runs/s)",
            "  experiments: " + format_counts(self.experiments),
            "  runs:        " + format_counts(self.runs),
            "  runs found:  " + format_counts(self.found),
            "  work done:   " + format_counts(self.actions),
        ]
        for label, counts in (
            ("logged models:", self.logged_models),
            ("models:", self.models),
            ("versions:", self.versions),
            ("prompts:", self.prompts),
            ("prompt versions:", self.prompt_versions),
            *((f"{label}:", counts) for label, counts in self.objects.items()),
            *((f"{label} found:", counts) for label, counts in self.objects_found.items()),
        ):
            if counts:
                lines.append(f"  {label:16} " + format_counts(counts))
        lines += [f"  {line}" for line in self.servers]
        if self.n_failed:
            lines.append(f"  FAILED ({self.n_failed}):")
            for r in self.failed:
                what = describe_row(r)
                lines.append(f"    {what}: {r.get('failed_stage')}: {r.get('error')}")
            if self.n_failed > len(self.failed):
                lines.append(f"    … and {self.n_failed - len(self.failed)} more (see manifests)")
        lines.append(f"  manifests:   {self.staging}/manifests/")
        if self.verify is not None:
            lines.append(self.verify.render())
        return "\n".join(lines)


def describe_row(r: Row) -> str:
    """How a summary names the object of a manifest row (`object`, where its driver said)."""
    if "object" in r:
        return str(r["object"])
    if "source_trace_id" in r:
        return f"trace {r['source_trace_id']}"
    if "source_scorer_key" in r:
        return f"scorer {r['source_scorer_key']}"
    if "source_dataset_id" in r:
        return f"evaluation dataset {r['source_dataset_id']} ({r.get('name')})"
    if "source_run_id" in r and "source_model_id" not in r:
        return f"run {r['source_run_id']}"
    if "source_model_id" in r:
        return f"logged model {r['source_model_id']} ({r.get('name')})"
    if "version" in r:
        return f"model version {r.get('name')!r} {r['version']}"
    if "source_experiment_id" in r:
        return f"experiment {r.get('name')!r} ({r.get('source_experiment_id')})"
    return f"registered model {r.get('name')!r}"


def format_counts(c: Counter[str]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(c.items())) or "none"
