// Renders a conversation's turns: the prompt, then the answer as sanitised Markdown with its
// state (sending, queued, thinking, streaming, cancelling, withdrawn, done, cancelled, error).

import { config } from "./config.js";
import { MarkdownView } from "./markdown.js";
import { canAskAgain, isBlank } from "./chat-protocol.js";
import { turnState } from "./conversation-model.js";
import { el, formatTime } from "./util.js";

/** An answer with no new text this long says what may be going on (call `render` meanwhile). */
const STALL_MS = 10_000;

/** The newest turns shown at first; older ones come this many at a time, on demand. Every
 * turn on the page costs each frame of a streaming answer (Chromium checks each one's place
 * on screen): with 3,000 of them the page was busy the whole time an answer streamed. */
export const SHOWN_TURNS = 100;

/** Scrolling this soon after the reader's wheel, touch, pointer or key is theirs (a smooth
 * or inertial scroll goes on after the input). */
const READER_SCROLL_MS = 1000;
const SCROLL_KEYS = new Set(["ArrowUp", "PageUp", "Home", " "]);

const STATE_LABEL = {
  sending: "Sending…",
  failed: "Not sent",
  queued: "Waiting for the answer above…",
  thinking: "Thinking…",
  streaming: "Answering…",
  cancelling: "Stopping…",
  withdrawn: "Withdrawn: it will not be answered",
  done: "",
  cancelled: "Stopped",
  error: "Error",
};

export class ChatView {
  #nodes = new Map(); // promptId -> turn DOM parts
  // Whether the view follows the newest text. A state, not the scroll position of the
  // moment: turns off screen are laid out at an estimated height (`content-visibility`), so
  // a scroll to the bottom lands short once they are laid out for real, and was then taken
  // for the reader having scrolled up. Only the reader's scrolling changes it.
  #following = true;
  /** Whether an answer shown by the last `render` has stalled (see `stallLevel`). */
  anyStalled = false;
  /** Whether the agent of an answer shown by the last `render` waits to ask the model again. */
  anyWaiting = false;
  #lastTop = 0;
  #newest = null; // what the newest turn holds, as of the last `render` (see there)
  #readerActiveAt = -Infinity; // the reader's last wheel, touch, pointer or key on the view
  #shownTurns = SHOWN_TURNS; // how many of the newest turns are on the page
  #turnCount = 0; // of the last `render`
  #lastRender = null; // the arguments of the last `render`, to render again with more turns
  #onFocusLost; // the focused button of a turn went with no other to take it
  #earlier = el("li", { class: "earlier-turns" },
    el("button", { type: "button", class: "earlier-turns-button", dataset: { testid: "earlier-turns" } }));

  /**
   * @param {HTMLElement} list the <ol> of turns; @param {HTMLElement} scroller its scroll box
   * @param {{onRetry?: (promptId: string) => void, onCancel?: (promptId: string) => void,
   *   announce?: (text: string) => void}} actions
   *   what the turns' buttons do (Try again, Cancel of a message waiting its turn); `announce` says what a copy did to a screen reader (the
   *   button's own new label is seldom read out)
   */
  constructor(list, scroller, { onRetry = () => {}, onCancel = () => {}, onFocusLost = () => {}, announce = () => {}, jumpButton = null } = {}) {
    this.list = list;
    this.#onFocusLost = onFocusLost;
    this.scroller = scroller;
    this.jumpButton = jumpButton;
    jumpButton?.addEventListener("click", () => this.scrollToBottom());
    // A press on a button is no scroll, though what it does may shorten the page (Cancel of a
    // waiting message): counted as the reader's, the clamped scroll stopped the following.
    const readerActive = (event) => {
      const press = event.type === "pointerdown" || event.key === "Enter" || event.key === " ";
      if (press && event.target.closest?.("button")) return;
      this.#readerActiveAt = performance.now();
    };
    for (const type of ["wheel", "touchmove", "pointerdown", "keydown"]) {
      scroller.addEventListener(type, readerActive, { passive: true });
    }
    window.addEventListener("keydown", (event) => {
      if (SCROLL_KEYS.has(event.key) && !event.target.closest?.("input, textarea")) readerActive(event);
    });
    scroller.addEventListener("scroll", () => this.#onScroll(), { passive: true });
    // Turns laid out late, a taller composer, a resized window: back to the bottom if following.
    const observer = new ResizeObserver(() => { if (this.#following) this.#toBottom(); });
    observer.observe(list);
    observer.observe(scroller);
    this.#earlier.firstChild.addEventListener("click", () => this.#showEarlier());
    list.addEventListener("click", (event) => {
      const button = event.target.closest?.("button");
      const promptId = button?.closest("[data-prompt-id]")?.dataset.promptId;
      if (!button || !promptId) return;
      if (button.dataset.copyCode !== undefined) copyCode(button)?.then(announce);
      else if (button.dataset.copyAnswer !== undefined) {
        const parts = this.#nodes.get(promptId);
        if (parts) copyToClipboard(button, parts.text, parts.body).then(announce);
      } else if (button.dataset.togglePrompt !== undefined) {
        const parts = this.#nodes.get(promptId);
        if (parts) {
          parts.promptExpanded = !parts.promptExpanded;
          // Shown whole, the prompt is read on from where its fold was: a view following the
          // newest text jumped to its end instead (80,000 px down for 200 KB).
          if (parts.promptExpanded) {
            this.#following = false;
            this.#offerJump();
          }
          showPromptClamp(parts);
          // Shown less, the prompt's start may be far above: bring its bubble back in view.
          if (!parts.promptExpanded) parts.prompt.scrollIntoView({ block: "nearest" });
        }
      } else if (button.dataset.retry !== undefined) {
        button.disabled = true; // a double click asks once; the next render removes it
        if (!onRetry(promptId)) button.disabled = false; // not asked: the turn stays as it is
      } else if (button.dataset.cancelQueued !== undefined) {
        button.disabled = true;
        onCancel(promptId);
      }
    });
  }

  clear() {
    this.#nodes.clear();
    this.list.replaceChildren();
    this.#following = true;
    this.#shownTurns = SHOWN_TURNS;
    this.#turnCount = 0;
    this.#lastRender = null;
    this.#newest = null;
    this.#offerJump();
  }

  /**
   * Show `turns` (from the transcript) followed by `pending` prompts the outbox has not
   * delivered yet ({id, content, timestamp, failed?}). `offline`: the page's live reads are
   * reconnecting, which is then why an answer shows no new text. `closed`: the conversation
   * takes no more answers, so none is offered to be tried again. `answersMissing`: the
   * server has no responses stream for it, which is then why no answer comes.
   */
  render(turns, pending, { offline = false, closed = false, answersMissing = false } = {}) {
    // Called once a frame while an answer streams, in conversations of thousands of turns:
    // nothing here reads the layout (the ResizeObserver keeps a following view at the
    // bottom once the page is laid out), and finished turns cost a few comparisons.
    this.#lastRender = [turns, pending, { offline, closed, answersMissing }];
    // New text: a new turn, or more of an answer, which need not be the last turn (messages
    // may wait after the one being answered). Not the layout's height, which a taller
    // composer or a narrower window changes too. (A sum over every turn: microseconds.)
    let text = 0;
    for (const turn of turns) text += turn.text.length + turn.attempt;
    const newest = `${turns.length} ${pending.length} ${text}`;
    if (this.#newest !== null && newest !== this.#newest && !this.#following) this.#offerJump(true);
    this.#newest = newest;
    // A reader scrolled up keeps the turns they may be reading as new ones come in.
    if (!this.#following && this.#turnCount && turns.length > this.#turnCount) this.#shownTurns += turns.length - this.#turnCount;
    this.#turnCount = turns.length;
    let earlierUnfinished = false; // the agent answers in order: later prompts wait their turn
    const from = Math.max(0, turns.length - this.#shownTurns);
    for (let i = 0; i < from && !earlierUnfinished; i++) earlierUnfinished = !turns[i].final && !!turns[i].prompt;
    const wanted = [];
    for (let i = from; i < turns.length; i++) wanted.push({ id: turns[i].promptId, turn: turns[i] });
    if (pending.length) {
      const known = new Set(turns.map((t) => t.promptId));
      for (const p of pending) if (!known.has(p.id)) wanted.push({ id: p.id, pending: p });
    }
    let previous = null;
    if (from > 0) {
      const more = Math.min(from, SHOWN_TURNS);
      const label = `Show ${more === 1 ? "the earlier turn" : `${more.toLocaleString("en-US")} earlier turns`} (${from.toLocaleString("en-US")} not shown)`;
      if (this.#earlier.firstChild.textContent !== label) this.#earlier.firstChild.textContent = label;
      if (this.list.firstChild !== this.#earlier) this.list.prepend(this.#earlier);
      previous = this.#earlier;
    } else this.#earlier.remove();
    let stalled = false;
    let waiting = false;
    const last = wanted.at(-1);
    // Messages withdrawn behind an answer (ended without a word of one) do not take its Try
    // again: stopped, with the next question withdrawn, it could not be asked again.
    let lastAsked = last;
    for (let i = wanted.length - 1; i > 0 && neverAnswered(wanted[i].turn); i--) lastAsked = wanted[i - 1];
    for (const item of wanted) {
      let parts = this.#nodes.get(item.id);
      if (!parts) {
        parts = buildTurn(item.id);
        this.#nodes.set(item.id, parts);
      }
      const expectedPosition = previous ? previous.nextSibling : this.list.firstChild;
      if (expectedPosition !== parts.li) this.list.insertBefore(parts.li, expectedPosition);
      try {
        if (item.turn) {
          updateTurn(parts, item.turn, earlierUnfinished, (item === last || item === lastAsked) && !closed, offline, answersMissing, this.#onFocusLost);
          // The agent answers the prompts stream in order: an answer without its prompt there
          // holds up none of them.
          earlierUnfinished ||= !item.turn.final && !!item.turn.prompt;
          stalled ||= parts.li.dataset.stalled === "true";
          waiting ||= parts.li.dataset.waiting === "true";
        } else updatePending(parts, item.pending);
      } catch (err) {
        // One turn that cannot be shown (hostile stream content) costs only itself.
        console.warn(`could not render turn ${item.id}`, err);
      }
      previous = parts.li;
    }
    if (this.#nodes.size > wanted.length) { // turns no longer there, left after the others
      const keep = new Set(wanted.map((w) => w.id));
      for (const [id, parts] of this.#nodes) {
        if (!keep.has(id)) {
          parts.li.remove();
          this.#nodes.delete(id);
        }
      }
    }
    this.anyStalled = stalled;
    this.anyWaiting = waiting;
    return from + wanted.length;
  }

  /** The next older turns, with the reader left where they were: at the turn that was the
   * oldest shown (the button's focus goes to the turns if no older ones are left). */
  #showEarlier() {
    if (!this.#lastRender) return;
    const oldest = this.#earlier.nextSibling;
    const before = oldest?.getBoundingClientRect().top;
    this.#shownTurns += SHOWN_TURNS;
    this.#following = false;
    this.render(...this.#lastRender);
    if (oldest && before !== undefined) this.scroller.scrollTop += oldest.getBoundingClientRect().top - before;
    if (!this.#earlier.isConnected && oldest) { // the button is gone: focus goes where reading goes on
      oldest.tabIndex = -1;
      oldest.focus({ preventScroll: true });
    }
  }

  /** Show the newest text, and keep following it. */
  scrollToBottom() {
    this.#following = true;
    this.#toBottom();
    this.#offerJump();
  }

  /** The button back to the newest text, while the reader is away from it; it says when
   * text has come in below since. */
  #offerJump(newText = false) {
    const button = this.jumpButton;
    if (!button) return;
    const away = !this.#following;
    if (button.hidden === away) button.hidden = !away;
    if (!away) button.classList.remove("has-new");
    else if (newText && !button.classList.contains("has-new")) {
      button.classList.add("has-new");
      button.querySelector(".button-label").textContent = "New text below";
    }
    if (!away && button.querySelector(".button-label").textContent !== "Newest") {
      button.querySelector(".button-label").textContent = "Newest";
    }
  }

  #toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  /** Our own scrolls land at the bottom and keep following. A reader who scrolls up, by
   * however little (an arrow key, a slow drag), stops it; back near the bottom, it resumes. */
  #onScroll() {
    const top = this.scroller.scrollTop;
    const up = top < this.#lastTop;
    this.#lastTop = top;
    const byReader = performance.now() - this.#readerActiveAt < READER_SCROLL_MS;
    this.#following = this.#nearBottom() && !(up && byReader);
    this.#offerJump();
  }

  #nearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }
}

function buildTurn(promptId) {
  const promptText = el("div", { class: "bubble-text", dir: "auto" });
  const promptMeta = el("div", { class: "msg-meta", dataset: { testid: "prompt-meta" } });
  const promptToggle = el("button", { type: "button", class: "meta-action prompt-toggle", hidden: true,
    "aria-expanded": "false", dataset: { togglePrompt: "", testid: "prompt-toggle" } });
  // Named for screen readers, which cannot see the bubble or the avatar that tell them apart.
  const prompt = el("div", { class: "msg msg-user", role: "article", "aria-label": "You said", dataset: { testid: "prompt" } },
    el("div", { class: "bubble" }, promptText), promptToggle, promptMeta);

  const status = el("div", { class: "answer-status", dataset: { testid: "answer-status" } },
    el("span", { class: "dots", "aria-hidden": "true" }, el("i"), el("i"), el("i")),
    el("span", { class: "answer-status-text" }));
  const body = el("div", { class: "markdown", dir: "auto", dataset: { testid: "answer-text" } });
  const error = el("div", { class: "answer-error", dataset: { testid: "answer-error" }, hidden: true });
  const meta = el("div", { class: "msg-meta answer-meta", dataset: { testid: "answer-meta" } });
  const answer = el("div", { class: "msg msg-agent", role: "article", "aria-label": "The agent answered", dataset: { testid: "answer" } },
    el("div", { class: "avatar", "aria-hidden": "true" }, "AI"),
    // The status after the text: where a reader of a long answer is when it stops growing.
    el("div", { class: "answer-main" }, body, status, error, meta));

  const li = el("li", { class: "turn", dataset: { testid: "turn", promptId } }, prompt, answer);
  return { li, prompt, promptText, promptToggle, promptExpanded: false, promptMeta, answer, status, statusText: status.lastChild, body, md: new MarkdownView(body), error, meta };
}

/** How long without new text an answer has been (0 if it is not waiting for any): past
 * STALL_MS it says what may be going on; past an agent's lease as well, a stopped agent
 * would have been replaced by then, so it says that none may be running. */
function stallLevel(state, idleMs) {
  if ((state !== "thinking" && state !== "streaming") || idleMs <= STALL_MS) return 0;
  return idleMs > STALL_MS + config.agents.leaseTtlMs ? 2 : 1;
}

/** What a stalled answer says (see `stallLevel`); `idleMs`: how long it has had no new text. */
function stalledLabel(state, level, offline, idleMs) {
  if (offline) return "No new text while the connection is lost: the answer goes on once it is back.";
  if (level === 2) {
    const idle = formatIdle(idleMs);
    return state === "thinking"
      ? `No answer has begun in ${idle}. The model may be slow, or no agent is running: the prompt is answered once one is.`
      : `No new text for ${idle}. The model may be slow, or no agent is running: the answer goes on once one is.`;
  }
  const within = `within ${Math.round(config.agents.leaseTtlMs / 1000)} s`;
  return state === "thinking"
    ? `Still waiting for the first words. If the agent stopped, another one takes over ${within}.`
    : `No new text for a while. If the agent stopped, another one resumes this answer ${within}.`;
}

/** A wait in steps that do not change the text at every tick: 15 s, 3 min, 2 h. */
function formatIdle(ms) {
  const seconds = ms / 1000;
  if (seconds < 60) return `${Math.floor(seconds / 5) * 5} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h`;
}

/** What an answer says while its agent waits to ask the model again (a `wait` message seen
 * `idleMs` ago): why, and when the next try is. */
function waitLabel(wait, idleMs) {
  const left = wait.retryInMs === null ? 0 : Math.ceil((wait.retryInMs - idleMs) / 1000);
  const which = wait.retry !== null && wait.retries !== null ? ` (retry ${wait.retry} of ${wait.retries})` : "";
  const when = left > 0 ? `Trying again in ${left} s${which}.` : `Trying again${which}…`;
  return `${wait.message} ${when}`;
}

/** `note`: what the answer says instead of its state's label (see `stalledLabel` and
 * `waitLabel`); `stalled`: no news came for too long; `waiting`: its agent waits to ask the
 * model again. */
function setState(parts, state, note = "", { stalled = false, waiting = false } = {}) {
  const label = note || (STATE_LABEL[state] ?? "");
  if (parts.li.dataset.state === state && parts.statusText.textContent === label
      && parts.li.dataset.waiting === String(waiting)) return;
  parts.li.dataset.state = state;
  parts.li.dataset.stalled = String(stalled);
  parts.li.dataset.waiting = String(waiting);
  parts.statusText.textContent = label;
  parts.status.hidden = !["sending", "queued", "thinking", "streaming", "cancelling", "withdrawn"].includes(state);
  parts.answer.setAttribute("aria-busy", String(state === "thinking" || state === "streaming"));
}

/** Longest prompt whose lines each take the direction of their own text: past it, working
 * out each line's direction held the page for seconds (900,000 characters in one line: 2.4 s
 * instead of 0.9), and the whole prompt takes the direction of its start. */
const OWN_DIRECTION_LINES_MAX = 20_000;

/** A prompt with more lines than this, or more characters, shows only its first lines
 * (`.is-clamped`) until the reader asks for all of it: pasted logs or documents made bubbles
 * thousands of pixels tall (78,000 for 200,000 characters) to scroll past on every visit. The
 * text stays whole in the page (for find-in-page, selection and copy); clamped at 20 lines,
 * these always overflow the bubble, so the button never shows on a prompt that fits. */
const CLAMP_PAST_LINES = 30;
const CLAMP_PAST_CHARS = 3_000;

function lineCountAbove(text, limit) {
  let at = -1;
  for (let lines = 1; lines <= limit; lines++) {
    at = text.indexOf("\n", at + 1);
    if (at === -1) return false;
  }
  return true;
}

function showPromptText(parts, text) {
  if (parts.promptText.textContent === text) return;
  parts.promptText.textContent = text;
  parts.promptText.classList.toggle("lines-own-direction", text.length <= OWN_DIRECTION_LINES_MAX);
  parts.promptClampable = text.length > CLAMP_PAST_CHARS || lineCountAbove(text, CLAMP_PAST_LINES);
  showPromptClamp(parts);
}

function showPromptClamp(parts) {
  const clamped = parts.promptClampable && !parts.promptExpanded;
  parts.promptText.classList.toggle("is-clamped", clamped);
  parts.promptToggle.hidden = !parts.promptClampable;
  parts.promptToggle.setAttribute("aria-expanded", String(!clamped));
  const size = parts.promptText.textContent.length.toLocaleString("en");
  parts.promptToggle.textContent = clamped ? `Show all (${size} characters)` : "Show less";
}

function updatePending(parts, pending) {
  parts.signature = null;
  parts.settled = null;
  showPromptText(parts, pending.content);
  parts.promptMeta.textContent = pending.failed ? `Not sent: ${pending.failed}`
    : pending.sent ? formatTime(pending.timestamp) : `${formatTime(pending.timestamp)} · sending…`;
  parts.li.classList.toggle("is-failed", !!pending.failed);
  setState(parts, pending.failed ? "failed" : pending.stopping ? "cancelling" : pending.sent ? "thinking" : "sending");
  parts.answer.hidden = !!pending.failed;
}

/** A turn stopped before a word of its answer came: most often withdrawn while it waited. */
function neverAnswered(turn) {
  return !!turn && !turn.text && turnState(turn) === "cancelled";
}

/** `latest`: the conversation's last turn (or the last before messages withdrawn after
 * it), the one whose answer can be tried again (by sending its prompt again). */
function updateTurn(parts, turn, waitingTurn, latest, offline, answersMissing, onFocusLost) {
  // A finished turn changes only with a message (a prompt read after its answer, a restart)
  // or as it stops being the latest: the rest of this is for the turn still being answered.
  const settled = parts.settled;
  if (turn.final && settled && settled.final === turn.final && settled.length === turn.text.length
      && settled.prompt === turn.prompt && settled.restarts === turn.restarts
      && settled.error === turn.error && settled.latest === latest) return;
  parts.settled = turn.final
    ? { final: turn.final, length: turn.text.length, prompt: turn.prompt, restarts: turn.restarts, error: turn.error, latest }
    : null;
  const shown = turnState(turn);
  // A message cancelled while it waits is ended by the agent only once its turn comes, which
  // may be minutes away: it said "Stopping…" all that while.
  const state = !waitingTurn || turn.chunks ? shown
    : shown === "thinking" ? "queued" : shown === "cancelling" ? "withdrawn" : shown;
  const progress = [state, turn.text.length, turn.restarts, turn.waits].join("\u0000");
  if (parts.progress !== progress) {
    parts.progress = progress;
    parts.progressAt = performance.now();
  }
  const idleMs = performance.now() - parts.progressAt;
  // While the agent waits to ask the model again, the silence is expected until the wait ends.
  const wait = state === "thinking" ? turn.wait : null;
  const stalled = stallLevel(state, wait ? idleMs - (wait.retryInMs ?? 0) : idleMs);
  const stallNote = answersMissing && !turn.final
    ? "No answer can be written: this conversation's responses stream is missing on the server."
    : stalled ? stalledLabel(state, stalled, offline, idleMs) : "";
  const note = stallNote || (wait ? waitLabel(wait, idleMs) : "");
  // Streaming touches one turn at a time: leave the others' DOM alone.
  const signature = [state, turn.text.length, turn.restarts, turn.error, turn.stopReason, turn.finishedAt, turn.chunks, note, stallNote, latest, !turn.prompt].join("\u0000");
  if (parts.signature === signature) return;
  parts.signature = signature;
  parts.li.classList.remove("is-failed");
  parts.answer.hidden = false;
  // Written by another client, a prompt may be blank (its answer says it is): not an empty bubble.
  const blank = !!turn.prompt && isBlank(turn.prompt.content);
  parts.prompt.classList.toggle("is-unstored", !turn.prompt);
  parts.prompt.classList.toggle("is-blank", blank);
  showPromptText(parts, !turn.prompt ? "This answer's question is not on the server." : blank ? "(an empty message)" : turn.prompt.content);
  parts.promptMeta.textContent = turn.prompt ? formatTime(turn.prompt.timestamp) : "";
  setState(parts, state, note, { stalled: stallNote !== "", waiting: !!wait && !stallNote });
  parts.md.update(turn.text, { open: state !== "done" });
  parts.body.classList.toggle("is-streaming", state === "streaming");
  parts.body.hidden = turn.text === "" && state !== "done";
  if (turn.error) {
    parts.error.hidden = false;
    parts.error.textContent = turn.error;
  } else parts.error.hidden = true;
  parts.text = turn.text;
  // The buttons are made anew: one that had the focus hands it to its successor (or, if it
  // went, to the other one, or with none left to `onFocusLost`), else the focus would fall
  // to the page's body (a waiting message's Cancel goes as its answer begins).
  const focused = parts.meta.contains(document.activeElement) ? document.activeElement.dataset.testid : null;
  parts.meta.replaceChildren(...metaItems(turn, state));
  // The buttons wrap onto a line of their own together, not one at a time.
  const actions = el("span", { class: "meta-actions" });
  if (turn.text && (state === "done" || state === "cancelled" || state === "error")) {
    actions.append(el("button", { type: "button", class: "meta-action", dataset: { copyAnswer: "", testid: "copy-answer" }, "aria-label": "Copy the answer (Markdown)" }, "Copy"));
  }
  if (state === "queued") {
    actions.append(el("button", { type: "button", class: "meta-action", dataset: { cancelQueued: "", testid: "cancel-queued" }, "aria-label": "Cancel this message: it will not be answered" }, "Cancel"));
  }
  // The last answer, whole or not, can be had anew: its question asked again below it.
  if (latest && canAskAgain(turn.prompt) && (state === "done" || state === "error" || state === "cancelled")) {
    actions.append(el("button", { type: "button", class: "meta-action", dataset: { retry: "", testid: "retry" }, "aria-label": "Try again: ask this question again" }, "Try again"));
  }
  if (actions.childElementCount) parts.meta.append(actions);
  if (focused) {
    const next = parts.meta.querySelector(`[data-testid="${focused}"]`) ?? parts.meta.querySelector("button");
    if (next) next.focus();
    else onFocusLost();
  }
}

/** Why the model ended an answer that it did not simply finish (the Messages API's names). */
const STOP_REASONS = {
  max_tokens: "Cut off at the answer's token limit",
  model_context_window_exceeded: "Cut off: the conversation fills the model's context window",
  stop_sequence: "Ended at a stop sequence",
  refusal: "The model declined to go on",
  pause_turn: "Paused by the model",
  tool_use: "Stopped to use a tool",
};

function metaItems(turn, state) {
  const items = [];
  const add = (text, cls) => items.push(el("span", { class: cls ?? "" }, text));
  // Stopped before a word of it was written (most often withdrawn while it waited): it said
  // "Stopped by request", as if an answer had been begun.
  if (state === "cancelled") add(neverAnswered(turn) ? "Withdrawn: not answered" : "Stopped by request", "tag tag-warn");
  if (state === "error") add("Failed", "tag tag-error");
  if (turn.restarts > 0) add(turn.restarts === 1 ? "↻ Answer restarted" : `↻ Answer restarted ${turn.restarts}×`, "tag");
  if (state === "done" && turn.stopReason && turn.stopReason !== "end_turn") {
    add(Object.hasOwn(STOP_REASONS, turn.stopReason) ? STOP_REASONS[turn.stopReason] : `Stop reason: ${turn.stopReason}`);
  }
  const usage = turn.usage ?? {};
  const input = usage.input_tokens ?? usage.inputTokens;
  const output = usage.output_tokens ?? usage.outputTokens;
  const count = (n) => n.toLocaleString("en");
  // (0 and 0: not known, as of an answer stopped before a restart; or nothing used.)
  if (Number.isFinite(output) && (output > 0 || input > 0)) add(Number.isFinite(input) ? `${count(input)} in · ${count(output)} out tokens` : `${count(output)} tokens`);
  if (turn.model) add(String(turn.model));
  if (turn.finishedAt) add(formatTime(turn.finishedAt));
  return items;
}

function copyCode(button) {
  const code = button.closest(".md-code")?.querySelector("code");
  return code ? copyToClipboard(button, code.textContent, code) : null;
}

/** Put `text` on the clipboard; where the page may not (no permission, not a secure
 * origin), select `shown` instead so that Ctrl+C copies it. The button says which it did,
 * and so does the sentence returned. */
const copyResets = new WeakMap(); // button -> the timer that puts "Copy" back

async function copyToClipboard(button, text, shown) {
  // Its own label, kept from before the first click: a second click within the 1.5 s
  // would otherwise take "Copied" for it, and put that back for good.
  const label = (button.dataset.label ??= button.getAttribute("aria-label") ?? "");
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
    if (label) button.setAttribute("aria-label", "Copied"); // what a screen reader says too
  } catch {
    const range = document.createRange();
    range.selectNodeContents(shown);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Selected";
    if (label) button.setAttribute("aria-label", "Selected: press Ctrl+C to copy");
  }
  clearTimeout(copyResets.get(button)); // a second click: its own 1.5 s, not the first's
  copyResets.set(button, setTimeout(() => {
    button.textContent = "Copy";
    if (label) button.setAttribute("aria-label", label);
  }, 1500));
  return button.textContent === "Copied" ? "Copied." : "Selected: press Ctrl+C to copy.";
}
