"""Serving a WSGI app on gevent: one greenlet per connection, thousands of idle live readers.

Live readers (long-poll and SSE) spend nearly all their time waiting. A thread per connection
would cost a thread stack each and a context switch per wake-up; greenlets cost a few kilobytes
and wake together from one notification. Blocking SQLite commits are moved to real threads by
`storage.blocking.run_blocking`, so an fsync never stalls the event loop.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 120.0
"""How long a connection may send or take nothing while the server waits on it (see `serve`)."""


class CannotListen(RuntimeError):
    """The address cannot be bound (in use, not this machine's, a privileged port)."""


DRAIN_S = 5.0
"""At a stop, how long requests under way may take to finish before `on_stop` closes the store."""


def serve(app: Any, host: str, port: int, on_stop: Callable[[], None],
          on_draining: Callable[[], None] = lambda: None, *,
          socket_timeout_s: float = SOCKET_TIMEOUT_S) -> None:
    """Serve `app` until SIGINT/SIGTERM, then stop accepting, call `on_draining` (which should
    end live reads), let the requests under way finish (up to `DRAIN_S`), and call `on_stop`.
    Idle keep-alive connections are not waited for.

    A connection whose client sends nothing (a keep-alive connection between requests, a
    request's headers or body) or takes nothing (a response's bytes) for `socket_timeout_s`
    is closed: abandoned and deliberately slow connections would otherwise hold a file
    descriptor each until the server ran out. Waiting for data (live reads) is not affected.

    Raises `CannotListen` (without calling `on_stop`) if the address cannot be bound."""
    import gevent
    import gevent.event

    from .pywsgi_handler import LeanHeadersHandler, NoDelayWSGIServer, Serving

    _raise_descriptor_limit()
    serving = Serving(socket_timeout_s)
    server = NoDelayWSGIServer((host, port), app, log=None, error_log=logging.getLogger("wsgi"),
                               handler_class=LeanHeadersHandler, serving=serving)
    try:
        server.start()
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {_why_not(exc)}") from exc
    bound_host, bound_port = server.address[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host  # IPv6, as in URLs
    print(f"durable streams: listening on http://{shown_host}:{bound_port}", file=sys.stderr,
          flush=True)

    stopping = gevent.event.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, stopping.set)
    stopping.wait()
    log.info("shutting down")
    server.close()
    serving.draining = True
    on_draining()
    if not serving.idle.wait(DRAIN_S):
        log.warning("%d requests still under way after %.0f s: stopping anyway",
                    serving.in_flight, DRAIN_S)
    on_stop()


_MAX_DESCRIPTORS = 1 << 20


def _why_not(exc: OSError) -> str:
    """Why an address cannot be bound, in words (gevent adds the address tuple to a failed
    name lookup's message)."""
    if isinstance(exc, socket.gaierror):
        cause = exc.args[1] if len(exc.args) > 1 else str(exc)
        return f"not an address of this machine, nor a name it can look up ({cause})"
    return exc.strerror or str(exc)


def _raise_descriptor_limit() -> None:
    """Every connection holds a file descriptor, and live readers hold theirs for long: the
    soft limit (often 1,024) is raised as far as the hard one allows (up to 2^20)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, _MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.info("could not raise the file descriptor limit from %d: %s", soft, exc)
