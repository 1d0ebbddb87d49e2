// The stream inspector: open any stream by path on any Durable Streams server, see its
// metadata, content (JSON, text or hex), follow it live from any offset, append to it, and
// look at subscriptions. The protocol has no listing, so paths come from the user, from the
// recently opened list, from the `conversations` stream and, where the server keeps one,
// from a `__registry__` stream. Servers that offer the read-only listing extensions under the
// reserved prefix (`__ds/streams`, `__ds/subscriptions`, as this project's server does) also
// get a filterable list of every stream and every subscription; each is probed once at load
// and left out silently where the server does not answer it (the Node reference server).

import { config } from "./config.js";
import { StreamsClient, bodyKind, HttpError } from "./streams.js";
import { StreamHub } from "./hub.js";
import { ConversationList } from "./conversation-model.js";
import { CONVERSATIONS_PATH, promptsPath, responsesPath, subscriptionId } from "./chat-protocol.js";
import { ConnectionStatus } from "./status.js";
import { asText } from "./format.js";
import { EntryView } from "./inspector-entries.js";
import { renderSubscription } from "./subscription-view.js";
import { el, frameThrottle, setChildren, wireSkipLink } from "./util.js";

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
const client = new StreamsClient({ baseUrl: config.streamsUrl, token: config.authToken, silenceMs: config.silenceMs, queuedMs: config.queuedMs });
const hub = new StreamHub(client);
const status = new ConnectionStatus({ pill: $("connection-pill"), banner: $("connection-banner") });

const RECENT_KEY = "inspector:recent";
const LIST_LIMIT = 500; // streams or subscriptions listed at most; the filter narrows them

const state = {
  path: null,
  meta: null,
  pages: [], // [{from, to, messages?, bytes?, live?}]
  follow: null, // AbortController of the live read
  followedTo: null, // the offset the live read had reached (null: none delivered yet)
  readOn: null, // where a read stopped after 8 MiB, to read on from
  byteBase: 0, // the byte the pages start at, as far as this page knows (hex addresses)
  readFailed: false, // the last read failed (what the pages showed is cleared)
  read: null, // AbortController of the catch-up read on its way
};

// --------------------------------------------------------------------------------- paths

function normalizePath(input) {
  let path = String(input).trim();
  if (path.startsWith(config.streamsUrl)) path = path.slice(config.streamsUrl.length);
  try {
    const url = new URL(path);
    const root = new URL(config.streamsUrl);
    if (url.origin === root.origin && url.pathname.startsWith(root.pathname)) path = url.pathname.slice(root.pathname.length);
  } catch {
    /* not an absolute URL */
  }
  return decodeOrRaw(path.split("?")[0]).replace(/^\/+|\/+$/g, "");
}

/** The `offset` of a typed or pasted stream URL (`...?offset=now&live=sse`), or null. */
function offsetIn(input) {
  const query = String(input).split("?")[1];
  return query ? new URLSearchParams(query.split("#")[0]).get("offset") : null;
}

/** Percent-decoded text, or the text as typed when it is not valid percent-encoding ("x/%zz"). */
function decodeOrRaw(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function recentPaths() {
  try {
    const list = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
    return Array.isArray(list) ? list.filter((p) => typeof p === "string") : [];
  } catch {
    return [];
  }
}

function remember(path) {
  const list = [path, ...recentPaths().filter((p) => p !== path)].slice(0, 12);
  localStorage.setItem(RECENT_KEY, JSON.stringify(list));
  renderRecent();
}

function pathButton(path, label) {
  return el("li", {}, el("button", {
    type: "button",
    class: "path-button",
    title: path,
    dataset: { path, testid: "path-shortcut" },
    "aria-current": state.path === path ? "true" : null,
    onclick: () => open(path, { reveal: true }),
  }, label ?? path));
}

function renderRecent() {
  $("recent-paths").replaceChildren(...recentPaths().map((p) => pathButton(p)));
}

function markCurrent() {
  for (const b of document.querySelectorAll(".path-button, .path-chip, .list-item[data-path]")) {
    if (b.dataset.path) b.setAttribute("aria-current", String(b.dataset.path === state.path));
  }
}

// ------------------------------------------------------------------------------ shortcuts

const conversations = new ConversationList();

function renderShortcuts() {
  const items = [pathButton(CONVERSATIONS_PATH)];
  let shown = 0;
  for (const c of conversations.recent()) {
    if (shown++ === LIST_LIMIT) break;
    const chip = (label, path) => el("button", {
      type: "button",
      class: "path-chip",
      title: path,
      dataset: { path, testid: "path-shortcut" },
      "aria-current": state.path === path ? "true" : null,
      "aria-label": `${c.title}: ${label}`,
      onclick: () => open(path, { reveal: true }),
    }, label);
    const sub = subscriptionId(c.id);
    items.push(el("li", { class: "path-group" },
      el("span", { class: "path-group-title", title: `${c.title} (${c.id})` }, c.title),
      el("span", { class: "path-group-links" },
        chip("prompts", promptsPath(c.id)),
        chip("responses", responsesPath(c.id)),
        el("button", {
          type: "button",
          class: "path-chip",
          title: `Subscription ${sub}`,
          "aria-label": `${c.title}: subscription`,
          dataset: { testid: "subscription-shortcut" },
          onclick: () => {
            $("subscription-id").value = sub;
            $("subscription-form").requestSubmit();
            $("subscription-card").scrollIntoView({ block: "nearest" });
          },
        }, "subscription"))));
  }
  if (conversations.size > LIST_LIMIT) {
    items.push(el("li", { class: "hint", dataset: { testid: "conversation-shortcuts-more" } },
      `The ${LIST_LIMIT} most recent of ${conversations.size.toLocaleString("en-US")} conversations; open another by its path above.`));
  }
  setChildren($("conversation-shortcuts"), items);
}

function followConversations() {
  hub.follow(CONVERSATIONS_PATH, {
    onBatch(batch) {
      if (conversations.apply(batch.messages ?? [])) renderShortcuts();
    },
    onStatus(s) {
      status.setStream("conversations", s.state === "missing" ? { state: "live" } : s);
    },
  });
}

/** Servers that keep a `__registry__` stream of stream lifecycle events get a full list. */
async function loadRegistry() {
  const result = $("registry-result");
  result.textContent = "Looking…";
  try {
    const head = await client.head("__registry__");
    if (!head.exists || bodyKind(head.contentType) !== "json") {
      result.textContent = "This server keeps no __registry__ stream.";
      return;
    }
    const { pages } = await client.readAll("__registry__", "-1");
    const paths = new Map();
    for (const page of pages) {
      for (const event of JSON.parse(new TextDecoder().decode(page.bytes) || "[]")) {
        const path = event?.value?.path ?? event?.key;
        if (typeof path !== "string") continue;
        if (event?.headers?.operation === "delete") paths.delete(path);
        else paths.set(path, event?.value?.contentType ?? "");
      }
    }
    setChildren($("registry-list"), [...paths.keys()].sort().map((p) => pathButton(p)));
    $("registry-list").hidden = false;
    result.textContent = `${paths.size} stream${paths.size === 1 ? "" : "s"} in __registry__.`;
  } catch (err) {
    result.textContent = `Could not read it: ${err.message || err}`;
  }
}

// ------------------------------------------------------------------------------ listings

const listing = {
  streams: null, // the last stream listing; null while the server has not offered one
  streamsTotal: 0, // how many streams the server holds (it may list only the first ones)
  subscriptions: null, // likewise for subscriptions
  selected: null, // id of the subscription shown below the list
  streamsListedAt: "",
  streamsSeq: 0,
  subscriptionsSeq: 0,
};

// The server lists a page at a time: a filter that may be the start of a path is also asked
// of the server (its listing takes a path prefix), for the streams past the page.
const serverSearch = { term: "", streams: [], seq: 0, timer: 0 };

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const clock = () => new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/**
 * Fetch the stream listing. The first call (`probe`) finds out whether the server offers it: any
 * failure then leaves the page as it is without a word. Later calls (refresh) report failures
 * and keep the last list.
 */
async function loadStreams({ probe = false } = {}) {
  if (!probe && listing.streams === null) return;
  const seq = ++listing.streamsSeq;
  const result = $("stream-list-result");
  if (!probe) result.textContent = "Refreshing…";
  let streams, total;
  try {
    ({ streams, total } = await client.listStreams());
  } catch (err) {
    if (!probe && seq === listing.streamsSeq) result.textContent = `Could not refresh the list: ${err.message || err}`;
    return;
  }
  if (seq !== listing.streamsSeq) return;
  listing.streams = streams;
  listing.streamsTotal = total;
  listing.streamsListedAt = clock();
  $("stream-listing").hidden = false;
  $("streams-refresh").hidden = false;
  $("registry-section").hidden = true;
  serverSearch.term = ""; // asked again of the refreshed server
  renderStreamList();
  searchServer();
  renderListedMeta();
}

/** The filter as one path prefix to ask the server, where the listing is only its first
 * page; "" otherwise. */
function serverSearchTerm() {
  const term = $("stream-filter").value.trim();
  const partial = listing.streams && listing.streams.length < listing.streamsTotal;
  return partial && term && !/\s/.test(term) ? term : "";
}

/** Ask the server for the streams whose path starts with the filter (debounced). */
function searchServer() {
  clearTimeout(serverSearch.timer);
  const term = serverSearchTerm();
  if (!term || term === serverSearch.term) return;
  serverSearch.timer = setTimeout(async () => {
    const seq = ++serverSearch.seq;
    let streams;
    try {
      ({ streams } = await client.listStreams({ prefix: term }));
    } catch {
      return; // the listed page is still filtered
    }
    if (seq !== serverSearch.seq) return;
    serverSearch.term = term;
    serverSearch.streams = streams;
    renderStreamList();
  }, 250);
}

/** The listed streams the filter matches, and those the server found past the listed page
 * for it (`extra`, in path order after them). */
function matchingStreams() {
  const terms = $("stream-filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  if (!terms.length) return { listed: listing.streams, extra: [] };
  const listed = listing.streams.filter((s) => {
    const haystack = [s.path, s.content_type, s.forked_from].filter((v) => typeof v === "string").join("\n").toLowerCase();
    return terms.every((t) => haystack.includes(t));
  });
  const term = serverSearchTerm();
  if (!term || term !== serverSearch.term) return { listed, extra: [] };
  const have = new Set(listed.map((s) => s.path));
  return { listed, extra: serverSearch.streams.filter((s) => !have.has(s.path)) };
}

function renderStreamList() {
  if (!listing.streams) return;
  const { listed, extra } = matchingStreams();
  const shown = extra.length ? [...listed, ...extra] : listed;
  setChildren($("stream-list"), shown.slice(0, LIST_LIMIT).map(streamItem));
  rovingTabStop($("stream-list"));
  const fetched = listing.streams.length;
  let text = plural(listing.streamsTotal, "stream");
  // The server lists a page at a time: the filter looks at the page, and the path box opens any.
  if (fetched < listing.streamsTotal) text += `, the first ${fetched} by path listed (open others by their path)`;
  if (listed !== listing.streams) text = `${listed.length} of the ${fetched} listed match · ${text}`;
  if (extra.length) text += ` · ${extra.length} more on the server ${extra.length === 1 ? "starts" : "start"} with "${serverSearch.term}"`;
  if (shown.length > LIST_LIMIT) text += ` · the first ${LIST_LIMIT} are shown, filter to narrow`;
  $("stream-list-result").textContent = `${text} · listed at ${listing.streamsListedAt}`;
}

function fact(label, value, { code = false, title } = {}) {
  if (value === undefined || value === null || value === "") return null;
  return el("span", { class: "fact", title },
    label ? el("span", { class: "fact-label" }, `${label} `) : null,
    code ? el("code", {}, String(value)) : String(value));
}

function streamItem(s) {
  return el("li", {}, el("button", {
    type: "button",
    class: "list-item",
    title: s.path,
    dataset: { testid: "stream-list-item", path: s.path },
    "aria-current": state.path === s.path ? "true" : null,
    onclick: () => open(s.path, { reveal: true }),
  },
  el("span", { class: "list-item-title" }, s.path),
  el("span", { class: "list-item-facts" },
    fact("", s.content_type || "no content type"),
    s.closed ? badge("closed", "warn") : null,
    typeof s.ttl_seconds === "number" ? fact("TTL", `${s.ttl_seconds} s`) : null,
    s.expires_at ? fact("expires", relative(s.expires_at), { title: s.expires_at }) : null),
  el("span", { class: "list-item-facts" }, fact("tail", s.next_offset ?? "—", { code: true })),
  s.forked_from ? el("span", { class: "list-item-facts" }, fact("fork of", s.forked_from, { code: true })) : null));
}

/** Fetch the subscription listing; `probe` as for streams. */
async function loadSubscriptions({ probe = false } = {}) {
  if (!probe && listing.subscriptions === null) return;
  const seq = ++listing.subscriptionsSeq;
  const result = $("subscription-list-result");
  if (!probe) result.textContent = "Refreshing…";
  let subscriptions, total;
  try {
    ({ subscriptions, total } = await client.listSubscriptions());
  } catch (err) {
    if (!probe && seq === listing.subscriptionsSeq) result.textContent = `Could not refresh the list: ${err.message || err}`;
    return;
  }
  if (seq !== listing.subscriptionsSeq) return;
  listing.subscriptions = subscriptions.sort((a, b) => subscriptionKey(a).localeCompare(subscriptionKey(b)));
  $("subscription-listing").hidden = false;
  $("subscriptions-refresh").hidden = false;
  const list = listing.subscriptions;
  setChildren($("subscription-list"), list.slice(0, LIST_LIMIT).map(subscriptionItem));
  rovingTabStop($("subscription-list"));
  let text = total ? plural(total, "subscription") : "No subscriptions on this server";
  if (Math.min(list.length, LIST_LIMIT) < total) text += ` · the first ${Math.min(list.length, LIST_LIMIT)} by id are shown; open others by their id`;
  result.textContent = `${text} · listed at ${clock()}`;
}

function subscriptionKey(sub) {
  return String(sub.id ?? sub.subscription_id);
}

function subscriptionItem(sub) {
  const id = subscriptionKey(sub);
  const streams = Array.isArray(sub.streams) ? sub.streams.filter((s) => s && typeof s.path === "string") : [];
  const shownStreams = streams.slice(0, 8);
  return el("li", {}, el("button", {
    type: "button",
    class: "list-item sub-item",
    dataset: { testid: "subscription-list-item", subscriptionId: id },
    "aria-current": listing.selected === id ? "true" : null,
    onclick: () => {
      $("subscription-id").value = id;
      showSubscriptionById(id, { reveal: true });
    },
  },
  el("span", { class: "list-item-head" },
    el("span", { class: "list-item-title" }, id),
    sub.type ? badge(String(sub.type)) : null,
    sub.status ? badge(String(sub.status), sub.status === "active" ? "ok" : "error") : null),
  el("span", { class: "list-item-facts" },
    fact("pattern", sub.pattern, { code: true }),
    fact("wake stream", sub.wake_stream, { code: true }),
    fact("webhook", sub.webhook?.url, { code: true }),
    fact("generation", sub.generation),
    fact("holder", sub.holder, { code: true }),
    sub.lease_expires_at ? fact("lease expires", relative(sub.lease_expires_at), { title: sub.lease_expires_at }) : null,
    sub.next_attempt_at ? fact("next attempt", relative(sub.next_attempt_at), { title: sub.next_attempt_at }) : null),
  streams.length
    ? el("span", { class: "sub-streams" },
      ...shownStreams.map((s) => el("span", { class: "sub-stream" },
        el("code", { class: "sub-stream-path" }, s.path),
        fact("acked", s.acked_offset ?? "—", { code: true }))),
      streams.length > shownStreams.length ? el("span", { class: "fact-label" }, `and ${streams.length - shownStreams.length} more`) : null)
    : el("span", { class: "list-item-facts" }, el("span", { class: "fact-label" }, sub.pattern ? "no stream matches yet" : "no linked streams")),
  sub.last_error ? el("span", { class: "sub-error" }, `Last error: ${sub.last_error}`) : null));
}

function markSelectedSubscription() {
  for (const item of document.querySelectorAll('[data-testid="subscription-list-item"]')) {
    item.setAttribute("aria-current", String(item.dataset.subscriptionId === listing.selected));
  }
}

/** A list is one Tab stop (each of up to 500 items was one): `stop`, else the item marked
 * current, else the first. The arrows move between the items. */
function rovingTabStop(list, stop = null) {
  const items = [...list.querySelectorAll("button.list-item")];
  stop ??= items.find((b) => b.getAttribute("aria-current") === "true") ?? items[0];
  for (const b of items) b.tabIndex = b === stop ? 0 : -1;
}

/** Tab leads back to the item last focused in a list. */
function keepTabStop(event) {
  const item = event.target.closest("button.list-item");
  if (item) rovingTabStop(event.currentTarget, item);
}

/** Up and down arrows move between the items of a list, Home and End to its first and last
 * (Tab still leaves it). */
function arrowKeys(event) {
  const step = { ArrowDown: 1, ArrowUp: -1, Home: -Infinity, End: Infinity }[event.key];
  if (step === undefined) return;
  const items = [...event.currentTarget.querySelectorAll("button.list-item")];
  const at = items.indexOf(document.activeElement);
  if (at < 0) return;
  event.preventDefault();
  items[Math.max(0, Math.min(items.length - 1, at + step))].focus();
}

// ------------------------------------------------------------------------------- opening

/** Show the stream at `path`. `reveal`: bring its title to the top of the screen (picked
 * from a list above it, on a phone, the stream showed a screen or more further down).
 * `typed`: the path is as a person typed or pasted it (maybe a URL, percent-encoded, with
 * an offset); else it is a stream's exact path, which may hold "%" or "?" itself (decoded
 * again, "t/x%41" opened the stream "t/xA"). */
async function open(path, { reveal = false, typed = false } = {}) {
  const offset = typed ? offsetIn(path) : null;
  if (typed) path = normalizePath(path);
  if (!path) return;
  // A URL's offset is where to read from; another stream is read from its beginning (an
  // offset of one stream, carried over, skipped entries of the next or showed it empty).
  if (offset) $("read-offset").value = offset;
  else if (path !== state.path) $("read-offset").value = "";
  stopFollowing();
  if (path !== state.path) {
    // What was said about another stream's reads and writes is not about this one.
    followStateKind = null;
    for (const id of ["follow-state", "follow-announcer", "append-result", "create-result"]) {
      $(id).textContent = "";
      $(id).className = $(id).className.replace(/\s*\b(ok|error)\b/g, "");
    }
  }
  state.path = path;
  supersedeRead();
  state.pages = [];
  state.readFailed = false;
  state.byteBase = 0;
  setReadOn(null);
  sayInMeta("");
  $("inspector-path").value = path;
  $("inspector-title").textContent = path;
  document.title = `${path} · Stream inspector`;
  history.replaceState(null, "", `#path=${encodeURIComponent(path)}`);
  $("inspector-empty").hidden = true;
  $("subscription-view").replaceChildren();
  listing.selected = null;
  markSelectedSubscription();
  markCurrent();
  renderContent();
  await refreshMeta();
  if (reveal && state.path === path) revealTitle(); // now that its cards make the page long enough
  if (state.path === path && state.meta?.exists) {
    remember(path);
    if (listing.streams && !listing.streams.some((s) => s.path === path)) loadStreams(); // newer than the list
    // Followed meanwhile (its button is there while the metadata loads): the live read shows it.
    if (!state.follow) await readFrom($("read-offset").value.trim() || "-1");
  }
  markCurrent();
}

function revealTitle() {
  const title = $("inspector-title");
  const top = title.getBoundingClientRect().top;
  // Low on the screen, the title shows while what it opened does not.
  if (top < 0 || top > window.innerHeight / 3) title.scrollIntoView({ block: "start" });
}

function hasDotSegments(path) {
  return path.split("/").some((segment) => segment === "." || segment === "..");
}

async function refreshMeta() {
  const path = state.path;
  let meta;
  try {
    if (hasDotSegments(path)) {
      // The browser would resolve them away and ask for another URL, maybe not a stream's.
      throw new Error("A stream path has no . or .. segments (the server refuses to create one)");
    }
    meta = await client.head(path);
  } catch (err) {
    meta = { exists: false, status: err instanceof HttpError ? err.status : 0, error: String(err.message || err) };
  }
  if (path !== state.path) return;
  const before = state.meta;
  state.meta = meta;
  renderMeta();
  if (meta.exists) sayInMeta("");
  else if (meta.status === 404 && listing.streams?.some((s) => s.path === path)) loadStreams(); // listed, now gone
  // Deleted and made again since it was read (seen missing, another type, a shorter tail):
  // what the content shows was another stream's, under a "200 OK" for the new one.
  const shownTo = state.pages.at(-1)?.to;
  if (meta.exists && shownTo && !state.follow && before
      && (!before.exists || meta.contentType !== before.contentType || meta.nextOffset < shownTo)) {
    await readFrom("-1");
  }
}

/** A HEAD answer has no body to give the server's reason: the usual ones, by status. */
const HEAD_REASONS = {
  400: "the server refused this path",
  401: "the server wants a token this page does not have",
  403: "the server refused access to this stream",
  414: "the path is longer than this server allows",
};

function withReason(error, status) {
  return error === `HTTP ${status}` && HEAD_REASONS[status] ? `${error}: ${HEAD_REASONS[status]}` : error;
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind ? `badge-${kind}` : ""}` }, text);
}

function renderMeta() {
  const m = state.meta;
  $("meta-card").hidden = false;
  // As typed: resolved, a path with dot segments would name a URL outside the streams.
  $("meta-url").textContent = hasDotSegments(state.path) ? `${client.baseUrl}/${state.path}` : client.url(state.path);
  const statusCell = $("meta-status");
  if (m.exists) statusCell.replaceChildren(badge(`${m.status} OK`, "ok"));
  else if (m.status === 404) statusCell.replaceChildren(badge("404 Not found", "warn"));
  else if (m.status === 410) statusCell.replaceChildren(badge("410 Gone", "error"));
  else statusCell.replaceChildren(badge(withReason(m.error ?? `HTTP ${m.status}`, m.status), "error"));
  $("meta-content-type").textContent = m.contentType ?? "—";
  $("meta-tail-offset").textContent = m.nextOffset ?? "—";
  $("meta-closed").replaceChildren(m.exists ? (m.closed ? badge("closed", "warn") : badge("open", "ok")) : "—");
  $("meta-ttl").textContent = m.ttl ? `${m.ttl} s (sliding)` : m.exists ? "none" : "—";
  $("meta-expires").textContent = m.expiresAt ? `${m.expiresAt} (${relative(m.expiresAt)})` : m.exists ? "none" : "—";
  $("content-card").hidden = !m.exists;
  $("append-card").hidden = !m.exists;
  $("create-card").hidden = m.exists || m.status !== 404;
  $("append-close").disabled = !!m.closed;
  $("append-button").disabled = !!m.closed;
  $("append-input").disabled = !!m.closed;
  $("append-input").placeholder = m.closed
    ? "This stream is closed: nothing more can be appended to it."
    : bodyKind(m.contentType) === "json" ? '{"type":"note","text":"hello"}  (a JSON array appends several messages)' : "text to append";
  renderListedMeta();
}

/** Show or hide a `<dd>` of the metadata together with its `<dt>`. */
function showRow(dd, shown) {
  dd.hidden = !shown;
  dd.previousElementSibling.hidden = !shown;
}

/** What only the stream listing knows about the open stream: when it was created, its source. */
function renderListedMeta() {
  const listed = state.meta?.exists ? listing.streams?.find((s) => s.path === state.path) : null;
  showRow($("meta-created"), !!listed?.created_at);
  $("meta-created").textContent = listed?.created_at ?? "";
  showRow($("meta-forked-from"), !!listed?.forked_from);
  $("meta-forked-from").replaceChildren(listed?.forked_from ? el("button", {
    type: "button",
    class: "path-button",
    title: `Open ${listed.forked_from}`,
    dataset: { path: listed.forked_from },
    onclick: () => open(listed.forked_from, { reveal: true }),
  }, listed.forked_from) : "");
}

function relative(iso) {
  const ms = Date.parse(iso) - Date.now();
  if (!Number.isFinite(ms)) return "invalid date";
  const seconds = Math.round(Math.abs(ms) / 1000);
  const span = seconds < 90 ? `${seconds} s`
    : seconds < 90 * 60 ? `${Math.round(seconds / 60)} min`
      : seconds < 48 * 3600 ? `${Math.round(seconds / 3600)} h`
        : `${Math.round(seconds / 86400)} d`;
  return ms >= 0 ? `in ${span}` : `${span} ago`;
}

// ------------------------------------------------------------------------------- content

/** Read from `offset` up to the tail, or 8 MiB of it: the "Read the next 8 MiB" button then
 * reads on from where that stopped, in place of what it shows. `byteBase`: the byte of the
 * stream `offset` is at, if known (where a hex dump's addresses start). */
async function readFrom(offset, { byteBase = 0 } = {}) {
  const kind = bodyKind(state.meta?.contentType);
  const read = supersedeRead(new AbortController());
  setReadOn(null);
  state.readFailed = false;
  sayFollowState("Reading…");
  try {
    const { pages, nextOffset, closed, truncated } = await client.readAll(state.path, offset, { signal: read.signal });
    if (read !== state.read) return;
    state.pages = pages.map((p) => decodePage(kind, p));
    state.byteBase = byteBase;
    renderContent();
    const bytesRead = pages.reduce((sum, p) => sum + p.bytes.length, 0);
    sayFollowState(`Read up to offset ${nextOffset}${closed ? " · stream closed (EOF)" : ""}${truncated ? ` · stopped after ${mib(bytesRead)}` : ""}`);
    if (truncated && !state.follow) setReadOn(nextOffset);
  } catch (err) {
    if (read !== state.read) return;
    // What an earlier read showed would pass for what this one asked for.
    state.pages = [];
    state.readFailed = true;
    renderContent();
    sayFollowState(`Read failed: ${err.message || err}`);
  }
}

/** Stop the catch-up read on its way, if any: what it would show is not wanted any more
 * (another stream, a read from elsewhere, or a live read now fills the view). */
function supersedeRead(next = null) {
  state.read?.abort();
  state.read = next;
  return next;
}

function setReadOn(offset) {
  state.readOn = offset;
  $("read-on").hidden = offset === null;
}

function readOn() {
  const offset = state.readOn;
  if (offset === null) return;
  $("read-offset").value = offset; // where what is shown begins
  readFrom(offset, { byteBase: entries.byteBase }); // a hex dump's addresses go on
}

function mib(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

function decodePage(kind, page) {
  if (kind === "json") {
    try {
      const text = new TextDecoder().decode(page.bytes).trim();
      return { from: page.from, to: page.nextOffset, messages: text ? JSON.parse(text) : [] };
    } catch {
      return { from: page.from, to: page.nextOffset, bytes: page.bytes };
    }
  }
  return { from: page.from, to: page.nextOffset, bytes: page.bytes };
}

function viewMode() {
  const chosen = $("read-view").value;
  if (chosen !== "auto") return chosen;
  const kind = bodyKind(state.meta?.contentType);
  if (kind === "json") return "json";
  if (kind === "text") return "text";
  const sample = state.pages.find((p) => p.bytes?.length)?.bytes;
  return sample && asText(sample.subarray(0, 4096), { cut: sample.length > 4096 }) !== null ? "text" : "hex";
}

const entries = new EntryView({
  view: $("content-view"),
  summary: $("content-summary"),
  placeholderText: () => placeholderText(),
  onSave: (page) => saveBytes(page),
});

/** Show `state.pages` afresh (another stream, read or view). */
function renderContent() {
  entries.showAll(state.pages, { mode: viewMode(), byteBase: state.byteBase, stick: Boolean(state.follow) });
}

/** Add the pages a live read delivered since the view was last drawn: once a frame. */
const renderNewPages = frameThrottle(() => {
  if (!entries.showNew(state.pages, viewMode())) renderContent();
});

/** What the content view says while it shows no entry. */
function placeholderText() {
  const from = state.pages[0]?.from;
  if (from === undefined) {
    if (state.readFailed) return "Nothing to show: the read failed.";
    return state.follow ? "Nothing appended since following began." : "Nothing read yet.";
  }
  return from === "-1" ? "The stream is empty." : `No entries from offset ${from}.`;
}

/** Download an entry's bytes as a file. */
function saveBytes(page) {
  const url = URL.createObjectURL(new Blob([page.bytes], { type: "application/octet-stream" }));
  const extension = { json: "json", text: "txt" }[bodyKind(state.meta?.contentType)] ?? "bin";
  const name = `${state.path.split("/").pop() || "stream"}-${page.from}.${extension}`;
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---------------------------------------------------------------------------------- live

function startFollowing() {
  const path = state.path;
  // From the offset typed, else on from what the last read showed (from the start, it read
  // the whole stream again: 50 MB held the page for 16 s), else from the start.
  const typed = $("read-offset").value.trim();
  const after = !typed && state.pages.length ? state.pages.at(-1).to : null;
  const offset = typed || after || "-1";
  const abort = new AbortController();
  state.follow = abort;
  state.followedTo = after; // where what is shown ends (null: nothing read yet)
  supersedeRead();
  setReadOn(null);
  state.readFailed = false;
  if (after === null) {
    state.pages = [];
    state.byteBase = 0;
  }
  renderContent();
  setFollowButton(true);
  client.live(path, {
    offset,
    contentType: state.meta?.contentType ?? "application/octet-stream",
    signal: abort.signal,
    onBatch(batch) {
      if (state.follow !== abort) return;
      const page = { from: batch.from, to: batch.to, live: true };
      if (batch.messages) page.messages = batch.messages;
      else page.bytes = batch.bytes ?? new TextEncoder().encode(batch.text ?? "");
      if ((page.messages?.length ?? page.bytes.length) > 0 || batch.closed) state.pages.push(page);
      state.followedTo = batch.to;
      sayFollowing(batch.to, batch.upToDate, batch.closed);
      $("meta-tail-offset").textContent = batch.to;
      renderNewPages();
    },
    onStatus(s) {
      if (state.follow !== abort) return;
      status.setStream("inspected", s);
      // Followed from the tail, the first answer may hold no batch: it says so all the same.
      if (s.state === "live") sayFollowing(state.followedTo ?? offset, s.upToDate, false);
      if (s.state === "reconnecting") sayFollowState(`Connection lost, reconnecting (attempt ${s.attempt})…`, "reconnecting");
      if (s.state === "error") {
        stopFollowing(true, `Live read refused: ${s.error?.message ?? s.error}`);
        sayInMeta(`Following stopped: the live read was refused (${s.error?.message ?? s.error}).`);
        refreshMeta(); // e.g. 410: deleted, kept for its forks
      }
      // The stream was there when following began: gone now, it was deleted (or expired).
      if (s.state === "missing") {
        stopFollowing(true, "Stopped following: the stream no longer exists (404), it was deleted or expired.");
        sayInMeta("Following stopped: the stream was deleted (or expired) while it was followed.");
        refreshMeta();
      }
      if (s.state === "closed") {
        stopFollowing(false, `Stream closed (EOF)${atOffset()}: nothing more will be appended.`);
        refreshMeta(); // closed by another client: the metadata says so too
      }
    },
  }).finally(() => {
    if (state.follow === abort) stopFollowing(false);
  });
}

/** End the live read (`abort` it, unless it ended by itself), saying why in the status line
 * (by default: the reader stopped it). */
function stopFollowing(abort = true, why = null) {
  if (!state.follow) return;
  if (abort) state.follow.abort();
  state.follow = null;
  status.removeStream("inspected");
  setFollowButton(false);
  sayFollowState(why ?? `Stopped following${atOffset()}.`);
}

let followStateKind = null;

/** Set the status line of reads and live reads. What it says is announced to a screen reader
 * only when its `kind` changes: a followed stream rewrites it at every batch. */
function sayFollowState(text, kind = text) {
  $("follow-state").textContent = text;
  if (kind === followStateKind) return;
  followStateKind = kind;
  $("follow-announcer").textContent = text;
}

function sayFollowing(offset, upToDate, closed) {
  const kind = `following${upToDate ? " up to date" : ""}${closed ? " closed" : ""}`;
  sayFollowState(`Following live · offset ${offset}${upToDate ? " · up to date" : ""}${closed ? " · stream closed (EOF)" : ""}`, kind);
}

/** A word about the stream that stays when its content card goes (a stream gone away). */
function sayInMeta(text) {
  $("meta-note").textContent = text;
  $("meta-note").hidden = !text;
}

function atOffset() {
  return state.followedTo === null ? "" : ` at offset ${state.followedTo}`;
}

function setFollowButton(on) {
  const button = $("follow-toggle");
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Stop following" : "Follow live";
  button.classList.toggle("follow-on", on);
}

// -------------------------------------------------------------------------------- writes

async function appendData(event) {
  event.preventDefault();
  const result = $("append-result");
  const raw = $("append-input").value;
  const contentType = state.meta?.contentType ?? "application/octet-stream";
  const close = $("append-close").checked;
  if (bodyKind(contentType) === "json" && raw.trim()) {
    try {
      JSON.parse(raw);
    } catch (err) {
      return showResult(result, `Not valid JSON: ${err.message}`, false);
    }
  }
  if (!raw && !close) return showResult(result, "Nothing to append.", false);
  const closing = `Close ${state.path}?\n\nNothing can be appended to a closed stream again (it cannot be reopened); a conversation whose stream is closed takes no more prompts.`;
  if (close && !window.confirm(closing)) return showResult(result, "Not closed: nothing was appended.", false);
  try {
    const res = await client.append(state.path, raw || undefined, { contentType, close });
    if (!res.ok) return showResult(result, `HTTP ${res.status}${res.detail ? `: ${res.detail}` : ""}`, false);
    showResult(result, `HTTP ${res.status} · next offset ${res.nextOffset ?? "—"}${res.closed ? " · stream closed" : ""}`, true);
    $("append-input").value = "";
    $("append-close").checked = false;
    loadStreams();
    await refreshMeta();
    if (!state.follow) await readFrom($("read-offset").value.trim() || "-1");
  } catch (err) {
    showResult(result, `Request failed: ${err.message || err}`, false);
  }
}

async function createStream(event) {
  event.preventDefault();
  const result = $("create-result");
  try {
    const res = await client.create(state.path, $("create-type").value.trim() || "application/octet-stream");
    showResult(result, `HTTP ${res.status} · created`, true);
    loadStreams();
    await open(state.path);
  } catch (err) {
    showResult(result, err.message || String(err), false);
  }
}

function showResult(node, text, ok) {
  node.textContent = text;
  node.className = `form-result ${ok ? "ok" : "error"}`;
}

// ------------------------------------------------------------------------- subscriptions

async function showSubscription(event) {
  event.preventDefault();
  const id = $("subscription-id").value.trim();
  if (id) await showSubscriptionById(id);
}

/** Show one subscription (a fresh GET) below the list; `reveal` scrolls it into view. */
async function showSubscriptionById(id, { reveal = false } = {}) {
  const view = $("subscription-view");
  listing.selected = id;
  markSelectedSubscription();
  view.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  let nodes;
  try {
    const sub = await client.subscription(id);
    nodes = renderSubscription(sub, { onOpenPath: (path) => open(path, { reveal: true }) });
  } catch (err) {
    const gone = err instanceof HttpError && err.status === 404;
    const text = gone ? `No subscription "${id}" on this server.` : `Could not load it: ${err.message || err}`;
    nodes = [el("p", { class: "form-result error" }, text)];
    if (gone && listing.subscriptions?.some((s) => subscriptionKey(s) === id)) loadSubscriptions(); // listed, now gone
  }
  if (listing.selected !== id) return; // another one was asked for meanwhile
  view.replaceChildren(el("h3", { class: "subscription-view-title", dataset: { testid: "subscription-view-id" } }, id), ...nodes);
  if (reveal) view.scrollIntoView({ block: "nearest" });
}

// -------------------------------------------------------------------------------- wiring

function main() {
  wireSkipLink();
  $("inspector-root").textContent = `${config.streamsUrl}/`;
  const pathInput = $("inspector-path");
  $("inspector-open-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!normalizePath(pathInput.value)) {
      // Nothing to open (blank, or only slashes): said where the path is typed.
      pathInput.setCustomValidity("Type a stream's path, such as conversations, or pick one from the lists.");
      pathInput.reportValidity();
      return;
    }
    open(pathInput.value, { typed: true, reveal: true }); // on a phone, the title is far below
  });
  pathInput.addEventListener("input", () => pathInput.setCustomValidity(""));
  $("meta-refresh").addEventListener("click", () => refreshMeta());
  $("read-form").addEventListener("submit", (event) => {
    event.preventDefault();
    stopFollowing();
    readFrom($("read-offset").value.trim() || "-1");
  });
  $("read-on").addEventListener("click", readOn);
  $("read-view").addEventListener("change", renderContent);
  $("follow-toggle").addEventListener("click", () => (state.follow ? stopFollowing() : startFollowing()));
  $("append-form").addEventListener("submit", appendData);
  $("append-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("append-form").requestSubmit();
  });
  $("create-form").addEventListener("submit", createStream);
  $("subscription-form").addEventListener("submit", showSubscription);
  renderRecent();
  renderShortcuts();
  followConversations();
  $("registry-load").addEventListener("click", loadRegistry);
  $("streams-refresh").addEventListener("click", () => loadStreams());
  $("subscriptions-refresh").addEventListener("click", () => loadSubscriptions());
  $("stream-filter").addEventListener("input", () => {
    renderStreamList();
    searchServer();
  });
  $("stream-filter").addEventListener("keydown", (event) => {
    const items = [...$("stream-list").querySelectorAll("button.list-item")];
    if (event.key === "Enter" && items.length) {
      event.preventDefault();
      items[0].click();
    } else if (event.key === "ArrowDown" && items.length) {
      event.preventDefault();
      items[0].focus();
    }
  });
  for (const list of [$("stream-list"), $("subscription-list")]) {
    list.addEventListener("keydown", arrowKeys);
    list.addEventListener("focusin", keepTabStop);
  }
  loadStreams({ probe: true });
  loadSubscriptions({ probe: true });
  document.body.dataset.ready = "true";
  const openFromHash = () => {
    const fromHash = /^#path=(.+)$/.exec(window.location.hash);
    // Opened from the chat's link: on a phone the title is under the lists, off screen.
    if (fromHash) open(decodeOrRaw(fromHash[1]), { reveal: true });
  };
  window.addEventListener("hashchange", openFromHash);
  openFromHash();
}

main();
