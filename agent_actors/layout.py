"""Where a conversation's streams and subscription live: the contract with every client.

A conversation `{id}` has a prompts stream written by clients and a responses stream written
by its agent, both `application/json`, and one pull-wake subscription whose only link is the
prompts stream. The subscription's pattern names that exact path, so when a client creates it
before the prompts stream (see the README), the stream is linked at offset 0 the moment it is
created and the very first prompt already wakes an agent.
"""

from __future__ import annotations

import re

from agent_actors.stream_types import SubscriptionConfig

CONVERSATIONS_STREAM = "conversations"
CONVERSATIONS_PREFIX = "conversations/"
"""Every conversation's streams are under it."""
PROMPTS_SUFFIX = "/prompts"
DEFAULT_WAKE_STREAM = "agents/wake"
DEFAULT_LEASE_TTL_MS = 30_000
LEASE_TTL_MS_RANGE = (1_000, 600_000)
"""The lease durations a subscription may ask for (the streams server refuses others)."""
SUBSCRIPTION_PREFIX = "conversation-"

_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_conversation_id(value: object) -> bool:
    """Ids are 1-64 letters, digits, `_` or `-`: safe in paths and glob patterns."""
    return isinstance(value, str) and _CONVERSATION_ID.fullmatch(value) is not None


def prompts_path(conversation_id: str) -> str:
    return f"{CONVERSATIONS_PREFIX}{conversation_id}{PROMPTS_SUFFIX}"


def responses_path(conversation_id: str) -> str:
    return f"conversations/{conversation_id}/responses"


def subscription_id(conversation_id: str) -> str:
    return f"{SUBSCRIPTION_PREFIX}{conversation_id}"


def conversation_of_subscription(sub_id: str) -> str | None:
    if not sub_id.startswith(SUBSCRIPTION_PREFIX):
        return None
    candidate = sub_id[len(SUBSCRIPTION_PREFIX):]
    return candidate if is_conversation_id(candidate) else None


def subscription_config(
    conversation_id: str, wake_stream: str = DEFAULT_WAKE_STREAM,
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
) -> SubscriptionConfig:
    """The one subscription of a conversation; every party must create it identically."""
    return SubscriptionConfig(
        type="pull-wake",
        pattern=prompts_path(conversation_id),
        wake_stream=wake_stream,
        lease_ttl_ms=lease_ttl_ms,
    )
