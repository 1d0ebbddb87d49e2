"""How long the chat takes to open a long conversation, in Debian's Chromium (a benchmark,
not a test: it prints figures and asserts nothing).

    .venv/bin/python -m tests.bench_page_open [--turns 300] [--runs 3]

Starts `flask run` (no agents) on a fresh data directory, writes a conversation of `--turns`
prompts with a 1,200-character Markdown answer each straight into its streams, then opens
it `--runs` times in a new page, printing the time until the page is ready with its newest
turn shown (the newest 100 are; older ones at a click) and the page's longest tasks (the
longest is how long the page could not react to input).
"""

from __future__ import annotations

import argparse
import time

from playwright.sync_api import sync_playwright

from agent_actors.streams_client import StreamsClient
from tests.support.agents import ChatClient
from tests.support.browser import LONG_TASKS_JS, launch_chromium
from tests.support.webapp import chat_app_without_agents

PARAGRAPH = ("Durable streams keep every token. " * 8
             + "\n\n- a list item with `code`\n- another **bold** item\n\n")
ANSWER = (PARAGRAPH * 5)[:1200]


def write_conversation(app_url: str, turns: int) -> tuple[str, str]:
    """The conversation's id, and its newest prompt's."""
    client = StreamsClient(f"{app_url}/v1/stream")
    chat = ChatClient(client, lease_ttl_ms=30_000)
    cid = chat.start_conversation("A long conversation")
    answers = client.producer(f"conversations/{cid}/responses", "bench", auto_claim=True)
    pid = ""
    for n in range(turns):
        pid = chat.send_prompt(cid, f"Question {n}: tell me more")
        answers.append([
            {"type": "chunk", "id": f"{pid}-0", "promptId": pid, "attempt": 0,
             "content": ANSWER, "isComplete": False, "timestamp": 0},
            {"type": "done", "promptId": pid, "attempt": 0, "stopReason": "end_turn",
             "usage": {"inputTokens": 1, "outputTokens": 300}, "model": "bench",
             "isComplete": True, "timestamp": 0},
        ])
    return cid, pid


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench_page_open",
        description="How long the chat takes to open a long conversation, in Chromium.")
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with chat_app_without_agents() as app:
        cid, newest = write_conversation(app.url, args.turns)
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            for run in range(1, args.runs + 1):
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.add_init_script(LONG_TASKS_JS)
                started = time.monotonic()
                page.goto(f"{app.url}/#/c/{cid}")
                page.wait_for_function(
                    "(pid) => document.body.dataset.ready === 'true' && document.querySelector("
                    "`[data-prompt-id='${pid}']`)?.dataset.state === 'done'",
                    arg=newest, timeout=120_000)
                shown = time.monotonic() - started
                on_page = page.evaluate("document.querySelectorAll('[data-testid=turn]').length")
                longest = sorted(page.evaluate("window.__longTasks"), reverse=True)[:3]
                print(f"run {run}: {args.turns} turns, {on_page} on the page, ready in {shown:.2f} s;"
                      f" longest tasks {', '.join(f'{ms:.0f}' for ms in longest)} ms")
                page.close()
            browser.close()


if __name__ == "__main__":
    main()
