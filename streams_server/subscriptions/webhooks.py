"""Delivering a webhook wake: the signed notification body and one HTTP attempt (7.1)."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass

import requests

from ..errors import StreamError
from ..offsets import format_offset
from .keys import ServerKeys
from .model import LinkState, SubscriptionState
from .urlcheck import check_resolved_host

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_S = 10.0
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0
JITTER = 0.2


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    done: bool
    error: str | None


def retry_delay_s(attempt: int) -> float:
    """Exponential backoff from 1 s up to 60 s, with 20 % jitter either way."""
    base: float = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempt))
    return base * (1 + random.uniform(-JITTER, JITTER))


def link_json(link: LinkState, *, with_tail: bool) -> dict[str, object]:
    out: dict[str, object] = {
        "path": link.path,
        "link_type": link.link_type,
        "acked_offset": format_offset(link.acked_offset),
    }
    if with_tail:
        out["tail_offset"] = format_offset(link.tail_offset)
        out["has_pending"] = link.has_pending
    return out


def notification_body(state: SubscriptionState, callback_token: str) -> bytes:
    assert state.wake_id is not None
    body = {
        "subscription_id": state.id,
        "wake_id": state.wake_id,
        "generation": state.generation,
        "streams": [link_json(link, with_tail=True) for link in state.links],
        "callback_url": f"{state.base_url}/__ds/subscriptions/{state.id}/callback",
        "callback_token": callback_token,
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def deliver(
    session: requests.Session, state: SubscriptionState, keys: ServerKeys, token: str, *,
    local_ok: bool = False,
) -> DeliveryOutcome:
    """POST one signed notification; a 2xx is delivered, `{"done": true}` also acks."""
    url = state.config.webhook_url
    assert url is not None
    body = notification_body(state, token)
    headers = {
        "Content-Type": "application/json",
        "Webhook-Signature": keys.sign_webhook(int(time.time()), body),
    }
    try:
        check_resolved_host(url, local_ok=local_ok)
        response = session.post(
            url, data=body, headers=headers, timeout=DELIVERY_TIMEOUT_S, allow_redirects=False
        )
    except StreamError as exc:
        return DeliveryOutcome(False, False, exc.message)
    except (requests.RequestException, OSError) as exc:
        return DeliveryOutcome(False, False, f"{type(exc).__name__}: {exc}"[:300])
    if not 200 <= response.status_code < 300:
        return DeliveryOutcome(False, False, f"receiver answered {response.status_code}")
    try:
        reply = response.json()
    except ValueError:
        reply = None
    done = isinstance(reply, dict) and reply.get("done") is True
    return DeliveryOutcome(True, done, None)
