"""A small Durable Streams client for any conformant server.

It covers what the agents need from PROTOCOL.md: create-or-ensure, metadata, delete and close
of streams (section 5); idempotent-producer appends (5.2.1, see `agent_actors.producer`);
catch-up reads and live tails by long-poll or SSE (5.6-5.8, see `agent_actors._tail`); and
pull-wake subscriptions (sections 6 and 7). Only ``application/json`` streams are read.

``base_url`` is the streams root, e.g. ``http://127.0.0.1:4437/v1/stream``; stream paths are
relative to it (``conversations/abc/prompts``), as in subscription bodies.

Failures surface as the typed `agent_actors.errors.StreamsError` family. Transient ones
(connection errors, ``5xx``, ``429``) are retried per the `RetryPolicy` first, for requests
that are safe to repeat.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import requests
import requests.adapters

from agent_actors import errors
from agent_actors._http import RetryPolicy, Transport, raise_for_status
from agent_actors._tail import LiveMode, Tail
from agent_actors._wire import WirePool, WireResponse
from agent_actors.producer import Producer
from agent_actors.stream_types import (
    AppendResult,
    EnsureResult,
    Lease,
    LeaseStream,
    ListedStream,
    ListingPage,
    ReadResult,
    StreamInfo,
    Subscription,
    SubscriptionConfig,
    SubscriptionStream,
)

__all__ = [
    "AppendResult",
    "EnsureResult",
    "Lease",
    "LeaseStream",
    "ListedStream",
    "ListingPage",
    "Producer",
    "ReadResult",
    "RetryPolicy",
    "StreamInfo",
    "StreamsClient",
    "Subscription",
    "SubscriptionConfig",
    "SubscriptionStream",
    "Tail",
]

JSON_CONTENT_TYPE = "application/json"


class StreamsClient:
    """A client of one Durable Streams server (one streams root URL).

    ``timeout`` bounds each ordinary request; live reads use ``live_timeout`` instead, which
    must exceed the server's long-poll timeout. ``retry`` governs retries of transient
    failures. May be shared between threads: ordinary requests go through a thread-safe pool
    of kept-alive connections (`agent_actors._wire`, or the given `requests` ``session``), and
    each `Tail` reads through a `requests` session of its own. ``pool_size`` is how many
    connections the pool keeps open for reuse: make it the number of threads that send
    requests at once, or each one over it opens (and throws away) a connection per request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        auth_token: str | None = None,
        timeout: float = 10.0,
        live_timeout: float = 75.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 10,
    ) -> None:
        scheme, separator, rest = base_url.partition("://")
        if not separator or scheme.lower() not in ("http", "https"):
            raise errors.ConfigurationError(f"streams URL must be http(s)://..., not {base_url!r}")
        self.base_url = f"{scheme.lower()}://{rest}".rstrip("/")  # HTTP:// is http:// too
        self.live_timeout = live_timeout
        self.transport = Transport(
            session or _pooled_session(pool_size), auth_token=auth_token, timeout=timeout,
            retry=retry or RetryPolicy(),
            wire=None if session is not None else _wire_pool(self.base_url, pool_size),
        )

    def __repr__(self) -> str:
        return f"StreamsClient({self.base_url!r})"

    def with_retry(self, retry: RetryPolicy) -> StreamsClient:
        """A client of the same server, sharing this one's connections, retrying per ``retry``."""
        clone = copy.copy(self)
        clone.transport = self.transport.with_retry(retry)
        return clone

    def close(self) -> None:
        """Release pooled connections."""
        self.transport.close()

    # -- URLs ---------------------------------------------------------------------------------

    def stream_url(self, path: str) -> str:
        """The URL of the stream at root-relative ``path``."""
        path = path.strip("/")
        if not path:
            raise ValueError("stream path must not be empty")
        if path == "__ds" or path.startswith("__ds/"):
            raise ValueError("stream paths under __ds/ are reserved for control APIs")
        return f"{self.base_url}/{quote(path, safe='/')}"

    def subscription_url(self, subscription_id: str, action: str = "") -> str:
        """The URL of a subscription, or of one of its actions (``claim``, ``ack``, ...)."""
        if not subscription_id:
            raise ValueError("subscription id must not be empty")
        url = f"{self.base_url}/__ds/subscriptions/{quote(subscription_id, safe='')}"
        return f"{url}/{action}" if action else url

    # -- stream lifecycle ---------------------------------------------------------------------

    def ensure_stream(
        self, path: str, content_type: str = JSON_CONTENT_TYPE, *,
        ttl_seconds: int | None = None, expires_at: str | None = None,
    ) -> EnsureResult:
        """Create the stream, or confirm an identical one exists (``PUT``, section 5.1).

        Raises `Conflict` if a stream exists there with another configuration (or closed).
        """
        headers = {"Content-Type": content_type}
        if ttl_seconds is not None:
            headers["Stream-TTL"] = str(ttl_seconds)
        if expires_at is not None:
            headers["Stream-Expires-At"] = expires_at
        with self.transport.request("PUT", self.stream_url(path), headers=headers) as response:
            raise_for_status(response)
            return EnsureResult(
                created=response.status_code == 201,
                next_offset=response.headers.get("Stream-Next-Offset"),
                closed=_flag(response.headers, "Stream-Closed"),
            )

    def head(self, path: str) -> StreamInfo:
        """The stream's metadata (``HEAD``, section 5.5); `StreamNotFound` if absent."""
        with self.transport.request("HEAD", self.stream_url(path)) as response:
            raise_for_status(response)
            headers = response.headers
            ttl = headers.get("Stream-TTL")
            return StreamInfo(
                next_offset=headers.get("Stream-Next-Offset", ""),
                closed=_flag(headers, "Stream-Closed"),
                content_type=headers.get("Content-Type"),
                ttl_seconds=int(ttl) if ttl and ttl.isdigit() else None,
                expires_at=headers.get("Stream-Expires-At"),
            )

    def exists(self, path: str) -> bool:
        """True if the stream exists (a ``HEAD`` that is not ``404``)."""
        try:
            self.head(path)
        except errors.StreamNotFound:
            return False
        return True

    def delete(self, path: str, *, missing_ok: bool = False) -> None:
        """Delete the stream (section 5.4). A retried delete may find it gone: ``missing_ok``."""
        with self.transport.request("DELETE", self.stream_url(path)) as response:
            if missing_ok and response.status_code == 404:
                return
            raise_for_status(response)

    def close_stream(self, path: str) -> str | None:
        """Close the stream without appending (section 5.3); idempotent. Returns its tail."""
        headers = {"Stream-Closed": "true"}
        with self.transport.request("POST", self.stream_url(path), headers=headers) as response:
            raise_for_status(response)
            return response.headers.get("Stream-Next-Offset")

    # -- writing --------------------------------------------------------------------------------

    def producer(
        self, path: str, producer_id: str, *, epoch: int = 0, next_seq: int = 0,
        auto_claim: bool = False,
    ) -> Producer:
        """An idempotent `Producer` appending to ``path``; see `agent_actors.producer`."""
        return Producer(self, path, producer_id, epoch=epoch, next_seq=next_seq,
                        auto_claim=auto_claim)

    # -- reading --------------------------------------------------------------------------------

    def read(self, path: str, offset: str = "-1") -> ReadResult:
        """One catch-up read from ``offset`` (section 5.6): possibly only part of the data.

        Check ``up_to_date``, or use `read_all`, to know whether the tail was reached.
        """
        params = {"offset": offset}
        with self.transport.request("GET", self.stream_url(path), params=params) as response:
            raise_for_status(response)
            return self.parse_read(response, offset)

    def read_all(self, path: str, offset: str = "-1") -> ReadResult:
        """Catch-up reads from ``offset`` until up to date; all messages in one result."""
        messages: list[Any] = []
        while True:
            batch = self.read(path, offset)
            messages.extend(batch.messages)
            if batch.up_to_date or batch.closed or batch.next_offset == offset:
                return ReadResult(tuple(messages), batch.next_offset, batch.up_to_date,
                                  batch.closed, batch.cursor)
            offset = batch.next_offset

    def tail(
        self,
        path: str,
        offset: str = "-1",
        *,
        live: LiveMode = "long-poll",
        stop_event: threading.Event | None = None,
        yield_empty: bool = False,
    ) -> Tail:
        """Follow the stream from ``offset``: an iterator of `ReadResult` batches.

        Catches up first, then waits for new messages by ``live`` mode (``"long-poll"`` or
        ``"sse"``), reconnecting with backoff on transient errors. Ends when the stream is
        closed and fully read (the last batch has ``closed=True``), or when ``stop_event`` is
        set or `Tail.close` is called. ``yield_empty=True`` also yields message-less batches
        (long-poll timeouts, SSE keep-alive controls), e.g. to notice being caught up.
        """
        return Tail(self, path, offset, live=live, stop_event=stop_event,
                    yield_empty=yield_empty, request_timeout=self.live_timeout)

    def parse_read(self, response: requests.Response | WireResponse, offset: str) -> ReadResult:
        """Decode a successful read response (catch-up or long-poll) into a `ReadResult`."""
        headers = response.headers
        if (response.status_code == 200 and headers.get("Content-Length") is None
                and "chunked" not in headers.get("Transfer-Encoding", "").lower()):
            # What a connection closed in the middle of the headers looks like to `requests`:
            # taken as an empty body, its `Stream-Next-Offset` would skip data never read.
            raise errors.StreamsUnavailable("the answer broke off before its headers ended")
        closed = _flag(headers, "Stream-Closed")
        messages: tuple[Any, ...] = ()
        content_type = headers.get("Content-Type", "") if response.status_code != 204 else ""
        if content_type and not content_type.lower().startswith(JSON_CONTENT_TYPE):
            # Checked on an empty read too: the first read of a new stream is empty.
            raise errors.ContentTypeMismatch(
                f"not a JSON stream (Content-Type {content_type!r})",
                status=response.status_code, method="GET", url=response.url)
        if response.status_code != 204 and response.content.strip():
            try:
                value = json.loads(response.content)
            except ValueError:
                value = None
            if not isinstance(value, list):
                raise errors.StreamsError("JSON stream read did not return an array",
                                          status=response.status_code)
            messages = tuple(value)
        return ReadResult(
            messages=messages,
            next_offset=headers.get("Stream-Next-Offset") or offset,
            up_to_date=closed or _flag(headers, "Stream-Up-To-Date"),
            closed=closed,
            cursor=headers.get("Stream-Cursor"),
        )

    # -- subscriptions (sections 6 and 7) -------------------------------------------------------

    def put_subscription(
        self, subscription_id: str, config: SubscriptionConfig | Mapping[str, Any],
    ) -> Subscription:
        """Create the subscription, or re-confirm an identical one (section 6.2).

        Raises `Conflict` if it exists with another configuration.
        """
        body = config.to_json() if isinstance(config, SubscriptionConfig) else dict(config)
        response = self._subscription_call("PUT", subscription_id, "", body)
        return _subscription(response)

    def get_subscription(self, subscription_id: str) -> Subscription:
        """The subscription and its per-stream acked offsets (section 6.3)."""
        return _subscription(self._subscription_call("GET", subscription_id, "", None))

    def delete_subscription(self, subscription_id: str) -> None:
        """Delete (tombstone) the subscription (section 6.3)."""
        self._subscription_call("DELETE", subscription_id, "", None)

    def add_subscription_streams(self, subscription_id: str, paths: Iterable[str]) -> None:
        """Link streams explicitly, at their current tail (section 6.4); idempotent."""
        body = {"streams": [p.strip("/") for p in paths]}
        self._subscription_call("POST", subscription_id, "streams", body)

    def remove_subscription_stream(self, subscription_id: str, path: str) -> None:
        """Remove an explicit stream link (section 6.4); idempotent."""
        action = "streams/" + quote(path.strip("/"), safe="")
        self._subscription_call("DELETE", subscription_id, action, None)

    def claim(self, subscription_id: str, worker: str) -> Lease:
        """Claim a pull-wake subscription's lease (section 7.2).

        Raises `AlreadyClaimed` when another worker holds it, `NoPendingWork` when there is
        nothing to do. Not retried after a connection error that may have reached the server,
        since a claim cannot be safely repeated.
        """
        data = self._subscription_call("POST", subscription_id, "claim", {"worker": worker},
                                       idempotent=False)
        return _lease(subscription_id, worker, data)

    def ack(
        self, lease: Lease, acks: Mapping[str, str] | None = None, *, done: bool = False,
    ) -> bool:
        """Ack processed offsets (``{stream path: offset}``, inclusive) and extend the lease.

        Without ``done`` this is the heartbeat. With ``done=True`` it also releases the
        lease; the result says whether the server scheduled another wake (pending work).
        Raises `LeaseFenced` when the lease is no longer ours.
        """
        body: dict[str, Any] = {
            "wake_id": lease.wake_id,
            "generation": lease.generation,
            "acks": [{"stream": path, "offset": offset} for path, offset in (acks or {}).items()],
        }
        if done:
            body["done"] = True
        data = self._subscription_call("POST", lease.subscription_id, "ack", body,
                                       token=lease.token)
        return bool(data.get("next_wake", False))

    def release(self, lease: Lease) -> None:
        """Give the lease back without acking (section 7.2); the server wakes again if needed."""
        body = {"wake_id": lease.wake_id, "generation": lease.generation}
        self._subscription_call("POST", lease.subscription_id, "release", body,
                                token=lease.token)

    # -- listings (an extension of this project's server; others answer 404) ----------------

    def list_subscriptions(self, *, after: str = "", limit: int | None = None,
                           ) -> ListingPage[Subscription]:
        """A page of subscriptions in id order, those after ``after``.

        `NotFound` where the server has no listings; `StreamsError` if the page is malformed.
        """
        data = self._listing("subscriptions", after=after, limit=limit)
        items = data.get("subscriptions")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise errors.StreamsError("malformed subscription listing")
        return ListingPage(tuple(_subscription(i) for i in items), _next_after(data))

    def list_streams(self, prefix: str = "", *, after: str = "", limit: int | None = None,
                     ) -> ListingPage[ListedStream]:
        """A page of the streams whose path starts with ``prefix``, in path order, those
        after ``after``. `NotFound` where the server has no listings."""
        data = self._listing("streams", prefix=prefix, after=after, limit=limit)
        items = data.get("streams")
        if not isinstance(items, list):
            raise errors.StreamsError("malformed stream listing")
        try:
            listed = tuple(ListedStream(str(i["path"]), str(i["next_offset"])) for i in items)
        except (KeyError, TypeError) as exc:
            raise errors.StreamsError(f"malformed stream listing: {exc!r}") from exc
        return ListingPage(listed, _next_after(data))

    def _listing(self, kind: str, *, limit: int | None, **params: str) -> dict[str, Any]:
        query = {name: value for name, value in params.items() if value}
        if limit is not None:
            query["limit"] = str(limit)
        url = f"{self.base_url}/__ds/{kind}"
        with self.transport.request("GET", url, params=query) as response:
            raise_for_status(response, resource="subscription")
            try:
                value = json.loads(response.content) if response.content else None
            except ValueError:
                value = None
        if not isinstance(value, dict):
            raise errors.StreamsError(f"malformed {kind} listing: not a JSON object")
        return value

    def _subscription_call(
        self, method: str, subscription_id: str, action: str, body: Mapping[str, Any] | None,
        *, token: str | None = None, idempotent: bool = True,
    ) -> dict[str, Any]:
        headers = {"Content-Type": JSON_CONTENT_TYPE} if body is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        response = self.transport.request(
            method, self.subscription_url(subscription_id, action), headers=headers, data=data,
            idempotent=idempotent,
        )
        with response:
            raise_for_status(response, resource="subscription")
            if response.status_code == 204 or not response.content:
                return {}
            try:
                value = json.loads(response.content)
            except ValueError:
                raise errors.StreamsError(
                    "malformed answer: not JSON",
                    status=response.status_code, method=method, url=response.url) from None
            return value if isinstance(value, dict) else {}


def _wire_pool(base_url: str, pool_size: int) -> WirePool | None:
    """The lean connection pool, unless the environment routes ``base_url`` through a proxy
    (which only `requests` knows how to use)."""
    if requests.utils.get_environ_proxies(base_url):
        return None
    return WirePool(base_url, size=pool_size)


def _pooled_session(pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _flag(headers: Mapping[str, str], name: str) -> bool:
    return headers.get(name, "").lower() == "true"


def _subscription(data: Mapping[str, Any]) -> Subscription:
    streams = tuple(
        SubscriptionStream(str(s.get("path", "")), str(s.get("link_type", "")),
                           str(s.get("acked_offset", "")))
        for s in data.get("streams") or () if isinstance(s, dict)
    )
    return Subscription(
        id=str(data.get("id") or data.get("subscription_id") or ""),
        type=str(data.get("type", "")),
        streams=streams,
        pattern=data.get("pattern"),
        wake_stream=data.get("wake_stream"),
        lease_ttl_ms=data.get("lease_ttl_ms"),
        description=data.get("description"),
        status=data.get("status"),
        raw=dict(data),
    )


def _next_after(data: Mapping[str, Any]) -> str | None:
    value = data.get("next_after")
    return value if isinstance(value, str) and value else None


def _lease(subscription_id: str, worker: str, data: Mapping[str, Any]) -> Lease:
    try:
        streams = tuple(
            LeaseStream(
                path=str(s["path"]), acked_offset=str(s["acked_offset"]),
                tail_offset=str(s["tail_offset"]), has_pending=bool(s.get("has_pending")),
                link_type=str(s.get("link_type", "explicit")),
            )
            for s in data.get("streams") or ()
        )
        return Lease(
            subscription_id=subscription_id, worker=worker, wake_id=str(data["wake_id"]),
            generation=int(data["generation"]), token=str(data["token"]), streams=streams,
            lease_ttl_ms=int(data.get("lease_ttl_ms", 30_000)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.StreamsError(f"malformed claim response: {exc!r}") from exc
