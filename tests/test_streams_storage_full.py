"""A full disk, over real sockets: the server refuses what it cannot store with `507`, keeps
everything it acknowledged, logs the outage once, and carries on when space is freed.

The database's fullness is SQLite's own (`--max-storage-mib` sets its page limit; a full disk
gives the same `SQLITE_FULL`). A large request body's temporary file meets a real file-size
limit (`prlimit --fsize`, the kernel's `EFBIG`, as `ENOSPC` would be).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from streams_server.backend import DataDirectoryError, StreamsBackend
from streams_server.errors import NotFound, StorageFailure, StorageFull
from streams_server.storage import groupcommit, room
from streams_server.storage.engine import StreamStore
from streams_server.storage.models import Expiry
from tests.support import ServerProcess, start_streams_server
from tests.support.processes import DEFAULT_LOG_DIR, REPO_ROOT, free_port
from tests.support.streams_http import StreamsHttp, error_body

pytestmark = pytest.mark.timeout(90)

BINARY = "application/octet-stream"
JSON = "application/json"
LEASE_MS = 1000


def fill(http: StreamsHttp, path: str, piece: bytes, content_type: str) -> list[bytes]:
    """Append `piece` until the server refuses; the pieces it acknowledged."""
    stored: list[bytes] = []
    for _ in range(10_000):
        response = http.post(path, piece, content_type=content_type)
        if response.status_code != 204:
            assert response.status_code == 507, (response.status_code, response.text)
            error = error_body(response)["error"]
            assert error["code"] == "STORAGE_FULL", error
            assert "storage is full" in error["message"], error
            return stored
        stored.append(piece)
    raise AssertionError("the quota never filled")


def wake_events(http: StreamsHttp, wake: str) -> list[Any]:
    """The wake stream's messages: the server's wake events and this test's filler."""
    events: list[Any] = http.get(wake, offset="-1").json()
    return events


def test_a_full_quota_refuses_writes_with_507_loses_nothing_and_recovers(tmp_path: Path) -> None:
    server = start_streams_server(tmp_path / "data", extra_args=["--max-storage-mib", "1"])
    try:
        http = StreamsHttp(server.url)
        root = http.url("")
        # A worker holds a lease on jobs/a, whose message it has not acknowledged.
        assert http.put("wake", content_type=JSON).status_code == 201
        sub = requests.put(f"{root}__ds/subscriptions/jobs", timeout=10, json={
            "type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake",
            "lease_ttl_ms": LEASE_MS})
        assert sub.status_code == 201, sub.text
        assert http.put("jobs/a", content_type=JSON).status_code == 201
        assert http.post("jobs/a", b'{"n": 1}', content_type=JSON).status_code == 204
        claim = requests.post(f"{root}__ds/subscriptions/jobs/claim", json={"worker": "w1"},
                              timeout=10)
        assert claim.status_code == 200, claim.text
        generation = claim.json()["generation"]

        assert http.put("filler", content_type=BINARY).status_code == 201
        stored = fill(http, "filler", b"x" * 16384, BINARY)
        # The wake stream's last page too: the lease's expiry must write a wake event there.
        wakes_before = wake_events(http, "wake")
        small = [item for size in (200, 40, 0)
                 for item in fill(http, "wake", b'"' + b"y" * size + b'"', JSON)]

        # Everything acknowledged reads back; the refused writes left nothing behind.
        assert http.catch_up("filler").content == b"".join(stored)
        assert http.get("jobs/a", offset="-1").json() == [{"n": 1}]
        assert len(wake_events(http, "wake")) == len(wakes_before) + len(small)

        # The lease lapses while nothing can be written: its wake event waits.
        time.sleep(3 * LEASE_MS / 1000)
        assert len(wake_events(http, "wake")) == len(wakes_before) + len(small)

        assert http.delete("filler").status_code == 204  # frees the space
        assert http.post("jobs/a", b'{"n": 2}', content_type=JSON).status_code == 204
        assert http.get("jobs/a", offset="-1").json() == [{"n": 1}, {"n": 2}]
        deadline = time.monotonic() + 10
        while not (later := [e for e in wake_events(http, "wake")
                             if isinstance(e, dict) and e["generation"] > generation]):
            assert time.monotonic() < deadline, "the lapsed lease never woke anyone"
            time.sleep(0.1)
        assert later[0]["stream"] == "jobs/a"

        log = server.log_since_start()
        assert "Traceback" not in log, server.log_tail()
        assert log.count("commits are failing") == 1, log  # one outage, however many refusals
    finally:
        server.terminate()


SPOOLED = 1024 * 1024 + 1 + 27 * 256 * 1024  # the body's first read and 27 full chunks


@pytest.mark.parametrize(("limit", "size"), [
    (8 * 1024 * 1024, 9 * 1024 * 1024),  # a write in the middle of the body fails
    (SPOOLED + 50, SPOOLED + 100),  # only the last 99 bytes, still buffered, do not fit
], ids=["mid-body", "last-flush"])
def test_a_large_body_whose_temporary_file_cannot_grow_is_refused_with_507(
    tmp_path: Path, limit: int, size: int,
) -> None:
    """`limit` holds for every file the server writes, its database's included."""
    port = free_port("127.0.0.1")
    server = ServerProcess(
        ["prlimit", f"--fsize={limit}", sys.executable, "-m", "streams_server",
         "--port", str(port), "--data-dir", str(tmp_path / "data")],
        log_path=DEFAULT_LOG_DIR / f"streams_server-{port}.log", cwd=REPO_ROOT,
    ).start()
    try:
        http = StreamsHttp(server.url)
        assert http.put("big", content_type=BINARY).status_code == 201
        response = http.post("big", b"z" * size)  # spooled past 1 MiB
        assert response.status_code == 507, (response.status_code, response.text)
        error = error_body(response)["error"]
        assert error["code"] == "STORAGE_FULL"
        assert "temporary storage is full" in error["message"], error
        assert http.get("big", offset="-1").content == b""
        assert http.post("big", b"fits").status_code == 204
        assert http.get("big", offset="-1").content == b"fits"
        assert "Traceback" not in server.log_since_start(), server.log_tail()
    finally:
        server.terminate()


def test_a_database_at_its_file_size_limit_refuses_writes_with_507_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """SQLite reports the kernel's `EFBIG` (as a disk quota's `EDQUOT`) as a "disk I/O
    error"; it is the storage being full all the same."""
    data, limit = tmp_path / "data", 3 * 2**20
    port = free_port("127.0.0.1")
    limited = ServerProcess(
        ["prlimit", f"--fsize={limit}", sys.executable, "-m", "streams_server",
         "--port", str(port), "--data-dir", str(data)],
        log_path=DEFAULT_LOG_DIR / f"streams_server-{port}.log", cwd=REPO_ROOT,
    ).start()
    try:
        http = StreamsHttp(limited.url)
        assert http.put("log", content_type=BINARY).status_code == 201
        stored = fill(http, "log", b"y" * 30_000, BINARY)
        assert len(stored) > 10
        assert http.catch_up("log").content == b"".join(stored)
        log = limited.log_since_start()
        assert "disk I/O error: no room left (the file-size limit or the disk quota)" in log, log
        assert "Traceback" not in log, log
        # SQLite moves its write-ahead log into the database only past 4 MB of log: under a
        # smaller limit, every write failed, a delete too, until a restart. A write that
        # fails for lack of room now moves it, so what needs no new room goes through.
        assert http.delete("log").status_code == 204
        assert http.put("log", content_type=BINARY).status_code == 201
        assert http.post("log", b"after the delete").status_code == 204
    finally:
        limited.terminate()
    unlimited = start_streams_server(data)
    try:
        http = StreamsHttp(unlimited.url)
        assert http.catch_up("log").content == b"after the delete"
        assert http.post("log", b"more").status_code == 204
        assert http.catch_up("log").content == b"after the delete" + b"more"
    finally:
        unlimited.terminate()


PROBE_SCRIPT = """
import sqlite3, sys
from streams_server.storage.room import RoomCheck
error = sqlite3.OperationalError("disk I/O error")
error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE
print(RoomCheck(sys.argv[1]).explains(error))
"""


def test_a_database_sqlite_may_only_read_is_refused_as_the_store_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite opens a file it may not write (its permissions; a read-only mount) read-only,
    silently: the server started and answered every append with a 503 for as long as it ran.
    (Root may write any file: here SQLite is asked to open it read-only, with `mode=ro`.)"""
    StreamStore.open_directory(str(tmp_path)).close()
    connect = sqlite3.connect

    def read_only(target: str, **kwargs: Any) -> sqlite3.Connection:
        opened: sqlite3.Connection = connect(f"{Path(target).as_uri()}?mode=ro", uri=True,
                                             **kwargs)
        return opened

    monkeypatch.setattr(sqlite3, "connect", read_only)  # as the engine calls it
    with pytest.raises(DataDirectoryError, match="attempt to write a readonly database"):
        StreamsBackend.open(str(tmp_path))
    monkeypatch.undo()
    StreamsBackend.open(str(tmp_path)).close()  # writable again: opens


@pytest.mark.parametrize(("limit", "full"), [(None, "False"), (32 * 1024, "True")])
def test_the_room_probe_tells_a_full_directory_from_a_failing_disk(
    tmp_path: Path, limit: int | None, full: str,
) -> None:
    """No database file to measure yet: only the probe's own write can tell (here against a
    file-size limit below its size, as a spent disk quota would refuse it)."""
    command = [sys.executable, "-c", PROBE_SCRIPT, str(tmp_path / "streams.sqlite3")]
    if limit is not None:
        command = ["prlimit", f"--fsize={limit}", *command]
    answer = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=30)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == full
    assert list(tmp_path.iterdir()) == []  # the probe cleans up after itself


def test_an_outage_is_logged_once_and_its_end_after_a_quiet_spell(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    outage = groupcommit.OutageLog()
    full = "database or disk is full"
    with caplog.at_level(logging.WARNING, logger=groupcommit.log.name):
        outage.succeeded()
        outage.failed(full, 3)
        now[0] += 1
        outage.succeeded()  # a small write that still fit
        outage.failed(full, 1)
        now[0] += outage.REMIND_S
        outage.failed(full, 1)
        now[0] += outage.QUIET_S - 1
        outage.succeeded()  # not quiet long enough yet
        now[0] += 1
        outage.succeeded()
    assert [r.getMessage() for r in caplog.records] == [
        "commits are failing (database or disk is full): write requests get an error until"
        " the storage recovers",
        "commits still failing (database or disk is full) after 61 s; 5 write operations"
        " refused",
        "commits succeed again, 71 s after they began to fail; 5 write operations were refused",
    ]


def test_an_append_that_needs_space_does_not_fail_what_was_batched_with_it(
    tmp_path: Path,
) -> None:
    """Group commit runs concurrent writes in one transaction: when one of them needed space
    that was not there, the whole batch failed with 507, the delete that would have freed
    space included. The engine is driven in-process to batch them for sure: holding its
    leader lock while the writers queue makes the next leader take them all at once."""
    store = StreamStore.open_directory(str(tmp_path), max_bytes=1024 * 1024)
    try:
        for path in ("filler", "big"):
            store.create(path, content_type=BINARY, expiry=Expiry(None, None))
        with pytest.raises(StorageFull):
            for _ in range(1000):
                store.append("filler", [b"x" * 16384], content_type=BINARY)
        outcomes: dict[str, object] = {}

        def run(name: str, operation: Callable[[], object]) -> None:
            try:
                outcomes[name] = operation()
            except Exception as exc:  # noqa: BLE001 - the outcome under test
                outcomes[name] = exc

        writers = [
            threading.Thread(target=run, args=("big", lambda: store.append(
                "big", [b"y" * 200_000], content_type=BINARY))),
            threading.Thread(target=run, args=("delete", lambda: store.delete("filler"))),
        ]
        before = store.commit_stats
        with store._leader_lock:  # noqa: SLF001 - see the docstring
            for writer in writers:
                writer.start()
            deadline = time.monotonic() + 5
            while len(store._committer._queue) < 2:  # noqa: SLF001
                assert time.monotonic() < deadline, "the writers never queued"
                time.sleep(0.01)
        for writer in writers:
            writer.join(10)
        assert outcomes["delete"] is None, outcomes  # freed space despite its batch-mate
        with pytest.raises(NotFound):
            store.info("filler")
        assert store.commit_stats != before
    finally:
        store.close()


def test_a_database_already_over_the_quota_is_held_at_its_size_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """SQLite cannot set a page limit below the file's size, and the file does not shrink:
    the warning used to promise the quota would hold again once streams were deleted."""
    store = StreamStore.open_directory(str(tmp_path))
    store.create("s", content_type=BINARY, expiry=Expiry(None, None))
    for _ in range(128):
        store.append("s", [b"x" * 16384], content_type=BINARY)  # 2 MiB
    store.close()
    with caplog.at_level(logging.WARNING, logger="streams_server.storage.engine"):
        store = StreamStore.open_directory(str(tmp_path), max_bytes=512 * 1024)
    try:
        assert "over the storage quota of 0.5 MiB: it is held at its size" in caplog.text
        with pytest.raises(StorageFull):
            for _ in range(1000):
                store.append("s", [b"y" * 16384], content_type=BINARY)
    finally:
        store.close()


def raise_erofs(path: str) -> None:
    raise OSError(errno.EROFS, "Read-only file system", path)


def table_committer(
    db: Path, out_of_room: Callable[[sqlite3.Error], bool],
) -> tuple[sqlite3.Connection, groupcommit.GroupCommitter, threading.Lock]:
    """A group committer over a database with one table `t`, and its leader lock."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (v INTEGER)")
    leader = threading.Lock()
    committer = groupcommit.GroupCommitter(
        conn, clock_ms=lambda: 0, before_batch=lambda tx: None,
        apply_effects=lambda effects: None, leader_lock=leader, out_of_room=out_of_room)
    return conn, committer, leader


def insert_a_row(tx: groupcommit.Transaction) -> str:
    tx.conn.execute("INSERT INTO t VALUES (1)")
    return "stored"


def fail_to_write(tx: groupcommit.Transaction) -> str:
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE
    raise error


def submit_in_thread(committer: groupcommit.GroupCommitter,
                     operation: Callable[[groupcommit.Transaction], str],
                     outcomes: dict[str, object], name: str) -> threading.Thread:
    """`committer.submit(operation)` on a new thread; its result or error goes to `outcomes`."""
    def submit() -> None:
        try:
            outcomes[name] = committer.submit(operation)
        except BaseException as exc:  # noqa: BLE001 - the outcome under test
            outcomes[name] = exc

    thread = threading.Thread(target=submit)
    thread.start()
    return thread


def wait_until_queued(committer: groupcommit.GroupCommitter, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(committer._queue) < count:  # noqa: SLF001 - no event marks it: spin briefly
        assert time.monotonic() < deadline, "the operations never queued"


@pytest.mark.parametrize("failure", ["probe clean-up", "classifier bug"])
def test_a_batch_whose_failure_cannot_be_classified_is_never_reported_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str,
) -> None:
    """The disk fails while the room probe cleans up (a file system remounted read-only), or
    the classification itself fails: every operation of the rolled-back batch fails too."""
    db = tmp_path / "streams.sqlite3"
    out_of_room: Callable[[sqlite3.Error], bool]
    if failure == "probe clean-up":
        monkeypatch.setattr(os, "unlink", raise_erofs)
        out_of_room = room.RoomCheck(str(db)).explains
    else:
        def out_of_room(exc: sqlite3.Error) -> bool:
            raise RuntimeError("a bug in the classification")
    conn, committer, leader = table_committer(db, out_of_room)
    outcomes: dict[str, object] = {}
    with leader:  # both queue up for one batch
        threads = [submit_in_thread(committer, insert_a_row, outcomes, "good"),
                   submit_in_thread(committer, fail_to_write, outcomes, "bad")]
        wait_until_queued(committer, 2)
    for thread in threads:
        thread.join(10)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # rolled back
    assert all(isinstance(outcome, BaseException) for outcome in outcomes.values()), outcomes
    assert len(outcomes) == 2


def test_a_bug_in_a_retried_operation_fails_only_that_one(tmp_path: Path) -> None:
    """A batch without room is retried one operation at a time: an unexpected error in one
    of those retries fails that operation, not the leader's already committed one."""
    classifications: list[sqlite3.Error] = []

    def out_of_room(exc: sqlite3.Error) -> bool:
        classifications.append(exc)
        if len(classifications) > 1:
            raise RuntimeError("a bug in the classification")
        return True  # the whole batch: "no room", so each is tried on its own

    conn, committer, leader = table_committer(tmp_path / "db", out_of_room)
    outcome: dict[str, object] = {}
    with leader:
        writer = submit_in_thread(committer, insert_a_row, outcome, "good")
        wait_until_queued(committer, 1)
        # A second writer's operation, queued behind it (it would wait on the leader lock).
        other: groupcommit._Pending[str] = groupcommit._Pending(fail_to_write)  # noqa: SLF001
        committer._queue.append(other)  # noqa: SLF001
    writer.join(10)

    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1  # good was committed
    assert other.done and other.error is not None  # bad: failed, as it should
    assert outcome["good"] == "stored", outcome


def test_a_write_to_a_closed_database_is_a_storage_failure_not_a_bug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """`sqlite3.ProgrammingError` (a write after the store was closed, as a stop under load
    once did) has no `sqlite_errorcode`: reading it raised AttributeError inside the error
    handling, logged as a bug with a traceback."""
    conn, committer, _ = table_committer(tmp_path / "streams.sqlite3",
                                         room.RoomCheck(str(tmp_path / "streams.sqlite3")).explains)
    conn.close()
    with caplog.at_level(logging.ERROR, logger=groupcommit.log.name):
        with pytest.raises(StorageFailure) as refused:
            committer.submit(insert_a_row)
    assert not isinstance(refused.value, StorageFull)
    assert [r.getMessage() for r in caplog.records] == [
        "commits are failing (Cannot operate on a closed database.): write requests get an"
        " error until the storage recovers"]
