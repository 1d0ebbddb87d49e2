"""Live reads: follow a JSON stream by long-poll or SSE, reconnecting until closure or stop.

A `Tail` is an iterator of `ReadResult` batches. It resumes each request from the previous
batch's ``next_offset`` and echoes the server's cursor (PROTOCOL.md 5.7, 5.8, 10.1). Transient
failures (connection errors, ``5xx``, ``429``) are retried forever with backoff, logged, while
the stop event stays clear; errors that retrying cannot fix (``404``, ``410``, ``400``, ...)
end the iteration by raising. It ends normally when the stream is closed and fully read, or
when stopped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import requests
import urllib3

from agent_actors import errors
from agent_actors._http import NO_RETRY, Stopped, connection_failure, raise_for_status
from agent_actors._interruptible import InterruptibleSession
from agent_actors._sse import SseParser
from agent_actors.stream_types import ReadResult

if TYPE_CHECKING:
    from agent_actors.streams_client import StreamsClient

log = logging.getLogger("agent_actors.streams_client")

LiveMode = Literal["long-poll", "sse"]


class Tail:
    """An iterator over a stream's batches, live; see the module docstring.

    `close()` may be called from any thread: it sets the stop event and aborts the request in
    flight, so the iterating thread finishes promptly instead of after the long-poll timeout.
    """

    def __init__(
        self,
        client: StreamsClient,
        path: str,
        offset: str,
        *,
        live: LiveMode,
        stop_event: threading.Event | None,
        yield_empty: bool,
        request_timeout: float,
    ) -> None:
        if live not in ("long-poll", "sse"):
            raise ValueError(f"live must be 'long-poll' or 'sse', not {live!r}")
        self.client = client
        self.path = path
        self.url = client.stream_url(path)  # validates the path once, up front
        self.live = live
        self.offset = offset
        self.cursor: str | None = None
        self.stop_event = stop_event or threading.Event()
        self.yield_empty = yield_empty
        self.request_timeout = request_timeout
        self._session = _session_like(client.transport.session)
        self._answered = False  # no read has been answered yet
        self._iterator = self._run()

    def __iter__(self) -> Iterator[ReadResult]:
        return self

    def __next__(self) -> ReadResult:
        return next(self._iterator)

    def close(self) -> None:
        """Stop iterating (thread-safe): sets the stop event and aborts the open request."""
        self.stop_event.set()
        self._session.interrupt()

    @property
    def stopped(self) -> bool:
        """True once the stop event is set."""
        return self.stop_event.is_set()

    def _run(self) -> Iterator[ReadResult]:
        failures = 0
        try:
            while not self.stop_event.is_set():
                try:
                    for batch in self._one_request():
                        if failures:
                            log.info("tail of %s: following again after %d failed attempt(s)",
                                     self.path, failures)
                        failures = 0
                        self.offset, self.cursor = batch.next_offset, batch.cursor or self.cursor
                        if batch.messages or batch.closed or self.yield_empty:
                            yield batch
                        if batch.closed:
                            return
                except (errors.StreamsUnavailable, requests.RequestException, ValueError) as exc:
                    if self.stop_event.is_set():
                        return
                    if _is_read_timeout(exc):
                        log.debug("tail of %s: read timeout, reconnecting", self.path)
                        continue
                    delay = self.client.transport.retry.delay(failures)
                    failures += 1
                    # One warning per outage: every live read of a process retries at once,
                    # and a line per attempt and per read buried everything else.
                    log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                            "tail of %s (%s): %s; reconnecting in %.2fs%s", self.path,
                            self.live, _describe(exc), delay,
                            " (until it answers; attempts are logged at debug level)"
                            if failures == 1 else "")
                    if self.stop_event.wait(delay):
                        return
        except Stopped:
            return
        finally:
            self._session.close()

    def _one_request(self) -> Iterator[ReadResult]:
        if self.live == "sse":
            yield from self._sse_request()
        else:
            yield self._long_poll_request()

    def _params(self) -> dict[str, str]:
        params = {"live": self.live, "offset": self.offset}
        if self.cursor is not None:
            params["cursor"] = self.cursor
        return dict(sorted(params.items()))  # lexicographic order helps CDN caching (10.1)

    def _long_poll_request(self) -> ReadResult:
        params = self._params()
        if self.yield_empty and not self._answered:
            # A first read without `live`: at the end of the stream it says "up to date" at
            # once, where a long-poll would wait out the server's timeout first.
            del params["live"]
        response = self.client.transport.request(
            "GET", self.url, params=params,
            retry=NO_RETRY, timeout=self.request_timeout, stop_event=self.stop_event,
            session=self._session,
        )
        with response:
            raise_for_status(response)
            result = self.client.parse_read(response, self.offset)
            self._answered = True
            return result

    def _sse_request(self) -> Iterator[ReadResult]:
        response = self._session.get(
            self.url, params=self._params(), stream=True,
            headers=self.client.transport.headers({"Accept": "text/event-stream",
                                                   "Accept-Encoding": "identity"}),
            timeout=self.request_timeout,
        )
        with response:
            if response.status_code >= 500 or response.status_code == 429:
                raise errors.StreamsUnavailable(f"HTTP {response.status_code}",
                                                status=response.status_code)
            raise_for_status(response)
            if response.headers.get("Stream-SSE-Data-Encoding"):  # base64: a binary stream
                raise _not_json(response.headers["Stream-SSE-Data-Encoding"] + "-encoded data")
            received = False
            for batch in self._sse_batches(response):
                received = True
                yield batch
            if not received:
                raise errors.StreamsUnavailable("SSE connection ended before any control event")

    def _sse_batches(self, response: requests.Response) -> Iterator[ReadResult]:
        parser = SseParser()
        messages: list[Any] = []
        for chunk in _raw_chunks(response):
            for event in parser.feed(chunk):
                if event.event == "data":
                    messages.extend(_json_array(event.data))
                elif event.event == "control":
                    yield _control_batch(json.loads(event.data), messages, self.offset)
                    messages = []


def _control_batch(control: Any, messages: list[Any], offset: str) -> ReadResult:
    if not isinstance(control, dict):  # (a ValueError is a malformed event, retried)
        raise ValueError(f"SSE control event is not a JSON object: {control!r:.100}")
    closed = control.get("streamClosed") is True
    return ReadResult(
        messages=tuple(messages),
        next_offset=str(control.get("streamNextOffset") or offset),
        up_to_date=closed or control.get("upToDate") is True,
        closed=closed,
        cursor=control.get("streamCursor"),
    )


def _json_array(text: str) -> list[Any]:
    """A data event's messages. The server sends a JSON stream's as an array, so anything
    else is a stream of another type (retried, it would fail for good)."""
    try:
        value = json.loads(text) if text.strip() else []
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise _not_json(f"data {text[:100]!r}")
    return value


def _not_json(what: str) -> errors.ContentTypeMismatch:
    return errors.ContentTypeMismatch(f"not a JSON stream: its SSE events carry {what}",
                                      method="GET")


def _raw_chunks(response: requests.Response) -> Iterator[bytes]:
    """Bytes as they arrive (``read1``), so events are not held back to fill a buffer."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 < 2
        yield from response.iter_content(chunk_size=None)
        return
    while True:
        try:
            chunk = read1(65536)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.ReadTimeout(str(exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.ConnectionError(str(exc)) from exc
        if not chunk:
            return
        yield chunk


def _session_like(template: requests.Session) -> InterruptibleSession:
    """A private interruptible session with the template's headers, auth, TLS and proxies."""
    session = InterruptibleSession()
    session.headers.update(template.headers)
    session.auth = template.auth
    session.verify = template.verify
    session.cert = template.cert
    session.proxies = dict(template.proxies)
    session.trust_env = template.trust_env
    return session


def _is_read_timeout(exc: BaseException) -> bool:
    return isinstance(exc, requests.ReadTimeout) or isinstance(exc.__cause__, requests.ReadTimeout)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, errors.StreamsUnavailable):
        return exc.reason
    if isinstance(exc, (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError)):
        return connection_failure(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__

