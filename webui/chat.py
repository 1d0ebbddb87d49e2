"""The browser side of the chat: the chat page and the stream inspector.

The pages are static ES modules that speak the Durable Streams protocol directly to the streams
root named by ``STREAMS_BROWSER_URL``; this blueprint only serves them and injects settings.
No build step, no CDN: every byte the browser loads comes from ``webui/static``.
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, render_template

__all__ = ["chat_bp", "init_app", "browser_settings"]

#: Settings this blueprint reads from ``app.config``, with their defaults.
DEFAULTS: dict[str, Any] = {
    # The streams root the browser talks to: a path on this origin or an absolute URL
    # (which must then allow CORS for this origin).
    "STREAMS_BROWSER_URL": "/v1/stream",
    # Optional bearer token the browser sends as ``Authorization: Bearer <token>``.
    # Whoever can load the page can read it: use it to gate a deployment, not per user.
    "STREAMS_AUTH_TOKEN": None,
    # How often the streams server sends SSE keep-alives: the page reconnects after 2.5 of
    # them are missed.
    "SSE_KEEPALIVE_S": 15.0,
    # How long the server keeps an SSE response open: the longest a request of the page
    # may queue for one of the browser's connections to a host.
    "SSE_MAX_DURATION_S": 60.0,
}

chat_bp = Blueprint(
    "chat",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/ui",
)


SILENCE_KEEPALIVES = 2.5


def init_app(app: Flask) -> None:
    """Register the chat and inspector pages on ``app`` and give their settings defaults."""
    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    # Module scripts must be served with a JavaScript type; some platforms map .js wrongly.
    mimetypes.add_type("text/javascript", ".js")
    app.register_blueprint(chat_bp)


def browser_settings() -> dict[str, Any]:
    """The settings handed to the page's scripts (as JSON, never as executable script)."""
    return {
        "streamsUrl": str(current_app.config["STREAMS_BROWSER_URL"]).rstrip("/"),
        "authToken": current_app.config.get("STREAMS_AUTH_TOKEN") or None,
        # Two keep-alives missed, and then some: the connection (or the server) is gone.
        "silenceMs": int(SILENCE_KEEPALIVES * current_app.config["SSE_KEEPALIVE_S"] * 1000),
        "queuedMs": int((current_app.config["SSE_MAX_DURATION_S"] + 5) * 1000),
        "agents": {
            "wakeStream": current_app.config.get("AGENT_WAKE_STREAM", "agents/wake"),
            "leaseTtlMs": int(current_app.config.get("AGENT_LEASE_TTL_MS", 30_000)),
        },
    }


@chat_bp.get("/")
def chat_page() -> str:
    """The chat: conversation list, messages, flow diagram and raw stream panels."""
    return render_template("chat/chat.html", settings=browser_settings(), page="chat")


@chat_bp.get("/inspector")
def inspector_page() -> str:
    """The stream inspector: metadata, content, live follow, append, subscriptions."""
    return render_template("chat/inspector.html", settings=browser_settings(), page="inspector")


@chat_bp.after_request
def _security_headers(response: Response) -> Response:
    """A strict policy for the pages: model output is untrusted, so nothing inline may run."""
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", _content_security_policy())
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _content_security_policy() -> str:
    connect = ["'self'"]
    origin = _origin_of(str(current_app.config["STREAMS_BROWSER_URL"]))
    if origin:
        connect.append(origin)
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": " ".join(connect),
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return None
