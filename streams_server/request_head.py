"""A request's head read before the app sees it: its header lines checked and indexed
(`RequestHeaders`, what gevent's pywsgi handler asks of them), and the JSON refusal of one
that cannot be read (`UnreadableRequest`). No gevent here: the app's routes read
`FRAMING_PROBLEM_KEY` under any WSGI server.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a token (RFC 9110, 5.1)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a field value only HTAB may be
# Request headers that hold one value. pywsgi joins a repeated header's values with a comma:
# "Stream-Closed: true" twice read as "true,true" (not closed), two Producer-Ids as one id
# "a,b". A repeat with the same value is dropped; one with another value is refused.
_SINGLE_VALUED = {name.lower(): name for name in (
    "Authorization", "Content-Type", "Last-Event-ID", "Origin", "Producer-Epoch", "Producer-Id",
    "Producer-Seq", "Stream-Closed", "Stream-Expires-At", "Stream-Fork-Offset",
    "Stream-Fork-Sub-Offset", "Stream-Forked-From", "Stream-Seq", "Stream-TTL")}
_MAX_LENGTH_DIGITS = 30  # 10^30 bytes: larger than any body, still a length the app can refuse

FRAMING_PROBLEM_KEY = "durable_streams.framing_problem"
"""Set in the environ when a request's body length is ambiguous in ways the environ itself
no longer shows (see `RequestHeaders.framing_problem`); the streams middleware refuses it."""


def raw_error(status: str, code: str, message: str, extra_headers: str = "") -> bytes:
    """A whole JSON error response for a request the app never saw, with the CORS header
    (its origin unread, any) that lets a page of another origin read why, and the connection
    closed. `extra_headers` are header lines, each ending in CR LF."""
    body = json.dumps({"error": {"code": code, "message": message}})
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra_headers}"
            "Access-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body.encode("latin-1")


class UnreadableRequest(ValueError):
    """A request too malformed to reach the app (raised while pywsgi reads it): the JSON
    error it is answered with, after which the connection is closed."""

    def __init__(self, message: str, *, status: str = "400 Bad Request",
                 code: str = "MALFORMED_REQUEST") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def response(self) -> bytes:
        return raw_error(self.status, self.code, str(self))


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
