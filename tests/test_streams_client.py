"""The agents' Durable Streams client against real servers over sockets.

Every test runs against each server kind: the Node reference server (``@durable-streams/server``
from npm) and this project's ``python -m streams_server``. A small fault-injecting proxy sits
in front of the server where a test needs lost responses, ``5xx`` or ``429``.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from agent_actors import errors
from agent_actors._tail import _control_batch
from agent_actors.streams_client import (
    ListedStream,
    ReadResult,
    RetryPolicy,
    StreamsClient,
    SubscriptionConfig,
    Tail,
)
from tests.support import ServerProcess, start_reference_server, start_streams_server
from tests.support.tls import TlsFront, self_signed_certificate

pytestmark = pytest.mark.timeout(120)

SERVER_KINDS = ["reference", "streams_server"]
FAST_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.2, deadline=5.0)
WAIT = 10.0  # seconds a test waits for an expected event before failing


# -- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    """A running server of each kind, shared by the tests of this module."""
    kind = request.param
    if kind == "reference":
        process = start_reference_server(long_poll_timeout_ms=500)  # needs npm ci (install)
    else:
        process = start_streams_server(tmp_path_factory.mktemp("streams-data"),
                                       long_poll_timeout=0.5)
    with process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[StreamsClient]:
    """A client of the server with quick retries."""
    streams = StreamsClient(f"{server.url}/v1/stream", retry=FAST_RETRY)
    yield streams
    streams.close()


@pytest.fixture
def path() -> str:
    """A fresh stream path, so tests sharing a server never collide."""
    return f"test/{uuid.uuid4().hex}/stream"


# -- a fault-injecting proxy --------------------------------------------------------------------


class FaultProxy:
    """An HTTP proxy to ``upstream`` that applies scripted faults to matching requests.

    A fault is ``(method, action)``; the first queued fault whose method matches a request is
    used once. Actions: ``"drop-before"`` (close the connection without forwarding),
    ``"drop-after"`` (forward, then close without answering: a lost response),
    ``"503"``, ``"429:<retry-after>"``, ``"cut-body"`` (a 200 whose body stops short),
    ``"cut-headers"`` (the upstream answer's status and next offset, then a close).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults: list[tuple[str, str]] = []
        self.forwarded: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def inject(self, method: str, *actions: str) -> None:
        """Queue ``actions`` for the next requests with ``method``."""
        with self.lock:
            self.faults.extend((method, action) for action in actions)

    def _take_fault(self, method: str) -> str | None:
        with self.lock:
            for index, (fault_method, action) in enumerate(self.faults):
                if fault_method == method:
                    del self.faults[index]
                    return action
        return None

    def handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        method = handler.command
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        action = self._take_fault(method)
        if action == "drop-before":
            handler.close_connection = True
            return
        if action == "cut-body":
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "100")
            handler.end_headers()
            handler.wfile.write(b"[{")
            handler.close_connection = True
            return
        if action == "cut-headers":  # the answer's status and offset, then the connection
            upstream = requests.request(method, self.upstream + handler.path, timeout=30)
            handler.send_response(upstream.status_code)
            handler.send_header("Stream-Next-Offset", upstream.headers["Stream-Next-Offset"])
            handler.flush_headers()  # no blank line: the headers never end
            handler.close_connection = True
            return
        if action is not None and action != "drop-after":
            status, _, retry_after = action.partition(":")
            handler.send_response(int(status))
            if retry_after:
                handler.send_header("Retry-After", retry_after)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        headers = {k: v for k, v in handler.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        upstream = requests.request(method, self.upstream + handler.path, headers=headers,
                                    data=body, timeout=30, allow_redirects=False)
        with self.lock:
            self.forwarded.append((method, handler.path))
        if action == "drop-after":
            handler.close_connection = True
            return
        handler.send_response(upstream.status_code)
        for key, value in upstream.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection",
                                   "content-encoding", "keep-alive"):
                handler.send_header(key, value)
        content = upstream.content
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(content)


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the server."""
    with FaultProxy(server.url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def proxied(proxy: FaultProxy) -> Iterator[StreamsClient]:
    """A client that talks to the server through the fault proxy."""
    streams = StreamsClient(f"{proxy.url}/v1/stream", retry=FAST_RETRY)
    yield streams
    streams.close()


# -- helpers ----------------------------------------------------------------------------------------


class Follower:
    """Runs a tail on a thread and hands its batches to the test through a queue."""

    def __init__(self, tail: Tail) -> None:
        self.tail = tail
        self.batches: queue.Queue[ReadResult] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for batch in self.tail:
                self.batches.put(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def messages_until(self, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        """Collect messages from batches until ``predicate(messages)`` holds."""
        messages: list[Any] = []
        deadline = time.monotonic() + WAIT
        while not predicate(messages):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; got {messages}, error {self.error!r}"
            try:
                messages.extend(self.batches.get(timeout=remaining).messages)
            except queue.Empty:
                pass
        return messages

    def join(self, timeout: float = WAIT) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "tail did not end"


# -- stream lifecycle ---------------------------------------------------------------------------


def test_ensure_stream_is_idempotent_and_conflicts_on_other_config(
    client: StreamsClient, path: str,
) -> None:
    assert client.ensure_stream(path).created is True
    again = client.ensure_stream(path)
    assert again.created is False and again.closed is False
    with pytest.raises(errors.Conflict) as conflict:
        client.ensure_stream(path, content_type="text/plain")
    assert conflict.value.status == 409


def test_a_root_url_with_its_scheme_in_capitals_works(server: ServerProcess, path: str) -> None:
    """The settings took `HTTP://host/...` (a URL's scheme is case-insensitive), and the
    client then refused it: the chat served its page and answered nothing."""
    upper = StreamsClient(f"HTTP://{server.url.removeprefix('http://')}/v1/stream",
                          retry=FAST_RETRY)
    try:
        assert upper.ensure_stream(path).created is True
    finally:
        upper.close()


def test_head_describes_the_stream_and_delete_removes_it(client: StreamsClient, path: str) -> None:
    created = client.ensure_stream(path)
    info = client.head(path)
    assert info.content_type is not None and info.content_type.startswith("application/json")
    assert info.next_offset == created.next_offset and info.closed is False
    client.delete(path)
    assert client.exists(path) is False
    with pytest.raises(errors.StreamNotFound) as missing:
        client.head(path)
    assert missing.value.status == 404
    client.delete(path, missing_ok=True)


def test_errors_carry_status_and_server_body(client: StreamsClient, path: str) -> None:
    with pytest.raises(errors.StreamNotFound) as missing:
        client.read(path)
    assert missing.value.status == 404 and missing.value.body
    client.ensure_stream(path)
    with pytest.raises(errors.BadRequest) as bad:
        client.read(path, offset="not/an,offset")
    assert bad.value.status == 400 and bad.value.body


def test_unreachable_server_raises_streams_unavailable_after_the_deadline() -> None:
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = RetryPolicy(initial_delay=0.01, max_delay=0.05, deadline=0.5)
    unreachable = StreamsClient(f"http://127.0.0.1:{port}/v1/stream", retry=policy)
    started = time.monotonic()
    with pytest.raises(errors.StreamsUnavailable):
        unreachable.head("any")
    assert time.monotonic() - started < 3.0


# -- producers ----------------------------------------------------------------------------------


def test_producer_appends_batches_and_reads_return_them(client: StreamsClient, path: str) -> None:
    client.ensure_stream(path)
    producer = client.producer(path, "writer-1")
    first = producer.append([{"n": 1}, {"n": 2}])
    second = producer.append_one([3, 4])  # a message that is itself an array
    assert (first.seq, second.seq, producer.next_seq) == (0, 1, 2)
    assert not first.duplicate and not second.duplicate
    everything = client.read_all(path)
    assert everything.messages == ({"n": 1}, {"n": 2}, [3, 4])
    assert everything.up_to_date and everything.next_offset == second.next_offset
    assert client.read(path, offset=str(first.next_offset)).messages == ([3, 4],)
    assert client.head(path).next_offset == second.next_offset


def test_a_repeated_epoch_and_seq_is_a_duplicate_and_is_not_stored_twice(
    client: StreamsClient, path: str,
) -> None:
    client.ensure_stream(path)
    client.producer(path, "writer-1").append([{"text": "once"}])
    replay = client.producer(path, "writer-1")  # same (epoch 0, seq 0): a retry after a crash
    result = replay.append([{"text": "once"}])
    assert result.duplicate is True and replay.next_seq == 1
    assert client.read_all(path).messages == ({"text": "once"},)


def test_lost_response_is_retried_with_the_same_seq_and_deduplicated(
    client: StreamsClient, proxied: StreamsClient, proxy: FaultProxy, path: str,
) -> None:
    client.ensure_stream(path)
    producer = proxied.producer(path, "writer-1")
    proxy.inject("POST", "drop-after", "503", "drop-before")
    result = producer.append([{"chunk": "a"}])
    assert result.seq == 0
    producer.append([{"chunk": "b"}])
    posts = [p for m, p in proxy.forwarded if m == "POST"]
    assert len(posts) == 3, "the dropped-after append reached the server, then was re-sent"
    assert client.read_all(path).messages == ({"chunk": "a"}, {"chunk": "b"})


def test_429_is_retried_after_retry_after(
    client: StreamsClient, proxied: StreamsClient, proxy: FaultProxy, path: str,
) -> None:
    client.ensure_stream(path)
    proxy.inject("POST", "429:0.2")
    started = time.monotonic()
    proxied.producer(path, "writer-1").append([{"x": 1}])
    assert time.monotonic() - started >= 0.2
    assert client.read_all(path).messages == ({"x": 1},)


def test_a_retry_after_of_zero_does_not_retry_in_a_tight_loop(
    client: StreamsClient, proxy: FaultProxy, path: str,
) -> None:
    """`Retry-After: 0` (or a date gone by) was honoured as no wait at all: a server that
    kept answering so was sent a request per round trip until the deadline."""
    client.ensure_stream(path)
    policy = RetryPolicy(initial_delay=0.1, max_delay=0.1, jitter=0.0, deadline=0.5)
    impatient = StreamsClient(f"{proxy.url}/v1/stream", retry=policy)
    proxy.inject("POST", *["503:0"] * 200)
    with pytest.raises(errors.StreamsUnavailable):
        impatient.producer(path, "writer-1").append([{"x": 1}])
    impatient.close()
    sent = 200 - len(proxy.faults)
    assert 3 <= sent <= 8, f"{sent} requests in half a second"


def test_over_https_every_request_trusts_the_certificates_requests_trusts(
    server: ServerProcess, path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A private authority named the usual way (`REQUESTS_CA_BUNDLE`) was trusted by the live
    reads (through `requests`) but not by the lean pool of every other request: appends,
    claims and acks failed, retried as if the server were down."""
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with TlsFront(server.url, cert, key) as front:
        secure = StreamsClient(f"{front.url}/v1/stream", retry=FAST_RETRY)
        try:
            secure.ensure_stream(path)
            secure.producer(path, "writer-1").append([{"over": "tls"}])
            batch = next(iter(secure.tail(path, "-1", live="long-poll")))
            assert batch.messages == ({"over": "tls"},)
        finally:
            secure.close()


def test_an_unreadable_ca_bundle_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    with pytest.raises(errors.ConfigurationError, match="cannot read the TLS certificates"):
        StreamsClient("https://127.0.0.1:9/v1/stream")


def test_unknown_outcome_keeps_the_batch_pending_and_resends_it_first(
    client: StreamsClient, server: ServerProcess, path: str,
) -> None:
    client.ensure_stream(path)
    with FaultProxy(server.url) as proxy:
        impatient = StreamsClient(f"{proxy.url}/v1/stream",
                                  retry=RetryPolicy(initial_delay=0.01, deadline=0.05))
        producer = impatient.producer(path, "writer-1")
        proxy.inject("POST", "drop-after", "503", "503", "503")
        with pytest.raises(errors.StreamsUnavailable):
            producer.append([{"n": 1}])
        assert producer.pending and producer.next_seq == 0
        proxy.faults.clear()
        producer.append([{"n": 2}])
    assert not producer.pending and producer.next_seq == 2
    assert client.read_all(path).messages == ({"n": 1}, {"n": 2})


def test_a_batch_held_back_by_a_pending_one_that_fails_again_stays_queued(
    client: StreamsClient, server: ServerProcess, path: str,
) -> None:
    """`append` re-sends the pending batch first; when that failed again the new batch was
    neither sent nor kept, though the caller was told what a pending batch is told (its
    outcome unknown, to be sent before the next): it was lost."""
    client.ensure_stream(path)
    with FaultProxy(server.url) as proxy:
        impatient = StreamsClient(f"{proxy.url}/v1/stream",
                                  retry=RetryPolicy(initial_delay=0.01, deadline=0.05))
        producer = impatient.producer(path, "writer-1")
        proxy.inject("POST", *["503"] * 20)
        with pytest.raises(errors.StreamsUnavailable):
            producer.append([{"n": 1}])
        with pytest.raises(errors.StreamsUnavailable):
            producer.append([{"n": 2}])  # {"n": 1} fails again: {"n": 2} is not sent
        assert producer.pending and producer.next_seq == 0
        proxy.faults.clear()
        producer.append([{"n": 3}])
        impatient.close()
    assert not producer.pending and producer.next_seq == 3
    assert client.read_all(path).messages == ({"n": 1}, {"n": 2}, {"n": 3})


def test_a_refused_batch_is_dropped_not_sent_again_before_the_next(
    client: StreamsClient, server: ServerProcess, path: str,
) -> None:
    """Only a batch whose outcome is unknown stays pending. One the server refused would
    otherwise go out again before every later append, and be refused with each."""
    client.ensure_stream(path)
    with FaultProxy(server.url) as proxy:
        proxied = StreamsClient(f"{proxy.url}/v1/stream", retry=FAST_RETRY)
        producer = proxied.producer(path, "writer-1")
        proxy.inject("POST", "400")
        with pytest.raises(errors.BadRequest):
            producer.append([{"n": 1}])
        assert not producer.pending
        producer.append([{"n": 2}])
        proxied.close()
    assert client.read_all(path).messages == ({"n": 2},)


def test_sequence_gap_raises_with_expected_and_received_seq(
    client: StreamsClient, path: str,
) -> None:
    client.ensure_stream(path)
    client.producer(path, "writer-1").append([{"n": 1}])
    ahead = client.producer(path, "writer-1", next_seq=3)
    with pytest.raises(errors.SequenceGap) as gap:
        ahead.append([{"n": 2}])
    assert (gap.value.expected_seq, gap.value.received_seq) == (1, 3)


def test_a_newer_epoch_fences_the_older_producer(client: StreamsClient, path: str) -> None:
    client.ensure_stream(path)
    old = client.producer(path, "agent")
    old.append([{"from": "old"}])
    client.producer(path, "agent", epoch=1).append([{"from": "new"}])
    with pytest.raises(errors.ProducerFenced) as fenced:
        old.append([{"from": "zombie"}])
    assert fenced.value.server_epoch == 1 and fenced.value.status == 403
    assert not old.pending
    assert client.read_all(path).messages == ({"from": "old"}, {"from": "new"})


def test_auto_claim_takes_over_the_producer_id_at_server_epoch_plus_one(
    client: StreamsClient, path: str,
) -> None:
    client.ensure_stream(path)
    client.producer(path, "browser", epoch=4).append([{"prompt": 1}])
    fresh = client.producer(path, "browser", auto_claim=True)  # no remembered epoch
    result = fresh.append([{"prompt": 2}])
    assert (result.epoch, result.seq, fresh.epoch, fresh.next_seq) == (5, 0, 5, 1)
    assert client.read_all(path).messages == ({"prompt": 1}, {"prompt": 2})


def test_append_and_close_then_appends_are_refused(client: StreamsClient, path: str) -> None:
    client.ensure_stream(path)
    final = client.producer(path, "writer-1").append([{"last": True}], close=True)
    assert final.closed is True
    with pytest.raises(errors.StreamClosed) as closed:
        client.producer(path, "writer-2").append([{"late": True}])
    assert closed.value.next_offset == final.next_offset
    everything = client.read_all(path)
    assert everything.closed and everything.messages == ({"last": True},)
    assert client.head(path).closed is True


# -- live reads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_tail_catches_up_follows_new_appends_and_ends_on_closure(
    client: StreamsClient, path: str, live: str,
) -> None:
    client.ensure_stream(path)
    producer = client.producer(path, "writer-1")
    producer.append([{"n": 0}])
    follower = Follower(client.tail(path, live=live))  # type: ignore[arg-type]
    assert follower.messages_until(lambda m: len(m) >= 1) == [{"n": 0}]
    producer.append([{"n": 1}, {"n": 2}])
    assert follower.messages_until(lambda m: len(m) >= 2) == [{"n": 1}, {"n": 2}]
    producer.append([{"n": 3}], close=True)
    assert follower.messages_until(lambda m: len(m) >= 1) == [{"n": 3}]
    follower.join()
    assert follower.error is None
    assert follower.tail.offset == client.head(path).next_offset


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_tail_resumes_from_a_saved_offset(client: StreamsClient, path: str, live: str) -> None:
    client.ensure_stream(path)
    producer = client.producer(path, "writer-1")
    saved = producer.append([{"n": 1}]).next_offset
    assert saved is not None
    producer.append([{"n": 2}], close=True)
    batches = list(client.tail(path, saved, live=live))  # type: ignore[arg-type]
    assert [m for b in batches for m in b.messages] == [{"n": 2}]
    assert batches[-1].closed


def test_tail_reconnects_after_server_errors(
    client: StreamsClient, proxied: StreamsClient, proxy: FaultProxy, path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It says so once per outage: a warning for each attempt of each live read of a
    process (twenty lines in eight seconds of a server restart) buried everything else."""
    client.ensure_stream(path)
    producer = client.producer(path, "writer-1")
    producer.append([{"n": 1}])
    proxy.inject("GET", "503", "drop-before", "503")
    with caplog.at_level(logging.INFO, logger="agent_actors.streams_client"):
        follower = Follower(proxied.tail(path))
        assert follower.messages_until(lambda m: len(m) >= 1) == [{"n": 1}]
    producer.append([{"n": 2}], close=True)
    assert follower.messages_until(lambda m: len(m) >= 1) == [{"n": 2}]
    follower.join()
    assert not proxy.faults
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "agent_actors.streams_client" and r.getMessage().startswith("tail of")]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    assert re.match(rf"tail of {path} \(\S+\): HTTP 503; reconnecting in ", said[0][1]), said
    assert said[1][1] == f"tail of {path}: following again after 3 failed attempt(s)"


def test_a_tail_cut_off_in_a_response_says_so_in_words(
    client: StreamsClient, proxied: StreamsClient, proxy: FaultProxy, path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each server restart logged urllib3's "ConnectionError: ('Connection broken:
    IncompleteRead(0 bytes read)', IncompleteRead(...))" for every live read."""
    client.ensure_stream(path)
    client.producer(path, "writer-1").append([{"n": 1}])
    proxy.inject("GET", "cut-body")
    with caplog.at_level(logging.INFO, logger="agent_actors.streams_client"):
        follower = Follower(proxied.tail(path))
        assert follower.messages_until(lambda m: len(m) >= 1) == [{"n": 1}]
    follower.tail.close()
    follower.join()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and re.match(
        rf"tail of {path} \(\S+\): the connection broke off in the middle of the response;"
        " reconnecting in ", warned[0]), warned


def test_a_long_poll_tail_cut_off_in_the_headers_reads_the_data_again(
    client: StreamsClient, proxied: StreamsClient, proxy: FaultProxy, path: str,
) -> None:
    """A connection closed after the `Stream-Next-Offset` line but before the headers ended
    was read (by `requests`) as a whole answer with an empty body: the tail moved past data
    it never had. (An SSE tail so cut gets no control event, and reads again.)"""
    client.ensure_stream(path)
    client.producer(path, "writer-1").append([{"n": 1}, {"n": 2}])
    proxy.inject("GET", "cut-headers")
    follower = Follower(proxied.tail(path))
    assert follower.messages_until(lambda m: len(m) >= 2) == [{"n": 1}, {"n": 2}]
    follower.tail.close()
    follower.join()


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream"])
def test_an_sse_tail_of_a_stream_that_is_not_json_says_so(
    client: StreamsClient, path: str, content_type: str,
) -> None:
    """A long-poll tail raises `ContentTypeMismatch` for a stream that is not JSON; over SSE
    its data events failed to parse as JSON and were retried forever, in silence after the
    first warning."""
    client.transport.request("PUT", client.stream_url(path), data=b"plain words",
                             headers={"Content-Type": content_type}).close()
    for live in ("long-poll", "sse"):
        with pytest.raises(errors.ContentTypeMismatch):
            next(iter(client.tail(path, live=live)))


def test_a_live_read_that_times_out_reconnects_at_once_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A long-poll the server holds past the client's timeout is no outage: the tail asks
    again at once. The timeout came back without its cause, so it was taken for one (a
    warning, then a growing backoff)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def never_answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=never_answer, daemon=True).start()
    silent = StreamsClient(f"http://127.0.0.1:{listener.getsockname()[1]}/v1/stream",
                           retry=FAST_RETRY, live_timeout=0.3)
    try:
        with caplog.at_level(logging.DEBUG, logger="agent_actors.streams_client"):
            tail = silent.tail("any/stream", "0000000000000000_0000000000000000")
            follower = Follower(tail)
            time.sleep(2.0)
            tail.close()
            follower.join()
        assert follower.error is None
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warned == []
        assert any("read timeout, reconnecting" in r.getMessage() for r in caplog.records)
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
        silent.close()


def test_tail_raises_for_a_missing_stream(client: StreamsClient, path: str) -> None:
    with pytest.raises(errors.StreamNotFound):
        next(iter(client.tail(path)))


def test_yield_empty_reports_being_caught_up(client: StreamsClient, path: str) -> None:
    client.ensure_stream(path)
    tail = client.tail(path, yield_empty=True)
    first = next(tail)
    assert first.messages == () and first.up_to_date and not first.closed
    tail.close()


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_yield_empty_reports_an_empty_stream_caught_up_at_once(tmp_path: Path, live: str) -> None:
    """The first long-poll of an empty stream was held for the server's whole timeout (30 s
    by default): a supervisor waiting to know the list of conversations read waited that long."""
    with start_streams_server(tmp_path / "streams", long_poll_timeout=30.0) as server:
        client = StreamsClient(f"{server.url}/v1/stream")
        client.ensure_stream("empty")
        tail = client.tail("empty", live=live, yield_empty=True)  # type: ignore[arg-type]
        first: list[Any] = []
        reader = threading.Thread(target=lambda: first.append(next(tail)), daemon=True)
        reader.start()
        reader.join(timeout=10)
        tail.close()
        assert first, "no batch within 10 s"
        assert first[0].messages == () and first[0].up_to_date


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_stop_event_ends_a_tail_between_requests(
    client: StreamsClient, path: str, live: str,
) -> None:
    client.ensure_stream(path)
    stop = threading.Event()
    follower = Follower(client.tail(path, live=live, stop_event=stop))  # type: ignore[arg-type]
    stop.set()
    follower.tail.close()
    follower.join(timeout=3.0)
    assert follower.error is None


def test_close_aborts_a_request_the_server_holds_open() -> None:
    """close() from another thread ends the tail at once, not after the server's timeout."""
    accepted = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def accept() -> None:
            connection, _ = listener.accept()
            held.append(connection)  # keep it open, never answer
            accepted.set()

        held: list[socket.socket] = []
        threading.Thread(target=accept, daemon=True).start()
        silent = StreamsClient(f"http://127.0.0.1:{port}/v1/stream", live_timeout=60.0)
        follower = Follower(silent.tail("held/open"))
        assert accepted.wait(WAIT)
        started = time.monotonic()
        follower.tail.close()
        follower.join(timeout=5.0)
        assert time.monotonic() - started < 1.0
        assert follower.error is None
        for connection in held:
            connection.close()


# -- subscriptions (pull-wake) --------------------------------------------------------------------


@pytest.fixture
def pull_wake(client: StreamsClient, path: str) -> tuple[str, str, str]:
    """A pull-wake subscription on one work stream: (subscription id, work stream, wake stream)."""
    work, wake = f"{path}/prompts", f"{path}/wake"
    client.ensure_stream(work)
    client.ensure_stream(wake)
    sub_id = f"sub-{uuid.uuid4().hex[:12]}"
    config = SubscriptionConfig(streams=(work,), wake_stream=wake, lease_ttl_ms=5_000)
    client.put_subscription(sub_id, config)
    return sub_id, work, wake


def test_put_subscription_is_idempotent_and_conflicts_on_change(
    client: StreamsClient, pull_wake: tuple[str, str, str],
) -> None:
    sub_id, work, wake = pull_wake
    config = SubscriptionConfig(streams=(work,), wake_stream=wake, lease_ttl_ms=5_000)
    again = client.put_subscription(sub_id, config)
    assert again.id == sub_id and again.type == "pull-wake" and again.wake_stream == wake
    assert [s.path for s in again.streams] == [work]
    with pytest.raises(errors.Conflict):
        client.put_subscription(sub_id, SubscriptionConfig(streams=(work,), wake_stream=wake,
                                                           lease_ttl_ms=6_000))
    with pytest.raises(errors.SubscriptionNotFound):
        client.get_subscription(f"missing-{uuid.uuid4().hex}")


def test_claim_ack_and_done_cycle(
    client: StreamsClient, pull_wake: tuple[str, str, str],
) -> None:
    sub_id, work, wake = pull_wake
    try:  # the protocol leaves open whether an idle subscription can be claimed
        idle = client.claim(sub_id, "worker-1")
    except errors.NoPendingWork:  # the Node reference server refuses
        pass
    else:
        assert not any(s.has_pending for s in idle.streams)
        client.release(idle)
    wakes = Follower(client.tail(wake))
    offset = client.producer(work, "browser").append([{"prompt": "hi"}]).next_offset
    assert offset is not None
    wake_event = wakes.messages_until(lambda m: len(m) >= 1)[0]
    assert wake_event["type"] == "wake" and wake_event["subscription_id"] == sub_id
    assert wake_event["stream"] == work

    lease = client.claim(sub_id, "worker-1")
    assert lease.generation == wake_event["generation"] and lease.token
    linked = lease.stream(work)
    assert linked is not None and linked.has_pending and linked.tail_offset == offset
    with pytest.raises(errors.AlreadyClaimed) as claimed:
        client.claim(sub_id, "worker-2")
    assert claimed.value.current_holder == "worker-1"

    assert client.ack(lease, {work: offset}) is False  # heartbeat with progress
    acked = {s.path: s.acked_offset for s in client.get_subscription(sub_id).streams}
    assert acked[work] == offset
    assert client.ack(lease, {work: offset}, done=True) is False
    with pytest.raises(errors.LeaseFenced):
        client.ack(lease, {work: offset})
    wakes.tail.close()
    wakes.join()


def test_a_claim_answered_with_a_server_error_is_not_sent_again(
    client: StreamsClient, proxied: StreamsClient, proxy: FaultProxy,
    pull_wake: tuple[str, str, str],
) -> None:
    """A claim is not idempotent: a 5xx (a proxy's 502) may hide one that succeeded, and a
    retry would then find the lease taken by this very worker (409) and wait out its TTL.
    The caller, which knows what the claim is for, decides."""
    sub_id, work, _ = pull_wake
    client.producer(work, "browser").append([{"prompt": "hi"}])
    proxy.inject("POST", "503")
    with pytest.raises(errors.StreamsUnavailable):
        proxied.claim(sub_id, "worker-1")
    assert not [p for m, p in proxy.forwarded if "/claim" in p]
    client.release(client.claim(sub_id, "worker-1"))  # the subscription is as it was


def test_release_with_pending_work_wakes_again(
    client: StreamsClient, pull_wake: tuple[str, str, str],
) -> None:
    sub_id, work, wake = pull_wake
    wakes = Follower(client.tail(wake))
    client.producer(work, "browser").append([{"prompt": "hi"}])
    first = wakes.messages_until(lambda m: len(m) >= 1)[0]
    lease = client.claim(sub_id, "worker-1")
    client.release(lease)
    second = wakes.messages_until(lambda m: len(m) >= 1)[0]
    assert second["generation"] > first["generation"]
    with pytest.raises(errors.LeaseFenced):
        client.release(lease)
    relaunched = client.claim(sub_id, "worker-2")
    assert relaunched.generation == second["generation"]
    client.ack(relaunched, {work: client.head(work).next_offset}, done=True)
    wakes.tail.close()
    wakes.join()


def test_add_and_remove_subscription_streams(
    client: StreamsClient, pull_wake: tuple[str, str, str], path: str,
) -> None:
    sub_id, work, _ = pull_wake
    extra = f"{path}/extra"
    client.ensure_stream(extra)
    client.add_subscription_streams(sub_id, [extra])
    client.add_subscription_streams(sub_id, [extra])  # idempotent
    assert {s.path for s in client.get_subscription(sub_id).streams} == {work, extra}
    client.remove_subscription_stream(sub_id, extra)
    assert {s.path for s in client.get_subscription(sub_id).streams} == {work}



def test_listings_page_through_this_projects_server_and_are_not_found_on_others(
    client: StreamsClient, server: ServerProcess, path: str,
) -> None:
    """The `__ds` listings are this project's extension: pages on it, `NotFound` elsewhere
    (the supervisor then looks at each conversation on its own)."""
    paths = [f"{path}/{n}" for n in range(5)]
    for each in paths:
        client.ensure_stream(each)
    if any("reference_server" in arg for arg in server.argv):
        with pytest.raises(errors.NotFound):
            client.list_streams(path)
        with pytest.raises(errors.NotFound):
            client.list_subscriptions()
        return
    seen: list[ListedStream] = []
    after = ""
    while True:
        page = client.list_streams(f"{path}/", after=after, limit=2)
        seen.extend(page.items)
        if page.next_after is None:
            break
        after = page.next_after
    assert [s.path for s in seen] == paths
    assert all(s.next_offset == client.head(s.path).next_offset for s in seen)
    sub_id = f"listed-{uuid.uuid4().hex}"
    client.put_subscription(sub_id, SubscriptionConfig(pattern=f"{path}/*",
                                                       wake_stream=f"{path}-wake"))
    listed = client.list_subscriptions(after=sub_id[:-1], limit=1000).items
    assert sub_id in {s.id for s in listed}


@contextlib.contextmanager
def answering_every_request(status: int, content_type: str, body: bytes,
                            headers: Mapping[str, str] | None = None,
                            ) -> Iterator[StreamsClient]:
    """A client of a server that is not a streams server: it answers every request alike."""

    class Canned(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # kept alive, as a streams server's are

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = answer  # noqa: N815

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    client = StreamsClient(f"http://127.0.0.1:{httpd.server_address[1]}/v1/stream")
    try:
        yield client
    finally:
        client.close()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("body", [b"[]", b"{\"streams\": 3}", b"{\"streams\": [{\"path\": 1}]}",
                                  b"not json"])
def test_a_malformed_listing_is_a_streams_error(body: bytes) -> None:
    with answering_every_request(200, "application/json", body) as client:
        with pytest.raises(errors.StreamsError, match="malformed"):
            client.list_streams("conversations/")
        with pytest.raises(errors.StreamsError, match="malformed"):
            client.list_subscriptions()


def test_a_redirect_is_an_error_not_a_success() -> None:
    """Redirects are not followed, and a 3xx passed for success: an append behind a proxy
    redirecting http to https counted as stored (its producer moved on), and a read of the
    responses stream said it was not JSON, so the agent gave the conversation up."""
    page = b"<html><body>Moved</body></html>"
    with answering_every_request(302, "text/html", page,
                                 {"Location": "https://streams.example/v1/stream"}) as client:
        producer = client.producer("conversations/c1/responses", "agent-c1", epoch=1)
        for call in (lambda: producer.append([{"type": "chunk"}]),
                     lambda: client.ensure_stream("agents/wake"),
                     lambda: client.read("conversations/c1/responses"),
                     lambda: client.put_subscription(
                         "conversation-c1", SubscriptionConfig(type="pull-wake", pattern="c1/*",
                                                               wake_stream="agents/wake"))):
            with pytest.raises(errors.StreamsError,
                               match="HTTP 302: redirected to https://streams.example/v1/stream"):
                call()
        assert producer.next_seq == 0


def test_a_subscription_answer_that_is_not_json_is_a_streams_error() -> None:
    """A 200 with a web page (a maintenance page) raised a bare JSONDecodeError: it killed
    the lease keeper's heartbeat thread, and the supervisor's look at a conversation for good."""
    with answering_every_request(200, "text/html", b"<html>Down for maintenance</html>") as client:
        with pytest.raises(errors.StreamsError, match="malformed answer: not JSON"):
            client.put_subscription("conversation-c1", SubscriptionConfig(
                type="pull-wake", pattern="c1/*", wake_stream="agents/wake"))
        with pytest.raises(errors.StreamsError, match="malformed answer: not JSON"):
            client.claim("conversation-c1", "w1")


@pytest.mark.parametrize("control", [[1], "up to date", None])
def test_an_sse_control_event_that_is_not_an_object_is_a_malformed_event(control: Any) -> None:
    """It raised AttributeError, which a tail does not retry: the supervisor's watch of the
    wake stream died on it. A ValueError is a malformed event, read again after a pause."""
    with pytest.raises(ValueError, match="SSE control event is not a JSON object"):
        _control_batch(control, [], "-1")


def test_an_error_page_from_another_server_is_reported_in_one_line() -> None:
    """A URL that is not a streams root answers with some server's HTML page: its whole text
    went into the error, and each retry's log entry ran over many lines."""
    page = b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    with answering_every_request(404, "text/html", page) as client:
        with pytest.raises(errors.NotFound) as refused:
            client.ensure_stream("agents/wake")
        assert "an HTML page, not a Durable Streams error" in str(refused.value)
        assert "\n" not in str(refused.value) and "<" not in str(refused.value)


@pytest.mark.parametrize("through", ["lean pool", "requests"])
def test_an_unreachable_server_is_reported_with_the_systems_reason_alone(through: str) -> None:
    """The reason read "ConnectionError: NewConnectionError: connecting to http://...: [Errno
    111] Connection refused", or urllib3's longer chain through `requests`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = StreamsClient(f"http://127.0.0.1:{port}/v1/stream",
                           retry=RetryPolicy(initial_delay=0.01, deadline=0.05))
    with pytest.raises(errors.StreamsUnavailable) as unavailable:
        if through == "requests":  # a live tail's session goes through `requests`
            client.transport.request("GET", f"http://127.0.0.1:{port}/v1/stream/x",
                                     session=requests.Session())
        else:
            client.head("x")
    assert unavailable.value.reason == "Connection refused"
    assert str(unavailable.value).startswith("giving up after ")
