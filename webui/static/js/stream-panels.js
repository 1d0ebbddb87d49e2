// The raw stream panels: every entry of a conversation's prompt or response stream as JSON,
// with the entry count and the tail offset.

import { el, intervalThrottle } from "./util.js";

const KEEP = 300;
/** How often the lists show what arrived: once a frame, a streaming answer's list cost a
 * new entry, a scroll, a layout and a paint at every frame. */
const SHOW_EVERY_MS = 100;

export class RawStreamPanel {
  count = 0;
  #waiting = []; // [{index, message}] not shown yet
  #to = "";
  #showLater = intervalThrottle(() => this.#show(), SHOW_EVERY_MS);
  // Whether the list follows its newest entry: what the reader's last scroll left, kept from
  // scroll events so that showing entries reads no layout (a second one each frame).
  #stick = true;
  // Scrolls a following list to its end once its newest entry is laid out.
  #follow = new ResizeObserver(() => { if (this.#stick) this.list.scrollTop = this.list.scrollHeight; });
  #followed = null;

  /** @param {string} name "prompts" or "responses": finds elements by data-testid raw-<name>-* */
  constructor(name) {
    const find = (suffix) => document.querySelector(`[data-testid="raw-${name}-${suffix}"]`);
    this.list = find("list");
    this.countEl = find("count");
    this.offsetEl = find("offset");
    this.pathEl = find("path");
    this.list.addEventListener("scroll", () => {
      this.#stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    }, { passive: true });
  }

  reset(path) {
    this.count = 0;
    this.#waiting = [];
    this.#to = "—"; // what a frame already asked for shows this conversation's state
    this.#stick = true;
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
   * second while an answer streams: they are shown together at most every SHOW_EVERY_MS,
   * since adding them and keeping the list scrolled costs a layout and a paint. */
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
    const newest = this.list.lastElementChild;
    if (this.#stick && newest && newest !== this.#followed) {
      if (this.#followed) this.#follow.unobserve(this.#followed);
      this.#followed = newest;
      this.#follow.observe(newest); // reported (and scrolled to) once it is laid out
    }
  }
}

const FIRST = ["content", "title", "message", "stopReason", "usage", "reason"];

/** The same message with its telling fields first and `type` left to the badge. */
function summaryOrder(message) {
  if (!message || typeof message !== "object" || Array.isArray(message)) return message;
  // No prototype: a field named "constructor" or "toString" was taken as there already,
  // and one named "__proto__" would have set the prototype.
  const ordered = Object.create(null);
  for (const key of FIRST) if (Object.hasOwn(message, key)) ordered[key] = message[key];
  for (const [key, value] of Object.entries(message)) if (key !== "type" && !Object.hasOwn(ordered, key)) ordered[key] = value;
  return ordered;
}
