"""Many live HTTP responses (SSE) held by one epoll thread, every byte logged with its time.

Holding 1,000 SSE readers must not make the client the bottleneck, so the receiving loop does
as little as possible per wake-up: ``recv``, append ``(time.time(), bytes)`` to the reader's
log and, when a `Watch` is armed, look for its marker in the new bytes. Parsing (HTTP head,
chunked framing, SSE events) happens afterwards, from the logs, with `parse_log`. Times are
wall-clock (``time.time()``) so that they compare with stamps made in other processes.

While a `LiveMux` is open the bench process's garbage collector is paused: a full collection
of this process's objects stopped the receiving thread for 30-50 ms, which showed up as
latency of whichever server was being measured.
"""

from __future__ import annotations

import gc
import select
import socket
import threading
import time
from dataclasses import dataclass, field

from streams_server.bench.httpclient import build_request, open_socket, split_base_url

_RECV = 64 * 1024


@dataclass
class Watch:
    """Wait until ``expected`` readers have received bytes containing ``marker``."""

    marker: bytes
    expected: int
    hits: dict[int, float] = field(default_factory=dict)
    """reader index -> wall-clock time of the ``recv`` that completed the marker."""
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float) -> bool:
        return self.done.wait(timeout)


@dataclass
class LiveReader:
    """One live response being received; ``log`` holds (arrival time, bytes) pairs."""

    index: int
    sock: socket.socket
    opened_at: float
    log: list[tuple[float, bytes]] = field(default_factory=list)
    carry: bytes = b""
    closed_at: float | None = None

    @property
    def received(self) -> int:
        return sum(len(data) for _, data in self.log)


class LiveMux:
    """An epoll loop on its own thread receiving for any number of `LiveReader`s."""

    def __init__(self) -> None:
        self.readers: list[LiveReader] = []
        self._by_fd: dict[int, LiveReader] = {}
        self._epoll = select.epoll()
        self._watch: Watch | None = None
        self._stop = threading.Event()
        self.busy_s = 0.0
        """CPU-ish time the loop spent handling readable sockets (wall time inside handlers)."""
        self.wakeups = 0
        self._collecting = gc.isenabled()
        gc.disable()
        self._thread = threading.Thread(target=self._run, name="live-mux", daemon=True)
        self._thread.start()

    def open(self, url: str, method: str = "GET", body: bytes = b"",
             headers: dict[str, str] | None = None) -> LiveReader:
        """Connect (blocking), send the request, and start receiving its response."""
        host, port, _ = split_base_url(url)
        path = url[url.index("/", len("http://")):]
        sock = open_socket(host, port, timeout=10.0)
        sock.sendall(build_request(method, host, port, path, body, headers))
        sock.setblocking(False)
        reader = LiveReader(len(self.readers), sock, time.time())
        self.readers.append(reader)
        self._by_fd[sock.fileno()] = reader
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        return reader

    def watch(self, marker: bytes, expected: int | None = None) -> Watch:
        """Arm a new watch (replacing any other); ``expected`` defaults to all open readers."""
        count = expected if expected is not None else sum(
            1 for r in self.readers if r.closed_at is None)
        watch = Watch(marker, count)
        for reader in self.readers:
            reader.carry = b""
        self._watch = watch
        if count == 0:
            watch.done.set()
        return watch

    def open_count(self) -> int:
        return sum(1 for r in self.readers if r.closed_at is None)

    def close(self) -> None:
        """Stop the loop and close every connection."""
        if self._collecting:
            gc.enable()
        self._stop.set()
        self._thread.join(timeout=5.0)
        for reader in self.readers:
            try:
                reader.sock.close()
            except OSError:
                pass
        self._epoll.close()

    def __enter__(self) -> LiveMux:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._epoll.poll(0.05)
            except OSError:
                return
            if not events:
                continue
            started = time.perf_counter()
            self.wakeups += 1
            for fd, _ in events:
                reader = self._by_fd.get(fd)
                if reader is not None:
                    self._receive(fd, reader)
            self.busy_s += time.perf_counter() - started

    def _receive(self, fd: int, reader: LiveReader) -> None:
        try:
            data = reader.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        now = time.time()
        if not data:
            reader.closed_at = now
            self._epoll.unregister(fd)
            del self._by_fd[fd]
            return
        reader.log.append((now, data))
        watch = self._watch
        if watch is not None and reader.index not in watch.hits:
            hay = reader.carry + data
            if watch.marker in hay:
                watch.hits[reader.index] = now
                if len(watch.hits) >= watch.expected:
                    watch.done.set()
            reader.carry = hay[-len(watch.marker):]


# -- parsing the logs afterwards ------------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    """One SSE event and the wall-clock time its last byte arrived."""

    time: float
    event: str
    data: str


@dataclass
class ParsedResponse:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[SseEvent] = field(default_factory=list)


class _Parser:
    """Incremental HTTP response + chunked + SSE parser."""

    def __init__(self) -> None:
        self.result = ParsedResponse()
        self._raw = bytearray()  # bytes not yet consumed by the HTTP layer
        self._head_done = False
        self._chunked = False
        self._chunk_left = 0  # bytes of the current chunk still to come; -1: expect CRLF
        self._text = ""  # decoded body text not yet split into events
        self._finished = False

    def feed(self, at: float, data: bytes) -> None:
        self._raw += data
        if not self._head_done and not self._parse_head():
            return
        body = self._take_body()
        if body:
            self._text += body.decode("utf-8", errors="replace")
            self._split_events(at)

    def _parse_head(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self._raw[:end]).decode("latin-1").split("\r\n")
        del self._raw[:end + 4]
        self.result.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.result.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.result.headers.get("transfer-encoding", "").lower()
        self._head_done = True
        return True

    def _take_body(self) -> bytes:
        if not self._chunked:
            body = bytes(self._raw)
            self._raw.clear()
            return body
        out = bytearray()
        while self._raw and not self._finished:
            if self._chunk_left > 0:
                take = min(self._chunk_left, len(self._raw))
                out += self._raw[:take]
                del self._raw[:take]
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_left = -1
            elif self._chunk_left < 0:
                if len(self._raw) < 2:
                    break
                del self._raw[:2]
                self._chunk_left = 0
            else:
                end = self._raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(self._raw[:end]).split(b";", 1)[0], 16)
                del self._raw[:end + 2]
                if size == 0:
                    self._finished = True
                self._chunk_left = size
        return bytes(out)

    def _split_events(self, at: float) -> None:
        text = self._text.replace("\r\n", "\n")
        *blocks, self._text = text.split("\n\n")
        for block in blocks:
            event, data = "message", []
            for line in block.split("\n"):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(" ") else value)
            if data or event != "message":
                self.result.events.append(SseEvent(at, event, "\n".join(data)))


def parse_log(log: list[tuple[float, bytes]]) -> ParsedResponse:
    """Replay a reader's log into its status, headers and timed SSE events."""
    parser = _Parser()
    for at, data in log:
        parser.feed(at, data)
    return parser.result
