// A small Markdown renderer for untrusted model output.
//
// It builds DOM nodes with createElement/textContent only - never innerHTML - so raw HTML in
// the source (`<img src=x onerror=...>`, `<script>`) is shown as the text it is. Links get an
// href only when it parses as an absolute http(s) URL. Supported: paragraphs, ATX headings,
// emphasis (* _ ** __ *** ~~), inline code, fenced code blocks (also unterminated, while an
// answer streams), indented code blocks, bullet and ordered lists (nested, tight or loose),
// block quotes, GFM pipe tables, thematic breaks, links, autolinks and bare URLs, hard line
// breaks, entity and numeric character references (`&amp;`, `&#169;`, `&#x1F600;`). Lists
// are more lenient than CommonMark: an item indented by four spaces is still an item.
//
// The source is untrusted in size and shape too: anyone who may append to a stream can send
// an answer built to make a parser slow or to exhaust the stack. So no regular expression here
// backtracks over more than one ambiguous run, the inline scans share a work budget per block,
// nesting is limited to MAX_NESTING levels, and only the first MAX_MARKDOWN characters are
// parsed as Markdown (the rest is shown as plain text, with a note).

import { renderHighlighted } from "./highlight.js";

/** Characters of an answer rendered as Markdown; the rest is plain text. */
export const MAX_MARKDOWN = 200_000;
/** Lines longer than this are never taken for block syntax (a heading, an item, a quote). */
export const MAX_BLOCK_LINE = 20_000;
/** Deepest nesting of quotes/lists (and of inline emphasis/links); deeper is plain text. */
export const MAX_NESTING = 32;
/** Tables stop collecting rows past this many cells; further lines are paragraphs. */
export const MAX_TABLE_CELLS = 20_000;

// ---------------------------------------------------------------------------- block parsing

const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:([ \t]+)(.*)|$)/;
const DELIM_CELL = /^:?-+:?$/;
const LINE_BREAKS = /[\n\r\u2028\u2029]/;

function isBlank(line) {
  return /^[ \t]*$/.test(line);
}

/** Whether a line may be block syntax at all (a very long line is paragraph text). */
function matchable(line) {
  return line.length <= MAX_BLOCK_LINE;
}

function isSpaceOrTab(c) {
  return c === " " || c === "\t";
}

/** Up to three leading spaces: the index after them. */
function afterIndent(line) {
  let k = 0;
  while (k < 3 && line[k] === " ") k += 1;
  return k;
}

/**
 * A fence opening ("```lang", "~~~"): [line, indent, marker, lang] or null. The marker is the
 * whole run of ` or ~ (at least three) and nothing after it may contain a backtick.
 */
function matchFence(line) {
  if (!matchable(line)) return null;
  const k = afterIndent(line);
  const c = line[k];
  if (c !== "`" && c !== "~") return null;
  let n = 0;
  while (line[k + n] === c) n += 1;
  if (n < 3) return null;
  const rest = line.slice(k + n);
  if (rest.includes("`")) return null;
  const lang = /^[ \t]*([^`\s]*)/.exec(rest)[1];
  return [line, line.slice(0, k), line.slice(k, k + n), lang];
}

/**
 * An ATX heading: {level, text} or null. "# Title ##" has the text "Title": the closing run of
 * #s (after a space or tab) and trailing spaces are not part of it. Written without regular
 * expressions that could backtrack (a line of "#", thousands of spaces and an unmatched end
 * took minutes with the one-regex version).
 */
function matchHeading(line) {
  if (!matchable(line) || LINE_BREAKS.test(line)) return null;
  const k = afterIndent(line);
  let level = 0;
  while (line[k + level] === "#") level += 1;
  if (level < 1 || level > 6) return null;
  let start = k + level;
  if (start < line.length && !isSpaceOrTab(line[start])) return null;
  while (start < line.length && isSpaceOrTab(line[start])) start += 1;
  let end = line.length;
  while (end > start && isSpaceOrTab(line[end - 1])) end -= 1;
  // A closing sequence: a run of #s that a space or tab separates from the text.
  let hashes = end;
  while (hashes > start && line[hashes - 1] === "#") hashes -= 1;
  if (hashes < end && hashes > start && isSpaceOrTab(line[hashes - 1])) {
    end = hashes;
    while (end > start && isSpaceOrTab(line[end - 1])) end -= 1;
  }
  return { level, text: line.slice(start, end) };
}

function trimSpaces(text) {
  let a = 0;
  let b = text.length;
  while (a < b && text[a] === " ") a += 1;
  while (b > a && text[b - 1] === " ") b -= 1;
  return text.slice(a, b);
}

/** A table's delimiter row: "| :--- | ---: |" (cells of -, optionally aligned with :). */
function isTableDelimiter(line) {
  if (!matchable(line)) return false;
  let text = trimSpaces(line);
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|")) text = text.slice(0, -1);
  return text.split("|").every((cell) => DELIM_CELL.test(trimSpaces(cell)));
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

/** Lines that end a paragraph when they appear in it. */
function startsBlock(line) {
  if (!matchable(line)) return false;
  return !!matchFence(line) || !!matchHeading(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

/**
 * Parse lines into block objects; each top-level block keeps its source as `raw`. `depth` is
 * how deep in quotes and lists these lines are: past MAX_NESTING they are plain text.
 */
export function parseBlocks(lines, depth = 0) {
  if (depth > MAX_NESTING) {
    const text = lines.join("\n");
    return isBlank(text) ? [] : [{ type: "plain", text, raw: text }];
  }
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const start = i;
    const line = lines[i];
    if (isBlank(line)) {
      i += 1;
      continue;
    }
    let block;
    let m;
    if (!matchable(line)) {
      block = { type: "paragraph", text: line };
      i += 1;
    } else if ((m = matchFence(line))) {
      [block, i] = parseFence(lines, i, m);
    } else if ((m = matchHeading(line))) {
      block = { type: "heading", level: m.level, text: m.text };
      i += 1;
    } else if (RULE.test(line)) {
      block = { type: "rule" };
      i += 1;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && matchable(lines[i]) && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i += 1;
      }
      block = { type: "quote", children: parseBlocks(inner, depth + 1) };
    } else if (ITEM.test(line)) {
      [block, i] = parseList(lines, i, depth);
    } else if (codeIndent(line) !== null) {
      [block, i] = parseIndentedCode(lines, i);
    } else if (line.includes("|") && i + 1 < lines.length && isTableDelimiter(lines[i + 1]) && lines[i + 1].includes("-")) {
      [block, i] = parseTable(lines, i);
    } else {
      const text = [line];
      i += 1;
      while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i])) {
        text.push(lines[i]);
        i += 1;
      }
      block = { type: "paragraph", text: text.join("\n") };
    }
    block.raw = lines.slice(start, i).join("\n");
    block.line = start;
    blocks.push(block);
  }
  return blocks;
}

function parseFence(lines, i, m) {
  const indent = m[1].length;
  const marker = m[2];
  const body = [];
  let j = i + 1;
  let closed = false;
  while (j < lines.length) {
    const close = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(lines[j]);
    if (close && close[1][0] === marker[0] && close[1].length >= marker.length) {
      closed = true;
      j += 1;
      break;
    }
    // Content lines lose up to the fence's own indentation.
    body.push(lines[j].slice(Math.min(indent, indentOf(lines[j]))));
    j += 1;
  }
  return [{ type: "code", lang: m[3] || "", text: body.join("\n"), closed }, j];
}

/** A line indented by four spaces or more (`toLines` made each tab four): the line without
 * those four, or null. */
function codeIndent(line) {
  return line.startsWith("    ") && !isBlank(line) ? line.slice(4) : null;
}

/** An indented code block: its lines and the blank lines between them, not those after. */
function parseIndentedCode(lines, i) {
  const body = [];
  let j = i;
  let end = i;
  while (j < lines.length) {
    const blank = isBlank(lines[j]);
    const code = blank ? "" : codeIndent(lines[j]);
    if (code === null) break;
    body.push(code);
    j += 1;
    if (!blank) end = j;
  }
  return [{ type: "code", lang: "", text: body.slice(0, end - i).join("\n"), closed: true }, end];
}

function parseList(lines, i, depth) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const baseIndent = first[1].length;
  const list = { type: "list", ordered, start: ordered ? parseInt(first[2], 10) : 1, items: [], loose: false };
  let item = null;
  let sawBlank = false;
  while (i < lines.length) {
    const line = lines[i];
    const m = matchable(line) ? ITEM.exec(line) : null;
    if (m && m[1].length <= baseIndent + 1 && /\d/.test(m[2]) === ordered && (!item || m[1].length < item.contentIndent)) {
      // A sibling item.
      if (item && sawBlank) list.loose = true;
      const gap = m[3] ? m[3].length : 1;
      const contentIndent = m[1].length + m[2].length + (gap > 4 ? 1 : gap);
      item = { contentIndent, lines: [m[4] ?? ""] };
      list.items.push(item);
      sawBlank = false;
      i += 1;
      continue;
    }
    if (isBlank(line)) {
      // Blank lines belong to the item only if more item content follows.
      let k = i;
      while (k < lines.length && isBlank(lines[k])) k += 1;
      if (k >= lines.length) break;
      const next = lines[k];
      const nextItem = matchable(next) ? ITEM.exec(next) : null;
      const continues = indentOf(next) >= item.contentIndent ||
        (nextItem && nextItem[1].length <= baseIndent + 1 && /\d/.test(nextItem[2]) === ordered);
      if (!continues) break;
      for (; i < k; i += 1) item.lines.push("");
      sawBlank = true;
      continue;
    }
    const indent = indentOf(line);
    if (indent >= item.contentIndent || (m && indent > baseIndent)) {
      if (sawBlank && indent >= item.contentIndent && !m) list.loose = list.loose || hasParagraphBreak(item.lines);
      item.lines.push(line.slice(Math.min(indent, item.contentIndent)));
      i += 1;
      continue;
    }
    // A lazy continuation of the item's paragraph, unless something else starts here.
    if (!sawBlank && !startsBlock(line)) {
      item.lines.push(line.trimStart());
      i += 1;
      continue;
    }
    break;
  }
  for (const it of list.items) it.children = parseBlocks(it.lines, depth + 1);
  return [list, i];
}

function hasParagraphBreak(lines) {
  return lines.some((l, k) => isBlank(l) && k > 0 && k < lines.length - 1);
}

function splitRow(line) {
  let text = line.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|") && !text.endsWith("\\|")) text = text.slice(0, -1);
  const cells = [];
  let cell = "";
  let code = false;
  for (let k = 0; k < text.length; k++) {
    const c = text[k];
    if (c === "\\" && text[k + 1] === "|") {
      cell += "|";
      k += 1;
    } else if (c === "`") {
      code = !code;
      cell += c;
    } else if (c === "|" && !code) {
      cells.push(cell.trim());
      cell = "";
    } else cell += c;
  }
  cells.push(cell.trim());
  return cells;
}

function parseTable(lines, i) {
  const header = splitRow(lines[i]);
  const align = splitRow(lines[i + 1]).map((d) => {
    const left = d.startsWith(":");
    const right = d.endsWith(":");
    return left && right ? "center" : right ? "right" : left ? "left" : "";
  });
  const rows = [];
  let j = i + 2;
  const maxRows = Math.floor(MAX_TABLE_CELLS / Math.max(1, header.length));
  while (j < lines.length && rows.length < maxRows && !isBlank(lines[j]) && lines[j].includes("|")) {
    rows.push(splitRow(lines[j]));
    j += 1;
  }
  return [{ type: "table", header, align, rows }, j];
}

// --------------------------------------------------------------------------- inline parsing

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

function budgetFor(size) {
  return 100_000 + 20 * size;
}

/** Run `fn` on the budget of a block of `size` characters, of which `spent` is used up
 * already (its settled part, when the block is patched), unless a budget is running. */
function withBudget(size, fn, spent = 0) {
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

/** A URL safe to put in href: absolute http(s) only, else null. */
export function safeHref(url) {
  try {
    const parsed = new URL(url.trim());
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function runLength(text, at) {
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

// ------------------------------------------------------------------------------- rendering

/** Render one block object into a DOM node. */
export function renderBlock(block, options = {}) {
  return withBudget((block.raw ?? "").length, () => renderBlockNode(block, options));
}

function renderBlockNode(block, { tight = false } = {}) {
  switch (block.type) {
    case "heading": {
      // Model headings sit inside a message: shift them below the page's own headings.
      const h = document.createElement(`h${Math.min(6, block.level + 2)}`);
      h.className = `md-h${block.level}`;
      renderInline(block.text, h);
      return h;
    }
    case "rule":
      return document.createElement("hr");
    case "code":
      return renderCode(block);
    case "quote": {
      const q = document.createElement("blockquote");
      for (const child of block.children) q.append(renderBlock(child));
      return q;
    }
    case "list": {
      const list = document.createElement(block.ordered ? "ol" : "ul");
      if (block.ordered && block.start !== 1) list.start = block.start;
      const spent = workSpent(list, block);
      for (const item of block.items) {
        spent.mark();
        list.append(listItem(item, block));
      }
      spent.mark();
      return list;
    }
    case "table":
      return renderTable(block);
    case "plain":
      return plainText(block.text);
    case "overflow-note": {
      const note = document.createElement("p");
      note.className = "md-note";
      note.dataset.testid = "markdown-overflow";
      note.textContent = `This answer is longer than ${MAX_MARKDOWN.toLocaleString("en")} characters: the rest is shown as plain text.`;
      return note;
    }
    case "overflow": {
      // Blocks without margins, as lines of one text: copied, paragraphs would add a blank
      // line between pieces.
      const piece = plainText(block.text, "div");
      piece.classList.add("md-overflow");
      return piece;
    }
    default: {
      if (tight) {
        const span = document.createElement("span");
        span.className = "md-tight";
        renderInline(block.text, span);
        return span;
      }
      const p = document.createElement("p");
      renderInline(block.text, p);
      return p;
    }
  }
}

function listItem(item, list) {
  const li = document.createElement("li");
  for (const child of item.children) li.append(renderBlock(child, { tight: !list.loose }));
  return li;
}

function renderCode(block) {
  const wrap = document.createElement("div");
  wrap.className = "md-code";
  wrap.dir = "ltr"; // code reads left to right, in an answer in Hebrew or Arabic too
  const head = document.createElement("div");
  head.className = "md-code-head";
  const lang = document.createElement("span");
  lang.className = "md-code-lang";
  lang.textContent = block.lang || "text";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "md-code-copy";
  copy.dataset.copyCode = "";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", `Copy ${block.lang || "code"} block`);
  head.append(lang, copy);
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  if (block.lang) code.dataset.lang = block.lang;
  // Coloured once its fence closes: a block still streaming in is rendered again at every
  // frame, and laying out its hundreds of coloured runs each time took 40 ms (10,000
  // characters of Python in Chromium) against 5 ms for one plain text.
  if (block.closed) renderHighlighted(code, block.text, block.lang);
  else code.textContent = block.text;
  pre.append(code);
  pre.tabIndex = 0; // wide code scrolls horizontally: let keyboard users reach it
  wrap.append(head, pre);
  return wrap;
}

function renderTable(block) {
  const wrap = document.createElement("div");
  wrap.className = "md-table";
  wrap.tabIndex = 0;
  const table = document.createElement("table");
  const thead = document.createElement("thead");
  const headRow = document.createElement("tr");
  block.header.forEach((cell, k) => headRow.append(tableCell("th", cell, block.align[k])));
  thead.append(headRow);
  const tbody = document.createElement("tbody");
  const spent = workSpent(tbody, block);
  for (const row of block.rows) {
    spent.mark();
    tbody.append(tableRow(row, block));
  }
  spent.mark();
  table.append(thead, tbody);
  wrap.append(table);
  return wrap;
}

function tableRow(row, table) {
  const tr = document.createElement("tr");
  for (let k = 0; k < table.header.length; k++) tr.append(tableCell("td", row[k] ?? "", table.align[k]));
  return tr;
}

function tableCell(tag, text, align) {
  const cell = document.createElement(tag);
  if (align) cell.className = `align-${align}`;
  renderInline(text, cell);
  return cell;
}

/** Text as it is, lines kept (no Markdown). */
function plainText(text, tag = "p") {
  const p = document.createElement(tag);
  p.className = "md-plain";
  text.split(/\r\n?|\n/).forEach((line, k) => {
    if (k > 0) p.append(document.createElement("br"));
    if (line) p.append(document.createTextNode(line));
  });
  return p;
}

function toLines(source) {
  return source.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
}

/** Plain text past MAX_MARKDOWN is shown in pieces of about this many characters... */
const OVERFLOW_PIECE = 8_000;
/** ...cut mid-line only in a line longer than this. */
const OVERFLOW_LINE = 64_000;

/** Where the Markdown part of a source longer than MAX_MARKDOWN ends: at a line break, so
 * that its last block is whole (unless the lines are huge). It depends only on the first
 * MAX_MARKDOWN characters, so it stays put while the source grows. */
function markdownEnd(text) {
  const cut = Math.max(text.lastIndexOf("\n", MAX_MARKDOWN), text.lastIndexOf("\r", MAX_MARKDOWN));
  return cut < MAX_MARKDOWN / 2 ? MAX_MARKDOWN : cut;
}

/**
 * Where the overflow piece that starts at `from` ends: {end, next} (the line break between
 * `end` and `next` is not part of either piece), or null while that may still change as
 * `rest` grows. A piece ends at the last line break of its second half that ends a
 * non-empty line (an empty last line would not show); failing that, at the first line
 * break after it, at most OVERFLOW_LINE characters on (else there, mid-line).
 */
function pieceBounds(rest, from) {
  const limit = from + OVERFLOW_PIECE;
  if (rest.length <= limit + 1) return null; // the second half is not all there yet
  for (let k = limit; k > from + OVERFLOW_PIECE / 2; k -= 1) {
    const lineBreak = breakAt(rest, k);
    if (lineBreak && !isBreakChar(rest[lineBreak.end - 1])) return lineBreak;
  }
  const longest = from + OVERFLOW_LINE;
  for (let k = limit + 1; k < Math.min(longest, rest.length - 1); k += 1) {
    const lineBreak = breakAt(rest, k);
    if (lineBreak) return lineBreak;
  }
  return rest.length > longest ? { end: longest, next: longest } : null;
}

function isBreakChar(c) {
  return c === "\n" || c === "\r";
}

/** The line break that ends at `k` (an LF, a CR not followed by LF, the LF of a CRLF) as
 * {end: where it starts, next: after it}, or null. `rest[k + 1]` must be known. */
function breakAt(rest, k) {
  if (rest[k] === "\n") return { end: rest[k - 1] === "\r" ? k - 1 : k, next: k + 1 };
  if (rest[k] === "\r" && rest[k + 1] !== "\n") return { end: k, next: k + 1 };
  return null;
}

/** The blocks of a source, parsed whole: its first MAX_MARKDOWN characters as Markdown, then
 * a note and the rest as plain text in pieces. `MarkdownParse` gives the same blocks. */
export function parseSource(source) {
  return new MarkdownParse().blocks(source);
}

/**
 * Parses a growing source again and again, each time only from its last block or two.
 *
 * Top-level blocks are parsed one after the other with no state carried between them, and
 * what ends one block depends only on the lines up to the first line of the next. So while the
 * source only grows, the blocks before the last one whose first line is complete (a line break
 * follows it) can no longer change: they are kept, and parsing starts again at that line.
 * Without this an answer of N characters streamed in N/40 chunks costs O(N^2) parsing.
 */
export class MarkdownParse {
  #markdown = "";   // the Markdown part of the source last parsed
  #kept = [];       // its leading blocks that text appended to it cannot change
  #keptEnd = 0;     // where in #markdown the text after them starts
  #rest = null;     // the plain text part of the source last parsed (null: none)
  #pieces = [];     // whole pieces of it
  #piecesEnd = 0;   // where in #rest the next piece starts

  /** The blocks of `source`, which may extend the source of the previous call or not. */
  blocks(source) {
    const text = String(source ?? "");
    if (text.length <= MAX_MARKDOWN) {
      this.#rest = null;
      return this.#markdownBlocks(text);
    }
    const cut = markdownEnd(text);
    return this.#markdownBlocks(text.slice(0, cut)).concat(
      { type: "overflow-note", raw: "" }, this.#overflowBlocks(text.slice(cut)));
  }

  #markdownBlocks(markdown) {
    if (!markdown.startsWith(this.#markdown)) {
      this.#kept = [];
      this.#keptEnd = 0;
    }
    this.#markdown = markdown;
    const tail = markdown.slice(this.#keptEnd);
    const lines = toLines(tail);
    const blocks = parseBlocks(lines); // each with its first line, counted in `lines`
    let restart = blocks.length - 1;
    while (restart > 0 && blocks[restart].line >= lines.length - 1) restart -= 1;
    if (restart > 0) {
      for (const block of blocks.slice(0, restart)) this.#kept.push(block);
      this.#keptEnd += lineOffset(tail, blocks[restart].line);
      return this.#kept.concat(blocks.slice(restart));
    }
    return this.#kept.concat(blocks);
  }

  #overflowBlocks(rest) {
    if (this.#rest === null || !rest.startsWith(this.#rest)) this.#pieces = [];
    // It starts with the line break the Markdown part ended at, if any: not shown. (Looked
    // at until the first piece is cut: a CR may turn out to be the start of a CRLF.)
    if (!this.#pieces.length) this.#piecesEnd = /^(\r\n?|\n)?/.exec(rest)[0].length;
    this.#rest = rest;
    for (let bounds = pieceBounds(rest, this.#piecesEnd); bounds; bounds = pieceBounds(rest, this.#piecesEnd)) {
      const raw = rest.slice(this.#piecesEnd, bounds.end);
      this.#pieces.push({ type: "overflow", text: raw, raw });
      this.#piecesEnd = bounds.next;
    }
    const raw = rest.slice(this.#piecesEnd);
    return raw ? this.#pieces.concat({ type: "overflow", text: raw, raw }) : this.#pieces.slice();
  }
}

/** Where line `line` of `text` starts (lines as `toLines` splits them). */
function lineOffset(text, line) {
  const breaks = /\r\n?|\n/g;
  for (let n = 0; n < line; n += 1) breaks.exec(text);
  return breaks.lastIndex;
}

// The inline work budget a list's items or a table's rows had used up before each of them,
// and after the last, when rendered: so that a patch renders new ones on what a fresh
// rendering would have left them.
const spentBefore = new WeakMap(); // the <ol>/<ul> or <tbody> -> [units]

function workSpent(node, block) {
  const marks = [];
  spentBefore.set(node, marks);
  const start = budgetFor(block.raw.length); // as a top-level block (the only ones patched)
  return { mark: () => marks.push(start - budget) };
}

/**
 * Brings `node`, rendered from block `old`, to show `block` instead, keeping the nodes of
 * what did not change: a list's items, a table's rows, a code block's frame. False when it
 * cannot (the block is then rendered anew). A list or table streamed as one block of
 * thousands of items or rows was rebuilt whole at every frame: a 150,000-character one
 * froze the page for 380-540 ms at a time.
 */
function patchBlock(node, old, block) {
  if (old.type !== block.type) return false;
  if (block.type === "list") {
    if (block.ordered !== old.ordered || block.start !== old.start || block.loose !== old.loose) return false;
    return replaceTail(node, old, block, old.items, block.items, sameItem, (item) => listItem(item, block));
  }
  if (block.type === "table") {
    if (!sameCells(block.header, old.header) || !sameCells(block.align, old.align)) return false;
    const tbody = node.querySelector("tbody");
    return replaceTail(tbody, old, block, old.rows, block.rows, sameCells, (row) => tableRow(row, block));
  }
  if (block.type === "code") {
    // A code block streaming in keeps its node: rebuilt at every frame, its Copy button
    // (or the block, scrolled sideways) lost the keyboard's focus and the scroll.
    if (old.closed || block.lang !== old.lang) return false;
    const code = node.querySelector("code");
    if (block.closed) {
      code.replaceChildren();
      renderHighlighted(code, block.text, block.lang);
    } else code.textContent = block.text;
    return true;
  }
  return false;
}

/**
 * Makes `parent`'s children, rendered from `before` (the entries of block `old`), show
 * `after` (those of `block`): from the first that differs on, they are rendered anew, on
 * the budget a fresh rendering would have left. False if the ones kept ran out of budget,
 * in the rendering before or in a fresh one: they would not render the same.
 */
function replaceTail(parent, old, block, before, after, same, render) {
  const spent = spentBefore.get(parent);
  let k = 0;
  while (k < before.length && k < after.length && same(before[k], after[k])) k += 1;
  if (!spent || spent.length !== before.length + 1) return false;
  const kept = spent[k];
  if (kept >= Math.min(budgetFor(old.raw.length), budgetFor(block.raw.length))) return false;
  spent.length = k + 1;
  const children = parent.children;
  while (children.length > k) children[children.length - 1].remove();
  const total = budgetFor(block.raw.length);
  withBudget(block.raw.length, () => {
    for (const entry of after.slice(k)) {
      parent.append(render(entry));
      spent.push(total - budget);
    }
  }, kept);
  return true;
}

function sameItem(a, b) {
  return sameCells(a.lines, b.lines);
}

function sameCells(a, b) {
  return a.length === b.length && a.every((cell, k) => cell === b[k]);
}

/** Render Markdown source into a fresh DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  for (const block of parseSource(source)) fragment.append(renderBlock(block));
  return fragment;
}

/** Blocks are shown in parts of about this many characters of source (see MarkdownView). */
const PART_CHARS = 8_000;
/** Blocks that may start a part: those without a top margin (their own, or a first child's
 * that would collapse through theirs), since margins do not collapse across parts. */
const PART_STARTS = new Set(["paragraph", "code", "table", "quote", "plain", "overflow", "overflow-note"]);

/**
 * Keeps a container rendering a growing Markdown text. Blocks whose source did not change
 * keep their DOM nodes (and any selection in them); usually only the last block is rebuilt
 * as an answer streams in.
 *
 * The blocks are grouped in parts (`.md-part`) that the page neither lays out nor paints
 * while they are off screen (CSS `content-visibility`): every frame that shows new text of an
 * answer of hundreds of thousands of characters would otherwise lay out all of it. A part
 * never laid out is taken to be as tall as its source suggests (`containIntrinsicSize`),
 * so that the scroll bar tells about where the reader is.
 */
export class MarkdownView {
  #parse = new MarkdownParse();
  #rendered = []; // [{block, node, part}]
  #parts = [];    // [{node, chars, lines}]
  #source = null;
  #open = false;
  #plain = false; // the container shows the source as plain text (after a failed render)

  constructor(container) {
    this.container = container;
  }

  /** Show `source`; `open`: the text is still being written, or was cut short (its last
   * paragraph's open bold or code span is shown closed, see `withClosers`). */
  update(source, { open = false } = {}) {
    if (source === this.#source && open === this.#open) return;
    this.#source = source;
    this.#open = open;
    try {
      this.#render(source, open);
    } catch (err) {
      // Never expected; if it happens, the answer is still readable.
      console.warn("could not render an answer as Markdown", err);
      this.#parse = new MarkdownParse();
      this.#rendered = [];
      this.#parts = [];
      this.container.replaceChildren(plainText(String(source ?? "")));
      this.#plain = true;
    }
  }

  #render(source, open) {
    if (this.#plain) { // what a failed render showed instead
      this.container.replaceChildren();
      this.#plain = false;
    }
    const blocks = this.#parse.blocks(source);
    if (open && blocks.length) blocks[blocks.length - 1] = withClosers(blocks.at(-1));
    let k = 0;
    while (k < blocks.length && k < this.#rendered.length && sameBlock(blocks[k], this.#rendered[k].block)) k += 1;
    const changed = new Set();
    const last = this.#rendered[k];
    if (k === this.#rendered.length - 1 && k < blocks.length && patchBlock(last.node, last.block, blocks[k])) {
      // The block being streamed, grown in place: it stays in its part, as it would if
      // rendered anew (a block's part depends only on the blocks before it).
      last.part.chars += blocks[k].raw.length - last.block.raw.length;
      last.part.lines += lineCount(blocks[k]) - lineCount(last.block);
      changed.add(last.part);
      last.block = blocks[k];
      k += 1;
    }
    for (const stale of this.#rendered.splice(k)) {
      stale.node.remove();
      stale.part.chars -= stale.block.raw.length;
      stale.part.lines -= lineCount(stale.block);
      changed.add(stale.part);
    }
    // Empty parts go, but the last one stays for the next block: made anew at every frame
    // that rebuilds a part's only block, it would forget how tall it was.
    while (this.#parts.length > 1 && !this.#parts.at(-2).node.hasChildNodes()) {
      this.#parts.splice(-2, 1)[0].node.remove();
    }
    for (const block of blocks.slice(k)) {
      const part = this.#partFor(block);
      const node = renderBlock(block);
      part.node.append(node);
      part.chars += block.raw.length;
      part.lines += lineCount(block);
      changed.add(part);
      this.#rendered.push({ block, node, part });
    }
    if (this.#parts.length && !this.#parts.at(-1).node.hasChildNodes()) this.#parts.pop().node.remove();
    for (const part of changed) {
      // About 90 characters a line, a source line at least one, 24 px each.
      const estimate = Math.round(24 * Math.max(part.lines, part.chars / 90));
      part.node.style.containIntrinsicSize = `auto ${Math.max(24, estimate)}px`;
    }
  }

  /** The part `block` goes into: the last one, unless it is full and the block may start a
   * part (so the same parts as when rendered in one go). */
  #partFor(block) {
    const joins = (part) => part.chars < PART_CHARS || !PART_STARTS.has(block.type);
    let last = this.#parts.at(-1);
    if (last && !last.node.hasChildNodes()) {
      const before = this.#parts.at(-2);
      if (!before || !joins(before)) return last; // the empty part left for it
      this.#parts.pop().node.remove();
      last = before;
    }
    if (last && joins(last)) return last;
    const node = document.createElement("div");
    node.className = "md-part";
    this.container.append(node);
    this.#parts.push({ node, chars: 0, lines: 0 });
    return this.#parts.at(-1);
  }
}

/**
 * `block`, the last of a text still being written (or cut short), with the closers of the
 * bold (`**`) or code span (`` ` ``) that the paragraph it ends with has opened (a paragraph,
 * a heading, or the last paragraph of a list's last item), so that it shows as it will once
 * they come: the marks themselves showed until then ("**Before that you"). Code, quotes and
 * tables are left as they are.
 */
function withClosers(block) {
  const text = lastParagraphText(block);
  const closers = text ? danglingClosers(text) : "";
  if (!closers) return block;
  if (block.type !== "list") return { ...block, text: block.text + closers, raw: block.raw + closers };
  const item = block.items.at(-1);
  const lines = item.lines.slice(0, -1).concat(item.lines.at(-1) + closers);
  const closed = { ...item, lines, children: parseBlocks(lines, 1) };
  const list = { ...block, items: block.items.slice(0, -1).concat(closed), raw: block.raw + closers };
  // The closers went to the paragraph they close, or the item is shown as it was.
  return lastParagraphText(list) === text + closers ? list : block;
}

/** The text of the paragraph `block` ends with, if it ends with one ("" if not). */
function lastParagraphText(block) {
  if (!block) return "";
  if (block.type === "paragraph" || block.type === "heading") return block.text;
  if (block.type === "list") return lastParagraphText(block.items.at(-1)?.children.at(-1));
  return "";
}

/** What closes the code span and the bold that `text` leaves open: "" if none, or if a
 * closer would close nothing (after a space or a backslash, or right after its opener). */
function danglingClosers(text) {
  if (!text || isSpaceOrTab(text.at(-1)) || /(^|[^\\])(\\\\)*\\$/.test(text)) return "";
  let bolds = 0;
  let lastBold = -1;
  let code = "";
  for (let i = 0; i < text.length;) {
    const c = text[i];
    if (c === "\\") {
      i += 2;
    } else if (c === "`") {
      const n = runLength(text, i);
      const run = "`".repeat(n);
      const end = text.indexOf(run, i + n); // (a longer run closes nothing: good enough here)
      if (end < 0) {
        if (i + n < text.length) code = run;
        break;
      }
      i = end + n;
    } else if (c === "*") {
      const n = runLength(text, i);
      // Between spaces a "**" neither opens nor closes ("2 ** 3").
      if (n === 2 && !(/^\s?$/.test(text[i - 1] ?? "") && /^\s?$/.test(text[i + 2] ?? ""))) {
        bolds += 1;
        lastBold = i;
      }
      i += n;
    } else {
      i += 1;
    }
  }
  const word = text.slice(text.lastIndexOf(" ", lastBold) + 1, lastBold);
  const boldOpen = bolds % 2 === 1 && lastBold + 2 < text.length && !/\s/.test(text[lastBold + 2])
    && !/https?:\/\/|www\./i.test(word); // in a link's URL, not a mark
  if (!boldOpen) return code;
  // Half its closer written ("**bold*"): the other half.
  return code + (!code && text.at(-1) === "*" && text.at(-2) !== "*" ? "*" : "**");
}

/** Source lines of a block, and one for the space after it. */
function lineCount(block) {
  let lines = 2;
  for (let at = block.raw.indexOf("\n"); at >= 0; at = block.raw.indexOf("\n", at + 1)) lines += 1;
  return lines;
}

function sameBlock(a, b) {
  return a === b || (a.type === b.type && a.raw === b.raw);
}
