"""A durable Durable Streams server: storage engine, protocol layer and its web layer for Flask.

The names are imported on first use, not with the package: `python -m streams_server` imports
this package before its ``__main__`` can hand sockets and threads to gevent, and anything
imported here (Flask and Werkzeug bring ``ssl``) would escape the patching.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import StreamsBackend
    from .config import StreamsSettings
    from .errors import StreamError
    from .routes import init_app
    from .storage.engine import StreamStore

_HOMES = {"StreamsBackend": ".backend", "StreamsSettings": ".config", "StreamError": ".errors",
          "init_app": ".routes", "StreamStore": ".storage.engine"}

__all__ = ["StreamsBackend", "StreamStore", "StreamsSettings", "StreamError", "init_app"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'streams_server' has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)
