"""The most recent entries of the streams being written, kept in memory for live readers.

A live reader (long-poll or SSE) asks for what was appended since its offset, which is
almost always in the last few appends. Serving those from memory means a thousand readers
woken by one append cost a thousand dictionary lookups, not a thousand SQLite queries.
Each stream keeps its newest entries up to `per_stream_bytes`; across all streams at most
`total_bytes` are kept, dropping the buffers of the streams written least recently first.
Both count what an entry costs in memory, not only its bytes (`ENTRY_OVERHEAD`). Only a
stream's own entries are cached (a fork's inherited range is read from disk).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .models import StreamInfo

PER_STREAM_BYTES = 256 * 1024
TOTAL_BYTES = 64 * 1024 * 1024
ENTRY_OVERHEAD = 128
"""Python's memory for a cached entry beside its bytes (its tuple, position, bytes header and
deque slot). Counting the bytes alone, a "64 MiB" cache of the agents' token chunks (about
100 bytes each) held 175 MB."""


@dataclass
class _Buffer:
    start: int  # position of the first cached entry (or the tail when empty)
    entries: deque[tuple[int, bytes]] = field(default_factory=deque)
    size: int = 0  # the entries' bytes: where they end is `start + size`
    cost: int = 0  # what they take in memory, as counted against the limits


class TailCache:
    def __init__(self, per_stream_bytes: int = PER_STREAM_BYTES,
                 total_bytes: int = TOTAL_BYTES) -> None:
        self._per_stream = per_stream_bytes
        self._total_limit = total_bytes
        self._buffers: OrderedDict[int, _Buffer] = OrderedDict()
        self._total = 0

    def appended(
        self, stream_id: int, info: StreamInfo, entries: list[tuple[int, bytes]] | None
    ) -> None:
        """Record a committed write; `entries` None means they are unknown (start afresh)."""
        buffer = self._buffers.get(stream_id)
        fresh = (
            entries is None
            or buffer is None
            or (entries and entries[0][0] != buffer.start + buffer.size)
            or (entries and entries[-1][0] + len(entries[-1][1]) != info.tail)
        )
        if fresh or buffer is None or entries is None:
            self.forget(stream_id)
            buffer = self._buffers[stream_id] = _Buffer(start=info.tail)
            if entries and entries[-1][0] + len(entries[-1][1]) == info.tail:
                buffer.start = entries[0][0]
            else:
                entries = []
        for start, data in entries:
            buffer.entries.append((start, data))
            buffer.size += len(data)
            buffer.cost += len(data) + ENTRY_OVERHEAD
            self._total += len(data) + ENTRY_OVERHEAD
        self._buffers.move_to_end(stream_id)
        self._trim(buffer)

    def forget(self, stream_id: int) -> None:
        buffer = self._buffers.pop(stream_id, None)
        if buffer is not None:
            self._total -= buffer.cost

    def read(
        self, stream_id: int, position: int, tail: int, max_bytes: int
    ) -> tuple[list[bytes], int] | None:
        """Entries from `position` if the cache holds everything from there to `tail`."""
        buffer = self._buffers.get(stream_id)
        if buffer is None or position < buffer.start or buffer.start + buffer.size < tail:
            return None
        if position == tail:
            return [], tail
        # Live readers are a few entries behind the tail: walk back from the newest entry.
        newer: list[tuple[int, bytes]] = []
        try:
            for start, data in reversed(buffer.entries):
                if start < position:
                    return None  # not an entry boundary: the disk path reports it
                if start < tail:  # entries past `tail` were appended after the caller looked
                    newer.append((start, data))
                if start == position:
                    break
            else:
                return None
        except RuntimeError:  # a commit on another thread changed them (a threaded server)
            return None
        out: list[bytes] = []
        size = 0
        next_position = position
        for start, data in reversed(newer):
            if out and size + len(data) > max_bytes:
                break
            out.append(data)
            size += len(data)
            next_position = start + len(data)
        return out, next_position

    def _trim(self, buffer: _Buffer) -> None:
        while buffer.cost > self._per_stream and buffer.entries:
            start, data = buffer.entries.popleft()
            buffer.size -= len(data)
            buffer.cost -= len(data) + ENTRY_OVERHEAD
            self._total -= len(data) + ENTRY_OVERHEAD
            buffer.start = start + len(data)
        while self._total > self._total_limit and self._buffers:
            oldest_id = next(iter(self._buffers))
            if self._buffers[oldest_id] is buffer:
                break
            self.forget(oldest_id)
