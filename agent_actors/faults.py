"""Crash points for the crash tests: `kill -9` of this very process at a named moment.

Set `AGENT_ACTORS_CRASH_AT` to one of the names below (optionally `name:N` for the N-th time it
is reached) and the process SIGKILLs itself there, with no chance to clean up. That is the only
way to hit narrow windows such as "after `done` was written, before the offset was saved" on
purpose. Unset (always, outside tests) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

CRASH_POINTS = (
    "before-first-chunk",   # the agent fenced older agents, the model has not answered yet
    "mid-answer",           # the first chunk of an answer is written
    "after-done",           # `done` is written, the processed offset is not yet saved
)
_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """SIGKILL this process if the environment asks for a crash at `name`."""
    wanted = os.environ.get("AGENT_ACTORS_CRASH_AT")
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        reached = _counts[name]
    if reached == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
