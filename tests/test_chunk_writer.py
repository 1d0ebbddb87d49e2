"""`ChunkWriter`: deltas coalesced into chunk appends, in order, nothing lost, prompt close.

The producer here is a recording stand-in whose appends can be held in flight: what the
writer batches depends on exactly that timing, which a real server cannot be made to show
on demand. The real producer under the writer is exercised end to end in test_agents.
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest

from agent_actors.answering import ChunkWriter
from agent_actors.errors import ProducerFenced
from agent_actors.producer import Producer

pytestmark = pytest.mark.timeout(30)


class HeldProducer:
    """Records each appended chunk's text; `hold()` keeps the next append in flight."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.started = threading.Event()
        self._release = threading.Event()
        self._release.set()
        self.fail_with: BaseException | None = None

    def hold(self) -> None:
        self._release.clear()
        self.started.clear()

    def release(self) -> None:
        self._release.set()

    def append(self, messages: list[dict[str, Any]]) -> None:
        self.started.set()
        self._release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.texts.append(messages[0]["content"])


def writer(producer: HeldProducer, window_s: float = 0.0) -> ChunkWriter:
    return ChunkWriter(cast(Producer, producer), "p1", 1, window_s)


def test_deltas_arriving_during_an_append_go_out_together_in_order() -> None:
    producer = HeldProducer()
    chunks = writer(producer)
    producer.hold()
    chunks.add("a")
    assert producer.started.wait(5)  # "a" is in flight
    for text in ("b", "c", "d"):
        chunks.add(text)
    producer.release()
    chunks.close()
    assert producer.texts == ["a", "bcd"]
    assert chunks.chunks == 2


def test_with_a_window_the_deltas_within_it_make_one_chunk() -> None:
    producer = HeldProducer()
    chunks = writer(producer, window_s=0.3)
    for text in ("a", "b", "c"):
        chunks.add(text)
    time.sleep(0.6)
    chunks.add("d")
    chunks.close()
    assert producer.texts == ["abc", "d"]


def test_with_a_window_the_first_delta_waits_for_it() -> None:
    """The window is what `--coalesce-ms` sets: without the wait, each delta was a chunk."""
    producer = HeldProducer()
    chunks = writer(producer, window_s=0.5)
    started = time.monotonic()
    chunks.add("a")
    assert producer.started.wait(5)
    assert time.monotonic() - started >= 0.45
    chunks.close()
    assert producer.texts == ["a"]


def test_close_sends_what_waits_in_the_window_at_once() -> None:
    producer = HeldProducer()
    chunks = writer(producer, window_s=30.0)
    chunks.add("a")
    started = time.monotonic()
    chunks.close()
    assert producer.texts == ["a"] and time.monotonic() - started < 5


@pytest.mark.parametrize("window_s", [0.0, 0.05])
def test_close_returns_after_many_sends_and_idle_spells(window_s: float) -> None:
    producer = HeldProducer()
    chunks = writer(producer, window_s)
    sent = []
    for round_ in range(20):
        text = f"{round_} "
        sent.append(text)
        chunks.add(text)
        if round_ % 3 == 0:
            time.sleep(0.01)
    time.sleep(0.1)
    chunks.close()  # must not wait forever, whatever state the writer was left in
    assert "".join(producer.texts) == "".join(sent)


def test_a_failed_append_stops_the_writer_and_close_raises_it() -> None:
    producer = HeldProducer()
    producer.fail_with = ProducerFenced("replaced by a newer agent", status=403)
    chunks = writer(producer)
    chunks.add("a")
    assert chunks.failed.wait(5)
    chunks.add("b")  # ignored: the answer loop stops the model on `failed`
    with pytest.raises(ProducerFenced):
        chunks.close()
    assert producer.texts == []
