"""Subscriptions beyond the conformance suite: races, lease expiry, restarts, webhook retries."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import urllib3

from streams_server.app import create_app
from streams_server.backend import StreamsBackend
from streams_server.config import StreamsSettings
from streams_server.errors import BadRequest, Conflict, StorageFailure
from streams_server.storage import subscriptions as db
from streams_server.storage.engine import StreamStore
from streams_server.storage.groupcommit import Transaction
from streams_server.storage.models import Expiry
from streams_server.subscriptions.model import (
    PULL_WAKE,
    WEBHOOK,
    Ack,
    SubscriptionConfig,
    SubscriptionState,
    WakeFence,
    parse_config,
)
from streams_server.subscriptions import tokens, webhooks
from streams_server.subscriptions.keys import ServerKeys
from streams_server.subscriptions.urlcheck import validate_webhook_url
from streams_server.subscriptions.globs import (
    MAX_PATTERN_LENGTH, MAX_PATTERN_SEGMENTS, MAX_PATTERN_STARS, matches, validate_pattern,
)
from tests.support import ServerProcess, start_streams_server
from tests.support.agents import wait_until
from tests.support.tls import TlsFront, self_signed_certificate


def _root(server: ServerProcess) -> str:
    return f"{server.url}/v1/stream"


def _put_json_stream(http: requests.Session, root: str, path: str) -> None:
    r = http.put(f"{root}/{path}", headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 201), r.text


def _append(http: requests.Session, root: str, path: str, message: Any) -> str:
    r = http.post(f"{root}/{path}", json=message)
    assert r.status_code in (200, 204), r.text
    return r.headers["Stream-Next-Offset"]


def _pull_subscription(
    http: requests.Session, root: str, sub_id: str, wake: str, pattern: str, lease_ms: int
) -> None:
    _put_json_stream(http, root, wake)
    _subscribe(http, root, sub_id, wake, pattern, lease_ms)


def _subscribe(
    http: requests.Session, root: str, sub_id: str, wake: str, pattern: str,
    lease_ms: int = 30_000,
) -> None:
    """A pull-wake subscription, whether or not its wake stream exists."""
    r = http.put(
        f"{root}/__ds/subscriptions/{sub_id}",
        json={"type": "pull-wake", "pattern": pattern, "wake_stream": wake, "lease_ttl_ms": lease_ms},
    )
    assert r.status_code == 201, r.text


def _wake_events_after(
    http: requests.Session, root: str, wake: str, offset: str, timeout: float = 10.0
) -> tuple[list[dict[str, Any]], str]:
    """Long-poll the wake stream until it has events past `offset` (event-driven, no sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = http.get(f"{root}/{wake}", params={"offset": offset, "live": "long-poll"})
        if r.status_code == 200 and r.json():
            return r.json(), r.headers["Stream-Next-Offset"]
        offset = r.headers.get("Stream-Next-Offset", offset)
    raise AssertionError(f"no wake event on {wake} within {timeout}s")


def _claim(http: requests.Session, root: str, sub_id: str, worker: str) -> requests.Response:
    return http.post(f"{root}/__ds/subscriptions/{sub_id}/claim", json={"worker": worker})


def _ack(
    http: requests.Session, root: str, sub_id: str, grant: dict[str, Any], acks: list[Any], done: bool
) -> requests.Response:
    return http.post(
        f"{root}/__ds/subscriptions/{sub_id}/ack",
        headers={"Authorization": f"Bearer {grant['token']}"},
        json={"wake_id": grant["wake_id"], "generation": grant["generation"], "acks": acks, "done": done},
    )


def test_a_claim_by_a_worker_with_a_name_too_long_says_so(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """It was told "claim needs {"worker": "<name>"}", which it had given."""
    root = _root(streams_server)
    _pull_subscription(http, root, "long-worker", "wake/long-worker", "long-jobs/*", 30_000)
    response = _claim(http, root, "long-worker", "w" * 257)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == "a worker's name is at most 256 characters long"
    assert _claim(http, root, "long-worker", "w" * 256).status_code == 200


def test_two_workers_racing_for_a_claim_exactly_one_wins(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    root = _root(streams_server)
    _pull_subscription(http, root, "race", "wake/race", "jobs/*", 30_000)
    _put_json_stream(http, root, "jobs/a")
    _append(http, root, "jobs/a", {"n": 1})
    _wake_events_after(http, root, "wake/race", "-1")

    barrier = threading.Barrier(8)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def contender(i: int) -> None:
        with requests.Session() as s:
            barrier.wait()
            response = _claim(s, root, "race", f"worker-{i}")
        with lock:
            results.append(response)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.status_code == 200]
    losers = [r for r in results if r.status_code == 409]
    assert len(winners) == 1 and len(losers) == 7, [r.status_code for r in results]
    claimed = winners[0].request.body
    assert isinstance(claimed, bytes)
    holder = json.loads(claimed)["worker"]
    for r in losers:
        error = r.json()["error"]
        assert error["code"] == "ALREADY_CLAIMED"
        assert error["current_holder"] == holder


def test_a_silent_worker_loses_its_lease_and_its_late_ack_is_fenced(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    root = _root(streams_server)
    _pull_subscription(http, root, "lease", "wake/lease", "jobs/*", 1_000)
    _put_json_stream(http, root, "jobs/b")
    tail = _append(http, root, "jobs/b", {"n": 1})
    _, wake_offset = _wake_events_after(http, root, "wake/lease", "-1")

    first = _claim(http, root, "lease", "worker-1").json()
    # worker-1 goes silent: no heartbeat. The server must expire the lease by itself and,
    # since jobs/b still has unacknowledged data, write a new wake event.
    events, _ = _wake_events_after(http, root, "wake/lease", wake_offset, timeout=5.0)
    assert events[-1]["generation"] > first["generation"]

    second = _claim(http, root, "lease", "worker-2")
    assert second.status_code == 200, second.text
    assert second.json()["generation"] > first["generation"]

    late = _ack(http, root, "lease", first, [{"stream": "jobs/b", "offset": tail}], done=True)
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "FENCED"
    state = http.get(f"{root}/__ds/subscriptions/lease").json()
    link = next(s for s in state["streams"] if s["path"] == "jobs/b")
    assert link["acked_offset"] != tail, "a fenced ack must not move the cursor"
    assert state["holder"] == "worker-2"


def test_heartbeats_keep_a_lease_alive_past_its_ttl(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    root = _root(streams_server)
    _pull_subscription(http, root, "beat", "wake/beat", "jobs/*", 1_000)
    _put_json_stream(http, root, "jobs/c")
    _append(http, root, "jobs/c", {"n": 1})
    grant = _claim(http, root, "beat", "worker-1").json()
    heartbeat_timer = threading.Event()  # never set: its wait() is the worker's beat interval
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # 2.5 lease lifetimes
        beat = _ack(http, root, "beat", grant, [], done=False)
        assert beat.status_code == 200, beat.text
        assert beat.json() == {"ok": True, "next_wake": False}
        heartbeat_timer.wait(0.3)
    assert _claim(http, root, "beat", "worker-2").status_code == 409


def test_a_restart_mid_lease_keeps_cursors_generation_and_token(
    tmp_path: Path, streams_server: ServerProcess, http: requests.Session
) -> None:
    root = _root(streams_server)
    _pull_subscription(http, root, "durable", "wake/durable", "jobs/*", 60_000)
    _put_json_stream(http, root, "jobs/d")
    first = _append(http, root, "jobs/d", {"n": 1})
    _append(http, root, "jobs/d", {"n": 2})
    grant = _claim(http, root, "durable", "worker-1").json()
    assert _ack(http, root, "durable", grant, [{"stream": "jobs/d", "offset": first}], False).ok
    before = http.get(f"{root}/__ds/subscriptions/durable").json()

    streams_server.kill()  # SIGKILL: no clean shutdown
    streams_server.start()
    http = requests.Session()

    after = http.get(f"{root}/__ds/subscriptions/durable").json()
    assert after["generation"] == before["generation"] == grant["generation"]
    assert after["holder"] == "worker-1"
    assert after["streams"] == before["streams"]
    assert next(s for s in after["streams"] if s["path"] == "jobs/d")["acked_offset"] == first
    # The wake token was signed with a key kept in the data directory: still valid.
    done = _ack(http, root, "durable", grant, [], done=True)
    assert done.status_code == 200, done.text
    assert done.json() == {"ok": True, "next_wake": True}  # message 2 is still pending


def test_a_subscription_whose_wake_stream_was_missing_is_woken_once_it_exists(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """The wake stream is the application's to create (7.2). A wake issued while it did not
    exist yet was written nowhere but still counted as issued, and nothing ever woke the
    subscription again, across restarts: every later append found a wake in progress. So
    did a wake unclaimed when its stream was deleted and made again."""
    root = _root(streams_server)
    _subscribe(http, root, "early", "wake/early", "jobs/*")
    _put_json_stream(http, root, "jobs/e")
    tail = _append(http, root, "jobs/e", {"n": 1})  # no wake stream yet: no wake written

    _put_json_stream(http, root, "wake/early")
    events, offset = _wake_events_after(http, root, "wake/early", "-1")
    assert [(e["subscription_id"], e["stream"]) for e in events] == [("early", "jobs/e")]
    grant = _claim(http, root, "early", "worker-1").json()
    assert grant["generation"] == events[0]["generation"]
    done = _ack(http, root, "early", grant, [{"stream": "jobs/e", "offset": tail}], done=True)
    assert done.json() == {"ok": True, "next_wake": False}

    _append(http, root, "jobs/e", {"n": 2})
    events, _ = _wake_events_after(http, root, "wake/early", offset)
    assert events[-1]["generation"] > grant["generation"]

    # A wake nobody claimed goes with its stream: the stream made again gets a new one.
    assert http.delete(f"{root}/wake/early").status_code == 204
    _put_json_stream(http, root, "wake/early")
    again, _ = _wake_events_after(http, root, "wake/early", "-1")
    assert again[-1]["generation"] > events[-1]["generation"]
    assert _claim(http, root, "early", "worker-1").json()["generation"] == again[-1]["generation"]


def test_wake_events_keep_a_wake_stream_with_a_ttl_alive(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """Section 5.1: a write resets a stream's TTL. The server's own wake events did not, so a
    wake stream with a TTL expired while wakes were written to it, and the subscription was
    left with a wake nobody could see."""
    root = _root(streams_server)
    r = http.put(f"{root}/wake/ttl",
                 headers={"Content-Type": "application/json", "Stream-TTL": "2"})
    assert r.status_code == 201, r.text
    _subscribe(http, root, "ttl", "wake/ttl", "jobs/*")
    _put_json_stream(http, root, "jobs/t")
    r = http.put(f"{root}/alone", headers={"Content-Type": "application/json", "Stream-TTL": "2"})
    assert r.status_code == 201, r.text  # created after the wake stream, never written

    stop, cycles, failures = threading.Event(), [0], []

    def wake_cycles() -> None:  # append, claim the wake it wrote, ack it: over and over
        with requests.Session() as worker:
            while not stop.is_set():
                tail = _append(worker, root, "jobs/t", {"n": cycles[0]})
                grant = _claim(worker, root, "ttl", "worker-1")
                done = _ack(worker, root, "ttl", grant.json(),
                            [{"stream": "jobs/t", "offset": tail}], done=True)
                if grant.status_code != 200 or done.status_code != 200:
                    failures.append(f"{grant.status_code} {done.status_code} {done.text}")
                    return
                cycles[0] += 1

    worker = threading.Thread(target=wake_cycles, daemon=True)
    worker.start()
    try:
        wait_until(lambda: http.head(f"{root}/alone").status_code == 404, timeout=15,
                   what="the stream nobody wrote to expire")  # HEAD resets no TTL
        assert http.head(f"{root}/wake/ttl").status_code == 200, f"after {cycles[0]} wakes"
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not failures, failures
    events = http.get(f"{root}/wake/ttl", params={"offset": "-1"}).json()
    assert len(events) >= cycles[0] > 0


def test_wake_events_on_a_text_wake_stream_are_one_json_line_each(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """On a stream that is not JSON the events ran together, with nothing between them."""
    root = _root(streams_server)
    r = http.put(f"{root}/wake/text", headers={"Content-Type": "text/plain"})
    assert r.status_code == 201, r.text
    _subscribe(http, root, "text", "wake/text", "jobs/*")
    _put_json_stream(http, root, "jobs/x")
    for n in range(2):
        tail = _append(http, root, "jobs/x", {"n": n})
        grant = _claim(http, root, "text", "worker-1").json()
        assert _ack(http, root, "text", grant, [{"stream": "jobs/x", "offset": tail}], True).ok
    body = http.get(f"{root}/wake/text", params={"offset": "-1"}).text
    assert body.endswith("\n")
    events = [json.loads(line) for line in body.splitlines()]
    assert [e["type"] for e in events] == ["wake", "wake"]
    assert events[1]["generation"] > events[0]["generation"]


def test_a_stream_deleted_and_created_again_counts_its_new_data_as_pending(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """An explicit link kept the acked offset of the deleted stream: the new stream's data,
    at offsets below it, never woke anyone, and a claim showed an acked offset beyond the
    tail."""
    root = _root(streams_server)
    _put_json_stream(http, root, "wake/again")
    _put_json_stream(http, root, "jobs/again")
    r = http.put(f"{root}/__ds/subscriptions/again",
                 json={"type": "pull-wake", "streams": ["jobs/again"],
                       "wake_stream": "wake/again", "lease_ttl_ms": 30_000})
    assert r.status_code == 201, r.text
    tail = ""
    for n in range(5):
        tail = _append(http, root, "jobs/again", {"n": n, "padding": "x" * 100})
    events, offset = _wake_events_after(http, root, "wake/again", "-1")
    grant = _claim(http, root, "again", "worker-1").json()
    done = _ack(http, root, "again", grant, [{"stream": "jobs/again", "offset": tail}], True)
    assert done.json() == {"ok": True, "next_wake": False}

    assert http.delete(f"{root}/jobs/again").status_code == 204
    _put_json_stream(http, root, "jobs/again")
    new_tail = _append(http, root, "jobs/again", {"n": "new"})
    assert new_tail < tail
    events, _ = _wake_events_after(http, root, "wake/again", offset)
    grant = _claim(http, root, "again", "worker-1").json()
    link = next(s for s in grant["streams"] if s["path"] == "jobs/again")
    assert link["tail_offset"] == new_tail and link["has_pending"], link
    assert link["acked_offset"] < new_tail


def test_acks_for_a_linked_stream_deleted_under_a_lease_do_not_refuse_the_others(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """Acking what the claim said about a stream deleted since got `400 OFFSET_OUT_OF_RANGE`,
    and with it the acks of the other streams and the `done`: the worker could not finish."""
    root = _root(streams_server)
    _pull_subscription(http, root, "gone", "wake/gone", "pair/*", 30_000)
    _put_json_stream(http, root, "pair/a")
    _put_json_stream(http, root, "pair/b")
    tails = {path: _append(http, root, path, {"n": 1}) for path in ("pair/a", "pair/b")}
    grant = _claim(http, root, "gone", "worker-1").json()
    assert http.delete(f"{root}/pair/a").status_code == 204

    acks = [{"stream": path, "offset": offset} for path, offset in tails.items()]
    done = _ack(http, root, "gone", grant, acks, done=True)
    assert done.status_code == 200, done.text
    state = http.get(f"{root}/__ds/subscriptions/gone").json()
    assert state["holder"] is None
    assert next(s for s in state["streams"] if s["path"] == "pair/b")["acked_offset"] == tails["pair/b"]


def test_an_ack_for_a_stream_deleted_and_created_again_under_the_lease_is_moot(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """The worker read the old stream and acked its tail after the stream was made again: the
    ack moved the new stream's cursor over data nobody had read, which was then never
    delivered. Such an ack is skipped, and the new data wakes the subscription again."""
    root = _root(streams_server)
    _pull_subscription(http, root, "reborn", "wake/reborn", "twice/*", 30_000)
    _put_json_stream(http, root, "twice/a")
    old_tail = _append(http, root, "twice/a", {"n": "old"})
    grant = _claim(http, root, "reborn", "worker-1").json()

    assert http.delete(f"{root}/twice/a").status_code == 204
    _put_json_stream(http, root, "twice/a")
    new_tail = _append(http, root, "twice/a", {"n": "new", "padding": "x" * 100})
    assert new_tail > old_tail  # the stale offset lies inside the new stream

    done = _ack(http, root, "reborn", grant, [{"stream": "twice/a", "offset": old_tail}], True)
    assert done.status_code == 200, done.text
    assert done.json()["next_wake"] is True
    grant = _claim(http, root, "reborn", "worker-1").json()
    link = next(s for s in grant["streams"] if s["path"] == "twice/a")
    assert link["has_pending"] and link["acked_offset"] < old_tail, link
    # In the next wake the same stream's acks count again.
    done = _ack(http, root, "reborn", grant, [{"stream": "twice/a", "offset": new_tail}], True)
    assert done.json() == {"ok": True, "next_wake": False}


def test_a_heartbeat_after_its_lease_ran_out_is_fenced_before_the_lease_is_swept(
    tmp_path: Path,
) -> None:
    """7.3: an expired lease MUST lose its holder. Until the server's timer swept it, a late
    heartbeat extended it again. (In-process, on a clock the test moves: the window between
    expiry and the sweep is too short to hit over HTTP.)"""
    clock = [1_800_000_000.0]
    store = StreamStore.open_directory(str(tmp_path), clock=lambda: clock[0])
    try:
        for path in ("wake", "jobs/a"):
            store.create(path, content_type="application/json", expiry=Expiry())
        config = SubscriptionConfig(type=PULL_WAKE, pattern="jobs/*", streams=(),
                                    webhook_url=None, wake_stream="wake", lease_ttl_ms=1000,
                                    description=None)
        store.transact(lambda tx: db.put_subscription(tx, "late", config, "http://localhost"))
        store.append("jobs/a", [b'{"n":1}'], content_type="application/json")
        grant = store.transact(lambda tx: db.claim(tx, "late", "worker-1"))
        fence = WakeFence(grant.generation, grant.wake_id, grant.generation, grant.wake_id)

        def heartbeat() -> bool:
            return store.transact(lambda tx: db.acknowledge(tx, "late", fence, (), done=False,
                                                            kind=PULL_WAKE))

        clock[0] += 0.9
        assert heartbeat() is False  # in time: extended to 1.9 s
        clock[0] += 1.0  # the lease ran out; no sweep has run
        with pytest.raises(Conflict) as refused:
            heartbeat()
        assert refused.value.code == "FENCED"
        # Nor is a late release taken (it answered 204, as if the holder still held it).
        with pytest.raises(Conflict) as refused:
            store.transact(lambda tx: db.release(tx, "late", fence))
        assert refused.value.code == "FENCED"
    finally:
        store.close()


def test_a_receiver_that_called_back_is_not_sent_the_wake_again(tmp_path: Path) -> None:
    """7.3: a webhook's lease is extended by its callbacks. A receiver that called back
    while its answer to the POST failed (a 500, a timeout) was sent the same wake again,
    with a new token, while it was still working on it."""
    store = StreamStore.open_directory(str(tmp_path))
    try:
        store.create("jobs/a", content_type="application/json", expiry=Expiry())
        config = SubscriptionConfig(type=WEBHOOK, pattern="jobs/*", streams=(),
                                    webhook_url="https://example.com/hook", wake_stream=None,
                                    lease_ttl_ms=30_000, description=None)
        store.transact(lambda tx: db.put_subscription(tx, "hook", config, "http://localhost"))
        store.append("jobs/a", [b'{"n":1}'], content_type="application/json")
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert wake.wake_id is not None and wake.next_attempt_at_ms is not None
        fence = WakeFence(wake.generation, wake.wake_id, wake.generation, wake.wake_id)
        store.transact(lambda tx: db.acknowledge(tx, "hook", fence, (), done=False,
                                                 kind=WEBHOOK))  # the callback
        store.transact(lambda tx: db.record_delivery(  # then its POST fails
            tx, wake, delivered=False, done=False, snapshot=wake.links,
            error="receiver answered 500", retry_at_ms=store.now_ms() + 1000))
        after = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert after.wake_id == wake.wake_id and after.next_attempt_at_ms is None
        assert after.lease_expires_at_ms is not None
    finally:
        store.close()


def _webhook_store(tmp_path: Path, clock: list[float]) -> StreamStore:
    """A store on a clock the test moves, with a webhook subscription "hook" on jobs/a
    (lease 1 s) whose deliveries the test records by hand, and a wake issued for jobs/a."""
    store = StreamStore.open_directory(str(tmp_path), clock=lambda: clock[0])
    store.create("jobs/a", content_type="application/json", expiry=Expiry())
    config = SubscriptionConfig(type=WEBHOOK, pattern=None, streams=("jobs/a",),
                                webhook_url="https://example.com/hook", wake_stream=None,
                                lease_ttl_ms=1000, description=None)
    store.transact(lambda tx: db.put_subscription(tx, "hook", config, "http://localhost"))
    store.append("jobs/a", [b'{"n":1}'], content_type="application/json")
    return store


def test_a_webhooks_lease_starts_when_its_wake_is_issued(tmp_path: Path) -> None:
    """7.3: "for webhook delivery, the lease starts when a wake is issued". It started when
    the receiver answered, so a receiver that took the POST and never answered held the
    wake for good: it was sent the same wake, with a token still valid, again and again.
    A delivery unanswered for a whole lease counts as failed: the next wake waits for the
    backoff (sent at once, every lease would add a POST to those still open)."""
    clock = [1_800_000_000.0]
    store = _webhook_store(tmp_path, clock)
    try:
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert wake.wake_id is not None
        assert wake.lease_expires_at_ms == store.now_ms() + 1000
        clock[0] += 1.1  # the delivery is still under way: the receiver has not answered
        assert store.transact(db.expire_leases) == 1
        after = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert after.generation == wake.generation + 1 and after.wake_id != wake.wake_id
        assert after.delivery_attempt == 1 and after.status == "failed"
        assert after.last_error == db.NOT_ANSWERED_IN_LEASE
        assert after.next_attempt_at_ms is not None
        assert 800 <= after.next_attempt_at_ms - store.now_ms() <= 1200  # 1 s, 20 % jitter
        assert store.read_with(lambda conn: db.due_webhook_wakes(conn, store.now_ms())) == []
        fence = WakeFence(wake.generation, wake.wake_id, wake.generation, wake.wake_id)
        with pytest.raises(Conflict) as refused:  # the first wake's callback comes too late
            store.transact(lambda tx: db.acknowledge(tx, "hook", fence, (), done=False,
                                                     kind=WEBHOOK))
        assert refused.value.code == "FENCED"
        store.transact(lambda tx: db.record_delivery(  # nor is its POST's late failure taken
            tx, wake, delivered=False, done=False, snapshot=wake.links, error="timed out",
            retry_at_ms=store.now_ms() + 1000))
        assert store.read_with(lambda conn: db.get_subscription(conn, "hook")) == after
        clock[0] += 2.5  # the second wake's delivery is unanswered for its lease too
        assert store.transact(db.expire_leases) == 1
        third = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert third.delivery_attempt == 2 and third.next_attempt_at_ms is not None
        assert 1600 <= third.next_attempt_at_ms - store.now_ms() <= 2400  # 2 s now
    finally:
        store.close()


def test_a_receivers_answer_after_the_lease_ran_out_is_not_taken(tmp_path: Path) -> None:
    """A `{"done": true}` answering the POST after the lease ended was taken (the acks
    applied, the wake ended) where a callback saying the same was fenced: which one won
    depended on whether the sweep had run yet."""
    clock = [1_800_000_000.0]
    store = _webhook_store(tmp_path, clock)
    try:
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        clock[0] += 1.5  # no sweep yet
        store.transact(lambda tx: db.record_delivery(
            tx, wake, delivered=True, done=True, snapshot=wake.links, error=None,
            retry_at_ms=None))
        after = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert after.wake_id == wake.wake_id  # not ended
        [link] = after.links
        assert link.acked_offset == 0 < link.tail_offset  # not acked
    finally:
        store.close()


def test_a_callback_after_a_failed_delivery_shows_the_subscription_active(
    tmp_path: Path,
) -> None:
    """A receiver whose POST failed but that called back has the wake: the subscription
    showed `failed`, with the old error, while the receiver worked under a valid lease."""
    clock = [1_800_000_000.0]
    store = _webhook_store(tmp_path, clock)
    try:
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert wake.wake_id is not None
        store.transact(lambda tx: db.record_delivery(
            tx, wake, delivered=False, done=False, snapshot=wake.links,
            error="receiver answered 503", retry_at_ms=store.now_ms() + 500))
        assert store.read_with(lambda conn: db.get_subscription(conn, "hook")).status == "failed"
        fence = WakeFence(wake.generation, wake.wake_id, wake.generation, wake.wake_id)
        store.transact(lambda tx: db.acknowledge(tx, "hook", fence, (), done=False,
                                                 kind=WEBHOOK))
        after = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert after.status == "active" and after.last_error is None
        assert after.next_attempt_at_ms is None  # and it is not sent again
    finally:
        store.close()


def test_a_webhook_wake_stored_without_a_lease_gets_one_when_its_delivery_fails(
    tmp_path: Path,
) -> None:
    """A wake stored before webhook leases started at the issue has none: failing, it was
    sent again and again, its token valid, however long its receiver stayed down."""
    clock = [1_800_000_000.0]
    store = _webhook_store(tmp_path, clock)
    try:
        store.transact(lambda tx: tx.conn.execute(
            "UPDATE subscriptions SET lease_expires_at_ms = NULL WHERE id = 'hook'"))
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        store.transact(lambda tx: db.record_delivery(
            tx, wake, delivered=False, done=False, snapshot=wake.links,
            error="receiver answered 503", retry_at_ms=store.now_ms() + 500))
        after = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert after.lease_expires_at_ms == store.now_ms() + 1000
    finally:
        store.close()


def test_a_delivery_under_way_holds_back_only_its_own_wake(tmp_path: Path) -> None:
    """The scheduler left out the attempts of every subscription with a POST still open:
    a new wake, issued when the receiver called back `done` with more work pending, went
    out only when the first POST returned, after its own lease had run out."""
    clock = [1_800_000_000.0]
    store = _webhook_store(tmp_path, clock)
    try:
        first = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert first.wake_id is not None
        store.append("jobs/a", [b'{"n":2}'], content_type="application/json")
        fence = WakeFence(first.generation, first.wake_id, first.generation, first.wake_id)
        [link] = first.links
        assert store.transact(lambda tx: db.acknowledge(
            tx, "hook", fence, (Ack("jobs/a", link.tail_offset),), done=True,
            kind=WEBHOOK)) is True  # woken again: the second message is pending
        second = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        second_wake = second.wake_id
        assert second_wake is not None and second_wake != first.wake_id
        first_wake = first.wake_id
        due = store.read_with(lambda conn: db.next_deadline_ms(conn, delivering=(first_wake,)))
        assert due == second.next_attempt_at_ms == store.now_ms()
        assert store.read_with(lambda conn: db.next_deadline_ms(
            conn, delivering=(second_wake,))) == second.lease_expires_at_ms
        assert store.read_with(lambda conn: db.next_deadline_ms(
            conn, resting=("hook",))) == second.lease_expires_at_ms
    finally:
        store.close()


def test_a_delivery_answered_late_does_not_lengthen_the_lease(tmp_path: Path) -> None:
    """The receiver's answer to the POST is not a callback: only callbacks extend a webhook's
    lease (7.3), so a wake delivered 0.9 s into a 1 s lease has 0.1 s left."""
    clock = [1_800_000_000.0]
    store = _webhook_store(tmp_path, clock)
    try:
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert wake.wake_id is not None
        clock[0] += 0.9
        store.transact(lambda tx: db.record_delivery(
            tx, wake, delivered=True, done=False, snapshot=wake.links, error=None,
            retry_at_ms=None))
        delivered = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert delivered.lease_expires_at_ms == wake.lease_expires_at_ms
        assert delivered.next_attempt_at_ms is None  # not sent again
        fence = WakeFence(wake.generation, wake.wake_id, wake.generation, wake.wake_id)
        store.transact(lambda tx: db.acknowledge(tx, "hook", fence, (), done=False,
                                                 kind=WEBHOOK))  # a callback extends it
        extended = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert extended.lease_expires_at_ms == store.now_ms() + 1000
    finally:
        store.close()


def test_a_webhooks_retry_schedule_outlives_the_lease_of_its_wake(tmp_path: Path) -> None:
    """A lease that runs out while deliveries fail ends the wake, and pending work gets a
    new one (7.3); its delivery keeps the backoff the failures reached (7.1), rather than
    going out at once and starting the schedule over every lease."""
    clock = [1_800_000_000.0]
    store = _webhook_store(tmp_path, clock)
    try:
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        retry_at = store.now_ms() + 4000
        store.transact(lambda tx: db.record_delivery(
            tx, wake, delivered=False, done=False, snapshot=wake.links,
            error="receiver answered 503", retry_at_ms=retry_at))
        clock[0] += 1.1
        assert store.transact(db.expire_leases) == 1
        after = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert after.generation == wake.generation + 1
        assert after.next_attempt_at_ms == retry_at and after.delivery_attempt == 1
        assert after.status == "failed" and after.last_error == "receiver answered 503"
        assert after.lease_expires_at_ms == retry_at + 1000  # from the wake's delivery
        assert store.read_with(lambda conn: db.due_webhook_wakes(conn, store.now_ms())) == []
    finally:
        store.close()


def _hook_on(store: StreamStore, *streams: str) -> None:
    """A webhook subscription "hook" on `streams` (its deliveries are recorded by hand)."""
    config = SubscriptionConfig(type=WEBHOOK, pattern=None, streams=streams,
                                webhook_url="https://example.com/hook", wake_stream=None,
                                lease_ttl_ms=30_000, description=None)
    store.transact(lambda tx: db.put_subscription(tx, "hook", config, "http://localhost"))


def test_a_receivers_done_is_taken_when_a_stream_was_unlinked_during_the_delivery(
    tmp_path: Path,
) -> None:
    """The acks a `{"done": true}` answer stands for are the delivery's snapshot of links.
    One unlinked meanwhile made the whole record fail (400 UNKNOWN_STREAM, logged with a
    traceback), and the wake, still due, was delivered again at once, and again."""
    store = StreamStore.open_directory(str(tmp_path))
    try:
        for path in ("jobs/a", "jobs/b"):
            store.create(path, content_type="application/json", expiry=Expiry())
        _hook_on(store, "jobs/a", "jobs/b")
        for path in ("jobs/a", "jobs/b"):
            store.append(path, [b'{"n":1}'], content_type="application/json")
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        store.transact(lambda tx: db.remove_explicit_link(tx, "hook", "jobs/a"))
        store.transact(lambda tx: db.record_delivery(
            tx, wake, delivered=True, done=True, snapshot=wake.links, error=None,
            retry_at_ms=None))
        after = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        assert after.wake_id is None and after.next_attempt_at_ms is None  # the wake is done
        [b] = after.links
        assert b.path == "jobs/b" and b.acked_offset == b.tail_offset
    finally:
        store.close()


def test_a_receivers_done_skips_a_stream_made_again_during_the_delivery(
    tmp_path: Path,
) -> None:
    """The delivery's snapshot held the old stream's tail; the stream made again since holds
    more: taking the `done` moved the new stream's cursor over data nobody was sent."""
    store = StreamStore.open_directory(str(tmp_path))
    try:
        store.create("jobs/a", content_type="application/json", expiry=Expiry())
        _hook_on(store, "jobs/a")
        store.append("jobs/a", [b'{"n":1}'], content_type="application/json")
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        store.delete("jobs/a")
        store.create("jobs/a", content_type="application/json", expiry=Expiry())
        store.append("jobs/a", [b'{"n":"new","padding":"' + b"x" * 100 + b'"}'],
                     content_type="application/json")
        store.transact(lambda tx: db.record_delivery(
            tx, wake, delivered=True, done=True, snapshot=wake.links, error=None,
            retry_at_ms=None))
        after = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        [a] = after.links
        assert a.acked_offset == 0 and a.tail_offset > wake.links[0].tail_offset
        assert after.wake_id is not None and after.wake_id != wake.wake_id  # woken again
    finally:
        store.close()


def test_a_database_of_the_previous_schema_is_brought_up_to_date(tmp_path: Path) -> None:
    """A store written before the links remembered the wake in which their stream was made
    again and the scheduler had its indexes (schema 4) opens, gains them and takes acks as
    before."""
    store = StreamStore.open_directory(str(tmp_path))
    try:
        store.create("jobs/a", content_type="application/json", expiry=Expiry())
        _hook_on(store, "jobs/a")
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "streams.sqlite3") as conn:
        conn.execute("ALTER TABLE subscription_links DROP COLUMN made_again_in_wake")
        conn.execute("DROP INDEX subscriptions_lease_expiry")
        conn.execute("DROP INDEX subscriptions_next_attempt")
        conn.execute("DROP INDEX subscriptions_glob")
        conn.execute("PRAGMA user_version = 4")
    conn.close()

    store = StreamStore.open_directory(str(tmp_path))
    try:
        store.append("jobs/a", [b'{"n":1}'], content_type="application/json")
        wake = store.read_with(lambda conn: db.get_subscription(conn, "hook"))
        store.transact(lambda tx: db.record_delivery(
            tx, wake, delivered=True, done=True, snapshot=wake.links, error=None,
            retry_at_ms=None))
        [a] = store.read_with(lambda conn: db.get_subscription(conn, "hook")).links
        assert a.acked_offset == a.tail_offset > 0
        indexes = store.read_with(lambda conn: {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")})
        assert {"subscriptions_lease_expiry", "subscriptions_next_attempt",
                "subscriptions_glob"} <= indexes
    finally:
        store.close()


def test_the_schedulers_lookups_use_indexes_not_a_read_of_every_subscription(
    tmp_path: Path,
) -> None:
    """After every claim, ack and wake the scheduler looks for the next lease to expire and
    the webhook attempts due. Each look read the whole table: 24 ms at 100,000 subscriptions
    (one per conversation), several times a second under a busy chat."""
    store = StreamStore.open_directory(str(tmp_path))
    try:
        config = SubscriptionConfig(type=PULL_WAKE, pattern=None, streams=("jobs/a",),
                                    webhook_url=None, wake_stream="wake/a", lease_ttl_ms=30_000,
                                    description=None)
        store.transact(lambda tx: db.put_subscription(tx, "sub", config, "http://localhost"))

        def plans_of(run: Any) -> list[str]:
            def traced(conn: sqlite3.Connection) -> list[str]:
                statements: list[str] = []
                conn.set_trace_callback(statements.append)
                try:
                    run(conn)
                finally:
                    conn.set_trace_callback(None)
                return [" / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
                        for sql in statements if "FROM subscriptions" in sql]
            return store.read_with(traced)

        def expire(conn: sqlite3.Connection) -> None:
            db.expire_leases(Transaction(conn, store.now_ms()))

        plans = (plans_of(lambda conn: db.next_deadline_ms(conn, ("busy",), ("w_1",)))
                 + plans_of(expire) + plans_of(lambda conn: db.due_webhook_wakes(conn, 10**15)))
        assert len(plans) >= 3, plans  # one look or more for each
        for plan in plans:
            assert "INDEX subscriptions_" in plan, plan
    finally:
        store.close()


T = TypeVar("T")


def _run_traced(db_file: Path,
                operation: Callable[[Transaction], T]) -> tuple[T, list[tuple[str, list[str]]]]:
    """Run `operation` in a transaction on `db_file`, rolled back after; with the statements
    it ran, each with the steps of its query plan."""
    conn = sqlite3.connect(db_file, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        conn.execute("BEGIN")
        result = operation(Transaction(conn, 0))
        conn.execute("ROLLBACK")
        conn.set_trace_callback(None)
        return result, [
            (sql, [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")])
            for sql in (statement.strip() for statement in statements)
            if sql.startswith(("SELECT", "UPDATE", "INSERT", "DELETE"))
        ]
    finally:
        conn.close()


def test_creating_a_stream_looks_up_only_the_subscriptions_that_could_link_it(
    tmp_path: Path,
) -> None:
    """A new stream is linked to the subscriptions whose pattern matches it. The lookup of
    patterns with wildcards read every subscription: with 100,000 (one per conversation,
    none with a wildcard) creating a stream took 10.9 ms instead of 0.4, inside the commit
    that every writer waits for, twice per new conversation."""
    store = StreamStore.open_directory(str(tmp_path))
    try:
        for sub_id, pattern in (("literal", "jobs/a"), ("glob", "jobs/*")):
            config = SubscriptionConfig(type=PULL_WAKE, pattern=pattern, streams=(),
                                        webhook_url=None, wake_stream="wake/a",
                                        lease_ttl_ms=30_000, description=None)
            store.transact(lambda tx: db.put_subscription(tx, sub_id, config, "http://localhost"))
    finally:
        store.close()
    _, planned = _run_traced(tmp_path / "streams.sqlite3",
                             lambda tx: db.on_stream_created(tx, "jobs/a", 0))
    linked = [sql for sql, _ in planned if "INSERT INTO subscription_links" in sql]
    assert len(linked) == 2, planned  # both subscriptions match the new stream
    lookups = [(sql, plan) for sql, plan in planned
               if sql.startswith(("SELECT", "UPDATE")) and "subscription" in sql]
    assert len(lookups) >= 3, planned
    for sql, plan in lookups:
        assert not [step for step in plan if step.startswith("SCAN") and "INDEX" not in step], (
            sql, plan)


@pytest.mark.parametrize(("pattern", "linked"), [
    ("jobs/a", ["jobs/a"]),
    ("jobs/*", ["jobs/a", "jobs/b"]),
    ("jobs/**", ["jobs", "jobs/a", "jobs/a/deep", "jobs/b"]),  # `**` may match no segment
    ("jobs/**/deep", ["jobs/a/deep"]),
    ("jo*/a", ["jobs/a", "jobsx/a"]),
    ("**/deep", ["jobs/a/deep"]),
])
def test_a_new_subscription_reads_only_the_streams_its_pattern_can_match(
    tmp_path: Path, pattern: str, linked: list[str]
) -> None:
    """A subscription with a pattern links the streams that match it when it is made. Every
    stream was read and matched for it, in the commit every writer waits for: each new
    conversation's subscription (a literal pattern) went through all the streams there are.
    Now a literal pattern reads its one path, and a glob the paths that start with its text
    before the first `*`."""
    store = StreamStore.open_directory(str(tmp_path))
    try:
        for path in ("jobs", "jobs/a", "jobs/a/deep", "jobs/b", "jobsx/a", "other/a"):
            store.create(path, content_type="application/json", expiry=Expiry())
    finally:
        store.close()
    config = SubscriptionConfig(type=PULL_WAKE, pattern=pattern, streams=(), webhook_url=None,
                                wake_stream="wake/a", lease_ttl_ms=30_000, description=None)
    (state, _), planned = _run_traced(
        tmp_path / "streams.sqlite3",
        lambda tx: db.put_subscription(tx, "sub", config, "http://localhost"))
    assert sorted(link.path for link in state.links) == linked
    reads = [(sql, plan) for sql, plan in planned if "FROM streams" in sql]
    assert reads, planned
    if not pattern.startswith("**"):
        for sql, plan in reads:
            assert "SCAN streams" not in plan, (sql, plan)


class _FlakyReceiver:
    """A webhook receiver that fails its first `failures` requests with 503, then acks;
    each answer takes `delay` seconds (the first `first_delay`, if given)."""

    def __init__(self, failures: int, delay: float = 0.0,
                 first_delay: float | None = None) -> None:
        self.failures = failures
        self.delay = delay
        self.first_delay = delay if first_delay is None else first_delay
        self.arrivals: list[float] = []
        self.bodies: list[dict[str, Any]] = []
        self.delivered = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.arrivals.append(time.monotonic())
                receiver.bodies.append(json.loads(body))
                first = len(receiver.arrivals) == 1
                time.sleep(receiver.first_delay if first else receiver.delay)  # as real ones are
                if len(receiver.arrivals) <= receiver.failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                reply = b'{"done": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                receiver.delivered.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_hooks_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """This project's server, allowing webhooks to this machine (where the receivers are)."""
    with start_streams_server(tmp_path / "hooks-data", long_poll_timeout=2.0,
                              extra_args=["--allow-local-webhooks"]) as server:
        yield server


@pytest.fixture
def flaky_receiver() -> Iterator[_FlakyReceiver]:
    receiver = _FlakyReceiver(failures=3)
    yield receiver
    receiver.close()


def test_a_down_webhook_receiver_is_retried_with_backoff_across_a_restart(
    local_hooks_server: ServerProcess, http: requests.Session, flaky_receiver: _FlakyReceiver
) -> None:
    root = _root(local_hooks_server)
    r = http.put(
        f"{root}/__ds/subscriptions/hook",
        json={"type": "webhook", "pattern": "jobs/*", "webhook": {"url": flaky_receiver.url}},
    )
    assert r.status_code == 201, r.text
    _put_json_stream(http, root, "jobs/e")
    tail = _append(http, root, "jobs/e", {"n": 1})

    # Let two attempts fail, then crash the server: the stored schedule must carry on.
    deadline = time.monotonic() + 10
    while len(flaky_receiver.arrivals) < 2 and time.monotonic() < deadline:
        flaky_receiver.delivered.wait(0.05)
    state = http.get(f"{root}/__ds/subscriptions/hook").json()
    assert state["status"] == "failed" and state["next_attempt_at"] is not None
    local_hooks_server.kill()
    local_hooks_server.start()

    assert flaky_receiver.delivered.wait(30), f"never delivered: {flaky_receiver.arrivals}"
    gaps = [b - a for a, b in zip(flaky_receiver.arrivals, flaky_receiver.arrivals[1:])]
    assert len(flaky_receiver.arrivals) == 4
    assert 0.7 <= gaps[0] <= 1.5, gaps  # ~1 s (20 % jitter)
    assert 1.5 <= gaps[2] <= 6.0, gaps  # ~4 s after the restart (the schedule was kept)
    ids = {(b["generation"], b["wake_id"]) for b in flaky_receiver.bodies}
    assert len(ids) == 1, "retries re-deliver the same wake"

    # {"done": true} auto-acked the snapshot's tail.
    http = requests.Session()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = http.get(f"{root}/__ds/subscriptions/hook").json()
        if state["wake_id"] is None:
            break
        flaky_receiver.delivered.wait(0.05)
    link = next(s for s in state["streams"] if s["path"] == "jobs/e")
    assert link["acked_offset"] == tail
    assert state["status"] == "active"


def test_a_slow_webhook_receiver_gets_one_delivery_per_wake(
    local_hooks_server: ServerProcess, http: requests.Session
) -> None:
    """A delivery under way is not started again: the scheduler looks every few ms, and a
    receiver that takes half a second got dozens of copies of one wake."""
    receiver = _FlakyReceiver(failures=0, delay=0.5)
    try:
        root = _root(local_hooks_server)
        r = http.put(f"{root}/__ds/subscriptions/slow-hook",
                     json={"type": "webhook", "pattern": "slow/*",
                           "webhook": {"url": receiver.url}})
        assert r.status_code == 201, r.text
        _put_json_stream(http, root, "slow/a")
        _append(http, root, "slow/a", {"n": 1})
        assert receiver.delivered.wait(10), "never delivered"
        wait_until(lambda: http.get(f"{root}/__ds/subscriptions/slow-hook").json()["wake_id"]
                   is None, timeout=5, what="the wake to be done")
        assert len(receiver.arrivals) == 1, receiver.arrivals
    finally:
        receiver.close()


def test_a_receiver_that_never_answers_is_sent_a_new_wake_when_the_lease_ends(
    local_hooks_server: ServerProcess, http: requests.Session
) -> None:
    """The first delivery hangs (its receiver never answers in time); when the wake's lease
    is over (1 s from its issue) the pending work gets a new wake, which is delivered while
    the first delivery still waits, and the first wake's callback is fenced."""
    receiver = _FlakyReceiver(failures=0, first_delay=8.0)
    try:
        root = _root(local_hooks_server)
        r = http.put(f"{root}/__ds/subscriptions/mute-hook",
                     json={"type": "webhook", "pattern": "mute/*", "lease_ttl_ms": 1000,
                           "webhook": {"url": receiver.url}})
        assert r.status_code == 201, r.text
        _put_json_stream(http, root, "mute/a")
        _append(http, root, "mute/a", {"n": 1})
        assert receiver.delivered.wait(6), f"no second delivery: {receiver.arrivals}"
        first, second = receiver.bodies[:2]
        assert second["generation"] == first["generation"] + 1
        assert 0.8 <= receiver.arrivals[1] - receiver.arrivals[0] <= 3.0, receiver.arrivals
        late = http.post(first["callback_url"],
                         headers={"Authorization": f"Bearer {first['callback_token']}"},
                         json={"wake_id": first["wake_id"], "generation": first["generation"],
                               "acks": [], "done": True})
        assert late.status_code == 409 and late.json()["error"]["code"] == "FENCED", late.text
    finally:
        receiver.close()


def test_a_delivery_recorded_since_the_scheduler_saw_it_due_is_not_sent_again(
    tmp_path: Path,
) -> None:
    """The scheduler reads the due wakes, then starts their deliveries: one that finished
    in between (failed, its retry set for later) was sent again at once, off its backoff."""
    from streams_server.subscriptions.service import SubscriptionService

    receiver = _FlakyReceiver(failures=0)
    store = StreamStore.open_directory(str(tmp_path / "data"))
    service = SubscriptionService(store, ServerKeys(str(tmp_path)),
                                  local_webhooks=True)  # its scheduler is not started
    try:
        store.create("jobs/a", content_type="application/json", expiry=Expiry())
        config = SubscriptionConfig(type=WEBHOOK, pattern=None, streams=("jobs/a",),
                                    webhook_url=receiver.url, wake_stream=None,
                                    lease_ttl_ms=30_000, description=None)
        store.transact(lambda tx: db.put_subscription(tx, "hook", config, "http://localhost"))
        store.append("jobs/a", [b'{"n":1}'], content_type="application/json")
        seen_due = store.read_with(lambda conn: db.due_webhook_wakes(conn, store.now_ms()))
        [wake] = seen_due
        assert wake.wake_id is not None
        store.transact(lambda tx: db.record_delivery(  # its delivery failed meanwhile
            tx, wake, delivered=False, done=False, snapshot=wake.links,
            error="receiver answered 503", retry_at_ms=store.now_ms() + 5_000))
        service._deliver(wake, (wake.id, wake.wake_id))
        assert receiver.arrivals == []
        store.transact(lambda tx: tx.conn.execute(  # once its retry is due, it goes out
            "UPDATE subscriptions SET next_attempt_at_ms = ? WHERE id = 'hook'",
            (store.now_ms(),)))
        service._deliver(wake, (wake.id, wake.wake_id))
        assert len(receiver.arrivals) == 1
    finally:
        receiver.close()
        store.close()


def test_the_scheduler_rests_while_a_delivery_is_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivery's attempt stays due until the delivery is recorded, and the scheduler woke
    for it every 5 ms meanwhile, each time a write transaction (expiring leases) competing
    with the appends: about 200 a second for every slow receiver."""
    sweeps: list[float] = []
    expire_leases = db.expire_leases

    def counted(tx: Any) -> Any:
        sweeps.append(time.monotonic())
        return expire_leases(tx)

    monkeypatch.setattr(db, "expire_leases", counted)
    backend = StreamsBackend.open(None, StreamsSettings(local_webhooks=True))
    receiver = _FlakyReceiver(failures=0, delay=1.0)
    try:
        backend.start()
        api = create_app(backend).test_client()
        assert api.put("/v1/stream/__ds/subscriptions/slow", json={
            "type": "webhook", "pattern": "slow/*", "webhook": {"url": receiver.url}},
        ).status_code == 201
        assert api.put("/v1/stream/slow/a", headers={"Content-Type": "application/json"},
                       ).status_code == 201
        assert api.post("/v1/stream/slow/a", json=[{"n": 1}]).status_code == 204
        assert receiver.delivered.wait(10), "never delivered"
        started = receiver.arrivals[0]
        during = [t for t in sweeps if started < t < started + receiver.delay]
        assert len(during) <= 3, f"{len(during)} lease sweeps during one delivery of 1 s"
    finally:
        receiver.close()
        backend.close()


@pytest.mark.parametrize("failure", [StorageFailure("disk I/O error"), RuntimeError("a bug")],
                         ids=["not-recorded", "crashed"])
def test_a_delivery_that_cannot_be_recorded_is_tried_again_after_a_rest(
    monkeypatch: pytest.MonkeyPatch, failure: Exception,
) -> None:
    """A delivery whose outcome could not be recorded (the database failing, or a bug) left
    its attempt due, so the scheduler sent the wake again at once, and again: a receiver
    got hundreds of POSTs a second for as long as that lasted."""
    def record_delivery(*args: Any, **kwargs: Any) -> None:
        raise failure

    monkeypatch.setattr(db, "record_delivery", record_delivery)
    backend = StreamsBackend.open(None, StreamsSettings(local_webhooks=True))
    receiver = _FlakyReceiver(failures=0)
    try:
        backend.start()
        api = create_app(backend).test_client()
        assert api.put("/v1/stream/__ds/subscriptions/unrecorded", json={
            "type": "webhook", "pattern": "unrecorded/*", "webhook": {"url": receiver.url}},
        ).status_code == 201
        assert api.put("/v1/stream/unrecorded/a", headers={"Content-Type": "application/json"},
                       ).status_code == 201
        assert api.post("/v1/stream/unrecorded/a", json=[{"n": 1}]).status_code == 204
        assert receiver.delivered.wait(10), "never delivered"
        time.sleep(2.0)
        # The first try, then one after about a second (the first retry's delay).
        assert 2 <= len(receiver.arrivals) <= 3, len(receiver.arrivals)
    finally:
        receiver.close()
        backend.close()


def test_a_refused_wake_token_says_why() -> None:
    """Every refused token got "a valid wake token is required": a worker whose lease had
    lasted beyond its token's 24 hours could not tell that it only had to claim again."""
    backend = StreamsBackend.open(None, StreamsSettings())
    try:
        api = create_app(backend).test_client()
        assert api.put("/v1/stream/wake/tok", headers={"Content-Type": "application/json"},
                       ).status_code == 201
        assert api.put("/v1/stream/__ds/subscriptions/tok", json={
            "type": "pull-wake", "pattern": "tok/*", "wake_stream": "wake/tok"}).status_code == 201
        assert api.put("/v1/stream/tok/a", headers={"Content-Type": "application/json"},
                       ).status_code == 201
        assert api.post("/v1/stream/tok/a", json=[{"n": 1}]).status_code == 204
        grant = api.post("/v1/stream/__ds/subscriptions/tok/claim", json={"worker": "w"}).get_json()
        claims = tokens.TokenClaims("tok", grant["generation"], grant["wake_id"])
        key = backend.subscriptions.keys.token_key
        day_ago = time.time() - tokens.TOKEN_LIFETIME_S - 60
        for token, why in [
            (None, "a wake token is required in Authorization: Bearer <token>"),
            ("not.a.token", "the wake token is not one this server signed"),
            (tokens.mint(b"another key" * 3, claims), "the wake token is not one this server signed"),
            (tokens.mint(key, claims, now=day_ago),
             "the wake token has expired (a token lasts 24 hours): claim again for a new one"),
        ]:
            refused = api.post("/v1/stream/__ds/subscriptions/tok/ack", json={
                "wake_id": grant["wake_id"], "generation": grant["generation"], "acks": []},
                headers={"Authorization": f"Bearer {token}"} if token else {})
            assert refused.status_code == 401, refused.get_data(as_text=True)
            assert refused.get_json()["error"]["message"] == why
        assert api.post("/v1/stream/__ds/subscriptions/tok/ack", json={
            "wake_id": grant["wake_id"], "generation": grant["generation"], "acks": []},
            headers={"Authorization": f"Bearer {tokens.mint(key, claims)}"}).status_code == 200
    finally:
        backend.close()


def test_a_malformed_ack_offset_is_named_as_such(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """An ack's offset of "now" was refused as a "malformed offset: expected -1, now or an
    offset": the error named as valid the very value it refused."""
    root = _root(streams_server)
    _pull_subscription(http, root, "named", "wake/named", "named/*", 30_000)
    _put_json_stream(http, root, "named/a")
    _append(http, root, "named/a", {"n": 1})
    _wake_events_after(http, root, "wake/named", "-1")
    grant = _claim(http, root, "named", "w1").json()
    refused = _ack(http, root, "named", grant, [{"stream": "named/a", "offset": "now"}],
                   done=False)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "malformed ack offset 'now': expected -1 or an offset returned by this server")
    read = http.get(f"{root}/named/a", params={"offset": "soon"})
    assert read.json()["error"]["message"] == (
        "malformed offset 'soon': expected -1, now or an offset returned by this server")
    # An id with a '/' in it: refused as a method (405, POST only), not as an id.
    made = http.put(f"{root}/__ds/subscriptions/conv/1", json={
        "type": "pull-wake", "pattern": "named/*", "wake_stream": "wake/named"})
    assert made.status_code == 404, made.text
    assert made.json()["error"]["message"] == (
        "no subscription API '1' (a subscription id has no '/')")


def test_an_older_ack_does_not_move_a_cursor_back(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """Acks may arrive out of order (a retried one overtaken by the next): the cursor only
    moves forward, else work already done would wake a worker again."""
    root = _root(streams_server)
    _pull_subscription(http, root, "order", "wake/order", "order/*", 30_000)
    _put_json_stream(http, root, "order/a")
    first = _append(http, root, "order/a", {"n": 1})
    second = _append(http, root, "order/a", {"n": 2})
    _wake_events_after(http, root, "wake/order", "-1")
    grant = _claim(http, root, "order", "w1").json()
    assert _ack(http, root, "order", grant, [{"stream": "order/a", "offset": second}],
                done=False).status_code == 200
    assert _ack(http, root, "order", grant, [{"stream": "order/a", "offset": first}],
                done=False).status_code == 200
    state = http.get(f"{root}/__ds/subscriptions/order").json()
    assert next(s["acked_offset"] for s in state["streams"] if s["path"] == "order/a") == second


def test_an_ack_whose_done_is_not_a_boolean_is_refused_not_taken_as_a_heartbeat(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    """`"done": "yes"` was read as "not done": a heartbeat, the lease kept by a worker that
    believed it had let go. Refused, the lease is still there to be released properly."""
    root = _root(streams_server)
    _pull_subscription(http, root, "yes", "wake/yes", "yes/*", 30_000)
    _put_json_stream(http, root, "yes/a")
    tail = _append(http, root, "yes/a", {"n": 1})
    _wake_events_after(http, root, "wake/yes", "-1")
    grant = _claim(http, root, "yes", "w1").json()
    refused = http.post(
        f"{root}/__ds/subscriptions/yes/ack",
        headers={"Authorization": f"Bearer {grant['token']}"},
        json={"wake_id": grant["wake_id"], "generation": grant["generation"],
              "acks": [{"stream": "yes/a", "offset": tail}], "done": "yes"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "INVALID_ACKS"
    state = http.get(f"{root}/__ds/subscriptions/yes").json()
    assert next(s["acked_offset"] for s in state["streams"] if s["path"] == "yes/a") != tail
    assert _ack(http, root, "yes", grant, [{"stream": "yes/a", "offset": tail}],
                done=True).status_code == 200


def test_a_closed_wake_stream_gets_no_wake_events(
    local_hooks_server: ServerProcess, http: requests.Session
) -> None:
    """Closed is final (section 5.2): the server's own wake events may not be appended to a
    closed wake stream either."""
    root = _root(local_hooks_server)
    _pull_subscription(http, root, "shut", "wake/shut", "shut/*", 30_000)
    _put_json_stream(http, root, "shut/a")
    closed = http.post(f"{root}/wake/shut", headers={"Stream-Closed": "true"})
    assert closed.status_code == 204, closed.text
    tail = closed.headers["Stream-Next-Offset"]
    _append(http, root, "shut/a", {"n": 1})  # its wake is written in the append's transaction
    head = http.head(f"{root}/wake/shut")
    assert head.headers["Stream-Next-Offset"] == tail
    assert head.headers.get("Stream-Closed") == "true"
    assert http.get(f"{root}/wake/shut", params={"offset": "-1"}).json() == []


def test_a_subscription_id_that_needs_escaping_gets_the_right_jwks_url(
    local_hooks_server: ServerProcess,
) -> None:
    base = f"{local_hooks_server.url}/v1/stream"
    config: dict[str, Any] = {"type": "webhook", "pattern": "x/*",
                              "webhook": {"url": "https://example.com/h"}}
    response = requests.put(f"{base}/__ds/subscriptions/a%20b%C3%A9", json=config, timeout=10)
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "a b\u00e9"
    assert response.json()["webhook"]["signing"]["jwks_url"] == f"{base}/__ds/jwks.json"
    assert requests.get(response.json()["webhook"]["signing"]["jwks_url"], timeout=10).ok


# --- Glob matching: semantics, no exponential blow-up, bounded patterns -----------------------
#
# Hostile patterns once made matching exponential, and matching runs inside the group-commit
# write transaction, so one pattern stalled every write. The hostile cases below are sized so
# that the old backtracking matcher would need hours: without a polynomial matcher they hang
# until their pytest-timeout fails them (no assertion on wall time).

GLOB_CASES = [
    # (pattern, path, matches)
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    ("*", "a", True),
    ("*", "a/b", False),
    ("a/*", "a/b", True),
    ("a/*", "a", False),
    ("a/*", "a/b/c", False),
    ("*x", "abcx", True),  # `*` at the start of a segment
    ("*x", "x", True),
    ("*x", "xa", False),
    ("x*", "xabc", True),  # at the end
    ("x*", "ax", False),
    ("a*c", "abbbc", True),  # in the middle
    ("a*c", "ac", True),
    ("a*c", "abcd", False),
    ("a*c", "c", False),
    ("a*b*c", "a1b2c", True),  # several in one segment
    ("a*b*c", "abc", True),
    ("a*b*c", "acb", False),
    ("*a*a*", "aa", True),
    ("*a*a*", "a", False),
    ("aba*aba", "aba", False),  # prefix and suffix may not overlap
    ("aba*aba", "ababa", False),
    ("aba*aba", "abaaba", True),
    ("pre-*/x", "pre-/x", True),
    ("pre-*/x", "pre/x", False),
    ("**", "a", True),
    ("**", "a/b/c", True),
    ("**/c", "c", True),  # `**` at the start matches zero segments
    ("**/c", "a/b/c", True),
    ("**/c", "a/b/d", False),
    ("a/**", "a", True),  # at the end
    ("a/**", "a/b/c", True),
    ("a/**", "b/c", False),
    ("a/**/d", "a/d", True),  # in the middle
    ("a/**/d", "a/b/c/d", True),
    ("a/**/d", "a/b/c", False),
    ("a/**/d", "a/d/x", False),
    ("a/**/**/d", "a/d", True),  # consecutive `**` are one `**`
    ("a/**/**/d", "a/b/c/d", True),
    ("**/**", "a", True),
    ("**/b/**/d/*", "x/b/y/z/d/e", True),
    ("**/b/**/d/*", "x/b/y/z/d", False),
    ("**/x*y/**", "a/xzzy/b", True),
    ("**/x*y/**", "a/xzz/b", False),
    ("a.b", "a.b", True),  # regular-expression metacharacters are literals
    ("a.b", "axb", False),
    ("a+", "a+", True),
    ("a+", "aa", False),
    ("(a)", "(a)", True),
    ("(a)", "a", False),
    ("[ab]", "[ab]", True),
    ("[ab]", "a", False),
    ("a?", "ab", False),
    ("^a$|b", "^a$|b", True),
    ("x\\d", "x\\d", True),
    ("x\\d", "x1", False),
    ("*.json", "log.json", True),
    ("*.json", "logxjson", False),
    ("v(*)", "v(1.2)", True),
    ("v(*)", "v1.2", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), GLOB_CASES)
def test_glob_matching_follows_the_segment_rules(pattern: str, path: str, expected: bool) -> None:
    assert validate_pattern(pattern) == pattern
    assert matches(pattern, path) is expected


def test_consecutive_stars_in_a_segment_act_as_one() -> None:
    """`validate_pattern` refuses them, but a stored pattern may still hold them."""
    assert matches("a***b", "ab") and matches("a***b", "axyzb")
    assert not matches("a***b", "axyz")


@pytest.mark.timeout(60)
def test_many_double_star_segments_against_a_deep_path_match_in_polynomial_time() -> None:
    path = "/".join(["d"] * 30)
    hostile = "/".join(["**"] * 30 + ["nomatch"])
    assert validate_pattern(hostile) == hostile
    assert not matches(hostile, path)
    assert matches("/".join(["**"] * 30 + ["d"]), path)
    assert matches("/".join(["**", "d"] * 15 + ["**"]), path)
    assert not matches("/".join(["**", "d"] * 15 + ["**"]), "/".join(["d"] * 14))


@pytest.mark.timeout(60)
def test_many_stars_in_one_segment_match_in_polynomial_time() -> None:
    hostile = "*a" * 30 + "*b"
    assert validate_pattern(hostile) == hostile
    assert not matches(hostile, "a" * 2000)
    assert matches(hostile, "a" * 2000 + "b")
    assert matches(hostile, "a" * 30 + "b")
    assert not matches(hostile, "a" * 29 + "b")


@pytest.mark.timeout(60)
def test_a_hostile_pattern_does_not_stall_the_server(
    local_hooks_server: ServerProcess, http: requests.Session
) -> None:
    """The subscription PUT (backfill) and a later stream create (matching every pattern) both
    answer; before the fix each would hold the write transaction for hours."""
    root = _root(local_hooks_server)
    deep = "/".join(["d"] * 30)
    _put_json_stream(http, root, deep)
    r = http.put(
        f"{root}/__ds/subscriptions/hostile",
        json={"type": "webhook", "pattern": "/".join(["**"] * 30 + ["nomatch"]),
              "webhook": {"url": "https://example.com/h"}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["streams"] == []
    _put_json_stream(http, root, deep + "/d")
    _put_json_stream(http, root, "other")
    assert _append(http, root, "other", {"n": 1})
    linked = http.get(f"{root}/__ds/subscriptions/hostile").json()["streams"]
    assert linked == [], linked


def test_validate_pattern_accepts_patterns_at_its_limits() -> None:
    for pattern in (
        "x" * MAX_PATTERN_LENGTH,
        "/".join(["s"] * MAX_PATTERN_SEGMENTS),
        "*" + "a*" * (MAX_PATTERN_STARS - 1),
    ):
        assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    ("pattern", "limit"),
    [
        ("x" * (MAX_PATTERN_LENGTH + 1), str(MAX_PATTERN_LENGTH)),
        ("/".join(["s"] * (MAX_PATTERN_SEGMENTS + 1)), str(MAX_PATTERN_SEGMENTS)),
        ("/".join(["**"] * (MAX_PATTERN_SEGMENTS + 1)), str(MAX_PATTERN_SEGMENTS)),
        ("*" + "a*" * MAX_PATTERN_STARS, str(MAX_PATTERN_STARS)),
    ],
    ids=["too-long", "too-many-segments", "too-many-double-stars", "too-many-stars"],
)
def test_validate_pattern_rejects_oversized_patterns(pattern: str, limit: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate_pattern(pattern)
    assert caught.value.code == "INVALID_PATTERN"
    assert caught.value.status == 400
    assert limit in caught.value.message


def test_an_oversized_pattern_is_refused_over_http(local_hooks_server: ServerProcess) -> None:
    base = f"{local_hooks_server.url}/v1/stream"
    config: dict[str, Any] = {"type": "webhook", "pattern": "*a" * MAX_PATTERN_STARS + "*",
                              "webhook": {"url": "https://example.com/h"}}
    response = requests.put(f"{base}/__ds/subscriptions/big", json=config, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "INVALID_PATTERN"


@pytest.mark.parametrize(("body", "code"), [
    (r'{"type":"pull-wake","streams":["a"],"wake_stream":"w","description":"\ud800"}',
     "INVALID_JSON"),
    (r'{"type":"pull-wake","pattern":"x/\udfff","wake_stream":"w"}', "INVALID_JSON"),
    (r'{"type":"webhook","streams":["a"],"webhook":{"url":"https://\ud800.example.com/"}}',
     "INVALID_JSON"),
    (r'{"type":"pull-wake","streams":["a\u0000b"],"wake_stream":"w"}', "INVALID_STREAM"),
    (r'{"type":"pull-wake","streams":["a"],"wake_stream":"w\n"}', "INVALID_STREAM"),
    (r'{"type":"pull-wake","pattern":"x/\u0007*","wake_stream":"w"}', "INVALID_PATTERN"),
    (r'{"type":"pull-wake","pattern":"dw/*","wake_stream":"../wk"}', "INVALID_STREAM"),
    (r'{"type":"pull-wake","streams":["a/./b"],"wake_stream":"w"}', "INVALID_STREAM"),
    (r'{"type":"pull-wake","pattern":"../*","wake_stream":"w"}', "INVALID_PATTERN"),
], ids=["surrogate-description", "surrogate-pattern", "surrogate-url", "nul-in-stream",
        "newline-in-wake-stream", "bell-in-pattern", "dot-dot-wake-stream", "dot-in-stream",
        "dot-dot-in-pattern"])
def test_what_no_stream_or_text_can_hold_is_refused_in_a_subscription(
    local_hooks_server: ServerProcess, body: str, code: str,
) -> None:
    """A lone surrogate escape was a 503 STORAGE_UNAVAILABLE (a retry forever) with a
    traceback, failing only as SQLite stored it; control characters and '.' or '..'
    segments were taken in names no stream can have (a wake stream "../wk" never woke)."""
    base = f"{local_hooks_server.url}/v1/stream/__ds/subscriptions"
    response = requests.put(f"{base}/odd", data=body.encode(), timeout=10,
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert requests.get(f"{base}/odd", timeout=10).status_code == 404
    requests.put(f"{base}/odd-parts", timeout=10, json={
        "type": "pull-wake", "streams": ["a"], "wake_stream": "w"}).raise_for_status()
    for part, sent in (("streams", r'{"streams":["\ud800"]}'), ("claim", r'{"worker":"\ud800"}')):
        response = requests.post(f"{base}/odd-parts/{part}", data=sent.encode(), timeout=10,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (part, response.text)


def test_a_subscription_cannot_watch_its_own_wake_stream(local_hooks_server: ServerProcess) -> None:
    """With ``loop/*`` and the wake stream ``loop/wake``, each wake event was new data on a
    watched stream: every ack that said done woke the subscription again, for good."""
    base = f"{local_hooks_server.url}/v1/stream/__ds/subscriptions"
    for name, config in (("own-pattern", {"pattern": "own-loop/*"}),
                         ("own-stream", {"streams": ["a", "own-loop/wake"]})):
        response = requests.put(f"{base}/{name}", timeout=10, json={
            "type": "pull-wake", "wake_stream": "own-loop/wake", **config})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "INVALID_SUBSCRIPTION"
        assert "wake stream" in response.json()["error"]["message"]
    requests.put(f"{base}/own-later", timeout=10, json={
        "type": "pull-wake", "pattern": "own-loop/*/in", "wake_stream": "own-loop/wake",
    }).raise_for_status()
    response = requests.post(f"{base}/own-later/streams", timeout=10,
                             json={"streams": ["own-loop/wake"]})
    assert response.status_code == 400, response.text
    linked = requests.get(f"{base}/own-later", timeout=10).json()["streams"]
    assert all(link["path"] != "own-loop/wake" for link in linked)


@pytest.mark.parametrize(("config", "named"), [
    ({"type": "pull-wake", "wake_stream": "w", "webhook": {"url": "https://example.com/h"}},
     "webhook"),
    ({"type": "webhook", "webhook": {"url": "https://example.com/h"}, "wake_stream": "w"},
     "wake_stream"),
], ids=["webhook-on-pull-wake", "wake-stream-on-webhook"])
def test_a_setting_of_the_other_kind_of_subscription_is_refused(
    config: dict[str, Any], named: str,
) -> None:
    """A pull-wake subscription given a webhook (or a webhook one a wake stream) was made
    without it, and its client waited for wakes that went elsewhere."""
    with pytest.raises(BadRequest) as refused:
        parse_config({"pattern": "jobs/*", **config})
    assert refused.value.code == "INVALID_SUBSCRIPTION"
    assert f"{named} belongs to a" in refused.value.message, refused.value.message


@pytest.mark.parametrize(("url", "refused_because"), [
    ("https://exa mple.com/hook", "is not a host name"),
    ("https://exa\u2028mple.com/hook", "is not a host name"),
    ("https://10.1/hook", "private"),
    ("https://0x7f000001/hook", "loopback"),
    ("https://2130706433/hook", "loopback"),
    ("https://192.168.1/hook", "private"),
    # A fully qualified name's trailing dot is the same host: it hid these from the checks.
    ("https://localhost./hook", "is this machine"),
    ("https://printer.local./hook", "local network"),
    ("https://127.0.0.1./hook", "is this machine"),
    ("https://10.1./hook", "private"),
    ("https://example.com./hook", None),
    ("https://example.com/hook", None),
    ("https://bücher.example.com/hook", None),
    ("https://my_service.example.com/hook", None),
    ("https://8.8.8.8/hook", None),
])
def test_a_webhook_url_is_checked_when_given(url: str, refused_because: str | None) -> None:
    """A host with a space in it was taken, and ``https://10.1/`` (10.0.0.1 to a resolver)
    was refused only when a delivery resolved it."""
    if refused_because is None:
        assert validate_webhook_url(url) == url
        return
    with pytest.raises(BadRequest) as caught:
        validate_webhook_url(url)
    assert caught.value.code == "WEBHOOK_URL_REJECTED"
    assert refused_because in caught.value.message


@pytest.mark.parametrize("url", ["http://localhost:6379/", "https://127.0.0.1/hook",
                                 "http://127.0.0.9:8080/hook", "https://LOCALHOST/hook"])
def test_a_webhook_to_this_machine_needs_the_development_setting(url: str) -> None:
    """Any client that could create a subscription could make the server send requests to
    the services on its own machine (sections 6.2 and 12.8 allow that only as an explicit
    development exception)."""
    with pytest.raises(BadRequest) as caught:
        validate_webhook_url(url)
    assert "webhooks to localhost and 127.0.0.x are for development" in caught.value.message
    assert validate_webhook_url(url, local_ok=True) == url


@pytest.mark.parametrize("http_proxy", [None, "http://127.0.0.1:9"])
def test_a_delivery_connects_to_the_address_it_checked_not_to_a_second_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_proxy: str | None,
) -> None:
    """DNS rebinding: a name that resolves to a public address when the delivery checks it,
    and to this machine a moment later, when the HTTP client looked it up again to connect,
    sent the notification to a service on this machine. The delivery connects to the
    address it checked (here an unreachable public one: nothing is delivered), also where
    a proxy is set for other schemes than the webhook's."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    if http_proxy:
        monkeypatch.setenv("HTTP_PROXY", http_proxy)
    internal = socket.create_server(("127.0.0.1", 0))
    internal.settimeout(0.5)
    port = internal.getsockname()[1]
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.rebinding.example":
            return real_getaddrinfo(host, *args, **kwargs)
        lookups.append(host)
        address = "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(webhooks, "DELIVERY_TIMEOUT_S", 0.5)
    url = f"https://hooks.rebinding.example:{port}/hook"
    config = SubscriptionConfig(type="webhook", pattern="x/*", streams=(), webhook_url=url,
                                wake_stream=None, lease_ttl_ms=30_000, description=None)
    state = SubscriptionState(
        id="hook", config=config, base_url="http://127.0.0.1:1/v1/stream", created_at_ms=0,
        generation=1, wake_id="w1", holder=None, lease_expires_at_ms=None, delivery_attempt=0,
        next_attempt_at_ms=None, last_error=None, links=())
    with requests.Session() as session, internal:
        outcome = webhooks.deliver(session, state, ServerKeys(str(tmp_path)), "token")
        try:
            internal.accept()[0].close()
            reached = True
        except TimeoutError:
            reached = False
    assert not outcome.delivered, outcome
    assert not reached, "the notification went to the address of the second look-up"
    assert lookups == ["hooks.rebinding.example"]


def test_a_delivery_to_a_checked_address_still_verifies_the_certificate_for_the_url_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connected to an address rather than by name, the TLS handshake must still name the
    URL's host (SNI) and the certificate be checked against it, with the CA bundle
    `requests` would use; the request carries the URL's host too."""
    received: list[tuple[str | None, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            received.append((self.headers["Host"],
                             self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    (tmp_path / "named").mkdir()
    (tmp_path / "other").mkdir()
    named = self_signed_certificate(tmp_path / "named", ("hooks.example.test",))
    other = self_signed_certificate(tmp_path / "other", ("elsewhere.example.test",))
    try:
        for cert, key in (named, other):
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
            with TlsFront(f"http://127.0.0.1:{receiver.server_address[1]}", cert, key) as front:
                port = front.url.rsplit(":", 1)[1]
                url = f"https://hooks.example.test:{port}/hook?x=1"
                if cert == named[0]:
                    status, _ = webhooks._post_to_address(url, "127.0.0.1", b"{}", {})
                    assert status == 200
                    assert received == [(f"hooks.example.test:{port}", b"{}")]
                else:
                    with pytest.raises(urllib3.exceptions.SSLError):
                        webhooks._post_to_address(url, "127.0.0.1", b"{}", {})
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_a_local_webhook_is_refused_over_http_unless_allowed(tmp_path: Path) -> None:
    with start_streams_server(tmp_path / "data") as server:
        r = requests.put(f"{_root(server)}/__ds/subscriptions/local", timeout=10, json={
            "type": "webhook", "pattern": "x/*", "webhook": {"url": "http://127.0.0.1:6379/"}})
        assert r.status_code == 400 and "WEBHOOK_URL_REJECTED" in r.text, r.text
    with start_streams_server(tmp_path / "data", extra_args=["--allow-local-webhooks"]) as server:
        r = requests.put(f"{_root(server)}/__ds/subscriptions/local", timeout=10, json={
            "type": "webhook", "pattern": "x/*", "webhook": {"url": "http://127.0.0.1:6379/"}})
        assert r.status_code == 201, r.text


def _memory_api() -> tuple[StreamsBackend, Any]:
    backend = StreamsBackend.open(None, StreamsSettings())
    return backend, create_app(backend).test_client()


def _wakes_in(api: Any, path: str) -> list[dict[str, Any]]:
    return [event for event in api.get(f"/v1/stream/{path}?offset=-1").get_json()
            if event["type"] == "wake"]


def _assert_woken_once_for(api: Any, sub_id: str, wake_stream: str, path: str) -> None:
    """One wake event, for `path`, and the subscription's wake is that one."""
    wakes = _wakes_in(api, wake_stream)
    assert [wake["stream"] for wake in wakes] == [path]
    state = api.get(f"/v1/stream/__ds/subscriptions/{sub_id}").get_json()
    assert state["wake_id"] == wakes[0]["wake_id"], state


def test_a_stream_created_as_a_fork_with_pending_data_wakes_its_subscription() -> None:
    """A subscription linked to a path before its stream exists, which is then created as a
    fork: the data it starts with is pending (its link stays at the start), and no wake came
    for it, since the creation wrote nothing of its own (7: pending work creates a wake)."""
    backend, api = _memory_api()
    json_type = {"Content-Type": "application/json"}
    try:
        assert api.put("/v1/stream/wake/f", headers=json_type).status_code == 201
        assert api.put("/v1/stream/src", headers=json_type).status_code == 201
        assert api.post("/v1/stream/src", json=[{"n": 1}, {"n": 2}]).status_code == 204
        assert api.put("/v1/stream/__ds/subscriptions/f", json={
            "type": "pull-wake", "streams": ["conv/p"], "wake_stream": "wake/f"}).status_code == 201
        assert api.put("/v1/stream/conv/p", headers={"Stream-Forked-From": "src"}).status_code == 201

        _assert_woken_once_for(api, "f", "wake/f", "conv/p")
    finally:
        backend.close()


def test_a_wake_stream_made_again_drops_the_wake_that_went_with_it() -> None:
    """An unclaimed wake whose event went with its deleted wake stream, nothing pending when
    the wake stream was made again: the wake stayed 'in flight' for good, and every later
    append skipped the subscription, so no worker ever heard of its data again."""
    backend, api = _memory_api()
    json_type = {"Content-Type": "application/json"}
    try:
        for path in ("wake/g", "x"):
            assert api.put(f"/v1/stream/{path}", headers=json_type).status_code == 201
        assert api.put("/v1/stream/__ds/subscriptions/g", json={
            "type": "pull-wake", "streams": ["x"], "wake_stream": "wake/g"}).status_code == 201
        assert api.post("/v1/stream/x", json=[{"n": 1}]).status_code == 204
        assert len(_wakes_in(api, "wake/g")) == 1  # nobody claims it
        for method, path in [("delete", "x"), ("delete", "wake/g"), ("put", "wake/g"),
                             ("put", "x")]:
            response = getattr(api, method)(f"/v1/stream/{path}", headers=json_type)
            assert response.status_code in (201, 204), (method, path, response.status_code)
        assert api.post("/v1/stream/x", json=[{"n": 2}]).status_code == 204

        _assert_woken_once_for(api, "g", "wake/g", "x")
    finally:
        backend.close()


def test_a_webhook_callback_url_escapes_the_subscription_id() -> None:
    """An id with `?` (or `#`, `%`) went into the callback URL as is: the receiver's callback
    reached another path, and no wake of that subscription could ever be acked."""
    state = SubscriptionState(
        id="x?y#z%", config=SubscriptionConfig(type="webhook", pattern="a/*", streams=(),
                                                webhook_url="https://hooks.example/w",
                                                wake_stream=None, lease_ttl_ms=30000,
                                                description=None),
        base_url="http://127.0.0.1:4437/v1/stream", created_at_ms=0, generation=1,
        wake_id="w_1", holder=None, lease_expires_at_ms=None, delivery_attempt=0,
        next_attempt_at_ms=None, last_error=None, links=())
    body = json.loads(webhooks.notification_body(state, "token"))
    assert body["callback_url"] == (
        "http://127.0.0.1:4437/v1/stream/__ds/subscriptions/x%3Fy%23z%25/callback")
