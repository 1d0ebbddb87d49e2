"""Durability of `streams_server` across restarts and crashes (real processes, SQLite on disk).

What the conformance suite cannot check: that every kind of stream comes back after SIGTERM
and after ``kill -9`` with the same metadata, content and offsets; that an append acknowledged
in the middle of concurrent writes survives a crash byte for byte while nothing unacknowledged
is half-written; that idempotent producers still deduplicate after a restart; and that TTL and
Expires-At clocks survive a restart.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from streams_server.server import DRAIN_S
from tests.support import ServerProcess, start_streams_server
from tests.support.agents import wait_until
from tests.support.streams_http import (
    StreamsHttp,
    error_body,
    offset_position,
    offset_token,
)

pytestmark = pytest.mark.timeout(60)

BINARY = "application/octet-stream"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A SQLite-backed server whose data directory outlives its processes."""
    process = start_streams_server(tmp_path / "data", long_poll_timeout=0.5)
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture(params=["sigterm", "sigkill"])
def stop_mode(request: pytest.FixtureRequest) -> str:
    """How the server goes down before a restart: cleanly, or a crash."""
    return str(request.param)


def restart(server: ServerProcess, mode: str) -> None:
    server.restart(crash=mode == "sigkill")


def producer(producer_id: str, epoch: int, seq: int) -> dict[str, str]:
    return {"Producer-Id": producer_id, "Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}


def ok(response: requests.Response, *statuses: int) -> requests.Response:
    """Assert a status (any 2xx when none is given) and return the response."""
    expected = statuses or tuple(range(200, 300))
    assert response.status_code in expected, (
        f"{response.request.method} {response.url}: {response.status_code} "
        f"{response.content[:300]!r}"
    )
    return response


def iso_ms(moment: float) -> str:
    """An RFC 3339 timestamp with milliseconds, as a client would send Stream-Expires-At."""
    return datetime.fromtimestamp(moment, tz=timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------- 1. restart recovery


@dataclass
class Written:
    """What the test wrote to one stream: its kind and every offset it was handed."""

    content_type: str
    offsets: list[str] = field(default_factory=list)
    closed: bool = False


def _populate(c: StreamsHttp) -> dict[str, Written]:
    """Create streams of every kind the server stores and return what was written."""
    streams: dict[str, Written] = {}

    def put(path: str, content_type: str | None, body: Any = None, **headers: str) -> None:
        response = ok(c.put(path, content_type, body, headers=headers), 201)
        kind = response.headers["Content-Type"]
        streams[path] = Written(kind, [response.headers["Stream-Next-Offset"]])
        streams[path].closed = response.headers.get("Stream-Closed") == "true"

    def post(path: str, body: Any, **headers: str) -> requests.Response:
        response = ok(c.post(path, body, streams[path].content_type, headers=headers))
        streams[path].offsets.append(response.headers["Stream-Next-Offset"])
        streams[path].closed = response.headers.get("Stream-Closed") == "true"
        return response

    rng = random.Random(1)
    put("kinds/json", JSON, b'[{"n":1}, {"n":2}]')
    post("kinds/json", '{"n": 3, "s": "\u00e9\u2713"}'.encode())
    post("kinds/json", b'[{"a":[1,2]},"str",42,null,1.50]')
    put("kinds/binary", BINARY, bytes(range(256)))
    post("kinds/binary", rng.randbytes(5000))
    post("kinds/binary", b"\x00\r\n\xff")
    put("kinds/text", TEXT)
    post("kinds/text", "h\u00e9llo\n".encode())
    post("kinds/text", "w\u00f6rld \u2713\n".encode())
    put("kinds/closed", BINARY)
    post("kinds/closed", b"abc")
    post("kinds/closed", b"final", **{"Stream-Closed": "true"})
    put("kinds/created-closed", BINARY, b"all there is", **{"Stream-Closed": "true"})
    put("kinds/empty", JSON, b"[]")
    put("kinds/ttl", BINARY, **{"Stream-TTL": "3600"})
    post("kinds/ttl", b"sliding")
    put("kinds/expires", BINARY, **{"Stream-Expires-At": "2099-01-01T00:00:00.000Z"})
    post("kinds/expires", b"absolute")
    put("seq", BINARY)
    post("seq", b"first", **{"Stream-Seq": "a01"})
    post("seq", b"second", **{"Stream-Seq": "a02"})
    put("producer", BINARY)
    for seq in range(3):
        ok(post("producer", f"p{seq}".encode(), **producer("p", 0, seq)), 200)

    put("forks/source", BINARY)
    post("forks/source", b"0123456789")
    after_first = streams["forks/source"].offsets[-1]
    post("forks/source", b"abcdefghij")
    put("forks/at-offset", None, **{
        "Stream-Forked-From": "/v1/stream/forks/source", "Stream-Fork-Offset": after_first})
    post("forks/at-offset", b"FORK")
    put("forks/sub-offset", None, **{
        "Stream-Forked-From": "forks/source", "Stream-Fork-Offset": after_first,
        "Stream-Fork-Sub-Offset": "4"})
    post("forks/sub-offset", b"+sub")
    put("forks/json-source", JSON)
    json_start = streams["forks/json-source"].offsets[-1]
    post("forks/json-source", b"[1,2,3]")
    put("forks/json-sub", None, **{
        "Stream-Forked-From": "/v1/stream/forks/json-source", "Stream-Fork-Offset": json_start,
        "Stream-Fork-Sub-Offset": "2"})
    post("forks/json-sub", b'"fork"')
    put("forks/ttl-source", BINARY, b"ttl", **{"Stream-TTL": "7200"})
    put("forks/inherits-ttl", None, **{"Stream-Forked-From": "forks/ttl-source"})
    put("forks/deleted-source", BINARY, b"kept for the fork")
    put("forks/orphan", None, **{"Stream-Forked-From": "forks/deleted-source"})
    post("forks/orphan", b" and more")
    ok(c.delete("forks/deleted-source"), 204)
    del streams["forks/deleted-source"]
    return streams


EXPECTED_CONTENT: dict[str, Any] = {
    "kinds/json": [{"n": 1}, {"n": 2}, {"n": 3, "s": "\u00e9\u2713"}, {"a": [1, 2]}, "str", 42,
                   None, 1.5],
    "kinds/binary": bytes(range(256)) + random.Random(1).randbytes(5000) + b"\x00\r\n\xff",
    "kinds/text": "h\u00e9llo\nw\u00f6rld \u2713\n".encode(),
    "kinds/closed": b"abcfinal",
    "kinds/created-closed": b"all there is",
    "kinds/empty": [],
    "kinds/ttl": b"sliding",
    "kinds/expires": b"absolute",
    "seq": b"firstsecond",
    "producer": b"p0p1p2",
    "forks/source": b"0123456789abcdefghij",
    "forks/at-offset": b"0123456789FORK",
    "forks/sub-offset": b"0123456789abcd+sub",
    "forks/json-source": [1, 2, 3],
    "forks/json-sub": [1, 2, "fork"],
    "forks/ttl-source": b"ttl",
    "forks/inherits-ttl": b"ttl",
    "forks/orphan": b"kept for the fork and more",
}


@dataclass(frozen=True)
class Snapshot:
    """What a client can observe of one stream without changing it."""

    head_status: int
    metadata: dict[str, str]
    bodies: tuple[bytes, ...]
    from_each_offset: tuple[tuple[bytes, ...], ...]


def _snapshot(c: StreamsHttp, streams: dict[str, Written]) -> dict[str, Snapshot]:
    out = {}
    for path, written in streams.items():
        status, metadata = c.metadata(path)
        assert status == 200, f"HEAD {path}: {status}"
        from_offsets = tuple(tuple(c.catch_up(path, o).bodies) for o in written.offsets)
        out[path] = Snapshot(status, metadata, tuple(c.catch_up(path).bodies), from_offsets)
    return out


def _decoded(content_type: str, bodies: tuple[bytes, ...]) -> Any:
    if content_type.startswith(JSON):
        return [m for body in bodies for m in json.loads(body)]
    return b"".join(bodies)


def _check_continues(c: StreamsHttp, streams: dict[str, Written]) -> None:
    """Every open stream takes the next append right after its tail; closed ones refuse."""
    for path, written in streams.items():
        _, before = c.metadata(path)
        tail = before["Stream-Next-Offset"]
        is_json = written.content_type.startswith(JSON)
        body = b'{"after":"restart"}' if is_json else b"after restart"
        response = c.post(path, body, written.content_type)
        if written.closed:
            assert response.status_code == 409, path
            assert response.headers["Stream-Closed"] == "true"
            assert response.headers["Stream-Next-Offset"] == tail
            continue
        ok(response, 204)
        new_tail = response.headers["Stream-Next-Offset"]
        assert new_tail > tail, f"{path}: offsets went backwards after restart"
        assert offset_position(new_tail) == offset_position(tail) + len(body)
        added = c.catch_up(path, tail)
        assert _decoded(written.content_type, tuple(added.bodies)) == (
            [{"after": "restart"}] if is_json else body
        )
        assert added.next_offset == new_tail


def test_restart_recovers_every_kind_of_stream(server: ServerProcess, stop_mode: str) -> None:
    """Metadata, content, offsets, closure, expiry, forks, soft-deletes, producer and
    Stream-Seq state are identical after a restart, and appends continue at the tail."""
    c = StreamsHttp(server.url)
    streams = _populate(c)
    before = _snapshot(c, streams)
    for path, expected in EXPECTED_CONTENT.items():
        assert _decoded(streams[path].content_type, before[path].bodies) == expected, path
    assert before["kinds/ttl"].metadata["Stream-TTL"] == "3600"
    assert before["forks/inherits-ttl"].metadata["Stream-TTL"] == "7200"
    assert before["kinds/expires"].metadata["Stream-Expires-At"].startswith("2099-01-01T00:00:00")
    assert before["kinds/closed"].metadata["Stream-Closed"] == "true"

    restart(server, stop_mode)
    c = StreamsHttp(server.url)
    assert _snapshot(c, streams) == before

    # The soft-deleted source is still gone for clients, yet kept for its fork.
    for method in ("HEAD", "GET", "POST", "DELETE"):
        body = b"x" if method == "POST" else None
        response = c.request(method, "forks/deleted-source",
                             headers={"Content-Type": BINARY}, body=body)
        assert response.status_code == 410, method
    assert c.put("forks/deleted-source", BINARY).status_code == 409
    # Producer and Stream-Seq state came back with the data they describe.
    retry = ok(c.post("producer", b"p2", headers=producer("p", 0, 2)), 204)
    assert retry.headers["Producer-Seq"] == "2"
    ok(c.post("producer", b"p3", headers=producer("p", 0, 3)), 200)
    regress = c.post("seq", b"again", headers={"Stream-Seq": "a02"})
    assert regress.status_code == 409
    ok(c.post("seq", b"third", headers={"Stream-Seq": "a03"}), 204)
    assert c.catch_up("producer").content == b"p0p1p2p3"
    del streams["producer"], streams["seq"]
    _check_continues(c, streams)

    # A second restart of the other kind sees the post-restart appends too.
    after = _snapshot(c, streams)
    restart(server, "sigkill" if stop_mode == "sigterm" else "sigterm")
    assert _snapshot(StreamsHttp(server.url), streams) == after


# ---------------------------------------------------------------------- 2. crash during appends


_RECORD_HEAD = struct.Struct(">2sHII")  # magic, writer, seq, payload length
_RECORD_MAGIC = b"RC"
_CRC = struct.Struct(">I")


def binary_record(writer: int, seq: int) -> bytes:
    """A self-describing record: header, payload of pseudo-random size, CRC32 of both."""
    rng = random.Random(writer * 1_000_003 + seq)
    payload = rng.randbytes(rng.randrange(0, 3000))
    head = _RECORD_HEAD.pack(_RECORD_MAGIC, writer, seq, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(head + payload))


def parse_records(data: bytes) -> list[tuple[int, int, int]]:
    """``(start, writer, seq)`` of every record; fails unless ``data`` is whole records."""
    records = []
    position = 0
    while position < len(data):
        assert len(data) - position >= _RECORD_HEAD.size + _CRC.size, (
            f"truncated record header at byte {position} of {len(data)}"
        )
        magic, writer, seq, size = _RECORD_HEAD.unpack_from(data, position)
        assert magic == _RECORD_MAGIC, f"no record starts at byte {position}"
        end = position + _RECORD_HEAD.size + size + _CRC.size
        assert end <= len(data), f"record at byte {position} is cut off"
        (crc,) = _CRC.unpack_from(data, end - _CRC.size)
        assert crc == zlib.crc32(data[position : end - _CRC.size]), f"corrupt record at {position}"
        records.append((position, writer, seq))
        position = end
    return records


def json_batch(writer: int, seq: int) -> list[bytes]:
    """One to three JSON messages that name their writer, batch and place in the batch."""
    rng = random.Random(writer * 7_000_003 + seq)
    size = rng.randint(1, 3)
    pad = "".join(rng.choice("ab\u00e9\u2713\"\\") for _ in range(rng.randrange(0, 400)))
    return [
        json.dumps({"w": writer, "s": seq, "i": i, "n": size, "pad": pad},
                   separators=(",", ":"), ensure_ascii=False).encode()
        for i in range(size)
    ]


@dataclass(frozen=True)
class Ack:
    """An acknowledged append: what it stored and where its response said it went."""

    path: str
    writer: int
    seq: int
    stored: tuple[bytes, ...]  # one record, or a JSON batch's message texts
    start: int
    end: int


class AckLog:
    """Acknowledgements from every writer; a waiter can block until there are enough."""

    def __init__(self) -> None:
        self.acks: list[Ack] = []
        self._cond = threading.Condition()

    def add(self, ack: Ack) -> None:
        with self._cond:
            self.acks.append(ack)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Ack]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.acks), timeout)


class CrashWriter(threading.Thread):
    """Appends records to its paths in turn until the server dies under it."""

    def __init__(
        self, index: int, base_url: str, paths: list[str], *, json_mode: bool,
        use_producer: bool, log: AckLog,
    ) -> None:
        super().__init__(name=f"crash-writer-{index}", daemon=True)
        self.index = index
        self.client = StreamsHttp(base_url, timeout=20)
        self.paths = paths
        self.json_mode = json_mode
        self.use_producer = use_producer
        self.log = log
        self.next_seq = {p: 0 for p in paths}
        self.in_flight: tuple[str, int] | None = None
        self.failures: list[str] = []

    def stored(self, seq: int) -> tuple[bytes, ...]:
        if self.json_mode:
            return tuple(json_batch(self.index, seq))
        return (binary_record(self.index, seq),)

    def body(self, seq: int) -> bytes:
        stored = self.stored(seq)
        return b"[" + b",".join(stored) + b"]" if self.json_mode else stored[0]

    def headers(self, seq: int) -> dict[str, str]:
        return producer(f"w{self.index}", 0, seq) if self.use_producer else {}

    def run(self) -> None:
        content_type = JSON if self.json_mode else BINARY
        turn = 0
        while True:
            path = self.paths[turn % len(self.paths)]
            turn += 1
            seq = self.next_seq[path]
            self.in_flight = (path, seq)
            try:
                response = self.client.post(path, self.body(seq), content_type, self.headers(seq))
            except requests.RequestException:
                return  # the server died: this append's outcome is unknown
            if response.status_code == 503 and "SERVER_STOPPING" in response.text:
                return  # refused, unstored, by a server that stops: as if it had gone
            expected = 200 if self.use_producer else 204
            if response.status_code != expected:
                self.failures.append(f"{path} seq {seq}: {response.status_code} {response.text}")
                return
            end = offset_position(response.headers["Stream-Next-Offset"])
            stored = self.stored(seq)
            size = sum(len(m) for m in stored)
            self.log.add(Ack(path, self.index, seq, stored, end - size, end))
            self.in_flight = None
            self.next_seq[path] += 1


WRITERS = 8


def _crash_during_appends(
    server: ServerProcess, *, json_mode: bool, use_producer: bool, graceful: bool = False
) -> tuple[list[CrashWriter], list[Ack]]:
    """Run the writers, ``kill -9`` the server while they write (SIGTERM if `graceful`: then
    every append it took on is answered, none with an error), restart it."""
    c = StreamsHttp(server.url)
    content_type = JSON if json_mode else BINARY
    paths = ["shared"] + [f"own/{i}" for i in range(WRITERS)]
    for path in paths:
        ok(c.put(path, content_type), 201)
    log = AckLog()
    writers = [
        CrashWriter(i, server.url, ["shared", f"own/{i}"], json_mode=json_mode,
                    use_producer=use_producer, log=log)
        for i in range(WRITERS)
    ]
    for writer in writers:
        writer.start()

    def enough(acks: list[Ack]) -> bool:
        per_writer = Counter(a.writer for a in acks)
        return len(acks) >= 250 and all(per_writer[i] >= 8 for i in range(WRITERS))

    reached = log.wait_for(enough, timeout=30)
    if graceful:
        assert server.terminate() == 0
        assert "Traceback" not in server.log_since_start(), server.log_tail()
    else:
        server.kill()
    for writer in writers:
        writer.join(timeout=30)
        assert not writer.is_alive()
    assert reached, f"only {len(log.acks)} appends acknowledged before the deadline"
    assert not [f for w in writers for f in w.failures]
    assert any(w.in_flight for w in writers), "the crash hit no append in flight"
    server.start()
    return writers, list(log.acks)


def _maybe_present(writers: list[CrashWriter]) -> set[tuple[str, int, int]]:
    """(path, writer, seq) of appends in flight at the crash: each may or may not be stored."""
    return {(w.in_flight[0], w.index, w.in_flight[1]) for w in writers if w.in_flight}


def _check_writer_order(path: str, found: list[tuple[int, int]]) -> None:
    """Each writer's appends appear in the order it made them, without gaps."""
    by_writer: dict[int, list[int]] = {}
    for writer, seq in found:
        by_writer.setdefault(writer, []).append(seq)
    for writer, seqs in by_writer.items():
        assert seqs == list(range(len(seqs))), f"{path}: writer {writer} has seqs {seqs}"


@pytest.mark.parametrize("graceful", [False, True], ids=["kill-9", "sigterm"])
def test_kill_during_concurrent_binary_appends_keeps_every_acknowledged_record(
    server: ServerProcess, graceful: bool,
) -> None:
    """After ``kill -9`` under 8 concurrent producers, every acknowledged record is at the
    offset its response named, the streams are whole records only, and a producer's retry of
    its in-flight append is accepted exactly once (200 if lost, 204 if it was stored).
    SIGTERM used to close the store under the appends still running: they got a 500."""
    writers, acks = _crash_during_appends(server, json_mode=False, use_producer=True,
                                          graceful=graceful)
    c = StreamsHttp(server.url)
    maybe = _maybe_present(writers)
    for path in ["shared"] + [f"own/{i}" for i in range(WRITERS)]:
        data = c.catch_up(path).content
        records = parse_records(data)
        found = [(w, s) for _, w, s in records]
        assert len(set(found)) == len(found), f"{path}: a record is stored twice"
        _check_writer_order(path, found)
        for writer, seq in found:
            acked = any(a.path == path and (a.writer, a.seq) == (writer, seq) for a in acks)
            assert acked or (path, writer, seq) in maybe, f"{path}: unexpected record {writer}/{seq}"
        starts = {(w, s): start for start, w, s in records}
        for ack in (a for a in acks if a.path == path):
            assert data[ack.start : ack.end] == ack.stored[0], f"{path}: ack {ack} lost"
            assert starts[(ack.writer, ack.seq)] == ack.start
        assert offset_position(c.metadata(path)[1]["Stream-Next-Offset"]) == len(data)
    for ack in random.Random(3).sample(acks, 60):  # offsets named by acks are read positions
        body = ok(c.get(ack.path, offset_token(ack.start)), 200).content
        assert body.startswith(ack.stored[0])

    for retrier in writers:
        if retrier.in_flight is None:
            continue
        path, seq = retrier.in_flight
        stored = (retrier.index, seq) in [
            (w, s) for _, w, s in parse_records(c.catch_up(path).content)]
        retry = c.post(path, retrier.body(seq), BINARY, retrier.headers(seq))
        assert retry.status_code == (204 if stored else 200), (path, seq, stored, retry.text)
        found = [(w, s) for _, w, s in parse_records(c.catch_up(path).content)]
        assert found.count((retrier.index, seq)) == 1
        ok(c.post(path, retrier.body(seq + 1), BINARY, retrier.headers(seq + 1)), 200)


def test_kill_during_concurrent_json_appends_keeps_every_acknowledged_batch(
    server: ServerProcess,
) -> None:
    """The JSON variant: every acknowledged batch is stored whole, byte for byte, at its
    offset; an unacknowledged batch is either entirely present or entirely absent."""
    writers, acks = _crash_during_appends(server, json_mode=True, use_producer=False)
    c = StreamsHttp(server.url)
    maybe = _maybe_present(writers)
    for path in ["shared"] + [f"own/{i}" for i in range(WRITERS)]:
        messages = c.catch_up(path).messages
        batches: list[tuple[int, int]] = []
        index = 0
        while index < len(messages):
            first = messages[index]
            assert first["i"] == 0, f"{path}: batch {first['w']}/{first['s']} starts mid-way"
            batch = messages[index : index + first["n"]]
            assert [(m["w"], m["s"], m["i"]) for m in batch] == [
                (first["w"], first["s"], i) for i in range(first["n"])
            ], f"{path}: batch {first['w']}/{first['s']} is incomplete"
            batches.append((first["w"], first["s"]))
            index += first["n"]
        assert len(set(batches)) == len(batches), f"{path}: a batch is stored twice"
        _check_writer_order(path, batches)
        acked = {(a.writer, a.seq) for a in acks if a.path == path}
        assert acked <= set(batches), f"{path}: acknowledged batches are missing"
        for writer, seq in set(batches) - acked:
            assert (path, writer, seq) in maybe, f"{path}: unexpected batch {writer}/{seq}"
        stored_size = sum(len(m) for w, s in batches for m in json_batch(w, s))
        assert offset_position(c.metadata(path)[1]["Stream-Next-Offset"]) == stored_size
    for ack in random.Random(4).sample(acks, 60):
        body = ok(c.get(ack.path, offset_token(ack.start)), 200).content
        assert body.startswith(b"[" + b",".join(ack.stored)), "batch not at its offset"


# ---------------------------------------------------------------------- 3. producer dedupe


def test_a_stop_ends_live_reads_at_once_and_waits_for_no_idle_connection(
    server: ServerProcess,
) -> None:
    """A stop lets requests under way finish (up to `DRAIN_S`); live reads are told to end
    first, so an SSE reader does not hold it up, nor does an idle keep-alive connection."""
    c = StreamsHttp(server.url)
    ok(c.put("followed", JSON), 201)
    idle = requests.Session()
    ok(idle.head(c.url("followed")), 200)  # its connection stays open, idle
    with c.session.get(c.url("followed"), params={"offset": "now", "live": "sse"},
                       stream=True, timeout=20) as sse:
        lines = sse.iter_lines()
        assert next(line for line in lines if line.startswith(b"data:")).startswith(b"data:{")
        started = time.monotonic()
        assert server.terminate() == 0
        stop_s = time.monotonic() - started
        assert not [line for line in lines if line.startswith(b"data:")]  # it ended
    assert stop_s < DRAIN_S / 2, f"the stop took {stop_s:.1f} s"


def test_a_stop_finishes_the_request_under_way_and_refuses_new_ones_on_open_connections(
    server: ServerProcess,
) -> None:
    """A keep-alive connection outlives the listener: a request sent on it during the stop
    reached a store being closed (a 503 STORAGE_UNAVAILABLE, or a 500). It is refused
    before the app now, while the request under way (a slow upload) still completes."""
    host, port = server.url.split("//", 1)[1].split(":")
    uploading = socket.create_connection((host, int(port)))
    uploading.sendall(b"PUT /v1/stream/slow HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain"
                      b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    idle, rude = (socket.create_connection((host, int(port))) for _ in range(2))
    for connection in (idle, rude):
        connection.sendall(b"HEAD /v1/stream/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert connection.recv(65536).startswith(b"HTTP/1.1 404 ")  # open, and kept alive
    server.send_signal(signal.SIGTERM)
    wait_until(lambda: "shutting down" in server.log_since_start(), timeout=10,
               what="the stop to begin")
    # One client resets its connection as it asks: the refusal must not log a traceback.
    rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rude.sendall(b"GET /v1/stream/slow?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n")
    rude.close()
    idle.sendall(b"GET /v1/stream/slow?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n")
    refused = _answer(idle)
    assert refused.startswith(b"HTTP/1.1 503 ") and b"SERVER_STOPPING" in refused, refused
    uploading.sendall(b"6\r\n world\r\n0\r\n\r\n")
    created = _answer(uploading)
    assert created.startswith(b"HTTP/1.1 201 "), created
    assert server.wait(timeout=10) == 0
    assert "Traceback" not in server.log_since_start()
    server.start()
    assert StreamsHttp(server.url).catch_up("slow").content == b"hello world"


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(10)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    return answer


def test_producer_dedupe_survives_restart(server: ServerProcess, stop_mode: str) -> None:
    """Producer epoch, last seq and closing triple are durable: retries are duplicates,
    the next seq is accepted, stale epochs are fenced, a repeated close is recognised."""
    c = StreamsHttp(server.url)
    ok(c.put("p", BINARY), 201)
    for seq in range(3):
        ok(c.post("p", f"[{seq}]".encode(), headers=producer("writer", 0, seq)), 200)
    tail = c.metadata("p")[1]["Stream-Next-Offset"]

    restart(server, stop_mode)
    c = StreamsHttp(server.url)
    retry = ok(c.post("p", b"[2]", headers=producer("writer", 0, 2)), 204)
    assert (retry.headers["Producer-Epoch"], retry.headers["Producer-Seq"]) == ("0", "2")
    assert retry.headers["Stream-Next-Offset"] == tail
    older = ok(c.post("p", b"[1]", headers=producer("writer", 0, 1)), 204)
    assert older.headers["Stream-Next-Offset"] == tail
    assert c.catch_up("p").content == b"[0][1][2]"
    gap = c.post("p", b"[5]", headers=producer("writer", 0, 5))
    assert gap.status_code == 409
    assert (gap.headers["Producer-Expected-Seq"], gap.headers["Producer-Received-Seq"]) == ("3", "5")
    ok(c.post("p", b"[3]", headers=producer("writer", 0, 3)), 200)
    ok(c.post("p", b"[e1]", headers=producer("writer", 1, 0)), 200)

    restart(server, stop_mode)
    c = StreamsHttp(server.url)
    stale = c.post("p", b"[4]", headers=producer("writer", 0, 4))
    assert stale.status_code == 403
    assert stale.headers["Producer-Epoch"] == "1"
    error_body(stale)
    ok(c.post("p", b"[e1]", headers=producer("writer", 1, 0)), 204)
    closing = ok(c.post("p", b"[last]", headers={
        **producer("writer", 1, 1), "Stream-Closed": "true"}), 200)
    final_tail = closing.headers["Stream-Next-Offset"]
    assert closing.headers["Stream-Closed"] == "true"

    restart(server, stop_mode)
    c = StreamsHttp(server.url)
    again = ok(c.post("p", b"[last]", headers={
        **producer("writer", 1, 1), "Stream-Closed": "true"}), 204)
    assert again.headers["Stream-Closed"] == "true"
    assert again.headers["Stream-Next-Offset"] == final_tail
    other = c.post("p", b"[more]", headers=producer("writer", 1, 2))
    assert other.status_code == 409
    assert other.headers["Stream-Closed"] == "true"
    read = c.catch_up("p")
    assert read.content == b"[0][1][2][3][e1][last]"
    assert read.closed


# ---------------------------------------------------------------------- 4. expiry


def test_expiry_clocks_survive_a_crash(server: ServerProcess) -> None:
    """A TTL stream and an Expires-At stream survive ``kill -9`` while alive, expire on their
    original clocks (the restart does not reset a TTL) and stay gone after another restart."""
    c = StreamsHttp(server.url)
    created = time.time()
    # Six seconds: a restart on a busy machine (a load of 8) took more than 1.3 s.
    ok(c.put("ttl", BINARY, b"sliding", headers={"Stream-TTL": "6"}), 201)
    deadline = created + 6.0
    ok(c.put("expires", BINARY, b"absolute",
             headers={"Stream-Expires-At": iso_ms(deadline)}), 201)
    ok(c.put("forever", BINARY, b"stays"), 201)
    server.kill()
    time.sleep(max(0.0, created + 1.2 - time.time()))  # downtime counts toward the TTL
    server.start()
    c = StreamsHttp(server.url)

    assert time.time() < deadline - 0.5, "restart too slow for this test's timing"
    status, metadata = c.metadata("ttl")  # HEAD does not reset the sliding TTL
    assert (status, metadata["Stream-TTL"]) == (200, "6")
    status, metadata = c.metadata("expires")
    assert status == 200
    stated = datetime.fromisoformat(metadata["Stream-Expires-At"].replace("Z", "+00:00"))
    assert abs(stated.timestamp() - deadline) < 0.002
    assert c.catch_up("expires").content == b"absolute"

    time.sleep(max(0.0, deadline + 0.3 - time.time()))  # the passing of time is the point
    for path in ("ttl", "expires"):
        assert c.head(path).status_code == 404, path
        error_body(c.get(path))
    server.restart(crash=True)
    c = StreamsHttp(server.url)
    for path in ("ttl", "expires"):
        assert c.head(path).status_code == 404, path
    assert c.catch_up("forever").content == b"stays"
    ok(c.put("ttl", BINARY), 201)
    assert c.catch_up("ttl").content == b""


def test_reads_keep_a_ttl_stream_alive_across_restarts(server: ServerProcess) -> None:
    """Reads slide the TTL window, and the slid window (not the creation time) is what a
    restart recovers."""
    c = StreamsHttp(server.url)
    created = time.time()
    ok(c.put("ttl", BINARY, b"kept alive", headers={"Stream-TTL": "2"}), 201)
    time.sleep(max(0.0, created + 1.4 - time.time()))  # elapsed time is what is tested
    assert c.catch_up("ttl").content == b"kept alive"  # resets the window to ~now + 2 s
    read_at = time.time()
    server.restart()
    c = StreamsHttp(server.url)
    time.sleep(max(0.0, created + 2.4 - time.time()))  # past creation + TTL
    assert time.time() < read_at + 1.8
    assert c.head("ttl").status_code == 200, "the read before the restart did not count"
    time.sleep(max(0.0, read_at + 2.4 - time.time()))
    assert c.head("ttl").status_code == 404


def test_a_damaged_page_under_a_read_gets_a_503_and_a_log_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    """Damage inside a database that still opens: writes got a 503 and one log line, but a
    read of the damaged rows got a bare 500 and a traceback per request (each retry of a
    client's added one)."""
    data = tmp_path / "data"
    server = start_streams_server(data)
    url = f"{server.url}/v1/stream/damaged"
    try:
        assert requests.put(url, headers={"Content-Type": "application/octet-stream"}
                            ).status_code == 201
        chunk = bytes(range(256)) * 1024  # 256 KiB: the stream fills most of the file
        for _ in range(8):
            assert requests.post(url, data=chunk, headers={
                "Content-Type": "application/octet-stream"}).status_code in (200, 204)
    finally:
        server.terminate()  # a clean stop copies the log into the database file
    database = data / "streams.sqlite3"
    with database.open("r+b") as file:
        file.seek(database.stat().st_size // 2)
        file.write(b"\xa5" * 16384)
    server.start()
    try:
        for _ in range(3):
            answer = requests.get(url, params={"offset": "-1"})
            assert answer.status_code == 503, (answer.status_code, answer.text[:300])
            assert answer.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
        log = server.log_since_start()
        assert "Traceback" not in log, log[-3000:]
        assert log.count("reads are failing") == 1, log[-3000:]
    finally:
        server.terminate()
