"""agent_actors: Pykka conversation agents that answer chat prompts through durable streams.

Public API so far: the Durable Streams client (`StreamsClient`, `Producer`, and the values
they return) and the model interface (`agent_actors.models`). Errors live in
`agent_actors.errors`.
"""

from agent_actors.producer import Producer
from agent_actors.streams_client import RetryPolicy, StreamsClient, Tail

__all__ = ["Producer", "RetryPolicy", "StreamsClient", "Tail"]
