"""Reading rows of the schema into models, shared by the read and write paths."""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from .models import Expiry, StreamInfo

STREAM_COLUMNS = (
    "s.id, s.path, s.content_type, s.ttl_seconds, s.expires_at_ms, s.created_at_ms,"
    " s.last_access_ms, s.tail, s.closed, s.closed_by_producer, s.closed_by_epoch,"
    " s.closed_by_seq, s.last_stream_seq, s.fork_source_id, s.fork_offset,"
    " s.fork_request_offset, s.fork_sub_offset, s.soft_deleted,"
    " src.path AS fork_source_path"
)


def info_from_row(row: sqlite3.Row) -> StreamInfo:
    return StreamInfo(
        stream_id=row["id"],
        path=row["path"],
        content_type=row["content_type"],
        tail=row["tail"],
        closed=bool(row["closed"]),
        expiry=Expiry(row["ttl_seconds"], row["expires_at_ms"]),
        created_at_ms=row["created_at_ms"],
        last_access_ms=row["last_access_ms"],
        fork_source_path=row["fork_source_path"],
        fork_offset=row["fork_offset"],
        fork_request_offset=row["fork_request_offset"],
        fork_sub_offset=row["fork_sub_offset"],
    )


def expired(expiry: Expiry, last_access_ms: int, now_ms: int) -> bool:
    """Whether a stream with this expiry, last used at `last_access_ms`, is past its life."""
    if expiry.expires_at_ms is not None and now_ms >= expiry.expires_at_ms:
        return True
    if expiry.ttl_seconds is not None and now_ms >= last_access_ms + expiry.ttl_seconds * 1000:
        return True
    return False


class Segment(NamedTuple):
    """Positions [start, end) of a stream's logical content stored under `stream_id`."""

    stream_id: int
    start: int
    end: int


def stream_chain(conn: sqlite3.Connection, stream_id: int, tail: int) -> list[Segment]:
    """Where each range of a (possibly forked) stream's positions is stored, in order.

    A fork shares its source's offset space: positions before its fork offset come from the
    source (itself maybe a fork), positions after from the fork's own entries.
    """
    segments: list[Segment] = []
    end = tail
    current: int | None = stream_id
    while current is not None:
        row = conn.execute(
            "SELECT id, fork_source_id, fork_offset FROM streams WHERE id = ?", (current,)
        ).fetchone()
        if row is None:
            break
        start = row["fork_offset"] if row["fork_source_id"] is not None else 0
        if start < end:  # a fork below its source's own fork point takes nothing from it
            segments.append(Segment(row["id"], start, end))
            end = start
        current = row["fork_source_id"]
    segments.reverse()
    return segments


def path_prefix_range(prefix: str) -> tuple[str, list[str]]:
    """SQL (and its arguments) for paths starting with `prefix`, as a range of the path
    index. SQLite compares text as UTF-8 bytes, in code point order: the paths starting with
    `prefix` are those from it up to, not including, its last character's successor."""
    if not prefix:
        return "1", []
    stem = prefix.rstrip("\U0010ffff")
    if not stem:  # nothing sorts after U+10FFFF: every path from the prefix on starts with it
        return "path >= ?", [prefix]
    successor = ord(stem[-1]) + 1
    if 0xD800 <= successor <= 0xDFFF:  # surrogates are no characters: the next one is past them
        successor = 0xE000
    return "path >= ? AND path < ?", [prefix, stem[:-1] + chr(successor)]
