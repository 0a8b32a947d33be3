"""How an object stands, from its manifest row: the step it needs next, and whether what
points at it must wait for it. Pure decisions, shared by the driver of every kind and `plan`.
"""

from __future__ import annotations

from migrator.manifest import EXPORTED, FAILED, IMPORTED, TAGGED, Row


def next_step(row: Row | None) -> str:
    """What a run needs next, from its manifest row: export, import, tag or nothing."""
    if row is None:
        return "export"
    state = row.get("state")
    if state == FAILED:
        return {"export": "export", "import": "import", "tag": "tag"}.get(
            row.get("failed_stage") or "", "export"
        )
    return {EXPORTED: "import", IMPORTED: "tag", TAGGED: "done"}.get(state or "", "export")


def still_moving(row: Row | None, scope_complete: bool) -> bool:
    """Whether an object this migration points at has no target yet but may get one on a
    re-run: not done, or failed on an error that may pass (transient, a lost task); or not
    known at all while some experiment in scope failed (it may sit there). What waits for it
    (a child's parent link, a version's source) waits; what points at an object that failed
    for good, or lies outside the scope, does without."""
    if row is None:
        return not scope_complete
    if row.get("target_run_id") or row.get("target_model_id"):
        return False
    if row.get("state") != FAILED:
        return True
    return str(row.get("error") or "").startswith(("TransientError", "task lost"))
