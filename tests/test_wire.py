"""The streams client's lean HTTP/1.1 pool, against a scripted server on a real socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from agent_actors._wire import WirePool

pytestmark = pytest.mark.timeout(60)

Reply = Callable[[int, bytes], bytes | None]
"""(connection number, request bytes) -> raw response bytes, or None to close unanswered."""


class ScriptedServer:
    """Accepts connections and answers each request with ``reply``; records what it saw."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.close_after_reply = False
        self.requests: list[tuple[int, bytes]] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections),
                             daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        with conn, reader:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + reader.read(length)
                self.requests.append((number, request))
                response = self.reply(number, request)
                if response is None:
                    return
                conn.sendall(response)
                if self.close_after_reply:
                    return


@pytest.fixture
def serve() -> Iterator[Callable[[Reply], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(reply: Reply) -> ScriptedServer:
        servers.append(ScriptedServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Seen: yes\r\n\r\nok"


def test_requests_share_one_kept_alive_connection(serve: Callable[[Reply], ScriptedServer]) -> None:
    server = serve(lambda number, request: OK)
    pool = WirePool(server.url)
    for _ in range(3):
        response = pool.request("POST", f"{server.url}/v1/stream/a", data=b"[1]",
                                headers={"Content-Type": "application/json"},
                                params={"offset": "-1"})
        assert (response.status_code, response.content, response.headers["x-seen"]) == \
            (200, b"ok", "yes")
    assert server.connections == 1
    first = server.requests[0][1]
    assert first.startswith(b"POST /v1/stream/a?offset=-1 HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 3\r\n" in first and first.endswith(b"\r\n\r\n[1]")
    assert response.request.url == f"{server.url}/v1/stream/a?offset=-1"


def test_chunked_bodies_repeated_headers_and_interim_answers(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    server = serve(lambda number, request: (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVary: a\r\nVary: b\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"))
    pool = WirePool(server.url)
    response = pool.request("GET", f"{server.url}/s")
    assert response.content == b"hello world" and response.text == "hello world"
    assert response.headers["Vary"] == "a, b"
    assert pool.request("GET", f"{server.url}/s").content == b"hello world"
    assert server.connections == 1


def test_head_and_204_have_no_body_and_keep_the_connection(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    server = serve(lambda number, request: (
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" if request.startswith(b"HEAD")
        else b"HTTP/1.1 204 No Content\r\n\r\n"))
    pool = WirePool(server.url)
    assert pool.request("HEAD", f"{server.url}/s").content == b""
    assert pool.request("POST", f"{server.url}/s", data=b"x").status_code == 204
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    server = serve(lambda number, request: (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"))
    pool = WirePool(server.url)
    for _ in range(3):
        assert pool.request("POST", f"{server.url}/s", data=b"x", idempotent=False).ok
    assert server.connections == 3


def test_a_connection_closed_while_idle_for_a_while_is_noticed_before_sending(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    # The server silently closes after each answer (no "Connection: close"): after a second
    # of idleness the pool looks before reusing, so even a request that must not be repeated
    # goes out once, on a fresh connection.
    server = serve(lambda number, request: OK)
    server.close_after_reply = True
    pool = WirePool(server.url)
    assert pool.request("POST", f"{server.url}/s", data=b"1", idempotent=False).ok
    time.sleep(1.2)
    assert pool.request("POST", f"{server.url}/s", data=b"2", idempotent=False).ok
    assert server.connections == 2 and len(server.requests) == 2


def test_a_stale_connection_is_retried_only_for_idempotent_requests(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    # The first connection answers once, then drops the next request unanswered, as a server
    # closing a kept-alive connection just as a request arrives does.
    answered: set[int] = set()

    def reply(number: int, request: bytes) -> bytes | None:
        if number in answered:
            return None
        answered.add(number)
        return OK

    server = serve(reply)
    pool = WirePool(server.url)
    assert pool.request("GET", f"{server.url}/s").ok
    assert pool.request("GET", f"{server.url}/s").ok  # resent on a new connection
    assert server.connections == 2 and len(server.requests) == 3
    with pytest.raises(requests.ConnectionError, match="closed a kept-alive connection"):
        pool.request("POST", f"{server.url}/s", data=b"x", idempotent=False)
    assert len(server.requests) == 4  # sent once, never repeated


def test_failures_are_requests_exceptions(serve: Callable[[Reply], ScriptedServer]) -> None:
    silent = serve(lambda number, request: b"HTTP/1.1 200 OK\r\n")  # headers never end
    with pytest.raises(requests.ReadTimeout):
        WirePool(silent.url).request("GET", f"{silent.url}/s", timeout=0.3)
    truncated = serve(lambda number, request:
                      b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    truncated.close_after_reply = True
    with pytest.raises(requests.ConnectionError, match="ended after 3 of 10 bytes"):
        WirePool(truncated.url).request("GET", f"{truncated.url}/s", timeout=5)
    garbage = serve(lambda number, request: b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(requests.ConnectionError, match="not an HTTP/1.x status line"):
        WirePool(garbage.url).request("GET", f"{garbage.url}/s")
    port = _unused_port()
    with pytest.raises(requests.ConnectionError, match="NewConnectionError"):
        WirePool(f"http://127.0.0.1:{port}").request("GET", f"http://127.0.0.1:{port}/s")


def test_header_injection_and_foreign_urls_are_refused(
    serve: Callable[[Reply], ScriptedServer],
) -> None:
    server = serve(lambda number, request: OK)
    pool = WirePool(server.url)
    with pytest.raises(ValueError, match="invalid header"):
        pool.request("GET", f"{server.url}/s", headers={"X-A": "1\r\nX-Injected: 2"})
    with pytest.raises(ValueError, match="is not on"):
        pool.request("GET", "http://example.com/s")
    assert server.requests == []


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
