"""An idempotent producer: appends to one JSON stream that are never duplicated by retries.

Each append is one HTTP request carrying ``Producer-Id``, ``Producer-Epoch`` and
``Producer-Seq`` (PROTOCOL.md section 5.2.1). Retrying the same (epoch, seq) after a lost
response is always safe: the server answers ``204`` if it already applied the batch. The epoch
is also a fence: once a newer epoch has written, the older one gets ``403``.

Fencing and auto-claim
----------------------
On ``403`` the producer raises `ProducerFenced` carrying the server's epoch. With
``auto_claim=True`` it instead takes over the producer id (server epoch + 1, seq 0) and sends
the batch again. That is only safe for writers whose output is idempotent *by content* and
whose "other instance" is just an earlier incarnation of the same writer, such as a browser
tab sending a single prompt whose id is in the message. An agent must NOT auto-claim: for an
agent a ``403`` means it was replaced (a restart, another supervisor took over), and writing
on would interleave two answers in one response stream.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent_actors import errors
from agent_actors._http import raise_for_status
from agent_actors.stream_types import AppendResult

if TYPE_CHECKING:
    from agent_actors.streams_client import StreamsClient

_MAX_CLAIMS = 5


class Producer:
    """Appends JSON messages to one stream as one idempotent producer (id, epoch, seq).

    Thread-safe: appends are serialised, since sequence numbers must arrive in order.

    If an append fails with an unknown outcome (the server unreachable until the retry
    deadline), that batch stays pending and is sent again, with the same seq, before the next
    batch; `pending` tells whether there is one. This keeps a later batch from being taken for
    a duplicate of a batch that did land. A batch appended while one is pending is queued
    behind it, and stays queued if the pending one fails again: every batch `append` was
    given is either appended, refused with an error that says so, or still queued.
    """

    def __init__(
        self,
        client: StreamsClient,
        path: str,
        producer_id: str,
        *,
        epoch: int = 0,
        next_seq: int = 0,
        auto_claim: bool = False,
        content_type: str = "application/json",
    ) -> None:
        if not producer_id:
            raise ValueError("producer_id must be a non-empty string")
        if epoch < 0 or next_seq < 0:
            raise ValueError("epoch and next_seq must be non-negative")
        self.client = client
        self.path = path
        self.producer_id = producer_id
        self.auto_claim = auto_claim
        self.content_type = content_type
        self._epoch = epoch
        self._next_seq = next_seq
        self._queued: list[tuple[bytes, bool]] = []  # (body, close), the first being sent
        self._lock = threading.Lock()

    @property
    def epoch(self) -> int:
        """The epoch the next append will use."""
        return self._epoch

    @property
    def next_seq(self) -> int:
        """The sequence number the next (or the pending) batch will use."""
        return self._next_seq

    @property
    def pending(self) -> bool:
        """True if a batch with an unknown outcome will be re-sent before the next one."""
        return bool(self._queued)

    def append(self, messages: Sequence[Any], *, close: bool = False) -> AppendResult:
        """Append ``messages`` (one or more JSON values) as one batch; return the outcome.

        With ``close=True`` the stream is closed atomically with this batch. Raises
        `ProducerFenced` (unless auto-claiming), `SequenceGap`, `StreamClosed`,
        `StreamNotFound` (then neither this batch nor any queued before it is appended), or
        `StreamsUnavailable` (then the batch stays pending, behind any pending before it).
        """
        if isinstance(messages, (str, bytes)) or not messages:
            raise ValueError("messages must be a non-empty sequence of JSON values")
        body = json.dumps(list(messages), separators=(",", ":")).encode()
        with self._lock:
            self._queued.append((body, close))
            return self._send_queued()

    def append_one(self, message: Any, *, close: bool = False) -> AppendResult:
        """Append a single JSON value (which may itself be a list) as its own batch."""
        return self.append([message], close=close)

    def _send_queued(self) -> AppendResult:
        """Send the queued batches in order; the last one's outcome."""
        while True:
            result = self._send(*self._queued[0])
            self._queued.pop(0)
            if not self._queued:
                return result

    def _send(self, body: bytes, close: bool) -> AppendResult:
        for _ in range(_MAX_CLAIMS):
            try:
                result = self._post(body, close)
            except errors.ProducerFenced as fenced:
                if not self.auto_claim or fenced.server_epoch is None:
                    self._queued.clear()
                    raise
                self._epoch, self._next_seq = fenced.server_epoch + 1, 0
                continue
            except errors.StreamsUnavailable:
                raise  # outcome unknown: the batch stays queued, and those behind it
            except errors.StreamsError:
                self._queued.clear()
                raise
            self._next_seq = result.seq + 1
            return result
        self._queued.clear()
        raise errors.ProducerFenced(
            f"gave up claiming producer {self.producer_id!r}: other writers keep claiming it",
            status=403,
        )

    def _post(self, body: bytes, close: bool) -> AppendResult:
        headers = {
            "Content-Type": self.content_type,
            "Producer-Id": self.producer_id,
            "Producer-Epoch": str(self._epoch),
            "Producer-Seq": str(self._next_seq),
        }
        if close:
            headers["Stream-Closed"] = "true"
        transport = self.client.transport
        response = transport.request(
            "POST", self.client.stream_url(self.path), headers=headers, data=body,
        )
        with response:
            raise_for_status(response)
            closed = response.headers.get("Stream-Closed", "").lower() == "true"
            return AppendResult(
                next_offset=response.headers.get("Stream-Next-Offset"),
                duplicate=response.status_code == 204,
                epoch=self._epoch,
                seq=self._next_seq,
                closed=closed,
            )
