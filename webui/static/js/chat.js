// The chat page: wires the streams client, the cross-tab hub and the outbox to the views.

import { config } from "./config.js";
import { StreamsClient, parseJsonBody } from "./streams.js";
import { StreamHub, compareOffsets } from "./hub.js";
import { Outbox } from "./outbox.js";
import * as protocol from "./chat-protocol.js";
import { ConversationList, Transcript, firstCharacters, turnState } from "./conversation-model.js";
import { ChatView } from "./chat-view.js";
import { FlowDiagram } from "./flow.js";
import { RawStreamPanel } from "./stream-panels.js";
import { ConnectionStatus, SERVER_RESET, STATE_LABELS } from "./status.js";
import { Drawers } from "./drawers.js";
import { MessageBox, TOUCH_KEYBOARD, keepInDraft, loadDraft, saveDraft } from "./message-box.js";
import { ConversationSidebar } from "./conversation-sidebar.js";
import { frameThrottle, wireSkipLink } from "./util.js";

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

const client = new StreamsClient({ baseUrl: config.streamsUrl, token: config.authToken, silenceMs: config.silenceMs, queuedMs: config.queuedMs });
const hub = new StreamHub(client);
let conversationsFollow = null; // the live read of the list (see followConversations)
// What an earlier load or a closed tab left unsent waits for this tab to have read the list
// of conversations (or for the list to be missing or refused for good): a message for one
// deleted since is dropped (see forgetDeleted), as its retries would make the deleted
// streams again. With the server out of reach nothing could be sent anyway.
let listingRead;
const outbox = new Outbox(client, {
  sendAfter: new Promise((resolve) => (listingRead = resolve)),
  mayRemake: async (entry) => {
    const id = protocol.conversationOfPrompts(entry.path);
    if (await stillListed(id)) return true;
    // Else tried again until this tab's list brought the deletion, and everything behind it
    // in the outbox waited (with the page saying "Reconnecting").
    foundDeleted(id);
    return false;
  },
});

const ui = {
  sidebar: document.getElementById("sidebar"),
  streamsPanel: document.getElementById("streams-panel"),
  main: document.getElementById("main"),
  scrim: $("scrim"),
  toggleSidebar: $("toggle-sidebar"),
  toggleStreams: $("toggle-streams"),
  conversationList: $("conversation-list"),
  conversationEmpty: $("conversation-list-empty"),
  conversationSearch: $("conversation-search"),
  newConversation: $("new-conversation"),
  title: $("conversation-title"),
  rename: $("rename-conversation"),
  renameForm: $("rename-form"),
  renameInput: $("rename-input"),
  titleNote: $("title-note"),
  delete: $("delete-conversation"),
  deletedNotice: $("deleted-conversation"),
  welcome: $("welcome"),
  unknownConversation: $("unknown-conversation"),
  messages: $("message-list"),
  composer: $("composer"),
  input: $("composer-input"),
  send: $("send-button"),
  stop: $("stop-button"),
  announcer: $("announcer"),
  composerError: $("composer-error"),
  composerClosed: $("composer-closed"),
  streamsMissing: $("streams-missing"),
  hint: $("composer-hint"),
};

const drawers = new Drawers({
  sidebar: ui.sidebar,
  streamsPanel: ui.streamsPanel,
  scrim: ui.scrim,
  toggleSidebar: ui.toggleSidebar,
  toggleStreams: ui.toggleStreams,
  closeSidebar: $("close-sidebar"),
  closeStreams: $("close-streams"),
  firstInSidebar: ui.newConversation,
});
const messageBox = new MessageBox({ input: ui.input, send: ui.send, hint: ui.hint });

const view = new ChatView(ui.messages, $("message-scroll"), {
  onRetry: retry,
  onCancel: cancelWaiting,
  // Not the message box on a touch screen: that would open the keyboard.
  onFocusLost: () => (TOUCH_KEYBOARD.matches ? ui.main.focus() : focusComposer()),
  announce,
  jumpButton: $("jump-latest"),
});
$("jump-latest").addEventListener("click", () => focusAfterButton()); // it hides once there
const flow = new FlowDiagram($("flow-diagram"));
const promptsPanel = new RawStreamPanel("prompts");
const responsesPanel = new RawStreamPanel("responses");
const status = new ConnectionStatus({ pill: $("connection-pill"), banner: $("connection-banner") });

const conversations = new ConversationList();
let conversationsLoaded = false;
const deletedHere = new Set(); // conversations this tab deleted, or found deleted before its list did
const ACTIVITY_SHOWN_FOR_MS = 60_000; // a list's time of the first conversation, kept this long
const failedPrompts = new Map(); // promptId -> {conversationId, id, content, timestamp, failed}
// Stored, but not read back from the stream yet: still shown, or they would vanish in between.
const sentPrompts = new Map(); // promptId -> {conversationId, id, content, timestamp, sent: true}
// The prompts this page load had stored: those a deletion made elsewhere leaves unanswered
// are given back (see `unansweredSentHere`).
const sentHere = new Set(); // promptIds
// So are listings (a new conversation, a rename): else a new one went from the list, and a
// prompt sent meanwhile started it again, named after that prompt. And activity: else an
// active one went back down the list, and its next prompt said so again.
const sentListings = new Map(); // outbox key -> {body, until: the list's offset after it}
// Prompts stopped here before their turn was read: shown being stopped, and so is their turn
// once read, until the cancel is read back (else Stop came back for them in between).
const stoppedUnread = new Set(); // promptIds
let current = null;

// ------------------------------------------------------------------------ conversation list

const sidebar = new ConversationSidebar({
  list: ui.conversationList,
  search: ui.conversationSearch,
  empty: ui.conversationEmpty,
  state: () => ({ conversations, pending: pendingState(), deleted: deletedHere, openId: current?.id ?? null, loaded: conversationsLoaded }),
  onOpen: (id) => navigateTo(id),
});

function pendingState() {
  const state = protocol.pendingItems(outbox.pending());
  const sent = [...sentListings.values()].map(({ body }) => body); // what is still to send is newer
  state.conversations = [
    ...sent.filter((b) => b.type === "conversation").map((b) => ({ ...b, pending: false, streamsReady: true })),
    ...state.conversations,
  ];
  state.activity = [...sent.filter((b) => b.type === "activity"), ...state.activity];
  return state;
}

function isKnown(id) {
  return conversations.has(id) || pendingState().conversations.some((c) => c.id === id);
}

/** On the server's list: read from it, or sent to it from here (not read back yet). A
 * conversation is renamed or deleted only then: not while its start is still to be sent. */
function isListed(id) {
  return conversations.has(id) || [...sentListings.values()].some(({ body }) => body.type === "conversation" && body.id === id);
}

/** Its streams exist (listed, or created by our own pending start), so reading can begin. */
function canFollow(id) {
  return conversations.has(id) || pendingState().conversations.some((c) => c.id === id && c.streamsReady);
}

/** The latest title: one we are still sending (a new conversation, or a rename) wins. */
function conversationTitle(id) {
  return pendingState().conversations.findLast((c) => c.id === id)?.title ?? conversations.get(id)?.title ?? null;
}


/** Whether conversation `id` (undefined: none) is not deleted, as the list says up to its
 * tail now. A prompt's streams gone (found missing, or a 404) are made again before the
 * prompt is sent: that brought back a conversation deleted in another tab, if this tab's live
 * read of the list had not caught up yet (offline, it waits out its own backoff; online, the
 * prompt went while the check of a stream found missing was on its way). The deletion found
 * drops the prompt and gives it back (`foundDeleted`). */
async function stillListed(id) {
  if (id === undefined) return true;
  if (conversations.isDeleted(id)) return false;
  let unread;
  try {
    unread = await readUnreadList();
  } catch (err) {
    if (err?.status === 404) return true; // no list at all (a server that restarted empty)
    throw err;
  }
  return !unread.messages.some((m) => m?.type === "delete" && m.id === id);
}

/** The list's messages past what this tab's read of it has applied, and the offset after
 * them. */
async function readUnreadList() {
  const unread = await client.readAll(protocol.CONVERSATIONS_PATH, conversationsFollow?.offset ?? "-1");
  const decoder = new TextDecoder();
  return { messages: unread.pages.flatMap(({ bytes }) => parseJsonBody(decoder.decode(bytes))), nextOffset: unread.nextOffset };
}

function followConversations() {
  client.ensure(protocol.CONVERSATIONS_PATH).catch(() => {}); // so a fresh server has the list
  conversationsFollow = hub.follow(protocol.CONVERSATIONS_PATH, {
    onBatch(batch) {
      const caughtUp = conversationsLoaded; // before this batch: news, not history
      const changed = conversations.apply(batch.messages ?? []);
      for (const [key, { until }] of sentListings) if (compareOffsets(until, batch.to) <= 0) sentListings.delete(key);
      // Started here before the list was read, but listed: sent, the start would rename it.
      if (changed) protocol.dropStartsOfListed(outbox, (id) => conversations.has(id));
      for (const m of batch.messages ?? []) {
        if (m?.type === "delete" && typeof m.id === "string" && m.id !== current?.id) {
          giveBack(forgetDeleted(m.id), named(conversations.deletedTitle(m.id)));
        }
      }
      // Listed again or active while its streams are missing: another tab has probably just
      // made them, so read them now, not at the end of a backoff of up to 30 s.
      if (caughtUp && current && (current.missing.prompts || current.missing.responses)
          && (batch.messages ?? []).some((m) => m?.id === current.id && m.type !== "delete")) {
        refollow(current);
      }
      if (batch.upToDate) {
        conversationsLoaded = true;
        listingRead(); // what it held is applied: its deletions are known
      }
      if (current && conversations.isDeleted(current.id)) leaveDeleted(current.id);
      if (changed || batch.upToDate) {
        sidebar.render();
        maybeFollow();
        scheduleRender();
      }
    },
    onStatus(s) {
      // A status may be the tab that holds the live read's (see hub.js): "live" says nothing
      // of what this tab has applied, "missing" or a refusal that nothing is to be read.
      if (s.state === "missing" || s.state === "error") listingRead();
      if (s.state === "missing" || (s.state === "live" && s.upToDate)) {
        conversationsLoaded = true;
        sidebar.render();
        scheduleRender();
      }
      status.setStream("conversations", s.state === "missing" ? { state: "live" } : s);
      updateBrowserNode();
    },
  });
}

// ----------------------------------------------------------------------------- navigation

function idFromHash() {
  const m = /^#\/c\/([A-Za-z0-9_-]{1,64})$/.exec(window.location.hash);
  return m ? m[1] : null;
}

/** Open the conversation the address names. A link whose id cannot be one (a typo, a link cut
 * short) says so, where it opened a new conversation without a word. */
function openFromHash() {
  // A new hash fires both hashchange and popstate: the second would open a new conversation
  // again, and hide the notice below.
  if (window.location.href === openedAddress) return;
  const id = idFromHash();
  openConversation(id);
  if (id === null && window.location.hash !== "" && window.location.hash !== "#") {
    history.replaceState(null, "", window.location.pathname + window.location.search);
    ui.deletedNotice.textContent = "This link does not name a conversation (a conversation's link ends in #/c/ and its id, 1 to 64 letters, digits, - or _): here is a new one.";
    ui.deletedNotice.hidden = false;
    openedAddress = window.location.href;
  }
}
let openedAddress = null; // where the conversation shown was opened from

function navigateTo(id) {
  if (id) window.location.hash = `#/c/${id}`;
  else {
    // From a new conversation (no address of its own yet) to another: one history entry,
    // not one per click that Back then steps through.
    const address = window.location.pathname + window.location.search;
    if (window.location.hash) history.pushState(null, "", address);
    else history.replaceState(null, "", address);
    openConversation(null);
  }
  // A conversation picked in the drawer of a narrow screen: the focused item goes with the
  // drawer, and the focus would fall to the page's body.
  const fromDrawer = drawers.isOverlayOpen();
  drawers.close();
  if (fromDrawer) ui.main.focus();
}

/** Focus for the message box, or the conversation when the box takes nothing. */
function focusComposer() {
  if (ui.input.disabled) ui.main.focus();
  else ui.input.focus();
}

function openConversation(id) {
  openedAddress = window.location.href;
  if (current && id && current.id === id) return;
  endRename(false);
  ui.deletedNotice.hidden = true;
  ui.titleNote.hidden = true;
  if (id && conversations.isDeleted(id)) {
    leaveDeleted(id); // opens a new conversation instead
    return;
  }
  if (current) {
    for (const f of current.follows) f.stop();
    forgetStreamStatuses();
  }
  current = {
    id: id ?? protocol.newConversationId(),
    transcript: new Transcript(),
    follows: [],
    following: false,
    upToDate: { prompts: false, responses: false },
    missing: { prompts: false, responses: false }, // the server has no such stream (yet)
    deletionChecks: 0, // reads of the list under way, asking whether it was deleted
    settled: false, // both streams read once: see `Transcript.settleAnswersWithoutPrompt`
    offsets: { prompts: "-1", responses: "-1" }, // where reading resumes after a pause
    panelsReady: false,
    paused: false,
    states: new Map(),
    waits: new Map(), // promptId -> how many `wait`s its answer had at the last announcement
  };
  lastAnnounced = { text: "", at: -Infinity }; // not joined to what another conversation said
  view.clear();
  promptsPanel.reset(null);
  responsesPanel.reset(null);
  flow.setSub("prompts", "");
  flow.setSub("responses", "");
  flow.setAgentState("idle");
  ui.input.value = loadDraft(draftKey());
  messageBox.fit();
  if (id && conversationsLoaded && !isKnown(id)) lookUpUnlisted(current);
  maybeFollow();
  sidebar.render();
  scheduleRender();
}

/** A link names a conversation this tab's list does not hold, and that list may lag (another
 * tab or device has just made it): its unread tail is read, and a listing found there is kept
 * as one sent from here is, until the list brings it. Else the page said there was no such
 * conversation, and a message sent then started it again, renamed after that message. */
async function lookUpUnlisted(c) {
  const tail = new ConversationList();
  let unread;
  try {
    unread = await readUnreadList();
    tail.apply(unread.messages);
  } catch {
    return; // the list's own read will tell
  }
  const listed = tail.get(c.id);
  if (c !== current || conversations.has(c.id) || !listed) return;
  sentListings.set(`unread:${c.id}`, { body: { type: "conversation", ...listed }, until: unread.nextOffset });
  protocol.dropStartsOfListed(outbox, (id) => id === c.id); // started meanwhile: sent, it would rename it
  maybeFollow();
  sidebar.render();
  scheduleRender();
}

function maybeFollow() {
  const c = current;
  if (!c || c.following || c.paused || !canFollow(c.id)) return;
  c.following = true;
  const promptsPath = protocol.promptsPath(c.id);
  const responsesPath = protocol.responsesPath(c.id);
  if (!c.panelsReady) {
    promptsPanel.reset(promptsPath);
    responsesPanel.reset(responsesPath);
    c.panelsReady = true;
  }
  c.follows.push(hub.follow(promptsPath, {
    offset: c.offsets.prompts,
    onBatch(batch) {
      if (c !== current) return;
      c.offsets.prompts = batch.to;
      c.transcript.applyPrompts(batch.messages ?? []);
      if (batch.closed) c.transcript.promptsClosed = true;
      if (batch.upToDate) c.upToDate.prompts = true;
      promptsPanel.add(batch);
      if (batch.count) flow.promptsArrived(c.transcript.promptEntries);
      scheduleRender();
    },
    onStatus: (s) => streamStatus(c, "prompts", s),
    beforeReconnect: () => leaveIfDeleted(c),
  }));
  c.follows.push(hub.follow(responsesPath, {
    offset: c.offsets.responses,
    onBatch(batch) {
      if (c !== current) return;
      c.offsets.responses = batch.to;
      c.transcript.applyResponses(batch.messages ?? []);
      if (batch.closed) c.transcript.closeResponses();
      if (batch.upToDate) c.upToDate.responses = true;
      responsesPanel.add(batch);
      if (batch.count) flow.responsesArrived(c.transcript.responseEntries);
      scheduleRender();
    },
    onStatus: (s) => streamStatus(c, "responses", s),
    beforeReconnect: () => leaveIfDeleted(c),
  }));
}

/** The live reads of `c`'s streams were ended by the server (it ends them now and then, and
 * when a deletion of the conversation, in another tab and maybe unseen here yet, as this
 * tab's copy of the list may lag, had its streams removed), or found them missing. Read
 * again, removed streams answer 404. The list is written first, so it says which: if deleted,
 * leave it (which stops the reads), as its own copy of the list will when it comes. */
async function leaveIfDeleted(c) {
  if (c !== current) return;
  // Meanwhile the streams found missing are not said to be: the page flashed "Nothing of
  // this conversation is on the server" before it left one deleted elsewhere.
  c.deletionChecks += 1;
  try {
    if ((await stillListed(c.id).catch(() => true)) || c !== current) return;
    foundDeleted(c.id);
  } finally {
    c.deletionChecks -= 1;
    if (c === current) scheduleRender();
  }
}

/** Conversation `id` was found deleted before this tab's copy of the list says so: it is left,
 * or what this tab had not sent to it is given back. */
function foundDeleted(id) {
  const title = conversationTitle(id);
  deletedHere.add(id); // not listed until the list's own read brings the deletion
  if (current?.id === id) leaveDeleted(id, title);
  else giveBack(forgetDeleted(id), named(title));
}

// Browsers share about six connections per host among all tabs. A tab hidden for a while
// lets go of its conversation's two live reads (another tab may take them over through the
// hub) and picks up from the same offsets when it is shown again. A tab being shown needs
// connections now: it tells the hidden tabs, which let go at once (three tabs on three
// conversations hold seven live reads; the third tab's prompt waited for a hidden tab's timer).
const PAUSE_AFTER_MS = 10000;
let pauseTimer = null;
const tabs = typeof BroadcastChannel === "function" ? new BroadcastChannel("chat-tabs") : null;
tabs?.addEventListener("message", (event) => {
  if (event.data?.type === "shown") pauseConversation();
});

function onVisibility() {
  clearTimeout(pauseTimer);
  if (document.visibilityState === "hidden") {
    pauseTimer = setTimeout(pauseConversation, PAUSE_AFTER_MS);
    return;
  }
  tabs?.postMessage({ type: "shown" });
  if (current?.paused) {
    current.paused = false;
    document.body.dataset.paused = "false";
    maybeFollow();
  }
}

function pauseConversation() {
  const c = current;
  // One not followed yet (its streams still being made) is paused too: else it would start
  // its live reads hidden once they exist, with no timer left to let go of them.
  if (!c || c.paused || document.visibilityState !== "hidden") return;
  clearTimeout(pauseTimer);
  for (const f of c.follows) f.stop();
  c.follows = [];
  c.following = false;
  c.paused = true;
  document.body.dataset.paused = "true";
  forgetStreamStatuses();
}

/** The conversation's reads have stopped: their statuses go, from the pill and from the
 * diagram (which otherwise kept what the last read said, "connecting"). */
function forgetStreamStatuses() {
  status.removeStream("prompts");
  status.removeStream("responses");
  updateBrowserNode();
}

function streamStatus(c, name, s) {
  if (c !== current) return;
  // A stream the server does not have (deleted through the API, or never made by whoever
  // listed the conversation) reads as empty, and is not a lost connection: the page says so
  // (see `render`), and goes on asking in case it is made.
  const missing = s.state === "missing";
  // ("connecting", or a moment's "reconnecting", says nothing either way.)
  if (c.missing[name] !== missing && (missing || s.state === "live")) {
    c.missing[name] = missing;
    // Deleted in another tab, between the list read before reconnecting and the reconnect:
    // this tab's copy of the list may lag.
    if (missing) leaveIfDeleted(c);
    scheduleRender();
  }
  if (missing && c.offsets[name] !== "-1") {
    // Deleted while followed: a stream made again at its path has offsets of its own, and
    // reading on from this one's would be refused (or skip its beginning).
    c.offsets[name] = "-1";
    (name === "prompts" ? promptsPanel : responsesPanel).reset(pathOf(c, name));
    setTimeout(() => refollow(c));
  }
  status.setStream(name, missing ? { state: "live" } : s);
  if (s.state === "live" && s.upToDate) {
    c.upToDate[name] = true;
    scheduleRender();
  }
  updateBrowserNode();
}

function pathOf(c, name) {
  return name === "prompts" ? protocol.promptsPath(c.id) : protocol.responsesPath(c.id);
}

/** Follow the conversation's streams again from `c.offsets`: a read waiting out its backoff
 * on a missing stream asks at once. */
function refollow(c) {
  if (c !== current || c.paused) return;
  for (const f of c.follows) f.stop();
  c.follows = [];
  c.following = false;
  maybeFollow();
}

let readsWereLive = true;

function updateBrowserNode() {
  const overall = status.overall();
  flow.setBrowserState(overall, overall === "live" ? "this tab · live" : STATE_LABELS[overall].toLowerCase());
  // The server is back: what waits in the outbox (a Stop above all, before the agent has
  // written much of the answer it starts again) goes now, not at the end of a backoff of up
  // to 8 s.
  // (The reads, not `overall`: that says "reconnecting" for as long as the outbox retries.)
  const readsLive = !status.readsInterrupted();
  if (readsLive && !readsWereLive) outbox.start();
  readsWereLive = readsLive;
}

// ------------------------------------------------------------------------------- rendering

function pendingPrompts(conversationId) {
  const queued = pendingState().prompts.filter((p) => p.conversationId === conversationId);
  const stopping = new Set([...stoppedUnread, ...queued.filter((p) => p.type === "cancel").map((p) => p.promptId)]);
  // A prompt stopped before it was sent shows that it is being stopped (the cancel goes after it).
  const items = queued.filter((p) => p.type === "prompt").map((p) => (stopping.has(p.id) ? { ...p, stopping: true } : p));
  for (const sent of sentPrompts.values()) {
    if (sent.conversationId === conversationId) items.push(stopping.has(sent.id) ? { ...sent, stopping: true } : sent);
  }
  for (const failed of failedPrompts.values()) if (failed.conversationId === conversationId) items.push(failed);
  return items;
}

/** The prompt Stop applies to: the first unfinished one (the agent answers in order), or null
 * when there is none or it is being cancelled already (a second Stop must not reach the
 * prompts waiting behind it: they are questions of their own). */
function promptToStop() {
  if (!current) return null;
  const first = current.transcript.visibleTurns().find((t) => t.prompt && !t.final);
  const unsent = pendingPrompts(current.id).find((p) => !p.failed && !current.transcript.turns.get(p.id)?.prompt);
  const id = first?.promptId ?? unsent?.id;
  if (!id || first?.cancelRequested) return null;
  const cancelSent = stoppedUnread.has(id) || pendingState().prompts.some((p) => p.type === "cancel" && p.promptId === id);
  return cancelSent ? null : id;
}

// A Stop pressed twice (a double click, Esc twice) is meant for one answer. Once that one has
// stopped, which takes a tenth of a second here, the button aims at the question waiting
// behind it, and the second press stopped that too: for a moment after a Stop, if the button
// has come to aim at another answer meanwhile, Stop does nothing.
const REPEATED_STOP_MS = 1000;
const stopAim = { stoppedId: null, stoppedAt: -Infinity, promptId: null, since: 0 };

function aimStop(promptId) {
  if (promptId && promptId !== stopAim.promptId) {
    stopAim.promptId = promptId;
    stopAim.since = performance.now();
  }
}

const scheduleRender = frameThrottle(render);

function render() {
  const c = current;
  if (!c) return;
  const turns = c.transcript.visibleTurns();
  for (const [id, sent] of sentPrompts) {
    if (sent.conversationId === c.id && c.transcript.turns.get(id)?.prompt) sentPrompts.delete(id);
  }
  for (const id of stoppedUnread) {
    const turn = c.transcript.turns.get(id);
    if (!turn) continue;
    if (!turn.final) turn.cancelRequested = true;
    stoppedUnread.delete(id);
  }
  const pending = pendingPrompts(c.id);
  const offline = status.readsInterrupted();
  const closed = c.transcript.responsesClosed || c.transcript.promptsClosed;
  const answersMissing = c.missing.responses && isKnown(c.id);
  const count = view.render(turns, pending, { offline, closed, answersMissing });
  ui.composerClosed.hidden = !closed;
  ui.composerClosed.textContent = c.transcript.responsesClosed
    ? "This conversation takes no more prompts: its responses stream has been closed, so no answer can be written. Start a new conversation to go on."
    : "This conversation takes no more prompts: its prompts stream has been closed. Start a new conversation to go on.";
  ui.input.disabled = closed;
  messageBox.offerSend();
  const known = isKnown(c.id);
  const read = (name) => c.upToDate[name] || c.missing[name];
  const loaded = known ? read("prompts") && read("responses") : conversationsLoaded;
  if (loaded && known && !c.settled) {
    c.settled = true;
    c.transcript.settleAnswersWithoutPrompt();
    scheduleRender(); // with the answers it has just found to have no prompt
  }
  ui.streamsMissing.hidden = !known || closed || c.deletionChecks > 0 || !(c.missing.prompts || c.missing.responses);
  const notice = missingStreamsNotice(c.missing);
  if (ui.streamsMissing.textContent !== notice) ui.streamsMissing.textContent = notice; // a live region
  ui.welcome.hidden = count > 0 || !loaded;
  // A link to a conversation this server does not have (a typo, or a wiped server).
  ui.unknownConversation.hidden = known || !conversationsLoaded || idFromHash() !== c.id;
  const title = conversationTitle(c.id) ?? "New conversation";
  ui.title.textContent = title;
  ui.title.title = title; // a long one is cut short on screen
  ui.rename.hidden = !isListed(c.id) || !ui.renameForm.hidden;
  ui.delete.hidden = ui.rename.hidden;
  document.title = `${title} · Durable Agent Chat`;
  const stopTarget = promptToStop();
  aimStop(stopTarget);
  const stopHidden = stopTarget === null;
  if (stopHidden && document.activeElement === ui.stop) focusComposer(); // else it falls to the body
  ui.stop.hidden = stopHidden;
  const active = turns.filter((t) => t.prompt && !t.final).map(turnState); // see ChatView.render
  const working = active.includes("streaming") ? "streaming" : active.includes("thinking") ? "thinking" : active.length ? active[0] : "idle";
  // What the page sees of the agent: not "streaming" while no text can reach it, or none comes.
  if ((working === "streaming" || working === "thinking") && offline) flow.setAgentState("unseen", "out of sight");
  else if ((working === "streaming" || working === "thinking") && view.anyStalled) flow.setAgentState("stalled", "no new text");
  else if (working === "thinking" && view.anyWaiting) flow.setAgentState("waiting", "model busy: retrying");
  else flow.setAgentState(working);
  ui.messages.dataset.ready = String(loaded);
  document.body.dataset.ready = String(conversationsLoaded && loaded);
  announceChanges(c, turns, loaded);
}

function missingStreamsNotice({ prompts, responses }) {
  const again = "A message sent here makes it again.";
  if (prompts && responses) return "Nothing of this conversation is on the server: its streams have been deleted, or were never made. A message sent here starts it again.";
  if (prompts) return `This conversation's prompts stream is missing on the server (deleted, or never made): its questions cannot be shown. ${again}`;
  return `This conversation's responses stream is missing on the server (deleted, or never made): its answers cannot be shown, and no new one can be written. ${again}`;
}

function announceChanges(c, turns, loaded) {
  const words = {
    queued: "Your message waits for the answer above.",
    thinking: "The agent is thinking.",
    withdrawn: "Message withdrawn: it will not be answered.",
    done: "Answer complete.",
    cancelled: "Answer stopped.",
    error: "The answer failed.",
  };
  let earlierUnfinished = false; // the agent answers in order, as the view shows
  for (const turn of turns) {
    const state = announcedState(turn, earlierUnfinished);
    earlierUnfinished ||= !turn.final && !!turn.prompt;
    const before = c.states.get(turn.promptId);
    c.states.set(turn.promptId, state);
    const waitsBefore = c.waits.get(turn.promptId) ?? 0;
    c.waits.set(turn.promptId, turn.waits);
    // Only changes seen live are announced, not the history read at load.
    if (!loaded || !c.announceReady) continue;
    if (state === "thinking" && turn.wait && turn.waits > waitsBefore) {
      const seconds = turn.wait.retryInMs === null ? "" : ` in ${Math.ceil(turn.wait.retryInMs / 1000)} s`;
      announce(`${firstCharacters(turn.wait.message, 300)} Trying again${seconds}.`);
    }
    if (before === state || !words[state]) continue;
    if (state === "error" && turn.error) announce(`The answer failed: ${firstCharacters(turn.error, 300)}`);
    else announce(words[state]);
  }
  if (loaded) c.announceReady = true;
}

/** A turn's state as the view shows it: one waiting behind an unfinished answer is "queued"
 * (it was announced as "thinking") and, cancelled, "withdrawn", as it stays once the agent
 * has ended it without a word (it was "Answer stopped" a second time). */
function announcedState(turn, waitingBehind) {
  const state = turnState(turn);
  if (state === "cancelled" && !turn.text) return "withdrawn";
  if (!waitingBehind || turn.chunks) return state;
  return state === "thinking" ? "queued" : state === "cancelling" ? "withdrawn" : state;
}

const ANNOUNCE_JOIN_MS = 3000; // about the time a screen reader takes to say one of them
let lastAnnounced = { text: "", at: -Infinity };

/** Say `text` through the live region. The one said moments earlier is kept in front of it:
 * a replaced region is read from its new text only, so "Answer complete." followed at once
 * by "The agent is thinking." (the next prompt starting) was never heard. */
function announce(text) {
  const now = performance.now();
  const join = now - lastAnnounced.at < ANNOUNCE_JOIN_MS && lastAnnounced.text !== text;
  const joined = join ? `${lastAnnounced.text} ${text}` : text;
  lastAnnounced = { text, at: now };
  ui.announcer.textContent = "";
  requestAnimationFrame(() => (ui.announcer.textContent = joined));
}

// -------------------------------------------------------------------------------- actions

/** The prompt in the composer as it is sent: as typed, but for blank lines around it and
 * trailing whitespace (the first line's indentation may be code's). */
function typedPrompt() {
  const lines = ui.input.value.split("\n");
  let first = 0;
  let end = lines.length;
  while (first < end && protocol.isBlank(lines[first])) first += 1;
  while (end > first && protocol.isBlank(lines[end - 1])) end -= 1;
  return lines.slice(first, end).join("\n").trimEnd();
}

function send() {
  const text = typedPrompt();
  if (protocol.isBlank(text)) {
    // An empty box says nothing; one that only looks empty says why nothing happened.
    if (ui.input.value !== "") refuseToSend("Nothing to send: the message holds only spaces, line breaks or invisible characters.");
    return;
  }
  if (!current) return;
  if (current.transcript.responsesClosed || current.transcript.promptsClosed) return;
  if (text.length > protocol.MAX_PROMPT_CHARS) {
    refuseToSend(`This message is too long to send: ${text.length.toLocaleString()} characters, the limit is ${protocol.MAX_PROMPT_CHARS.toLocaleString()}.`);
    return;
  }
  if (status.serverReset()) {
    // Sent now, it would go to a conversation the server no longer lists, out of sight.
    refuseToSend(`${SERVER_RESET} Reload the page before sending: your message stays here.`);
    return;
  }
  ui.composerError.hidden = true;
  const draft = draftKey();
  ui.input.value = "";
  saveDraft(draft, "");
  messageBox.fit();
  sendPrompt(text);
}

function refuseToSend(reason) {
  ui.composerError.textContent = reason;
  ui.composerError.hidden = false;
}

/** Send the prompt of the last answer again, as a new prompt; whether it was. */
function retry(promptId) {
  const prompt = current?.transcript.turns.get(promptId)?.prompt;
  let asked = false;
  if (status.serverReset()) refuseToSend(`${SERVER_RESET} Reload the page to ask again.`);
  else if (protocol.canAskAgain(prompt)) {
    sendPrompt(prompt.content, protocol.retryPromptId(promptId));
    asked = true;
  }
  ui.input.focus();
  return asked;
}

function sendPrompt(text, promptId = undefined) {
  const id = current.id;
  const known = isKnown(id);
  if (!known) {
    protocol.startConversation(outbox, { id, title: protocol.titleFrom(text) });
    if (idFromHash() !== id) history.replaceState(null, "", `#/c/${id}`);
  }
  // A stream found missing is made again first (else only a missing prompts stream is).
  const remake = current.missing.prompts || current.missing.responses;
  protocol.sendPrompt(outbox, id, text, promptId, { ensured: !remake });
  // Its streams gone, the server may have lost its list too (its data wiped): without its
  // listing again, no page loaded from now on would show the conversation. After the prompt,
  // which asks first whether it was deleted instead (then both are dropped, unsent).
  if (remake && known) protocol.listConversation(outbox, { id, title: conversationTitle(id) });
  // Lists show the most recently active first, with the time of that activity: say so
  // unless the list says it already.
  // (Always after its streams were made again: that is how other tabs learn of them.)
  const [first] = sidebar.first(1);
  const listedAt = first?.activeAt || first?.timestamp || 0;
  if (remake || first?.id !== id || Date.now() - listedAt > ACTIVITY_SHOWN_FOR_MS) protocol.markActive(outbox, id);
  maybeFollow();
  sidebar.render();
  scheduleRender();
  view.scrollToBottom();
}

/** Stop the answer in progress (see `promptToStop`). */
function stop() {
  const id = promptToStop();
  aimStop(id); // the button may have changed target since it was last drawn
  const now = performance.now();
  const meantForTheLast = id !== stopAim.stoppedId && now - stopAim.stoppedAt < REPEATED_STOP_MS
    && now - stopAim.since < REPEATED_STOP_MS;
  if (id && !meantForTheLast) {
    const turn = current.transcript.turns.get(id);
    protocol.cancelPrompt(outbox, current.id, id, turn?.attempt);
    stopAim.stoppedId = id;
    stopAim.stoppedAt = now;
    // Shown at once, not when the cancel is read back: with the server away that takes
    // until it is back, and the answer went on saying "Answering…" meanwhile.
    if (!turn) stoppedUnread.add(id);
    else if (!turn.final) turn.cancelRequested = true;
  }
  scheduleRender();
}

/** Withdraw a message still waiting for the answer before it: the agent then ends it as
 * stopped without asking the model (Stop and Esc reach only the answer being written). */
function cancelWaiting(promptId) {
  const turn = current?.transcript.turns.get(promptId);
  if (!turn || turn.final || turn.cancelRequested) return;
  protocol.cancelPrompt(outbox, current.id, promptId, turn.attempt);
  turn.cancelRequested = true;
  scheduleRender();
  focusAfterButton(); // its Cancel button, focused, goes with the next render
}

/** After a button that goes away once pressed: the focus to the message box, not to the
 * page's body; but not on a touch screen, where that would open the keyboard. */
function focusAfterButton() {
  if (!TOUCH_KEYBOARD.matches) focusComposer();
}

// The title the field opened with: left as it was, it renames nothing (saved, it undid a
// rename made meanwhile in another tab).
let titleBeforeRename = "";

function startRename() {
  if (!current || !isListed(current.id)) return;
  titleBeforeRename = conversationTitle(current.id) ?? "";
  ui.renameInput.value = titleBeforeRename;
  ui.title.classList.add("visually-hidden"); // still the page's heading
  ui.rename.hidden = true;
  ui.renameForm.hidden = false;
  ui.renameInput.setCustomValidity("");
  ui.titleNote.hidden = true;
  ui.renameInput.focus();
  ui.renameInput.select();
}

/** Leave the title field, keeping what was typed (`save`) unless it is blank or unchanged. */
function endRename(save) {
  if (ui.renameForm.hidden) return;
  const title = ui.renameInput.value;
  ui.renameForm.hidden = true;
  ui.title.classList.remove("visually-hidden");
  ui.rename.hidden = false;
  if (save && current && !protocol.isBlank(title) && title.trim() !== titleBeforeRename
      && title.trim() !== conversationTitle(current.id)) {
    protocol.listConversation(outbox, { id: current.id, title });
    if (protocol.titleIsCut(title)) showTitleNote(`Title cut to ${protocol.MAX_TITLE_CHARS} characters`);
  }
  scheduleRender();
}

const TITLE_NOTE_MS = 8000;
let titleNoteTimer = null;

/** A word next to the title about the rename just made; it goes by itself. */
function showTitleNote(text) {
  clearTimeout(titleNoteTimer);
  ui.titleNote.textContent = text;
  ui.titleNote.hidden = false;
  titleNoteTimer = setTimeout(() => {
    ui.titleNote.hidden = true;
  }, TITLE_NOTE_MS);
}

function deleteCurrent() {
  if (!current || !isListed(current.id)) return;
  const id = current.id;
  const title = conversationTitle(id);
  const question = `Delete “${title}”?\n\nIts prompts and answers are removed for every tab and device. This cannot be undone.`;
  if (!window.confirm(question)) return;
  protocol.deleteConversation(outbox, id);
  deletedHere.add(id); // not listed again between the server's answer and the stream's copy
  leaveDeleted(id, title, { byThisTab: true });
  ui.input.focus();
}

/** Show a new conversation in place of `id`, which was deleted (here, `byThisTab`,
 * elsewhere, or before its link was opened), and say so. */
function leaveDeleted(id, title = conversations.deletedTitle(id), { byThisTab = false } = {}) {
  // Deleted here, they were on the screen when the user chose to delete them.
  const unanswered = byThisTab ? [] : unansweredSentHere(id);
  const unsent = forgetDeleted(id);
  if (idFromHash() === id) history.replaceState(null, "", window.location.pathname + window.location.search);
  const typed = current?.id === id ? ui.input.value.trim() : "";
  const focusWasHere = ui.main.contains(document.activeElement) || document.activeElement === document.body;
  openConversation(null);
  // What was being written, or sent but never delivered or answered, is kept for the new
  // conversation.
  messageBox.add([...unanswered, ...unsent, typed], draftKey());
  if (focusWasHere) ui.input.focus(); // its header buttons or title field are gone
  const what = title ? named(title) : "The conversation at this link";
  const count = unanswered.length + unsent.length;
  tell(count ? givenBack(what, count, { stored: unanswered.length > 0 }) : `${what} was deleted.`);
}

/** The text of the prompts this tab sent to the open conversation `id` that the server
 * stored but that have no answer (nor a Stop), oldest first. Deleted in another tab just
 * before or after one was stored, the conversation will answer none of them: the page
 * dropped them with it, saying only that it was deleted. */
function unansweredSentHere(id) {
  if (current?.id !== id) return [];
  const { turns, order } = current.transcript;
  const unanswered = order.map((promptId) => turns.get(promptId))
    .filter((turn) => sentHere.has(turn.promptId) && turn.prompt?.isText && !turn.final && !turn.cancelRequested)
    .map((turn) => turn.prompt.content);
  // Stored, but not read back yet.
  for (const sent of sentPrompts.values()) {
    if (sent.conversationId === id && !turns.get(sent.id)?.prompt && !stoppedUnread.has(sent.id)) unanswered.push(sent.content);
  }
  return unanswered;
}

function named(title) {
  return title ? `“${title}”` : "A conversation";
}

/** What this tab keeps for a conversation that was deleted: its draft, its refused prompts,
 * and its messages still in the outbox (whose retries would create its streams again).
 * Returns the text of the prompts it had not delivered. */
function forgetDeleted(id) {
  saveDraft(`draft:${id}`, "");
  for (const [promptId, failed] of failedPrompts) if (failed.conversationId === id) failedPrompts.delete(promptId);
  for (const [promptId, sent] of sentPrompts) if (sent.conversationId === id) sentPrompts.delete(promptId);
  for (const [key, { body }] of sentListings) if (body.id === id) sentListings.delete(key);
  return promptTexts(protocol.dropUnsent(outbox, id));
}

function promptTexts(messages) {
  return messages.filter(({ body }) => body?.type === "prompt" && typeof body.content === "string")
    .map(({ body }) => body.content);
}

/** Prompts that can no longer be delivered (their conversation, `what`, was deleted) are
 * not lost without a word: they go back in the message box, and the page says so. */
function giveBack(texts, what) {
  if (!texts.length) return;
  messageBox.add(texts, draftKey());
  tell(givenBack(what, texts.length));
}

/** `stored`: some of them reached the server, but were not answered. */
function givenBack(what, count, { stored = false } = {}) {
  if (count === 1) {
    return `${what} was deleted before a message sent to it ${stored ? "was answered" : "reached the server"}: it is back in the message box.`;
  }
  return `${what} was deleted before ${count} messages sent to it ${stored ? "were answered" : "reached the server"}: they are back in the message box.`;
}

function tell(text) {
  ui.deletedNotice.textContent = text;
  ui.deletedNotice.hidden = false;
  announce(text);
}

/** Drafts are kept per conversation. A new one (no link to it yet) has a new id on every
 * load, so its draft is kept as the new conversation's. */
function draftKey() {
  const linked = current && (idFromHash() === current.id || isKnown(current.id));
  return `draft:${linked ? current.id : "new"}`;
}

// ---------------------------------------------------------------------------------- wiring

function wire() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
    // Send clicked or tapped took the focus, and is disabled with the box empty: the next
    // message typed went nowhere.
    focusComposer();
  });
  // A touch screen's keyboard has no Shift+Enter: there Enter starts a new line and the Send
  // button sends. Ctrl+Enter (⌘+Enter) sends on every device.
  ui.input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.isComposing) return;
    if (event.ctrlKey || event.metaKey || (!event.shiftKey && !TOUCH_KEYBOARD.matches)) {
      event.preventDefault();
      send();
    }
  });
  messageBox.describeEnterKey();
  TOUCH_KEYBOARD.addEventListener("change", () => messageBox.describeEnterKey());
  // Esc stops the answer from anywhere on the page, not only from the message box (the
  // rename box and an open drawer take their own Esc first).
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !event.isComposing && !event.defaultPrevented && !ui.stop.hidden) {
      event.preventDefault();
      stop();
    }
  });
  ui.input.addEventListener("input", () => {
    messageBox.fit();
    saveDraft(draftKey(), ui.input.value);
    if (!ui.composerError.hidden && typedPrompt().length <= protocol.MAX_PROMPT_CHARS) ui.composerError.hidden = true;
  });
  ui.stop.addEventListener("click", () => {
    stop();
    ui.input.focus();
  });
  ui.rename.addEventListener("click", startRename);
  ui.delete.addEventListener("click", deleteCurrent);
  ui.renameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (protocol.isBlank(ui.renameInput.value)) {
      // Enter on a blank title: said where it is typed (leaving the field keeps the old one).
      ui.renameInput.setCustomValidity("A title cannot be blank: type one, or press Esc to keep the current title.");
      ui.renameInput.reportValidity();
      return;
    }
    endRename(true);
    ui.rename.focus();
  });
  ui.renameInput.addEventListener("input", () => ui.renameInput.setCustomValidity(""));
  ui.renameInput.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    event.preventDefault();
    endRename(false);
    ui.rename.focus();
  });
  ui.renameInput.addEventListener("blur", () => endRename(true));
  ui.newConversation.addEventListener("click", () => {
    navigateTo(null);
    ui.input.focus();
  });
  for (const chip of document.querySelectorAll(".suggestions .chip")) {
    chip.addEventListener("click", () => {
      if (!current) return;
      // Sent as it is: what was typed stays in the box (now the conversation's draft).
      const typed = ui.input.value;
      saveDraft(draftKey(), "");
      sendPrompt(chip.textContent.trim());
      saveDraft(draftKey(), typed);
      ui.input.focus();
    });
  }
  window.addEventListener("hashchange", openFromHash);
  window.addEventListener("popstate", openFromHash);
  window.addEventListener("online", () => outbox.start());
  document.addEventListener("visibilitychange", onVisibility);
  if (document.visibilityState === "visible") tabs?.postMessage({ type: "shown" });

  outbox.on("change", () => {
    sidebar.render();
    maybeFollow();
    scheduleRender();
  });
  // A closed tab's messages taken on after the list was read (before, forgetDeleted drops
  // those of a deleted conversation as the list shows it).
  outbox.on("adopted", () => {
    const deleting = pendingState().deleted;
    const dropped = protocol.dropUnsentOfDeleted(outbox, (id) => conversations.isDeleted(id) || deletedHere.has(id) || deleting.includes(id));
    const ids = new Set(dropped.map(({ path }) => protocol.conversationOfPrompts(path)).filter(Boolean));
    for (const id of ids) {
      const ofIt = dropped.filter(({ path }) => protocol.conversationOfPrompts(path) === id);
      giveBack(promptTexts(ofIt), named(conversations.deletedTitle(id)));
    }
  });
  outbox.on("state", (state, error) => {
    status.setOutbox(state, error);
    updateBrowserNode(); // the diagram says what the pill says
  });
  outbox.on("sent", ({ key, path, body, result }) => {
    const until = result?.nextOffset;
    if (path === protocol.CONVERSATIONS_PATH && (body?.type === "conversation" || body?.type === "activity") && until
        && compareOffsets(until, conversationsFollow?.offset ?? "-1") > 0) {
      sentListings.set(key, { body, until });
    }
    if (current && path === protocol.promptsPath(current.id)) {
      flow.promptSent();
      // Made again for this message: read them now, not at the end of a retry's backoff.
      if (current.missing.prompts || current.missing.responses) refollow(current);
    }
    const conversationId = protocol.conversationOfPrompts(path);
    if (body?.type === "prompt" && conversationId) {
      sentHere.add(body.id);
      sentPrompts.set(body.id, { conversationId, id: body.id, content: body.content, timestamp: body.timestamp, sent: true });
    }
  });
  outbox.on("failed", ({ path, body, error }) => {
    if (body?.type !== "prompt") {
      // Refused for good (asking again cannot change it): said, not dropped without a word.
      const what = REFUSED_ACTIONS[body?.type];
      if (what) announce(`${what}: ${firstCharacters(error.message, 300).replace(/[.\s]+$/, "")}.`);
      return;
    }
    const conversationId = protocol.conversationOfPrompts(path);
    failedPrompts.set(body.id, { conversationId, id: body.id, content: body.content, timestamp: body.timestamp, failed: error.message });
    // The text goes back to its conversation's message box, after what that holds: kept
    // across a reload, as typed text is (the failed bubble is not).
    if (current?.id !== conversationId) {
      keepInDraft(`draft:${conversationId}`, body.content);
      scheduleRender();
      return;
    }
    if (ui.input.value.trim()) messageBox.add([body.content], draftKey());
    else {
      ui.input.value = body.content;
      saveDraft(draftKey(), body.content);
      messageBox.fit();
    }
    const reason = firstCharacters(error.message, 300).replace(/[.\s]+$/, "");
    announce(`Your message was not sent: ${reason}. It is back in the message box.`);
    scheduleRender();
  });
}

/** What a message the server refused for good leaves undone, by type (a prompt is given
 * back; an `activity` only orders the list). */
const REFUSED_ACTIONS = {
  conversation: "The conversation's title was not saved",
  delete: "The conversation was not deleted",
  cancel: "The answer could not be stopped",
};

function main() {
  wire();
  wireSkipLink();
  openFromHash();
  followConversations();
  outbox.start(); // re-send anything a previous load of this tab left unacknowledged
  updateBrowserNode();
  // Nothing arriving is news too: an unfinished answer that stops growing says so (looked
  // at every 2 s), and one whose agent waits to ask the model again counts the seconds down.
  let tick = 0;
  setInterval(() => {
    tick += 1;
    if (tick % 2 && !view.anyWaiting) return;
    if (current?.transcript.visibleTurns().some((t) => !t.final)) scheduleRender();
  }, 1000);
}

main();
