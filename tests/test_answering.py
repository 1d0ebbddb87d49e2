"""`answer_prompt` with stand-in models: one that breaks its contract by raising something
other than `ModelError` (no real adapter does: the Anthropic one turns every failure into a
`ModelError`), and one that streams until told to stop. The producers record (or fail)
instead of writing, as in test_chunk_writer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest

from agent_actors.answering import MODEL_BUG, answer_prompt
from agent_actors.errors import ProducerFenced
from agent_actors.models.base import ModelEvent, ModelResult, ModelWait, TextDelta, Turn
from agent_actors.producer import Producer

pytestmark = pytest.mark.timeout(30)


class RecordingProducer:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def append(self, messages: list[dict[str, Any]]) -> None:
        self.messages.extend(messages)


class BrokenModel:
    """Streams one delta, then fails the way a bug in an adapter would."""

    name = model_id = "broken"

    def stream(self, turns: Sequence[Turn | tuple[str, str]], *,
               cancel: threading.Event | None = None) -> Iterator[ModelEvent]:
        yield TextDelta("Half an ans")
        raise KeyError("delta")


def test_an_adapter_bug_ends_the_answer_in_an_error_and_logs_the_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = RecordingProducer()
    with caplog.at_level(logging.ERROR, logger="agent_actors.answering"):
        outcome = answer_prompt(
            model=BrokenModel(), turns=[Turn("user", "hi")],
            producer=cast(Producer, producer), prompt_id="p1", attempt=0, drop_partial=False,
            cancel=threading.Event(), abort=threading.Event(), window_s=0.0,
        )
    assert outcome.outcome == "error"
    assert [m["type"] for m in producer.messages] == ["chunk", "error"]
    error = producer.messages[-1]
    assert (error["code"], error["message"], error["isComplete"]) == ("internal", MODEL_BUG, True)
    assert "KeyError" not in error["message"]  # the user sees no internals
    [record] = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is KeyError


class FencedProducer:
    def append(self, messages: list[dict[str, Any]]) -> None:
        raise ProducerFenced("replaced by a newer agent", status=403)


class EndlessModel:
    """Streams a word every 10 ms, up to 500, until its `cancel` is set."""

    name = model_id = "endless"

    def __init__(self) -> None:
        self.streamed = 0

    def stream(self, turns: Sequence[Turn | tuple[str, str]], *,
               cancel: threading.Event | None = None) -> Iterator[ModelEvent]:
        assert cancel is not None
        while self.streamed < 500:
            self.streamed += 1
            yield TextDelta("word ")
            if cancel.wait(0.01):
                return


def test_a_failed_append_stops_the_model_at_once() -> None:
    """A fenced agent (or a server gone for good) has nowhere to write the answer: the
    model's stream is stopped, not read to its end (tokens paid for, the stop delayed)."""
    model = EndlessModel()
    with pytest.raises(ProducerFenced):
        answer_prompt(
            model=model, turns=[Turn("user", "hi")],
            producer=cast(Producer, FencedProducer()), prompt_id="p1", attempt=0,
            drop_partial=False, cancel=threading.Event(), abort=threading.Event(), window_s=0.0,
        )
    assert model.streamed < 100, model.streamed


class WaitingModel:
    """Waits once to be asked again, then answers (and breaks the contract with a second
    wait after its text, which must not reach the stream)."""

    name = "waiting"

    def stream(self, turns: Sequence[Turn | tuple[str, str]], *,
               cancel: threading.Event | None = None) -> Iterator[ModelEvent]:
        yield ModelWait("The AI model is overloaded right now.", "overloaded", 1.5, 1, 3)
        yield TextDelta("Here ")
        yield ModelWait("late", "overloaded", 1.0, 2, 3)
        yield TextDelta("it is.")
        yield ModelResult("end_turn", 3, 3, "waiting")


def answer_with(model: Any, producer: Any) -> Any:
    return answer_prompt(
        model=model, turns=[Turn("user", "hi")], producer=cast(Producer, producer),
        prompt_id="p1", attempt=2, drop_partial=False, cancel=threading.Event(),
        abort=threading.Event(), window_s=0.0)


def test_a_wait_to_ask_the_model_again_is_written_before_the_answer() -> None:
    """Clients saw no sign of a rate limit's wait: only the silence before the first words."""
    producer = RecordingProducer()
    outcome = answer_with(WaitingModel(), producer)
    assert outcome.outcome == "done" and outcome.text == "Here it is."
    wait, *rest = producer.messages
    assert {k: v for k, v in wait.items() if k != "timestamp"} == {
        "type": "wait", "promptId": "p1", "attempt": 2,
        "message": "The AI model is overloaded right now.", "code": "overloaded",
        "retryInMs": 1500, "retry": 1, "retries": 3, "isComplete": False}
    assert [m["type"] for m in rest] == ["chunk"] * (len(rest) - 1) + ["done"]


class FirstAppendFails(RecordingProducer):
    def append(self, messages: list[dict[str, Any]]) -> None:
        if not hasattr(self, "failed"):
            self.failed = True
            raise ProducerFenced("replaced by a newer agent", status=403)
        super().append(messages)


def test_a_wait_that_cannot_be_written_stops_the_answer_with_the_append_error() -> None:
    """Fenced while the model was refused, the agent must stop: the answer is the newer
    agent's now. Taken for the model's failure, it would go on to write an `error`."""
    producer = FirstAppendFails()
    with pytest.raises(ProducerFenced):
        answer_with(WaitingModel(), producer)
    assert producer.messages == []


class NamedModel:
    """A model whose log name and id differ, as the Anthropic adapter's do."""

    name = "anthropic:claude-named-1"
    model_id = "claude-named-1"

    def stream(self, turns: Sequence[Turn | tuple[str, str]], *,
               cancel: threading.Event | None = None) -> Iterator[ModelEvent]:
        yield TextDelta("never asked")
        yield ModelResult("end_turn", 1, 1, self.model_id)


def test_an_answer_withdrawn_before_the_model_was_asked_names_the_model_as_answers_do() -> None:
    """Withdrawn and stopped answers said "anthropic:claude-..." (the log name) where the
    model's own answers say "claude-...": the page showed two names for one model."""
    producer = RecordingProducer()
    withdrawn = threading.Event()
    withdrawn.set()
    outcome = answer_prompt(
        model=cast(Any, NamedModel()), turns=[Turn("user", "hi")],
        producer=cast(Producer, producer), prompt_id="p1", attempt=0, drop_partial=False,
        cancel=withdrawn, abort=threading.Event(), window_s=0.0)
    assert outcome.outcome == "done"
    done = producer.messages[-1]
    assert (done["type"], done["stopReason"], done["model"]) == (
        "done", "cancelled", "claude-named-1")
