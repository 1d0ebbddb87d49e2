"""The write operations, each run inside one group-committed transaction.

Each function validates against the current committed-or-batched state, writes, and records
its effects on the transaction; raising a `StreamError` rolls back only that operation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Protocol

from ..errors import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    ProducerFenced,
    ProducerSeqGap,
    StreamClosedConflict,
)
from ..offsets import format_offset
from . import subscriptions
from .groupcommit import Transaction
from .models import (
    AppendResult,
    CreateResult,
    Entries,
    Expiry,
    ForkSpec,
    ProducerRef,
    StreamInfo,
    is_json_content_type,
    is_text_content_type,
    media_type,
)
from .rows import STREAM_COLUMNS, expired, info_from_row, stream_chain


class _LiveAccess(Protocol):
    last_access_ms: int
    readers: int  # live reads waiting on the stream: in use now


LiveMap = Mapping[int, _LiveAccess]
PositionCheck = Callable[[sqlite3.Connection, StreamInfo, int], None]
"""Raises `INVALID_OFFSET` unless a read of the stream may start at the position: the read
path's boundary check, handed in by the engine (which imports this module)."""


# ---------------------------------------------------------------------- lookups


def _row_by_path(tx: Transaction, path: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = tx.conn.execute(
        f"SELECT {STREAM_COLUMNS} FROM streams s LEFT JOIN streams src"
        " ON src.id = s.fork_source_id WHERE s.path = ?",
        (path,),
    ).fetchone()
    return row


def _is_expired(row: sqlite3.Row, live: LiveMap, now_ms: int) -> bool:
    expiry = Expiry(row["ttl_seconds"], row["expires_at_ms"])
    if expiry.ttl_seconds is None and expiry.expires_at_ms is None:
        return False
    state = live.get(row["id"])
    last_access = max(row["last_access_ms"], state.last_access_ms if state else 0)
    if state is not None and state.readers:
        last_access = now_ms
    return expired(expiry, last_access, now_ms)


def _visible_row(tx: Transaction, live: LiveMap, path: str) -> sqlite3.Row:
    """The row of a stream a client may operate on, or the right error."""
    row = _row_by_path(tx, path)
    if row is None:
        raise NotFound(f"stream {path!r} does not exist")
    if _is_expired(row, live, tx.now_ms):
        _retire(tx, row["id"])
        raise NotFound(f"stream {path!r} does not exist (it expired)")
    if row["soft_deleted"]:
        raise Gone(f"stream {path!r} was deleted", code="STREAM_DELETED")
    return row


def _reread(tx: Transaction, path: str) -> StreamInfo:
    row = _row_by_path(tx, path)
    assert row is not None
    return info_from_row(row)


# ---------------------------------------------------------------------- create


def create_stream(
    tx: Transaction,
    live: LiveMap,
    *,
    path: str,
    content_type: str,
    content_type_given: bool,
    expiry: Expiry,
    closed: bool,
    entries: Entries,
    fork: ForkSpec | None,
    check_position: PositionCheck,
) -> CreateResult:
    existing = _row_by_path(tx, path)
    if existing is not None and _is_expired(existing, live, tx.now_ms):
        _retire(tx, existing["id"])
        existing = _row_by_path(tx, path)
    if existing is not None:
        if existing["soft_deleted"]:
            raise Conflict(
                f"stream {path!r} was deleted and is kept for its forks; the path cannot be reused",
                code="STREAM_DELETED",
            )
        info = info_from_row(existing)
        _check_same_config(info, content_type, content_type_given, expiry, closed, fork,
                           lambda: None if fork is None else _tail_of(tx, fork.source_path))
        return CreateResult(info=info, created=False)

    fork_source_id: int | None = None
    fork_offset: int | None = None
    if fork is not None:
        source = _fork_source(tx, live, fork)
        if not content_type_given:
            content_type = source.content_type
        elif media_type(content_type) != media_type(source.content_type):
            raise Conflict(
                f"content type {content_type!r} differs from the source's "
                f"{source.content_type!r}",
                code="CONTENT_TYPE_MISMATCH",
            )
        fork_offset = _resolve_fork_point(tx, source, fork, check_position)
        if is_text_content_type(source.content_type):
            _check_text_fork_point(tx, source, fork_offset)
        fork_source_id = source.stream_id
        if expiry.ttl_seconds is None and expiry.expires_at_ms is None:
            expiry = source.expiry

    tail = fork_offset or 0
    cur = tx.conn.execute(
        "INSERT INTO streams (path, content_type, ttl_seconds, expires_at_ms, created_at_ms,"
        " last_access_ms, tail, fork_source_id, fork_offset, fork_request_offset,"
        " fork_sub_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            path,
            content_type,
            expiry.ttl_seconds,
            expiry.expires_at_ms,
            tx.now_ms,
            tx.now_ms,
            tail,
            fork_source_id,
            fork_offset,
            fork.offset if fork else None,
            fork.sub_offset if fork else 0,
        ),
    )
    stream_id = cur.lastrowid
    assert stream_id is not None
    initial_tail = tail
    tail, appended = _write_entries(tx, stream_id, tail, entries)
    tx.conn.execute(
        "UPDATE streams SET tail = ?, closed = ? WHERE id = ?", (tail, int(closed), stream_id)
    )
    created = _reread(tx, path)
    tx.stream_written(created, appended)
    if not path.startswith("__ds/"):
        subscriptions.on_stream_created(tx, path, initial_tail)
        # From before its first offset: a fork starts with data a link made before the
        # stream existed has not acked, though this creation wrote none of its own.
        subscriptions.on_stream_written(tx, path, -1, tail)
    return CreateResult(info=created, created=True)


def _check_same_config(
    info: StreamInfo,
    content_type: str,
    content_type_given: bool,
    expiry: Expiry,
    closed: bool,
    fork: ForkSpec | None,
    source_tail: Callable[[], int | None],
) -> None:
    """`source_tail`: the fork source's tail now, where an omitted fork offset points."""
    differences = []
    if content_type_given or fork is None:
        if media_type(content_type) != media_type(info.content_type):
            differences.append("content type")
    if fork is None or expiry != Expiry():
        if expiry != info.expiry:
            differences.append("TTL/expiry")
    if closed != info.closed:
        differences.append("closure status")
    if fork is None:
        if info.fork_source_path is not None:
            differences.append("fork source")
    else:
        if fork.source_path != info.fork_source_path:
            differences.append("fork source")
        elif fork.offset is not None and fork.offset != _fork_point_asked(info):
            differences.append("fork offset")
        elif (fork.offset is None and info.fork_request_offset is not None
              and source_tail() not in (None, info.fork_request_offset)):
            # Made at a named offset, asked again for the source's tail, which is elsewhere
            # now. (Made at the tail and asked again the same way is the same request, a
            # retry, even after the source grew: not a conflict.)
            differences.append("fork offset")
        elif fork.sub_offset != info.fork_sub_offset:
            differences.append("fork sub-offset")
    if differences:
        raise Conflict(
            f"stream {info.path!r} already exists with a different "
            + ", ".join(differences),
            code="STREAM_EXISTS",
        )


def _tail_of(tx: Transaction, path: str) -> int | None:
    row = _row_by_path(tx, path)
    return None if row is None else int(row["tail"])


def _fork_point_asked(info: StreamInfo) -> int | None:
    """The fork offset a fork was made with: where it was asked for, else the source's tail
    it defaulted to (then with no sub-offset: nothing lies past a tail), which a retry may
    now name explicitly (section 4.2)."""
    return info.fork_request_offset if info.fork_request_offset is not None else info.fork_offset


def _fork_source(tx: Transaction, live: LiveMap, fork: ForkSpec) -> StreamInfo:
    row = _row_by_path(tx, fork.source_path)
    if row is None or _is_expired(row, live, tx.now_ms):
        raise NotFound(f"fork source {fork.source_path!r} does not exist")
    if row["soft_deleted"]:
        raise Conflict(
            f"fork source {fork.source_path!r} was deleted", code="SOURCE_DELETED"
        )
    return info_from_row(row)


def _resolve_fork_point(
    tx: Transaction, source: StreamInfo, fork: ForkSpec, check_position: PositionCheck
) -> int:
    """The position where the fork diverges from `source`: its anchor plus the sub-offset."""
    anchor = source.tail if fork.offset is None else fork.offset
    if anchor > source.tail:
        raise BadRequest(
            f"fork offset {format_offset(anchor)} is beyond the source's tail "
            f"{format_offset(source.tail)}",
            code="FORK_OFFSET_OUT_OF_RANGE",
        )
    if source.is_json or fork.sub_offset:
        _check_anchor(tx, source, anchor, check_position)
    if fork.sub_offset == 0:
        return anchor
    for segment in stream_chain(tx.conn, source.stream_id, source.tail):
        if segment.start <= anchor < segment.end:
            rows = tx.conn.execute(
                "SELECT start, length(data) AS size, append_end FROM entries"
                " WHERE stream_id = ? AND start >= ? AND start < ? ORDER BY start",
                (segment.stream_id, anchor, segment.end),
            )
            return _sub_offset_point(rows, anchor, fork.sub_offset, source.is_json, segment.end)
    raise BadRequest(
        "fork sub-offset points past the end of the source stream", code="INVALID_SUB_OFFSET"
    )


def _check_text_fork_point(tx: Transaction, source: StreamInfo, point: int) -> None:
    """A text stream's fork diverges between UTF-8 characters: its SSE readers get text, and
    a fork inside a character would hand them its first half (appends are refused so too)."""
    if point >= source.tail:
        return
    for segment in stream_chain(tx.conn, source.stream_id, source.tail):
        if segment.start <= point < segment.end:
            row = tx.conn.execute(
                "SELECT substr(data, ? - start + 1, 1) AS byte FROM entries"
                " WHERE stream_id = ? AND start <= ? ORDER BY start DESC LIMIT 1",
                (point, segment.stream_id, point),
            ).fetchone()
            if row is not None and row["byte"] and 0x80 <= row["byte"][0] <= 0xBF:
                raise BadRequest(
                    f"a fork of the text stream {source.path!r} must diverge between UTF-8"
                    " characters, not inside one", code="INVALID_OFFSET")
            return


def _check_anchor(
    tx: Transaction, source: StreamInfo, anchor: int, check_position: PositionCheck
) -> None:
    """Refuse a fork offset that a read of the source would refuse (section 8 allows it).

    Checked for JSON, where a fork inside a message would read back as broken JSON forever,
    and under a sub-offset, which counts from an entry boundary. A binary fork without one
    needs no check: any byte position is a clean divergence point, as sub-offset forks show.
    """
    try:
        check_position(tx.conn, source, anchor)
    except BadRequest as exc:
        if exc.code != "INVALID_OFFSET":
            raise
        unit = "a message" if source.is_json else "an entry"
        raise BadRequest(
            f"Stream-Fork-Offset {format_offset(anchor)} does not fall on {unit} boundary"
            f" of {source.path!r}: fork at an offset this server returned",
            code="INVALID_OFFSET",
        ) from None


def _sub_offset_point(
    rows: sqlite3.Cursor, anchor: int, sub_offset: int, is_json: bool, segment_end: int
) -> int:
    first = rows.fetchone()
    if first is None or first["start"] != anchor:  # `_check_anchor` refuses these first
        raise BadRequest("fork offset is not an entry boundary", code="INVALID_OFFSET")
    boundary = min(first["append_end"], segment_end)
    if not is_json:
        if anchor + sub_offset > boundary:
            raise BadRequest(
                "fork sub-offset names a position past the next data boundary",
                code="INVALID_SUB_OFFSET",
            )
        return anchor + sub_offset
    position, remaining, row = anchor, sub_offset, first
    while remaining > 0:
        if row is None or row["start"] >= boundary:
            raise BadRequest(
                "fork sub-offset names more messages than the next append holds",
                code="INVALID_SUB_OFFSET",
            )
        position = row["start"] + row["size"]
        remaining -= 1
        row = rows.fetchone()
    return position


# ---------------------------------------------------------------------- append


def append_entries(
    tx: Transaction,
    live: LiveMap,
    *,
    path: str,
    entries: Entries,
    content_type: str | None,
    stream_seq: str | None,
    producer: ProducerRef | None,
    close: bool,
) -> AppendResult:
    row = _visible_row(tx, live, path)
    info = info_from_row(row)
    stream_id = info.stream_id

    if info.closed:
        return _append_to_closed(info, row, entries, producer, close)
    if entries and (mismatch := type_conflict(info, content_type)) is not None:
        raise mismatch
    producer_epoch = producer_seq = None
    if producer is not None:
        duplicate_of = _check_producer(tx, stream_id, producer)
        if duplicate_of is not None:
            return AppendResult(
                info=info, duplicate=True, producer_epoch=producer.epoch, producer_seq=duplicate_of
            )
        producer_epoch, producer_seq = producer.epoch, producer.seq
    if stream_seq is not None and row["last_stream_seq"] is not None:
        if stream_seq <= row["last_stream_seq"]:
            raise Conflict(
                f"Stream-Seq {stream_seq!r} is not greater than the last one "
                f"{row['last_stream_seq']!r}",
                code="SEQUENCE_REGRESSION",
            )

    tail, appended = _write_entries(tx, stream_id, info.tail, entries)
    tx.conn.execute(
        "UPDATE streams SET tail = ?, closed = ?, last_access_ms = ?,"
        " last_stream_seq = coalesce(?, last_stream_seq),"
        " closed_by_producer = ?, closed_by_epoch = ?, closed_by_seq = ? WHERE id = ?",
        (
            tail,
            int(close),
            tx.now_ms,
            stream_seq,
            producer.producer_id if close and producer else None,
            producer.epoch if close and producer else None,
            producer.seq if close and producer else None,
            stream_id,
        ),
    )
    updated = info.updated(tail=tail, closed=close, last_access_ms=tx.now_ms)
    tx.stream_written(updated, appended)
    subscriptions.on_stream_written(tx, path, info.tail, tail)
    return AppendResult(info=updated, producer_epoch=producer_epoch, producer_seq=producer_seq)


def _append_to_closed(
    info: StreamInfo,
    row: sqlite3.Row,
    entries: Entries,
    producer: ProducerRef | None,
    close: bool,
) -> AppendResult:
    if producer is not None:
        closer = (row["closed_by_producer"], row["closed_by_epoch"], row["closed_by_seq"])
        if closer == (producer.producer_id, producer.epoch, producer.seq):
            return AppendResult(
                info=info,
                duplicate=True,
                producer_epoch=producer.epoch,
                producer_seq=producer.seq,
            )
    if close and not entries:  # a close-only request is idempotent, with producer headers
        # or without (sections 5.2, 5.2.1); those given are echoed, as on any success
        if producer is not None:
            return AppendResult(info=info, duplicate=True, producer_epoch=producer.epoch,
                                producer_seq=producer.seq)
        return AppendResult(info=info, duplicate=True)
    raise closed_conflict(info)


def closed_conflict(info: StreamInfo) -> StreamClosedConflict:
    """The refusal of data for a closed stream."""
    return StreamClosedConflict(info.path, format_offset(info.tail))


def type_conflict(info: StreamInfo, content_type: str | None) -> Conflict | None:
    """The refusal of data sent as another media type than the stream's, if it is."""
    if content_type is None or media_type(content_type) == media_type(info.content_type):
        return None
    return Conflict(
        f"content type {content_type!r} does not match the stream's {info.content_type!r}",
        code="CONTENT_TYPE_MISMATCH",
    )


def _check_producer(tx: Transaction, stream_id: int, producer: ProducerRef) -> int | None:
    """Validate a producer triple (section 5.2.1); returns the last seq if a duplicate."""
    state = tx.conn.execute(
        "SELECT epoch, last_seq FROM producers WHERE stream_id = ? AND producer_id = ?",
        (stream_id, producer.producer_id),
    ).fetchone()
    if state is not None:
        epoch, last_seq = state["epoch"], state["last_seq"]
        if producer.epoch < epoch:
            raise ProducerFenced(
                f"producer epoch {producer.epoch} is older than the current epoch {epoch}",
                current_epoch=epoch,
            )
        if producer.epoch == epoch:
            if producer.seq <= last_seq:
                return int(last_seq)
            if producer.seq != last_seq + 1:
                raise ProducerSeqGap(last_seq + 1, producer.seq)
    if (state is None or producer.epoch > state["epoch"]) and producer.seq != 0:
        if state is not None:
            raise BadRequest(
                "a new producer epoch must start at Producer-Seq 0",
                code="INVALID_PRODUCER_SEQ",
            )
        raise ProducerSeqGap(0, producer.seq)
    tx.conn.execute(
        "INSERT INTO producers (stream_id, producer_id, epoch, last_seq, updated_at_ms)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream_id, producer_id) DO UPDATE SET"
        " epoch = excluded.epoch, last_seq = excluded.last_seq,"
        " updated_at_ms = excluded.updated_at_ms",
        (stream_id, producer.producer_id, producer.epoch, producer.seq, tx.now_ms),
    )
    return None


def _write_entries(
    tx: Transaction, stream_id: int, tail: int, entries: Entries
) -> tuple[int, list[tuple[int, bytes]] | None]:
    """Insert entries at `tail`; every row records where its append ends (for sub-offsets).

    Returns the new tail and the entries as (start, bytes) for the in-memory tail cache, or
    None for a body spooled to disk (too big to keep).
    """
    position = tail
    insert = "INSERT INTO entries (stream_id, start, data, append_end) VALUES (?, ?, ?, ?)"
    if isinstance(entries, list):  # the common case: the end is known before writing
        end = tail + sum(len(e) for e in entries)
        rows = []
        appended = []
        for data in entries:
            rows.append((stream_id, position, data, end))
            appended.append((position, data))
            position += len(data)
        tx.conn.executemany(insert, rows)
        return end, appended
    for data in entries:  # a body spooled to disk, written chunk by chunk
        tx.conn.execute(insert, (stream_id, position, data, -1))
        position += len(data)
    tx.conn.execute(
        "UPDATE entries SET append_end = ? WHERE stream_id = ? AND start >= ?",
        (position, stream_id, tail),
    )
    return position, None


def append_internal(tx: Transaction, path: str, messages: list[bytes]) -> bool:
    """An append by the server itself (wake events, JSON): no producer, no subscription hooks
    (a wake must not wake anyone). Like any write, it keeps a stream with a TTL alive. On a
    stream that is not JSON each message ends with a newline, so that they can be told apart.

    Returns False when the stream is missing, expired, deleted or closed, and writes nothing.
    """
    row = _row_by_path(tx, path)
    if row is None or row["soft_deleted"] or row["closed"]:
        return False
    if _is_expired(row, tx.live, tx.now_ms):
        _retire(tx, row["id"])
        return False
    info = info_from_row(row)
    if not is_json_content_type(info.content_type):
        messages = [message + b"\n" for message in messages]
    tail, appended = _write_entries(tx, info.stream_id, info.tail, messages)
    tx.conn.execute("UPDATE streams SET tail = ?, last_access_ms = ? WHERE id = ?",
                    (tail, tx.now_ms, info.stream_id))
    tx.stream_written(info.updated(tail=tail, closed=False, last_access_ms=tx.now_ms), appended)
    return True


# ---------------------------------------------------------------------- delete and expiry


def delete_stream(tx: Transaction, live: LiveMap, path: str) -> None:
    row = _visible_row(tx, live, path)
    _retire(tx, row["id"])


def sweep_expired(tx: Transaction, live: LiveMap) -> int:
    rows = tx.conn.execute(
        f"SELECT {STREAM_COLUMNS} FROM streams s LEFT JOIN streams src"
        " ON src.id = s.fork_source_id WHERE s.soft_deleted = 0 AND"
        " (s.expires_at_ms IS NOT NULL OR s.ttl_seconds IS NOT NULL)"
    ).fetchall()
    count = 0
    for row in rows:
        if _is_expired(row, live, tx.now_ms):
            _retire(tx, row["id"])
            count += 1
    return count


def _retire(tx: Transaction, stream_id: int) -> None:
    """Remove a stream, or soft-delete it while forks still reference it."""
    forks = tx.conn.execute(
        "SELECT count(*) FROM streams WHERE fork_source_id = ?", (stream_id,)
    ).fetchone()[0]
    if forks:
        tx.conn.execute("UPDATE streams SET soft_deleted = 1 WHERE id = ?", (stream_id,))
        tx.stream_soft_deleted(stream_id)
        return
    _remove_cascading(tx, stream_id)


def _remove_cascading(tx: Transaction, stream_id: int) -> None:
    current: int | None = stream_id
    while current is not None:
        source = tx.conn.execute(
            "SELECT fork_source_id FROM streams WHERE id = ?", (current,)
        ).fetchone()
        tx.conn.execute("DELETE FROM entries WHERE stream_id = ?", (current,))
        tx.conn.execute("DELETE FROM producers WHERE stream_id = ?", (current,))
        tx.conn.execute("DELETE FROM streams WHERE id = ?", (current,))
        tx.stream_removed(current)
        current = None
        if source is not None and source["fork_source_id"] is not None:
            parent = tx.conn.execute(
                "SELECT id, soft_deleted, (SELECT count(*) FROM streams c"
                " WHERE c.fork_source_id = p.id) AS forks FROM streams p WHERE id = ?",
                (source["fork_source_id"],),
            ).fetchone()
            if parent is not None and parent["soft_deleted"] and parent["forks"] == 0:
                current = parent["id"]
