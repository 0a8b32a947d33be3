"""The driver's part for evaluation datasets (an `ObjectDriver`): every dataset of the source,
`manifests/evaluation_datasets.parquet`.

Datasets are not inside experiments (they are linked to some): every dataset moves, its links
remapped to the migrated experiments. They go after the traces their records may come from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from migrator import scope
from migrator.capabilities import EVALUATION_DATASETS
from migrator.fanout import Stage
from migrator.ledger import Targets
from migrator.manifest import Row, evaluation_datasets_table
from migrator.object_driver import ObjectDriver
from migrator.stages import datasets as stage

#: What an import takes besides the row: the target ids of experiments and traces.
INPUTS = ("_experiments", "_traces")

if TYPE_CHECKING:
    from migrator.pipeline import Migration


class DatasetDriver(ObjectDriver):
    key = "source_dataset_id"
    object_type = "evaluation_dataset"
    feature = EVALUATION_DATASETS
    label = "evaluation datasets"
    migrate = Stage("migrate", stage.migrate_dataset, inputs=INPUTS)
    export = Stage("export", stage.export_dataset)
    import_ = Stage("import", stage.import_dataset, inputs=INPUTS)
    verify_stage = Stage("verify", stage.verify_dataset)

    def __init__(self, m: Migration) -> None:
        super().__init__(m, evaluation_datasets_table(m.staging))

    def source_objects(self, exps: dict[str, Row]) -> Iterator[tuple[Any, Row]]:
        for ds in scope.source_datasets(self.m.opts):
            yield (
                ds,
                {
                    "source_dataset_id": ds.dataset_id,
                    "name": ds.name,
                    "source_fingerprint": stage.dataset_fingerprint(ds),
                },
            )

    def item(self, row: Row, exps: dict[str, Row]) -> Row:
        """The row with the target ids of the experiments it is linked to and of the traces
        its records may come from."""
        m = self.m
        experiments = {
            k: e["target_experiment_id"] for k, e in m.exps.items() if e.get("target_experiment_id")
        }
        traces = dict(Targets(m.traces.rows, "target_trace_id"))
        return {**row, "_experiments": experiments, "_traces": traces}
