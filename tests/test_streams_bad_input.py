"""Hostile and malformed requests to `python -m streams_server`, over real sockets: each gets
a clear JSON 4xx, changes nothing, and leaves no traceback in the server's log.

Each case here was once answered otherwise (found by fuzzing the server).
"""

from __future__ import annotations

import gzip
import json
import resource
import select
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from streams_server.app import create_app
from streams_server.backend import StreamsBackend
from streams_server.config import StreamsSettings
from tests.support import ServerProcess, start_streams_server
from tests.support.agents import wait_until
from tests.support.streams_http import StreamsHttp, error_body

pytestmark = pytest.mark.timeout(60)

JSON = "application/json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_streams_server(tmp_path_factory.mktemp("bad-input") / "data")
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def http(server: ServerProcess) -> StreamsHttp:
    return StreamsHttp(server.url)


@pytest.fixture(params=["gevent", "flask-run"])
def front(request: pytest.FixtureRequest, server: ServerProcess) -> StreamsHttp:
    """The standalone server (gevent's), then the chat app's (Werkzeug's)."""
    if request.param == "gevent":
        return StreamsHttp(server.url)
    app: StreamsHttp = request.getfixturevalue("flask_run")
    return app


def assert_error(response: requests.Response, status: int, code: str | set[str]) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert error_body(response)["error"]["code"] in ({code} if isinstance(code, str) else code)


def test_deeply_nested_json_in_a_control_body_is_a_400(http: StreamsHttp) -> None:
    """`json.loads` raises RecursionError, not ValueError, past Python's nesting limit."""
    response = http.request("PUT", "__ds/subscriptions/deep", headers={"Content-Type": JSON},
                            body=b"[" * 100_000)
    assert_error(response, 400, "INVALID_JSON")
    assert http.get("__ds/subscriptions/deep").status_code == 404


def test_json_nested_past_the_parsers_depth_is_refused_for_its_depth(http: StreamsHttp) -> None:
    """Valid JSON a thousand levels deep was refused as "invalid JSON: maximum recursion
    depth exceeded while decoding a JSON array from a unicode string": it is not invalid."""
    assert http.put("deep-appends", content_type=JSON).status_code == 201
    deep = b"[" * 1000 + b"]" * 1000
    response = http.post("deep-appends", deep, content_type=JSON)
    assert_error(response, 400, "INVALID_JSON")
    message = error_body(response)["error"]["message"]
    assert "nested too deeply" in message and "recursion" not in message, message
    assert http.get("deep-appends").json() == []


def test_a_path_that_is_not_utf8_once_decoded_is_refused_not_aliased(front: StreamsHttp) -> None:
    """With undecodable bytes replaced by U+FFFD, `%FF`, `%FE` and `%C0` all named one stream
    (Werkzeug's server replaces them before the app sees the path)."""
    assert_error(front.put("alias-%FF", content_type=JSON), 400, "INVALID_PATH")
    assert_error(front.post("alias-%C0", b'[{"a": 1}]', content_type=JSON), 400,
                 "INVALID_PATH")
    assert front.get("alias-%EF%BF%BD").status_code == 404
    assert front.put("alias-%EF%BF%BD", content_type=JSON).status_code == 201  # U+FFFD itself
    assert front.put("alias-%C3%A9", content_type=JSON).status_code == 201  # é is fine
    assert front.get("alias-%C3%A9").json() == []
    assert_error(front.put("alias-%FE", content_type=JSON), 400, "INVALID_PATH")


@pytest.mark.parametrize("source", ["/v1/stream/al/%FF", "/v1/stream/al/%00"])
def test_a_fork_source_that_is_not_a_clean_path_is_refused(front: StreamsHttp,
                                                           source: str) -> None:
    """The header is percent-decoded like a URL path, and was decoded with replacement."""
    assert front.put("al/%EF%BF%BD", content_type=JSON).status_code in (200, 201)
    response = front.put("al/fork", None, headers={"Stream-Forked-From": source})
    assert_error(response, 400, "INVALID_FORK")
    assert front.head("al/fork").status_code == 404


def test_expected_errors_leave_no_traceback_in_the_log(server: ServerProcess,
                                                        http: StreamsHttp) -> None:
    """Errors raised in the storage thread pool (a 404, a 400 for an offset read from disk)
    are the client's answer, not the operator's problem: gevent's pool used to print each
    one's traceback, a log anyone could flood."""
    assert http.put("logged", content_type=JSON).status_code == 201
    assert http.post("logged", b'[{"n": 1}, {"n": 2}]', content_type=JSON).status_code == 204
    server.restart()  # the tail cache is empty: reads now come from the database
    http = StreamsHttp(server.url)
    assert http.get("__ds/subscriptions/nope").status_code == 404
    assert_error(http.get("logged", offset="0000000000000000_0000000000000003"),
                 400, "INVALID_OFFSET")
    assert http.get("logged").json() == [{"n": 1}, {"n": 2}]
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail()


@pytest.mark.parametrize("content_type", ["text/\x00plain", "text/plain\x7f", "a/" + "b" * 1100],
                         ids=["nul", "del", "too-long"])
def test_a_content_type_that_cannot_be_sent_back_is_refused(
    front: StreamsHttp, content_type: str, request: pytest.FixtureRequest,
) -> None:
    """A stream's content type is repeated in every read's headers: control characters would
    go back to every reader raw. (The standalone server refuses a control character in any
    header before the app sees it; Werkzeug's passes it on.)"""
    path = f"ctype-{request.node.callspec.id}"
    codes = {"INVALID_CONTENT_TYPE", "MALFORMED_REQUEST"}
    assert_error(front.put(path, content_type=content_type), 400, codes)
    assert front.head(path).status_code == 404
    assert front.put(path, content_type="text/plain").status_code == 201
    response = front.post(path, b"x", content_type=content_type)
    assert_error(response, 400, codes)
    assert front.get(path).content == b""


def test_a_stream_is_created_only_with_a_media_type(front: StreamsHttp) -> None:
    """`Content-Type: not a mime` made a stream that told every reader so (and the inspector
    offered to make one). A stream's type must be `type/subtype`, with parameters; an empty
    close-only append is still not refused for its Content-Type (section 5.2)."""
    for n, bad in enumerate(["not a mime", "application/", "/json", "text/plain; charset",
                             "text/plain, text/html", "a/b" + " ;" * 500 + " x"]):
        assert_error(front.put(f"media-bad-{n}", content_type=bad), 400, {"INVALID_CONTENT_TYPE"})
        assert front.head(f"media-bad-{n}").status_code == 404
    for n, good in enumerate(["text/plain ;charset=utf-8", 'application/json;charset="utf-8"',
                              "application/vnd.example+json; v=2; q=\"a;b\""]):
        made = front.put(f"media-good-{n}", content_type=good)
        assert made.status_code == 201, made.text
        assert front.head(f"media-good-{n}").headers["Content-Type"] == good
    closed = front.post("media-good-0", b"", content_type="not a mime",
                        headers={"Stream-Closed": "true"})
    assert closed.status_code in (200, 204), closed.text


@pytest.mark.parametrize("host", ["x\x01y", "a b", "x:99999999", "x:"], ids=[
    "control-character", "space", "port-too-big", "empty-port"])
def test_a_malformed_host_header_is_a_400(front: StreamsHttp, host: str,
                                          request: pytest.FixtureRequest) -> None:
    """The Host names the stream's URL in `Location`: a malformed one gave `http:///v1/...`."""
    path = f"host-{request.node.callspec.id}"
    response = front.request("PUT", path, headers={"Host": host, "Content-Type": JSON})
    assert_error(response, 400, {"INVALID_HOST", "MALFORMED_REQUEST"})  # as above
    assert front.head(path).status_code == 404


@pytest.mark.parametrize("host", ["streams_server:4437", "[::1]:8080", "example.com"],
                         ids=["underscore", "ipv6", "name"])
def test_a_valid_host_header_names_the_created_stream(front: StreamsHttp, host: str,
                                                      request: pytest.FixtureRequest) -> None:
    """Underscores included (a Docker Compose service name), which Werkzeug's check refuses."""
    path = f"host-ok-{request.node.callspec.id}"
    response = front.request("PUT", path, headers={"Host": host, "Content-Type": JSON})
    assert response.status_code == 201, response.content
    assert response.headers["Location"] == f"http://{host}/v1/stream/{path}"
    assert front.request("GET", path, headers={"Host": host}).json() == []


def test_the_location_of_a_stream_named_with_a_percent_sign_names_that_stream(
        front: StreamsHttp) -> None:
    """The path arrives decoded: `%2542` names the stream `%42`, whose URL is `%2542` again.
    The Location header said `%42`, which names the stream `B`."""
    created = front.request("PUT", "percent%2542", headers={"Content-Type": JSON})
    assert created.status_code == 201, created.content
    location = created.headers["Location"]
    assert location.endswith("/v1/stream/percent%2542"), location
    assert front.session.head(location).status_code == 200
    assert front.request("HEAD", "percentB").status_code == 404


@pytest.mark.parametrize("path", ["a/%2E%2E/b", "%2E%2E", "a/%2E", "%2e/x"])
def test_a_stream_is_not_created_under_a_path_with_dot_segments(front: StreamsHttp,
                                                                 path: str) -> None:
    """Browsers resolve `..` and `.` away: such a stream could not be reached from a page,
    and `a/../b` would read as `b` there."""
    assert_error(front.request("PUT", path, headers={"Content-Type": JSON}), 400, "INVALID_PATH")
    assert front.request("PUT", "a/..b/.c./...", headers={"Content-Type": JSON}).status_code in (
        200, 201)  # dots inside a name are fine


def _raw_answer(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is and read the answer to the end (the server closes)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /v1/stream/x HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP_VERSION_NOT_SUPPORTED"),
    (b"GET /v1/stream/x HTTP/one\r\nHost: a\r\n\r\n", 400, "MALFORMED_REQUEST"),
    (b"BREW\r\n\r\n", 400, "MALFORMED_REQUEST"),
    (b"GET /v1/stream/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
     414, "REQUEST_LINE_TOO_LONG"),
    (b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
     431, "HEADERS_TOO_LARGE"),
    (b"GET /v1/stream/x HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(120))
     + b"\r\n", 431, "HEADERS_TOO_LARGE"),
    (b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n", 400,
     "MALFORMED_REQUEST"),
    (b"POST /v1/stream/x HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400,
     "INVALID_FRAMING"),
    # A bare CR: a line break to some parsers (a header hidden from the others), and echoed
    # into Access-Control-Allow-Origin it was a 500 with a traceback.
    (b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\nOrigin: http://a\rSet-Cookie: x\r\n\r\n", 400,
     "MALFORMED_REQUEST"),
    (b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\nX-A: b\r\r\nX-B: c\r\n\r\n", 400,
     "MALFORMED_REQUEST"),
    (b"OPTIONS /v1/stream/x HTTP/1.1\r\nHost: a\r\nOrigin: http://a\r\n"
     b"Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: a\x01b\r\n\r\n",
     400, "MALFORMED_REQUEST"),
    (b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\nX\x00Y: 1\r\n\r\n", 400, "MALFORMED_REQUEST"),
    (b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "MALFORMED_REQUEST"),
    (b"PUT /v1/stream/x HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
     b"Content-Type: application/json\r\nContent-Length: 0\r\n\r\n", 400, "MALFORMED_REQUEST"),
    (b"POST /v1/stream/x HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n",
     413, "PAYLOAD_TOO_LARGE"),  # past int()'s 4,300 digits: a 400 naming Python's limit
    (b"GET /v1/stream/x\r\n\r\n", 400, "MALFORMED_REQUEST"),  # HTTP/0.9: it was answered
    (b"GET /v1/stream/x HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "MALFORMED_REQUEST"),
    (b"POST /v1/stream/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
     b"Connection: keep-alive\r\n\r\n0\r\n\r\n", 400, "INVALID_FRAMING"),
], ids=["http2", "bad-version", "no-target", "long-line", "long-header", "many-headers",
        "no-colon", "length-abc", "bare-cr", "bare-cr-at-line-end", "control-character", "nul-in-name", "two-hosts",
        "two-content-types", "huge-length", "http-0.9", "no-host", "chunked-in-http-1.0"])
def test_requests_refused_before_the_app_get_a_json_error(
    server: ServerProcess, request_bytes: bytes, status: int, code: str,
) -> None:
    """What gevent's HTTP parser refuses (before any app sees the request) is answered like
    every other error: JSON with a code, the connection closed, and an info line in the log,
    not an ERROR (pywsgi's own answers were empty, and logged as errors with the socket).
    They lacked the CORS header, so a page of another origin could not read why."""
    got_status, headers, body = _raw_answer(server.url, request_bytes)
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    # Readable by a page of another origin, like every other error of the API.
    assert headers["access-control-allow-origin"] == "*"
    assert headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["error"]["code"] == code
    log = server.log_path.read_text(errors="replace")
    assert " ERROR " not in log and "Traceback" not in log, server.log_tail()


def test_a_head_refused_while_the_client_still_sends_it_is_answered_not_reset(
    server: ServerProcess,
) -> None:
    """A head far past the limits is refused after its first 64 KiB. The server closed with
    the rest unread, and the kernel answered what still came with a reset that dropped the
    431 before the client could read it (a client sends its head whole before it reads)."""
    host, port = server.url.removeprefix("http://").split(":")
    head = b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n"
    for _ in range(5):  # the reset raced the client's read: most tries lost the answer
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            try:
                sock.sendall(head)
            except OSError as exc:
                raise AssertionError(f"the server reset the connection: {exc!r}") from exc
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "HEADERS_TOO_LARGE"


@pytest.mark.parametrize("header", ["Stream-TTL", "Stream-Fork-Sub-Offset", "Producer-Seq"])
def test_a_number_too_long_for_int_is_a_400(front: StreamsHttp, header: str) -> None:
    """Past Python's 4,300 digits `int()` raises: a Stream-TTL that long was a 500 with a
    traceback in the log."""
    path = f"long-number-{header.lower()}"
    headers = {header: "1" * 5000, "Content-Type": JSON}
    if header == "Stream-Fork-Sub-Offset":
        assert front.put(f"{path}-source", content_type=JSON).status_code in (200, 201)
        headers["Stream-Forked-From"] = f"/v1/stream/{path}-source"
    if header != "Producer-Seq":
        assert_error(front.request("PUT", path, headers=headers), 400, "VALUE_TOO_LARGE")
        assert front.head(path).status_code == 404
        return
    assert front.put(path, content_type=JSON).status_code in (200, 201)
    headers.update({"Producer-Id": "p", "Producer-Epoch": "0"})
    assert_error(front.request("POST", path, body=b"[1]", headers=headers), 400,
                 "VALUE_TOO_LARGE")
    assert front.get(path).json() == []


def _answer_to_half_closed(url: str, request: bytes) -> bytes:
    """Send `request`, close this side for sending (as a client that died would), and read
    what the server answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_request_cut_off_inside_its_headers_is_not_carried_out(server: ServerProcess) -> None:
    """The end of the connection was taken for the blank line that ends the headers: a PUT
    cut off before its Content-Type made a stream of the wrong type, one cut inside a value
    a stream of type ``application/js``, and an append-and-close cut off before its length
    closed the stream without its last message, which the client's retry could then never
    append."""
    http = StreamsHttp(server.url)
    cut_off = {
        "cut-put": b"PUT /v1/stream/cut-put HTTP/1.1\r\nHost: x\r\nStream-Closed: true\r\n",
        "cut-value": b"PUT /v1/stream/cut-value HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                     b"Content-Type: application/js",
        "cut-request-line": b"PUT /v1/stream/cut-request-line HTTP/1.1",
    }
    for path, request in cut_off.items():
        answer = _answer_to_half_closed(server.url, request)
        assert answer.startswith(b"HTTP/1.1 400 "), (path, answer)
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "MALFORMED_REQUEST"
        assert http.head(path).status_code == 404, path
    assert http.put("cut-close", content_type="text/plain").status_code == 201
    answer = _answer_to_half_closed(server.url, b"POST /v1/stream/cut-close HTTP/1.1\r\nHost: x\r\n"
                                    b"Stream-Closed: true\r\nContent-Type: text/plain\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    retried = http.request("POST", "cut-close", body=b"FINAL", headers={
        "Content-Type": "text/plain", "Stream-Closed": "true"})
    assert retried.status_code == 204, retried.content
    assert http.get("cut-close").content == b"FINAL"
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail()


def test_a_method_in_lower_case_is_not_the_method(front: StreamsHttp) -> None:
    """Methods are case-sensitive (RFC 9110, 9.1): `delete` was served as DELETE."""
    assert front.put("lower-method", content_type=JSON).status_code == 201
    for method in (b"delete", b"get", b"Post"):  # `requests` would upper-case them
        status, _, body = _raw_answer(front.base_url, method + b" /v1/stream/lower-method"
                                      b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 405, body
        assert json.loads(body)["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert front.head("lower-method").status_code == 200


def test_a_body_in_a_content_coding_is_refused_not_stored_as_sent(front: StreamsHttp) -> None:
    """A gzip body was stored compressed and read back without its Content-Encoding, and
    `Content-Encoding: bogus` was taken (RFC 9110, 8.4: a 415)."""
    assert front.put("coded", content_type="application/octet-stream").status_code == 201
    for coding in ("gzip", "bogus"):
        response = front.request("POST", "coded", body=gzip.compress(b"hello"), headers={
            "Content-Type": "application/octet-stream", "Content-Encoding": coding})
        assert_error(response, 415, "UNSUPPORTED_CONTENT_ENCODING")
    assert front.get("coded").content == b""
    assert front.request("POST", "coded", body=b"hello", headers={
        "Content-Type": "application/octet-stream",
        "Content-Encoding": "identity"}).status_code == 204
    assert front.get("coded").content == b"hello"
    # A request without a body has no content coding to refuse: it was a 415 too.
    gzip_header = {"Content-Encoding": "gzip"}
    assert front.request("GET", "coded?offset=-1", headers=gzip_header).content == b"hello"
    assert front.request("HEAD", "coded", headers=gzip_header).status_code == 200
    assert front.request("DELETE", "coded", headers=gzip_header).status_code == 204


def test_a_request_target_in_absolute_form_is_served(server: ServerProcess) -> None:
    """RFC 9112 (3.2.2): a server must accept `GET http://host/path`, and take the host
    from it. It got Flask's HTML 404."""
    http = StreamsHttp(server.url)
    assert http.put("absolute", content_type=JSON, body=b"[1]").status_code == 201
    status, headers, body = _raw_answer(server.url, (
        b"GET HTTP://stream-host:8080/v1/stream/absolute?offset=-1 HTTP/1.1\r\n"
        b"Host: ignored\r\nConnection: close\r\n\r\n"))
    assert (status, json.loads(body)) == (200, [1]), body
    status, headers, _ = _raw_answer(server.url, (
        b"PUT http://stream-host:8080/v1/stream/absolute-made HTTP/1.1\r\n"
        b"Host: ignored\r\nContent-Type: application/json\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n"))
    assert status == 201
    assert headers["location"] == "http://stream-host:8080/v1/stream/absolute-made"


def test_a_connection_that_sends_nothing_is_closed_but_a_live_read_may_wait(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Idle keep-alive connections and requests sent byte by byte were held for good, a file
    descriptor each: 20,000 of them and the server took no new client. A connection that
    sends nothing for ``--socket-timeout`` is closed (silently between requests, with a 408
    inside one); a long-poll waiting longer than that for data is still answered."""
    server = start_streams_server(tmp_path_factory.mktemp("timeouts") / "data",
                                  long_poll_timeout=2.5, extra_args=["--socket-timeout", "1"])
    try:
        host, port = server.url.removeprefix("http://").split(":")

        def answer_to(sent: bytes) -> bytes:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(sent)
                answer = b""
                while chunk := sock.recv(65536):  # the server closes (a 10 s timeout here)
                    answer += chunk
            return answer

        assert answer_to(b"") == b""  # an idle connection: closed without a word
        for partial_request in (b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\n",
                                b"GET /v1/str"):  # the request line itself cut short
            partial = answer_to(partial_request)
            assert partial.startswith(b"HTTP/1.1 408 "), (partial_request, partial)
            assert json.loads(partial.partition(b"\r\n\r\n")[2])["error"]["code"] == "REQUEST_TIMEOUT"
        # After a whole request, an idle keep-alive connection is closed without a word.
        answered = answer_to(b"HEAD /v1/stream/x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert answered.startswith(b"HTTP/1.1 404 ") and answered.count(b"HTTP/1.1") == 1, answered
        http = StreamsHttp(server.url)
        assert http.put("stalled", content_type="application/octet-stream").status_code == 201
        stalled = answer_to(b"POST /v1/stream/stalled HTTP/1.1\r\nHost: a\r\n"
                            b"Content-Type: application/octet-stream\r\nContent-Length: 10\r\n\r\nabc")
        assert stalled.startswith(b"HTTP/1.1 408 "), stalled  # it was a 400 INCOMPLETE_BODY
        assert json.loads(stalled.partition(b"\r\n\r\n")[2])["error"]["code"] == "REQUEST_TIMEOUT"
        assert http.get("stalled").content == b""
        assert http.put("waited", content_type=JSON).status_code == 201
        tail = http.head("waited").headers["Stream-Next-Offset"]
        waited = http.get("waited", tail, live="long-poll")
        assert waited.status_code == 204, waited.content  # after 2.5 s, more than the timeout
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log, server.log_tail()
    finally:
        server.terminate()


def test_a_request_head_dripped_a_byte_at_a_time_is_cut_off(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The socket timeout bounds each wait for a byte, so a client sending one byte a second
    under it held its connection (and descriptor) for as long as it liked: the request line
    and headers must now all arrive within the timeout."""
    server = start_streams_server(tmp_path_factory.mktemp("drip") / "data",
                                  extra_args=["--socket-timeout", "1.5"])
    try:
        host, port = server.url.removeprefix("http://").split(":")
        head = b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\n" + b"X-Slow: " + b"a" * 40 + b"\r\n\r\n"

        with socket.create_connection((host, int(port)), timeout=10) as sock:
            started = time.monotonic()
            answer = b""
            for byte in head:  # 0.3 s apart, well inside the 1.5 s timeout
                try:
                    sock.sendall(bytes([byte]))
                except OSError:  # closed by the server after its answer
                    break
                if select.select([sock], [], [], 0.3)[0]:
                    break
            while chunk := sock.recv(65536):
                answer += chunk
            took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "REQUEST_TIMEOUT"
        assert took < 5, took  # the whole head would have taken 21 s
        assert StreamsHttp(server.url).head("x").status_code == 404  # still serving
    finally:
        server.terminate()


def test_out_of_file_descriptors_new_clients_wait_and_are_served_once_some_close(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """gevent logged a traceback every second while `accept` failed with EMFILE: the server
    now says once what is wrong, waits, and serves again when descriptors are free."""
    server = start_streams_server(tmp_path_factory.mktemp("descriptors") / "data")
    try:
        http = StreamsHttp(server.url)
        assert http.put("after", content_type=JSON).status_code == 201
        assert server.pid is not None
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (128, 128))
        host, port = server.url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(160)]
        try:
            # Each sends half a request, so the server holds its connection open.
            for sock in held:
                sock.sendall(b"GET /v1/stream/after HTTP/1.1\r\n")
            wait_until(lambda: "out of file descriptors" in server.log_path.read_text(),
                       timeout=10, what="the server to run out of descriptors")
            time.sleep(2)  # long enough for gevent's per-second tracebacks
        finally:
            for sock in held:
                sock.close()
        response = requests.get(f"{server.url}/v1/stream/after", params={"offset": "-1"},
                                timeout=10)
        assert response.status_code == 200 and response.json() == []
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log and log.count("out of file descriptors") == 1, log[-3000:]
    finally:
        server.terminate()


def test_a_malformed_header_line_is_quoted_as_sent_without_its_line_end(
        server: ServerProcess) -> None:
    """The message quoted it with its CR LF, escaped twice once in JSON:
    `malformed request header line 'Bad Header\\\\r\\\\n'`."""
    _, _, body = _raw_answer(server.url, b"GET /v1/stream/x HTTP/1.1\r\nHost: a\r\n"
                                         b"Bad Header\r\n\r\n")
    assert json.loads(body)["error"]["message"] == "malformed request header line 'Bad Header'"


def test_a_folded_header_is_refused_before_anything_is_stored(server: ServerProcess) -> None:
    """A folded Origin was echoed, CR LF and all, into the response's
    Access-Control-Allow-Origin: gevent refused that header, and the client got a plain 500
    for an append that had been stored (a retry stored it twice)."""
    assert requests.put(f"{server.url}/v1/stream/folded", headers={"Content-Type": "text/plain"},
                        timeout=10).status_code == 201
    status, _, body = _raw_answer(server.url, (
        b"POST /v1/stream/folded HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
        b"Origin: http://a\r\n x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nXYZ"))
    assert status == 400, body
    assert "folded header values" in json.loads(body)["error"]["message"]
    read = requests.get(f"{server.url}/v1/stream/folded?offset=-1", timeout=10)
    assert read.status_code == 200 and read.content == b""
    assert "Traceback" not in server.log_path.read_text(errors="replace")


@pytest.mark.parametrize("method", ["POST", "OPTIONS"])
def test_a_header_value_with_a_line_break_is_not_echoed_into_the_response(method: str) -> None:
    """Under a server that joins folded lines with their CR LF (Werkzeug's, flask run's), the
    Origin or Access-Control-Request-Headers went back as is, and the response was refused
    whole: a 500 after the append was stored."""
    backend = StreamsBackend.open(None, StreamsSettings())
    try:
        api = create_app(backend).test_client()
        assert api.put("/v1/stream/echo", headers={"Content-Type": "text/plain"}).status_code == 201
        folded = {"HTTP_ORIGIN": "http://a\r\n x",
                  "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "content-type,\r\n producer-id"}
        response = api.open("/v1/stream/echo", method=method, data=b"XYZ",
                            headers={"Content-Type": "text/plain"}, environ_overrides=folded)
        assert response.status_code == 204, response.get_data(as_text=True)
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        if method == "OPTIONS":
            assert "\n" not in response.headers["Access-Control-Allow-Headers"]
    finally:
        backend.close()


@pytest.mark.parametrize("query", ["offset=-1&offset=now", "live=sse&offset=-1&live=long-poll",
                                   "offset=-1&live=long-poll&cursor=1&cursor=2"])
def test_a_read_parameter_given_twice_is_refused_not_half_ignored(
        front: StreamsHttp, query: str) -> None:
    """The first was taken and the second ignored without a word: which one a client meant
    is not the server's to guess."""
    assert front.put("twice", content_type=JSON).status_code in (200, 201)
    name = next(part.split("=")[0] for part in query.split("&")
                if query.count(part.split("=")[0] + "=") > 1)
    response = front.get(f"twice?{query}")
    assert_error(response, 400, "DUPLICATE_PARAMETER")
    assert f"{name} is given more than once" in error_body(response)["error"]["message"]


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/streamx", 404, "NOT_FOUND"),
    ("GET", "/v1", 404, "NOT_FOUND"),
    ("POST", "/v1/other/thing", 404, "NOT_FOUND"),
])
def test_an_api_url_outside_the_streams_is_refused_in_json(
        front: StreamsHttp, method: str, path: str, status: int, code: str) -> None:
    """Flask answered these with its HTML pages, which an API client cannot parse. A page on
    another origin can read the error too: it came without the API's CORS headers, so the
    browser showed a CORS failure instead."""
    response = front.session.request(method, front.base_url + path, timeout=10,
                                     headers={"Origin": "http://elsewhere.example"})
    assert response.headers["Content-Type"] == "application/json", response.text[:200]
    assert_error(response, status, code)
    assert "<" not in response.text
    assert response.headers["Access-Control-Allow-Origin"] == "http://elsewhere.example"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    if status == 404:  # not Werkzeug's "please check your spelling"
        assert "the streams are under /v1/stream/" in error_body(response)["error"]["message"]


def test_the_standalone_server_answers_every_url_in_json(http: StreamsHttp) -> None:
    """It serves only the API: its own 404s and 405s are JSON too (the 405 keeps its Allow).
    A 404 says where the streams are (an agent given the server's root as its streams URL
    logged Werkzeug's "check your spelling" at every retry)."""
    for path in ("/", "/agents/wake", "/v1/stream//x"):
        response = http.session.put(http.base_url + path, timeout=10)
        assert_error(response, 404, "NOT_FOUND")
        assert "the streams are under /v1/stream/" in error_body(response)["error"]["message"]
    response = http.session.delete(http.base_url + "/healthz", timeout=10)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["Allow"]


def test_the_chat_app_keeps_html_pages_for_its_page_urls(flask_run: StreamsHttp) -> None:
    response = flask_run.session.get(flask_run.base_url + "/no-such-page", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")
