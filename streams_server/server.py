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

FRAMING_PROBLEM_KEY = "durable_streams.framing_problem"
"""Set in the environ when a request's body length is ambiguous in ways the environ itself
no longer shows (see `RequestHeaders.framing_problem`); the streams middleware refuses it."""


def serve(app: Any, host: str, port: int, on_stop: Callable[[], None]) -> None:
    """Serve `app` until SIGINT/SIGTERM, then stop accepting, and call `on_stop`."""
    import gevent
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class NoDelayWSGIServer(WSGIServer):  # type: ignore[misc]
        """pywsgi writes a response's headers and body in two sends; with Nagle's algorithm
        the second waits for the client's delayed ACK (~40 ms on every keep-alive response,
        live wake-ups included). Small writes must go out at once."""

        def handle(self, sock: Any, address: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    class LeanHeadersHandler(WSGIHandler):  # type: ignore[misc]
        """pywsgi parses request headers with the standard library's email package, about a
        tenth of the server's CPU under a stream of small appends; `RequestHeaders` reads them
        directly (malformed headers still end in pywsgi's 400). Formatting the discarded
        access-log line was another 1.4 % (py-spy, chat benchmark)."""

        def MessageClass(self, rfile: Any, *args: Any) -> RequestHeaders:  # noqa: N802
            return RequestHeaders(rfile)

        def log_request(self) -> None:
            """No access log (the server is made with ``log=None``), so none is formatted:
            pywsgi would build each request's line, clock reading included, and drop it."""

        def get_environ(self) -> dict[str, Any]:
            """The environ, telling the app when the body's framing was ambiguous: it then
            refuses the request (in JSON) and closes the connection."""
            environ: dict[str, Any] = super().get_environ()
            problem = self.headers.framing_problem
            if problem is not None:
                environ[FRAMING_PROBLEM_KEY] = problem
            return environ

    server = NoDelayWSGIServer((host, port), app, log=None, error_log=logging.getLogger("wsgi"),
                               handler_class=LeanHeadersHandler)
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


class RequestHeaders:
    """A request's header block, with what gevent's pywsgi handler asks of one.

    ``headers`` yields the lines as ``Name: value\\r\\n`` (a folded continuation line kept as
    sent, for pywsgi to join); `get` answers the first value of a name, case-insensitively.
    At most `MAX_HEADERS` lines of at most `MAX_LINE` bytes, as `http.client` allows.
    """

    MAX_HEADERS = 100
    MAX_LINE = 65536
    status = ""  # pywsgi refuses the request if this is set; errors here are raised instead
    framing_problem: str | None = None
    """Why the body's length is ambiguous, if it is (see `_framing_problem`)."""

    def __init__(self, rfile: Any) -> None:
        self._lines: list[tuple[str, str]] = []  # (lower-case name or "" for a continuation, line)
        for _ in range(self.MAX_HEADERS + 1):
            raw = rfile.readline(self.MAX_LINE + 1)
            if len(raw) > self.MAX_LINE:
                raise ValueError("request header line too long")
            if raw in (b"\r\n", b"\n", b""):
                self._first = _first_lines(self._lines)
                self.framing_problem = self._framing_problem()
                return
            line = raw.decode("latin-1").rstrip("\r\n") + "\r\n"
            if line[:1] in " \t":
                if not self._lines:
                    raise ValueError("request headers start with a continuation line")
                self._lines.append(("", line))
                continue
            name, colon, _ = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ValueError(f"malformed request header line {line[:80]!r}")
            self._lines.append((name.lower(), line))
        raise ValueError(f"more than {self.MAX_HEADERS} request headers")

    def _framing_problem(self) -> str | None:
        """What makes the body's length ambiguous, where pywsgi would pick one reading:
        several different Content-Lengths (it takes the first), or Content-Length beside
        Transfer-Encoding (it drops the length when the coding is chunked)."""
        lengths = {line.partition(":")[2].strip() for key, line in self._lines
                   if key == "content-length"}
        if len(lengths) > 1:
            return "the request has conflicting Content-Length headers"
        if lengths and "transfer-encoding" in self._first:
            return "a request cannot have both Transfer-Encoding and Content-Length"
        return None

    @property
    def headers(self) -> list[str]:
        return [line for _, line in self._lines]

    def get(self, name: str, default: str | None = None) -> str | None:
        index = self._first.get(name.lower())
        if index is None:
            return default
        value = self._lines[index][1].partition(":")[2]
        for more_key, more in self._lines[index + 1:]:
            if more_key:
                break
            value += more
        return value.strip()

    getheader = get

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")

    def __delitem__(self, name: str) -> None:
        wanted = name.lower()
        kept: list[tuple[str, str]] = []
        dropping = False
        for key, line in self._lines:
            if key:
                dropping = key == wanted
            if not dropping:
                kept.append((key, line))
        if len(kept) == len(self._lines):
            raise KeyError(name)
        self._lines = kept
        self._first = _first_lines(kept)


def _first_lines(lines: list[tuple[str, str]]) -> dict[str, int]:
    """Each name's first line, by index: pywsgi looks up about eight names per request."""
    first: dict[str, int] = {}
    for index, (key, _) in enumerate(lines):
        if key:
            first.setdefault(key, index)
    return first
