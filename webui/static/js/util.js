// Small helpers shared by the pages: ids, timing, and DOM construction without innerHTML.

/** A random id from the CSPRNG (works on plain-http LAN origins, unlike crypto.randomUUID). */
export function randomId(prefix = "") {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  let text = "";
  for (const b of bytes) text += b.toString(16).padStart(2, "0");
  return prefix + text;
}

/** Resolve after `ms`, or early (rejecting) when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener("abort", abort);
      resolve();
    }
    function abort() {
      clearTimeout(timer);
      reject(signal.reason);
    }
    signal?.addEventListener("abort", abort, { once: true });
  });
}

/** Exponential backoff with full jitter: attempt 1 → ~base, capped at `max`. */
export function backoff(attempt, base = 250, max = 5000) {
  const ceiling = Math.min(max, base * 2 ** Math.max(0, attempt - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/**
 * Build an element: el("div", {class: "x", dataset: {testid: "y"}, onclick: f}, child, "text").
 * Children that are strings become text nodes, so untrusted text can never become markup.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

/** `parent.replaceChildren(...nodes)` for any number of nodes: a call takes only so many
 * arguments (about 120,000 in Chromium), and a list may hold more. */
export function setChildren(parent, nodes) {
  const fragment = document.createDocumentFragment();
  for (const node of nodes) fragment.append(node);
  parent.replaceChildren(fragment);
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An SVG element (same conventions as `el`). */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// Built once: `toLocaleTimeString` builds a formatter on every call, which was 8 % of the
// time a 300-turn conversation took to open.
const TIME_FORMAT = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const DAY_FORMAT = new Intl.DateTimeFormat([], { month: "short", day: "numeric" });
const DATE_FORMAT = new Intl.DateTimeFormat([], { year: "numeric", month: "short", day: "numeric" });

/** "14:03" today, "Mar 3, 14:03" this year, "Mar 3, 2025, 14:03" before. */
export function formatTime(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  const date = new Date(ms);
  if (Number.isNaN(date.getTime())) return ""; // beyond the dates a Date holds (e.g. 1e300)
  const now = new Date();
  const sameDay = date.getFullYear() === now.getFullYear() && date.getMonth() === now.getMonth()
    && date.getDate() === now.getDate();
  const time = TIME_FORMAT.format(date);
  if (sameDay) return time;
  const day = date.getFullYear() === now.getFullYear() ? DAY_FORMAT : DATE_FORMAT;
  return `${day.format(date)}, ${time}`;
}

/** The "Skip to content" link moves focus to the page's main area. Followed as a link it
 * would replace the address's `#/c/{id}` or `#path=...` with `#main`, which the page reads
 * as leaving the conversation (or the stream) it shows. */
export function wireSkipLink() {
  document.querySelector(".skip-link")?.addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main")?.focus();
  });
}

/** Run `fn` at most once per animation frame, however often it is requested. */
export function frameThrottle(fn) {
  return intervalThrottle(fn, 0);
}

/** Run `fn` in an animation frame at most once every `ms` milliseconds, however often it
 * is requested: for views that may lag a little behind (a tenth of a second) to cost a
 * tenth of being drawn at every frame. */
export function intervalThrottle(fn, ms) {
  let scheduled = false;
  let last = -Infinity;
  return () => {
    if (scheduled) return;
    scheduled = true;
    const run = () => requestAnimationFrame(() => {
      scheduled = false;
      last = performance.now();
      fn();
    });
    const wait = last + ms - performance.now();
    if (wait > 0) setTimeout(run, wait);
    else run();
  };
}

/** A tiny event emitter: on(name, fn) returns an unsubscribe function. */
export class Emitter {
  #handlers = new Map();
  on(name, fn) {
    if (!this.#handlers.has(name)) this.#handlers.set(name, new Set());
    this.#handlers.get(name).add(fn);
    return () => this.#handlers.get(name)?.delete(fn);
  }
  emit(name, ...args) {
    for (const fn of this.#handlers.get(name) ?? []) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`handler for ${name} failed`, err);
      }
    }
  }
}
