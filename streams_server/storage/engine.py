"""The storage engine: durable streams in SQLite, with no knowledge of HTTP.

Layout: one row per stream in `streams`, the stream's bytes as ordered rows in `entries` keyed
by their start position, and idempotent-producer state in `producers`. Every write runs through
the group committer, so an append's data, its producer state, its `Stream-Seq` and the stream's
closure are committed in one transaction, and a `2xx` is only answered after the commit is on
disk (WAL with `synchronous=FULL`).

The engine keeps a view of every stream's metadata in memory, updated only after each commit,
plus the most recent entries of streams being written (`TailCache`). Metadata lookups and
reads at or near the tail, which is what live readers do, never touch SQLite; only catch-up
reads of older data do. Live readers wait on a per-stream change signal that committing
writers fire, so a waiting long-poll or SSE reader costs no CPU and wakes right after the
commit.
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

from ..errors import BadRequest, Gone, NotFound, StorageFailure
from . import writes
from .blocking import run_blocking
from .groupcommit import Effects, GroupCommitter, OutageLog, Transaction
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
from .room import RoomCheck
from .rows import STREAM_COLUMNS, expired, info_from_row, path_prefix_range, stream_chain
from .schema import check_writable, migrate
from .tailcache import TailCache

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_READ_POOL = 8  # read connections kept open between reads
MMAP_BYTES = 1024 * 1024 * 1024
SWEEP_INTERVAL_S = 1.0


@dataclass(frozen=True)
class StreamListing:
    """A page of `StreamStore.list_streams`: `next_after` is the path to list after for the
    next page, None on the last."""

    streams: list[StreamInfo]
    total: int
    next_after: str | None


@dataclass
class _Known:
    """What the engine knows of one stream between commits."""

    info: StreamInfo
    soft_deleted: bool = False
    last_access_ms: int = 0
    # Live reads waiting on it now: its TTL does not run out under them (section 5.1, "a
    # stream with active live readers will not expire"); it runs from when the last leaves.
    readers: int = 0


class StreamStore:
    """Durable streams on SQLite: a file under a data directory, or an in-memory database."""

    def __init__(
        self,
        db_path: str | None,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """`max_bytes` caps the database's size: writes that would grow it further fail
        with `StorageFull`, as they do when the disk is full."""
        self._clock = clock
        self._memory = db_path is None
        self._db_path = db_path
        self._leader_lock = threading.Lock()
        self._writer = self._connect()
        migrate(self._writer)
        if not self._memory:
            check_writable(self._writer)
        if max_bytes is not None:
            _set_quota(self._writer, max_bytes)
        self._readers: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._reader_count = 0
        self._reader_lock = threading.Lock()
        self._read_failures = OutageLog("reads", "read requests", "reads")
        self._streams: dict[int, _Known] = {}
        self._touched: set[int] = set()  # sliding TTLs reset by reads, not yet persisted
        self._touched_lock = threading.Lock()
        self._expiring: set[int] = set()  # streams with a TTL or deadline: the sweeper's work
        self._ids: dict[str, int] = {}
        self._tails = TailCache()
        self._signals: dict[int, _ChangeSignal] = {}
        self._signals_lock = threading.Lock()
        self._load_streams()
        room = RoomCheck(db_path) if db_path is not None else None
        self._committer = GroupCommitter(
            self._writer,
            clock_ms=self.now_ms,
            before_batch=self._flush_access_times,
            apply_effects=self._apply_effects,
            leader_lock=self._leader_lock,
            max_batch=max_batch,
            commit_off_loop=not self._memory,
            out_of_room=lambda exc: room is not None and room.explains(exc),
            live=self._streams,
        )
        self._wake_listener: Callable[[], None] | None = None
        self._closed = threading.Event()
        self._draining = False
        self._sweeper: threading.Thread | None = None

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

    def start_background_work(self) -> None:
        """Start the expiry sweeper; a store that only serves requests does not need it
        until then (so a process that never serves, like Flask's reloader, runs nothing)."""
        if self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep_loop, name="stream-sweeper", daemon=True
            )
            self._sweeper.start()

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

    def reload(self) -> None:
        """Forget what this process knows of the streams and read it from the database again:
        for a store opened before its process took the data directory (another process may
        have written to it since). Only before any request was served."""
        self._streams.clear()
        self._ids.clear()
        self._expiring.clear()
        self._touched.clear()
        self._tails = TailCache()
        self._load_streams()

    def drain(self) -> None:
        """The server is stopping: every live read ends now (long-polls answer at once, SSE
        responses end, and clients reconnect elsewhere or later); writes go on until closed."""
        self._draining = True
        with self._signals_lock:
            signals = list(self._signals.values())
        for signal in signals:
            signal.fire()

    @property
    def draining(self) -> bool:
        return self._draining

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(transactions, operations) committed so far: their ratio is the batching factor."""
        return self._committer.batches, self._committer.operations

    # ------------------------------------------------------------------ reads

    def info(self, path: str) -> StreamInfo:
        """The metadata of a live stream; `NotFound` or `Gone` otherwise."""
        return self._visible(path).info

    def read(
        self, path: str, position: int | None, max_bytes: int, *, stream_id: int | None = None
    ) -> ReadResult:
        """Entries from `position` (None: the tail) up to about `max_bytes`.

        Always returns at least one entry when data exists past `position`, so a single entry
        larger than `max_bytes` is still readable. `stream_id`: the stream a live read began
        on. If the path now names another (deleted and created again while the reader
        waited), the one it followed is gone: `NotFound`, never the new stream's data.
        """
        info = self._visible(path).info
        if stream_id is not None and info.stream_id != stream_id:
            raise NotFound(f"stream {path!r} was deleted")
        if position is None:
            position = info.tail
        if position > info.tail:
            raise BadRequest("offset is beyond the stream's tail", code="OFFSET_OUT_OF_RANGE")
        served = self._tails.read(info.stream_id, position, info.tail, max_bytes)
        if served is None:
            served = self._read_from_disk(info, position, max_bytes)
        entries, next_position = served
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
        known = self._streams.get(info.stream_id)
        if known is not None:
            known.last_access_ms = self.now_ms()
            with self._touched_lock:  # reads run on many threads under a threaded server
                self._touched.add(info.stream_id)

    @contextmanager
    def live_reader(self, stream_id: int) -> Iterator[None]:
        """Count a live reader of the stream while in this block: a stream with one does not
        expire (section 5.1), and its TTL runs again from when the last one leaves."""
        reading = self._streams.get(stream_id)
        if reading is not None:
            with self._signals_lock:
                reading.readers += 1
        try:
            yield
        finally:
            if reading is not None:
                with self._signals_lock:
                    reading.readers -= 1
                self.touch(reading.info)

    def wait_for_data(self, stream_id: int, position: int, timeout: float) -> bool:
        """Block until the stream has data past `position`, is closed or gone (True), or
        until `timeout` passes (False). A live reader meanwhile (see `live_reader`)."""
        deadline = time.monotonic() + timeout
        signal = self._signal(stream_id)
        if signal is None:  # deleted since the caller read it
            return True
        with self.live_reader(stream_id):
            while True:
                changed = signal.current()  # taken before looking: a change after this sets it
                known = self._streams.get(stream_id)
                if (known is None or known.soft_deleted or known.info.closed
                        or known.info.tail > position or self._draining):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                changed.wait(remaining)

    def list_streams(self, prefix: str = "", *, after: str = "",
                     limit: int = 1000) -> StreamListing:
        """Up to `limit` live streams whose path starts with `prefix` and comes after `after`,
        in path order, and how many start with `prefix`. Read off the path index, off the
        event loop: sorting every stream in memory held the loop 180-260 ms at 200,000."""
        in_prefix, prefix_args = path_prefix_range(prefix)
        past, past_args = (" AND path > ?", [after]) if after else ("", [])

        def page(conn: sqlite3.Connection) -> tuple[list[tuple[int, str]], int]:
            rows = conn.execute(
                f"SELECT id, path FROM streams WHERE soft_deleted = 0 AND {in_prefix}{past}"
                " ORDER BY path LIMIT ?", (*prefix_args, *past_args, limit + 1)).fetchall()
            total = conn.execute(f"SELECT count(*) FROM streams WHERE soft_deleted = 0"
                                 f" AND {in_prefix}", prefix_args).fetchone()[0]
            return [(row[0], row[1]) for row in rows], int(total)

        rows, total = self.read_with(page)
        now = self.now_ms()
        infos = []
        for stream_id, _ in rows[:limit]:
            known = self._streams.get(stream_id)
            if known is not None and not known.soft_deleted and not self._expired(known, now):
                infos.append(known.info)
        return StreamListing(infos, total, rows[limit - 1][1] if len(rows) > limit else None)

    def read_with(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a connection with a consistent snapshot, off the event loop (for
        sibling storage modules' reads)."""

        def run() -> T:
            with self._reading() as conn:
                return fn(conn)

        return run() if self._memory else run_blocking(run)

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
                self._access_view(),
                path=path,
                content_type=content_type,
                content_type_given=content_type_given,
                expiry=expiry,
                closed=closed,
                entries=entries or [],
                fork=fork,
                check_position=check_read_position,
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
                self._access_view(),
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
        self._committer.submit(lambda tx: writes.delete_stream(tx, self._access_view(), path))

    def transact(self, operation: Callable[[Transaction], T]) -> T:
        """Run a write operation of a sibling storage module in a group-committed transaction."""
        return self._committer.submit(operation)

    def set_wake_listener(self, listener: Callable[[], None]) -> None:
        """Called after every commit that changed subscription state (wakes, leases)."""
        self._wake_listener = listener

    def sweep_expired(self) -> int:
        """Remove streams whose TTL or deadline has passed; returns how many."""
        now = self.now_ms()
        candidates = [self._streams.get(sid) for sid in list(self._expiring)]
        if not any(k is not None and self._expired(k, now) for k in candidates):
            return 0
        return self._committer.submit(lambda tx: writes.sweep_expired(tx, self._access_view()))

    # ------------------------------------------------------------------ internals

    def _connect(self) -> sqlite3.Connection:
        target = ":memory:" if self._db_path is None else self._db_path
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if not self._memory:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            # Reads through a memory map: a catch-up read of a 1 MiB row is then the kernel's
            # readahead, not 256 separate 4 KiB reads (30 % more MiB/s when the page cache is
            # cold). SQLite writes through the WAL as before; only reads use the map.
            conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        return conn

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
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
                self._give_back_reader(conn)
        except sqlite3.DatabaseError as exc:
            # A damaged page (or a failing disk) under the rows read: the client gets a 503,
            # as writes do, and the log a line now and then, not a traceback per request.
            self._read_failures.failed(str(exc), 1)
            raise StorageFailure("the storage engine could not read the stream") from exc
        self._read_failures.succeeded()

    def _take_reader(self) -> sqlite3.Connection:
        """A pooled connection, or a new one when all are in use: a read never waits for
        another to end. (Under gevent, reads run on the threads of its pool, where a wait for
        a connection given back by another thread could not be woken: it hung or failed.)"""
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            pass
        with self._reader_lock:
            self._reader_count += 1
        try:
            return self._connect()
        except BaseException:
            with self._reader_lock:
                self._reader_count -= 1
            raise

    def _give_back_reader(self, conn: sqlite3.Connection) -> None:
        """Pooled again, unless more than `DEFAULT_READ_POOL` are open: then closed."""
        with self._reader_lock:
            keep = self._reader_count <= DEFAULT_READ_POOL
            if not keep:
                self._reader_count -= 1
        if keep:
            self._readers.put(conn)
        else:
            conn.close()

    def _visible(self, path: str) -> _Known:
        stream_id = self._ids.get(path)
        known = None if stream_id is None else self._streams.get(stream_id)
        if known is None:
            raise NotFound(f"stream {path!r} does not exist")
        if self._expired(known, self.now_ms()):
            raise NotFound(f"stream {path!r} does not exist (it expired)")
        if known.soft_deleted:
            raise Gone(f"stream {path!r} was deleted", code="STREAM_DELETED")
        return known

    @staticmethod
    def _expired(known: _Known, now_ms: int) -> bool:
        last_access = now_ms if known.readers else max(known.info.last_access_ms,
                                                       known.last_access_ms)
        return expired(known.info.expiry, last_access, now_ms)

    def _access_view(self) -> dict[int, _Known]:
        """Per stream, the newest access time (write operations check expiry with it)."""
        return self._streams

    def _read_from_disk(
        self, info: StreamInfo, position: int, max_bytes: int
    ) -> tuple[list[bytes], int]:
        def read() -> tuple[list[bytes], int]:
            with self._reading() as conn:
                return _read_entries(conn, info, position, max_bytes)

        return read() if self._memory else run_blocking(read)

    def _signal(self, stream_id: int) -> _ChangeSignal | None:
        """The stream's change signal, made at its first wait; None once the stream is gone.
        Its deletion drops the signal (after dropping the stream, see `_apply_effects`), so
        one made for it later would never be dropped: a wait that began after a delete it did
        not see would have left one behind for good."""
        with self._signals_lock:
            signal = self._signals.get(stream_id)
            if signal is None:
                if stream_id not in self._streams:
                    return None
                signal = self._signals[stream_id] = _ChangeSignal()
            return signal

    def _load_streams(self) -> None:
        rows = self._writer.execute(
            f"SELECT {STREAM_COLUMNS} FROM streams s LEFT JOIN streams src"
            " ON src.id = s.fork_source_id"
        ).fetchall()
        for row in rows:
            info = info_from_row(row)
            self._streams[info.stream_id] = _Known(
                info, bool(row["soft_deleted"]), info.last_access_ms
            )
            self._ids[info.path] = info.stream_id
            self._track_expiry(info)

    def _flush_access_times(self, tx: Transaction) -> None:
        with self._touched_lock:
            touched, self._touched = self._touched, set()
        dirty = [
            (self._streams[sid].last_access_ms, sid) for sid in touched if sid in self._streams
        ]
        if dirty:
            tx.conn.executemany(
                "UPDATE streams SET last_access_ms = max(last_access_ms, ?) WHERE id = ?", dirty
            )

    def _apply_effects(self, effects: Effects) -> None:
        for stream_id, change in effects.changes.items():
            known = self._streams.get(stream_id)
            if change.info is not None:
                info = change.info
                if known is None:
                    self._streams[stream_id] = _Known(info, False, info.last_access_ms)
                else:
                    known.info = info.updated(
                        tail=info.tail, closed=info.closed,
                        last_access_ms=max(info.last_access_ms, known.info.last_access_ms))
                    known.soft_deleted = False
                self._ids[info.path] = stream_id
                self._track_expiry(info)
                try:
                    self._tails.appended(stream_id, info, change.appended)
                except Exception:  # the data is committed: lose only the cache, never the reply
                    log.exception("tail cache update failed for stream %d", stream_id)
                    self._tails.forget(stream_id)
            elif change.soft_deleted and known is not None:
                known.soft_deleted = True
                self._tails.forget(stream_id)
            else:
                if known is not None and self._ids.get(known.info.path) == stream_id:
                    del self._ids[known.info.path]
                self._streams.pop(stream_id, None)
                self._expiring.discard(stream_id)
                self._tails.forget(stream_id)
                with self._signals_lock:
                    signal = self._signals.pop(stream_id, None)
                if signal is not None:
                    signal.fire()
                continue
            self._notify(stream_id)
        if effects.wakes_issued and self._wake_listener is not None:
            self._wake_listener()

    def _track_expiry(self, info: StreamInfo) -> None:
        if info.expiry.ttl_seconds is not None or info.expiry.expires_at_ms is not None:
            self._expiring.add(info.stream_id)
        else:
            self._expiring.discard(info.stream_id)

    def _notify(self, stream_id: int) -> None:
        signal = self._signals.get(stream_id)
        if signal is not None:
            signal.fire()

    def _sweep_loop(self) -> None:
        while not self._closed.wait(SWEEP_INTERVAL_S):
            try:
                removed = self.sweep_expired()
                if removed:
                    log.info("removed %d expired streams", removed)
                if self._touched:
                    self._committer.submit(lambda tx: None)  # persists sliding-TTL resets
            except StorageFailure:
                continue  # the committer logs the outage; the next sweep tries again
            except Exception:
                log.exception("expiry sweep failed")


def _read_entries(
    conn: sqlite3.Connection, info: StreamInfo, position: int, max_bytes: int
) -> tuple[list[bytes], int]:
    """Entries of a (possibly forked) stream from `position`, at most up to `info.tail`."""
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
                # The traceback keeps the cursor alive: an unfinished statement would hold
                # this connection's read snapshot, and later reads on it would see stale rows.
                rows.close()
                raise _not_a_boundary()
            first = False
            if entries and size + len(data) > max_bytes:
                return entries, next_position
            if start + len(data) > segment.end:  # a fork boundary inside an entry
                data = data[: segment.end - start]
            entries.append(bytes(data))
            size += len(data)
            next_position = start + len(data)
        if first and next_position < segment.end:
            raise _not_a_boundary()
    return entries, next_position


def check_read_position(conn: sqlite3.Connection, info: StreamInfo, position: int) -> None:
    """Raise `INVALID_OFFSET` unless a read of `info` may start at `position` (at most its tail).

    This is the read path itself, asked for one entry: fork creation validates fork offsets
    with it, so a fork can diverge only where a read could start.
    """
    _read_entries(conn, info, position, max_bytes=0)


def _not_a_boundary() -> BadRequest:
    return BadRequest(
        "offset does not fall on an entry boundary of this stream", code="INVALID_OFFSET"
    )


class _ChangeSignal:
    """Wakes every reader waiting on one stream at once.

    Each change sets the current `threading.Event` and puts a fresh one in its place: a
    thousand SSE readers then wake from one ``set()`` (under gevent, from one hub callback),
    where a `threading.Condition` would release a lock per waiter and make every woken
    reader take the condition's lock again in turn.
    """

    __slots__ = ("_event", "_lock")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()

    def current(self) -> threading.Event:
        return self._event

    def fire(self) -> None:
        with self._lock:
            event, self._event = self._event, threading.Event()
        event.set()


def _set_quota(conn: sqlite3.Connection, max_bytes: int) -> None:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    wanted = max(1, max_bytes // page_size)
    # SQLite keeps the current page count when asked for less, and its file does not shrink
    # by itself: a database already larger is held at its size instead (deleted streams'
    # pages are reused within it).
    granted = conn.execute(f"PRAGMA max_page_count={wanted}").fetchone()[0]
    if granted > wanted:
        log.warning("the database is already %.1f MiB, over the storage quota of %.1f MiB: it"
                    " is held at its size (an offline VACUUM shrinks it to what streams use)",
                    granted * page_size / 2**20, max_bytes / 2**20)
