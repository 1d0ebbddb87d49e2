"""The models: the real `anthropic` SDK against a local fake Messages API, and the demo model."""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import itertools
import logging
import socket
import threading
import time
import types
from collections.abc import Generator, Iterator
from typing import Any, cast

import anthropic
import pytest

from agent_actors.errors import ModelError
from agent_actors.models import (
    DEFAULT_ANTHROPIC_MODEL,
    DEMO_LABEL,
    AnthropicModel,
    DemoModel,
    ModelEvent,
    ModelResult,
    ModelWait,
    TextDelta,
    Turn,
    model_from_settings,
    normalize_turns,
)
from agent_actors.models import anthropic_model
from agent_actors.models._retry_policy import retry_after
from agent_actors.models.base import estimate_tokens
from agent_actors.models.settings import quiet_http_client_logs
from tests.fake_anthropic import FakeAnthropic
from tests.support.agents import wait_until

pytestmark = pytest.mark.timeout(120)

API_KEY = "sk-ant-test-secret-key"
REPLY = "The quick brown fox jumps over the lazy dog."
LONG_REPLY = " ".join(f"word{i}" for i in range(300))


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    """A fake Messages API answering REPLY quickly."""
    with FakeAnthropic(REPLY, tokens_per_second=500) as server:
        yield server


def claude(fake: FakeAnthropic, *, max_retries: int = 0, **kwargs: Any) -> AnthropicModel:
    """An AnthropicModel (real SDK) pointed at the fake."""
    return AnthropicModel(api_key=API_KEY, base_url=fake.url, max_retries=max_retries,
                          timeout=10.0, **kwargs)


def split(events: list[ModelEvent]) -> tuple[str, list[TextDelta], ModelResult]:
    """The text, the deltas and the final result of a finished stream (after any waits)."""
    waits = waits_in(events)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert isinstance(events[-1], ModelResult), f"last event is not a result: {events[-1]!r}"
    assert all(isinstance(e, TextDelta) for e in events[len(waits):-1])
    return "".join(d.text for d in deltas), deltas, events[-1]


def waits_in(events: list[ModelEvent]) -> list[ModelWait]:
    """The `ModelWait`s a stream began with (there are none after its first other event)."""
    leading = list(itertools.takewhile(lambda e: isinstance(e, ModelWait), events))
    assert not any(isinstance(e, ModelWait) for e in events[len(leading):]), events
    return cast(list[ModelWait], leading)


# -- Anthropic: normal streaming ---------------------------------------------------------------


def test_streams_text_deltas_then_a_result_with_usage(fake: FakeAnthropic) -> None:
    text, deltas, result = split(list(claude(fake).stream([("user", "Hi")])))
    assert text == REPLY
    assert len(deltas) == len(REPLY.split())  # streamed piece by piece, not in one block
    assert result.stop_reason == "end_turn" and not result.cancelled
    assert (result.input_tokens, result.output_tokens) == (1, len(REPLY.split()))
    assert result.model == DEFAULT_ANTHROPIC_MODEL


def test_the_whole_conversation_reaches_the_model(fake: FakeAnthropic) -> None:
    fake.reply = lambda messages: f"echo: {messages[-1]['content']}"
    turns = [Turn("user", "My name is Ada."), Turn("assistant", "Hello Ada!"),
             Turn("user", "What is my name?")]
    model = claude(fake, model="claude-test-model", max_tokens=77, system="Be brief.")
    text, _, _ = split(list(model.stream(turns)))
    assert text == "echo: What is my name?"
    body = fake.requests[0]
    assert body["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    assert (body["model"], body["max_tokens"], body["stream"]) == ("claude-test-model", 77, True)
    assert body["system"] == "Be brief."
    sent = fake.headers[0]  # SDK versions differ: x-api-key or an Authorization bearer
    assert API_KEY in (sent.get("x-api-key"), sent.get("authorization", "").removeprefix("Bearer "))


def test_consecutive_prompts_without_an_answer_are_sent_as_one_user_turn(
    fake: FakeAnthropic,
) -> None:
    turns = [("user", "first"), ("assistant", "answer"), ("user", "second (its answer failed)"),
             ("user", "third")]
    split(list(claude(fake).stream(turns)))
    assert fake.requests[0]["messages"][-1] == {
        "role": "user", "content": "second (its answer failed)\n\nthird"}


# -- Anthropic: failures -------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "code"), [
    ("429", "rate_limited"),
    ("529", "overloaded"),
    ("401", "authentication"),
    ("stream_error", "overloaded"),
    ("garbled", "bad_response"),
    ("drop", "connection"),
])
def test_each_failure_becomes_a_readable_model_error(
    fake: FakeAnthropic, mode: str, code: str,
) -> None:
    fake.fail_next(mode, after_tokens=2, retry_after=0)
    events: list[ModelEvent] = []
    with pytest.raises(ModelError) as failure:
        for event in claude(fake).stream([("user", "Hi")]):
            events.append(event)
    error = failure.value
    assert error.code == code
    assert str(error) == error.message and error.message.endswith(".")
    assert "Traceback" not in error.message and "{" not in error.message
    assert API_KEY not in error.message
    if mode in ("stream_error", "garbled", "drop"):  # the text before the failure was already streamed
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "The quick"
        assert error.retryable


@pytest.mark.parametrize("mode", ["stream_error", "drop", "garbled"])
def test_an_answer_that_fails_before_its_first_words_is_asked_again(
        fake: FakeAnthropic, mode: str) -> None:
    """The API may accept a request (200) and then send an ``overloaded`` error event before
    any text: nothing of the answer was given out, so it was safe to ask again, but the
    answer failed at once (an overload answered with a 529 status was retried)."""
    fake.fail_next(mode, after_tokens=0)
    text, _, result = split(list(claude(fake, max_retries=2).stream([("user", "Hi")])))
    assert text == REPLY and result.stop_reason == "end_turn"
    assert len(fake.requests) == 2


def test_an_answer_failing_before_its_first_words_is_asked_again_within_the_budget(
        fake: FakeAnthropic) -> None:
    fake.fail_next("stream_error", after_tokens=0, times=3)
    with pytest.raises(ModelError) as failure:
        list(claude(fake, max_retries=2).stream([("user", "Hi")]))
    assert failure.value.code == "overloaded" and len(fake.requests) == 3
    fake.fail_next("stream_error", after_tokens=0)
    with pytest.raises(ModelError):  # no retries allowed: none made
        list(claude(fake, max_retries=0).stream([("user", "Hi")]))
    assert len(fake.requests) == 4


def test_a_cancel_ends_the_wait_before_an_answer_is_asked_again(fake: FakeAnthropic) -> None:
    fake.fail_next("stream_error", after_tokens=0)
    cancel = threading.Event()
    events = claude(fake, max_retries=3).stream([("user", "Hi")], cancel=cancel)
    threading.Timer(0.1, cancel.set).start()  # during the wait of at least 0.375 s
    result = list(events)[-1]
    assert isinstance(result, ModelResult) and result.stop_reason == "cancelled"
    assert len(fake.requests) == 1


def test_an_answer_cut_off_after_its_stop_reason_is_whole(fake: FakeAnthropic) -> None:
    """`message_delta` carries the stop reason after the last text; an answer whose stream
    ended before `message_stop` was marked failed ("cut off") with all of its text."""
    fake.fail_next("drop_before_stop")
    text, _, result = split(list(claude(fake).stream([("user", "Hi")])))
    assert text == REPLY and result.stop_reason == "end_turn"


def test_a_connection_lost_after_message_stop_does_not_fail_the_finished_answer(
    fake: FakeAnthropic,
) -> None:
    """Reading on after ``message_stop`` (to hand the connection back to the pool) failed
    the whole answer as "connection lost in the middle of the answer"."""
    fake.fail_next("drop_after_stop")
    text, _, result = split(list(claude(fake).stream([("user", "Hi")])))
    assert text == REPLY
    assert result.stop_reason == "end_turn"


@pytest.mark.parametrize("text", [None, 7, ["a"]], ids=["null", "number", "list"])
def test_a_text_delta_without_text_is_an_unreadable_answer(fake: FakeAnthropic,
                                                           text: object) -> None:
    """A null text was streamed as the word "None"."""
    fake.extra_events = [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": text}})]
    with pytest.raises(ModelError) as failure:
        list(claude(fake).stream([("user", "Hi")]))
    assert failure.value.code == "bad_response"


def test_events_an_answer_does_not_need_are_skipped(fake: FakeAnthropic) -> None:
    fake.extra_events = [
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "thinking_delta", "thinking": "Hmm"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("an_event_from_the_future", {"type": "an_event_from_the_future", "x": [1]}),
    ]
    events = list(claude(fake).stream([("user", "Hi")]))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == fake.reply
    result = events[-1]
    assert isinstance(result, ModelResult) and result.stop_reason == "end_turn"


def test_an_unreachable_endpoint_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = AnthropicModel(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}", max_retries=0)
    with pytest.raises(ModelError) as failure:
        list(model.stream([("user", "Hi")]))
    assert failure.value.code == "connection"
    assert f"127.0.0.1:{port}" in failure.value.message


@contextlib.contextmanager
def canned_answers(status: int, body: bytes, content_type: str) -> Iterator[tuple[str, list[str]]]:
    """A server that answers every GET and POST with `status` and `body`: its URL, and the
    paths it was asked for."""
    asked: list[str] = []

    class Canned(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [404, 200])
def test_a_base_url_where_no_messages_api_answers_is_blamed_not_the_model(status: int) -> None:
    """Pointed at another server (here one that answers with a page), the chat said the
    model was not found and to check ANTHROPIC_MODEL; or, for a page that came with a 200,
    that the answer was cut off, and its log gave no reason."""
    page = b"<html><body>Not here</body></html>"
    with canned_answers(status, page, "text/html") as (url, _):
        model = AnthropicModel(api_key=API_KEY, max_retries=0, base_url=url)
        with pytest.raises(ModelError) as failure:
            list(model.stream([("user", "Hi")]))
    assert failure.value.code == "not_found"
    assert "ANTHROPIC_BASE_URL" in failure.value.message
    assert "ANTHROPIC_MODEL" not in failure.value.message


@pytest.mark.parametrize(("status", "body", "says"), [
    (401, b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}',
     "The Anthropic API key was rejected. Check ANTHROPIC_API_KEY."),
    (404, b'{"type":"error","error":{"type":"not_found_error","message":"model: claude-nope"}}',
     "The model 'claude-nope' was not found. Check ANTHROPIC_MODEL."),
    # A base URL ending in /v1 asks for /v1/v1/models/...: the API's 404 is not about the model.
    (404, b'{"type":"error","error":{"type":"not_found_error","message":"Not Found"}}',
     "The AI model's API found nothing at this address (Not Found). Check ANTHROPIC_BASE_URL"
     " (without /v1: the SDK adds it) and ANTHROPIC_MODEL ('claude-nope')."),
    # An Anthropic-compatible endpoint without the models API: nothing can be told.
    (404, b"<html><body>Not here</body></html>", None),
    (200, b'{"type":"model","id":"claude-nope","display_name":"Nope"}', None),
    # Not JSON: it warned that "the connection was lost in the middle of the answer".
    (200, b'{"type":"model", cut off', None),
])
def test_a_look_at_the_model_tells_what_would_fail_every_answer(
        status: int, body: bytes, says: str | None) -> None:
    """A rejected key or a mistyped model id showed only at the first prompt's answer."""
    content_type = "application/json" if body.startswith(b"{") else "text/html"
    with canned_answers(status, body, content_type) as (url, asked):
        model = AnthropicModel(api_key=API_KEY, model="claude-nope", max_retries=0, base_url=url)
        assert model.problem() == says
    assert asked == ["/v1/models/claude-nope"]


@pytest.mark.parametrize(("given", "env", "check"), [
    ("claude-nope", {}, "CHAT_AGENT_MODEL"),
    (None, {"ANTHROPIC_MODEL": "claude-nope"}, "ANTHROPIC_MODEL"),
])
def test_an_unknown_model_is_blamed_on_the_setting_that_named_it(
        given: str | None, env: dict[str, str], check: str) -> None:
    """The advice named ANTHROPIC_MODEL also for a model the app's CHAT_AGENT_MODEL (or the
    supervisor's --model) had named."""
    body = b'{"type":"error","error":{"type":"not_found_error","message":"model: claude-nope"}}'
    with canned_answers(404, body, "application/json") as (url, _):
        model = model_from_settings(given, api_key=API_KEY, base_url=url, env=env,
                                    name_setting="CHAT_AGENT_MODEL")
        assert isinstance(model, AnthropicModel)
        assert model.problem() == f"The model 'claude-nope' was not found. Check {check}."


def test_a_look_at_a_model_that_answers_slowly_is_inconclusive(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout says nothing of the answers to come: it was warned of as if they would fail."""
    monkeypatch.setattr(anthropic_model, "_PROBLEM_CHECK_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # takes connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert AnthropicModel(api_key=API_KEY, base_url=url, max_retries=0).problem() is None


def test_a_look_at_a_model_nothing_answers_for_says_so(fake: FakeAnthropic) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = AnthropicModel(api_key=API_KEY, base_url=f"http://127.0.0.1:{port}", max_retries=0)
    assert model.problem() == f"Could not connect to the AI model at http://127.0.0.1:{port}."
    assert claude(fake).problem() is None  # the fake serves no models API: inconclusive


def test_a_prompt_with_a_lone_surrogate_is_asked_with_a_replacement_character(
        fake: FakeAnthropic) -> None:
    """JSON's "\\ud800" escape is valid in a prompts stream, but no UTF-8 request can carry
    it: the request was never sent, and the chat said the connection had been lost."""
    text, _, result = split(list(claude(fake).stream([("user", "hi \ud800 there")])))
    assert text == REPLY and result.stop_reason == "end_turn"
    assert fake.requests[-1]["messages"] == [{"role": "user", "content": "hi \ufffd there"}]


def test_429_and_529_are_retried_then_the_answer_streams(fake: FakeAnthropic) -> None:
    fake.fail_next("429", retry_after=0.05)
    fake.fail_next("529")  # no retry-after: exponential backoff
    text, _, result = split(list(claude(fake, max_retries=3).stream([("user", "Hi")])))
    assert text == REPLY and result.stop_reason == "end_turn"
    assert len(fake.requests) == 3


def test_each_wait_to_ask_again_is_told_before_the_answer(fake: FakeAnthropic) -> None:
    """While a refused request waited to be sent again, the chat could only say that no
    words had come: a rate limit's minute looked like a dead agent."""
    fake.fail_next("429", retry_after=0.4)
    fake.fail_next("529")  # no retry-after: the second retry's backoff, 1 s less up to a quarter
    events = list(claude(fake, max_retries=3).stream([("user", "Hi")]))
    text, _, _ = split(events)
    assert text == REPLY
    rate_limited, overloaded = waits_in(events)
    assert rate_limited == ModelWait(
        "The AI model is receiving too many requests (rate limited).", "rate_limited", 0.4, 1, 3)
    assert (overloaded.reason, overloaded.code, overloaded.retry, overloaded.retries) == (
        "The AI model is overloaded right now.", "overloaded", 2, 3)
    assert 0.75 <= overloaded.delay_s <= 1.0


def test_a_wait_to_ask_again_after_a_failed_start_is_told_too(fake: FakeAnthropic) -> None:
    fake.fail_next("drop", after_tokens=0)  # accepted (200), then cut before any text
    events = list(claude(fake, max_retries=2).stream([("user", "Hi")]))
    assert split(events)[0] == REPLY
    [wait] = waits_in(events)
    assert (wait.reason, wait.code, wait.retry, wait.retries) == (
        "The connection to the AI model failed.", "connection", 1, 2)


def test_retries_stop_when_the_budget_is_spent(fake: FakeAnthropic) -> None:
    fake.fail_next("529", retry_after=0.01, times=3)
    with pytest.raises(ModelError) as failure:
        list(claude(fake, max_retries=2).stream([("user", "Hi")]))
    assert failure.value.code == "overloaded" and len(fake.requests) == 3


def test_one_budget_covers_both_kinds_of_retry(fake: FakeAnthropic) -> None:
    """A refused request (529) is sent again, and so is an answer that failed before its first
    words (200, then an `overloaded` event); each kind had a budget of its own, renewed for
    every new ask: with three retries, 16 requests were made and the page read "retry 1 of
    3" four times."""
    for _ in range(3):
        fake.fail_next("529", retry_after=0.01)
        fake.fail_next("stream_error", after_tokens=0)
    events: list[ModelEvent] = []
    with pytest.raises(ModelError) as failure:
        for event in claude(fake, max_retries=3).stream([("user", "Hi")]):
            events.append(event)
    assert failure.value.code == "overloaded" and len(fake.requests) == 4
    assert [(w.code, w.retry, w.retries) for w in waits_in(events)] == [
        ("overloaded", 1, 3), ("overloaded", 2, 3), ("overloaded", 3, 3)]


class _SlowSecondOpening:
    """Stands in for the SDK's `messages.with_streaming_response.create`: the first request
    fails to connect, the second answers after a while (the agent has stopped waiting)."""

    def __init__(self) -> None:
        self.calls = 0
        self.opened: list[Any] = []

    def create(self, **_request: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise anthropic.APIConnectionError(request=cast(Any, None))  # no request to show
        time.sleep(0.6)
        response = _Closable()
        self.opened.append(response)
        return contextlib.nullcontext(response)


class _Closable:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_response_that_comes_after_the_caller_stopped_waiting_is_closed() -> None:
    """An agent that cannot write a wait to its stream stops reading the answer there. The
    request sent again meanwhile answered later, and its connection was never closed: one
    leaked from the SDK's pool per such answer."""
    model = AnthropicModel(api_key=API_KEY, base_url="http://127.0.0.1:9", max_retries=2)
    opening = _SlowSecondOpening()
    model.client = cast(Any, types.SimpleNamespace(
        messages=types.SimpleNamespace(with_streaming_response=opening)))
    cancel = threading.Event()
    events = cast(Generator[ModelEvent, None, None], model.stream([("user", "Hi")], cancel=cancel))
    assert isinstance(next(events), ModelWait)
    time.sleep(0.7)  # the wait (at most 0.5 s) is over: the second request is under way
    cancel.set()
    events.close()
    wait_until(lambda: bool(opening.opened) and opening.opened[0].closed, timeout=5,
               what="the late response to be closed")
    assert opening.calls == 2


@pytest.mark.parametrize(("mode", "headers", "requests"), [
    ("401", {}, 1),                                 # not a status worth retrying
    ("529", {"x-should-retry": "false"}, 1),        # the server says no
    ("401", {"x-should-retry": "true"}, 2),         # the server says yes
])
def test_the_servers_x_should_retry_header_wins(
        fake: FakeAnthropic, mode: str, headers: dict[str, str], requests: int) -> None:
    fake.fail_next(mode, headers=headers, retry_after=0.01)
    events = []
    with contextlib.suppress(ModelError):
        events = list(claude(fake, max_retries=3).stream([("user", "Hi")]))
    assert len(fake.requests) == requests
    assert bool(events) == (requests == 2)


@pytest.mark.parametrize("headers", [
    {"retry-after-ms": "20", "retry-after": "30"},  # milliseconds win over seconds
    {"retry-after": "3600"},                        # over a minute: backoff instead
])
def test_the_wait_before_a_retry_is_the_one_asked_for_up_to_a_minute(
        fake: FakeAnthropic, headers: dict[str, str]) -> None:
    fake.fail_next("429", headers=headers)
    started = time.monotonic()
    text, _, _ = split(list(claude(fake, max_retries=1).stream([("user", "Hi")])))
    assert text == REPLY and time.monotonic() - started < 5.0


def test_retry_after_is_read_as_milliseconds_seconds_or_an_http_date() -> None:
    in_ten_minutes = email.utils.formatdate(time.time() + 600, usegmt=True)
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert 595 < (retry_after({"retry-after": in_ten_minutes}) or 0) <= 600
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def test_a_lost_connection_is_retried() -> None:
    # A server that accepts and hangs up at once: the SDK raises APIConnectionError each time.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        accepted: list[socket.socket] = []

        def hang_up() -> None:
            while len(accepted) < 3:
                connection, _ = listener.accept()
                accepted.append(connection)
                connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        model = AnthropicModel(api_key=API_KEY, base_url=f"http://127.0.0.1:"
                               f"{listener.getsockname()[1]}", max_retries=2)
        with pytest.raises(ModelError) as failure:
            list(model.stream([("user", "Hi")]))
        assert failure.value.code == "connection" and len(accepted) == 3


# -- Anthropic: cancellation -----------------------------------------------------------------------


def set_from_another_thread(event: threading.Event) -> None:
    threading.Thread(target=event.set).start()


def test_cancel_mid_stream_stops_within_a_second_and_closes_the_stream() -> None:
    with FakeAnthropic(LONG_REPLY, tokens_per_second=20) as fake:
        cancel = threading.Event()
        deltas, result, cancelled_at, text = 0, None, 0.0, ""
        for event in claude(fake).stream([("user", "Talk for a while")], cancel=cancel):
            if isinstance(event, TextDelta):
                deltas += 1
                text += event.text
                if deltas == 3:
                    cancelled_at = time.monotonic()
                    set_from_another_thread(cancel)
            elif isinstance(event, ModelResult):
                result = event
        assert result is not None and result.cancelled and result.stop_reason == "cancelled"
        assert time.monotonic() - cancelled_at < 1.0
        assert deltas < 10
        # What was streamed, estimated: the count so far comes only with the stop reason, and
        # `message_start`'s placeholder (1) was reported.
        assert result.output_tokens == estimate_tokens(text) > 1
        assert fake.client_disconnected.wait(5.0), "the HTTP stream was not closed"


def test_cancel_while_the_model_sends_nothing() -> None:
    with FakeAnthropic(LONG_REPLY, tokens_per_second=200) as fake:
        fake.fail_next("stall", after_tokens=2)
        cancel = threading.Event()
        stream = claude(fake).stream([("user", "Hi")], cancel=cancel)
        assert isinstance(next(stream), TextDelta) and isinstance(next(stream), TextDelta)
        started = time.monotonic()
        set_from_another_thread(cancel)
        rest = list(stream)
        assert len(rest) == 1 and isinstance(rest[0], ModelResult) and rest[0].cancelled
        assert time.monotonic() - started < 1.0
        assert fake.client_disconnected.wait(5.0)


def test_cancel_while_waiting_to_retry() -> None:
    with FakeAnthropic(REPLY) as fake:
        fake.fail_next("429", retry_after=30)
        cancel = threading.Event()
        events = claude(fake, max_retries=2).stream([("user", "Hi")], cancel=cancel)
        wait = next(events)
        assert isinstance(wait, ModelWait) and wait.delay_s == 30
        started = time.monotonic()
        set_from_another_thread(cancel)
        assert list(events) == [ModelResult("cancelled", 0, 0, DEFAULT_ANTHROPIC_MODEL)]
        assert time.monotonic() - started < 1.0
        # The wait for the retry ends with the cancel: no retried request, no thread left.
        assert not opening_threads_after(1.0)
        assert len(fake.requests) == 1


def opening_threads_after(seconds: float) -> list[threading.Thread]:
    """The model's request-opening threads still alive after waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [t for t in threading.enumerate() if t.name.startswith("anthropic-open")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def test_abandoning_the_iterator_closes_the_http_stream() -> None:
    with FakeAnthropic(LONG_REPLY, tokens_per_second=50) as fake:
        stream = claude(fake).stream([("user", "Hi")])
        next(stream)
        stream.close()  # type: ignore[attr-defined]
        assert fake.client_disconnected.wait(5.0)


def test_closing_a_finished_stream_late_leaves_the_next_stream_on_its_connection_alone(
) -> None:
    # The SDK returns a finished stream's connection to its pool; the next stream reuses it.
    # Closing the first iterator only then (as garbage collection does) must not shut it.
    with FakeAnthropic(LONG_REPLY, tokens_per_second=200) as fake:
        model = claude(fake)
        first = model.stream([("user", "One")])
        first_events = []
        for event in first:
            first_events.append(event)
            if isinstance(event, ModelResult):
                break
        assert split(first_events)[2].stop_reason == "end_turn"
        second = model.stream([("user", "Two")])
        assert isinstance(next(second), TextDelta)
        first.close()  # type: ignore[attr-defined]
        text, _, result = split(list(second))
        assert result.stop_reason == "end_turn" and text.endswith("word299")
        assert not fake.client_disconnected.is_set()


# -- demo model --------------------------------------------------------------------------------------


def test_demo_streams_a_labelled_reply_about_the_prompt_at_the_set_rate() -> None:
    demo = DemoModel(tokens_per_second=200, first_token_latency=0)
    started = time.monotonic()
    text, deltas, result = split(list(demo.stream([("user", "How do durable streams work?")])))
    elapsed = time.monotonic() - started
    assert text.startswith(DEMO_LABEL)
    assert "How do durable streams work?" in text
    assert "\n- **Message:** 1 of this conversation\n" in text  # Markdown, line breaks kept
    assert text.endswith("```")
    assert len(deltas) == len(text.split()) and result.output_tokens == len(deltas)
    assert result.input_tokens > 0 and result.stop_reason == "end_turn"
    assert result.model == "demo"
    assert elapsed >= (len(deltas) - 1) / 200 * 0.9  # paced, not all at once


def test_demo_counts_the_prompts_words_with_digit_grouping() -> None:
    demo = DemoModel(tokens_per_second=0, first_token_latency=0)
    text, _, _ = split(list(demo.stream([("user", "word " * 128_000)])))
    assert "**Words:** 128,000" in text  # "128000 words" read poorly


def test_demo_knows_the_history() -> None:
    demo = DemoModel(tokens_per_second=0, first_token_latency=0)
    turns = [("user", "Remember the word teapot."), ("assistant", "OK."), ("user", "Which word?")]
    text, _, _ = split(list(demo.stream(turns)))
    assert "Remember the word teapot." in text and "Which word?" in text


def test_demo_cancel_from_another_thread() -> None:
    demo = DemoModel(tokens_per_second=5, first_token_latency=0)
    cancel = threading.Event()
    stream = demo.stream([("user", "Hi")], cancel=cancel)
    assert isinstance(next(stream), TextDelta)
    started = time.monotonic()
    set_from_another_thread(cancel)
    rest = list(stream)
    assert len(rest) == 1 and isinstance(rest[0], ModelResult)
    assert rest[0].cancelled and rest[0].output_tokens == 1
    assert time.monotonic() - started < 0.5


def test_a_demo_pace_of_almost_nothing_streams_and_can_be_cancelled() -> None:
    """A tiny positive pace passed the settings' checks and made a wait too long for a
    timer: the answer failed with OverflowError. It is at most a word a minute."""
    demo = DemoModel(tokens_per_second=1e-12, first_token_latency=0)
    cancel = threading.Event()
    stream = demo.stream([("user", "Hi")], cancel=cancel)
    assert isinstance(next(stream), TextDelta)
    threading.Timer(0.2, cancel.set).start()  # once the stream waits for its next word
    rest = list(stream)
    assert len(rest) == 1 and isinstance(rest[0], ModelResult) and rest[0].cancelled


# -- choosing a model, and turns ------------------------------------------------------------------


def test_without_a_key_the_demo_is_used_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="agent_actors.models"):
        model = model_from_settings(env={"ANTHROPIC_MODEL": "claude-x"})
    assert isinstance(model, DemoModel)
    assert "demo" in caplog.text and "ANTHROPIC_API_KEY" in caplog.text


@pytest.mark.parametrize("blank", ["", "  ", "\n"])
def test_a_blank_key_is_said_to_be_blank_not_unset(
    blank: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """`ANTHROPIC_API_KEY="$(cat key-file)"` with an empty or missing file: the log said to
    set a variable the user had set, and nothing about why Claude was not used."""
    with caplog.at_level(logging.INFO, logger="agent_actors.models"):
        assert isinstance(model_from_settings(env={"ANTHROPIC_API_KEY": blank}), DemoModel)
        assert isinstance(model_from_settings("claude-x", env={"ANTHROPIC_API_KEY": blank}),
                          DemoModel)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["ANTHROPIC_API_KEY is set but blank; using the demo model"] * 2
    assert "set ANTHROPIC_API_KEY to use Claude" not in caplog.text


def test_with_a_key_claude_is_used_with_model_and_base_url_from_the_environment(
    fake: FakeAnthropic, caplog: pytest.LogCaptureFixture,
) -> None:
    # The key as read from a file, newline included: no header may carry it, and every
    # answer failed as "Could not connect to the AI model".
    env = {"ANTHROPIC_API_KEY": f"{API_KEY}\n", "ANTHROPIC_MODEL": "claude-from-env",
           "ANTHROPIC_BASE_URL": fake.url}
    with caplog.at_level(logging.INFO, logger="agent_actors.models"):
        model = model_from_settings(env=env)
    assert isinstance(model, AnthropicModel) and model.model == "claude-from-env"
    assert "anthropic:claude-from-env" in caplog.text and API_KEY not in caplog.text
    split(list(model.stream([("user", "Hi")])))
    assert fake.requests[0]["model"] == "claude-from-env"


def test_the_sdk_http_client_logs_only_its_warnings_unless_debugging(
    fake: FakeAnthropic, caplog: pytest.LogCaptureFixture,
) -> None:
    """The SDK's HTTP client logged "HTTP Request: POST .../v1/messages" at INFO for every
    answer, in the supervisor's and the web app's logs."""
    model = model_from_settings(env={"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.url})
    try:
        for level, logged in [(logging.INFO, False), (logging.DEBUG, True)]:
            caplog.clear()
            caplog.set_level(level)
            for name in ("httpx", "httpx2"):
                logging.getLogger(name).setLevel(logging.NOTSET)
            quiet_http_client_logs()
            split(list(model.stream([("user", "Hi")])))
            assert ("HTTP Request: POST" in caplog.text) is logged, (level, caplog.text)
    finally:
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_explicit_settings_win_and_demo_can_be_forced(caplog: pytest.LogCaptureFixture) -> None:
    env = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_MODEL": "claude-from-env"}
    chosen = model_from_settings("claude-from-flag", env=env)
    assert isinstance(chosen, AnthropicModel) and chosen.model == "claude-from-flag"
    assert chosen.base_url == "https://api.anthropic.com"
    with caplog.at_level(logging.INFO, logger="agent_actors.models"):
        assert isinstance(model_from_settings("demo", env=env), DemoModel)
    # Not "set ANTHROPIC_API_KEY to use Claude": it is set.
    assert "model: demo (offline, 30 tokens/s); as asked (the API key is not used)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agent_actors.models"):
        model_from_settings("demo", env={}, demo_tokens_per_second=2.5)
    assert "model: demo (offline, 2.5 tokens/s)" in caplog.text  # was "2 tokens/s"


def test_normalize_turns() -> None:
    assert normalize_turns([("assistant", "hello"), ("user", "a"), ("user", ""),
                            ("user", "b")]) == [Turn("user", "a\n\nb")]
    with pytest.raises(ValueError):
        normalize_turns([("user", "a"), ("assistant", "b")])
    with pytest.raises(ValueError):
        normalize_turns([("system", "a")])
