"""A local fake of the Anthropic Messages API, served over a real socket, for tests.

``POST /v1/messages`` with ``"stream": true`` answers with the real SSE wire format and event
sequence (``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``
with ``text_delta`` ..., ``content_block_stop``, ``message_delta`` with the stop reason and
usage, ``message_stop``) over chunked HTTP/1.1, at a chosen token rate. Point the real SDK at
it with ``base_url=fake.url`` (or ``ANTHROPIC_BASE_URL``).

Scriptable per test::

    with FakeAnthropic(reply="Hi there", tokens_per_second=200) as fake:
        fake.reply = lambda messages: f"You said {messages[-1]['content']}"
        fake.fail_next("429", retry_after=0.1)      # then the next request succeeds
        fake.fail_next("529", headers={"x-should-retry": "false"})  # extra response headers
        fake.fail_next("stream_error", after_tokens=3)
        fake.extra_events = [("future_event", {"type": "future_event"})]  # after the 1st token
        ...
        fake.requests        # every request body received, in order

Failure modes: ``"429"`` (``rate_limit_error`` with ``retry-after``), ``"529"``
(``overloaded_error``), ``"401"`` (``authentication_error``), ``"stream_error"`` (an
``event: error`` with ``overloaded_error`` after some tokens), ``"garbled"`` (an event whose
data is not JSON, after some tokens), ``"drop"`` (the connection is
closed mid-stream, without the final chunk), ``"drop_after_stop"`` (the whole answer and its
``message_stop``, then the connection closed without the final chunk),
``"drop_before_stop"`` (the whole answer and its ``message_delta`` with the stop reason, then
the connection closed before ``message_stop``), ``"stall"`` (the stream
stops sending after some tokens until the client goes away or the fake stops).

``python -m tests.fake_anthropic`` serves one on a port of its own, answering every message
with a labelled echo of it, so that the agents can run through the real SDK with no key and
no network (the README's "Running the parts separately" shows how).
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Reply = str | Callable[[list[dict[str, Any]]], str]

FAILURE_MODES = ("429", "529", "401", "stream_error", "garbled", "drop", "drop_after_stop",
                 "drop_before_stop", "stall")
_AFTER_THE_TEXT = ("drop_after_stop", "drop_before_stop")
_TOKEN_RE = re.compile(r"\s*\S+")
_HTTP_ERRORS = {
    "429": (429, "rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    "529": (529, "overloaded_error", "Overloaded"),
    "401": (401, "authentication_error", "invalid x-api-key"),
}


@dataclass(frozen=True)
class Failure:
    """One scripted failure, used by the next request."""

    mode: str
    after_tokens: int = 2
    retry_after: float | None = None
    headers: tuple[tuple[str, str], ...] = ()


class FakeAnthropic:
    """A threaded HTTP server imitating ``POST /v1/messages`` streaming; a context manager."""

    def __init__(self, reply: Reply = "Hello from the fake model.", *,
                 tokens_per_second: float = 200.0, model: str = "claude-fake-1",
                 host: str = "127.0.0.1", port: int = 0, record: bool = True) -> None:
        self.reply: Reply = reply
        self.record = record
        """Keep every request in `requests` and `headers` (not when serving as a command: a
        long session would keep them all)."""
        self.tokens_per_second = tokens_per_second
        self.first_token_delay = 0.0
        """Seconds between the stream's start and its first token (the model "thinking")."""
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.extra_events: list[tuple[str, dict[str, Any]]] = []
        """Events every stream sends right after its first token (e.g. ones clients skip)."""
        self.headers: list[dict[str, str]] = []
        self.tokens_sent = 0
        self.client_disconnected = threading.Event()
        """Set when a client went away while a stream was still being written."""
        self._failures: list[Failure] = []
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._server = _Server((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="fake-anthropic")
        self.url = f"http://{host}:{self._server.server_address[1]}"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        """Start serving (in a background thread)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release stalled streams."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting and inspection -----------------------------------------------------------------

    def fail_next(self, mode: str, *, times: int = 1, after_tokens: int = 2,
                  retry_after: float | None = None, headers: dict[str, str] | None = None,
                  ) -> None:
        """Make the next ``times`` requests fail with ``mode`` (see the module docstring).

        ``headers`` are added to an error status's response.
        """
        if mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; expected one of {FAILURE_MODES}")
        failure = Failure(mode, after_tokens, retry_after, tuple((headers or {}).items()))
        with self._lock:
            self._failures.extend([failure] * times)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` requests have arrived; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self.requests) >= count, timeout)

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        """The reply text for a request's ``messages``."""
        return self.reply(messages) if callable(self.reply) else self.reply

    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> Failure | None:
        with self._lock:
            if self.record:
                self.requests.append(body)
                self.headers.append(headers)
                self._lock.notify_all()
            return self._failures.pop(0) if self._failures else None


class _Server(http.server.ThreadingHTTPServer):
    """A client hanging up (a cancel, an abandoned stream) is routine here, not a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(fake: FakeAnthropic) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_MessagesHandler):
        owner = fake

    return Handler


class _MessagesHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeAnthropic

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path.split("?")[0] != "/v1/messages":
            self._json_error(404, "not_found_error", f"no route {self.path}")
            return
        failure = self.owner._record(body, {k.lower(): v for k, v in self.headers.items()})
        if failure is not None and failure.mode in _HTTP_ERRORS:
            status, kind, message = _HTTP_ERRORS[failure.mode]
            self._json_error(status, kind, message, failure.retry_after, failure.headers)
            return
        if not body.get("stream"):
            self._json_error(400, "invalid_request_error", "this fake only streams")
            return
        try:
            self._stream(body, failure)
        except (BrokenPipeError, ConnectionResetError):
            self.owner.client_disconnected.set()
            self.close_connection = True

    def _json_error(self, status: int, kind: str, message: str,
                    retry_after: float | None = None,
                    headers: tuple[tuple[str, str], ...] = ()) -> None:
        payload = json.dumps({"type": "error", "error": {"type": kind, "message": message}})
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        if retry_after is not None:
            self.send_header("retry-after", f"{retry_after:g}")
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, body: dict[str, Any], failure: Failure | None) -> None:
        messages = body.get("messages", [])
        tokens = _TOKEN_RE.findall(self.owner.reply_for(messages))
        input_tokens = _count_input_tokens(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._event("message_start", {"type": "message_start", "message": {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "content": [], "model": body.get("model", self.owner.model), "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }})
        self._event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})
        self._event("ping", {"type": "ping"})
        interval = 1.0 / self.owner.tokens_per_second if self.owner.tokens_per_second else 0.0
        mid_stream = failure if failure is not None and failure.mode not in _AFTER_THE_TEXT else None
        for index, token in enumerate(tokens):
            if mid_stream is not None and index == mid_stream.after_tokens:
                self._fail_mid_stream(mid_stream.mode)
                return
            wait = interval if index else self.owner.first_token_delay
            if wait and self.owner._stopping.wait(wait):
                return
            self._event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": token}})
            with self.owner._lock:
                self.owner.tokens_sent += 1
            if index == 0:
                for name, data in self.owner.extra_events:
                    self._event(name, data)
        self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
        self._event("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": len(tokens)}})
        if failure is not None and failure.mode == "drop_before_stop":
            self.close_connection = True
            return
        self._event("message_stop", {"type": "message_stop"})
        if failure is not None and failure.mode == "drop_after_stop":
            self.close_connection = True
            return
        self._chunk(b"")  # the terminating zero-length chunk

    def _fail_mid_stream(self, mode: str) -> None:
        if mode == "stream_error":
            self._event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                             "message": "Overloaded"}})
            self._chunk(b"")
        elif mode == "garbled":
            self._chunk(b"event: content_block_delta\ndata: {\"type\": \"content_blo\n\n")
            self._chunk(b"")
        elif mode == "drop":
            self.close_connection = True  # close without the terminating chunk
        elif mode == "stall":
            while not self.owner._stopping.wait(0.05):
                self._chunk(b": \n\n")  # an SSE comment; fails once the client has gone
            self.close_connection = True

    def _event(self, name: str, data: dict[str, Any]) -> None:
        self._chunk(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _count_input_tokens(body: dict[str, Any]) -> int:
    texts = [str(body.get("system") or "")]
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return sum(len(_TOKEN_RE.findall(text)) for text in texts)


def echo_reply(messages: list[dict[str, Any]]) -> str:
    """The command's answer: what the last message said, quoted, under a label."""
    content = messages[-1].get("content", "") if messages else ""
    if isinstance(content, list):
        content = " ".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    quoted = "\n".join(f"> {line}" for line in str(content).splitlines()) or "> (nothing)"
    return (f"**Fake Anthropic API** (this answer came through the real `anthropic` SDK, from a "
            f"local fake of the Messages API). Your message was:\n\n{quoted}\n")


def command_fake(host: str, port: int, tokens_per_second: float) -> FakeAnthropic:
    """The command's fake: it echoes, and keeps no request (it may serve for days)."""
    return FakeAnthropic(echo_reply, tokens_per_second=tokens_per_second, host=host, port=port,
                         record=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_anthropic",
        description="Serve a local fake of the Anthropic Messages API (streaming only) that "
                    "echoes each message: the agents' real SDK path, with no key and no network.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=4450, help="port to listen on, 0 for any free one (4450)")
    parser.add_argument("--tokens-per-second", type=float, default=30.0,
                        help="pace of the answers, 0 for all at once (30)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0 to 65535, not {args.port}")
    if not 0 <= args.tokens_per_second <= 100_000:
        parser.error(f"--tokens-per-second must be 0 to 100000, not {args.tokens_per_second:g}")
    try:
        fake = command_fake(args.host, args.port, args.tokens_per_second)
    except OSError as error:
        print(f"fake Anthropic API: cannot listen on {args.host}:{args.port}: "
              f"{error.strerror or error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    fake.start()
    print(f"fake Anthropic Messages API on {fake.url} (ANTHROPIC_BASE_URL={fake.url}, "
          f"any ANTHROPIC_API_KEY)", flush=True)
    while not stop.wait(1.0):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
