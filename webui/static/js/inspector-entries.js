// The inspector's content view: the pages read from a stream shown as entries (its JSON
// messages, or each page's bytes as text or a hex dump), each page after a mark of the
// offsets it came from. A live batch adds only its own nodes (rebuilt whole at every batch,
// a stream followed while it grew by hundreds of appends a second froze the page for
// minutes), and only the newest RENDER_LIMIT entries are built: older ones are counted.

import { hexDump } from "./format.js";
import { el } from "./util.js";

const RENDER_LIMIT = 2000; // entries built for a view; older ones are counted, not shown
export const SHOWN_BYTES = 64 * 1024; // of one entry's bytes, as text or hex; the rest is counted
// Entries (and their batches' marks) go into groups of this many nodes, which the page
// neither lays out nor paints while off screen (CSS `content-visibility`). In one flat list,
// each frame of a followed stream laid out all of its thousands of nodes to add a few.
const GROUP_SIZE = 100;

// An entry's height as the stylesheet makes it: its head, padding and border, and each row
// of its text; a batch's mark.
const ENTRY_PX = 34;
const LINE_PX = 19.4;
const MARK_PX = 20;

export class EntryView {
  /** `view`: the scrolled element the entries go in; `summary`: where their count is said;
   * `placeholderText()`: what the view says while it shows no entry; `onSave(page)`: save
   * all the bytes of an entry too large to show whole. */
  constructor({ view, summary, placeholderText, onSave }) {
    this.view = view;
    this.summaryLine = summary;
    this.placeholderText = placeholderText;
    this.onSave = onSave;
    this.reset(null, 0); // no mode: the first pages are shown with `showAll`
  }

  reset(mode, byteBase) {
    this.mode = mode;
    this.pages = 0; // of the pages given, how many are shown (or counted)
    this.entries = 0;
    this.hidden = 0; // entries counted but not built
    this.messages = 0;
    this.bytes = 0;
    this.byteBase = byteBase; // the byte the next page of bytes starts at (hex addresses)
    this.groups = [];
    this.lineChars = 80;
  }

  /** Show `pages` afresh in `mode` ("json", "text" or "hex"; another stream, read or view);
   * `byteBase`: the stream's byte the first page starts at. `stick`: scroll to the end. */
  showAll(pages, { mode, byteBase, stick = false }) {
    const view = this.view;
    stick ||= this.atEnd();
    this.reset(mode, byteBase);
    this.summary = el("div", { class: "batch-mark", hidden: true });
    this.placeholder = el("p", { class: "content-placeholder", dataset: { testid: "content-placeholder" } });
    view.replaceChildren(this.placeholder, this.summary);
    // A hex dump's rows are not wrapped (on a phone each made three lines): they scroll.
    view.dataset.mode = mode;
    this.lineChars = mode === "hex" ? Infinity : charsPerLine(view);
    let entries = 0;
    for (const page of pages) entries += page.messages ? page.messages.length : page.bytes?.length ? 1 : 0;
    this.showNewPages(pages, entries - RENDER_LIMIT);
    if (stick) view.scrollTop = view.scrollHeight;
  }

  /** Add the pages of `pages` not shown yet; false (nothing done) if they cannot be added to
   * what is shown (another mode, or fewer pages than before): then `showAll` them. */
  showNew(pages, mode) {
    if (mode !== this.mode || this.pages > pages.length) return false;
    const stick = this.atEnd();
    this.showNewPages(pages, 0);
    if (stick) this.view.scrollTop = this.view.scrollHeight; // a reader scrolled up stays where they are
    return true;
  }

  atEnd() {
    const view = this.view;
    return view.scrollHeight - view.scrollTop - view.clientHeight < 40;
  }

  /** Append the pages not shown yet, their first `skip` entries counted but not built; then
   * drop the oldest groups that RENDER_LIMIT entries are shown without. */
  showNewPages(pages, skip) {
    const mode = this.mode;
    const grown = new Set();
    const add = (node, entry, height) => {
      let group = this.groups.at(-1);
      if (!group || group.nodes >= GROUP_SIZE) {
        group = { node: el("div", { class: "entry-group" }), nodes: 0, entries: 0, height: 0 };
        this.groups.push(group);
        this.view.append(group.node);
      }
      group.node.append(node);
      group.nodes += 1;
      group.height += height;
      if (entry) group.entries += 1;
      grown.add(group);
    };
    const skipped = () => {
      if (skip <= 0) return false;
      skip -= 1;
      this.hidden += 1;
      return true;
    };
    for (const page of pages.slice(this.pages)) {
      // A page's mark goes before its first entry shown (a page of none is marked too).
      let mark = el("div", { class: "batch-mark", dataset: { testid: "batch-mark" } }, `${page.live ? "live" : "read"} ${page.from} → ${page.to}`);
      const addEntry = (node, text) => {
        if (mark) add(mark, false, MARK_PX);
        mark = null;
        add(node, true, ENTRY_PX + LINE_PX * rowCount(text, this.lineChars));
      };
      if (page.messages) {
        for (const m of page.messages) {
          this.entries += 1;
          this.messages += 1;
          if (skipped()) continue;
          const text = mode === "json" ? JSON.stringify(m, null, 2) : mode === "hex" ? hexDump(new TextEncoder().encode(JSON.stringify(m))) : JSON.stringify(m);
          addEntry(el("div", { class: "entry", dataset: { testid: "content-entry" } },
            el("div", { class: "entry-head" }, el("span", {}, `#${this.entries}`), m && typeof m === "object" && typeof m.type === "string" ? el("span", {}, m.type) : null),
            el("pre", {}, text)), text);
        }
      } else if (page.bytes?.length) {
        this.entries += 1;
        this.bytes += page.bytes.length;
        const base = this.byteBase;
        this.byteBase += page.bytes.length;
        if (skipped()) continue;
        const text = mode === "hex" ? hexDump(page.bytes, base, SHOWN_BYTES) : mode === "json" ? prettyJsonText(page.bytes) : textStart(page.bytes);
        addEntry(el("div", { class: "entry", dataset: { testid: "content-entry" } },
          el("div", { class: "entry-head" }, el("span", {}, `${page.bytes.length} bytes`),
            // Only its first SHOWN_BYTES are shown: the rest is there to save.
            page.bytes.length > SHOWN_BYTES ? el("button", {
              type: "button",
              class: "entry-save",
              dataset: { testid: "entry-save" },
              "aria-label": `Save all ${page.bytes.length} bytes of this entry`,
              onclick: () => this.onSave(page),
            }, "Save all") : null),
          el("pre", {}, text)), text);
      }
      if (mark && !page.messages?.length && !page.bytes?.length && skip <= 0) add(mark, false, MARK_PX);
    }
    this.pages = pages.length;
    let built = 0;
    for (const group of this.groups) built += group.entries;
    while (this.groups.length > 1 && built - this.groups[0].entries >= RENDER_LIMIT) {
      const oldest = this.groups.shift();
      oldest.node.remove();
      built -= oldest.entries;
      this.hidden += oldest.entries;
    }
    for (const group of grown) {
      // A group never laid out is taken to be as tall as its rows of text make it (hundreds
      // of entries read at once are mostly off screen), so that the scroll bar is about right.
      group.node.style.containIntrinsicSize = `auto ${Math.round(group.height)}px`;
    }
    this.placeholder.hidden = this.entries > 0;
    // Hidden, it holds no text either: the view's text (a copy of it) begins with its entries.
    this.placeholder.textContent = this.entries > 0 ? "" : this.placeholderText();
    this.summary.hidden = this.hidden === 0;
    this.summary.textContent = `${this.hidden} earlier ${this.hidden === 1 ? "entry" : "entries"} not shown`;
    this.summaryLine.textContent = this.messages ? `${this.messages} message${this.messages === 1 ? "" : "s"}` : this.bytes ? `${this.bytes} bytes` : "";
  }
}

/** How many characters of an entry's text fit on a row of `view` (measured). */
function charsPerLine(view) {
  const sample = el("span", {}, "0".repeat(10));
  const probe = el("pre", {}, sample);
  const entry = el("div", { class: "entry" }, probe);
  view.append(entry);
  const charWidth = sample.getBoundingClientRect().width / 10;
  const style = getComputedStyle(probe);
  const width = probe.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  entry.remove();
  return Math.max(10, Math.floor(width / charWidth) || 80);
}

/** Rows `text` takes in a pre-wrap block `lineChars` characters wide. */
function rowCount(text, lineChars) {
  let rows = 0;
  for (let start = 0; start <= text.length;) {
    let end = text.indexOf("\n", start);
    if (end < 0) end = text.length;
    rows += Math.max(1, Math.ceil((end - start) / lineChars));
    start = end + 1;
  }
  return rows;
}

/** An entry's bytes as text, up to SHOWN_BYTES of them as the hex dump shows: 8 MiB of
 * random bytes laid out as text held the page for 42 s. */
function textStart(bytes) {
  if (bytes.length <= SHOWN_BYTES) return new TextDecoder().decode(bytes);
  const start = new TextDecoder().decode(bytes.subarray(0, SHOWN_BYTES), { stream: true });
  return `${start}\n… ${bytes.length - SHOWN_BYTES} more bytes`;
}

function prettyJsonText(bytes) {
  if (bytes.length > SHOWN_BYTES) return textStart(bytes);
  const text = new TextDecoder().decode(bytes);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
