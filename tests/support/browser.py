"""Playwright helpers for the chat's browser tests: launching Debian's Chromium, and a recorder
of what the page showed.

The recorder is an init script (it runs in every document before the app's own scripts, and
Playwright injects it past the page's Content-Security-Policy). A MutationObserver notes every
distinct (state, answer text) of every turn as the DOM changes, so a test can see an answer
grow token by token without sampling, and every element ever inserted into the message list
that could run code (script, img, iframe, an `on*` attribute, a `javascript:` URL).
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Browser, Locator, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

RECORDER_JS = r"""
(() => {
  const log = (window.__turnLog = []);
  const unsafe = (window.__unsafeNodes = []);
  const last = new Map();
  const DANGEROUS_TAGS = new Set(["SCRIPT", "IMG", "IFRAME", "OBJECT", "EMBED", "FRAME", "LINK", "META", "STYLE", "BASE", "FORM"]);
  const inMessages = (node) => !!node.closest?.('[data-testid="message-list"]');

  function checkElement(el) {
    const reasons = [];
    if (DANGEROUS_TAGS.has(el.tagName)) reasons.push(el.tagName);
    for (const attr of el.attributes) {
      if (/^on/i.test(attr.name)) reasons.push(`${el.tagName}[${attr.name}]`);
      if (/^\s*(javascript|data|vbscript):/i.test(attr.value) && /href|src|action/i.test(attr.name)) {
        reasons.push(`${el.tagName}[${attr.name}=${attr.value}]`);
      }
    }
    if (reasons.length) unsafe.push(reasons.join(" "));
  }

  function checkAdded(node) {
    if (node.nodeType !== 1 || !inMessages(node)) return;
    checkElement(node);
    for (const el of node.querySelectorAll("*")) checkElement(el);
  }

  function record() {
    for (const li of document.querySelectorAll('[data-testid="turn"]')) {
      const id = li.dataset.promptId;
      const state = li.dataset.state || "";
      const body = li.querySelector('[data-testid="answer-text"]');
      const text = body ? body.textContent : "";
      const key = `${state}\u0000${text}`;
      if (last.get(id) !== key) {
        last.set(id, key);
        log.push({ id, state, text, t: performance.now() });
      }
    }
  }

  new MutationObserver((records) => {
    for (const r of records) {
      for (const node of r.addedNodes) checkAdded(node);
      if (r.type === "attributes" && inMessages(r.target)) checkElement(r.target);
    }
    record();
  }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
})();
"""


LONG_TASKS_JS = """window.__longTasks = [];
new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push(e.duration); })
  .observe({ type: "longtask", buffered: true });"""
"""An init script gathering the page's long tasks (ms) in `window.__longTasks`, for benchmarks."""


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless; no browser is ever downloaded."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def turn_log(page: Page, prompt_id: str) -> list[dict[str, Any]]:
    """Every distinct (state, text) the page showed for one turn, oldest first."""
    entries: list[dict[str, Any]] = page.evaluate(
        "id => window.__turnLog.filter(e => e.id === id)", prompt_id)
    return entries


def unsafe_nodes(page: Page) -> list[str]:
    """Descriptions of code-capable elements or attributes ever inserted into the messages."""
    nodes: list[str] = page.evaluate("() => window.__unsafeNodes")
    return nodes


def turn_for(page: Page, prompt: str) -> Locator:
    """The turn whose prompt is exactly ``prompt``."""
    return page.get_by_test_id("turn").filter(
        has=page.get_by_test_id("prompt").get_by_text(prompt, exact=True))


class LayoutCounter:
    """Layouts the page did (Chromium's `LayoutCount`) and frames it drew, from when this is
    made: work done once per batch shows as many more layouts than frames."""

    def __init__(self, page: Page) -> None:
        self._page = page
        self._cdp = page.context.new_cdp_session(page)
        self._cdp.send("Performance.enable")
        page.evaluate("""() => {
          window.__frames = 0;
          const tick = () => { window.__frames += 1; requestAnimationFrame(tick); };
          requestAnimationFrame(tick);
        }""")
        self._before = self._layouts()

    def _layouts(self) -> int:
        metrics = self._cdp.send("Performance.getMetrics")["metrics"]
        return int(next(m["value"] for m in metrics if m["name"] == "LayoutCount"))

    def counts(self) -> tuple[int, int]:
        """(layouts, frames) since this was made."""
        frames: int = self._page.evaluate("window.__frames")
        return self._layouts() - self._before, frames
