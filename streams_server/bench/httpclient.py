"""A minimal keep-alive HTTP/1.1 client, cheap enough not to be the bottleneck.

`requests` spends several hundred microseconds of CPU per call, which on a 2-CPU machine is
taken from the server being measured. This client builds a request with one format, sends it
with one ``sendall`` and parses the response by hand: Content-Length, chunked, or no body.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_RECV = 256 * 1024
_NO_BODY_STATUSES = (204, 304)


class HttpError(Exception):
    """A transport failure or an unexpected status, with what was asked and answered."""


@dataclass
class Response:
    """One response; ``headers`` have lower-case names, ``ttfb`` is seconds to first byte."""

    status: int
    headers: dict[str, str]
    body: bytes
    body_length: int
    ttfb: float
    elapsed: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def expect(self, *statuses: int) -> Response:
        """Return self if the status is one of ``statuses``, else raise `HttpError`."""
        if self.status not in statuses:
            snippet = self.body[:300].decode(errors="replace")
            raise HttpError(f"unexpected status {self.status} (wanted {statuses}): {snippet}")
        return self


def split_base_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/prefix`` -> (host, port, "/prefix")."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host:port URLs are supported, got {url!r}")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


def open_socket(host: str, port: int, timeout: float | None) -> socket.socket:
    """A connected TCP socket with Nagle's algorithm off."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def build_request(method: str, host: str, port: int, path: str, body: bytes,
                  headers: Mapping[str, str] | None) -> bytes:
    """The request's bytes: request line, headers (Content-Length always), body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    if headers:
        lines.extend(f"{k}: {v}" for k, v in headers.items())
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One keep-alive connection to ``base_url``'s host; not thread-safe (one per thread)."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self.host, self.port, _ = split_base_url(base_url)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: bytes = b"",
                headers: Mapping[str, str] | None = None, *, keep_body: bool = True) -> Response:
        """Send one request and read its whole response (``keep_body=False`` only counts it).

        A request on a reused connection that the server had already closed is retried once
        on a new connection.
        """
        data = build_request(method, self.host, self.port, path, body, headers)
        reused = self._sock is not None
        try:
            return self._exchange(method, data, keep_body)
        except (ConnectionError, _ClosedBeforeResponse) as exc:
            self.close()
            if not reused:
                raise HttpError(f"{method} {path}: {exc!r}") from exc
        try:
            return self._exchange(method, data, keep_body)
        except (OSError, _ClosedBeforeResponse) as exc:
            self.close()
            raise HttpError(f"{method} {path}: {exc!r}") from exc

    # -- internals -------------------------------------------------------------------------

    def _exchange(self, method: str, data: bytes, keep_body: bool) -> Response:
        if self._sock is None:
            self._sock = open_socket(self.host, self.port, self.timeout)
            self._buf.clear()
        start = time.perf_counter()
        self._sock.sendall(data)
        status, headers, ttfb = self._read_head(start)
        response = self._read_body(method, status, headers, keep_body)
        response.ttfb = ttfb
        response.elapsed = time.perf_counter() - start
        if headers.get("connection", "").lower() == "close":
            self.close()
        return response

    def _fill(self) -> int:
        assert self._sock is not None
        chunk = self._sock.recv(_RECV)
        self._buf += chunk
        return len(chunk)

    def _read_head(self, start: float) -> tuple[int, dict[str, str], float]:
        ttfb = -1.0
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            got = self._fill()
            if ttfb < 0:
                ttfb = time.perf_counter() - start
            if not got:
                if not self._buf:
                    raise _ClosedBeforeResponse("connection closed before a response")
                raise HttpError("connection closed inside the response head")
        if ttfb < 0:
            ttfb = time.perf_counter() - start
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[:end + 4]
        status = int(head[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, ttfb

    def _read_body(self, method: str, status: int, headers: dict[str, str],
                   keep_body: bool) -> Response:
        if method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200:
            return Response(status, headers, b"", 0, 0.0)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body, length = self._read_chunked(keep_body)
        elif "content-length" in headers:
            body, length = self._read_exact(int(headers["content-length"]), keep_body)
        else:  # until the server closes
            body, length = self._read_to_close(keep_body)
        return Response(status, headers, body, length, 0.0)

    def _read_exact(self, length: int, keep_body: bool) -> tuple[bytes, int]:
        parts: list[bytes] = []
        remaining = length
        while remaining > 0:
            if not self._buf and not self._fill():
                raise HttpError("connection closed inside a response body")
            take = min(remaining, len(self._buf))
            if keep_body:
                parts.append(bytes(self._buf[:take]))
            del self._buf[:take]
            remaining -= take
        return b"".join(parts), length

    def _read_line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 2]
                return line
            if not self._fill():
                raise HttpError("connection closed inside a chunked body")

    def _read_chunked(self, keep_body: bool) -> tuple[bytes, int]:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self._read_line().split(b";", 1)[0], 16)
            if size == 0:
                while self._read_line():  # trailers, then the blank line
                    pass
                return b"".join(parts), total
            chunk, _ = self._read_exact(size, keep_body)
            parts.append(chunk)
            total += size
            self._read_line()

    def _read_to_close(self, keep_body: bool) -> tuple[bytes, int]:
        while self._fill():
            pass
        body = bytes(self._buf)
        self.close()
        return (body if keep_body else b""), len(body)


class _ClosedBeforeResponse(Exception):
    """The server closed a connection before answering (an expired keep-alive)."""
