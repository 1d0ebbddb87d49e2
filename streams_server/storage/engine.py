"""The storage engine: durable streams in SQLite, with no knowledge of HTTP.

Layout: one row per stream in `streams`, the stream's bytes as ordered rows in `entries` keyed
by their start position, and idempotent-producer state in `producers`. Every write runs through
the group committer, so an append's data, its producer state, its `Stream-Seq` and the stream's
closure are committed in one transaction, and a `2xx` is only answered after the commit is on
disk (WAL with `synchronous=FULL`).

Live readers wait on a per-stream condition that committing writers notify, so a waiting
long-poll or SSE reader costs no CPU and wakes within microseconds of the commit.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from ..errors import BadRequest, Gone, NotFound
from . import writes
from .groupcommit import Effects, GroupCommitter, Transaction
from .models import (
    AppendResult,
    CreateResult,
    Entries,
    Expiry,
    ForkSpec,
    ProducerRef,
    ReadResult,
    StreamInfo,
)
from .rows import STREAM_COLUMNS, expired, info_from_row, stream_chain
from .schema import migrate

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_READ_POOL = 8
SWEEP_INTERVAL_S = 1.0


@dataclass
class _Live:
    """In-memory state of a stream that live readers wait on."""

    tail: int
    closed: bool
    last_access_ms: int
    access_dirty: bool = False


class StreamStore:
    """Durable streams on SQLite: a file under a data directory, or an in-memory database."""

    def __init__(self, db_path: str | None, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._memory = db_path is None
        self._db_path = db_path
        self._leader_lock = threading.Lock()
        self._writer = self._connect()
        migrate(self._writer)
        self._readers: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._reader_count = 0
        self._reader_lock = threading.Lock()
        self._live: dict[int, _Live] = {}
        self._conditions: dict[int, threading.Condition] = {}
        self._conditions_lock = threading.Lock()
        self._load_live_state()
        self._committer = GroupCommitter(
            self._writer,
            clock_ms=self.now_ms,
            before_batch=self._flush_access_times,
            apply_effects=self._apply_effects,
            leader_lock=self._leader_lock,
        )
        self._wake_listener: Callable[[], None] | None = None
        self._closed = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start_background_work(self) -> None:
        """Start the expiry sweeper; a store that only serves requests does not need it
        until then (so a process that never serves, like Flask's reloader, runs nothing)."""
        if self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep_loop, name="stream-sweeper", daemon=True
            )
            self._sweeper.start()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open_directory(cls, data_dir: str, **kwargs: object) -> StreamStore:
        """The durable engine: `streams.sqlite3` inside `data_dir` (created if missing)."""
        os.makedirs(data_dir, exist_ok=True)
        return cls(os.path.join(data_dir, "streams.sqlite3"), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def open_memory(cls, **kwargs: object) -> StreamStore:
        """A volatile engine for tests: same semantics, nothing on disk."""
        return cls(None, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        """Flush access times, stop the sweeper and close every connection."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._committer.submit(lambda tx: None)
        except Exception:  # closing must not fail because the disk did
            log.exception("final flush failed")
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        with self._leader_lock:
            self._writer.close()
            while True:
                try:
                    self._readers.get_nowait().close()
                except queue.Empty:
                    break

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(transactions, operations) committed so far: their ratio is the batching factor."""
        return self._committer.batches, self._committer.operations

    # ------------------------------------------------------------------ reads

    def info(self, path: str) -> StreamInfo:
        """The metadata of a live stream; `NotFound` or `Gone` otherwise."""
        with self._reading() as conn:
            return self._visible_info(conn, path)

    def read(self, path: str, position: int | None, max_bytes: int) -> ReadResult:
        """Entries from `position` (None: the tail) up to about `max_bytes`.

        Always returns at least one entry when data exists past `position`, so a single entry
        larger than `max_bytes` is still readable.
        """
        with self._reading() as conn:
            info = self._visible_info(conn, path)
            if position is None:
                position = info.tail
            if position > info.tail:
                raise BadRequest(
                    "offset is beyond the stream's tail", code="OFFSET_OUT_OF_RANGE"
                )
            entries, next_position = self._read_entries(conn, info, position, max_bytes)
        return ReadResult(
            info=info,
            start=position,
            next_position=next_position,
            entries=entries,
            up_to_date=next_position >= info.tail,
        )

    def touch(self, info: StreamInfo) -> None:
        """Reset a sliding TTL: a read counts as use (section 5.1); persisted lazily."""
        if info.expiry.ttl_seconds is None:
            return
        live = self._live.get(info.stream_id)
        if live is not None:
            live.last_access_ms = self.now_ms()
            live.access_dirty = True

    def wait_for_data(self, stream_id: int, position: int, timeout: float) -> bool:
        """Block until the stream has data past `position`, is closed or gone (True), or
        until `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        cond = self._condition(stream_id)
        with cond:
            while True:
                live = self._live.get(stream_id)
                if live is None or live.closed or live.tail > position:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                cond.wait(remaining)

    def list_streams(self, prefix: str = "", limit: int = 1000) -> list[StreamInfo]:
        """Live streams whose path starts with `prefix`, in path order."""
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {STREAM_COLUMNS} FROM streams s LEFT JOIN streams src"
                " ON src.id = s.fork_source_id"
                " WHERE s.soft_deleted = 0 AND s.path >= ? ORDER BY s.path LIMIT ?",
                (prefix, limit * 2),
            ).fetchall()
        now = self.now_ms()
        infos = [info_from_row(r) for r in rows if r["path"].startswith(prefix)]
        return [i for i in infos if not self._is_expired(i, now)][:limit]

    # ------------------------------------------------------------------ writes

    def create(
        self,
        path: str,
        *,
        content_type: str,
        expiry: Expiry,
        closed: bool = False,
        entries: Entries | None = None,
        fork: ForkSpec | None = None,
        content_type_given: bool = True,
    ) -> CreateResult:
        """Create a stream, or confirm an identical one (section 5.1 and 4.2)."""
        return self._committer.submit(
            lambda tx: writes.create_stream(
                tx,
                self._live,
                path=path,
                content_type=content_type,
                content_type_given=content_type_given,
                expiry=expiry,
                closed=closed,
                entries=entries or [],
                fork=fork,
            )
        )

    def append(
        self,
        path: str,
        entries: Entries,
        *,
        content_type: str | None,
        stream_seq: str | None = None,
        producer: ProducerRef | None = None,
        close: bool = False,
    ) -> AppendResult:
        """Append entries (and/or close) atomically with producer and sequence state."""
        return self._committer.submit(
            lambda tx: writes.append_entries(
                tx,
                self._live,
                path=path,
                entries=entries,
                content_type=content_type,
                stream_seq=stream_seq,
                producer=producer,
                close=close,
            )
        )

    def delete(self, path: str) -> None:
        """Delete a stream; soft-delete it while forks still read from it (section 5.4)."""
        self._committer.submit(lambda tx: writes.delete_stream(tx, self._live, path))

    def transact(self, operation: Callable[[Transaction], T]) -> T:
        """Run a write operation of a sibling storage module in a group-committed transaction."""
        return self._committer.submit(operation)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection with a consistent snapshot, for sibling storage modules' reads."""
        with self._reading() as conn:
            yield conn

    def set_wake_listener(self, listener: Callable[[], None]) -> None:
        """Called after every commit that changed subscription state (wakes, leases)."""
        self._wake_listener = listener

    def sweep_expired(self) -> int:
        """Remove streams whose TTL or deadline has passed; returns how many."""
        return self._committer.submit(lambda tx: writes.sweep_expired(tx, self._live))

    # ------------------------------------------------------------------ internals

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self._db_path is None else self._db_path
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if not self._memory:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
        return conn

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._memory:  # one connection: readers must not see a batch half-written
            with self._leader_lock:
                yield self._writer
            return
        conn = self._take_reader()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        finally:
            self._readers.put(conn)

    def _take_reader(self) -> sqlite3.Connection:
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            pass
        with self._reader_lock:
            if self._reader_count < DEFAULT_READ_POOL:
                self._reader_count += 1
                return self._connect()
        return self._readers.get()

    def _visible_info(self, conn: sqlite3.Connection, path: str) -> StreamInfo:
        row = conn.execute(
            f"SELECT {STREAM_COLUMNS} FROM streams s LEFT JOIN streams src"
            " ON src.id = s.fork_source_id WHERE s.path = ?",
            (path,),
        ).fetchone()
        if row is None:
            raise NotFound(f"stream {path!r} does not exist")
        info = info_from_row(row)
        if self._is_expired(info, self.now_ms()):
            raise NotFound(f"stream {path!r} does not exist (it expired)")
        if row["soft_deleted"]:
            raise Gone(f"stream {path!r} was deleted", code="STREAM_DELETED")
        live = self._live.get(info.stream_id)
        if live is not None and live.last_access_ms > info.last_access_ms:
            info = _with_access(info, live.last_access_ms)
        return info

    def _is_expired(self, info: StreamInfo, now_ms: int) -> bool:
        live = self._live.get(info.stream_id)
        last_access = max(info.last_access_ms, live.last_access_ms if live else 0)
        return expired(info.expiry, last_access, now_ms)

    def _read_entries(
        self, conn: sqlite3.Connection, info: StreamInfo, position: int, max_bytes: int
    ) -> tuple[list[bytes], int]:
        entries: list[bytes] = []
        size = 0
        next_position = position
        for segment in stream_chain(conn, info.stream_id, info.tail):
            if segment.end <= next_position:
                continue
            rows = conn.execute(
                "SELECT start, data FROM entries WHERE stream_id = ? AND start >= ?"
                " AND start < ? ORDER BY start",
                (segment.stream_id, max(next_position, segment.start), segment.end),
            )
            first = True
            for start, data in rows:
                if first and start != next_position and next_position > segment.start:
                    raise BadRequest(
                        "offset does not fall on an entry boundary of this stream",
                        code="INVALID_OFFSET",
                    )
                first = False
                if entries and size + len(data) > max_bytes:
                    return entries, next_position
                if start + len(data) > segment.end:  # a fork boundary inside an entry
                    data = data[: segment.end - start]
                entries.append(bytes(data))
                size += len(data)
                next_position = start + len(data)
            if first and next_position < segment.end:
                raise BadRequest(
                    "offset does not fall on an entry boundary of this stream",
                    code="INVALID_OFFSET",
                )
        return entries, next_position

    def _condition(self, stream_id: int) -> threading.Condition:
        with self._conditions_lock:
            cond = self._conditions.get(stream_id)
            if cond is None:
                cond = self._conditions[stream_id] = threading.Condition()
            return cond

    def _load_live_state(self) -> None:
        for row in self._writer.execute(
            "SELECT id, tail, closed, last_access_ms FROM streams"
        ):
            self._live[row["id"]] = _Live(row["tail"], bool(row["closed"]), row["last_access_ms"])

    def _flush_access_times(self, tx: Transaction) -> None:
        dirty = [(live.last_access_ms, sid) for sid, live in list(self._live.items()) if live.access_dirty]
        for _, sid in dirty:
            self._live[sid].access_dirty = False
        if dirty:
            tx.conn.executemany(
                "UPDATE streams SET last_access_ms = max(last_access_ms, ?) WHERE id = ?", dirty
            )

    def _apply_effects(self, effects: Effects) -> None:
        for stream_id, (tail, closed) in effects.changed.items():
            live = self._live.get(stream_id)
            if live is None:
                self._live[stream_id] = _Live(tail, closed, self.now_ms())
            else:
                live.tail, live.closed = tail, closed
            self._notify(stream_id)
        for stream_id in effects.removed:
            self._live.pop(stream_id, None)
            self._notify(stream_id)
            with self._conditions_lock:
                self._conditions.pop(stream_id, None)
        for hook in effects.hooks:
            hook()
        if effects.wakes_issued and self._wake_listener is not None:
            self._wake_listener()

    def _notify(self, stream_id: int) -> None:
        cond = self._conditions.get(stream_id)
        if cond is not None:
            with cond:
                cond.notify_all()

    def _sweep_loop(self) -> None:
        while not self._closed.wait(SWEEP_INTERVAL_S):
            try:
                removed = self.sweep_expired()
                if removed:
                    log.info("removed %d expired streams", removed)
            except Exception:
                log.exception("expiry sweep failed")


def _with_access(info: StreamInfo, last_access_ms: int) -> StreamInfo:
    from dataclasses import replace

    return replace(info, last_access_ms=last_access_ms)
