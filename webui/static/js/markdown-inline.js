// Markdown's inline syntax, for `markdown.js`: emphasis, code spans, links, autolinks and bare
// URLs, character references and hard breaks, rendered straight into DOM nodes (never
// innerHTML). Its look-ahead scans draw on a work budget per top-level block, so that no
// input can make them slow (see `markdown.js`'s opening comment).

import { MAX_NESTING } from "./markdown-blocks.js";

const PUNCT = /[!-/:-@[-`{-~]/;
// Closing quotes too: a URL quoted in prose (the demo model quotes each prompt) ends before them.
const URL_TRAILING = new Set([...".,;:!?)]}*_~”’»›"]);

// The inline scans (closers, brackets, destinations, code spans, URLs) look ahead, and some
// source shapes would make them look ahead from every position ("[a](" repeated). They draw
// on one budget per top-level block, proportional to its size; a scan that finds it spent
// gives up, so what is left of that block shows as literal text. Ordinary Markdown uses a
// small fraction of it.
let budget = 0;
let budgetActive = false;
let inlineDepth = 0;

export function budgetFor(size) {
  return 100_000 + 20 * size;
}

/** Run `fn` on the budget of a block of `size` characters, of which `spent` is used up
 * already (its settled part, when the block is patched), unless a budget is running. */
export function withBudget(size, fn, spent = 0) {
  if (budgetActive) return fn();
  budgetActive = true;
  budget = budgetFor(size) - spent;
  try {
    return fn();
  } finally {
    budgetActive = false;
  }
}

/** Charge `n` units of work; false once the budget is spent. */
function spend(n) {
  budget -= n;
  return budget >= 0;
}

function hasBudget() {
  return budget > 0;
}

/** The units of work left to the block being rendered. */
export function budgetLeft() {
  return budget;
}

/** A URL safe to put in href: absolute http(s) only, else null. */
export function safeHref(url) {
  try {
    const parsed = new URL(url.trim());
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

export function runLength(text, at) {
  let n = 0;
  while (text[at + n] === text[at]) n += 1;
  return n;
}

/** Index just after the code span opening at `at`, or -1 if it never closes (or no budget). */
function codeSpanEnd(text, at) {
  if (!hasBudget()) return -1;
  const n = runLength(text, at);
  if (!spend(n)) return -1;
  let k = at + n;
  for (;;) {
    const from = k;
    k = text.indexOf("`", k);
    if (!spend((k < 0 ? text.length : k) - from + 1)) return -1;
    if (k < 0) return -1;
    const m = runLength(text, k);
    if (!spend(m)) return -1;
    if (m === n) return k + m;
    k += m;
  }
}

/**
 * Find the closing delimiter run for emphasis of `size` with char `c`, from `from`. The scan
 * from a position always takes the same path, so `memo` (per text, c and size) remembers for
 * every position passed where that path ended: each position is scanned once, not once per
 * opener ("*a *a *a ..." was quadratic).
 */
function findCloser(text, from, c, size, memo) {
  if (!hasBudget()) return -1;
  const passed = [];
  let k = from;
  let result = -1;
  while (k < text.length) {
    const known = memo[k];
    if (known !== 0) {
      result = known - 2;
      break;
    }
    passed.push(k);
    const ch = text[k];
    if (ch === "\\") {
      k += 2;
      continue;
    }
    if (ch === "`") {
      const end = codeSpanEnd(text, k);
      k = end < 0 ? k + runLength(text, k) : end;
      continue;
    }
    if (ch === c) {
      const n = runLength(text, k);
      const before = text[k - 1];
      const after = text[k + n];
      const rightFlanking = before !== undefined && !/\s/.test(before);
      const intraword = c === "_" && after !== undefined && /[\p{L}\p{N}]/u.test(after);
      // A longer run may also close an inner emphasis ("**a *b***"): close at its end.
      if (rightFlanking && !intraword && n >= size) {
        result = k + n - size;
        break;
      }
      k += n;
      continue;
    }
    k += 1;
  }
  // A scan cut short by the budget proves nothing: remember only complete ones.
  if (!spend(passed.length)) return -1;
  for (const at of passed) memo[at] = result + 2;
  return result;
}

function findBracketEnd(text, at) {
  let depth = 0;
  for (let k = at; k < text.length; k++) {
    if (!spend(1)) return -1;
    const c = text[k];
    if (c === "\\") k += 1;
    else if (c === "`") {
      const end = codeSpanEnd(text, k);
      if (end > 0) k = end - 1;
    } else if (c === "[") depth += 1;
    else if (c === "]" && --depth === 0) return k;
  }
  return -1;
}

/** Parse `(dest "title")` at `at`; returns {url, end} or null. */
function parseDestination(text, at) {
  if (text[at] !== "(") return null;
  let k = at + 1;
  while (text[k] === " ") k += 1;
  let url = "";
  if (!hasBudget()) return null;
  if (text[k] === "<") {
    const close = text.indexOf(">", k);
    if (!spend((close < 0 ? text.length : close) - k)) return null;
    if (close < 0) return null;
    url = text.slice(k + 1, close);
    k = close + 1;
  } else {
    let depth = 0;
    const begin = k;
    for (; k < text.length; k++) {
      if (!spend(1)) return null;
      const c = text[k];
      if (c === "\\") k += 1;
      else if (c === "(") depth += 1;
      else if (c === ")") {
        if (depth === 0) break;
        depth -= 1;
      } else if (/\s/.test(c)) break;
    }
    url = text.slice(begin, k);
  }
  while (text[k] === " ") k += 1;
  if (text[k] === '"' || text[k] === "'") {
    const close = text.indexOf(text[k], k + 1);
    if (!spend((close < 0 ? text.length : close) - k)) return null;
    if (close < 0) return null;
    k = close + 1;
    while (text[k] === " ") k += 1;
  }
  if (text[k] !== ")") return null;
  return { url: decodeCharRefs(url), end: k + 1 };
}

const CHAR_REF = /&(?:#([0-9]{1,7})|#[xX]([0-9a-fA-F]{1,6})|([A-Za-z][A-Za-z0-9]{1,31}));/y;
// Names HTML knows are looked up by letting the browser parse the reference alone (a table of
// its 2,231 names would be most of this file), each once. A name HTML knows costs nothing of
// the block's work budget; any other costs a lookup's worth each time it is met, whether it
// was looked up before or not, so that a block renders the same whatever the page rendered
// before it, and a flood of made-up names ends as literal text.
const UNKNOWN_REF_COST = 3_000;
const MAX_UNKNOWN_REFS = 4_096; // remembered only to spare the browser the parse
const knownRefs = new Map(); // "&name;" -> the text it stands for
const unknownRefs = new Set();

/** The character reference at `at` ("&amp;", "&#35;", "&#x22;"): {text, end} or null. */
function charRefAt(text, at) {
  CHAR_REF.lastIndex = at;
  const m = CHAR_REF.exec(text);
  if (!m) return null;
  const end = at + m[0].length;
  if (m[3] === undefined) {
    const code = m[1] !== undefined ? Number(m[1]) : parseInt(m[2], 16);
    const valid = code !== 0 && code <= 0x10ffff && !(code >= 0xd800 && code <= 0xdfff);
    return { text: valid ? String.fromCodePoint(code) : "\uFFFD", end };
  }
  const known = knownRefs.get(m[0]);
  if (known !== undefined) return { text: known, end };
  if (!spend(UNKNOWN_REF_COST) || unknownRefs.has(m[0])) return null;
  const decoded = decodeNamedRef(m[0]);
  if (decoded === null) {
    if (unknownRefs.size < MAX_UNKNOWN_REFS) unknownRefs.add(m[0]);
    return null;
  }
  budget += UNKNOWN_REF_COST; // a name HTML knows after all: free, as when met again
  knownRefs.set(m[0], decoded);
  return { text: decoded, end };
}

/** What "&name;" stands for in HTML, or null. The parser also reads a few names without their
 * ";" ("&ampx;" is "&" then "x;"), which Markdown does not: those keep a ";" after decoding. */
function decodeNamedRef(ref) {
  const decoded = new DOMParser().parseFromString(ref, "text/html").body.textContent ?? ref;
  if (decoded === ref) return null;
  if (decoded.endsWith(";") && ref !== "&semi;") return null;
  return decoded;
}

/** `text` with its character references decoded (a link's destination). */
function decodeCharRefs(text) {
  if (!text.includes("&")) return text;
  let out = "";
  let k = 0;
  while (k < text.length) {
    const ref = text[k] === "&" ? charRefAt(text, k) : null;
    if (ref) {
      out += ref.text;
      k = ref.end;
    } else {
      out += text[k];
      k += 1;
    }
  }
  return out;
}

const BARE_URL = /https?:\/\/[^\s<>"'`]+/iy;
const ANGLE_URL = /<(https?:\/\/[^\s<>]+)>/iy;

/** `text` without its trailing spaces (a loop: / +$/ is quadratic on long runs of spaces). */
function trimTrailingSpaces(text) {
  let end = text.length;
  while (end > 0 && text[end - 1] === " ") end -= 1;
  return end === text.length ? text : text.slice(0, end);
}

/** A bare URL without the punctuation that more likely ends the sentence. */
const URL_LEADING = /[\s("'“‘«‹]/; // what a bare URL may follow: a space, a bracket, a quote

function trimUrlPunctuation(url) {
  let end = url.length;
  // A closing parenthesis stays where it closes one opened in the URL (as GitHub's
  // Markdown has it): https://en.wikipedia.org/wiki/Rust_(programming_language).
  let unclosed = 0;
  for (const c of url) unclosed += c === "(" ? 1 : c === ")" ? -1 : 0;
  while (end > 0 && URL_TRAILING.has(url[end - 1])) {
    if (url[end - 1] === ")") {
      if (unclosed >= 0) break;
      unclosed += 1;
    }
    end -= 1;
  }
  return url.slice(0, end);
}

/**
 * Whether a code span's content loses one space at each end: it starts and ends with a space
 * and has something else between them (what /^ .*[^ ].* $/ tested, without its quadratic
 * backtracking; "." never crosses a line break, so at most one may be inside).
 */
function stripsSpaces(inner) {
  if (inner.length < 3 || inner[0] !== " " || inner[inner.length - 1] !== " ") return false;
  let breaks = 0;
  let other = false;
  for (let k = 1; k < inner.length - 1; k++) {
    const c = inner[k];
    if (c === "\n" || c === "\r" || c === "\u2028" || c === "\u2029") breaks += 1;
    if (c !== " ") other = true;
  }
  return other && breaks <= 1;
}

/** Render inline Markdown into `parent` (DOM nodes only). */
export function renderInline(text, parent) {
  if (inlineDepth >= MAX_NESTING) {
    // Nested deeper than anyone writes: the rest is literal text.
    if (text) parent.append(document.createTextNode(text));
    return;
  }
  inlineDepth += 1;
  try {
    withBudget(text.length, () => renderInlineText(text, parent));
  } finally {
    inlineDepth -= 1;
  }
}

function renderInlineText(text, parent) {
  const memos = new Map(); // `${c}${size}` -> findCloser's memo for this text
  const memoFor = (c, size) => {
    let memo = memos.get(c + size);
    if (!memo) memos.set(c + size, (memo = new Int32Array(text.length + 1)));
    return memo;
  };
  let buffer = "";
  const flush = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const prev = text[i - 1];

    if (c === "\\" && i + 1 < text.length && PUNCT.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "\\" && text[i + 1] === "\n") {
      flush();
      parent.append(document.createElement("br"));
      i += 2;
      continue;
    }
    if (c === "\n") {
      buffer = trimTrailingSpaces(buffer);
      flush();
      parent.append(document.createElement("br"));
      i += 1;
      continue;
    }
    if (c === "&") {
      const ref = charRefAt(text, i);
      if (ref) {
        buffer += ref.text;
        i = ref.end;
        continue;
      }
    }
    if (c === "`") {
      const n = runLength(text, i);
      const end = codeSpanEnd(text, i);
      if (end < 0) {
        buffer += text.slice(i, i + n);
        i += n;
        continue;
      }
      let inner = text.slice(i + n, end - n).replace(/\n/g, " ");
      if (stripsSpaces(inner)) inner = inner.slice(1, -1);
      flush();
      const code = document.createElement("code");
      code.textContent = inner;
      parent.append(code);
      i = end;
      continue;
    }
    if (c === "!" && text[i + 1] === "[") {
      // Images are never loaded (privacy, tracking pixels): show them as links.
      const close = findBracketEnd(text, i + 1);
      const dest = close > 0 ? parseDestination(text, close + 1) : null;
      if (dest) {
        flush();
        appendLink(parent, text.slice(i + 2, close) || "image", dest.url, true);
        i = dest.end;
        continue;
      }
    }
    if (c === "[") {
      const close = findBracketEnd(text, i);
      const dest = close > 0 ? parseDestination(text, close + 1) : null;
      if (dest) {
        flush();
        appendLink(parent, text.slice(i + 1, close), dest.url, false);
        i = dest.end;
        continue;
      }
    }
    if (c === "<" && hasBudget()) {
      ANGLE_URL.lastIndex = i;
      const m = ANGLE_URL.exec(text);
      if (m && spend(m[0].length) && safeHref(m[1])) {
        flush();
        appendLink(parent, m[1], m[1], false, true);
        i += m[0].length;
        continue;
      }
    }
    if ((c === "h" || c === "H") && (prev === undefined || URL_LEADING.test(prev)) && hasBudget()) {
      BARE_URL.lastIndex = i;
      const m = BARE_URL.exec(text);
      if (m && spend(m[0].length)) {
        const url = trimUrlPunctuation(m[0]);
        if (safeHref(url)) {
          flush();
          appendLink(parent, url, url, false, true);
          i += url.length;
          continue;
        }
      }
    }
    if (c === "*" || c === "_" || c === "~") {
      const n = runLength(text, i);
      const after = text[i + n];
      const leftFlanking = after !== undefined && !/\s/.test(after);
      const intraword = c === "_" && prev !== undefined && /[\p{L}\p{N}]/u.test(prev);
      const sizes = c === "~" ? (n === 2 ? [2] : []) : n >= 3 ? [3] : [n];
      if (leftFlanking && !intraword) {
        let done = false;
        for (const size of sizes) {
          const closer = findCloser(text, i + size, c, size, memoFor(c, size));
          if (closer > i + size) {
            flush();
            parent.append(emphasis(c, size, text.slice(i + size, closer)));
            i = closer + size;
            done = true;
            break;
          }
        }
        if (done) continue;
      }
      buffer += text.slice(i, i + n);
      i += n;
      continue;
    }
    buffer += c;
    i += 1;
  }
  flush();
  // Trailing hard breaks add nothing but height.
  while (parent.lastChild?.nodeName === "BR") parent.lastChild.remove();
}

function emphasis(c, size, inner) {
  if (c === "~") {
    const del = document.createElement("del");
    renderInline(inner, del);
    return del;
  }
  if (size === 3) {
    const strong = document.createElement("strong");
    const em = document.createElement("em");
    renderInline(inner, em);
    strong.append(em);
    return strong;
  }
  const node = document.createElement(size === 2 ? "strong" : "em");
  renderInline(inner, node);
  return node;
}

function appendLink(parent, label, url, image, literal = false) {
  const href = safeHref(url);
  const target = href ? document.createElement("a") : document.createElement("span");
  if (href) {
    target.href = href;
    target.target = "_blank";
    target.rel = "noopener noreferrer nofollow";
    target.title = href;
  }
  if (image) target.className = "md-image-link";
  if (literal) target.textContent = label;
  else renderInline(label, target);
  parent.append(target);
}
