"""The SQLite schema, created idempotently and migrated by version number."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 7

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE streams (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        content_type TEXT NOT NULL,
        ttl_seconds INTEGER,
        expires_at_ms INTEGER,
        created_at_ms INTEGER NOT NULL,
        last_access_ms INTEGER NOT NULL,
        tail INTEGER NOT NULL DEFAULT 0,
        closed INTEGER NOT NULL DEFAULT 0,
        closed_by_producer TEXT,
        closed_by_epoch INTEGER,
        closed_by_seq INTEGER,
        last_stream_seq TEXT,
        fork_source_id INTEGER REFERENCES streams(id),
        fork_offset INTEGER,
        fork_request_offset INTEGER,
        fork_sub_offset INTEGER NOT NULL DEFAULT 0,
        soft_deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX streams_fork_source ON streams(fork_source_id)
        WHERE fork_source_id IS NOT NULL;
    CREATE TABLE entries (
        stream_id INTEGER NOT NULL,
        start INTEGER NOT NULL,
        data BLOB NOT NULL,
        append_end INTEGER NOT NULL,
        PRIMARY KEY (stream_id, start)
    );
    CREATE TABLE producers (
        stream_id INTEGER NOT NULL,
        producer_id TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (stream_id, producer_id)
    );
    """,
    2: """
    CREATE TABLE subscriptions (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        pattern TEXT,
        webhook_url TEXT,
        wake_stream TEXT,
        lease_ttl_ms INTEGER NOT NULL,
        description TEXT,
        config_hash TEXT NOT NULL,
        base_url TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        generation INTEGER NOT NULL DEFAULT 0,
        wake_id TEXT,
        holder TEXT,
        lease_expires_at_ms INTEGER,
        delivery_attempt INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ms INTEGER,
        last_error TEXT
    );
    CREATE TABLE subscription_links (
        subscription_id TEXT NOT NULL,
        path TEXT NOT NULL,
        explicit INTEGER NOT NULL DEFAULT 0,
        glob INTEGER NOT NULL DEFAULT 0,
        acked_offset INTEGER NOT NULL,
        PRIMARY KEY (subscription_id, path)
    );
    CREATE INDEX subscription_links_path ON subscription_links(path);
    """,
    # Patterns without wildcards (one conversation's prompts stream, say) are looked up by
    # index when a stream is created, instead of glob-matching every subscription.
    3: """
    ALTER TABLE subscriptions ADD COLUMN literal_pattern TEXT;
    UPDATE subscriptions SET literal_pattern = pattern WHERE instr(pattern, '*') = 0;
    CREATE INDEX subscriptions_literal_pattern ON subscriptions(literal_pattern)
        WHERE literal_pattern IS NOT NULL;
    """,
    # A stream created is looked up as a wake stream too (subscriptions left without a
    # wake because theirs was missing are woken then).
    4: """
    CREATE INDEX subscriptions_wake_stream ON subscriptions(wake_stream)
        WHERE wake_stream IS NOT NULL;
    """,
    # The wake under way when a linked stream was deleted and made again: that wake's acks
    # for it name offsets of the old stream (see `on_stream_created`).
    5: """
    ALTER TABLE subscription_links ADD COLUMN made_again_in_wake TEXT;
    """,
    # The scheduler looks for the next lease to expire and webhook attempt to make after every
    # claim, ack and wake: without these, each look read every subscription (24 ms at 100,000).
    6: """
    CREATE INDEX subscriptions_lease_expiry ON subscriptions(lease_expires_at_ms)
        WHERE lease_expires_at_ms IS NOT NULL;
    CREATE INDEX subscriptions_next_attempt ON subscriptions(next_attempt_at_ms)
        WHERE next_attempt_at_ms IS NOT NULL;
    """,
    # A stream created is matched against the patterns with wildcards; the literal ones are
    # looked up by index (3). Without this, each creation read every subscription.
    7: """
    CREATE INDEX subscriptions_glob ON subscriptions(deleted)
        WHERE pattern IS NOT NULL AND literal_pattern IS NULL;
    """,
}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database to SCHEMA_VERSION, one versioned step at a time."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for step in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        for statement in _split(_MIGRATIONS[step]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {step}")
        conn.execute("COMMIT")


def check_writable(conn: sqlite3.Connection) -> None:
    """A write transaction that changes nothing. SQLite opens a database file it may not
    write (its permissions, a read-only mount) read-only, without a word: it fails here, as
    the server starts, not at every append after it (a 503 each, for as long as it runs)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("COMMIT")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _split(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
