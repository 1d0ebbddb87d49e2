"""One server process per data directory.

Two processes on one database would each keep their own in-memory view of the streams (tails,
live readers' wake-ups, leases): a stream created through one would be missing in the other,
and each would answer with its own idea of a stream's end. The lock is an advisory `flock` on
a file in the directory, held for the process's life and dropped by the kernel when the
process dies, `kill -9` included, so no stale lock is ever left behind.
"""

from __future__ import annotations

import fcntl
import os

LOCK_FILE = "server.lock"


class DirectoryInUse(RuntimeError):
    """Another process holds the directory's lock."""


class DirectoryLock:
    @classmethod
    def probe(cls, directory: str) -> None:
        """Raise `DirectoryInUse` if another process holds the directory now (the lock is not
        kept: for a process that opens the directory before it knows it will serve it)."""
        cls(directory, record_pid=False).release()

    def __init__(self, directory: str, *, record_pid: bool = True) -> None:
        fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", errors="replace").strip()
            os.close(fd)
            who = f"another server process (pid {holder})" if holder.isdigit() else \
                "another server process"
            raise DirectoryInUse(f"{who} is using it: stop that one first, or give this one"
                                 " a data directory of its own") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        if record_pid:
            try:  # only for the message another process shows: a full disk must not stop us
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode("ascii"))
            except OSError:
                pass

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd = None
