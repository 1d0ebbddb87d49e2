"""`Stream-Cursor` values for CDN request collapsing (section 10.1)."""

from __future__ import annotations

import random
import time

CURSOR_EPOCH_S = 1728432000  # 2024-10-09T00:00:00Z
CURSOR_INTERVAL_S = 20
MAX_CURSOR_DIGITS = 40  # parsing longer ones as numbers costs time for nothing


def current_interval(now: float | None = None) -> int:
    """The number of the cursor interval ``now`` (default: the present) falls in."""
    return int(((time.time() if now is None else now) - CURSOR_EPOCH_S) // CURSOR_INTERVAL_S)


def next_cursor(client_cursor: str | None, now: float | None = None) -> str:
    """The current interval number, or strictly more than the client's echoed cursor."""
    interval = current_interval(now)
    if client_cursor is not None and client_cursor.isascii() and client_cursor.isdigit():
        if len(client_cursor) > MAX_CURSOR_DIGITS:  # not one of ours; still answered above it
            return "1" + client_cursor
        echoed = int(client_cursor)
        if echoed >= interval:
            jitter_s = random.randint(1, 3600)
            return str(echoed + max(1, jitter_s // CURSOR_INTERVAL_S))
    return str(interval)


def later_cursor(sent: str) -> str:
    """The cursor for the next control event of an SSE connection that last sent ``sent``:
    the current interval once it has caught up, never less (cursors must not go back).

    Only a cursor the client echoed calls for jitter (`next_cursor`); re-jittering every
    event would push the cursor ever further ahead and give each reader its own value.
    """
    if len(sent) > MAX_CURSOR_DIGITS:  # ahead of any interval (and maybe past int()'s limit)
        return sent
    interval = current_interval()
    return str(interval) if interval > int(sent) else sent
