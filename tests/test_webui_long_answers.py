"""Long answers, and answers streaming fast, in the chat in a real headless Chromium.

The page does its DOM work for a live read's batches once a frame, not once a batch: while an
answer streams, batches come hundreds a second, and each forced layout lays out the whole page,
the longest answer included (a 200,000-character answer froze the page for a minute).

The Markdown renderer: an answer is parsed again at every frame that shows new text, so `MarkdownParse` parses only
from its last block or two, and `MarkdownView` keeps the DOM of the blocks before. These
tests grow random Markdown a few characters at a time (line breaks of every kind, blocks of
every kind cut anywhere) and check that every step gives exactly the blocks, and the page
exactly the nodes, that parsing the same text from scratch gives. Then that it is
incremental indeed: the blocks and nodes of the settled text are the same objects as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support import ServerProcess
from tests.support.browser import turn_for
from tests.support.webapp import start_chat_app
from tests.test_webui_browser import NewContext, browser, new_context  # noqa: F401 (fixtures)
from tests.test_webui_hostile_messages import ATTEMPT, Conversation, now, open_conversation

pytestmark = pytest.mark.timeout(180)

MODULE = "/ui/js/markdown.js"

# Runs in the page: helpers shared by the tests below.
HELPERS_JS = """
window.md = await import(%r);
// A small seeded generator (mulberry32), so that a failure can be replayed.
window.rng = (seed) => () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const LINES = ["", "", "   ", "# Heading", "## Two ##", "#", "- item", "* star item", "  - nested",
  "    - deeper", "1. one", "2) two", "10. ten", "> quote", ">", "> > nested quote", "```", "```js",
  "~~~", "````", "    indented code", "| a | b |", "|---|:-:|", "| 1 | 2 |", "---", "***", "___",
  "Plain *emphasis* and **strong** text", "a lazy continuation line", "\\t- a tab item",
  "text with `code` and [a link](https://example.com)", "  two spaces in", "-", "+ plus",
  "***bold em***", "~~struck~~", "https://example.org/bare"];
const BREAKS = ["\\n", "\\n", "\\n", "\\r\\n", "\\r"];
window.randomMarkdown = (random, lines) => {
  let text = "";
  for (let n = 0; n < lines; n += 1) {
    text += LINES[Math.floor(random() * LINES.length)];
    text += BREAKS[Math.floor(random() * BREAKS.length)];
  }
  return text;
};
// Blocks as data, without where each started (counted from where a parse began).
window.shape = (blocks) => JSON.stringify(blocks, (key, value) => (key === "line" ? undefined : value));
""" % MODULE


@pytest.fixture(scope="module")
def chat_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_chat_app(tmp_path_factory.mktemp("markdown-app"), model_url="http://127.0.0.1:9",
                            config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def conversation(chat_app: ServerProcess) -> Iterator[Conversation]:
    made = Conversation(chat_app, "a fast answer")
    yield made
    made.close()


def test_a_fast_answer_lays_the_page_out_once_a_frame_not_once_a_chunk(
        conversation: Conversation, new_context: NewContext) -> None:
    conversation.prompt("p1", "question")
    page, console_errors = open_conversation(new_context, conversation)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")

    def layouts() -> int:
        metrics = cdp.send("Performance.getMetrics")["metrics"]
        return int(next(m["value"] for m in metrics if m["name"] == "LayoutCount"))

    page.evaluate("""() => {
      window.__frames = 0;
      const tick = () => { window.__frames += 1; requestAnimationFrame(tick); };
      requestAnimationFrame(tick);
    }""")
    before = layouts()
    chunks = 300
    for n in range(chunks):  # each its own append, so that the page reads them one by one
        conversation.respond({"type": "chunk", "id": f"p1-{n}", "promptId": "p1", "attempt": ATTEMPT,
                              "content": f"word{n} ", "isComplete": False, "timestamp": now()})
    conversation.respond({"type": "done", "promptId": "p1", "attempt": ATTEMPT, "stopReason": "end_turn",
                          "isComplete": True, "timestamp": now()})
    turn = turn_for(page, "question")
    expect(turn).to_have_attribute("data-state", "done")
    expect(turn.get_by_test_id("answer-text")).to_contain_text(f"word{chunks - 1}")
    expect(page.get_by_test_id("raw-responses-count")).to_have_attribute("data-count", str(chunks + 1))
    frames: int = page.evaluate("window.__frames")
    laid_out = layouts() - before
    # A few layouts a frame (the frame's own, and reads of the scroll positions after the
    # chat and the raw panel changed): 4-5 here. Before, every batch forced several, and the
    # page, busy with them, drew few frames: 1,858 layouts in 22 frames.
    assert laid_out <= 8 * frames + 10, (laid_out, frames)
    assert console_errors == [], console_errors


@pytest.fixture
def page(browser: Browser, chat_app: ServerProcess) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # An empty page on the app's origin, where the module can be imported.
    blank = f"{chat_app.url}/markdown-test-page"
    page.route(blank, lambda route: route.fulfill(body="<!doctype html><title>test</title>",
                                                   content_type="text/html"))
    page.goto(blank)
    page.evaluate(f"async () => {{ {HELPERS_JS} }}")
    yield page
    context.close()
    assert errors == [], errors


def test_growing_markdown_parses_as_it_would_from_scratch(page: Page) -> None:
    mismatches: list[dict[str, Any]] = page.evaluate("""() => {
      const mismatches = [];
      for (let seed = 1; seed <= 150 && mismatches.length < 3; seed += 1) {
        const random = rng(seed);
        const text = randomMarkdown(random, 40);
        const parse = new md.MarkdownParse();
        for (let end = 0; end <= text.length; end += 1 + Math.floor(random() * 12)) {
          const source = text.slice(0, end);
          const got = shape(parse.blocks(source));
          const want = shape(new md.MarkdownParse().blocks(source));
          if (got !== want) { mismatches.push({ seed, source, got, want }); break; }
        }
      }
      return mismatches;
    }""")
    assert mismatches == []


def test_a_source_that_is_not_a_continuation_is_parsed_afresh(page: Page) -> None:
    same: bool = page.evaluate("""() => {
      const parse = new md.MarkdownParse();
      parse.blocks("# One\\n\\nfirst paragraph\\n\\n- a list\\n");
      const source = "Another answer\\n\\n# Two\\n";
      return shape(parse.blocks(source)) === shape(new md.MarkdownParse().blocks(source));
    }""")
    assert same


def test_past_the_markdown_limit_the_plain_text_grows_in_pieces(page: Page) -> None:
    result: dict[str, Any] = page.evaluate("""() => {
      const random = rng(7);
      let text = "";
      while (text.length < md.MAX_MARKDOWN + 60000) text += randomMarkdown(random, 200);
      const parse = new md.MarkdownParse();
      let mismatch = null;
      for (let end = md.MAX_MARKDOWN - 20000; end <= text.length && !mismatch; end += 2003) {
        const source = text.slice(0, end);
        if (shape(parse.blocks(source)) !== shape(new md.MarkdownParse().blocks(source))) mismatch = end;
      }
      const blocks = parse.blocks(text);
      const note = blocks.findIndex((b) => b.type === "overflow-note");
      const pieces = blocks.slice(note + 1);
      // What the Markdown part left is all in the pieces, cut at line breaks.
      const cut = text.length - pieces.map((p) => p.raw).join("\\n").length - 1;
      return { mismatch, pieces: pieces.length, types: [...new Set(pieces.map((p) => p.type))],
               rest: pieces.map((p) => p.raw).join("\\n") === text.slice(cut + 1), cutAtBreak: text[cut] === "\\n",
               longest: Math.max(...pieces.map((p) => p.raw.length)) };
    }""")
    assert result["mismatch"] is None
    assert result["types"] == ["overflow"]
    assert result["rest"] and result["cutAtBreak"]
    assert result["pieces"] > 5 and result["longest"] <= 8000


def test_settled_blocks_are_not_parsed_again(page: Page) -> None:
    kept: list[bool] = page.evaluate("""() => {
      const parse = new md.MarkdownParse();
      const source = "# Title\\n\\nA paragraph.\\n\\n- one\\n- two\\n\\nThe last paragraph";
      const first = parse.blocks(source);
      const second = parse.blocks(source + " goes on.\\n\\nAnd one more");
      const third = parse.blocks(source + " goes on.\\n\\nAnd one more, and the end.");
      return [
        second[0] === first[0], second[1] === first[1],
        // What ends the list is the first line of the next block, not whole the first time.
        second[2] !== first[2], third[2] === second[2],
        // Nor is the first line of the last paragraph yet.
        third[3] !== second[3], third.length === 5,
      ];
    }""")
    assert kept == [True] * 6


def test_the_view_of_a_growing_answer_matches_a_fresh_rendering(page: Page) -> None:
    result: dict[str, Any] = page.evaluate("""() => {
      const html = (node) => [...node.querySelectorAll(":scope > .md-part > *")].map((n) => n.outerHTML).join("");
      const fresh = (source) => {
        const div = document.createElement("div");
        div.append(md.renderMarkdown(source));
        return [...div.children].map((n) => n.outerHTML).join("");
      };
      const mismatches = [];
      for (let seed = 1; seed <= 40 && mismatches.length < 3; seed += 1) {
        const random = rng(1000 + seed);
        const text = randomMarkdown(random, 400); // enough for several parts
        const container = document.createElement("div");
        const view = new md.MarkdownView(container);
        for (let end = 0; end <= text.length + 40; end += 1 + Math.floor(random() * 40)) {
          view.update(text.slice(0, end));
        }
        view.update(text);
        if (html(container) !== fresh(text)) mismatches.push(seed);
      }
      // The first block's node stays the same one while the answer grows.
      const container = document.createElement("div");
      const view = new md.MarkdownView(container);
      view.update("# Kept\\n\\nsome text");
      const first = container.querySelector("h3");
      view.update("# Kept\\n\\nsome text and more\\n\\n- a list");
      return { mismatches, kept: container.querySelector("h3") === first,
               parts: (() => { const c = document.createElement("div");
                               new md.MarkdownView(c).update(randomMarkdown(rng(5), 2000));
                               return c.querySelectorAll(":scope > .md-part").length; })() };
    }""")
    assert result["mismatches"] == []
    assert result["kept"]
    assert result["parts"] > 1
