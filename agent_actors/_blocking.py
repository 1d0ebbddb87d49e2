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

    return gevent.get_hub().threadpool.apply(call)  # type: ignore[no-any-return]
