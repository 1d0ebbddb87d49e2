"""Telling a full disk from a failing one when SQLite reports a write error.

SQLite turns only `ENOSPC` into `SQLITE_FULL`. A file-size limit (`EFBIG`) or a user's disk
quota (`EDQUOT`) reaches it as a "disk I/O error" (`SQLITE_IOERR_WRITE`, or `_FSYNC` where the
file system allocates at writeback), which would send clients a 503 and an operator looking
for a broken disk. So after such an error `RoomCheck` looks for itself: a database file at the
process's file-size limit, or a probe write into the data directory failing for lack of room,
means the storage is full.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import resource
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

from .blocking import run_blocking

log = logging.getLogger(__name__)

PROBE_BYTES = 64 * 1024
"""Written (and synced) by the probe: more than one page of SQLite's, so a quota that lets no
page through also refuses it."""
RECHECK_S = 1.0
"""An outage fails every write: the probe's answer serves this long."""

WRITE_ERRORS = frozenset({sqlite3.SQLITE_IOERR_WRITE, sqlite3.SQLITE_IOERR_FSYNC,
                          sqlite3.SQLITE_IOERR_TRUNCATE, sqlite3.SQLITE_IOERR_SHMSIZE})
"""SQLite's errors that a lack of room can be behind."""
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
PROBE_PREFIX = ".room-probe-"
T = TypeVar("T")


class RoomCheck:
    """Whether the database at `db_path` failed a write for lack of room."""

    def __init__(self, db_path: str) -> None:
        self._db_path = db_path
        self._directory = os.path.dirname(os.path.abspath(db_path))
        self._checked_at = -RECHECK_S
        self._exhausted = False
        for left in glob.glob(os.path.join(glob.escape(self._directory), PROBE_PREFIX + "*")):
            _quietly(os.unlink, left)  # a probe cut short by a kill

    def explains(self, exc: sqlite3.Error) -> bool:
        """True if `exc` is a write error and the storage has no room for more."""
        if getattr(exc, "sqlite_errorcode", None) not in WRITE_ERRORS:
            return False
        now = time.monotonic()
        if now - self._checked_at >= RECHECK_S:
            try:
                self._exhausted = run_blocking(
                    lambda: self._at_size_limit() or self._probe_fails())
            except Exception:  # noqa: BLE001 - the disk's own failure: not for lack of room
                log.warning("could not tell whether the storage is full", exc_info=True)
                self._exhausted = False
            self._checked_at = time.monotonic()
        return self._exhausted

    def _at_size_limit(self) -> bool:
        limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if limit == resource.RLIM_INFINITY:
            return False
        for suffix in ("", "-wal", "-journal"):
            try:
                size = os.path.getsize(self._db_path + suffix)
            except OSError:
                continue
            if size + PROBE_BYTES > limit:
                return True
        return False

    def _probe_fails(self) -> bool:
        try:
            fd, path = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=self._directory)
        except OSError as exc:
            return exc.errno in _NO_ROOM
        try:
            block = memoryview(b"\0" * PROBE_BYTES)
            while block:
                block = block[os.write(fd, block):]
            os.fsync(fd)
        except OSError as exc:
            return exc.errno in _NO_ROOM
        finally:
            _quietly(os.close, fd)  # a failing disk may refuse these too: it is what the
            _quietly(os.unlink, path)  # error being classified is about
        return False


def _quietly(clean_up: Callable[[T], object], target: T) -> None:
    try:
        clean_up(target)
    except OSError:
        pass
