"""The standalone streams application: the protocol blueprint and a health check."""

from __future__ import annotations

from flask import Flask

from . import routes
from .config import StreamsSettings
from .storage.engine import StreamStore


def create_app(store: StreamStore, settings: StreamsSettings) -> Flask:
    """A Flask app serving only the Durable Streams protocol at `/v1/stream/`."""
    app = Flask(__name__)
    routes.init_app(app, store, settings)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
