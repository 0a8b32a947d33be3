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
from migrator.manifest import Row, evaluation_datasets_table
from migrator.object_driver import ObjectDriver
from migrator.stages import datasets as stage

#: What an import takes besides the row: the target ids of the experiments. (The target ids of
#: the traces its records come from the task looks up in the traces manifest itself.)
INPUTS = ("_experiments",)

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

    def transfer(self, exp_rows: list[Row], do_export: bool, do_import: bool) -> None:
        if do_import:  # the tasks look the migrated traces up in its compacted file
            self.m.traces.table.compact()
        super().transfer(exp_rows, do_export, do_import)

    def item(self, row: Row, exps: dict[str, Row]) -> Row:
        """The row with the target ids of the experiments it may be linked to."""
        experiments = {
            k: e["target_experiment_id"]
            for k, e in self.m.exps.items()
            if e.get("target_experiment_id")
        }
        return {**row, "_experiments": experiments}
