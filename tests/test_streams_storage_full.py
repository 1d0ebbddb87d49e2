"""A full disk, over real sockets: the server refuses what it cannot store with `507`, keeps
everything it acknowledged, logs the outage once, and carries on when space is freed.

The database's fullness is SQLite's own (`--max-storage-mib` sets its page limit; a full disk
gives the same `SQLITE_FULL`). A large request body's temporary file meets a real file-size
limit (`prlimit --fsize`, the kernel's `EFBIG`, as `ENOSPC` would be).
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from streams_server.storage import groupcommit
from tests.support import ServerProcess, start_streams_server
from tests.support.processes import DEFAULT_LOG_DIR, REPO_ROOT, free_port
from tests.support.streams_http import StreamsHttp, error_body

pytestmark = pytest.mark.timeout(90)

BINARY = "application/octet-stream"
JSON = "application/json"
LEASE_MS = 1000


def log_of_this_start(server: ServerProcess) -> str:
    text = server.log_path.read_text(errors="replace")
    return text[text.rindex("\n=== "):]


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

        log = log_of_this_start(server)
        assert "Traceback" not in log, server.log_tail()
        assert log.count("commits are failing") == 1, log  # one outage, however many refusals
    finally:
        server.terminate()


def test_a_large_body_whose_temporary_file_cannot_grow_is_refused_with_507(
    tmp_path: Path,
) -> None:
    port = free_port("127.0.0.1")
    limit = 8 * 1024 * 1024  # every file the server writes, its database's included
    server = ServerProcess(
        ["prlimit", f"--fsize={limit}", sys.executable, "-m", "streams_server",
         "--port", str(port), "--data-dir", str(tmp_path / "data")],
        log_path=DEFAULT_LOG_DIR / f"streams_server-{port}.log", cwd=REPO_ROOT,
    ).start()
    try:
        http = StreamsHttp(server.url)
        assert http.put("big", content_type=BINARY).status_code == 201
        response = http.post("big", b"z" * (limit + 1024 * 1024))  # spooled past 1 MiB
        assert response.status_code == 507, (response.status_code, response.text)
        error = error_body(response)["error"]
        assert error["code"] == "STORAGE_FULL"
        assert "temporary storage is full" in error["message"], error
        assert http.get("big", offset="-1").content == b""
        assert http.post("big", b"fits").status_code == 204
        assert http.get("big", offset="-1").content == b"fits"
        assert "Traceback" not in log_of_this_start(server), server.log_tail()
    finally:
        server.terminate()


def test_an_outage_is_logged_once_and_its_end_after_a_quiet_spell(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    outage = groupcommit._OutageLog()
    full = sqlite3.OperationalError("database or disk is full")
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
        "commits succeed again; 5 write operations were refused in 61 s",
    ]
