// Markdown's block structure, for `markdown.js`: the lines of an answer parsed into
// paragraphs, headings, fenced and indented code, lists, quotes, tables and thematic breaks
// (plain objects; `markdown.js` renders them). Untrusted input: long lines are never taken
// for block syntax, nesting and tables are bounded (see `markdown.js`'s opening comment).

/** Lines longer than this are never taken for block syntax (a heading, an item, a quote). */
export const MAX_BLOCK_LINE = 20_000;
/** Deepest nesting of quotes/lists (and of inline emphasis/links); deeper is plain text. */
export const MAX_NESTING = 32;
/** Tables stop collecting rows past this many cells; further lines are paragraphs. */
export const MAX_TABLE_CELLS = 20_000;

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

export function isSpaceOrTab(c) {
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

/** The source's lines: any line ending taken, a tab as four spaces. */
export function toLines(source) {
  return source.replace(/\r\n?/g, "\n").replace(/\t/g, "    ").split("\n");
}
