"""Subscriptions beyond the conformance suite: races, lease expiry, restarts, webhook retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import ServerProcess


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


class _FlakyReceiver:
    """A webhook receiver that fails its first `failures` requests with 503, then acks."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.arrivals: list[float] = []
        self.bodies: list[dict[str, Any]] = []
        self.delivered = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.arrivals.append(time.monotonic())
                receiver.bodies.append(json.loads(body))
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
def flaky_receiver() -> Iterator[_FlakyReceiver]:
    receiver = _FlakyReceiver(failures=3)
    yield receiver
    receiver.close()


def test_a_down_webhook_receiver_is_retried_with_backoff_across_a_restart(
    streams_server: ServerProcess, http: requests.Session, flaky_receiver: _FlakyReceiver
) -> None:
    root = _root(streams_server)
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
    streams_server.kill()
    streams_server.start()

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


def test_a_subscription_id_that_needs_escaping_gets_the_right_jwks_url(
    streams_server: ServerProcess,
) -> None:
    base = f"{streams_server.url}/v1/stream"
    config: dict[str, Any] = {"type": "webhook", "pattern": "x/*",
                              "webhook": {"url": "https://example.com/h"}}
    response = requests.put(f"{base}/__ds/subscriptions/a%20b%C3%A9", json=config, timeout=10)
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "a b\u00e9"
    assert response.json()["webhook"]["signing"]["jwks_url"] == f"{base}/__ds/jwks.json"
    assert requests.get(response.json()["webhook"]["signing"]["jwks_url"], timeout=10).ok
