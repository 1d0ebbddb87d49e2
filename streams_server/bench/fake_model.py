"""A fake Anthropic Messages API for the chat benchmark (run as a module, see ``--help``).

``POST /v1/messages`` with ``"stream": true`` answers with the real SSE event sequence
(``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` x N,
``content_block_stop``, ``message_delta``, ``message_stop``) at a fixed token rate. Every token
is `` T<microseconds since the epoch>`` stamped when it is written, so whoever finally receives
it (through the agent and a durable stream, or directly) can compute its latency; the last
token is `` ENDOFANSWER``. Served by gevent: hundreds of slow streams cost a greenlet each.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import uuid
from typing import Any

import gevent
from gevent.server import StreamServer
from gevent.socket import socket as GSocket

END_TOKEN = "ENDOFANSWER"
STAMP_PATTERN = rb"T(\d{16})"
"""What a reader searches for: a token's emit time in microseconds."""


class FakeModel:
    """Streams ``tokens`` stamped tokens per answer at ``rate`` tokens per second."""

    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens = tokens
        self.interval = 1.0 / rate

    def handle(self, sock: GSocket, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        try:
            while self._one_request(sock, reader):
                pass
        except OSError:
            pass
        finally:
            reader.close()
            sock.close()

    def _one_request(self, sock: GSocket, reader: Any) -> bool:
        line = reader.readline()
        if not line:
            return False
        method, path = line.decode("latin-1").split(" ")[:2]
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = reader.read(int(headers.get("content-length") or 0))
        request = json.loads(body or b"{}")
        if method != "POST" or path.split("?")[0] != "/v1/messages" or not request.get("stream"):
            _send_json(sock, 400, {"type": "error", "error": {
                "type": "invalid_request_error", "message": "this fake only streams messages"}})
            return True
        self._stream(sock, request)
        return True

    def _stream(self, sock: GSocket, request: dict[str, Any]) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                     b"request-id: req_bench\r\n\r\n")
        model = request.get("model", "claude-bench")
        _event(sock, "message_start", {"type": "message_start", "message": {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "content": [], "model": model, "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1}}})
        _event(sock, "content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})
        _event(sock, "ping", {"type": "ping"})
        started = time.monotonic()
        for index in range(self.tokens):
            delay = started + index * self.interval - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            text = f" {END_TOKEN}" if index == self.tokens - 1 else f" T{time.time_ns() // 1000}"
            sock.sendall(_text_delta(text))
        _event(sock, "content_block_stop", {"type": "content_block_stop", "index": 0})
        _event(sock, "message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                       "usage": {"output_tokens": self.tokens}})
        _event(sock, "message_stop", {"type": "message_stop"})
        sock.sendall(b"0\r\n\r\n")


_DELTA_HEAD = b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, ' \
    b'"delta": {"type": "text_delta", "text": '
_DELTA_TAIL = b"}}\n\n"


def _text_delta(text: str) -> bytes:
    """A ``content_block_delta`` event, the same bytes as `_event` would send, made without
    building and encoding a dict per token (this process's CPU is taken from the system under
    test, which shares the machine)."""
    return _chunk(b"%s%s%s" % (_DELTA_HEAD, json.dumps(text).encode(), _DELTA_TAIL))


def _event(sock: GSocket, name: str, data: dict[str, Any]) -> None:
    sock.sendall(_chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()))


def _chunk(payload: bytes) -> bytes:
    """``payload`` as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _send_json(sock: GSocket, status: int, data: dict[str, Any]) -> None:
    payload = json.dumps(data).encode()
    sock.sendall(b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (status, len(payload), payload))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams_server.bench.fake_model",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=150, help="tokens per answer (150)")
    parser.add_argument("--tokens-per-second", type=float, default=50.0)
    args = parser.parse_args(argv)
    model = FakeModel(args.tokens, args.tokens_per_second)
    server = StreamServer((args.host, args.port), model.handle, backlog=1024)
    server.start()
    host, port = server.address[:2]
    print(f"fake model: listening on http://{host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
