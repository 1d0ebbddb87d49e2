"""Subscription state in SQLite: links, cursors, wakes, leases and webhook retry schedules.

All of it lives in the same database as the streams, so a wake caused by an append is written
in the append's own transaction: a pull-wake event in the wake stream exists if and only if
the append that caused it does.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass

from ..errors import BadRequest, Conflict, NotFound
from ..offsets import format_offset
from ..subscriptions.globs import DOUBLE_STAR, matches
from ..subscriptions.model import (
    PULL_WAKE,
    WEBHOOK,
    Ack,
    LinkState,
    SubscriptionConfig,
    SubscriptionState,
    WakeFence,
    WakeGrant,
    retry_delay_s,
)
from . import writes
from .groupcommit import Transaction
from .rows import path_prefix_range


class Fenced(Conflict):
    """A callback, ack or release for a wake that is no longer current (7.3)."""

    code = "FENCED"


# ---------------------------------------------------------------------- reading state


def _row(conn: sqlite3.Connection, sub_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM subscriptions WHERE id = ? AND deleted = 0", (sub_id,)
    ).fetchone()
    return row


def _links(conn: sqlite3.Connection, sub_id: str) -> tuple[LinkState, ...]:
    rows = conn.execute(
        "SELECT l.path, l.explicit, l.acked_offset, s.tail FROM subscription_links l"
        " LEFT JOIN streams s ON s.path = l.path AND s.soft_deleted = 0"
        " WHERE l.subscription_id = ? ORDER BY l.path",
        (sub_id,),
    )
    return tuple(
        LinkState(
            path=r["path"],
            link_type="explicit" if r["explicit"] else "glob",
            acked_offset=r["acked_offset"],
            tail_offset=r["tail"] if r["tail"] is not None else r["acked_offset"],
        )
        for r in rows
    )


def _state(conn: sqlite3.Connection, row: sqlite3.Row) -> SubscriptionState:
    config = SubscriptionConfig(
        type=row["type"],
        pattern=row["pattern"],
        streams=tuple(
            r[0]
            for r in conn.execute(
                "SELECT path FROM subscription_links WHERE subscription_id = ? AND explicit = 1"
                " ORDER BY path",
                (row["id"],),
            )
        ),
        webhook_url=row["webhook_url"],
        wake_stream=row["wake_stream"],
        lease_ttl_ms=row["lease_ttl_ms"],
        description=row["description"],
    )
    return SubscriptionState(
        id=row["id"],
        config=config,
        base_url=row["base_url"],
        created_at_ms=row["created_at_ms"],
        generation=row["generation"],
        wake_id=row["wake_id"],
        holder=row["holder"],
        lease_expires_at_ms=row["lease_expires_at_ms"],
        delivery_attempt=row["delivery_attempt"],
        next_attempt_at_ms=row["next_attempt_at_ms"],
        last_error=row["last_error"],
        links=_links(conn, row["id"]),
    )


def get_subscription(conn: sqlite3.Connection, sub_id: str) -> SubscriptionState:
    row = _row(conn, sub_id)
    if row is None:
        raise NotFound(f"subscription {sub_id!r} does not exist", code="SUBSCRIPTION_NOT_FOUND")
    return _state(conn, row)


def list_subscriptions(
    conn: sqlite3.Connection, *, after: str = "", limit: int
) -> tuple[list[SubscriptionState], int, str | None]:
    """Up to `limit` subscriptions whose id comes after `after`, in id order; how many there
    are; and the id to list after for the next page (None on the last)."""
    rows = conn.execute(
        "SELECT * FROM subscriptions WHERE deleted = 0 AND id > ? ORDER BY id LIMIT ?",
        (after, limit + 1),
    ).fetchall()
    total = conn.execute("SELECT count(*) FROM subscriptions WHERE deleted = 0").fetchone()[0]
    next_after = rows[limit - 1]["id"] if len(rows) > limit else None
    return [_state(conn, r) for r in rows[:limit]], int(total), next_after


def next_deadline_ms(conn: sqlite3.Connection, resting: Collection[str] = (),
                     delivering: Collection[str] = ()) -> int | None:
    """The earliest lease expiry or webhook attempt due, if any; but not the attempts of
    the subscriptions `resting`, nor those of the wakes (ids) `delivering` now, which stay
    due until their delivery is recorded (another wake of the same subscription counts)."""
    lease = conn.execute(
        "SELECT lease_expires_at_ms FROM subscriptions WHERE lease_expires_at_ms IS NOT NULL"
        " AND deleted = 0 ORDER BY lease_expires_at_ms LIMIT 1"
    ).fetchone()
    skip = ""
    if resting:
        skip += f" AND id NOT IN ({','.join('?' * len(resting))})"
    if delivering:
        skip += f" AND wake_id NOT IN ({','.join('?' * len(delivering))})"
    attempt = conn.execute(
        "SELECT next_attempt_at_ms FROM subscriptions WHERE next_attempt_at_ms IS NOT NULL"
        f" AND deleted = 0{skip} ORDER BY next_attempt_at_ms LIMIT 1",
        (*resting, *delivering),
    ).fetchone()
    return min((int(row[0]) for row in (lease, attempt) if row is not None), default=None)


def due_webhook_wakes(conn: sqlite3.Connection, now_ms: int) -> list[SubscriptionState]:
    rows = conn.execute(
        "SELECT * FROM subscriptions WHERE deleted = 0 AND type = ? AND wake_id IS NOT NULL"
        " AND next_attempt_at_ms IS NOT NULL AND next_attempt_at_ms <= ?",
        (WEBHOOK, now_ms),
    ).fetchall()
    return [_state(conn, r) for r in rows]


# ---------------------------------------------------------------------- create, delete, links


def put_subscription(
    tx: Transaction, sub_id: str, config: SubscriptionConfig, base_url: str
) -> tuple[SubscriptionState, bool]:
    """Create a subscription, or re-confirm an identical one (6.2)."""
    conn = tx.conn
    existing = conn.execute("SELECT * FROM subscriptions WHERE id = ?", (sub_id,)).fetchone()
    if existing is not None and not existing["deleted"]:
        if existing["config_hash"] != config.config_hash():
            raise Conflict(
                f"subscription {sub_id!r} exists with a different configuration",
                code="SUBSCRIPTION_EXISTS",
            )
        return _state(conn, existing), False
    generation = existing["generation"] if existing is not None else 0
    conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
    conn.execute("DELETE FROM subscription_links WHERE subscription_id = ?", (sub_id,))
    conn.execute(
        "INSERT INTO subscriptions (id, type, pattern, literal_pattern, webhook_url, wake_stream,"
        " lease_ttl_ms, description, config_hash, base_url, created_at_ms, generation)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            sub_id,
            config.type,
            config.pattern,
            config.pattern if config.pattern and "*" not in config.pattern else None,
            config.webhook_url,
            config.wake_stream,
            config.lease_ttl_ms,
            config.description,
            config.config_hash(),
            base_url,
            tx.now_ms,
            generation,
        ),
    )
    if config.pattern is not None:
        _backfill_glob_links(tx, sub_id, config.pattern)
    add_explicit_links(tx, sub_id, config.streams)
    return get_subscription(conn, sub_id), True


def _backfill_glob_links(tx: Transaction, sub_id: str, pattern: str) -> None:
    """Link every existing matching stream at its current tail: no history is replayed.

    Only the paths the pattern can match are read (this runs in the commit every writer
    waits for): a literal pattern's own, or those starting with its text before the first
    `*`, less a `/` before a `**`, which may match no segment (`a/**` matches `a`)."""
    star = pattern.find("*")
    if star < 0:
        where, args = "path = ?", [pattern]
    else:
        prefix = pattern[:star]
        if pattern.startswith(DOUBLE_STAR, star) and prefix.endswith("/"):
            prefix = prefix[:-1]
        where, args = path_prefix_range(prefix)
    rows = tx.conn.execute(
        f"SELECT path, tail FROM streams WHERE soft_deleted = 0 AND {where}"
        " AND path NOT LIKE '\\_\\_ds/%' ESCAPE '\\'", args
    )
    links = [(sub_id, r["path"], r["tail"]) for r in rows if matches(pattern, r["path"])]
    tx.conn.executemany(
        "INSERT INTO subscription_links (subscription_id, path, glob, acked_offset)"
        " VALUES (?, ?, 1, ?)",
        links,
    )


def add_explicit_links(tx: Transaction, sub_id: str, paths: tuple[str, ...]) -> None:
    """Link streams explicitly at their current tail (6.4); linking twice changes nothing."""
    for path in paths:
        tail = tx.conn.execute(
            "SELECT tail FROM streams WHERE path = ? AND soft_deleted = 0", (path,)
        ).fetchone()
        tx.conn.execute(
            "INSERT INTO subscription_links (subscription_id, path, explicit, acked_offset)"
            " VALUES (?, ?, 1, ?) ON CONFLICT (subscription_id, path) DO UPDATE SET explicit = 1",
            (sub_id, path, tail[0] if tail else 0),
        )


def remove_explicit_link(tx: Transaction, sub_id: str, path: str) -> None:
    tx.conn.execute(
        "UPDATE subscription_links SET explicit = 0 WHERE subscription_id = ? AND path = ?",
        (sub_id, path),
    )
    tx.conn.execute(
        "DELETE FROM subscription_links WHERE subscription_id = ? AND path = ? AND explicit = 0"
        " AND glob = 0",
        (sub_id, path),
    )


def require_subscription(tx: Transaction, sub_id: str) -> sqlite3.Row:
    row = _row(tx.conn, sub_id)
    if row is None:
        raise NotFound(f"subscription {sub_id!r} does not exist", code="SUBSCRIPTION_NOT_FOUND")
    return row


def delete_subscription(tx: Transaction, sub_id: str) -> None:
    """Tombstone: the row stays so that its generation keeps fencing late requests."""
    require_subscription(tx, sub_id)
    tx.conn.execute(
        "UPDATE subscriptions SET deleted = 1, wake_id = NULL, holder = NULL,"
        " lease_expires_at_ms = NULL, next_attempt_at_ms = NULL WHERE id = ?",
        (sub_id,),
    )
    tx.conn.execute("DELETE FROM subscription_links WHERE subscription_id = ?", (sub_id,))
    tx.effects.wakes_issued = True


# ---------------------------------------------------------------------- waking


def on_stream_created(tx: Transaction, path: str, tail_before: int) -> None:
    """Link a new stream to every subscription whose pattern matches it, at the position
    before its initial data, so that data already counts as pending (6.2). A link that was
    there before (the stream was deleted and created again) starts there too: the new
    stream's offsets start again, and an acked offset of the old one would hide its data.
    If the new stream is a pull-wake subscription's wake stream, wake again the ones nobody
    holds that have pending data: their wake had no stream to go to, or went with the stream
    deleted before this one.

    A wake under way (claimed, or a webhook's) has the worker reading the old stream: its
    acks for this path would move the new stream's cursor over data nobody read. They are
    skipped (`_apply_acks`), and the new data wakes the subscription once more."""
    conn = tx.conn
    candidates = conn.execute(
        "SELECT id FROM subscriptions WHERE deleted = 0 AND literal_pattern = ?", (path,)
    ).fetchall()
    candidates += [
        row
        for row in conn.execute(
            "SELECT id, pattern FROM subscriptions WHERE deleted = 0 AND pattern IS NOT NULL"
            " AND literal_pattern IS NULL"
        ).fetchall()
        if matches(row["pattern"], path)
    ]
    conn.execute(
        "UPDATE subscription_links SET acked_offset = min(acked_offset, ?),"
        " made_again_in_wake = (SELECT s.wake_id FROM subscriptions s"
        "  WHERE s.id = subscription_id AND (s.holder IS NOT NULL OR s.type = ?))"
        " WHERE path = ?",
        (tail_before, WEBHOOK, path),
    )
    for row in candidates:
        conn.execute(
            "INSERT INTO subscription_links (subscription_id, path, glob, acked_offset)"
            " VALUES (?, ?, 1, ?) ON CONFLICT (subscription_id, path) DO UPDATE SET glob = 1,"
            " acked_offset = min(acked_offset, excluded.acked_offset)",
            (row["id"], path, tail_before),
        )
    for row in conn.execute(
        "SELECT id, wake_id FROM subscriptions WHERE wake_stream = ? AND type = ?"
        " AND deleted = 0 AND holder IS NULL",
        (path, PULL_WAKE),
    ).fetchall():
        if not _wake_again_if_pending(tx, row["id"]) and row["wake_id"] is not None:
            # Its event went with the old wake stream: no wake is in flight any more, and
            # one left set would keep every later write from waking the subscription.
            conn.execute("UPDATE subscriptions SET wake_id = NULL WHERE id = ?", (row["id"],))


def on_stream_written(tx: Transaction, path: str, tail_before: int, tail_after: int) -> None:
    """Wake the idle subscriptions linked to `path` that now have unacknowledged data."""
    if tail_after <= tail_before:
        return
    conn = tx.conn
    for row in conn.execute(
        "SELECT s.* FROM subscriptions s JOIN subscription_links l ON l.subscription_id = s.id"
        " WHERE l.path = ? AND s.deleted = 0 AND s.wake_id IS NULL AND l.acked_offset < ?",
        (path, tail_after),
    ).fetchall():
        _issue_wake(tx, row, path)


def _has_pending(conn: sqlite3.Connection, sub_id: str) -> str | None:
    """The path of some linked stream with unacknowledged data, if any."""
    row = conn.execute(
        "SELECT l.path FROM subscription_links l JOIN streams s ON s.path = l.path"
        " AND s.soft_deleted = 0 WHERE l.subscription_id = ? AND s.tail > l.acked_offset"
        " LIMIT 1",
        (sub_id,),
    ).fetchone()
    return None if row is None else str(row[0])


@dataclass(frozen=True)
class _RetrySchedule:
    """Where a webhook's failing deliveries had got to: the failures in a row, when the next
    attempt is due and why the last one failed."""

    attempt: int
    next_attempt_at_ms: int
    error: str | None


def _issue_wake(tx: Transaction, row: sqlite3.Row, trigger_path: str | None,
                retry: _RetrySchedule | None = None) -> str | None:
    """Start a new wake generation; pull-wake writes its event to the wake stream now, and a
    webhook's lease starts as its delivery goes out (7.3): now, or when the `retry` schedule
    of an earlier wake whose deliveries failed says.

    None, and no wake, if the event cannot be written (the wake stream is missing, expired,
    deleted or closed): a wake nobody can see would stay unclaimed and stop every later one.
    The next write to a linked stream tries again, and so does the wake stream's creation."""
    generation = row["generation"] + 1
    wake_id = "w_" + secrets.token_hex(8)
    webhook = row["type"] == WEBHOOK
    if row["type"] == PULL_WAKE:
        event = {
            "type": "wake",
            "subscription_id": row["id"],
            "stream": trigger_path,
            "generation": generation,
            "wake_id": wake_id,
            "ts": tx.now_ms,
        }
        if not writes.append_internal(tx, row["wake_stream"], [json.dumps(event).encode()]):
            _note_unwritable_wake(tx, row)
            return None
    attempt_at = lease_expires = None
    if webhook:
        attempt_at = tx.now_ms if retry is None else max(tx.now_ms, retry.next_attempt_at_ms)
        lease_expires = attempt_at + row["lease_ttl_ms"]
    tx.conn.execute(
        "UPDATE subscriptions SET generation = ?, wake_id = ?, holder = NULL,"
        " lease_expires_at_ms = ?, delivery_attempt = ?, last_error = ?,"
        " next_attempt_at_ms = ? WHERE id = ?",
        (generation, wake_id, lease_expires, 0 if retry is None else retry.attempt,
         None if retry is None else retry.error, attempt_at, row["id"]),
    )
    tx.effects.wakes_issued = True
    return wake_id


def _note_unwritable_wake(tx: Transaction, row: sqlite3.Row) -> None:
    """Say why no wake comes (a GET shows `last_error`), until a wake is written again: a
    worker reading a closed wake stream would otherwise wait without a word."""
    stream = tx.conn.execute("SELECT closed FROM streams WHERE path = ? AND soft_deleted = 0",
                             (row["wake_stream"],)).fetchone()
    why = "is closed" if stream is not None and stream["closed"] else "does not exist"
    error = f"no wake can be written: the wake stream {row['wake_stream']!r} {why}"
    if row["last_error"] != error:
        tx.conn.execute("UPDATE subscriptions SET last_error = ? WHERE id = ?",
                        (error, row["id"]))


def _wake_again_if_pending(tx: Transaction, sub_id: str,
                           retry: _RetrySchedule | None = None) -> bool:
    pending = _has_pending(tx.conn, sub_id)
    if pending is None:
        return False
    row = _row(tx.conn, sub_id)
    assert row is not None
    return _issue_wake(tx, row, pending, retry) is not None


def _end_wake(tx: Transaction, sub_id: str, retry: _RetrySchedule | None = None) -> bool:
    """Clear the wake and lease; returns whether a new wake was issued for pending work (a
    webhook's first delivered on the `retry` schedule, if given)."""
    tx.conn.execute(
        "UPDATE subscriptions SET wake_id = NULL, holder = NULL, lease_expires_at_ms = NULL,"
        " next_attempt_at_ms = NULL, delivery_attempt = 0, last_error = NULL WHERE id = ?",
        (sub_id,),
    )
    tx.effects.wakes_issued = True
    return _wake_again_if_pending(tx, sub_id, retry)


NOT_ANSWERED_IN_LEASE = "the receiver did not answer the delivery within the wake's lease"


def expire_leases(tx: Transaction) -> int:
    """End every lease whose time is up (7.3) and wake again where work is pending."""
    rows = tx.conn.execute(
        "SELECT id, type, delivery_attempt, next_attempt_at_ms, last_error FROM subscriptions"
        " WHERE deleted = 0 AND lease_expires_at_ms IS NOT NULL AND lease_expires_at_ms <= ?",
        (tx.now_ms,),
    ).fetchall()
    for row in rows:
        _end_wake(tx, row["id"], _retry_after_expiry(row, tx.now_ms))
    return len(rows)


def _retry_after_expiry(row: sqlite3.Row, now_ms: int) -> _RetrySchedule | None:
    """When the wake that follows an expired webhook wake goes out. At once if the receiver
    had it (a delivery answered, or a callback); if not, on the backoff its failures reached
    (7.1): a receiver that is down, or takes a POST and never answers, would otherwise be
    sent a new wake every lease, however many were still open."""
    if row["type"] != WEBHOOK or row["next_attempt_at_ms"] is None:
        return None
    if row["next_attempt_at_ms"] > now_ms:  # resting after a failure: the rest carries over
        return _RetrySchedule(row["delivery_attempt"], row["next_attempt_at_ms"],
                              row["last_error"])
    # Its delivery was under way (or due) for the whole lease: that counts as a failure.
    return _RetrySchedule(row["delivery_attempt"] + 1,
                          now_ms + int(retry_delay_s(row["delivery_attempt"]) * 1000),
                          NOT_ANSWERED_IN_LEASE)


def release_holder(tx: Transaction, worker: str) -> int:
    """End every lease `worker` holds, waking again where work is pending: for a worker known
    to have stopped, whose leases would otherwise hold its conversations until they expire."""
    rows = tx.conn.execute(
        "SELECT id FROM subscriptions WHERE deleted = 0 AND holder = ?", (worker,),
    ).fetchall()
    for row in rows:
        _end_wake(tx, row["id"])
    return len(rows)


# ---------------------------------------------------------------------- claim, ack, release


def claim(tx: Transaction, sub_id: str, worker: str) -> WakeGrant:
    """Lease a pull-wake subscription to `worker` (7.2)."""
    row = require_subscription(tx, sub_id)
    if row["type"] != PULL_WAKE:
        raise BadRequest("only pull-wake subscriptions are claimed", code="NOT_PULL_WAKE")
    lease_live = row["lease_expires_at_ms"] is not None and row["lease_expires_at_ms"] > tx.now_ms
    if row["holder"] is not None and lease_live:
        raise Conflict(
            f"subscription {sub_id!r} is claimed by {row['holder']!r}",
            code="ALREADY_CLAIMED",
            details={"current_holder": row["holder"], "generation": row["generation"]},
        )
    if row["wake_id"] is None or row["holder"] is not None:
        # No wake waiting to be claimed (or its lease lapsed): a claim starts a fresh one,
        # so a worker can always take over a subscription that nobody holds.
        _issue_wake_for_claim(tx, row)
        row = require_subscription(tx, sub_id)
    tx.conn.execute(
        "UPDATE subscriptions SET holder = ?, lease_expires_at_ms = ? WHERE id = ?",
        (worker, tx.now_ms + row["lease_ttl_ms"], sub_id),
    )
    tx.effects.wakes_issued = True
    return WakeGrant(sub_id, row["wake_id"], row["generation"], row["lease_ttl_ms"], _links(tx.conn, sub_id))


def _issue_wake_for_claim(tx: Transaction, row: sqlite3.Row) -> None:
    tx.conn.execute(
        "UPDATE subscriptions SET generation = generation + 1, wake_id = ?, holder = NULL,"
        " lease_expires_at_ms = NULL WHERE id = ?",
        ("w_" + secrets.token_hex(8), row["id"]),
    )


def _fenced_row(tx: Transaction, sub_id: str, fence: WakeFence) -> sqlite3.Row:
    """The subscription row if the request's wake is the current one, else `409 FENCED`."""
    row = _row(tx.conn, sub_id)
    if row is None:
        raise Fenced(f"subscription {sub_id!r} was deleted", code="FENCED")
    current = row["generation"], row["wake_id"]
    if (
        row["wake_id"] is None
        or (fence.token_generation, fence.token_wake) != current
        or (fence.generation, fence.wake_id) != current
    ):
        raise Fenced("this wake is no longer current", code="FENCED")
    return row


def acknowledge(
    tx: Transaction, sub_id: str, fence: WakeFence, acks: tuple[Ack, ...], *, done: bool,
    kind: str,
) -> bool:
    """Apply acks; `done` ends the wake. Returns whether another wake was issued."""
    row = _fenced_row(tx, sub_id, fence)
    if row["type"] != kind:
        raise BadRequest(f"this endpoint is not for {row['type']} subscriptions", code="WRONG_TYPE")
    if _lease_over(row, tx.now_ms) or (kind == PULL_WAKE and row["holder"] is None):
        raise Fenced("the lease has ended", code="FENCED")
    _apply_acks(tx, sub_id, row["wake_id"], acks)
    if done:
        return _end_wake(tx, sub_id)
    if kind == WEBHOOK:  # the receiver has the wake: no delivery is due, none has failed
        tx.conn.execute(
            "UPDATE subscriptions SET lease_expires_at_ms = ?, next_attempt_at_ms = NULL,"
            " delivery_attempt = 0, last_error = NULL WHERE id = ?",
            (tx.now_ms + row["lease_ttl_ms"], sub_id),
        )
    else:
        tx.conn.execute("UPDATE subscriptions SET lease_expires_at_ms = ? WHERE id = ?",
                        (tx.now_ms + row["lease_ttl_ms"], sub_id))
    tx.effects.wakes_issued = True
    return False


def _apply_acks(tx: Transaction, sub_id: str, wake_id: str | None, acks: tuple[Ack, ...], *,
                snapshot: bool = False) -> None:
    """Move acked offsets forward. An ack for a linked stream deleted meanwhile, or deleted
    and made again during wake `wake_id`, is moot and skipped: refusing it would refuse the
    acks of the other streams and the `done` with it. The acks of a `snapshot` (the links as
    a webhook delivery saw them, which a receiver's `done` stands for) also skip a stream
    unlinked since, or made again shorter."""
    links: dict[str, int | None] = {}
    for row in tx.conn.execute(
        "SELECT l.path, s.tail, l.made_again_in_wake FROM subscription_links l"
        " LEFT JOIN streams s ON s.path = l.path AND s.soft_deleted = 0"
        " WHERE l.subscription_id = ?",
        (sub_id,),
    ):
        made_again_now = wake_id is not None and row["made_again_in_wake"] == wake_id
        links[row["path"]] = None if made_again_now else row["tail"]
    for ack in acks:
        if snapshot and (ack.stream not in links or (links[ack.stream] or 0) < ack.offset):
            continue
        if ack.stream not in links:
            raise BadRequest(
                f"stream {ack.stream!r} is not linked to this subscription", code="UNKNOWN_STREAM"
            )
        tail = links[ack.stream]
        if tail is None:
            continue
        if ack.offset > tail:
            raise BadRequest(
                f"ack offset {format_offset(ack.offset)} is beyond the tail of {ack.stream!r}",
                code="OFFSET_OUT_OF_RANGE",
            )
        tx.conn.execute(
            "UPDATE subscription_links SET acked_offset = max(acked_offset, ?)"
            " WHERE subscription_id = ? AND path = ?",
            (ack.offset, sub_id, ack.stream),
        )


def release(tx: Transaction, sub_id: str, fence: WakeFence) -> bool:
    if _lease_over(_fenced_row(tx, sub_id, fence), tx.now_ms):
        raise Fenced("the lease has ended", code="FENCED")
    return _end_wake(tx, sub_id)


def _lease_over(row: sqlite3.Row, now_ms: int) -> bool:
    """Whether the wake's lease has run out (section 7.3): the sweep that clears it may not
    have run yet, and the holder's acks, callbacks and release must not outlive it. A
    pull-wake lease starts at the claim; a webhook's as its wake's delivery goes out (a
    webhook wake stored before leases started so has none, and is not over)."""
    expires = row["lease_expires_at_ms"]
    if row["type"] == PULL_WAKE:
        return expires is None or expires <= now_ms
    return expires is not None and expires <= now_ms


# ---------------------------------------------------------------------- webhook delivery


def record_delivery(
    tx: Transaction,
    state: SubscriptionState,
    *,
    delivered: bool,
    done: bool,
    snapshot: tuple[LinkState, ...],
    error: str | None,
    retry_at_ms: int | None,
) -> None:
    """Store a delivery attempt's outcome, if its wake is still the current one and its
    lease has not run out: then its answer, `{"done": true}` included, comes too late, as a
    callback would (the sweep counts the delivery as failed and wakes again)."""
    row = _row(tx.conn, state.id)
    if row is None or row["wake_id"] != state.wake_id or row["generation"] != state.generation:
        return
    if _lease_over(row, tx.now_ms):
        return
    if delivered and done:
        _apply_acks(
            tx, state.id, state.wake_id,
            tuple(Ack(link.path, link.tail_offset) for link in snapshot), snapshot=True,
        )
        _end_wake(tx, state.id)
        return
    if delivered:  # the lease runs on from the wake's issue: only callbacks extend it
        tx.conn.execute(
            "UPDATE subscriptions SET next_attempt_at_ms = NULL, delivery_attempt = 0,"
            " last_error = NULL, lease_expires_at_ms = coalesce(lease_expires_at_ms, ?)"
            " WHERE id = ?",
            (tx.now_ms + row["lease_ttl_ms"], state.id),
        )
    elif row["next_attempt_at_ms"] is None:
        # The receiver called back during this delivery (a callback ends the attempts): it
        # has the wake, whatever became of its answer to the POST. Sent again, it would be
        # worked on twice.
        tx.conn.execute(
            "UPDATE subscriptions SET next_attempt_at_ms = NULL, delivery_attempt = 0,"
            " last_error = NULL WHERE id = ?", (state.id,),
        )
    else:  # (a wake stored before webhook leases started at the issue gets one now)
        tx.conn.execute(
            "UPDATE subscriptions SET next_attempt_at_ms = ?, delivery_attempt ="
            " delivery_attempt + 1, last_error = ?,"
            " lease_expires_at_ms = coalesce(lease_expires_at_ms, ?) WHERE id = ?",
            (retry_at_ms, error, tx.now_ms + row["lease_ttl_ms"], state.id),
        )
    tx.effects.wakes_issued = True
