"""The storage engine's reads from disk, in-process on a SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams_server.errors import BadRequest
from streams_server.storage.engine import StreamStore
from streams_server.storage.models import Expiry

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
