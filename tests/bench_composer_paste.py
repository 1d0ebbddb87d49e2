"""How long the chat's message box takes a very long paste, in Debian's Chromium (a benchmark,
not a test: it prints figures and asserts nothing).

    .venv/bin/python -m tests.bench_composer_paste [--chars 100000,1000000,3000000]

Starts `flask run` (no agents) on a fresh data directory and, for each size, pastes one
paragraph of that many characters into the message box of a new page (as the browser
inserts a paste), printing the time until the next frame is drawn, then presses Enter and
prints the time until the page has sent it or refused it as too long.
"""

from __future__ import annotations

import argparse
import time

from playwright.sync_api import sync_playwright

from tests.support.browser import launch_chromium
from tests.support.webapp import chat_app_without_agents

NEXT_FRAME_JS = "() => new Promise((done) => requestAnimationFrame(() => setTimeout(done)))"
SENT_OR_REFUSED_JS = """() => document.querySelector('[data-testid=composer-input]').value === ''
    || !document.querySelector('[data-testid=composer-error]').hidden"""


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench_composer_paste",
        description="How long the message box takes a very long paste, in Chromium.")
    parser.add_argument("--chars", default="100000,1000000,3000000",
                        help="paste sizes in characters, comma-separated")
    args = parser.parse_args()
    sizes = [int(size) for size in args.chars.split(",")]
    with chat_app_without_agents() as app:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            for size in sizes:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.goto(app.url)
                page.wait_for_selector("[data-testid=app][data-ready=true]")
                box = page.get_by_test_id("composer-input")
                box.focus()
                started = time.monotonic()
                page.keyboard.insert_text("word " * (size // 5))
                page.evaluate(NEXT_FRAME_JS)
                pasted = time.monotonic()
                box.press("Enter")
                page.wait_for_function(SENT_OR_REFUSED_JS, timeout=300_000)
                answered = time.monotonic()
                print(f"{size:>9,} characters: pasted and drawn in"
                      f" {(pasted - started) * 1000:,.0f} ms; Enter to sent or refused in"
                      f" {(answered - pasted) * 1000:,.0f} ms")
                page.close()
            browser.close()


if __name__ == "__main__":
    main()
