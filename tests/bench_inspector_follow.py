"""How the stream inspector copes with following a fast stream, in Debian's Chromium (a
benchmark, not a test: it prints figures and asserts nothing).

    .venv/bin/python -m tests.bench_inspector_follow [--messages 4000]

Starts `flask run` (no agents) on a fresh data directory, opens the inspector on an empty
JSON stream and follows it live, then appends `--messages` messages one request each, as
fast as one client sends them. It prints the page's long tasks (the longest is how long the
page could not react to input) and how long after the last append the last message showed.
Past 2,000 messages the view holds only the newest ones.
"""

from __future__ import annotations

import argparse
import json
import time

import requests
from playwright.sync_api import sync_playwright

from tests.bench_long_answer import long_tasks
from tests.support.browser import LONG_TASKS_JS, launch_chromium
from tests.support.webapp import chat_app_without_agents


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench_inspector_follow",
        description="How the stream inspector copes with following a fast stream, in Chromium.")
    parser.add_argument("--messages", type=int, default=4000)
    args = parser.parse_args()
    with chat_app_without_agents() as app:
        stream = f"{app.url}/v1/stream/bench/followed"
        json_type = {"Content-Type": "application/json"}
        requests.put(stream, headers=json_type, timeout=10).raise_for_status()
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.add_init_script(LONG_TASKS_JS)
            page.goto(f"{app.url}/inspector#path=bench/followed")
            page.get_by_test_id("follow-toggle").click()
            page.get_by_test_id("follow-state").get_by_text("Following live").wait_for()
            page.evaluate("window.__longTasks.length = 0")
            started = time.monotonic()
            with requests.Session() as http:
                for n in range(args.messages):
                    body = {"type": "chunk", "n": n, "content": "some words " * 4}
                    http.post(stream, headers=json_type, data=json.dumps(body),
                              timeout=10).raise_for_status()
            sent = time.monotonic()
            page.get_by_test_id("content-entry").last.get_by_text(
                f'"n": {args.messages - 1}').wait_for(timeout=600_000)
            shown = time.monotonic()
            print(f"{args.messages:,} messages appended in {sent - started:.1f} s; the last"
                  f" shown {shown - sent:.2f} s after it was sent; {long_tasks(page)}")
            browser.close()


if __name__ == "__main__":
    main()
