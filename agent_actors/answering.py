"""Streaming one answer: model deltas in, coalesced `chunk` messages out, then `done`/`error`
(and, while the model is asked again after failing before its first words, `wait`).

Appending one message per token would cost one HTTP request (and one fsync) per token. The
`ChunkWriter` batches instead: text that arrives while the previous append is in flight, or
within `window_s` of the first unsent delta, goes out as one chunk. With a window of 0 it only
batches what piled up during the last request, which keeps latency at one request's time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent_actors import schema
from agent_actors.conversation_log import StoppedAnswer
from agent_actors.errors import ModelError
from agent_actors.faults import crash_point
from agent_actors.models.base import Model, ModelResult, ModelWait, TextDelta, Turn
from agent_actors.producer import Producer

log = logging.getLogger(__name__)


MODEL_BUG = "The model failed unexpectedly while answering (the agent's log says why)."


class AnswerAborted(Exception):
    """The agent is stopping: the answer is left unfinished for the next agent to restart."""


@dataclass(frozen=True)
class AnswerOutcome:
    """How one answer ended, for the agent's state and the per-prompt log line."""

    prompt_id: str
    attempt: int
    text: str
    outcome: str  # "done" or "error"
    stop_reason: str | None
    input_tokens: int
    output_tokens: int
    model: str
    first_token_ms: float | None
    duration_ms: float
    chunks: int


class ChunkWriter:
    """Appends the deltas of one answer as coalesced `chunk` messages, on its own thread.

    The writer thread is woken once per chunk (by the first delta after a send), not once
    per delta: at tens of tokens per second per answer, wake-ups are what an agent process
    spends most of its CPU on. The wake-up is an `Event` beside a plain lock rather than a
    `Condition`, whose every wait allocates a lock (and, in the gevent supervisor, runs in
    Python over gevent's primitives, where an `Event` is native).
    """

    def __init__(self, producer: Producer, prompt_id: str, attempt: int, window_s: float) -> None:
        self._producer = producer
        self._prompt_id = prompt_id
        self._attempt = attempt
        self._window_s = window_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._parts: list[str] = []
        self._first_at = 0.0
        self._ending = False
        self.chunks = 0
        self.error: BaseException | None = None
        self.failed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"chunks-{prompt_id}", daemon=True)
        self._thread.start()

    def add(self, text: str) -> None:
        if not text or self.failed.is_set():
            return
        with self._lock:
            self._parts.append(text)
            first = len(self._parts) == 1
            if first:
                self._first_at = time.monotonic()
        if first:
            self._wake.set()

    def close(self) -> None:
        """Send what is left and stop; re-raises an append failure (e.g. being fenced)."""
        with self._lock:
            self._ending = True
        self._wake.set()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            text = self._next_chunk()
            if text is None:
                return
            try:
                self._producer.append([schema.chunk(self._prompt_id, self._attempt, self.chunks,
                                                    text)])
            except BaseException as exc:  # reported to the answer loop, which stops the model
                self.error = exc
                self.failed.set()
                return
            self.chunks += 1
            if self.chunks == 1:
                crash_point("mid-answer")

    def _next_chunk(self) -> str | None:
        """The text of the next chunk once its window has passed; None at the end.

        `_wake` is set by the first delta after a send and by `close`, each after changing
        what is looked at here; a set left over from parts already taken costs one more look.
        """
        while True:
            with self._lock:
                if self._parts:
                    break
                if self._ending:
                    return None
            self._wake.wait()
            self._wake.clear()
        deadline = self._first_at + self._window_s
        while not self._ending and (remaining := deadline - time.monotonic()) > 0:
            if self._wake.wait(remaining):
                self._wake.clear()  # `close` (then `_ending` ends the wait) or a left-over set
        with self._lock:
            text = "".join(self._parts)
            self._parts = []
        return text


def refuse_prompt(*, producer: Producer, prompt_id: str, attempt: int,
                  reason: str, code: str) -> AnswerOutcome:
    """End a prompt the model is not asked about with an `error` message (`reason`, fit to
    show), so that a client waiting for its answer gets one."""
    started = time.monotonic()
    producer.append([schema.error(prompt_id, attempt, reason, code)])
    return AnswerOutcome(prompt_id=prompt_id, attempt=attempt, text="", outcome="error",
                         stop_reason=None, input_tokens=0, output_tokens=0, model="-",
                         first_token_ms=None,
                         duration_ms=(time.monotonic() - started) * 1000, chunks=0)


STOPPED_EARLIER = "its user had stopped the answer before it was restarted"


def end_with_stopped_text(*, producer: Producer, prompt_id: str, attempt: int,
                          stopped: StoppedAnswer, model: str) -> AnswerOutcome:
    """End the answer as stopped with what an attempt before a restart (`stopped`) had said
    when its user stopped it: under a new attempt (`attempt`), so that every reader drops
    the restarted text. One append: no reader sees the restart without the text. (The
    tokens the stopped attempt used are not known: its agent died before it could say.)"""
    started = time.monotonic()
    text = stopped.text
    producer.append([schema.restart(prompt_id, attempt, STOPPED_EARLIER, restores=stopped.attempt),
                     schema.chunk(prompt_id, attempt, 0, text),
                     schema.done(prompt_id, attempt, "cancelled", 0, 0, model)])
    return AnswerOutcome(prompt_id=prompt_id, attempt=attempt, text=text, outcome="done",
                         stop_reason="cancelled", input_tokens=0, output_tokens=0, model=model,
                         first_token_ms=None,
                         duration_ms=(time.monotonic() - started) * 1000, chunks=1)


def answer_prompt(
    *,
    model: Model,
    turns: list[Turn],
    producer: Producer,
    prompt_id: str,
    attempt: int,
    drop_partial: bool,
    cancel: threading.Event,
    abort: threading.Event,
    window_s: float,
    stopped_text: Callable[[], StoppedAnswer | None] = lambda: None,
) -> AnswerOutcome:
    """Stream the model's answer to the end into the responses stream.

    `cancel` (a user's cancel) ends the answer as `done` with stop reason "cancelled"; with
    the text of an earlier attempt if `stopped_text` then gives one (`end_with_stopped_text`).
    `abort` (the agent is stopping; `cancel` must be set with it to stop the model) leaves it
    unfinished, raising `AnswerAborted`. Model failures end in an `error` message the user
    can read. Append failures (a newer agent fenced this one, the server stayed unreachable)
    propagate: the answer is then the next agent's to finish.
    """
    started = time.monotonic()
    if drop_partial:
        producer.append([schema.restart(prompt_id, attempt, "the agent restarted this answer")])
    crash_point("before-first-chunk")
    writer = ChunkWriter(producer, prompt_id, attempt, window_s)
    parts: list[str] = []
    first_token_ms: float | None = None
    result: ModelResult | None = None
    failure: ModelError | None = None
    wait_not_written: BaseException | None = None
    try:
        if not cancel.is_set():
            for event in model.stream(turns, cancel=cancel):
                if writer.failed.is_set():
                    cancel.set()
                    break
                if isinstance(event, TextDelta):
                    if first_token_ms is None:
                        first_token_ms = (time.monotonic() - started) * 1000
                    parts.append(event.text)
                    writer.add(event.text)
                elif isinstance(event, ModelWait):
                    if parts:
                        continue  # only before the text, where the writer has sent nothing
                    try:
                        producer.append([schema.wait(prompt_id, attempt, event.reason, event.code,
                                                     round(event.delay_s * 1000), event.retry,
                                                     event.retries)])
                    except BaseException as exc:  # as a chunk's failure: the answer stops
                        wait_not_written = exc
                        cancel.set()
                        break
                else:
                    result = event
    except ModelError as exc:
        failure = exc
    except Exception:  # noqa: BLE001 - a model adapter's bug: retrying the answer repeats it
        log.exception("model %s failed unexpectedly answering prompt %s", model.name,
                      schema.shown_id(prompt_id))
        failure = ModelError(MODEL_BUG, code="internal")
    finally:
        writer.close()
    if abort.is_set():
        raise AnswerAborted(prompt_id)
    if wait_not_written is not None:
        raise wait_not_written
    text = "".join(parts)
    kept = stopped_text() if cancel.is_set() and failure is None else None
    if kept is not None:
        return end_with_stopped_text(producer=producer, prompt_id=prompt_id,
                                     attempt=attempt + 1, stopped=kept, model=model.model_id)
    if failure is not None:
        producer.append([schema.error(prompt_id, attempt, failure.message, failure.code)])
        outcome, stop_reason, tokens_in, tokens_out, model_name = "error", None, 0, 0, model.name
    else:
        if result is None:  # cancelled before the model was even asked
            result = ModelResult("cancelled", 0, 0, model.model_id)
        producer.append([schema.done(prompt_id, attempt, result.stop_reason, result.input_tokens,
                                     result.output_tokens, result.model)])
        outcome, stop_reason = "done", result.stop_reason
        tokens_in, tokens_out, model_name = result.input_tokens, result.output_tokens, result.model
    crash_point("after-done")
    return AnswerOutcome(prompt_id, attempt, text, outcome, stop_reason, tokens_in, tokens_out,
                         model_name, first_token_ms, (time.monotonic() - started) * 1000,
                         writer.chunks)

