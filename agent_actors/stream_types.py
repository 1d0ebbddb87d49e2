"""Frozen values returned by the Durable Streams client (`agent_actors.streams_client`).

Offsets are the server's opaque strings (PROTOCOL.md section 8): never parse them, only store
them, send them back, and compare two offsets of the same stream lexicographically.
Messages are the decoded JSON values of an ``application/json`` stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class StreamInfo:
    """A stream's metadata, from ``HEAD`` (section 5.5)."""

    next_offset: str
    """The tail offset: where the next appended message will start."""
    closed: bool
    content_type: str | None
    ttl_seconds: int | None = None
    expires_at: str | None = None


@dataclass(frozen=True)
class EnsureResult:
    """The outcome of a create-or-ensure ``PUT`` (section 5.1)."""

    created: bool
    """True for ``201 Created``, False when an identical stream already existed (``200``)."""
    next_offset: str | None
    closed: bool


@dataclass(frozen=True)
class ReadResult:
    """One batch of messages read from a stream, with where to continue.

    Every message in a batch shares ``next_offset``: the protocol gives offsets per response,
    not per message. ``up_to_date`` means the reader reached the tail when the response was
    made (more may still come); ``closed`` means the stream is closed and fully read (EOF).
    """

    messages: tuple[Any, ...]
    next_offset: str
    up_to_date: bool
    closed: bool
    cursor: str | None = None


@dataclass(frozen=True)
class AppendResult:
    """The outcome of one idempotent-producer append (one HTTP request, one ``Producer-Seq``)."""

    next_offset: str | None
    """The tail after the append; None for a duplicate, where servers may omit it."""
    duplicate: bool
    """True when the server had already applied this (epoch, seq): ``204``."""
    epoch: int
    seq: int
    closed: bool = False


@dataclass(frozen=True)
class SubscriptionConfig:
    """The body of ``PUT .../__ds/subscriptions/{id}`` (section 6.2).

    ``streams`` and ``pattern`` are stream-root-relative; at least one must be given.
    """

    type: str = "pull-wake"
    pattern: str | None = None
    streams: tuple[str, ...] = ()
    wake_stream: str | None = None
    lease_ttl_ms: int | None = None
    description: str | None = None
    webhook_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object to send, omitting unset fields."""
        body: dict[str, Any] = {"type": self.type}
        if self.pattern is not None:
            body["pattern"] = self.pattern
        if self.streams:
            body["streams"] = list(self.streams)
        if self.wake_stream is not None:
            body["wake_stream"] = self.wake_stream
        if self.lease_ttl_ms is not None:
            body["lease_ttl_ms"] = self.lease_ttl_ms
        if self.description is not None:
            body["description"] = self.description
        if self.webhook_url is not None:
            body["webhook"] = {"url": self.webhook_url}
        return body


@dataclass(frozen=True)
class SubscriptionStream:
    """One stream linked to a subscription, with its committed (acked) cursor."""

    path: str
    link_type: str
    acked_offset: str


@dataclass(frozen=True)
class Subscription:
    """A subscription as the server describes it (section 6.3)."""

    id: str
    type: str
    streams: tuple[SubscriptionStream, ...]
    pattern: str | None = None
    wake_stream: str | None = None
    lease_ttl_ms: int | None = None
    description: str | None = None
    status: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ListedStream:
    """A stream as a listing names it: its path and tail."""

    path: str
    next_offset: str


@dataclass(frozen=True)
class ListingPage(Generic[T]):
    """One page of a listing (this project's server's `__ds` extension); ``next_after`` is
    what to list after for the next page, None on the last."""

    items: tuple[T, ...]
    next_after: str | None


@dataclass(frozen=True)
class LeaseStream:
    """A stream of a claimed subscription: what was acked, and the tail at claim time."""

    path: str
    acked_offset: str
    tail_offset: str
    has_pending: bool
    link_type: str = "explicit"


@dataclass(frozen=True)
class Lease:
    """A successful pull-wake claim (section 7.2): the right to work until it expires.

    Keep it alive with `StreamsClient.ack` (without ``done``) more often than ``lease_ttl_ms``.
    """

    subscription_id: str
    worker: str
    wake_id: str
    generation: int
    token: str = field(repr=False)
    streams: tuple[LeaseStream, ...] = ()
    lease_ttl_ms: int = 30_000

    def stream(self, path: str) -> LeaseStream | None:
        """The linked stream with this path, if any."""
        return next((s for s in self.streams if s.path == path), None)
