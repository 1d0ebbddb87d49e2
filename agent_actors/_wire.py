"""Lean HTTP/1.1 keep-alive requests for the streams client's ordinary calls.

An agent appends a chunk of its answer every few tens of milliseconds, so the client's cost
per request decides how many conversations one process can stream. Through `requests` a
small append costs about 0.5-0.7 ms of CPU (preparing and merging settings, urllib3, the
standard library's ``email`` header parser); this module writes the request in one ``send``
and parses the response itself, for about a tenth of that.

It covers what the protocol's request/response calls need and nothing more: a pool of
persistent connections to one origin (``http`` or ``https``), ``Content-Length`` and chunked
response bodies, and failures raised as `requests` exceptions so that the retry logic in
`agent_actors._http` treats both stacks alike. Live reads (SSE, long-poll) stay on
`requests`, whose sessions `agent_actors._interruptible` can abort from another thread.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, cast
from urllib.parse import urlencode, urlsplit

import requests

from agent_actors.errors import ConfigurationError

_USER_AGENT = "agent-actors"
_MAX_LINE = 65536
_MAX_HEADERS = 200
_NO_BODY_STATUSES = frozenset({204, 304})
_TRUSTED_IDLE_S = 1.0


@dataclass(frozen=True)
class WireRequest:
    """What was sent, for error messages (``response.request.method``/``.url``)."""

    method: str
    url: str


class ResponseHeaders(Mapping[str, str]):
    """Response headers, looked up case-insensitively; repeated ones joined with ``", "``.

    Names are kept lower-cased: `requests`' `CaseInsensitiveDict` keeps the sent spelling at
    the price of two dictionary operations per access, measurable at an append per token.
    """

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        key = name.lower()
        previous = self._values.get(key)
        self._values[key] = value if previous is None else f"{previous}, {value}"

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ResponseHeaders({self._values!r})"


class WireResponse:
    """A fully read response with the parts of `requests.Response` the client uses."""

    def __init__(self, request: WireRequest, status: int, reason: str,
                 headers: ResponseHeaders, content: bytes) -> None:
        self.request = request
        self.url = request.url
        self.status_code = status
        self.reason = reason
        self.headers = headers
        self.content = content

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def close(self) -> None:
        """Nothing to release: the body is read and the connection is back in the pool."""

    def __enter__(self) -> WireResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = cast(IO[bytes], sock.makefile("rb", buffering=65536))
        self.idle_since = 0.0

    def dropped(self) -> bool:
        """True if the server closed this idle connection (it is readable: EOF or junk).

        Not looked at when idle for less than `_TRUSTED_IDLE_S`: servers keep idle
        connections for seconds, and at an append every few tens of milliseconds the
        ``select`` is a syscall per request; a rare early close is caught as `_Stale`."""
        if time.monotonic() - self.idle_since < _TRUSTED_IDLE_S:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()


def _tls_context() -> ssl.SSLContext:
    """Trust the certificates `requests` trusts (the live reads go through it): the bundle
    named by ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, else certifi's. The system's store
    alone failed every append to a server with a private CA that the tails accepted."""
    bundle = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
              or requests.utils.DEFAULT_CA_BUNDLE_PATH)
    try:
        if os.path.isdir(bundle):
            return ssl.create_default_context(capath=bundle)
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot read the TLS certificates in {bundle!r}"
                                 f" (REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE): {exc}") from exc


class _Stale(Exception):
    """A reused connection failed before any byte of the response: the server had closed it."""


class WirePool:
    """Persistent connections to the origin of ``base_url``; safe to share between threads.

    Up to ``size`` idle connections are kept for reuse; a request that finds none opens a new
    one. ``request`` raises `requests.ConnectTimeout`, `requests.ReadTimeout` or
    `requests.ConnectionError`.
    """

    def __init__(self, base_url: str, *, size: int = 10) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = (parts.scheme == "https" and self.port == 443) or self.port == 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.origin = f"{self.scheme}://{self.host_header}"
        self.size = size
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._tls = _tls_context() if self.scheme == "https" else None

    def serves(self, url: str) -> bool:
        """True if ``url`` is on this pool's origin."""
        return url.startswith(self.origin + "/")

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None, data: bytes | None = None,
        timeout: float = 10.0, idempotent: bool = True,
    ) -> WireResponse:
        """Send one request and read the whole response.

        A reused connection that turns out to have been closed by the server is replaced
        and the request sent again, if it is ``idempotent``; otherwise the failure is raised,
        since the server may have received it.
        """
        if not self.serves(url):
            raise ValueError(f"{url!r} is not on {self.origin}")
        target = url[len(self.origin):]
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params)
        head = self._head(method, target, headers or {}, data)
        sent = WireRequest(method, self.origin + target)
        for _ in range(2):
            connection, reused = self._checkout(timeout)
            try:
                response = self._exchange(connection, head, data, sent, timeout, reused)
            except _Stale as stale:
                connection.close()
                if idempotent:
                    continue
                raise requests.ConnectionError(
                    f"{method} {url}: the server closed a kept-alive connection: {stale}"
                ) from None
            except BaseException:
                connection.close()
                raise
            return response
        raise requests.ConnectionError(f"{method} {url}: the server keeps closing connections")

    # -- connections ----------------------------------------------------------------------------

    def _checkout(self, timeout: float) -> tuple[_Connection, bool]:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._connect(timeout), False
            if not connection.dropped():
                return connection, True
            connection.close()

    def _checkin(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(connection)
                return
        connection.close()

    def _connect(self, timeout: float) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except socket.timeout as exc:
            raise requests.ConnectTimeout(f"connecting to {self.origin}: timed out") from exc
        except OSError as exc:
            raise requests.ConnectionError(
                f"NewConnectionError: connecting to {self.origin}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise requests.ConnectionError(f"TLS with {self.origin}: {exc}") from exc
        return _Connection(sock)

    # -- one exchange -----------------------------------------------------------------------------

    def _head(self, method: str, target: str, headers: dict[str, str],
              data: bytes | None) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}",
                 f"User-Agent: {_USER_AGENT}", "Accept-Encoding: identity"]
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n\0") or ":" in name:
                raise ValueError(f"invalid header {name!r}: {value!r}")
            lines.append(f"{name}: {value}")
        if data is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(data or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _exchange(self, connection: _Connection, head: bytes, data: bytes | None,
                  sent: WireRequest, timeout: float, reused: bool) -> WireResponse:
        connection.sock.settimeout(timeout)
        started = False
        try:
            if data and len(data) <= 65536:
                connection.sock.sendall(head + data)
            else:
                connection.sock.sendall(head)
                if data:
                    connection.sock.sendall(data)
            status_line = connection.reader.readline(_MAX_LINE)
            while status_line:
                started = True
                status, reason = _status(status_line)
                headers = _headers(connection.reader)
                if status >= 200 or status == 101:
                    break
                status_line = connection.reader.readline(_MAX_LINE)  # skip 1xx interim answers
            if not status_line:
                raise ConnectionResetError("the server closed the connection without answering")
            content, keep_alive = _body(connection.reader, sent.method, status, headers)
        except socket.timeout as exc:
            raise requests.ReadTimeout(f"{sent.method} {sent.url}: read timed out") from exc
        except (OSError, _ProtocolError) as exc:
            if reused and not started and isinstance(exc, (ConnectionError, _ProtocolError)):
                raise _Stale(str(exc)) from exc
            raise requests.ConnectionError(f"{sent.method} {sent.url}: {exc}") from exc
        if keep_alive:
            self._checkin(connection)
        else:
            connection.close()
        return WireResponse(sent, status, reason, headers, content)


class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as expected."""


def _status(line: bytes) -> tuple[int, str]:
    version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise _ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return int(code), reason


def _headers(reader: IO[bytes]) -> ResponseHeaders:
    headers = ResponseHeaders()
    for _ in range(_MAX_HEADERS):
        line = reader.readline(_MAX_LINE)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise _ProtocolError("the connection closed inside the response headers")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise _ProtocolError(f"malformed header line {line[:80]!r}")
        headers.add(name.strip(), value.strip())
    raise _ProtocolError(f"more than {_MAX_HEADERS} response headers")


def _body(reader: IO[bytes], method: str, status: int,
          headers: ResponseHeaders) -> tuple[bytes, bool]:
    """The response body, and whether the connection may be reused."""
    keep_alive = "close" not in headers.get("Connection", "").lower()
    if method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200:
        return b"", keep_alive
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return _chunked(reader), keep_alive
    length = headers.get("Content-Length")
    if length is not None:
        if not length.isdigit():
            raise _ProtocolError(f"bad Content-Length {length!r}")
        content = reader.read(int(length))
        if len(content) != int(length):
            raise _ProtocolError(f"the body ended after {len(content)} of {length} bytes")
        return content, keep_alive
    return reader.read(), False  # delimited by the end of the connection


def _chunked(reader: IO[bytes]) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = reader.readline(_MAX_LINE)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _ProtocolError(f"bad chunk size line {size_line[:80]!r}") from None
        if size == 0:
            while reader.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers, not used
            return b"".join(parts)
        chunk = reader.read(size)
        if len(chunk) != size or reader.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
            raise _ProtocolError("the connection closed inside a chunk")
        parts.append(chunk)
