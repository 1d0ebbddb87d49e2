"""`Timers`: many delayed callbacks on one thread, in deadline order."""

from __future__ import annotations

import functools
import threading
import time

import pytest

from agent_actors.timers import Timers

pytestmark = pytest.mark.timeout(30)

SCHEDULING_ALLOWANCE_S = 3.0


def test_callbacks_run_in_deadline_order_on_a_single_thread() -> None:
    timers = Timers("test-timers")
    ran: list[int] = []
    threads: set[str] = set()
    all_ran = threading.Event()

    def callback(n: int) -> None:
        ran.append(n)
        threads.add(threading.current_thread().name)
        if len(ran) == 300:
            all_ran.set()

    # Each timer's deadline is read inside `call_later`, so it lies between `due` and `due` plus
    # however long that call took (once over 1 ms, in CI on a machine busy with browser tests).
    deadline_bounds: dict[int, tuple[float, float]] = {}
    start = time.monotonic()
    for n in range(300):  # scheduled out of order: 299, 298, ... due first
        # Absolute deadlines, all after the scheduling (which took over 0.5 s once in CI).
        due = start + SCHEDULING_ALLOWANCE_S + (299 - n) * 0.001
        before = time.monotonic()
        timers.call_later(due - before, functools.partial(callback, n))
        deadline_bounds[n] = (due, due + time.monotonic() - before)
    assert time.monotonic() < start + SCHEDULING_ALLOWANCE_S, "scheduling took too long"
    # One thread, not one per timer.
    assert sum(t.name == "test-timers" for t in threading.enumerate()) == 1
    assert all_ran.wait(10)
    assert sorted(ran) == list(range(300))
    # A timer surely due before another ran before it.
    surely_ordered_pairs = 0
    for position, earlier in enumerate(ran):
        for later in ran[position + 1 :]:
            assert deadline_bounds[later][1] >= deadline_bounds[earlier][0], (earlier, later)
            surely_ordered_pairs += deadline_bounds[earlier][1] < deadline_bounds[later][0]
    assert surely_ordered_pairs > 0.9 * 300 * 299 / 2, "too slow a machine to tell the order"
    assert threads == {"test-timers"}
    timers.close()


def test_a_failing_callback_does_not_stop_the_others_and_close_drops_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = Timers("test-timers")
    second = threading.Event()
    late = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    timers.call_later(0.0, boom)
    timers.call_later(0.01, second.set)
    assert second.wait(5)
    assert "a scheduled callback failed" in caplog.text
    timers.call_later(0.2, late.set)
    timers.close()
    assert not late.wait(0.5)
    timers.call_later(0.0, late.set)  # after close: ignored
    assert not late.wait(0.2)
