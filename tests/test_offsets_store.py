"""The agents' processed-offsets file (`agent_actors.offsets_store`), on disk."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from agent_actors.offsets_store import OffsetsStore

pytestmark = pytest.mark.timeout(30)


def test_a_locked_offsets_file_costs_a_warning_not_an_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone holding a write lock on the file (an operator's `sqlite3` session, say) made
    `save` raise, which ended the lease keeper's heartbeat thread: the agent lost its lease.
    The file only saves re-reading, so a save that cannot be made is skipped, with a warning,
    and the next one lands."""
    store = OffsetsStore(str(tmp_path))
    store.save("c1", "0000000000000000_0000000000000010")
    blocker = sqlite3.connect(tmp_path / "agents.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.WARNING, logger="agent_actors.offsets_store"):
        store.save("c1", "0000000000000000_0000000000000020")
    assert "could not save the processed offset of c1" in caplog.text
    assert store.get("c1") == "0000000000000000_0000000000000010"
    blocker.execute("ROLLBACK")
    store.save("c1", "0000000000000000_0000000000000030")
    assert store.get("c1") == "0000000000000000_0000000000000030"
    store.close()


def test_an_unreadable_offsets_file_reads_as_no_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """With no offset, the supervisor checks the streams for unanswered prompts itself."""
    store = OffsetsStore(str(tmp_path))
    store.save("c1", "0000000000000000_0000000000000010")
    for name in ("agents.sqlite3", "agents.sqlite3-wal", "agents.sqlite3-shm"):
        path = tmp_path / name
        if path.exists():
            with open(path, "r+b") as damaged:  # in place: the store's descriptors stay
                damaged.write(b"not a database, not a log" * 200)
    with caplog.at_level(logging.WARNING, logger="agent_actors.offsets_store"):
        assert store.get("c1") is None
    assert "could not read the processed offset of c1" in caplog.text
    store.close()


def test_clean_stops_are_kept_per_prompt_until_forgotten_or_the_conversation_is_removed(
    tmp_path: Path,
) -> None:
    store = OffsetsStore(str(tmp_path))
    for prompt_id, attempt in (("p1", 0), ("p1", 2), ("p1", 2), ("p2", 1)):
        store.record_clean_stop("c1", prompt_id, attempt)
    store.record_clean_stop("c2", "p1", 5)
    store.close()

    store = OffsetsStore(str(tmp_path))  # on disk: a restarted supervisor reads them back
    assert store.clean_stops("c1") == {"p1": {0, 2}, "p2": {1}}
    store.forget_clean_stops("c1", "p1", from_attempt=1)
    assert store.clean_stops("c1") == {"p1": {0}, "p2": {1}}
    store.forget_clean_stops("c1", "p2")
    assert store.clean_stops("c1") == {"p1": {0}}
    store.record_removed("c1")
    assert store.clean_stops("c1") == {}
    assert store.clean_stops("c2") == {"p1": {5}}
    store.close()


def test_a_clean_stop_that_cannot_be_recorded_costs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A stopping supervisor closes the file after waiting for its agents; one too slow to
    stop must not raise from its own stop."""
    store = OffsetsStore(str(tmp_path))
    store.close()
    with caplog.at_level(logging.WARNING, logger="agent_actors.offsets_store"):
        store.record_clean_stop("c1", "p1", 0)
    assert "could not record the clean stops of c1" in caplog.text
