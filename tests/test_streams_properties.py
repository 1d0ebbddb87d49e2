"""Property-based tests: random and malformed requests against one running `streams_server`.

A hypothesis state machine keeps a model of the streams it created (content, closure, forks
and soft-deletes, producer and ``Stream-Seq`` state) and interleaves four kinds of steps:

- valid operations on modelled streams, whose exact status and offset it predicts;
- malformed operations on modelled streams, which must be refused with a ``4xx`` and change
  nothing;
- chaos: random methods, paths (unicode, percent-encoding, ``..``, empty segments, very long),
  query strings, header values and bodies (invalid UTF-8, invalid JSON), sent raw with
  `http.client` so that nothing is normalised on the way;
- reads, which must return exactly the acknowledged bytes.

Every response to every step must be below ``500``, and every ``4xx`` must carry the JSON body
``{"error": {"code", "message"}}`` unless HTTP says it has none (HEAD, ``304``).
"""

from __future__ import annotations

import http.client
import os
import json
import re
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    multiple,
    rule,
    run_state_machine_as_test,
)

from tests.support import ServerProcess, start_streams_server
from tests.support.streams_http import STREAM_ROOT, offset_position, offset_token

EXAMPLES = int(os.environ.get("STREAMS_PROPERTY_EXAMPLES", "50"))
"""Runs of the state machine; raise it (e.g. to 1000) for a longer hunt."""
pytestmark = pytest.mark.timeout(60 + EXAMPLES)

CONTENT_TYPES = {
    "binary": ["application/octet-stream", "Application/Octet-Stream"],
    "json": ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"],
    "text": ["text/plain; charset=utf-8", "text/plain"],
}
OUTCOMES: Counter[str] = Counter()
"""How often each step saw each status: printed at the end, to show what was covered."""
NAMES = ["s0", "s1", "dir/s2", "\u00fcn\u00ef c\u00f6d\u00e9 %/s3"]
OFFSET_TOKEN = re.compile(r"[0-9]{16}_[0-9]{16}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for all examples, with short live-read timeouts so chaos stays quick."""
    process = start_streams_server(
        tmp_path_factory.mktemp("properties") / "data",
        long_poll_timeout=0.2,
        extra_args=["--sse-max-duration", "0.3"],
    )
    try:
        yield process
    finally:
        process.terminate()


# ---------------------------------------------------------------------- raw HTTP


@dataclass(frozen=True)
class Exchange:
    """One request as sent and the response as received."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    status: int
    response_headers: dict[str, str]
    response_body: bytes

    def header(self, name: str) -> str | None:
        return self.response_headers.get(name.lower())

    def describe(self) -> str:
        body = None if self.body is None else self.body[:200]
        return (
            f"{self.method} {self.target[:300]} headers={list(self.headers)} body={body!r}"
            f" -> {self.status} {self.response_headers} {self.response_body[:300]!r}"
        )


def send(
    server: ServerProcess,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
) -> Exchange:
    """Send exactly this request line, these headers and this body on a fresh connection."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value.encode("latin-1"))
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        payload = response.read()
        received = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    exchange = Exchange(method, target, tuple(headers), body, response.status, received, payload)
    check_response(exchange)
    return exchange


def check_response(exchange: Exchange) -> None:
    """The invariants of every response: no 5xx, and a JSON body on every 4xx that has one."""
    assert exchange.status < 500, exchange.describe()
    if not 400 <= exchange.status < 500 or exchange.method.upper() == "HEAD":
        return
    assert exchange.header("Content-Type") == "application/json", exchange.describe()
    try:
        payload = json.loads(exchange.response_body)
    except ValueError:
        raise AssertionError(f"4xx body is not JSON: {exchange.describe()}") from None
    error = payload.get("error") if isinstance(payload, dict) else None
    assert isinstance(error, dict), exchange.describe()
    assert isinstance(error.get("code"), str) and error["code"], exchange.describe()
    assert isinstance(error.get("message"), str) and error["message"], exchange.describe()


def stream_target(path: str, query: str = "") -> str:
    return STREAM_ROOT + quote(path, safe="/") + (f"?{query}" if query else "")


# ---------------------------------------------------------------------- the model


@dataclass
class ModelStream:
    """What the server must hold for one stream the machine created."""

    kind: str
    content_type: str
    entries: list[bytes] = field(default_factory=list)  # appends (binary) or messages (JSON)
    batches: list[int] = field(default_factory=list)  # the append each entry came from
    closed: bool = False
    soft_deleted: bool = False
    source: str | None = None
    fork_request: int | None = None
    fork_sub: int = 0
    fork_at: int = 0  # where the fork diverged: a retry may name it even if the first did not
    producers: dict[str, tuple[int, int]] = field(default_factory=dict)
    closed_by: tuple[str, int, int] | None = None
    stream_seq: str | None = None

    @property
    def is_json(self) -> bool:
        return self.kind == "json"

    @property
    def tail(self) -> int:
        return sum(len(e) for e in self.entries)

    def boundaries(self) -> list[int]:
        """Positions at which an entry starts, plus the tail: the valid read offsets."""
        out = [0]
        for entry in self.entries:
            out.append(out[-1] + len(entry))
        return out

    def body_between(self, start: int, end: int) -> bytes:
        """The response body a read of positions [start, end) must have."""
        chosen: list[bytes] = []
        position = 0
        for entry in self.entries:
            if start <= position < end:
                chosen.append(entry)
            position += len(entry)
        return b"[" + b",".join(chosen) + b"]" if self.is_json else b"".join(chosen)


def cut(stream: ModelStream, point: int) -> tuple[list[bytes], list[int]]:
    """The entries (and their batches) a fork at byte position ``point`` inherits."""
    entries: list[bytes] = []
    batches: list[int] = []
    position = 0
    for entry, batch in zip(stream.entries, stream.batches):
        if position >= point:
            break
        entries.append(entry[: point - position])
        batches.append(batch)
        position += len(entry)
    return entries, batches


def fork_point(stream: ModelStream, anchor_index: int, sub: int) -> int | None:
    """Where a fork at entry ``anchor_index`` plus ``sub`` diverges; None if refused (400)."""
    starts = stream.boundaries()
    anchor = starts[anchor_index]
    if sub == 0:
        return anchor
    if anchor_index == len(stream.entries):
        return None
    run = anchor_index
    while run < len(stream.entries) and stream.batches[run] == stream.batches[anchor_index]:
        run += 1
    if stream.is_json:
        return starts[anchor_index + sub] if anchor_index + sub <= run else None
    point = anchor + sub
    if point > starts[run]:
        return None
    content = b"".join(stream.entries)
    if stream.kind == "text" and point < len(content) and 0x80 <= content[point] <= 0xBF:
        return None  # a text fork diverges between UTF-8 characters
    return point


# ---------------------------------------------------------------------- strategies


def json_texts() -> st.SearchStrategy[bytes]:
    """One JSON message as a client would encode it."""
    scalars = (
        st.none() | st.booleans() | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(st.characters(codec="utf-8"), max_size=8)
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                     max_size=3),
        max_leaves=6,
    )
    return st.builds(
        lambda v, ascii_only: json.dumps(v, ensure_ascii=ascii_only).encode(), values,
        st.booleans(),
    )


SEPARATORS = st.sampled_from([b",", b", ", b" ,\n\t", b"\r\n,"])
PADDING = st.sampled_from([b"", b" ", b"\n", b"\t \r\n"])


@st.composite
def json_bodies(draw: st.DrawFn, min_messages: int = 1) -> tuple[bytes, list[bytes]]:
    """A POST/PUT body and the messages the server must store for it."""
    messages = draw(st.lists(json_texts(), min_size=min_messages, max_size=4))
    pad = draw(PADDING)
    single = len(messages) == 1 and not messages[0].startswith(b"[") and draw(st.booleans())
    if single:
        return pad + messages[0] + pad, messages
    return pad + b"[" + draw(SEPARATORS).join(messages) + b"]" + pad, messages


CONTROL: list[Literal["Cc"]] = ["Cc"]
HEADER_TEXT = st.text(
    st.characters(codec="latin-1", exclude_categories=CONTROL), max_size=30
)
"""Header values a client can legally send (no control characters), mostly nonsense."""

INTEGERS_IN_TEXT = ["0", "1", "7", "-1", "01", "1.0", "1e3", "+2", " 3 ", "9007199254740991",
                    "9007199254740992", "99999999999999999999999", "0x10", "\u00b2", ""]
PLAUSIBLE_HEADERS: dict[str, list[str]] = {
    "Content-Type": ["application/json", "application/octet-stream", "text/plain",
                     "APPLICATION/JSON; charset=utf-8", "", ";", "application/json;;;",
                     "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"],
    "Stream-TTL": INTEGERS_IN_TEXT,
    "Stream-Expires-At": ["2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z",
                          "2099-01-01T00:00:00.123456789+05:30", "2024-13-45T99:99:99Z",
                          "9999-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z",
                          "2099-01-01 00:00:00z", "9999-12-31T23:59:59-23:59",
                          "0001-01-01T00:00:00+23:59", "tomorrow", ""],
    "Stream-Closed": ["true", "TRUE", "True", "false", "yes", "1", ""],
    "Stream-Seq": ["", "a", "0001", "\u00ff", " "],
    "Producer-Id": ["p", "", " ", "\u00e9"],
    "Producer-Epoch": INTEGERS_IN_TEXT,
    "Producer-Seq": INTEGERS_IN_TEXT,
    "Stream-Forked-From": ["/v1/stream/", "/", "", "/v1/stream/nope", "..", "/v1/stream/a/../b"],
    "Stream-Fork-Offset": ["-1", "now", "", "0000000000000000_0000000000000000",
                           "0000000000000000_9999999999999999",
                           "9999999999999999_0000000000000000"],
    "Stream-Fork-Sub-Offset": INTEGERS_IN_TEXT,
    "If-None-Match": ["*", '"x"', "W/\"1\"", ""],
    "Authorization": ["Bearer x", "Basic Zm9vOmJhcg==", ""],
    "Origin": ["http://example.com", "null", ""],
    "Access-Control-Request-Headers": ["content-type, stream-ttl", ""],
    "Transfer-Encoding": ["identity"],
    "X-Random": [],
}


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    names = draw(st.lists(st.sampled_from(sorted(PLAUSIBLE_HEADERS)), max_size=6))
    out = []
    for name in names:
        plausible = PLAUSIBLE_HEADERS[name]
        value = draw(st.sampled_from(plausible) | HEADER_TEXT if plausible else HEADER_TEXT)
        out.append((name, value.strip(" \t")))
    return out


TRICKY_SEGMENTS = ["", ".", "..", "%", "%zz", "%00", "%0A", "%0D%0A", "%2F", "%2e%2e", "%ff",
                   "%C3%A9", "%F0%9F%98%80", "__ds", "a;b=c", "~", "*", "@:$!'()", "[x]", "%7F",
                   "%25", "+", "a%20b"]


@st.composite
def paths(draw: st.DrawFn, prefix: str) -> str:
    """A raw, already-encoded path below the stream root: odd, but always sendable."""
    segment = st.one_of(
        st.sampled_from(TRICKY_SEGMENTS),
        st.text(st.characters(codec="utf-8"), max_size=10).map(
            lambda s: quote(s, safe="")),
        st.sampled_from([900, 1024, 1025, 1100, 5000]).map(lambda n: "x" * n),
    )
    segments = draw(st.lists(segment, min_size=1, max_size=5))
    joined = "/".join(segments)
    bare = draw(st.sampled_from([False] * 9 + [True]))  # sometimes outside the namespace
    path = joined if bare else f"{prefix}/{joined}"
    return path[:6000]  # gevent answers request lines over 8 KiB itself


OFFSET_LIKE = ["-1", "now", "", "0000000000000000_0000000000000000",
               "0000000000000000_0000000000000003", "0000000000000001_0000000000000000",
               "9999999999999999_9999999999999999", "%ff", "%", "-2", "NOW", "0"]
QUERY_KEYS = ["offset", "live", "cursor", "offset", "live", "x"]
QUERY_VALUES = OFFSET_LIKE + ["long-poll", "sse", "LONG-POLL", "long_poll", "true"]


@st.composite
def queries(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(
        st.sampled_from(QUERY_KEYS) | st.text(max_size=5).map(lambda s: quote(s, safe="")),
        st.sampled_from(QUERY_VALUES) | st.text(max_size=12).map(lambda s: quote(s, safe="")),
    ), max_size=4))
    raw = "&".join(f"{k}={v}" for k, v in pairs)
    return draw(st.sampled_from([raw, raw, "&&=", "offset", "="])) if pairs else ""


INVALID_JSON = [b"", b"[", b"]", b"{", b'{"a":}', b"[1,]", b"[,1]", b"NaN", b"Infinity",
                b"[1]]", b"1 2", b"\xff\xfe", b'"\xed\xa0\x80"', b"'single'", b"[1] x",
                b"\x00", b"[" * 30000 + b"]" * 30000, b"{" * 5000]
BODIES = st.one_of(
    st.none(), st.binary(max_size=300), json_texts(), st.sampled_from(INVALID_JSON),
    st.sampled_from([b"[]", b"[[]]", b"[1,2]", b"{}", b"\xef\xbb\xbf[1]"]),
)
METHODS = ["POST", "GET", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
           "PROPFIND", "BREW", "get", "post", "M-SEARCH", "X_ODD.1~"]
SAFE_METHODS = ["GET", "HEAD", "OPTIONS", "get", "Head", "PATCH", "BREW", "TRACE"]



def _valid_offset(text: str) -> bool:
    return text in ("-1", "now") or bool(OFFSET_TOKEN.fullmatch(text))


MALFORMED_OFFSETS = (st.sampled_from(OFFSET_LIKE) | st.text(max_size=40)).filter(
    lambda s: not _valid_offset(s))
"""Offsets for a query string, where nothing strips them."""
MALFORMED_OFFSET_HEADERS = (st.sampled_from(OFFSET_LIKE) | HEADER_TEXT).map(
    lambda s: s.strip(" \t")).filter(lambda s: not _valid_offset(s))
"""Offsets for a header, whose surrounding whitespace HTTP parsing removes."""


def _valid_integer(text: str) -> bool:
    """What the protocol accepts for TTLs, epochs, seqs and sub-offsets."""
    return bool(re.fullmatch(r"0|[1-9][0-9]*", text)) and int(text) <= 2**53 - 1


MALFORMED_INTEGERS = (st.sampled_from(INTEGERS_IN_TEXT) | HEADER_TEXT).map(
    lambda s: s.strip(" \t")).filter(lambda s: not _valid_integer(s))
INVALID_DATES = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
                 "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-01-01T24:00:00Z",
                 "2024-01-01T00:00:61Z", "2024-01-01", "2024-01-01T00:00:00", "1700000000",
                 "tomorrow", ""]
MALFORMED_DATES = st.sampled_from(INVALID_DATES) | HEADER_TEXT.map(
    lambda s: s.strip(" \t")).filter(lambda s: not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", s))


# ---------------------------------------------------------------------- the machine


streams = Bundle("streams")
NAME = st.one_of(streams, streams, streams, streams, st.sampled_from(NAMES))
"""Mostly a name the run created (it may have been deleted since), sometimes any name."""


class StreamsMachine(RuleBasedStateMachine):
    """Random valid, malformed and chaotic requests against a model of the server."""

    server: ServerProcess

    def __init__(self) -> None:
        super().__init__()
        run = uuid.uuid4().hex[:10]
        self.prefix = f"prop-{run}"
        self.chaos_prefix = f"chaos-{run}"
        self.model: dict[str, ModelStream] = {}
        self.chaos_streams: list[str] = []  # encoded paths of streams chaos may mutate
        self.next_batch = 0

    # -- helpers ---------------------------------------------------------------------

    def path(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def request(
        self, method: str, name: str, headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None, query: str = "",
    ) -> Exchange:
        return send(self.server, method, stream_target(self.path(name), query), headers or [],
                    body)

    def expect(self, exchange: Exchange, *statuses: int) -> Exchange:
        assert exchange.status in statuses, f"expected {statuses}: {exchange.describe()}"
        OUTCOMES[f"{sys._getframe(1).f_code.co_name} {exchange.status}"] += 1
        return exchange

    def expect_tail(self, exchange: Exchange, stream: ModelStream) -> None:
        token = exchange.header("Stream-Next-Offset")
        assert token is not None, exchange.describe()
        assert offset_position(token) == stream.tail, exchange.describe()

    def children(self, name: str) -> list[str]:
        return [n for n, s in self.model.items() if s.source == name]

    def gone_status(self, name: str) -> int | None:
        """404 or 410 when direct operations on ``name`` must fail, else None."""
        if name not in self.model:
            return 404
        return 410 if self.model[name].soft_deleted else None

    def add_entries(self, stream: ModelStream, entries: list[bytes]) -> None:
        self.next_batch += 1
        stream.entries.extend(entries)
        stream.batches.extend([self.next_batch] * len(entries))

    def body_for(self, kind: str, data: st.DataObject, min_messages: int = 1
                 ) -> tuple[bytes, list[bytes]]:
        if kind == "json":
            return data.draw(json_bodies(min_messages))
        if kind == "text":
            raw = data.draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
        else:
            raw = data.draw(st.binary(max_size=200))
        return raw, [raw] if raw else []

    # -- valid operations ------------------------------------------------------------

    @initialize(target=streams, name=st.sampled_from(NAMES),
                kind=st.sampled_from(sorted(CONTENT_TYPES)), data=st.data())
    def first_stream(self, name: str, kind: str, data: st.DataObject) -> str:
        """Every run starts with one open stream, so that early steps find something, and
        with two streams in the chaos namespace for chaos to hit."""
        for chaos_kind in ("json", "binary"):
            path = f"{self.chaos_prefix}/{chaos_kind}"
            headers = [("Content-Type", CONTENT_TYPES[chaos_kind][0])]
            self.expect(send(self.server, "PUT", stream_target(path), headers), 201)
            self.chaos_streams.append(quote(path, safe="/"))
        return self.create_stream(name, kind, False, data)

    @rule(target=streams, name=st.sampled_from(NAMES),
          kind=st.sampled_from(sorted(CONTENT_TYPES)),
          closed=st.integers(0, 3).map(lambda n: n == 0), data=st.data())
    def create(self, name: str, kind: str, closed: bool, data: st.DataObject) -> str:
        return self.create_stream(name, kind, closed, data)

    def create_stream(self, name: str, kind: str, closed: bool, data: st.DataObject) -> str:
        content_type = data.draw(st.sampled_from(CONTENT_TYPES[kind]))
        body, entries = self.body_for(kind, data, min_messages=0)
        headers = [("Content-Type", content_type)]
        if closed:
            headers.append(("Stream-Closed", "true"))
        exchange = self.request("PUT", name, headers, body)
        existing = self.model.get(name)
        if existing is None:
            self.expect(exchange, 201)
            stream = ModelStream(kind, content_type, closed=closed)
            self.add_entries(stream, entries)
            self.model[name] = stream
            assert exchange.header("Content-Type") == content_type
            self.expect_tail(exchange, stream)
            return name
        same = (
            not existing.soft_deleted and existing.source is None and existing.kind == kind
            and existing.closed == closed
        )
        self.expect(exchange, 200 if same else 409)
        if same:
            self.expect_tail(exchange, existing)
        return name

    @rule(name=NAME, close=st.booleans(), use_seq=st.booleans(),
          seq_step=st.integers(-2, 3), data=st.data())
    def append(self, name: str, close: bool, use_seq: bool, seq_step: int,
               data: st.DataObject) -> None:
        stream = self.model.get(name)
        kind = stream.kind if stream else data.draw(st.sampled_from(sorted(CONTENT_TYPES)))
        body, entries = self.body_for(kind, data)
        headers = [("Content-Type", data.draw(st.sampled_from(CONTENT_TYPES[kind])))]
        if close:
            headers.append(("Stream-Closed", "true"))
        seq = None
        if use_seq:
            last = int(stream.stream_seq) if stream and stream.stream_seq else 0
            seq = f"{max(0, last + seq_step):08d}"
            headers.append(("Stream-Seq", seq))
        exchange = self.request("POST", name, headers, body)
        gone = self.gone_status(name)
        if gone is not None:
            self.expect(exchange, gone)
            return
        assert stream is not None
        if not entries and not close:
            # Closure first (5.2): an empty append to a closed stream says it is closed.
            self.expect(exchange, 409 if stream.closed else 400)
            return
        if stream.closed:
            self.expect(exchange, 409 if entries else 204)
            assert exchange.header("Stream-Closed") == "true", exchange.describe()
            self.expect_tail(exchange, stream)
            return
        if seq is not None and stream.stream_seq is not None and seq <= stream.stream_seq:
            self.expect(exchange, 409)
            return
        self.expect(exchange, 204)
        self.add_entries(stream, entries)
        stream.closed = close
        if seq is not None:
            stream.stream_seq = seq
        self.expect_tail(exchange, stream)
        assert (exchange.header("Stream-Closed") == "true") == close, exchange.describe()

    @rule(name=NAME, producer_id=st.sampled_from(["p0", "p1"]),
          action=st.sampled_from(["next", "next", "retry", "gap", "stale", "bump"]),
          close=st.booleans(), data=st.data())
    def producer_append(self, name: str, producer_id: str, action: str, close: bool,
                        data: st.DataObject) -> None:
        stream = self.model.get(name)
        kind = stream.kind if stream else "binary"
        body, entries = self.body_for(kind, data)
        state = stream.producers.get(producer_id) if stream else None
        epoch, last = state if state else (0, -1)
        if action == "retry" and state:
            triple = (epoch, data.draw(st.integers(0, last)))
        elif action == "gap":
            triple = (epoch, last + 2)
        elif action == "stale" and epoch > 0:
            triple = (epoch - 1, 0)
        elif action == "bump":
            triple = (epoch + 1, 0)
        else:
            triple = (epoch, last + 1)
        headers = [("Content-Type", CONTENT_TYPES[kind][0]), ("Producer-Id", producer_id),
                   ("Producer-Epoch", str(triple[0])), ("Producer-Seq", str(triple[1]))]
        if close:
            headers.append(("Stream-Closed", "true"))
        exchange = self.request("POST", name, headers, body)
        gone = self.gone_status(name)
        if gone is not None:
            self.expect(exchange, gone)
            return
        assert stream is not None
        if not entries and not close:
            # Closure first (5.2): an empty append to a closed stream says it is closed.
            self.expect(exchange, 409 if stream.closed else 400)
            return
        if stream.closed:
            # The closing request again, or any close-only one: idempotent (5.2, 5.2.1).
            duplicate_close = stream.closed_by == (producer_id, *triple) or not entries
            self.expect(exchange, 204 if duplicate_close else 409)
            assert exchange.header("Stream-Closed") == "true"
            return
        new_epoch, seq = triple
        if state is None:
            outcome = "accept" if seq == 0 else "gap"
        elif new_epoch < epoch:
            outcome = "fenced"
        elif new_epoch > epoch:
            outcome = "accept" if seq == 0 else "bad"
        else:
            outcome = "duplicate" if seq <= last else ("accept" if seq == last + 1 else "gap")
        if outcome == "fenced":
            self.expect(exchange, 403)
            assert exchange.header("Producer-Epoch") == str(epoch)
        elif outcome == "gap":
            self.expect(exchange, 409)
            assert exchange.header("Producer-Expected-Seq") == str(0 if state is None else last + 1)
            assert exchange.header("Producer-Received-Seq") == str(seq)
        elif outcome == "bad":
            self.expect(exchange, 400)
        elif outcome == "duplicate":
            self.expect(exchange, 204)
            assert exchange.header("Producer-Seq") == str(last)
            self.expect_tail(exchange, stream)
        else:
            self.expect(exchange, 200 if entries else 204)
            self.add_entries(stream, entries)
            stream.producers[producer_id] = triple
            if close:
                stream.closed = True
                stream.closed_by = (producer_id, *triple)
            self.expect_tail(exchange, stream)
            assert exchange.header("Producer-Epoch") == str(new_epoch)
            assert exchange.header("Producer-Seq") == str(seq)

    @rule(name=NAME, skip=st.integers(0, 2))
    def close(self, name: str, skip: int) -> None:
        if skip:  # closing (and deleting) ends a stream's story: do it less often
            return
        exchange = self.request("POST", name, [("Stream-Closed", "true")])
        gone = self.gone_status(name)
        if gone is not None:
            self.expect(exchange, gone)
            return
        stream = self.model[name]
        self.expect(exchange, 204)
        assert exchange.header("Stream-Closed") == "true"
        self.expect_tail(exchange, stream)
        stream.closed = True

    @rule(name=NAME, skip=st.integers(0, 2))
    def delete(self, name: str, skip: int) -> None:
        if skip:
            return
        exchange = self.request("DELETE", name)
        gone = self.gone_status(name)
        if gone is not None:
            self.expect(exchange, gone)
            return
        self.expect(exchange, 204)
        if self.children(name):
            self.model[name].soft_deleted = True
            return
        parent = self.model.pop(name).source
        while parent is not None:  # cascading clean-up of soft-deleted sources
            source = self.model[parent]
            if not source.soft_deleted or self.children(parent):
                break
            del self.model[parent]
            parent = source.source

    @rule(target=streams, source=streams, data=st.data())
    def fork(self, source: str, data: st.DataObject) -> Any:
        free = [n for n in NAMES if n not in self.model]
        if free and data.draw(st.integers(0, 3)) > 0:
            fork_name = data.draw(st.sampled_from(free))
        else:  # an existing target: 200 for the same fork, else 409
            fork_name = data.draw(st.sampled_from(NAMES))
        self.fork_into(source, fork_name, data)
        return fork_name if fork_name in self.model else multiple()

    def fork_into(self, source: str, target: str, data: st.DataObject) -> None:
        src = self.model.get(source)
        anchor_index = None
        headers = [("Stream-Forked-From", data.draw(st.sampled_from(
            [STREAM_ROOT + quote(self.path(source), safe="/"), self.path(source)])))]
        if src is not None and data.draw(st.booleans()):
            anchor_index = data.draw(st.integers(0, len(src.entries)))
            headers.append(("Stream-Fork-Offset", offset_token(src.boundaries()[anchor_index])))
        sub = data.draw(st.sampled_from([0, 0, 1, 2, 3, 7]))
        if sub or data.draw(st.booleans()):
            headers.append(("Stream-Fork-Sub-Offset", str(sub)))
        given_type = data.draw(st.booleans()) and src is not None
        if given_type:
            assert src is not None
            headers.append(("Content-Type", src.content_type))
        exchange = self.request("PUT", target, headers)
        existing = self.model.get(target)
        if existing is not None and src is None:
            self.expect(exchange, 404, 409)  # the spec orders neither error first
            return
        if existing is not None:
            assert src is not None
            request_offset = None if anchor_index is None else src.boundaries()[anchor_index]
            # Without an offset the request names the source's tail: for a fork made at a named
            # offset, the same request only while the tail is still there (made at the tail,
            # it is the same request whatever the source has gained since: a retry).
            asked = existing.fork_at if existing.fork_request is None else existing.fork_request
            same = (
                not existing.soft_deleted and existing.source == source and not existing.closed
                and (request_offset == asked if request_offset is not None else
                     existing.fork_request is None or existing.fork_request == src.boundaries()[-1])
                and sub == existing.fork_sub
            )
            self.expect(exchange, 200 if same else 409)
            return
        if src is None:
            self.expect(exchange, 404)
            return
        if src.soft_deleted:
            self.expect(exchange, 409)
            return
        index = len(src.entries) if anchor_index is None else anchor_index
        point = fork_point(src, index, sub)
        if point is None:
            self.expect(exchange, 400)
            return
        self.expect(exchange, 201)
        entries, batches = cut(src, point)
        self.model[target] = ModelStream(
            src.kind, src.content_type, entries, batches, source=source,
            fork_request=None if anchor_index is None else src.boundaries()[anchor_index],
            fork_sub=sub, fork_at=point,
        )
        self.expect_tail(exchange, self.model[target])
        assert exchange.header("Content-Type") == src.content_type

    # -- reads -------------------------------------------------------------------------

    @rule(name=NAME, data=st.data())
    def read(self, name: str, data: st.DataObject) -> None:
        self.check_stream(name, data)

    def check_stream(self, name: str, data: st.DataObject | None = None) -> None:
        """HEAD and catch-up reads return exactly what the model says was acknowledged."""
        gone = self.gone_status(name)
        if gone is not None:
            self.expect(self.request("HEAD", name), gone)
            self.expect(self.request("GET", name), gone)
            return
        stream = self.model[name]
        head = self.expect(self.request("HEAD", name), 200)
        assert head.header("Content-Type") == stream.content_type, head.describe()
        self.expect_tail(head, stream)
        assert (head.header("Stream-Closed") == "true") == stream.closed, head.describe()
        starts = stream.boundaries()
        start = 0 if data is None else data.draw(st.sampled_from(starts))
        self.catch_up(name, stream, start)
        tail_read = self.expect(self.request("GET", name, query="offset=now"), 200)
        assert tail_read.response_body == (b"[]" if stream.is_json else b"")
        self.expect_tail(tail_read, stream)
        if data is not None and data.draw(st.booleans()):
            self.long_poll(name, stream, data.draw(st.sampled_from(starts)))

    def catch_up(self, name: str, stream: ModelStream, start: int) -> None:
        position = start
        while True:
            exchange = self.expect(
                self.request("GET", name, query=f"offset={offset_token(position)}"), 200)
            end = offset_position(exchange.header("Stream-Next-Offset") or "")
            assert exchange.response_body == stream.body_between(position, end), (
                f"read of positions [{position}, {end}) differs from the model: "
                f"{stream.body_between(position, end)[:300]!r} {exchange.describe()}"
            )
            if exchange.header("Stream-Up-To-Date") == "true":
                assert end == stream.tail, exchange.describe()
                closed = exchange.header("Stream-Closed") == "true"
                assert closed == stream.closed, exchange.describe()
                return
            assert position < end <= stream.tail, exchange.describe()
            position = end

    def long_poll(self, name: str, stream: ModelStream, start: int) -> None:
        """A long-poll with data ahead answers at once; at a closed tail it says EOF."""
        if start == stream.tail and not stream.closed:
            return  # would wait for the timeout: the conformance suite covers that
        exchange = self.request(
            "GET", name, query=f"offset={offset_token(start)}&live=long-poll")
        if start < stream.tail:
            self.expect(exchange, 200)
            end = offset_position(exchange.header("Stream-Next-Offset") or "")
            assert exchange.response_body == stream.body_between(start, end)
        else:
            self.expect(exchange, 204)
            assert exchange.header("Stream-Closed") == "true"

    # -- malformed operations on modelled streams --------------------------------------

    @rule(name=NAME, data=st.data())
    def malformed_read(self, name: str, data: st.DataObject) -> None:
        mistake = data.draw(st.sampled_from(
            ["offset", "live", "live-without-offset", "beyond-tail", "inside-entry"]))
        stream = self.model.get(name)
        if mistake == "offset":
            query = "offset=" + quote(data.draw(MALFORMED_OFFSETS), safe="")
        elif mistake == "live":
            live = data.draw(st.text(max_size=12).filter(lambda s: s not in ("long-poll", "sse")))
            query = f"offset=-1&live={quote(live, safe='')}"
        elif mistake == "live-without-offset":
            query = "live=" + data.draw(st.sampled_from(["long-poll", "sse"]))
        elif mistake == "beyond-tail":
            extra = data.draw(st.integers(1, 10**6))
            query = f"offset={offset_token((stream.tail if stream else 0) + extra)}"
        else:
            inside = [p for p in range(stream.tail if stream else 0)
                      if stream and p not in stream.boundaries()]
            if not inside:
                return
            query = f"offset={offset_token(data.draw(st.sampled_from(inside)))}"
        exchange = self.request("GET", name, query=query)
        syntax = mistake in ("offset", "live", "live-without-offset")
        gone = self.gone_status(name)
        self.expect(exchange, 400 if syntax or gone is None else gone)

    @rule(name=NAME, data=st.data())
    def malformed_write(self, name: str, data: st.DataObject) -> None:
        """A write with one definite mistake: refused with a 4xx, and nothing changes."""
        stream = self.model.get(name)
        kind = stream.kind if stream else "binary"
        own_type = CONTENT_TYPES[kind][0]
        mistake = data.draw(st.sampled_from([
            "partial-producer", "producer-number", "empty-producer-id", "empty-stream-seq",
            "content-type-mismatch", "invalid-json", "empty-body", "missing-content-type",
            "ttl", "expires-at", "ttl-and-expires", "fork-offset", "fork-sub-offset",
            "fork-offset-alone", "fork-beyond-tail",
        ]))
        method, headers = "POST", [("Content-Type", own_type)]
        body: bytes | None = b"x"
        if kind == "json":
            body = b"1"
        if mistake == "partial-producer":
            full = [("Producer-Id", "p0"), ("Producer-Epoch", "0"), ("Producer-Seq", "0")]
            headers += data.draw(st.lists(st.sampled_from(full), min_size=1, max_size=2,
                                          unique=True))
        elif mistake == "producer-number":
            number = data.draw(MALFORMED_INTEGERS)
            epoch, seq = (number, "0") if data.draw(st.booleans()) else ("0", number)
            headers += [("Producer-Id", "p0"), ("Producer-Epoch", epoch), ("Producer-Seq", seq)]
        elif mistake == "empty-producer-id":
            headers += [("Producer-Id", ""), ("Producer-Epoch", "0"), ("Producer-Seq", "0")]
        elif mistake == "empty-stream-seq":
            headers.append(("Stream-Seq", ""))
        elif mistake == "content-type-mismatch":
            other = data.draw(st.sampled_from([k for k in CONTENT_TYPES if k != kind]))
            headers = [("Content-Type", CONTENT_TYPES[other][0])]
            body = b"[1]"
        elif mistake == "invalid-json":
            headers = [("Content-Type", "application/json")]
            body = data.draw(st.sampled_from(INVALID_JSON + [b"[]"]))
        elif mistake == "empty-body":
            body = b""
        elif mistake == "missing-content-type":
            headers = []
        else:
            method, body = "PUT", None
            headers = self.malformed_put_headers(mistake, name, data)
        exchange = self.request(method, name, headers, body)
        assert 400 <= exchange.status < 500, exchange.describe()

    def malformed_put_headers(
        self, mistake: str, name: str, data: st.DataObject
    ) -> list[tuple[str, str]]:
        source = self.path(data.draw(st.sampled_from(NAMES)))
        if mistake == "ttl":
            return [("Stream-TTL", data.draw(MALFORMED_INTEGERS))]
        if mistake == "expires-at":
            return [("Stream-Expires-At", data.draw(MALFORMED_DATES))]
        if mistake == "ttl-and-expires":
            return [("Stream-TTL", "60"), ("Stream-Expires-At", "2099-01-01T00:00:00Z")]
        if mistake == "fork-offset":
            return [("Stream-Forked-From", source),
                    ("Stream-Fork-Offset", data.draw(MALFORMED_OFFSET_HEADERS))]
        if mistake == "fork-sub-offset":
            return [("Stream-Forked-From", source),
                    ("Stream-Fork-Sub-Offset", data.draw(MALFORMED_INTEGERS))]
        if mistake == "fork-offset-alone":
            return [("Stream-Fork-Offset", offset_token(0))]
        src = self.model.get(source.removeprefix(self.prefix + "/"))
        beyond = (src.tail if src else 0) + data.draw(st.integers(1, 1000))
        if name in self.model:  # an existing target would answer 409 for its own reasons
            return [("Stream-TTL", "-1")]
        return [("Stream-Forked-From", source), ("Stream-Fork-Offset", offset_token(beyond))]

    # -- chaos -------------------------------------------------------------------------

    @rule(data=st.data())
    def chaos(self, data: st.DataObject) -> None:
        """Anything at all, aimed at the chaos namespace; only safe methods at the model's."""
        on_model = self.model and data.draw(st.sampled_from([False, False, False, True]))
        if on_model:
            method = data.draw(st.sampled_from(SAFE_METHODS))
            path = quote(self.path(data.draw(st.sampled_from(sorted(self.model)))), safe="/")
        else:
            method = data.draw(st.sampled_from(METHODS) | st.text(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_!#$%&'*+.^`|~",
                min_size=1, max_size=12))
            if data.draw(st.sampled_from([True, False])):
                path = data.draw(st.sampled_from(self.chaos_streams))
            else:
                path = data.draw(paths(self.chaos_prefix))
        query = data.draw(queries())
        target = STREAM_ROOT + path + (f"?{query}" if query else "")
        body = data.draw(BODIES)
        exchange = send(self.server, method, target, data.draw(header_lists()), body)
        OUTCOMES[f"chaos {exchange.status}"] += 1
        if exchange.status == 201 and not on_model:
            self.chaos_streams.append(path)

    def teardown(self) -> None:
        for name in NAMES:
            self.check_stream(name)


def test_random_and_malformed_requests(server: ServerProcess) -> None:
    """No 5xx, JSON errors, and reads that match the model, over many random sequences."""
    StreamsMachine.server = server
    run_state_machine_as_test(
        StreamsMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=50,
            deadline=None,
            # Shrinking a failing run can take minutes against a live server; the failing
            # request and response are in the assertion message anyway.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                   HealthCheck.data_too_large],
        ),
    )
    print("\n".join(f"{count:6d}  {outcome}" for outcome, count in sorted(OUTCOMES.items())))
    exercised = {"create_stream 201", "append 204", "append 409", "producer_append 200",
                 "producer_append 409", "close 204", "delete 204", "fork_into 201",
                 "fork_into 400", "catch_up 200", "long_poll 200", "malformed_read 400"}
    assert exercised <= set(OUTCOMES), f"never reached: {exercised - set(OUTCOMES)}"
