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
// `markdown-blocks.js` parses the block structure and `markdown-inline.js` the inline syntax;
// this module renders blocks, and keeps an answer's rendering up to date as it streams in
// (`MarkdownView`), re-rendering only the blocks that changed.
//
// The source is untrusted in size and shape too: anyone who may append to a stream can send
// an answer built to make a parser slow or to exhaust the stack. So no regular expression here
// backtracks over more than one ambiguous run, the inline scans share a work budget per block,
// nesting is limited to MAX_NESTING levels, and only the first MAX_MARKDOWN characters are
// parsed as Markdown (the rest is shown as plain text, with a note).

import { renderHighlighted } from "./highlight.js";
import { isSpaceOrTab, parseBlocks, toLines } from "./markdown-blocks.js";
import { budgetFor, budgetLeft, renderInline, runLength, withBudget } from "./markdown-inline.js";

/** Characters of an answer rendered as Markdown; the rest is plain text. */
export const MAX_MARKDOWN = 200_000;

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
  return { mark: () => marks.push(start - budgetLeft()) };
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
      spent.push(total - budgetLeft());
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
