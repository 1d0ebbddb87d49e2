"""Settings of the streams server, shared by the web layer and the standalone command."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


LARGEST_BODY_MIB = 900
"""The highest body limit that may be set: SQLite keeps a value or row of at most 10^9 bytes
(SQLITE_MAX_LENGTH as Python's sqlite3 is built), and a JSON message is stored whole in one
row. Past it, an append that large failed as "commits are failing" (503), not as too large."""
LARGEST_CHUNK_KIB = LARGEST_BODY_MIB * 1024
"""The same for a stored piece of a binary or text body (the `max_chunk_bytes` setting)."""


def mib_to_bytes(mib: float) -> int:
    """A size given in MiB (a positive number), in whole bytes: at least one."""
    return max(1, int(mib * MIB))


def is_host_text(host: str) -> bool:
    """Whether `host` can be looked up or bound at all: an address or a name, which a
    name lookup takes in its IDNA form (a byte that is not UTF-8, or a label over 63
    characters, failed inside the server's start with a traceback)."""
    try:
        return bool(host.strip()) and bool(host.encode("idna"))
    except UnicodeError:
        return False


@dataclass(frozen=True)
class StreamsSettings:
    """Limits and timings of the protocol layer; every field has a laptop-friendly default."""

    long_poll_timeout_s: float = 30.0
    sse_max_duration_s: float = 60.0  # section 10.2: close roughly every minute
    sse_keepalive_s: float = 15.0
    sse_retry_ms: int = 1000
    max_body_bytes: int = 64 * MIB
    max_json_messages: int = 10_000
    """The most messages one JSON request may hold: each is validated and stored on the
    event loop (several microseconds each), and 2 million small ones in a 4 MB body stalled every
    other request for 15 s."""
    max_chunk_bytes: int = 1 * MIB
    max_path_length: int = 1024
    spool_memory_bytes: int = 1 * MIB
    auth_token: str | None = None
    max_storage_bytes: int | None = None  # the database's quota; None: as large as the disk
    local_webhooks: bool = False
    """Whether webhooks may call localhost or 127.0.0.x (over http too): the development
    exception of sections 6.2 and 12.8. Off, anyone who may create a subscription could
    make the server send requests to the services of its own machine."""

    @property
    def cache_visibility(self) -> str:
        """Reads behind a token are user-specific: CDNs must not share them (10.1)."""
        return "private" if self.auth_token else "public"
