"""Work the driver has done in threads of their own, beside its main loop: a result wanted
later (`aside`), and items made ahead of the loop that takes them (`ahead`).

Both threads are daemons: a command that ends early (an error, an interrupt) does not wait for
them. So what they do must be safe to leave half done; what the driver records of it, it
records in its own thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: How often a producer that cannot hand its item over looks whether it was stopped.
_POLL_S = 0.1


def aside(fn: Callable[..., T], *args: Any) -> Future[T]:
    """`fn(*args)` in a daemon thread of its own, for its result later."""
    result: Future[T] = Future()

    def run() -> None:
        try:
            result.set_result(fn(*args))
        except BaseException as e:  # said by `result()`, in the driver's thread
            result.set_exception(e)

    threading.Thread(target=run, name=f"aside-{fn.__name__}", daemon=True).start()
    return result


def ahead(
    items: Iterable[T],
    name: str,
    depth: int = 1,
    stopped: threading.Event | None = None,
    idle: T | None = None,
) -> Generator[T, None, None]:
    """`items`, made in a daemon thread up to `depth` ahead of the loop that takes them: the
    next is made while this one is used. An error raised while making one is raised here, in
    its place. When the loop stops early, `stopped` is set, and the thread stops once it has
    made the item it is making, which nobody takes; a producer given the same event can cut
    that item short (`ExperimentDriver.move`). `idle`, when given, is handed out each time the
    next item is not made yet, before the wait for it: the loop can send on what it holds
    instead of holding it through the wait (`fanout.FLUSH`)."""
    handed: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=max(1, depth))
    if stopped is None:
        stopped = threading.Event()

    def hand(last: bool, value: Any) -> bool:
        while not stopped.is_set():
            try:
                handed.put((last, value), timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not hand(False, item):
                    return
            hand(True, None)
        except BaseException as e:  # raised in the loop's thread, in the item's place
            hand(True, e)

    threading.Thread(target=make, name=f"ahead-{name}", daemon=True).start()
    try:
        while True:
            if idle is not None and handed.empty():
                yield idle
            last, value = handed.get()
            if last:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stopped.set()
