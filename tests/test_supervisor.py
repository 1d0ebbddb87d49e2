"""The supervisor's duties: restart crashed agents with backoff, cap the live agents, claim
conversations woken together at once (and boot their agents without needless requests),
wait out an unreachable streams server, and shut down cleanly on SIGTERM/SIGINT.

Real streams servers, real sockets, the real `anthropic` SDK against the local fake Messages
API. Some tests run the `Supervisor` actor in this process, to give its streams client a short
retry deadline (an outage then crashes an agent in a second, not in thirty) and to ask it for
its status; the others run `python -m agent_actors supervisor` as a child process.
"""

from __future__ import annotations

import collections
import http.server
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pykka
import pytest
import requests

from agent_actors import layout
from agent_actors.agent import AgentSettings, ConversationAgent
from agent_actors.errors import LeaseFenced, NotFound, StreamsUnavailable
from agent_actors.models.anthropic_model import AnthropicModel
from agent_actors.stream_types import Lease, ListingPage, ReadResult, SubscriptionConfig
from agent_actors.streams_client import RetryPolicy, StreamsClient, Tail
from agent_actors import pending_prompts
from agent_actors import supervisor as supervisor_module
from agent_actors.supervisor import Supervisor
from agent_actors.supervisor_settings import SupervisorSettings
from tests.fake_anthropic import FakeAnthropic
from tests.support import ServerProcess, free_port, start_reference_server, start_streams_server
from tests.support.agents import (
    ChatClient,
    SupervisorProcess,
    all_prompts_acked,
    mid_answer,
    supervisor_process,
    wait_for_answers,
    wait_until,
)
from tests.test_agents import (
    assert_clean_answers,
    fake_reply,
    final_render,
    lease_holder,
    reply_to,
)

pytestmark = pytest.mark.timeout(120)

LEASE_TTL_MS = 2000
LONG_REPLY = " ".join(f"word{i}" for i in range(150))


def long_or_short(messages: list[dict[str, Any]]) -> str:
    """The fake model's reply: `LONG_REPLY` to the prompt "long", else `reply_to` it."""
    return LONG_REPLY if messages[-1]["content"] == "long" else fake_reply(messages)


# -- watching the in-process supervisor's log ----------------------------------------------------


@dataclass(frozen=True)
class LogLine:
    at: float  # time.monotonic()
    text: str


class LogWatch(logging.Handler):
    """Keeps every `agent_actors` log line, with its time, for tests to wait on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[LogLine] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.lines.append(LogLine(time.monotonic(), record.getMessage()))
            self._changed.notify_all()

    def matching(self, pattern: str) -> list[LogLine]:
        regex = re.compile(pattern)
        with self._changed:
            return [line for line in self.lines if regex.search(line.text)]

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 20.0) -> LogLine:
        """The ``count``-th line matching ``pattern``, once it is logged."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := self.matching(pattern)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = "\n".join(line.text for line in self.lines[-30:])
                    raise AssertionError(f"no {count} line(s) matching {pattern!r} after "
                                         f"{timeout}s; last lines:\n{tail}")
                self._changed.wait(remaining)
            return found[count - 1]


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    logger = logging.getLogger("agent_actors")
    watch = LogWatch()
    level = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(long_or_short, tokens_per_second=200) as server:
        yield server


StartInProcess = Callable[..., "pykka.ActorRef[Any]"]


@pytest.fixture
def in_process(tmp_path: Path, fake: FakeAnthropic) -> Iterator[StartInProcess]:
    """Start `Supervisor` actors in this process; all are stopped at teardown."""
    refs: list[pykka.ActorRef[Any]] = []

    def start(root: str, *, retry_deadline: float = 30.0, worker: str = "w1",
              idle_timeout: float = 30.0, client: StreamsClient | None = None,
              agent: Mapping[str, Any] | None = None, **settings: Any) -> pykka.ActorRef[Any]:
        client = client or StreamsClient(root, retry=RetryPolicy(deadline=retry_deadline))
        model = AnthropicModel(api_key="test-key", model="claude-fake-1", base_url=fake.url)
        agent_settings = AgentSettings(idle_timeout_s=idle_timeout, **(agent or {}))
        ref = Supervisor.start(
            SupervisorSettings(streams_url=root, data_dir=str(tmp_path / f"agents-{worker}"),
                               worker_name=worker, lease_ttl_ms=LEASE_TTL_MS,
                               agent=agent_settings, **settings),
            model, client=client)
        refs.append(ref)
        return ref

    yield start
    for ref in refs:
        try:
            ref.stop(timeout=30)
        except pykka.ActorDeadError:
            pass


StartSupervisor = Callable[..., SupervisorProcess]


@pytest.fixture
def start_supervisor(
    request: pytest.FixtureRequest, tmp_path: Path, fake: FakeAnthropic,
) -> Iterator[StartSupervisor]:
    """Start supervisor processes; all are stopped at teardown."""
    started: list[SupervisorProcess] = []
    test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def start(root: str, *, worker: str = "w1", lease_ttl_ms: int = LEASE_TTL_MS,
              **options: Any) -> SupervisorProcess:
        sup = supervisor_process(root, tmp_path / f"agents-{worker}", model_url=fake.url,
                                 worker_name=worker, lease_ttl_ms=lease_ttl_ms,
                                 log_name=f"{test_name}-{worker}", **options)
        started.append(sup)
        return sup.start()

    yield start
    for sup in started:
        sup.terminate(timeout=15)
        print(f"--- supervisor log ({sup.log_path}) ---\n{sup.log_tail(40)}")


def streams_root(server: ServerProcess) -> str:
    return f"{server.url}/v1/stream"


def status(supervisor: pykka.ActorRef[Any]) -> dict[str, list[str]]:
    """What the supervisor actor answers to "status": its live agents and waiting ones."""
    answer = supervisor.ask("status", timeout=5)
    assert isinstance(answer, dict)
    return answer


def connect(root: str, lease_ttl_ms: int = LEASE_TTL_MS) -> tuple[StreamsClient, ChatClient]:
    client = StreamsClient(root)
    return client, ChatClient(client, lease_ttl_ms=lease_ttl_ms)


_BACKOFF = re.compile(r"failures=(\d+) (?:restart|retry)_in_s=([\d.]+)")


def backoffs(logs: LogWatch, pattern: str) -> list[tuple[LogLine, int, float]]:
    """The lines matching ``pattern`` with their failure count and delay."""
    found = []
    for line in logs.matching(pattern):
        match = _BACKOFF.search(line.text)
        assert match is not None, line
        found.append((line, int(match[1]), float(match[2])))
    return found


# -- 1. a crashed agent is restarted with backoff ---------------------------------------------------


def test_a_crashed_agent_is_restarted_with_backoff_and_answers_once(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """The streams server dies twice while the agent streams an answer: each time the agent's
    appends fail past the retry deadline and it stops on that failure (not a model error, not
    a fence); the supervisor restarts it later each time, and the answer ends complete, once."""
    fake.tokens_per_second = 40  # the long reply takes ~4 s: both outages land mid-answer
    root = streams_root(streams_server)
    in_process(root, retry_deadline=1.0, restart_backoff_s=0.5)
    client, chat = connect(root)
    cid = chat.start_conversation("crashes")
    prompt = chat.send_prompt(cid, "long")
    failed_stops = rf"agent stopped conversation={cid} reason=failed failures="

    for outage in (1, 2):
        # The agent of this round is streaming its attempt; kill the server under it.
        wait_for_answers(client, cid, [prompt], until=mid_answer(prompt, outage - 1))
        streams_server.kill()
        logs.wait_for(failed_stops, count=outage, timeout=20)
        streams_server.start()

    rendered = wait_for_answers(client, cid, [prompt], timeout=30)
    answer = rendered.answers[prompt]
    assert answer.text == LONG_REPLY and answer.terminals_total == 1, answer
    assert answer.terminal["type"] == "done" and answer.terminal["stopReason"] == "end_turn"
    assert answer.restarts == 2 and answer.attempt == 2, answer  # two cut-off attempts hidden
    final = final_render(client, cid)
    assert final.answers[prompt].terminals_total == 1
    assert final.answers[prompt].chunks_after_terminal == 0
    assert len(logs.matching(f"answered conversation={cid} prompt={prompt} ")) == 1

    # Backoff: each crash counts one more failure and waits twice as long as the one before
    # (claims that failed while the server was down count too), and no agent started before
    # its restart delay had passed.
    crashes = backoffs(logs, failed_stops)
    everything = backoffs(
        logs, rf"(?:agent stopped|claim failed) conversation={cid} (?:reason=failed )?failures=")
    assert len(crashes) == 2, crashes
    assert [n for _, n, _ in everything] == list(range(1, len(everything) + 1))
    assert all(delay == min(30.0, 0.5 * 2 ** (n - 1)) for _, n, delay in everything)
    assert crashes[0][2] < crashes[1][2], crashes
    starts = logs.matching(f"agent started conversation={cid} ")
    assert len(starts) == 3, [s.text for s in starts]
    for (crash, _, delay), restarted in zip(crashes, starts[1:]):
        assert restarted.at - crash.at >= delay - 0.05, (crash, restarted)
    print("backoff:\n" + "\n".join(line.text[:100] for line, _, _ in everything))


def test_an_agent_hands_its_lease_back_between_answers_before_its_token_runs_out(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """A wake token lasts an hour on the reference server (a day on ours) and cannot be
    renewed: an agent kept busy past it lost its lease at its next heartbeat, and its
    conversation waited for the lease to run out. An agent that has held its lease for
    `renew_lease_s` (here: at once) hands it back between two answers, or idle, and stops;
    the supervisor claims the conversation again for what is waiting. Each agent answers
    one prompt first: else one whose boot outlasted the renewal would hand back before
    answering anything, and the next the same, for ever."""
    fake.tokens_per_second = 25  # each answer takes about half a second
    root = streams_root(streams_server)
    in_process(root, agent={"renew_lease_s": 0.0})
    client, chat = connect(root)
    cid = chat.start_conversation("renewed")
    contents = ["one", "two", "three", "four"]
    prompts = {chat.send_prompt(cid, content): content for content in contents[:3]}

    wait_for_answers(client, cid, list(prompts), timeout=30)
    # Two agents answered one prompt each and handed back with the rest queued; the third,
    # idle after its answer, hands back too, and then no agent holds the conversation.
    handed_back = f"agent handed back its lease to renew it conversation={cid} "
    logs.wait_for(f"agent stopped conversation={cid} reason=renew", count=3, timeout=10)
    assert len(logs.matching(handed_back + r"held_s=\d+ queued=[1-9]")) == 2
    wait_until(lambda: lease_holder(client, cid) is None, timeout=5,
               what="the lease to be handed back")
    prompts[chat.send_prompt(cid, contents[3])] = contents[3]

    wait_for_answers(client, cid, list(prompts), timeout=30)
    final = final_render(client, cid)
    for prompt_id, content in prompts.items():
        answer = final.answers[prompt_id]
        assert answer.text == reply_to(content) and answer.terminals_total == 1, answer
        assert answer.chunks_after_terminal == 0 and answer.restarts == 0, answer
        assert len(logs.matching(f"answered conversation={cid} prompt={prompt_id} ")) == 1
    assert len(logs.matching(f"agent started conversation={cid} ")) >= 4
    assert not logs.matching(rf"lease lost|agent crashed conversation={cid} "
                             rf"|agent stopped conversation={cid} reason=failed")


def test_a_wake_that_comes_while_a_claim_is_refused_is_claimed_again(
    streams_server: ServerProcess, in_process: StartInProcess, logs: LogWatch,
) -> None:
    """Another worker holds the lease when the claim reaches the server (409) and lets it go
    before the answer is back: the wake the server writes for that comes while the claim is
    under way. It was dropped then, and the prompt waited for some later wake."""
    root = streams_root(streams_server)
    held = SlowClaim(root, hold_answer=True)
    in_process(root, client=held)
    client, chat = connect(root)
    cid = chat.start_conversation("contended")
    prompt = chat.send_prompt(cid, "anyone?")
    assert held.reached.wait(30)
    other = client.claim(layout.subscription_id(cid), "another-worker")
    held.go.set()
    assert held.claimed.wait(30)  # refused: the other worker holds the lease
    client.release(other)  # the server wakes again: the supervisor's claim is still out
    logs.wait_for(f"conversation {cid} woken while being claimed", timeout=10)
    held.deliver.set()

    rendered = wait_for_answers(client, cid, [prompt], timeout=20)
    assert rendered.answers[prompt].text == reply_to("anyone?")


@pytest.mark.parametrize("failing", ["the agent's boot thread", "the agent's actor"])
def test_an_agent_that_cannot_start_is_restarted(
    streams_server: ServerProcess, in_process: StartInProcess, logs: LogWatch,
    monkeypatch: pytest.MonkeyPatch, failing: str,
) -> None:
    """The process out of threads as an agent starts. In the agent's `on_start`, Pykka
    stopped the actor without calling `on_failure`: its lease was heartbeaten for good and
    the supervisor, never told, kept the conversation as answered. Starting the actor
    itself raised in the supervisor's inbox, and Pykka stopped the supervisor."""
    refused = threading.Event()

    def out_of_threads_once() -> None:
        if not refused.is_set():
            refused.set()
            raise RuntimeError("can't start new thread")

    if failing == "the agent's boot thread":
        spawn = ConversationAgent._spawn

        def spawn_once(agent: ConversationAgent, what: str, target: Any) -> None:
            if what == "boot":
                out_of_threads_once()
            spawn(agent, what, target)

        monkeypatch.setattr(ConversationAgent, "_spawn", spawn_once)
    else:
        start = ConversationAgent.start

        def start_once(*args: Any, **kwargs: Any) -> Any:
            out_of_threads_once()
            return start(*args, **kwargs)

        monkeypatch.setattr(ConversationAgent, "start", start_once)
    root = streams_root(streams_server)
    sup = in_process(root, restart_backoff_s=0.2)
    client, chat = connect(root)
    cid = chat.start_conversation("no threads left")
    prompt = chat.send_prompt(cid, "anyone?")

    logs.wait_for(rf"agent crashed conversation={cid} .*can't start new thread", timeout=10)
    rendered = wait_for_answers(client, cid, [prompt], timeout=20)
    assert rendered.answers[prompt].text == reply_to("anyone?")
    assert sup.is_alive()


def test_a_claim_that_fails_while_the_server_is_down_is_retried(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """With one agent slot, B waits behind A. The server dies: A's agent crashes, which frees
    the slot, and B's claim fails. The server holds B's wake (issued, never claimed) and will
    not write another, so only the supervisor retrying the claim gets B answered."""
    fake.tokens_per_second = 40
    root = streams_root(streams_server)
    sup = in_process(root, retry_deadline=1.0, restart_backoff_s=0.5, max_agents=1,
                     idle_timeout=0.5)  # the one slot is freed soon after each answer
    client, chat = connect(root)
    a, b = chat.start_conversation("A"), chat.start_conversation("B")
    prompt_a = chat.send_prompt(a, "long")
    wait_for_answers(client, a, [prompt_a], until=mid_answer(prompt_a, 0))
    prompt_b = chat.send_prompt(b, "queued behind A")
    wait_until(lambda: status(sup) == {"agents": [a], "deferred": [b]},
               timeout=10, what="B to wait for a free slot")

    streams_server.kill()
    logs.wait_for(rf"claim failed conversation={b} failures=1 ", timeout=20)
    streams_server.start()

    rendered_b = wait_for_answers(client, b, [prompt_b], timeout=30)
    assert_clean_answers(rendered_b, {prompt_b: "queued behind A"})
    rendered_a = wait_for_answers(client, a, [prompt_a], timeout=30)
    assert rendered_a.answers[prompt_a].text == LONG_REPLY
    assert rendered_a.answers[prompt_a].terminals_total == 1


# -- 2. --max-agents caps the live agents -------------------------------------------------------------


def test_max_agents_caps_live_agents_and_every_conversation_is_answered(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """Four conversations with a prompt each and two agent slots: two agents run, two
    conversations wait; passivation frees the slots and every prompt is answered once."""
    fake.tokens_per_second = 30  # ~0.6 s per answer
    root = streams_root(streams_server)
    sup = in_process(root, max_agents=2, idle_timeout=0.3)
    client, chat = connect(root)
    conversations = [chat.start_conversation(f"capped {i}") for i in range(4)]
    prompts = {cid: chat.send_prompt(cid, f"question for {cid}") for cid in conversations}

    # Two agents run; the other two conversations wait for a slot.
    wait_until(lambda: [len(v) for v in status(sup).values()] == [2, 2],
               timeout=10, what="two agents running and two conversations deferred")
    for cid, prompt in prompts.items():
        rendered = wait_for_answers(client, cid, [prompt], timeout=30)
        assert_clean_answers(rendered, {prompt: f"question for {cid}"})
    assert peak_live_agents(logs) == 2
    for cid in conversations:
        assert len(logs.matching(f"agent started conversation={cid} ")) == 1
    assert len(fake.requests) == 4


def test_an_idle_agent_makes_room_for_a_conversation_waiting_for_a_place(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """With every place taken by an agent that had nothing left to answer, a conversation
    with a prompt waited until one of them reached its idle timeout (60 s by default; ten
    minutes here): 15 conversations on 3 places took 267 s instead of about 30."""
    root = streams_root(streams_server)
    sup = in_process(root, max_agents=1, idle_timeout=600)
    client, chat = connect(root)
    first, second = chat.start_conversation("first"), chat.start_conversation("second")
    asked_first = chat.send_prompt(first, "a question for the first")
    wait_for_answers(client, first, [asked_first], timeout=30)
    asked_second = chat.send_prompt(second, "a question for the second")
    wait_for_answers(client, second, [asked_second], timeout=15)
    assert logs.matching(f"agent passivated conversation={first} to make room")
    asked_again = chat.send_prompt(first, "the first again")
    rendered = wait_for_answers(client, first, [asked_first, asked_again], timeout=15)
    assert_clean_answers(rendered, {asked_first: "a question for the first",
                                    asked_again: "the first again"})
    assert peak_live_agents(logs) == 1
    assert status(sup)["deferred"] == []


def peak_live_agents(logs: LogWatch) -> int:
    """The most agents alive at once, as the log tells it.

    An agent logs `agent passivated` before it stops, and the supervisor admits the next one
    only after hearing that it stopped, so the log order never undercounts.
    """
    live = peak = 0
    for line in logs.matching(r"^agent (started|passivated) conversation=|"
                              r"^agent crashed conversation=\S+ error="):
        live += 1 if line.text.startswith("agent started") else -1
        peak = max(peak, live)
    return peak


# -- 2b. conversations woken together are claimed at once ------------------------------------------


class ClaimsInFlight(StreamsClient):
    """A streams client that counts its claims in flight at once; each claim first waits (up
    to `hold_s`) for `expected` of them to be in flight together."""

    def __init__(self, root: str, expected: int, hold_s: float = 5.0) -> None:
        super().__init__(root)
        self.expected = expected
        self.hold_s = hold_s
        self.peak = 0
        self._in_flight = 0
        self._changed = threading.Condition()

    def claim(self, subscription_id: str, worker: str) -> Lease:
        with self._changed:
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.peak >= self.expected, timeout=self.hold_s)
            self._in_flight -= 1
        return super().claim(subscription_id, worker)


def test_conversations_woken_together_are_claimed_at_once(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
) -> None:
    """Four prompts sent together: the four claims are in flight at the same time, so the
    last conversation does not wait for three claims' round trips before its agent starts."""
    root = streams_root(streams_server)
    claims = ClaimsInFlight(root, expected=4)
    in_process(root, client=claims)
    client, chat = connect(root)
    conversations = [chat.start_conversation(f"together {i}") for i in range(4)]
    prompts = {cid: chat.send_prompt(cid, f"question for {cid}") for cid in conversations}
    for cid, prompt in prompts.items():
        rendered = wait_for_answers(client, cid, [prompt], timeout=30)
        assert_clean_answers(rendered, {prompt: f"question for {cid}"})
    assert claims.peak == 4


class EnsureCounting(StreamsClient):
    """A streams client that records the paths it creates or confirms with a `PUT`."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.ensured: list[str] = []

    def ensure_stream(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self.ensured.append(path)
        return super().ensure_stream(path, *args, **kwargs)


def test_an_agent_boots_without_putting_streams_its_client_created(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
) -> None:
    """A boot's requests each wait their turn on a busy server: the conversation's streams,
    which its client created before the first prompt, are read, not `PUT` again."""
    root = streams_root(streams_server)
    counting = EnsureCounting(root)
    in_process(root, client=counting)
    client, chat = connect(root)
    cid = chat.start_conversation("streams already there")
    prompt = chat.send_prompt(cid, "boot lean")
    assert_clean_answers(wait_for_answers(client, cid, [prompt], timeout=30),
                         {prompt: "boot lean"})
    assert [path for path in counting.ensured if cid in path] == []


# -- 3. the streams server unreachable at start ----------------------------------------------------


def answer_one(root: str, title: str, content: str) -> None:
    """A new conversation's prompt is answered, once and in full."""
    client, chat = connect(root)
    cid = chat.start_conversation(title)
    prompt = chat.send_prompt(cid, content)
    rendered = wait_for_answers(client, cid, [prompt], timeout=30)
    assert_clean_answers(rendered, {prompt: content})


def test_a_prompt_sent_before_any_supervisor_ran_is_answered_by_the_first_one(
    streams_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """On a fresh server nobody had made the wake stream: the first prompt's wake went
    nowhere, and a supervisor started later never heard of a conversation missing from the
    list. The server now writes that wake as the supervisor makes the wake stream, and the
    supervisor reads a wake stream it made from its start."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    cid = chat.start_conversation("before any supervisor", listed=False)
    prompt = chat.send_prompt(cid, "first question")
    assert not client.exists(layout.DEFAULT_WAKE_STREAM)
    start_supervisor(root)
    rendered = wait_for_answers(client, cid, [prompt], timeout=30)
    assert_clean_answers(rendered, {prompt: "first question"})


def test_a_prompt_is_claimed_before_a_starts_look_at_every_listed_conversation(
    streams_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """At a start the supervisor looks at every listed conversation (a few requests each),
    on the threads that also claim woken ones, first come first served: with 20,000
    conversations listed a new prompt waited a minute for its claim. Claims go first now."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    client.ensure_stream(layout.CONVERSATIONS_STREAM)
    listed = 2_000
    with requests.Session() as http:
        for first in range(0, listed, 1_000):
            http.post(f"{root}/{layout.CONVERSATIONS_STREAM}", json=[
                {"type": "conversation", "id": f"old{n:05d}", "title": "old", "timestamp": 0}
                for n in range(first, first + 1_000)]).raise_for_status()
        start_supervisor(root)
        cid = chat.start_conversation("new", listed=False)
        prompt = chat.send_prompt(cid, "first question")
        wait_for_answers(client, cid, [prompt], timeout=60)
        # The start makes each listed conversation's subscription as it looks at it.
        looked_at = http.get(f"{root}/__ds/subscriptions", params={"limit": 1}).json()["total"]
    assert looked_at < listed / 2, looked_at


class LookCounting(StreamsClient):
    """A streams client that counts the supervisor's per-conversation looks (the `PUT` of a
    subscription, the `HEAD` of a prompts stream) and its listing pages."""

    def __init__(self, root: str) -> None:
        super().__init__(root, retry=RetryPolicy(deadline=5.0))
        self.calls: collections.Counter[str] = collections.Counter()

    def put_subscription(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["put_subscription"] += 1
        return super().put_subscription(*args, **kwargs)

    def head(self, path: str) -> Any:
        self.calls["head_prompts" if path.endswith("/prompts") else "head"] += 1
        return super().head(path)

    def list_subscriptions(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["list_subscriptions"] += 1
        return super().list_subscriptions(*args, **kwargs)

    def list_streams(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["list_streams"] += 1
        return super().list_streams(*args, **kwargs)


def quiet_conversations(root: str, count: int) -> list[str]:
    """`count` listed conversations made as a client makes them (subscription, then both
    streams), with no prompt yet."""
    cids = [f"quiet{n:04d}" for n in range(count)]
    config = layout.subscription_config("x", lease_ttl_ms=LEASE_TTL_MS).to_json()
    with requests.Session() as http:
        json_type = {"Content-Type": "application/json"}
        http.put(f"{root}/{layout.CONVERSATIONS_STREAM}", headers=json_type).raise_for_status()
        for cid in cids:
            http.put(f"{root}/__ds/subscriptions/{layout.subscription_id(cid)}",
                     json={**config, "pattern": layout.prompts_path(cid)}).raise_for_status()
            for path in (layout.prompts_path(cid), layout.responses_path(cid)):
                http.put(f"{root}/{path}", headers=json_type).raise_for_status()
        http.post(f"{root}/{layout.CONVERSATIONS_STREAM}", json=[
            {"type": "conversation", "id": cid, "title": "quiet", "timestamp": 0}
            for cid in cids]).raise_for_status()
    return cids


def test_a_start_looks_at_the_listed_conversations_a_page_of_listings_at_a_time(
    streams_server: ServerProcess, in_process: StartInProcess, logs: LogWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start looked at each listed conversation with a `PUT` of its subscription and a
    `HEAD` of its prompts stream: minutes of a busy server's time at every start with a
    hundred thousand. It reads the server's listings, a page at a time, and looks one by one
    only where they do not settle it: here a subscription made with another lease, and a
    prompts stream with no subscription at all. The prompts waiting in those and in a quiet
    one are answered."""
    monkeypatch.setattr(pending_prompts, "LISTING_PAGE", 100)
    root = streams_root(streams_server)
    quiet = quiet_conversations(root, 250)
    client, chat = connect(root)
    waiting = chat.start_conversation("sent while no supervisor ran")
    other_lease = ChatClient(client, lease_ttl_ms=LEASE_TTL_MS + 1000)
    made_otherwise = other_lease.start_conversation("another lease")
    unsubscribed = chat.start_conversation("no subscription")
    client.delete_subscription(layout.subscription_id(unsubscribed))
    prompts = {cid: chat.send_prompt(cid, f"question for {cid}") for cid in (waiting, unsubscribed)}
    prompts[made_otherwise] = other_lease.send_prompt(made_otherwise, "question")
    prompts[quiet[123]] = "p-quiet"
    requests.post(f"{root}/{layout.prompts_path(quiet[123])}", json=[
        {"type": "prompt", "id": "p-quiet", "content": "now a question", "timestamp": 0},
    ]).raise_for_status()
    counting = LookCounting(root)
    in_process(root, client=counting)
    # This supervisor answered none of the quiet ones: it reads whether another did.
    logs.wait_for(r"looked at 253 listed conversations in [\d.]+ s from the server's"
                  r" listings: 2 with prompts waiting, 249 to read, 2 one by one", timeout=30)
    for cid, prompt in prompts.items():
        wait_for_answers(client, cid, [prompt], timeout=30)
    assert counting.calls["put_subscription"] == 2, counting.calls
    assert counting.calls["head_prompts"] == 2, counting.calls
    # 254 subscriptions and 507 streams (each conversation's two, and the list's own).
    assert counting.calls["list_subscriptions"] == 3, counting.calls
    assert counting.calls["list_streams"] == 6, counting.calls


class StuckListing(LookCounting):
    """A client whose server's subscription listing answers the same page again and again."""

    def list_subscriptions(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["list_subscriptions"] += 1
        return ListingPage((), f"{layout.SUBSCRIPTION_PREFIX}stuck")


def test_a_listing_that_does_not_move_on_is_given_up_for_the_look_one_by_one(
    streams_server: ServerProcess, in_process: StartInProcess, logs: LogWatch,
) -> None:
    """A server answering the same page forever would have held a start's look for good."""
    root = streams_root(streams_server)
    quiet_conversations(root, 2)
    stuck = StuckListing(root)
    in_process(root, client=stuck)
    logs.wait_for(r"could not list the subscriptions and streams \(the listing does not move"
                  r" on .*\): looking at 2 listed conversations one by one", timeout=30)
    assert stuck.calls["list_subscriptions"] == 2
    wait_until(lambda: stuck.calls["head_prompts"] == 2, timeout=10, what="both looked at")


def test_a_start_on_a_server_without_listings_looks_at_each_conversation(
    in_process: StartInProcess, logs: LogWatch,
) -> None:
    """The listings are this project's server's: on another (here the reference server,
    which answers 404) a start looks at each listed conversation, and finds the prompt sent
    while no supervisor ran."""
    server = start_reference_server(long_poll_timeout_ms=2000)
    try:
        root = streams_root(server)
        quiet = quiet_conversations(root, 3)
        client, chat = connect(root)
        cid = chat.start_conversation("sent while no supervisor ran")
        prompt = chat.send_prompt(cid, "first question")
        counting = LookCounting(root)
        in_process(root, client=counting)
        logs.wait_for(r"the streams server has no listings .*: looking at 4 listed"
                      r" conversations one by one", timeout=30)
        rendered = wait_for_answers(client, cid, [prompt], timeout=30)
        assert_clean_answers(rendered, {prompt: "first question"})
        wait_until(lambda: counting.calls["head_prompts"] >= len(quiet) + 1, timeout=10,
                   what="a look at each conversation")
    finally:
        server.terminate()


def test_a_start_answers_prompts_a_subscription_made_again_at_the_tail_no_longer_shows(
    streams_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """A subscription deleted and made again while no supervisor ran links the prompts
    stream at its tail (section 6.4): nothing is pending for the server, and no wake comes.
    The supervisor's own processed offset is behind the tail: that is what a start checks."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    sup = start_supervisor(root)
    cid = chat.start_conversation("subscription made again")
    first = chat.send_prompt(cid, "first question")
    wait_for_answers(client, cid, [first])
    wait_until(lambda: all_prompts_acked(client, cid), timeout=10, what="the first ack")
    sup.terminate()
    second = chat.send_prompt(cid, "second question")
    sub_id = layout.subscription_id(cid)
    client.delete_subscription(sub_id)
    client.put_subscription(sub_id, layout.subscription_config(cid, lease_ttl_ms=LEASE_TTL_MS))
    assert all_prompts_acked(client, cid), "the new link should start at the tail"
    start_supervisor(root)
    rendered = wait_for_answers(client, cid, [first, second], timeout=30)
    assert_clean_answers(rendered, {first: "first question", second: "second question"})


class FirstCheckFails(StreamsClient):
    """A streams client whose first read of a prompts stream by the supervisor's own jobs
    (not its agents) finds the server down."""

    def __init__(self, root: str) -> None:
        super().__init__(root, retry=RetryPolicy(deadline=1.0))
        self.failed = False

    def read_all(self, path: str, offset: str = "-1") -> ReadResult:
        if (path.endswith("/prompts") and not self.failed
                and threading.current_thread().name.startswith("supervisor-jobs")):
            self.failed = True
            raise StreamsUnavailable("connection refused (injected)")
        return super().read_all(path, offset)


def test_a_start_whose_look_at_a_conversation_fails_looks_again(
    streams_server: ServerProcess, in_process: StartInProcess, logs: LogWatch,
) -> None:
    """Where only the streams can tell whether a prompt is unanswered (the subscription made
    again at the tail), a failed read of them was taken for "nothing to answer": the prompt
    waited for the next one, or the next start, with no word of it being given up."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    cid = chat.start_conversation("looked at again")
    first_sup = in_process(root)
    first = chat.send_prompt(cid, "first question")
    wait_for_answers(client, cid, [first])
    wait_until(lambda: all_prompts_acked(client, cid), timeout=10, what="the first ack")
    first_sup.stop(timeout=30)
    second = chat.send_prompt(cid, "second question")
    sub_id = layout.subscription_id(cid)
    client.delete_subscription(sub_id)
    client.put_subscription(sub_id, layout.subscription_config(cid, lease_ttl_ms=LEASE_TTL_MS))
    failing = FirstCheckFails(root)
    in_process(root, client=failing, restart_backoff_s=0.2)  # the same data directory
    rendered = wait_for_answers(client, cid, [first, second], timeout=30)
    assert_clean_answers(rendered, {first: "first question", second: "second question"})
    assert failing.failed
    logs.wait_for(f"could not read conversation {cid}")


class OddFirstCall(StreamsClient):
    """A streams client whose first call of `method` fails with what no streams error is: a
    2xx reply that is not JSON (a proxy's page) makes `response.json()` raise."""

    def __init__(self, root: str, method: str) -> None:
        super().__init__(root)
        self.method = method
        self.failed = False

    def _fail_once(self, method: str) -> None:
        if method == self.method and not self.failed:
            self.failed = True
            raise ValueError("Expecting value: line 1 column 1 (char 0) (injected)")

    def claim(self, subscription_id: str, worker: str) -> Lease:
        self._fail_once("claim")
        return super().claim(subscription_id, worker)

    def put_subscription(self, subscription_id: str, config: Any) -> Any:
        self._fail_once("put_subscription")
        return super().put_subscription(subscription_id, config)

    def delete_subscription(self, subscription_id: str) -> None:
        self._fail_once("delete_subscription")
        super().delete_subscription(subscription_id)


class ClaimAnswerLost(StreamsClient):
    """A streams client whose first claim reaches the server, which grants it, and whose
    answer is lost on the way back."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.lost = False

    def claim(self, subscription_id: str, worker: str) -> Lease:
        lease = super().claim(subscription_id, worker)
        if not self.lost:
            self.lost = True
            raise StreamsUnavailable("connection reset (injected)")
        return lease


def test_a_claim_whose_answer_was_lost_is_said_so_and_answered_once_its_lease_runs_out(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """The claim is not repeated, as the server may have granted it: the next one finds the
    lease held under this supervisor's own name, which was said to be an earlier run's."""
    root = streams_root(streams_server)
    in_process(root, client=ClaimAnswerLost(root), restart_backoff_s=0.2)
    client, chat = connect(root)
    cid = chat.start_conversation("its claim's answer lost")
    prompt = chat.send_prompt(cid, "answer after the lease")
    rendered = wait_for_answers(client, cid, [prompt], timeout=30)
    assert_clean_answers(rendered, {prompt: "answer after the lease"})
    logs.wait_for(f"conversation {cid} waits: a claim of it by this supervisor, whose answer"
                  " was lost, took its lease after all")
    assert not logs.matching("an earlier run stopped without releasing it")


def test_a_claim_that_fails_unexpectedly_is_tried_again(
    streams_server: ServerProcess, in_process: StartInProcess, logs: LogWatch,
) -> None:
    """Only streams errors were caught: any other left the conversation marked as being
    claimed, so that it was never claimed again by this supervisor and held an agent slot."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    odd = OddFirstCall(root, "claim")
    in_process(root, client=odd, restart_backoff_s=0.2)
    cid = chat.start_conversation("claimed at the second try")
    prompt = chat.send_prompt(cid, "answer after all")
    rendered = wait_for_answers(client, cid, [prompt], timeout=30)
    assert_clean_answers(rendered, {prompt: "answer after all"})
    assert odd.failed
    logs.wait_for(f"claim failed conversation={cid} failures=1 .*injected")


def test_a_look_at_a_conversation_that_fails_unexpectedly_is_tried_again(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """Only streams errors were caught: any other ended the look, and a conversation whose
    client made no subscription (so no wake tells of its prompts) was never answered."""
    root = streams_root(streams_server)
    odd = OddFirstCall(root, "put_subscription")
    in_process(root, client=odd, restart_backoff_s=0.2)
    logs.wait_for("streams server reached")  # the list is there
    client = StreamsClient(root)
    cid = f"c{uuid.uuid4().hex[:12]}"
    client.ensure_stream(layout.prompts_path(cid))
    client.ensure_stream(layout.responses_path(cid))
    client.producer(layout.prompts_path(cid), "tab", auto_claim=True).append(
        [{"type": "prompt", "id": "p-1", "content": "no subscription", "timestamp": 1}])
    client.producer(layout.CONVERSATIONS_STREAM, "tab", auto_claim=True).append(
        [{"type": "conversation", "id": cid, "title": "no subscription", "timestamp": 1}])
    rendered = wait_for_answers(client, cid, ["p-1"], timeout=30)
    assert_clean_answers(rendered, {"p-1": "no subscription"})
    assert odd.failed
    assert logs.matching(f"checking conversation {cid} failed unexpectedly")


def test_a_start_leaves_alone_what_another_supervisor_answered_since(
    streams_server: ServerProcess, in_process: StartInProcess,
) -> None:
    """Each supervisor keeps its own processed offsets (its own data directory). One that
    started again after another had answered more of a conversation found its offset
    behind the tail and started an agent there, with nothing to answer: it claimed the
    lease, wrote a start marker, and held an agent slot until its idle timeout."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    cid = chat.start_conversation("answered by two supervisors")
    for worker, content in [("wA", "first question"), ("wB", "second question")]:
        supervisor = in_process(root, worker=worker)
        prompt = chat.send_prompt(cid, content)
        wait_for_answers(client, cid, [prompt], timeout=30)
        wait_until(lambda: all_prompts_acked(client, cid), timeout=10, what="the ack")
        supervisor.stop(timeout=30)
    markers = len(client.read_all(layout.responses_path(cid)).messages)

    again = in_process(root, worker="wA")  # its offsets end at the first question
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert status(again)["agents"] == [], status(again)
        time.sleep(0.1)
    assert len(client.read_all(layout.responses_path(cid)).messages) == markers


def test_supervisor_waits_for_an_unreachable_streams_server(
    tmp_path: Path, start_supervisor: StartSupervisor,
) -> None:
    """Started before the server, it says the server is unreachable, keeps trying (no exit),
    and answers once the server is up on that port, saying it has reached it."""
    port = free_port()
    root = f"http://127.0.0.1:{port}/v1/stream"
    sup = start_supervisor(root)
    unreachable = re.escape(f"streams server unreachable at {root}")
    assert sup.wait_for_line(unreachable, timeout=10), sup.log_tail()
    first = sup.count_lines(unreachable)
    assert sup.wait_for_line(unreachable, timeout=10, since=len(sup.lines)), "no retry"
    assert sup.count_lines(unreachable) > first and sup.running
    # One short line per round: the reason alone, not the client's own lines for each of its
    # retries with the layers of exceptions around it (five lines of ~250 characters).
    assert sup.count_lines(re.escape(f"streams server unreachable at {root} (Connection refused);"
                                     " retrying in")) == sup.count_lines(unreachable)
    assert sup.count_lines("retrying PUT") == 0, sup.log_tail()

    assert sup.count_lines("streams server reached") == 0
    server = start_streams_server(tmp_path / "streams", port=port, long_poll_timeout=2.0)
    try:
        answer_one(root, "late server", "are you there?")
        assert sup.running
        # The warnings stop: it says they are over (it said nothing, as if still waiting).
        assert sup.count_lines(re.escape(f"streams server reached at {root} after ")
                               + r"\d+ failed attempt\(s\): answering its conversations") == 1
    finally:
        server.terminate()


def test_a_wake_stream_deleted_under_the_supervisor_is_made_again_and_followed(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """Its watch ended with a 404 and was never started again: a conversation whose agent
    had gone idle was not woken by its next prompt until the supervisor restarted."""
    root = streams_root(streams_server)
    sup = start_supervisor(root, idle_timeout=1.0)
    client, chat = connect(root)
    cid = chat.start_conversation("woken after the wake stream came back")
    first = chat.send_prompt(cid, "first question")
    wait_for_answers(client, cid, [first])
    assert sup.wait_for_line(f"agent passivated conversation={cid}", timeout=15), sup.log_tail()
    client.delete(layout.DEFAULT_WAKE_STREAM)
    assert sup.wait_for_line("following agents/wake failed", timeout=15), sup.log_tail()
    assert sup.wait_for_line(f"agent stopped conversation={cid}", timeout=15)
    second = chat.send_prompt(cid, "second question")
    rendered = wait_for_answers(client, cid, [first, second], timeout=30)
    assert_clean_answers(rendered, {first: "first question", second: "second question"})
    wait_until_wake_stream_made_again(client)
    assert sup.running


def test_a_wake_stream_closed_under_the_supervisor_is_reported_until_it_is_made_again(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """A closed wake stream takes no wake, and the supervisor's watch of it simply ended:
    prompts went unanswered without a word in any log. It says what is wrong and how to
    mend it, and once the stream is deleted it makes it again and answers what waited."""
    root = streams_root(streams_server)
    sup = start_supervisor(root, idle_timeout=1.0)
    client, chat = connect(root)
    cid = chat.start_conversation("woken after the wake stream was mended")
    first = chat.send_prompt(cid, "first question")
    wait_for_answers(client, cid, [first])
    assert sup.wait_for_line(f"agent passivated conversation={cid}", timeout=15), sup.log_tail()
    client.close_stream(layout.DEFAULT_WAKE_STREAM)
    closed = re.escape(f"the wake stream {layout.DEFAULT_WAKE_STREAM} has been closed, so no"
                       " agent can be woken: delete it")
    assert sup.wait_for_line(closed, timeout=15), sup.log_tail()
    second = chat.send_prompt(cid, "second question")
    subscription = client.get_subscription(layout.subscription_id(cid))
    assert "closed" in (subscription.raw.get("last_error") or ""), subscription.raw
    client.delete(layout.DEFAULT_WAKE_STREAM)
    rendered = wait_for_answers(client, cid, [first, second], timeout=30)
    assert_clean_answers(rendered, {first: "first question", second: "second question"})
    wait_until_wake_stream_made_again(client)
    assert sup.running


def wait_until_wake_stream_made_again(client: StreamsClient) -> None:
    """The supervisor makes the wake stream again half a second after its watch ended; the
    answer may come sooner, from the look it takes when the idle agent stops."""
    wait_until(lambda: client.exists(layout.DEFAULT_WAKE_STREAM), timeout=15,
               what="the supervisor to make the wake stream again")


def test_a_supervisor_follows_a_memory_server_that_restarted_empty(
    tmp_path: Path, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """A streams server that keeps its streams in memory comes back without them: the
    supervisor's watches ended with a 404, and then the process died (gevent's LoopExit)."""
    server = start_streams_server(tmp_path / "memory", memory=True, long_poll_timeout=2.0)
    try:
        root = streams_root(server)
        sup = start_supervisor(root)
        answer_one(root, "before the restart", "first question")
        server.restart()
        assert sup.wait_for_line("reading the shared streams again", timeout=20), sup.log_tail()
        answer_one(root, "after the restart", "second question")
        assert sup.running
    finally:
        server.terminate()


def test_a_supervisor_pointed_at_the_wrong_url_or_without_the_token_says_so(
    tmp_path: Path, start_supervisor: StartSupervisor,
) -> None:
    """Both were reported as "unreachable", the wrong URL with the other server's HTML page
    spread over many lines of the log."""
    server = start_streams_server(tmp_path / "guarded", extra_args=["--auth-token", "s3cret"])
    try:
        wrong_path = start_supervisor(f"{server.url}/not-streams", worker="path")
        assert wrong_path.wait_for_line(re.escape(
            f"no Durable Streams server answers at {server.url}/not-streams"),
            timeout=15), wrong_path.log_tail()
        no_token = start_supervisor(f"{server.url}/v1/stream", worker="token")
        assert no_token.wait_for_line(re.escape(
            f"the streams server at {server.url}/v1/stream refuses this supervisor"),
            timeout=15), no_token.log_tail()
        assert "check its --auth-token" in no_token.log_tail()
        assert wrong_path.running and no_token.running  # they wait to be put right
    finally:
        server.terminate()
    # Some other web server, which answers 501 to a PUT: it was "unreachable", "giving up"
    # and "retrying" in one line.
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}/v1/stream"
        elsewhere = start_supervisor(url, worker="elsewhere")
        assert elsewhere.wait_for_line(re.escape(
            f"the streams server at {url} answers HTTP 501"), timeout=15), elsewhere.log_tail()
        assert "check --streams-url" in elsewhere.log_tail()
        assert "unreachable" not in elsewhere.log_tail()
        # Said in words, once: not the other server's page, nor "giving up" as it retries.
        assert "an HTML page" in elsewhere.log_tail()
        assert "<html" not in elsewhere.log_tail().lower()
        assert "giving up" not in elsewhere.log_tail()
    finally:
        other.shutdown()
        other.server_close()


# -- 4. clean shutdown on SIGTERM and SIGINT -----------------------------------------------------------


@pytest.mark.parametrize(("sig", "times"), [(signal.SIGTERM, 1), (signal.SIGINT, 1),
                                           (signal.SIGTERM, 2)],
                         ids=["SIGTERM", "SIGINT", "SIGTERM-twice"])
def test_signal_stops_the_supervisor_cleanly_and_frees_its_leases(
    sig: signal.Signals, times: int, streams_server: ServerProcess, fake: FakeAnthropic,
    start_supervisor: StartSupervisor,
) -> None:
    """Exit 0 promptly, leases given back: a second supervisor takes over at once, not after
    the (long) lease TTL, and finishes the answer the first one was streaming. A SIGTERM
    sent twice (as `timeout` does, to the process and to its group) used to be taken for a
    second Ctrl+C: the supervisor left without giving the leases back."""
    ttl_ms = 60_000
    fake.tokens_per_second = 40
    root = streams_root(streams_server)
    first = start_supervisor(root, worker="first", lease_ttl_ms=ttl_ms, idle_timeout=60)
    client, chat = connect(root, lease_ttl_ms=ttl_ms)
    idle, busy = chat.start_conversation("idle"), chat.start_conversation("busy")
    answered = chat.send_prompt(idle, "first question")
    wait_for_answers(client, idle, [answered])
    long_prompt = chat.send_prompt(busy, "long")
    wait_for_answers(client, busy, [long_prompt], until=mid_answer(long_prompt, 0))
    assert lease_holder(client, idle) == "first" and lease_holder(client, busy) == "first"

    signalled = time.monotonic()
    for _ in range(times - 1):
        first.send_signal(sig)
    assert first.stop_with(sig, timeout=15) == 0, first.log_tail()
    exit_s = time.monotonic() - signalled
    assert exit_s < 5, f"exit took {exit_s:.1f}s"
    assert first.count_lines("supervisor first stopped") == 1
    # How to stop at once: a SIGTERM is no Ctrl+C to press "again".
    hurry = "Ctrl+C again" if sig == signal.SIGINT else "Ctrl+C (SIGINT)"
    assert first.count_lines(re.escape(f"; {hurry} to stop at once)")) == 1, first.log_tail()
    assert lease_holder(client, idle) is None and lease_holder(client, busy) is None

    second = start_supervisor(root, worker="second", lease_ttl_ms=ttl_ms, idle_timeout=60)
    taken_over = time.monotonic()
    follow_up = chat.send_prompt(idle, "second question")
    wait_for_answers(client, idle, [answered, follow_up], timeout=30)
    wait_for_answers(client, busy, [long_prompt], timeout=30)
    takeover_s = time.monotonic() - taken_over
    assert takeover_s < ttl_ms / 1000 / 3, f"took over after {takeover_s:.1f}s"

    assert_clean_answers(final_render(client, idle),
                         {answered: "first question", follow_up: "second question"})
    cut = final_render(client, busy).answers[long_prompt]
    assert cut.text == LONG_REPLY and cut.terminals_total == 1 and cut.restarts == 1, cut
    # Logged just after the answer's end is stored: on a busy machine, after this test saw it.
    logged = f"answered conversation={busy} prompt={long_prompt} "
    assert second.wait_for_line(logged, timeout=10) is not None, second.log_tail()
    assert second.count_lines(logged) == 1
    assert first.count_lines(f"answered conversation={busy} ") == 0
    print(f"{sig.name}: exit after {exit_s * 1000:.0f} ms, second supervisor answered both "
          f"after {takeover_s:.1f} s (lease TTL {ttl_ms / 1000:.0f} s)")


def test_a_second_ctrl_c_stops_a_supervisor_that_waits_for_a_server_gone_down(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """With the streams server down, a stop waits up to 15 s for the agents to let go of
    their leases, said nothing, and a second Ctrl+C did nothing either."""
    fake.tokens_per_second = 20
    root = streams_root(streams_server)
    sup = start_supervisor(root)
    client, chat = connect(root)
    cid = chat.start_conversation("interrupted twice")
    prompt = chat.send_prompt(cid, "long")
    wait_for_answers(client, cid, [prompt], until=mid_answer(prompt, 0))
    streams_server.kill()
    sup.send_signal(signal.SIGINT)
    assert sup.wait_for_line("Ctrl\\+C again to stop at once", timeout=10), sup.log_tail()
    again = time.monotonic()
    assert sup.stop_with(signal.SIGINT, timeout=10) == 130
    assert time.monotonic() - again < 3
    assert "stopped without waiting for the agents" in sup.log_tail()


# -- 5. a deleted conversation ---------------------------------------------------------------------


def conversation_gone(client: StreamsClient, cid: str) -> bool:
    """Neither its subscription nor either of its streams is left on the server."""
    try:
        client.get_subscription(layout.subscription_id(cid))
        return False
    except NotFound:
        pass
    return not any(client.exists(path)
                   for path in (layout.prompts_path(cid), layout.responses_path(cid)))


def test_a_conversation_deleted_mid_answer_is_stopped_removed_and_never_answered_again(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    fake.tokens_per_second = 40  # the long reply takes ~4 s: the deletion lands mid-answer
    root = streams_root(streams_server)
    sup = in_process(root, worker="w1")
    client, chat = connect(root)
    doomed, kept = chat.start_conversation("doomed"), chat.start_conversation("kept")
    prompt = chat.send_prompt(doomed, "long")
    wait_for_answers(client, doomed, [prompt], until=mid_answer(prompt, 0))
    requests_before = len(fake.requests)

    chat.delete_conversation(doomed)
    logs.wait_for(f"removed deleted conversation={doomed}")
    assert conversation_gone(client, doomed)
    wait_until(lambda: doomed not in status(sup)["agents"], timeout=10, what="the agent to stop")
    assert logs.matching(f"agent stopped conversation={doomed} reason=deleted")
    assert not logs.matching(
        rf"agent (crashed|stopped) conversation={doomed} (reason=failed )?failures=")
    # Its agent did not hand its lease back: with the prompt unanswered, the server would
    # have woken the deleted conversation again, for any supervisor to claim.
    wakes = client.read_all(layout.DEFAULT_WAKE_STREAM).messages
    assert [w["subscription_id"] for w in wakes].count(layout.subscription_id(doomed)) == 1

    # A late writer (a tab that missed the deletion) brings the streams back with a prompt:
    # they are removed again, and no agent answers it.
    bring_back(client, doomed)
    wait_until(lambda: conversation_gone(client, doomed), timeout=10,
               what="the streams brought back to be removed again")

    # The other conversation is untouched, and a new supervisor does not answer the deleted
    # one (it looks whether a writer brought it back while none ran).
    other = chat.send_prompt(kept, "still here")
    assert_clean_answers(wait_for_answers(client, kept, [other]), {other: "still here"})
    sup.stop(timeout=30)
    in_process(root, worker="w1")
    logs.wait_for(f"deleted conversation {doomed}: nothing left")  # only looked, no DELETE
    again = chat.send_prompt(kept, "and after a restart")
    wait_for_answers(client, kept, [other, again])
    assert conversation_gone(client, doomed)
    assert len(logs.matching(f"agent started conversation={doomed} ")) == 1
    assert all(doomed not in str(r) for r in fake.requests[requests_before:]), \
        "the model was asked about the deleted conversation again"


def test_a_conversation_deleted_while_no_supervisor_runs_is_removed_at_start_unanswered(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    root = streams_root(streams_server)
    client, chat = connect(root)
    doomed = chat.start_conversation("deleted before any agent")
    chat.send_prompt(doomed, "never answer this")
    chat.delete_conversation(doomed)
    kept = chat.start_conversation("kept")
    prompt = chat.send_prompt(kept, "answer this one")

    in_process(root)
    assert_clean_answers(wait_for_answers(client, kept, [prompt]), {prompt: "answer this one"})
    logs.wait_for(f"removed deleted conversation={doomed}")
    assert conversation_gone(client, doomed)
    assert not logs.matching(f"agent started conversation={doomed} ")
    assert [r["messages"][-1]["content"] for r in fake.requests] == ["answer this one"]


class LateTail(Tail):
    """A tail whose first batch comes a while late, as a loaded server's can."""

    def __next__(self) -> ReadResult:
        if self.offset == "-1":
            time.sleep(3.0)  # time enough to claim a woken conversation and start its agent
        return super().__next__()


TailKind = TypeVar("TailKind", bound=Tail)


def tail_of_kind(kind: type[TailKind], client: StreamsClient, path: str, offset: str,
                 options: Mapping[str, Any]) -> TailKind:
    """A tail of class `kind`, made as `StreamsClient.tail` makes one with `options`."""
    return kind(client, path, offset, live=options.get("live", "long-poll"),
                stop_event=options.get("stop_event"),
                yield_empty=options.get("yield_empty", False),
                request_timeout=client.live_timeout)


class LateListing(StreamsClient):
    """A streams client that reads the list of conversations late (see `LateTail`)."""

    def tail(self, path: str, offset: str = "-1", **kwargs: Any) -> Tail:
        if path != layout.CONVERSATIONS_STREAM:
            return super().tail(path, offset, **kwargs)
        return tail_of_kind(LateTail, self, path, offset, kwargs)


class HeldTail(Tail):
    """A tail that hands over each batch it read only once `go` is set."""

    go = threading.Event()  # replaced on each instance

    def __next__(self) -> ReadResult:
        batch = super().__next__()
        assert self.go.wait(30), "the batches were never let through"
        return batch


class HeldWakes(StreamsClient):
    """A streams client whose reads of the wake stream are handed over only once `go` is
    set, as a loaded server's may come late."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.go = threading.Event()

    def tail(self, path: str, offset: str = "-1", **kwargs: Any) -> Tail:
        if path != layout.DEFAULT_WAKE_STREAM:
            return super().tail(path, offset, **kwargs)
        tail = tail_of_kind(HeldTail, self, path, offset, kwargs)
        tail.go = self.go
        return tail


def test_a_wake_read_after_a_claim_took_it_starts_no_second_agent(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """A start's look claims a conversation found waiting, which takes the wake the server
    wrote for its prompt; that wake, read after the agent had answered and stopped, was
    claimed again: an agent with nothing to do (our server grants a claim whatever is
    pending). For a conversation that cannot be answered, that is the third agent CI saw
    say so for one prompt."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    cid = chat.start_conversation("its wake read late")
    prompt = chat.send_prompt(cid, "hello")
    assert not client.exists(layout.DEFAULT_WAKE_STREAM)  # made by the supervisor, read from -1
    held = HeldWakes(root)
    in_process(root, client=held, idle_timeout=0.5)
    wait_for_answers(client, cid, [prompt])
    logs.wait_for(f"agent stopped conversation={cid} reason=idle")
    held.go.set()
    logs.wait_for(f"conversation {cid}: its wake of generation 1 was claimed already")
    assert len(logs.matching(f"agent started conversation={cid} ")) == 1


def test_a_wake_read_before_the_list_of_conversations_does_not_start_a_deleted_one(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """A supervisor that makes the wake stream reads it from its start, where the server
    wrote the wakes of prompts sent before: one read before the list of conversations
    started an agent for a conversation the list says is deleted."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    doomed = chat.start_conversation("deleted, its wake still there")
    chat.send_prompt(doomed, "never answer this")
    chat.delete_conversation(doomed)
    kept = chat.start_conversation("kept")
    prompt = chat.send_prompt(kept, "answer this one")
    assert not client.exists(layout.DEFAULT_WAKE_STREAM)  # made by the supervisor, read from -1

    in_process(root, client=LateListing(root))
    assert_clean_answers(wait_for_answers(client, kept, [prompt]), {prompt: "answer this one"})
    logs.wait_for(f"removed deleted conversation={doomed}")
    assert not logs.matching(f"agent started conversation={doomed} ")
    assert [r["messages"][-1]["content"] for r in fake.requests] == ["answer this one"]


class FailingDeletes(StreamsClient):
    """A streams client whose first `failures` subscription deletions find the server down."""

    def __init__(self, root: str, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    def delete_subscription(self, subscription_id: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StreamsUnavailable("connection refused (injected)")
        super().delete_subscription(subscription_id)


def test_a_deletion_the_server_cannot_carry_out_yet_is_retried(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    root = streams_root(streams_server)
    in_process(root, client=FailingDeletes(root, failures=2), restart_backoff_s=0.2)
    client, chat = connect(root)
    doomed = chat.start_conversation("deleted during an outage")
    chat.delete_conversation(doomed)
    logs.wait_for(f"could not remove deleted conversation {doomed} .* retrying in 0.4s")
    logs.wait_for(f"removed deleted conversation={doomed}")
    assert conversation_gone(client, doomed)


def bring_back(client: StreamsClient, cid: str) -> None:
    """What a tab that missed the deletion does: its subscription, its prompts stream and a
    prompt, as the page's outbox sends them, all three again after a 404 (a removal still
    under way may take the subscription too, and without it no wake would tell of the prompt)."""
    for attempt in range(3):
        client.put_subscription(layout.subscription_id(cid),
                                layout.subscription_config(cid, lease_ttl_ms=LEASE_TTL_MS))
        client.ensure_stream(layout.prompts_path(cid))
        try:
            client.producer(layout.prompts_path(cid), "late-tab", auto_claim=True).append(
                [{"type": "prompt", "id": "p-late", "content": "anyone?", "timestamp": 1}])
            return
        except NotFound:  # a removal still under way took the stream in between: again
            if attempt == 2:
                raise


class HeldCall(StreamsClient):
    """A streams client whose first call of one kind (`held` says which) waits for `go`."""

    def __init__(self, root: str, held: Callable[[str, tuple[Any, ...]], bool],
                 **client_options: Any) -> None:
        super().__init__(root, **client_options)
        self.held = held
        self.reached = threading.Event()
        self.go = threading.Event()
        self.done = threading.Event()
        self.outcome: Any = None  # what the held call returned, if it did

    def _hold(self, name: str, *args: Any) -> bool:
        if self.reached.is_set() or not self.held(name, args):
            return False
        self.reached.set()
        assert self.go.wait(30)
        return True

    def read_all(self, path: str, offset: str = "-1") -> Any:
        self._hold("read_all", path)
        return super().read_all(path, offset)

    def claim(self, subscription_id: str, worker: str) -> Any:
        if self._hold("claim", subscription_id):
            raise StreamsUnavailable("connection reset (injected)")
        return super().claim(subscription_id, worker)

    def delete(self, path: str, *, missing_ok: bool = False) -> None:
        self._hold("delete", path)
        super().delete(path, missing_ok=missing_ok)

    def ensure_stream(self, path: str, *args: Any, **kwargs: Any) -> Any:
        held = self._hold("ensure_stream", path)
        try:
            outcome = super().ensure_stream(path, *args, **kwargs)
            if held:
                self.outcome = outcome
            return outcome
        finally:
            if held:
                self.done.set()

    def list_streams(self, *args: Any, **kwargs: Any) -> Any:
        self._hold("list_streams", *args)
        return super().list_streams(*args, **kwargs)

    def put_subscription(self, subscription_id: str, config: Any) -> Any:
        held = self._hold("put_subscription", subscription_id)
        try:
            return super().put_subscription(subscription_id, config)
        finally:
            if held:
                self.done.set()


def test_a_conversation_deleted_while_its_agent_boots_is_not_brought_back_by_the_boot(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """The boot reads the conversation's streams and creates a missing one: held until the
    deletion has stopped its agent, it must not create them again after the removal."""
    root = streams_root(streams_server)
    held = HeldCall(root, lambda name, args: name == "read_all"
                    and threading.current_thread().name.startswith("boot-"))
    in_process(root, client=held)
    client, chat = connect(root)
    doomed = chat.start_conversation("deleted while booting")
    chat.send_prompt(doomed, "hello")
    assert held.reached.wait(20), "the agent never booted"
    chat.delete_conversation(doomed)
    logs.wait_for(f"removed deleted conversation={doomed}")  # while the boot is held
    held.go.set()
    boot = [t for t in threading.enumerate() if t.name == f"boot-{doomed}"]
    for thread in boot:
        thread.join(20)
    assert conversation_gone(client, doomed), "the boot brought the deleted streams back"


def test_a_removal_held_up_by_the_server_does_not_hold_up_the_next_ones(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """Deleted conversations were removed one at a time, on one thread: a DELETE the server
    was slow to answer (or never answered, until the client's retry deadline) held up every
    deletion after it, and under load they queued for minutes."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    stuck = chat.start_conversation("its removal is held up")
    others = [chat.start_conversation(f"deleted after it {n}") for n in range(3)]
    held = HeldCall(root, lambda name, args: name == "delete"
                    and args == (layout.prompts_path(stuck),))
    in_process(root, client=held)
    chat.delete_conversation(stuck)
    assert held.reached.wait(20), "the removal never began"
    for cid in others:
        chat.delete_conversation(cid)
    for cid in others:  # while the first removal is still held
        logs.wait_for(f"removed deleted conversation={cid}")
        assert conversation_gone(client, cid)
    assert not logs.matching(f"removed deleted conversation={stuck}")
    held.go.set()
    logs.wait_for(f"removed deleted conversation={stuck}")
    assert conversation_gone(client, stuck)


class ClaimAnsweredLate(StreamsClient):
    """A streams client whose first claim is made, and its lease handed over only once `go`
    is set."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reached = threading.Event()
        self.go = threading.Event()

    def claim(self, subscription_id: str, worker: str) -> Any:
        lease = super().claim(subscription_id, worker)
        if not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(30)
        return lease


@pytest.mark.parametrize("claim", ["fails", "succeeds"])
def test_a_deletion_during_a_claim_is_still_carried_out(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch, claim: str,
) -> None:
    """A lease the claim got is not handed back, but ends with the subscription: handed
    back with the prompt unanswered, the server woke the deleted conversation again."""
    root = streams_root(streams_server)
    held = (HeldCall(root, lambda name, args: name == "claim") if claim == "fails"
            else ClaimAnsweredLate(root))
    in_process(root, client=held, restart_backoff_s=0.2)
    client, chat = connect(root)
    doomed = chat.start_conversation("deleted while claiming")
    chat.send_prompt(doomed, "hello")
    assert held.reached.wait(20)
    chat.delete_conversation(doomed)
    logs.wait_for(f"conversation {doomed} was deleted")  # while the claim is out
    held.go.set()
    logs.wait_for(f"removed deleted conversation={doomed}")
    assert conversation_gone(client, doomed)
    assert not logs.matching(f"agent started conversation={doomed} ")
    wakes = client.read_all(layout.DEFAULT_WAKE_STREAM).messages
    assert [w["subscription_id"] for w in wakes].count(layout.subscription_id(doomed)) == 1


def test_a_removal_that_fails_unexpectedly_leaves_later_removals_free_to_run(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """Only streams errors were caught: any other left the conversation marked as being
    removed, and every later removal of it (of streams a late writer brought back) waited
    behind that one for good."""
    root = streams_root(streams_server)
    odd = OddFirstCall(root, "delete_subscription")
    in_process(root, client=odd)
    client, chat = connect(root)
    doomed = chat.start_conversation("its first removal fails")
    chat.delete_conversation(doomed)
    wait_until(lambda: odd.failed, timeout=10, what="the first removal")
    bring_back(client, doomed)  # which may take more than one removal to clear
    wait_until(lambda: conversation_gone(client, doomed), timeout=20,
               what="the streams brought back to be removed")
    assert logs.matching(f"removing deleted conversation {doomed} failed unexpectedly")


def test_a_late_writer_during_the_removal_gets_its_streams_removed_too(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    root = streams_root(streams_server)
    held = HeldCall(root, lambda name, args: name == "delete" and args[0].endswith("/responses"))
    in_process(root, client=held)
    client, chat = connect(root)
    doomed = chat.start_conversation("doomed")
    chat.delete_conversation(doomed)
    assert held.reached.wait(20)  # its subscription and prompts are gone, not its responses
    bring_back(client, doomed)
    logs.wait_for(f"a wake for deleted conversation {doomed}")
    held.go.set()
    logs.wait_for(f"removed deleted conversation={doomed}", count=2)
    assert conversation_gone(client, doomed)


def test_a_recheck_racing_the_removal_does_not_leave_the_subscription_behind(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """An agent going idle makes the supervisor look at its conversation again, which `PUT`s
    the subscription: held until the deletion's removal is done."""
    root = streams_root(streams_server)
    armed = threading.Event()
    held = HeldCall(root, lambda name, args: name == "put_subscription" and armed.is_set())
    in_process(root, client=held, idle_timeout=1.0)
    client, chat = connect(root)
    doomed = chat.start_conversation("idle then deleted")
    chat.send_prompt(doomed, "hello")
    logs.wait_for(f"answered conversation={doomed} ")
    armed.set()
    logs.wait_for(f"agent stopped conversation={doomed} reason=idle")
    assert held.reached.wait(10)
    chat.delete_conversation(doomed)
    logs.wait_for(f"removed deleted conversation={doomed}")
    held.go.set()
    assert held.done.wait(10)
    logs.wait_for(f"removed deleted conversation={doomed}", count=2)
    assert conversation_gone(client, doomed)


@pytest.mark.parametrize("ends_kept_s", [600.0, 0.0], ids=["end-remembered", "end-forgotten"])
def test_prompts_a_start_found_waiting_are_not_claimed_again_once_their_agent_answered_them(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch, monkeypatch: pytest.MonkeyPatch, ends_kept_s: float,
) -> None:
    """A start's look at the listed conversations read the listings; a wake read meanwhile
    started the conversation's agent, which answered, acked and stopped before the look's
    news came: that older news claimed the conversation again (our server grants a claim
    whatever is pending), an agent with nothing to do. One of a conversation that cannot
    be answered said so once more for the same prompt. Held here until the agent stopped,
    the look finds the prompt waiting; an end older than those remembered
    (`end-forgotten`) gets the conversation looked at afresh."""
    monkeypatch.setattr(supervisor_module, "RECENT_KEPT_S", ends_kept_s)
    root = streams_root(streams_server)
    client, chat = connect(root)
    cid = chat.start_conversation("answered while the start looked")
    prompt = chat.send_prompt(cid, "hello")
    held = HeldCall(root, lambda name, args: name == "list_streams")
    sup = in_process(root, client=held, idle_timeout=0.5)
    assert held.reached.wait(20), "the start never listed the streams"
    wait_for_answers(client, cid, [prompt])
    logs.wait_for(f"agent stopped conversation={cid} reason=idle")
    held.go.set()
    logs.wait_for(r"looked at 1 listed conversation .*: 1 with prompts waiting")
    if ends_kept_s:
        logs.wait_for(f"conversation {cid}: its agent stopped since it was found with prompts"
                      " waiting: not claimed")
    else:
        logs.wait_for(f"conversation {cid} was found with prompts waiting before the agents'"
                      " ends remembered: looked at again")
    assert status(sup) == {"agents": [], "deferred": []}
    assert not logs.matching(f"agent started conversation={cid} generation=2")


def removed_by_a_supervisor_since_stopped(root: str, in_process: StartInProcess,
                                          logs: LogWatch) -> tuple[StreamsClient, str]:
    """A conversation deleted, and removed by a supervisor that has stopped since."""
    sup = in_process(root)
    client, chat = connect(root)
    doomed = chat.start_conversation("doomed")
    chat.delete_conversation(doomed)
    logs.wait_for(f"removed deleted conversation={doomed}")
    sup.stop(timeout=30)
    return client, doomed


def test_streams_brought_back_while_no_supervisor_runs_are_removed_at_the_next_start(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    root = streams_root(streams_server)
    client, doomed = removed_by_a_supervisor_since_stopped(root, in_process, logs)
    bring_back(client, doomed)  # its wake comes while no supervisor reads the wake stream

    removals = len(logs.matching(f"removed deleted conversation={doomed}"))
    in_process(root)
    logs.wait_for(f"removed deleted conversation={doomed}", count=removals + 1)
    assert conversation_gone(client, doomed)
    assert not logs.matching(f"agent started conversation={doomed} ")


def test_a_subscription_brought_back_while_no_supervisor_runs_is_removed_at_the_next_start(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """Alone (no stream, so no wake tells of it), beside one whose id sorts just before it:
    the start finds it in the listing of subscriptions."""
    root = streams_root(streams_server)
    client, doomed = removed_by_a_supervisor_since_stopped(root, in_process, logs)
    neighbour = doomed[:-1]
    for cid in (neighbour, doomed):
        client.put_subscription(layout.subscription_id(cid),
                                layout.subscription_config(cid, lease_ttl_ms=LEASE_TTL_MS))

    removals = len(logs.matching(f"removed deleted conversation={doomed}"))
    in_process(root)
    logs.wait_for(f"removed deleted conversation={doomed}", count=removals + 1)
    with pytest.raises(NotFound):
        client.get_subscription(layout.subscription_id(doomed))
    client.get_subscription(layout.subscription_id(neighbour))  # not deleted: kept


def test_a_restart_does_not_bring_back_the_subscription_of_a_conversation_deleted_long_ago(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start reads `conversations` in batches of about a megabyte: a conversation listed in
    one and deleted in a later one must not be checked (which `PUT`s its subscription)."""
    told: list[Any] = []
    on_receive = Supervisor.on_receive

    def watched(self: Supervisor, message: Any) -> Any:
        told.append(message)
        return on_receive(self, message)

    monkeypatch.setattr(Supervisor, "on_receive", watched)
    root = streams_root(streams_server)
    sup = in_process(root)
    client, chat = connect(root)
    doomed = chat.start_conversation("deleted long ago")
    busy_list = client.producer(layout.CONVERSATIONS_STREAM, "busy-list", auto_claim=True)
    for i in range(40):  # a long list in between: 4 MB of activity
        busy_list.append([{"type": "activity", "id": f"other{i}", "timestamp": 1,
                           "pad": "x" * 100_000}])
    chat.delete_conversation(doomed)
    logs.wait_for(f"removed deleted conversation={doomed}")
    sup.stop(timeout=30)

    told.clear()
    in_process(root)
    logs.wait_for(f"deleted conversation {doomed}: nothing left")
    seen = [m for m in told if type(m).__name__ == "_ConversationsSeen"]
    assert seen and all(doomed not in m.ids or doomed in m.deleted for m in seen), seen
    assert conversation_gone(client, doomed)


class Recording(StreamsClient):
    """Records, in order, the supervisor's claims and deletions."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _note(self, name: str, arg: str) -> None:
        with self._lock:
            self.calls.append((name, arg))

    def claim(self, subscription_id: str, worker: str) -> Any:
        self._note("claim", subscription_id)
        return super().claim(subscription_id, worker)

    def delete(self, path: str, *, missing_ok: bool = False) -> None:
        self._note("delete", path)
        super().delete(path, missing_ok=missing_ok)

    def delete_subscription(self, subscription_id: str) -> None:
        self._note("delete_subscription", subscription_id)
        super().delete_subscription(subscription_id)

    def get_subscription(self, subscription_id: str) -> Any:
        self._note("get_subscription", subscription_id)
        return super().get_subscription(subscription_id)

    def exists(self, path: str) -> bool:
        self._note("exists", path)
        return super().exists(path)


def test_a_start_claims_pending_work_without_deleting_again_what_it_removed_before(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Anyone may append `delete` messages: a start pays a few reads for each conversation
    removed before, on their own thread, and no write transaction. Listings, not a look at
    each stream and subscription: their 404s filled `flask run`'s access log at each start.
    Nor does a start say again that each of them was deleted (at INFO, every start said so
    of every deletion ever made)."""
    caplog.set_level(logging.DEBUG, logger="agent_actors.supervisor")
    root = streams_root(streams_server)
    client, chat = connect(root)
    kept = chat.start_conversation("kept")
    deleted = [f"c{uuid.uuid4().hex[:12]}" for _ in range(200)]
    client.producer(layout.CONVERSATIONS_STREAM, "old-tabs", auto_claim=True).append(
        [{"type": "delete", "id": cid, "timestamp": 1} for cid in deleted])
    sup = in_process(root)
    logs.wait_for("removed deleted conversation=", count=len(deleted), timeout=60)
    sup.stop(timeout=30)
    assert not [r for r in caplog.records
                if r.levelno >= logging.INFO and "was deleted" in r.getMessage()]

    prompt = chat.send_prompt(kept, "hello")
    recording = Recording(root)
    in_process(root, client=recording)
    assert_clean_answers(wait_for_answers(client, kept, [prompt]), {prompt: "hello"})
    logs.wait_for(f"deleted conversation {deleted[-1]}: nothing left")
    with recording._lock:
        calls = list(recording.calls)
    assert ("claim", layout.subscription_id(kept)) in calls
    assert not [call for call in calls if call[0].startswith("delete")], calls[:5]
    looked_at_each = [call for call in calls if call[0] in ("get_subscription", "exists")
                      and kept not in call[1]]
    assert not looked_at_each, looked_at_each[:5]


def test_a_start_claims_pending_work_before_it_has_removed_many_deleted_conversations(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """Removals run on their own thread: a pending prompt's claim does not queue behind the
    removal of hundreds of conversations deleted while no supervisor ran."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    kept = chat.start_conversation("kept")
    deleted = [f"c{uuid.uuid4().hex[:12]}" for _ in range(200)]
    client.producer(layout.CONVERSATIONS_STREAM, "old-tabs", auto_claim=True).append(
        [{"type": "delete", "id": cid, "timestamp": 1} for cid in deleted])
    prompt = chat.send_prompt(kept, "hello")

    recording = Recording(root)
    in_process(root, client=recording)
    assert_clean_answers(wait_for_answers(client, kept, [prompt]), {prompt: "hello"})
    logs.wait_for("removed deleted conversation=", count=len(deleted), timeout=60)
    with recording._lock:
        calls = list(recording.calls)
    claimed_at = calls.index(("claim", layout.subscription_id(kept)))
    deletions = [i for i, call in enumerate(calls) if call[0].startswith("delete")]
    assert len(deletions) == 3 * len(deleted)
    before = sum(1 for i in deletions if i < claimed_at)
    assert before < len(deletions) // 2, f"{before} of {len(deletions)} DELETEs came first"


class SlowClaim(StreamsClient):
    """A streams client whose first claim waits for `go`, then is made; with `hold_answer`,
    the server's answer, once in (`claimed`), waits for `deliver` before its caller has it."""

    def __init__(self, root: str, *, hold_answer: bool = False) -> None:
        super().__init__(root)
        self.reached = threading.Event()
        self.go = threading.Event()
        self.claimed = threading.Event()
        self.deliver = threading.Event()
        if not hold_answer:
            self.deliver.set()

    def claim(self, subscription_id: str, worker: str) -> Lease:
        if self.reached.is_set():
            return super().claim(subscription_id, worker)
        self.reached.set()
        assert self.go.wait(30)
        try:
            return super().claim(subscription_id, worker)
        finally:
            self.claimed.set()
            assert self.deliver.wait(30)


def test_a_claim_that_succeeds_after_its_supervisor_stopped_is_released(
    streams_server: ServerProcess, in_process: StartInProcess,
) -> None:
    """The lease came back to a stopped supervisor, which dropped the news: nobody released
    it, and the next supervisor waited out its whole TTL to answer."""
    root = streams_root(streams_server)
    slow = SlowClaim(root)
    sup = in_process(root, client=slow)
    client, chat = connect(root, lease_ttl_ms=30_000)  # well past the wait below
    cid = chat.start_conversation("claimed as its supervisor stopped")
    chat.send_prompt(cid, "hello")
    assert slow.reached.wait(20), "never claimed"
    sup.stop(timeout=30)
    slow.go.set()
    assert slow.claimed.wait(10), "the claim never came back"
    wait_until(lambda: lease_holder(client, cid) is None and client.get_subscription(
        layout.subscription_id(cid)).raw.get("wake_id") is not None, timeout=10,
        what="the lease to be released, its wake to stand")


class StragglingBoot(HeldCall):
    """Holds an agent's boot as it creates a missing stream; once `fenced` is set, the next
    heartbeat finds the lease lost. Its requests give up within 3 s (deadline and timeout),
    so the removal after stragglers comes soon."""

    def __init__(self, root: str) -> None:
        super().__init__(root, lambda name, args: name == "ensure_stream"
                         and threading.current_thread().name.startswith("boot-"),
                         timeout=2.0, retry=RetryPolicy(deadline=1.0))
        self.fenced = threading.Event()

    def ack(self, lease: Lease, acks: Mapping[str, str] | None = None, *,
            done: bool = False) -> bool:
        if self.fenced.is_set():
            self.fenced.clear()
            raise LeaseFenced("fenced (injected)")
        return super().ack(lease, acks, done=done)


class HeldBootRead(StragglingBoot):
    """Holds an agent's boot in its first read of the responses stream (`StragglingBoot`'s
    fencing of the next heartbeat included)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.held = lambda name, args: (name == "read_all" and args[0].endswith("/responses")
                                        and threading.current_thread().name.startswith("boot-"))


def test_an_agent_stopped_during_its_boot_does_not_fence_its_successor(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """A stopped agent's boot went on: when its slow first read came back it wrote its start
    marker above the next agent's, which was answering by then and stopped as "replaced",
    its answer held up for a lease and started again."""
    root = streams_root(streams_server)
    held = HeldBootRead(root)
    in_process(root, client=held)
    client, chat = connect(root)
    cid = chat.start_conversation("a boot that outlives its agent")
    prompt = chat.send_prompt(cid, "long")
    assert held.reached.wait(20), "the boot never read the responses stream"
    held.fenced.set()  # the lease is lost while the boot's read is under way
    logs.wait_for(f"agent stopped conversation={cid} reason=lease-lost")
    wait_for_answers(client, cid, [prompt], timeout=30, until=mid_answer(prompt, 0))
    held.go.set()  # the first agent's read comes back now, its agent long gone
    answer = wait_for_answers(client, cid, [prompt], timeout=30).answers[prompt]
    assert answer is not None and answer.text == LONG_REPLY, answer
    assert answer.restarts == 0 and answer.terminals_total == 1, answer
    assert not logs.matching("replaced"), logs.matching("replaced")


def test_a_boot_request_under_way_when_its_agent_stopped_is_outlived_by_a_later_removal(
    streams_server: ServerProcess, fake: FakeAnthropic, in_process: StartInProcess,
    logs: LogWatch,
) -> None:
    """An agent stopped for another reason (here its lease was lost) before the deletion:
    its boot's `PUT` of a missing stream lands after the first removal. The removal after
    every request of that agent has ended deletes it."""
    root = streams_root(streams_server)
    held = StragglingBoot(root)
    in_process(root, client=held)
    client, chat = connect(root)
    doomed = chat.start_conversation("boot outlives its agent", responses_stream=False)
    chat.send_prompt(doomed, "hello")
    assert held.reached.wait(20), "the boot never created the responses stream"
    held.fenced.set()  # the lease is lost while the boot is under way
    logs.wait_for(f"agent stopped conversation={doomed} reason=lease-lost")
    chat.delete_conversation(doomed)
    logs.wait_for(f"removed deleted conversation={doomed}")
    held.go.set()  # the boot's PUT lands now
    assert held.done.wait(10)
    assert held.outcome is not None and held.outcome.created  # back, for now
    # Removed again by the pass after the stopped agent's stragglers (not by counting the
    # log's removals: the look the supervisor takes at a conversation whose agent stopped
    # finds it deleted and removes it too, before or after the PUT).
    wait_until(lambda: conversation_gone(client, doomed), timeout=20,
               what="the removal after the stopped agent's last request")


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[str]:
    """A streams server with the production long-poll timeout (30 s)."""
    server = start_streams_server(tmp_path / "streams-data", long_poll_timeout=30.0)
    try:
        yield f"{server.url}/v1/stream"
    finally:
        server.terminate()


@pytest.mark.parametrize("live_mode", ["sse", "long-poll"])
def test_a_deletion_first_seen_on_a_fresh_stream_still_outlives_a_stopped_agents_boot(
    default_server: str, fake: FakeAnthropic, logs: LogWatch, tmp_path: Path, live_mode: str,
) -> None:
    """The supervisor's first read of an empty `conversations` stream, long-polled, is held
    for the server's whole long-poll timeout: a deletion appended meanwhile is still new
    (appended after the start), and gets the removal after the stragglers."""
    root = default_server
    held = StragglingBoot(root)
    model = AnthropicModel(api_key="test-key", model="claude-fake-1", base_url=fake.url)
    sup = Supervisor.start(
        SupervisorSettings(streams_url=root, data_dir=str(tmp_path / "agents"), worker_name="w1",
                           lease_ttl_ms=LEASE_TTL_MS,
                           agent=AgentSettings(idle_timeout_s=30.0, live_mode=live_mode)),
        model, client=held)
    try:
        client = StreamsClient(root)
        # A conversation that its client has not listed (yet): subscription, prompts, a prompt.
        cid = "creview9c0001"
        client.put_subscription(layout.subscription_id(cid),
                                layout.subscription_config(cid, lease_ttl_ms=LEASE_TTL_MS))
        client.ensure_stream(layout.prompts_path(cid))
        logs.wait_for("supervisor w1 started")
        wait_until(lambda: sum(t.name.startswith("watch-") for t in threading.enumerate()) == 2,
                   timeout=10, what="the supervisor to follow its streams")
        client.producer(layout.prompts_path(cid), "tab", auto_claim=True).append(
            [{"type": "prompt", "id": "p1", "content": "hello", "timestamp": 1}])
        assert held.reached.wait(20), "the boot never created the responses stream"
        held.fenced.set()  # the lease is lost while the boot is under way
        logs.wait_for(f"agent stopped conversation={cid} reason=lease-lost")
        # The deletion: the first message of `conversations`, well after the supervisor started.
        client.ensure_stream(layout.CONVERSATIONS_STREAM)
        client.producer(layout.CONVERSATIONS_STREAM, "tab-list", auto_claim=True).append(
            [{"type": "delete", "id": cid, "timestamp": 1}])
        logs.wait_for(f"removed deleted conversation={cid}")
        held.go.set()  # the stopped agent's boot PUT lands now
        assert held.done.wait(10)
        assert held.outcome is not None and held.outcome.created
        wait_until(lambda: conversation_gone(client, cid), timeout=20,
                   what="the removal after the stopped agent's last request")
    finally:
        try:
            sup.stop(timeout=30)
        except pykka.ActorDeadError:
            pass


def test_a_lease_set_by_the_client_is_answered_and_said_once(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """The client creates a conversation's subscription before its first prompt, with its
    lease: the supervisor's --lease-ttl-ms was silently not the time a takeover waited for
    there (30 s where 3 s was asked for). It still answers, and says so once."""
    root = streams_root(streams_server)
    client, chat = connect(root, lease_ttl_ms=LEASE_TTL_MS + 3000)
    conversations = [chat.start_conversation(f"client's lease {n}") for n in range(2)]
    prompts = {cid: chat.send_prompt(cid, f"question {cid}") for cid in conversations}
    sup = start_supervisor(root)
    for cid, prompt in prompts.items():
        wait_for_answers(client, cid, [prompt])
    said = (f"its subscription was made with a lease of {LEASE_TTL_MS + 3000} ms, not this"
            f" supervisor's {LEASE_TTL_MS} \\(--lease-ttl-ms\\)")
    assert sup.wait_for_line(said, timeout=10), sup.log_tail()  # at its claim, or its check
    time.sleep(0.5)
    assert sup.count_lines(said) == 1, sup.log_tail()


def test_a_subscription_waking_another_stream_is_said_once(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """A client that made a conversation's subscription with another wake stream got no
    answer while the supervisor ran (no wake reaches it), and no supervisor said why."""
    root = streams_root(streams_server)
    client, chat = connect(root)
    cid = chat.start_conversation("another wake stream")
    client.delete_subscription(layout.subscription_id(cid))
    client.put_subscription(layout.subscription_id(cid), SubscriptionConfig(
        pattern=layout.prompts_path(cid), wake_stream="elsewhere/wake", lease_ttl_ms=LEASE_TTL_MS))
    prompt = chat.send_prompt(cid, "Heard at the start?")
    sup = start_supervisor(root)
    wait_for_answers(client, cid, [prompt])  # read at its start
    said = (f"conversation {cid}: its subscription wakes 'elsewhere/wake', not this"
            f" supervisor's '{layout.DEFAULT_WAKE_STREAM}' \\(--wake-stream\\)")
    assert sup.wait_for_line(said, timeout=10), sup.log_tail()
    time.sleep(0.5)
    assert sup.count_lines(said) == 1, sup.log_tail()


def test_a_conversation_whose_id_no_agent_answers_under_is_logged_once(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """A client that made a conversation "bad.id" (the README's rule: 1 to 64 letters,
    digits, _ or -) got 2xx for every step and then no answer, and no supervisor said a
    word."""
    root = streams_root(streams_server)
    sup = start_supervisor(root)
    client, chat = connect(root)
    bad = "bad.id"
    client.put_subscription(f"conversation-{bad}", SubscriptionConfig(
        pattern=f"conversations/{bad}/prompts", wake_stream=layout.DEFAULT_WAKE_STREAM,
        lease_ttl_ms=LEASE_TTL_MS))
    for path in (f"conversations/{bad}/prompts", f"conversations/{bad}/responses", "conversations"):
        client.ensure_stream(path)
    listing = client.producer("conversations", "a-careless-client")
    listing.append([{"type": "conversation", "id": bad, "title": "t", "timestamp": 1}])
    prompts = client.producer(f"conversations/{bad}/prompts", "a-careless-client")
    prompts.append([{"type": "prompt", "id": "p1", "content": "hello", "timestamp": 1}])
    good = chat.start_conversation("a good one")
    answered = chat.send_prompt(good, "question")
    wait_for_answers(client, good, [answered])
    assert sup.wait_for_line("a conversation with the id 'bad.id' is not answered", timeout=10)
    time.sleep(0.5)
    assert sup.count_lines("a conversation with the id 'bad.id' is not answered") == 1
