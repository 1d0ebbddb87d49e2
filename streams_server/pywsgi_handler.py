"""gevent's pywsgi, made lean and held to RFC 9112: the server and connection handler that
`server.serve` runs.

The handler reads headers without the email package (`RequestHeaders`), answers requests it
cannot read in JSON before the app is called (400, 408, 414, 431, 505), bounds each
connection's waits (`Serving.socket_timeout_s`), and counts the requests under way, which a
stop waits for while it refuses new ones (503).
"""

from __future__ import annotations

import errno
import logging
import math
import re
import resource
import socket
import time
from typing import Any

import gevent
import gevent.event
from gevent.pywsgi import MAX_REQUEST_LINE, WSGIHandler, WSGIServer

from .request_head import FRAMING_PROBLEM_KEY, RequestHeaders, UnreadableRequest, raw_error

log = logging.getLogger(__name__)

_HTTP_VERSION = re.compile(r"HTTP/(\d+)\.(\d+)")
_ABSOLUTE_FORM = re.compile(r"(?i:https?)://([^/?#]*)([^#]*)")  # RFC 9112, 3.2.2

_STOPPING = raw_error(
    "503 Service Unavailable", "SERVER_STOPPING", "the server is stopping: try again in a moment",
    "Retry-After: 1\r\nAccess-Control-Expose-Headers: Retry-After\r\n")
_STOPPING_HEAD = _STOPPING.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
_FULL_PAUSE_S = 0.5  # out of file descriptors: how long until accepting is tried again
_UNREAD_AT_CLOSE_BYTES = 64 << 20
_SEND_PIECE_BYTES = 64 * 1024


class Serving:
    """What the server's connections share: how long one may wait on its client, the count
    of requests under way (`idle` while there are none), and whether a stop is under way."""

    def __init__(self, socket_timeout_s: float) -> None:
        self.socket_timeout_s = socket_timeout_s
        self.in_flight = 0
        self.idle = gevent.event.Event()
        self.idle.set()
        self.draining = False  # set at a stop: requests on open connections are refused


class NoDelayWSGIServer(WSGIServer):  # type: ignore[misc]
    """pywsgi writes a response's headers and body in two sends; with Nagle's algorithm
    the second waits for the client's delayed ACK (~40 ms on every keep-alive response,
    live wake-ups included). Small writes must go out at once."""

    descriptors_warned_at = -math.inf

    def __init__(self, *args: Any, serving: Serving, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.serving = serving

    def handle(self, sock: Any, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.serving.socket_timeout_s)
        super().handle(sock, address)

    def do_read(self) -> Any:
        """A connection accepted, or, when the process has no file descriptor left for
        it, a pause: gevent logged a traceback a second until connections closed."""
        try:
            return super().do_read()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        if time.monotonic() - self.descriptors_warned_at > 60:
            self.descriptors_warned_at = time.monotonic()
            log.warning("out of file descriptors (limit %d): new connections wait until "
                        "some close; raise the limit (ulimit -n) for more clients",
                        resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.stop_accepting()
        gevent.spawn_later(_FULL_PAUSE_S, lambda: self.closed or self.start_accepting())
        return None


class LeanHeadersHandler(WSGIHandler):  # type: ignore[misc]
    """pywsgi parses request headers with the standard library's email package, about a
    tenth of the server's CPU under a stream of small appends; `RequestHeaders` reads them
    directly (malformed headers end in a JSON 400). Formatting the discarded
    access-log line was another 1.4 % (py-spy, chat benchmark)."""

    path: str  # the request target, as pywsgi read it
    provided_content_length: str | None  # the app's own, if it gave one
    head_deadline: Any = None  # a gevent.Timeout for the request line and headers

    def MessageClass(self, rfile: Any, *args: Any) -> RequestHeaders:  # noqa: N802
        return RequestHeaders(rfile)

    def log_request(self) -> None:
        """No access log (the server is made with ``log=None``), so none is formatted:
        pywsgi would build each request's line, clock reading included, and drop it."""

    def finalize_headers(self) -> None:
        """pywsgi gives a response without a Content-Length the length of its body: 0
        for every HEAD, where RFC 9110 (8.6) allows only what the GET would send. A HEAD
        without one gets none (nor the chunked framing pywsgi would choose instead)."""
        if self.command == "HEAD" and self.provided_content_length is None:
            self.provided_content_length = ""  # known to pywsgi: it adds none
            super().finalize_headers()
            self.provided_content_length = None
        else:
            super().finalize_headers()

    def get_environ(self) -> dict[str, Any]:
        """The environ, telling the app when the body's framing was ambiguous: it then
        refuses the request (in JSON) and closes the connection.

        A request target in absolute form (``GET http://host/v1/stream/x``), which a
        server must accept, is read as its path, and its authority as the Host."""
        absolute = _ABSOLUTE_FORM.fullmatch(self.path)
        if absolute is not None:
            self.path = absolute[2] if absolute[2].startswith("/") else "/" + absolute[2]
        environ: dict[str, Any] = super().get_environ()
        if absolute is not None:
            environ["HTTP_HOST"] = absolute[1]
        problem = self.headers.framing_problem
        if problem is not None:
            environ[FRAMING_PROBLEM_KEY] = problem
        return environ

    def read_request(self, raw_requestline: str) -> bool:
        """pywsgi's reading, held to RFC 9112: no HTTP/0.9 request (``GET /path``, which
        it answered), a Host header in every HTTP/1.1 request (3.2), and a
        Transfer-Encoding in an HTTP/1.0 request taken as faulty framing (6.1)."""
        if len(raw_requestline.split()) != 3:
            raise UnreadableRequest(
                f"malformed request line {raw_requestline.rstrip()[:80]!r}: it must be a "
                "method, a target and an HTTP version")
        try:
            read: bool = super().read_request(raw_requestline)
        finally:
            self.head_deadline.cancel()  # the head is in: the app's time is its own
        if self.request_version == "HTTP/1.1" and self.headers.get("host") is None:
            raise UnreadableRequest("an HTTP/1.1 request must have a Host header")
        if self.request_version == "HTTP/1.0" and self.headers.get("transfer-encoding"):
            self.headers.framing_problem = "an HTTP/1.0 request cannot use Transfer-Encoding"
        return read

    def _check_http_version(self) -> bool:
        """HTTP/1.0 and 1.1 only; another well-formed version is a 505, not a 400."""
        match = _HTTP_VERSION.fullmatch(self.request_version)
        if match is None:
            return False
        if (int(match[1]), int(match[2])) not in ((1, 0), (1, 1)):
            raise UnreadableRequest(
                f"HTTP version {self.request_version[:20]!r} is not supported "
                "(HTTP/1.0 and HTTP/1.1 are)",
                status="505 HTTP Version Not Supported", code="HTTP_VERSION_NOT_SUPPORTED")
        return True

    def handle_one_response(self) -> Any:
        """Counted while it runs: a stop waits for these, not for idle connections. Once
        the stop has begun, a request that arrives on a connection opened before is
        answered 503 (and the connection closed) without reaching the app, whose store
        is about to close; one under way then finishes, and its connection is closed."""
        serving = self.server.serving
        serving.in_flight += 1  # counted before looking: a stop that begins now waits for it
        serving.idle.clear()
        try:
            if serving.draining:
                self.close_connection = True
                _refuse_while_stopping(self.socket, head_only=self.command == "HEAD")
                return None
            return super().handle_one_response()
        finally:
            if serving.draining:
                self.close_connection = True
            serving.in_flight -= 1
            if serving.in_flight == 0:
                serving.idle.set()

    def run_application(self) -> None:
        try:
            super().run_application()
        finally:
            body = self.wsgi_input
            if self.close_connection and body is not None and _body_unread(body):
                # pywsgi reads what is left of a body after every answer, to reach the
                # next request. A closing connection has none: an answer refusing the
                # body (a 413 for 10^23 declared bytes) would read it to its end, and
                # a malformed chunk's bytes would be parsed as a request. They are
                # read as bytes and dropped instead, as far as a bounded drain goes.
                body.chunked_input = False
                body.content_length = body.position
                self.drain_before_close = True

    def handle_one_request(self) -> Any:
        self.drain_before_close = False
        self.request_line_timed_out = False
        if not self.rfile.closed:
            try:
                if not self.rfile.peek(1):
                    return None  # the client closed the connection
            except OSError:  # an idle keep-alive connection timed out, or a reset
                return None
        # The socket timeout bounds each wait for bytes; this bounds the whole head, which
        # a client dripping a byte at a time would otherwise never finish (or time out).
        if self.head_deadline is None:  # one per connection, started for each request
            self.head_deadline = gevent.Timeout(self.server.serving.socket_timeout_s, TimeoutError())
        self.head_deadline.start()
        try:
            outcome = super().handle_one_request()
        finally:
            self.head_deadline.cancel()
        if self.request_line_timed_out:
            # pywsgi closes without a word on any socket error in the request line;
            # past its first byte (the peek above), a request that stalls gets its 408.
            outcome = self._refuse(UnreadableRequest(
                f"the request line did not arrive within {self.server.serving.socket_timeout_s:g} s",
                status="408 Request Timeout", code="REQUEST_TIMEOUT"))
        elif isinstance(outcome, tuple) and outcome[0] == "414":
            outcome = self._refuse(UnreadableRequest(
                f"the request line is longer than {MAX_REQUEST_LINE - 1} bytes",
                status="414 URI Too Long", code="REQUEST_LINE_TOO_LONG"))
        if isinstance(outcome, tuple):  # a refusal, answered here rather than by pywsgi
            self._answer_and_close(outcome[1])
            return None
        if self.drain_before_close:
            # Closed with the client's body unread, the kernel would reset the
            # connection, and a client still sending might never read the answer.
            _shut_and_drain(self.socket)
        return outcome

    def read_requestline(self) -> str:
        try:
            line: str = super().read_requestline()
        except TimeoutError:
            self.request_line_timed_out = True
            raise
        return line

    def _sendall(self, data: Any) -> None:
        """A response in pieces: the socket timeout bounds each send, so that a client
        reading steadily, however slowly, gets a large response whole (one `sendall`
        of 1 MiB must end within the timeout: 8.7 KB/s at 120 s).

        Each piece is first sent as it is, once: nearly all go out whole. gevent's
        `sendall` asks the kernel for the socket's buffer size first (a system call per
        response and per SSE event, 3 % of the server's time in the chat)."""
        view = memoryview(data)
        for start in range(0, len(view), _SEND_PIECE_BYTES):
            piece = view[start:start + _SEND_PIECE_BYTES]
            try:
                sent = self.socket.send(piece)
            except OSError:
                sent = 0  # pywsgi's own sendall meets the error again, and reports it
            self.response_length += sent
            if sent < len(piece):
                super()._sendall(piece[sent:])

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """A request pywsgi could not read as far as the app: answered in JSON like any
        other refusal, and logged as the client's mistake (pywsgi logs the socket at
        ERROR level and answers with an empty body)."""
        if isinstance(ex, UnreadableRequest):
            refusal = ex
        elif isinstance(ex, TimeoutError):
            refusal = UnreadableRequest(
                f"the request's headers did not arrive within {self.server.serving.socket_timeout_s:g} s",
                status="408 Request Timeout", code="REQUEST_TIMEOUT")
        elif isinstance(ex, (ValueError, OSError)):
            message = getattr(ex, "formatted_message", None) or str(ex) or type(ex).__name__
            refusal = UnreadableRequest(f"malformed HTTP request: {message[:200]}")
        else:
            log.exception("failed to read a request from %s", self.client_address)
            refusal = UnreadableRequest("the server could not read this request")
        return self._refuse(refusal)

    def _refuse(self, refusal: UnreadableRequest) -> tuple[str, bytes]:
        log.info("refused a request from %s: %s", self.client_address[0], refusal)
        return refusal.status[:3], refusal.response()

    def _answer_and_close(self, response: bytes) -> None:
        """pywsgi sends a refusal and closes at once: with the rest of a head (a header
        far too long, a dripped byte) still coming, the kernel answers it with a reset,
        which can drop the refusal before the client reads it."""
        try:
            self.socket.sendall(response)
        except OSError:  # the client reset or went away: nothing to add
            return
        _shut_and_drain(self.socket)


def _refuse_while_stopping(sock: Any, *, head_only: bool) -> None:
    """Answer a request that arrived on an open connection while the server stops: 503, and
    the connection closed (after `_shut_and_drain`)."""
    try:
        sock.sendall(_STOPPING_HEAD if head_only else _STOPPING)
    except OSError:  # the client reset or went away: nothing to add
        return
    _shut_and_drain(sock)


def _shut_and_drain(sock: Any) -> None:
    """Ready for closing a connection whose client may still be sending (a body the answer
    refused). Closed with data unread, the kernel would reset it, and the client might never
    read the answer: this side's end is shut first, and what the client still sends is read
    and dropped (up to 64 MiB, for a second at most)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        deadline = time.monotonic() + 1.0
        left = _UNREAD_AT_CLOSE_BYTES
        while left > 0 and time.monotonic() < deadline and (chunk := sock.recv(min(65536, left))):
            left -= len(chunk)
    except OSError:  # the client reset or went away (or the second passed): nothing to add
        pass


def _body_unread(body: Any) -> bool:
    """Whether a request body may have bytes pywsgi has not read (gevent's `Input`)."""
    if body.chunked_input:
        return bool(body.chunk_length != 0)  # 0 once the last chunk is read; -1 before the first
    return bool(body.position < (body.content_length or 0))
