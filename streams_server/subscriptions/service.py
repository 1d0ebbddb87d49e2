"""The subscription service: validated operations plus the scheduler that keeps time.

The scheduler thread sleeps until the earliest deadline stored in the database (a lease
expiry or a webhook attempt) or until a commit changes subscription state, so leases expire
on time with nobody calling, and a restart resumes the stored retry schedule.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import requests

from ..errors import BadRequest, NotFound, StorageFailure, Unauthorized
from ..offsets import parse_offset
from ..storage import subscriptions as db
from ..storage.engine import StreamStore
from . import tokens, webhooks
from .keys import ServerKeys
from .model import (
    Ack,
    WakeFence,
    SubscriptionState,
    WakeGrant,
    parse_config,
    parse_stream_list,
    refuse_own_wake_stream,
    retry_delay_s,
    stream_path,
    validate_subscription_id,
)

log = logging.getLogger(__name__)

MAX_WORKER_NAME = 256
"""The longest worker name a claim takes (it is stored with the lease and shown in listings)."""

IDLE_CHECK_S = 30.0


class SubscriptionService:
    """Sections 6 and 7 over one `StreamStore`."""

    def __init__(self, store: StreamStore, keys: ServerKeys, *,
                 local_webhooks: bool = False) -> None:
        self.store = store
        self.keys = keys
        self.local_webhooks = local_webhooks
        self._session = requests.Session()
        self._poke = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: set[tuple[str, str]] = set()
        # Subscriptions whose last delivery could not be recorded: its attempt is still due
        # in the database, so it rests here (sub id -> until when, in ms), longer for each
        # such delivery in a row (sub id -> how many).
        self._resting: dict[str, int] = {}
        self._unrecorded: dict[str, int] = {}
        store.set_wake_listener(self._poke.set)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the scheduler (lease expiry, webhook delivery)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run_scheduler, name="subscription-scheduler", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._session.close()

    # ------------------------------------------------------------------ management (6.2-6.4)

    def put(self, sub_id: str, body: Any, base_url: str) -> tuple[SubscriptionState, bool]:
        config = parse_config(body, local_webhooks=self.local_webhooks)
        validate_subscription_id(sub_id)
        return self.store.transact(lambda tx: db.put_subscription(tx, sub_id, config, base_url))

    def get(self, sub_id: str) -> SubscriptionState:
        return self.store.read_with(lambda conn: db.get_subscription(conn, sub_id))

    def list(self, *, after: str, limit: int) -> tuple[list[SubscriptionState], int, str | None]:
        return self.store.read_with(
            lambda conn: db.list_subscriptions(conn, after=after, limit=limit))

    def delete(self, sub_id: str) -> None:
        self.store.transact(lambda tx: db.delete_subscription(tx, sub_id))

    def add_streams(self, sub_id: str, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("expected {\"streams\": [...]}", code="INVALID_STREAM")
        paths = parse_stream_list(body.get("streams"), "streams")

        def op(tx: Any) -> None:
            row = db.require_subscription(tx, sub_id)
            if row["wake_stream"] is not None:
                refuse_own_wake_stream(row["wake_stream"], None, paths)
            db.add_explicit_links(tx, sub_id, paths)

        self.store.transact(op)

    def remove_stream(self, sub_id: str, path: str) -> None:
        stream_path(path, "stream")

        def op(tx: Any) -> None:
            db.require_subscription(tx, sub_id)
            db.remove_explicit_link(tx, sub_id, path)

        self.store.transact(op)

    # ------------------------------------------------------------------ delivery (7.1-7.2)

    def claim(self, sub_id: str, body: Any) -> tuple[WakeGrant, str]:
        worker = body.get("worker") if isinstance(body, dict) else None
        if not isinstance(worker, str) or not worker:
            raise BadRequest("claim needs {\"worker\": \"<name>\"}", code="INVALID_WORKER")
        if len(worker) > MAX_WORKER_NAME:
            raise BadRequest(f"a worker's name is at most {MAX_WORKER_NAME} characters long",
                             code="INVALID_WORKER")
        grant = self.store.transact(lambda tx: db.claim(tx, sub_id, worker))
        token = tokens.mint(
            self.keys.token_key,
            tokens.TokenClaims(sub_id, grant.generation, grant.wake_id),
        )
        return grant, token

    def ack(self, sub_id: str, authorization: str | None, body: Any, *, kind: str) -> bool:
        fence = self._fence(sub_id, authorization, body)
        acks = _parse_acks(body.get("acks", []))
        done = body.get("done", False)
        if not isinstance(done, bool):  # "yes" was taken as a heartbeat: the lease held on
            raise BadRequest('"done" must be true or false', code="INVALID_ACKS")
        return self.store.transact(
            lambda tx: db.acknowledge(tx, sub_id, fence, acks, done=done, kind=kind)
        )

    def release(self, sub_id: str, authorization: str | None, body: Any) -> bool:
        fence = self._fence(sub_id, authorization, body)
        return self.store.transact(lambda tx: db.release(tx, sub_id, fence))

    def release_leases_of(self, worker: str) -> int:
        """End every lease held by `worker`, known to have stopped: the embedded supervisor
        at exit, when it can no longer reach the server over HTTP, and the one of this app's
        earlier run at start."""
        return self.store.transact(lambda tx: db.release_holder(tx, worker))

    def _fence(self, sub_id: str, authorization: str | None, body: Any) -> WakeFence:
        claims = self._claims(sub_id, authorization)
        generation, wake_id = _wake_fields(body)
        return WakeFence(claims.generation, claims.wake_id, generation, wake_id)

    def _claims(self, sub_id: str, authorization: str | None) -> tokens.TokenClaims:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("a wake token is required in Authorization: Bearer <token>",
                               code="INVALID_TOKEN")
        try:
            claims = tokens.verify(self.keys.token_key, token.strip())
        except tokens.InvalidToken as exc:
            raise Unauthorized(str(exc), code="INVALID_TOKEN") from None
        if claims.subscription_id != sub_id:
            raise db.Fenced("the token belongs to another subscription", code="FENCED")
        return claims

    # ------------------------------------------------------------------ the scheduler

    def _run_scheduler(self) -> None:
        while not self._stopping.is_set():
            try:
                timeout = self._tick()
            except StorageFailure:  # the committer logs the outage; lease expiry waits for it
                timeout = 1.0
            except Exception:
                log.exception("subscription scheduler tick failed")
                timeout = 1.0
            self._poke.wait(timeout)
            self._poke.clear()

    def _tick(self) -> float:
        """Expire leases, start due deliveries; returns seconds until the next deadline."""
        now = self.store.now_ms()
        deadline = self._next_deadline_ms()
        if deadline is not None and deadline <= now:
            self.store.transact(db.expire_leases)
            due = self.store.read_with(
                lambda conn: db.due_webhook_wakes(conn, self.store.now_ms())
            )
            resting = self._resting.copy()  # delivery threads change it
            for state in due:
                if state.id not in resting:
                    self._start_delivery(state)
            deadline = self._next_deadline_ms()
        if deadline is None:
            return IDLE_CHECK_S
        return max(0.005, min(IDLE_CHECK_S, (deadline - self.store.now_ms()) / 1000))

    def _next_deadline_ms(self) -> int | None:
        """A delivery under way pokes the scheduler once it is recorded; until then its
        attempt, still due, would bring the scheduler back every few milliseconds. One that
        could not be recorded is due again when its rest is over."""
        now = self.store.now_ms()
        for sub_id, until in list(self._resting.items()):
            if until <= now:
                self._resting.pop(sub_id, None)
        resting = self._resting.copy()
        delivering = {wake_id for _, wake_id in self._in_flight.copy()}
        stored = self.store.read_with(
            lambda conn: db.next_deadline_ms(conn, resting.keys(), delivering))
        return min([t for t in [stored, *resting.values()] if t is not None], default=None)

    def _start_delivery(self, state: SubscriptionState) -> None:
        key = (state.id, state.wake_id or "")
        if key in self._in_flight:
            return
        self._in_flight.add(key)
        threading.Thread(
            target=self._deliver, args=(state, key), name="webhook-delivery", daemon=True
        ).start()

    def _deliver(self, state: SubscriptionState, key: tuple[str, str]) -> None:
        try:
            try:
                state = self.store.read_with(lambda conn: db.get_subscription(conn, state.id))
            except NotFound:
                return  # deleted meanwhile
            if (state.wake_id != key[1] or state.next_attempt_at_ms is None
                    or state.next_attempt_at_ms > self.store.now_ms()):
                return  # recorded since the scheduler read it as due: delivered, or resting
            assert state.wake_id is not None
            token = tokens.mint(
                self.keys.token_key,
                tokens.TokenClaims(state.id, state.generation, state.wake_id),
            )
            outcome = webhooks.deliver(self._session, state, self.keys, token,
                                       local_ok=self.local_webhooks)
            retry_at = None
            if not outcome.delivered:
                delay = retry_delay_s(state.delivery_attempt)
                retry_at = self.store.now_ms() + int(delay * 1000)
                log.warning(
                    "webhook delivery for %s failed (%s); retry in %.1fs",
                    state.id,
                    outcome.error,
                    delay,
                )
            self.store.transact(
                lambda tx: db.record_delivery(
                    tx,
                    state,
                    delivered=outcome.delivered,
                    done=outcome.done,
                    snapshot=state.links,
                    error=outcome.error,
                    retry_at_ms=retry_at,
                )
            )
            self._unrecorded.pop(state.id, None)
        except StorageFailure as exc:
            log.warning("webhook delivery for %s not recorded (%s); it is tried again in"
                        " %.1fs", state.id, exc, self._rest(state))
        except Exception:
            log.exception("webhook delivery for %s crashed; it is tried again in %.1fs",
                          state.id, self._rest(state))
        finally:
            self._in_flight.discard(key)
            self._poke.set()

    def _rest(self, state: SubscriptionState) -> float:
        """Hold back a delivery that could not be recorded, longer each time in a row (its
        stored attempt count did not grow); returns the rest in seconds."""
        in_a_row = self._unrecorded.get(state.id, 0)
        delay = retry_delay_s(state.delivery_attempt + in_a_row)
        self._unrecorded[state.id] = in_a_row + 1
        self._resting[state.id] = self.store.now_ms() + int(delay * 1000)
        return delay


def _wake_fields(body: Any) -> tuple[int, str]:
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object", code="INVALID_BODY")
    generation = body.get("generation")
    wake_id = body.get("wake_id")
    if not isinstance(generation, int) or isinstance(generation, bool) or not isinstance(wake_id, str):
        raise BadRequest("generation (integer) and wake_id (string) are required", code="INVALID_BODY")
    return generation, wake_id


def _parse_acks(value: Any) -> tuple[Ack, ...]:
    if not isinstance(value, list):
        raise BadRequest("acks must be a list", code="INVALID_ACKS")
    acks = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("offset"), str):
            raise BadRequest("each ack is {\"stream\": path, \"offset\": offset}", code="INVALID_ACKS")
        acks.append(Ack(stream_path(item.get("stream"), "ack stream"),
                        parse_offset(item["offset"], field="ack offset")))
    return tuple(acks)

