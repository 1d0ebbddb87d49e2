"""The thin web layer: URL routing, CORS, access control and error mapping.

`init_app` puts `StreamsMiddleware` in front of a Flask app's ``wsgi_app``: requests under the
URL prefix (``/v1/stream``) are answered here straight from the WSGI environ, and every other
request goes on to Flask (the chat UI, ``/healthz``). Flask's request dispatch (context,
routing, response object, after-request hooks) cost an append about 180 us of CPU against
68 us for the protocol work itself (measured in-process), and appends are the hot path.

Everything protocol-specific happens in `protocol.operations` and `protocol.control`; this
module turns WSGI requests into `StreamRequest`s and `Reply`s into WSGI responses, and is the
one place where exceptions become HTTP error responses (JSON, never a stack trace).
"""

from __future__ import annotations

import functools
import hmac
import http
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, cast
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlsplit

from flask import Flask, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import NotFound as NoSuchRoute
from werkzeug.wsgi import get_content_length, get_input_stream

from .backend import StreamsBackend
from .config import StreamsSettings
from .errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    RequestTimeout,
    StreamError,
    Unauthorized,
    UnsupportedMediaType,
    UriTooLong,
)
from .protocol.control import is_public, uses_wake_token
from .protocol.messages import Reply, StreamRequest
from .request_head import FRAMING_PROBLEM_KEY
from .text import has_control_characters

log = logging.getLogger(__name__)

EXTENSION_KEY = "durable_streams"
RESERVED_PREFIX = "__ds"

EXPOSED_HEADERS = ", ".join(
    [
        "Stream-Next-Offset",
        "Stream-Cursor",
        "Stream-Up-To-Date",
        "Stream-Closed",
        "Stream-TTL",
        "Stream-Expires-At",
        "Stream-Sse-Data-Encoding",
        "Producer-Epoch",
        "Producer-Seq",
        "Producer-Expected-Seq",
        "Producer-Received-Seq",
        "ETag",
        "Location",
        "Content-Type",
    ]
)
ALLOWED_HEADERS = ", ".join(
    [
        "Content-Type",
        "Authorization",
        "If-None-Match",
        "Stream-TTL",
        "Stream-Expires-At",
        "Stream-Seq",
        "Stream-Closed",
        "Stream-Forked-From",
        "Stream-Fork-Offset",
        "Stream-Fork-Sub-Offset",
        "Producer-Id",
        "Producer-Epoch",
        "Producer-Seq",
    ]
)
ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
_METHODS = frozenset(ALLOWED_METHODS.split(", "))
_COMMON_HEADERS = [
    ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
    ("X-Content-Type-Options", "nosniff"),
    ("Cross-Origin-Resource-Policy", "cross-origin"),
    # A stream may be created as text/html by anyone who may write: opened as a page, its
    # bytes must not run as script on this origin (where the chat and its token live). Reads
    # by fetch or EventSource are not documents, so the policy does not touch them.
    ("Content-Security-Policy", "sandbox; default-src 'none'"),
]
_NO_BODY_STATUSES = frozenset({204, 304})
_PATH_SAFE = "!$&'()*+,/:;=@"  # a URL path segment's characters ('%' is quoted: a path
# arrives decoded, so a stream named `%42` is `%2542` in its URL)
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::(?P<port>[0-9]{1,5}))?")
"""RFC 3986's host (an IP literal or a reg-name) and optional port."""

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def init_app(app: Flask, backend: StreamsBackend, url_prefix: str = "/v1/stream") -> None:
    """Serve the streams protocol (and its `__ds` control APIs) on `app` at `url_prefix`."""
    app.extensions[EXTENSION_KEY] = backend
    app.wsgi_app = StreamsMiddleware(app.wsgi_app, backend, url_prefix)  # type: ignore[method-assign]


def answer_flask_errors_in_json(app: Flask, under: str, streams_at: str = "/v1/stream") -> None:
    """Flask's own errors (an unknown path, a method a route does not take) in the streams
    API's JSON for requests at `under` or below it ("" for all): a client that mistypes an
    API URL gets an error it can parse, not an HTML page meant for a browser, and an unknown
    URL's error says where the streams are (`streams_at`)."""
    root = under.rstrip("/")

    def in_json(error: HTTPException) -> Any:
        path = request.path
        if root and path != root and not path.startswith(root + "/"):
            return error  # a page's URL: Flask's page
        response = error.get_response()
        code = re.sub(r"[^A-Z]+", "_", (error.name or "error").upper()).strip("_")
        message = error.description or error.name
        if isinstance(error, NoSuchRoute):  # Werkzeug's text asks to check the spelling
            message = f"nothing is at this URL: the streams are under {streams_at}/"
        response.set_data(_error_body(code, message))
        response.content_type = "application/json"
        for name, value in _api_headers(request.headers.get("Origin")):
            response.headers.add(name, value)
        return response

    app.register_error_handler(HTTPException, in_json)


class StreamsMiddleware:
    """Answers requests under ``url_prefix`` with the streams protocol; passes the rest on."""

    def __init__(self, app: WSGIApp, backend: StreamsBackend, url_prefix: str) -> None:
        self.app = app
        self.backend = backend
        self.root = url_prefix.rstrip("/")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        raw_path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")  # case-sensitive (RFC 9110, 9.1)
        framing = _framing_error(environ)
        if framing is not None:  # whatever the path: the connection's next request is at stake
            return _respond(_error_reply(framing, method), method, None, start_response)
        if raw_path != self.root and not raw_path.startswith(self.root + "/"):
            return self.app(environ, start_response)
        headers = _EnvironHeaders(environ)
        try:
            reply = self._handle(environ, method, headers, _decoded(environ, raw_path))
        except StreamError as error:
            reply = _error_reply(error, method)
        except Exception:  # noqa: BLE001 - logged; the client gets a JSON 500, no traceback
            log.exception("unexpected error handling %s %s", method, raw_path)
            reply = Reply(500, {"Content-Type": "application/json"},
                          _error_body("INTERNAL_ERROR", "the server failed to handle this request"))
        return _respond(reply, method, headers.get("Origin"), start_response)

    def _handle(self, environ: dict[str, Any], method: str, headers: _EnvironHeaders,
                path: str) -> Reply:
        stream_path = path[len(self.root) + 1:]
        if stream_path.startswith("/"):
            raise NotFound(f"no stream path begins with '/': the streams are under {self.root}/")
        if method not in _METHODS:
            raise MethodNotAllowed("The method is not allowed for the requested URL.",
                                   code="METHOD_NOT_ALLOWED", headers={"Allow": ALLOWED_METHODS})
        if method == "OPTIONS":
            return _preflight(headers)
        coding = (headers.get("Content-Encoding") or "").strip().lower()
        if coding not in ("", "identity") and method in ("PUT", "POST"):  # those with a body
            # Stored as sent, a gzip body came back compressed and unlabelled (RFC 9110, 8.4).
            raise UnsupportedMediaType(
                f"Content-Encoding {coding[:40]!r} is not supported: send the body as is",
                code="UNSUPPORTED_CONTENT_ENCODING")
        settings = self.backend.settings
        stream_path = _validated_path(stream_path, settings)
        control = stream_path.split("/", 1)[0] == RESERVED_PREFIX
        if not (control and (uses_wake_token(stream_path) or is_public(stream_path, method))):
            _check_authorization(headers, settings)
        url = _stream_url(environ, path)
        query = environ.get("QUERY_STRING", "").encode("latin-1").decode(errors="replace")
        args = MultiDict(parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"))
        request = StreamRequest(
            method=method,
            path=stream_path,
            url=url,
            headers=headers,
            args=args,
            body=cast(IO[bytes], _RequestBody(get_input_stream(environ))),
            content_length=get_content_length(environ),
            repeated_args=frozenset(name for name, values in args.lists() if len(values) > 1),
        )
        if control:
            return self.backend.control.handle(request, _stream_url(environ, self.root))
        return self.backend.streams.handle(request)


class _EnvironHeaders:
    """A request's headers read straight from the WSGI environ, by name, case-insensitively.

    Werkzeug's `EnvironHeaders` normalises the name on every lookup, and an append looks up
    seven; here each name's environ key is worked out once per process.
    """

    __slots__ = ("_environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        key = _environ_key(name)
        value = self._environ.get(key)
        if value is None:
            return None
        value = str(value)
        if "," in value and key in _NO_COMMA_KEYS:
            # Werkzeug's server (`flask run`) joins a repeated header's values with a comma
            # ("Stream-Closed: true" twice read as "true,true": not closed). The standalone
            # server's parser takes a repeat of one value once and refuses two: so here.
            values = {part.strip() for part in value.split(",")}
            if len(values) > 1:  # two values, or one malformed ("Tue, 01 Jan 2030 ...")
                raise BadRequest(f"{name} holds a comma, which no value of it has: it was given"
                                 f" twice with different values, or is malformed ({value[:60]!r})",
                                 code="MALFORMED_REQUEST")
            value = values.pop()
        return value


# The protocol's request headers whose values never hold a comma: one that does was joined.
_NO_COMMA_KEYS = frozenset(
    f"HTTP_{name.upper().replace('-', '_')}" for name in (
        "Producer-Epoch", "Producer-Seq", "Stream-Closed", "Stream-Expires-At",
        "Stream-Fork-Offset", "Stream-Fork-Sub-Offset", "Stream-TTL"))


@functools.lru_cache(maxsize=256)
def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


class _RequestBody:
    """The request body for the protocol layer: a body that ends before its declared length
    (or inside a chunk) is the client's error, a 400, not the server's. The answer closes
    the connection: where the body ends is unknown, so what follows cannot be read as the
    next request (a malformed chunk's remaining bytes could hold one)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except TimeoutError as exc:  # the standalone server's --socket-timeout
            raise RequestTimeout("the rest of the request body did not arrive in time",
                                 headers={"Connection": "close"}) from exc
        except (OSError, ValueError, HTTPException) as exc:
            raise BadRequest(f"the request body ended early or is malformed: {exc}",
                             code="INCOMPLETE_BODY", headers={"Connection": "close"}) from exc


def _framing_error(environ: dict[str, Any]) -> BadRequest | None:
    """Why the request body's end is uncertain, if it is (RFC 9112, section 6).

    Both servers read a Transfer-Encoding other than ``chunked`` as "no body", and Werkzeug's
    (``flask run``) a malformed Content-Length too: an append would be stored without its
    data, and the body's bytes taken for the next request on the connection (a request
    smuggled past whatever checked the first). What the environ no longer shows (duplicate
    lengths, a length dropped for chunked) the standalone server reports under
    `FRAMING_PROBLEM_KEY`. The answer closes the connection.
    """
    coding = environ.get("HTTP_TRANSFER_ENCODING")
    length = str(environ.get("CONTENT_LENGTH") or "").strip()
    problem: str | None = environ.get(FRAMING_PROBLEM_KEY)
    if problem is None and coding is not None:
        if coding.strip().lower() != "chunked":
            problem = f"the Transfer-Encoding {coding[:80]!r} is not supported (only chunked)"
        elif length:
            problem = "a request cannot have both Transfer-Encoding and Content-Length"
    if problem is None and length and not (length.isascii() and length.isdigit()):
        problem = f"Content-Length must be a non-negative integer, not {length[:40]!r}"
    if problem is None:
        return None
    return BadRequest(problem, code="INVALID_FRAMING", headers={"Connection": "close"})


def _stream_url(environ: dict[str, Any], path: str) -> str:
    """The request's absolute URL without its query, percent-encoded as UTF-8."""
    scheme = environ.get("wsgi.url_scheme", "http")
    full_path = environ.get("SCRIPT_NAME", "").rstrip("/") + path
    return f"{scheme}://{_host(environ, scheme)}{quote(full_path, safe=_PATH_SAFE)}"


def _host(environ: dict[str, Any], scheme: str) -> str:
    """``host[:port]`` from the Host header, else from the server's own name.

    A Host that is not a host (control characters, spaces, a port past 65535) is a 400, as
    RFC 9112 (3.2) asks. Werkzeug's `get_host` answers "" for those, but also for names with
    an underscore, which URLs allow (a Docker Compose service such as ``streams_server``).
    """
    host = environ.get("HTTP_HOST")
    if host is None:
        name, port = str(environ.get("SERVER_NAME", "")), str(environ.get("SERVER_PORT", ""))
        default = (scheme == "http" and port == "80") or (scheme == "https" and port == "443")
        return name if default or not port else f"{name}:{port}"
    host = str(host)
    match = _HOST.fullmatch(host)
    if match is None or (match["port"] and int(match["port"]) > 65535):
        raise BadRequest("the Host header is not a valid host[:port]", code="INVALID_HOST")
    return host


def _decoded(environ: dict[str, Any], raw_path: str) -> str:
    """The path as text: WSGI hands it over as percent-decoded bytes in latin-1.

    Bytes that are not UTF-8 are refused rather than replaced: replaced, ``%FF`` and ``%FE``
    would both name the stream ``\ufffd``, one stream under many URLs. Werkzeug's server
    (``flask run``) replaces them itself before the app sees the path, so a U+FFFD in its
    path is checked against the request line it keeps (``RAW_URI``).
    """
    invalid = BadRequest("the path is not UTF-8 once percent-decoded", code="INVALID_PATH")
    try:
        path = raw_path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise invalid from None
    raw_uri = environ.get("RAW_URI")
    if "\ufffd" in path and isinstance(raw_uri, str):
        try:  # undo Werkzeug's WSGI encoding of the request target, then decode it strictly
            target = raw_uri.encode("latin-1").decode("utf-8").encode("latin-1")
            unquote_to_bytes(urlsplit(target).path).decode("utf-8")
        except UnicodeError:
            raise invalid from None
    return path


def _validated_path(stream_path: str, settings: StreamsSettings) -> str:
    if not stream_path:
        raise NotFound("no stream path given: streams live at /v1/stream/<path>")
    if len(stream_path) > settings.max_path_length:
        raise UriTooLong(
            f"stream path is longer than {settings.max_path_length} characters",
            code="PATH_TOO_LONG",
        )
    if has_control_characters(stream_path):
        raise BadRequest("stream path contains control characters", code="INVALID_PATH")
    return stream_path


def _check_authorization(headers: _EnvironHeaders, settings: StreamsSettings) -> None:
    if not settings.auth_token:
        return
    supplied = headers.get("Authorization") or ""
    scheme, _, token = supplied.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), settings.auth_token.encode()
    ):
        # Told apart, so that a client with a stale token knows its token is the problem.
        if scheme.lower() == "bearer":
            problem = "the bearer token given is not this server's"
        else:
            problem = "this server requires Authorization: Bearer <token>"
        raise Unauthorized(problem, headers={"WWW-Authenticate": 'Bearer realm="durable-streams"'})


def _preflight(headers: _EnvironHeaders) -> Reply:
    requested = _echoable(headers.get("Access-Control-Request-Headers"))
    return Reply(204, {
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": requested or ALLOWED_HEADERS,
        "Access-Control-Max-Age": "86400",
    })


def _error_reply(error: StreamError, method: str) -> Reply:
    empty = error.empty_body or method == "HEAD"
    body = b"" if empty else _error_body(error.code, error.message, error.details)
    reply = Reply(error.status, {"Content-Type": "application/json"}, body)
    reply.headers.update(error.headers)
    return reply


def _error_body(code: str, message: str, details: dict[str, object] | None = None) -> bytes:
    payload: dict[str, Any] = {"error": {"code": code, "message": message, **(details or {})}}
    return json.dumps(payload).encode("utf-8")


def _respond(reply: Reply, method: str, origin: str | None,
             start_response: StartResponse) -> Iterable[bytes]:
    """Start the WSGI response for ``reply``, with the CORS and safety headers of every
    response under the prefix; a HEAD response keeps its headers but sends no body."""
    headers = list(reply.headers.items())
    headers.extend(_api_headers(origin))
    body = reply.body
    # A HEAD response's Content-Length must be what the GET would send (RFC 9110 8.6),
    # which the metadata HEAD answers with does not know: none is sent.
    if isinstance(body, bytes) and reply.status not in _NO_BODY_STATUSES and method != "HEAD":
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("Content-Length", str(len(body))))
    start_response(_status_line(reply.status), headers)
    if method == "HEAD" or reply.status in _NO_BODY_STATUSES:
        _close(body)
        return []
    return [body] if isinstance(body, bytes) else body


def _api_headers(origin: str | None) -> list[tuple[str, str]]:
    """The CORS and safety headers of every response of the API, errors included."""
    origin = _echoable(origin)
    headers = [("Access-Control-Allow-Origin", origin or "*")]
    if origin:
        headers.append(("Vary", "Origin"))
    return headers + _COMMON_HEADERS


def _echoable(value: str | None) -> str | None:
    """A request header's value if it can go back in a response header as it is: one with
    a line break or another control character (folded, under a server that joins folded
    lines) made the WSGI server refuse the whole response, after the request was carried out."""
    if value is None or has_control_characters(value):
        return None
    return value


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _close(body: bytes | Iterator[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()
