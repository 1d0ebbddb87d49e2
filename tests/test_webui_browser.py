"""The chat in a real headless Chromium, against the app run by `flask run` on a real port.

The model is `tests.fake_anthropic.FakeAnthropic` at a chosen token rate, reached by the real
Anthropic SDK inside the app's embedded supervisor; nothing else is faked. Every wait is on
DOM state, a log line or a stream's content, never a sleep. What the page showed over time comes
from a MutationObserver recorder (`tests.support.browser`), so "the answer grew token by token"
and "no text was ever shown twice" are checked on every DOM change, not on samples.

Screenshots go to ``test-artifacts/screenshots/``; with ``UPDATE_SCREENSHOTS=1`` the desktop
chat screenshot is also copied to ``docs/screenshot-chat.png`` (the README shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, FloatRect, Locator, Page, Request, Route, expect, sync_playwright

from agent_actors.streams_client import StreamsClient
from tests.fake_anthropic import FakeAnthropic
from tests.support import (
    ARTIFACTS_DIR,
    REPO_ROOT,
    ServerProcess,
    start_reference_server,
    start_streams_server,
)
from tests.support.agents import ChatClient, wait_until
from tests.support.browser import (
    RECORDER_JS,
    LayoutCounter,
    launch_chromium,
    turn_for,
    turn_log,
    unsafe_nodes,
)
from tests.support.webapp import ScriptedReplies, read_json_stream, start_chat_app

pytestmark = pytest.mark.timeout(120)

SCREENSHOTS = ARTIFACTS_DIR / "screenshots"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "screenshot-chat.png"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 375, "height": 812}
TIMEOUT_MS = 20_000

NewContext = Callable[..., BrowserContext]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def replies() -> ScriptedReplies:
    return ScriptedReplies()


@pytest.fixture(scope="module")
def fake_model(replies: ScriptedReplies) -> Iterator[FakeAnthropic]:
    with FakeAnthropic(reply=replies, tokens_per_second=20) as fake:
        yield fake


@pytest.fixture
def model(fake_model: FakeAnthropic) -> FakeAnthropic:
    """The module's fake model, back at its default token rate and thinking time."""
    fake_model.tokens_per_second = 20
    fake_model.first_token_delay = 0.0
    fake_model.client_disconnected.clear()
    return fake_model


@pytest.fixture(scope="module")
def chat_app(tmp_path_factory: pytest.TempPathFactory, fake_model: FakeAnthropic) -> Iterator[ServerProcess]:
    """One app (`flask run`) shared by the tests that do not stop it."""
    server = start_chat_app(tmp_path_factory.mktemp("chat-app"), model_url=fake_model.url)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[NewContext]:
    """Make browser contexts (separate profiles) with the recorder; fails the test on any
    uncaught page error; closes them afterwards."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def make(**options: Any) -> BrowserContext:
        context = browser.new_context(viewport=options.pop("viewport", DESKTOP), **options)
        context.set_default_timeout(TIMEOUT_MS)
        context.add_init_script(RECORDER_JS)
        context.on("page", lambda page: page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}")))
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


# -- helpers -------------------------------------------------------------------------------------


def open_chat(context: BrowserContext, url: str) -> Page:
    """A new tab on `url`, once the app says it has loaded what it shows."""
    page = context.new_page()
    page.goto(url)
    wait_ready(page)
    return page


def wait_ready(page: Page) -> None:
    expect(page.get_by_test_id("app")).to_have_attribute("data-ready", "true")


def send_prompt(page: Page, text: str) -> str:
    """Type `text` into the composer and press Enter; the new turn's prompt id."""
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")
    turn = turn_for(page, text)
    expect(turn).to_have_count(1)
    prompt_id = turn.get_attribute("data-prompt-id")
    assert prompt_id
    return prompt_id


def wait_state(page: Page, prompt: str, state: str, timeout: float = TIMEOUT_MS) -> None:
    expect(turn_for(page, prompt)).to_have_attribute("data-state", state, timeout=timeout)


def answer_text(page: Page, prompt: str) -> str:
    return norm(turn_for(page, prompt).get_by_test_id("answer-text").text_content() or "")


def wait_words(page: Page, prompt_id: str, count: int) -> None:
    """Until the answer of `prompt_id` shows at least `count` words."""
    page.wait_for_function(
        """([id, count]) => {
             const turn = document.querySelector(`[data-testid="turn"][data-prompt-id="${id}"]`);
             const text = turn?.querySelector('[data-testid="answer-text"]')?.textContent ?? "";
             return text.trim().split(/\\s+/).filter(Boolean).length >= count;
           }""",
        arg=[prompt_id, count],
    )


def queue_behind_an_answer(page: Page, replies: ScriptedReplies, first: str, reply: str,
                           queued: str, shown: int) -> str:
    """Send `first` (answered with `reply`) and, once `shown` words of its answer are on the
    page, `queued`, which then waits for that answer; the first prompt's id."""
    replies.set(first, reply)
    first_id = send_prompt(page, first)
    wait_words(page, first_id, shown)
    send_prompt(page, queued)
    wait_state(page, queued, "queued")
    return first_id


def start_long_answer(page: Page, replies: ScriptedReplies, text: str, reply: str,
                      shown: int) -> tuple[str, str]:
    """Send a prompt (`text`, made unique) whose scripted `reply` is long, and wait until
    `shown` words of the answer are on the page; the prompt and its id."""
    prompt = unique(text)
    replies.set(prompt, reply)
    prompt_id = send_prompt(page, prompt)
    wait_words(page, prompt_id, shown)
    return prompt, prompt_id


def conversation_id(page: Page) -> str:
    match = re.search(r"#/c/([A-Za-z0-9_-]+)$", page.url)
    assert match, f"no conversation in the URL {page.url}"
    return match.group(1)


def norm(text: str) -> str:
    return " ".join(text.split())


def answered_conversation(page: Page, text: str) -> tuple[str, str]:
    """Send `text` (made unique) and wait for its answer; the prompt and the conversation."""
    prompt = unique(text)
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    return prompt, conversation_id(page)


def words(label: str, count: int) -> str:
    """A reply of `count` distinct words, so any duplicated or lost word changes the text."""
    return " ".join(f"{label}{i}" for i in range(1, count + 1)) + "."


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:6]}]"


def assert_grew_cleanly(log: list[dict[str, Any]], reply: str) -> list[str]:
    """Every text shown was a prefix of the full reply; returns the distinct partial texts."""
    full = norm(reply)
    partial: list[str] = []
    for entry in log:
        text = norm(entry["text"])
        assert full.startswith(text), f"shown text is not a prefix of the reply: {text!r}"
        if text and text != full and text not in partial:
            partial.append(text)
    return partial


def prompt_messages(app_url: str, cid: str) -> list[dict[str, Any]]:
    return read_json_stream(app_url, f"conversations/{cid}/prompts")


def response_messages(app_url: str, cid: str) -> list[dict[str, Any]]:
    return read_json_stream(app_url, f"conversations/{cid}/responses")


def streamed_answer(app_url: str, cid: str, prompt_id: str) -> str:
    """The answer as the responses stream has it (the last attempt's chunks)."""
    messages = [m for m in response_messages(app_url, cid) if m.get("promptId") == prompt_id]
    attempt = max((m.get("attempt", 0) for m in messages), default=0)
    return "".join(m["content"] for m in messages if m["type"] == "chunk" and m.get("attempt", 0) == attempt)


def assert_fills_the_window(page: Page) -> None:
    """The chat reaches the bottom of the window (the composer is not floating above a gap)."""
    viewport = page.viewport_size
    box = page.locator(".chat-layout").bounding_box()
    assert viewport and box, "no layout box"
    assert abs(box["y"] + box["height"] - viewport["height"]) <= 1, (box, viewport)


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    return path


# -- tests ---------------------------------------------------------------------------------------


def test_tokens_stream_into_the_answer(chat_app: ServerProcess, model: FakeAnthropic,
                                       replies: ScriptedReplies, new_context: NewContext) -> None:
    page = open_chat(new_context(), chat_app.url)
    prompt, reply = unique("Count to thirty for me"), words("token", 30)
    replies.set(prompt, reply)
    prompt_id = send_prompt(page, prompt)

    wait_state(page, prompt, "done")
    assert answer_text(page, prompt) == norm(reply)
    log = turn_log(page, prompt_id)
    partial = assert_grew_cleanly(log, reply)
    assert len(partial) >= 3, f"the answer did not grow over several renders: {partial}"
    states = [e["state"] for e in log]
    assert "streaming" in states and states[-1] == "done", states
    assert states.index("streaming") < states.index("done")
    expect(turn_for(page, prompt).get_by_test_id("answer-meta")).to_contain_text("claude-fake-1")
    cid = conversation_id(page)
    assert streamed_answer(chat_app.url, cid, prompt_id) == reply
    expect(page.get_by_test_id("conversation-title")).to_have_text(prompt)


@pytest.mark.parametrize("streams", ["the-app's-own", "another-server"])
def test_the_chat_works_behind_a_streams_token(streams: str, tmp_path: Path, model: FakeAnthropic,
                                              replies: ScriptedReplies,
                                              new_context: NewContext) -> None:
    """A token on the streams API (`CHAT_STREAMS_AUTH_TOKEN`; `--auth-token` on a standalone
    server the page reaches on another origin): the page sends it on every request, live
    reads included, and a second tab follows the answer live. Without it a request gets 401."""
    token = f"tok-{uuid.uuid4().hex}"
    config = {"STREAMS_AUTH_TOKEN": token}
    server = app = None
    try:
        if streams == "another-server":
            server = start_streams_server(tmp_path / "streams", extra_args=["--auth-token", token])
            root = f"{server.url}/v1/stream"
            config.update(STREAMS_BROWSER_URL=root, AGENT_STREAMS_URL=root, STREAMS_MEMORY="true")
        app = start_chat_app(tmp_path / "app", model_url=model.url, config=config)
        root = config.get("STREAMS_BROWSER_URL", f"{app.url}/v1/stream")
        context = new_context()
        first = open_chat(context, app.url)
        prompt, reply = unique("Behind a token"), words("guarded", 40)
        replies.set(prompt, reply)
        model.tokens_per_second = 10
        send_prompt(first, prompt)
        second = context.new_page()
        second.goto(first.url)
        wait_ready(second)
        wait_state(second, prompt, "streaming")
        wait_state(second, prompt, "done", timeout=30_000)
        wait_state(first, prompt, "done")
        assert answer_text(first, prompt) == answer_text(second, prompt) == norm(reply)
        refused = requests.get(f"{root}/conversations", params={"offset": "-1"}, timeout=10)
        assert refused.status_code == 401, refused.text
        kept = requests.get(f"{root}/conversations", params={"offset": "-1"}, timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
        assert prompt in kept.text
    finally:
        for process in (app, server):
            if process is not None:
                process.terminate()


def test_reload_mid_answer_continues_one_clean_answer(chat_app: ServerProcess, model: FakeAnthropic,
                                                      replies: ScriptedReplies,
                                                      new_context: NewContext) -> None:
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    reply = words("story", 60)
    prompt, prompt_id = start_long_answer(page, replies, "Tell me a long story", reply, 4)
    before = turn_log(page, prompt_id)

    page.reload()
    wait_ready(page)
    wait_state(page, prompt, "done", timeout=30_000)

    after = turn_log(page, prompt_id)
    assert answer_text(page, prompt) == norm(reply)
    assert page.get_by_test_id("turn").count() == 1
    assert before[-1]["state"] == "streaming", before
    assert_grew_cleanly(before, reply)
    resumed = assert_grew_cleanly(after, reply)
    shown_before = len(norm(before[-1]["text"]))
    assert resumed and any(e["state"] == "streaming" and len(norm(e["text"])) > shown_before
                           for e in after), "the answer did not continue live after the reload"
    assert streamed_answer(chat_app.url, conversation_id(page), prompt_id) == reply


def test_pages_stay_in_sync(chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
                            new_context: NewContext) -> None:
    tabs_context, other_context = new_context(), new_context()
    first = open_chat(tabs_context, chat_app.url)
    opening = unique("Hello everyone")
    send_prompt(first, opening)
    wait_state(first, opening, "done")
    url = f"{chat_app.url}/#/c/{conversation_id(first)}"
    pages = [first, open_chat(tabs_context, url), open_chat(tabs_context, url), open_chat(other_context, url)]
    for page in pages[1:]:
        wait_state(page, opening, "done")

    model.tokens_per_second = 15
    prompt, reply = unique("What do all tabs see?"), words("sync", 40)
    replies.set(prompt, reply)
    prompt_id = send_prompt(pages[2], prompt)
    for page in pages:
        wait_state(page, prompt, "done")
    for index, page in enumerate(pages):
        assert answer_text(page, prompt) == norm(reply), f"page {index}"
        assert page.get_by_test_id("turn").count() == 2, f"page {index}"
        partial = assert_grew_cleanly(turn_log(page, prompt_id), reply)
        assert len(partial) >= 2, f"page {index} did not see the answer stream in: {partial}"


def test_stop_button_cancels_a_streaming_answer(chat_app: ServerProcess, model: FakeAnthropic,
                                                replies: ScriptedReplies,
                                                new_context: NewContext) -> None:
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    reply = words("item", 200)
    prompt, prompt_id = start_long_answer(page, replies, "Recite a very long list", reply, 3)

    stop = page.get_by_test_id("stop-button")
    expect(stop).to_be_visible()
    stop.click()
    wait_state(page, prompt, "cancelled")

    text = answer_text(page, prompt)
    assert text and norm(reply).startswith(text) and len(text) < len(norm(reply)) // 2, text
    assert_grew_cleanly(turn_log(page, prompt_id), reply)
    expect(stop).to_be_hidden()
    expect(turn_for(page, prompt).get_by_test_id("answer-meta")).to_contain_text("Stopped")
    expect(turn_for(page, prompt).get_by_test_id("retry")).to_be_visible()  # the answer, afresh
    assert model.client_disconnected.wait(10), "the model's stream was not closed after stop"
    cid = conversation_id(page)
    # It names the attempt on the screen (see the test of a Stop pressed while the server is away).
    assert {"type": "cancel", "promptId": prompt_id, "attempt": 0} in [
        {k: m.get(k) for k in ("type", "promptId", "attempt")}
        for m in prompt_messages(chat_app.url, cid)]
    assert norm(streamed_answer(chat_app.url, cid, prompt_id)) == text


def test_bold_and_code_left_open_by_an_answer_being_written_show_closed(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """Until its closing marks came, a bold phrase or code span being written showed its
    opening marks as text ("**Before that you"), and an answer stopped there kept them. A
    finished answer is left as written: marks it never closed are text."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    reply = ("Here is **what you asked before this** and then `a small piece of code` and "
             + words("tail", 60))
    prompt, prompt_id = start_long_answer(page, replies, "Marks left open", reply, 8)
    answer = turn_for(page, prompt).get_by_test_id("answer-text")
    expect(answer.locator("strong")).to_have_text("what you asked before this")
    expect(answer.locator("code")).to_have_text("a small piece of code")
    page.get_by_test_id("stop-button").click()
    wait_state(page, prompt, "cancelled")
    shown = [entry["text"] for entry in turn_log(page, prompt_id)]
    assert any("Here is what you" in text and "this" not in text for text in shown), shown
    assert not [text for text in shown if "*" in text or "`" in text], shown

    unclosed = unique("A bold never closed")
    replies.set(unclosed, "Ends with **an open mark")
    model.tokens_per_second = 200
    send_prompt(page, unclosed)
    wait_state(page, unclosed, "done")
    assert answer_text(page, unclosed) == "Ends with **an open mark"


def test_escape_stops_the_answer_wherever_the_focus_is_in_the_conversation(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """It did only from the message box: after a click in the messages, nothing."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    prompt, _ = start_long_answer(page, replies, "Go on for a while", words("item", 200), 3)
    page.locator("#main").focus()  # as a click in the messages leaves it
    page.keyboard.press("Escape")
    wait_state(page, prompt, "cancelled")


def test_stop_cancels_the_answer_in_progress_not_the_prompts_waiting_their_turn(
    chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
    new_context: NewContext,
) -> None:
    """Stop used to cancel every unfinished prompt: a question typed while an answer
    streamed was marked stopped and never answered. Meanwhile that question says it waits."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    first, first_reply = unique("Recite an endless list"), words("item", 200)
    queued, queued_reply = unique("And then a short one"), words("short", 5)
    replies.set(first, first_reply)
    replies.set(queued, queued_reply)
    first_id = send_prompt(page, first)
    wait_words(page, first_id, 3)
    send_prompt(page, queued)
    # It shows it waits its turn, where it used to show "Thinking…" like the answer above.
    wait_state(page, queued, "queued")
    expect(turn_for(page, queued)).to_contain_text("Waiting for the answer above")

    page.get_by_test_id("stop-button").click()
    wait_state(page, first, "cancelled")
    wait_state(page, queued, "done", timeout=30_000)
    assert answer_text(page, queued) == norm(queued_reply)
    cancelled = [m.get("promptId") for m in prompt_messages(chat_app.url, conversation_id(page))
                 if m.get("type") == "cancel"]
    assert cancelled == [first_id]


def test_a_prompt_of_characters_the_agents_count_as_blank_is_not_sent(
    chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext,
) -> None:
    """JavaScript's trim keeps U+001C-U+001F and U+0085, Python's strip (the agents') does
    not: such a prompt was sent, failed as empty, and offered a Try again that could only
    fail again. Zero-width spaces and joiners, which neither trims, sent an empty bubble
    that the model was asked about. A prompt is otherwise sent as typed: the first line's
    indentation (pasted code) was trimmed away. Send is offered only when there is
    something to send: it stayed enabled on a blank message and did nothing."""
    page = open_chat(new_context(), chat_app.url)
    box = page.get_by_test_id("composer-input")
    send_button = page.get_by_test_id("send-button")
    expect(send_button).to_be_disabled()
    for blank in ("\x1f \x85\x1c", "\u200b\u200b", "\u200d \ufeff\u2060",
                  "\u200e\u00ad \u3164\ufe0f\U000e0041"):
        box.fill(blank)
        expect(send_button).to_be_disabled()
        box.press("Enter")
        expect(box).to_have_value(blank)  # kept, as a blank message is
        # Enter on a box that looks empty says why nothing was sent.
        expect(page.get_by_test_id("composer-error")).to_have_text(
            "Nothing to send: the message holds only spaces, line breaks or invisible characters.")
    box.fill("a draft")
    expect(page.get_by_test_id("composer-error")).to_be_hidden()
    expect(send_button).to_be_enabled()
    page.reload()
    wait_ready(page)
    expect(send_button).to_be_enabled()  # the draft was put back
    box.fill("")
    expect(send_button).to_be_disabled()
    box.press("Enter")  # an empty box: nothing to say
    expect(page.get_by_test_id("composer-error")).to_be_hidden()
    code = unique("    if asked:") + "\n        return 1\n    return 2"
    replies.set(code, "An answer.")
    box.fill(f"\n \n\u200b\n{code}\n\u200d\n\n")
    box.press("Enter")
    expect(send_button).to_be_disabled()  # the message box was emptied by sending
    wait_state(page, code.strip(), "done")
    cid = conversation_id(page)
    sent = [m.get("content") for m in prompt_messages(chat_app.url, cid)
            if m.get("type") == "prompt"]
    assert sent == [code]
    titles = [m.get("title") for m in read_json_stream(chat_app.url, "conversations")
              if m.get("id") == cid and m.get("type") == "conversation"]
    assert titles == [code.split("\n")[0].strip()]


def test_the_writes_of_a_message_do_not_show_as_failed_requests(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Every PUT and POST whose answer the page had no use for was left unread, and the
    browser cancelled it: its developer tools listed each as failed (net::ERR_ABORTED)."""
    page = open_chat(new_context(), chat_app.url)
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(
        f"{request.method} {request.url}: {request.failure}") if request.method != "GET" else None)
    prompt = unique("Nothing cancelled")
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    page.wait_for_timeout(500)  # a cancel comes once the response is collected
    assert failed == []


def test_on_a_touch_screen_enter_starts_a_new_line_and_send_sends(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """A phone's keyboard has no Shift+Enter, and Enter sent the message: a prompt of more
    than one line could only be pasted. On a touch screen Enter now starts a new line and
    the Send button sends; Ctrl+Enter sends on every device."""
    phone = open_chat(new_context(viewport=PHONE, is_mobile=True, has_touch=True), chat_app.url)
    box = phone.get_by_test_id("composer-input")
    expect(box).to_have_attribute("enterkeyhint", "enter")
    expect(phone.get_by_test_id("composer-hint")).to_contain_text("Enter for a new line")
    first_line = unique("A first line")
    box.fill(first_line)
    box.press("Enter")
    box.press_sequentially("and a second")
    prompt = f"{first_line}\nand a second"
    expect(box).to_have_value(prompt)  # not sent
    replies.set(prompt, "Two lines read.")
    phone.get_by_test_id("send-button").tap()
    expect(box).to_have_value("")
    expect(box).to_be_focused()  # the keyboard stays for the next message
    expect(phone.get_by_test_id("turn")).to_have_attribute("data-state", "done")
    assert [m.get("content") for m in prompt_messages(chat_app.url, conversation_id(phone))
            if m.get("type") == "prompt"] == [prompt]
    box.fill(unique("Sent with Ctrl+Enter"))
    box.press("Control+Enter")
    expect(box).to_have_value("")

    desktop = open_chat(new_context(), chat_app.url)
    box = desktop.get_by_test_id("composer-input")
    expect(box).to_have_attribute("enterkeyhint", "send")
    expect(desktop.get_by_test_id("composer-hint")).to_contain_text("Enter to send")
    box.fill(unique("Sent with Ctrl+Enter on a desktop"))
    box.press("Control+Enter")
    expect(box).to_have_value("")
    box.fill(unique("Sent with the button"))
    desktop.get_by_test_id("send-button").click()
    expect(box).to_have_value("")
    # The button took the focus and is disabled on an empty box: typing went nowhere.
    expect(box).to_be_focused()


def test_a_message_waiting_for_the_answer_above_can_be_cancelled_before_it_is_asked(
    chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
    new_context: NewContext,
) -> None:
    """Stop and Esc reach only the answer being written: a message sent by mistake behind a
    long answer could not be withdrawn, and the model was asked it once its turn came."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    first, first_reply = unique("A long answer first"), words("long", 60)
    mistake, after = unique("Sent by mistake"), unique("Then the right question")
    replies.set(first, first_reply)
    replies.set(after, "The right answer.")
    first_id = send_prompt(page, first)
    wait_words(page, first_id, 3)
    mistake_id = send_prompt(page, mistake)
    send_prompt(page, after)
    wait_state(page, mistake, "queued")
    turn_for(page, mistake).get_by_test_id("cancel-queued").click()
    # Not "Stopping…" until the answer above ends: nothing of it has begun.
    wait_state(page, mistake, "withdrawn")
    expect(turn_for(page, mistake).get_by_test_id("answer-status")).to_have_text(
        "Withdrawn: it will not be answered")
    expect(turn_for(page, after).get_by_test_id("cancel-queued")).to_be_visible()
    wait_state(page, first, "done", timeout=30_000)
    wait_state(page, mistake, "cancelled")
    # Once the agent has ended it: still withdrawn, not "Stopped by request".
    expect(turn_for(page, mistake).get_by_test_id("answer-meta")).to_contain_text(
        "Withdrawn: not answered")
    wait_state(page, after, "done")
    assert answer_text(page, first) == norm(first_reply)
    asked = [request["messages"][-1]["content"] for request in model.requests]
    assert mistake not in asked and after in asked
    cancels = [m for m in prompt_messages(chat_app.url, conversation_id(page))
               if m.get("type") == "cancel"]
    assert [m["promptId"] for m in cancels] == [mistake_id]


def test_a_second_stop_just_after_the_first_answer_stopped_leaves_the_next_prompt_alone(
    chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
    new_context: NewContext,
) -> None:
    """A double click or Esc pressed twice, 100-300 ms apart: the first answer had stopped in
    between (a tenth of a second here), the button aimed at the question waiting behind it,
    and the second press stopped that one too; it was never answered."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    first, queued = unique("Recite a long list"), unique("Then this shorter one")
    replies.set(first, words("item", 200))
    replies.set(queued, words("shorter", 40))  # still streaming when Stop is pressed again
    first_id = send_prompt(page, first)
    wait_words(page, first_id, 3)
    send_prompt(page, queued)
    wait_state(page, queued, "queued")
    stop = page.get_by_test_id("stop-button")
    stop.click()
    wait_state(page, first, "cancelled")
    expect(stop).to_be_visible()  # now aimed at the queued question
    stop.click()  # the double click's second half
    page.keyboard.press("Escape")
    wait_state(page, queued, "done", timeout=30_000)
    cancels = [m.get("promptId") for m in prompt_messages(chat_app.url, conversation_id(page))
               if m.get("type") == "cancel"]
    assert cancels == [first_id]


def test_stop_right_after_a_new_question_stops_it_even_after_an_earlier_stop(
    chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
    new_context: NewContext,
) -> None:
    """The guard against a double click took any Stop within a second of the button's
    change of target for a repeat, however long ago the last Stop was: after one Stop in
    the tab, a Stop pressed at once on the next question did nothing."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    first, _ = start_long_answer(page, replies, "Recite a long list", words("item", 200), 3)
    stop = page.get_by_test_id("stop-button")
    stop.click()
    wait_state(page, first, "cancelled")
    page.wait_for_timeout(1500)  # longer than the guard
    second = unique("And now another long list")
    replies.set(second, words("entry", 200))
    second_id = send_prompt(page, second)
    stop.click()  # at once: the button has just come to aim at the new question
    wait_state(page, second, "cancelled")
    cancels = [m.get("promptId") for m in prompt_messages(chat_app.url, conversation_id(page))
               if m.get("type") == "cancel"]
    assert cancels[-1] == second_id


def test_stop_on_a_prompt_not_sent_yet_shows_it_stopping_then_stopped(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """The Stop button went, and the prompt went on saying it was being sent: nothing showed
    that the Stop was taken until the server was reachable again."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Stopped offline"))
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    reachable = False

    def network(route: Route) -> None:
        if reachable:
            route.continue_()
        else:
            route.abort("connectionrefused")

    page.route(lambda url: f"/conversations/{cid}/prompts" in url and "live=" not in url, network)
    stuck = unique("Stopped before it was sent")
    send_unsent(page, stuck)
    page.get_by_test_id("stop-button").click()
    wait_state(page, stuck, "cancelling")
    reachable = True
    page.evaluate("() => window.dispatchEvent(new Event('online'))")
    wait_state(page, stuck, "cancelled")


def test_stop_on_a_prompt_sent_but_not_read_back_shows_it_stopping_and_goes(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Stopped between its acknowledgement and its prompt's read back (a read that lags), a
    prompt went on saying "thinking", and once the cancel was sent Stop came back for it."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"EMBEDDED_SUPERVISOR": "false", "SSE_MAX_DURATION_S": "1"})
    try:
        cid = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=30_000).start_conversation(
            unique("Stopped while its read lags"))
        page = open_chat(new_context(), f"{app.url}/#/c/{cid}")
        held: list[Route] = []
        page.route(lambda url: f"/conversations/{cid}/prompts?" in url and "live=sse" in url,
                   lambda route, _: held.append(route))  # the prompts' live read lags
        wait_held(page, held)
        prompt = unique("Answered by nobody")
        prompt_id = send_prompt(page, prompt)
        wait_state(page, prompt, "thinking")  # sent; not read back
        page.get_by_test_id("stop-button").click()
        wait_state(page, prompt, "cancelling")
        wait_until(lambda: any(m.get("type") == "cancel" for m in prompt_messages(app.url, cid)),
                   timeout=10, what="the cancel to be stored")
        page.get_by_test_id("composer-input").fill("typed after")  # a round trip to the page
        expect(page.get_by_test_id("stop-button")).to_be_hidden()
        wait_state(page, prompt, "cancelling")
        cancels = [m.get("promptId") for m in prompt_messages(app.url, cid) if m.get("type") == "cancel"]
        assert cancels == [prompt_id]
        page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def test_a_second_stop_while_the_first_is_being_cancelled_leaves_the_next_prompt_alone(
    tmp_path: Path, model: FakeAnthropic, new_context: NewContext,
) -> None:
    """No agent runs here, so the cancelled answer stays "cancelling" for as long as the test
    looks: a second Stop (a double click, Esc after the click) used to cancel the prompt
    waiting behind it."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        page = open_chat(new_context(), app.url)
        first, queued = unique("Answered by nobody"), unique("Waiting behind it")
        first_id = send_prompt(page, first)
        send_prompt(page, queued)
        wait_state(page, queued, "queued")
        page.get_by_test_id("stop-button").click()
        wait_state(page, first, "cancelling")
        expect(page.get_by_test_id("stop-button")).to_be_hidden()
        page.get_by_test_id("composer-input").press("Escape")
        page.get_by_test_id("composer-input").fill("typed after")  # a round trip to the page
        cancels = [m.get("promptId") for m in prompt_messages(app.url, conversation_id(page))
                   if m.get("type") == "cancel"]
        assert cancels == [first_id]
        expect(turn_for(page, queued)).to_have_attribute("data-state", "queued")
    finally:
        app.terminate()


HIDE_TAB_JS = """() => {
    Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});
    document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_a_tab_being_shown_makes_hidden_tabs_let_go_of_their_live_reads(
    chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
    new_context: NewContext,
) -> None:
    """Each conversation shown holds two live reads, and a browser allows about six
    connections per host: with two hidden tabs on other conversations, a third tab's prompt
    could not be sent until a hidden tab's 10-second timer let go of its reads."""
    context = new_context()
    pages: list[Page] = []
    for index in range(3):
        page = open_chat(context, chat_app.url)
        prompt, reply = unique(f"Tab {index} says hello"), words(f"tab{index}-", 4)
        replies.set(prompt, reply)
        send_prompt(page, prompt)
        wait_state(page, prompt, "done", timeout=30_000)
        assert answer_text(page, prompt) == norm(reply)
        for hidden in pages:  # well before the 10 s timer: at once, when this tab showed
            expect(hidden.get_by_test_id("app")).to_have_attribute("data-paused", "true",
                                                                   timeout=5_000)
        page.evaluate(HIDE_TAB_JS)
        pages.append(page)


def test_a_tab_hidden_before_its_new_conversation_could_be_followed_leaves_it_paused(
    chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
    new_context: NewContext,
) -> None:
    """A conversation started while its streams could not be made, the tab hidden at once:
    its pause timer found nothing followed yet and did nothing, and when the streams were
    made the hidden tab opened their two live reads for good (of the six a browser shares
    among its tabs)."""
    page = open_chat(new_context(), chat_app.url)
    connected = False
    live_reads: list[str] = []

    def network(route: Route, request: Request) -> None:
        if "live=" in request.url:
            live_reads.append(request.url)
        elif not connected:
            route.abort("connectionrefused")
            return
        route.continue_()

    page.route(lambda url: "/v1/stream/conversations/" in url, network)
    prompt, reply = unique("Started, then hidden"), words("hidden-", 4)
    replies.set(prompt, reply)
    send_unsent(page, prompt)
    cid = page.url.rsplit("/", 1)[-1]
    page.evaluate(HIDE_TAB_JS)
    page.wait_for_timeout(10_500)  # the pause timer of a hidden tab (PAUSE_AFTER_MS)

    connected = True
    page.evaluate("() => window.dispatchEvent(new Event('online'))")
    client = StreamsClient(f"{chat_app.url}/v1/stream")
    deadline = time.monotonic() + 30
    while not any(m.get("type") == "done" for m in (
            client.read_all(f"conversations/{cid}/responses").messages
            if client.exists(f"conversations/{cid}/responses") else [])):
        assert time.monotonic() < deadline, "no answer"
        page.wait_for_timeout(200)  # (the page's routes run only while the test waits on it)
    expect(page.get_by_test_id("app")).to_have_attribute("data-paused", "true")
    assert not [url for url in live_reads if cid in url], live_reads

    page.evaluate("""() => {
        Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "visible"});
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    wait_state(page, prompt, "done")
    assert answer_text(page, prompt) == norm(reply)


XSS_REPLY = (
    'Markup test: <img src=x onerror="window.__xss=1"> then <script>window.__xss=2</script>'
    " and a [link](javascript:window.__xss=3) and <a href=\"javascript:window.__xss=4\">raw</a>"
    ' and <svg onload="window.__xss=5"></svg> end.'
)


def test_model_markup_renders_as_inert_text(chat_app: ServerProcess, model: FakeAnthropic,
                                            replies: ScriptedReplies, new_context: NewContext) -> None:
    model.tokens_per_second = 200
    page = open_chat(new_context(), chat_app.url)
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    prompt = unique("Show me some HTML")
    replies.set(prompt, XSS_REPLY)
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")

    answer = turn_for(page, prompt).get_by_test_id("answer-text")
    text = norm(answer.text_content() or "")
    assert '<img src=x onerror="window.__xss=1">' in text
    assert "<script>window.__xss=2</script>" in text
    assert '<svg onload="window.__xss=5"></svg>' in text
    assert answer.locator("img, script, svg, iframe, object, embed, style").count() == 0
    code_capable = answer.evaluate(
        """root => [...root.querySelectorAll("*")].flatMap(el => [...el.attributes]
             .filter(a => /^on/i.test(a.name) || /^\\s*javascript:/i.test(a.value))
             .map(a => `${el.tagName} ${a.name}=${a.value}`))""")
    assert code_capable == []
    assert '<a href="javascript:window.__xss=4">raw</a>' in text
    answer.get_by_text("link", exact=True).click()  # whatever the link became, it does nothing
    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert unsafe_nodes(page) == [], "the renderer inserted code-capable markup at some point"
    assert violations == [], f"something tried to run and was only stopped by the CSP: {violations}"


def test_an_html_stream_opened_as_a_page_runs_no_script(chat_app: ServerProcess,
                                                         new_context: NewContext) -> None:
    """Anyone who may append may create a `text/html` stream, and a link to it in an answer
    opens it on the chat's origin: its script must not run there (it could read the page's
    streams token and post to the chat's other tabs)."""
    page_url = f"{chat_app.url}/v1/stream/pages/{uuid.uuid4().hex[:8]}.html"
    created = requests.put(page_url, data=b"<p id=shown>hello</p><script>window.__xss=1</script>",
                           headers={"Content-Type": "text/html"}, timeout=10)
    assert created.status_code == 201, created.text
    page = new_context().new_page()
    page.goto(page_url)
    assert page.locator("#shown").text_content() == "hello"  # shown, inert
    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert page.evaluate("() => window.origin") == "null"  # sandboxed: an opaque origin


def test_new_conversation_appears_in_another_tab(chat_app: ServerProcess, model: FakeAnthropic,
                                                 new_context: NewContext) -> None:
    context = new_context()
    creator, watcher = open_chat(context, chat_app.url), open_chat(context, chat_app.url)
    creator.get_by_test_id("new-conversation").click()
    prompt = unique("Plan a picnic")
    send_prompt(creator, prompt)
    cid = conversation_id(creator)

    item = watcher.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    expect(item).to_contain_text(prompt)
    item.click()
    expect(watcher).to_have_url(re.compile(f"#/c/{cid}$"))
    wait_state(watcher, prompt, "done")
    expect(watcher.get_by_test_id("conversation-title")).to_have_text(prompt)


def test_a_second_tab_is_loaded_only_once_it_has_read_the_conversation_itself(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """The tab that holds a stream's live read answers a new tab's hello with its status, up
    to date: the new tab took that for its own, and showed the conversation as loaded (the
    welcome, no turns) while its own read of the history was still on its way."""
    context = new_context()
    first = open_chat(context, chat_app.url)
    prompt = unique("Read by the first tab")
    replies.set(prompt, "Shown by both.")
    send_prompt(first, prompt)
    wait_state(first, prompt, "done")
    cid = conversation_id(first)
    second = context.new_page()
    held: list[Route] = []
    second.route(lambda url: f"/conversations/{cid}/" in url and "live=" not in url,
                 lambda route: held.append(route))
    second.goto(f"{chat_app.url}/#/c/{cid}")
    wait_held(second, held, 2)  # its reads of the prompts and the responses
    second.wait_for_timeout(1_000)  # the first tab's status has long come
    expect(second.get_by_test_id("app")).not_to_have_attribute("data-ready", "true")
    expect(second.get_by_test_id("welcome")).to_be_hidden()
    for route in held:
        route.continue_()
    second.unroute_all()
    wait_ready(second)
    wait_state(second, prompt, "done")
    expect(second.get_by_test_id("welcome")).to_be_hidden()


def test_a_conversation_with_a_new_prompt_moves_to_the_top_of_every_tab(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    older = chat.start_conversation(unique("Older"))
    newer = chat.start_conversation(unique("Newer"))
    writer = open_chat(new_context(), f"{chat_app.url}/#/c/{older}")
    watcher = open_chat(new_context(), chat_app.url)  # another browser, not only another tab

    def listed(page: Page) -> Locator:
        return page.get_by_test_id("conversation-item")

    for page in (writer, watcher):
        expect(listed(page).first).to_have_attribute("data-conversation-id", newer)
    prompt = unique("Bring this one back up")
    send_prompt(writer, prompt)
    for page in (writer, watcher):
        expect(listed(page).first).to_have_attribute("data-conversation-id", older)
        expect(listed(page).nth(1)).to_have_attribute("data-conversation-id", newer)
    wait_state(writer, prompt, "done")
    follow_up = unique("And again")
    send_prompt(writer, follow_up)  # already first: nothing more to say in the list
    wait_state(writer, follow_up, "done")

    watcher.reload()
    wait_ready(watcher)
    expect(listed(watcher).first).to_have_attribute("data-conversation-id", older)
    activity = [m for m in read_json_stream(chat_app.url, "conversations")
                if m.get("type") == "activity" and m.get("id") in (older, newer)]
    assert [m["id"] for m in activity] == [older]


def test_a_rename_reaches_every_tab_and_escape_or_a_blank_title_keeps_the_old_one(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    before, after = unique("Before"), unique("After the rename")
    cid = chat.start_conversation(before)
    link = f"{chat_app.url}/#/c/{cid}"
    renamer, watcher = open_chat(new_context(), link), open_chat(new_context(), link)
    title, field = renamer.get_by_test_id("conversation-title"), renamer.get_by_test_id("rename-input")

    def item(page: Page) -> Locator:
        return page.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')

    renamer.get_by_test_id("rename-conversation").click()
    expect(field).to_be_focused()
    expect(field).to_have_value(before)
    field.fill("Not this one")
    field.press("Escape")
    expect(title).to_have_text(before)
    renamer.get_by_test_id("rename-conversation").click()
    field.fill("   ")
    field.press("Enter")  # said where it is typed, and the field stays
    expect(field).to_be_focused()
    assert field.evaluate("(el) => el.validationMessage") == (
        "A title cannot be blank: type one, or press Esc to keep the current title.")
    field.press("Escape")
    expect(title).to_have_text(before)
    expect(renamer.get_by_test_id("rename-conversation")).to_be_focused()
    renamer.get_by_test_id("rename-conversation").click()
    field.fill("   ")
    field.blur()  # leaving the field keeps the old title
    expect(title).to_have_text(before)

    renamer.get_by_test_id("rename-conversation").click()
    field.fill(f"  {after}  ")
    field.press("Enter")
    for page in (renamer, watcher):
        expect(page.get_by_test_id("conversation-title")).to_have_text(after)
        expect(item(page)).to_contain_text(after)
    watcher.reload()
    wait_ready(watcher)
    expect(watcher.get_by_test_id("conversation-title")).to_have_text(after)
    listings = [m for m in read_json_stream(chat_app.url, "conversations")
                if m.get("type") == "conversation" and m.get("id") == cid]
    assert [m["title"] for m in listings] == [before, after]

    # A title past 200 characters is cut, saying so (the field cut it at 200 without a word).
    long_title = "word " * 60
    renamer.get_by_test_id("rename-conversation").click()
    field.fill(long_title)
    field.press("Enter")
    expect(title).to_have_text(long_title.strip()[:200].strip())
    expect(renamer.get_by_test_id("title-note")).to_have_text("Title cut to 200 characters")

    prompt = unique("Still answered after the rename?")
    send_prompt(renamer, prompt)
    wait_state(renamer, prompt, "done")


def test_a_title_field_left_unchanged_keeps_a_rename_made_meanwhile_in_another_tab(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """The field opened on the old title, a rename made meanwhile in another tab was undone
    when the field was left as it was: it was saved as differing from the (new) title."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    before, after = unique("Before"), unique("Renamed in the other tab")
    cid = chat.start_conversation(before)
    link = f"{chat_app.url}/#/c/{cid}"
    idle, renamer = open_chat(new_context(), link), open_chat(new_context(), link)
    idle.get_by_test_id("rename-conversation").click()
    expect(idle.get_by_test_id("rename-input")).to_have_value(before)
    renamer.get_by_test_id("rename-conversation").click()
    renamer.get_by_test_id("rename-input").fill(after)
    renamer.get_by_test_id("rename-input").press("Enter")
    item = idle.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    expect(item).to_contain_text(after)
    idle.get_by_test_id("rename-input").press("Enter")  # left as it was
    for page in (idle, renamer):
        expect(page.get_by_test_id("conversation-title")).to_have_text(after)
    idle.reload()
    wait_ready(idle)
    expect(idle.get_by_test_id("conversation-title")).to_have_text(after)
    listings = [m for m in read_json_stream(chat_app.url, "conversations")
                if m.get("type") == "conversation" and m.get("id") == cid]
    assert [m["title"] for m in listings] == [before, after]


def test_a_deleted_conversation_leaves_every_tab_and_the_server(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    title = unique("To be deleted")
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(title)
    link = f"{chat_app.url}/#/c/{cid}"
    deleter, watcher = open_chat(new_context(), link), open_chat(new_context(), link)
    beside = open_chat(deleter.context, link)  # another tab of the deleter's browser
    prompt = unique("Say something first")
    send_prompt(deleter, prompt)
    wait_state(watcher, prompt, "done")
    wait_state(beside, prompt, "done")
    item = f'[data-testid="conversation-item"][data-conversation-id="{cid}"]'

    deleter.once("dialog", lambda dialog: dialog.dismiss())
    deleter.get_by_test_id("delete-conversation").click()
    expect(deleter.locator(item)).to_have_count(1)  # thought better of it: nothing changed
    expect(deleter).to_have_url(re.compile(f"#/c/{cid}$"))

    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    watcher.get_by_test_id("composer-input").fill("a half-written thought")
    deleter.once("dialog", accept)
    deleter.get_by_test_id("delete-conversation").focus()  # from the keyboard
    deleter.keyboard.press("Enter")
    assert questions and title in questions[0]
    # Where the next message is written: it was left on the page's body.
    expect(deleter.get_by_test_id("composer-input")).to_be_focused()
    for page in (deleter, watcher, beside):
        expect(page.locator(item)).to_have_count(0)
        expect(page.get_by_test_id("deleted-conversation")).to_have_text(f"“{title}” was deleted.")
        expect(page.get_by_test_id("conversation-title")).to_have_text("New conversation")
        assert not page.url.endswith(cid)
    # The live view says what the pill says; a tab beside the deleter's said "connecting"
    # from a moment after, for good.
    beside.wait_for_timeout(3000)
    for page in (deleter, watcher, beside):
        expect(page.get_by_test_id("connection-pill")).to_have_attribute("data-state", "live")
        expect(page.get_by_test_id("flow-node-browser")).to_contain_text("this tab · live")
    expect(watcher.get_by_test_id("composer-input")).to_have_value("a half-written thought")

    client = StreamsClient(f"{chat_app.url}/v1/stream")
    wait_until(lambda: not client.exists(f"conversations/{cid}/prompts")
               and not client.exists(f"conversations/{cid}/responses"),
               timeout=20, what="the supervisor to remove the deleted conversation's streams")

    # A link to it, opened later, says so; a message sent there starts a new conversation.
    late = open_chat(new_context(), link)
    expect(late.get_by_test_id("deleted-conversation")).to_have_text(f"“{title}” was deleted.")
    fresh = unique("A new start")
    send_prompt(late, fresh)
    wait_state(late, fresh, "done")
    assert conversation_id(late) != cid
    assert not client.exists(f"conversations/{cid}/prompts")


def test_a_tab_whose_list_lags_leaves_a_conversation_deleted_elsewhere_without_failed_reads(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """The streams of a conversation deleted in another tab are removed by the supervisor,
    which ends this tab's live reads of them; read again at once, they answered 404 (a
    console error each, and reads retried for as long as this tab's copy of the list had not
    brought the deletion: here, for good). The list, read first, says why they ended."""
    app = start_chat_app(tmp_path / "app", model_url=model.url)
    try:
        title = unique("Deleted in another tab")
        cid = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=30_000).start_conversation(title)
        page = open_chat(new_context(), f"{app.url}/#/c/{cid}")
        expect(page.get_by_test_id("conversation-title")).to_have_text(title)
        held = hold_list_reads(page)  # the list's live read lags
        live_reads = record_live_reads(page, cid)
        # A restart ends every read: the list's is held from then on. (The server's periodic
        # end of a read would do too, but that of a conversation's stream, landing between the
        # deletion and the removal, answers 404 whatever the page does.)
        app.terminate()
        app.start()
        wait_held(page, held)
        deadline = time.monotonic() + 20
        while live_reads != {"prompts", "responses"}:
            assert time.monotonic() < deadline, f"only {live_reads} read live again"
            page.wait_for_timeout(50)  # (the page's events are called only while it is waited on)
        failed: list[str] = []
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                if r.status >= 400 and f"/conversations/{cid}/" in r.url else None)

        append_to_conversations(app, {"type": "delete", "id": cid, "timestamp": int(time.time() * 1000)})
        expect(page.get_by_test_id("deleted-conversation")).to_have_text(f"“{title}” was deleted.")
        expect(page.get_by_test_id("conversation-title")).to_have_text("New conversation")
        expect(page.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')).to_have_count(0)
        wait_removed(StreamsClient(f"{app.url}/v1/stream"), cid)
        page.wait_for_timeout(1500)  # a read made again after the removal would have failed by now
        assert not failed, failed
        page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def test_a_tab_whose_list_lags_leaves_a_conversation_whose_reads_found_it_removed(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Deleted in another tab between the list read made before a reconnect and the
    reconnect, the conversation's streams answered 404: the page said "nothing of this
    conversation is on the server" and asked again for good, as its list lagged."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_MAX_DURATION_S": "1"})
    try:
        title = unique("Deleted mid-reconnect")
        cid = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=30_000).start_conversation(title)
        page = open_chat(new_context(), f"{app.url}/#/c/{cid}")
        expect(page.get_by_test_id("conversation-title")).to_have_text(title)
        held_list = hold_list_reads(page)  # the list's live read lags
        a_live_read_of_its_streams, held_reads = hold_live_reads_of(page, cid)  # after the check
        wait_held(page, held_list)
        wait_held(page, held_reads, count=2)

        append_to_conversations(app, {"type": "delete", "id": cid, "timestamp": int(time.time() * 1000)})
        wait_removed(StreamsClient(f"{app.url}/v1/stream"), cid)
        page.unroute(a_live_read_of_its_streams)
        for route in held_reads:
            route.continue_()
        expect(page.get_by_test_id("deleted-conversation")).to_have_text(f"“{title}” was deleted.")
        expect(page.get_by_test_id("conversation-title")).to_have_text("New conversation")
        expect(page.get_by_test_id("streams-missing")).to_be_hidden()
        page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def test_a_prompt_sent_while_a_lagging_tab_checks_a_deleted_conversation_does_not_remake_it(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Its streams found missing (deleted in another tab, which this tab's list had not
    brought yet), the page asks the list whether the conversation was deleted. A prompt sent
    before that answer came made the subscription and streams again, before asking, and was
    sent: the deleted conversation came back, and the prompt was lost when the answer came.
    Meanwhile the page said "Nothing of this conversation is on the server", and then left."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_MAX_DURATION_S": "1"})
    try:
        title = unique("Deleted as a prompt was sent")
        client = StreamsClient(f"{app.url}/v1/stream")
        cid = ChatClient(client, lease_ttl_ms=30_000).start_conversation(title)
        page = open_chat(new_context(), f"{app.url}/#/c/{cid}")
        expect(page.get_by_test_id("conversation-title")).to_have_text(title)
        held_list = hold_list_reads(page)  # the list's live read lags
        a_live_read_of_its_streams, held_reads = hold_live_reads_of(page, cid)
        wait_held(page, held_list)
        wait_held(page, held_reads, count=2)
        append_to_conversations(app, {"type": "delete", "id": cid, "timestamp": int(time.time() * 1000)})
        wait_removed(client, cid)

        held_checks: list[Route] = []

        def a_check_of_the_list(url: str) -> bool:
            return "/v1/stream/conversations?" in url and "live=" not in url

        page.route(a_check_of_the_list, lambda route, _: held_checks.append(route))
        page.unroute(a_live_read_of_its_streams)
        for route in held_reads:
            route.continue_()
        wait_held(page, held_checks)
        after_two_frames(page)
        expect(page.get_by_test_id("streams-missing")).to_be_hidden()
        written: list[str] = []
        page.on("request", lambda r: written.append(f"{r.method} {r.url} {r.post_data}")
                if r.method != "GET" and cid in f"{r.url} {r.post_data}" else None)

        stuck = unique("Sent before the check came back")
        send_prompt(page, stuck)
        page.unroute(a_check_of_the_list)
        for route in held_checks:
            route.continue_()
        expect(page.get_by_test_id("composer-input")).to_have_value(stuck)
        expect(page.get_by_test_id("deleted-conversation")).to_have_text(
            f"“{title}” was deleted before a message sent to it reached the server: it is back in"
            " the message box.")
        expect(page.get_by_test_id("conversation-title")).to_have_text("New conversation")
        wait_until(lambda: outbox_keys(page) == [], timeout=10, what="the outbox to be empty")
        assert not written, written
        assert not client.exists(f"conversations/{cid}/prompts")
        assert not client.exists(f"conversations/{cid}/responses")
        listings = [m for m in read_json_stream(app.url, "conversations") if m.get("id") == cid]
        assert [m["type"] for m in listings] == ["conversation", "delete"]
        page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def test_prompts_stored_just_after_their_conversation_was_deleted_elsewhere_are_given_back(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Sent as another tab deleted the conversation, a prompt may still be stored: after the
    deletion in the list, before the agents' supervisor removes the streams. Nothing answers
    it, and the tab that sent it dropped it with the conversation, saying only "was deleted".
    One tab has read its prompt back from the stream, the other not yet."""
    # No supervisor: the streams stay until the list's deletion reaches the tabs, as they do
    # for the moment the supervisor takes to remove them.
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        title = unique("Deleted as prompts were stored")
        chat = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=30_000)
        cid = chat.start_conversation(title)
        link = f"{app.url}/#/c/{cid}"
        reads_back = open_chat(new_context(), link)
        not_yet = new_context().new_page()
        not_yet.route(lambda url: f"/conversations/{cid}/prompts?" in url and "live=sse" in url,
                      lambda route, _: None)  # its prompts are never read
        not_yet.goto(link)
        expect(not_yet.get_by_test_id("conversation-title")).to_have_text(title)
        held = {page: hold_list_reads(page) for page in (reads_back, not_yet)}  # their lists lag
        live_reads = {page: record_live_reads(page, cid) for page in (reads_back, not_yet)}
        # A restart ends every read: the lists' are held from then on. The others are made
        # again before the deletion (made after, they would find it by reading the list).
        app.terminate()
        app.start()
        for page in (reads_back, not_yet):
            wait_held(page, held[page])
        deadline = time.monotonic() + 20
        while live_reads != {reads_back: {"prompts", "responses"}, not_yet: {"responses"}}:
            assert time.monotonic() < deadline, f"only {live_reads} read live again"
            reads_back.wait_for_timeout(50)  # (the pages' events are called only while one is waited on)
        chat.delete_conversation(cid)

        stored = {page: unique("Stored after the deletion") for page in (reads_back, not_yet)}
        for page, prompt in stored.items():
            send_prompt(page, prompt)
        wait_until(lambda: all(outbox_keys(page) == [] for page in stored), timeout=10,
                   what="the prompts stored")
        expect(reads_back.get_by_test_id("raw-prompts-list")).to_contain_text(stored[reads_back])
        assert sorted(m["content"] for m in prompt_messages(app.url, cid)) == sorted(stored.values())
        for page, prompt in stored.items():
            for route in held[page]:
                route.continue_()
            expect(page.get_by_test_id("conversation-title")).to_have_text("New conversation")
            expect(page.get_by_test_id("composer-input")).to_have_value(prompt)
            expect(page.get_by_test_id("deleted-conversation")).to_have_text(
                f"“{title}” was deleted before a message sent to it was answered: it is back in the"
                " message box.")
            page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def record_live_reads(page: Page, cid: str) -> set[str]:
    """The names of conversation `cid`'s streams that `page` reads live from now on, added
    as the server answers each read."""
    names: set[str] = set()
    page.on("response", lambda r: names.add(r.url.split("?")[0].rsplit("/", 1)[-1])
            if r.ok and f"/conversations/{cid}/" in r.url and "live=sse" in r.url else None)
    return names


def started_while_the_list_lags(page: Page) -> tuple[str, str, Locator]:
    """A conversation started by its first prompt, sent and stored, while the page's live
    read of the list lags (from now on): that prompt, the conversation's id, its list item."""
    held = hold_list_reads(page)
    wait_held(page, held)
    first = unique("The first prompt")
    send_prompt(page, first)
    cid = conversation_id(page)
    item = page.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    expect(item).not_to_contain_text("sending…")  # sent; the list has not read it back
    return first, cid, item


def test_a_new_conversation_stays_listed_under_its_name_until_the_list_brings_it_back(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Its listing sent, a new conversation was known to the page only once the list read it
    back: in between it went from the list, and a prompt sent then started it again, renamed
    after that prompt for every tab."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_MAX_DURATION_S": "1"})
    try:
        page = open_chat(new_context(), app.url)
        first, cid, item = started_while_the_list_lags(page)
        expect(item).to_contain_text(first)
        second = unique("The second prompt")
        send_prompt(page, second)
        wait_state(page, second, "done")
        expect(item).to_contain_text(first)
        expect(page.get_by_test_id("conversation-title")).to_have_text(first)
        listings = [m for m in read_json_stream(app.url, "conversations")
                    if m.get("id") == cid and m.get("type") == "conversation"]
        assert [m["title"] for m in listings] == [first], listings
        page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def test_a_new_conversation_the_list_has_not_read_back_can_be_renamed_and_deleted(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Rename and Delete showed only once the list's read brought the new conversation back:
    for as long as that read lagged, a conversation already on the server had neither."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_MAX_DURATION_S": "1"})
    try:
        page = open_chat(new_context(), app.url)
        _, cid, item = started_while_the_list_lags(page)
        page.get_by_test_id("rename-conversation").click()
        renamed = unique("Renamed before the list brought it")
        page.get_by_test_id("rename-input").fill(renamed)
        page.get_by_test_id("rename-input").press("Enter")
        expect(page.get_by_test_id("conversation-title")).to_have_text(renamed)
        expect(item).to_contain_text(renamed)
        wait_until(lambda: outbox_keys(page) == [], timeout=10, what="the rename to be sent")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_test_id("delete-conversation").click()
        expect(page.get_by_test_id("deleted-conversation")).to_contain_text(renamed)
        expect(item).to_have_count(0)
        page.unroute_all(behavior="ignoreErrors")
        wait_until(lambda: [m["type"] for m in read_json_stream(app.url, "conversations")
                            if m.get("id") == cid] == ["conversation", "conversation", "delete"],
                   timeout=10, what="the rename and the deletion in the list")
        page.reload()
        wait_ready(page)
        expect(page.locator('[data-testid="conversation-item"]')).to_have_count(0)
    finally:
        app.terminate()


def test_a_conversation_with_a_new_prompt_stays_on_top_until_the_list_brings_its_activity_back(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Its `activity` sent, the conversation went back down the list until the list's read
    brought it back (for as long as that read lagged), and the next prompt sent it again.
    Meanwhile it showed the time of its last activity before, not that of this one."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_MAX_DURATION_S": "1"})
    try:
        chat = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=30_000)
        older = chat.start_conversation(listed=False)
        requests.put(f"{app.url}/v1/stream/conversations", timeout=10,
                     headers={"Content-Type": "application/json"}).raise_for_status()
        append_to_conversations(app, {"type": "conversation", "id": older, "title": unique("Older"),
                                      "timestamp": 1_590_000_000_000})  # in 2020
        newer = chat.start_conversation(unique("Newer"))
        page = open_chat(new_context(), f"{app.url}/#/c/{older}")
        listed = page.get_by_test_id("conversation-item")
        expect(listed.first).to_have_attribute("data-conversation-id", newer)
        expect(listed.nth(1).locator(".conversation-item-time")).to_contain_text("2020")
        held = hold_list_reads(page)  # the list's live read lags
        wait_held(page, held)
        prompt = unique("Bring this one back up")
        send_prompt(page, prompt)
        wait_state(page, prompt, "done")  # its activity, sent after it, is stored
        expect(listed.first).to_have_attribute("data-conversation-id", older)
        expect(listed.first.locator(".conversation-item-time")).not_to_contain_text("2020")
        follow_up = unique("And again")
        send_prompt(page, follow_up)
        wait_state(page, follow_up, "done")
        expect(listed.first).to_have_attribute("data-conversation-id", older)
        activity = [m["id"] for m in read_json_stream(app.url, "conversations") if m.get("type") == "activity"]
        assert activity == [older]
        page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def test_a_link_to_a_conversation_the_lagging_list_has_not_read_opens_it_under_its_name(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """A link opened in a tab whose list had not read the conversation yet (made a moment
    ago on another device) said there was no conversation at it, and a message sent there
    started it again: renamed after that message, for every tab."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_MAX_DURATION_S": "1"})
    try:
        page = open_chat(new_context(), app.url)
        held = hold_list_reads(page)  # the list's live read lags
        wait_held(page, held)
        title = unique("Made on another device")
        cid = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=30_000).start_conversation(title)
        page.evaluate("(id) => { location.hash = `#/c/${id}`; }", cid)  # pasted in the address bar
        expect(page.get_by_test_id("conversation-title")).to_have_text(title)
        expect(page.get_by_test_id("unknown-conversation")).to_be_hidden()
        expect(page.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')).to_contain_text(title)
        prompt = unique("Asked from the link")
        send_prompt(page, prompt)
        wait_state(page, prompt, "done")
        expect(page.get_by_test_id("conversation-title")).to_have_text(title)
        listings = [m["title"] for m in read_json_stream(app.url, "conversations")
                    if m.get("id") == cid and m.get("type") == "conversation"]
        assert listings == [title]
        page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def test_a_prompt_waiting_to_be_sent_is_dropped_with_its_deleted_conversation(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Its retries would bring the deleted streams back (a 404 makes the outbox create them)."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Deleted with a prompt in the outbox"))
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    tried: list[str] = []

    def unreachable(route: Route, request: Request) -> None:
        tried.append(request.method)
        route.abort("connectionrefused")

    page.route(lambda url: f"/conversations/{cid}/" in url, unreachable)
    stuck = unique("This never gets through")
    page.get_by_test_id("composer-input").fill(stuck)
    page.get_by_test_id("composer-input").press("Enter")
    expect(turn_for(page, stuck)).to_have_count(1)
    wait_until(lambda: "POST" in tried, timeout=10, what="the prompt's first attempt")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("delete-conversation").click()
    expect(turn_for(page, stuck)).to_have_count(0)
    client = StreamsClient(f"{chat_app.url}/v1/stream")
    wait_removed(client, cid)
    attempts = len(tried)

    after = unique("The next conversation still works")
    send_prompt(page, after)
    wait_state(page, after, "done")
    assert len(tried) == attempts, "the dropped prompt was tried again"
    assert not client.exists(f"conversations/{cid}/prompts")
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('ds-outbox:'))"
                         ".map(k => localStorage.getItem(k)).join('')").find(stuck) == -1


def test_a_finished_answer_can_be_asked_for_again_from_the_last_turn(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Only a failed or stopped answer offered Try again: an answer that came whole but was
    not what was wanted could only be had again by typing the question anew. The new answer
    comes below the first, in a turn of its own, with the first exchange in its context."""
    page = open_chat(new_context(), chat_app.url)
    first, second = unique("Name a colour"), unique("Name a shape")
    send_prompt(page, first)
    wait_state(page, first, "done")
    send_prompt(page, second)
    wait_state(page, second, "done")
    turns = page.get_by_test_id("turn")
    expect(turns.first.get_by_test_id("retry")).to_have_count(0)  # not the last turn
    asked = len(model.requests)

    turns.nth(1).get_by_test_id("retry").dblclick()  # asks once
    expect(turns).to_have_count(3)
    expect(turns.nth(2)).to_have_attribute("data-state", "done")
    expect(turns.nth(1).get_by_test_id("retry")).to_have_count(0)  # no longer the last turn
    expect(turns.nth(2).get_by_test_id("retry")).to_be_visible()
    assert len(model.requests) == asked + 1
    sent = [(m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
            for m in model.requests[-1]["messages"]]
    assert [role for role, _ in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert sent[2][1] == sent[4][1] == second, sent


def test_a_failed_answer_can_be_tried_again_from_the_last_turn(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    page = open_chat(new_context(), chat_app.url)
    model.fail_next("401")
    prompt = unique("Fail this one first")
    page.get_by_test_id("composer-input").fill(prompt)
    page.get_by_test_id("composer-input").press("Enter")
    wait_state(page, prompt, "error")
    page.get_by_test_id("composer-input").fill("typed meanwhile")

    turns = page.get_by_test_id("turn")
    turns.first.get_by_test_id("retry").dblclick()  # asks once
    expect(turns).to_have_count(2)
    expect(turns.nth(1)).to_have_attribute("data-state", "done")
    expect(turns.first).to_have_attribute("data-state", "error")
    expect(turns.first.get_by_test_id("retry")).to_have_count(0)  # no longer the last turn
    expect(page.get_by_test_id("composer-input")).to_have_value("typed meanwhile")
    cid = conversation_id(page)
    contents = [m["content"] for m in prompt_messages(chat_app.url, cid) if m.get("type") == "prompt"]
    assert contents == [prompt, prompt]

    # A prompt refused for being blank has nothing to ask again.
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    blank = chat.start_conversation(unique("Blank"))
    chat.send_prompt(blank, "   ")
    page.goto(f"{chat_app.url}/#/c/{blank}")
    expect(turns).to_have_count(1)
    expect(turns.first).to_have_attribute("data-state", "error")
    expect(turns.first.get_by_test_id("retry")).to_have_count(0)


def test_an_answer_stopped_behind_a_withdrawn_message_can_be_tried_again(
    chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
    new_context: NewContext,
) -> None:
    """Stopped once the message behind it was withdrawn, an answer offered no Try again:
    only the last turn did, the withdrawn one."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    first, withdrawn = unique("Stopped after the next was withdrawn"), unique("Withdrawn behind it")
    queue_behind_an_answer(page, replies, first, words("long", 200), withdrawn, 3)
    turn_for(page, withdrawn).get_by_test_id("cancel-queued").click()
    wait_state(page, withdrawn, "withdrawn")
    page.get_by_test_id("stop-button").click()
    wait_state(page, first, "cancelled")
    wait_state(page, withdrawn, "cancelled")
    turn_for(page, first).get_by_test_id("retry").click()
    turns = page.get_by_test_id("turn")
    expect(turns).to_have_count(3)
    expect(turns.nth(2).get_by_test_id("prompt")).to_contain_text(first)
    cid = conversation_id(page)

    def contents() -> list[str]:
        return [m["content"] for m in prompt_messages(chat_app.url, cid) if m.get("type") == "prompt"]

    # The new turn shows as it is sent: stored a moment later.
    wait_until(lambda: len(contents()) == 3, timeout=10, what="the third prompt stored")
    assert contents() == [first, withdrawn, first]


def test_an_answer_tried_again_can_be_tried_again(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Each Try again is a new prompt id (`~again1`, `~again2`): reusing one would be the
    same prompt again, and nothing would happen."""
    page = open_chat(new_context(), chat_app.url)
    model.fail_next("401")
    model.fail_next("401")
    prompt = unique("Fail twice")
    send_prompt(page, prompt)
    wait_state(page, prompt, "error")
    turns = page.get_by_test_id("turn")
    turns.first.get_by_test_id("retry").click()
    expect(turns).to_have_count(2)
    expect(turns.nth(1)).to_have_attribute("data-state", "error")
    turns.nth(1).get_by_test_id("retry").click()
    expect(turns).to_have_count(3)
    expect(turns.nth(2)).to_have_attribute("data-state", "done")
    ids = [m["id"] for m in prompt_messages(chat_app.url, conversation_id(page))
           if m.get("type") == "prompt"]
    assert len(set(ids)) == 3, ids


def test_a_message_about_a_conversation_after_its_deletion_does_not_bring_it_back(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """A tab that missed the deletion may still rename the conversation (or note activity
    in it) a moment later: the lists used to show it again."""
    client = StreamsClient(f"{chat_app.url}/v1/stream")
    chat = ChatClient(client, lease_ttl_ms=30_000)
    title = unique("Deleted, then renamed late")
    cid = chat.start_conversation(title)
    chat.delete_conversation(cid)
    late = client.producer("conversations", f"late-{uuid.uuid4().hex[:6]}", auto_claim=True)
    late.append([{"type": "conversation", "id": cid, "title": "Renamed too late",
                  "timestamp": int(time.time() * 1000)},
                 {"type": "activity", "id": cid, "timestamp": int(time.time() * 1000)}])
    page = open_chat(new_context(), chat_app.url)
    items = page.get_by_test_id("conversation-list")
    expect(items.locator(f'[data-conversation-id="{cid}"]')).to_have_count(0)
    expect(items).not_to_contain_text("Renamed too late")


def test_try_again_clicked_in_two_tabs_at_once_asks_once(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Each tab sent a prompt of its own: the question was asked twice."""
    first = open_chat(new_context(), chat_app.url)
    model.fail_next("401")
    prompt = unique("Fail, then ask again from two tabs")
    send_prompt(first, prompt)
    wait_state(first, prompt, "error")
    second = open_chat(new_context(), first.url)
    wait_state(second, prompt, "error")
    asked = len(model.requests)
    for page in (first, second):  # neither has seen the other's retry yet
        page.route("**/prompts", lambda route: route.abort("connectionrefused"))
        turn_for(page, prompt).get_by_test_id("retry").click()
    for page in (first, second):
        page.unroute("**/prompts")
    for page in (first, second):
        turns = page.get_by_test_id("turn")
        expect(turns).to_have_count(2)
        expect(turns.nth(1)).to_have_attribute("data-state", "done")
    ids = [m["id"] for m in prompt_messages(first.url.split("/#")[0], conversation_id(first))
           if m.get("type") == "prompt"]
    assert len(set(ids)) == 2, ids  # the prompt, and one retry (stored once or twice)
    assert len(model.requests) == asked + 1


def append_to_conversations(app: ServerProcess, message: dict[str, Any]) -> None:
    """What any writer may append: the page must cope with it."""
    response = requests.post(f"{app.url}/v1/stream/conversations", data=json.dumps(message),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code in (200, 204), response.text


def test_the_conversation_list_can_be_searched_by_title(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """With dozens of conversations the list could only be scrolled. Past a few, a search
    field narrows it to the titles that hold what is typed (case and accents aside)."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        now_ms = int(time.time() * 1000)
        requests.put(f"{app.url}/v1/stream/conversations", timeout=10,
                     headers={"Content-Type": "application/json"}).raise_for_status()

        def listed(title: str) -> None:
            append_to_conversations(app, {"type": "conversation", "id": uuid.uuid4().hex[:12],
                                          "title": title, "timestamp": now_ms})

        for title in ["Café ordering", "Trip to Lisbon", "Budget 2027", "Lisbon restaurants"]:
            listed(title)
        page = open_chat(new_context(), app.url)
        search = page.get_by_test_id("conversation-search")
        items = page.get_by_test_id("conversation-item")
        expect(items).to_have_count(4)
        expect(search).to_be_hidden()  # four are seen at a glance
        for n in range(6):
            listed(f"Other topic {n}")
        expect(items).to_have_count(10)
        expect(search).to_be_visible()
        search.fill("LISBON")
        expect(items).to_have_count(2)
        expect(items.first).to_contain_text("Lisbon restaurants")  # still newest first
        search.fill("cafe  ")
        expect(items).to_have_count(1)
        expect(items.first).to_contain_text("Café ordering")
        search.fill("nothing like it")
        expect(items).to_have_count(0)
        expect(page.get_by_test_id("conversation-list-empty")).to_have_text(
            "No conversation title holds “nothing like it”.")
        search.press("Escape")
        expect(search).to_have_value("")
        expect(items).to_have_count(10)
        expect(page.get_by_test_id("conversation-list-empty")).to_be_hidden()

        # In a narrow screen's drawer, that Escape closed the drawer too.
        phone = open_chat(new_context(viewport=PHONE), app.url)
        phone.get_by_test_id("toggle-sidebar").click()
        phone_search = phone.get_by_test_id("conversation-search")
        phone_search.fill("lisbon")
        phone_search.press("Escape")
        expect(phone_search).to_have_value("")
        expect(phone_search).to_be_visible()
        expect(phone_search).to_be_focused()
        phone_search.press("Escape")  # a second one closes it
        expect(phone_search).to_be_hidden()
    finally:
        app.terminate()


def test_the_list_copes_with_an_impossible_time_and_a_title_of_many_lines(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    victim = chat.start_conversation(unique("Victim"))
    page = open_chat(new_context(), chat_app.url)
    item = f'[data-testid="conversation-item"][data-conversation-id="{victim}"]'
    expect(page.locator(item)).to_have_count(1)
    append_to_conversations(chat_app, {"type": "activity", "id": victim, "timestamp": 1e300})
    append_to_conversations(chat_app, {"type": "conversation", "id": victim,
                                       "title": "Line one\n\nline two " + "x" * 10_000})
    later = chat.start_conversation(unique("Listed after both"))
    expect(page.locator(f'[data-conversation-id="{later}"]')).to_have_count(1)
    title = page.locator(item).locator(".conversation-item-title").text_content() or ""
    assert title.startswith("Line one line two x") and len(title) == 200, title[:40]
    page.reload()
    wait_ready(page)
    expect(page.locator(item)).to_have_count(1)


def test_titles_are_shown_whole_and_plain_and_ids_no_client_makes_are_not_listed(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A title cut in the middle of an emoji showed a replacement character on every device;
    characters that reverse text made "gnp.exe" read "exe.png"; a rename to invisible
    characters left an empty title; an id the README does not
    allow was listed and opened a blank page; a date of another year showed no year."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    renamed = chat.start_conversation(unique("To be renamed"))
    page = open_chat(new_context(), chat_app.url)
    item = f'[data-testid="conversation-item"][data-conversation-id="{renamed}"]'
    append_to_conversations(chat_app, {"type": "conversation", "id": renamed,
                                       "title": "Report \u202egnp.exe\u0000 " + "😀" * 300})
    append_to_conversations(chat_app, {"type": "activity", "id": renamed,
                                       "timestamp": 1_577_934_000_000})  # 2020-01-02
    append_to_conversations(chat_app, {"type": "conversation", "id": renamed,  # ignored
                                       "title": "\u200d\u3164 \u200c\U000e0020"})
    append_to_conversations(chat_app, {"type": "conversation", "id": "../../agents/wake",
                                       "title": "Not a conversation"})
    later = chat.start_conversation(unique("Listed after all three"))
    expect(page.locator(f'[data-conversation-id="{later}"]')).to_have_count(1)
    title = page.locator(item).locator(".conversation-item-title").text_content() or ""
    assert title == "Report gnp.exe " + "😀" * 185, title[:30]
    assert "2020" in (page.locator(item).locator(".conversation-item-time").text_content() or "")
    expect(page.get_by_text("Not a conversation")).to_have_count(0)

    page.get_by_test_id("new-conversation").click()
    first_prompt = "🇫🇷" * 100  # a flag is two code points: the cut falls between flags
    send_prompt(page, first_prompt)
    cid = conversation_id(page)

    def titles() -> list[str]:
        return [m["title"] for m in read_json_stream(chat_app.url, "conversations")
                if m.get("id") == cid and m.get("type") == "conversation"]

    wait_until(lambda: bool(titles()), timeout=10, what="the new conversation's listing")
    assert titles() == ["🇫🇷" * 59 + "…"]

    arabic = unique("مرحبا، كيف حالك؟")
    send_prompt(page, arabic)
    wait_state(page, arabic, "done")
    direction = turn_for(page, arabic).locator(".bubble-text").evaluate(
        "node => getComputedStyle(node).direction")
    assert direction == "rtl"


def test_a_restart_after_a_finished_answer_changes_nothing(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """No agent writes one (an answer is restarted only while unfinished), and the agents
    take nothing after a final message: the page showed the answer being written again
    ("second", without the earlier attempt's figures) where they kept "first"."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Restarted by hand"))
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    responses = f"{chat_app.url}/v1/stream/conversations/{cid}/responses"
    prompt = unique("An answer that is written twice")
    append_json(responses, [
        {"type": "chunk", "id": "p-x/0/0", "promptId": "p-x", "attempt": 0, "content": "first",
         "isComplete": False, "timestamp": 1},
        {"type": "done", "promptId": "p-x", "attempt": 0, "stopReason": "max_tokens",
         "usage": {"inputTokens": 7, "outputTokens": 4242}, "model": "earlier-model",
         "isComplete": True, "timestamp": 2},
        {"type": "restart", "promptId": "p-x", "attempt": 1, "reason": "again",
         "isComplete": False, "timestamp": 3},
        {"type": "chunk", "id": "p-x/1/0", "promptId": "p-x", "attempt": 1, "content": "second",
         "isComplete": False, "timestamp": 4},
    ])
    append_json(f"{chat_app.url}/v1/stream/conversations/{cid}/prompts",
                [{"type": "prompt", "id": "p-x", "content": prompt, "timestamp": 1}])
    turn = turn_for(page, prompt)
    expect(turn.get_by_test_id("answer-text")).to_have_text("first")
    expect(turn).to_have_attribute("data-state", "done")
    expect(turn.get_by_test_id("answer-meta")).to_contain_text("4,242")


def test_an_answers_figures_and_stop_reason_read_as_words(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Token counts had no digit grouping ("228200 in") and a stop reason showed as the API
    names it ("Stop reason: max_tokens")."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Figures"))
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    prompt = unique("A long one")
    append_json(f"{chat_app.url}/v1/stream/conversations/{cid}/responses", [
        {"type": "chunk", "id": "p-f/0/0", "promptId": "p-f", "attempt": 0, "content": "cut",
         "isComplete": False, "timestamp": 1},
        {"type": "done", "promptId": "p-f", "attempt": 0, "stopReason": "max_tokens",
         "usage": {"inputTokens": 228200, "outputTokens": 128000}, "model": "m",
         "isComplete": True, "timestamp": 2}])
    append_json(f"{chat_app.url}/v1/stream/conversations/{cid}/prompts",
                [{"type": "prompt", "id": "p-f", "content": prompt, "timestamp": 1}])
    meta = turn_for(page, prompt).get_by_test_id("answer-meta")
    expect(meta).to_contain_text("Cut off at the answer's token limit")
    expect(meta).to_contain_text("228,200 in · 128,000 out tokens")


def append_json(url: str, messages: list[dict[str, Any]]) -> None:
    response = requests.post(url, data=json.dumps(messages),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code in (200, 204), response.text


def test_a_prompt_stays_shown_between_being_stored_and_being_read_back(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Once stored, a prompt left the outbox, and it was shown again only when the page read
    it back from the stream: in between (a second after a restart) it was not shown."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    title = unique("Read back late")
    cid = chat.start_conversation(title)
    page = new_context().new_page()

    def reads(url: str) -> bool:
        return f"/conversations/{cid}/prompts?" in url

    def fail(route: Route) -> None:
        route.abort("connectionrefused")

    page.route(reads, fail)  # its reads of the prompts fail
    page.goto(f"{chat_app.url}/#/c/{cid}")
    expect(page.get_by_test_id("conversation-title")).to_have_text(title)
    prompt = unique("Still here after it is stored")
    with page.expect_response(lambda r: r.request.method == "POST"
                              and r.url.endswith(f"/conversations/{cid}/prompts")) as stored:
        page.get_by_test_id("composer-input").fill(prompt)
        page.get_by_test_id("composer-input").press("Enter")
    assert stored.value.status in (200, 204)
    assert any(m.get("content") == prompt for m in prompt_messages(chat_app.url, cid))
    page.wait_for_timeout(300)  # the page handles the response
    expect(turn_for(page, prompt)).to_have_count(1)
    page.unroute(reads, fail)
    wait_state(page, prompt, "done")
    expect(turn_for(page, prompt)).to_have_count(1)


def test_the_top_conversation_gets_the_time_of_its_new_prompt(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """An activity message was written only to move a conversation up, so the one at the
    top kept the time of its last move, hours old, in every tab."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Top for hours"))
    three_hours_ago = int(time.time() * 1000) - 3 * 3600 * 1000
    append_to_conversations(chat_app, {"type": "activity", "id": cid, "timestamp": three_hours_ago})
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    items = page.get_by_test_id("conversation-item")
    expect(items.first).to_have_attribute("data-conversation-id", cid)
    prompt = unique("A new prompt at the top")
    send_prompt(page, prompt)
    wait_until(lambda: any(m.get("type") == "activity" and m.get("id") == cid
                           and m.get("timestamp", 0) > three_hours_ago
                           for m in read_json_stream(chat_app.url, "conversations")),
               timeout=10, what="the new activity")
    wait_state(page, prompt, "done")
    follow_up = unique("A minute has not passed")
    send_prompt(page, follow_up)
    wait_state(page, follow_up, "done")
    activity = [m for m in read_json_stream(chat_app.url, "conversations")
                if m.get("type") == "activity" and m.get("id") == cid]
    assert len(activity) == 2  # the listed time was fresh for the second prompt


def test_skip_to_content_moves_focus_without_leaving_the_conversation_or_the_stream(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Followed as a link, it set the address to `#main`: the chat opened a blank new
    conversation, and the inspector forgot its stream on the next reload."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    title = unique("Skipped into")
    cid = chat.start_conversation(title)
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    expect(page.get_by_test_id("conversation-title")).to_have_text(title)
    page.keyboard.press("Tab")
    expect(page.locator(".skip-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    assert page.url.endswith(f"#/c/{cid}")
    expect(page.get_by_test_id("conversation-title")).to_have_text(title)

    inspector = open_chat(new_context(), f"{chat_app.url}/inspector#path=conversations")
    inspector.keyboard.press("Tab")
    inspector.keyboard.press("Enter")
    expect(inspector.locator("#main")).to_be_focused()
    assert inspector.url.endswith("#path=conversations")


def test_a_suggestion_is_sent_as_it_is_and_what_was_typed_stays(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    page = open_chat(new_context(viewport={"width": 390, "height": 800}), chat_app.url)
    expect(page.get_by_role("link", name="Durable Agent Chat")).to_be_visible()  # the logo alone
    box = page.get_by_test_id("composer-input")
    box.fill("my own question, half written")
    chip = page.locator(".suggestions .chip").first
    suggestion = (chip.text_content() or "").strip()
    chip.click()
    wait_state(page, suggestion, "done")
    expect(box).to_have_value("my own question, half written")
    page.reload()
    wait_ready(page)
    expect(page.get_by_test_id("composer-input")).to_have_value("my own question, half written")


def test_a_tab_that_sees_a_deletion_drops_what_it_had_not_sent_for_it(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Its queued prompt's retries would create the deleted streams again, and its queued
    rename would list the conversation again."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Deleted elsewhere"))
    link = f"{chat_app.url}/#/c/{cid}"
    offline, deleter = open_chat(new_context(), link), open_chat(new_context(), link)
    sent: list[str] = []
    connected = False

    def network(route: Route, request: Request) -> None:
        if not connected:
            route.abort("connectionrefused")
            return
        if request.method != "GET":
            sent.append(f"{request.method} {request.url}")
        route.continue_()

    offline.route(lambda url: "/v1/stream/" in url and "live=" not in url, network)
    stuck = unique("Sent just before the deletion")
    offline.get_by_test_id("composer-input").fill(stuck)
    offline.get_by_test_id("composer-input").press("Enter")
    offline.get_by_test_id("rename-conversation").click()
    offline.get_by_test_id("rename-input").fill("A rename that waits")
    offline.get_by_test_id("rename-input").press("Enter")

    deleter.once("dialog", lambda dialog: dialog.accept())
    deleter.get_by_test_id("delete-conversation").click()
    expect(offline.get_by_test_id("deleted-conversation")).to_be_visible()
    expect(offline.locator(f'[data-conversation-id="{cid}"]')).to_have_count(0)
    # The prompt it will never send was dropped without a word: it is given back.
    expect(offline.get_by_test_id("composer-input")).to_have_value(stuck)
    expect(offline.get_by_test_id("deleted-conversation")).to_contain_text(
        "was deleted before a message sent to it reached the server: it is back in the message box")
    connected = True
    offline.evaluate("() => window.dispatchEvent(new Event('online'))")
    wait_until(lambda: offline.evaluate(
        "() => !Object.keys(localStorage).some(k => k.startsWith('ds-outbox:'))"),
        timeout=20, what="the outbox to be empty")
    assert not [s for s in sent if cid in s], sent
    expect(offline.locator(f'[data-conversation-id="{cid}"]')).to_have_count(0)
    listings = [m for m in read_json_stream(chat_app.url, "conversations") if m.get("id") == cid]
    assert [m["type"] for m in listings] == ["conversation", "delete"]


def test_a_prompt_dropped_while_its_streams_are_being_made_is_not_sent(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A prompt to a conversation whose streams are missing makes them first. Deleted while
    those requests ran, the prompt was dropped and given back, and then sent all the same:
    the deleted conversation's streams came back with it."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Deleted while its streams were made"))
    client = StreamsClient(f"{chat_app.url}/v1/stream")
    client.delete(f"conversations/{cid}/prompts")
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    expect(page.get_by_test_id("streams-missing")).to_be_visible()
    held: list[Route] = []
    page.route(f"**/v1/stream/__ds/subscriptions/conversation-{cid}",
               lambda route: held.append(route) if route.request.method == "PUT" else route.continue_())
    sent: list[str] = []
    page.on("request", lambda r: sent.append(f"{r.method} {r.url}") if r.method != "GET" else None)
    stuck = unique("Sent as it was deleted")
    send_prompt(page, stuck)
    wait_held(page, held)
    chat.delete_conversation(cid)
    expect(page.get_by_test_id("composer-input")).to_have_value(stuck)  # given back
    wait_until(lambda: not client.exists(f"conversations/{cid}/responses"), timeout=20,
               what="the deleted conversation's removal")
    sent.clear()
    held[0].continue_()
    wait_until(lambda: outbox_keys(page) == [], timeout=10, what="the outbox to be empty")
    page.wait_for_timeout(1_000)
    assert not [s for s in sent if f"/conversations/{cid}/" in s], sent
    assert not client.exists(f"conversations/{cid}/prompts")


def test_a_prompt_unsent_for_a_conversation_deleted_while_another_is_open_is_given_back(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    title = unique("Left for another")
    cid = chat.start_conversation(title)
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    page.route(lambda url: f"/conversations/{cid}/" in url and "live=" not in url,
               lambda route: route.abort("connectionrefused"))
    stuck = unique("Sent, then the tab moved on")
    send_unsent(page, stuck)
    page.get_by_test_id("new-conversation").click()
    typed = "Being written here"
    page.get_by_test_id("composer-input").fill(typed)
    chat.delete_conversation(cid)
    expect(page.get_by_test_id("composer-input")).to_have_value(f"{typed}\n\n{stuck}")
    expect(page.get_by_test_id("deleted-conversation")).to_have_text(
        f"“{title}” was deleted before a message sent to it reached the server: it is back in"
        " the message box.")


def test_a_prompt_found_deleted_before_the_list_says_so_holds_up_no_other_message(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """A prompt to a conversation deleted elsewhere, sent while another is open, found its
    streams gone and the list saying so: it was tried again and again (the page saying
    "Reconnecting" to a server that answered), and every message behind it, a new
    conversation's prompt too, waited for as long as this tab's list read lagged."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_MAX_DURATION_S": "1"})
    try:
        title = unique("Deleted while its prompt waited")
        chat = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=30_000)
        cid = chat.start_conversation(title)
        page = open_chat(new_context(), f"{app.url}/#/c/{cid}")
        held = hold_list_reads(page)  # the list's live read lags
        wait_held(page, held)

        def unreachable(url: str) -> bool:
            return f"/conversations/{cid}/" in url and "live=" not in url

        page.route(unreachable, lambda route: route.abort("connectionrefused"))
        stuck = unique("Sent, then the tab moved on")
        send_unsent(page, stuck)
        page.get_by_test_id("new-conversation").click()
        chat.delete_conversation(cid)
        wait_removed(StreamsClient(f"{app.url}/v1/stream"), cid)
        page.unroute(unreachable)
        page.evaluate("() => window.dispatchEvent(new Event('online'))")
        expect(page.get_by_test_id("composer-input")).to_have_value(stuck)
        expect(page.get_by_test_id("deleted-conversation")).to_have_text(
            f"“{title}” was deleted before a message sent to it reached the server: it is back in"
            " the message box.")
        expect(page.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')).to_have_count(0)
        after = unique("A new conversation meanwhile")
        send_prompt(page, after)
        wait_state(page, after, "done")
        expect(page.get_by_test_id("connection-pill")).to_have_attribute("data-state", "live")
        assert not StreamsClient(f"{app.url}/v1/stream").exists(f"conversations/{cid}/prompts")
        page.unroute_all(behavior="ignoreErrors")
    finally:
        app.terminate()


def test_a_tab_back_online_before_it_saw_a_deletion_does_not_bring_the_conversation_back(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Offline, with a prompt queued, while the conversation was deleted elsewhere; online
    again before its live read of the list had caught up (it waits out its backoff). The
    prompt's 404 made the outbox create the subscription and streams again and send it: the
    deleted conversation came back, and the prompt vanished when the deletion arrived."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Deleted while a tab was offline"))
    link = f"{chat_app.url}/#/c/{cid}"
    browser = new_context()
    leader = open_chat(browser, link)  # holds the live read of the list for both tabs
    page = open_chat(browser, link)
    connected, list_blocked = False, True
    sent: list[str] = []

    def network(route: Route, request: Request) -> None:
        url = request.url
        if (list_blocked and "/v1/stream/conversations?" in url and "live=" in url) or (
                not connected and "live=" not in url):
            route.abort("connectionrefused")
            return
        if request.method != "GET":
            sent.append(f"{request.method} {url}")
        route.continue_()

    page.route(lambda url: "/v1/stream/" in url, network)
    stuck = unique("Queued while offline")
    send_unsent(page, stuck)
    leader.close()  # this tab now leads the list's live read, which cannot get through

    chat.delete_conversation(cid)
    client = StreamsClient(f"{chat_app.url}/v1/stream")
    wait_removed(client, cid)
    connected = True
    page.evaluate("() => window.dispatchEvent(new Event('online'))")
    deadline = time.monotonic() + 10
    while not any(f"/conversations/{cid}/prompts" in s for s in sent):
        assert time.monotonic() < deadline, "the queued prompt was not sent again"
        page.wait_for_timeout(50)  # (the page's routes run only while the test waits on it)
    page.wait_for_timeout(3_000)  # the outbox retries a 404 after 300 ms
    assert client.exists(f"conversations/{cid}/prompts") is False
    assert [s for s in sent if cid in s] == [f"POST {chat_app.url}/v1/stream/conversations/{cid}/prompts"]
    sent.clear()

    list_blocked = False  # the list's live read gets through: the deletion gives it back
    expect(page.get_by_test_id("composer-input")).to_have_value(stuck, timeout=15_000)
    expect(page.get_by_test_id("deleted-conversation")).to_contain_text(
        "was deleted before a message sent to it reached the server: it is back in the message box")
    wait_until(lambda: outbox_keys(page) == [], timeout=10, what="the outbox to be empty")
    assert_it_stays_deleted(page, sent, client, cid)


def send_unsent(page: Page, text: str) -> None:
    """Send `text` from the composer to a server the page cannot reach (a route refuses
    its requests): it waits in the outbox, shown as being sent."""
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("composer-input").press("Enter")
    wait_state(page, text, "sending")


def wait_removed(client: StreamsClient, cid: str) -> None:
    wait_until(lambda: not client.exists(f"conversations/{cid}/prompts"), timeout=20,
               what="the deleted conversation's removal")


def assert_it_stays_deleted(page: Page, sent: list[str], client: StreamsClient, cid: str) -> None:
    """The page works on, and has written nothing (`sent`) to the deleted conversation."""
    later = unique("The next conversation still works")
    send_prompt(page, later)
    wait_state(page, later, "done")
    assert not [s for s in sent if cid in s], sent
    assert not client.exists(f"conversations/{cid}/prompts")


def hold_list_reads(page: Page) -> list[Route]:
    """Hold back the page's live reads of the conversation list from now on (the list
    lags): they land in the list returned, unanswered."""
    held: list[Route] = []
    page.route(lambda url: "/v1/stream/conversations?" in url and "live=sse" in url,
               lambda route, _: held.append(route))
    return held


def hold_live_reads_of(page: Page, cid: str) -> tuple[Callable[[str], bool], list[Route]]:
    """Hold back the page's live reads of conversation `cid`'s streams from now on: what the
    route matches (to unroute it), and the list the held requests land in."""
    held: list[Route] = []

    def a_live_read_of_its_streams(url: str) -> bool:
        return f"/conversations/{cid}/" in url and "live=sse" in url

    page.route(a_live_read_of_its_streams, lambda route, _: held.append(route))
    return a_live_read_of_its_streams, held


def wait_held(page: Page, held: list[Route], count: int = 1) -> None:
    """Wait until a route that holds requests back has `count` of them in `held` (the
    page's routes are called only while the test waits on the page)."""
    deadline = time.monotonic() + 10
    while len(held) < count:
        assert time.monotonic() < deadline, f"{len(held)} of {count} requests held"
        page.wait_for_timeout(50)


def after_two_frames(page: Page) -> None:
    """Until the page has drawn twice: what it was asked to draw is on the screen."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def outbox_keys(page: Page) -> list[str]:
    """The page's outbox in storage (see outbox-storage.js): one key per open page."""
    keys: list[str] = page.evaluate(
        "() => Object.keys(localStorage).filter(k => k.startsWith('ds-outbox:'))")
    return keys


def open_tab_with_prompt_unsent(context: BrowserContext, url: str, cid: str, prompt: str) -> Page:
    """A tab on conversation `cid` whose prompts cannot reach the server (their POSTs are
    refused), with `prompt` sent from it and waiting in its outbox."""
    writer = open_chat(context, f"{url}/#/c/{cid}")
    writer.route("**/prompts", lambda route, request: route.abort("connectionrefused")
                 if request.method == "POST" else route.continue_())
    send_unsent(writer, prompt)
    return writer


def test_a_prompt_unsent_when_its_tab_closed_is_sent_by_another_tab_once(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """Unsent prompts were kept in the tab's sessionStorage: closing the tab, or the browser,
    while the server was out of reach lost them. One of the other tabs of the browser sends
    them once the tab that wrote them has gone, and not before; with the producer tuple it
    was first sent with, so a copy that had landed (its answer lost) is stored once."""
    context = new_context()
    writer = open_chat(context, chat_app.url)

    def stored_but_unanswered(route: Route, request: Request) -> None:
        if request.method == "POST":
            route.fetch()  # the server stores it; the tab never hears so
            route.abort("connectionreset")
        else:
            route.continue_()

    writer.route("**/prompts", stored_but_unanswered)
    prompt = unique("Typed just before the tab was closed")
    replies.set(prompt, "Answered by way of another tab.")
    writer.get_by_test_id("composer-input").fill(prompt)
    writer.get_by_test_id("composer-input").press("Enter")
    cid = conversation_id(writer)
    stream = f"{chat_app.url}/v1/stream/conversations/{cid}/prompts"
    # Polled through the page: its route handler runs only while Playwright is called.
    for _ in range(50):
        if requests.head(stream, timeout=10).ok and prompt_messages(chat_app.url, cid):
            break
        writer.wait_for_timeout(200)
    assert [m.get("content") for m in prompt_messages(chat_app.url, cid)] == [prompt]
    assert prompt in "".join(writer.evaluate("() => Object.values(localStorage)"))  # unsent for all it knows

    others = [open_chat(context, chat_app.url) for _ in range(2)]
    posted: list[str] = []
    for other in others:
        other.on("request", lambda r: posted.append(r.url)
                 if r.method == "POST" and r.url.endswith("/prompts") else None)
    others[0].wait_for_timeout(1500)  # (not time.sleep: the pages' events are dispatched)
    assert posted == []  # an open tab's messages are its own

    writer.close()
    wait_until(lambda: all(outbox_keys(o) == [] for o in others) and bool(posted), timeout=20,
               what="the closed tab's prompt sent by another")  # (evaluate: events dispatched)
    assert len(posted) == 1, posted  # by one tab
    listed = others[0].locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    listed.click()
    wait_state(others[0], prompt, "done")
    assert [m.get("content") for m in prompt_messages(chat_app.url, cid)] == [prompt]


def test_a_tab_opened_after_one_closed_with_unsent_messages_sends_them_at_once(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """The grace a closed tab is given to come back (a reload) was counted from when the
    next tab opened, not from when the tab closed: a Stop pressed while the server was out
    of reach, its tab closed, reached the server five seconds after a new tab opened, by
    when the answer it was to stop had been written whole."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Closed with a message unsent"))
    context = new_context()
    prompt = unique("Left unsent in a closed tab")
    replies.set(prompt, "Sent by the next tab.")
    writer = open_tab_with_prompt_unsent(context, chat_app.url, cid, prompt)
    writer.close()
    time.sleep(6)  # longer than the grace, with no page open to count it
    later = open_chat(context, chat_app.url)
    opened = time.monotonic()
    wait_until(lambda: bool(later.evaluate("() => true")) and bool(prompt_messages(chat_app.url, cid)),
               timeout=20, what="the closed tab's message sent")
    assert time.monotonic() - opened < 4, "it waited for a tab that had gone long before"
    assert [m.get("content") for m in prompt_messages(chat_app.url, cid)] == [prompt]
    wait_until(lambda: later.evaluate(  # when the closed tab went: not kept once taken on
        "() => !Object.keys(localStorage).some(k => k.startsWith('ds-outbox-gone:'))"),
        timeout=10, what="the closed tab's note removed")


def test_a_reloaded_tab_keeps_its_unsent_prompt_with_another_tab_open(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """The other tab, waiting for this one's outbox, took it on at the reload: the prompt
    left the reloaded tab, which no longer showed it as being sent."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Reloaded beside another tab"))
    context = new_context()
    other = open_chat(context, chat_app.url)
    prompt = unique("Still being sent after a reload")
    replies.set(prompt, "Answered in the tab that sent it.")
    writer = open_tab_with_prompt_unsent(context, chat_app.url, cid, prompt)
    writer.reload()
    wait_ready(writer)
    wait_state(writer, prompt, "sending")
    writer.wait_for_timeout(6000)  # past the time another tab gives a page that has gone
    wait_state(writer, prompt, "sending")
    assert len(outbox_keys(other)) == 1  # the writer's own
    writer.unroute("**/prompts")
    writer.evaluate("() => window.dispatchEvent(new Event('online'))")
    wait_state(writer, prompt, "done")
    assert [m.get("content") for m in prompt_messages(chat_app.url, cid)] == [prompt]


FILL_LOCAL_STORAGE_JS = """() => {
  for (const size of [1e6, 1e5, 1e4, 1e3, 100, 10]) {
    try { for (let i = 0; ; i += 1) localStorage.setItem(`filler-${size}-${i}`, "x".repeat(size)); } catch {}
  }
}"""


def test_a_closed_tab_s_prompt_is_left_where_it_is_when_storage_is_full(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """Taken on in memory only (the copy could not be stored), the closed tab's outbox was
    removed from storage all the same: closing the tab that took it on lost it. It now stays
    where it is until a page can keep it."""
    def refuse_writes(route: Route, request: Request) -> None:
        if request.method == "GET":
            route.continue_()
        else:
            route.abort("connectionrefused")

    context = new_context()
    writer, full = open_chat(context, chat_app.url), open_chat(context, chat_app.url)
    prompts = {page: unique(f"Kept through a full storage, from {name}")
               for page, name in ((writer, "the tab closed"), (full, "the full tab"))}
    for page, prompt in prompts.items():
        replies.set(prompt, "Answered once there was room.")
        page.route("**/v1/stream/**", refuse_writes)
        if page is full:  # its own prompt is only in memory: both do not fit where one was
            full.evaluate(FILL_LOCAL_STORAGE_JS)
        send_unsent(page, prompt)
    cid = conversation_id(writer)
    writer.close()
    full.wait_for_timeout(7000)  # past the grace a page that has gone is given
    kept = full.evaluate(
        f"() => Object.values(localStorage).some(v => v.includes({json.dumps(prompts[writer])}))")
    assert kept, "the closed tab's outbox was removed, its prompt kept nowhere"
    assert not requests.head(f"{chat_app.url}/v1/stream/conversations/{cid}/prompts", timeout=10).ok
    full.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('filler-'))"
                  ".forEach(k => localStorage.removeItem(k))")
    full.close()
    later = open_chat(context, chat_app.url)
    listed = later.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    expect(listed).to_have_count(1, timeout=20_000)
    listed.click()
    wait_state(later, prompts[writer], "done")
    assert [m.get("content") for m in prompt_messages(chat_app.url, cid)] == [prompts[writer]]


NO_WEB_LOCKS_JS = "Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined })"


def test_without_web_locks_a_reload_still_sends_a_prompt_left_unsent(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """A page served over plain http from another host has no Web Locks: its unsent
    prompts stay in the tab's sessionStorage, where its next load finds them."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Without Web Locks"))
    context = new_context()
    context.add_init_script(NO_WEB_LOCKS_JS)

    def refuse_prompts(route: Route, request: Request) -> None:
        if request.method == "POST":
            route.abort("connectionrefused")
        else:
            route.continue_()

    page = open_chat(context, f"{chat_app.url}/#/c/{cid}")
    page.route("**/prompts", refuse_prompts)
    prompt = unique("Sent over a reload, in a tab of its own")
    replies.set(prompt, "Answered after the reload.")
    send_unsent(page, prompt)
    assert outbox_keys(page) == []  # not in localStorage: no other tab could take it on
    page.reload()
    wait_ready(page)
    wait_state(page, prompt, "sending")
    page.unroute("**/prompts")
    page.evaluate("() => window.dispatchEvent(new Event('online'))")
    wait_state(page, prompt, "done")
    assert [m.get("content") for m in prompt_messages(chat_app.url, cid)] == [prompt]


def old_outbox_entry(cid: str, prompt: str) -> dict[str, Any]:
    """An unsent prompt as earlier versions of the page kept it."""
    return {"key": f"ob-{uuid.uuid4().hex[:8]}", "path": f"conversations/{cid}/prompts",
            "ensured": True, "subscription": None, "tuple": None,
            "ensure": [f"conversations/{cid}/prompts", f"conversations/{cid}/responses"],
            "body": {"type": "prompt", "id": f"p-{uuid.uuid4().hex[:12]}", "content": prompt,
                     "timestamp": int(time.time() * 1000)}}


def seed_old_outbox(context: BrowserContext, app: ServerProcess, entry: dict[str, Any]) -> str:
    """Each new tab of `context` starts with `entry` in its sessionStorage, where earlier
    versions of the page kept their outbox; its key there."""
    key = f"ds-outbox:{app.url}/v1/stream"
    context.add_init_script(
        f"if (location.protocol === 'http:' && !sessionStorage.getItem('seeded')) {{"
        f" sessionStorage.setItem('seeded', '1');"
        f" sessionStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps([entry]))}); }}")
    return key


def test_a_prompt_an_earlier_version_of_the_page_left_in_the_tab_is_sent(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """Before, the page kept unsent prompts in the tab's sessionStorage: a tab open across
    an upgrade of the app sends what it held there once, from its new outbox, where it is
    kept at once (it was only in memory until sent: a reload before that lost it)."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Open across an upgrade"))
    prompt = unique("Left in the tab by the old page")
    replies.set(prompt, "Answered by the new page.")
    context = new_context()
    key = seed_old_outbox(context, chat_app, old_outbox_entry(cid, prompt))
    page = context.new_page()
    # The list unread, nothing left over is sent (see the next tests) for a while.
    page.route("**/v1/stream/conversations?*", lambda route: route.abort("connectionrefused"))
    page.goto(f"{chat_app.url}/#/c/{cid}")
    wait_state(page, prompt, "sending")
    wait_until(lambda: prompt in "".join(page.evaluate("() => Object.values(localStorage)")),
               timeout=5, what="the old outbox kept in the new one")
    page.reload()
    wait_state(page, prompt, "sending")
    page.unroute("**/v1/stream/conversations?*")
    wait_state(page, prompt, "done", timeout=30_000)
    assert page.evaluate(f"() => sessionStorage.getItem({json.dumps(key)})") is None
    assert [m.get("content") for m in prompt_messages(chat_app.url, cid)] == [prompt]


def test_a_tab_that_does_not_hold_the_list_s_live_read_reads_it_before_sending_leftovers(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Another tab holds the list's live read and tells the others it is up to date: a new
    tab took that for its own read and sent what it had left over before it knew that its
    conversation had been deleted, bringing the deleted streams back."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Deleted before a new tab opened"))
    context = new_context()
    leader = open_chat(context, chat_app.url)
    chat.delete_conversation(cid)
    client = StreamsClient(f"{chat_app.url}/v1/stream")
    wait_removed(client, cid)
    expect(leader.get_by_text("Deleted before a new tab opened")).to_have_count(0)
    seed_old_outbox(context, chat_app, old_outbox_entry(cid, unique("Never to be sent")))
    sent: list[str] = []
    context.on("request", lambda r: sent.append(f"{r.method} {r.url}") if r.method != "GET" else None)
    follower = open_chat(context, chat_app.url)
    wait_until(lambda: outbox_keys(follower) == [], timeout=15, what="the leftover dropped")
    assert not [s for s in sent if cid in s], sent
    assert not client.exists(f"conversations/{cid}/prompts")


def test_a_prompt_left_unsent_for_a_conversation_deleted_since_is_dropped(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """The browser was closed with a prompt unsent, and the conversation deleted from another
    device: the next start sent the prompt before it had read the list that says so, and the
    prompt's retry (a 404 makes the outbox create the streams) brought the deleted
    conversation back."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Deleted while the browser was closed"))
    before = new_context()
    writer = open_chat(before, f"{chat_app.url}/#/c/{cid}")
    writer.route(lambda url: f"/conversations/{cid}/" in url and "live=" not in url,
                 lambda route: route.abort("connectionrefused"))
    stuck = unique("Never to be sent")
    send_unsent(writer, stuck)
    storage = before.storage_state()  # the browser's profile as it is closed
    before.close()

    chat.delete_conversation(cid)
    client = StreamsClient(f"{chat_app.url}/v1/stream")
    wait_removed(client, cid)
    after = new_context(storage_state=storage)
    sent: list[str] = []
    after.on("request", lambda r: sent.append(f"{r.method} {r.url}") if r.method != "GET" else None)
    # The list unread for long (the server was away): nothing left over is sent meanwhile,
    # however long it takes (a 10 s cap on that wait let it go).
    page = after.new_page()
    page.route("**/v1/stream/conversations?*", lambda route: route.abort("connectionrefused"))
    page.goto(chat_app.url)
    page.wait_for_timeout(13_000)
    assert not [s for s in sent if cid in s], sent
    page.unroute("**/v1/stream/conversations?*")
    wait_ready(page)
    wait_until(lambda: outbox_keys(page) == [], timeout=10, what="the closed tab's outbox taken on")
    expect(page.get_by_test_id("composer-input")).to_have_value(stuck)  # given back
    expect(page.get_by_test_id("deleted-conversation")).to_have_text(re.compile(
        "^“Deleted while the browser was closed .*” was deleted before a message sent to it"
        " reached the server: it is back in the message box.$"))
    assert_it_stays_deleted(page, sent, client, cid)


def test_a_tab_refused_the_list_still_sends_its_prompts(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """Prompts wait for the tab's own read of the list of conversations; a tab that does not
    hold its live read retried a refused read (401) for ever, so they waited for ever."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Listed, but not to this tab"))
    context = new_context()
    open_chat(context, chat_app.url)  # holds the list's live read
    follower = context.new_page()
    follower.route("**/v1/stream/conversations?*", lambda route: route.fulfill(
        status=401, content_type="application/json",
        body=json.dumps({"error": {"code": "UNAUTHORIZED", "message": "not for this tab"}})))
    follower.goto(f"{chat_app.url}/#/c/{cid}")
    prompt = unique("Sent all the same")
    replies.set(prompt, "Answered.")
    send_prompt(follower, prompt)
    wait_state(follower, prompt, "done")


def test_a_prompt_sent_before_the_list_is_read_does_not_rename_its_conversation(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """A link to a listed conversation, and a prompt sent before the page had read the list:
    not knowing the conversation, the page started it anew, and its `conversation` message
    renamed it after the prompt for everyone."""
    title = unique("Named before the prompt")
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(title)
    page = new_context().new_page()
    page.route("**/v1/stream/conversations?*", lambda route: route.abort("connectionrefused"))
    page.goto(f"{chat_app.url}/#/c/{cid}")
    prompt = unique("Sent before the list came")
    replies.set(prompt, "Answered under the old title.")
    send_prompt(page, prompt)
    wait_state(page, prompt, "sending")
    page.unroute("**/v1/stream/conversations?*")
    wait_state(page, prompt, "done")
    expect(page.get_by_test_id("conversation-title")).to_have_text(title)
    listed = [m for m in read_json_stream(chat_app.url, "conversations")
              if m.get("id") == cid and m.get("type") == "conversation"]
    assert [m["title"] for m in listed] == [title], listed


def test_a_refused_subscription_fails_its_prompt_and_holds_up_nothing_else(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """The page makes a conversation's subscription and streams before its first message; a
    refusal of those (a 400 cannot change by asking again) was retried for ever, and every
    message queued after it waited behind it, those to other conversations too."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    other = chat.start_conversation(unique("Reached all the same"))
    page = open_chat(new_context(), chat_app.url)
    page.route("**/v1/stream/__ds/subscriptions/*", lambda route: route.fulfill(
        status=400, content_type="application/json",
        body=json.dumps({"error": {"code": "BAD_REQUEST", "message": "no subscriptions here"}}))
        if route.request.method == "PUT" else route.continue_())
    refused = unique("Starts a conversation")
    send_prompt(page, refused)
    wait_state(page, refused, "failed")
    expect(turn_for(page, refused).get_by_test_id("prompt")).to_contain_text("no subscriptions here")
    page.goto(f"{chat_app.url}/#/c/{other}")
    prompt = unique("Sent after the refusal")
    replies.set(prompt, "Answered.")
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    assert outbox_keys(page) == []


def test_a_frozen_tab_s_unsent_prompt_for_a_conversation_deleted_since_is_dropped(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A background tab the browser froze saw no deletion; once it is closed, the tab that
    takes on its prompt has read the list already, and must not send it (see above)."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Deleted while a tab was frozen"))
    context = new_context()
    other = open_chat(context, chat_app.url)  # first: it holds the list's live connection
    writer = open_chat(context, f"{chat_app.url}/#/c/{cid}")
    writer.route(lambda url: f"/conversations/{cid}/" in url and "live=" not in url,
                 lambda route: route.abort("connectionrefused"))
    stuck = unique("Never to be sent")
    send_unsent(writer, stuck)
    frozen = context.new_cdp_session(writer)  # its script stopped, as a frozen tab's is
    frozen.send("Debugger.enable")
    frozen.send("Debugger.pause")

    chat.delete_conversation(cid)
    client = StreamsClient(f"{chat_app.url}/v1/stream")
    wait_removed(client, cid)
    expect(other.locator(f'[data-conversation-id="{cid}"]')).to_have_count(0)
    assert stuck in "".join(other.evaluate("() => Object.values(localStorage)"))  # still unsent
    sent: list[str] = []
    other.on("request", lambda r: sent.append(f"{r.method} {r.url}") if r.method != "GET" else None)
    writer.close()
    # (Taken on by `other`, or dropped by the closing tab itself, whose script runs again as
    # the debugger lets go of it: either way it is not sent.)
    wait_until(lambda: outbox_keys(other) == [], timeout=10, what="the closed tab's outbox taken on")
    assert_it_stays_deleted(other, sent, client, cid)


def test_deleted_elsewhere_while_renaming_focus_goes_to_the_message_box_with_the_text_kept(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation(unique("Renamed when deleted"))
    link = f"{chat_app.url}/#/c/{cid}"
    renamer, deleter = open_chat(new_context(), chat_app.url), open_chat(new_context(), link)
    box = renamer.get_by_test_id("composer-input")
    box.fill("a draft for a new conversation")
    renamer.locator(f'[data-conversation-id="{cid}"]').click()
    box.fill("written in the doomed one")
    renamer.get_by_test_id("rename-conversation").click()
    renamer.get_by_test_id("rename-input").fill("half typed")
    deleter.once("dialog", lambda dialog: dialog.accept())
    deleter.get_by_test_id("delete-conversation").click()
    expect(renamer.get_by_test_id("deleted-conversation")).to_be_visible()
    expect(box).to_be_focused()
    expect(box).to_have_value("a draft for a new conversation\n\nwritten in the doomed one")


def test_an_answer_and_its_code_are_copied_as_written(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    prompt = unique("Some code, please")
    reply = "Here it is:\n\n```python\nprint('hi')\n```\n\nThat is **all**."
    replies.set(prompt, reply)
    page = open_chat(new_context(permissions=["clipboard-read", "clipboard-write"]), chat_app.url)
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    turn = turn_for(page, prompt)
    turn.get_by_test_id("copy-answer").click()
    expect(turn.get_by_test_id("copy-answer")).to_have_text("Copied")
    expect(turn.get_by_test_id("copy-answer")).to_have_attribute("aria-label", "Copied")
    # Said too: a screen reader seldom reads out the new label of the button it is on.
    expect(page.get_by_test_id("announcer")).to_contain_text("Copied.")
    turn.get_by_test_id("copy-answer").click()  # again before it says Copy: its label stays
    expect(turn.get_by_test_id("copy-answer")).to_have_attribute(
        "aria-label", "Copy the answer (Markdown)")
    assert norm(page.evaluate("() => navigator.clipboard.readText()")) == norm(reply)
    turn.locator("[data-copy-code]").click()
    assert page.evaluate("() => navigator.clipboard.readText()").strip() == "print('hi')"


def test_a_lost_append_response_is_retried_and_stored_once(chat_app: ServerProcess, model: FakeAnthropic,
                                                           new_context: NewContext) -> None:
    """The POST reaches the server and is stored, but its response is lost: the retry must
    carry the same producer identity, so the server answers it as a duplicate."""
    page = open_chat(new_context(), chat_app.url)
    opening = unique("First things first")
    send_prompt(page, opening)
    wait_state(page, opening, "done")
    cid = conversation_id(page)
    prompt = unique("Did this arrive twice?")
    attempts: list[dict[str, str]] = []
    stored: list[int] = []

    def drop_first_response(route: Route, request: Request) -> None:
        if request.method == "POST" and prompt in (request.post_data or ""):
            attempts.append(request.headers)
            if not stored:
                stored.append(route.fetch().status)  # the server stores it...
                route.abort("connectionreset")  # ...and the browser never hears back
                return
        route.continue_()

    page.route(lambda url: url.endswith(f"/conversations/{cid}/prompts"), drop_first_response)
    # The aborted attempt gets no response event: the first response is the retry's.
    with page.expect_response(lambda r: r.request.method == "POST" and prompt in (r.request.post_data or "")) as retry:
        send_prompt(page, prompt)
    wait_state(page, prompt, "done")

    assert stored == [200]
    assert retry.value.status == 204, "the retry was not recognised as a duplicate"
    assert len(attempts) >= 2, "the lost append was not retried"
    tuples = {(h["producer-id"], h["producer-epoch"], h["producer-seq"]) for h in attempts}
    assert len(tuples) == 1, f"the retry changed its producer identity: {tuples}"
    contents = [m.get("content") for m in prompt_messages(chat_app.url, cid) if m.get("type") == "prompt"]
    assert contents == [opening, prompt]
    assert page.get_by_test_id("turn").count() == 2


def test_a_prompt_sent_while_the_server_is_down_is_delivered_once(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies, new_context: NewContext) -> None:
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"AGENT_LEASE_TTL_MS": "3000"})  # a dead agent's lease ends soon
    try:
        context = new_context()
        page = open_chat(context, app.url)
        opening = unique("Before the outage")
        send_prompt(page, opening)
        wait_state(page, opening, "done")
        cid = conversation_id(page)
        prompt, reply = unique("Sent during the outage"), words("back", 12)
        replies.set(prompt, reply)
        attempts: list[dict[str, str]] = []
        failures: list[str] = []

        def is_this_prompt(request: Request) -> bool:
            return request.method == "POST" and prompt in (request.post_data or "")

        page.on("request", lambda r: attempts.append(r.headers) if is_this_prompt(r) else None)
        page.on("requestfailed", lambda r: failures.append(r.url) if is_this_prompt(r) else None)

        app.kill()
        send_prompt(page, prompt)
        wait_state(page, prompt, "sending")
        banner = page.get_by_test_id("connection-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text(re.compile("Reconnecting|Retrying"))
        expect(page.get_by_test_id("connection-pill")).to_have_attribute("data-state", "reconnecting")
        expect(page.get_by_test_id("flow-node-browser")).to_contain_text("reconnecting")
        while len(failures) < 2:  # events are delivered only inside Playwright calls: no race
            page.wait_for_event("requestfailed", predicate=is_this_prompt)

        app.start()
        wait_state(page, prompt, "done", timeout=40_000)
        expect(banner).to_be_hidden()
        expect(page.get_by_test_id("connection-pill")).to_have_attribute("data-state", "live")

        assert answer_text(page, prompt) == norm(reply)
        tuples = {(h["producer-id"], h["producer-epoch"], h["producer-seq"]) for h in attempts}
        assert len(attempts) >= 3 and len(tuples) == 1, f"retries must keep one producer identity: {tuples}"
        prompts = [m for m in prompt_messages(app.url, cid) if m.get("type") == "prompt"]
        assert [m["content"] for m in prompts] == [opening, prompt]
        prompt_id = prompts[1]["id"]
        finals = [m for m in response_messages(app.url, cid)
                  if m.get("promptId") == prompt_id and m.get("isComplete")]
        assert [m["type"] for m in finals] == ["done"]
        assert streamed_answer(app.url, cid, prompt_id) == reply
    finally:
        app.terminate()


FETCH_TIMES_JS = r"""
(() => {
  const opened = (window.__fetchesAnswered = []);
  const fetch = window.fetch;
  window.fetch = async (...args) => {
    const res = await fetch(...args);
    const url = new URL(args[0] instanceof Request ? args[0].url : String(args[0]));
    opened.push({ path: url.pathname, live: url.searchParams.get("live"), status: res.status,
                  at: performance.now() });
    return res;
  };
})();
"""


def test_after_an_outage_the_first_answer_heard_brings_every_live_read_back(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies, new_context: NewContext) -> None:
    """Live reads that lost the server each waited out their own backoff, up to 5 s: once
    it was back, a page could stream new text while it still said "Reconnecting", and the
    reads of a conversation came back one by one over seconds. Now the first request that
    hears from the server wakes the others."""
    app = start_chat_app(tmp_path / "app", model_url=model.url)
    try:
        context = new_context()
        context.add_init_script(FETCH_TIMES_JS)
        page = open_chat(context, app.url)
        opening = unique("Before the outage")
        send_prompt(page, opening)
        wait_state(page, opening, "done")
        live_paths = set(page.evaluate(
            "() => window.__fetchesAnswered.filter(f => f.live === 'sse').map(f => f.path)"))
        assert len(live_paths) >= 3, live_paths

        app.kill()
        pill = page.get_by_test_id("connection-pill")
        expect(pill).to_have_attribute("data-state", "reconnecting")
        page.wait_for_timeout(9000)  # the reads' backoff reaches its longest: naps of 2.5-5 s
        app.start()
        back_at = page.evaluate("() => performance.now()")
        prompt = unique("After the outage")
        replies.set(prompt, "Back.")
        send_prompt(page, prompt)
        wait_state(page, prompt, "done")
        expect(pill).to_have_attribute("data-state", "live")
        answered = [f for f in page.evaluate("() => window.__fetchesAnswered") if f["at"] > back_at]
        heard_at = min(f["at"] for f in answered if f["status"] < 500)
        reopened = {f["path"]: f["at"] for f in reversed(answered) if f["live"] == "sse" and f["status"] == 200}
        assert set(reopened) >= live_paths, live_paths - set(reopened)
        late = {path: round(reopened[path] - heard_at) for path in live_paths
                if reopened[path] - heard_at > 1000}
        assert not late, f"live reads back this many ms after the server was first heard: {late}"
    finally:
        app.terminate()


def test_a_stop_pressed_while_the_server_is_down_keeps_the_text_it_stopped_at(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies, new_context: NewContext) -> None:
    """With the server killed mid-answer, a Stop waits in the page until the server is back,
    and by then the server's agent may have restarted the answer: the Stop ended the new
    attempt, and the answer went back to its first words. It keeps what the user saw."""
    model.tokens_per_second = 15
    app = start_chat_app(tmp_path / "app", model_url=model.url)
    try:
        page = open_chat(new_context(), app.url)
        prompt, prompt_id = start_long_answer(page, replies, "Count slowly", words("n", 300), 8)
        cid = conversation_id(page)
        app.kill()
        page.keyboard.press("Escape")
        expect(turn_for(page, prompt)).to_have_attribute("data-state", "cancelling")
        app.start()
        wait_state(page, prompt, "cancelled", timeout=40_000)
        stored_first = "".join(m["content"] for m in response_messages(app.url, cid)
                               if m.get("type") == "chunk" and m.get("promptId") == prompt_id
                               and m.get("attempt") == 0)
        assert len(norm(stored_first).split()) >= 8
        assert answer_text(page, prompt) == norm(stored_first)
        page.reload()
        wait_ready(page)
        wait_state(page, prompt, "cancelled")
        assert answer_text(page, prompt) == norm(stored_first)
        # Its meta line said "Answer restarted 2×" and "0 in · 0 out tokens": the answer
        # shown is the one its user stopped, and what it used is not known.
        meta = turn_for(page, prompt).get_by_test_id("answer-meta")
        expect(meta).to_contain_text("Stopped by request")
        expect(meta).not_to_contain_text("restarted")
        expect(meta).not_to_contain_text("tokens")
    finally:
        app.terminate()


def test_a_frozen_server_is_noticed_and_the_answer_resumes_when_it_thaws(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies, new_context: NewContext) -> None:
    """A server that stops answering without closing its connections (frozen, or a network
    path that died) used to leave the page showing "Live" and "Sending…" forever. The page
    now counts on the server's SSE keep-alives (0.4 s here, 15 s by default)."""
    model.tokens_per_second = 10
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_KEEPALIVE_S": "0.4"})
    try:
        page = open_chat(new_context(), app.url)
        prompt, reply = unique("Talk while I freeze"), words("thaw", 40)
        replies.set(prompt, reply)
        prompt_id = send_prompt(page, prompt)
        wait_words(page, prompt_id, 3)
        pill = page.get_by_test_id("connection-pill")
        expect(pill).to_have_attribute("data-state", "live")
        phone = open_chat(new_context(viewport=PHONE), app.url)

        app.send_signal(signal.SIGSTOP)
        try:
            expect(pill).to_have_attribute("data-state", "reconnecting", timeout=10_000)
            expect(page.get_by_test_id("connection-banner")).to_be_visible()
            # Whatever the agent does now, the page cannot see it: not "streaming".
            expect(page.get_by_test_id("flow-node-agent")).to_have_attribute("data-state", "unseen")
            expect(page.get_by_test_id("flow-node-agent")).to_contain_text("out of sight")
            # Said once, by the banner (an alert): not also by the pill and the announcer.
            live_regions = page.locator("[role=alert], [role=status], [aria-live]:not([aria-live=off])")
            expect(live_regions.filter(has_text=re.compile("Reconnect|Connection lost"))).to_have_count(1)
            # The pill's wider "Reconnecting" used to push a phone's page past its screen.
            expect(phone.get_by_test_id("connection-pill")).to_have_attribute(
                "data-state", "reconnecting", timeout=10_000)
            assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            second = unique("Sent to the frozen server")
            replies.set(second, words("later", 5))
            send_prompt(page, second)
            wait_state(page, second, "sending")
        finally:
            app.send_signal(signal.SIGCONT)
        wait_state(page, prompt, "done", timeout=40_000)
        wait_state(page, second, "done", timeout=40_000)
        expect(pill).to_have_attribute("data-state", "live")
        assert answer_text(page, prompt) == norm(reply)
        assert_grew_cleanly(turn_log(page, prompt_id), reply)
        prompts = [m["content"] for m in prompt_messages(app.url, conversation_id(page))
                   if m.get("type") == "prompt"]
        assert prompts == [prompt, second]  # the retried append was stored once
    finally:
        app.terminate()


def test_a_draft_typed_for_a_new_conversation_survives_a_reload(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """A conversation not started yet gets a new id on every load: its draft was kept under
    that id, so a reload lost it (drafts of existing conversations survived)."""
    page = open_chat(new_context(), chat_app.url)
    box = page.get_by_test_id("composer-input")
    draft = unique("Half a thought")
    box.fill(draft)
    page.reload()
    wait_ready(page)
    expect(page.get_by_test_id("composer-input")).to_have_value(draft)

    # A started conversation keeps its own draft, read before the list of conversations
    # has loaded (which used to fall back to the new conversation's).
    send_prompt(page, draft)
    wait_state(page, draft, "done")
    box.fill("the new conversation's draft")
    page.get_by_test_id("new-conversation").click()
    box.fill("a draft of the new conversation")
    page.go_back()
    expect(box).to_have_value("the new conversation's draft")
    page.reload()
    wait_ready(page)
    expect(page.get_by_test_id("composer-input")).to_have_value("the new conversation's draft")


def test_an_announcement_made_at_once_after_another_joins_it_instead_of_replacing_it(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """A screen reader reads a replaced live region from its new text: "Answer complete."
    replaced a moment later by "The agent is thinking." was never heard."""
    model.first_token_delay = 3.0  # each prompt is "thinking" for that long
    page = open_chat(new_context(), chat_app.url)
    first = unique("First question")
    send_prompt(page, first)
    wait_state(page, first, "done")
    send_prompt(page, unique("Second question, at once"))
    expect(page.get_by_test_id("announcer")).to_have_text(
        "Answer complete. The agent is thinking.")


def test_a_message_waiting_for_the_answer_above_is_announced_as_waiting(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """A message sent behind an answer being written was announced as "The agent is
    thinking." (twice, joined) where the page shows it waiting; withdrawn, it was later
    announced as "Answer stopped." once the agent had ended it."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    first, second = unique("A long answer to wait for"), unique("Waiting behind it")
    replies.set(first, words("long", 60))
    first_id = send_prompt(page, first)
    wait_words(page, first_id, 3)
    page.get_by_test_id("announcer").evaluate("""a => {
        window.said = [];
        new MutationObserver(() => { if (a.textContent) window.said.push(a.textContent); })
            .observe(a, { childList: true, characterData: true, subtree: true });
    }""")
    send_prompt(page, second)
    wait_state(page, second, "queued")
    expect(page.get_by_test_id("announcer")).to_contain_text("Your message waits for the answer above.")
    turn_for(page, second).get_by_test_id("cancel-queued").click()
    expect(page.get_by_test_id("announcer")).to_contain_text("Message withdrawn: it will not be answered.")
    wait_state(page, first, "done", timeout=30_000)
    wait_state(page, second, "cancelled")
    expect(page.get_by_test_id("announcer")).to_contain_text("Answer complete.")
    page.wait_for_timeout(300)
    said = page.evaluate("window.said")
    assert not any(text.endswith("The agent is thinking.") for text in said), said
    assert not any("Answer stopped" in text for text in said), said


def test_answers_are_announced_while_the_streams_panel_covers_the_chat(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Under 1180 px the streams panel opens over the chat, which is then inert: the live
    region inside it was out of the accessibility tree, so "Answer complete." was never
    said to someone watching the live view."""
    model.first_token_delay = 1.0
    page = open_chat(new_context(viewport={"width": 1000, "height": 800}), chat_app.url)
    prompt = unique("Answer while I watch the streams")
    send_prompt(page, prompt)
    page.get_by_test_id("toggle-streams").click()
    expect(page.get_by_test_id("close-streams")).to_be_focused()
    wait_state(page, prompt, "done")
    announcer = page.get_by_test_id("announcer")
    expect(announcer).to_contain_text("Answer complete.")
    assert announcer.evaluate("el => el.closest('[inert]') === null"), "announced out of hearing"


def refuse_posts(route: Route, request: Request) -> None:
    """A route that refuses appends for good (400), and lets the rest through."""
    if request.method == "POST":
        route.fulfill(status=400, content_type="application/json", body=json.dumps(
            {"error": {"code": "BAD_REQUEST", "message": "this server refuses it"}}))
    else:
        route.fallback()


def test_a_prompt_the_server_refuses_and_a_failed_answer_are_announced_with_their_reason(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A refused prompt only showed "Not sent" under its bubble, and a failed answer was
    announced as "The answer failed." without the reason the page shows."""
    page = open_chat(new_context(), chat_app.url)
    model.fail_next("401")
    failing = unique("Fail this answer")
    send_prompt(page, failing)
    wait_state(page, failing, "error")
    reason = turn_for(page, failing).get_by_test_id("answer-error").text_content()
    assert reason
    announcer = page.get_by_test_id("announcer")
    expect(announcer).to_contain_text(f"The answer failed: {reason}")

    page.route(re.compile(r".*/v1/stream/conversations/[^/?]+/prompts(\?.*)?$"), refuse_posts)
    box = page.get_by_test_id("composer-input")
    box.fill("Refuse this prompt")
    box.press("Enter")
    expect(announcer).to_contain_text("Your message was not sent")
    expect(announcer).to_contain_text("It is back in the message box.")
    expect(box).to_have_value("Refuse this prompt")


def test_a_rename_the_server_refuses_is_announced_with_its_reason(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """Only a refused prompt was reported: a rename, a deletion or a Stop that the server
    refused for good was dropped without a word, the title shown changed or not."""
    page = open_chat(new_context(), chat_app.url)
    prompt = unique("Name me")
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")

    page.route(re.compile(r".*/v1/stream/conversations(\?.*)?$"), refuse_posts)
    page.get_by_test_id("rename-conversation").click()
    page.get_by_test_id("rename-input").fill("A title refused")
    page.get_by_test_id("rename-input").press("Enter")
    expect(page.get_by_test_id("announcer")).to_contain_text(
        "The conversation's title was not saved: this server refuses it.")


def test_a_refused_prompt_is_kept_in_its_conversation_s_draft_whatever_the_box_holds(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A refused prompt went back to the message box only when the box was empty and its
    conversation open; else it was kept in memory only, under its failed bubble, and a
    reload lost it."""
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    link = f"{chat_app.url}/#/c/{chat.start_conversation(unique('Refusals'))}"
    page = open_chat(new_context(), link)
    held: list[Route] = []
    page.route(re.compile(r".*/v1/stream/conversations/[^/?]+/prompts(\?.*)?$"),
               lambda route, request: held.append(route) if request.method == "POST" else route.fallback())

    def refuse_held() -> None:
        wait_held(page, held)
        held.pop().fulfill(status=400, content_type="application/json", body=json.dumps(
            {"error": {"code": "BAD_REQUEST", "message": "this server refuses it"}}))

    box = page.get_by_test_id("composer-input")
    send_unsent(page, "Refused while I type")
    box.fill("typed meanwhile")
    refuse_held()
    wait_state(page, "Refused while I type", "failed")
    expect(box).to_have_value("typed meanwhile\n\nRefused while I type")
    box.fill("")
    send_unsent(page, "Refused while I am elsewhere")
    page.get_by_test_id("new-conversation").click()
    refuse_held()
    page.wait_for_timeout(500)
    page.goto(link)
    expect(box).to_have_value("Refused while I am elsewhere")
    page.reload()
    expect(box).to_have_value("Refused while I am elsewhere")


def test_focus_on_a_waiting_messages_cancel_goes_to_the_message_box_when_its_answer_begins(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """The Cancel button of a message waiting behind an answer goes once its own answer
    begins: focused, the focus fell to the page's body."""
    model.tokens_per_second = 20
    page = open_chat(new_context(), chat_app.url)
    first, second = unique("Answered first"), unique("Then this one")
    queue_behind_an_answer(page, replies, first, words("first", 30), second, 2)
    turn_for(page, second).get_by_test_id("cancel-queued").focus()
    wait_state(page, first, "done", timeout=30_000)
    expect(turn_for(page, second).get_by_test_id("cancel-queued")).to_have_count(0)
    expect(page.get_by_test_id("composer-input")).to_be_focused()


def test_a_code_block_streaming_in_keeps_its_node_and_the_focus_on_its_copy_button(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """A code block still streaming in was built anew at every chunk: its Copy button,
    focused, lost the focus to the page's body within a frame, so a keyboard user could not
    copy the block until the answer ended (and a block scrolled sideways went back)."""
    model.tokens_per_second = 25
    page = open_chat(new_context(), chat_app.url)
    prompt = unique("Some code, slowly")
    replies.set(prompt, "Here it is:\n\n```python\n"
                + "\n".join(f"value_{n} = {n}" for n in range(40)) + "\n```\n\nThat is all.")
    send_prompt(page, prompt)
    block = turn_for(page, prompt).locator(".md-code")
    copy = block.locator(".md-code-copy")
    expect(copy).to_have_count(1)
    copy.focus()
    copy.evaluate("button => { button.dataset.marked = 'kept'; }")
    expect(block.locator("code")).to_contain_text("value_15")
    expect(copy).to_be_focused()
    wait_state(page, prompt, "done")
    expect(copy).to_have_attribute("data-marked", "kept")  # the same button all along
    expect(copy).to_be_focused()
    expect(block.locator("code [class^='tok-']").first).to_be_attached()  # coloured once closed


def test_focus_stays_in_the_conversation_when_stop_goes_or_a_drawer_opens_one(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """Focus fell to the page's body, where a screen reader says nothing and the next Tab
    starts over: when the focused Stop button went with the end of its answer, and when a
    conversation was picked from the list in the drawer of a narrow screen."""
    page = open_chat(new_context(viewport=PHONE), chat_app.url)
    model.first_token_delay = 1.5
    first = unique("Answer while Stop has the focus")
    send_prompt(page, first)
    page.get_by_test_id("stop-button").focus()
    wait_state(page, first, "done")
    expect(page.get_by_test_id("composer-input")).to_be_focused()
    model.first_token_delay = 0.0

    page.get_by_test_id("toggle-sidebar").click()
    page.get_by_test_id("new-conversation").click()
    second = unique("The second conversation")
    send_prompt(page, second)
    wait_state(page, second, "done")
    page.get_by_test_id("toggle-sidebar").click()
    item = page.get_by_test_id("conversation-item").filter(has_text=first)
    item.focus()
    page.keyboard.press("Enter")
    expect(turn_for(page, first)).to_have_count(1)
    # The conversation, not the message box: that would open a phone's keyboard.
    expect(page.locator("#main")).to_be_focused()


def test_escape_stops_the_answer_with_the_focus_in_the_conversation_list(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """Esc stopped an answer only with the focus inside the conversation: after a click on
    a conversation in the list, where the focus stays, it did nothing."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    prompt, _ = start_long_answer(page, replies, "Go on while I look at the list",
                                  words("item", 200), 3)
    page.get_by_test_id("conversation-item").filter(has_text="Go on while I look").focus()
    page.keyboard.press("Escape")
    wait_state(page, prompt, "cancelled")


def test_a_screen_reader_is_told_who_says_what(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A turn was a prompt and an answer with nothing between them but a hidden avatar: a
    screen reader could not tell where the question ended and the answer began."""
    page = open_chat(new_context(), chat_app.url)
    prompt = unique("Who is speaking")
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    tree = turn_for(page, prompt).aria_snapshot()
    assert re.search(r'article "You said":[\s\S]*Who is speaking', tree), tree
    assert 'article "The agent answered":' in tree, tree


def test_a_long_draft_in_a_short_window_leaves_the_conversation_and_send_in_view(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A phone held sideways (or a page zoomed to 200 %): the message box grew to 220 px and
    squeezed the conversation to a few pixels."""
    page = open_chat(new_context(viewport={"width": 640, "height": 360}), chat_app.url)
    prompt = unique("Short window")
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    page.get_by_test_id("composer-input").fill("\n".join(f"line {i}" for i in range(15)))
    scroller = page.get_by_test_id("message-scroll").bounding_box()
    send = page.get_by_test_id("send-button").bounding_box()
    assert scroller and send
    assert scroller["height"] >= 100, scroller  # it was 12 px
    assert send["y"] + send["height"] <= 360, send


def test_the_message_box_shows_its_focus_and_a_readable_placeholder_in_the_dark(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Its focus showed only as a 1 px border of another colour, and in the dark scheme its
    placeholder was the browser's grey, at 3.8:1 against the box."""
    page = open_chat(new_context(color_scheme="dark"), chat_app.url)
    box = page.get_by_test_id("composer-input")
    box.focus()
    composer = page.get_by_test_id("composer")
    assert composer.evaluate("el => getComputedStyle(el).outlineStyle") == "solid"
    assert composer.evaluate("el => getComputedStyle(el).outlineWidth") == "2px"
    placeholder = box.evaluate("el => getComputedStyle(el, '::placeholder').color")
    assert placeholder == css_color(page, "--muted"), placeholder


def test_the_focus_ring_of_an_answers_button_is_drawn_whole(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """A turn is not painted outside its box (it skips layout while off screen), which cut
    off the bottom of the focus ring of the buttons under an answer."""
    page = open_chat(new_context(device_scale_factor=2), chat_app.url)
    prompt = unique("Ring")
    replies.set(prompt, "A short answer.")
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    copy = turn_for(page, prompt).get_by_test_id("copy-answer")
    box = copy.bounding_box()
    assert box
    # 1-4 px under the button, where the ring's lower edge is (2 px offset, 2 px wide)
    under: FloatRect = {"x": box["x"] - 4, "y": box["y"] + box["height"] + 1, "width": box["width"] + 8, "height": 3}
    unfocused = page.screenshot(clip=under)
    copy.focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")  # from the keyboard, so that :focus-visible draws the ring
    expect(copy).to_be_focused()
    assert page.screenshot(clip=under) != unfocused, "no focus ring under the button"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_muted_text_is_readable_on_every_background_it_is_on(
        chat_app: ServerProcess, new_context: NewContext, scheme: str) -> None:
    """Tags ("Answer restarted") and the raw streams' entry types are muted text on the
    darkest surface: 4.499:1 in the light scheme, under the 4.5:1 of WCAG AA."""
    page = open_chat(new_context(color_scheme=scheme), chat_app.url)
    muted = css_color(page, "--muted")
    for surface in ("--surface", "--surface-2", "--surface-3"):
        ratio = contrast(muted, css_color(page, surface))
        assert ratio >= 4.5, (scheme, surface, round(ratio, 3))



@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_diagram_lines_and_code_colours_stand_out_from_their_background(
        chat_app: ServerProcess, new_context: NewContext, scheme: str) -> None:
    """The flow diagram's idle arrows were the colour of borders, 1.6:1 against the panel
    (WCAG asks 3:1 of graphics that carry meaning); coloured code must read as text does."""
    page = open_chat(new_context(color_scheme=scheme), chat_app.url)
    surface = css_color(page, "--surface")
    edge = page.locator(".flow-edge").first.evaluate("el => getComputedStyle(el).stroke")
    assert contrast(edge, surface) >= 3, (scheme, edge, surface)
    for token in ("keyword", "string", "comment", "number", "literal"):
        ratio = contrast(css_color(page, f"--tok-{token}"), surface)
        assert ratio >= 4.5, (scheme, token, round(ratio, 2))

def css_color(page: Page, variable: str) -> str:
    """The page's CSS colour variable as the browser computes it ("rgb(r, g, b)")."""
    return str(page.evaluate("""(name) => {
        const probe = document.createElement("span");
        probe.style.color = `var(${name})`;
        document.body.append(probe);
        const color = getComputedStyle(probe).color;
        probe.remove();
        return color;
    }""", variable))


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two "rgb(r, g, b)" colours."""
    def luminance(color: str) -> float:
        channels = [int(v) / 255 for v in re.findall(r"\d+", color)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    lighter, darker = sorted((luminance(first), luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


TITLES_FROM_PROMPTS = [
    ("```python\ndef merge(a, b):\n    pass\n```", "def merge(a, b):"),
    ("# Big heading\nand more", "Big heading"),
    ("## Closed heading ##", "Closed heading"),
    ("**Bold** question about `code`?", "Bold question about code?"),
    ("> a *quoted* line", "a quoted line"),
    ("- [a link](https://example.com) and ![an image](a.png)", "a link and an image"),
    ("---\n1. First, ~~this~~ that", "First, this that"),
    ("snake_case_name and _emphasis_", "snake_case_name and emphasis"),
    ("2 * 3 * 4 and #hashtag", "2 * 3 * 4 and #hashtag"),
    ("```\n```", "Untitled"),
    ("What is 5*5*5?", "What is 5*5*5?"),  # no emphasis inside words
    ("2024. A year to remember", "2024. A year to remember"),  # not a numbered item
    ("\\*Not emphasis\\*", "*Not emphasis*"),
    ("See [Rust](https://en.wikipedia.org/wiki/Rust_(programming_language)) and explain",
     "See Rust and explain"),  # the URL's parentheses: it said "See Rust) and explain"
    ("\u202eReversed\u200b and\u2066 isolated", "Reversed and isolated"),  # as the list shows it
    ("\u200b\u2060", "Untitled"),
]


def test_a_title_made_from_a_prompt_leaves_its_markdown_out(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A first prompt of code was titled "```python", others "# Big heading" or
    "**Bold** question about `code`?": the title is now the text the line shows."""
    page = open_chat(new_context(), chat_app.url)
    titles = page.evaluate("""async (prompts) => {
        const protocol = await import("/ui/js/chat-protocol.js");
        return prompts.map((prompt) => protocol.titleFrom(prompt));
    }""", [prompt for prompt, _ in TITLES_FROM_PROMPTS])
    assert titles == [title for _, title in TITLES_FROM_PROMPTS]
    prompt = "## " + unique("A **heading** asked")
    send_prompt(page, prompt)
    expect(page.get_by_test_id("conversation-title")).to_have_text(
        prompt.removeprefix("## ").replace("**", ""))


def test_a_conversation_in_the_list_opens_in_a_new_tab_and_shows_its_whole_title(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """The list's items were buttons: no Ctrl+click, middle click or "Open in new tab", in a
    chat whose point is that every tab shows the same conversation live. A long title was
    cut short with no way to read it but the rename box."""
    context = new_context()
    page = open_chat(context, chat_app.url)
    long_title = unique("A question whose title goes on " + "and on " * 12)
    send_prompt(page, long_title)
    wait_state(page, long_title, "done")
    cid = conversation_id(page)
    item = page.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
    expect(item).to_have_attribute("href", f"#/c/{cid}")
    title = next(m["title"] for m in read_json_stream(chat_app.url, "conversations")
                 if m.get("id") == cid and m.get("type") == "conversation")
    assert len(title) > 50, title  # more than the list shows
    expect(item.locator(".conversation-item-title")).to_have_attribute("title", title)
    expect(page.get_by_test_id("conversation-title")).to_have_attribute("title", title)
    page.get_by_test_id("new-conversation").click()
    with context.expect_page() as opened:
        item.click(modifiers=["Control"])
    tab = opened.value
    wait_ready(tab)
    assert conversation_id(tab) == cid
    expect(turn_for(tab, long_title)).to_have_attribute("data-state", "done")
    expect(page.get_by_test_id("message-list").get_by_test_id("turn")).to_have_count(0)
    item.click()  # a plain click opens it here
    expect(turn_for(page, long_title)).to_have_count(1)


def test_a_prompt_from_another_tab_leaves_the_focus_on_the_answers_button(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """A new prompt makes the answer before it no longer the last, and its buttons were made
    anew without the focus: a keyboard user on its Copy or Try again fell to the body."""
    model.tokens_per_second = 15
    page = open_chat(new_context(), chat_app.url)
    stopped, _ = start_long_answer(page, replies, "Stop, then another tab asks",
                                   words("item", 100), 3)
    page.get_by_test_id("stop-button").click()
    wait_state(page, stopped, "cancelled")
    turn = turn_for(page, stopped)
    turn.get_by_test_id("retry").focus()
    other = open_chat(new_context(), page.url)
    send_prompt(other, unique("From another tab"))
    expect(page.get_by_test_id("turn")).to_have_count(2)
    expect(turn.get_by_test_id("retry")).to_have_count(0)  # no longer the last turn
    expect(turn.get_by_test_id("copy-answer")).to_be_focused()


def test_a_link_to_an_unknown_conversation_says_so_and_a_message_starts_it(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    cid = f"nosuch{uuid.uuid4().hex[:8]}"
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    notice = page.get_by_test_id("unknown-conversation")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("no conversation at this link")
    prompt = unique("Starting it here")
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    assert conversation_id(page) == cid
    expect(page.get_by_test_id("welcome")).to_be_hidden()
    page.goto(f"{chat_app.url}/#/c/{cid}")
    page.reload()
    wait_ready(page)
    expect(turn_for(page, prompt)).to_have_count(1)
    expect(notice).to_be_hidden()


@pytest.mark.parametrize("link", ["#/c/bad!id", "#/c/bad id with spaces", "#/c/" + "x" * 65, "#/c/",
                                  "#/garbage", "#c/abc"])
def test_a_link_that_names_no_possible_conversation_says_so(
        chat_app: ServerProcess, new_context: NewContext, link: str) -> None:
    """A mistyped or cut link opened a new conversation without a word."""
    page = open_chat(new_context(), f"{chat_app.url}/{link}")
    notice = page.get_by_test_id("deleted-conversation")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("This link does not name a conversation")
    assert page.evaluate("window.location.hash") == ""
    page.evaluate(f"window.location.hash = {link!r}")  # typed into the address bar
    expect(notice).to_be_visible()


def test_an_answer_that_stops_growing_says_what_may_be_going_on(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """After a crash the half answer sat there for up to the lease's TTL with only its
    blinking cursor; now, after 10 s without new text, it says what may be going on."""
    model.tokens_per_second = 1 / 20  # the second word comes 20 s after the first
    page = open_chat(new_context(), chat_app.url)
    prompt = unique("Answer slowly")
    replies.set(prompt, "Slowly then.")
    send_prompt(page, prompt)
    turn = turn_for(page, prompt)
    expect(turn).to_have_attribute("data-state", "streaming")
    expect(turn).to_have_attribute("data-stalled", "false")
    agent_node = page.get_by_test_id("flow-node-agent")
    expect(agent_node).to_have_attribute("data-state", "streaming")
    expect(turn).to_have_attribute("data-stalled", "true", timeout=18_000)
    # The flow diagram no longer says the agent is streaming either.
    expect(agent_node).to_have_attribute("data-state", "stalled")
    expect(agent_node).to_contain_text("no new text")
    # Shown, not only written: the status of a streaming answer was hidden by the stylesheet.
    expect(turn.get_by_test_id("answer-status")).to_be_visible()
    expect(turn.get_by_test_id("answer-status")).to_have_text(
        "No new text for a while. If the agent stopped, another one resumes this answer within 30 s.")
    # Below the text, where a reader of a long answer is (above it, it was off screen).
    status_box, text_box = (turn.get_by_test_id(t).bounding_box() for t in ("answer-status", "answer-text"))
    assert status_box and text_box and status_box["y"] >= text_box["y"] + text_box["height"]
    wait_state(page, prompt, "done", timeout=30_000)
    expect(turn).not_to_contain_text("If the agent stopped")
    expect(agent_node).to_have_attribute("data-state", "idle")


def test_an_answer_whose_model_is_rate_limited_counts_down_to_the_next_try(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """While the agent waited out a 429's retry-after, the page said nothing of it, then
    that the agent might have stopped."""
    page = open_chat(new_context(), chat_app.url)
    prompt = unique("Rate limited")
    replies.set(prompt, "Worth the wait.")
    model.fail_next("429", retry_after=12)
    send_prompt(page, prompt)
    turn = turn_for(page, prompt)
    status = turn.get_by_test_id("answer-status")
    expect(status).to_contain_text(
        "The AI model is receiving too many requests (rate limited). Trying again in 1")
    expect(status).to_contain_text("s (retry 1 of 3).")
    expect(turn).to_have_attribute("data-waiting", "true")
    expect(page.get_by_test_id("flow-node-agent")).to_contain_text("model busy: retrying")
    expect(page.get_by_test_id("announcer")).to_contain_text(  # said to a screen reader too
        "The AI model is receiving too many requests (rate limited). Trying again in 12 s.")
    first = status.text_content()
    expect(status).not_to_have_text(first or "")  # it counts down
    # Past the 10 s after which a silent answer is called stalled, the wait is not.
    expect(status).to_contain_text("Trying again in 1 s", timeout=12_000)
    expect(turn).to_have_attribute("data-stalled", "false")
    wait_state(page, prompt, "done", timeout=30_000)
    expect(turn.get_by_test_id("answer-text")).to_have_text("Worth the wait.")
    expect(turn).to_have_attribute("data-waiting", "false")
    expect(turn).not_to_contain_text("Trying again")


def test_an_answer_no_agent_takes_over_says_none_may_be_running(
        tmp_path: Path, new_context: NewContext) -> None:
    """An answer whose agent was gone, with no other to take over (no supervisor running),
    promised a takeover "within 30 s" for ever. Past the stall and an agent's lease, it
    says that the model may be slow or no agent running, and for how long it has waited (it
    said the same "for 12 s" for ever)."""
    app = start_chat_app(tmp_path / "app", model_url="http://127.0.0.1:9",
                         config={"EMBEDDED_SUPERVISOR": "false", "AGENT_LEASE_TTL_MS": "6000"})
    try:
        chat = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=6000)
        cid = chat.start_conversation("an agent gone")
        prompt_id = chat.send_prompt(cid, "question")
        answers = chat.client.producer(f"conversations/{cid}/responses", "gone-agent", auto_claim=True)
        answers.append([{"type": "chunk", "id": f"{prompt_id}-0", "promptId": prompt_id, "attempt": 0,
                         "content": "The first words, and then", "isComplete": False,
                         "timestamp": int(time.time() * 1000)}])
        page = open_chat(new_context(), f"{app.url}/#/c/{cid}")
        turn = turn_for(page, "question")
        status = turn.get_by_test_id("answer-status")
        expect(turn).to_have_attribute("data-state", "streaming")
        expect(status).to_have_text(re.compile("If the agent stopped, another one resumes this"
                                               " answer within 6 s"), timeout=15_000)
        expect(status).to_be_visible()
        overdue = re.compile(r"No new text for (\d+) s\. The model may be slow, or no agent is"
                             r" running: the answer goes on once one is\.")
        expect(status).to_have_text(overdue, timeout=12_000)
        expect(status).to_be_visible()
        waited = int(overdue.fullmatch(status.text_content() or "").group(1))  # type: ignore[union-attr]
        assert 15 <= waited <= 20, waited
        expect(status).to_contain_text(f"No new text for {waited + 5} s.", timeout=10_000)
    finally:
        app.terminate()


def test_stop_with_the_server_away_says_stopping_at_once_and_stops_when_it_is_back(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """The Stop button went, but the answer went on saying "Answering…" until the server
    was back and the cancel had been read back from it."""
    model.tokens_per_second = 5
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"AGENT_LEASE_TTL_MS": "3000"})
    try:
        page = open_chat(new_context(), app.url)
        prompt, prompt_id = start_long_answer(page, replies, "Answer until stopped",
                                              words("slow", 200), shown=2)
        app.kill()
        expect(page.get_by_test_id("connection-banner")).to_be_visible()
        page.keyboard.press("Escape")
        wait_state(page, prompt, "cancelling")
        expect(turn_for(page, prompt)).to_contain_text("Stopping…")
        app.start()
        wait_state(page, prompt, "cancelled", timeout=40_000)
        assert {"type": "cancel", "promptId": prompt_id} in [
            {k: m.get(k) for k in ("type", "promptId")}
            for m in prompt_messages(app.url, conversation_id(page))]
    finally:
        app.terminate()


def test_an_answer_cut_off_by_a_lost_connection_blames_the_connection_not_the_agent(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """With the server down, an answer without new text said that if its agent had stopped,
    another would resume it within 30 s: a promise nothing could keep before the server was
    back, beside a banner saying the connection was lost."""
    model.tokens_per_second = 5
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"AGENT_LEASE_TTL_MS": "3000"})  # a dead agent's lease ends soon
    try:
        page = open_chat(new_context(), app.url)
        reply = words("slow", 40)
        prompt, _ = start_long_answer(page, replies, "Answer over an outage", reply, shown=2)
        app.kill()
        expect(page.get_by_test_id("connection-banner")).to_be_visible()
        turn = turn_for(page, prompt)
        expect(turn).to_have_attribute("data-stalled", "true", timeout=18_000)
        expect(turn).to_contain_text("No new text while the connection is lost")
        expect(turn).not_to_contain_text("If the agent stopped")

        app.start()
        wait_state(page, prompt, "done", timeout=40_000)
        expect(turn).not_to_contain_text("connection is lost")
        assert answer_text(page, prompt) == norm(reply)
    finally:
        app.terminate()


def test_a_conversation_whose_prompts_stream_was_closed_says_so_and_takes_no_more_prompts(
        chat_app: ServerProcess, replies: ScriptedReplies, new_context: NewContext) -> None:
    """The box stayed open, and every prompt failed with "Not sent: stream ... is closed"."""
    page = open_chat(new_context(), chat_app.url)
    answered, cid = answered_conversation(page, "Answered before the close")
    StreamsClient(f"{chat_app.url}/v1/stream").close_stream(f"conversations/{cid}/prompts")
    for _ in range(2):  # live, then after a reload
        expect(page.get_by_test_id("composer-closed")).to_have_text(
            "This conversation takes no more prompts: its prompts stream has been closed."
            " Start a new conversation to go on.")
        expect(page.get_by_test_id("composer-input")).to_be_disabled()
        expect(turn_for(page, answered).get_by_test_id("answer-meta")).to_be_visible()
        page.reload()
        wait_ready(page)


def test_a_conversation_whose_responses_stream_was_closed_says_so_and_takes_no_more_prompts(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    """Any client may close a stream (section 5.2), and no answer can be written to a closed
    responses stream. The answer waiting for it used to say "Thinking" for good, the box took
    prompts no agent could answer, and the agent was restarted every 30 s."""
    page = open_chat(new_context(), chat_app.url)
    answered, cid = answered_conversation(page, "Answered before the close")
    model.first_token_delay = 30.0  # the next answer is thinking when the stream closes
    waiting = unique("Waiting as it closes")
    send_prompt(page, waiting)
    wait_state(page, waiting, "thinking")
    StreamsClient(f"{chat_app.url}/v1/stream").close_stream(f"conversations/{cid}/responses")

    def says_closed(page: Page) -> None:
        wait_state(page, answered, "done")
        wait_state(page, waiting, "error")
        expect(turn_for(page, waiting).get_by_test_id("answer-error")).to_have_text(
            "No answer can be written: this conversation's responses stream has been closed.")
        expect(turn_for(page, waiting).get_by_test_id("retry")).to_have_count(0)
        expect(page.get_by_test_id("composer-closed")).to_be_visible()
        expect(page.get_by_test_id("composer-input")).to_be_disabled()
        expect(page.get_by_test_id("stop-button")).to_be_hidden()

    says_closed(page)
    page.reload()
    wait_ready(page)
    says_closed(page)
    # Another conversation takes prompts as before.
    page.get_by_test_id("new-conversation").click()
    expect(page.get_by_test_id("composer-input")).to_be_enabled()
    expect(page.get_by_test_id("composer-closed")).to_be_hidden()
    model.first_token_delay = 0.0
    after = unique("In a new conversation")
    send_prompt(page, after)
    wait_state(page, after, "done")
    assert not [m for m in prompt_messages(chat_app.url, cid) if m.get("type") == "prompt"
                and m.get("content") not in (answered, waiting)]


def test_on_a_phone_the_message_box_keeps_its_room_while_stop_shows(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    model.tokens_per_second = 5
    page = open_chat(new_context(viewport={"width": 360, "height": 740}), chat_app.url)
    prompt = unique("Keep talking")
    replies.set(prompt, words("w", 60))
    send_prompt(page, prompt)
    expect(page.get_by_test_id("stop-button")).to_be_visible()
    box = page.get_by_test_id("composer-input").bounding_box()
    composer = page.get_by_test_id("composer").bounding_box()
    assert box is not None and composer is not None
    print(f"message box {box['width']:.0f} of {composer['width']:.0f} px")
    assert box["width"] >= 0.6 * composer["width"]
    # The buttons still say what they do, to screen readers too.
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360


def test_a_page_ahead_of_a_wiped_server_says_so(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """An operator wiped the data directory while a page was open: the page's offsets are
    past the new streams' tails. It used to show "HTTP 400: offset is beyond the stream's
    tail" and nothing more."""
    data = tmp_path / "app"
    app = start_chat_app(data, model_url=model.url)
    try:
        page = open_chat(new_context(), app.url)
        prompt = unique("Before the wipe")
        send_prompt(page, prompt)
        wait_state(page, prompt, "done")
        model.fail_next("401")
        failed = unique("Failed before the wipe")
        send_prompt(page, failed)
        wait_state(page, failed, "error")
        app.terminate()
        shutil.rmtree(data)
        app.start()
        # Another page (or client) recreates the conversation list, shorter than before.
        created(requests.put(f"{app.url}/v1/stream/conversations",
                             headers={"Content-Type": "application/json"}, timeout=10))
        expect(page.get_by_test_id("connection-banner")).to_contain_text(
            "streams were reset or replaced since this page read them. Reload the page",
            timeout=20_000)
        # Sent now, a prompt went to a conversation the server no longer lists, out of sight.
        after = unique("After the wipe")
        page.get_by_test_id("composer-input").fill(after)
        page.get_by_test_id("composer-input").press("Enter")
        expect(page.get_by_test_id("composer-error")).to_contain_text(
            "Reload the page before sending: your message stays here")
        expect(page.get_by_test_id("composer-input")).to_have_value(after)
        # Nor is a failed prompt asked again; its button, refused, still works (it stayed
        # disabled until the turn changed, which it does not).
        try_again = turn_for(page, failed).get_by_test_id("retry")
        try_again.click()
        expect(page.get_by_test_id("composer-error")).to_contain_text("Reload the page to ask again")
        expect(try_again).to_be_enabled()
        page.reload()
        wait_ready(page)
        send_prompt(page, after)
        wait_state(page, after, "done")
    finally:
        app.terminate()


def test_a_message_sent_after_the_server_lost_everything_lists_its_conversation_again(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """The data directory wiped with no agents running, nothing made the conversation list
    again: a message the open page sent made the conversation's streams anew, and nobody
    listed it, so no page loaded afterwards showed that conversation."""
    data = tmp_path / "app"
    app = start_chat_app(data, model_url=model.url, config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        page = open_chat(new_context(), app.url)
        before = unique("Before the wipe")
        send_prompt(page, before)
        cid = page.evaluate("() => location.hash.slice('#/c/'.length)")
        deadline = time.monotonic() + 10
        while not any(m.get("id") == cid for m in read_json_stream(app.url, "conversations")):
            assert time.monotonic() < deadline, "the conversation was never listed"
            time.sleep(0.1)
        # Sent, not only shown: a prompt still on its way at the wipe is sent again after
        # it, making the conversation's streams again (CI once caught that half done).
        wait_until(lambda: any(m.get("content") == before for m in read_json_stream(
            app.url, f"conversations/{cid}/prompts")), timeout=10, what="the prompt stored")
        wait_state(page, before, "thinking")
        app.terminate()
        shutil.rmtree(data)
        app.start()
        expect(page.get_by_test_id("streams-missing")).to_contain_text(
            "Nothing of this conversation is on the server", timeout=20_000)
        after = unique("After the wipe")
        send_prompt(page, after)
        fresh = open_chat(new_context(), app.url)
        item = fresh.locator(f'[data-testid="conversation-item"][data-conversation-id="{cid}"]')
        expect(item).to_contain_text("Before the wipe")
        item.click()
        expect(turn_for(fresh, after)).to_have_count(1)
    finally:
        app.terminate()


def test_a_prompt_too_long_to_keep_is_refused_in_the_page_and_its_text_kept(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Over about 2.5 million characters a prompt no longer fit the tab's sessionStorage,
    so a reload before the server had it lost it (and the prompts behind it), with only a
    console warning. The page now refuses prompts over a million characters, saying so."""
    page = open_chat(new_context(), chat_app.url)
    box = page.get_by_test_id("composer-input")
    box.evaluate("(el, n) => { el.value = 'x'.repeat(n); el.dispatchEvent(new Event('input')); }",
                 1_000_001)
    box.press("Enter")
    error = page.get_by_test_id("composer-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("too long to send: 1,000,001 characters, the limit is 1,000,000")
    assert box.evaluate("el => el.value.length") == 1_000_001  # kept, to be shortened
    expect(page.get_by_test_id("turn")).to_have_count(0)
    box.fill("short enough")
    expect(error).to_be_hidden()


AT_BOTTOM_JS = """() => {
  const s = document.querySelector('[data-testid="message-scroll"]');
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}"""


def test_a_conversation_of_long_turns_opens_and_stays_at_its_newest_text(
    chat_app: ServerProcess, new_context: NewContext, model: FakeAnthropic,
    replies: ScriptedReplies,
) -> None:
    """Turns off screen are laid out at an estimated height, so a scroll to the bottom landed
    short once they were laid out for real: such a conversation opened in the middle of a
    long prompt, and the next answer streamed below, out of sight."""
    model.tokens_per_second = 100
    page = open_chat(new_context(), chat_app.url)
    page.get_by_test_id("new-conversation").click()
    pasted = unique("\n".join(f"log line {i:04d}: something happened in module alpha beta"
                              for i in range(170)))
    replies.set(pasted, words("first", 30))
    send_prompt(page, pasted)
    wait_state(page, pasted, "done")
    question = unique("What went wrong?")
    replies.set(question, words("second", 300))
    question_id = send_prompt(page, question)
    wait_words(page, question_id, 150)
    assert page.evaluate(AT_BOTTOM_JS)  # following the answer as it streams
    wait_state(page, question, "done")
    page.wait_for_function(AT_BOTTOM_JS, timeout=5000)

    page.reload()
    wait_ready(page)
    wait_state(page, question, "done")
    # Each turn near the bottom is laid out for real a frame after it is first shown.
    after_two_frames(page)
    page.wait_for_function(AT_BOTTOM_JS, timeout=5000)
    expect(turn_for(page, question).get_by_test_id("answer-text")).to_be_in_viewport()

    page.get_by_test_id("message-scroll").evaluate("s => s.scrollTo(0, 0)")  # reading back
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"message-scroll\"]').scrollTop === 0")
    later = unique("And then?")
    replies.set(later, words("third", 40))
    page.get_by_test_id("composer-input").fill(later)
    page.get_by_test_id("composer-input").press("Enter")  # sending shows the newest again
    wait_state(page, later, "done")
    page.wait_for_function(AT_BOTTOM_JS, timeout=5000)


def test_a_long_prompt_shows_its_first_lines_until_the_reader_asks_for_all_of_it(
    chat_app: ServerProcess, new_context: NewContext, replies: ScriptedReplies,
) -> None:
    """A pasted log of 200,000 characters made a bubble 78,000 px tall, scrolled past on
    every visit. Its start shows now, with a button for the rest; the text stays whole in
    the page, and a prompt that fits has no button."""
    page = open_chat(new_context(), chat_app.url)
    page.get_by_test_id("new-conversation").click()
    fits = unique("\n".join(f"step {i}" for i in range(25)))
    replies.set(fits, "Fine.")
    send_prompt(page, fits)
    wait_state(page, fits, "done")
    expect(turn_for(page, fits).get_by_test_id("prompt-toggle")).to_be_hidden()

    pasted = unique("\n".join(f"log line {i:05d}: something happened in module alpha beta"
                              for i in range(3600)))
    assert len(pasted) > 200_000
    replies.set(pasted, "Noted.")
    box = page.get_by_test_id("composer-input")
    box.evaluate("(el, text) => { el.value = text; el.dispatchEvent(new Event('input')); }", pasted)
    box.press("Enter")
    turn = page.get_by_test_id("turn").last
    expect(turn).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    bubble = turn.locator(".bubble")
    toggle = turn.get_by_test_id("prompt-toggle")
    expect(toggle).to_have_text(f"Show all ({len(pasted):,} characters)")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    box_height = bubble.evaluate("node => node.getBoundingClientRect().height")
    assert 200 < box_height < 700, box_height
    assert turn.locator(".bubble-text").text_content() == pasted

    scroll = page.get_by_test_id("message-scroll")
    where = scroll.evaluate("s => s.scrollTop")
    toggle.click()
    expect(toggle).to_have_text("Show less")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    assert bubble.evaluate("node => node.getBoundingClientRect().height") > 50_000
    # Read on from where the fold was: the view stays (it went to the prompt's end).
    page.wait_for_timeout(300)
    assert scroll.evaluate("s => s.scrollTop") == where
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    assert bubble.evaluate("node => node.getBoundingClientRect().height") == box_height
    expect(toggle).to_be_in_viewport()


def long_answer_below_a_tall_turn(page: Page, model: FakeAnthropic, replies: ScriptedReplies
                                  ) -> tuple[str, str, Locator]:
    """A new conversation tall enough to scroll, and a long answer streaming at its bottom,
    the pointer over the turns: (the prompt, its id, the turns' scroll box)."""
    model.tokens_per_second = 200
    page.get_by_test_id("new-conversation").click()
    tall = unique("\n".join(f"line {i}" for i in range(120)))  # the view scrolls
    replies.set(tall, "Noted.")
    send_prompt(page, tall)
    wait_state(page, tall, "done")
    model.tokens_per_second = 10
    prompt, prompt_id = start_long_answer(page, replies, "Tell me a long story",
                                          words("story", 200), shown=5)
    page.wait_for_function(AT_BOTTOM_JS)
    scroll = page.get_by_test_id("message-scroll")
    pointer_over(page, scroll)
    return prompt, prompt_id, scroll


def pointer_over(page: Page, target: Locator) -> None:
    box = target.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_scrolling_up_a_little_while_an_answer_streams_stops_following_it(
    chat_app: ServerProcess, new_context: NewContext, model: FakeAnthropic,
    replies: ScriptedReplies,
) -> None:
    """A reader who scrolled up less than the "near the bottom" margin (an arrow key, a slow
    drag on a phone) was pulled back down by the next words of the answer. And a taller
    composer hid the newest text behind it."""
    page = open_chat(new_context(), chat_app.url)
    prompt, prompt_id, scroll = long_answer_below_a_tall_turn(page, model, replies)
    page.mouse.wheel(0, -40)
    page.wait_for_function("""() => {
      const s = document.querySelector('[data-testid="message-scroll"]');
      return s.scrollHeight - s.scrollTop - s.clientHeight >= 30;
    }""")
    where = scroll.evaluate("s => s.scrollTop")
    shown = len(answer_text(page, prompt).split())
    wait_words(page, prompt_id, shown + 20)
    assert scroll.evaluate("s => s.scrollTop") == where  # left where the reader put it

    scroll.evaluate("s => s.scrollTo(0, s.scrollHeight)")  # back at the bottom: following
    page.wait_for_function(AT_BOTTOM_JS)
    wait_words(page, prompt_id, shown + 40)
    page.wait_for_function(AT_BOTTOM_JS)
    page.get_by_test_id("stop-button").click()
    wait_state(page, prompt, "cancelled")
    page.wait_for_function(AT_BOTTOM_JS)
    page.get_by_test_id("composer-input").fill("\n".join(["a taller draft"] * 8))
    page.wait_for_function(AT_BOTTOM_JS)  # the list did not change; its box shrank


def test_a_reader_scrolled_up_is_offered_the_way_back_to_the_newest_text(
    chat_app: ServerProcess, new_context: NewContext, model: FakeAnthropic,
    replies: ScriptedReplies,
) -> None:
    """Scrolled up while an answer streamed, nothing said that text was coming in below,
    and there was no one-click way back to it."""
    page = open_chat(new_context(), chat_app.url)
    prompt, prompt_id, scroll = long_answer_below_a_tall_turn(page, model, replies)
    jump = page.get_by_test_id("jump-latest")
    expect(jump).to_be_hidden()  # following the answer
    # A message waiting after it: the text still comes in above the last turn (it said
    # "Newest", from the last turn alone).
    waiting = unique("Waiting behind the story")
    send_prompt(page, waiting)
    pointer_over(page, scroll)
    page.mouse.wheel(0, -600)
    expect(jump).to_be_visible()
    expect(jump).to_have_class(re.compile(r"\bhas-new\b"))  # the answer goes on below
    expect(jump).to_have_text("New text below")
    jump.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(AT_BOTTOM_JS)
    expect(jump).to_be_hidden()
    expect(page.get_by_test_id("composer-input")).to_be_focused()  # not the page's body
    shown = len(answer_text(page, prompt).split())
    wait_words(page, prompt_id, shown + 10)
    page.wait_for_function(AT_BOTTOM_JS)  # following again
    page.get_by_test_id("stop-button").click()
    wait_state(page, prompt, "cancelled")
    wait_state(page, waiting, "done")

    pointer_over(page, scroll)
    page.mouse.wheel(0, -600)  # nothing comes in: the button only leads back
    expect(jump).to_be_visible()
    expect(jump).to_have_text("Newest")
    page.get_by_test_id("new-conversation").click()
    expect(jump).to_be_hidden()
    # From a new conversation to another: Back stepped through one entry per click.
    entries = page.evaluate("history.length")
    page.get_by_test_id("new-conversation").click()
    page.get_by_test_id("new-conversation").click()
    assert page.evaluate("history.length") == entries
    page.go_back()
    expect(turn_for(page, prompt)).to_be_visible()


def test_a_deep_link_scrolls_the_conversation_list_to_its_conversation(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        chat = ChatClient(StreamsClient(f"{app.url}/v1/stream"), lease_ttl_ms=30_000)
        oldest = chat.start_conversation("The oldest one")  # listed last, newest first
        for n in range(40):
            chat.start_conversation(f"Filler {n}")
        page = open_chat(new_context(), f"{app.url}/#/c/{oldest}")
        item = page.locator(f'[data-conversation-id="{oldest}"]')
        expect(item).to_have_attribute("aria-current", "page")
        expect(item).to_be_in_viewport()
        # Only the list scrolled: New conversation went out of sight with it.
        expect(page.get_by_test_id("new-conversation")).to_be_in_viewport()
    finally:
        app.terminate()


def test_a_list_of_200_000_conversations_shows_a_page_of_them_and_more_on_demand(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """The list was built with one argument per conversation (`replaceChildren(...items)`),
    more than a call can take past about 120,000: the list stayed empty (the inspector's
    shortcuts too). It now shows the most recent ones and more at a click, and a deep link
    to the oldest still lists it."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        count, per_post = 200_000, 10_000
        requests.put(f"{app.url}/v1/stream/conversations", timeout=10,
                     headers={"Content-Type": "application/json"}).raise_for_status()
        for first in range(0, count, per_post):
            batch = [{"type": "conversation", "id": f"c{n:06d}", "title": f"Conversation {n}",
                      "timestamp": 1_700_000_000_000 + n} for n in range(first, first + per_post)]
            response = requests.post(f"{app.url}/v1/stream/conversations", data=json.dumps(batch),
                                     headers={"Content-Type": "application/json"}, timeout=30)
            assert response.status_code in (200, 204), response.text
        page = new_context().new_page()
        page.goto(app.url)
        # Reading 15 MB of list took this machine 2-5 s.
        expect(page.get_by_test_id("app")).to_have_attribute("data-ready", "true", timeout=60_000)
        items = page.get_by_test_id("conversation-item")
        expect(items.first).to_have_attribute("data-conversation-id", f"c{count - 1:06d}")
        shown = items.count()
        assert 0 < shown < 1_000, shown
        more = page.get_by_test_id("conversation-list-more")
        expect(more).to_contain_text(f"{count - shown:,}")
        more.click()
        expect(items).to_have_count(2 * shown)
        expect(items.nth(shown)).to_be_focused()  # the keyboard goes on where the list does
        append_to_conversations(app, {"type": "activity", "id": "c000500", "timestamp": 1})
        expect(items.first).to_have_attribute("data-conversation-id", "c000500")

        page.goto(f"{app.url}/#/c/c000000")
        oldest = page.locator('[data-conversation-id="c000000"]')
        expect(oldest).to_have_attribute("aria-current", "page", timeout=60_000)
        expect(oldest).to_be_in_viewport()

        page.goto(f"{app.url}/inspector")  # its shortcuts were built the same way
        expect(page.get_by_test_id("conversation-shortcuts-more")).to_contain_text(
            f"{count:,} conversations", timeout=60_000)
        expect(page.get_by_test_id("conversation-shortcuts").locator(".path-group")).to_have_count(500)
    finally:
        app.terminate()


def test_a_conversation_of_many_turns_shows_the_newest_and_older_ones_on_demand(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Every turn on the page cost each frame of a streaming answer: with 3,000 the page was
    busy the whole time, with tasks of 60 ms. The newest 100 are shown, older ones 100 at a
    click, and the reader stays at the turn they were reading."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        client = StreamsClient(f"{app.url}/v1/stream")
        cid = ChatClient(client, lease_ttl_ms=30_000).start_conversation("Many turns")
        ids = [f"turn-{n:03d}" for n in range(250)]
        prompts = client.producer(f"conversations/{cid}/prompts", "test", auto_claim=True)
        prompts.append([{"type": "prompt", "id": pid, "content": f"Question {pid}",
                         "timestamp": 0} for pid in ids])
        client.producer(f"conversations/{cid}/responses", "test", auto_claim=True).append(
            [message for pid in ids for message in (
                {"type": "chunk", "promptId": pid, "content": f"Answer {pid}", "isComplete": False},
                {"type": "done", "promptId": pid, "stopReason": "end_turn", "isComplete": True})])
        page = open_chat(new_context(), f"{app.url}/#/c/{cid}")
        turns = page.get_by_test_id("turn")
        expect(turns).to_have_count(100)
        expect(turns.last).to_have_attribute("data-prompt-id", "turn-249")
        page.wait_for_function(AT_BOTTOM_JS)
        earlier = page.get_by_test_id("earlier-turns")
        expect(earlier).to_have_text("Show 100 earlier turns (150 not shown)")

        page.get_by_test_id("message-scroll").evaluate("s => s.scrollTo(0, 0)")
        earlier.click()
        expect(turns).to_have_count(200)
        expect(turns.first).to_have_attribute("data-prompt-id", "turn-050")
        expect(page.locator('[data-prompt-id="turn-150"]')).to_be_in_viewport()
        expect(page.locator('[data-prompt-id="turn-050"]')).not_to_be_in_viewport()
        expect(earlier).to_have_text("Show 50 earlier turns (50 not shown)")
        # Scrolled up, the reader keeps the turns they may be reading as new ones come in.
        prompts.append([{"type": "prompt", "id": "turn-250", "content": "One more", "timestamp": 0}])
        expect(turns).to_have_count(201)
        expect(turns.first).to_have_attribute("data-prompt-id", "turn-050")
        page.get_by_test_id("message-scroll").evaluate("s => s.scrollTo(0, 0)")
        earlier.click()
        expect(turns).to_have_count(251)
        expect(earlier).to_have_count(0)
        expect(page.locator('[data-prompt-id="turn-050"]')).to_be_focused()
        expect(page.locator('[data-prompt-id="turn-050"]')).to_be_in_viewport()

        page.goto(f"{app.url}/#/c/{ChatClient(client, lease_ttl_ms=30_000).start_conversation('Few')}")
        expect(earlier).to_have_count(0)
        page.goto(f"{app.url}/#/c/{cid}")  # back: the newest 100 again
        expect(turns).to_have_count(100)
    finally:
        app.terminate()


def test_a_narrow_table_scrolls_instead_of_breaking_its_words(
        chat_app: ServerProcess, model: FakeAnthropic, replies: ScriptedReplies,
        new_context: NewContext) -> None:
    columns = ["Notes", "left", "right", "bold", "italic", "strike", "code", "quote", "links"]
    table = "\n".join(["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns),
                       "| " + " | ".join(w.upper() for w in columns) + " |"])
    prompt = unique("A wide table, please")
    replies.set(prompt, f"Here:\n\n{table}\n")
    page = open_chat(new_context(viewport=PHONE), chat_app.url)
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    lines_per_cell = page.evaluate("""() => [...document.querySelectorAll('.md-table th, .md-table td')]
        .map(cell => { const r = document.createRange(); r.selectNodeContents(cell);
                       return [cell.textContent, r.getClientRects().length]; })""")
    assert len(lines_per_cell) == 2 * len(columns)
    assert all(lines == 1 for _, lines in lines_per_cell), lines_per_cell
    wrapper = page.locator(".md-table").last
    assert wrapper.evaluate("w => w.scrollWidth > w.clientWidth")  # it scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_a_live_read_answered_with_an_empty_event_stream_backs_off_and_says_so(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """A proxy (or a server going down) may answer an SSE read with 200 and nothing in it:
    taken for the server's periodic end of a response, it was asked again at once, in a
    loop, with nothing shown."""
    context = new_context()
    hits: list[float] = []

    def empty(route: Route, request: Request) -> None:
        hits.append(time.monotonic())
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body="")

    context.route(re.compile(r".*/v1/stream/conversations\?.*live=sse.*"), empty)
    page = context.new_page()
    page.goto(chat_app.url)  # it does not get ready: the list is read live
    while len(hits) < 5:  # the route runs while Playwright waits, not while Python sleeps
        page.wait_for_event("request", lambda r: "live=sse" in r.url)
    assert hits[4] - hits[0] >= 1.5, [round(t - hits[0], 3) for t in hits[:5]]
    expect(page.get_by_test_id("connection-banner")).to_contain_text("Reconnecting")


def test_a_tab_whose_own_catch_up_failed_says_live_again_when_it_succeeds(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """A tab that does not hold the list's live read catches up by itself (here as it is
    shown again). Its reads refused (503) said "Reconnecting"; the retry that got through
    left it so, and only a change of the live read's status in the other tab could clear
    it, which a healthy one never sends."""
    browser = new_context()
    open_chat(browser, chat_app.url)  # holds the list's live read
    page = open_chat(browser, chat_app.url)
    refused: list[str] = []

    def refuse_thrice(route: Route, request: Request) -> None:
        if len(refused) == 3:  # retried after 0.1-0.25, 0.25-0.5 and 0.5-1 s
            route.continue_()
            return
        refused.append(request.url)
        route.fulfill(status=503, headers={"Content-Type": "application/json"},
                      body='{"error":{"code":"UNAVAILABLE","message":"busy"}}')

    page.route(lambda url: "/v1/stream/conversations?" in url and "live=" not in url, refuse_thrice)
    page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
    deadline = time.monotonic() + 10
    while not refused:  # the page's routes run only while the test waits on it
        assert time.monotonic() < deadline, "the tab did not catch up"
        page.wait_for_timeout(50)
    banner = page.get_by_test_id("connection-banner")
    expect(banner).to_contain_text("Reconnecting")
    expect(banner).to_be_hidden(timeout=10_000)


@pytest.mark.parametrize("held_method, long_prompt", [("PUT", False), ("POST", True)],
                         ids=["stream creation", "long prompt"])
def test_a_request_the_server_never_answers_is_given_up_and_retried(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies, new_context: NewContext,
        held_method: str, long_prompt: bool) -> None:
    """Only appends and live reads were timed: a new conversation whose stream creation
    (a PUT) got no answer stayed "Sending…" for good, with no retry and no banner. Then a
    body over 64 KiB was not timed (a slow upload is not a stalled server): a long prompt
    whose POST was never answered (a connection half open) held the outbox, and every later
    message of every conversation, for good. It gets time for a slow upload."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"SSE_KEEPALIVE_S": "0.4", "SSE_MAX_DURATION_S": "1"})
    try:
        page = open_chat(new_context(), app.url)
        held: list[Route] = []

        def hold_first(route: Route) -> None:
            if route.request.method == held_method and not held:
                held.append(route)  # never answered
            else:
                route.continue_()

        page.route(re.compile(r".*/v1/stream/conversations/[^/]+/prompts$"), hold_first)
        prompt, reply = unique("Through a lost request"), words("kept", 5)
        if long_prompt:
            prompt += " " + words("pasted", 4_000)  # ~40,000 characters
        replies.set(prompt, reply)
        send_prompt(page, prompt)
        wait_state(page, prompt, "done", timeout=40_000)
        assert len(held) == 1
        assert answer_text(page, prompt) == norm(reply)
        page.unroute("**/*")
    finally:
        app.terminate()


def test_a_browser_event_source_gets_every_message_once_across_the_servers_reconnects(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """Any page may read a stream with the browser's own `EventSource`. The server ends each
    SSE response after `SSE_MAX_DURATION_S`, and EventSource reconnects to the same URL by
    itself: from the URL's offset, everything came again. Event ids make it resume."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"SSE_MAX_DURATION_S": "1"})
    try:
        stream = f"{app.url}/v1/stream/event-source-{uuid.uuid4().hex[:6]}"
        json_type = {"Content-Type": "application/json"}
        requests.put(stream, data="[0]", headers=json_type, timeout=10).raise_for_status()
        page = open_chat(new_context(), app.url)
        page.evaluate("""url => {
            window.received = []; window.opened = 0;
            const source = new EventSource(url);
            source.addEventListener("data", (event) => window.received.push(event.data));
            source.addEventListener("open", () => { window.opened += 1; });
        }""", f"{stream}?offset=-1&live=sse")
        page.wait_for_function("() => window.opened >= 2 && window.received.length >= 1")
        requests.post(stream, data="[1]", headers=json_type, timeout=10).raise_for_status()
        page.wait_for_function("() => window.received.includes('[1]')")
        opened = page.evaluate("() => window.opened")
        page.wait_for_function(f"() => window.opened > {opened}")  # once more: nothing again
        assert page.evaluate("() => window.received") == ["[0]", "[1]"]
    finally:
        app.terminate()


def test_a_large_prompt_on_a_slow_upload_is_stored_once_not_restarted(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies, new_context: NewContext) -> None:
    """An append had a time budget of the silence plus 50 kB/s: a slower upload was cut off
    and started again from zero, forever."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"SSE_KEEPALIVE_S": "0.4", "SSE_MAX_DURATION_S": "1"})
    try:
        page = open_chat(new_context(), app.url)
        prompt = unique("Long") + " " + "x" * 100_000
        replies.set(prompt, "Received.")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1,
            "uploadThroughput": 25_000})  # bytes/s: four seconds for this prompt
        posts: list[Request] = []
        page.on("request", lambda r: posts.append(r) if r.method == "POST"
                and "/prompts" in r.url else None)
        box = page.get_by_test_id("composer-input")
        box.evaluate("(el, text) => { el.value = text; el.dispatchEvent(new Event('input')); }",
                     prompt)
        box.press("Enter")
        wait_state(page, prompt, "done", timeout=40_000)
        assert len(posts) == 1, f"the upload was restarted: {len(posts)} POSTs"
    finally:
        app.terminate()


def fill_storage(app: ServerProcess, cid: str) -> None:
    """Fill an app's storage quota: a `filler` stream (deleted to make room), then the last
    page of the conversation's prompts stream, with messages the chat and the agents ignore."""
    assert requests.put(f"{app.url}/v1/stream/filler", timeout=10,
                        headers={"Content-Type": "application/octet-stream"}).status_code == 201
    fill_stream(app.url, "filler", "application/octet-stream", [b"x" * 16384])
    fill_stream(app.url, f"conversations/{cid}/prompts", "application/json",
                [json.dumps({"type": "padding", "pad": "p" * n}).encode() for n in (200, 40, 0)])


def fill_stream(app_url: str, path: str, content_type: str, pieces: list[bytes]) -> None:
    """Append each piece in turn until the server refuses it with 507 (storage full)."""
    url = f"{app_url}/v1/stream/{path}"
    for piece in pieces:
        while (r := requests.post(url, data=piece, headers={"Content-Type": content_type},
                                  timeout=10)).status_code == 204:
            pass
        assert r.status_code == 507, (r.status_code, r.text)


def test_a_prompt_sent_while_storage_is_full_waits_and_is_sent_when_there_is_room(
        tmp_path: Path, model: FakeAnthropic, replies: ScriptedReplies, new_context: NewContext) -> None:
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"MAX_STORAGE_MIB": "1"})
    try:
        page = open_chat(new_context(), app.url)
        opening = unique("Before the disk filled")
        send_prompt(page, opening)
        wait_state(page, opening, "done")
        cid = conversation_id(page)
        fill_storage(app, cid)
        root = f"{app.url}/v1/stream"

        prompt, reply = unique("Sent to a full disk"), words("room", 8)
        replies.set(prompt, reply)
        send_prompt(page, prompt)
        wait_state(page, prompt, "sending")
        banner = page.get_by_test_id("connection-banner")
        # Not "your message": what waits may as well be a Stop, a new title or a deletion.
        expect(banner).to_have_text(re.compile(
            "^What you sent has not been stored yet: the server's storage is full"))
        pill = page.get_by_test_id("connection-pill")  # the server answers: no reconnecting
        expect(pill).to_have_attribute("data-state", "retrying")
        expect(pill).to_have_text("Not stored yet")
        # The flow diagram's browser node says it in the same words, not the state's key.
        flow_browser = page.get_by_test_id("flow-node-browser")
        expect(flow_browser).to_have_attribute("data-state", "retrying")
        expect(flow_browser).to_contain_text("not stored yet")

        assert requests.delete(f"{root}/filler", timeout=10).status_code == 204
        wait_state(page, prompt, "done", timeout=40_000)
        expect(banner).to_be_hidden()
        expect(flow_browser).to_have_attribute("data-state", "live")
        assert answer_text(page, prompt) == norm(reply)
        prompts = [m for m in prompt_messages(app.url, cid) if m.get("type") == "prompt"]
        assert [m["content"] for m in prompts] == [opening, prompt]
    finally:
        app.terminate()


def test_flask_debug_starts_exactly_one_supervisor(tmp_path: Path, model: FakeAnthropic,
                                                   new_context: NewContext) -> None:
    """With the reloader on, two processes load the app; only the one that serves may run
    a supervisor."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, debug=True)
    try:
        page = open_chat(new_context(), app.url)
        children = Path(f"/proc/{app.pid}/task/{app.pid}/children").read_text().split()
        assert children, "flask run --debug did not serve from a reloader child"
        prompt = unique("Who is answering?")
        send_prompt(page, prompt)
        wait_state(page, prompt, "done")
        send_prompt(page, prompt + " again")
        wait_state(page, prompt + " again", "done")
        markers = [m for m in response_messages(app.url, conversation_id(page))
                   if m.get("type") == "agent" and m.get("event") == "started"]
    finally:
        app.terminate()  # its whole output is in the log once it has exited
    log = app.log_since_start()
    assert "Restarting with" in log, "the reloader was not on"
    assert len(re.findall(r"starting the embedded supervisor", log)) == 1, log
    assert len(re.findall(r"supervisor \S+ started", log)) == 1, log
    assert len(markers) == 1, markers


def created(response: requests.Response) -> requests.Response:
    assert response.status_code in (200, 201), f"{response.request.method} {response.url}: " \
        f"{response.status_code} {response.text}"
    return response


def test_the_inspector_lists_streams_and_subscriptions(chat_app: ServerProcess,
                                                       new_context: NewContext) -> None:
    """Where the server offers `__ds/streams` and `__ds/subscriptions`, the inspector lists
    every stream and subscription, filters them, and opens them with a click or the keyboard."""
    root = f"{chat_app.url}/v1/stream"
    tag = uuid.uuid4().hex[:8]
    notes, log, copy, wake = (f"inspect-{tag}/{name}" for name in ("notes", "log", "notes-copy", "wake"))
    sub_id = f"inspect-{tag}"
    with requests.Session() as http:
        created(http.put(f"{root}/{notes}", headers={"Content-Type": "application/json", "Stream-TTL": "3600"},
                         data=json.dumps([{"type": "note", "text": "hello from the inspector test"}])))
        created(http.put(f"{root}/{log}", headers={"Content-Type": "text/plain", "Stream-Closed": "true"},
                         data="one line of plain text\n"))
        created(http.put(f"{root}/{copy}", headers={"Stream-Forked-From": f"/v1/stream/{notes}"}))
        created(http.put(f"{root}/__ds/subscriptions/{sub_id}", json={
            "type": "pull-wake", "streams": [notes, log], "wake_stream": wake, "lease_ttl_ms": 600_000}))
        claim = created(http.post(f"{root}/__ds/subscriptions/{sub_id}/claim",
                                  json={"worker": f"worker-{tag}"})).json()
        notes_tail = http.head(f"{root}/{notes}").headers["Stream-Next-Offset"]

    page = open_chat(new_context(), f"{chat_app.url}/inspector")
    expect(page.get_by_test_id("registry-section")).to_be_hidden()

    def stream_item(path: str) -> Locator:
        return page.locator(f'[data-testid="stream-list-item"][data-path="{path}"]')

    expect(stream_item(notes)).to_contain_text("application/json")
    expect(stream_item(notes)).to_contain_text("TTL 3600 s")
    expect(stream_item(notes)).to_contain_text(notes_tail)
    expect(stream_item(log)).to_contain_text("closed")
    expect(stream_item(copy)).to_contain_text(f"fork of {notes}")
    expect(page.get_by_test_id("stream-list").get_by_test_id("stream-list-item")).not_to_have_count(0)

    stream_filter = page.get_by_test_id("stream-filter")
    stream_filter.fill(f"inspect-{tag}/")
    expect(page.get_by_test_id("stream-list-item")).to_have_count(3)
    stream_filter.fill(f"{tag} text/plain")
    expect(page.get_by_test_id("stream-list-item")).to_have_count(1)
    stream_filter.press("Enter")  # opens the only match, keyboard alone
    expect(page.get_by_test_id("inspector-title")).to_have_text(log)
    expect(page.get_by_test_id("meta-closed")).to_have_text("closed")
    expect(page.get_by_test_id("content-view")).to_contain_text("one line of plain text")

    stream_filter.fill(tag)
    stream_item(notes).click()
    expect(page.get_by_test_id("inspector-title")).to_have_text(notes)
    expect(stream_item(notes)).to_have_attribute("aria-current", "true")
    expect(page.get_by_test_id("meta-content-type")).to_have_text("application/json")
    expect(page.get_by_test_id("meta-tail-offset")).to_have_text(notes_tail)
    expect(page.get_by_test_id("meta-closed")).to_have_text("open")
    expect(page.get_by_test_id("meta-ttl")).to_contain_text("3600")
    expect(page.get_by_test_id("meta-created")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\dT"))
    expect(page.get_by_test_id("content-view")).to_contain_text('"text": "hello from the inspector test"')

    stream_item(copy).click()
    expect(page.get_by_test_id("inspector-title")).to_have_text(copy)
    expect(page.get_by_test_id("meta-forked-from")).to_have_text(notes)
    expect(page.get_by_test_id("content-view")).to_contain_text("hello from the inspector test")

    later = f"inspect-{tag}/later"
    created(requests.put(f"{root}/{later}", headers={"Content-Type": "application/json"}, timeout=10))
    expect(stream_item(later)).to_have_count(0)
    page.get_by_test_id("streams-refresh").click()
    expect(stream_item(later)).to_have_count(1)

    subscription = page.locator(f'[data-testid="subscription-list-item"][data-subscription-id="{sub_id}"]')
    for text in ("pull-wake", "active", wake, notes, log, "acked", f"generation {claim['generation']}",
                 f"worker-{tag}", "lease expires in"):
        expect(subscription).to_contain_text(text)
    subscription.focus()
    subscription.press("Enter")
    expect(subscription).to_have_attribute("aria-current", "true")
    view = page.get_by_test_id("subscription-view")
    expect(view.get_by_test_id("subscription-view-id")).to_have_text(sub_id)
    expect(view.get_by_test_id("subscription-fields")).to_contain_text(f"worker-{tag}")
    expect(view.get_by_test_id("subscription-streams")).to_contain_text(notes)
    stream_filter.fill(tag)
    screenshot(page, "inspector-lists.png")

    phone = open_chat(new_context(viewport=PHONE), f"{chat_app.url}/inspector")
    phone.get_by_test_id("stream-filter").fill(tag)
    expect(phone.get_by_test_id("stream-list-item")).to_have_count(4)
    phone.locator(f'[data-testid="subscription-list-item"][data-subscription-id="{sub_id}"]').click()
    expect(phone.get_by_test_id("subscription-view-id")).to_have_text(sub_id)
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(phone, "inspector-lists-phone.png")


def test_a_listed_subscription_found_gone_is_listed_no_more(chat_app: ServerProcess,
                                                          new_context: NewContext) -> None:
    """A subscription deleted after the list was made (a deleted conversation's, say) stayed
    listed when picked: "No subscription" beside it, until Refresh was pressed."""
    root = f"{chat_app.url}/v1/stream"
    sub_id = f"inspect-{uuid.uuid4().hex[:8]}"
    created(requests.put(f"{root}/__ds/subscriptions/{sub_id}", timeout=10, json={
        "type": "pull-wake", "streams": [f"{sub_id}/notes"], "wake_stream": f"{sub_id}/wake",
        "lease_ttl_ms": 600_000}))
    page = open_chat(new_context(), f"{chat_app.url}/inspector")
    item = page.locator(f'[data-testid="subscription-list-item"][data-subscription-id="{sub_id}"]')
    expect(item).to_have_count(1)
    assert requests.delete(f"{root}/__ds/subscriptions/{sub_id}", timeout=10).status_code in (200, 204)
    item.click()
    expect(page.get_by_test_id("subscription-view")).to_contain_text(f'No subscription "{sub_id}"')
    expect(item).to_have_count(0)


def test_a_stream_opened_from_a_link_on_a_phone_is_brought_into_view(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """The chat's link to a stream in the inspector opened it under the lists, a screen
    and more below the top of a phone's page: it looked as if nothing had opened."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/linked"
    created(requests.put(f"{chat_app.url}/v1/stream/{path}", headers={"Content-Type": "application/json"},
                         data=json.dumps([{"n": 1}]), timeout=10))
    page = open_chat(new_context(viewport=PHONE), f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    expect(page.get_by_test_id("content-entry")).to_have_count(1)
    title = page.get_by_test_id("inspector-title")
    expect(title).to_have_text(path)
    expect(title).to_be_in_viewport()
    expect(page.get_by_test_id("content-entry")).to_be_in_viewport()  # what it opened, too


def test_the_inspector_reads_a_pasted_url_from_its_offset(chat_app: ServerProcess,
                                                         new_context: NewContext) -> None:
    """A stream URL pasted with `?offset=...` was opened from -1: its offset was dropped."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/pasted"
    root = f"{chat_app.url}/v1/stream"
    created(requests.put(f"{root}/{path}", headers={"Content-Type": "application/json"},
                         data=json.dumps([{"n": "before"}]), timeout=10))
    tail = requests.head(f"{root}/{path}", timeout=10).headers["Stream-Next-Offset"]
    requests.post(f"{root}/{path}", headers={"Content-Type": "application/json"},
                  data=json.dumps([{"n": "after"}]), timeout=10).raise_for_status()
    page = open_chat(new_context(), f"{chat_app.url}/inspector")
    page.get_by_test_id("inspector-path").fill(f"{root}/{path}?offset={tail}&live=sse")
    page.get_by_test_id("inspector-path").press("Enter")
    expect(page.get_by_test_id("content-view")).to_contain_text("after")
    expect(page.get_by_test_id("content-view")).not_to_contain_text("before")
    expect(page.get_by_test_id("read-offset")).to_have_value(tail)
    # Another stream opened next is read from its beginning: the pasted offset was kept,
    # and skipped that stream's first entries (or showed it empty).
    other = f"inspect-{uuid.uuid4().hex[:8]}/next"
    created(requests.put(f"{root}/{other}", headers={"Content-Type": "application/json"},
                         data=json.dumps([{"n": "first of the next"}]), timeout=10))
    page.get_by_test_id("inspector-path").fill(other)
    page.get_by_test_id("inspector-path").press("Enter")
    expect(page.get_by_test_id("content-view")).to_contain_text("first of the next")
    expect(page.get_by_test_id("read-offset")).to_have_value("")


def test_the_inspector_shows_utf8_text_of_an_octet_stream_as_text_past_its_first_4_kib(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Its sample of 4 KiB cut a three-byte character in two: judged not UTF-8, the text
    showed as a hex dump."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/cjk"
    root = f"{chat_app.url}/v1/stream"
    created(requests.put(f"{root}/{path}", headers={"Content-Type": "application/octet-stream"},
                         data=("中" * 2000).encode(), timeout=10))
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={path}")
    expect(page.get_by_test_id("content-view")).to_contain_text("中中中中")


def test_the_inspector_shows_the_newest_entries_and_counts_the_older_ones(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Past its 2,000 entries the view showed the first ones and hid the newest, a live
    batch included ("N more entries not shown"); and each live batch rebuilt the view, so
    that following 1,500 appends froze the page for two minutes."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/many"
    root = f"{chat_app.url}/v1/stream"
    created(requests.put(f"{root}/{path}", headers={"Content-Type": "application/json"},
                         data=json.dumps([{"n": n} for n in range(1, 2051)]), timeout=10))
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    view = page.get_by_test_id("content-view")
    expect(view).to_contain_text("50 earlier entries not shown")
    expect(page.get_by_test_id("content-entry")).to_have_count(2000)
    expect(page.get_by_test_id("content-entry").last).to_contain_text("#2050")

    page.get_by_test_id("read-offset").fill("now")
    page.get_by_test_id("follow-toggle").click()
    expect(page.get_by_test_id("follow-state")).to_contain_text("Following live")
    counter = LayoutCounter(page)
    with requests.Session() as http:
        for n in range(1, 301):  # each its own append, so that the page reads them one by one
            http.post(f"{root}/{path}", headers={"Content-Type": "application/json"},
                      data=json.dumps({"live": n}), timeout=10).raise_for_status()
    expect(page.get_by_test_id("content-entry").last).to_contain_text('"live": 300')
    laid_out, frames = counter.counts()
    assert laid_out <= 8 * frames + 10, (laid_out, frames)
    expect(page.get_by_test_id("content-entry")).to_have_count(300)  # the live read's own
    expect(page.get_by_test_id("content-entry").first).to_contain_text('"live": 1')


LAST_ENTRY_IN_VIEW_JS = """() => {
  const view = document.querySelector('[data-testid=content-view]');
  const last = [...view.querySelectorAll('[data-testid=content-entry]')].at(-1).getBoundingClientRect();
  const box = view.getBoundingClientRect();
  return last.bottom <= box.bottom + 1 && last.bottom > box.top;
}"""


def test_the_inspector_opens_the_stream_picked_even_with_percent_or_question_mark_in_its_name(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """A name picked from a list was decoded once more: "t/x%41" opened the other stream
    "t/xA" and showed its data, "t/what?x" opened "t/what"; a reload did the same."""
    tag = f"names-{uuid.uuid4().hex[:8]}"
    root = f"{chat_app.url}/v1/stream"
    for name, text in ((f"{tag}/x%41", "the percent one"), (f"{tag}/xA", "the other one"),
                       (f"{tag}/what?x", "the question one")):
        created(requests.put(f"{root}/{quote(name, safe='/')}", timeout=10,
                             headers={"Content-Type": "text/plain"}, data=text))
    page = open_chat(new_context(), f"{chat_app.url}/inspector")
    page.get_by_test_id("stream-filter").fill(tag)
    for name, text in ((f"{tag}/x%41", "the percent one"), (f"{tag}/what?x", "the question one")):
        page.locator(f'[data-testid="stream-list-item"][data-path="{name}"]').click()
        expect(page.get_by_test_id("inspector-title")).to_have_text(name)
        expect(page.get_by_test_id("content-view")).to_contain_text(text)
        page.reload()
        expect(page.get_by_test_id("inspector-title")).to_have_text(name)
        expect(page.get_by_test_id("content-view")).to_contain_text(text)
        page.get_by_test_id("stream-filter").fill(tag)


def test_the_inspector_follows_on_from_its_read_and_leaves_a_reader_scrolled_up_alone(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Follow live read the whole stream again from its start (50 MB held the page for
    16 s), and every live batch pulled a reader who had scrolled up back to the bottom."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/followed-on"
    url = f"{chat_app.url}/v1/stream/{path}"
    json_type = {"Content-Type": "application/json"}
    created(requests.put(url, headers=json_type, timeout=10,
                         data=json.dumps([{"n": n, "text": "word " * 30} for n in range(300)])))
    page = open_chat(new_context(viewport={"width": 900, "height": 700}),
                     f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    view = page.get_by_test_id("content-view")
    expect(page.get_by_test_id("content-entry")).to_have_count(300)
    page.get_by_test_id("follow-toggle").click()
    expect(page.get_by_test_id("follow-state")).to_contain_text("up to date")
    requests.post(url, headers=json_type, data=json.dumps({"live": 1}), timeout=10)
    expect(page.get_by_test_id("content-entry").last).to_contain_text('"live": 1')
    # The read's 300 and the live one: nothing read twice.
    expect(page.get_by_test_id("content-entry")).to_have_count(301)
    view.evaluate("v => { v.scrollTop = 500; }")
    where = view.evaluate("v => v.scrollTop")
    requests.post(url, headers=json_type, data=json.dumps({"live": 2}), timeout=10)
    expect(page.get_by_test_id("content-entry").last).to_contain_text('"live": 2')
    page.wait_for_timeout(200)
    assert view.evaluate("v => v.scrollTop") == where


def test_the_inspector_says_a_stream_is_empty_and_announces_following_once_per_change(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """An empty stream showed nothing at all where its entries go (the "nothing read" note
    never showed), and the follow status line, a live region rewritten at every batch, had a
    screen reader read out each new offset."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/empty"
    url = f"{chat_app.url}/v1/stream/{path}"
    json_type = {"Content-Type": "application/json"}
    created(requests.put(url, headers=json_type, timeout=10))
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    placeholder = page.get_by_test_id("content-placeholder")
    expect(placeholder).to_have_text("The stream is empty.")
    expect(placeholder).to_be_visible()
    page.get_by_test_id("follow-toggle").click()
    announcer = page.get_by_test_id("follow-announcer")
    expect(announcer).to_contain_text("Following live")
    expect(announcer).to_have_attribute("aria-live", "polite")
    assert page.get_by_test_id("follow-state").get_attribute("aria-live") is None
    announcer.evaluate("""a => {
        window.announced = 0;
        new MutationObserver(() => { window.announced += 1; })
            .observe(a, { childList: true, characterData: true, subtree: true });
    }""")
    with requests.Session() as http:
        for n in range(1, 11):
            assert http.post(url, headers=json_type, data=json.dumps({"n": n}), timeout=10).ok
            expect(page.get_by_test_id("content-entry")).to_have_count(n)
        tail = http.head(url, timeout=10).headers["Stream-Next-Offset"]
    expect(page.get_by_test_id("follow-state")).to_contain_text(tail)
    expect(placeholder).to_be_hidden()
    # Ten batches, each a new offset on the visible line: at most "up to date" coming and
    # going is announced, not the offsets.
    assert page.evaluate("window.announced") <= 4
    page.get_by_test_id("follow-toggle").click()
    expect(announcer).to_contain_text("Stopped following")


def test_a_failed_read_in_the_inspector_clears_what_an_earlier_one_showed(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """A read from an offset the server refused left the entries of the read before on
    show, under the new offset, as if they were what it had read."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/refused"
    created(requests.put(f"{chat_app.url}/v1/stream/{path}", headers={"Content-Type": "application/json"},
                         data=json.dumps([{"n": 1}, {"n": 2}]), timeout=10))
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    expect(page.get_by_test_id("content-entry")).to_have_count(2)
    page.get_by_test_id("read-offset").fill("not-an-offset")
    page.get_by_test_id("read-offset").press("Enter")
    expect(page.get_by_test_id("follow-state")).to_contain_text("Read failed")
    expect(page.get_by_test_id("content-entry")).to_have_count(0)
    expect(page.get_by_test_id("content-placeholder")).to_have_text("Nothing to show: the read failed.")
    page.get_by_test_id("read-offset").fill("-1")
    page.get_by_test_id("read-offset").press("Enter")
    expect(page.get_by_test_id("content-entry")).to_have_count(2)
    expect(page.get_by_test_id("content-placeholder")).to_be_hidden()


def test_a_read_still_on_its_way_when_following_begins_does_not_replace_what_follows(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Following began while the stream's first read was on its way: when that read came
    back, it put its older entries in place of the live ones and said "Read up to offset"
    over "Following live"."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/late-read"
    url = f"{chat_app.url}/v1/stream/{path}"
    json_type = {"Content-Type": "application/json"}
    created(requests.put(url, headers=json_type, data=json.dumps([{"n": 1}]), timeout=10))
    page = new_context().new_page()
    held: list[Route] = []

    def hold_the_first_read(route: Route) -> None:
        request = route.request
        if request.method == "GET" and "live=" not in request.url and not held:
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(re.escape(path) + r"\?"), hold_the_first_read)
    page.goto(f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    expect(page.get_by_test_id("follow-state")).to_contain_text("Reading")
    assert len(held) == 1
    page.get_by_test_id("follow-toggle").click()
    expect(page.get_by_test_id("follow-state")).to_contain_text("up to date")
    assert requests.post(url, headers=json_type, data=json.dumps({"n": 2}), timeout=10).ok
    expect(page.get_by_test_id("content-entry")).to_have_count(2)
    held[0].continue_()
    page.wait_for_timeout(500)
    expect(page.get_by_test_id("content-entry")).to_have_count(2)
    expect(page.get_by_test_id("follow-state")).to_contain_text("Following live")


def test_a_stream_followed_while_its_metadata_loads_is_not_read_over_afterwards(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Follow pressed while a newly opened stream's metadata was on its way: once it came,
    the first read began all the same, and replaced what the live read showed."""
    first, second = (f"inspect-{uuid.uuid4().hex[:8]}/{name}" for name in ("first", "second"))
    json_type = {"Content-Type": "application/json"}
    for path in (first, second):
        created(requests.put(f"{chat_app.url}/v1/stream/{path}", headers=json_type,
                             data=json.dumps([{"n": 1}]), timeout=10))
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={quote(first, safe='')}")
    expect(page.get_by_test_id("content-entry")).to_have_count(1)
    held: list[Route] = []
    page.route(re.compile(re.escape(second) + "$"), lambda route: held.append(route)
               if route.request.method == "HEAD" and not held else route.continue_())
    page.evaluate("path => { location.hash = `#path=${encodeURIComponent(path)}`; }", second)
    expect(page.get_by_test_id("inspector-title")).to_have_text(second)
    wait_until(lambda: bool(page.evaluate("() => true")) and len(held) == 1, timeout=10,
               what="the second stream's HEAD held")
    page.get_by_test_id("follow-toggle").click()
    expect(page.get_by_test_id("follow-state")).to_contain_text("up to date")
    assert requests.post(f"{chat_app.url}/v1/stream/{second}", headers=json_type,
                         data=json.dumps({"n": 2}), timeout=10).ok
    expect(page.get_by_test_id("content-entry")).to_have_count(2)
    held[0].continue_()
    expect(page.get_by_test_id("meta-tail-offset")).not_to_have_text("—")
    page.wait_for_timeout(500)
    expect(page.get_by_test_id("follow-state")).to_contain_text("Following live")
    expect(page.get_by_test_id("content-entry")).to_have_count(2)


def test_each_list_of_the_inspector_is_one_tab_stop(chat_app: ServerProcess,
                                                    new_context: NewContext) -> None:
    """Every listed stream was a Tab stop: up to 500 of them between the filter and the rest
    of the page. A list is one stop now (the arrows move within it), which comes back to the
    item last focused."""
    root = f"{chat_app.url}/v1/stream"
    tag = uuid.uuid4().hex[:8]
    with requests.Session() as http:
        for name in ("a", "b", "c"):
            created(http.put(f"{root}/tabs-{tag}/{name}", headers={"Content-Type": "text/plain"}))
    page = open_chat(new_context(), f"{chat_app.url}/inspector")
    page.get_by_test_id("stream-filter").fill(f"tabs-{tag}/")
    items = page.get_by_test_id("stream-list-item")
    expect(items).to_have_count(3)
    focused_path = "() => document.activeElement?.dataset.path ?? null"
    page.get_by_test_id("stream-filter").press("Tab")
    assert page.evaluate(focused_path) == f"tabs-{tag}/a"
    page.keyboard.press("Tab")
    assert page.evaluate(focused_path) not in {f"tabs-{tag}/b", f"tabs-{tag}/c"}
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(focused_path) == f"tabs-{tag}/a"
    page.keyboard.press("End")
    assert page.evaluate(focused_path) == f"tabs-{tag}/c"
    page.keyboard.press("Home")
    assert page.evaluate(focused_path) == f"tabs-{tag}/a"
    page.keyboard.press("ArrowDown")
    assert page.evaluate(focused_path) == f"tabs-{tag}/b"
    page.keyboard.press("Shift+Tab")  # back to the filter
    assert page.evaluate("() => document.activeElement?.dataset.testid") == "stream-filter"
    page.keyboard.press("Tab")
    assert page.evaluate(focused_path) == f"tabs-{tag}/b"
    assert page.locator('[data-testid="stream-list"] button[tabindex="0"]').count() == 1


def test_the_inspector_reads_on_past_8_mib_and_saves_an_entry_whole(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """A read stopped after 8 MiB, with no way on to the rest of the stream; and of an entry
    only the first 64 KiB could be seen, or saved."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/large"
    url = f"{chat_app.url}/v1/stream/{path}"
    octets = {"Content-Type": "application/octet-stream"}
    created(requests.put(url, headers=octets, timeout=10))
    with requests.Session() as http:
        for n in range(10):
            assert http.post(url, headers=octets, data=bytes([n]) * 1_000_000, timeout=30).ok
        tail = http.head(url, timeout=10).headers["Stream-Next-Offset"]
    page = open_chat(new_context(accept_downloads=True),
                     f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    state = page.get_by_test_id("follow-state")
    expect(state).to_contain_text("stopped after")
    expect(state).not_to_contain_text(tail)
    summary = page.get_by_test_id("content-summary")
    expect(summary).to_have_text(re.compile(r"^\d+ bytes$"))
    first_read = int(summary.inner_text().split()[0])
    assert first_read >= 8 * 1024 * 1024
    # How much it read, not "8 MiB" whatever it was.
    expect(state).to_contain_text(f"stopped after {first_read / 1024 / 1024:.1f} MiB")
    read_on = page.get_by_test_id("read-on")
    read_on.click()
    expect(state).to_have_text(f"Read up to offset {tail}")
    expect(read_on).to_be_hidden()
    expect(summary).to_have_text(f"{10_000_000 - first_read} bytes")
    assert page.get_by_test_id("read-offset").input_value() not in ("", "-1")  # where it begins
    # A hex dump's addresses go on from the first read's (they began at 0 again).
    page.get_by_test_id("read-view").select_option("hex")
    first_row = page.get_by_test_id("content-entry").first.locator("pre")
    expect(first_row).to_contain_text(f"{first_read:08x}  ")
    page.get_by_test_id("read-view").select_option("auto")
    last = page.get_by_test_id("content-entry").last
    size = re.match(r"\d+", last.locator(".entry-head").inner_text())
    assert size
    shown = int(size.group())
    with page.expect_download() as download:
        last.get_by_test_id("entry-save").click()
    assert download.value.suggested_filename.endswith(".bin")
    saved = Path(download.value.path()).read_bytes()
    assert len(saved) == shown > 64 * 1024
    assert saved == bytes([9]) * shown  # the stream's last bytes, all of them

    # On a phone a hex dump's row took three lines: it scrolls sideways now, one line a row.
    phone = open_chat(new_context(viewport=PHONE),
                      f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    expect(phone.get_by_test_id("follow-state")).to_contain_text("stopped after")
    phone.get_by_test_id("read-view").select_option("hex")
    row = phone.get_by_test_id("content-entry").first.locator("pre")
    expect(row).to_contain_text("00000000  ")
    lines_of_first_row = row.evaluate("""pre => {
        const text = pre.firstChild;
        const range = document.createRange();
        range.setStart(text, 0);
        range.setEnd(text, text.data.indexOf("\\n"));
        return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
    }""")
    assert lines_of_first_row == 1


def test_the_inspector_shows_the_start_of_a_large_binary_entry_as_text_and_a_remade_stream_anew(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """As text, an entry of 8 MiB of random bytes was laid out whole (42 s of a frozen page);
    and a stream deleted and made again showed the old one's content under the new one's
    metadata after a Refresh."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/binary"
    url = f"{chat_app.url}/v1/stream/{path}"
    octets = {"Content-Type": "application/octet-stream"}
    created(requests.put(url, headers=octets, timeout=10, data=bytes(range(256)) * 1024))
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    page.get_by_test_id("read-view").select_option("text")
    entry = page.get_by_test_id("content-entry").last
    expect(entry).to_contain_text(f"… {256 * 1024 - 64 * 1024} more bytes")
    assert len(entry.locator("pre").text_content() or "") < 70 * 1024

    assert requests.delete(url, timeout=10).status_code in (200, 204)
    created(requests.put(url, headers={"Content-Type": "text/plain"}, data="brand new", timeout=10))
    page.get_by_test_id("meta-refresh").click()
    expect(page.get_by_test_id("content-view")).to_contain_text("brand new")
    expect(page.get_by_test_id("content-entry")).to_have_count(1)


def test_a_followed_stream_lays_out_only_the_entries_on_screen(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Following a stream of thousands of entries, each frame that added a few laid out and
    painted all of them (and their batches' marks): appending 4,000 messages one by one
    while the page followed gave 94 tasks over 50 ms, 7.3 s in all. Entries off screen are
    now skipped by the renderer. The view must still land on the newest entry, after a read,
    a change of view and a large live batch, with messages that wrap (estimated too short,
    the groups skipped had left the last entry thousands of pixels below the view); and its
    height must still follow what it holds."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/followed"
    root = f"{chat_app.url}/v1/stream"
    json_type = {"Content-Type": "application/json"}
    created(requests.put(f"{root}/{path}", headers=json_type, timeout=10, data=json.dumps(
        [{"n": n, "text": "word " * (n % 90) + "line\n" * (n % 7)} for n in range(1, 2051)])))
    page = open_chat(new_context(viewport={"width": 700, "height": 800}),
                     f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    view = page.get_by_test_id("content-view")
    entries = page.get_by_test_id("content-entry")
    expect(view).to_contain_text("50 earlier entries not shown")
    view.scroll_into_view_if_needed()
    wait_until(lambda: page.evaluate(LAST_ENTRY_IN_VIEW_JS), timeout=10,
               what="the newest entry in view after a read")
    page.get_by_test_id("read-view").select_option("text")
    expect(entries.last).to_contain_text('{"n":2050,')
    wait_until(lambda: page.evaluate(LAST_ENTRY_IN_VIEW_JS), timeout=10,
               what="the newest entry in view after a change of view")
    page.get_by_test_id("read-view").select_option("json")
    page.get_by_test_id("follow-toggle").click()  # on from the read's 2,050: live
    expect(page.get_by_test_id("follow-state")).to_contain_text("Following live")
    requests.post(f"{root}/{path}", headers=json_type, timeout=10, data=json.dumps(
        [{"burst": n, "text": "word " * 80} for n in range(1, 151)])).raise_for_status()
    expect(entries.last).to_contain_text('"burst": 150')
    wait_until(lambda: page.evaluate(LAST_ENTRY_IN_VIEW_JS), timeout=10,
               what="the newest entry in view after a large live batch")
    with requests.Session() as http:
        for n in range(1, 51):
            http.post(f"{root}/{path}", headers=json_type, data=json.dumps({"live": n}),
                      timeout=10).raise_for_status()
    expect(entries.last).to_contain_text('"live": 50')
    state: dict[str, Any] = page.evaluate("""() => {
      const view = document.querySelector('[data-testid=content-view]');
      const entries = [...view.querySelectorAll('[data-testid=content-entry]')];
      const hidden = Number(/^(\\d+) earlier/.exec(view.textContent)[1]);
      const rendered = (entry) => entry.checkVisibility({ contentVisibilityAuto: true });
      const firstRendered = rendered(entries[0]);
      const lastRendered = rendered(entries.at(-1));
      // Laid out whole, each group of entries is about as tall as the page took it to be.
      const groups = [...view.children].filter((c) => c.style.containIntrinsicSize);
      const estimates = groups.map((g) => parseFloat(g.style.containIntrinsicSize.replace('auto', '')));
      for (const group of groups) group.style.contentVisibility = 'visible';
      return { shown: entries.length, hidden, firstRendered, lastRendered,
               groups: groups.map((g, k) => ({ estimate: estimates[k], height: g.offsetHeight })) };
    }""")
    assert state["shown"] + state["hidden"] == 2250, state
    assert 2000 <= state["shown"] <= 2100, state  # the newest, older ones dropped a group at a time
    assert state["lastRendered"], state
    assert not state["firstRendered"], state  # thousands of pixels above the view
    assert len(state["groups"]) > 10, state
    for group in state["groups"]:
        assert 0.8 < group["estimate"] / group["height"] < 1.25, state["groups"]


def test_the_inspector_says_when_and_why_following_stopped(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """Stopped by the reader, the status line still said "Following live"; and following a
    stream that was then deleted said "Following live · up to date" while the page asked for
    it again and again, answered 404 each time. An old "created" result also showed beside
    the next stream opened."""
    root = f"{chat_app.url}/v1/stream"
    tag = uuid.uuid4().hex[:8]
    path = f"inspect-{tag}/followed"
    json_type = {"Content-Type": "application/json"}
    created(requests.put(f"{root}/{path}", headers=json_type, data=json.dumps([{"n": 1}]), timeout=10))
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    follow_state = page.get_by_test_id("follow-state")
    toggle = page.get_by_test_id("follow-toggle")
    expect(page.get_by_test_id("content-view")).to_contain_text('"n": 1')
    page.get_by_test_id("stream-filter").fill(path)
    listed = page.locator(f'[data-testid="stream-list-item"][data-path="{path}"]')
    expect(listed).to_have_count(1)
    tail = requests.head(f"{root}/{path}", timeout=10).headers["Stream-Next-Offset"]
    toggle.click()
    expect(follow_state).to_contain_text("Following live")
    toggle.click()
    expect(toggle).to_have_text("Follow live")
    expect(follow_state).to_have_text(f"Stopped following at offset {tail}.")

    toggle.click()
    expect(follow_state).to_contain_text("up to date")
    requests.delete(f"{root}/{path}", timeout=10).raise_for_status()
    expect(follow_state).to_have_text(
        "Stopped following: the stream no longer exists (404), it was deleted or expired.")
    expect(toggle).to_have_text("Follow live")
    expect(page.get_by_test_id("meta-status")).to_contain_text("404")
    # That line went with the content card, hidden as the stream is gone: said where it shows.
    expect(page.get_by_test_id("content-card")).to_be_hidden()
    expect(page.get_by_test_id("meta-note")).to_be_visible()
    expect(page.get_by_test_id("meta-note")).to_contain_text("deleted (or expired) while it was followed")
    expect(listed).to_have_count(0)  # the list of streams, seen to be out of date, read again

    for n in (1, 2):  # a missing path, created here; then another
        page.get_by_test_id("inspector-path").fill(f"inspect-{tag}/new-{n}")
        page.get_by_test_id("inspector-path").press("Enter")
        expect(page.get_by_test_id("create-card")).to_be_visible()
        expect(page.get_by_test_id("create-result")).to_have_text("")
        expect(follow_state).to_have_text("")
        if n == 1:
            page.get_by_test_id("create-button").click()
            expect(page.get_by_test_id("meta-status")).to_contain_text("200")
            expect(page.get_by_test_id("create-result")).to_contain_text("created")


def test_a_stream_picked_from_the_list_on_a_phone_comes_into_view(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """On a phone the list sits above the stream: picking one only marked it, and what it
    opened was a screen or more further down, out of sight."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/picked"
    created(requests.put(f"{chat_app.url}/v1/stream/{path}", timeout=10,
                         headers={"Content-Type": "application/json"}, data=json.dumps([{"n": 1}])))
    page = open_chat(new_context(viewport=PHONE), f"{chat_app.url}/inspector")
    page.get_by_test_id("stream-filter").fill(path)
    item = page.locator(f'[data-testid="stream-list-item"][data-path="{path}"]')
    title = page.get_by_test_id("inspector-title")
    expect(item).to_be_visible()
    before = title.evaluate("(node) => node.getBoundingClientRect().top")
    assert before > PHONE["height"] / 3, before  # low on the screen, or below it, until picked
    item.click()
    expect(title).to_have_text(path)
    expect(page.get_by_test_id("meta-status")).to_contain_text("200")
    top = title.evaluate("(node) => node.getBoundingClientRect().top")
    assert -1 <= top < PHONE["height"] / 3, top  # with what it opened below it, on screen


def test_the_inspector_refuses_a_path_with_dot_segments(chat_app: ServerProcess,
                                                       new_context: NewContext) -> None:
    """The browser resolved `../../etc/passwd` to /etc/passwd, outside the streams API, and
    the inspector showed the app's 404 page as the stream's."""
    page = open_chat(new_context(), f"{chat_app.url}/inspector")
    for typed in ("../../etc/passwd", "a/./b"):
        page.get_by_test_id("inspector-path").fill(typed)
        page.get_by_test_id("inspector-path").press("Enter")
        expect(page.get_by_test_id("meta-status")).to_have_text(
            "A stream path has no . or .. segments (the server refuses to create one)")
        # The URL as typed, not where the browser would have resolved it (outside the API).
        expect(page.get_by_test_id("meta-url")).to_have_text(f"{chat_app.url}/v1/stream/{typed}")


def test_the_inspector_says_so_when_there_is_no_path_to_open(chat_app: ServerProcess,
                                                            new_context: NewContext) -> None:
    """A blank path did nothing at all: the stream opened before stayed, without a word."""
    page = open_chat(new_context(), f"{chat_app.url}/inspector")
    path = page.get_by_test_id("inspector-path")
    for typed in ("  ", "///"):
        path.fill(typed)
        path.press("Enter")
        assert "Type a stream's path" in path.evaluate("(el) => el.validationMessage")
    path.fill("conversations")  # typing clears it
    assert path.evaluate("(el) => el.validationMessage") == ""


def test_the_inspector_says_why_a_path_too_long_is_refused(chat_app: ServerProcess,
                                                          new_context: NewContext) -> None:
    """A HEAD answer has no body: a 3,000-character path showed only "HTTP 414"."""
    page = open_chat(new_context(), f"{chat_app.url}/inspector")
    page.get_by_test_id("inspector-path").fill("y" * 3000)
    page.get_by_test_id("inspector-path").press("Enter")
    expect(page.get_by_test_id("meta-status")).to_have_text(
        "HTTP 414: the path is longer than this server allows")


def test_the_inspector_says_how_many_streams_and_subscriptions_it_did_not_list(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """The server lists a page at a time (1,000 streams, 1,000 subscriptions): the counts
    shown were those of the page, as if the server held no more."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        root = f"{app.url}/v1/stream"
        with requests.Session() as http:
            for n in range(1_010):
                assert http.put(f"{root}/many/s{n:04d}").status_code == 201
            for n in range(1_003):
                assert http.put(f"{root}/__ds/subscriptions/sub-{n:04d}", json={
                    "type": "pull-wake", "streams": ["many/s0000"], "wake_stream": "many/wake",
                }).status_code == 201
        page = open_chat(new_context(), f"{app.url}/inspector")
        expect(page.get_by_test_id("stream-list-result")).to_contain_text(
            "1010 streams, the first 1000 by path listed")
        expect(page.get_by_test_id("subscription-list-result")).to_contain_text(
            "1003 subscriptions · the first 500 by id are shown")
        page.get_by_test_id("stream-filter").fill("s00")
        expect(page.get_by_test_id("stream-list-result")).to_contain_text(
            "100 of the 1000 listed match · 1010 streams")
        # The filter also asks the server for the paths that start with it, past the page.
        page.get_by_test_id("stream-filter").fill("many/s100")
        expect(page.get_by_test_id("stream-list-result")).to_contain_text(
            '0 of the 1000 listed match · 1010 streams, the first 1000 by path listed (open'
            ' others by their path) · 10 more on the server start with "many/s100"')
        expect(page.get_by_test_id("stream-list-item")).to_have_count(10)
        page.get_by_test_id("stream-filter").press("Enter")  # opens the first
        expect(page.get_by_test_id("meta-url")).to_have_text(f"{root}/many/s1000")
    finally:
        app.terminate()


def test_the_inspector_without_listings_against_the_node_reference_server(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """A server without the listing extensions (the Node reference server answers 404): the
    page says nothing about it and works from typed paths as before."""
    reference = start_reference_server()  # needs npm ci in tests/conformance (the install)
    app = None
    try:
        root = f"{reference.url}/v1/stream"
        path = f"inspect-{uuid.uuid4().hex[:8]}/notes"
        created(requests.put(f"{root}/{path}", headers={"Content-Type": "application/json"},
                             data=json.dumps([{"type": "note", "text": "kept by the reference server"}]),
                             timeout=10))
        app = start_chat_app(tmp_path / "app", model_url=model.url,
                             config={"STREAMS_BROWSER_URL": root, "EMBEDDED_SUPERVISOR": "false"})
        page = new_context().new_page()
        probes: list[int] = []
        page.on("response", lambda r: probes.append(r.status) if "/__ds/" in r.url else None)
        page.goto(f"{app.url}/inspector")
        wait_ready(page)
        page.wait_for_function("() => performance.getEntriesByType('resource')"
                               ".filter(e => e.name.includes('/__ds/')).length >= 2")
        page.get_by_test_id("inspector-path").fill(path)
        page.get_by_test_id("inspector-path").press("Enter")
        expect(page.get_by_test_id("content-view")).to_contain_text("kept by the reference server")
        expect(page.get_by_test_id("meta-content-type")).to_have_text("application/json")
        expect(page.get_by_test_id("stream-listing")).to_be_hidden()
        expect(page.get_by_test_id("streams-refresh")).to_be_hidden()
        expect(page.get_by_test_id("subscription-listing")).to_be_hidden()
        expect(page.get_by_test_id("registry-section")).to_be_visible()
        expect(page.get_by_test_id("subscription-form")).to_be_visible()
        assert probes and all(status == 404 for status in probes), probes
        assert len(probes) == 2, f"the listings must be probed once each: {probes}"
    finally:
        if app is not None:
            app.terminate()
        reference.terminate()


SHOWCASE = [
    ("Explain durable streams in three bullet points",
     "- **Append-only**: every prompt and every token is appended to a stream and stored on disk.\n"
     "- **Resumable**: a reader keeps its offset and continues from it after a reload or a lost connection.\n"
     "- **Exactly once**: writers use idempotent producer ids, so a retried append is never duplicated."),
    ("What happens if I reload this page while you answer?",
     "Nothing is lost. This answer is streaming from `conversations/<id>/responses`, and your tab "
     "remembers the last offset it has shown:\n\n"
     "1. The page reloads and reads the stream from the beginning.\n"
     "2. It catches up to the tail, then follows it live over SSE.\n"
     "3. The agent never noticed: it kept appending tokens the whole time.\n\n"
     "```python\n"
     "for batch in stream.follow(offset=last_offset, live=\"sse\"):\n"
     "    render(batch.messages)\n"
     "```\n\n"
     "Open a second tab and you will see the same conversation, live."),
]


def test_screenshots_of_the_chat_and_the_inspector(tmp_path: Path, model: FakeAnthropic,
                                                   replies: ScriptedReplies,
                                                   new_context: NewContext) -> None:
    """Pictures for humans (and the README); the checks make sure they show a finished chat."""
    model.tokens_per_second = 400
    app = start_chat_app(tmp_path / "app", model_url=model.url)  # a list with only these chats
    try:
        context = new_context()
        page = open_chat(context, app.url)
        for prompt, reply in SHOWCASE:
            replies.set(prompt, reply)
            page.get_by_test_id("new-conversation").click()
            send_prompt(page, prompt)
            wait_state(page, prompt, "done")
        cid = conversation_id(page)
        answer = turn_for(page, SHOWCASE[-1][0]).get_by_test_id("answer-text")
        expect(answer.locator("pre code")).to_contain_text("stream.follow")
        expect(answer.locator("ol > li")).to_have_count(3)
        expect(page.get_by_test_id("conversation-item")).to_have_count(2)
        expect(page.get_by_test_id("raw-responses-count")).not_to_have_text("0 entries")
        assert_fills_the_window(page)
        desktop = screenshot(page, "chat-desktop.png")

        phone = open_chat(new_context(viewport=PHONE), f"{app.url}/#/c/{cid}")
        wait_state(phone, SHOWCASE[-1][0], "done")
        assert_fills_the_window(phone)
        screenshot(phone, "chat-phone.png")

        inspector = context.new_page()
        path = f"conversations/{cid}/responses"
        inspector.goto(f"{app.url}/inspector#path={quote(path, safe='')}")
        expect(inspector.get_by_test_id("meta-tail-offset")).to_have_text(re.compile(r"\S"))
        expect(inspector.get_by_test_id("content-view")).to_contain_text("stopReason")
        screenshot(inspector, "inspector.png")
    finally:
        app.terminate()
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(desktop, DOCS_SCREENSHOT)


def delete_stream(app: ServerProcess, path: str) -> None:
    """What any client of the streams API may do to a conversation under the page."""
    response = requests.delete(f"{app.url}/v1/stream/{path}", timeout=10)
    assert response.status_code in (200, 204), response.text


def test_a_listed_conversation_without_streams_says_so_and_a_message_starts_it(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A conversation listed by another writer, its streams never made (or deleted since),
    stayed blank under "Connecting" for good, the page never ready."""
    cid = f"nostreams{uuid.uuid4().hex[:8]}"
    append_to_conversations(chat_app, {"type": "conversation", "id": cid, "title": "Listed only",
                                       "timestamp": int(time.time() * 1000)})
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    notice = page.get_by_test_id("streams-missing")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Nothing of this conversation is on the server")
    expect(page.get_by_test_id("connection-pill")).to_have_attribute("data-state", "live")
    prompt = unique("Starting it again")
    send_prompt(page, prompt)
    wait_state(page, prompt, "done")
    expect(notice).to_be_hidden()


def test_a_conversation_without_streams_is_asked_for_them_ever_less_often(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """A tab left on a listed conversation whose streams are missing asked for both every
    1-2 s, for good (a 404 each, and an error in the console). It now backs off to 30 s;
    a message another tab sends there still shows at once, as that tab lists the
    conversation as active and this one reads the streams again on seeing it."""
    cid = f"nostreams{uuid.uuid4().hex[:8]}"
    append_to_conversations(chat_app, {"type": "conversation", "id": cid, "title": "Left open",
                                       "timestamp": int(time.time() * 1000)})
    page = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    expect(page.get_by_test_id("streams-missing")).to_be_visible()
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url)
            if f"conversations/{cid}/" in request.url else None)
    page.wait_for_timeout(12_000)
    # Backing off from 0.25-0.5 s, doubling: at most 6 reads of each stream in 12 s; at
    # 1-2 s between reads, there were at least 8.
    assert len(asked) <= 12, asked

    other = open_chat(new_context(), f"{chat_app.url}/#/c/{cid}")
    # Just after a read of the prompts stream, at this point of the backoff the next one is
    # 8-16 s away: the message must show sooner than that.
    with page.expect_request(lambda request: f"conversations/{cid}/prompts?" in request.url,
                             timeout=20_000):
        pass
    prompt = unique("Sent from another tab")
    send_prompt(other, prompt)
    expect(turn_for(page, prompt)).to_have_count(1, timeout=5_000)
    wait_state(page, prompt, "done")
    expect(page.get_by_test_id("streams-missing")).to_be_hidden()


def test_answers_whose_prompts_stream_was_deleted_are_still_shown(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    page = open_chat(new_context(), chat_app.url)
    first, cid = answered_conversation(page, "Asked before the deletion")
    answer = answer_text(page, first)
    delete_stream(chat_app, f"conversations/{cid}/prompts")
    page.reload()
    wait_ready(page)
    notice = page.get_by_test_id("streams-missing")
    expect(notice).to_contain_text("prompts stream is missing")
    turns = page.get_by_test_id("turn")
    expect(turns).to_have_count(1)
    expect(turns.first.get_by_test_id("prompt")).to_contain_text("question is not on the server")
    assert norm(turns.first.get_by_test_id("answer-text").text_content() or "") == answer
    expect(page.get_by_test_id("connection-pill")).to_have_attribute("data-state", "live")
    second = unique("Asked after the deletion")
    send_prompt(page, second)
    wait_state(page, second, "done")
    expect(notice).to_be_hidden()
    expect(turns).to_have_count(2)  # the answer without its prompt is still there


def test_prompts_whose_responses_stream_was_deleted_say_why_no_answer_shows(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    """They said an agent would answer once one ran: none would, nor could it write one."""
    page = open_chat(new_context(), chat_app.url)
    first, cid = answered_conversation(page, "Answered, then its answer deleted")
    delete_stream(chat_app, f"conversations/{cid}/responses")
    page.reload()
    wait_ready(page)
    notice = page.get_by_test_id("streams-missing")
    expect(notice).to_contain_text("responses stream is missing")
    turn = turn_for(page, first)
    expect(turn).to_have_attribute("data-stalled", "true")
    expect(turn.get_by_test_id("answer-status")).to_contain_text("responses stream is missing")
    second = unique("Asked after the deletion")
    send_prompt(page, second)
    wait_state(page, second, "done")  # the message made the responses stream again
    expect(notice).to_be_hidden()


def test_a_message_makes_a_missing_responses_stream_again_without_waiting_for_an_agent(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """No agent runs here: the page itself makes the stream, so the notice does not stay up
    until one does."""
    app = start_chat_app(tmp_path / "app", model_url=model.url,
                         config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        page = open_chat(new_context(), app.url)
        never = unique("Never answered")
        send_prompt(page, never)
        wait_state(page, never, "thinking")  # stored: its streams are made
        cid = conversation_id(page)
        delete_stream(app, f"conversations/{cid}/responses")
        page.reload()
        wait_ready(page)
        notice = page.get_by_test_id("streams-missing")
        expect(notice).to_contain_text("responses stream is missing")
        later = unique("Sent to make it again")
        send_prompt(page, later)
        expect(notice).to_be_hidden()
        expect(turn_for(page, later)).to_have_attribute("data-state", "queued")
        head = requests.head(f"{app.url}/v1/stream/conversations/{cid}/responses", timeout=10)
        assert head.status_code == 200
    finally:
        app.terminate()


def test_the_notice_of_a_deleted_conversation_keeps_a_long_unbroken_title_inside_it(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext) -> None:
    chat = ChatClient(StreamsClient(f"{chat_app.url}/v1/stream"), lease_ttl_ms=30_000)
    cid = chat.start_conversation("L" * 200)
    page = open_chat(new_context(viewport=DESKTOP), f"{chat_app.url}/#/c/{cid}")
    append_to_conversations(chat_app, {"type": "delete", "id": cid})
    notice = page.get_by_test_id("deleted-conversation")
    expect(notice).to_contain_text("L" * 200)
    assert notice.evaluate("n => n.scrollWidth <= n.clientWidth"), "the title runs out of its box"


def test_the_message_box_takes_the_direction_of_what_is_written_in_it(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """As `dir="auto"` would, without it: Chromium worked that out over the whole text as it
    changed, and 3 MB pasted as one paragraph froze the tab for 40 s (see the README)."""
    page = open_chat(new_context(), chat_app.url)
    box = page.get_by_test_id("composer-input")

    def direction() -> str:
        return str(box.evaluate("node => getComputedStyle(node).direction"))

    assert direction() == "ltr"
    box.focus()
    page.keyboard.insert_text("  123 שלום, מה שלומך?")  # the first strong character decides
    assert direction() == "rtl"
    box.fill("")
    page.keyboard.insert_text("Hello שלום")
    assert direction() == "ltr"
    box.fill("")
    page.keyboard.insert_text("مرحبا " * 5_000)  # a long paste: the beginning decides
    assert direction() == "rtl"
    box.fill("")
    assert direction() == "ltr"


@pytest.mark.parametrize("stream", ["prompts", "responses"])
def test_a_stream_deleted_while_the_page_reads_it_is_read_again_from_its_start_once_remade(
        chat_app: ServerProcess, model: FakeAnthropic, new_context: NewContext,
        stream: str) -> None:
    """The page asked the stream made again by its message for the offset it had reached in
    the deleted one: refused, the page said the server had been reset and took no more."""
    page = open_chat(new_context(), chat_app.url)
    first, cid = answered_conversation(page, "Asked before the deletion")
    delete_stream(chat_app, f"conversations/{cid}/{stream}")
    notice = page.get_by_test_id("streams-missing")
    expect(notice).to_contain_text(f"{stream} stream is missing")
    second = unique("Asked after the deletion, without a reload")
    send_prompt(page, second)
    wait_state(page, second, "done")
    expect(notice).to_be_hidden()
    expect(page.get_by_test_id("connection-pill")).to_have_attribute("data-state", "live")
    expect(turn_for(page, first)).to_have_count(1)  # what the page had read stays shown


def test_a_message_unsent_while_the_server_was_away_says_when_its_storage_is_full(
        tmp_path: Path, model: FakeAnthropic, new_context: NewContext) -> None:
    """The outbox told the page only of the error that began its retries: back, but full,
    the server was still "Reconnecting", the message "not stored yet" for no reason given."""
    app = start_chat_app(tmp_path / "app", model_url=model.url, config={"MAX_STORAGE_MIB": "1"})
    try:
        page = open_chat(new_context(), app.url)
        _, cid = answered_conversation(page, "Before the disk filled")
        fill_storage(app, cid)
        app.kill()
        banner = page.get_by_test_id("connection-banner")
        expect(banner).to_have_text("Connection lost. Reconnecting…")
        prompt = unique("Sent while the server was away")
        send_prompt(page, prompt)
        app.start()
        expect(banner).to_have_text(re.compile(
            "^What you sent has not been stored yet: the server's storage is full"),
            timeout=40_000)
        expect(page.get_by_test_id("connection-pill")).to_have_attribute("data-state", "retrying")
    finally:
        app.terminate()


def test_the_inspector_asks_before_closing_a_stream_for_good(chat_app: ServerProcess,
                                                             new_context: NewContext) -> None:
    """One click on Append with "Close the stream" ticked closed a conversation's stream for
    good (no stream reopens), with no question asked."""
    path = f"inspected/{uuid.uuid4().hex[:10]}"
    url = f"{chat_app.url}/v1/stream/{path}"
    assert requests.put(url, headers={"Content-Type": "application/json"}, timeout=10).status_code == 201
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={path}")
    expect(page.get_by_test_id("append-card")).to_be_visible()
    questions: list[str] = []

    def answer(accept: bool) -> Callable[[Any], None]:
        def on_dialog(dialog: Any) -> None:
            questions.append(dialog.message)
            if accept:
                dialog.accept()
            else:
                dialog.dismiss()
        return on_dialog

    page.get_by_test_id("append-close").check()
    page.once("dialog", answer(False))
    page.get_by_test_id("append-button").click()
    expect(page.get_by_test_id("append-result")).to_have_text("Not closed: nothing was appended.")
    assert questions and questions[0].startswith(f"Close {path}?")
    assert "Stream-Closed" not in requests.head(url, timeout=10).headers

    page.once("dialog", answer(True))
    page.get_by_test_id("append-button").click()
    expect(page.get_by_test_id("append-result")).to_contain_text("stream closed")
    assert requests.head(url, timeout=10).headers.get("Stream-Closed") == "true"


def test_a_stream_closed_while_the_inspector_follows_it_shows_closed_in_its_metadata(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    """The content said "Stream closed (EOF)" while the metadata beside it still said open."""
    path = f"inspect-{uuid.uuid4().hex[:8]}/closed-elsewhere"
    url = f"{chat_app.url}/v1/stream/{path}"
    created(requests.put(url, headers={"Content-Type": "application/json"},
                         data=json.dumps([{"n": 1}]), timeout=10))
    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    expect(page.get_by_test_id("meta-closed")).to_have_text("open")
    page.get_by_test_id("follow-toggle").click()
    expect(page.get_by_test_id("follow-state")).to_contain_text("up to date")
    closing = requests.post(url, headers={"Stream-Closed": "true"}, timeout=10)
    assert closing.status_code in (200, 204), closing.text
    expect(page.get_by_test_id("follow-state")).to_contain_text("Stream closed (EOF)")
    expect(page.get_by_test_id("meta-closed")).to_have_text("closed")
    # Append says why it is off: the box too, with a reason where text would go.
    expect(page.get_by_test_id("append-button")).to_be_disabled()
    expect(page.get_by_test_id("append-input")).to_be_disabled()
    expect(page.get_by_test_id("append-input")).to_have_attribute(
        "placeholder", "This stream is closed: nothing more can be appended to it.")
