"""The agents end to end: real streams servers, real supervisor processes, the real `anthropic`
SDK against a local fake Messages API, and a reader that renders the responses stream as the
UI does. Nothing is mocked but the model's HTTP endpoint.
"""

from __future__ import annotations

import itertools
import re
import signal
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from agent_actors import layout, schema
from agent_actors.offsets_store import OffsetsStore
from agent_actors.streams_client import StreamsClient
from tests.fake_anthropic import FakeAnthropic
from tests.support import ServerProcess, start_reference_server, start_streams_server
from tests.support.agents import (
    ChatClient,
    Renderer,
    SupervisorProcess,
    all_prompts_acked,
    mid_answer,
    render,
    supervisor_process,
    wait_for_answers,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

LEASE_TTL_MS = 2000
FILLER = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron"


def reply_to(content: str) -> str:
    """What the fake model answers to a last user message ``content``."""
    return f"Reply to <{content}>: {FILLER}."


def fake_reply(messages: list[dict[str, Any]]) -> str:
    """Answers the newest prompt: the last paragraph, since the agent joins a prompt whose
    answer failed with the next one into one user turn."""
    last = messages[-1]["content"]
    return reply_to(str(last).split("\n\n")[-1])


StartSupervisor = Callable[..., SupervisorProcess]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(fake_reply, tokens_per_second=200) as server:
        yield server


@pytest.fixture(params=["python", "node"])
def any_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """This project's streams server, then the Node reference server."""
    if request.param == "python":
        server = start_streams_server(tmp_path / "streams", long_poll_timeout=2.0)
    else:
        server = start_reference_server(long_poll_timeout_ms=2000)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def start_supervisor(
    request: pytest.FixtureRequest, tmp_path: Path, fake: FakeAnthropic,
) -> Iterator[StartSupervisor]:
    """Start supervisor processes against a server root; all are stopped at teardown."""
    started: list[SupervisorProcess] = []
    test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def start(root: str, *, worker: str = "w1", crash_at: str | None = None,
              **options: Any) -> SupervisorProcess:
        sup = supervisor_process(root, tmp_path / f"agents-{worker}", model_url=fake.url,
                                 worker_name=worker, lease_ttl_ms=LEASE_TTL_MS,
                                 log_name=f"{test_name}-{worker}", **options)
        started.append(sup)
        return sup.start(crash_at=crash_at)

    yield start
    for sup in started:
        sup.terminate(timeout=15)
        print(f"--- supervisor log ({sup.log_path}) ---\n{sup.log_tail(40)}")


def streams_root(server: ServerProcess) -> str:
    return f"{server.url}/v1/stream"


def connect(server: ServerProcess) -> tuple[StreamsClient, ChatClient]:
    client = StreamsClient(streams_root(server))
    return client, ChatClient(client, lease_ttl_ms=LEASE_TTL_MS)


def assert_clean_answers(renderer: Renderer, prompts: dict[str, str]) -> None:
    """Every prompt (id -> content) shows the model's full reply once, with one `done` overall."""
    for prompt_id, content in prompts.items():
        answer = renderer.answers.get(prompt_id)
        assert answer is not None, f"prompt {prompt_id} has no answer at all"
        assert answer.terminals_total == 1, f"prompt {prompt_id} answered twice: {answer}"
        assert answer.terminal["type"] == "done", answer
        assert answer.terminal["stopReason"] == "end_turn", answer
        assert answer.text == reply_to(content), f"prompt {prompt_id}: {answer.text!r}"
        assert answer.chunks_after_terminal == 0, answer


def answered_once(server: ServerProcess, start_supervisor: StartSupervisor, title: str,
                  **options: Any) -> tuple[SupervisorProcess, StreamsClient, ChatClient, str]:
    """A supervisor started with `options`, and a conversation whose first prompt
    ("hello") has its answer: (supervisor, client, chat, conversation id)."""
    sup = start_supervisor(streams_root(server), **options)
    client, chat = connect(server)
    cid = chat.start_conversation(title)
    wait_for_answers(client, cid, [chat.send_prompt(cid, "hello")])
    return sup, client, chat, cid


def lease_holder(client: StreamsClient, cid: str) -> Any:
    """Who holds the conversation's lease (this server's `holder` extension of GET)."""
    return client.get_subscription(layout.subscription_id(cid)).raw.get("holder")


def final_render(client: StreamsClient, cid: str) -> Renderer:
    """The responses stream as a reader sees it after the agent has acked every prompt.

    Waiting for the ack first means the agent that processed the prompts is past them: any
    second answer it (or a restarted agent) would write is already in the stream.
    """
    wait_until(lambda: all_prompts_acked(client, cid), timeout=15,
               what=f"conversation {cid}'s prompts to be acked")
    return render(client.read_all(layout.responses_path(cid)).messages)


# -- 1. answers, multi-turn -----------------------------------------------------------------------


def test_new_conversation_is_answered_with_multi_turn_history(
    any_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    sup = start_supervisor(streams_root(any_server))
    client, chat = connect(any_server)
    cid = chat.start_conversation("hello")

    first = chat.send_prompt(cid, "What is a stream?")
    answer = wait_for_answers(client, cid, [first]).answers[first]
    assert answer.text == reply_to("What is a stream?")
    assert answer.terminal["type"] == "done" and answer.terminal["stopReason"] == "end_turn"
    assert answer.terminal["usage"]["outputTokens"] == len(reply_to("What is a stream?").split())

    second = chat.send_prompt(cid, "And a second turn?")
    wait_for_answers(client, cid, [first, second])
    assert fake.requests[-1]["messages"] == [
        {"role": "user", "content": "What is a stream?"},
        {"role": "assistant", "content": reply_to("What is a stream?")},
        {"role": "user", "content": "And a second turn?"},
    ]
    assert fake.requests[-1]["model"] == "claude-fake-1"

    rendered = final_render(client, cid)
    assert_clean_answers(rendered, {first: "What is a stream?", second: "And a second turn?"})
    # No restart of anything: one agent, no restarted answer, no crash.
    assert all(a.restarts == 0 and a.attempt == 0 for a in rendered.answers.values())
    assert sup.count_lines(f"agent started conversation={cid}") == 1
    assert sup.count_lines("crashed") == 0
    assert len(fake.requests) == 2


def test_an_agent_creates_a_missing_responses_stream_and_answers(
    tmp_path: Path, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    server = start_streams_server(tmp_path / "streams", long_poll_timeout=2.0)
    try:
        start_supervisor(streams_root(server))
        client, chat = connect(server)
        cid = chat.start_conversation("no responses stream yet", responses_stream=False)
        assert not client.exists(layout.responses_path(cid))

        prompt = chat.send_prompt(cid, "Who makes the responses stream?")
        assert_clean_answers(final_render(client, cid),
                             {prompt: "Who makes the responses stream?"})
        assert client.head(layout.responses_path(cid)).content_type == "application/json"
    finally:
        server.terminate()


def test_a_prompt_without_text_gets_an_error_and_the_next_one_is_answered(
    tmp_path: Path, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """Any client may write to a prompts stream. A prompt whose content is not text used to be
    skipped without a word: a client waiting for its answer waited forever."""
    server = start_streams_server(tmp_path / "streams", long_poll_timeout=2.0)
    try:
        start_supervisor(streams_root(server))
        client, chat = connect(server)
        cid = chat.start_conversation("a bad prompt")
        unreadable = chat.send_prompt(cid, {"text": "not a string"})
        readable = chat.send_prompt(cid, "And this one?")

        rendered = final_render(client, cid)
        refusal = rendered.answers[unreadable]
        assert refusal.terminal["type"] == "error" and refusal.terminals_total == 1
        assert refusal.terminal["code"] == "invalid_prompt"
        assert "not text" in refusal.terminal["message"] and refusal.text == ""
        assert_clean_answers(rendered, {readable: "And this one?"})
        assert [r["messages"] for r in fake.requests] == [
            [{"role": "user", "content": "And this one?"}]]
    finally:
        server.terminate()


@pytest.mark.parametrize("epoch", [2**53 - 1, 2**53, 10**30])
def test_an_agent_marker_with_an_epoch_no_agent_could_write_costs_only_itself(
    tmp_path: Path, fake: FakeAnthropic, start_supervisor: StartSupervisor, epoch: int,
) -> None:
    """A new agent writes under an epoch above every `agent started` marker's. A marker any
    client wrote with an epoch at or past the server's limit (2^53 - 1) made that epoch too
    large to append with: every agent's boot failed, and the conversation went unanswered
    for good, without even an error."""
    server = start_streams_server(tmp_path / "streams", long_poll_timeout=2.0)
    try:
        start_supervisor(streams_root(server))
        client, chat = connect(server)
        cid = chat.start_conversation("a hostile marker")
        client.producer(layout.responses_path(cid), "someone", epoch=0).append(
            [{"type": "agent", "event": "started", "epoch": epoch, "worker": "x"}])
        prompt = chat.send_prompt(cid, "Still answered?")
        assert_clean_answers(final_render(client, cid), {prompt: "Still answered?"})
    finally:
        server.terminate()


@pytest.mark.parametrize("blank", ["", "   ", "\x85", "\x1c\x1f"],
                         ids=["empty", "spaces", "next-line", "separators"])
def test_a_blank_prompt_gets_an_error_and_the_next_one_is_answered(
    tmp_path: Path, fake: FakeAnthropic, start_supervisor: StartSupervisor, blank: str,
) -> None:
    """A prompt of nothing but (Python's) whitespace made the model adapter raise on every
    attempt: the agent crashed, restarted, crashed again, and the conversation never moved.
    A browser sends U+0085 or U+001C as text (its `trim()` keeps them)."""
    server = start_streams_server(tmp_path / "streams", long_poll_timeout=2.0)
    try:
        start_supervisor(streams_root(server))
        client, chat = connect(server)
        cid = chat.start_conversation("a blank prompt")
        empty = chat.send_prompt(cid, blank)
        readable = chat.send_prompt(cid, "And this one?")

        rendered = final_render(client, cid)
        refusal = rendered.answers[empty]
        assert refusal.terminal["type"] == "error" and refusal.terminals_total == 1
        assert refusal.terminal["code"] == "invalid_prompt"
        assert "empty" in refusal.terminal["message"]
        assert_clean_answers(rendered, {readable: "And this one?"})
        started = [m for m in client.read_all(layout.responses_path(cid)).messages
                   if m.get("type") == "agent"]
        assert len(started) == 1, started  # one agent, never restarted
    finally:
        server.terminate()


def test_a_prompt_without_a_usable_id_is_skipped_and_logged(
    tmp_path: Path, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """A prompt with no id, a number for one, or one of 600,000 characters was skipped
    without a word, or answered with every piece carrying the id twice, until an append was
    over the server's size limit: the agent crashed and restarted every 30 s, and the prompts
    after it were never answered. Such a prompt cannot be answered even with an error (there
    is no id to write it under): it is skipped, the supervisor's log says so, and the next
    one is answered."""
    server = start_streams_server(tmp_path / "streams", long_poll_timeout=2.0)
    try:
        sup = start_supervisor(streams_root(server))
        client, chat = connect(server)
        cid = chat.start_conversation("prompts without ids")
        prompts = client.producer(layout.prompts_path(cid), "a-careless-client")
        for bad_id in ({"id": 7}, {"id": ""}, {}, {"id": "i" * (schema.MAX_PROMPT_ID_CHARS + 1)}):
            prompts.append([{"type": "prompt", "content": "an id no answer can carry", **bad_id}])
        # No message an agent reads (a mistyped type): it too was skipped without a word.
        prompts.append([{"type": "promt", "id": "p-typo", "content": "a typo in the type"}])
        # An id may hold anything: logged as it was, this one forged a line of the log.
        forging = "x\n2026-12-03 09:00:00,000 ERROR agent_actors.supervisor: FORGED\x00"
        prompts.append([{"type": "prompt", "id": forging, "content": "an odd id"}])
        readable = chat.send_prompt(cid, "And this one?")

        rendered = final_render(client, cid)
        assert_clean_answers(rendered, {forging: "an odd id", readable: "And this one?"})
        assert list(rendered.answers) == [forging, readable]
        # One line for what one read found (the reasons: see test_schema).
        assert sup.wait_for_line(f"conversation {cid}: skipped a prompt whose id is not a"
                                 " string but a JSON number", timeout=10)
        assert sup.wait_for_line(re.escape(
            f"conversation {cid}: skipped a message of type 'promt' in its prompts stream: an"
            ' agent reads "prompt" and "cancel" messages'), timeout=10)
        assert sup.wait_for_line(re.escape(f"prompt={forging!r} outcome=done"), timeout=10)
        assert sup.count_lines("FORGED") == 1 and sup.count_lines("\x00") == 0

        # Said once: an agent boots again for every prompt after a restart (or a rest), and
        # each boot read the old skipped prompts and said so again. A new one is still said.
        said = sup.count_lines("skipped a prompt")
        sup.terminate()
        prompts.append([{"type": "prompt", "content": "a new prompt without an id"}])
        later = chat.send_prompt(cid, "Anything new?")
        since = len(sup.lines)
        sup.start()
        assert sup.wait_for_line(re.escape(f"prompt={later} outcome=done"), timeout=20)
        assert sup.count_lines("skipped a prompt") == said + 1
        assert sup.wait_for_line(f"conversation {cid}: skipped a prompt without an id in its",
                                 timeout=1, since=since)
    finally:
        server.terminate()


def test_a_processed_offset_past_the_streams_tail_does_not_stop_an_agent(
    tmp_path: Path, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """The offsets file may hold an offset past the tail of a prompts stream made again since
    (or of another server). The agent reads from it only to tell new skipped prompts from
    old ones; a 400 for that read failed its boot, again and again."""
    server = start_streams_server(tmp_path / "streams", long_poll_timeout=2.0)
    try:
        client, chat = connect(server)
        cid = chat.start_conversation("a stale offset")
        client.producer(layout.prompts_path(cid), "a-careless-client").append(
            [{"type": "prompt", "content": "no id"}])
        readable = chat.send_prompt(cid, "Still answered?")
        stale = OffsetsStore(str(tmp_path / "agents-w1"))
        stale.save(cid, "9999999999999999_9999999999999999")
        stale.close()
        sup = start_supervisor(streams_root(server))
        assert_clean_answers(final_render(client, cid), {readable: "Still answered?"})
        assert sup.count_lines(f"conversation {cid}: skipped a prompt without an id") == 1
    finally:
        server.terminate()


# -- 2. cancel ----------------------------------------------------------------------------------


def test_a_cancel_before_its_prompt_does_not_cancel_a_later_prompt_with_that_id(
    tmp_path: Path, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """A cancel can only be about a prompt before it in the stream: a prompt sent after a
    cancel naming its id was ended as cancelled, without a word from the model."""
    server = start_streams_server(tmp_path / "streams", long_poll_timeout=2.0)
    try:
        start_supervisor(streams_root(server))
        client, chat = connect(server)
        cid = chat.start_conversation("an early cancel")
        chat.cancel(cid, "later")
        client.producer(layout.prompts_path(cid), "another-client").append(
            [{"type": "prompt", "id": "later", "content": "Cancelled before it was sent?"}])
        assert_clean_answers(final_render(client, cid), {"later": "Cancelled before it was sent?"})
        assert len(fake.requests) == 1
    finally:
        server.terminate()


def test_cancel_stops_the_model_within_a_second(
    any_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    long_reply = " ".join(f"token{i}" for i in range(400))  # 10 s at 40 tokens/s
    fake.reply = lambda messages: long_reply if messages[-1]["content"] == "long" \
        else fake_reply(messages)
    fake.tokens_per_second = 40
    start_supervisor(streams_root(any_server))
    client, chat = connect(any_server)
    cid = chat.start_conversation("cancel")

    prompt = chat.send_prompt(cid, "long")
    wait_for_answers(client, cid, [prompt],
                     until=lambda r: prompt in r.answers and bool(r.answers[prompt].text))
    cancelled_at = time.monotonic()
    chat.cancel(cid, prompt)
    assert fake.client_disconnected.wait(timeout=1.0), "model stream still open 1 s after cancel"
    disconnect_s = time.monotonic() - cancelled_at
    answer = wait_for_answers(client, cid, [prompt], timeout=5).answers[prompt]
    done_s = time.monotonic() - cancelled_at

    assert answer.terminal["type"] == "done"
    assert answer.terminal["stopReason"] == "cancelled"
    assert answer.terminal["model"] == "claude-fake-1"  # as the answers the model finished
    assert answer.text and long_reply.startswith(answer.text) and answer.text != long_reply
    assert done_s < 2.0, f"cancelled answer ended {done_s:.2f}s after the cancel"
    assert fake.tokens_sent < 200, "the model kept streaming after the cancel"

    after = chat.send_prompt(cid, "next")
    rendered = wait_for_answers(client, cid, [prompt, after])
    assert rendered.answers[after].text == reply_to("next")
    assert rendered.answers[after].terminal["stopReason"] == "end_turn"
    print(f"cancel: model stream closed after {disconnect_s * 1000:.0f} ms,"
          f" done after {done_s * 1000:.0f} ms")


# -- 3. model failures --------------------------------------------------------------------------

FAILURES: list[tuple[str, dict[str, Any], str, str]] = [
    # mode, fail_next options, expected error code, words the user must read
    ("429", {"times": 4, "retry_after": 0.05}, "rate_limited", "rate limited"),
    ("529", {"times": 4, "retry_after": 0.05}, "overloaded", "overloaded"),
    ("stream_error", {"after_tokens": 3}, "overloaded", "overloaded"),
    ("drop", {"after_tokens": 3}, "connection", "connection to the AI model was lost"),
]


def test_each_model_failure_ends_in_a_readable_error_then_the_agent_goes_on(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    sup = start_supervisor(streams_root(streams_server))
    client, chat = connect(streams_server)
    cid = chat.start_conversation("failures")
    prompts: list[str] = []
    for mode, options, code, words in FAILURES:
        requests_before = len(fake.requests)
        fake.fail_next(mode, **options)
        failing = chat.send_prompt(cid, f"fail with {mode}")
        prompts.append(failing)
        answer = wait_for_answers(client, cid, prompts).answers[failing]
        error = answer.terminal
        assert error["type"] == "error", f"{mode}: {answer}"
        message = error["message"]
        assert words.lower() in message.lower(), f"{mode}: {message!r}"
        assert error["code"] == code, f"{mode}: {error}"
        for leak in ("Traceback", 'File "', "Error(", "test-key", "\n"):
            assert leak not in message, f"{mode}: unreadable error message {message!r}"
        if mode in ("429", "529"):  # the SDK's retries were used up first
            assert len(fake.requests) - requests_before == 4, mode
        else:
            full = reply_to(f"fail with {mode}")  # partial text, then the error
            assert answer.text and full.startswith(answer.text) and answer.text != full

        normal = chat.send_prompt(cid, f"after {mode}")
        prompts.append(normal)
        answer = wait_for_answers(client, cid, prompts).answers[normal]
        assert answer.terminal["type"] == "done", f"after {mode}: {answer}"
        assert answer.text == reply_to(f"after {mode}")
        # Without the failed prompt: kept, a prompt the API refuses (too long) failed every
        # prompt after it, sent again inside each.
        sent = fake.requests[-1]["messages"]
        assert sent[-1] == {"role": "user", "content": f"after {mode}"}
        assert not any("fail with" in m["content"] for m in sent), sent
    assert sup.count_lines(f"agent started conversation={cid}") == 1  # one agent did it all
    assert sup.count_lines("crashed") == 0


# -- 4. kill -9 at every crash point, then restart ----------------------------------------------------


@pytest.mark.parametrize(("any_server", "crash_at"), [
    ("python", "before-first-chunk"), ("python", "mid-answer"), ("python", "after-done"),
    ("node", "mid-answer"),
], indirect=["any_server"])
def test_kill_9_then_restart_gives_exactly_one_clean_answer_per_prompt(
    crash_at: str, any_server: ServerProcess, fake: FakeAnthropic,
    start_supervisor: StartSupervisor,
) -> None:
    fake.tokens_per_second = 50  # ~0.4 s per answer: several chunks, the kill lands inside
    root = streams_root(any_server)
    sup = start_supervisor(root, crash_at=crash_at)
    client = StreamsClient(root)
    # The killed run's lease must outlast the restart, which took 2.4 s on a busy machine: a
    # lease of LEASE_TTL_MS (2 s) had lapsed by then, and nothing was waited for.
    chat = ChatClient(client, lease_ttl_ms=6_000)
    cid = chat.start_conversation(f"crash {crash_at}")
    prompts = {chat.send_prompt(cid, content): content
               for content in ("first question", "second question")}
    first = next(iter(prompts))

    assert sup.wait_exit(timeout=15) == -signal.SIGKILL, f"no crash at {crash_at}"
    before = render(client.read_all(layout.responses_path(cid)).messages)
    sup.start()  # same data dir, no crash point

    wait_for_answers(client, cid, list(prompts), timeout=30)
    rendered = final_render(client, cid)
    assert_clean_answers(rendered, prompts)

    # The crash really happened where it was meant to, and the stream says what followed.
    crashed = before.answers.get(first)
    if crash_at == "before-first-chunk":
        assert crashed is None
        assert rendered.answers[first].restarts == 0
    elif crash_at == "mid-answer":
        assert crashed is not None and not crashed.complete
        assert crashed.text and reply_to(prompts[first]).startswith(crashed.text)
        assert crashed.text != reply_to(prompts[first])  # cut off mid-answer
        assert rendered.answers[first].restarts == 1
        assert rendered.answers[first].attempt == 1
        # The killed run's lease held the conversation: the new run said why it waited.
        assert any(f"conversation {cid} waits: a lease under this supervisor's worker name"
                   in line for line in sup.lines), sup.log_tail()
    else:  # after-done: answered before the kill, never again after
        assert crashed is not None and crashed.complete and crashed.text == reply_to(
            prompts[first])
        assert rendered.answers[first].restarts == 0
    agents = [m for m in rendered.messages if isinstance(m, dict) and m.get("type") == "agent"]
    assert len(agents) == 2, agents  # one agent before the kill, one after


@pytest.mark.parametrize("cancelled", [False, True], ids=["given-up", "cancelled-meanwhile"])
def test_an_answer_that_kills_its_agent_every_time_ends_in_an_error_after_bounded_attempts(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
    cancelled: bool,
) -> None:
    """A user who stopped the answer meanwhile sees it stopped, not given up on, with what
    its last attempt had shown (a restart marker before the stop erased that text)."""
    fake.tokens_per_second = 50
    root = streams_root(streams_server)
    client, chat = connect(streams_server)
    cid = chat.start_conversation("poison")
    first = chat.send_prompt(cid, "first question")
    # Every supervisor started with this crash point dies as the first chunk of its first
    # answer is written: the same answer, restarted by each, never finishes.
    sup = start_supervisor(root, crash_at="mid-answer")
    assert sup.wait_exit(timeout=15) == -signal.SIGKILL
    for _ in range(schema.MAX_ANSWER_ATTEMPTS - 1):
        sup.start(crash_at="mid-answer")
        assert sup.wait_exit(timeout=15) == -signal.SIGKILL
    requests_before = len(fake.requests)
    if cancelled:
        chat.cancel(cid, first)

    sup.start(crash_at="mid-answer")  # would die again if it asked the model
    wait_for_answers(client, cid, [first], timeout=30)
    answer = render(client.read_all(layout.responses_path(cid)).messages).answers[first]
    assert answer.restarts == schema.MAX_ANSWER_ATTEMPTS - 1
    if cancelled:
        assert answer.terminal["type"] == "done"
        assert answer.terminal["stopReason"] == "cancelled"
        assert answer.attempt == schema.MAX_ANSWER_ATTEMPTS - 1
        # What the last attempt had shown before its agent died, as a Stop keeps it.
        assert answer.text and reply_to("first question").startswith(answer.text)
    else:
        assert answer.terminal["type"] == "error"
        assert answer.terminal["code"] == schema.INTERRUPTED
        assert answer.terminal["message"] == schema.gave_up_message(schema.MAX_ANSWER_ATTEMPTS)
        assert answer.text == ""  # the last attempt's text: none, so no half answer is shown
    assert len(fake.requests) == requests_before  # the model was not asked again
    assert sup.running
    assert sup.count_lines("gave up on prompt") == int(not cancelled)


@pytest.mark.parametrize("cancel_at", ["while-restarted", "before-the-next-restart"])
def test_a_stop_of_an_attempt_since_restarted_ends_the_answer_with_that_attempts_text(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
    cancel_at: str,
) -> None:
    """A Stop pressed while the server was away reached the agent only after a new agent had
    restarted the answer: it stopped the new attempt, and the text the user had stopped at
    gave way to the new attempt's first words. The page's cancel names the attempt on its
    screen; such a cancel now ends the answer with that attempt's text, under a new attempt
    that every reader shows. Also when it arrives while no agent runs, after a second kill."""
    fake.tokens_per_second = 10  # a few seconds an answer: the kill and the cancel land inside
    takes = itertools.count()

    def each_attempt_its_own_words(messages: list[dict[str, Any]]) -> str:
        reply = fake_reply(messages)
        return f"Take{next(takes)} {reply}" if messages[-1]["content"] == "first question" else reply

    fake.reply = each_attempt_its_own_words
    root = streams_root(streams_server)
    client, chat = connect(streams_server)
    cid = chat.start_conversation("stopped while away")
    first = chat.send_prompt(cid, "first question")
    second = chat.send_prompt(cid, "second question")
    sup = start_supervisor(root, crash_at="mid-answer")
    assert sup.wait_exit(timeout=15) == -signal.SIGKILL
    seen = render(client.read_all(layout.responses_path(cid)).messages).answers[first].text
    assert seen.startswith("Take0")

    if cancel_at == "while-restarted":
        sup = start_supervisor(root)
        wait_for_answers(client, cid, [first], until=mid_answer(first, 1))
        chat.cancel(cid, first, attempt=0)
    else:
        sup = start_supervisor(root, crash_at="mid-answer")
        assert sup.wait_exit(timeout=15) == -signal.SIGKILL
        chat.cancel(cid, first, attempt=0)
        sup = start_supervisor(root)
    wait_for_answers(client, cid, [first, second], timeout=30)
    rendered = final_render(client, cid)
    answer = rendered.answers[first]
    assert answer.text == seen
    assert answer.terminal["stopReason"] == "cancelled"
    assert answer.attempt == 2
    # The restart says whose text it puts back: the page counts no restart for it.
    restarts = [m for m in client.read_all(layout.responses_path(cid)).messages
                if m.get("type") == "restart" and m.get("promptId") == first]
    assert [m["attempt"] for m in restarts] == [1, 2]
    assert "restores" not in restarts[0] and restarts[1]["restores"] == 0
    assert rendered.answers[second].text == reply_to("second question")
    # The next question's history holds the answer as its user saw it.
    assert fake.requests[-1]["messages"][:2] == [
        {"role": "user", "content": "first question"}, {"role": "assistant", "content": seen}]


def test_restarts_after_a_clean_stop_do_not_count_toward_giving_up_on_an_answer(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """A user who stopped the supervisor (Ctrl+C, SIGTERM) in the middle of the same answer
    four times got "The agent stopped in the middle of this answer 4 times" instead of the
    answer: clean stops counted like crashes. Only kills count; here the answer is given up
    on after exactly MAX_ANSWER_ATTEMPTS of them, with clean stops in between."""
    fake.tokens_per_second = 10  # about two seconds an answer: a stop lands in the middle
    root = streams_root(streams_server)
    client, chat = connect(streams_server)
    cid = chat.start_conversation("stopped and killed")
    first = chat.send_prompt(cid, "first question")
    steps = ["clean", "kill", "clean", "kill"] + ["kill"] * (schema.MAX_ANSWER_ATTEMPTS - 2)
    for attempt, step in enumerate(steps):
        if step == "kill":
            sup = start_supervisor(root, crash_at="mid-answer")
            assert sup.wait_exit(timeout=15) == -signal.SIGKILL, f"attempt {attempt} not made"
        else:
            sup = start_supervisor(root)
            wait_for_answers(client, cid, [first], until=mid_answer(first, attempt))
            assert sup.terminate() == 0, sup.log_tail()

    sup = start_supervisor(root, crash_at="mid-answer")  # would die if it asked the model
    wait_for_answers(client, cid, [first], timeout=30)
    answer = render(client.read_all(layout.responses_path(cid)).messages).answers[first]
    assert answer.attempt == len(steps)  # attempts 0 to 5 were made: this is the seventh
    assert answer.terminal["type"] == "error", answer
    assert answer.terminal["code"] == schema.INTERRUPTED
    assert answer.terminal["message"] == schema.gave_up_message(schema.MAX_ANSWER_ATTEMPTS)
    assert sup.count_lines(f"after {schema.MAX_ANSWER_ATTEMPTS} interrupted attempts") == 1


# -- 5. two supervisors at once -------------------------------------------------------------------


def test_two_supervisors_never_double_answer(
    streams_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    root = streams_root(streams_server)
    sups = [start_supervisor(root, worker=name, idle_timeout=1.0) for name in ("wa", "wb")]
    client, chat = connect(streams_server)
    conversations = [chat.start_conversation(f"shared {i}") for i in range(4)]
    prompts: dict[str, dict[str, str]] = {cid: {} for cid in conversations}

    def send_round(label: str) -> None:
        for cid in conversations:
            content = f"{label} for {cid}"
            prompts[cid][chat.send_prompt(cid, content)] = content

    send_round("round one")
    send_round("round two")  # queued behind round one's answers
    for cid in conversations:
        wait_for_answers(client, cid, list(prompts[cid]), timeout=30)
    # Let every agent passivate, so the next round is claimed afresh by either supervisor.
    for cid in conversations:
        wait_until(lambda: lease_holder(client, cid) is None, timeout=15,
                   what=f"{cid} to passivate")
    send_round("round three")

    workers: set[str] = set()
    for cid in conversations:
        wait_for_answers(client, cid, list(prompts[cid]), timeout=30)
        rendered = final_render(client, cid)
        assert_clean_answers(rendered, prompts[cid])
        workers |= {m["worker"] for m in rendered.messages
                    if isinstance(m, dict) and m.get("type") == "agent"}
        for prompt_id in prompts[cid]:
            logged = f"answered conversation={cid} prompt={prompt_id} "

            def answered(logged: str = logged) -> int:
                return sum(s.count_lines(logged) for s in sups)

            # Logged just after the answer's end is stored: maybe after this test saw it.
            wait_until(lambda: answered() >= 1, timeout=10, what=f"the log of {prompt_id}")
            assert answered() == 1, f"{prompt_id} answered {answered()} times"
    print(f"workers that answered: {sorted(workers)}")
    assert workers <= {"wa", "wb"}


def test_a_stalled_supervisor_is_fenced_and_stops_when_it_wakes_up(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
    tmp_path: Path,
) -> None:
    fake.tokens_per_second = 50
    fake.reply = lambda messages: reply_to("stalled") * 3 \
        if messages[-1]["content"] == "stalled" else fake_reply(messages)
    root = streams_root(streams_server)
    stale = start_supervisor(root, worker="wa")
    client, chat = connect(streams_server)
    cid = chat.start_conversation("stall")
    first = chat.send_prompt(cid, "stalled")
    wait_for_answers(client, cid, [first],
                     until=lambda r: first in r.answers and bool(r.answers[first].text))
    stale.pause()  # mid-answer, holding the lease; it expires while the process is frozen
    try:
        assert not render(client.read_all(layout.responses_path(cid)).messages).complete([first])
        fresh = start_supervisor(root, worker="wb")
        wait_for_answers(client, cid, [first], timeout=20)
    finally:
        stale.resume()
    assert stale.wait_for_line(f"agent {cid}: lease lost|agent {cid} was replaced", timeout=10)
    second = chat.send_prompt(cid, "after the stall")
    wait_for_answers(client, cid, [first, second])

    rendered = final_render(client, cid)
    answer = rendered.answers[first]
    assert answer.terminals_total == 1 and answer.terminal["type"] == "done", answer
    assert answer.text == reply_to("stalled") * 3 and answer.restarts == 1
    assert rendered.answers[second].text == reply_to("after the stall")
    assert rendered.answers[second].terminals_total == 1
    assert fresh.wait_for_line(f"answered conversation={cid} prompt={first} ", timeout=10)
    assert stale.count_lines(f"answered conversation={cid} ") == 0
    assert fresh.count_lines(f"answered conversation={cid} prompt={first} ") == 1
    # Fenced mid-answer is no clean stop: counted as one, an answer that keeps losing its
    # agents would be tried (and paid for) for ever.
    assert OffsetsStore(str(tmp_path / "agents-wa")).clean_stops(cid) == {}


def test_an_agent_that_lost_its_lease_hands_the_conversation_back_to_its_supervisor(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """With one supervisor, frozen past its agent's lease (a paused VM, a long outage): the
    server woke the conversation again, but the supervisor saw that wake while the agent was
    still registered and ignored it, and the agent then stopped on its lost lease. Nothing
    claimed the conversation again: the partial answer and every later prompt waited for a
    supervisor restart. (Found by a kill -9 and SIGSTOP test campaign.)"""
    fake.tokens_per_second = 50
    fake.reply = lambda messages: reply_to("stalled") * 3 \
        if messages[-1]["content"] == "stalled" else fake_reply(messages)
    sup = start_supervisor(streams_root(streams_server))
    client, chat = connect(streams_server)
    cid = chat.start_conversation("stall alone")
    first = chat.send_prompt(cid, "stalled")
    wait_for_answers(client, cid, [first],
                     until=lambda r: first in r.answers and bool(r.answers[first].text))
    sup.pause()
    try:
        wait_until(lambda: lease_holder(client, cid) is None, timeout=15,
                   what="the lease to expire while the supervisor is frozen")
    finally:
        sup.resume()
    assert sup.wait_for_line(f"agent {cid}: lease lost", timeout=10)
    second = chat.send_prompt(cid, "after the stall")
    wait_for_answers(client, cid, [first, second], timeout=30)

    rendered = final_render(client, cid)
    assert rendered.answers[first].text == reply_to("stalled") * 3
    assert rendered.answers[first].terminals_total == 1
    assert rendered.answers[second].text == reply_to("after the stall")


def test_an_agent_failed_by_the_server_stops_with_a_warning_not_a_traceback(
    streams_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """The server failing an agent's request for good (here its prompts stream is deleted
    under it; likewise a server down past the client's retries) is expected: the agent
    stops, and its supervisor restarts it, backing off. It used to crash through pykka's
    handler, which logged two chained tracebacks as an ERROR per agent."""
    sup, client, _, cid = answered_once(streams_server, start_supervisor,
                                        "pulled from under the agent")
    client.delete(layout.prompts_path(cid))
    assert sup.wait_for_line(f"agent {cid} stops: its prompts stream was deleted", timeout=15)
    assert sup.wait_for_line(f"agent stopped conversation={cid} reason=failed failures=1",
                             timeout=5)
    log = "\n".join(sup.lines)  # this process's lines (the file keeps earlier runs')
    assert "Traceback" not in log and "Unhandled exception" not in log, sup.log_tail()


def test_a_crash_after_a_normal_stop_is_backed_off_as_a_first_failure(
    streams_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """A crash long after the last one is a first failure again (1 s before the restart),
    not the next of a series that would wait up to 30 s."""
    sup, client, _, cid = answered_once(streams_server, start_supervisor,
                                        "fails now and then", idle_timeout=1.0)
    client.delete(layout.prompts_path(cid))  # fails the agent; its restart makes it again
    assert sup.wait_for_line(f"agent stopped conversation={cid} reason=failed failures=1",
                             timeout=15)
    assert sup.wait_for_line(f"agent stopped conversation={cid} reason=idle", timeout=15)
    since = len(sup.lines)
    prompt = client.producer(layout.prompts_path(cid), "after-the-failure")
    prompt.append([{"type": "prompt", "id": "p-later", "content": "later",
                    "timestamp": schema.now_ms()}])
    wait_for_answers(client, cid, ["p-later"])
    client.delete(layout.prompts_path(cid))
    crashed = sup.wait_for_line(f"agent stopped conversation={cid} reason=failed", timeout=15,
                                since=since)
    assert crashed and "failures=1 restart_in_s=1.0" in crashed, crashed


def assert_unanswerable_once_per_prompt(sup: SupervisorProcess, client: StreamsClient,
                                        chat: ChatClient, cid: str, why: str) -> None:
    """The conversation's last prompt found its streams unable to take an answer: the agent
    says why once, acks the prompts (so no wake repeats) and is not restarted; the next
    prompt wakes one new agent, which says so once more."""
    said = f"conversation {cid} cannot be answered: {why}"
    assert sup.wait_for_line(said, timeout=15), sup.log_tail()
    assert sup.wait_for_line(f"agent stopped conversation={cid} reason=unanswerable",
                             timeout=10), sup.log_tail()
    wait_until(lambda: all_prompts_acked(client, cid), timeout=10,
               what="the unanswerable prompts to be acked")
    chat.send_prompt(cid, "is anyone there?")
    wait_until(lambda: sup.count_lines(said) == 2, timeout=15,
               what="the next prompt's agent to say so too")
    wait_until(lambda: sup.count_lines(f"agent stopped conversation={cid} reason=unanswerable")
               == 2, timeout=10, what="that agent to stop")
    wait_until(lambda: all_prompts_acked(client, cid), timeout=10,
               what="the next prompt to be acked")
    log = "\n".join(sup.lines)
    assert "agent crashed" not in log and "reason=failed" not in log, sup.log_tail()
    assert "Traceback" not in log, sup.log_tail()


def test_a_closed_responses_stream_is_reported_once_per_prompt_not_retried_forever(
    any_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """A client closed the responses stream (section 5.2): no answer can be written to it,
    ever. The agent used to fail, and its supervisor restarted it every 30 s for good."""
    sup, client, chat, cid = answered_once(any_server, start_supervisor,
                                           "closed under the agent")
    client.close_stream(layout.responses_path(cid))
    chat.send_prompt(cid, "after the close")  # the running agent's answer is refused
    assert_unanswerable_once_per_prompt(sup, client, chat, cid,
                                        "its responses stream is closed")


def test_a_responses_stream_of_another_type_is_reported_not_retried_forever(
    any_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """A client made the responses stream `text/plain`: the agent can neither read it as
    JSON nor append JSON to it."""
    sup = start_supervisor(streams_root(any_server))
    client, chat = connect(any_server)
    cid = chat.start_conversation("wrong type", responses_stream=False)
    client.ensure_stream(layout.responses_path(cid), "text/plain")
    chat.send_prompt(cid, "hello")
    assert_unanswerable_once_per_prompt(sup, client, chat, cid,
                                        "its responses stream is not application/json")


def test_a_supervisor_new_to_a_responses_stream_of_another_type_reports_it_not_rereads_it(
    streams_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """A supervisor without the processed offsets of the one that gave up (its own data
    directory) reads the streams to learn whether prompts wait: a `text/plain` responses
    stream failed that read, which it took for a server that could not answer, and it read
    it again every 30 s for good, with a warning each time."""
    root = streams_root(streams_server)
    first = start_supervisor(root)
    client, chat = connect(streams_server)
    cid = chat.start_conversation("wrong type", responses_stream=False)
    client.ensure_stream(layout.responses_path(cid), "text/plain")
    chat.send_prompt(cid, "hello")
    said = f"conversation {cid} cannot be answered: its responses stream is not application/json"
    assert first.wait_for_line(said, timeout=15), first.log_tail()
    assert first.wait_for_line(f"agent stopped conversation={cid} reason=unanswerable",
                               timeout=10), first.log_tail()
    first.terminate(timeout=15)
    second = start_supervisor(root, worker="w2")
    assert second.wait_for_line(said, timeout=15), second.log_tail()
    assert second.wait_for_line(f"agent stopped conversation={cid} reason=unanswerable",
                                timeout=10), second.log_tail()
    assert second.count_lines("could not read conversation") == 0, second.log_tail()


def test_a_soft_deleted_prompts_stream_is_reported_not_retried_forever(
    streams_server: ServerProcess, start_supervisor: StartSupervisor,
) -> None:
    """Deleting a stream that has a fork leaves it soft-deleted: `410 Gone` to every request
    for good (section 4.2), and a `PUT` cannot make it again. Its agent used to fail and be
    restarted every 30 s."""
    sup, client, _, cid = answered_once(streams_server, start_supervisor,
                                        "forked, then deleted")
    fork = requests.put(client.stream_url(f"forks/{cid}"), timeout=10, headers={
        "Stream-Forked-From": urllib.parse.urlsplit(
            client.stream_url(layout.prompts_path(cid))).path})
    assert fork.status_code == 201, fork.text
    client.delete(layout.prompts_path(cid))
    said = f"conversation {cid} cannot be answered: its prompts stream was deleted"
    assert sup.wait_for_line(said, timeout=15), sup.log_tail()
    assert sup.wait_for_line(f"agent stopped conversation={cid} reason=unanswerable",
                             timeout=10), sup.log_tail()
    # The supervisor's check of the conversation, after its agent stopped, finds no work.
    assert sup.wait_for_line(f"checked conversation={cid}: its prompts stream is gone",
                             timeout=10), sup.log_tail()
    log = "\n".join(sup.lines)
    assert "agent crashed" not in log and "reason=failed" not in log, sup.log_tail()
    assert "could not check" not in log, sup.log_tail()


def test_an_answer_whose_prompts_stream_is_deleted_in_its_middle_is_ended_not_left_open(
    streams_server: ServerProcess, fake: FakeAnthropic, start_supervisor: StartSupervisor,
) -> None:
    """Its agent failed (the prompts stream gone), the next one made the stream again and
    found no prompt for the answer cut short: it stayed unfinished for good, and a page
    showed it as being written. It now ends in an error that says why."""
    fake.tokens_per_second = 10
    sup = start_supervisor(streams_root(streams_server))
    client, chat = connect(streams_server)
    cid = chat.start_conversation("prompts deleted mid-answer")
    first = chat.send_prompt(cid, "a long answer, please")
    wait_for_answers(client, cid, [first], until=mid_answer(first, 0))
    client.delete(layout.prompts_path(cid))
    rendered = wait_for_answers(client, cid, [first], timeout=30)
    ended = rendered.answers[first].terminal
    assert ended["type"] == "error" and ended["code"] == schema.PROMPT_GONE, ended
    assert sup.wait_for_line(f"conversation {cid}: ended 1 unfinished answer", timeout=10)
    # Said in words: it was "prompt-reader failed: HTTP 404: stream ... does not exist".
    assert sup.count_lines(re.escape(
        f"agent {cid} stops: its prompts stream was deleted (not by a delete message); the"
        " next agent ends what was being answered")) == 1, sup.log_tail()
    later = "p-after-the-deletion"  # from a new writer: the stream made again has no producers
    client.producer(layout.prompts_path(cid), "after-the-deletion").append(
        [{"type": "prompt", "id": later, "content": "a question after that"}])
    rendered = wait_for_answers(client, cid, [later], timeout=30)
    assert_clean_answers(rendered, {later: "a question after that"})


# -- 6. passivation ---------------------------------------------------------------------------------


def test_idle_agent_passivates_and_wakes_for_the_next_prompt(
    any_server: ServerProcess, start_supervisor: StartSupervisor,
    request: pytest.FixtureRequest,
) -> None:
    sup = start_supervisor(streams_root(any_server), idle_timeout=1.0)
    client, chat = connect(any_server)
    cid = chat.start_conversation("idle")

    first = chat.send_prompt(cid, "before the nap")
    wait_for_answers(client, cid, [first])
    python = request.node.callspec.params["any_server"] == "python"
    if python:  # this server reports the lease holder (an extension); Node's does not
        assert lease_holder(client, cid) == "w1"
    assert sup.wait_for_line(f"agent passivated conversation={cid}", timeout=10)
    assert sup.wait_for_line(f"agent stopped conversation={cid} reason=idle", timeout=5)
    if python:
        wait_until(lambda: lease_holder(client, cid) is None, timeout=5,
                   what="the lease to be given back")
    assert all_prompts_acked(client, cid)

    second = chat.send_prompt(cid, "after the nap")
    rendered = wait_for_answers(client, cid, [first, second])
    assert rendered.answers[second].text == reply_to("after the nap")
    assert sup.count_lines(f"agent started conversation={cid}") == 2
    assert_clean_answers(final_render(client, cid),
                         {first: "before the nap", second: "after the nap"})
