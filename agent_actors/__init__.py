"""agent_actors: Pykka conversation agents that answer chat prompts through durable streams.

Public API so far: the Durable Streams client (`StreamsClient`, `Producer`, and the values
they return) and the model interface (`agent_actors.models`). Errors live in
`agent_actors.errors`.

The names are imported on first use, not with the package: `python -m agent_actors` imports
this package before its ``__main__`` can hand sockets and threads to gevent, and anything
imported here (``requests`` brings ``ssl``) would escape the patching.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_actors.producer import Producer
    from agent_actors.streams_client import RetryPolicy, StreamsClient, Tail

_HOMES = {"Producer": "agent_actors.producer", "RetryPolicy": "agent_actors.streams_client",
          "StreamsClient": "agent_actors.streams_client", "Tail": "agent_actors.streams_client"}

__all__ = ["Producer", "RetryPolicy", "StreamsClient", "Tail"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'agent_actors' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
