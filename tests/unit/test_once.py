"""Exactly-once creation (migrator.once): create_once and adopt, with fake find/create/discard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from migrator.errors import PermanentError, TransientError
from migrator.once import Lineage, adopt, create_once


@dataclass
class Obj:
    id: str
    created: int


@dataclass
class Target:
    """A fake target server: what `find` returns, what `create` does, what was discarded."""

    found: list[Obj] = field(default_factory=list)
    create_error: BaseException | None = None
    creates: int = 0
    finds: int = 0
    discarded: list[tuple[str, str]] = field(default_factory=list)

    def find(self) -> list[Obj]:
        self.finds += 1
        return list(self.found)

    def create(self) -> Obj:
        self.creates += 1
        if self.create_error is not None:
            raise self.create_error
        new = Obj(f"new-{self.creates}", 100 + self.creates)
        return new

    def discard(self, extra: Obj, kept_id: str) -> None:
        self.discarded.append((extra.id, kept_id))

    def spec(self, *, discard: bool = True) -> Lineage:
        fn: Callable[[Any, str], None] | None = self.discard if discard else None
        return Lineage(
            kind="run",
            obj="run src-1",
            find=self.find,
            create=self.create,
            order=lambda o: (o.created, o.id),
            target_id=lambda o: o.id,
            discard=fn,
            stage="import",
        )


# ---- create_once: the plain paths ------------------------------------------------------


def test_creates_once_when_nothing_found() -> None:
    t = Target()
    got = create_once(t.spec(), look_first=True)
    assert got.id == "new-1"
    assert t.creates == 1
    assert t.finds == 1


def test_no_lookup_without_look_first() -> None:
    t = Target(found=[Obj("old", 1)])
    got = create_once(t.spec(), look_first=False)
    assert got.id == "new-1"
    assert t.creates == 1
    assert t.finds == 0


def test_look_first_adopts_existing_without_creating() -> None:
    t = Target(found=[Obj("old", 1)])
    got = create_once(t.spec(), look_first=True)
    assert got.id == "old"
    assert t.creates == 0
    assert t.discarded == []


def test_look_first_adopts_smallest_and_discards_others() -> None:
    t = Target(found=[Obj("b", 5), Obj("a", 2), Obj("c", 9)])
    got = create_once(t.spec(), look_first=True)
    assert got.id == "a"
    assert t.creates == 0
    assert sorted(t.discarded) == [("b", "a"), ("c", "a")]


# ---- create_once: ambiguous failures ---------------------------------------------------


def _ambiguous_errors() -> list[BaseException]:
    return [
        MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS),
        MlflowException("boom", error_code=INTERNAL_ERROR),
        MlflowException("later", error_code=TEMPORARILY_UNAVAILABLE),
        MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED),
        TransientError("reset", obj="run src-1"),
        OSError("connection reset by peer"),
        ConnectionResetError("reset"),
    ]


@pytest.mark.parametrize("error", _ambiguous_errors(), ids=lambda e: type(e).__name__)
def test_ambiguous_failure_looks_up_and_adopts(error: BaseException) -> None:
    t = Target(found=[Obj("landed", 1)], create_error=error)
    got = create_once(t.spec(), look_first=False)
    assert got.id == "landed"
    assert t.creates == 1
    assert t.finds == 1


def test_ambiguous_failure_adopts_smallest_of_several() -> None:
    t = Target(
        found=[Obj("z", 7), Obj("y", 3)],
        create_error=MlflowException("boom", error_code=INTERNAL_ERROR),
    )
    got = create_once(t.spec(), look_first=False)
    assert got.id == "y"
    assert t.discarded == [("z", "y")]


@pytest.mark.parametrize("error", _ambiguous_errors(), ids=lambda e: type(e).__name__)
def test_ambiguous_failure_nothing_found_is_transient(error: BaseException) -> None:
    t = Target(create_error=error)
    with pytest.raises(TransientError) as info:
        create_once(t.spec(), look_first=False)
    assert info.value.obj == "run src-1"
    assert info.value.stage == "import"
    assert "run src-1" in str(info.value)
    assert info.value.__cause__ is error
    assert t.creates == 1
    assert t.finds == 1


def test_ambiguous_failure_after_empty_look_first_looks_again() -> None:
    t = Target(create_error=OSError("reset"))
    with pytest.raises(TransientError):
        create_once(t.spec(), look_first=True)
    assert t.finds == 2
    assert t.creates == 1


@pytest.mark.parametrize("code", [INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST])
def test_non_ambiguous_mlflow_error_propagates_without_lookup(code: int) -> None:
    error = MlflowException("bad", error_code=code)
    t = Target(found=[Obj("x", 1)], create_error=error)
    with pytest.raises(MlflowException) as info:
        create_once(t.spec(), look_first=False)
    assert info.value is error
    assert t.finds == 0
    assert t.creates == 1


def test_permanent_error_propagates_without_lookup() -> None:
    error = PermanentError("refused", obj="run src-1")
    t = Target(found=[Obj("x", 1)], create_error=error)
    with pytest.raises(PermanentError) as info:
        create_once(t.spec(), look_first=False)
    assert info.value is error
    assert t.finds == 0


def test_other_exception_propagates_without_lookup() -> None:
    t = Target(found=[Obj("x", 1)], create_error=ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        create_once(t.spec(), look_first=False)
    assert t.finds == 0


# ---- adopt ------------------------------------------------------------------------------


def test_adopt_single_keeps_it_without_discard() -> None:
    t = Target()
    only = Obj("only", 4)
    assert adopt(t.spec(discard=False), [only]) is only
    assert t.discarded == []


def test_adopt_keeps_smallest_by_order_and_discards_every_other() -> None:
    t = Target()
    found = [Obj("m", 5), Obj("k", 1), Obj("n", 8), Obj("l", 3)]
    kept = adopt(t.spec(), found)
    assert kept.id == "k"
    assert sorted(t.discarded) == [("l", "k"), ("m", "k"), ("n", "k")]


def test_adopt_order_is_deterministic_whatever_the_input_order() -> None:
    found = [Obj("a", 2), Obj("b", 1), Obj("c", 3)]
    kept = {adopt(Target().spec(), list(p)).id for p in (found, found[::-1], found[1:] + found[:1])}
    assert kept == {"b"}


def test_adopt_several_without_discard_is_permanent() -> None:
    t = Target()
    with pytest.raises(PermanentError) as info:
        adopt(t.spec(discard=False), [Obj("a", 1), Obj("b", 2)])
    assert info.value.obj == "run src-1"
    assert info.value.stage == "import"
    assert "2 target runs" in info.value.message


def test_create_once_look_first_several_without_discard_is_permanent() -> None:
    t = Target(found=[Obj("a", 1), Obj("b", 2)])
    with pytest.raises(PermanentError):
        create_once(t.spec(discard=False), look_first=True)
    assert t.creates == 0
