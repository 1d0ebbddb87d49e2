"""Running blocking disk work without stalling a cooperative (gevent) server.

Under the standalone command the server runs on gevent greenlets, where an `fsync` inside
SQLite would freeze every connection of the process. `run_blocking` moves such work to a real
OS thread from gevent's pool when gevent has patched `threading`, and simply calls it otherwise
(threaded servers such as `flask run`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from ..errors import StreamError

T = TypeVar("T")


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("threading"))


def run_blocking(fn: Callable[[], T]) -> T:
    """Call `fn` where blocking is harmless and return its result (or raise its error)."""
    if _gevent_patched():
        import gevent

        outcome = gevent.get_hub().threadpool.apply(_outcome_of, (fn,))
        if isinstance(outcome, _Raised):
            error, outcome = outcome.error, None
            try:
                raise error
            finally:
                # The traceback holds this frame: its reference back to the error would be
                # a cycle, left for the garbage collector (with `fn` and what it holds).
                del error
        return outcome  # type: ignore[no-any-return]
    return fn()


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _outcome_of(fn: Callable[[], T]) -> T | _Raised:
    """`fn`'s result, or what it raised, as a value: gevent's pool would print the traceback
    of an error raised in a worker, even one the caller turns into a 404 for the client.

    A client's error travels without its traceback: the pool's worker keeps its last result
    until its next task, and the traceback's frames would keep an open cursor, and with it
    an old read snapshot of its connection, alive that long.
    """
    try:
        return fn()
    except StreamError as error:
        error.__cause__ = error.__context__ = None  # their tracebacks hold frames too
        return _Raised(error.with_traceback(None))
    except BaseException as error:  # noqa: BLE001 - re-raised by the caller, in its greenlet
        return _Raised(error)
