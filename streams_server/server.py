"""Serving a WSGI app on gevent: one greenlet per connection, thousands of idle live readers.

Live readers (long-poll and SSE) spend nearly all their time waiting. A thread per connection
would cost a thread stack each and a context switch per wake-up; greenlets cost a few kilobytes
and wake together from one notification. Blocking SQLite commits are moved to real threads by
`storage.blocking.run_blocking`, so an fsync never stalls the event loop.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import re
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_HTTP_VERSION = re.compile(r"HTTP/(\d+)\.(\d+)")
_ABSOLUTE_FORM = re.compile(r"(?i:https?)://([^/?#]*)([^#]*)")  # RFC 9112, 3.2.2
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a token (RFC 9110, 5.1)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a field value only HTAB may be
# Request headers that hold one value. pywsgi joins a repeated header's values with a comma:
# "Stream-Closed: true" twice read as "true,true" (not closed), two Producer-Ids as one id
# "a,b". A repeat with the same value is dropped; one with another value is refused.
_SINGLE_VALUED = {name.lower(): name for name in (
    "Authorization", "Content-Type", "Last-Event-ID", "Origin", "Producer-Epoch", "Producer-Id",
    "Producer-Seq", "Stream-Closed", "Stream-Expires-At", "Stream-Fork-Offset",
    "Stream-Fork-Sub-Offset", "Stream-Forked-From", "Stream-Seq", "Stream-TTL")}

SOCKET_TIMEOUT_S = 120.0
"""How long a connection may send or take nothing while the server waits on it (see `serve`)."""

FRAMING_PROBLEM_KEY = "durable_streams.framing_problem"
"""Set in the environ when a request's body length is ambiguous in ways the environ itself
no longer shows (see `RequestHeaders.framing_problem`); the streams middleware refuses it."""


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
    from gevent.pywsgi import MAX_REQUEST_LINE, WSGIHandler, WSGIServer

    _raise_descriptor_limit()
    descriptors_warned_at = -math.inf
    in_flight = 0
    idle = gevent.event.Event()
    idle.set()
    draining = False  # set at a stop: requests on open connections are refused from then on

    class NoDelayWSGIServer(WSGIServer):  # type: ignore[misc]
        """pywsgi writes a response's headers and body in two sends; with Nagle's algorithm
        the second waits for the client's delayed ACK (~40 ms on every keep-alive response,
        live wake-ups included). Small writes must go out at once."""

        def handle(self, sock: Any, address: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(socket_timeout_s)
            super().handle(sock, address)

        def do_read(self) -> Any:
            """A connection accepted, or, when the process has no file descriptor left for
            it, a pause: gevent logged a traceback a second until connections closed."""
            try:
                return super().do_read()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
            nonlocal descriptors_warned_at
            if time.monotonic() - descriptors_warned_at > 60:
                descriptors_warned_at = time.monotonic()
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
            nonlocal in_flight
            in_flight += 1  # counted before looking: a stop that begins now waits for it
            idle.clear()
            try:
                if draining:
                    self.close_connection = True
                    _refuse_while_stopping(self.socket, head_only=self.command == "HEAD")
                    return None
                return super().handle_one_response()
            finally:
                if draining:
                    self.close_connection = True
                in_flight -= 1
                if in_flight == 0:
                    idle.set()

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
                self.head_deadline = gevent.Timeout(socket_timeout_s, TimeoutError())
            self.head_deadline.start()
            try:
                outcome = super().handle_one_request()
            finally:
                self.head_deadline.cancel()
            if self.request_line_timed_out:
                # pywsgi closes without a word on any socket error in the request line;
                # past its first byte (the peek above), a request that stalls gets its 408.
                outcome = self._refuse(UnreadableRequest(
                    f"the request line did not arrive within {socket_timeout_s:g} s",
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
                    f"the request's headers did not arrive within {socket_timeout_s:g} s",
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

    server = NoDelayWSGIServer((host, port), app, log=None, error_log=logging.getLogger("wsgi"),
                               handler_class=LeanHeadersHandler)
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
    draining = True
    on_draining()
    if not idle.wait(DRAIN_S):
        log.warning("%d requests still under way after %.0f s: stopping anyway", in_flight,
                    DRAIN_S)
    on_stop()


def _raw_error(status: str, code: str, message: str, extra_headers: str = "") -> bytes:
    """A whole JSON error response for a request the app never saw, with the CORS header
    (its origin unread, any) that lets a page of another origin read why, and the connection
    closed. `extra_headers` are header lines, each ending in CR LF."""
    body = json.dumps({"error": {"code": code, "message": message}})
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra_headers}"
            "Access-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body.encode("latin-1")


_STOPPING = _raw_error(
    "503 Service Unavailable", "SERVER_STOPPING", "the server is stopping: try again in a moment",
    "Retry-After: 1\r\nAccess-Control-Expose-Headers: Retry-After\r\n")
_STOPPING_HEAD = _STOPPING.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
_FULL_PAUSE_S = 0.5  # out of file descriptors: how long until accepting is tried again
_MAX_DESCRIPTORS = 1 << 20
_UNREAD_AT_CLOSE_BYTES = 64 << 20
_MAX_LENGTH_DIGITS = 30  # 10^30 bytes: larger than any body, still a length the app can refuse
_SEND_PIECE_BYTES = 64 * 1024


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


class UnreadableRequest(ValueError):
    """A request too malformed to reach the app (raised while pywsgi reads it): the JSON
    error it is answered with, after which the connection is closed."""

    def __init__(self, message: str, *, status: str = "400 Bad Request",
                 code: str = "MALFORMED_REQUEST") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def response(self) -> bytes:
        return _raw_error(self.status, self.code, str(self))


def _value(header_line: str) -> str:
    return header_line.partition(":")[2].strip()


def _too_large(message: str) -> UnreadableRequest:
    return UnreadableRequest(message, status="431 Request Header Fields Too Large",
                             code="HEADERS_TOO_LARGE")


class RequestHeaders:
    """A request's header block, with what gevent's pywsgi handler asks of one.

    ``headers`` yields the lines as ``Name: value\\r\\n``; `get` answers the first value of a
    name, case-insensitively. At most `MAX_HEADERS` lines of at most `MAX_LINE` bytes, as
    `http.client` allows. A folded line (obsolete line folding, RFC 9112 5.2) is refused:
    pywsgi joined it to the value with its CR LF, which echoed into a response header (an
    ``Origin``) failed the response with a 500 after an append was stored.
    """

    MAX_HEADERS = 100
    MAX_LINE = 65536
    status = ""  # pywsgi refuses the request if this is set; errors here are raised instead
    framing_problem: str | None = None
    """Why the body's length is ambiguous, if it is (see `_framing_problem`)."""

    def __init__(self, rfile: Any) -> None:
        self._lines: list[tuple[str, str]] = []  # (lower-case name, line)
        self._seen: set[str] = set()  # lower-case names
        for _ in range(self.MAX_HEADERS + 1):
            raw = rfile.readline(self.MAX_LINE + 1)
            if len(raw) > self.MAX_LINE:
                raise _too_large(f"a request header line is longer than {self.MAX_LINE} bytes")
            if not raw.endswith(b"\n"):
                # The connection closed inside the header block: what arrived is not the
                # request the client meant (a cut-off header would be carried out without it).
                raise UnreadableRequest("the connection closed before the request's headers ended")
            if raw in (b"\r\n", b"\n"):
                self._first = _first_lines(self._lines)
                self.framing_problem = self._framing_problem()
                return
            # Exactly one line end: a bare CR before it is a control character like any other.
            text = raw.decode("latin-1").removesuffix("\n").removesuffix("\r")
            if _CONTROL.search(text):
                # A bare CR is a line break to some parsers and not to others (a header
                # hidden from one of them), and echoed into a response header it was a 500.
                raise UnreadableRequest(
                    f"the request header line {text[:80]!r} holds a control character")
            line = text + "\r\n"
            if line[:1] in " \t":
                raise UnreadableRequest(
                    f"the request header line {text[:80]!r} starts with a space or tab: folded"
                    f" header values (obsolete line folding) are not accepted")
            name, colon, _ = line.partition(":")
            if not colon or not _FIELD_NAME.fullmatch(name):
                raise UnreadableRequest(f"malformed request header line {text[:80]!r}")
            key = name.lower()
            if key == "host" and any(k == "host" for k, _ in self._lines):
                raise UnreadableRequest("the request has more than one Host header")
            if key in _SINGLE_VALUED and key in self._seen:
                if any(k == key and _value(earlier) != _value(line) for k, earlier in self._lines):
                    # Which one counts? This server would take the first, Werkzeug's the
                    # last, and a proxy either.
                    raise UnreadableRequest(
                        f"the request has conflicting {_SINGLE_VALUED[key]} headers")
                continue
            self._seen.add(key)
            self._lines.append((key, line))
        raise _too_large(f"the request has more than {self.MAX_HEADERS} headers")

    def _framing_problem(self) -> str | None:
        """What makes the body's length ambiguous, where pywsgi would pick one reading:
        several different Content-Lengths (it takes the first), or Content-Length beside
        Transfer-Encoding (it drops the length when the coding is chunked). A length that
        is not a plain decimal number is refused at once (`UnreadableRequest`): pywsgi would
        fail on it before the app is called, or read ``+5`` and ``1_0`` as numbers."""
        lengths = {line.partition(":")[2].strip() for key, line in self._lines
                   if key == "content-length"}
        for length in lengths:
            if not (length.isascii() and length.isdigit()):
                raise UnreadableRequest(
                    f"Content-Length must be a non-negative integer, not {length[:40]!r}",
                    code="INVALID_FRAMING")
            if len(length.lstrip("0")) > _MAX_LENGTH_DIGITS:  # pywsgi's int() fails past 4,300
                raise UnreadableRequest(
                    f"a Content-Length of {len(length)} digits is more than any request body",
                    status="413 Content Too Large", code="PAYLOAD_TOO_LARGE")
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
        return self._lines[index][1].partition(":")[2].strip()

    getheader = get

    @property
    def typeheader(self) -> str | None:
        return self.get("content-type")

    def __delitem__(self, name: str) -> None:
        wanted = name.lower()
        kept = [(key, line) for key, line in self._lines if key != wanted]
        if len(kept) == len(self._lines):
            raise KeyError(name)
        self._lines = kept
        self._first = _first_lines(kept)


def _first_lines(lines: list[tuple[str, str]]) -> dict[str, int]:
    """Each name's first line, by index: pywsgi looks up about eight names per request."""
    first: dict[str, int] = {}
    for index, (key, _) in enumerate(lines):
        first.setdefault(key, index)
    return first
