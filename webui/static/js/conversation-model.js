// Folds the messages of the conversation streams into what the chat shows. Pure and
// deterministic: the same messages always give the same result, so a reload that re-reads
// the streams from the beginning renders exactly the same conversation.

/** The conversation list, from the `conversations` stream. */
export class ConversationList {
  byId = new Map();

  /** Apply messages; returns true if anything visible changed. */
  apply(messages) {
    let changed = false;
    for (const m of messages) {
      if (!m || typeof m !== "object" || typeof m.id !== "string") continue;
      if (m.type !== undefined && m.type !== "conversation") continue; // unknown types are skipped
      const existing = this.byId.get(m.id);
      const title = typeof m.title === "string" && m.title.trim() ? m.title.trim() : existing?.title ?? "Untitled";
      const timestamp = existing?.timestamp ?? (Number.isFinite(m.timestamp) ? m.timestamp : 0);
      this.byId.set(m.id, { id: m.id, title, timestamp });
      changed = true;
    }
    return changed;
  }

  has(id) {
    return this.byId.has(id);
  }

  get(id) {
    return this.byId.get(id);
  }

  /** Newest first. */
  sorted() {
    return [...this.byId.values()].sort((a, b) => b.timestamp - a.timestamp || (a.id < b.id ? -1 : 1));
  }
}

const CANCEL_REASONS = /cancel|abort|stop_requested|user_stop/i;

function newTurn(promptId) {
  return {
    promptId,
    prompt: null, // {content, timestamp}
    text: "",
    chunks: 0,
    final: null, // "done" | "error" | "cancelled"
    stopReason: null,
    usage: null,
    model: null,
    error: null,
    cancelRequested: false,
    restarts: 0,
    attempt: 0, // the answer attempt being shown; earlier attempts are void
    chunkIds: new Set(),
    firstChunkAt: null,
    finishedAt: null,
  };
}

function restartTurn(turn, attempt) {
  turn.text = "";
  turn.chunks = 0;
  turn.chunkIds.clear();
  turn.final = null;
  turn.error = null;
  turn.attempt = attempt;
  turn.restarts += 1;
}

/** Turn state as shown: thinking, streaming, cancelling, done, cancelled, error. */
export function turnState(turn) {
  if (turn.final === "error") return "error";
  if (turn.final === "cancelled") return "cancelled";
  if (turn.final === "done") {
    if (CANCEL_REASONS.test(turn.stopReason ?? "")) return "cancelled";
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
  promptEntries = 0;
  responseEntries = 0;
  ignored = 0;

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
    for (const m of messages) {
      this.promptEntries += 1;
      if (!m || typeof m !== "object") continue;
      const type = m.type ?? (typeof m.content === "string" && typeof m.id === "string" ? "prompt" : undefined);
      if (type === "prompt" && typeof m.id === "string") {
        const turn = this.#turn(m.id);
        if (turn.prompt) continue; // a repeated prompt id is the same prompt
        turn.prompt = { content: String(m.content ?? ""), timestamp: m.timestamp ?? null };
        this.order.push(m.id);
        changed.add(m.id);
      } else if (type === "cancel" && typeof m.promptId === "string") {
        const turn = this.#turn(m.promptId);
        if (!turn.final) {
          turn.cancelRequested = true;
          changed.add(m.promptId);
        }
      } else {
        this.ignored += 1;
      }
    }
    return changed;
  }

  /** Apply response-stream messages; returns the ids of changed turns. */
  applyResponses(messages) {
    const changed = new Set();
    for (const m of messages) {
      this.responseEntries += 1;
      if (!m || typeof m !== "object" || typeof m.promptId !== "string") {
        this.ignored += 1;
        continue;
      }
      const turn = this.#turn(m.promptId);
      // Messages without `type` follow the original example: chunks, the last one complete.
      const type = m.type ?? (m.isComplete ? "done" : "chunk");
      const attempt = Number.isInteger(m.attempt) ? m.attempt : turn.attempt;
      if (attempt < turn.attempt) {
        this.ignored += 1; // a message of an attempt that was already restarted
        continue;
      }
      if (type === "restart" || attempt > turn.attempt) {
        // The agent starts this answer again: what was streamed so far is void.
        restartTurn(turn, attempt);
        changed.add(m.promptId);
        if (type === "restart") continue;
      }
      if (turn.final) continue; // nothing follows a final message, except a restart
      if (type === "chunk") {
        if (typeof m.id === "string") {
          if (turn.chunkIds.has(m.id)) continue; // the same chunk twice is shown once
          turn.chunkIds.add(m.id);
        }
        if (typeof m.content === "string" && m.content) {
          turn.text += m.content;
          turn.chunks += 1;
          turn.firstChunkAt ??= m.timestamp ?? null;
        }
      } else if (type === "done" || type === "cancelled") {
        if (typeof m.content === "string" && m.content) {
          turn.text += m.content;
          turn.chunks += 1;
        }
        turn.final = type;
        turn.stopReason = m.stopReason ?? m.stop_reason ?? (type === "cancelled" ? "cancelled" : null);
        turn.usage = m.usage ?? null;
        turn.model = m.model ?? null;
        turn.finishedAt = m.timestamp ?? null;
      } else if (type === "error") {
        turn.final = "error";
        turn.error = String(m.message ?? m.error ?? m.content ?? "The agent reported an error.");
        turn.finishedAt = m.timestamp ?? null;
      } else {
        this.ignored += 1;
        continue;
      }
      changed.add(m.promptId);
    }
    return changed;
  }

  /** Turns with a prompt, in prompt order. */
  visibleTurns() {
    return this.order.map((id) => this.turns.get(id));
  }

  /** The prompt ids still being answered (not final). */
  activePromptIds() {
    return this.order.filter((id) => !this.turns.get(id).final);
  }
}
