"""The thin Flask layer: URL routing, CORS, access control and error mapping.

Everything protocol-specific happens in `protocol.operations`; this module only turns Flask
requests into `StreamRequest`s and `Reply`s into Flask responses, and is the one place where
exceptions become HTTP error responses.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from .config import StreamsSettings
from .errors import BadRequest, NotFound, StreamError, Unauthorized, UriTooLong
from .backend import StreamsBackend
from .protocol.control import uses_wake_token
from .protocol.messages import Reply, StreamRequest

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

streams_bp = Blueprint("durable_streams", __name__)


def init_app(app: Flask, backend: StreamsBackend, url_prefix: str = "/v1/stream") -> None:
    """Mount the streams protocol (and its `__ds` control APIs) on `app` at `url_prefix`."""
    app.extensions[EXTENSION_KEY] = backend
    app.register_blueprint(streams_bp, url_prefix=url_prefix)
    app.register_error_handler(HTTPException, _routing_error_handler(url_prefix))


def _routing_error_handler(url_prefix: str) -> Callable[[HTTPException], Any]:
    """JSON errors for requests under `url_prefix` that no route of the blueprint matched
    (an unknown method: 405; a path such as `//x`: 404). Flask does not know the blueprint
    of such a request, so the blueprint's own handlers never see them. Other paths keep
    whatever the application does by default."""
    root = url_prefix.rstrip("/")

    def handle(error: HTTPException) -> Any:
        if request.path != root and not request.path.startswith(root + "/"):
            return error
        return _common_headers(_handle_http_exception(error))

    return handle


def _backend() -> StreamsBackend:
    backend: StreamsBackend = current_app.extensions[EXTENSION_KEY]
    return backend


@streams_bp.route(
    "/",
    defaults={"stream_path": ""},
    methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
    merge_slashes=False,
)
@streams_bp.route(
    "/<path:stream_path>",
    methods=["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
    merge_slashes=False,
    strict_slashes=False,
)
def stream_endpoint(stream_path: str) -> Response:
    if request.method == "OPTIONS":
        return _preflight()
    backend = _backend()
    path = _validated_path(stream_path, backend.settings)
    control = path.split("/", 1)[0] == RESERVED_PREFIX
    if not (control and uses_wake_token(path)):
        _check_authorization(backend.settings)
    stream_request = StreamRequest(
        method=request.method,
        path=path,
        url=request.base_url,
        headers=request.headers,
        args=request.args,
        body=request.stream,
        content_length=request.content_length,
    )
    if control:
        root = request.base_url[: len(request.base_url) - len(path)].rstrip("/")
        return _to_response(backend.control.handle(stream_request, root))
    return _to_response(backend.streams.handle(stream_request))


def _validated_path(stream_path: str, settings: StreamsSettings) -> str:
    if not stream_path:
        raise NotFound("no stream path given: streams live at /v1/stream/<path>")
    if len(stream_path) > settings.max_path_length:
        raise UriTooLong(
            f"stream path is longer than {settings.max_path_length} characters",
            code="PATH_TOO_LONG",
        )
    if any(ord(c) < 0x20 or c == "\x7f" for c in stream_path):
        raise BadRequest("stream path contains control characters", code="INVALID_PATH")
    return stream_path


def _check_authorization(settings: StreamsSettings) -> None:
    if not settings.auth_token:
        return
    supplied = request.headers.get("Authorization", "")
    scheme, _, token = supplied.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), settings.auth_token.encode()
    ):
        raise Unauthorized(
            "this server requires Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="durable-streams"'},
        )


def _preflight() -> Response:
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    requested = request.headers.get("Access-Control-Request-Headers")
    response.headers["Access-Control-Allow-Headers"] = requested or ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = "86400"
    return response


def _to_response(reply: Reply) -> Response:
    if isinstance(reply.body, bytes):
        response = Response(reply.body, status=reply.status)
    else:
        response = Response(reply.body, status=reply.status, direct_passthrough=True)
    response.headers.remove("Content-Type")
    for name, value in reply.headers.items():
        response.headers[name] = value
    return response


@streams_bp.after_request
def _common_headers(response: Response) -> Response:
    origin = request.headers.get("Origin")
    response.headers["Access-Control-Allow-Origin"] = origin or "*"
    if origin:
        response.headers.add("Vary", "Origin")
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response


@streams_bp.errorhandler(StreamError)
def _handle_stream_error(error: StreamError) -> Response:
    empty = error.empty_body or request.method == "HEAD"
    body = b"" if empty else _error_body(error.code, error.message, error.details)
    response = Response(body, status=error.status, content_type="application/json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


@streams_bp.errorhandler(HTTPException)
def _handle_http_exception(error: HTTPException) -> Response:
    code = (error.name or "error").upper().replace(" ", "_")
    response = Response(
        _error_body(code, error.description or error.name),
        status=error.code or 400,
        content_type="application/json",
    )
    for name, value in error.get_headers():  # e.g. Allow on a 405
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@streams_bp.errorhandler(Exception)
def _handle_unexpected(error: Exception) -> Response:
    log.exception("unexpected error handling %s %s", request.method, request.path)
    return Response(
        _error_body("INTERNAL_ERROR", "the server failed to handle this request"),
        status=500,
        content_type="application/json",
    )


def _error_body(code: str, message: str, details: dict[str, object] | None = None) -> bytes:
    payload: dict[str, Any] = {"error": {"code": code, "message": message, **(details or {})}}
    return json.dumps(payload).encode("utf-8")
