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
from tests.support.browser import LayoutCounter, turn_for
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
  "***bold em***", "~~struck~~", "https://example.org/bare", "\\tcode after a tab", "      six in",
  "AT&amp;T &#169; &bogus; *em*"];
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
    counter = LayoutCounter(page)
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
    laid_out, frames = counter.counts()
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
    page.route(blank, lambda route: route.fulfill(
        body='<!doctype html><title>test</title><link rel="stylesheet" href="/ui/css/app.css">',
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
      // Every piece in order, one line break between two (never a cut inside a line): the
      // text as it is, nothing lost or doubled.
      const check = (text, blocks) => {
        const pieces = blocks.slice(blocks.findIndex((b) => b.type === "overflow-note") + 1);
        // Where the Markdown part ends: its last line break, and the break is not shown.
        let at = Math.max(text.lastIndexOf("\\n", md.MAX_MARKDOWN), text.lastIndexOf("\\r", md.MAX_MARKDOWN));
        at += /^(\\r\\n|\\r|\\n)/.exec(text.slice(at, at + 2))[0].length;
        for (const [n, piece] of pieces.entries()) {
          if (piece.type !== "overflow" || !text.startsWith(piece.raw, at)) return `piece ${n}`;
          at += piece.raw.length;
          if (n === pieces.length - 1) break;
          const lineBreak = /^(\\r\\n|\\r|\\n)/.exec(text.slice(at, at + 2));
          if (!lineBreak) return `no line break after piece ${n}`;
          at += lineBreak[0].length;
        }
        if (at !== text.length) return `ends at ${at} of ${text.length}`;
        return pieces.length > 5 && Math.max(...pieces.map((p) => p.raw.length)) <= 8000 ? "ok"
          : `${pieces.length} pieces`;
      };
      const outcomes = {};
      const random = rng(7);
      let mixed = "";
      while (mixed.length < md.MAX_MARKDOWN + 60000) mixed += randomMarkdown(random, 200);
      for (const [name, text] of [["mixed", mixed], ["crlf", ("some words ".repeat(9) + "\\r\\n").repeat(2600)],
                                  ["cr", ("some words ".repeat(9) + "\\r").repeat(2600)]]) {
        const parse = new md.MarkdownParse();
        let outcome = null;
        for (let end = md.MAX_MARKDOWN - 20000; end <= text.length + 2003 && !outcome; end += 2003) {
          const source = text.slice(0, end);
          if (shape(parse.blocks(source)) !== shape(new md.MarkdownParse().blocks(source))) outcome = `differs at ${end}`;
        }
        outcomes[name] = outcome ?? check(text, parse.blocks(text));
      }
      return outcomes;
    }""")
    assert result == {"mixed": "ok", "crlf": "ok", "cr": "ok"}


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
        const open = seed % 2 === 0; // as an answer being written shows it (marks left open closed)
        for (let end = 0; end <= text.length + 40; end += 1 + Math.floor(random() * 40)) {
          view.update(text.slice(0, end), { open });
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


def test_a_text_being_written_shows_the_bold_or_code_it_left_open_closed_but_not_in_code(
        page: Page) -> None:
    shown: dict[str, str] = page.evaluate("""() => {
      const cases = {
        paragraph: "Say **Before that you", heading: "## A **bold head", span: "Run `pip inst",
        both: "**Use `pip inst", item: "- first\\n- **Label", nested: "- first\\n  - **deep",
        closed: "Say **this** and `that`", fenced: "```python\\nf(**kwargs",
        fenced_in_item: "- item\\n\\n  ```\\n  f(**kw", after_space: "Say **this ",
        just_opened: "Say **", no_opener: "a ** b", escaped: "a \\\\**b",
        backslash: "**C:\\\\", half_closer: "**bold*", url: "see https://x.com/**foo",
        spaced_first: "2 ** 3 and **note", nested_last: "1. **x\\n   - y **z",
      };
      const shown = {};
      for (const [name, source] of Object.entries(cases)) {
        const div = document.createElement("div");
        new md.MarkdownView(div).update(source, { open: true });
        shown[name] = div.querySelector(".md-part").innerHTML;
      }
      return shown;
    }""")
    assert "<strong>Before that you</strong>" in shown["paragraph"], shown
    assert "<strong>bold head</strong>" in shown["heading"], shown
    assert "<code>pip inst</code>" in shown["span"], shown
    assert "<strong>Use <code>pip inst</code></strong>" in shown["both"], shown
    assert "<strong>Label</strong>" in shown["item"] and "<strong>deep</strong>" in shown["nested"], shown
    assert shown["closed"].count("<strong>") == 1 and "*" not in shown["closed"], shown
    assert "f(**kwargs</code>" in shown["fenced"] and "f(**kw</code>" in shown["fenced_in_item"], shown
    for name in ("after_space", "just_opened", "no_opener", "escaped"):  # nothing to close
        assert "<strong>" not in shown[name] and "**" in shown[name], shown
    # A closer after a backslash would be escaped: text that is not in the answer.
    assert shown["backslash"].endswith("<p>**C:\\</p>"), shown  # as written
    assert "<strong>bold</strong>" in shown["half_closer"] and "*" not in shown["half_closer"], shown
    assert "foo**" not in shown["url"], shown  # a link's URL holds no mark
    assert "<strong>note</strong>" in shown["spaced_first"], shown
    assert "<strong>z</strong>" in shown["nested_last"], shown


def test_a_long_list_or_table_grows_without_rebuilding_what_is_settled(page: Page) -> None:
    """A list or a table streamed as one block was rebuilt whole at every frame: one of
    150,000 characters froze the page for half a second at a time. Its settled items and
    rows now keep their nodes, and the view still matches a fresh rendering at every step
    (the last item growing a nested list, a list turning loose, rows of every width)."""
    result: dict[str, Any] = page.evaluate("""() => {
      const html = (node) => [...node.querySelectorAll(":scope > .md-part > *")].map((n) => n.outerHTML).join("");
      const fresh = (source) => {
        const div = document.createElement("div");
        div.append(md.renderMarkdown(source));
        return [...div.children].map((n) => n.outerHTML).join("");
      };
      const sources = {
        list: Array.from({ length: 300 }, (_, n) => `- item ${n} with **bold**` + (n % 50 === 7 ? "\\n  - nested" : "")).join("\\n"),
        ordered: Array.from({ length: 300 }, (_, n) => `${n + 3}. point ${n}`).join("\\n") + "\\n\\n   loose now\\n4. more",
        table: "| a | b | c |\\n|---|:-:|--:|\\n" + Array.from({ length: 300 }, (_, n) => `| ${n} | *${n}* |` + (n % 3 ? " x |" : "")).join("\\n"),
        // Items that use up the block's inline work budget by the second: the rest shows
        // as literal text, whichever frames the list grew in.
        exhausting: ("- " + "[".repeat(400) + " *em*\\n").repeat(10),
      };
      const outcome = {};
      for (const [name, source] of Object.entries(sources)) {
        const container = document.createElement("div");
        const view = new md.MarkdownView(container);
        const random = rng(name.length);
        let first = null;
        let kept = true;
        let matches = true;
        for (let end = 60; end < source.length + 30; end += 1 + Math.floor(random() * 30)) {
          const text = source.slice(0, end);
          view.update(text);
          if (html(container) !== fresh(text)) matches = false;
          const node = container.querySelector("li, tbody > tr");
          if (first === null) first = node;
          else if (node !== first && !text.includes("loose now")) kept = false;
        }
        outcome[name] = { matches, kept };
      }
      return outcome;
    }""")
    exhausting = result.pop("exhausting")
    assert exhausting["matches"], exhausting  # (its items may not be kept: it is rebuilt)
    assert result == {name: {"matches": True, "kept": True} for name in ("list", "ordered", "table")}


# Parts laid out even off screen, as they are when seen: their margins and their painting
# are contained all the same.
LAID_OUT_JS = """
const style = document.createElement("style");
style.textContent = ".md-part { content-visibility: visible; contain: layout paint style; }";
document.head.append(style);
"""


def test_blocks_sit_where_they_would_without_parts(page: Page) -> None:
    """A part is a formatting context of its own: margins do not collapse across it, so a
    part may start only at a block with no top margin. A list started one (its first
    item's margin), 3 px lower than without parts. Grown a few characters at a time, the
    view must also group its blocks as when rendered in one go."""
    result: dict[str, Any] = page.evaluate("() => {" + LAID_OUT_JS + """
      const source = randomMarkdown(rng(9), 2500) + "\\n\\n" + "A paragraph long enough. ".repeat(400)
        + "\\n\\n- a list after a full part\\n- two\\n";
      const box = () => {
        const div = document.createElement("div");
        div.className = "markdown";
        div.style.width = "700px";
        document.body.append(div);
        return div;
      };
      const withParts = box();
      const view = new md.MarkdownView(withParts);
      const random = rng(3);
      for (let end = 0; end < source.length; end += 1 + Math.floor(random() * 400)) view.update(source.slice(0, end));
      view.update(source);
      const whole = box();
      whole.append(md.renderMarkdown(source));
      const tops = (container, blocks) => blocks.map((b) => b.getBoundingClientRect().top - container.getBoundingClientRect().top);
      const a = tops(withParts, [...withParts.querySelectorAll(":scope > .md-part > *")]);
      const b = tops(whole, [...whole.children]);
      const parts = [...withParts.children].map((part) => ({
        estimate: parseFloat(part.style.containIntrinsicSize.replace("auto", "")), height: part.offsetHeight }));
      return { blocks: [a.length, b.length], moved: a.map((y, k) => Math.abs(y - b[k])).filter((d) => d > 0.5).length,
               parts, firstMoved: a.findIndex((y, k) => Math.abs(y - b[k]) > 0.5) };
    }""")
    assert result["blocks"][0] == result["blocks"][1]
    assert result["moved"] == 0, result
    assert len(result["parts"]) > 3
    for part in result["parts"][:-1]:  # the last one is short
        assert 0.5 < part["estimate"] / part["height"] < 2, result["parts"]


def test_the_part_of_a_growing_last_block_is_kept(page: Page) -> None:
    """When the block being streamed was alone in its part, the part was made anew at every
    update, and forgot how tall it was: the scroll bar shrank by tens of thousands of pixels
    while the reader read above."""
    kept: bool = page.evaluate("""() => {
      const container = document.createElement("div");
      document.body.append(container);
      const view = new md.MarkdownView(container);
      let source = "Some prose to fill a part. ".repeat(320) + "\\n\\n```\\n";
      view.update(source);
      const part = container.lastElementChild;
      for (let n = 0; n < 20; n += 1) {
        source += `line ${n}\\n`;
        view.update(source);
        if (container.lastElementChild !== part) return false;
      }
      return container.querySelectorAll(".md-part").length === 2;
    }""")
    assert kept


def test_copying_the_plain_text_past_the_limit_gives_its_lines(page: Page) -> None:
    """Pieces of the text past the Markdown limit were paragraphs: copied, each boundary got
    a blank line that is not in the answer."""
    copied: dict[str, Any] = page.evaluate("() => {" + LAID_OUT_JS + """
      const container = document.createElement("div");
      container.className = "markdown";
      document.body.append(container);
      const rest = Array.from({ length: 4000 }, (_, n) => `rest line ${n}`).join("\\n");
      new md.MarkdownView(container).update("line\\n".repeat(md.MAX_MARKDOWN / 5) + rest);
      const pieces = container.querySelectorAll(".md-overflow");
      const range = document.createRange();
      range.setStartBefore(pieces[0]);
      range.setEndAfter(pieces[pieces.length - 1]);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      return { pieces: pieces.length, same: getSelection().toString().trim() === rest };
    }""")
    assert copied["pieces"] > 2 and copied["same"], copied


def test_what_is_drawn_outside_a_part_is_not_cut_off(page: Page) -> None:
    """A part clips what it paints to its box (`content-visibility` contains painting): the
    numbers of an ordered list, drawn left of it, lost their first digits ("1198." showed
    as "98.")."""
    boxes: list[dict[str, float]] = page.evaluate("""() => {
      return [true, false].map((parts, n) => {
        const div = document.createElement("div");
        div.className = "markdown";
        div.style.cssText = `position: absolute; left: 80px; top: ${20 + 200 * n}px; width: 400px;
          font: 15px/24px sans-serif`;
        document.body.append(div);
        const source = "1198. an item\\\\n1199. another item\\\\n";
        if (parts) new md.MarkdownView(div).update(source);
        else div.append(md.renderMarkdown(source));
        const box = div.getBoundingClientRect();
        return { x: 0, y: box.top, width: 500, height: Math.ceil(box.height) };
      });
    }""")
    height = max(box["height"] for box in boxes)  # a bottom margin is inside one of them
    clips: list[Any] = [{**box, "height": height} for box in boxes]
    with_parts, without = (page.screenshot(clip=clip) for clip in clips)
    assert with_parts == without
