"""The driver of object-by-object kinds (migrator.object_driver): what a target that cannot
take a kind gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from migrator.capabilities import TRACES, ServerCapabilities
from migrator.config import Options
from migrator.manifest import SKIPPED, Row, traces_table
from migrator.object_driver import ObjectDriver
from migrator.staging import LocalStaging


class _Progress:
    def __init__(self) -> None:
        self.done = 0

    def advance(self, label: str, rows: Any = (), unchanged: int = 0) -> None:
        self.done += len(list(rows)) + unchanged


class _Traces(ObjectDriver):
    key = "source_trace_id"
    object_type = "trace"
    feature = TRACES
    label = "traces"

    def __init__(self, m: Any, n: int) -> None:
        super().__init__(m, traces_table(m.staging))
        self.n = n
        self.batches: list[int] = []

    def source_objects(self, exps: dict[str, Row]) -> Iterator[tuple[Any, Row]]:
        for i in range(self.n):
            yield None, {
                "source_trace_id": f"tr-{i}",
                "source_experiment_id": "1",
                "source_fingerprint": "f",
            }

    def record(self, rows: list[Row]) -> None:
        self.batches.append(len(rows))
        super().record(rows)


def test_a_kind_the_target_cannot_take_is_skipped_in_bounded_batches(tmp_path: Path) -> None:
    old = ServerCapabilities("http://target", "2.16.2", frozenset())
    opts = Options(source="http://source", target="http://target", capabilities=(old,))
    m = SimpleNamespace(opts=opts, staging=LocalStaging(str(tmp_path)), progress=_Progress())
    driver = _Traces(m, 1234)
    driver.transfer([{"source_experiment_id": "1", "state": "imported"}], True, True)
    assert sum(driver.batches) == 1234 and max(driver.batches) <= 500
    assert m.progress.done == 1234
    rows = list(driver.rows.rows())
    assert len(rows) == 1234 and {r["state"] for r in rows} == {SKIPPED}
    assert "MLflow 2.16.2" in rows[0]["error"] and "does not have it" in rows[0]["error"]
    driver.table.close()
