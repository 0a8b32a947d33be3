"""The driver's part for registered scorers (an `ObjectDriver`): every scorer of the migrated
experiments, `manifests/scorers.parquet`, one row per scorer with all its versions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from migrator import scope
from migrator.capabilities import SCORERS
from migrator.fanout import Stage
from migrator.manifest import Row, scorers_table
from migrator.object_driver import ObjectDriver
from migrator.stages import scorers as stage

if TYPE_CHECKING:
    from migrator.pipeline import Migration


class ScorerDriver(ObjectDriver):
    key = "source_scorer_key"
    object_type = "scorer"
    feature = SCORERS
    label = "scorers"
    migrate = Stage("migrate", stage.migrate_scorer)
    export = Stage("export", stage.export_scorer)
    import_ = Stage("import", stage.import_scorer)
    verify_stage = Stage("verify", stage.verify_scorer)

    def __init__(self, m: Migration) -> None:
        super().__init__(m, scorers_table(m.staging))

    def source_objects(self, exps: dict[str, Row]) -> Iterator[tuple[Any, Row]]:
        stages = scope.lifecycle_stages(exps)
        for exp_id, sv in scope.source_scorers(self.m.opts, stages):
            yield (
                sv,
                {
                    "source_scorer_key": stage.scorer_key_of(exp_id, sv.scorer_name),
                    "source_experiment_id": exp_id,
                    "name": sv.scorer_name,
                    # The latest version and its time: a new version changes both.
                    "source_fingerprint": f"{sv.scorer_version}/{sv.creation_time}",
                },
            )

    def in_scope(self, row: Row, experiment_ids: set[str]) -> bool:
        return row["source_experiment_id"] in experiment_ids

    def item(self, row: Row, exps: dict[str, Row]) -> Row:
        return {
            **row,
            "target_experiment_id": exps[row["source_experiment_id"]]["target_experiment_id"],
        }
