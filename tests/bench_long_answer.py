"""How the chat copes with one very long answer, in Debian's Chromium (a benchmark, not a
test: it prints figures and asserts nothing).

    .venv/bin/python -m tests.bench_long_answer [--stream-chars 60000] [--open-chars 1000000]

Starts `flask run` (no agents) on a fresh data directory, then:

* waiting: opens a conversation whose prompt has no answer yet and prints how busy the
  page's main thread is for 3 s, as it would be while the model thinks (or no agent runs);
* streaming: then, while the page watches, appends a Markdown answer of
  `--stream-chars` characters in chunks of `--chunk` characters, `--rate` chunks a second
  (faster than a model, so that the run is short; the page renders at most once a frame
  whatever the rate). It prints the page's long tasks (the longest is how long the page
  could not react to input), how busy its main thread was and how often it laid the page
  out (Chromium's own counters), and how long after the last chunk the whole answer was
  shown. `--earlier-turns N` puts N finished turns before it, as in a long conversation;
* opening: writes an answer of `--open-chars` characters in chunks of `--chunk`, then opens
  it in a new page, printing the time until it is all shown and the longest tasks.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from playwright.sync_api import Page, sync_playwright

from agent_actors.streams_client import Producer, StreamsClient
from tests.support.agents import ChatClient
from tests.support.browser import LONG_TASKS_JS, launch_chromium
from tests.support.webapp import chat_app_without_agents

SECTION = ("## A heading\n\nDurable streams keep every token, and *nothing* is lost. " * 3
           + "\n\n- a list item with `code`\n- another **bold** item\n  continued\n\n"
           + "```python\nprint('hello')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n")


# One block from start to end: the page can keep nothing of it as settled while it grows.
SINGLE_BLOCKS = {
    "code": ("```python\n", "values_{n} = compute({n}, scale=2.5)  # line {n} of the listing\n"),
    "list": ("", "- item {n}: a point with **bold** words and `code`\n"),
    "table": ("| row | value | note |\n|---|---:|---|\n", "| row {n} | {n}.5 | *a* note |\n"),
}
SHAPES = ("mixed", *SINGLE_BLOCKS)


def answer_text(chars: int, shape: str = "mixed") -> str:
    if shape == "mixed":
        return (SECTION * (chars // len(SECTION) + 1))[:chars]
    head, line = SINGLE_BLOCKS[shape]
    lines = [head]
    total = len(head)
    n = 0
    while total < chars:
        n += 1
        lines.append(line.format(n=n))
        total += len(lines[-1])
    return "".join(lines)[:chars]


def chunk(prompt_id: str, n: int, content: str) -> dict[str, object]:
    return {"type": "chunk", "id": f"{prompt_id}-{n}", "promptId": prompt_id, "attempt": 0,
            "content": content, "isComplete": False, "timestamp": 0}


def done(prompt_id: str) -> dict[str, object]:
    return {"type": "done", "promptId": prompt_id, "attempt": 0, "stopReason": "end_turn",
            "usage": {"inputTokens": 1, "outputTokens": 1}, "model": "bench",
            "isComplete": True, "timestamp": 0}


def rendered_length(page: Page) -> int:
    """Characters of the answer as the page shows it (Markdown syntax is not shown)."""
    length: int = page.evaluate(
        "document.querySelector('[data-testid=answer-text]').textContent.length")
    return length


def long_tasks(page: Page) -> str:
    tasks = sorted(page.evaluate("window.__longTasks"), reverse=True)
    if not tasks:
        return "no long task"
    return (f"{len(tasks)} long tasks ({sum(tasks) / 1000:.1f} s in all), longest "
            + ", ".join(f"{ms:.0f}" for ms in tasks[:3]) + " ms")


def earlier_turns(client: StreamsClient, cid: str, answers: Producer, count: int) -> None:
    """`count` finished turns, written a few hundred at a time: a question, a short answer."""
    prompts = client.producer(f"conversations/{cid}/prompts", "bench-earlier", auto_claim=True)
    for first in range(0, count, 500):
        ids = [f"earlier-{n}" for n in range(first, min(count, first + 500))]
        prompts.append([{"type": "prompt", "id": pid, "content": f"Question {pid}?",
                         "timestamp": 0} for pid in ids])
        answers.append([message for pid in ids
                        for message in (chunk(pid, 0, SECTION[:300]), done(pid))])


class MainThreadMeter:
    """Chromium's counters of the page's main thread (DevTools' Performance domain)."""

    def __init__(self, page: Page) -> None:
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.send("Performance.enable")
        self.start = self.read()

    def read(self) -> dict[str, float]:
        metrics = self.cdp.send("Performance.getMetrics")["metrics"]
        return {m["name"]: float(m["value"]) for m in metrics}

    def since_start(self) -> str:
        end = self.read()
        wall = end["Timestamp"] - self.start["Timestamp"]

        def per_second(name: str) -> float:
            return (end[name] - self.start[name]) / wall

        return (f"main thread busy {per_second('TaskDuration'):.0%} of the time (script"
                f" {per_second('ScriptDuration'):.0%}, layout {per_second('LayoutDuration'):.0%},"
                f" style {per_second('RecalcStyleDuration'):.0%}), {per_second('LayoutCount'):.0f}"
                f" layouts a second")


def bench_streaming(app_url: str, client: StreamsClient, chat: ChatClient, page: Page,
                    chars: int, chunk_chars: int, rate: float, shape: str,
                    earlier: int) -> None:
    cid = chat.start_conversation("A long streaming answer")
    answers = client.producer(f"conversations/{cid}/responses", "bench", auto_claim=True)
    earlier_turns(client, cid, answers, earlier)
    pid = chat.send_prompt(cid, "Tell me everything")
    page.add_init_script(LONG_TASKS_JS)
    page.goto(f"{app_url}/#/c/{cid}")
    page.wait_for_selector(f"[data-prompt-id='{pid}']")
    time.sleep(1)  # the opening's own work done
    waiting = MainThreadMeter(page)
    time.sleep(3)
    print(f"waiting 3 s for the answer to start: {waiting.since_start()}")
    page.evaluate("window.__longTasks.length = 0")
    meter = MainThreadMeter(page)
    text = answer_text(chars, shape)
    pieces = [text[k:k + chunk_chars] for k in range(0, len(text), chunk_chars)]
    started = time.monotonic()
    for n, piece in enumerate(pieces):
        answers.append([chunk(pid, n, piece)])
        wait = started + (n + 1) / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    answers.append([done(pid)])
    written = time.monotonic()
    # The turn is shown done only once the page has read and rendered every chunk.
    page.wait_for_function(
        f"() => document.querySelector(`[data-prompt-id='{pid}']`).dataset.state === 'done'",
        timeout=300_000)
    caught_up = time.monotonic()
    after = f" after {earlier:,} finished turns" if earlier else ""
    print(f"streaming {chars:,} characters ({shape}) in {len(pieces):,} chunks over"
          f" {written - started:.1f} s{after}: answer done on the page"
          f" {caught_up - written:.2f} s after the last chunk; {meter.since_start()};"
          f" {long_tasks(page)}")


def bench_opening(app_url: str, client: StreamsClient, chat: ChatClient,
                  new_page: Callable[[], Page], chars: int, chunk_chars: int, runs: int,
                  shape: str) -> None:
    cid = chat.start_conversation("A very long answer")
    answers = client.producer(f"conversations/{cid}/responses", "bench", auto_claim=True)
    pid = chat.send_prompt(cid, "Tell me everything, at length")
    text = answer_text(chars, shape)
    pieces = [text[k:k + chunk_chars] for k in range(0, len(text), chunk_chars)]
    batch = 500
    for k in range(0, len(pieces), batch):
        answers.append([chunk(pid, k + n, p) for n, p in enumerate(pieces[k:k + batch])])
    answers.append([done(pid)])
    for run in range(1, runs + 1):
        page = new_page()
        page.add_init_script(LONG_TASKS_JS)
        started = time.monotonic()
        page.goto(f"{app_url}/#/c/{cid}")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=turn]')?.dataset.state === 'done'",
            timeout=300_000)
        shown = time.monotonic() - started
        print(f"opening {chars:,} characters ({shape}) in {len(pieces):,} chunks, run {run}: shown in"
              f" {shown:.2f} s ({rendered_length(page):,} characters on the page);"
              f" {long_tasks(page)}")
        page.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench_long_answer",
        description="How the chat copes with one very long answer, in Chromium.")
    parser.add_argument("--stream-chars", type=int, default=60_000)
    parser.add_argument("--open-chars", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=40, help="characters per chunk")
    parser.add_argument("--rate", type=float, default=500.0, help="chunks a second while streaming")
    parser.add_argument("--runs", type=int, default=2, help="times the long answer is opened")
    parser.add_argument("--shape", choices=SHAPES, default="mixed",
                        help="the answer: mixed Markdown, or one code block, list or table")
    parser.add_argument("--earlier-turns", type=int, default=0,
                        help="finished turns before the streaming answer")
    args = parser.parse_args()
    with chat_app_without_agents() as app:
        client = StreamsClient(f"{app.url}/v1/stream")
        chat = ChatClient(client, lease_ttl_ms=30_000)
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)

            def new_page() -> Page:
                return browser.new_page(viewport={"width": 1440, "height": 900})

            if args.stream_chars > 0:
                page = new_page()
                bench_streaming(app.url, client, chat, page, args.stream_chars, args.chunk, args.rate,
                                args.shape, args.earlier_turns)
                page.close()
            if args.open_chars > 0:
                bench_opening(app.url, client, chat, new_page, args.open_chars, args.chunk, args.runs,
                              args.shape)
            browser.close()


if __name__ == "__main__":
    main()
