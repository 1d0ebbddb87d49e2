// How the browser starts conversations, sends prompts and cancels answers: the one place in
// the front end that knows the stream layout and the message shapes written by the browser
// (see the README's schema). Everything goes through the outbox, so each append is retried
// with its idempotent producer identity until acknowledged, even across a reload.

import { config } from "./config.js";
import { MAX_PROMPT_ID_CHARS, MAX_TITLE_CHARS, cleanTitle, firstCharacters, isBlank, titleIsCut } from "./conversation-model.js";
import { randomId } from "./util.js";

export { MAX_TITLE_CHARS, isBlank, titleIsCut };

export const CONVERSATIONS_PATH = "conversations";
export const promptsPath = (conversationId) => `conversations/${conversationId}/prompts`;
/** The conversation whose prompts stream `path` is, or undefined. */
export const conversationOfPrompts = (path) => /^conversations\/([^/]+)\/prompts$/.exec(path)?.[1];
export const responsesPath = (conversationId) => `conversations/${conversationId}/responses`;

/** The pull-wake subscription the agents' supervisor keeps for a conversation (agent_actors). */
export const subscriptionId = (conversationId) => `conversation-${conversationId}`;

/** The longest prompt sent: far beyond any model's context already, and what the browser
 * can keep (twice over, in UTF-16) in the ~5 MB of storage its tabs share until the server
 * has it (a prompt that cannot be stored is still sent, from memory). */
export const MAX_PROMPT_CHARS = 1_000_000;

/** Whether a stored prompt (a transcript's `{content, isText}`) can be sent again as it is
 * (Try again): not one whose content was not text, shown as JSON. */
export function canAskAgain(prompt) {
  const content = prompt?.isText ? prompt.content : null;
  return typeof content === "string" && !isBlank(content) && content.length <= MAX_PROMPT_CHARS;
}

export const newConversationId = () => randomId();
export const newPromptId = () => randomId("p-");

/** The id of the prompt that asks `promptId`'s question again: the same in every tab, so
 * that Try again clicked in two tabs at once asks once (a repeated id is the same prompt,
 * for the agent as for every page). Cut to an id the agent answers: another client's ids
 * may be long, and a skipped prompt's turn has none. */
export function retryPromptId(promptId) {
  const again = /^(.*)~again(\d+)$/s.exec(promptId);
  const [base, count] = again ? [again[1], Number(again[2]) + 1] : [promptId, 1];
  const suffix = `~again${count}`;
  return `${Array.from(base).slice(0, MAX_PROMPT_ID_CHARS - suffix.length).join("")}${suffix}`;
}

const TITLE_LIMIT = 60;

/** A conversation title from its first prompt: its first line of text without the Markdown
 * around it (a title read "```python", "# Big heading" or "**Bold** `code`"), shortened. */
export function titleFrom(text) {
  const firstLine = String(text).split("\n").map(plainLine).find((l) => !isBlank(l)) ?? "";
  const line = firstLine.trim().replace(/\s+/g, " ");
  const start = firstCharacters(line, TITLE_LIMIT);
  const title = start === line ? line : `${firstCharacters(start, TITLE_LIMIT - 1).replace(/\s+\S*$/, "")}…`;
  // As the list shows it once read back (invisible characters left out), not otherwise until then.
  return cleanTitle(title) ?? "Untitled";
}

const FENCE_OR_RULE = /^ {0,3}(?:`{3,}|~{3,}|([-*_])(?:[ \t]*\1){2,}[ \t]*$)/;
const HEADING = /^ {0,3}#{1,6}(?:[ \t]+|$)(.*?)(?:[ \t]+#+)?[ \t]*$/;
// (Numbered items up to 999: "2024. A year" is a sentence.)
const QUOTE_OR_ITEM = /^[ \t]*(?:>[ \t]?)*(?:(?:[-*+]|\d{1,3}[.)])[ \t]+)?/;
const LINK = /!?\[([^\]]*)\]\((?:[^()]|\([^()]*\))*\)/g; // a link or image: its text (its URL may hold (one) pair of parentheses)
const CODE_SPAN = /(`+)(.+?)(?<!`)\1(?!`)/g;
// Not inside words ("5*5*5", snake_case), nor escaped ("\*not emphasis\*").
const EMPHASIS = /(?<![\w\\])(\*{1,3}|_{1,3}|~~)(?=\S)(.*?[^\s\\])\1(?!\w)/g;
const ESCAPE = /\\([!-/:-@[-`{-~])/g;

/** A line of Markdown as the text it shows: a fence or a rule shows none. */
function plainLine(line) {
  if (FENCE_OR_RULE.test(line)) return "";
  const heading = HEADING.exec(line);
  return (heading ? heading[1] : line.replace(QUOTE_OR_ITEM, ""))
    .replace(CODE_SPAN, "$2")
    .replace(LINK, "$1")
    .replace(EMPHASIS, "$2")
    .replace(ESCAPE, "$1");
}

/**
 * The conversation's pull-wake subscription, exactly as agent_actors/layout.py defines it.
 * It is created before the prompts stream: a pattern links a stream created later at offset
 * 0, so the very first prompt wakes an agent (an explicit link to an existing stream would
 * start at its tail and miss it).
 */
export function agentSubscription(conversationId) {
  return {
    id: subscriptionId(conversationId),
    config: {
      type: "pull-wake",
      pattern: promptsPath(conversationId),
      wake_stream: config.agents.wakeStream,
      lease_ttl_ms: config.agents.leaseTtlMs,
    },
  };
}

/**
 * Start a conversation: its subscription, then its prompt and response streams (PUT,
 * idempotent), then list it in `conversations` - all before any prompt is appended to it.
 * @param {import("./outbox.js").Outbox} outbox
 */
export function startConversation(outbox, { id, title }) {
  return outbox.enqueue(
    CONVERSATIONS_PATH,
    { type: "conversation", id, title, timestamp: Date.now() },
    {
      subscription: agentSubscription(id),
      ensure: [CONVERSATIONS_PATH, promptsPath(id), responsesPath(id)],
    },
  );
}

/** Append a prompt; returns {promptId, key, done}. `ensured: false` makes the conversation's
 * streams first (they are there, else made again once the append finds one missing). */
export function sendPrompt(outbox, conversationId, content, promptId = newPromptId(), { ensured = true } = {}) {
  const entry = outbox.enqueue(
    promptsPath(conversationId),
    { type: "prompt", id: promptId, content, timestamp: Date.now() },
    {
      subscription: agentSubscription(conversationId),
      ensure: [promptsPath(conversationId), responsesPath(conversationId)],
      ensured,
    },
  );
  return { promptId, ...entry };
}

/** List a conversation again under `title`: its `conversation` message again. Every tab
 * takes the latest title (a rename), and a list that lost it (a server whose data was
 * wiped) has it again; a deleted one stays deleted. Returns null when `title` is blank. */
export function listConversation(outbox, { id, title }) {
  const clean = cleanTitle(title);
  if (!clean) return null;
  return outbox.enqueue(
    CONVERSATIONS_PATH,
    { type: "conversation", id, title: clean, timestamp: Date.now() },
    { ensure: [CONVERSATIONS_PATH], ensured: true },
  );
}

/** Delete a conversation for everyone: a `delete` message in `conversations`, on which the
 * agents' supervisor removes its streams and subscription. Its prompts not sent yet are
 * dropped, so that no retry brings its streams back. */
export function deleteConversation(outbox, conversationId) {
  dropUnsent(outbox, conversationId);
  return outbox.enqueue(
    CONVERSATIONS_PATH,
    { type: "delete", id: conversationId, timestamp: Date.now() },
    { ensure: [CONVERSATIONS_PATH], ensured: true },
  );
}

/** Drop what the outbox still holds for a deleted conversation: its prompts, and its
 * renames and activity (sent, they would list it again; a prompt's retries would create its
 * streams again). Returns the dropped messages ({path, body}). */
export function dropUnsent(outbox, conversationId) {
  return dropUnsentOfDeleted(outbox, (id) => id === conversationId);
}

/** `dropUnsent` for every conversation that `isDeleted`, such as those of the messages a
 * closed tab left unsent. */
export function dropUnsentOfDeleted(outbox, isDeleted) {
  return outbox.discard(({ path, body }) => {
    const id = path === CONVERSATIONS_PATH
      ? body?.type !== "delete" && body?.id
      : conversationOfPrompts(path);
    return typeof id === "string" && isDeleted(id);
  });
}

/** Drop the unsent starts (see `startConversation`) of conversations `isListed`: a page that
 * has not read the list yet starts the conversation a link names, and that `conversation`
 * message, sent, would rename it. Returns the dropped messages ({path, body}). */
export function dropStartsOfListed(outbox, isListed) {
  const starts = new Set(outbox.pending()
    .filter(({ path, body, subscribes }) => path === CONVERSATIONS_PATH && body?.type === "conversation" && subscribes && isListed(body.id))
    .map(({ key }) => key));
  return starts.size ? outbox.discard(({ key }) => starts.has(key)) : [];
}

/** Say in `conversations` that a conversation has a new prompt, so that every tab lists it
 * first. Only worth sending when it is not first already. */
export function markActive(outbox, conversationId) {
  return outbox.enqueue(
    CONVERSATIONS_PATH,
    { type: "activity", id: conversationId, timestamp: Date.now() },
    { ensure: [CONVERSATIONS_PATH], ensured: true },
  );
}

/** Ask the agent to stop answering `promptId`; `attempt`: the answer's attempt on the
 * screen (a Stop that reaches the agent after it restarted the answer, with the server
 * away meanwhile, ends the answer with that attempt's text rather than the new one's). */
export function cancelPrompt(outbox, conversationId, promptId, attempt) {
  const named = Number.isInteger(attempt) && attempt >= 0 ? { attempt } : {};
  return outbox.enqueue(
    promptsPath(conversationId),
    { type: "cancel", promptId, ...named, timestamp: Date.now() },
    { ensure: [promptsPath(conversationId)], ensured: true },
  );
}

/** Pending outbox entries seen as chat items: new conversations, activity and prompts not yet
 * stored. */
export function pendingItems(entries) {
  const conversations = [];
  const activity = []; // {id, timestamp} of conversations, oldest first
  const deleted = [];
  const prompts = [];
  for (const entry of entries) {
    const body = entry.body ?? {};
    if (entry.path === CONVERSATIONS_PATH && body.type === "conversation") {
      conversations.push({ ...body, pending: true, streamsReady: !!entry.ensured });
    }
    if (entry.path === CONVERSATIONS_PATH && body.type === "activity") activity.push({ id: body.id, timestamp: body.timestamp });
    if (entry.path === CONVERSATIONS_PATH && body.type === "delete") deleted.push(body.id);
    const conversationId = conversationOfPrompts(entry.path);
    if (conversationId && (body.type === "prompt" || body.type === "cancel")) {
      prompts.push({ conversationId, ...body, key: entry.key });
    }
  }
  return { conversations, activity, deleted, prompts };
}
