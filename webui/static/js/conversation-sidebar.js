// The sidebar's list of conversations: the order shown (with what this tab's own messages,
// not yet read back, will make of it), a page at a time with "Show more", the search of
// titles, and the open conversation kept in view. What the list holds comes from chat.js.

import { el, formatTime, setChildren } from "./util.js";

const LIST_PAGE = 200; // conversations shown at first, and added by each "Show more"
const SEARCH_FROM = 8; // conversations listed before the search field shows

/** Text as a search compares it: case, accents and runs of spaces do not count. */
function searchText(text) {
  return String(text).normalize("NFKD").replace(/\p{M}/gu, "").toLocaleLowerCase().replace(/\s+/g, " ").trim();
}

/**
 * What the list shows, read afresh at each render:
 * @typedef {{
 *   conversations: import("./conversation-model.js").ConversationList,
 *   pending: {conversations: object[], activity: {id: string, timestamp: number}[], deleted: string[]},
 *   deleted: Set<string>,
 *   openId: string | null,
 *   loaded: boolean,
 * }} ListState
 *   `pending`: what this tab's messages will make of the list (see `pendingState` in chat.js);
 *   `deleted`: deleted here, or found deleted before the list said so; `loaded`: the list has
 *   been read (until then, "No conversations yet" would be premature).
 */

/** The list in the order shown, most recently active first, with what our own pending
 * messages will make of it: unlisted starts, then conversations with pending activity, then
 * the rest. Lazily: a list may hold hundreds of thousands. */
function* listOrder({ conversations, pending }, hidden) {
  const seen = new Set();
  for (let i = pending.conversations.length - 1; i >= 0; i--) {
    const start = pending.conversations[i];
    if (conversations.has(start.id) || seen.has(start.id)) continue;
    seen.add(start.id);
    yield { id: start.id, title: start.title, timestamp: start.timestamp, pending: start.pending };
  }
  for (let i = pending.activity.length - 1; i >= 0; i--) {
    const { id, timestamp } = pending.activity[i];
    if (seen.has(id) || hidden.has(id) || !conversations.has(id)) continue;
    seen.add(id);
    yield { ...conversations.entry(id), activeAt: timestamp }; // as the list will have it
  }
  for (const c of conversations.recent()) {
    if (!seen.has(c.id) && !hidden.has(c.id)) yield c;
  }
}

/** The first `limit` conversations of the list as shown, the one `openId` names if it is
 * listed further down, and how many the list holds; only those whose title `matches`, if
 * given.
 * @param {ListState} state */
export function listedConversations(state, limit, openId = null, matches = null) {
  const { conversations, pending, deleted } = state;
  const titles = new Map(pending.conversations.map((c) => [c.id, c.title])); // the latest wins
  const titled = (c) => ({ ...c, title: titles.get(c.id) ?? c.title });
  const hidden = new Set([...pending.deleted, ...deleted].filter((id) => conversations.has(id)));
  const shown = [];
  if (matches) {
    let total = 0;
    for (const c of listOrder(state, hidden)) {
      const entry = titled(c);
      if (!matches(entry.title)) continue;
      total += 1;
      if (shown.length < limit) shown.push(entry);
    }
    return { shown, open: null, total };
  }
  if (limit > 0) {
    for (const c of listOrder(state, hidden)) {
      shown.push(titled(c));
      if (shown.length >= limit) break;
    }
  }
  const listed = (id) => conversations.has(id) && !hidden.has(id);
  const open = openId !== null && listed(openId) && !shown.some((c) => c.id === openId)
    ? titled(conversations.entry(openId)) : null;
  const starts = new Set(pending.conversations.map((c) => c.id).filter((id) => !conversations.has(id)));
  return { shown, open, total: starts.size + conversations.size - hidden.size };
}

export class ConversationSidebar {
  /**
   * @param {{list: HTMLElement, search: HTMLInputElement, empty: HTMLElement,
   *   state: () => ListState, onOpen: (id: string) => void}} options
   *   `onOpen`: a plain click on a conversation (the others open its link as a browser does)
   */
  constructor({ list, search, empty, state, onOpen }) {
    Object.assign(this, { list, search, empty, state, onOpen });
    this.shownCount = LIST_PAGE;
    this.revealed = null; // the conversation last scrolled to: the user's scrolling wins after
    search.addEventListener("input", () => this.#searchAgain());
    search.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || event.isComposing || !search.value) return;
      event.preventDefault(); // clears the search, and stops no answer
      search.value = "";
      this.#searchAgain();
    });
  }

  /** The first `limit` conversations as the list shows them (see `listedConversations`). */
  first(limit) {
    return listedConversations(this.state(), limit).shown;
  }

  render() {
    const state = this.state();
    const focusedId = document.activeElement?.closest?.("[data-conversation-id]")?.dataset.conversationId;
    // The open conversation is listed however far down it is (a deep link to an old one):
    // after the page of recent ones, until "Show more" reaches it.
    const query = searchText(this.search.value);
    const matches = query ? (title) => searchText(title).includes(query) : null;
    const { shown: listed, open, total } = listedConversations(state, this.shownCount, state.openId, matches);
    if (open) listed.push(open);
    const items = listed.map((c) => el("li", {}, this.#link(c, state.openId === c.id)));
    const hidden = total - listed.length;
    if (hidden > 0) {
      items.push(el("li", {}, el("button", {
        type: "button",
        class: "conversation-list-more",
        dataset: { testid: "conversation-list-more" },
        onclick: () => {
          this.shownCount += LIST_PAGE;
          this.render();
          this.list.querySelectorAll("[data-conversation-id]")[this.shownCount - LIST_PAGE]?.focus();
        },
      }, `Show ${Math.min(hidden, LIST_PAGE).toLocaleString("en-US")} more (${hidden.toLocaleString("en-US")} not shown)`)));
    }
    setChildren(this.list, items);
    if (focusedId) this.list.querySelector(`[data-conversation-id="${CSS.escape(focusedId)}"]`)?.focus();
    const everything = matches ? listedConversations(state, 0).total : total;
    // Offered once the list is long enough to look through, and kept while it holds a query.
    this.search.hidden = everything < SEARCH_FROM && !query;
    this.empty.textContent = query ? `No conversation title holds “${this.search.value.trim()}”.` : "No conversations yet.";
    this.empty.hidden = total > 0 || !state.loaded;
    this.#reveal(state.openId);
  }

  #link(c, active) {
    // A link, so that it opens in a new tab too (Ctrl+click, middle click, the menu).
    return el("a", {
      href: `#/c/${c.id}`,
      class: "conversation-item",
      dataset: { testid: "conversation-item", conversationId: c.id },
      "aria-current": active ? "page" : null,
      onclick: (event) => {
        if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
        event.preventDefault();
        this.onOpen(c.id);
      },
    }, el("span", { class: "conversation-item-title", dir: "auto", title: c.title }, c.title), el("span", { class: "conversation-item-time" }, c.pending ? "sending…" : formatTime(c.activeAt || c.timestamp)));
  }

  #searchAgain() {
    this.shownCount = LIST_PAGE;
    this.render();
  }

  /** Scroll the list (only the list: the sidebar may be an off-screen drawer) to the open
   * conversation once, when it is opened or first appears in the list (a deep link). */
  #reveal(openId) {
    if (openId === null || this.revealed === openId) return;
    const item = this.list.querySelector('[aria-current="page"]');
    const box = this.list.closest(".conversation-scroll");
    if (!item || !box) return;
    this.revealed = openId;
    const top = item.getBoundingClientRect().top - box.getBoundingClientRect().top + box.scrollTop;
    if (top < box.scrollTop || top + item.offsetHeight > box.scrollTop + box.clientHeight) {
      box.scrollTop = Math.max(0, top - box.clientHeight / 3);
    }
  }
}
