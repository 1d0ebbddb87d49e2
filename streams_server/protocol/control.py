"""The reserved `__ds` control APIs (sections 6 and 7), routed before stream paths.

Besides the protocol's subscription endpoints and the JWK Set, two read-only listings are
offered as extensions (section 11.1) for tooling such as the stream inspector:
`GET __ds/streams?prefix=` and `GET __ds/subscriptions`, a page at a time (`limit`, at most
`LISTING_LIMIT`; `after`, the `next_after` of the page before), each with the `total`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ..errors import BadRequest, MethodNotAllowed, NotFound
from ..offsets import format_offset
from ..storage.engine import StreamStore
from ..subscriptions.model import PULL_WAKE, WEBHOOK, SubscriptionState
from ..subscriptions.service import SubscriptionService
from ..subscriptions.webhooks import link_json
from .messages import Reply, StreamRequest

LISTING_LIMIT = 1000
"""The most entries a listing answers with at once (and how many when not asked)."""

# Endpoints whose Authorization header carries a wake token rather than the server's token.
TOKEN_AUTHENTICATED_ACTIONS = ("ack", "release", "callback")


def _json_reply(status: int, payload: Any, content_type: str = "application/json") -> Reply:
    return Reply(
        status,
        {"Content-Type": content_type, "Cache-Control": "no-store"},
        json.dumps(payload, separators=(",", ":")).encode("utf-8"),
    )


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_public(control_path: str, method: str) -> bool:
    """The webhook signing keys (section 6.5) are public keys for webhook receivers to
    verify deliveries with: a receiver should not need the server's own bearer token."""
    return method in ("GET", "HEAD") and control_path.split("/", 1)[1:] == ["jwks.json"]


def uses_wake_token(control_path: str) -> bool:
    parts = control_path.split("/")
    return len(parts) == 4 and parts[1] == "subscriptions" and parts[3] in TOKEN_AUTHENTICATED_ACTIONS


class ControlOperations:
    """Handles requests under `{stream-root}/__ds/`."""

    def __init__(self, store: StreamStore, service: SubscriptionService) -> None:
        self.store = store
        self.service = service

    def handle(self, request: StreamRequest, stream_root_url: str) -> Reply:
        parts = request.path.split("/", 3)  # "__ds", kind, id, rest
        kind = parts[1] if len(parts) > 1 else ""
        if kind == "jwks.json" and len(parts) == 2:
            return self._jwks(request)
        if kind == "streams" and len(parts) == 2:
            return self._list_streams(request)
        if kind == "subscriptions":
            if len(parts) == 2 or parts[2] == "":
                return self._list_subscriptions(request, stream_root_url)
            sub_id = parts[2]
            rest = parts[3] if len(parts) > 3 else ""
            return self._subscription(request, sub_id, rest, stream_root_url)
        raise NotFound(f"no control API at {request.path!r}", code="NOT_FOUND")

    # ------------------------------------------------------------------ endpoints

    def _jwks(self, request: StreamRequest) -> Reply:
        _only(request, "GET", "HEAD")
        reply = _json_reply(200, self.service.keys.jwks(), "application/jwk-set+json")
        reply.headers["Cache-Control"] = "public, max-age=300"
        return reply

    def _list_streams(self, request: StreamRequest) -> Reply:
        _only(request, "GET")
        _given_once(request, "prefix", "after", "limit")
        listing = self.store.list_streams(request.args.get("prefix", ""),
                                          after=request.args.get("after", ""),
                                          limit=_listing_limit(request))
        return _json_reply(
            200,
            {
                "total": listing.total,
                "next_after": listing.next_after,
                "streams": [
                    {
                        "path": i.path,
                        "content_type": i.content_type,
                        "next_offset": format_offset(i.tail),
                        "closed": i.closed,
                        "ttl_seconds": i.expiry.ttl_seconds,
                        "expires_at": _iso(i.expiry.expires_at_ms),
                        "created_at": _iso(i.created_at_ms),
                        "forked_from": i.fork_source_path,
                    }
                    for i in listing.streams
                ]
            },
        )

    def _list_subscriptions(self, request: StreamRequest, root: str) -> Reply:
        _only(request, "GET")
        _given_once(request, "after", "limit")
        states, total, next_after = self.service.list(after=request.args.get("after", ""),
                                                      limit=_listing_limit(request))
        return _json_reply(200, {"total": total, "next_after": next_after,
                                 "subscriptions": [self._describe(s, root) for s in states]})

    def _subscription(self, request: StreamRequest, sub_id: str, rest: str, root: str) -> Reply:
        method = request.method
        if rest == "":
            if method == "PUT":
                state, created = self.service.put(sub_id, _body(request), root)
                return _json_reply(201 if created else 200, self._describe(state, root))
            if method in ("GET", "HEAD"):
                return _json_reply(200, self._describe(self.service.get(sub_id), root))
            if method == "DELETE":
                self.service.delete(sub_id)
                return Reply(204)
            raise _not_allowed("GET, PUT, DELETE")
        if rest == "streams":
            _only(request, "POST")
            self.service.add_streams(sub_id, _body(request))
            return Reply(204)
        if rest.startswith("streams/"):
            _only(request, "DELETE")
            self.service.remove_stream(sub_id, rest[len("streams/") :])
            return Reply(204)
        if rest not in ("claim", "ack", "callback", "release"):
            # `PUT __ds/subscriptions/conv/1` was refused as a method (405, POST only)
            raise NotFound(f"no subscription API {rest!r} (a subscription id has no '/')",
                           code="NOT_FOUND")
        _only(request, "POST")
        auth = request.headers.get("Authorization")
        if rest == "claim":
            grant, token = self.service.claim(sub_id, _body(request))
            return _json_reply(
                200,
                {
                    "wake_id": grant.wake_id,
                    "generation": grant.generation,
                    "token": token,
                    "streams": [link_json(link, with_tail=True) for link in grant.links],
                    "lease_ttl_ms": grant.lease_ttl_ms,
                },
            )
        if rest in ("ack", "callback"):
            kind = PULL_WAKE if rest == "ack" else WEBHOOK
            next_wake = self.service.ack(sub_id, auth, _body(request), kind=kind)
            return _json_reply(200, {"ok": True, "next_wake": next_wake})
        self.service.release(sub_id, auth, _body(request))
        return Reply(204)

    def _describe(self, state: SubscriptionState, root: str) -> dict[str, Any]:
        config = state.config
        webhook = None
        if config.type == WEBHOOK:
            webhook = {
                "url": config.webhook_url,
                "signing": {
                    "alg": "ed25519",
                    "kid": self.service.keys.kid,
                    "jwks_url": f"{root}/__ds/jwks.json",
                },
            }
        return {
            "id": state.id,
            "subscription_id": state.id,
            "type": config.type,
            "pattern": config.pattern,
            "streams": [link_json(link, with_tail=False) for link in state.links],
            "webhook": webhook,
            "wake_stream": config.wake_stream,
            "lease_ttl_ms": config.lease_ttl_ms,
            "created_at": _iso(state.created_at_ms),
            "status": state.status,
            "description": config.description,
            # Extensions for operators: where the wake and lease stand.
            "generation": state.generation,
            "wake_id": state.wake_id,
            "holder": state.holder,
            "lease_expires_at": _iso(state.lease_expires_at_ms),
            "next_attempt_at": _iso(state.next_attempt_at_ms),
            "last_error": state.last_error,
        }


def _given_once(request: StreamRequest, *names: str) -> None:
    """Refuse a listing's parameter given twice: which one was meant is not ours to guess
    (`?limit=1&limit=2` listed by the first)."""
    for name in names:
        if name in request.repeated_args:
            raise BadRequest(f"{name} is given more than once", code="DUPLICATE_PARAMETER")


def _listing_limit(request: StreamRequest) -> int:
    value = request.args.get("limit")
    if value is None:
        return LISTING_LIMIT
    if not (value.isascii() and value.isdigit() and value[0] != "0"
            and int(value) <= LISTING_LIMIT):
        raise BadRequest(f"limit must be a whole number from 1 to {LISTING_LIMIT}, not {value!r}",
                         code="INVALID_LIMIT")
    return int(value)


def _only(request: StreamRequest, *methods: str) -> None:
    if request.method not in methods:
        raise _not_allowed(", ".join(methods))


def _not_allowed(allowed: str) -> MethodNotAllowed:
    return MethodNotAllowed(f"allowed methods: {allowed}", headers={"Allow": allowed})


def _body(request: StreamRequest) -> Any:
    raw = request.body.read(1024 * 1024 + 1)
    if len(raw) > 1024 * 1024:
        raise BadRequest("control request bodies are limited to 1 MiB", code="PAYLOAD_TOO_LARGE")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
        # An escaped lone surrogate ("\ud800") decodes to a str that cannot be stored as
        # UTF-8: found here, it is the client's mistake, not a failed write (503) later.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the body's JSON holds a lone surrogate escape (such as \\ud800), "
                         "which is not a character", code="INVALID_JSON") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="INVALID_JSON") from None
    except RecursionError:
        raise BadRequest("the body's JSON is nested too deeply", code="INVALID_JSON") from None
    return body
