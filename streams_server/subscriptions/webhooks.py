"""Delivering a webhook wake: the signed notification body and one HTTP attempt (7.1)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import certifi
import requests
import urllib3

from ..errors import StreamError
from ..offsets import format_offset
from .keys import ServerKeys
from .model import LinkState, SubscriptionState
from .urlcheck import resolve_public_address

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    done: bool
    error: str | None


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
        "callback_url": (f"{state.base_url}/__ds/subscriptions/"
                         f"{quote(state.id, safe='')}/callback"),
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
        address = resolve_public_address(url, local_ok=local_ok)
        proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
        if address is None or proxy:  # a development host, or a proxy that resolves the name
            response = session.post(url, data=body, headers=headers,
                                    timeout=DELIVERY_TIMEOUT_S, allow_redirects=False)
            status, content = response.status_code, response.content
        else:
            status, content = _post_to_address(url, address, body, headers)
    except StreamError as exc:
        return DeliveryOutcome(False, False, exc.message)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        return DeliveryOutcome(False, False, f"{type(exc).__name__}: {exc}"[:300])
    if not 200 <= status < 300:
        return DeliveryOutcome(False, False, f"receiver answered {status}")
    try:
        reply = json.loads(content)
    except ValueError:
        reply = None
    done = isinstance(reply, dict) and reply.get("done") is True
    return DeliveryOutcome(True, done, None)


def _post_to_address(url: str, address: str, body: bytes,
                     headers: dict[str, str]) -> tuple[int, bytes]:
    """POST to `url` over a connection to `address`, the one its host was found to resolve
    to: a second look-up could answer otherwise (DNS rebinding). TLS still checks the
    certificate against the URL's host name, as `requests` does, with its CA bundle."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 443
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    ca_bundle = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                 or certifi.where())
    settings: dict[str, Any] = {
        "timeout": urllib3.Timeout(total=DELIVERY_TIMEOUT_S), "retries": False, "maxsize": 1}
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address, port, server_hostname=host, assert_hostname=host,
            cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle, **settings)
    else:  # only development hosts take http, and they are connected to by name
        pool = urllib3.HTTPConnectionPool(address, parts.port or 80, **settings)
    with pool:
        response = pool.urlopen("POST", target, body=body,
                                headers={**headers, "Host": parts.netloc}, redirect=False)
        return response.status, response.data
