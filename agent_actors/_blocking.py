"""Blocking disk work that must not freeze the supervisor's gevent loop.

`python -m agent_actors` runs on greenlets (see ``__main__``); an ``fsync`` there would stall
every conversation of the process for its duration. `off_loop` runs such a call on a real OS
thread from gevent's pool when gevent has patched ``threading``, and directly otherwise (the
agents embedded in the threaded web app). The streams server has the same few lines
(`streams_server.storage.blocking`); the agents keep their own rather than import the
server's package, which they otherwise reach only over HTTP.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def off_loop(call: Callable[[], T]) -> T:
    """Return ``call()``, run so that only the calling greenlet waits for it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return call()
    import gevent

    outcome = gevent.get_hub().threadpool.apply(_outcome_of, (call,))
    if isinstance(outcome, _Raised):
        error, outcome = outcome.error, None
        try:
            raise error
        finally:
            del error  # the traceback holds this frame: no cycle left for the collector
    return outcome  # type: ignore[no-any-return]


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _outcome_of(call: Callable[[], T]) -> T | _Raised:
    """`call`'s result, or what it raised, as a value: gevent's pool prints the traceback of
    an error raised in a worker, which the caller then reports (or handles) again."""
    try:
        return call()
    except BaseException as error:  # noqa: BLE001 - re-raised by `off_loop` in its greenlet
        return _Raised(error)
