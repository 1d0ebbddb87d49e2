"""Keeping a conversation's lease: heartbeats, offset acks, and the final `done`.

One thread per agent. It persists each new processed-prompt offset locally, then acks it on
the subscription (the subscription's cursor mirrors the agent's), heartbeats in between so the
lease does not lapse while a long answer streams, and tells the agent once a second so that
the agent can notice it has been idle long enough to passivate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent_actors._http import NO_RETRY
from agent_actors.errors import (
    BadRequest,
    Conflict,
    LeaseFenced,
    NotFound,
    StreamsError,
    Unauthorized,
)
from agent_actors.offsets_store import OffsetsStore
from agent_actors.stream_types import Lease
from agent_actors.streams_client import StreamsClient

log = logging.getLogger(__name__)

TICK_S = 1.0

REFUSED = (Conflict, NotFound, Unauthorized, BadRequest)
"""How the server answers an ack for a lease that is not ours any more: fenced (409), the
subscription gone (404), the token refused (401: expired, or the server's key changed) or the
ack itself (400). None of them passes by retrying, and the lease runs out meanwhile."""


class LeaseKeeper:
    def __init__(
        self,
        client: StreamsClient,
        lease: Lease,
        *,
        conversation_id: str,
        prompts_path: str,
        offsets: OffsetsStore,
        heartbeat_s: float,
        on_tick: Callable[[], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._client = client
        self._lease = lease
        self._conversation_id = conversation_id
        self._prompts_path = prompts_path
        self._offsets = offsets
        self._heartbeat_s = heartbeat_s
        self._on_tick = on_tick
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._offset: str | None = None
        self._acked: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lost = False
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{conversation_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def processed(self, offset: str) -> None:
        """Every prompt before `offset` has a finished answer: save and ack it soon."""
        with self._lock:
            self._offset = offset
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def finish(self) -> bool:
        """Stop heartbeating, ack the last offset with `done`; True if the server woke again.

        Called by the agent when it passivates: the lease goes back to the server, which
        wakes a new agent at once if a prompt arrived meanwhile.
        """
        self.stop()
        if self._lost:
            return False
        with self._lock:
            offset = self._offset
        try:
            if offset is not None:
                self._offsets.save(self._conversation_id, offset)
            return self._client.ack(self._lease, self._acks(offset), done=True)
        except (LeaseFenced, NotFound):
            return False
        except StreamsError as exc:
            log.warning("could not hand back the lease of %s (%s): it runs out by itself, and"
                        " the server wakes an agent again if a prompt is waiting",
                        self._conversation_id, exc)
            return False

    def release(self, *, quick: bool = False, at_exit: bool = False) -> None:
        """Give the lease back unfinished (a shutdown): the server wakes someone else.
        `quick`: one attempt, not retried (the server may be gone). `at_exit`: the process
        is exiting, where the server has usually stopped first, so a failure is no news."""
        self.stop()
        if self._lost:
            return
        client = self._client.with_retry(NO_RETRY) if quick else self._client
        try:
            with self._lock:
                offset = self._offset
            if offset is not None and offset != self._acked:
                self._offsets.save(self._conversation_id, offset)
                client.ack(self._lease, self._acks(offset))
            client.release(self._lease)
        except StreamsError as exc:
            # At an exit, whoever stopped the server releases the lease (the app does,
            # in-process), else it runs out.
            log.log(logging.DEBUG if at_exit else logging.INFO, "could not release the lease of %s: %s",
                    self._conversation_id, exc)

    def _acks(self, offset: str | None) -> dict[str, str]:
        return {} if offset is None else {self._prompts_path: offset}

    def _run(self) -> None:
        last_beat = time.monotonic()
        tick = min(TICK_S, self._heartbeat_s)  # a short lease needs beats more often than ticks
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                offset = self._offset
            due = time.monotonic() - last_beat >= self._heartbeat_s
            if offset != self._acked or due:
                try:
                    if offset is not None and offset != self._acked:
                        self._offsets.save(self._conversation_id, offset)
                    self._client.ack(self._lease, self._acks(offset))
                    self._acked = offset
                    last_beat = time.monotonic()
                except REFUSED as exc:
                    self._lost = True
                    self._on_lost(f"lease lost: {exc}")
                    return
                except StreamsError as exc:
                    log.warning("heartbeat for %s failed (will retry): %s",
                                self._conversation_id, exc)
            self._on_tick()
