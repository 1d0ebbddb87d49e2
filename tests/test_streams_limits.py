"""Configurable limits and access control of `python -m streams_server`, over real sockets.

Each limit is set small on the command line and then crossed: request bodies (``413``),
catch-up chunks (split, ``Stream-Up-To-Date`` only on the last), path length (``414``), plus
chunked request bodies and the optional bearer token (``401``). Bodies cut short or framed
ambiguously are refused both by the standalone server and by the chat app's (`flask run`).
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from streams_server.app import create_app
from streams_server.backend import StreamsBackend
from streams_server.config import StreamsSettings
from streams_server.protocol.operations import SSE_CACHE_BYTES
from tests.support import ServerProcess, start_streams_server
from tests.support.streams_http import StreamsHttp, error_body, offset_position

pytestmark = pytest.mark.timeout(60)

BINARY = "application/octet-stream"
JSON = "application/json"
MAX_BODY = int(0.01 * 1024 * 1024)  # --max-body-mib 0.01
MAX_CHUNK = 4 * 1024  # --max-chunk-kib 4
MAX_PATH = 64  # --max-path-length 64
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamsHttp]:
    """A server with tiny limits on bodies, chunks and paths."""
    server = start_streams_server(
        tmp_path_factory.mktemp("limits") / "data",
        extra_args=["--max-body-mib", "0.01", "--max-chunk-kib", "4",
                    "--max-path-length", str(MAX_PATH)],
    )
    try:
        yield StreamsHttp(server.url)
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamsHttp]:
    """A server with the default body limit and 64 KiB read chunks."""
    server = start_streams_server(
        tmp_path_factory.mktemp("roomy") / "data", extra_args=["--max-chunk-kib", "64"])
    try:
        yield StreamsHttp(server.url)
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that wants ``Authorization: Bearer TOKEN``."""
    server = start_streams_server(
        tmp_path_factory.mktemp("auth") / "data", extra_args=["--auth-token", TOKEN])
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture(params=["gevent", "flask-run"])
def front(request: pytest.FixtureRequest) -> StreamsHttp:
    """The standalone server (gevent's), then the chat app's (Werkzeug's)."""
    front: StreamsHttp = request.getfixturevalue(
        "roomy" if request.param == "gevent" else "flask_run")
    return front


def pieces(data: bytes, size: int = 1000) -> Iterator[bytes]:
    """A generator body: `requests` sends it with ``Transfer-Encoding: chunked``."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def assert_error(response: requests.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    payload = error_body(response)
    if code is not None:
        assert payload["error"]["code"] == code, payload


# ---------------------------------------------------------------------- request bodies


def test_body_over_the_limit_is_413_and_stores_nothing(small: StreamsHttp) -> None:
    """With a declared length or chunked, binary or JSON, append or create: over the limit
    is a 413 with a JSON error, at the limit is accepted, and nothing over it is stored."""
    assert small.put("body/bin", BINARY).status_code == 201
    assert small.post("body/bin", b"a" * MAX_BODY).status_code == 204
    tail = small.metadata("body/bin")[1]["Stream-Next-Offset"]
    assert_error(small.post("body/bin", b"b" * (MAX_BODY + 1)), 413, "PAYLOAD_TOO_LARGE")
    assert_error(small.post("body/bin", pieces(b"c" * (MAX_BODY + 1))), 413, "PAYLOAD_TOO_LARGE")
    assert_error(small.post("body/bin", pieces(b"d" * 50_000, 4096)), 413, "PAYLOAD_TOO_LARGE")
    assert small.metadata("body/bin")[1]["Stream-Next-Offset"] == tail
    assert small.catch_up("body/bin").content == b"a" * MAX_BODY

    assert small.put("body/json", JSON).status_code == 201
    message = json.dumps("x" * (MAX_BODY - 4)).encode()
    assert len(b"[" + message + b"]") == MAX_BODY
    assert small.post("body/json", b"[" + message + b"]", JSON).status_code == 204
    over = b"[" + message + b", 1]"
    assert_error(small.post("body/json", over, JSON), 413, "PAYLOAD_TOO_LARGE")
    assert_error(small.post("body/json", pieces(over), JSON), 413, "PAYLOAD_TOO_LARGE")
    assert small.catch_up("body/json").messages == ["x" * (MAX_BODY - 4)]

    for body in (b"e" * (MAX_BODY + 1), pieces(b"f" * (MAX_BODY + 1))):
        assert_error(small.put("body/created", BINARY, body), 413, "PAYLOAD_TOO_LARGE")
        assert small.head("body/created").status_code == 404


def test_a_json_request_of_more_messages_than_the_limit_is_413_and_stores_nothing(
    front: StreamsHttp,
) -> None:
    """Each message of a JSON request is validated and stored on the server's event loop:
    two million tiny ones (a 4 MB body) held every other client for 15 s. Past 10,000 (the
    default) a request is refused whole; at the limit it is stored whole."""
    def array(count: int) -> bytes:
        return b"[" + b",".join([b"0"] * count) + b"]"

    assert front.put("many/json", JSON).status_code == 201
    assert_error(front.post("many/json", array(10_001), JSON), 413, "TOO_MANY_MESSAGES")
    assert front.catch_up("many/json").messages == []
    assert front.post("many/json", array(10_000), JSON).status_code == 204
    assert front.catch_up("many/json").messages == [0] * 10_000
    assert_error(front.put("many/created", JSON, array(10_001)), 413, "TOO_MANY_MESSAGES")
    assert front.head("many/created").status_code == 404


def test_a_json_integer_of_any_length_is_stored_as_sent(front: StreamsHttp) -> None:
    """Valid JSON: Python refuses to convert an integer past 4,300 digits, and the request
    was refused with a message about `sys.set_int_max_str_digits`."""
    number = b"9" * 5000
    assert front.put("long-int/json", JSON).status_code == 201
    assert front.post("long-int/json", b"[" + number + b", -" + number + b"]", JSON
                      ).status_code == 204
    assert front.catch_up("long-int/json").content == b"[" + number + b",-" + number + b"]"


# ---------------------------------------------------------------------- catch-up chunks


def _check_chunks(client: StreamsHttp, path: str, limit: int) -> list[requests.Response]:
    read = client.catch_up(path)
    for response in read.responses:
        assert len(response.content) <= limit, f"a {len(response.content)}-byte chunk"
    flags = [r.headers.get("Stream-Up-To-Date") for r in read.responses]
    assert flags == [None] * (len(flags) - 1) + ["true"], flags
    return read.responses


def test_catch_up_read_is_split_into_chunks_of_at_most_the_limit(small: StreamsHttp) -> None:
    """A long binary stream, one append bigger than a chunk included, and a long JSON stream
    are read in chunks no larger than ``--max-chunk-kib``; only the last is up to date, and
    together they are the stream."""
    rng = random.Random(5)
    appends = [rng.randbytes(rng.randrange(1, 1500)) for _ in range(30)]
    appends.insert(12, rng.randbytes(9000))  # one append larger than a chunk
    assert small.put("chunks/bin", BINARY).status_code == 201
    for data in appends:
        assert small.post("chunks/bin", data).status_code == 204
    responses = _check_chunks(small, "chunks/bin", MAX_CHUNK)
    assert b"".join(r.content for r in responses) == b"".join(appends)
    assert len(responses) >= len(b"".join(appends)) // MAX_CHUNK

    messages = [{"i": i, "text": "m" * rng.randrange(0, 600)} for i in range(60)]
    assert small.put("chunks/json", JSON).status_code == 201
    for start in range(0, 60, 6):
        body = json.dumps(messages[start : start + 6]).encode()
        assert small.post("chunks/json", body, JSON).status_code == 204
    responses = _check_chunks(small, "chunks/json", MAX_CHUNK)
    assert [m for r in responses for m in json.loads(r.content)] == messages
    assert len(responses) > 1

    live = small.get("chunks/bin", "-1", live="long-poll")  # data ahead: answered at once
    assert live.status_code == 200 and len(live.content) <= MAX_CHUNK
    assert "Stream-Up-To-Date" not in live.headers


# ---------------------------------------------------------------------- paths


def test_path_longer_than_the_limit_is_414(small: StreamsHttp) -> None:
    """Every method on a too-long path gets 414 with a JSON error (HEAD: no body); a path at
    the limit works. The limit counts characters of the decoded path."""
    too_long = "p" * (MAX_PATH + 1)
    for method in ("PUT", "POST", "GET", "DELETE"):
        response = small.request(method, too_long, headers={"Content-Type": BINARY},
                                 body=b"x" if method == "POST" else None)
        assert_error(response, 414, "PATH_TOO_LONG")
    head = small.head(too_long)
    assert head.status_code == 414 and head.content == b""
    assert small.put("p" * MAX_PATH, BINARY).status_code == 201
    assert small.put("\u00e9" * MAX_PATH, BINARY).status_code == 201
    assert_error(small.put("\u00e9" * (MAX_PATH + 1), BINARY), 414, "PATH_TOO_LONG")


# ---------------------------------------------------------------------- chunked bodies


def test_chunked_request_bodies_create_and_append(roomy: StreamsHttp) -> None:
    """Bodies without Content-Length (Transfer-Encoding: chunked) work for create and
    append, binary and JSON, including one far beyond the in-memory spool (3 MiB)."""
    rng = random.Random(9)
    initial = rng.randbytes(5000)
    assert roomy.put("chunked/bin", BINARY, pieces(initial, 777)).status_code == 201
    small_append = rng.randbytes(3000)
    assert roomy.post("chunked/bin", pieces(small_append, 100)).status_code == 204
    large = rng.randbytes(3 * 1024 * 1024 + 17)
    response = roomy.post("chunked/bin", pieces(large, 65536))
    assert response.status_code == 204
    expected = initial + small_append + large
    assert offset_position(response.headers["Stream-Next-Offset"]) == len(expected)
    responses = _check_chunks(roomy, "chunked/bin", 64 * 1024)
    assert b"".join(r.content for r in responses) == expected

    batch = json.dumps([{"n": i, "s": "\u2713" * i} for i in range(50)]).encode()
    assert roomy.put("chunked/json", JSON, pieces(b'[{"n":-1}]', 3)).status_code == 201
    assert roomy.post("chunked/json", pieces(batch, 10), JSON).status_code == 204
    assert roomy.catch_up("chunked/json").messages == [{"n": -1}] + json.loads(batch)


# ---------------------------------------------------------------------- access control


def test_bearer_token_is_required_when_configured(guarded: ServerProcess) -> None:
    """Without the right ``Authorization: Bearer`` every operation is a 401 that changes
    nothing; with it everything works; CORS preflight needs no token."""
    anonymous = StreamsHttp(guarded.url)
    wrong = StreamsHttp(guarded.url, headers={"Authorization": "Bearer not-it"})
    basic = StreamsHttp(guarded.url, headers={"Authorization": f"Basic {TOKEN}"})
    allowed = StreamsHttp(guarded.url, headers={"Authorization": f"Bearer {TOKEN}"})
    for client in (anonymous, wrong, basic):
        for method in ("PUT", "POST", "GET", "DELETE"):
            response = client.request(method, "auth/s", headers={"Content-Type": BINARY},
                                      body=b"x" if method == "POST" else None)
            assert_error(response, 401, "UNAUTHORIZED")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            # A wrong token is told apart from none.
            assert ("is not this server's" in response.text) == (client is wrong), response.text
        assert client.head("auth/s").status_code == 401
    assert allowed.head("auth/s").status_code == 404  # the refused PUTs created nothing

    assert allowed.put("auth/s", BINARY).status_code == 201
    assert allowed.post("auth/s", b"secret").status_code == 204
    assert_error(anonymous.post("auth/s", b"intruder"), 401)
    read = allowed.get("auth/s")
    assert read.content == b"secret"
    assert read.headers["Cache-Control"].startswith("private")
    scheme_case = StreamsHttp(guarded.url, headers={"Authorization": f"bearer {TOKEN}"})
    assert scheme_case.catch_up("auth/s").content == b"secret"

    preflight = anonymous.request("OPTIONS", "auth/s", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.example"


def test_the_webhook_signing_keys_are_public_where_a_token_is_required(
        guarded: ServerProcess) -> None:
    """A webhook receiver verifies deliveries with them (section 6.5): it should not need the
    server's own bearer token to fetch them. Nothing else under `__ds` opens up."""
    anonymous = StreamsHttp(guarded.url)
    keys = anonymous.request("GET", "__ds/jwks.json")
    assert keys.status_code == 200, keys.content
    assert keys.headers["Content-Type"] == "application/jwk-set+json"
    assert keys.json()["keys"][0]["crv"] == "Ed25519"
    assert_error(anonymous.request("POST", "__ds/jwks.json"), 401, "UNAUTHORIZED")
    assert_error(anonymous.request("GET", "__ds/subscriptions"), 401, "UNAUTHORIZED")


# ---------------------------------------------------------------------- latency


def test_keep_alive_responses_are_not_delayed(roomy: StreamsHttp) -> None:
    """Responses with a body on a reused connection come back in milliseconds. (With Nagle's
    algorithm on the server socket, pywsgi's separate header and body writes waited for the
    client's delayed ACK: ~40 ms per read, live wake-ups included.)"""
    assert roomy.put("latency/s", BINARY, b"x" * 100).status_code == 201
    roomy.get("latency/s")  # open the connection
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        assert roomy.get("latency/s").content == b"x" * 100
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.02, timings


def _raw_exchange(base_url: str, head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send a request whose body ends early (the client half-closes), return status and body."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("content_type", [JSON, BINARY])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_cut_short_is_a_400_and_appends_nothing(
    front: StreamsHttp, content_type: str, framing: str,
) -> None:
    path = f"cut-{framing}-{content_type.split('/')[1]}"
    front.put(path, content_type=content_type).raise_for_status()
    before = front.head(path).headers["Stream-Next-Offset"]
    target = f"/v1/stream/{path}".encode()
    if framing == "content-length":
        head = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 100\r\n\r\n"
                % (target, content_type.encode()))
        body = b"[1,2,3]"
    else:
        head = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % (target, content_type.encode()))
        body = b"7\r\n[1,"
    status, payload = _raw_exchange(front.base_url, head, body)
    assert status == 400, payload
    assert json.loads(payload)["error"]["code"] == "INCOMPLETE_BODY"
    assert front.head(path).headers["Stream-Next-Offset"] == before


@pytest.mark.parametrize("framing", [
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    b"Content-Length: abc\r\n",
    b"Content-Length: -5\r\n",
    b"Content-Length: 2, 2\r\n",
], ids=["gzip-chunked", "gzip", "chunked-and-length", "length-abc", "length-negative",
        "length-list"])
def test_a_body_of_uncertain_length_is_refused_and_smuggles_nothing(
    front: StreamsHttp, framing: bytes, request: pytest.FixtureRequest,
) -> None:
    """Framed any other way than by one Content-Length or by chunked alone, a request's body
    could be read as no body at all, and its bytes as the connection's next request: here
    a closing append whose body hides another append. The request is refused and the
    connection closed: the stream is neither closed without the data nor appended to."""
    path = f"framing-{request.node.callspec.id}"
    front.put(path, content_type=JSON).raise_for_status()
    hidden = (b"POST /v1/stream/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 14\r\n\r\n{\"smuggled\":1}" % path.encode())
    head = (b"POST /v1/stream/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Stream-Closed: true\r\n" % path.encode()) + framing + b"\r\n"
    status, payload = _raw_exchange(front.base_url, head, hidden)
    assert status == 400, payload
    after = front.get(path)
    assert after.json() == [] and "Stream-Closed" not in after.headers


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_malformed_chunk_closes_the_connection_and_smuggles_nothing(
    front: StreamsHttp, method: str,
) -> None:
    """A chunk whose data runs past its declared size leaves the body's end unknown: the
    bytes after it were read as the connection's next request, and that request (an append
    hidden in the body) was carried out after the 400."""
    path = f"bad-chunk-{method.lower()}"
    front.put(path, content_type=JSON).raise_for_status()
    hidden = (b"POST /v1/stream/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 14\r\n\r\n{\"smuggled\":1}" % path.encode())
    head = (b"%s /v1/stream/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % (method.encode(), path.encode()))
    status, payload = _raw_exchange(front.base_url, head, b"3\r\n[7]Z" + hidden)
    assert status == 400, payload
    assert front.get(path).json() == []


def test_a_body_declared_too_large_is_refused_and_the_connection_closed(
    small: StreamsHttp,
) -> None:
    """A 413 answered before the body is read must close the connection: kept open, the
    server went on reading and discarding a body declared 10^23 bytes long."""
    small.put("declared-huge", content_type=BINARY).raise_for_status()
    host, port = small.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/stream/declared-huge HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/octet-stream\r\n"
                     b"Content-Length: 99999999999999999999999\r\n\r\n" + b"x" * 4096)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes: no timeout
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer, answer[:500]


def test_a_client_that_sends_its_whole_body_first_still_reads_the_refusal(
    small: StreamsHttp, roomy: StreamsHttp,
) -> None:
    """Python's `http.client` (and so `requests`) sends the whole body before it reads the
    answer. A refusal sent before the body was read closed the connection with the body
    unread, and the kernel reset it: the client got ConnectionResetError, not the 413 (or a
    404 asked with Connection: close). What the client still sends is read first."""
    small.put("sent-whole", content_type=BINARY).raise_for_status()
    for server, path, headers, status in (
            (small, "sent-whole", {}, 413),
            (roomy, "no-such-stream", {"Connection": "close"}, 404)):
        host, port = server.base_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("POST", f"/v1/stream/{path}", body=b"x" * 3_000_000,
                               headers={"Content-Type": "application/octet-stream", **headers})
            response = connection.getresponse()
            assert response.status == status
            assert json.loads(response.read())["error"]["code"]
        finally:
            connection.close()


def test_a_large_response_reaches_a_slow_steady_reader(tmp_path: Path) -> None:
    """The socket timeout bounded a whole response's write: a large catch-up read to a
    client reading steadily, but for longer than the timeout, was cut on every retry."""
    server = start_streams_server(tmp_path / "data", extra_args=[
        "--socket-timeout", "2", "--max-chunk-kib", "16384", "--max-body-mib", "8"])
    try:
        client = StreamsHttp(server.url)
        client.put("slow", content_type=BINARY).raise_for_status()
        half = bytes(range(256)) * 4096 * 8  # 8 MiB
        for _ in range(2):
            client.post("slow", half, content_type=BINARY).raise_for_status()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /v1/stream/slow?offset=-1 HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n")
            answer = b""
            started = time.monotonic()
            while chunk := sock.recv(65536):  # at most 3.3 MB/s: 5 s for the whole
                answer += chunk
                time.sleep(0.02)
            took = time.monotonic() - started
        body = answer.partition(b"\r\n\r\n")[2]
        assert took > 3, took  # longer than the timeout, or this shows nothing
        assert body == half * 2, (len(body), took)
    finally:
        server.terminate()


def _raw_post_to_new_stream(client: StreamsHttp, path: str, headers: bytes,
                            body: bytes) -> tuple[int, bytes]:
    """Create a binary stream at `path`, then POST `body` to it with the header lines
    `headers` sent as they are, repeats included: the answer's status and body."""
    client.put(path, content_type=BINARY).raise_for_status()
    head = (b"POST /v1/stream/%s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n"
            % (path.encode(), BINARY.encode())) + headers + b"\r\n"
    return _raw_exchange(client.base_url, head, body)


def _assert_refused_as_ambiguous(client: StreamsHttp, path: str, framing: bytes,
                                 body: bytes) -> None:
    """POST `body` to a fresh binary stream with the `framing` headers: a 400 INVALID_FRAMING,
    and the stream stays empty."""
    status, payload = _raw_post_to_new_stream(client, path, framing, body)
    assert status == 400, payload
    assert json.loads(payload)["error"]["code"] == "INVALID_FRAMING"
    assert client.get(path).content == b""


def test_a_chunked_body_with_a_content_length_is_refused(front: StreamsHttp) -> None:
    """Framed both ways, a body's end depends on which header a reader believes (a proxy in
    front may believe the other): refused, not read as chunked."""
    _assert_refused_as_ambiguous(front, "framed-twice",
                                 b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                                 b"3\r\nabc\r\n0\r\n\r\n")


def test_conflicting_content_lengths_are_refused_by_the_standalone_server(
    roomy: StreamsHttp,
) -> None:
    """pywsgi frames the body by the first of two Content-Lengths, a proxy may use the last:
    the bytes between would be one party's body and the other's next request. (Werkzeug's
    server keeps only the last, so `flask run`, a laptop's server, cannot tell.)"""
    _assert_refused_as_ambiguous(roomy, "two-lengths",
                                 b"Content-Length: 10\r\nContent-Length: 3\r\n", b"abcGET /v1")


def _assert_closed_by_stream_closed_given_twice(client: StreamsHttp, path: str) -> None:
    status, payload = _raw_post_to_new_stream(
        client, path,
        b"Stream-Closed: true\r\nStream-Closed: true\r\nContent-Length: 3\r\n", b"abc")
    assert status in (200, 204), payload
    assert client.head(path).headers.get("Stream-Closed") == "true"
    assert client.get(path).content == b"abc"


def test_a_protocol_header_given_twice_counts_once_or_is_refused_by_the_standalone_server(
    roomy: StreamsHttp,
) -> None:
    """pywsgi joined a repeated header's values with a comma: `Stream-Closed: true` twice
    read as "true,true", so the append left the stream open, and two different Producer-Ids
    made one producer "a,b". (Werkzeug's server joins them too, and as a Producer-Id may
    hold a comma, `flask run` cannot tell.)"""
    _assert_closed_by_stream_closed_given_twice(roomy, "closed-twice")

    status, payload = _raw_post_to_new_stream(
        roomy, "two-producers",
        b"Producer-Id: a\r\nProducer-Id: b\r\nProducer-Epoch: 0\r\nProducer-Seq: 0\r\n"
        b"Content-Length: 3\r\n", b"abc")
    assert status == 400, payload
    assert "conflicting Producer-Id headers" in json.loads(payload)["error"]["message"]
    assert roomy.get("two-producers").content == b""


def test_a_comma_free_protocol_header_given_twice_counts_once_or_is_refused_by_both_servers(
    front: StreamsHttp,
) -> None:
    """Werkzeug's server joins a repeated header's values with a comma, which a header that
    never holds one gives away: on `flask run` two `Stream-Closed: true` left the stream
    open (the standalone server closed it), and two Producer-Epochs were one bad number."""
    _assert_closed_by_stream_closed_given_twice(front, "closed-twice-both")

    status, payload = _raw_post_to_new_stream(
        front, "two-epochs",
        b"Producer-Id: p\r\nProducer-Epoch: 0\r\nProducer-Epoch: 1\r\nProducer-Seq: 0\r\n"
        b"Content-Length: 3\r\n", b"abc")
    assert status == 400, payload
    message = json.loads(payload)["error"]["message"]
    assert ("conflicting Producer-Epoch headers" in message  # the standalone server's parser
            or "Producer-Epoch holds a comma, which no value of it has" in message), message
    assert front.get("two-epochs").content == b""

    # One value with a comma is no repeat: said to be malformed, not "conflicting headers".
    refused = front.put("http-date-expiry", content_type=BINARY,
                        headers={"Stream-Expires-At": "Tue, 01 Jan 2030 00:00:00 GMT"})
    assert_error(refused, 400)
    message = error_body(refused)["error"]["message"]
    assert "conflicting" not in message, message


def test_the_shared_encodings_of_sse_batches_are_bounded_in_bytes() -> None:
    """Every SSE batch's encoding was kept for its other readers, up to 512 of them whatever
    their size: one reader catching up with a large stream left hundreds of MB behind."""
    backend = StreamsBackend.open(None, StreamsSettings(sse_max_duration_s=5.0))
    try:
        api = create_app(backend).test_client()
        assert api.put("/v1/stream/big", headers={"Content-Type": BINARY}).status_code == 201
        chunk = bytes(range(256)) * 4096  # 1 MiB: one SSE batch each (the chunk limit)
        for _ in range(40):
            assert api.post("/v1/stream/big", data=chunk,
                            headers={"Content-Type": BINARY}).status_code == 204
        response = api.get("/v1/stream/big?offset=-1&live=sse", buffered=False)
        events = 0
        for piece in response.response:
            events += (piece if isinstance(piece, bytes) else piece.encode()).count(b"event: data")
            if events >= 40:
                break
        response.close()
        assert events == 40
        cached = sum(len(data) for data, _ in backend.streams._sse_cache.values())
        assert cached <= SSE_CACHE_BYTES, f"{cached / 2**20:.1f} MiB kept"
    finally:
        backend.close()
