"""The agents' persisted processed-prompt offsets: a small SQLite file in the data directory.

For each conversation: the prompts-stream offset up to which every prompt has a finished
answer. An agent resumes reading prompts from there; the subscription's acked offset mirrors
it. The responses stream stays the authority on what was answered: this file only saves the
agent from re-reading what it knows is done. So a file that fails (locked by someone else's
transaction, a full disk) costs a warning and some re-reading, never an agent.

The file also remembers which answers were cut short by a clean stop of their supervisor
(Ctrl+C, SIGTERM), so that those restarts do not count toward the attempts an agent makes
before it gives up on an answer that keeps killing it. Lost, that costs at most an answer
given up on early.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

from agent_actors._blocking import off_loop

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 1.0
"""How long a statement waits for another connection's lock on the file before giving up."""


class OffsetsFileError(RuntimeError):
    """The offsets file cannot be opened (no access, not a directory, a damaged file): the
    supervisor cannot start, and the message says why."""


class OffsetsStore:
    """Processed offsets per conversation; `data_dir=None` keeps them in memory."""

    def __init__(self, data_dir: str | None) -> None:
        target = ":memory:" if data_dir is None else os.path.join(data_dir, "agents.sqlite3")
        self._target = target
        self._lock = threading.Lock()
        if data_dir is not None and os.path.exists(data_dir) and not os.path.isdir(data_dir):
            raise OffsetsFileError(f"cannot keep the agents' offsets in {data_dir!r}: it is a"
                                   " file, not a directory")  # makedirs says "File exists"
        try:
            if data_dir is not None:
                os.makedirs(data_dir, exist_ok=True)
            self._conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                                         timeout=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise OffsetsFileError(
                f"cannot open the agents' offsets file {target!r}: {exc}") from exc
        try:
            if data_dir is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS processed_offsets (conversation_id TEXT PRIMARY KEY,"
                " prompts_offset TEXT NOT NULL, updated_at_ms INTEGER NOT NULL)"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS removed_conversations"
                " (conversation_id TEXT PRIMARY KEY, removed_at_ms INTEGER NOT NULL)"
            )
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS clean_stops (conversation_id TEXT NOT NULL,"
                " prompt_id TEXT NOT NULL, attempt INTEGER NOT NULL,"
                " stopped_at_ms INTEGER NOT NULL, PRIMARY KEY (conversation_id, prompt_id, attempt))"
            )
        except (OSError, sqlite3.Error) as exc:
            self._conn.close()
            raise OffsetsFileError(
                f"cannot open the agents' offsets file {target!r}: {exc}") from exc

    def get(self, conversation_id: str) -> str | None:
        """The stored offset; None if there is none, or if the file cannot be read."""
        try:
            with self._lock:
                row = off_loop(lambda: self._conn.execute(
                    "SELECT prompts_offset FROM processed_offsets WHERE conversation_id = ?",
                    (conversation_id,),
                ).fetchone())
        except sqlite3.Error as exc:
            self._warn("read", conversation_id, exc)
            return None
        return None if row is None else str(row[0])

    def get_all(self) -> dict[str, str]:
        """Every stored offset, by conversation (a start's look at thousands of them reads
        the file once); empty if the file cannot be read."""
        try:
            with self._lock:
                rows = off_loop(lambda: self._conn.execute(
                    "SELECT conversation_id, prompts_offset FROM processed_offsets").fetchall())
        except sqlite3.Error as exc:
            self._warn("read", "(all)", exc)
            return {}
        return {str(cid): str(offset) for cid, offset in rows}

    def save(self, conversation_id: str, offset: str) -> None:
        """Store `offset` unless an equal or later one is already stored (offsets sort)."""
        row = (conversation_id, offset, int(time.time() * 1000))
        try:
            with self._lock:  # held while the pool's thread runs the statement: one at a time
                off_loop(lambda: self._conn.execute(
                    "INSERT INTO processed_offsets VALUES (?, ?, ?) ON CONFLICT (conversation_id)"
                    " DO UPDATE SET prompts_offset = excluded.prompts_offset,"
                    " updated_at_ms = excluded.updated_at_ms"
                    " WHERE excluded.prompts_offset > processed_offsets.prompts_offset",
                    row,
                ))
        except sqlite3.Error as exc:
            self._warn("save", conversation_id, exc)

    def record_clean_stop(self, conversation_id: str, prompt_id: str, attempt: int) -> None:
        """Attempt `attempt` at the answer to `prompt_id` was cut short by a clean stop."""
        row = (conversation_id, prompt_id, attempt, int(time.time() * 1000))
        try:
            with self._lock:
                off_loop(lambda: self._conn.execute(
                    "INSERT OR IGNORE INTO clean_stops VALUES (?, ?, ?, ?)", row))
        except sqlite3.Error as exc:
            self._warn_clean_stops("record", conversation_id, exc)

    def clean_stops(self, conversation_id: str) -> dict[str, set[int]]:
        """The attempts cut short by clean stops, per prompt id (none if unreadable)."""
        try:
            with self._lock:
                rows = off_loop(lambda: self._conn.execute(
                    "SELECT prompt_id, attempt FROM clean_stops WHERE conversation_id = ?",
                    (conversation_id,),
                ).fetchall())
        except sqlite3.Error as exc:
            self._warn_clean_stops("read", conversation_id, exc)
            return {}
        stops: dict[str, set[int]] = {}
        for prompt_id, attempt in rows:
            stops.setdefault(str(prompt_id), set()).add(int(attempt))
        return stops

    def forget_clean_stops(self, conversation_id: str, prompt_id: str,
                           from_attempt: int = 0) -> None:
        """Drop the records of attempts `from_attempt` and later at `prompt_id`'s answer."""
        try:
            with self._lock:
                off_loop(lambda: self._conn.execute(
                    "DELETE FROM clean_stops WHERE conversation_id = ? AND prompt_id = ?"
                    " AND attempt >= ?", (conversation_id, prompt_id, from_attempt)))
        except sqlite3.Error as exc:
            self._warn_clean_stops("drop", conversation_id, exc)

    def record_removed(self, conversation_id: str) -> None:
        """A deleted conversation's streams and subscription are gone: drop its offset, and
        remember it, so that a later start only checks that nothing came back."""
        removed = (conversation_id, int(time.time() * 1000))

        def run() -> None:
            self._conn.execute("DELETE FROM processed_offsets WHERE conversation_id = ?",
                               (conversation_id,))
            self._conn.execute("DELETE FROM clean_stops WHERE conversation_id = ?",
                               (conversation_id,))
            self._conn.execute("INSERT OR IGNORE INTO removed_conversations VALUES (?, ?)",
                               removed)

        try:
            with self._lock:
                off_loop(run)
        except sqlite3.Error as exc:
            self._warn("remove", conversation_id, exc)

    def is_removed(self, conversation_id: str) -> bool:
        """Whether `record_removed` was done for it (False if the file cannot be read)."""
        try:
            with self._lock:
                row = off_loop(lambda: self._conn.execute(
                    "SELECT 1 FROM removed_conversations WHERE conversation_id = ?",
                    (conversation_id,),
                ).fetchone())
        except sqlite3.Error as exc:
            self._warn("read", conversation_id, exc)
            return False
        return row is not None

    def _warn(self, action: str, conversation_id: str, exc: sqlite3.Error) -> None:
        log.warning("could not %s the processed offset of %s in %s (%s); going on without it:"
                    " the responses stream tells which prompts are answered",
                    action, conversation_id, self._target, exc)

    def _warn_clean_stops(self, action: str, conversation_id: str, exc: sqlite3.Error) -> None:
        log.warning("could not %s the clean stops of %s in %s (%s): an answer restarted after"
                    " a clean stop may count it as an interruption", action, conversation_id,
                    self._target, exc)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
