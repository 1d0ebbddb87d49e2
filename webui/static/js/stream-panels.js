// The raw stream panels: every entry of a conversation's prompt or response stream as JSON,
// with the entry count and the tail offset.

import { el, frameThrottle } from "./util.js";

const KEEP = 300;

export class RawStreamPanel {
  count = 0;
  #waiting = []; // [{index, message}] not shown yet
  #to = "";
  #showLater = frameThrottle(() => this.#show());

  /** @param {string} name "prompts" or "responses": finds elements by data-testid raw-<name>-* */
  constructor(name) {
    const find = (suffix) => document.querySelector(`[data-testid="raw-${name}-${suffix}"]`);
    this.list = find("list");
    this.countEl = find("count");
    this.offsetEl = find("offset");
    this.pathEl = find("path");
  }

  reset(path) {
    this.count = 0;
    this.#waiting = [];
    this.#to = "—"; // what a frame already asked for shows this conversation's state
    this.list.replaceChildren();
    this.countEl.textContent = "0 entries";
    this.countEl.dataset.count = "0";
    this.offsetEl.textContent = "—";
    this.pathEl.textContent = path ?? "—";
    const inspector = document.querySelector('[data-testid="nav-inspector"]')?.getAttribute("href");
    if (path && inspector) this.pathEl.href = `${inspector}#path=${encodeURIComponent(path)}`;
    else this.pathEl.removeAttribute("href");
  }

  /** Show a batch ({to, messages}) that a live read delivered. Batches come hundreds a
   * second while an answer streams: they are shown together once a frame, since adding them
   * and keeping the list scrolled costs a layout of the page (the longest answer included). */
  add(batch) {
    for (const message of batch.messages ?? []) {
      this.count += 1;
      this.#waiting.push({ index: this.count, message });
    }
    // Only the newest KEEP are ever shown: a hidden tab's backlog stays that small.
    if (this.#waiting.length > KEEP) this.#waiting.splice(0, this.#waiting.length - KEEP);
    this.#to = batch.to;
    this.#showLater();
  }

  #show() {
    const stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    const fragment = document.createDocumentFragment();
    for (const { index, message } of this.#waiting.splice(0)) {
      const type = message && typeof message === "object" && typeof message.type === "string" ? message.type : "";
      fragment.append(el("li", { class: `raw-entry raw-${type || "other"}`, dataset: { testid: "raw-entry" } },
        el("span", { class: "raw-index" }, `#${index}`),
        type ? el("span", { class: "raw-type" }, type) : null,
        el("code", { title: JSON.stringify(message, null, 2) }, JSON.stringify(summaryOrder(message)))));
    }
    this.list.append(fragment);
    while (this.list.childElementCount > KEEP) this.list.firstElementChild.remove();
    this.countEl.textContent = `${this.count} ${this.count === 1 ? "entry" : "entries"}`;
    this.countEl.dataset.count = String(this.count);
    this.offsetEl.textContent = this.#to;
    this.offsetEl.title = this.#to;
    if (stick) this.list.scrollTop = this.list.scrollHeight;
  }
}

const FIRST = ["content", "title", "message", "stopReason", "usage", "reason"];

/** The same message with its telling fields first and `type` left to the badge. */
function summaryOrder(message) {
  if (!message || typeof message !== "object" || Array.isArray(message)) return message;
  const ordered = {};
  for (const key of FIRST) if (key in message) ordered[key] = message[key];
  for (const [key, value] of Object.entries(message)) if (key !== "type" && !(key in ordered)) ordered[key] = value;
  return ordered;
}
