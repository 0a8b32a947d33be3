"""How an object stands, from its manifest row: the step it needs next, and whether what
points at it must wait for it. Pure decisions, shared by the driver of every kind and `plan`.
"""

from __future__ import annotations

from migrator.manifest import EXPORTED, FAILED, IMPORTED, TAGGED, Row

#: How the error of an object that waits for another begins, wherever it is written (a run's
#: links, a logged model's source run or metrics, a trace's links, a version's source):
#: `still_moving` takes such an object for one that moves once the other does.
WAITS_FOR = "waits for"


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


def failed_at(row: Row, stage: str) -> bool:
    """Whether the object failed at `stage` (and so is retried from there)."""
    return row.get("state") == FAILED and row.get("failed_stage") == stage


def still_moving(row: Row | None, scope_complete: bool) -> bool:
    """Whether an object this migration points at, and that has no target yet, may get one on
    a re-run: not done, or failed on an error that may pass (transient, a lost task), or
    failed waiting for another object itself ("waits for …": it moves once that does); or not
    known at all while some experiment in scope failed (it may sit there). What waits for it
    (a child's parent link, a run's link to a logged model, a version's source) waits; what
    points at an object that failed for good, or lies outside the scope, does without.

    Whether it has a target is its kind's to say (`Migration.link` asks that first), not
    the row's id columns: a logged model's row carries `target_run_id`, its source run's
    target, and a failed logged model whose run had landed was once taken for a landed one,
    so the runs linking it were tagged without the link, for good."""
    if row is None:
        return not scope_complete
    state = row.get("state")
    if state in (IMPORTED, TAGGED):
        return False
    if state != FAILED:
        return True
    error = str(row.get("error") or "")
    return error.startswith(("TransientError", "task lost")) or _waiting(error)


def _waiting(error: str) -> bool:
    """A failure that is a wait for another object (`failed_row`'s text, with or without the
    error's class in front)."""
    return error.startswith(WAITS_FOR) or error.split(": ", 1)[-1].startswith(WAITS_FOR)
