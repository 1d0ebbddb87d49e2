"""The tail cache answers exactly what the entries on disk would, or declines."""

from __future__ import annotations

import dataclasses
import sys
import threading
import tracemalloc
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from streams_server.storage.engine import StreamStore
from streams_server.storage.models import Expiry, StreamInfo
from streams_server.storage.tailcache import ENTRY_OVERHEAD, TailCache

_INFO = StreamInfo(stream_id=1, path="s", content_type="application/octet-stream", tail=0,
                   closed=False, expiry=Expiry(), created_at_ms=0, last_access_ms=0)


def _entries(sizes: list[int]) -> list[tuple[int, bytes]]:
    entries, position = [], 0
    for index, size in enumerate(sizes):
        entries.append((position, bytes([index % 256]) * size))
        position += size
    return entries


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=60),
       per_stream=st.integers(1, 2000), data=st.data())
def test_a_read_is_the_entries_from_the_position_up_to_the_snapshot_tail(
    sizes: list[int], per_stream: int, data: st.DataObject,
) -> None:
    entries = _entries(sizes)
    cache = TailCache(per_stream_bytes=per_stream)
    for entry in entries:  # one commit per entry, as live appends arrive
        tail = entry[0] + len(entry[1])
        cache.appended(1, dataclasses.replace(_INFO, tail=tail), [entry])
    end = entries[-1][0] + len(entries[-1][1])
    boundaries = sorted({start for start, _ in entries} | {end})
    position = data.draw(st.integers(0, end), label="position")
    tail = data.draw(st.sampled_from([b for b in boundaries if b >= position] or [end]),
                     label="snapshot tail")
    max_bytes = data.draw(st.integers(1, 200), label="max_bytes")
    result = cache.read(1, position, tail, max_bytes)

    answerable = position in boundaries and position >= _kept_start(entries, per_stream)
    assert (result is not None) == answerable, (position, tail, result)
    if result is None:
        return  # the disk path serves it
    wanted = [chunk for start, chunk in entries if position <= start < tail]
    chunks, next_position = result
    expected: list[bytes] = []
    size = 0
    for chunk in wanted:
        if expected and size + len(chunk) > max_bytes:
            break
        expected.append(chunk)
        size += len(chunk)
    assert chunks == expected
    assert next_position == position + size


def _kept_start(entries: list[tuple[int, bytes]], per_stream: int) -> int:
    """Where the cache's buffer starts once trimmed to ``per_stream`` bytes of memory."""
    cost = sum(len(chunk) + ENTRY_OVERHEAD for _, chunk in entries)
    start = 0
    for entry_start, chunk in entries:
        if cost <= per_stream:
            break
        cost -= len(chunk) + ENTRY_OVERHEAD
        start = entry_start + len(chunk)
    return start


def test_the_cache_of_many_small_entries_stays_near_its_limit_in_memory() -> None:
    """Its limits counted the entries' bytes alone: a "64 MiB" cache of the agents' token
    chunks (about 100 bytes) held 175 MB. Here 2 MiB of them, across 40 streams."""
    limit = 2 * 1024 * 1024
    tracemalloc.start()
    try:
        cache = TailCache(per_stream_bytes=256 * 1024, total_bytes=limit)
        for stream_id in range(1, 41):
            tail = 0
            for _ in range(3000):
                chunk = bytes(99) + b"x"  # a distinct object each, as read off the wire
                info = dataclasses.replace(_INFO, stream_id=stream_id, tail=tail + len(chunk))
                cache.appended(stream_id, info, [(tail, chunk)])
                tail += len(chunk)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1.3 * limit, f"{held / 2**20:.1f} MiB held for a {limit / 2**20:.0f} MiB limit"


def test_reads_on_threads_while_appends_commit_never_fail(tmp_path: Path) -> None:
    """Under a threaded server (`flask run`'s) a read walked the tail cache's entries while
    the committing thread changed them: "deque mutated during iteration", a 500 for a few
    reads in a hundred thousand; and a read of a stream with a TTL adds to the set of
    streams whose use a commit writes down, which could change under that commit too."""
    store = StreamStore.open_directory(str(tmp_path))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can
    try:
        store.create("busy", content_type="application/octet-stream",
                     expiry=Expiry(ttl_seconds=3600))
        appends = 1_000
        done = threading.Event()
        failures: list[BaseException] = []

        def append() -> None:
            try:
                for _ in range(appends):
                    store.append("busy", [b"x" * 100], content_type="application/octet-stream")
            except BaseException as exc:
                failures.append(exc)
            finally:
                done.set()

        def read_near_the_tail() -> None:
            try:
                while not done.is_set():
                    tail = store.read("busy", None, 1).next_position
                    store.read("busy", max(0, tail - 500), 64 * 1024)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=read_near_the_tail) for _ in range(3)]
        threads.append(threading.Thread(target=append))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures[:3]
        assert store.read("busy", 0, 1 << 30).next_position == appends * 100
    finally:
        sys.setswitchinterval(switch)
        store.close()
