"""`Supervisor`: spawns a `ConversationAgent` for each conversation with pending prompts.

It learns about work two ways, both without polling idle conversations:

- the shared wake stream, where the server writes a wake event whenever a conversation's
  pull-wake subscription has unacknowledged prompts and nobody holds its lease;
- the `conversations` stream, read from the start when the supervisor starts: for each
  conversation it makes sure the subscription exists (idempotent) and checks once whether
  prompts are pending, which covers wakes written while no supervisor was running. Where
  the server lists its subscriptions and streams, that look reads the listings a page at a
  time, and asks about a conversation alone only where they leave it open.

A `delete` message in the `conversations` stream ends a conversation for good: its agent
stops, and the supervisor deletes its subscription and both its streams. It does so again
whenever a wake shows that a late writer brought them back, once more after any request of
the stopped agent may still have been under way, and at a start if they are there (a read
first, for the conversations the offsets file says were removed before). Removals run on
their own thread, so that a start with many deleted conversations claims pending work first.

For a conversation with work it claims the subscription's lease and spawns an agent holding
it. Leases are what let several supervisors, on several machines, share the work: a claim by
one makes the others' claims fail with `ALREADY_CLAIMED`. Crashed agents are restarted with
exponential backoff; the number of live agents is capped.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pykka

from agent_actors import layout
from agent_actors.agent import (
    AgentBusy,
    AgentCrashed,
    AgentIdle,
    AgentStopped,
    ConversationAgent,
    ConversationDeleted,
    MakeRoom,
)
from agent_actors.errors import (
    AlreadyClaimed,
    Conflict,
    NoPendingWork,
    NotFound,
    StreamGone,
    StreamsError,
    StreamsUnavailable,
    Unauthorized,
)
from agent_actors.models.base import Model
from agent_actors.offsets_store import OffsetsStore
from agent_actors.pending_prompts import PendingPrompts, pending_by_offsets
from agent_actors.schema import parse_conversation_entry, parse_deletion
from agent_actors.stream_types import EnsureResult, Lease, ReadResult
from agent_actors.streams_client import StreamsClient, Tail
from agent_actors.supervisor_settings import SupervisorSettings
from agent_actors.timers import Timers

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
STARTUP_PROBE_S = 2.0
"""How long one startup attempt retries before the supervisor reports the server unreachable."""
REMOVAL_THREADS = 4
"""Threads removing deleted conversations: on one, a removal the server was slow to answer
(or never answered, until the client's retry deadline) held up every one after it."""
START_OVER_RESET_S = 60.0  # a shared stream lost again within this: wait longer first
RECENT_KEPT_S = 600.0
"""How long the supervisor remembers when a conversation's agent last ended, and which wake
generation it last claimed: what tells stale news of it (see `_on_pending`, `_on_woken`)."""

# -- messages to the supervisor (from its own threads) ---------------------------------------


@dataclass(frozen=True)
class _Ready:
    wake_offset: str
    conversations_tail: str  # where `conversations` ended at the start


class _UnusableSharedStream(Exception):
    """A shared stream exists but cannot be used: the message says how to mend it."""


@dataclass(frozen=True)
class _WatchLost:
    """Following a shared stream failed for good (it is gone: a server that keeps streams
    in memory restarted, or someone deleted it)."""

    path: str
    generation: int


@dataclass(frozen=True)
class _ConversationsSeen:
    ids: tuple[str, ...]
    deleted: tuple[str, ...] = ()
    live: bool = True  # False: what the first read found, up to the stream's tail


@dataclass
class _Gathered:
    """What the `conversations` stream said, not yet told to the supervisor."""

    ids: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    start_tail: str | None = None  # None until the start's `HEAD` of the stream is known
    caught_up: bool = False


@dataclass(frozen=True)
class _Remove:
    conversation_id: str  # a deleted conversation whose streams may still be there
    check_first: bool = False  # look before deleting: the usual answer is "nothing there"


@dataclass(frozen=True)
class _ServerListing:
    """Ids of the conversations' subscriptions, paths of their streams."""
    subscriptions: frozenset[str]
    streams: frozenset[str]


_UNLISTED = _ServerListing(frozenset(), frozenset())  # a server without listings


@dataclass(frozen=True)
class _Removed:
    conversation_id: str


@dataclass(frozen=True)
class _Pending:
    conversation_id: str
    as_of: float  # `time.monotonic()` before the server was asked


@dataclass(frozen=True)
class _Woken:
    conversation_id: str
    generation: int | None = None  # the wake event's (7.2), where it says
    wake_id: str | None = None  # our server's wake events say it too


@dataclass(frozen=True)
class _Claimed:
    conversation_id: str
    lease: Lease | None  # None: not ours to take, or `error` says why the claim failed
    error: str | None = None


@dataclass(frozen=True)
class _Retry:
    conversation_id: str


T = TypeVar("T")


class _Recent(Generic[T]):
    """A value per conversation, forgotten `RECENT_KEPT_S` after it was last set; what is
    remembered is complete for whatever happened from `since` on."""

    def __init__(self) -> None:
        self._kept_s = RECENT_KEPT_S
        self._items: dict[str, tuple[float, T]] = {}  # cid -> (set at, value), oldest first
        self.since = time.monotonic()

    def set(self, cid: str, value: T) -> None:
        now = time.monotonic()
        self._items.pop(cid, None)  # to the end: the dict stays in the order of time
        self._items[cid] = (now, value)
        while self._items:
            oldest, (set_at, _) = next(iter(self._items.items()))
            if now - set_at < self._kept_s:
                break
            del self._items[oldest]
            self.since = set_at

    def get(self, cid: str) -> T | None:
        item = self._items.get(cid)
        return None if item is None else item[1]


Job = Callable[[], None]


class _JobQueue:
    """Work for the supervisor's job threads. A start's look at every listed conversation
    (`background`: a few requests each, tens of thousands of them on a big server) is taken
    only when nothing else waits, so that a claim for a new prompt does not queue behind it.
    `None` tells a thread to stop."""

    def __init__(self) -> None:
        self._urgent: collections.deque[Job | None] = collections.deque()
        self._background: collections.deque[Job | None] = collections.deque()
        self._ready = threading.Condition()

    def put(self, job: Job | None, *, background: bool = False) -> None:
        with self._ready:
            (self._background if background else self._urgent).append(job)
            self._ready.notify()

    def get(self) -> Job | None:
        with self._ready:
            while not self._urgent and not self._background:
                self._ready.wait()
            return (self._urgent or self._background).popleft()


class Supervisor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, settings: SupervisorSettings, model: Model,
                 client: StreamsClient | None = None,
                 offsets: OffsetsStore | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.model = model
        # Each agent sends requests from two threads at once (its answer, its lease keeper),
        # and so may each job thread.
        self.client = client or StreamsClient(
            settings.streams_url, auth_token=settings.auth_token,
            pool_size=2 * settings.max_agents + settings.job_threads + REMOVAL_THREADS + 4)
        self.offsets = offsets or OffsetsStore(settings.data_dir)  # closed when it stops
        self._pending = PendingPrompts(self.client, self.offsets, settings)
        self.agents: dict[str, pykka.ActorRef[Any]] = {}
        self._known: set[str] = set()
        # Read by the job threads too (a set's `in` is atomic): nothing of these is claimed.
        self._deleted: set[str] = set()
        self._said_held: set[str] = set()  # see _say_held (on the job threads)
        # Claims whose answer was lost, which the server may have granted (on the job threads).
        self._claims_in_doubt: set[str] = set()
        self._held_lock = threading.Lock()
        self._unusable_ids: set[str] = set()  # said once each (see _unusable_id)
        self._removing: set[str] = set()
        self._remove_again: set[str] = set()  # asked while a removal was under way
        self._claiming: set[str] = set()
        # Woken (or found pending) while a claim was under way: claimed again if that claim
        # comes back empty, since the lease may have been let go after the server refused it.
        self._woken_while_claiming: set[str] = set()
        self._deferred: list[str] = []
        # Agents with nothing to answer, the longest idle first, and those of them asked to
        # make room for the deferred claims (see `_make_room`).
        self._idle: dict[str, None] = {}
        self._leaving: set[str] = set()
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._agent_ends: _Recent[float] = _Recent()  # when each one's agent last stopped
        self._claimed_wakes: _Recent[tuple[int, str]] = _Recent()  # (generation, wake_id)
        self._jobs = _JobQueue()
        self._removals = _JobQueue()
        self._start_listing: _ServerListing | None = None  # see _listed_at_start
        self._start_listing_lock = threading.Lock()
        # Past this, no request of a stopped agent is still under way: its retries have
        # stopped (the deadline) and the last attempt has had its full timeout.
        self._stragglers_s = self.client.transport.retry.deadline + self.client.transport.timeout
        self._timers = Timers("supervisor-timers")
        self._stopping = threading.Event()
        # Leases claimed by a job thread whose `_Claimed` the actor has not taken yet: one
        # that arrives as the supervisor stops is released by on_stop or by its job thread.
        self._unseen_leases: dict[str, Lease] = {}
        self._unseen_lock = threading.Lock()
        self._tails: list[Tail] = []
        self._conversations_seen = _Gathered()  # the `conversations` watch thread's own
        self._listing_read = False  # since the last (re)start: see on_receive's _Woken
        self._held_wakes: dict[str, _Woken] = {}  # by conversation
        self._watch_generation = 0  # one more at each start over: older watches are moot
        self._last_start_over = 0.0
        self._start_over_delay = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        log.info("supervisor %s started: streams=%s model=%s max_agents=%d",
                 self.settings.worker_name, self.settings.streams_url, self.model.name,
                 self.settings.max_agents)
        for index in range(self.settings.job_threads):
            threading.Thread(target=self._run_jobs, args=(self._jobs,),
                             name=f"supervisor-jobs-{index}", daemon=True).start()
        for index in range(REMOVAL_THREADS):
            threading.Thread(target=self._run_jobs, args=(self._removals,),
                             name=f"supervisor-removals-{index}", daemon=True).start()
        self._jobs.put(self._prepare)

    def on_stop(self) -> None:
        with self._unseen_lock:
            self._stopping.set()
            unseen = list(self._unseen_leases.values())
            self._unseen_leases.clear()
        for lease in unseen:  # claimed, but the news came too late to start an agent
            self._release_quietly(lease)
        for tail in self._tails:
            tail.close()
        stopping = []
        for ref in list(self.agents.values()):
            try:
                stopping.append(ref.stop(block=False))
            except pykka.ActorDeadError:
                pass
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        for future in stopping:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except (pykka.Timeout, pykka.ActorDeadError):
                log.info("an agent did not stop in time to release its lease")
        self.agents.clear()
        self._timers.close()
        for _ in range(self.settings.job_threads):
            self._jobs.put(None)
        for _ in range(REMOVAL_THREADS):
            self._removals.put(None)
        self.offsets.close()
        log.info("supervisor %s stopped", self.settings.worker_name)

    # -- the inbox -------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if self._stopping.is_set():
            return None
        if isinstance(message, _Ready):
            self._start_listing = None  # listed again for this start's look, if needed
            seen = self._conversations_seen
            seen.start_tail = message.conversations_tail
            self._watch(self.settings.wake_stream, message.wake_offset, self._on_wake_batch)
            # The watch gathers into its own `_Gathered`: one of an earlier start that is
            # still finishing a batch must not write into the new one.
            self._watch(layout.CONVERSATIONS_STREAM, "-1",
                        lambda batch: self._on_conversations_batch(batch, seen), empty_too=True)
        elif isinstance(message, _ConversationsSeen):
            deleted = set(message.deleted)
            fresh = []
            for cid in message.ids:
                if cid not in self._known and cid not in deleted and cid not in self._deleted:
                    self._known.add(cid)
                    fresh.append(cid)
            if message.live:
                for cid in fresh:
                    self._look_alone(cid)
            else:
                self._jobs.put(functools.partial(self._look_at_listed, tuple(fresh)),
                               background=True)
            for cid in message.deleted:
                self._on_deleted(cid, live=message.live)
            if not self._listing_read:
                self._listing_read = True
                for woken in self._held_wakes.values():
                    self._on_woken(woken)  # unless deleted
                self._held_wakes.clear()
        elif isinstance(message, _WatchLost):
            if message.generation == self._watch_generation:
                self._start_over(message.path)
        elif isinstance(message, _Woken) and not self._listing_read:
            # Until the list of conversations is read, a wake may be for one deleted since.
            self._held_wakes[message.conversation_id] = message
        elif isinstance(message, _Woken) and message.conversation_id in self._deleted:
            log.info("a wake for deleted conversation %s: removing it again",
                     message.conversation_id)  # a late writer brought its streams back
            self._remove(message.conversation_id)
        elif isinstance(message, _Remove):
            self._remove(message.conversation_id, unless_removed_before=message.check_first)
        elif isinstance(message, _Pending):
            self._on_pending(message)
        elif isinstance(message, _Woken):
            self._on_woken(message)
        elif isinstance(message, _Retry):
            self._known.add(message.conversation_id)
            self._try_claim(message.conversation_id)
        elif isinstance(message, _Removed):
            cid = message.conversation_id
            self._removing.discard(cid)
            if cid in self._remove_again:
                self._remove_again.discard(cid)
                self._remove(cid)
        elif isinstance(message, _Claimed):
            self._on_claimed(message)
        elif isinstance(message, AgentStopped):
            self._on_agent_gone(message.conversation_id)
            log.info("agent stopped conversation=%s reason=%s", message.conversation_id,
                     message.reason)
        elif isinstance(message, AgentCrashed):
            self._on_agent_crashed(message)
        elif isinstance(message, AgentIdle):
            if message.conversation_id in self.agents:
                self._idle.pop(message.conversation_id, None)
                self._idle[message.conversation_id] = None
                self._make_room()
        elif isinstance(message, AgentBusy):
            self._idle.pop(message.conversation_id, None)
            self._leaving.discard(message.conversation_id)
            self._make_room()
        elif message == "status":
            return {"agents": sorted(self.agents), "deferred": list(self._deferred)}
        return None

    def _on_pending(self, pending: _Pending) -> None:
        """Claim a conversation found with prompts waiting, unless its agent stopped after
        the server was asked. That agent may have answered and acked those prompts, and the
        look its end started is newer news: a claim on the older news started an agent with
        nothing to do (our server grants a claim whatever is pending), and one of a
        conversation that cannot be answered said so a second time. News older than the
        ends remembered is checked afresh."""
        cid = pending.conversation_id
        self._known.add(cid)
        if pending.as_of < self._agent_ends.since:
            log.debug("conversation %s was found with prompts waiting before the agents' ends"
                      " remembered: looked at again", cid)
            self._look_alone(cid)
        elif (ended := self._agent_ends.get(cid)) is not None and ended > pending.as_of:
            log.debug("conversation %s: its agent stopped since it was found with prompts"
                      " waiting: not claimed on that news", cid)
        else:
            self._try_claim(cid)

    def _on_woken(self, woken: _Woken) -> None:
        """Claim a woken conversation, unless the last claim of ours took that very wake: a
        look (a start's, or the one after an agent's end) claims what it finds waiting,
        taking the wake the server wrote for it, and the wake itself may be read after
        that agent has ended. Claimed again, it started an agent with nothing to do (our
        server grants a claim whatever is pending). Only the same wake is passed over: a
        subscription made again counts its generations from the start again."""
        cid = woken.conversation_id
        self._known.add(cid)
        claimed = self._claimed_wakes.get(cid)
        if (claimed is not None and woken.generation == claimed[0]
                and woken.wake_id in (None, claimed[1])):
            log.debug("conversation %s: its wake of generation %d was claimed already",
                      cid, woken.generation)
        else:
            self._try_claim(cid)

    def _try_claim(self, cid: str) -> None:
        if cid in self._claiming:
            log.debug("conversation %s woken while being claimed: claimed again if this claim"
                      " comes back empty", cid)
            self._woken_while_claiming.add(cid)
            return
        if cid in self.agents or cid in self._deleted:
            return
        wait = self._not_before.get(cid, 0) - time.monotonic()
        if wait > 0:
            self._timers.call_later(wait, lambda: self._tell(_Retry(cid)))
            return
        if len(self.agents) + len(self._claiming) >= self.settings.max_agents:
            if cid not in self._deferred:
                self._deferred.append(cid)
                self._make_room()
            return
        self._claiming.add(cid)
        self._jobs.put(lambda: self._claim(cid))

    def _on_claimed(self, claimed: _Claimed) -> None:
        cid = claimed.conversation_id
        with self._unseen_lock:
            self._unseen_leases.pop(cid, None)
        self._claiming.discard(cid)
        woken_meanwhile = cid in self._woken_while_claiming
        self._woken_while_claiming.discard(cid)
        if cid in self._deleted:  # deleted while being claimed: the removal ends the lease
            self._remove(cid)
            self._admit_deferred()
            return
        if claimed.lease is None:
            if claimed.error is not None:
                # The server may hold a wake for it that it will not repeat: try again later.
                failures, delay = self._back_off(cid)
                log.warning("claim failed conversation=%s failures=%d retry_in_s=%.1f error=%s",
                            cid, failures, delay, claimed.error)
                self._try_claim(cid)
            elif woken_meanwhile:  # e.g. refused as held, then let go with a new wake
                self._try_claim(cid)
            self._admit_deferred()
            return
        self._claimed_wakes.set(cid, (claimed.lease.generation, claimed.lease.wake_id))
        try:
            self.agents[cid] = ConversationAgent.start(
                conversation_id=cid,
                lease=claimed.lease,
                client=self.client,
                model=self.model,
                offsets=self.offsets,
                worker=self.settings.worker_name,
                settings=self.settings.agent,
                supervisor=self.actor_ref,
            )
        except Exception as exc:  # e.g. out of threads: this conversation waits, not all
            self._jobs.put(functools.partial(self._release_quietly, claimed.lease))
            self._on_agent_crashed(AgentCrashed(cid, f"its agent could not start: {exc}"))

    def _forget_agent(self, cid: str) -> None:
        self.agents.pop(cid, None)
        self._idle.pop(cid, None)
        self._leaving.discard(cid)

    def _on_agent_gone(self, cid: str) -> None:
        self._forget_agent(cid)
        self._agent_ends.set(cid, time.monotonic())
        self._failures.pop(cid, None)
        if cid in self._deleted:
            self._remove_after_agent(cid)
            self._admit_deferred()
            return
        # A wake that came while the agent was still registered was ignored: a prompt sent
        # as an idle agent stopped, or the new wake the server wrote when the agent's lease
        # lapsed (it stops when it learns so). Look again, as for a conversation seen at start.
        self._jobs.put(functools.partial(self._recheck, cid))
        self._admit_deferred()

    def _on_agent_crashed(self, crashed: AgentCrashed) -> None:
        cid = crashed.conversation_id
        self._forget_agent(cid)
        if cid in self._deleted:  # e.g. its streams went first: nothing to restart
            log.info("agent of deleted conversation=%s ended: %s", cid, crashed.error)
            self._remove_after_agent(cid)
            self._admit_deferred()
            return
        failures, delay = self._back_off(cid)
        # A stop on a known failure reads like the other stops: "crashed" alarmed operators
        # who had only deleted a stream by hand, or restarted the streams server.
        ended = "crashed" if crashed.unexpected else "stopped"
        log.warning("agent %s conversation=%s%s failures=%d restart_in_s=%.1f error=%s", ended,
                    cid, "" if crashed.unexpected else " reason=failed", failures, delay,
                    crashed.error)
        self._try_claim(cid)
        self._admit_deferred()

    def _on_deleted(self, cid: str, *, live: bool) -> None:
        """Stop the conversation's agent, if any, then remove its streams; never claim it again.
        `live`: deleted now, not found deleted at the start."""
        if cid in self._deleted:
            return
        self._deleted.add(cid)
        self._known.add(cid)
        self._failures.pop(cid, None)
        with self._held_lock:
            self._said_held.discard(cid)
            self._claims_in_doubt.discard(cid)
        self._not_before.pop(cid, None)
        if cid in self._deferred:
            self._deferred.remove(cid)
        agent = self.agents.get(cid)
        # Found deleted at a start, every deletion ever made would be said again at each one.
        log.log(logging.INFO if live else logging.DEBUG, "conversation %s was deleted%s", cid,
                ": stopping its agent" if agent else "")
        if agent is not None:
            # One that stopped already has its AgentStopped/AgentCrashed on its way here.
            with contextlib.suppress(pykka.ActorDeadError):
                agent.tell(ConversationDeleted())
            return  # its removal, and the one after its stragglers, follow when it has stopped
        if cid not in self._claiming:  # else: when the claim is answered
            self._remove(cid, unless_removed_before=True, at_start=not live)
        if live:  # an agent of it that stopped a moment ago may still have a request out
            self._timers.call_later(self._stragglers_s,
                                    lambda: self._tell(_Remove(cid, check_first=True)))

    def _remove(self, cid: str, *, unless_removed_before: bool = False,
                at_start: bool = False) -> None:
        """Remove a deleted conversation's streams; once more after a removal under way,
        which may have missed what a late writer created meanwhile. `at_start`: found
        deleted as a start reads the list (see `_left_behind`)."""
        if cid in self._removing:
            self._remove_again.add(cid)
        else:
            self._removing.add(cid)
            self._removals.put(functools.partial(self._remove_conversation, cid,
                                                 check_first=unless_removed_before,
                                                 at_start=at_start))

    def _remove_after_agent(self, cid: str) -> None:
        """Remove a deleted conversation whose agent has just ended, and again once any
        request that agent's threads still had under way (its boot creates missing streams)
        has ended too."""
        self._remove(cid)
        self._timers.call_later(self._stragglers_s,
                                lambda: self._tell(_Remove(cid, check_first=True)))

    def _back_off(self, cid: str) -> tuple[int, float]:
        """Count one more failure for `cid` and delay its next claim: (failures, delay)."""
        failures = self._failures.get(cid, 0) + 1
        self._failures[cid] = failures
        delay = min(MAX_BACKOFF_S, self.settings.restart_backoff_s * 2 ** (failures - 1))
        self._not_before[cid] = time.monotonic() + delay
        return failures, delay

    def _make_room(self) -> None:
        """Ask idle agents to hand their leases back, the longest idle first, one for each
        deferred claim not yet covered: an idle agent used to keep its place until its idle
        timeout (60 s), while conversations with prompts waited for one."""
        wanted = len(self._deferred) - len(self._leaving)
        for cid in list(self._idle):
            if wanted <= 0:
                return
            agent = self.agents.get(cid)
            if agent is None:
                self._idle.pop(cid, None)
                continue
            if cid in self._leaving:
                continue
            self._leaving.add(cid)
            wanted -= 1
            with contextlib.suppress(pykka.ActorDeadError):
                agent.tell(MakeRoom())

    def _admit_deferred(self) -> None:
        while self._deferred and len(self.agents) + len(self._claiming) < self.settings.max_agents:
            self._try_claim(self._deferred.pop(0))

    # -- blocking work, on the supervisor's job threads ------------------------------------

    def _tell(self, message: object) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass

    def _run_jobs(self, jobs: _JobQueue) -> None:
        while True:
            job = jobs.get()
            if job is None or self._stopping.is_set():
                return
            try:
                job()
            except Exception:
                log.exception("supervisor job failed")

    def _prepare(self) -> None:
        """Make sure the shared streams exist, waiting out an unreachable server.

        Each attempt gives up after `STARTUP_PROBE_S`, not the client's whole retry deadline,
        so that an unreachable server is reported at once.
        """
        retry = self.client.transport.retry
        probe = self.client.with_retry(dataclasses.replace(
            retry, deadline=min(retry.deadline, STARTUP_PROBE_S), log_retries=False))
        delay = 0.5
        wake_created = False
        failed = 0
        while not self._stopping.is_set():
            try:
                wake_created |= self._ensure_shared(probe, self.settings.wake_stream).created
                self._ensure_shared(probe, layout.CONVERSATIONS_STREAM)
                # A wake stream made now is read from its start: a server writes the wakes
                # of prompts sent before it existed as it is created.
                wake_tail = ("-1" if wake_created
                             else probe.head(self.settings.wake_stream).next_offset)
                conversations_tail = probe.head(layout.CONVERSATIONS_STREAM).next_offset
                # After the warnings above, the operator learns they are over.
                log.info("streams server reached at %s%s: answering its conversations",
                         self.settings.streams_url,
                         f" after {failed} failed attempt(s)" if failed else "")
                self._tell(_Ready(wake_tail, conversations_tail))
                return
            except _UnusableSharedStream as exc:
                log.error("%s; retrying in %.1fs", exc, delay)
            except Unauthorized as exc:
                log.error("the streams server at %s refuses this supervisor (%s): check its"
                          " %s; retrying in %.1fs", self.settings.streams_url, exc,
                          self.settings.named.auth_token, delay)
            except NotFound as exc:  # a PUT creates: a 404 is not from a streams root
                log.error("no Durable Streams server answers at %s (%s): check %s; retrying"
                          " in %.1fs", self.settings.streams_url, exc,
                          self.settings.named.streams_url, delay)
            except StreamsError as exc:
                # The client's own "giving up" is not the supervisor's: it tries again.
                reason = exc.reason if isinstance(exc, StreamsUnavailable) else exc
                if exc.status is None:
                    log.warning("streams server unreachable at %s (%s); retrying in %.1fs",
                                self.settings.streams_url, reason, delay)
                else:  # it answers, but fails or refuses: perhaps not a streams server
                    log.warning("the streams server at %s answers HTTP %d (%s): check %s"
                                " if it is not a Durable Streams server; retrying in %.1fs",
                                self.settings.streams_url, exc.status, reason,
                                self.settings.named.streams_url, delay)
            failed += 1
            self._stopping.wait(delay)
            delay = min(10.0, delay * 2)

    def _ensure_shared(self, probe: StreamsClient, path: str) -> EnsureResult:
        """`ensure_stream` of a shared stream; `_UnusableSharedStream` if one is there that
        cannot be used (closed, or not JSON), which only deleting it mends."""
        try:
            return probe.ensure_stream(path)
        except Conflict as exc:
            closed = probe.head(path).closed
            raise _UnusableSharedStream(self._unusable_stream_advice(path, closed, exc)) from exc

    def _unusable_stream_advice(self, path: str, closed: bool, problem: object = None) -> str:
        wake = path == self.settings.wake_stream
        name = f"the {'wake' if wake else 'conversations'} stream {path}"
        lost = "no agent can be woken" if wake else "no conversation can be started or deleted"
        what = "has been closed" if closed else f"is not the JSON stream it must be ({problem})"
        return (f"{name} {what}, so {lost}: delete it (DELETE {self.client.stream_url(path)})"
                " and this supervisor makes it again")

    def _recheck(self, cid: str, attempt: int = 0, *, background: bool = False) -> None:
        """`_check_pending`, tried again later (backing off) while the server cannot answer:
        a conversation left unchecked would wait for a wake that may never come. A start's
        look at the whole list runs in the `background` (see `_JobQueue`)."""
        if self._stopping.is_set() or cid in self._deleted:
            return
        try:
            checked = self._check_pending(cid)
        except Exception:  # (a reply no streams server gives): tried again all the same
            log.exception("checking conversation %s failed unexpectedly", cid)
            checked = False
        if cid in self._deleted:  # meanwhile: its `PUT` may have brought the subscription back
            self._tell(_Remove(cid))
        if checked:
            return
        delay = min(MAX_BACKOFF_S, self.settings.restart_backoff_s * 2 ** attempt)
        self._timers.call_later(
            delay, lambda: self._jobs.put(
                functools.partial(self._recheck, cid, attempt + 1, background=background),
                background=background))

    def _check_pending(self, cid: str) -> bool:
        """Ensure the conversation's subscription; report it if prompts await an answer.
        False if the server could not be asked."""
        asked = time.monotonic()
        pending = self._pending.check(cid)
        if pending:
            self._tell(_Pending(cid, asked))
        return pending is not None

    def _look_at_listed(self, cids: tuple[str, ...]) -> None:
        """A start's look at the conversations listed at its start (`_check_pending` for
        each), from the server's listings of subscriptions and streams, a page at a time
        (`LISTING_PAGE`), where it has them: a `PUT` and a `HEAD` for each conversation took
        minutes of the server's time at every start with a hundred thousand. Those the
        listings do not settle (no subscription yet, one made with other settings, or a
        server without listings) are looked at one by one."""
        if not cids or self._stopping.is_set():
            return
        started = time.monotonic()
        try:
            acked, tails = self._pending.listed()
        except StreamsError as exc:
            if isinstance(exc, NotFound):
                log.info("the streams server has no listings (%s): looking at %s one by one",
                         exc, _listed(len(cids)))
            else:
                log.warning("could not list the subscriptions and streams (%s): looking at %s"
                            " one by one", exc, _listed(len(cids)))
            for cid in cids:
                self._look_alone(cid)
            return
        processed = self.offsets.get_all()
        waiting = to_read = one_by_one = 0
        for cid in cids:
            if self._stopping.is_set():
                return
            if cid in self._deleted:
                continue
            if cid not in acked:
                one_by_one += 1
                self._look_alone(cid)
                continue
            tail = tails.get(layout.prompts_path(cid))
            if tail is None:
                continue  # no prompts stream (or a deleted one): its creation wakes an agent
            pending = pending_by_offsets(acked[cid], tail, processed.get(cid))
            if pending:
                waiting += 1
                self._tell(_Pending(cid, started))
            elif pending is None:
                to_read += 1
                self._jobs.put(functools.partial(self._read_whether_unanswered, cid),
                               background=True)
        log.info("looked at %s in %.1f s from the server's listings:"
                 " %d with prompts waiting, %d to read, %d one by one", _listed(len(cids)),
                 time.monotonic() - started, waiting, to_read, one_by_one)

    def _look_alone(self, cid: str) -> None:
        """`_check_pending` for one conversation, in the background (see `_JobQueue`)."""
        self._jobs.put(functools.partial(self._recheck, cid, background=True), background=True)

    def _read_whether_unanswered(self, cid: str) -> None:
        """The rest of a start's look at a conversation whose streams alone can tell."""
        if self._stopping.is_set() or cid in self._deleted:
            return
        asked = time.monotonic()
        unanswered = self._pending.unanswered(cid)
        if unanswered:
            self._tell(_Pending(cid, asked))
        elif unanswered is None:  # unreadable for now: the whole look, again, later
            self._timers.call_later(self.settings.restart_backoff_s, lambda: self._jobs.put(
                functools.partial(self._recheck, cid, 1, background=True), background=True))

    def _remove_conversation(self, cid: str, attempt: int = 0, *,
                             check_first: bool = False, at_start: bool = False) -> None:
        """Delete a deleted conversation's subscription and streams; retried (backing off)
        while the server cannot answer. Gone already (404, or 410 for a stream that forks
        still read) is done. `check_first`: if the offsets file says they were removed
        before, only look (reads, not a write transaction each) whether any came back."""
        try:
            self._remove_conversation_now(cid, attempt, check_first=check_first,
                                          at_start=at_start)
        except Exception:  # (a reply no streams server gives): else the conversation stayed
            # "being removed" for good, and every later removal of it waited behind that
            log.exception("removing deleted conversation %s failed unexpectedly", cid)
            self._tell(_Removed(cid))

    def _remove_conversation_now(self, cid: str, attempt: int, *, check_first: bool,
                                 at_start: bool) -> None:
        if check_first and self.offsets.is_removed(cid) and not self._left_behind(cid, at_start):
            log.debug("deleted conversation %s: nothing left", cid)
            self._tell(_Removed(cid))
            return
        deletions: list[Callable[[], None]] = [
            functools.partial(self.client.delete_subscription, layout.subscription_id(cid)),
            functools.partial(self.client.delete, layout.prompts_path(cid)),
            functools.partial(self.client.delete, layout.responses_path(cid)),
        ]
        try:
            for delete in deletions:
                try:
                    delete()
                except (NotFound, StreamGone):
                    pass
        except StreamsUnavailable as exc:
            if self._stopping.is_set():
                return
            delay = min(MAX_BACKOFF_S, self.settings.restart_backoff_s * 2 ** attempt)
            log.warning("could not remove deleted conversation %s (%s); retrying in %.1fs",
                        cid, exc, delay)
            self._timers.call_later(delay, lambda: self._removals.put(
                functools.partial(self._remove_conversation, cid, attempt + 1)))
            return
        except StreamsError as exc:  # refused (e.g. a token without the right): not retried
            log.error("could not remove deleted conversation %s: %s", cid, exc)
            self._tell(_Removed(cid))
            return
        self.offsets.record_removed(cid)
        log.info("removed deleted conversation=%s", cid)
        self._tell(_Removed(cid))

    def _left_behind(self, cid: str, at_start: bool) -> bool:
        """Whether anything of a removed conversation is on the server again (or the server
        cannot say: then its removal is tried again). `at_start`: asked of the listings read
        once for the start, where the server has them (a look at each stream and at the
        subscription was three requests and three 404s in the server's access log, at every
        start, for every conversation ever deleted)."""
        listed = self._listed_at_start() if at_start else None
        if listed is not None:
            return (layout.subscription_id(cid) in listed.subscriptions
                    or layout.prompts_path(cid) in listed.streams
                    or layout.responses_path(cid) in listed.streams)
        try:
            try:
                self.client.get_subscription(layout.subscription_id(cid))
                return True
            except NotFound:
                pass
            return any(self.client.exists(path)
                       for path in (layout.prompts_path(cid), layout.responses_path(cid)))
        except StreamsError:
            return True

    def _listed_at_start(self) -> _ServerListing | None:
        """The conversations' subscriptions and streams, listed once for a start's look at
        the deleted ones (on the removal threads, listed by the first to ask); None where the
        server has no listings or could not list them."""
        with self._start_listing_lock:
            if self._start_listing is None:
                try:
                    self._start_listing = _ServerListing(
                        frozenset(s.id for s in self._pending.subscriptions()),
                        frozenset(s.path for s in self._pending.streams()))
                except NotFound:
                    self._start_listing = _UNLISTED
                except StreamsError as exc:
                    log.info("could not list the subscriptions and streams (%s): looking at"
                             " each deleted conversation alone", exc)
                    return None
            return None if self._start_listing is _UNLISTED else self._start_listing

    def _claim(self, cid: str) -> None:
        lease: Lease | None = None
        error: str | None = None
        try:
            lease = self.client.claim(layout.subscription_id(cid), self.settings.worker_name)
            self._pending.note_lease(cid, lease.lease_ttl_ms)
            with self._held_lock:  # a hold after this one is news again
                self._said_held.discard(cid)
                self._claims_in_doubt.discard(cid)
        except AlreadyClaimed as exc:
            self._say_held(cid, exc)
        except NoPendingWork as exc:
            log.debug("not claiming %s: %s", cid, exc)
        except NotFound as exc:
            log.warning("not claiming %s: %s", cid, exc)
        except StreamsError as exc:
            error = str(exc)
            if isinstance(exc, StreamsUnavailable):  # the request may have reached the server
                with self._held_lock:
                    self._claims_in_doubt.add(cid)
        except Exception as exc:  # (a reply no streams server gives): the claim is retried all
            # the same, or the conversation would stay "being claimed" for good
            log.exception("claiming %s failed unexpectedly", cid)
            error = f"{type(exc).__name__}: {exc}"
        if lease is not None:
            with self._unseen_lock:
                stopped = self._stopping.is_set()
                if not stopped:
                    self._unseen_leases[cid] = lease
            if stopped:
                self._release_quietly(lease)
                return
        self._tell(_Claimed(cid, lease, error))

    def _say_held(self, cid: str, held: AlreadyClaimed) -> None:
        """Say that another worker's lease holds the conversation, once until this
        supervisor claims it: after a supervisor was killed, its successor waited out the
        lease (30 s by default) without a word. Repeats only at debug level: two supervisors
        meet like this all the time."""
        with self._held_lock:
            first = cid not in self._said_held
            self._said_held.add(cid)
            in_doubt = cid in self._claims_in_doubt
        if first and held.current_holder == self.settings.worker_name and in_doubt:
            # Not an earlier run's: the claim is not repeated for fear of this very case.
            log.info("conversation %s waits: a claim of it by this supervisor, whose answer was"
                     " lost, took its lease after all: answered once that lease runs out", cid)
        elif first and held.current_holder == self.settings.worker_name:
            log.info("conversation %s waits: a lease under this supervisor's worker name holds"
                     " it (an earlier run stopped without releasing it?): answered once the"
                     " lease runs out", cid)
        elif first:
            # Said as what goes on: with two supervisors, "waits" read like a stall.
            log.info("conversation %s is answered by worker %s, which holds its lease (this"
                     " supervisor takes it over only if that worker stops and the lease runs"
                     " out)", cid, held.current_holder or "(not named)")
        else:
            log.debug("not claiming %s: %s", cid, held)

    def _release_quietly(self, lease: Lease) -> None:
        try:
            self.client.release(lease)
        except StreamsError as exc:
            log.info("could not release the lease of %s: %s", lease.subscription_id, exc)

    def _watch(self, path: str, offset: str, on_batch: Callable[[ReadResult], None], *,
               empty_too: bool = False) -> None:
        """Follow `path` on a thread of its own; `empty_too`: `on_batch` also gets batches
        without messages (being caught up with an empty stream is news too)."""
        tail = self.client.tail(path, offset, live=self.settings.agent.live_mode,  # type: ignore[arg-type]
                                yield_empty=empty_too)
        self._tails.append(tail)
        generation = self._watch_generation

        def follow() -> None:
            try:
                for batch in tail:
                    if self._stopping.is_set() or generation != self._watch_generation:
                        return
                    if batch.messages or empty_too:
                        on_batch(batch)
            except StreamsError as exc:
                if not self._stopping.is_set() and generation == self._watch_generation:
                    log.warning("following %s failed (%s): reading the shared streams again",
                                path, exc)
                    self._tell(_WatchLost(path, generation))
                return
            # A tail ends by itself only at the end of a closed stream.
            if not self._stopping.is_set() and generation == self._watch_generation:
                log.error("%s", self._unusable_stream_advice(path, closed=True))
                self._tell(_WatchLost(path, generation))

        threading.Thread(target=follow, name=f"watch-{path}", daemon=True).start()

    def _start_over(self, path: str) -> None:
        """A shared stream is gone: make the shared streams again, and look at every
        conversation as at a start (a server that lost its streams lost its subscriptions
        too, and wakes written while the wake stream was missing are lost). Running agents go
        on. Backs off if it keeps happening."""
        self._watch_generation += 1
        for tail in self._tails:
            tail.close()
        self._tails.clear()
        self._known.clear()
        self._listing_read = False
        self._conversations_seen = _Gathered()
        now = time.monotonic()
        recent = now - self._last_start_over < START_OVER_RESET_S
        self._start_over_delay = min(MAX_BACKOFF_S, 2 * self._start_over_delay) if recent else 0.5
        self._last_start_over = now
        log.info("following %s again in %.1f s", path, self._start_over_delay)
        self._timers.call_later(self._start_over_delay, lambda: self._jobs.put(self._prepare))

    def _on_wake_batch(self, batch: ReadResult) -> None:
        for message in batch.messages:
            if isinstance(message, dict) and isinstance(message.get("subscription_id"), str):
                sub_id = message["subscription_id"]
                cid = layout.conversation_of_subscription(sub_id)
                generation, wake_id = message.get("generation"), message.get("wake_id")
                if cid is not None:
                    self._tell(_Woken(cid, generation if type(generation) is int else None,
                                      wake_id if isinstance(wake_id, str) else None))
                elif sub_id.startswith(layout.SUBSCRIPTION_PREFIX):
                    self._unusable_id(sub_id[len(layout.SUBSCRIPTION_PREFIX):])

    def _unusable_id(self, cid: str) -> None:
        """Say once per id that a conversation's id is not one the agents answer under: its
        client waits for answers that cannot come."""
        if cid in self._unusable_ids or len(self._unusable_ids) >= 1000:
            return
        self._unusable_ids.add(cid)
        log.warning("a conversation with the id %r is not answered: an id is 1 to 64 letters,"
                    " digits, '_' or '-'", cid[:80])

    def _on_conversations_batch(self, batch: ReadResult, seen: _Gathered) -> None:
        """Until the read reaches where the stream ended at the start, what it finds is
        gathered and told at once: a conversation deleted further on must not be checked
        (which `PUT`s its subscription) first. A batch with anything appended since the start
        is `live` (offsets of one stream sort as strings)."""
        for message in batch.messages:
            entry = parse_conversation_entry(message)
            if entry is not None:
                seen.ids.append(entry.id)
            elif (isinstance(message, dict) and message.get("type", "conversation") == "conversation"
                  and isinstance(message.get("id"), str)):
                self._unusable_id(message["id"])
        seen.deleted.extend(cid for cid in map(parse_deletion, batch.messages) if cid is not None)
        start_tail = seen.start_tail or ""
        if not seen.caught_up and not batch.up_to_date and batch.next_offset < start_tail:
            return
        first = not seen.caught_up  # told even if empty: the wakes wait for it
        seen.caught_up = True
        live = batch.next_offset > start_tail
        if seen.ids or seen.deleted or first:
            self._tell(_ConversationsSeen(tuple(seen.ids), tuple(seen.deleted), live=live))
        seen.ids.clear()
        seen.deleted.clear()


def _listed(count: int) -> str:
    return f"{count} listed conversation{'' if count == 1 else 's'}"
