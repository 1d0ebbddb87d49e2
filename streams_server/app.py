"""The standalone streams application: the streams protocol and a health check."""

from __future__ import annotations

from flask import Flask

from . import routes
from .backend import StreamsBackend


def create_app(backend: StreamsBackend) -> Flask:
    """A Flask app serving only the Durable Streams protocol at `/v1/stream/`."""
    app = Flask(__name__)
    routes.init_app(app, backend)
    routes.answer_flask_errors_in_json(app, under="")  # an API server: no HTML pages

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
