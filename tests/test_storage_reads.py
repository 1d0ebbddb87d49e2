"""The storage engine's reads from disk: in-process on a SQLite file, and under the
standalone server, whose reads run on the threads of gevent's pool."""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
import requests

from streams_server.errors import BadRequest
from streams_server.storage.engine import DEFAULT_READ_POOL, StreamStore
from streams_server.storage.models import Expiry
from tests.support import ServerProcess

JSON = "application/json"


def test_a_refused_read_whose_error_is_kept_leaves_later_reads_current(tmp_path: Path) -> None:
    """A read refused mid-entry raised with its cursor open: whoever kept the error (a log
    handler, an error reporter) kept the cursor, and with it its connection's read snapshot,
    so that connection's next reads missed every later append."""
    store = StreamStore.open_directory(str(tmp_path))
    store.create("s", content_type=JSON, expiry=Expiry(None, None))
    store.append("s", [b'{"a":1}', b'{"b":2}', b'{"c":3}'], content_type=JSON)
    store.close()
    store = StreamStore.open_directory(str(tmp_path))  # an empty tail cache: reads hit the disk
    try:
        kept = []
        with pytest.raises(BadRequest) as refused:
            store.read("s", 3, 1 << 20)  # inside the first entry
        kept.append(refused.value)
        assert refused.value.code == "INVALID_OFFSET"

        store.append("s", [b'{"d":4}'], content_type=JSON)
        result = store.read("s", 0, 1 << 20)
        assert result.entries == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}']
        assert result.up_to_date
    finally:
        store.close()


def test_a_wait_on_a_stream_deleted_since_its_read_keeps_nothing(tmp_path: Path) -> None:
    """A long-poll or an SSE loop reads its stream, then waits for more. A delete that
    committed between the two (a conversation deleted while a tab followed it) left the wait
    a change signal for the gone stream's id that nothing removed again: half a KiB for every
    such reader, for as long as the server ran."""
    store = StreamStore.open_directory(str(tmp_path))

    def follow_a_stream_deleted_under_it(path: str) -> None:
        store.create(path, content_type=JSON, expiry=Expiry(None, None))
        read = store.read(path, 0, 1 << 20)
        store.delete(path)
        assert store.wait_for_data(read.info.stream_id, read.next_position, 30)

    try:
        for i in range(50):  # whatever the first ones leave (statement caches) left now
            follow_a_stream_deleted_under_it(f"warm/{i}")
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for i in range(1000):
                follow_a_stream_deleted_under_it(f"gone/{i}")
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        store.close()
    assert after - before < 100_000, f"{(after - before) / 1024:.0f} KiB kept by 1000 readers"


def test_more_reads_at_once_than_pooled_connections_all_succeed(streams_server: ServerProcess) -> None:
    """Reads past the pool's eight connections waited for one on a queue that gevent had
    made its own, in a thread of its pool: "this operation would block forever", and a 500.
    It happened after a restart, when every client and agent read its streams again."""
    base = f"{streams_server.url}/v1/stream"
    body = json.dumps([{"x": "y" * 2000} for _ in range(400)])  # 800 KB: a read takes a while
    with requests.Session() as http:
        for i in range(12):
            http.put(f"{base}/r/{i}", headers={"Content-Type": "application/json"}).raise_for_status()
            http.post(f"{base}/r/{i}", data=body,
                      headers={"Content-Type": "application/json"}).raise_for_status()
    streams_server.restart()  # nothing in memory: every read goes to the database
    statuses: Counter[int | str] = Counter()
    start = threading.Barrier(4 * DEFAULT_READ_POOL)

    def read_again_and_again(i: int) -> None:
        with requests.Session() as http:
            start.wait()
            for _ in range(4):
                try:
                    response = http.get(f"{base}/r/{i % 12}", params={"offset": "-1"}, timeout=20)
                except requests.RequestException as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                whole = response.status_code != 200 or len(response.content) > 800_000
                statuses[response.status_code if whole else "cut short"] += 1

    readers = [threading.Thread(target=read_again_and_again, args=(i,))
               for i in range(4 * DEFAULT_READ_POOL)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    assert statuses == {200: 4 * 4 * DEFAULT_READ_POOL}
    assert "LoopExit" not in streams_server.log_since_start()
