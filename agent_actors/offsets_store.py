"""The agents' persisted processed-prompt offsets: a small SQLite file in the data directory.

For each conversation: the prompts-stream offset up to which every prompt has a finished
answer. An agent resumes reading prompts from there; the subscription's acked offset mirrors
it. The responses stream stays the authority on what was answered: this file only saves the
agent from re-reading what it knows is done.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from agent_actors._blocking import off_loop


class OffsetsStore:
    """Processed offsets per conversation; `data_dir=None` keeps them in memory."""

    def __init__(self, data_dir: str | None) -> None:
        if data_dir is None:
            target = ":memory:"
        else:
            os.makedirs(data_dir, exist_ok=True)
            target = os.path.join(data_dir, "agents.sqlite3")
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        if data_dir is not None:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS processed_offsets (conversation_id TEXT PRIMARY KEY,"
            " prompts_offset TEXT NOT NULL, updated_at_ms INTEGER NOT NULL)"
        )

    def get(self, conversation_id: str) -> str | None:
        with self._lock:
            row = off_loop(lambda: self._conn.execute(
                "SELECT prompts_offset FROM processed_offsets WHERE conversation_id = ?",
                (conversation_id,),
            ).fetchone())
        return None if row is None else str(row[0])

    def save(self, conversation_id: str, offset: str) -> None:
        """Store `offset` unless an equal or later one is already stored (offsets sort)."""
        row = (conversation_id, offset, int(time.time() * 1000))
        with self._lock:  # held while the pool's thread runs the statement: one at a time
            off_loop(lambda: self._conn.execute(
                "INSERT INTO processed_offsets VALUES (?, ?, ?) ON CONFLICT (conversation_id)"
                " DO UPDATE SET prompts_offset = excluded.prompts_offset,"
                " updated_at_ms = excluded.updated_at_ms"
                " WHERE excluded.prompts_offset > processed_offsets.prompts_offset",
                row,
            ))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
