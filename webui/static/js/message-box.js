// The chat's message box: fitted to its text, written in the text's direction, Send offered
// only when there is something to send, what Enter does said as the keyboard has it, and its
// text kept as the conversation's draft (sessionStorage: it outlives a reload, not the tab).

import { isBlank } from "./conversation-model.js";

/** A touch screen's keyboard, which has no Shift+Enter: there Enter starts a new line. */
export const TOUCH_KEYBOARD = window.matchMedia("(pointer: coarse)");

// The box's direction follows its text, as `dir="auto"` would have it (a right-to-left
// language is written right to left). Not `dir="auto"` itself: Chromium works that out over
// the whole text as it changes: a million characters pasted as one paragraph froze the tab
// for 4 s (three million: 40 s), against 0.5 s with a set direction. Here it comes from the
// text's beginning, worked out on a short copy.
const DIRECTION_FROM_CHARS = 10_000;
const directionProbe = document.createElement("div");
directionProbe.dir = "auto";

export class MessageBox {
  /** `input`: the textarea; `send`: its Send button; `hint`: where the keys are described. */
  constructor({ input, send, hint }) {
    this.input = input;
    this.sendButton = send;
    this.hint = hint;
  }

  /** Fit the box to its text, and offer Send only when there is something to send. */
  fit() {
    this.followTextDirection();
    this.input.style.height = "auto";
    const max = parseFloat(getComputedStyle(this.input).maxHeight) || 220; // it follows the window's height
    this.input.style.height = `${Math.min(this.input.scrollHeight, max)}px`;
    this.offerSend();
  }

  offerSend() {
    this.sendButton.disabled = this.input.disabled || isBlank(this.input.value);
  }

  describeEnterKey() {
    const touch = TOUCH_KEYBOARD.matches;
    this.input.enterKeyHint = touch ? "enter" : "send";
    this.hint.textContent = touch
      ? "Enter for a new line · Send (or Ctrl+Enter) to send · Esc to stop"
      : "Enter to send · Shift+Enter for a new line · Esc to stop";
  }

  /** Add `texts` after what the box holds (each once), and keep that as draft `key`. */
  add(texts, key) {
    const value = withTexts(this.input.value, texts);
    if (value === this.input.value) return;
    this.input.value = value;
    saveDraft(key, value);
    this.fit();
  }

  followTextDirection() {
    directionProbe.textContent = this.input.value.slice(0, DIRECTION_FROM_CHARS);
    let dir = "auto"; // where `:dir()` is not known (Chromium before 120, Safari before 16.4)
    try {
      dir = directionProbe.matches(":dir(rtl)") ? "rtl" : "ltr";
    } catch {
      /* left to the browser */
    }
    if (this.input.dir !== dir) this.input.dir = dir;
  }
}

/** The draft kept as `key`, or "". */
export function loadDraft(key) {
  return sessionStorage.getItem(key) ?? "";
}

/** Keep `text` as draft `key` ("" forgets it). */
export function saveDraft(key, text) {
  try {
    if (text) sessionStorage.setItem(key, text);
    else sessionStorage.removeItem(key);
  } catch (err) {
    console.warn("draft not kept (sessionStorage is full)", err); // the text stays in the box
  }
}

/** `MessageBox.add` for a conversation not shown: `text` added to its stored draft. */
export function keepInDraft(key, text) {
  const kept = loadDraft(key);
  const value = withTexts(kept, [text]);
  if (value !== kept) saveDraft(key, value);
}

/** `kept` with `texts` after it (each once, none already there), parted by blank lines. */
function withTexts(kept, texts) {
  const parts = [kept.trim()];
  for (const text of texts.map((t) => t.trim())) if (text && !parts.includes(text)) parts.push(text);
  return parts.filter(Boolean).join("\n\n");
}
