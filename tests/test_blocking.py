"""`off_loop`: under the supervisor's gevent loop, a blocking call must not freeze the others;
and the streams server's `run_blocking`, which brings back a client's error without the
frames it was raised in.

Run in a child process, since it needs gevent's monkey-patching (this test process runs the
agents on real threads, as the web app does).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

_PROGRAM = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import gevent
    from agent_actors._blocking import off_loop

    blocking_sleep = monkey.get_original("time", "sleep")  # holds its OS thread, as fsync does
    ticks = []

    def ticker():
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    gevent.spawn(ticker)
    gevent.sleep(0)
    before = len(ticks)
    assert off_loop(lambda: blocking_sleep(0.3) or "result") == "result"
    print(len(ticks) - before)
""")


def test_a_blocking_call_runs_while_the_other_greenlets_go_on() -> None:
    done = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 10  # the ticker kept ticking during the 0.3 s call


def test_without_gevent_the_call_is_made_directly() -> None:
    from agent_actors._blocking import off_loop

    assert off_loop(lambda: 42) == 42


_RAISING_PROGRAM = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import gc
    import weakref
    from streams_server.errors import NotFound
    from streams_server.storage.blocking import run_blocking

    gc.disable()  # only reference counts free things: what a cycle or a holder keeps, stays

    class Cursor:  # stands for an open SQLite cursor, which pins its connection's snapshot
        pass

    held = []

    def read_missing_stream():
        cursor = Cursor()
        held.append(weakref.ref(cursor))
        try:
            raise LookupError("no row")
        except LookupError:  # raised while handling another: its traceback holds this frame
            raise NotFound("no such stream")

    try:
        run_blocking(read_missing_stream)
    except NotFound as error:
        print(error.code, end=" ")
    print("freed" if held[0]() is None else "kept")
""")


def test_a_client_error_from_the_thread_pool_keeps_no_frame_alive() -> None:
    """A read refused in a worker thread left the worker holding the error's traceback, and
    with it the reading frame's open cursor: that connection's later reads saw old data."""
    done = subprocess.run([sys.executable, "-c", _RAISING_PROGRAM], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NOT_FOUND freed", done.stdout
    assert "Traceback" not in done.stderr, done.stderr


_FAILING_OFF_LOOP_PROGRAM = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    from agent_actors._blocking import off_loop

    def fail():
        raise OSError("disk gone")

    try:
        off_loop(fail)
    except OSError as error:
        print(error)
""")


def test_an_error_off_the_loop_is_the_callers_to_report() -> None:
    """gevent's pool printed the traceback of every error raised in a worker, which the caller
    then handled (and logged) again: one failure, two reports."""
    done = subprocess.run([sys.executable, "-c", _FAILING_OFF_LOOP_PROGRAM],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "disk gone"
    assert "Traceback" not in done.stderr, done.stderr
