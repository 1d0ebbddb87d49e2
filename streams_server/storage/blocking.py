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

T = TypeVar("T")


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("threading"))


def run_blocking(fn: Callable[[], T]) -> T:
    """Call `fn` where blocking is harmless and return its result (or raise its error)."""
    if _gevent_patched():
        import gevent

        return gevent.get_hub().threadpool.apply(fn)  # type: ignore[no-any-return]
    return fn()
