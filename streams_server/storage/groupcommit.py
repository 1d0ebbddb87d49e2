"""Group commit: many concurrent writers share one transaction and one fsync.

A writer enqueues its operation and then competes for the leader lock. Whoever gets it takes
every queued operation, runs them in one SQLite transaction (each inside its own savepoint, so
one refused request does not undo the others), commits once, applies the post-commit effects,
and releases the lock. While the commit's fsync runs on another thread, new writers queue up
for the next batch. A writer that finds its operation already done by an earlier leader
simply returns its result. Throughput grows with concurrency because the fsync, the dominant
cost, is paid once per batch instead of once per request.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import StorageFailure, StorageFull, StreamError
from .blocking import run_blocking
from .models import StreamInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKPOINT_EVERY_S = 1.0
"""How often, at most, a write that failed for lack of room moves the log into the database."""


@dataclass
class StreamChange:
    """A stream's state after a committed operation, for the engine's in-memory view.

    `info` None: the stream is gone from clients' view (deleted, or soft-deleted if
    `soft_deleted`). `appended`: the entries added, as (start, bytes), so live readers can be
    served from memory; None when they were not kept (a body spooled to disk).
    """

    info: StreamInfo | None
    soft_deleted: bool = False
    appended: list[tuple[int, bytes]] | None = field(default_factory=list)


@dataclass
class Effects:
    """What committed operations changed, applied only once the commit is durable."""

    changes: dict[int, StreamChange] = field(default_factory=dict)
    wakes_issued: bool = False  # subscription state changed: the scheduler should look

    def record(self, stream_id: int, change: StreamChange) -> None:
        earlier = self.changes.get(stream_id)
        if earlier is not None and change.info is not None and earlier.info is not None:
            if earlier.appended is None or change.appended is None:
                change.appended = None
            else:
                change.appended = earlier.appended + change.appended
        self.changes[stream_id] = change

    def merge(self, other: Effects) -> None:
        for stream_id, change in other.changes.items():
            self.record(stream_id, change)
        self.wakes_issued = self.wakes_issued or other.wakes_issued


class Transaction:
    """The handle an operation gets: the connection, the clock reading and its effects.

    `live`: the engine's in-memory view of each stream by id (access times, live readers),
    for the operations that check a stream's expiry without a view handed to them."""

    def __init__(self, conn: sqlite3.Connection, now_ms: int,
                 live: Mapping[int, Any] | None = None) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self.live: Mapping[int, Any] = {} if live is None else live
        self.effects = Effects()

    def stream_written(self, info: StreamInfo, appended: list[tuple[int, bytes]] | None) -> None:
        self.effects.record(info.stream_id, StreamChange(info, appended=appended))

    def stream_soft_deleted(self, stream_id: int) -> None:
        self.effects.record(stream_id, StreamChange(None, soft_deleted=True))

    def stream_removed(self, stream_id: int) -> None:
        self.effects.record(stream_id, StreamChange(None))


Operation = Callable[[Transaction], T]


class _Pending(Generic[T]):
    __slots__ = ("operation", "done", "result", "error")

    def __init__(self, operation: Operation[T]) -> None:
        self.operation = operation
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None


class OutageLog:
    """Logs failing commits (or reads) once per outage (a full disk fails every write until
    space is freed: one line per request would bury everything else), then a reminder every
    minute, then the recovery. Near full, small writes still fit between refused ones: the
    outage ends only with a success `QUIET_S` after the last failure."""

    REMIND_S = 60.0
    QUIET_S = 10.0

    def __init__(self, what: str = "commits", requests: str = "write requests",
                 operations: str = "write operations") -> None:
        self._what, self._requests, self._operations = what, requests, operations
        self._since: float | None = None
        self._reminded = 0.0
        self._last_failure = 0.0
        self._refused = 0

    def failed(self, cause: str, operations: int) -> None:
        now = self._last_failure = time.monotonic()
        self._refused += operations
        if self._since is None:
            self._since = self._reminded = now
            log.error("%s are failing (%s): %s get an error until the storage recovers",
                      self._what, cause, self._requests)
        elif now - self._reminded >= self.REMIND_S:
            self._reminded = now
            log.error("%s still failing (%s) after %.0f s; %d %s refused", self._what, cause,
                      now - self._since, self._refused, self._operations)

    def succeeded(self) -> None:
        if self._since is not None and time.monotonic() - self._last_failure >= self.QUIET_S:
            log.warning("%s succeed again, %.0f s after they began to fail; %d %s were"
                        " refused", self._what, time.monotonic() - self._since, self._refused,
                        self._operations)
            self._since, self._refused = None, 0


class GroupCommitter:
    """Runs write operations in batched transactions on one SQLite connection."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        clock_ms: Callable[[], int],
        before_batch: Callable[[Transaction], None],
        apply_effects: Callable[[Effects], None],
        leader_lock: threading.Lock,
        max_batch: int | None = None,
        commit_off_loop: bool = True,
        out_of_room: Callable[[sqlite3.Error], bool] = lambda exc: False,
        live: Mapping[int, Any] | None = None,
    ) -> None:
        """`max_batch` caps the operations per transaction (1 turns group commit off, which
        only the group-commit benchmark wants). `commit_off_loop` False commits where the
        batch ran: for an in-memory database, whose commit has no fsync to wait for, handing
        it to a thread and back would double the CPU of a lone append. `out_of_room` says
        whether a failed write failed for lack of room, beyond SQLite's own `SQLITE_FULL`."""
        self._conn = conn
        self._commit_off_loop = commit_off_loop
        self._max_batch = max_batch
        self._clock_ms = clock_ms
        self._before_batch = before_batch
        self._apply_effects = apply_effects
        self._queue: list[_Pending[Any]] = []
        self._queue_lock = threading.Lock()
        self._leader_lock = leader_lock
        self._outage = OutageLog()
        self._checkpointed_at = -CHECKPOINT_EVERY_S
        self._out_of_room = out_of_room
        self._live = live
        self.batches = 0
        self.operations = 0

    def submit(self, operation: Operation[T]) -> T:
        """Run `operation` in a committed transaction and return its result."""
        pending: _Pending[T] = _Pending(operation)
        with self._queue_lock:
            self._queue.append(pending)
        with self._leader_lock:
            if not pending.done:
                with self._queue_lock:
                    cut = len(self._queue) if self._max_batch is None else self._max_batch
                    batch, self._queue = self._queue[:cut], self._queue[cut:]
                self._lead(batch)
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _lead(self, batch: list[_Pending[Any]]) -> None:
        effects = Effects()
        committed = False
        try:
            self._run_batch(batch, effects)
            committed = True
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", None)  # not on every sqlite3.Error
            full = code == sqlite3.SQLITE_FULL or self._lacks_room(exc)
            if full and len(batch) > 1:
                # One operation needed space that is not there, and SQLite may have rolled the
                # whole transaction back: each again on its own, so that those that need no
                # new space (a delete that frees some, a small append) still succeed.
                for pending in batch:
                    pending.result, pending.error = None, None
                    self._lead([pending])
                return
            if full:
                self._checkpoint_for_room()
            cause = str(exc)
            if full and code != sqlite3.SQLITE_FULL:
                cause += ": no room left (the file-size limit or the disk quota)"
            self._outage.failed(cause, len(batch))
            failure: StorageFailure
            if full:
                failure = StorageFull("the server's storage is full: nothing of the request"
                                      " was stored")
            else:
                failure = StorageFailure("the storage engine could not commit the request")
            for pending in batch:
                pending.error = failure
            effects = Effects()
        except Exception:  # a bug: its operations fail (below), and it is not the leader's
            log.exception("a write batch failed")
            effects = Effects()
        else:
            self._outage.succeeded()
        finally:
            for pending in batch:
                if not committed and not pending.done and pending.error is None:
                    # Failed in a way not handled above (a bug): never report it stored.
                    pending.error = StorageFailure("the storage engine could not commit the"
                                                   " request")
                pending.done = True
        self.batches += 1
        self.operations += len(batch)
        self._apply_effects(effects)

    def _checkpoint_for_room(self) -> None:
        """Copy the write-ahead log into the database file, so that a later write can start
        the log over instead of growing it (once no reader still reads an older state from
        it). SQLite does so by itself only past 1,000 pages of log (4 MB): under a smaller
        file-size limit the log filled up, and every write failed, a delete too, until a
        restart (whose clean close copies it). The request that failed is not tried again:
        an append would take the room back at once. At most once a second, as an outage
        fails every write; not for an in-memory database, which has no log."""
        now = time.monotonic()
        if not self._commit_off_loop or now - self._checkpointed_at < CHECKPOINT_EVERY_S:
            return
        self._checkpointed_at = now
        conn = self._conn
        with contextlib.suppress(sqlite3.Error):  # no room for it either: nothing to do
            run_blocking(lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    def _lacks_room(self, exc: sqlite3.Error) -> bool:
        try:
            return self._out_of_room(exc)
        except Exception:  # a bug in the classification: the error stays a plain failure
            log.exception("could not tell whether a failed write lacked room")
            return False

    def _run_batch(self, batch: list[_Pending[Any]], effects: Effects) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            tx = Transaction(conn, self._clock_ms(), self._live)
            self._before_batch(tx)
            effects.merge(tx.effects)
            for pending in batch:
                self._run_one(conn, pending, effects)
            # Only the commit (the fsync) leaves the event loop: the statements before it take
            # microseconds, and running them on another thread would make each of them wait
            # for the GIL behind the busy event loop.
            if self._commit_off_loop:
                run_blocking(lambda: conn.execute("COMMIT"))
            else:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _run_one(self, conn: sqlite3.Connection, pending: _Pending[Any], effects: Effects) -> None:
        tx = Transaction(conn, self._clock_ms(), self._live)
        conn.execute("SAVEPOINT op")
        try:
            pending.result = pending.operation(tx)
        except StreamError as exc:
            conn.execute("ROLLBACK TO op")
            pending.error = exc
        except sqlite3.Error:
            # The batch fails. SQLite may already have rolled the whole transaction back (it
            # does on SQLITE_FULL), so the savepoint may be gone: no RELEASE to hide the cause.
            raise
        except Exception as exc:  # a bug in one operation must not sink the batch
            log.exception("write operation failed")
            conn.execute("ROLLBACK TO op")
            pending.error = StorageFailure(f"internal error while writing: {type(exc).__name__}")
        else:
            effects.merge(tx.effects)
        conn.execute("RELEASE op")
