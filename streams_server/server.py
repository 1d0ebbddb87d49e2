"""Serving a WSGI app on gevent: one greenlet per connection, thousands of idle live readers.

Live readers (long-poll and SSE) spend nearly all their time waiting. A thread per connection
would cost a thread stack each and a context switch per wake-up; greenlets cost a few kilobytes
and wake together from one notification. Blocking SQLite commits are moved to real threads by
`storage.blocking.run_blocking`, so an fsync never stalls the event loop.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def serve(app: Any, host: str, port: int, on_stop: Callable[[], None]) -> None:
    """Serve `app` until SIGINT/SIGTERM, then stop accepting, and call `on_stop`."""
    import gevent
    from gevent.pywsgi import WSGIServer

    class NoDelayWSGIServer(WSGIServer):  # type: ignore[misc]
        """pywsgi writes a response's headers and body in two sends; with Nagle's algorithm
        the second waits for the client's delayed ACK (~40 ms on every keep-alive response,
        live wake-ups included). Small writes must go out at once."""

        def handle(self, sock: Any, address: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    server = NoDelayWSGIServer((host, port), app, log=None, error_log=logging.getLogger("wsgi"))
    server.start()
    bound_host, bound_port = server.address[:2]
    print(f"durable streams: listening on http://{bound_host}:{bound_port}", file=sys.stderr, flush=True)

    stopping = gevent.event.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, stopping.set)
    stopping.wait()
    log.info("shutting down")
    server.stop(timeout=2)
    on_stop()
