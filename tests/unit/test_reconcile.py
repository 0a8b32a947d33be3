"""The two other sides of verify: duplicates on the target, source objects never moved."""

from __future__ import annotations

from migrator.reconcile import DUPLICATE, NOT_MIGRATED, duplicates, never_moved


def test_a_target_object_the_manifest_does_not_name_is_a_duplicate() -> None:
    found = [("t1", "s1", "a"), ("t2", "s1", "a copy"), ("t3", "s2", "b")]
    rows = list(duplicates("run", found, {"s1": "t1", "s2": "t3"}))
    assert [(r["target_id"], r["source_id"], r["outcome"]) for r in rows] == [
        ("t2", "s1", DUPLICATE)
    ]
    assert "the manifest names t1" in rows[0]["details"]


def test_an_orphan_of_a_failed_import_is_a_duplicate_too() -> None:
    rows = list(duplicates("logged_model", [("m-1", "s9", None)], {"s9": None}))
    assert len(rows) == 1
    assert rows[0]["object_type"] == "logged_model"
    assert "names none" in rows[0]["details"]


def test_objects_of_other_migrations_are_not_reported() -> None:
    assert list(duplicates("run", [("t1", "elsewhere", None)], {"s1": "t0"})) == []


def test_source_objects_without_a_manifest_row_never_moved() -> None:
    rows = list(never_moved("run", [("a", "run a"), ("b", "run b")], {"a": {}}))
    assert [(r["source_id"], r["outcome"], r["target_id"]) for r in rows] == [
        ("b", NOT_MIGRATED, None)
    ]
    assert rows[0]["name"] == "run b"
