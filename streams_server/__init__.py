"""A durable Durable Streams server: storage engine, protocol layer and its web layer for Flask."""

from .backend import StreamsBackend
from .config import StreamsSettings
from .errors import StreamError
from .routes import init_app
from .storage.engine import StreamStore

__all__ = ["StreamsBackend", "StreamStore", "StreamsSettings", "StreamError", "init_app"]
