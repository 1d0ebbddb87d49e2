// A small Markdown renderer for untrusted model output.
//
// It builds DOM nodes with createElement/textContent only - never innerHTML - so raw HTML in
// the source (`<img src=x onerror=...>`, `<script>`) is shown as the text it is. Links get an
// href only when it parses as an absolute http(s) URL. Supported: paragraphs, ATX headings,
// emphasis (* _ ** __ *** ~~), inline code, fenced code blocks (also unterminated, while an
// answer streams), bullet and ordered lists (nested, tight or loose), block quotes, GFM pipe
// tables, thematic breaks, links, autolinks and bare URLs, hard line breaks.

// ---------------------------------------------------------------------------- block parsing

const FENCE = /^( {0,3})(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:([ \t]+)(.*)|$)/;
const TABLE_DELIM = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;

function isBlank(line) {
  return /^[ \t]*$/.test(line);
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

/** Lines that end a paragraph when they appear in it. */
function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

/** Parse lines into block objects; each top-level block keeps its source as `raw`. */
export function parseBlocks(lines) {
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
    if ((m = FENCE.exec(line))) {
      [block, i] = parseFence(lines, i, m);
    } else if ((m = HEADING.exec(line))) {
      block = { type: "heading", level: m[1].length, text: m[2] ?? "" };
      i += 1;
    } else if (RULE.test(line)) {
      block = { type: "rule" };
      i += 1;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i += 1;
      }
      block = { type: "quote", children: parseBlocks(inner) };
    } else if (ITEM.test(line)) {
      [block, i] = parseList(lines, i);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_DELIM.test(lines[i + 1]) && lines[i + 1].includes("-")) {
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

function parseList(lines, i) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const baseIndent = first[1].length;
  const list = { type: "list", ordered, start: ordered ? parseInt(first[2], 10) : 1, items: [], loose: false };
  let item = null;
  let sawBlank = false;
  while (i < lines.length) {
    const line = lines[i];
    const m = ITEM.exec(line);
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
      const nextItem = ITEM.exec(next);
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
  for (const it of list.items) it.children = parseBlocks(it.lines);
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
  while (j < lines.length && !isBlank(lines[j]) && lines[j].includes("|")) {
    rows.push(splitRow(lines[j]));
    j += 1;
  }
  return [{ type: "table", header, align, rows }, j];
}

// --------------------------------------------------------------------------- inline parsing

const PUNCT = /[!-/:-@[-`{-~]/;

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

/** Index just after the code span opening at `at`, or -1 if it never closes. */
function codeSpanEnd(text, at) {
  const n = runLength(text, at);
  let k = at + n;
  while ((k = text.indexOf("`", k)) >= 0) {
    const m = runLength(text, k);
    if (m === n) return k + m;
    k += m;
  }
  return -1;
}

/** Find the closing delimiter run for emphasis of `size` with char `c`, from `from`. */
function findCloser(text, from, c, size) {
  let k = from;
  while (k < text.length) {
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
      if (rightFlanking && !intraword && n >= size) return k + n - size;
      k += n;
      continue;
    }
    k += 1;
  }
  return -1;
}

function findBracketEnd(text, at) {
  let depth = 0;
  for (let k = at; k < text.length; k++) {
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
  if (text[k] === "<") {
    const close = text.indexOf(">", k);
    if (close < 0) return null;
    url = text.slice(k + 1, close);
    k = close + 1;
  } else {
    let depth = 0;
    const begin = k;
    for (; k < text.length; k++) {
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
    if (close < 0) return null;
    k = close + 1;
    while (text[k] === " ") k += 1;
  }
  if (text[k] !== ")") return null;
  return { url, end: k + 1 };
}

const BARE_URL = /https?:\/\/[^\s<>"'`]+/iy;
const ANGLE_URL = /<(https?:\/\/[^\s<>]+)>/iy;

/** Render inline Markdown into `parent` (DOM nodes only). */
export function renderInline(text, parent) {
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
      buffer = buffer.replace(/ +$/, "");
      flush();
      parent.append(document.createElement("br"));
      i += 1;
      continue;
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
      if (/^ .*[^ ].* $/.test(inner)) inner = inner.slice(1, -1);
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
    if (c === "<") {
      ANGLE_URL.lastIndex = i;
      const m = ANGLE_URL.exec(text);
      if (m && safeHref(m[1])) {
        flush();
        appendLink(parent, m[1], m[1], false, true);
        i += m[0].length;
        continue;
      }
    }
    if ((c === "h" || c === "H") && (prev === undefined || /[\s(]/.test(prev))) {
      BARE_URL.lastIndex = i;
      const m = BARE_URL.exec(text);
      if (m) {
        const url = m[0].replace(/[.,;:!?)\]}*_~]+$/, "");
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
          const closer = findCloser(text, i + size, c, size);
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
export function renderBlock(block, { tight = false } = {}) {
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
      for (const item of block.items) {
        const li = document.createElement("li");
        for (const child of item.children) li.append(renderBlock(child, { tight: !block.loose }));
        list.append(li);
      }
      return list;
    }
    case "table":
      return renderTable(block);
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

function renderCode(block) {
  const wrap = document.createElement("div");
  wrap.className = "md-code";
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
  code.textContent = block.text;
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
  for (const row of block.rows) {
    const tr = document.createElement("tr");
    for (let k = 0; k < block.header.length; k++) tr.append(tableCell("td", row[k] ?? "", block.align[k]));
    tbody.append(tr);
  }
  table.append(thead, tbody);
  wrap.append(table);
  return wrap;
}

function tableCell(tag, text, align) {
  const cell = document.createElement(tag);
  if (align) cell.className = `align-${align}`;
  renderInline(text, cell);
  return cell;
}

function toLines(source) {
  return String(source ?? "").replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
}

/** Render Markdown source into a fresh DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  for (const block of parseBlocks(toLines(source))) fragment.append(renderBlock(block));
  return fragment;
}

/**
 * Keeps a container rendering a growing Markdown text. Blocks whose source did not change
 * keep their DOM nodes (and any selection in them); usually only the last block is rebuilt
 * as an answer streams in.
 */
export class MarkdownView {
  #rendered = []; // [{raw, node}]
  #source = null;

  constructor(container) {
    this.container = container;
  }

  update(source) {
    if (source === this.#source) return;
    this.#source = source;
    const blocks = parseBlocks(toLines(source));
    let k = 0;
    while (k < blocks.length && k < this.#rendered.length && blocks[k].raw === this.#rendered[k].raw) k += 1;
    for (const stale of this.#rendered.splice(k)) stale.node.remove();
    for (const block of blocks.slice(k)) {
      const node = renderBlock(block);
      this.container.append(node);
      this.#rendered.push({ raw: block.raw, node });
    }
  }
}
