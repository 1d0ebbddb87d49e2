"""`Stream-Cursor` values for CDN request collapsing (section 10.1)."""

from __future__ import annotations

import random
import time

CURSOR_EPOCH_S = 1728432000  # 2024-10-09T00:00:00Z
CURSOR_INTERVAL_S = 20


def next_cursor(client_cursor: str | None, now: float | None = None) -> str:
    """The current interval number, or strictly more than the client's echoed cursor."""
    interval = int(((time.time() if now is None else now) - CURSOR_EPOCH_S) // CURSOR_INTERVAL_S)
    if client_cursor is not None and client_cursor.isascii() and client_cursor.isdigit():
        echoed = int(client_cursor[:30])
        if echoed >= interval:
            jitter_s = random.randint(1, 3600)
            return str(echoed + max(1, jitter_s // CURSOR_INTERVAL_S))
    return str(interval)
