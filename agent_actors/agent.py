"""`ConversationAgent`: the actor that answers one conversation's prompts, exactly once.

Life of an agent (it holds the conversation's lease from the moment it is spawned):

1. Boot, on a thread: append an `agent started` marker with a fresh producer epoch to the
   responses stream. From then on no older agent can write there (it gets `403`), so reading
   both streams *after* the marker gives the final word on what was already answered.
2. Answer the prompts that have no finished answer, in order, one at a time, each on a
   thread of its own; an answer cut short by a crash is restarted behind a `restart` marker.
3. Follow the prompts stream for new prompts and cancels; acknowledge the processed offset
   (persisted locally, acked on the subscription) and heartbeat the lease.
4. Passivate when idle for `idle_timeout_s`: ack `done`, stop. The server wakes a new agent
   for the next prompt.

A conversation whose streams can never take an answer (its responses stream closed or of
another type, a stream soft-deleted) ends its agent the same way, after one error in the log:
its prompts are acked unanswered, so that only a new prompt wakes an agent again.

The actor's inbox only ever carries short messages; all blocking I/O runs on threads the
actor owns, started in `on_start` and stopped in `on_stop`, reporting back with `tell`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any

import pykka

from agent_actors import layout, schema
from agent_actors.answering import (
    AnswerAborted,
    AnswerOutcome,
    answer_prompt,
    end_with_stopped_text,
    refuse_prompt,
)
from agent_actors.conversation_log import ConversationLog, StoppedAnswer
from agent_actors.errors import (
    ContentTypeMismatch,
    ProducerFenced,
    StreamClosed,
    StreamGone,
    StreamNotFound,
    StreamsError,
)
from agent_actors.lease_keeper import LeaseKeeper
from agent_actors.models.base import Model
from agent_actors.offsets_store import OffsetsStore
from agent_actors.producer import Producer
from agent_actors.schema import Cancel, Prompt, Unanswerable
from agent_actors.stream_types import Lease, ReadResult
from agent_actors.streams_client import JSON_CONTENT_TYPE, StreamsClient, Tail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    coalesce_window_s: float = 0.0
    idle_timeout_s: float = 60.0
    context_budget_chars: int = 400_000  # roughly 100k tokens
    heartbeat_s: float | None = None  # default: a third of the lease
    # A wake token cannot be renewed (an hour on the reference server, a day on ours): an
    # agent that has held its lease this long hands it back at its next pause, and the
    # supervisor claims the conversation again (a new token) if prompts are waiting.
    renew_lease_s: float = 30 * 60.0
    live_mode: str = "sse"
    # True where the server is usually gone by the time the agents stop (flask run's own:
    # the app then releases their leases in-process): one attempt, no retries in vain.
    quick_release: bool = False


# -- messages to the agent (from its own threads) -------------------------------------------


@dataclass(frozen=True)
class _Booted:
    log: ConversationLog
    producer: Producer
    prompts_offset: str
    clean_stops: dict[str, set[int]]


@dataclass(frozen=True)
class _PromptBatch:
    messages: tuple[Any, ...]
    next_offset: str


@dataclass(frozen=True)
class _AnswerFinished:
    outcome: AnswerOutcome


@dataclass(frozen=True)
class _ThreadFailed:
    what: str
    error: BaseException


@dataclass(frozen=True)
class _Tick:
    pass


@dataclass(frozen=True)
class _LeaseLost:
    reason: str


# -- messages to the supervisor --------------------------------------------------------------


@dataclass(frozen=True)
class AgentStopped:
    """The agent ended normally: `idle` (passivated), `make-room` (passivated early, asked
    by `MakeRoom`), `renew` (its lease handed back to be
    claimed again), `replaced`, `lease-lost`, `shutdown`, `deleted`."""

    conversation_id: str
    reason: str


@dataclass(frozen=True)
class AgentCrashed:
    """The agent ended on a failure: restarted, backing off. `unexpected`: a crash; else it
    stopped by itself on a failure it knows (the server refused, or stayed unreachable)."""

    conversation_id: str
    error: str
    unexpected: bool = True


@dataclass(frozen=True)
class AgentIdle:
    """The agent has nothing to answer: it may be asked to make room (`MakeRoom`)."""

    conversation_id: str


@dataclass(frozen=True)
class AgentBusy:
    """The agent asked to make room had work again by then: it stays."""

    conversation_id: str


@dataclass(frozen=True)
class MakeRoom:
    """From the supervisor, to an idle agent: conversations wait for a place
    (`max_agents`). It hands its lease back at once if it is still idle, as after its idle
    timeout; else it says it is busy."""


@dataclass(frozen=True)
class ConversationDeleted:
    """From the supervisor: the conversation was deleted. The agent stops at once, leaving
    its answer unfinished, and lets go of the lease."""


class AgentFailure(Exception):
    """Something the agent cannot handle: the supervisor restarts it with backoff."""


@dataclass
class _Current:
    prompt: Prompt
    attempt: int
    cancel: threading.Event
    abort: threading.Event
    stopped_text: StoppedAnswer | None = None  # set before `cancel` (ConversationLog.stopped_text)


class ConversationAgent(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(
        self,
        *,
        conversation_id: str,
        lease: Lease,
        client: StreamsClient,
        model: Model,
        offsets: OffsetsStore,
        worker: str,
        settings: AgentSettings,
        supervisor: pykka.ActorRef[Any] | None,
    ) -> None:
        super().__init__()
        self.conversation_id = conversation_id
        self.lease = lease
        self.client = client
        self.model = model
        self.offsets = offsets
        self.worker = worker
        self.settings = settings
        self.supervisor = supervisor
        self.prompts_path = layout.prompts_path(conversation_id)
        self.responses_path = layout.responses_path(conversation_id)
        self._log = ConversationLog()
        self._producer: Producer | None = None
        self._queue: deque[Prompt] = deque()
        self._batches: deque[tuple[str, set[str]]] = deque()
        self._current: _Current | None = None
        self._clean_stops: dict[str, set[int]] = {}  # attempts cut short by a clean stop
        self._last_active = self._claimed_at = time.monotonic()
        self._reader: Tail | None = None
        self._stopping = threading.Event()
        self._stop_reason = "shutdown"
        self._stop_requested = False
        self._failure = ""  # why the server failed it, when it stops for that ("failed")
        self._passivating = False
        self._answered_any = False
        self._said_idle = False  # told the supervisor it has nothing to answer (AgentIdle)
        heartbeat = settings.heartbeat_s or max(0.5, lease.lease_ttl_ms / 3000)
        self._keeper = LeaseKeeper(
            client,
            lease,
            conversation_id=conversation_id,
            prompts_path=self.prompts_path,
            offsets=offsets,
            heartbeat_s=heartbeat,
            on_tick=lambda: self._tell_self(_Tick()),
            on_lost=lambda reason: self._tell_self(_LeaseLost(reason)),
        )

    # -- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        log.info("agent started conversation=%s generation=%d worker=%s",
                 self.conversation_id, self.lease.generation, self.worker)
        try:
            self._keeper.start()
            self._spawn("boot", self._boot)
        except Exception:
            # Pykka stops an actor whose start fails without calling `on_failure`: the lease
            # would be heartbeaten for good, and the supervisor never told.
            self.on_failure(*sys.exc_info())
            raise

    def on_stop(self) -> None:
        self._stopping.set()
        if self._reader is not None:
            self._reader.close()
        if self._current is not None:
            self._current.abort.set()
            self._current.cancel.set()
            if self._stop_reason == "shutdown":  # a stopping supervisor, not a crash
                self.offsets.record_clean_stop(self.conversation_id, self._current.prompt.id,
                                               self._current.attempt)
        # Deleted, its lease is kept until the supervisor deletes the subscription: handed
        # back with a prompt unanswered, it woke the deleted conversation again, for any
        # supervisor (one that has not read the deletion yet too) to claim.
        if self._stop_reason in ("shutdown", "failed"):
            self._keeper.release(quick=self.settings.quick_release,
                                 at_exit=self._stop_reason == "shutdown")
        else:
            self._keeper.stop()
        if self._stop_reason == "failed":
            self._notify(AgentCrashed(self.conversation_id, self._failure, unexpected=False))
        else:
            self._notify(AgentStopped(self.conversation_id, self._stop_reason))

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._stopping.set()
        if self._reader is not None:
            self._reader.close()
        if self._current is not None:
            self._current.abort.set()
            self._current.cancel.set()
        self._keeper.release()
        log.error("agent crashed conversation=%s error=%s", self.conversation_id,
                  exception_value)
        self._notify(AgentCrashed(self.conversation_id, f"{exception_value}"))

    def _stop_with(self, reason: str) -> None:
        """Stop once the messages already queued are handled; the first reason given wins,
        and no new answer starts meanwhile (it would only be aborted)."""
        if self._stop_requested:
            return
        self._stop_requested = True
        self._stop_reason = reason
        self.actor_ref.stop(block=False)

    def _tell_self(self, message: object) -> None:
        """For the agent's own threads: a message to an agent that already stopped is moot."""
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass

    def _notify(self, message: object) -> None:
        if self.supervisor is not None:
            try:
                self.supervisor.tell(message)
            except pykka.ActorDeadError:
                pass

    # -- the inbox -------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if self._stopping.is_set():
            return None
        if isinstance(message, _Booted):
            self._on_booted(message)
        elif isinstance(message, _PromptBatch):
            self._on_prompts(message)
        elif isinstance(message, _AnswerFinished):
            self._on_answer_finished(message.outcome)
        elif isinstance(message, _Tick):
            self._on_tick()
        elif isinstance(message, ConversationDeleted):
            self._stop_with("deleted")
        elif isinstance(message, MakeRoom):
            self._on_make_room()
        elif isinstance(message, _LeaseLost):
            log.warning("agent %s: %s", self.conversation_id, message.reason)
            self._stop_with("lease-lost")
        elif isinstance(message, _ThreadFailed):
            self._on_thread_failed(message)
        return None

    def _on_booted(self, booted: _Booted) -> None:
        self._log = booted.log
        self._producer = booted.producer
        self._clean_stops = booted.clean_stops
        pending = self._log.unanswered()
        self._queue.extend(pending)
        self._batches.append((booted.prompts_offset, {p.id for p in pending}))
        self._advance_offset()
        self._reader = self.client.tail(self.prompts_path, booted.prompts_offset,
                                        live=self.settings.live_mode)  # type: ignore[arg-type]
        self._spawn("prompt-reader", self._read_prompts)
        self._start_next()

    def _on_prompts(self, batch: _PromptBatch) -> None:
        self._last_active = time.monotonic()
        waiting: set[str] = set()
        for item in self._log.add_prompt_messages(batch.messages):
            if isinstance(item, Prompt):
                if not self._log.is_finished(item.id):
                    self._queue.append(item)
                    waiting.add(item.id)
            elif isinstance(item, Cancel) and self._current is not None:
                current = self._current
                if current.prompt.id == item.prompt_id:
                    current.stopped_text = self._log.stopped_text(item.prompt_id, current.attempt)
                    current.cancel.set()
            elif isinstance(item, Unanswerable):
                self._report_unanswerable([item])
        self._batches.append((batch.next_offset, waiting))
        self._advance_offset()
        self._start_next()

    def _start_next(self) -> None:
        if (self._current is not None or self._passivating or self._stop_requested
                or self._producer is None):
            return
        # At least one answer per lease: were the boot as slow as the renewal is due, every
        # agent would hand back before answering anything.
        if self._queue and self._answered_any and self._lease_due_for_renewal():
            self._hand_back("renew")  # the next agent answers what is queued
            return
        while self._queue:
            prompt = self._queue.popleft()
            if self._log.is_finished(prompt.id):
                continue
            attempt, drop_partial = self._log.next_attempt(prompt.id)
            cancelled = prompt.id in self._log.cancel_requests
            stopped_text = self._log.stopped_text(prompt.id, attempt - 1) if cancelled else None
            if cancelled and drop_partial and stopped_text is None:
                # Stopped by its user before the interruption: what that attempt had shown
                # stays, ended as stopped (a restart would have erased it).
                attempt, drop_partial = attempt - 1, False
            current = _Current(prompt, attempt, threading.Event(), threading.Event(), stopped_text)
            if cancelled:
                current.cancel.set()  # cancelled before its turn came: no model call
            interrupted = self._interrupted_attempts(prompt.id, attempt)
            self._current = current
            turns = self._log.history_for(prompt, self.settings.context_budget_chars)
            producer = self._producer

            def run() -> None:
                if prompt.problem is not None:
                    outcome = refuse_prompt(producer=producer, prompt_id=prompt.id,
                                            attempt=attempt, reason=prompt.problem,
                                            code=schema.INVALID_PROMPT)
                elif interrupted >= schema.MAX_ANSWER_ATTEMPTS and not current.cancel.is_set():
                    log.warning("agent %s: gave up on prompt %s after %d interrupted attempts",
                                self.conversation_id, schema.shown_id(prompt.id), interrupted)
                    outcome = refuse_prompt(producer=producer, prompt_id=prompt.id,
                                            attempt=attempt,
                                            reason=schema.gave_up_message(interrupted),
                                            code=schema.INTERRUPTED)
                elif current.cancel.is_set() and current.stopped_text is not None:
                    outcome = end_with_stopped_text(producer=producer, prompt_id=prompt.id,
                                                    attempt=attempt, stopped=current.stopped_text,
                                                    model=self.model.model_id)
                else:
                    outcome = answer_prompt(
                        model=self.model, turns=turns, producer=producer, prompt_id=prompt.id,
                        attempt=attempt, drop_partial=drop_partial, cancel=current.cancel,
                        abort=current.abort, window_s=self.settings.coalesce_window_s,
                        stopped_text=lambda: current.stopped_text,
                    )
                self.actor_ref.tell(_AnswerFinished(outcome))

            self._spawn(f"answer-{prompt.id}", run)
            self._said_idle = False
            return
        if not self._said_idle:  # nothing to answer: the supervisor may want the place
            self._said_idle = True
            self._notify(AgentIdle(self.conversation_id))

    def _interrupted_attempts(self, prompt_id: str, attempt: int) -> int:
        """How many attempts before `attempt` ended with their agent killed or failing, not
        stopped cleanly. Clean stops recorded for `attempt` or later are stale (an attempt
        stopped before it wrote anything is made again under its number) and are dropped."""
        stops = self._clean_stops.get(prompt_id)
        if not stops:
            return attempt
        if max(stops) >= attempt:
            self.offsets.forget_clean_stops(self.conversation_id, prompt_id, attempt)
            stops = {a for a in stops if a < attempt}
            self._clean_stops[prompt_id] = stops
        return attempt - len(stops)

    def _on_answer_finished(self, outcome: AnswerOutcome) -> None:
        self._current = None
        self._answered_any = True
        if self._clean_stops.pop(outcome.prompt_id, None):
            self.offsets.forget_clean_stops(self.conversation_id, outcome.prompt_id)
        self._last_active = time.monotonic()
        self._log.record_finished(outcome.prompt_id, outcome.attempt, outcome.text,
                                  outcome.outcome, outcome.stop_reason)
        log.info(
            "answered conversation=%s prompt=%s outcome=%s stop_reason=%s model=%s"
            " first_token_ms=%s input_tokens=%d output_tokens=%d duration_ms=%.0f chunks=%d",
            self.conversation_id, schema.shown_id(outcome.prompt_id), outcome.outcome,
            outcome.stop_reason, outcome.model,
            "-" if outcome.first_token_ms is None else f"{outcome.first_token_ms:.0f}",
            outcome.input_tokens, outcome.output_tokens, outcome.duration_ms, outcome.chunks,
        )
        for _, waiting in self._batches:
            waiting.discard(outcome.prompt_id)
        self._advance_offset()
        self._start_next()

    def _advance_offset(self) -> None:
        latest = None
        while self._batches and not self._batches[0][1]:
            latest = self._batches.popleft()[0]
        if latest is not None:
            self._keeper.processed(latest)

    def _on_tick(self) -> None:
        if self._stop_requested or self._passivating:  # a tick queued before that decision
            return
        idle = self._is_idle()
        if idle and time.monotonic() - self._last_active >= self.settings.idle_timeout_s:
            self._hand_back("idle")
        elif idle and self._lease_due_for_renewal():
            self._hand_back("renew")

    def _is_idle(self) -> bool:
        return self._current is None and not self._queue and self._producer is not None

    def _on_make_room(self) -> None:
        if self._stop_requested or self._passivating:
            return  # leaving anyway
        if self._is_idle():
            self._hand_back("make-room")
        else:
            self._said_idle = False
            self._notify(AgentBusy(self.conversation_id))

    def _lease_due_for_renewal(self) -> bool:
        return time.monotonic() - self._claimed_at >= self.settings.renew_lease_s

    def _hand_back(self, reason: str) -> None:
        """Between answers: ack what was processed with `done` and stop. The server wakes
        again at once if a prompt is waiting, and the supervisor claims it afresh. The ack
        holds this agent's inbox for its round trip (its retries, with the server down):
        the agent is leaving, and the supervisor's stop is bounded by its own timeout."""
        self._passivating = True
        next_wake = self._keeper.finish()
        if reason in ("idle", "make-room"):
            log.info("agent passivated conversation=%s%s next_wake=%s", self.conversation_id,
                     " to make room for a waiting conversation" if reason == "make-room" else "",
                     next_wake)
        else:
            log.info("agent handed back its lease to renew it conversation=%s held_s=%.0f"
                     " queued=%d next_wake=%s", self.conversation_id,
                     time.monotonic() - self._claimed_at, len(self._queue), next_wake)
        self._stop_with(reason)

    def _on_thread_failed(self, failed: _ThreadFailed) -> None:
        if isinstance(failed.error, AnswerAborted):
            return
        if isinstance(failed.error, ProducerFenced):
            log.warning("agent %s was replaced by a newer one (%s)", self.conversation_id,
                        failed.error)
            self._stop_with("replaced")
            return
        why = self._unanswerable_because(failed.error)
        if why is not None:
            self._give_up_unanswerable(why, failed.error)
            return
        deleted = (self._which_stream(failed.error)
                   if isinstance(failed.error, StreamNotFound) else None)
        if deleted is not None:
            # Deleted by a request, not by a `delete` message (which stops the agent first):
            # the next agent makes the streams again and ends the answer cut short.
            self._failure = (f"its {deleted} stream was deleted (not by a delete message);"
                             " the next agent ends what was being answered")
            log.warning("agent %s stops: %s", self.conversation_id, self._failure)
            self._stop_with("failed")
            return
        if isinstance(failed.error, StreamsError):
            # The server refused, or stayed unreachable past the client's retries: expected
            # while it is down. The supervisor restarts the agent (backing off), and the new
            # one picks up where this one stopped; no traceback to log.
            self._failure = f"{failed.what} failed: {failed.error}"
            log.warning("agent %s stops: %s", self.conversation_id, self._failure)
            self._stop_with("failed")
            return
        raise AgentFailure(f"{failed.what} failed: {failed.error}") from failed.error

    def _unanswerable_because(self, error: BaseException) -> str | None:
        """Why no answer can ever be written for this conversation, if `error` says so;
        None for failures that trying again may cure (a server down, a lost lease)."""
        if isinstance(error, StreamClosed):  # only appends see it: they go to responses
            return "its responses stream is closed"
        if not isinstance(error, (ContentTypeMismatch, StreamGone)):
            return None
        which = self._which_stream(error)
        if which is None:
            return None
        if isinstance(error, ContentTypeMismatch):
            return f"its {which} stream is not {JSON_CONTENT_TYPE}"
        return f"its {which} stream was deleted while a fork of it remains (410 Gone)"

    def _which_stream(self, error: StreamsError) -> str | None:
        """Which of the conversation's streams `error` is about ("prompts" or "responses")."""
        failed_path = urllib.parse.urlsplit(error.url).path
        return next((name for name, path in (("prompts", self.prompts_path),
                                            ("responses", self.responses_path))
                     if failed_path == urllib.parse.urlsplit(self.client.stream_url(path)).path),
                    None)

    def _give_up_unanswerable(self, why: str, error: BaseException) -> None:
        """Ack every prompt so far and stop: restarting would fail the same way for good. A
        new prompt still wakes an agent, which finds out again (streams can be repaired by
        deleting and creating them)."""
        log.error("conversation %s cannot be answered: %s; its prompts stay unanswered (%s)",
                  self.conversation_id, why, error)
        self._passivating = True  # no answer starts meanwhile
        with contextlib.suppress(StreamsError):  # a prompts stream that is gone: no ack
            self._keeper.processed(self.client.head(self.prompts_path).next_offset)
        self._keeper.finish()
        self._stop_with("unanswerable")

    # -- threads ---------------------------------------------------------------------------

    def _spawn(self, what: str, target: Any) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # every failure reaches the actor as a message
                if not self._stopping.is_set():
                    try:
                        self.actor_ref.tell(_ThreadFailed(what, exc))
                    except pykka.ActorDeadError:
                        pass

        threading.Thread(target=guarded, name=f"{what}-{self.conversation_id}",
                         daemon=True).start()

    def _boot(self) -> None:
        """Fence older agents, then read what the streams say was already answered."""
        client = self.client
        conversation = ConversationLog()
        before = self._read_all_creating(self.responses_path)
        for message in before.messages:
            conversation.apply_response(message)
        if self._stopping.is_set():
            # Stopped while reading (a slow server): its marker would now fence the agent
            # that took over meanwhile, in the middle of its answer.
            return
        epoch = max(self.lease.generation, conversation.max_epoch + 1)
        producer = client.producer(self.responses_path, f"agent-{self.conversation_id}",
                                   epoch=epoch)
        producer.append([schema.agent_started(epoch, self.worker)])
        after = client.read_all(self.responses_path, before.next_offset)
        for message in after.messages:
            conversation.apply_response(message)
        prompts = self._read_all_creating(self.prompts_path)
        added = conversation.add_prompt_messages(prompts.messages)
        self._report_unanswerable(self._not_yet_reported(
            [item for item in added if isinstance(item, Unanswerable)], prompts.next_offset))
        self._end_answers_without_prompts(conversation, producer)
        self.actor_ref.tell(_Booted(conversation, producer, prompts.next_offset,
                                    self.offsets.clean_stops(self.conversation_id)))

    def _end_answers_without_prompts(self, conversation: ConversationLog,
                                     producer: Producer) -> None:
        """End with an error the answers cut short whose prompts are gone (the prompts
        stream deleted in their middle): they stayed unfinished for good, and a page showed
        them as being written."""
        orphans = conversation.unfinished_without_prompt()
        if not orphans:
            return
        producer.append([schema.error(prompt_id, attempt, schema.PROMPT_GONE_MESSAGE,
                                      schema.PROMPT_GONE) for prompt_id, attempt in orphans])
        for prompt_id, attempt in orphans:
            conversation.record_finished(prompt_id, attempt, "", "error", None)
        log.warning("conversation %s: ended %d unfinished answer(s) whose prompts are no longer"
                    " in its prompts stream", self.conversation_id, len(orphans))

    def _not_yet_reported(self, skipped: list[Unanswerable], tail: str) -> list[Unanswerable]:
        """Of the prompts a boot skipped, those past this supervisor's processed offset: the
        ones before it were reported by the agent that read them first (an agent boots
        again for each prompt after a rest or a restart). Read only when there are some; an
        offset past the tail (a stream made again since) tells nothing, and a read that
        fails costs only a repeated warning, never the boot. (This read goes on past the
        boot's tail, so a skipped prompt appended in the moment between the two reads is
        reported by the live reader as well.)"""
        processed = self.offsets.get(self.conversation_id) if skipped else None
        if processed is None or processed > tail:  # offsets of one stream sort as strings
            return skipped
        try:
            later = self.client.read_all(self.prompts_path, processed).messages
        except StreamsError:
            return skipped
        return [item for item in map(schema.parse_prompt_message, later)
                if isinstance(item, Unanswerable)]

    def _report_unanswerable(self, items: list[Unanswerable]) -> None:
        """Say that messages were skipped: their writer waits for an answer that cannot come,
        not even an error (there is no prompt id to write it under). One line for each kind
        of fault (what it takes), naming the first."""
        by_rule: dict[str, list[Unanswerable]] = {}
        for item in items:
            by_rule.setdefault(item.rule, []).append(item)
        for rule, alike in by_rule.items():
            more = f" (and {len(alike) - 1} more)" if len(alike) > 1 else ""
            log.warning("conversation %s: skipped %s%s in its prompts stream: %s",
                        self.conversation_id, alike[0].reason, more, rule)

    def _read_all_creating(self, path: str) -> ReadResult:
        """The whole stream, created first if it is missing. Clients create a conversation's
        streams before its first prompt, so reading first saves every boot a `PUT` per
        stream: two of its six requests, each a queue's wait on a busy server."""
        try:
            return self.client.read_all(path)
        except StreamNotFound:
            if self._stopping.is_set():
                raise  # stopped meanwhile (perhaps deleted): create nothing. (A PUT already
                # under way may still land: the supervisor removes a deleted conversation
                # again once that cannot be.)
            self.client.ensure_stream(path)
            return self.client.read_all(path)

    def _read_prompts(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            for batch in reader:
                if self._stopping.is_set():
                    return
                if batch.messages:
                    self.actor_ref.tell(_PromptBatch(batch.messages, batch.next_offset))
        except StreamsError:
            if not self._stopping.is_set():
                raise
