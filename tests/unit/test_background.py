"""Items made ahead in a thread of their own (`migrator.background.ahead`): made while the
loop uses the one before, errors raised in their place, the thread stopped with the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from migrator.background import ahead


def test_the_next_item_is_made_while_the_loop_uses_this_one() -> None:
    second_made = threading.Event()

    def items() -> Iterator[int]:
        yield 1
        yield 2
        second_made.set()

    taken = ahead(items(), "test")
    assert next(taken) == 1
    assert second_made.wait(5)  # made while the loop still holds item 1
    assert list(taken) == [2]


def test_no_more_than_depth_items_wait_beyond_the_one_being_made() -> None:
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10):
            made.append(i)
            yield i

    taken = ahead(items(), "test", depth=1)
    assert next(taken) == 0
    time.sleep(0.3)
    # item 1 waits to be taken, item 2 is made and waits to be handed over: no further
    assert made == [0, 1, 2]
    assert list(taken) == list(range(1, 10))


def test_an_error_while_making_is_raised_in_the_items_place() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise KeyError("broken")

    taken = ahead(items(), "test")
    assert next(taken) == 1
    with pytest.raises(KeyError, match="broken"):
        next(taken)


def test_a_loop_that_stops_early_stops_the_thread() -> None:
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1000):
            made.append(i)
            yield i

    taken = ahead(items(), "test")
    assert next(taken) == 0
    taken.close()
    time.sleep(0.5)
    stopped_at = len(made)
    time.sleep(0.3)
    assert len(made) == stopped_at <= 3
    assert not [t for t in threading.enumerate() if t.name == "ahead-test" and t.is_alive()]


def test_idle_is_handed_out_only_when_the_next_item_is_not_made_yet() -> None:
    go_on = threading.Event()

    def items() -> Iterator[int]:
        yield 1
        go_on.wait(5)  # item 2 is being made
        yield 2

    taken = ahead(items(), "test", idle=0)
    got = [next(taken)]
    if got == [0]:  # asked before item 1 was handed over
        got = [next(taken)]
    assert got == [1]
    assert next(taken) == 0  # item 2 is not made yet: said so instead of waiting
    go_on.set()
    time.sleep(0.3)
    assert next(taken) == 2  # made by now: no idle before it
    assert set(taken) <= {0}  # the end, said idle too if it was not there yet
