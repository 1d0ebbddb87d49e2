"""How the chat copes with a long list of conversations, in Debian's Chromium (a benchmark,
not a test: it prints figures and asserts nothing).

    .venv/bin/python -m tests.bench_conversation_list [--conversations 200000] [--updates 5]

Starts `flask run` (no agents) on a fresh data directory, writes `--conversations` listings
straight into the `conversations` stream, opens the chat and prints the time until it is
ready; then appends `--updates` activity messages, each for a conversation far down the list,
and prints how long each took to reach the top of the list and the page's longest task
meanwhile (how long the page could not react to input).
"""

from __future__ import annotations

import argparse
import json
import time

import requests
from playwright.sync_api import sync_playwright

from tests.support.browser import LONG_TASKS_JS, launch_chromium
from tests.support.webapp import chat_app_without_agents

PER_APPEND = 10_000  # the server's default limit of messages in one JSON append
FIRST_TIMESTAMP = 1_700_000_000_000
TOP_IS_JS = """(id) => document.querySelector('[data-testid="conversation-item"]')
  ?.dataset.conversationId === id"""


def append(app_url: str, messages: object) -> None:
    response = requests.post(f"{app_url}/v1/stream/conversations", data=json.dumps(messages),
                             headers={"Content-Type": "application/json"}, timeout=60)
    response.raise_for_status()


def write_list(app_url: str, count: int) -> None:
    requests.put(f"{app_url}/v1/stream/conversations", timeout=10,
                 headers={"Content-Type": "application/json"}).raise_for_status()
    for first in range(0, count, PER_APPEND):
        append(app_url, [{"type": "conversation", "id": f"c{n:07d}", "title": f"Conversation {n}",
                          "timestamp": FIRST_TIMESTAMP + n}
                         for n in range(first, min(count, first + PER_APPEND))])


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench_conversation_list",
        description="How the chat copes with a long list of conversations, in Chromium.")
    parser.add_argument("--conversations", type=int, default=200_000)
    parser.add_argument("--updates", type=int, default=5)
    args = parser.parse_args()
    with chat_app_without_agents() as app:
        write_list(app.url, args.conversations)
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.add_init_script(LONG_TASKS_JS)
            started = time.monotonic()
            page.goto(app.url)
            page.wait_for_selector('[data-testid="app"][data-ready="true"]', timeout=300_000)
            print(f"{args.conversations:,} conversations: ready in"
                  f" {time.monotonic() - started:.2f} s")
            for n in range(args.updates):
                page.evaluate("window.__longTasks = []")
                moved = f"c{n * args.conversations // max(1, args.updates):07d}"
                started = time.monotonic()
                append(app.url, {"type": "activity", "id": moved,
                                 "timestamp": FIRST_TIMESTAMP + args.conversations + n})
                page.wait_for_function(TOP_IS_JS, arg=moved, timeout=60_000)
                took = time.monotonic() - started
                longest = max(page.evaluate("window.__longTasks"), default=0)
                print(f"activity {n + 1}: at the top after {1000 * took:.0f} ms;"
                      f" longest task {longest:.0f} ms")
            browser.close()


if __name__ == "__main__":
    main()
