"""Subscription values: the validated configuration and snapshots of state, all frozen."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest
from ..text import has_control_characters
from .globs import matches, validate_pattern
from .urlcheck import validate_webhook_url

WEBHOOK = "webhook"
PULL_WAKE = "pull-wake"
DEFAULT_LEASE_TTL_MS = 30_000
MIN_LEASE_TTL_MS = 1_000
MAX_LEASE_TTL_MS = 600_000
MAX_ID_LENGTH = 256
MAX_DESCRIPTION = 1_000
MAX_EXPLICIT_STREAMS = 1_000
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0
JITTER = 0.2


def retry_delay_s(attempt: int) -> float:
    """A webhook's wait before its next delivery after `attempt` + 1 failures in a row
    (7.1): exponential backoff from 1 s up to 60 s, with 20 % jitter either way."""
    base: float = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempt))
    return base * (1 + random.uniform(-JITTER, JITTER))


@dataclass(frozen=True)
class SubscriptionConfig:
    """A normalised subscription definition (section 6.2); its hash decides idempotency."""

    type: str
    pattern: str | None
    streams: tuple[str, ...]
    webhook_url: str | None
    wake_stream: str | None
    lease_ttl_ms: int
    description: str | None

    def config_hash(self) -> str:
        canonical = json.dumps(
            {
                "type": self.type,
                "pattern": self.pattern,
                "streams": list(self.streams),
                "webhook_url": self.webhook_url,
                "wake_stream": self.wake_stream,
                "lease_ttl_ms": self.lease_ttl_ms,
                "description": self.description,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class LinkState:
    """One linked stream of a subscription, with where its cursor and the stream stand."""

    path: str
    link_type: str  # "explicit" or "glob"
    acked_offset: int
    tail_offset: int

    @property
    def has_pending(self) -> bool:
        return self.tail_offset > self.acked_offset


@dataclass(frozen=True)
class SubscriptionState:
    id: str
    config: SubscriptionConfig
    base_url: str
    created_at_ms: int
    generation: int
    wake_id: str | None
    holder: str | None
    lease_expires_at_ms: int | None
    delivery_attempt: int
    next_attempt_at_ms: int | None
    last_error: str | None
    links: tuple[LinkState, ...]

    @property
    def status(self) -> str:
        return "failed" if self.delivery_attempt > 0 and self.last_error else "active"


@dataclass(frozen=True)
class WakeGrant:
    """A wake handed to a worker: by a claim (pull-wake) or a delivery (webhook)."""

    subscription_id: str
    wake_id: str
    generation: int
    lease_ttl_ms: int
    links: tuple[LinkState, ...]


@dataclass(frozen=True)
class WakeFence:
    """What a callback, ack or release claims about the wake: from its token and its body.
    All four must match the subscription's current wake (7.3)."""

    token_generation: int
    token_wake: str
    generation: int
    wake_id: str


@dataclass(frozen=True)
class Ack:
    stream: str
    offset: int


def stream_path(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or value.startswith("/") or len(value) > 1024:
        raise BadRequest(f"{field} must be a stream-root-relative path", code="INVALID_STREAM")
    if has_control_characters(value):  # no stream can be named so (see routes)
        raise BadRequest(f"{field} contains control characters", code="INVALID_STREAM")
    if value.split("/", 1)[0] == "__ds":
        raise BadRequest(f"{field} must not be under the reserved __ds prefix", code="INVALID_STREAM")
    if any(segment in (".", "..") for segment in value.split("/")):  # as no stream's path has
        raise BadRequest(f"{field} must not have '.' or '..' segments", code="INVALID_STREAM")
    return value


def parse_config(body: Any, *, local_webhooks: bool = False) -> SubscriptionConfig:
    """Validate and normalise the JSON body of a subscription PUT (`local_webhooks`: see
    `StreamsSettings`)."""
    if not isinstance(body, dict):
        raise BadRequest("the subscription must be a JSON object", code="INVALID_SUBSCRIPTION")
    kind = body.get("type")
    if kind not in (WEBHOOK, PULL_WAKE):
        raise BadRequest("type must be 'webhook' or 'pull-wake'", code="INVALID_SUBSCRIPTION")
    pattern = body.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise BadRequest("pattern must be a string", code="INVALID_PATTERN")
        validate_pattern(pattern)
    streams = parse_stream_list(body.get("streams", []), "streams")
    if pattern is None and not streams:
        raise BadRequest("give a pattern, streams, or both", code="INVALID_SUBSCRIPTION")
    other = "wake_stream" if kind == WEBHOOK else "webhook"
    if body.get(other) is not None:  # its client would wait for wakes that go elsewhere
        owner = PULL_WAKE if kind == WEBHOOK else WEBHOOK
        raise BadRequest(f"{other} belongs to a {owner} subscription, not to a {kind} one",
                         code="INVALID_SUBSCRIPTION")
    webhook_url = wake_stream = None
    if kind == WEBHOOK:
        webhook = body.get("webhook")
        if not isinstance(webhook, dict) or not isinstance(webhook.get("url"), str):
            raise BadRequest("webhook subscriptions need webhook.url", code="INVALID_SUBSCRIPTION")
        webhook_url = validate_webhook_url(webhook["url"], local_ok=local_webhooks)
    else:
        wake_stream = stream_path(body.get("wake_stream"), "wake_stream")
        refuse_own_wake_stream(wake_stream, pattern, streams)
    lease_ttl_ms = body.get("lease_ttl_ms", DEFAULT_LEASE_TTL_MS)
    if (
        not isinstance(lease_ttl_ms, int)
        or isinstance(lease_ttl_ms, bool)
        or not MIN_LEASE_TTL_MS <= lease_ttl_ms <= MAX_LEASE_TTL_MS
    ):
        raise BadRequest(
            f"lease_ttl_ms must be an integer from {MIN_LEASE_TTL_MS} to {MAX_LEASE_TTL_MS}",
            code="INVALID_LEASE_TTL",
        )
    description = body.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        raise BadRequest(
            f"description must be a string of at most {MAX_DESCRIPTION} characters",
            code="INVALID_SUBSCRIPTION",
        )
    return SubscriptionConfig(
        kind, pattern, streams, webhook_url, wake_stream, lease_ttl_ms, description
    )


def refuse_own_wake_stream(wake_stream: str, pattern: str | None, streams: tuple[str, ...]) -> None:
    """A subscription watching its own wake stream would wake itself with every wake event,
    for good."""
    if wake_stream in streams or (pattern is not None and matches(pattern, wake_stream)):
        raise BadRequest(
            f"the wake stream {wake_stream!r} is one of the streams this subscription watches:"
            " each wake event would wake it again", code="INVALID_SUBSCRIPTION")


def parse_stream_list(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_EXPLICIT_STREAMS:
        raise BadRequest(
            f"{field} must be a list of at most {MAX_EXPLICIT_STREAMS} stream paths",
            code="INVALID_STREAM",
        )
    return tuple(sorted({stream_path(v, field) for v in value}))


def validate_subscription_id(value: str) -> str:
    if not value or len(value) > MAX_ID_LENGTH or "/" in value:
        raise BadRequest(
            f"subscription ids are 1 to {MAX_ID_LENGTH} characters without '/'",
            code="INVALID_SUBSCRIPTION_ID",
        )
    return value
