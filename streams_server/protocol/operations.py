"""The stream operations of section 5: requests in, replies out, storage underneath."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import unquote

from ..config import StreamsSettings
from ..errors import BadRequest, Gone, MethodNotAllowed, StreamError
from ..offsets import START_SENTINEL, TAIL_SENTINEL, format_offset, parse_offset
from ..storage import writes
from ..storage.engine import StreamStore
from ..storage.models import (
    Entries,
    ForkSpec,
    ReadResult,
    StreamInfo,
    is_json_content_type,
    is_text_content_type,
)
from ..text import has_control_characters
from . import bodies, headers, jsonmode, sse
from .cursor import later_cursor, next_cursor
from .messages import Reply, StreamRequest

DEFAULT_CONTENT_TYPE = "application/octet-stream"
LIVE_MODES = ("long-poll", "sse")
SSE_CACHE_ENTRIES = 512
SSE_CACHE_BYTES = 16 * 1024 * 1024
"""What the shared encodings of SSE batches may hold: the fan-out of one append to many
readers needs only the latest few, while catch-up batches are up to a chunk (1 MiB) each."""


class StreamOperations:
    """Carries out protocol requests against one `StreamStore`."""

    def __init__(self, store: StreamStore, settings: StreamsSettings, stream_root: str) -> None:
        self.store = store
        self.settings = settings
        self.stream_root = stream_root.rstrip("/") + "/"
        # Encoded SSE batches by (stream, range, encoding, cursor, flags): stream data at a
        # range never changes, so every reader of the same range shares one encoding.
        self._sse_cache: dict[tuple[object, ...], tuple[bytes, str]] = {}
        self._sse_cache_bytes = 0  # about (threads add to it unlocked); reset with the cache

    def handle(self, request: StreamRequest) -> Reply:
        handler = {
            "PUT": self.create,
            "POST": self.append,
            "GET": self.read,
            "HEAD": self.head,
            "DELETE": self.delete,
        }.get(request.method)
        if handler is None:
            raise MethodNotAllowed(
                f"{request.method} is not a stream operation",
                headers={"Allow": "GET, HEAD, POST, PUT, DELETE, OPTIONS"},
            )
        return handler(request)

    # ------------------------------------------------------------------ create (5.1, 4.2)

    def create(self, request: StreamRequest) -> Reply:
        if any(segment in (".", "..") for segment in request.path.split("/")):
            # Browsers and fetch resolve these away: such a stream could not be reached from
            # a page, and `a/../b` would read as `b` there (section 12.2: sanitise paths).
            raise BadRequest("a stream path must not have '.' or '..' segments",
                             code="INVALID_PATH")
        h = request.headers
        given_type = headers.stream_content_type(h)
        if given_type is not None:
            headers.check_utf8_charset(given_type)
        content_type_given = given_type is not None
        content_type = given_type or DEFAULT_CONTENT_TYPE
        expiry = headers.expiry(h)
        closed = headers.flag(h, "Stream-Closed")
        fork = self._fork_spec(request)
        if fork is not None and not content_type_given:
            try:  # the initial body is parsed by the type the fork will inherit
                content_type = self.store.info(fork.source_path).content_type
            except Gone:  # soft-deleted: storage answers 409 for a new fork (4.2), 200 for
                pass  # the same fork again; a body is ignored either way
        bodies.check_declared_length(request.content_length, self.settings)
        entries = self._body_entries(request, content_type, allow_empty_array=True)
        result = self.store.create(
            request.path,
            content_type=content_type,
            content_type_given=content_type_given,
            expiry=expiry,
            closed=closed,
            entries=entries,
            fork=fork,
        )
        reply = Reply(201 if result.created else 200, self._metadata_headers(result.info))
        if result.created:
            reply.headers["Location"] = request.url
        return reply

    def _fork_spec(self, request: StreamRequest) -> ForkSpec | None:
        h = request.headers
        source = h.get("Stream-Forked-From")
        offset = h.get("Stream-Fork-Offset")
        sub_offset = h.get("Stream-Fork-Sub-Offset")
        if source is None:
            if offset is not None or sub_offset is not None:
                raise BadRequest(
                    "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From",
                    code="INVALID_FORK",
                )
            return None
        # The header holds the source URL's path component, percent-encoded like any URL
        # path (4.2); stream paths are stored decoded, as the routes receive them.
        try:
            source_path = self._relative_path(unquote(source.strip(), errors="strict"))
        except UnicodeError:
            raise BadRequest("Stream-Forked-From is not UTF-8 once percent-decoded",
                             code="INVALID_FORK") from None
        if not source_path:
            raise BadRequest("Stream-Forked-From names no stream", code="INVALID_FORK")
        if has_control_characters(source_path):
            raise BadRequest("Stream-Forked-From contains control characters",
                             code="INVALID_FORK")
        return ForkSpec(
            source_path=source_path,
            offset=None if offset is None else parse_offset(offset.strip(), field="Stream-Fork-Offset"),
            sub_offset=0
            if sub_offset is None
            else headers.non_negative_integer(sub_offset, "Stream-Fork-Sub-Offset"),
        )

    def _relative_path(self, value: str) -> str:
        """A stream path from a URL path such as `/v1/stream/a/b` (or already `a/b`)."""
        if value.startswith(self.stream_root):
            return value[len(self.stream_root) :]
        return value.lstrip("/")

    # ------------------------------------------------------------------ append and close (5.2, 5.3)

    def append(self, request: StreamRequest) -> Reply:
        h = request.headers
        close = headers.flag(h, "Stream-Closed")
        producer = headers.producer(h)
        stream_seq = headers.stream_seq(h)
        info = self.store.info(request.path)  # 404/410 before reading a body for nothing
        bodies.check_declared_length(request.content_length, self.settings)
        try:  # 409 only for a type that is one but not the stream's; a malformed one is a 400
            content_type, unusable_type = headers.stream_content_type(h), None
        except BadRequest as unusable:  # refused only with a body: an empty one has no type
            content_type, unusable_type = None, unusable  # (5.2)
        if content_type is None:
            entries = bodies.read_spooled(request.body, self.settings)
            if entries:
                raise _refusal(info, unusable_type or BadRequest(
                    "an append with a body needs a Content-Type", code="MISSING_CONTENT_TYPE"))
        else:
            try:
                entries = self._body_entries(request, content_type, allow_empty_array=False)
            except BadRequest as bad:
                # A body that is not what its Content-Type says is refused after what the
                # stream refuses any data for.
                raise _refusal(info, bad, content_type) from None
        if not entries and not close:
            raise _refusal(info, BadRequest(
                "an append needs a body (only a close with Stream-Closed: true may be empty)",
                code="EMPTY_BODY"))
        result = self.store.append(
            request.path,
            entries,
            content_type=content_type,
            stream_seq=stream_seq,
            producer=producer,
            close=close,
        )
        new_data = bool(entries) and not result.duplicate
        status = 200 if producer is not None and new_data else 204
        reply = Reply(status, {"Stream-Next-Offset": format_offset(result.info.tail)})
        if result.info.closed:
            reply.headers["Stream-Closed"] = "true"
        if result.producer_epoch is not None:
            reply.headers["Producer-Epoch"] = str(result.producer_epoch)
            reply.headers["Producer-Seq"] = str(result.producer_seq)
        return reply

    def _body_entries(
        self, request: StreamRequest, content_type: str, *, allow_empty_array: bool
    ) -> Entries:
        if is_json_content_type(content_type):
            body = bodies.read_all(request.body, self.settings)
            if not body:
                return []
            return jsonmode.split_messages(body, allow_empty_array=allow_empty_array,
                                           max_messages=self.settings.max_json_messages)
        return bodies.read_spooled(request.body, self.settings,
                                   text=is_text_content_type(content_type))

    # ------------------------------------------------------------------ delete and head (5.4, 5.5)

    def delete(self, request: StreamRequest) -> Reply:
        self.store.delete(request.path)
        return Reply(204)

    def head(self, request: StreamRequest) -> Reply:
        info = self.store.info(request.path)
        reply = Reply(200, self._metadata_headers(info))
        reply.headers["Cache-Control"] = "no-store"
        return reply

    def _metadata_headers(self, info: StreamInfo) -> dict[str, str]:
        out = {"Content-Type": info.content_type, "Stream-Next-Offset": format_offset(info.tail)}
        if info.expiry.ttl_seconds is not None:
            out["Stream-TTL"] = str(info.expiry.ttl_seconds)
        if info.expiry.expires_at_ms is not None:
            moment = headers.UNIX_EPOCH + timedelta(milliseconds=info.expiry.expires_at_ms)
            out["Stream-Expires-At"] = moment.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            )
        if info.closed:
            out["Stream-Closed"] = "true"
        return out

    # ------------------------------------------------------------------ reads (5.6, 5.7, 5.8)

    def read(self, request: StreamRequest) -> Reply:
        for name in ("offset", "live", "cursor"):
            if name in request.repeated_args:  # which one was meant is not ours to guess
                raise BadRequest(f"{name} is given more than once", code="DUPLICATE_PARAMETER")
        live = request.args.get("live")
        if live is not None and live not in LIVE_MODES:
            raise BadRequest(
                f"live must be long-poll or sse, got {live[:40]!r}", code="INVALID_LIVE_MODE"
            )
        offset = request.args.get("offset")
        if live is not None and offset is None:
            raise BadRequest(f"live={live} needs an offset", code="MISSING_OFFSET")
        if offset == "":
            raise BadRequest("offset must not be empty", code="INVALID_OFFSET")
        at_tail = offset == TAIL_SENTINEL
        position = None if at_tail or offset is None else parse_offset(offset, now_too=True)
        if offset is None:
            position = 0
        cursor = request.args.get("cursor")
        if live == "sse":
            return self._sse(request, position, cursor)
        if at_tail and live is None:
            return self._tail_reply(request)
        result = self.store.read(request.path, position, self.settings.max_chunk_bytes)
        self.store.touch(result.info)
        if live == "long-poll":
            return self._long_poll(request, result, cursor)
        return self._data_reply(request, result, cursor=None)

    def _tail_reply(self, request: StreamRequest) -> Reply:
        info = self.store.info(request.path)
        self.store.touch(info)
        reply = Reply(200, {"Content-Type": info.content_type})
        reply.body = b"[]" if info.is_json else b""
        reply.headers["Stream-Next-Offset"] = format_offset(info.tail)
        reply.headers["Stream-Up-To-Date"] = "true"
        reply.headers["Cache-Control"] = "no-store"
        if info.closed:
            reply.headers["Stream-Closed"] = "true"
        return reply

    def _long_poll(self, request: StreamRequest, result: ReadResult, cursor: str | None) -> Reply:
        if result.entries or result.closed_at_end:
            if not result.entries:
                return self._no_content(result, cursor)
            return self._data_reply(request, result, cursor=next_cursor(cursor))
        stream_id = result.info.stream_id
        self.store.wait_for_data(stream_id, result.next_position, self.settings.long_poll_timeout_s)
        result = self.store.read(
            request.path, result.start, self.settings.max_chunk_bytes, stream_id=stream_id
        )
        if result.entries:
            return self._data_reply(request, result, cursor=next_cursor(cursor))
        return self._no_content(result, cursor)

    def _no_content(self, result: ReadResult, cursor: str | None) -> Reply:
        reply = Reply(204, {"Stream-Next-Offset": format_offset(result.next_position)})
        reply.headers["Stream-Up-To-Date"] = "true"
        reply.headers["Cache-Control"] = "no-store"
        if result.closed_at_end:
            reply.headers["Stream-Closed"] = "true"
        else:
            reply.headers["Stream-Cursor"] = next_cursor(cursor)
        return reply

    def _data_reply(self, request: StreamRequest, result: ReadResult, cursor: str | None) -> Reply:
        info = result.info
        # The stream by its id and its creation time: ids start again from 1 in a database
        # made anew (a server that keeps its streams in memory, restarted).
        etag = (f'"{info.stream_id}.{info.created_at_ms}:{format_offset(result.start)}'
                f':{format_offset(result.next_position)}')
        etag += ':c"' if result.closed_at_end else '"'
        reply = Reply(200, {"Content-Type": info.content_type, "ETag": etag})
        reply.headers["Stream-Next-Offset"] = format_offset(result.next_position)
        if result.up_to_date:
            reply.headers["Stream-Up-To-Date"] = "true"
        if result.closed_at_end:
            reply.headers["Stream-Closed"] = "true"
        if cursor is not None and not result.closed_at_end:
            reply.headers["Stream-Cursor"] = cursor
        if result.entries or result.closed_at_end:
            reply.headers["Cache-Control"] = self._catch_up_cache_control(info)
        else:  # the tail of an open stream: the next append changes this answer
            reply.headers["Cache-Control"] = "no-store"
        if _etag_matches(request.headers.get("If-None-Match"), etag):
            reply.status = 304
            return reply
        reply.body = (
            jsonmode.encode_array(result.entries) if info.is_json else b"".join(result.entries)
        )
        return reply

    def _catch_up_cache_control(self, info: StreamInfo) -> str:
        """Data at an offset never changes, so caches may keep it; but not past the stream's
        end of life (section 5.6: derived from TTL/expiry). A sliding TTL was just reset by
        this read, and reads a cache answers do not reset it."""
        visibility = self.settings.cache_visibility
        expiry = info.expiry
        if expiry.ttl_seconds is None and expiry.expires_at_ms is None:
            return f"{visibility}, max-age=60, stale-while-revalidate=300"
        life_s = 60
        if expiry.ttl_seconds is not None:
            life_s = min(life_s, expiry.ttl_seconds)
        if expiry.expires_at_ms is not None:
            life_s = min(life_s, (expiry.expires_at_ms - self.store.now_ms()) // 1000)
        return f"{visibility}, max-age={life_s}" if life_s > 0 else "no-store"

    def _sse(self, request: StreamRequest, position: int | None, cursor: str | None) -> Reply:
        info = self.store.info(request.path)
        self.store.touch(info)
        if position is not None and position > info.tail:
            raise BadRequest("offset is beyond the stream's tail", code="OFFSET_OUT_OF_RANGE")
        start = self._resumed_at(request, position)
        if start is None:
            start = info.tail if position is None else position
            # Validate the offset before committing to a 200 streaming response.
            self.store.read(request.path, start, 1)
        encoded = sse.uses_base64(info.content_type)
        reply = Reply(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        reply.headers["X-Accel-Buffering"] = "no"
        if encoded:
            reply.headers["stream-sse-data-encoding"] = "base64"
        reply.body = self._sse_events(request.path, info.stream_id, start, cursor, encoded)
        return reply

    def _resumed_at(self, request: StreamRequest, position: int | None) -> int | None:
        """Where an `EventSource` that reconnects by itself (after the server ends a response,
        section 10.2) left off: its `Last-Event-ID` is the last event's offset, as the events'
        `id` fields give it. Without that it would ask again from the URL's offset and get
        everything since then twice. Anything else there (not an offset of this stream, or
        before the URL's) is not ours to interpret and is ignored."""
        last_id = (request.headers.get("Last-Event-ID") or "").strip()
        if not last_id or last_id in (START_SENTINEL, TAIL_SENTINEL):  # ids are offsets only
            return None
        try:
            resumed = parse_offset(last_id)
            if position is not None and resumed < position:
                return None
            self.store.read(request.path, resumed, 1)  # within the stream, at a boundary
        except StreamError:
            return None
        return resumed

    def _sse_batch(self, result: ReadResult, cursor: str, encoded: bool) -> bytes:
        """The data event (if any) and control event for one read. The data event is encoded
        once and shared: a thousand readers woken by one append all ask for the same bytes."""
        key = (result.info.stream_id, result.start, result.next_position, encoded)
        cached = self._sse_cache.get(key)
        if cached is None:
            data = b""
            next_offset = format_offset(result.next_position)
            if result.entries:
                payload = (
                    jsonmode.encode_array(result.entries)
                    if result.info.is_json
                    else b"".join(result.entries)
                )
                data = sse.event("data", sse.data_event_text(payload, base64_encoded=encoded),
                                 event_id=next_offset)
            cached = (data, next_offset)
            if (len(self._sse_cache) >= SSE_CACHE_ENTRIES
                    or self._sse_cache_bytes + len(data) > SSE_CACHE_BYTES):
                self._sse_cache.clear()
                self._sse_cache_bytes = 0
            self._sse_cache[key] = cached
            self._sse_cache_bytes += len(data)
        data, next_offset = cached
        return data + sse.control_event(next_offset, cursor=cursor, up_to_date=result.up_to_date,
                                        closed=result.closed_at_end)

    def _sse_events(
        self, path: str, stream_id: int, position: int, cursor: str | None, encoded: bool
    ) -> Iterator[bytes]:
        # A live reader from the first event to the last, catching up too: its stream must
        # not expire under it (section 5.1).
        with self.store.live_reader(stream_id):
            yield from self._sse_loop(path, stream_id, position, cursor, encoded)

    def _sse_loop(
        self, path: str, stream_id: int, position: int, cursor: str | None, encoded: bool
    ) -> Iterator[bytes]:
        settings = self.settings
        deadline = time.monotonic() + settings.sse_max_duration_s
        preamble = sse.retry_field(settings.sse_retry_ms)
        sent_control = False
        while True:
            try:
                result = self.store.read(path, position, settings.max_chunk_bytes,
                                         stream_id=stream_id)
            except Exception:  # deleted or expired while followed: end the stream
                return
            # A data event and its control event go out in one write, so that a client
            # never sees data without the offset that follows it.
            out = preamble
            preamble = b""
            position = result.next_position
            # Closed with no data after it: the control event that says so is still owed.
            if result.entries or not sent_control or result.closed_at_end:
                cursor = later_cursor(cursor) if sent_control and cursor else next_cursor(cursor)
                out += self._sse_batch(result, cursor, encoded)
                sent_control = True
            if out:
                yield out
            if result.closed_at_end:
                return
            if not result.up_to_date:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.store.draining:
                return
            woken = self.store.wait_for_data(
                result.info.stream_id, position, min(settings.sse_keepalive_s, remaining)
            )
            if not woken:
                yield sse.comment("keep-alive")


def _refusal(info: StreamInfo, bad: BadRequest, content_type: str | None = None) -> StreamError:
    """What a bad append to the stream is refused with: its closure first (5.2, so the client
    learns of it), then another content type than the stream's, then `bad`."""
    if info.closed:
        return writes.closed_conflict(info)
    return writes.type_conflict(info, content_type) or bad


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == "*" or candidate == etag:
            return True
    return False
