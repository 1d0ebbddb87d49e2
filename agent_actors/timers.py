"""Callbacks run after a delay, all on one thread.

The supervisor schedules a retry per conversation whenever the streams server cannot answer
it: with a thread per `threading.Timer`, an outage over a thousand conversations would hold
a thousand sleeping threads in the web app, which runs its agents on real threads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Timers:
    """`call_later(delay, callback)`; callbacks run in deadline order on one daemon thread,
    which starts with the first of them. Keep them short: each one delays the next."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties run in the order they were scheduled
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        with self._changed:
            if self._closed:
                return
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), callback))
            self._changed.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Drop what is still scheduled and end the thread."""
        with self._changed:
            self._closed = True
            self._due.clear()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed:
                    wait = self._due[0][0] - time.monotonic() if self._due else None
                    if wait is not None and wait <= 0:
                        break
                    self._changed.wait(wait)
                if self._closed:
                    return
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception:  # noqa: BLE001 - one bad callback must not end the others
                log.exception("%s: a scheduled callback failed", self._name)
