"""Details of PROTOCOL.md that the official conformance suite does not test, over real
sockets. Each was once answered otherwise (found by reading the spec against the server)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.client import HTTPConnection

import pytest
import requests

from streams_server.app import create_app
from streams_server.backend import StreamsBackend
from streams_server.config import StreamsSettings
from tests.support import ServerProcess, start_streams_server
from tests.support.agents import wait_until
from tests.support.streams_http import StreamsHttp

pytestmark = pytest.mark.timeout(60)

TEXT = "text/plain; charset=utf-8"
CHUNK_KIB = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Small catch-up chunks, so that appends of a few dozen KiB are stored in pieces."""
    server = start_streams_server(tmp_path_factory.mktemp("spec") / "data",
                                  extra_args=["--max-chunk-kib", str(CHUNK_KIB)])
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def http(server: ServerProcess) -> StreamsHttp:
    return StreamsHttp(server.url)


def sse_events(response: requests.Response) -> Iterator[tuple[str, str]]:
    """(event name, data) of each event of an SSE response, until the server ends it."""
    name, data = "", list[str]()  # the event being read
    for raw in response.iter_lines():
        line = raw.decode("utf-8")
        if line == "":
            if name or data:
                yield name, "\n".join(data)
            name, data = "", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)


def follow(http: StreamsHttp, path: str, offset: str) -> requests.Response:
    response = http.session.get(http.url(path), params={"offset": offset, "live": "sse"},
                                stream=True, timeout=20)
    assert response.status_code == 200, response.content
    return response


# -- SSE (section 5.8) ----------------------------------------------------------------------------


def test_a_text_stream_takes_only_whole_utf8_characters_so_sse_and_catch_up_agree(
    http: StreamsHttp,
) -> None:
    """SSE readers of a text stream get its data as text: a character split across two
    appends reached them as two U+FFFD while catch-up reads returned the bytes. Such an
    append is refused (small or spooled to disk), and what is stored reads the same both
    ways."""
    path = "text-whole-characters"
    assert http.request("PUT", path, headers={"Content-Type": TEXT}).status_code == 201
    for body in (b"h\xc3", b"\xa9!", b"ok \xff", b"x" * (3 * 1024 * 1024) + b"\xe2\x82"):
        refused = http.request("POST", path, headers={"Content-Type": TEXT}, body=body)
        assert refused.status_code == 400, refused.content[:200]
        assert refused.json()["error"]["code"] == "INVALID_TEXT"
    created = http.request("PUT", "text-created-split", headers={"Content-Type": TEXT},
                           body=b"\xc3")
    assert created.status_code == 400 and http.head("text-created-split").status_code == 404
    assert http.request("POST", path, headers={"Content-Type": TEXT},
                        body="hé! €".encode()).status_code == 204
    assert http.catch_up(path).content == "hé! €".encode()
    with follow(http, path, "-1") as response:
        data = next(data for name, data in sse_events(response) if name == "data")
    assert data == "hé! €"


def test_closing_a_stream_with_no_data_ends_its_sse_readers_with_stream_closed(
    http: StreamsHttp,
) -> None:
    """The reader waits at the tail; a close-only request gives it no data to send, and the
    final control event must still say `streamClosed` (it used to end the connection
    without one, so a client saw a drop and reconnected)."""
    path = "closed-while-followed"
    assert http.request("PUT", path, headers={"Content-Type": TEXT}, body="a").status_code == 201
    controls: list[dict[str, object]] = []
    with follow(http, path, "now") as response:
        for name, data in sse_events(response):
            if name == "control":
                controls.append(json.loads(data))
                if len(controls) == 1:  # the reader is at the tail, waiting
                    closing = http.request("POST", path, headers={"Stream-Closed": "true"})
                    assert closing.status_code == 204, closing.content
    assert len(controls) == 2, controls
    assert controls[-1] == {"streamNextOffset": controls[0]["streamNextOffset"],
                            "upToDate": True, "streamClosed": True}


@pytest.mark.parametrize("characters", [20_000, 600_000], ids=["in-memory", "spooled-to-disk"])
def test_a_text_append_stored_in_pieces_reaches_sse_readers_whole(
    http: StreamsHttp, characters: int,
) -> None:
    """An append larger than a catch-up chunk is stored as several entries, and SSE sends
    text streams' entries as text. Pieces cut inside a two-byte character arrived as two
    replacement characters. The larger body is spooled to a temporary file first."""
    path = f"text-in-pieces-{characters}"
    text = "a" + "é" * characters  # the odd first byte puts every cut inside a character
    assert http.request("PUT", path, headers={"Content-Type": TEXT}).status_code == 201
    appended = http.request("POST", path, headers={"Content-Type": TEXT},
                            body=text.encode("utf-8"))
    assert appended.status_code == 204, appended.content
    received: list[str] = []
    pieces = 0
    with follow(http, path, "-1") as response:
        for name, data in sse_events(response):
            if name == "data":
                received.append(data)
                pieces += 1
            elif name == "control" and json.loads(data).get("upToDate"):
                break
    assert pieces > 1  # the append was stored, and sent, in more than one piece
    assert "".join(received) == text
    assert http.request("GET", path, params={"offset": "-1"}).content.decode("utf-8")[:100] \
        == text[:100]


def _event_ids(response: requests.Response, datas: list[str]) -> str:
    """Reads events until up to date: appends each data event's data to `datas`, returns
    the last `id` field seen."""
    last_id, name = "", ""
    for raw in response.iter_lines():
        line = raw.decode("utf-8")
        if line.startswith("id:"):
            last_id = line[3:]
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:") and name == "data":
            datas.append(line[5:])
        elif line.startswith("data:") and json.loads(line[5:]).get("upToDate"):
            return last_id
    raise AssertionError("the response ended before it was up to date")


def test_an_event_source_reconnecting_with_its_last_event_id_gets_only_what_followed(
    http: StreamsHttp,
) -> None:
    """The server ends SSE responses every minute (section 10.2), and an `EventSource`
    reconnects to the same URL by itself: without event ids it asked again from the URL's
    offset and got everything twice. It sends the last `id` back as `Last-Event-ID`."""
    path = "resumed-by-event-id"
    json_type = {"Content-Type": "application/json"}
    http.request("PUT", path, headers=json_type, body="[1, 2]").raise_for_status()
    first: list[str] = []
    with follow(http, path, "-1") as response:
        last_id = _event_ids(response, first)
    assert first == ["[1,2]"]
    assert last_id == http.request("HEAD", path).headers["Stream-Next-Offset"]
    http.request("POST", path, headers=json_type, body="[3]").raise_for_status()

    def reconnect(last_event_id: str) -> list[str]:
        datas: list[str] = []
        with http.session.get(http.url(path), params={"offset": "-1", "live": "sse"},
                              headers={"Last-Event-ID": last_event_id}, stream=True,
                              timeout=20) as response:
            assert response.status_code == 200
            _event_ids(response, datas)
        return datas

    assert reconnect(last_id) == ["[3]"]
    # A sentinel is not an event id: from the tail (offset=now) nothing is sent again.
    with http.session.get(http.url(path), params={"offset": "now", "live": "sse"},
                          headers={"Last-Event-ID": "-1"}, stream=True, timeout=20) as response:
        none: list[str] = []
        _event_ids(response, none)
        assert none == []
    # Not an offset of this stream: the URL's offset holds.
    for foreign in ("garbage", "9999999999999999_0000000000000001",
                    "0000000000000000_0000000000000099"):
        assert reconnect(foreign) == ["[1,2,3]"], foreign
    # Before the URL's offset: the URL holds, nothing from before it is sent.
    datas: list[str] = []
    with http.session.get(http.url(path), params={"offset": last_id, "live": "sse"},
                          headers={"Last-Event-ID": "0000000000000000_0000000000000000"},
                          stream=True, timeout=20) as response:
        _event_ids(response, datas)
    assert datas == ["[3]"]


# -- a stream deleted and created again under a live reader (sections 4, 5.4) -------------------


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_live_readers_of_a_deleted_stream_never_get_the_data_of_the_next_one_of_its_name(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A long-poll and an SSE reader wait at offset 5 of a stream. It is deleted, created
    again under the same path and appended to, in one go: the readers woke to the new
    stream's bytes at "their" offset, as if the old stream had gone on. They must end
    instead (404 for the long-poll). The in-memory server commits on its event loop, so
    the three requests, sent together on one connection, complete before either reader
    runs again."""
    server = start_streams_server(tmp_path_factory.mktemp("recreated") / "data", memory=True,
                                  long_poll_timeout=20)
    try:
        http = StreamsHttp(server.url)
        path = "recreated"
        http.request("PUT", path, headers={"Content-Type": TEXT}, body="aaaaa").raise_for_status()
        tail = http.request("HEAD", path).headers["Stream-Next-Offset"]
        host, port = server.url.split("//", 1)[1].split(":")
        target = f"/v1/stream/{path}"

        long_poll = socket.create_connection((host, int(port)))
        long_poll.sendall(f"GET {target}?offset={tail}&live=long-poll HTTP/1.1\r\n"
                          f"Host: {host}\r\nConnection: close\r\n\r\n".encode())
        # Accepted after the long-poll's connection, the SSE reader's first control event
        # means both requests wait at the tail.
        with follow(http, path, tail) as sse:
            events = sse_events(sse)
            assert next(events)[0] == "control"
            with socket.create_connection((host, int(port))) as writer:
                writer.sendall(
                    f"DELETE {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
                    f"PUT {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: 5\r\n\r\nbbbbb"
                    f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: 7\r\nConnection: close\r\n\r\nNEWDATA".encode())
                statuses = [line.split()[1] for line in _answer(writer).split(b"\r\n")
                            if line.startswith(b"HTTP/1.1 ")]
            assert statuses == [b"204", b"201", b"204"]
            after = []
            for event in events:  # until the server ends the response, or its first data
                after.append(event)
                if event[0] == "data":
                    break
        answer = _answer(long_poll)
        long_poll.close()
        assert answer.startswith(b"HTTP/1.1 404 "), answer[:300]
        assert b"NEWDATA" not in answer
        assert all(name != "data" for name, _ in after), after
        assert http.request("GET", path, params={"offset": "-1"}).text == "bbbbbNEWDATA"
    finally:
        server.terminate()


# -- closure with producer headers (sections 5.2, 5.2.1) ------------------------------------------


def test_a_close_only_request_is_idempotent_with_any_producer_headers(http: StreamsHttp) -> None:
    """Closing an already-closed stream again is a 204 with or without producer headers;
    with a tuple other than the closing one it used to be a 409."""
    path = "closed-by-producer"
    assert http.request("PUT", path, headers={"Content-Type": TEXT}).status_code == 201
    producer = {"Producer-Id": "w", "Producer-Epoch": "0"}
    closing = http.request("POST", path, body="last",
                           headers={**producer, "Producer-Seq": "0", "Content-Type": TEXT,
                                    "Stream-Closed": "true"})
    assert closing.status_code == 200, closing.content
    for other, seq in (("w", "0"), ("w", "1"), ("v", "3")):
        again = http.request("POST", path, headers={**producer, "Producer-Id": other,
                                                     "Producer-Seq": seq, "Stream-Closed": "true"})
        assert again.status_code == 204, (seq, again.content)
        assert again.headers["Stream-Closed"] == "true"
        # Echoed on success (5.2.1), as they were only for the tuple that closed it.
        assert (again.headers.get("Producer-Epoch"), again.headers.get("Producer-Seq")) == (
            "0", seq)
    refused = http.request("POST", path, body="more", headers={
        **producer, "Producer-Seq": "1", "Content-Type": TEXT, "Stream-Closed": "true"})
    assert refused.status_code == 409  # a body still cannot be appended to a closed stream
    assert http.request("GET", path, params={"offset": "-1"}).text == "last"


def test_a_close_only_request_is_not_refused_for_its_content_type(http: StreamsHttp) -> None:
    """5.2: "When the request body is empty, servers MUST NOT reject based on Content-Type."
    One too long to store (over 1,024 characters) was refused, and the stream stayed open."""
    path = "closed-whatever-its-type"
    assert http.request("PUT", path, headers={"Content-Type": TEXT}).status_code == 201
    closing = http.request("POST", path, headers={
        "Stream-Closed": "true", "Content-Type": "text/" + "x" * 1100})
    assert closing.status_code == 204, closing.content
    assert closing.headers["Stream-Closed"] == "true"
    refused = http.request("POST", "closed-whatever-its-type-2", body="data", headers={
        "Content-Type": "text/" + "x" * 1100})  # with a body, the type still counts
    assert refused.status_code in (400, 404), refused.content


def test_a_leap_second_is_a_valid_expiry_time(http: StreamsHttp) -> None:
    """RFC 3339 (5.7) allows a seconds value of 60, a leap second: it was a 400. It is
    taken as the second that follows it."""
    path = "expires-on-a-leap-second"
    made = http.request("PUT", path, headers={
        "Content-Type": TEXT, "Stream-Expires-At": "2030-12-31T23:59:60Z"})
    assert made.status_code == 201, made.content
    assert http.head(path).headers["Stream-Expires-At"].startswith("2031-01-01T00:00:00")


@pytest.mark.parametrize("offset", ["+00:60", "+00:99", "+23:99", "+24:00", "-25:00"])
def test_an_expiry_time_with_an_offset_out_of_range_is_refused(http: StreamsHttp,
                                                               offset: str) -> None:
    """RFC 3339 (5.6) offsets have hours 00-23 and minutes 00-59: "+00:60" was taken as an
    hour, and "+23:99" refused with a message about Python's timedelta."""
    made = http.request("PUT", f"expires-offset-{offset[1:3]}-{offset[4:]}-{offset[0] == '+'}",
                        headers={"Content-Type": TEXT, "Stream-Expires-At": f"2030-01-01T00:00:00{offset}"})
    assert made.status_code == 400, made.content
    message = made.json()["error"]["message"]
    assert message.startswith("Stream-Expires-At must be an RFC 3339 timestamp"), message


# -- caching (section 5.6) ------------------------------------------------------------------------


def _max_age(response: requests.Response) -> tuple[int | None, str]:
    header = response.headers["Cache-Control"]
    for directive in header.split(","):
        name, _, value = directive.strip().partition("=")
        if name == "max-age":
            return int(value), header
    return None, header


def test_catch_up_reads_are_cached_no_longer_than_the_stream_lives(http: StreamsHttp) -> None:
    """Every catch-up read said `max-age=60, stale-while-revalidate=300`, even of a stream
    with seconds left to live: caches could serve it minutes after it was gone."""
    forever = "cached-forever"
    http.request("PUT", forever, headers={"Content-Type": TEXT}, body="x").raise_for_status()
    read = http.request("GET", forever, params={"offset": "-1"})
    assert read.headers["Cache-Control"] == "public, max-age=60, stale-while-revalidate=300"

    sliding = "cached-ttl"
    http.request("PUT", sliding, headers={"Content-Type": TEXT, "Stream-TTL": "5"},
                 body="x").raise_for_status()
    max_age, header = _max_age(http.request("GET", sliding, params={"offset": "-1"}))
    assert max_age == 5 and "stale" not in header, header

    deadline = datetime.now(timezone.utc) + timedelta(seconds=30)
    until = "cached-until"
    http.request("PUT", until, body="x", headers={
        "Content-Type": TEXT, "Stream-Expires-At": deadline.isoformat(timespec="seconds")
    }).raise_for_status()
    started = time.time()
    max_age, header = _max_age(http.request("GET", until, params={"offset": "-1"}))
    assert max_age is not None and "stale" not in header, header
    assert 30 - (time.time() - started) - 2 <= max_age <= 30, header


def test_an_empty_read_at_the_tail_of_an_open_stream_is_not_cached(http: StreamsHttp) -> None:
    """Data at an offset never changes, but an empty answer at the tail of an open stream
    does, with the next append: cached like a chunk (a minute, five more stale), it hid
    new data from readers behind a cache. The closure signal there is final, and cached."""
    path = "tail-not-cached"
    http.request("PUT", path, headers={"Content-Type": TEXT}, body="x").raise_for_status()
    first = http.request("GET", path, params={"offset": "-1"})
    assert first.headers["Cache-Control"].startswith("public, max-age=60")
    tail = first.headers["Stream-Next-Offset"]
    empty = http.request("GET", path, params={"offset": tail})
    assert empty.status_code == 200 and empty.content == b""
    assert empty.headers["Stream-Up-To-Date"] == "true"
    assert empty.headers["Cache-Control"] == "no-store"
    http.request("POST", path, headers={"Stream-Closed": "true"}).raise_for_status()
    closed = http.request("GET", path, params={"offset": tail})
    assert closed.headers["Stream-Closed"] == "true"
    assert closed.headers["Cache-Control"].startswith("public, max-age=60")


def test_an_etag_never_matches_other_bytes_of_a_stream_made_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Section 10.1: a matching If-None-Match is answered 304, so an ETag must name exactly
    the bytes. It named the stream by its database id, which a server that keeps its streams
    in memory hands out again from 1 after a restart: a stream made again there with other
    bytes was answered 304, and its reader kept the old ones."""
    server = start_streams_server(tmp_path_factory.mktemp("etag") / "data", memory=True)
    try:
        http = StreamsHttp(server.url)
        http.request("PUT", "again", headers={"Content-Type": TEXT}, body="first").raise_for_status()
        etag = http.request("GET", "again", params={"offset": "-1"}).headers["ETag"]
        server.restart()
        http = StreamsHttp(server.url)
        http.request("PUT", "again", headers={"Content-Type": TEXT}, body="other").raise_for_status()
        read = http.request("GET", "again", params={"offset": "-1"},
                            headers={"If-None-Match": etag})
        assert read.status_code == 200 and read.text == "other", (read.status_code, etag)
    finally:
        server.terminate()


# -- TTL (section 5.1) ------------------------------------------------------------------------


def test_a_stream_with_a_live_reader_does_not_expire_under_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Section 5.1: "a stream with active live readers will not expire". The TTL was reset
    only when a live read began, so an SSE response (a minute long) lost its stream after a
    TTL of a few seconds. Its TTL now runs from when the last reader left: here when the
    server ends the response (the server sees a client leave only when it next writes)."""
    server = start_streams_server(tmp_path_factory.mktemp("ttl") / "data",
                                  extra_args=["--sse-max-duration", "5"])
    try:
        _ttl_outlives_its_reader(StreamsHttp(server.url))
    finally:
        server.terminate()


def test_a_stream_does_not_expire_under_an_sse_reader_catching_up() -> None:
    """Section 5.1 again: the reader was counted only while it waited at the tail, so a
    stream whose TTL ran out while an SSE response was still sending what it held was
    deleted under it, and the response ended without a word, its reader halfway."""
    backend = StreamsBackend.open(None, StreamsSettings(max_chunk_bytes=1024))
    try:
        api = create_app(backend).test_client()
        assert api.put("/v1/stream/short-lived", headers={
            "Content-Type": TEXT, "Stream-TTL": "1"}).status_code == 201
        for index in range(8):
            assert api.post("/v1/stream/short-lived", data=str(index) * 1024,
                            headers={"Content-Type": TEXT}).status_code == 204
        response = api.get("/v1/stream/short-lived?offset=-1&live=sse", buffered=False)
        events = 0
        for piece in response.response:
            events += (piece if isinstance(piece, bytes) else piece.encode()).count(b"event: data")
            if events == 8:
                break
            time.sleep(0.3)  # a slow reader: the whole backlog takes longer than the TTL
        response.close()
        assert events == 8
        assert api.head("/v1/stream/short-lived").status_code == 200
    finally:
        backend.close()


def _ttl_outlives_its_reader(http: StreamsHttp) -> None:
    text = {"Content-Type": TEXT, "Stream-TTL": "2"}
    http.request("PUT", "ttl-followed", headers=text, body="x").raise_for_status()
    http.request("PUT", "ttl-alone", headers=text, body="x").raise_for_status()  # made later
    with follow(http, "ttl-followed", "now") as response:
        events = sse_events(response)
        assert next(events)[0] == "control"  # the reader waits at the tail
        wait_until(lambda: http.request("HEAD", "ttl-alone").status_code == 404, timeout=15,
                   what="the stream without a reader to expire")  # HEAD resets no TTL
        assert http.request("HEAD", "ttl-followed").status_code == 200
        appended = http.request("POST", "ttl-followed", headers={"Content-Type": TEXT},
                                body="still here")
        assert appended.status_code == 204, appended.content
        assert next(events) == ("data", "still here")
    wait_until(lambda: http.request("HEAD", "ttl-followed").status_code == 404, timeout=15,
               what="the stream to expire once its reader left")


def test_the_sse_keepalive_is_a_server_option(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`flask run` took CHAT_SSE_KEEPALIVE_S; the standalone server had no such option, so a
    proxy that drops connections silent for under 15 s dropped its idle SSE readers."""
    server = start_streams_server(tmp_path_factory.mktemp("keepalive") / "data",
                                  extra_args=["--sse-keepalive", "0.3"])
    try:
        url = f"{server.url}/v1/stream/quiet"
        requests.put(url, headers={"Content-Type": "application/json"}, timeout=10).raise_for_status()
        started = time.monotonic()
        comments = 0
        with requests.get(url, params={"offset": "-1", "live": "sse"}, stream=True,
                          timeout=10) as response:
            for line in response.iter_lines():
                comments += line.startswith(b":")
                if comments == 3:
                    break
        assert time.monotonic() - started < 5  # three within about a second, not 45 s
    finally:
        server.terminate()


@pytest.mark.parametrize("sent_type", ["garbage", 'application/json; charset="x', "json/"])
def test_an_append_whose_content_type_is_no_media_type_is_a_400(http: StreamsHttp,
                                                                sent_type: str) -> None:
    """Section 5.2: a 409 is for a type that is valid but not the stream's. "garbage" was a
    409 and an unterminated quoted parameter was taken (where a PUT refuses both); a close
    with no body still ignores its type."""
    path = f"append-type-{len(sent_type)}"
    assert http.put(path, content_type="application/json").status_code == 201
    response = http.request("POST", path, body=b"[1]", headers={"Content-Type": sent_type})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "INVALID_CONTENT_TYPE"
    assert http.get(path).content == b"[]"
    closing = http.request("POST", path, headers={"Content-Type": sent_type, "Stream-Closed": "true"})
    assert closing.status_code == 204, closing.content


@pytest.mark.parametrize("content_type", ["text/plain; charset=iso-8859-1",
                                          'application/json; CHARSET="utf-16"'])
def test_a_text_or_json_stream_in_another_charset_than_utf8_is_refused(
        http: StreamsHttp, content_type: str) -> None:
    """SSE readers get a text or JSON stream as UTF-8 text (section 5.8), so its bytes must
    be UTF-8: a stream made "charset=iso-8859-1" took no append of Latin-1 text at all."""
    path = f"charset-{content_type.split('/')[0]}"
    made = http.request("PUT", path, headers={"Content-Type": content_type})
    assert made.status_code == 400, made.content
    assert made.json()["error"]["code"] == "INVALID_CONTENT_TYPE"
    assert "holds UTF-8" in made.json()["error"]["message"]
    for fine in ("text/plain; charset=UTF-8", "text/plain; charset=us-ascii", "text/plain"):
        assert http.request("PUT", f"{path}-{len(fine)}", headers={"Content-Type": fine}).status_code == 201
    # Sent to a stream of another type, it is that other type's conflict (section 5.2).
    binary = f"{path}-binary"
    assert http.put(binary, content_type="application/octet-stream").status_code == 201
    appended = http.request("POST", binary, body=b"x", headers={"Content-Type": content_type})
    assert appended.status_code == 409, appended.content


@pytest.mark.parametrize(("stream_type", "sent_type", "body"), [
    ("application/octet-stream", "application/json", b"\x00\x01"),
    ("application/octet-stream", "text/plain", b"\xff"),
    ("text/plain", "application/json", b"[]"),
])
def test_a_body_sent_as_another_type_is_a_conflict_even_when_it_is_not_that_type(
    http: StreamsHttp, stream_type: str, sent_type: str, body: bytes,
) -> None:
    """Section 5.2: another content type than the stream's is a 409, and a closed stream
    a 409 with Stream-Closed before that. The body was parsed by the request's type first,
    and its being invalid answered 400."""
    path = f"precedence-{stream_type}-{sent_type}".replace("/", "-")
    assert http.put(path, content_type=stream_type).status_code == 201
    response = http.request("POST", path, body=body, headers={"Content-Type": sent_type})
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "CONTENT_TYPE_MISMATCH"
    assert http.request("POST", path, headers={"Content-Type": stream_type,
                                               "Stream-Closed": "true"}).status_code == 204
    response = http.request("POST", path, body=body, headers={"Content-Type": sent_type})
    assert response.status_code == 409, response.content
    assert response.headers["Stream-Closed"] == "true"
    assert response.json()["error"]["code"] == "STREAM_CLOSED"
    # Of the stream's own type and invalid, a closed stream's answer is the same; and so
    # for an empty append or one without a Content-Type, which were a 400 (EMPTY_BODY,
    # MISSING_CONTENT_TYPE) that did not say the stream was closed.
    for refused_body, refused_headers in [(b"\xff[", {"Content-Type": stream_type}),
                                          (b"", {"Content-Type": stream_type}),
                                          (b"y", {})]:
        response = http.request("POST", path, body=refused_body, headers=refused_headers)
        assert (response.status_code, response.headers.get("Stream-Closed")) == (409, "true"), (
            refused_body, refused_headers, response.content)
    assert http.get(path).content == b""


# -- HEAD (section 5.5) ---------------------------------------------------------------------------


def test_a_head_sends_no_content_length_but_the_one_a_get_would_send(server: ServerProcess) -> None:
    """Every HEAD said `Content-Length: 0`, where RFC 9110 (8.6) allows only the length the
    GET would send: a client that took it for the size of the stream read 0 bytes. The
    connection stays usable after it (no body, nor a chunked one, follows)."""
    path = "/v1/stream/head-length"
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        conn = HTTPConnection("127.0.0.1")
        conn.sock = sock
        conn.request("PUT", path, headers={"Content-Type": "application/json"})
        conn.getresponse().read()
        conn.request("POST", path, body=b'[{"a":1}]', headers={"Content-Type": "application/json"})
        conn.getresponse().read()
        for target in (path, path + "?offset=-1", "/v1/stream/head-missing"):
            conn.request("HEAD", target)
            head = conn.getresponse()
            head.read()
            assert head.getheader("Content-Length") is None, (target, head.getheaders())
            assert head.getheader("Transfer-Encoding") is None, (target, head.getheaders())
        conn.request("GET", path + "?offset=-1")
        read = conn.getresponse()
        assert read.read() == b'[{"a":1}]' and read.getheader("Content-Length") == "9"
