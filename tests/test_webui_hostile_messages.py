"""The chat and the inspector against hostile stream content, in a real headless Chromium.

Anyone who may append to a conversation's streams can put any JSON there, and every viewer's
browser renders it. These tests append such messages with plain HTTP (as an attacker would),
then a normal prompt and answer after them, and check that the page shows the later ones and
raised no uncaught error (the `new_context` fixture fails a test on any page error):

* fields that cannot be turned into strings (``{"toString": null, "valueOf": null}``, which
  JSON.parse happily builds) cost at most their own turn;
* answers built to make the Markdown renderer backtrack for minutes, or to exhaust its stack,
  render (there are no timed assertions: the inputs are sized so that the renderer before the
  fix took far longer than the test's timeout);
* a stream name that is not valid percent-encoding opens in the inspector;
* text in two directions (a Hebrew line above English ones) lays out each line in its own.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import Page, expect

from agent_actors.conversation_log import ConversationLog
from tests.support import ServerProcess
from tests.support.agents import wait_until
from tests.support.browser import turn_for, unsafe_nodes
from tests.support.webapp import start_chat_app
from tests.test_webui_browser import (  # noqa: F401 (fixtures)
    AT_BOTTOM_JS,
    NewContext,
    browser,
    new_context,
    norm,
    open_chat,
)

pytestmark = pytest.mark.timeout(120)

# What JSON.parse turns into an object that String(), `${}` and [].join() throw on.
UNPRINTABLE: dict[str, Any] = {"toString": None, "valueOf": None}
ATTEMPT = 1


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The app (`flask run`) without its embedded agents: the streams hold only what a test
    appends, so no agent's answer races the hostile one. One append may hold more messages
    than by default, to make a huge live batch at once."""
    server = start_chat_app(tmp_path_factory.mktemp("hostile-app"), model_url="http://127.0.0.1:9",
                            config={"EMBEDDED_SUPERVISOR": "false", "MAX_JSON_MESSAGES": "1000000"})
    try:
        yield server
    finally:
        server.terminate()


class Conversation:
    """A conversation written straight into the streams, as anyone who may append can."""

    def __init__(self, app: ServerProcess, title: str) -> None:
        self.root = f"{app.url}/v1/stream"
        self.app_url = app.url
        self.id = f"hostile-{uuid.uuid4().hex[:12]}"
        self.http = requests.Session()
        for path in ("conversations", f"conversations/{self.id}/prompts", f"conversations/{self.id}/responses"):
            response = self.http.put(f"{self.root}/{path}", headers={"Content-Type": "application/json"})
            assert response.status_code in (200, 201), (path, response.status_code, response.text)
        self.append("conversations", {"type": "conversation", "id": self.id, "title": title, "timestamp": now()})

    @property
    def url(self) -> str:
        return f"{self.app_url}/#/c/{self.id}"

    def append(self, path: str, message: Any) -> None:
        response = self.http.post(f"{self.root}/{path}", headers={"Content-Type": "application/json"},
                                  data=json.dumps(message))
        assert response.status_code in (200, 204), (path, response.status_code, response.text[:200])

    def messages(self, path: str) -> list[Any]:
        response = self.http.get(f"{self.root}/{path}", params={"offset": "-1"})
        assert response.status_code == 200, (path, response.status_code, response.text[:200])
        return list(response.json())

    def prompt(self, prompt_id: str, content: Any, **fields: Any) -> None:
        self.append(f"conversations/{self.id}/prompts",
                    {"type": "prompt", "id": prompt_id, "content": content, "timestamp": now(), **fields})

    def respond(self, message: dict[str, Any]) -> None:
        self.append(f"conversations/{self.id}/responses", message)

    def answer(self, prompt_id: str, text: str, **done: Any) -> None:
        self.respond({"type": "chunk", "id": f"{prompt_id}-c1", "promptId": prompt_id, "attempt": ATTEMPT,
                      "content": text, "isComplete": False, "timestamp": now()})
        self.respond({"type": "done", "promptId": prompt_id, "attempt": ATTEMPT, "stopReason": "end_turn",
                      "isComplete": True, "timestamp": now(), **done})

    def close(self) -> None:
        self.http.close()


def now() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def conversation(chat_app: ServerProcess) -> Iterator[Callable[[str], Conversation]]:
    made: list[Conversation] = []

    def make(title: str) -> Conversation:
        made.append(Conversation(chat_app, title))
        return made[-1]

    yield make
    for c in made:
        c.close()


def watch_console(page: Page) -> list[str]:
    """Errors the page logs (a handler that threw and was caught still logs one)."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return errors


def open_conversation(new_context: NewContext, c: Conversation,
                      **context: Any) -> tuple[Page, list[str]]:
    page = new_context(**context).new_page()
    errors = watch_console(page)
    page.goto(c.url)
    expect(page.get_by_test_id("app")).to_have_attribute("data-ready", "true")
    return page, errors


def expect_answer(page: Page, prompt: str, text: str, state: str = "done") -> None:
    turn = turn_for(page, prompt)
    expect(turn).to_have_attribute("data-state", state)
    expect(turn.get_by_test_id("answer-text")).to_contain_text(text)


# -- A: fields that cannot be stringified --------------------------------------------------------

HOSTILE_FIELDS: dict[str, Callable[[Conversation], None]] = {
    "done.stopReason": lambda c: c.answer("p1", "victim answer", stopReason=UNPRINTABLE),
    "done.model": lambda c: c.answer("p1", "victim answer", model=UNPRINTABLE),
    "done.timestamp": lambda c: c.answer("p1", "victim answer", timestamp=UNPRINTABLE),
    "error.message": lambda c: c.respond({"type": "error", "promptId": "p1", "attempt": ATTEMPT,
                                          "message": UNPRINTABLE, "isComplete": True}),
    "prompt.content": lambda c: c.prompt("p0", UNPRINTABLE),
}


@pytest.mark.parametrize("field", list(HOSTILE_FIELDS))
def test_an_unprintable_field_costs_at_most_its_own_turn(
        field: str, conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    c = conversation(f"unprintable {field}")
    c.prompt("pA", "earlier question")
    c.answer("pA", "earlier answer")
    c.prompt("p1", "question")
    HOSTILE_FIELDS[field](c)
    c.prompt("pB", "later question")
    c.answer("pB", "later answer")

    page, console_errors = open_conversation(new_context, c)
    expect_answer(page, "earlier question", "earlier answer")
    expect_answer(page, "later question", "later answer")
    if field.startswith("done."):
        expect_answer(page, "question", "victim answer")
    if field == "error.message":
        expect(turn_for(page, "question")).to_have_attribute("data-state", "error")
    if field == "prompt.content":
        # Shown as the JSON it is, not as an error and not as "[object Object]".
        expect(page.get_by_test_id("turn").filter(
            has=page.get_by_test_id("prompt").get_by_text('{"toString":null,"valueOf":null}'))).to_have_count(1)

    # And the conversation stays live: an answer appended now shows up.
    c.prompt("pC", "live question")
    c.answer("pC", "live answer")
    expect_answer(page, "live question", "live answer")
    assert page.get_by_test_id("turn").count() == (5 if field.startswith("prompt.") else 4)
    assert console_errors == [], console_errors
    assert unsafe_nodes(page) == []


HOSTILE_WAITS: dict[str, tuple[list[dict[str, Any]], str]] = {
    # what the responses stream holds for the conversation's one prompt -> its answer's status
    "unprintable": ([{"type": "wait", "promptId": "p1", "attempt": ATTEMPT, "message": UNPRINTABLE,
                      "retryInMs": "soon", "retry": UNPRINTABLE, "retries": 3}],
                    '{"toString":null,"valueOf":null} Trying again…'),
    "endless": ([{"type": "wait", "promptId": "p1", "attempt": ATTEMPT, "message": "x" * 5000,
                  "retryInMs": 1e300, "retry": 1, "retries": 3}],
                "x" * 500 + " Trying again in 3600 s (retry 1 of 3)."),
    # The model is asked again only before the text: a later wait is not the answer's news.
    "after words": ([{"type": "chunk", "id": "p1-c0", "promptId": "p1", "attempt": ATTEMPT,
                      "content": "words first", "isComplete": False},
                     {"type": "wait", "promptId": "p1", "attempt": ATTEMPT, "message": "too late",
                      "retryInMs": 5000, "retry": 1, "retries": 3}],
                    ""),
}


@pytest.mark.parametrize("case", list(HOSTILE_WAITS))
def test_a_hostile_wait_message_shows_as_a_wait_and_costs_nothing_else(
        case: str, conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """The page counts down to the agent's next try from a `wait` message's fields, which
    anyone may fill with anything."""
    messages, status = HOSTILE_WAITS[case]
    c = conversation(f"hostile wait: {case}")
    c.prompt("p1", "question")
    for message in messages:
        c.respond(message)
    page, console_errors = open_conversation(new_context, c)
    turn = turn_for(page, "question")
    expect(turn).to_have_attribute("data-state", "streaming" if case == "after words" else "thinking")
    if status:
        expect(turn.get_by_test_id("answer-status")).to_have_text(status)
    else:
        expect(turn).to_have_attribute("data-waiting", "false")
        expect(turn).not_to_contain_text("too late")
    # And the answer goes on: text appended now shows, and the wait is over.
    c.answer("p1", "the answer")
    expect_answer(page, "question", "the answer")
    expect(turn).not_to_contain_text("Trying again")
    assert console_errors == [], console_errors


AFTER_THE_ANSWER: dict[str, list[dict[str, Any]]] = {
    # One message after a finished answer reopened the turn for good ("thinking", no text)
    # where the agent took it as finished, its text cleared.
    "a restart after the done": [{"type": "restart", "promptId": "p1", "attempt": ATTEMPT + 1}],
    "a later attempt's chunk after the done": [
        {"type": "chunk", "promptId": "p1", "attempt": ATTEMPT + 1, "content": " X"}],
    # Without an attempt the page took it as the current one, the agent as attempt 0.
    "a chunk without an attempt": [{"type": "chunk", "promptId": "p1", "content": " Y"}],
}


@pytest.mark.parametrize("case", list(AFTER_THE_ANSWER))
def test_the_page_shows_the_answer_the_agents_read_whatever_follows_it(
        case: str, conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """The page and the agents fold the same responses stream: the answer one shows is the
    one the other sends the model back as history, and takes as finished."""
    c = conversation(f"after the answer: {case}")
    c.prompt("p1", "question")
    if case == "a chunk without an attempt":  # slipped in before the answer ends
        c.respond({"type": "chunk", "id": "p1-c1", "promptId": "p1", "attempt": ATTEMPT,
                   "content": "the answer", "isComplete": False, "timestamp": now()})
        for message in AFTER_THE_ANSWER[case]:
            c.respond(message)
        c.respond({"type": "done", "promptId": "p1", "attempt": ATTEMPT,
                   "stopReason": "end_turn", "isComplete": True, "timestamp": now()})
    else:
        c.answer("p1", "the answer")
        for message in AFTER_THE_ANSWER[case]:
            c.respond(message)
    agents_view = ConversationLog()
    for message in c.messages(f"conversations/{c.id}/responses"):
        agents_view.apply_response(message)
    assert agents_view.is_finished("p1")
    assert "".join(agents_view.answers["p1"].parts) == "the answer"

    page, console_errors = open_conversation(new_context, c)
    expect_answer(page, "question", "the answer")
    expect(turn_for(page, "question").get_by_test_id("answer-text")).to_have_text("the answer")
    assert console_errors == [], console_errors


def test_the_raw_stream_panel_shows_fields_named_like_object_properties(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """Its one-line summary skipped fields called "constructor" or "hasOwnProperty" (taken
    as there already), and one called "__proto__" set the summary's prototype."""
    c = conversation("raw fields")
    c.prompt("p1", "question")
    c.respond({"type": "chunk", "promptId": "p1", "attempt": ATTEMPT, "content": "text",
               "constructor": "c", "hasOwnProperty": "h", "__proto__": {"a": 1}})
    page, console_errors = open_conversation(new_context, c)
    page.get_by_test_id("toggle-streams").click()
    entry = page.get_by_test_id("raw-entry").filter(has_text='"content":"text"')
    expect(entry).to_contain_text('"constructor":"c","hasOwnProperty":"h","__proto__":{"a":1}')
    assert console_errors == [], console_errors


def test_a_stop_reason_named_like_an_object_property_is_shown_as_its_name(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """The reasons shown in words were looked up in a plain object: a stop reason called
    "toString" showed the text of a JavaScript function."""
    c = conversation("stop reasons")
    for n, reason in enumerate(("toString", "constructor", "__proto__")):
        c.prompt(f"p{n}", f"question {n}")
        c.answer(f"p{n}", f"answer {n}", stopReason=reason)
    page, console_errors = open_conversation(new_context, c)
    for n, reason in enumerate(("toString", "constructor", "__proto__")):
        expect_answer(page, f"question {n}", f"answer {n}")
        meta = turn_for(page, f"question {n}").get_by_test_id("answer-meta")
        expect(meta).to_contain_text(f"Stop reason: {reason}")
        expect(meta).not_to_contain_text("function")
    assert console_errors == [], console_errors


def test_a_cancel_before_its_prompt_does_not_stop_a_later_prompt_with_that_id(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """A cancel can only be about a prompt before it in the stream: one naming a prompt sent
    later showed that prompt as being stopped (and the agents skipped it)."""
    c = conversation("early cancel")
    c.append(f"conversations/{c.id}/prompts", {"type": "cancel", "promptId": "p1", "timestamp": now()})
    c.prompt("p1", "question after the cancel")
    page, console_errors = open_conversation(new_context, c)
    expect(turn_for(page, "question after the cancel")).to_have_attribute("data-state", "thinking")
    c.answer("p1", "answered all the same")
    expect_answer(page, "question after the cancel", "answered all the same")
    assert console_errors == [], console_errors


def test_prompts_the_agent_cannot_answer_are_shown_for_what_they_are(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """Another client may write a blank prompt, or one whose content is not text: the agent
    answers each with an error. The blank one was an empty bubble, and the other offered Try
    again, which sent its JSON as a new question."""
    c = conversation("unanswerable prompts")
    c.prompt("p-blank", " \n\t ")
    c.respond({"type": "error", "promptId": "p-blank", "attempt": ATTEMPT, "isComplete": True,
               "message": "This prompt is empty: there is nothing to answer.", "timestamp": now()})
    c.prompt("p-json", {"x": 1})
    c.respond({"type": "error", "promptId": "p-json", "attempt": ATTEMPT, "isComplete": True,
               "message": "This prompt could not be read: its content is not text.",
               "timestamp": now()})
    page, console_errors = open_conversation(new_context, c)
    turns = page.get_by_test_id("turn")
    expect(turns).to_have_count(2)
    blank, json_prompt = turns.nth(0), turns.nth(1)
    expect(blank).to_have_attribute("data-state", "error")
    expect(blank.get_by_test_id("prompt")).to_have_text(re.compile(r"^\(an empty message\)"))
    expect(json_prompt).to_have_attribute("data-state", "error")
    expect(json_prompt.get_by_test_id("prompt")).to_contain_text('{"x":1}')
    # The last turn, failed: Try again is offered only for a question that can be asked again.
    expect(json_prompt.get_by_test_id("answer-meta")).to_be_visible()
    expect(json_prompt.get_by_test_id("retry")).to_have_count(0)
    c.prompt("p-text", "a question in words")
    c.respond({"type": "error", "promptId": "p-text", "attempt": ATTEMPT, "isComplete": True,
               "message": "The model failed.", "timestamp": now()})
    expect(turn_for(page, "a question in words").get_by_test_id("retry")).to_have_count(1)
    assert console_errors == [], console_errors


def test_prompts_without_an_answerable_id_are_shown_failed_and_stop_still_works(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """The agent skips a prompt whose id is not a string of 1 to 256 characters (nothing can
    be written under it). The page showed one with an empty or overlong id as Thinking forever,
    and Stop aimed at it (the first unfinished prompt) rather than at the answer under way."""
    c = conversation("unanswerable ids")
    c.prompt("", "empty id")
    c.prompt("x" * 257, "overlong id")
    c.prompt("\U0001F600" * 256, "emoji id")  # 256 characters (512 UTF-16 units): answerable
    c.append(f"conversations/{c.id}/prompts", {"type": "prompt", "id": 7, "content": "number id"})
    c.append(f"conversations/{c.id}/prompts", {"content": "no id"})
    c.prompt("p-live", "the question being answered")
    # Answers under ids the page made up for the skipped prompts are not theirs.
    c.answer("", "an answer no agent writes")
    page, console_errors = open_conversation(new_context, c)
    expect(page.get_by_test_id("turn")).to_have_count(6)
    for content, problem in [("empty id", "id is empty"),
                             ("overlong id", "id is 257 characters long (at most 256)"),
                             ("number id", "id is not a string but a JSON number"),
                             ("no id", "without an id")]:
        turn = turn_for(page, content)
        expect(turn).to_have_attribute("data-state", "error")
        expect(turn.get_by_test_id("answer-error")).to_contain_text(problem)
        expect(turn.get_by_test_id("answer-text")).to_have_text("")
    expect(turn_for(page, "emoji id")).to_have_attribute("data-state", "thinking")
    c.answer("\U0001F600" * 256, "answered")
    expect_answer(page, "emoji id", "answered")
    expect(turn_for(page, "the question being answered")).to_have_attribute("data-state", "thinking")
    page.get_by_test_id("stop-button").click()
    expect(turn_for(page, "the question being answered")).to_have_attribute("data-state", "cancelling")
    c.answer("p-live", "stopped", stopReason="cancelled")
    # Try again on a skipped prompt (the last turn) asks its question under an id that is answered.
    c.prompt("y" * 256 + "z", "asked again")
    page.get_by_test_id("turn").last.get_by_test_id("retry").click()
    expect(page.get_by_test_id("turn")).to_have_count(8)
    expect(page.get_by_test_id("turn").last).to_have_attribute("data-state", re.compile("^(sending|thinking)$"))
    wait_until(lambda: c.messages(f"conversations/{c.id}/prompts")[-1].get("content") == "asked again"
               and c.messages(f"conversations/{c.id}/prompts")[-1]["id"] != "y" * 256 + "z",
               timeout=10, what="the question to be asked again")
    assert 0 < len(c.messages(f"conversations/{c.id}/prompts")[-1]["id"]) <= 256
    assert console_errors == [], console_errors


def test_a_batch_of_more_messages_than_a_call_takes_arguments_is_read_live(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """One append of half a million messages reaches the live reader as one batch: the reader
    spread them into a single call's arguments, which throws past V8's limit, so it retried
    that batch for ever and the answer after it never came."""
    c = conversation("a huge batch")
    c.prompt("p1", "question before the flood")
    page, console_errors = open_conversation(new_context, c)
    expect(turn_for(page, "question before the flood")).to_have_attribute("data-state", "thinking")
    c.append(f"conversations/{c.id}/responses", [0] * 500_000)
    c.answer("p1", "answered after the flood")
    expect_answer(page, "question before the flood", "answered after the flood")
    assert console_errors == [], console_errors


# -- B/C: Markdown built to be slow, or deeper than the stack ------------------------------------

# Sized so that the renderer before the fix would take many minutes (the heading: 6,000
# spaces took 30 s and the time grows with about the cube of the length; the others are
# quadratic and took about a second at a tenth of these sizes), or threw RangeError.
HOSTILE_MARKDOWN: dict[str, tuple[str, str]] = {
    "heading": ("#" + " " * 20_000 + "\u2028", "#"),
    "table-delimiter": ("a|b\n" + " " * 600_000 + "x", "a|b"),
    "emphasis": ("_a " * 150_000 + "end", "_a _a"),
    "emphasis-star": ("*a " * 150_000 + "end", "*a *a"),
    "link-destination": ("[a](" * 120_000 + "end", "[a]([a]("),
    "nested-list": ("- " * 3000 + "deep item", "deep item"),
    "nested-quote": ("> " * 8000 + "deep quote", "deep quote"),
    "nested-ordered": ("1. " * 3000 + "deep number", "deep number"),
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("name", list(HOSTILE_MARKDOWN))
def test_hostile_markdown_renders(name: str, conversation: Callable[[str], Conversation],
                                  new_context: NewContext) -> None:
    source, shown = HOSTILE_MARKDOWN[name]
    c = conversation(f"markdown {name}")
    c.prompt("p1", "hostile question")
    c.answer("p1", source)
    c.prompt("pB", "later question")
    c.answer("pB", "later **answer**")

    page, console_errors = open_conversation(new_context, c)
    expect_answer(page, "hostile question", shown)
    expect_answer(page, "later question", "later answer")
    expect(turn_for(page, "later question").locator("strong")).to_have_text("answer")
    assert console_errors == [], console_errors


def test_made_up_entity_names_cost_a_bounded_number_of_lookups(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """A name like "&q17;" is looked up by having the browser parse it; 30,000 distinct ones in
    an answer are looked up only as far as the block's work budget goes."""
    c = conversation("made-up entities")
    c.prompt("p1", "entity question")
    c.answer("p1", "".join(f"&q{n}; " for n in range(30_000)))
    c.prompt("pB", "later question")
    c.answer("pB", "later &amp; **answer**")

    page = new_context().new_page()
    errors = watch_console(page)
    page.add_init_script("""
        window.parsesOfHtml = 0;
        const parse = DOMParser.prototype.parseFromString;
        DOMParser.prototype.parseFromString = function (...args) {
          window.parsesOfHtml += 1;
          return parse.apply(this, args);
        };""")
    page.goto(c.url)
    expect_answer(page, "entity question", "&q0; &q1;")
    expect_answer(page, "later question", "later & answer")
    # The block's budget (about 4.1 million units for its 200,000 characters) at 3,000 a name.
    assert 100 < page.evaluate("window.parsesOfHtml") < 3_000
    assert errors == [], errors


def test_an_answer_beyond_the_markdown_limit_ends_as_plain_text(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    head = "# Heading\n\nSome **bold** text.\n\n"
    filler = ("word " * 15 + "\n") * 4000  # 320 KB
    tail = "# not a heading\n**not bold** the very end"
    c = conversation("a long answer")
    c.prompt("p1", "long question")
    c.answer("p1", head + filler + tail)

    page, console_errors = open_conversation(new_context, c)
    turn = turn_for(page, "long question")
    expect(turn).to_have_attribute("data-state", "done")
    answer = turn.get_by_test_id("answer-text")
    expect(answer.locator("h3")).to_have_text("Heading")
    expect(answer.locator("strong").first).to_have_text("bold")
    expect(answer.get_by_test_id("markdown-overflow")).to_be_visible()
    overflow = answer.locator(".md-overflow")  # the plain text, in pieces
    expect(overflow.filter(has_text="# not a heading")).to_have_count(1)
    expect(overflow.filter(has_text="**not bold** the very end")).to_have_count(1)
    assert answer.locator("h3").count() == 1
    assert console_errors == [], console_errors


# Ordinary Markdown renders exactly as before the limits were added.
ORDINARY_MARKDOWN = "\n".join([
    "# Title ##",
    "## Second #####   ",
    "### Keep # inside",
    "#### foo#",
    "",
    "Text with *em*, **strong**, ***both***, ~~gone~~, `code`, [a link](https://example.com/x \"t\")",
    "and https://example.org/path. Also snake_case_name stays. You said: “see",
    "https://example.net/docs”, or ‘https://example.net/q?a=1’ «https://example.net/fr».",
    "(See https://en.wikipedia.org/wiki/Rust_(language).)",
    "",
    "| left | center | right |",
    "|:-----|:------:|------:|",
    "| `a|b` | **x** | 3 |",
    "",
    "- one",
    "- two",
    "  - nested *item*",
    "",
    "> quoted **text**",
    "",
    "```py",
    "print('# not a heading')",
    "```",
    "",
    "    indented = 1",
    "      ",
    "\tstill *code*",
    "",
    "AT&amp;T &lt;b&gt; &copy;&#169;&#x1F600; &#0; &bogus; &ampx; \\&amp; `&amp;` "
    "[ref](https://example.com/?a=1&amp;b=2)",
])


def test_ordinary_markdown_still_renders(conversation: Callable[[str], Conversation],
                                         new_context: NewContext) -> None:
    c = conversation("ordinary markdown")
    c.prompt("p1", "ordinary question")
    c.answer("p1", ORDINARY_MARKDOWN)
    page, console_errors = open_conversation(new_context, c)
    turn = turn_for(page, "ordinary question")
    expect(turn).to_have_attribute("data-state", "done")
    answer = turn.get_by_test_id("answer-text")
    assert [answer.locator(f"h{n}").text_content() for n in (3, 4, 5, 6)] == [
        "Title", "Second", "Keep # inside", "foo#"]
    assert answer.locator("em").first.text_content() == "em"
    assert answer.locator("strong > em").text_content() == "both"
    assert answer.locator("del").text_content() == "gone"
    links = answer.locator("a")
    assert links.nth(0).get_attribute("href") == "https://example.com/x"
    assert links.nth(1).get_attribute("href") == "https://example.org/path"
    # A closing quote after a URL is the prose's: the demo model quotes each prompt so.
    assert [links.nth(n).get_attribute("href") for n in (2, 3, 4)] == [
        "https://example.net/docs", "https://example.net/q?a=1", "https://example.net/fr"]
    # A closing parenthesis is the URL's when it closes one the URL opened (it was cut off).
    assert links.nth(5).get_attribute("href") == "https://en.wikipedia.org/wiki/Rust_(language)"
    assert "snake_case_name" in norm(answer.text_content() or "")
    assert answer.locator("th").all_text_contents() == ["left", "center", "right"]
    assert answer.locator("th").evaluate_all("ths => ths.map(th => th.className)") == [
        "align-left", "align-center", "align-right"]
    assert answer.locator("td code").text_content() == "a|b"
    assert answer.locator("ul ul em").text_content() == "item"
    assert answer.locator("blockquote strong").text_content() == "text"
    assert answer.locator("pre code").all_text_contents() == [
        "print('# not a heading')", "indented = 1\n\nstill *code*"]
    references = answer.locator("p").last
    assert references.text_content() == "AT&T <b> ©©😀 \ufffd &bogus; &ampx; &amp; &amp; ref"
    assert references.locator("code").text_content() == "&amp;"
    assert references.locator("a").get_attribute("href") == "https://example.com/?a=1&b=2"
    # Both scroll sideways, so they take the focus; the code block's box clips what is outside.
    for scroller in (answer.locator("pre").first, answer.locator(".md-table")):
        assert scroller.get_attribute("tabindex") == "0"
        assert scroller.evaluate("el => getComputedStyle(el).outlineOffset") == "-2px"
    assert console_errors == [], console_errors


CODE_PY = ('def greet(name="world"):\n    """Say hello."""\n'
           '    return f"hi {name}" + str(0x1F)  # note\n')
CODE_JS = "const total = items.length; // count\nif (total > 1.5e3) return null;"
CODE_OVER_LIMIT = "x = 'long' # line\n" * 1_200  # 21,600 characters: past the 20,000 coloured
CODE_OPEN = "query = '''\nSELECT * FROM t"  # the fence still open, as while it streams in


def test_code_is_coloured_by_language_and_keeps_every_character(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    c = conversation("coloured code")
    c.prompt("p1", "code question")
    c.answer("p1", "\n\n".join([
        f"```python\n{CODE_PY}```", f"```js\n{CODE_JS}\n```", "```text\nif x return 1\n```",
        f"```py\n{CODE_OVER_LIMIT}```", f"```python\n{CODE_OPEN}",
    ]))
    page, console_errors = open_conversation(new_context, c)
    expect(turn_for(page, "code question")).to_have_attribute("data-state", "done")
    codes = turn_for(page, "code question").get_by_test_id("answer-text").locator("pre code")
    expect(codes).to_have_count(5)
    # Colouring only wraps text in spans: find, selection and the Copy button see the source.
    assert codes.all_text_contents() == [
        CODE_PY.rstrip("\n"), CODE_JS, "if x return 1", CODE_OVER_LIMIT.rstrip("\n"), CODE_OPEN]

    def tokens(n: int) -> dict[str, list[str]]:
        found: dict[str, list[str]] = codes.nth(n).evaluate(
            "code => { const kinds = {}; for (const s of code.querySelectorAll('span'))"
            " (kinds[s.className] ??= []).push(s.textContent); return kinds; }")
        return found

    assert tokens(0) == {
        "tok-keyword": ["def", "return"],
        "tok-string": ['"world"', '"""Say hello."""', '"hi {name}"'],
        "tok-number": ["0x1F"],
        "tok-comment": ["# note"],
    }
    assert tokens(1) == {"tok-keyword": ["const", "if", "return"], "tok-comment": ["// count"],
                         "tok-number": ["1.5e3"], "tok-literal": ["null"]}
    assert tokens(2) == {}  # no language named: nothing guessed
    assert tokens(3) == {}  # too long to colour again at every frame while it streams
    assert tokens(4) == {}  # coloured once closed: laid out again at every frame until then
    # Code reads left to right, in an answer in Hebrew too (its indentation was mirrored).
    c.prompt("p2", "rtl question")
    c.answer("p2", "הנה הקוד:\n\n```python\ndef f(x):\n    return x\n```")
    rtl = turn_for(page, "rtl question").get_by_test_id("answer-text")
    expect(rtl.locator("pre")).to_have_count(1)
    assert rtl.evaluate("el => getComputedStyle(el).direction") == "rtl"
    assert rtl.locator("pre").evaluate("el => getComputedStyle(el).direction") == "ltr"
    keyword = codes.first.locator(".tok-keyword").first
    assert keyword.evaluate("el => getComputedStyle(el).color") != codes.first.evaluate(
        "el => getComputedStyle(el).color")
    assert console_errors == [], console_errors


def test_cancelling_a_waiting_message_keeps_following_the_answer_above(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """Its Cancel row went away, the page grew shorter, and the scroll that followed counted
    as the reader's own (the press was on the turns): the view stopped following the answer,
    and the focus fell to the page's body. (The answer is written here, chunk by chunk, so
    that it streams at an even pace.)"""
    c = conversation("follow after a cancel")
    c.prompt("p1", "first question")
    page, console_errors = open_conversation(new_context, c,
                                             viewport={"width": 1280, "height": 560})
    stop = threading.Event()

    def write_answer() -> None:
        n = 0
        while not stop.is_set():
            c.respond({"type": "chunk", "id": f"p1-c{n}", "promptId": "p1", "attempt": ATTEMPT,
                       "content": ("\n\n" if n % 40 == 0 else "") + " lorem ipsum",
                       "isComplete": False, "timestamp": now()})
            n += 1
            stop.wait(0.04)

    writer = threading.Thread(target=write_answer, daemon=True)
    writer.start()
    try:
        scroll = page.get_by_test_id("message-scroll")
        wait_until(lambda: scroll.evaluate("s => s.scrollHeight > s.clientHeight + 300"),
                   timeout=15, what="an answer taller than the view")
        box = page.get_by_test_id("composer-input")
        box.fill("second question")
        box.press("Enter")
        cancel = turn_for(page, "second question").get_by_test_id("cancel-queued")
        expect(cancel).to_be_visible()
        page.wait_for_timeout(1000)
        cancel.click()
        expect(turn_for(page, "second question")).to_have_attribute("data-state", "withdrawn")
        expect(box).to_be_focused()
        page.wait_for_timeout(2000)  # the answer grew meanwhile: the view went with it
        assert page.evaluate(AT_BOTTOM_JS)
        expect(page.get_by_test_id("jump-latest")).to_be_hidden()
    finally:
        stop.set()
        writer.join()
    assert console_errors == [], console_errors


# -- D: the inspector and stream names that are not percent-encoding ------------------------------


def test_the_inspector_opens_a_stream_whose_name_has_a_stray_percent(
        chat_app: ServerProcess, new_context: NewContext) -> None:
    path = f"hostile-{uuid.uuid4().hex[:8]}/%zz"
    response = requests.put(f"{chat_app.url}/v1/stream/{quote(path, safe='/')}",
                            headers={"Content-Type": "text/plain"}, data="stray percent content\n")
    assert response.status_code in (200, 201), (response.status_code, response.text)

    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={quote(path, safe='')}")
    expect(page.get_by_test_id("inspector-title")).to_have_text(path)
    expect(page.get_by_test_id("content-view")).to_contain_text("stray percent content")

    page = open_chat(new_context(), f"{chat_app.url}/inspector#path={path}")  # a malformed hash
    expect(page.get_by_test_id("inspector-title")).to_have_text(path)
    expect(page.get_by_test_id("content-view")).to_contain_text("stray percent content")


# -- text in two directions ---------------------------------------------------------------------

LINE_SIDES_JS = """([selector, needles]) => {
  const box = document.querySelector(selector);
  const where = (needle) => {
    const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const at = node.data.indexOf(needle);
      if (at < 0) continue;
      const range = document.createRange();
      range.setStart(node, at);
      range.setEnd(node, at + needle.length);
      const line = range.getBoundingClientRect();
      const block = (node.parentElement.closest("p") ?? box).getBoundingClientRect();
      return line.left - block.left < 4 ? "left" : block.right - line.right < 4 ? "right" : "middle";
    }
    return "missing";
  };
  return needles.map(where);
}"""


def test_each_line_of_text_in_two_directions_takes_its_own(
        conversation: Callable[[str], Conversation], new_context: NewContext) -> None:
    """A Hebrew first line made the whole message right-to-left: the English lines under it
    were set against the right edge, their full stops moved to their start."""
    c = conversation("two directions")
    c.prompt("p1", "שלום עולם\nPlease translate this line.")
    c.answer("p1", "שלום עולם פירושו\n\nIt means hello world.")
    page, console_errors = open_conversation(new_context, c)
    expect_answer(page, "שלום עולם\nPlease translate this line.", "It means hello world.")
    prompt_sides = page.evaluate(LINE_SIDES_JS, [
        '[data-testid="turn"] .bubble-text', ["שלום עולם", "Please translate this line."]])
    answer_sides = page.evaluate(LINE_SIDES_JS, [
        '[data-testid="answer-text"]', ["שלום עולם פירושו", "It means hello world."]])
    assert prompt_sides == ["right", "left"], prompt_sides
    assert answer_sides == ["right", "left"], answer_sides
    assert console_errors == [], console_errors
