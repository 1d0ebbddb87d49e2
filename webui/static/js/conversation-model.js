// Folds the messages of the conversation streams into what the chat shows. Pure and
// deterministic: the same messages always give the same result, so a reload that re-reads
// the streams from the beginning renders exactly the same conversation.

// Anyone who may append to a stream can put any JSON there, and JSON.parse can build objects
// whose toString/valueOf are not functions ({"toString": null}): String(x), `${x}` or
// [x].join() throw on them. So every field is turned into a primitive here, where it is read;
// what the rest of the UI sees is a string, a finite number or null.

/** A string as is; null/undefined as null; anything else as a text rendering that cannot throw. */
export function safeText(value) {
  if (typeof value === "string") return value;
  if (value === null || value === undefined) return null;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  try {
    const json = JSON.stringify(value);
    return typeof json === "string" ? json : null;
  } catch {
    return "[unreadable value]";
  }
}

/** A finite number, else null. */
export function safeNumber(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function safeUsage(usage) {
  if (!usage || typeof usage !== "object") return null;
  return {
    input_tokens: safeNumber(usage.input_tokens) ?? safeNumber(usage.inputTokens),
    output_tokens: safeNumber(usage.output_tokens) ?? safeNumber(usage.outputTokens),
  };
}

/** Run `fn(message)`; a message that makes it throw costs only itself (logged, not raised). */
function isolated(what, message, fn) {
  try {
    return fn(message);
  } catch (err) {
    console.warn(`skipped a ${what} message that could not be applied`, err);
    return undefined;
  }
}

/** A conversation id as the README defines it; a listing with any other names no streams
 * a client would create, and could not be opened. */
export const CONVERSATION_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** The longest prompt id answered, in Unicode code points (`MAX_PROMPT_ID_CHARS` in
 * agent_actors/schema.py): the agent skips a prompt with any other id, as nothing could be
 * written under it. */
export const MAX_PROMPT_ID_CHARS = 256;

/** Whether `id` is a prompt id an answer can be written under: a string of 1 to
 * `MAX_PROMPT_ID_CHARS` code points (Python counts those, not UTF-16 units). */
export function isAnswerableId(id) {
  if (typeof id !== "string" || id === "") return false;
  if (id.length <= MAX_PROMPT_ID_CHARS) return true;
  if (id.length > 2 * MAX_PROMPT_ID_CHARS) return false;
  let count = 0;
  for (const _ of id) count += 1; // code points, not UTF-16 units
  return count <= MAX_PROMPT_ID_CHARS;
}

/** Why a prompt with this id is skipped, in the words of `_id_problem` in agent_actors/schema.py. */
function idProblem(id) {
  if (id === null || id === undefined) return "a prompt without an id";
  if (typeof id !== "string") {
    const kind = typeof id === "boolean" ? "boolean" : typeof id === "number" ? "number" : Array.isArray(id) ? "array" : "object";
    return `a prompt whose id is not a string but a JSON ${kind}`;
  }
  if (id === "") return "a prompt whose id is empty";
  return `a prompt whose id is ${Array.from(id).length.toLocaleString("en-US")} characters long (at most ${MAX_PROMPT_ID_CHARS})`;
}

/** The longest title kept: anyone can append a title of any size, with line breaks too. */
export const MAX_TITLE_CHARS = 200;

// Control characters, and the invisible ones that reorder or hide text: a title like
// "invoice\u202Egnp.exe" would read "invoiceexe.png".
const INVISIBLE = /[\u0000-\u0008\u000e-\u001f\u007f-\u009f\u200b\u202a-\u202e\u2060-\u2069\ufeff]/g;

// What Python's `str.strip` strips and `trim` keeps (U+001C-U+001F, U+0085), and the
// characters that show nothing (Unicode's Default_Ignorable_Code_Point set): the same as
// `_INVISIBLE` in agent_actors/schema.py.
const BLANK_CHARACTERS = new RegExp(
  "[\\x1c-\\x1f\\x85\\u00ad\\u034f\\u061c\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f\\u200b-\\u200f" +
    "\\u202a-\\u202e\\u2060-\\u206f\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufff8" +
    "\\u{1bca0}-\\u{1bca3}\\u{1d173}-\\u{1d17a}\\u{e0000}-\\u{e0fff}]",
  "gu",
);

/** Whether a prompt (or title) has nothing in it, as the agents judge a prompt: a prompt of
 * characters `trim` keeps was sent, and failed. */
export function isBlank(text) {
  return text.replace(BLANK_CHARACTERS, "").trim() === "";
}

const GRAPHEMES = typeof Intl.Segmenter === "function" ? new Intl.Segmenter(undefined, { granularity: "grapheme" }) : null;

/** The first `count` characters of `text` as a reader counts them: a flag, or an emoji made
 * of several joined ones, is one and is never cut in half. */
export function firstCharacters(text, count) {
  // Every character is at least one code unit: a text no longer than `count` units is whole.
  // (Segmenting was a third of the page's start with a list of 100,000 conversations.)
  if (text.length <= count) return text;
  if (!GRAPHEMES) return Array.from(text).slice(0, count).join("");
  let taken = "";
  let n = 0;
  for (const { segment } of GRAPHEMES.segment(text)) {
    if (n++ === count) break;
    taken += segment;
  }
  return taken;
}

const TITLE_LOOKED_AT = MAX_TITLE_CHARS * 8; // what is looked at of a title of any size

/** A title's text on one line, without invisible characters, before it is shortened. */
function titleLine(value) {
  return value.slice(0, TITLE_LOOKED_AT).replace(INVISIBLE, "").replace(/\s+/g, " ").trim();
}

/** Whether `cleanTitle` leaves some of `value`'s characters out (past `MAX_TITLE_CHARS`). */
export function titleIsCut(value) {
  if (typeof value !== "string") return false;
  const line = titleLine(value);
  return value.length > TITLE_LOOKED_AT || firstCharacters(line, MAX_TITLE_CHARS) !== line;
}

/** A title on one line, at most `MAX_TITLE_CHARS` characters (see `firstCharacters`),
 * without invisible characters; null if it is blank or not text. */
export function cleanTitle(value) {
  if (typeof value !== "string") return null;
  const line = titleLine(value);
  if (isBlank(line)) return null;
  let title = firstCharacters(line, MAX_TITLE_CHARS);
  if (value.length > TITLE_LOOKED_AT && title === line) title = withoutLastCharacter(title); // maybe cut
  // A lone half of a surrogate pair (sent so) goes too.
  return title.replace(/[\ud800-\udfff]/gu, "") || null;
}

function withoutLastCharacter(text) {
  if (!GRAPHEMES) return Array.from(text).slice(0, -1).join("");
  let last = "";
  for (const { segment } of GRAPHEMES.segment(text)) last = segment;
  return text.slice(0, text.length - last.length);
}

/**
 * The conversation list, from the `conversations` stream: a `conversation` message lists one
 * (a later one with the same id renames it), an `activity` message says it has a new prompt,
 * and a `delete` message removes it for good.
 */
export class ConversationList {
  byId = new Map();
  #activity = new Map(); // id -> {order, activeAt}: its latest listing or activity message
  #order = 0;
  #deleted = new Map(); // id -> its title when it was deleted, if it was listed

  /** Apply messages; returns true if anything visible changed. */
  apply(messages) {
    let changed = false;
    for (const message of messages) {
      isolated("conversation", message, (m) => {
        if (!m || typeof m !== "object" || typeof m.id !== "string" || !CONVERSATION_ID.test(m.id)) return;
        if (m.type === "delete") {
          if (!this.#deleted.has(m.id)) this.#deleted.set(m.id, this.byId.get(m.id)?.title ?? null);
          changed = this.byId.delete(m.id) || changed;
          return;
        }
        if (this.#deleted.has(m.id)) return; // a late message does not bring it back
        if (m.type === "activity") {
          this.#touch(m.id, safeNumber(m.timestamp));
          changed ||= this.byId.has(m.id);
          return;
        }
        if (m.type !== undefined && m.type !== "conversation") return; // unknown types are skipped
        const existing = this.byId.get(m.id);
        const title = cleanTitle(m.title) ?? existing?.title ?? "Untitled";
        const timestamp = existing?.timestamp ?? safeNumber(m.timestamp) ?? 0;
        if (!existing) this.#touch(m.id, timestamp);
        this.byId.set(m.id, { id: m.id, title, timestamp });
        changed = true;
      });
    }
    return changed;
  }

  /** The list's order is the stream's; the time shown is the latest message's own. The map
   * is kept in that order too (a touched id goes to its end), so the list is read off it
   * without sorting. */
  #touch(id, at) {
    const activeAt = at ?? this.#activity.get(id)?.activeAt ?? 0;
    this.#activity.delete(id);
    this.#activity.set(id, { order: ++this.#order, activeAt });
  }

  get size() {
    return this.byId.size;
  }

  has(id) {
    return this.byId.has(id);
  }

  isDeleted(id) {
    return this.#deleted.has(id);
  }

  deletedTitle(id) {
    return this.#deleted.get(id) ?? null;
  }

  get(id) {
    return this.byId.get(id);
  }

  /** A listed conversation with its latest activity (`order`, `activeAt`), or undefined. */
  entry(id) {
    const c = this.byId.get(id);
    return c && { ...c, ...this.#activity.get(id) };
  }

  /** Most recently active first, in the stream's order rather than by the timestamps, which
   * come from the writers' clocks: every tab and machine shows the same order. Lazily: a
   * page shows the first few of a list that may hold hundreds of thousands. */
  *recent() {
    const ids = [...this.#activity.keys()];
    for (let i = ids.length - 1; i >= 0; i--) {
      const c = this.entry(ids[i]);
      if (c) yield c;
    }
  }

}

const CANCEL_REASONS = /cancel|abort|stop_requested|user_stop/i;

function newTurn(promptId) {
  return {
    promptId,
    prompt: null, // {content, isText, timestamp}
    text: "",
    chunks: 0,
    final: null, // "done" | "error" | "cancelled"
    stopReason: null,
    usage: null,
    model: null,
    error: null,
    cancelRequested: false,
    restarts: 0,
    restartsOf: new Map(), // attempt -> how many restarts the answer had been through by it
    attempt: 0, // the answer attempt being shown; earlier attempts are void
    chunkIds: new Set(),
    firstChunkAt: null,
    finishedAt: null,
    // The model refused or failed before the answer began and is asked again (the agent's
    // latest `wait`, until text or the end comes): {message, retryInMs, retry, retries}.
    wait: null,
    waits: 0, // how many `wait`s this attempt has had: each is news, though no text came
  };
}

/** `restores`: the earlier attempt whose text this one puts back (its user stopped it, and
 * the stop arrived after a restart): the answer is then as restarted as that attempt was,
 * not once more (it said "restarted 2×" of an answer its user saw at most one restart of). */
function restartTurn(turn, attempt, restores) {
  turn.text = "";
  turn.chunks = 0;
  turn.chunkIds.clear();
  turn.final = null;
  turn.error = null;
  turn.stopReason = null; // nor what an earlier attempt's end said
  turn.usage = null;
  turn.model = null;
  turn.firstChunkAt = null;
  turn.finishedAt = null;
  turn.wait = null;
  turn.waits = 0;
  turn.attempt = attempt;
  turn.restarts = Number.isInteger(restores) && restores >= 0 && restores < attempt
    ? turn.restartsOf.get(restores) ?? 0
    : turn.restarts + 1;
  turn.restartsOf.set(attempt, turn.restarts);
}

const RESPONSES_CLOSED = "No answer can be written: this conversation's responses stream has been closed.";

/** A prompt's turn key when its id cannot be answered: longer than any answerable id, so no
 * answer or cancel written under an id can reach it, and the same in every tab. */
const skippedPromptKey = (entry) => `(skipped prompt ${entry})`.padEnd(MAX_PROMPT_ID_CHARS + 1, ".");

function unanswerable(turn) {
  if (turn.final) return;
  turn.final = "error";
  turn.error = RESPONSES_CLOSED;
}

/** Turn state as shown: thinking, streaming, cancelling, done, cancelled, error. */
export function turnState(turn) {
  if (turn.final === "error") return "error";
  if (turn.final === "cancelled") return "cancelled";
  if (turn.final === "done") {
    if (typeof turn.stopReason === "string" && CANCEL_REASONS.test(turn.stopReason)) return "cancelled";
    return "done";
  }
  if (turn.cancelRequested) return "cancelling";
  return turn.chunks > 0 ? "streaming" : "thinking";
}

/**
 * One conversation's turns, from its prompt and response streams. The streams are read
 * independently, so answers may arrive before their prompts: both are kept by prompt id and
 * shown in prompt order.
 */
export class Transcript {
  turns = new Map();
  order = []; // prompt ids in prompt-stream order
  // Answers whose prompt the prompts stream does not hold (deleted, or never there): known
  // once both streams have been read (`settleAnswersWithoutPrompt`), shown before the others.
  withoutPrompt = [];
  #answeredFirst = []; // prompt ids whose answer was read before their prompt, in that order
  promptEntries = 0;
  responseEntries = 0;
  ignored = 0;
  responsesClosed = false; // no answer can be written any more
  promptsClosed = false; // no prompt can be sent any more (those sent are still answered)

  /** The responses stream is closed (read to its end): an answer not finished by then never
   * will be, nor one to a prompt sent later. */
  closeResponses() {
    this.responsesClosed = true;
    for (const turn of this.turns.values()) if (turn.prompt) unanswerable(turn);
  }

  #turn(promptId) {
    let turn = this.turns.get(promptId);
    if (!turn) {
      turn = newTurn(promptId);
      this.turns.set(promptId, turn);
    }
    return turn;
  }

  /** Apply prompt-stream messages; returns the ids of changed turns. */
  applyPrompts(messages) {
    const changed = new Set();
    for (const message of messages) {
      this.promptEntries += 1;
      isolated("prompt-stream", message, (m) => this.#applyPrompt(m, changed));
    }
    return changed;
  }

  #applyPrompt(m, changed) {
    if (!m || typeof m !== "object") return;
    // As the agent reads them (`parse_prompt_message`): a message without a type is a prompt,
    // as in the original example, if it has content.
    const typed = Object.hasOwn(m, "type");
    const type = typed ? m.type : "prompt";
    if (type === "prompt" && (typed || Object.hasOwn(m, "content"))) {
      const answerable = isAnswerableId(m.id);
      const key = answerable ? m.id : skippedPromptKey(this.promptEntries);
      const turn = this.#turn(key);
      if (turn.prompt) return; // a repeated prompt id is the same prompt
      // `isText`: content that is not a string is shown (as JSON), never asked again.
      turn.prompt = { content: safeText(m.content) ?? "", isText: typeof m.content === "string", timestamp: safeNumber(m.timestamp) };
      if (!answerable) {
        // The agent skips it: its writer would otherwise wait for an answer forever.
        turn.final = "error";
        turn.error = `No answer can come to ${idProblem(m.id)}: an answer is written under its prompt's id, which must be a string of 1 to ${MAX_PROMPT_ID_CHARS} characters.`;
      }
      if (this.responsesClosed) unanswerable(turn);
      if (this.withoutPrompt.includes(key)) this.withoutPrompt = this.withoutPrompt.filter((id) => id !== key);
      this.order.push(key);
      changed.add(key);
    } else if (type === "cancel" && typeof m.promptId === "string") {
      const turn = this.turns.get(m.promptId);
      if (!turn?.prompt) return; // before its prompt: it cannot be about one sent later
      if (!turn.final) {
        turn.cancelRequested = true;
        changed.add(m.promptId);
      }
    } else {
      this.ignored += 1;
    }
  }

  /** Apply response-stream messages; returns the ids of changed turns. */
  applyResponses(messages) {
    const changed = new Set();
    for (const message of messages) {
      this.responseEntries += 1;
      isolated("response-stream", message, (m) => this.#applyResponse(m, changed));
    }
    return changed;
  }

  #applyResponse(m, changed) {
    if (!m || typeof m !== "object" || !isAnswerableId(m.promptId)) { // no agent writes under another
      this.ignored += 1;
      return;
    }
    if (!this.turns.has(m.promptId)) this.#answeredFirst.push(m.promptId);
    const turn = this.#turn(m.promptId);
    // Messages without `type` follow the original example: chunks, the last one complete.
    const type = m.type ?? (m.isComplete ? "done" : "chunk");
    // As the agents read it (agent_actors/conversation_log.py): an attempt is a whole
    // number, 0 when missing; nothing counts after a final message, not even a restart.
    const attempt = Number.isInteger(m.attempt) ? m.attempt : 0;
    if (attempt < turn.attempt || turn.final) {
      this.ignored += 1; // a message of an attempt already restarted, or of a finished answer
      return;
    }
    if (type === "restart" || attempt > turn.attempt) {
      // The agent starts this answer again: what was streamed so far is void.
      restartTurn(turn, attempt, type === "restart" ? m.restores : undefined);
      changed.add(m.promptId);
      if (type === "restart") return;
    }
    if (type === "wait") {
      if (turn.chunks > 0) return; // the model is asked again only before the text begins
      const retryInMs = safeNumber(m.retryInMs);
      turn.wait = {
        message: (safeText(m.message) ?? "The AI model could not answer yet.").slice(0, 500),
        retryInMs: retryInMs !== null && retryInMs >= 0 ? Math.min(retryInMs, 3_600_000) : null,
        retry: Number.isInteger(m.retry) ? m.retry : null,
        retries: Number.isInteger(m.retries) ? m.retries : null,
      };
      turn.waits += 1;
    } else if (type === "chunk") {
      if (typeof m.id === "string") {
        if (turn.chunkIds.has(m.id)) return; // the same chunk twice is shown once
        turn.chunkIds.add(m.id);
      }
      if (typeof m.content === "string" && m.content) {
        turn.text += m.content;
        turn.chunks += 1;
        turn.firstChunkAt ??= safeNumber(m.timestamp);
        turn.wait = null;
      }
    } else if (type === "done" || type === "cancelled") {
      if (typeof m.content === "string" && m.content) {
        turn.text += m.content;
        turn.chunks += 1;
      }
      turn.final = type;
      turn.wait = null;
      turn.stopReason = safeText(m.stopReason ?? m.stop_reason) ?? (type === "cancelled" ? "cancelled" : null);
      turn.usage = safeUsage(m.usage);
      turn.model = safeText(m.model);
      turn.finishedAt = safeNumber(m.timestamp);
    } else if (type === "error") {
      turn.final = "error";
      turn.wait = null;
      turn.error = safeText(m.message ?? m.error ?? m.content) ?? "The agent reported an error.";
      turn.finishedAt = safeNumber(m.timestamp);
    } else {
      this.ignored += 1;
      return;
    }
    changed.add(m.promptId);
  }

  /** Call once both streams have been read to their end (or found missing): the answers
   * read so far without their prompt will not get one. */
  settleAnswersWithoutPrompt() {
    this.withoutPrompt = this.#answeredFirst.filter((id) => !this.turns.get(id).prompt);
  }

  /** The answers without a prompt (see `withoutPrompt`), then the turns with one, in prompt
   * order. */
  visibleTurns() {
    return [...this.withoutPrompt, ...this.order].map((id) => this.turns.get(id));
  }

  /** The prompt ids still being answered (not final). */
  activePromptIds() {
    return this.order.filter((id) => !this.turns.get(id).final);
  }
}
