// The connection state a user sees: a pill in the top bar and a banner that appears while the
// connection is lost (or a message is being re-sent) and clears by itself once it is back.

const GRACE_MS = 700; // a routine reconnect must not flash the banner

/** What the pill says for each of `ConnectionStatus.overall()`'s states. */
export const STATE_LABELS = { live: "Live", connecting: "Connecting", reconnecting: "Reconnecting", retrying: "Not stored yet", error: "Error" };

export class ConnectionStatus {
  #streams = new Map(); // name -> status object
  #outbox = { state: "idle" };
  #timer = null;
  #shown = false;
  #clearTimer = null;

  /** The banner is the one live region (an alert) about the connection; the pill is not. */
  constructor({ pill, banner }) {
    this.pill = pill;
    this.banner = banner;
  }

  setStream(name, status) {
    this.#streams.set(name, status);
    this.#update();
  }

  removeStream(name) {
    this.#streams.delete(name);
    this.#update();
  }

  setOutbox(state, error) {
    this.#outbox = { state, error };
    this.#update();
  }

  /** Whether a live read is reconnecting: nothing new reaches the page meanwhile. */
  readsInterrupted() {
    return [...this.#streams.values()].some((s) => s.state === "reconnecting");
  }

  /** Whether a read found the server's streams shorter than this page had read them: its
   * data was reset or replaced, and what the page knows is not what the server has. */
  serverReset() {
    return [...this.#streams.values()].some((s) => s.state === "error" && s.errorCode === "OFFSET_OUT_OF_RANGE");
  }

  /** "live" | "connecting" | "reconnecting" | "retrying" (the server answers, but has not
   * stored what was sent: storage full, overloaded) | "error" */
  overall() {
    const states = [...this.#streams.values()].map((s) => s.state);
    if (states.includes("error")) return "error";
    if (states.includes("reconnecting")) return "reconnecting";
    if (this.#outbox.state === "retrying") return this.#outbox.error?.status ? "retrying" : "reconnecting";
    if (states.includes("connecting")) return "connecting";
    return "live";
  }

  #update() {
    const state = this.overall();
    const label = STATE_LABELS[state];
    if (this.pill.dataset.state !== state) {
      this.pill.dataset.state = state;
      this.pill.querySelector(".conn-text").textContent = label;
    }
    if (state !== "live" && state !== "connecting") {
      if (!this.#shown && !this.#timer) this.#timer = setTimeout(() => this.#show(), state === "error" ? 0 : GRACE_MS);
      else if (this.#shown) this.#show();
    } else {
      clearTimeout(this.#timer);
      this.#timer = null;
      if (this.#shown) this.#recovered();
    }
  }

  #show() {
    this.#timer = null;
    const state = this.overall();
    if (state === "live" || state === "connecting") return;
    clearTimeout(this.#clearTimer);
    const errored = [...this.#streams.values()].find((s) => s.state === "error");
    let text;
    // A read past the stream's end: the server's data was reset since the page read it.
    if (this.serverReset()) text = `${SERVER_RESET} Reload the page to see what it has now.`;
    else if (errored) text = `The streams server refused a read: ${errored.error ?? "error"}.`;
    else if (this.#outbox.state === "retrying" && !this.readsInterrupted()) text = notStoredYet(this.#outbox.error);
    else text = "Connection lost. Reconnecting…";
    this.banner.dataset.state = state;
    if (this.banner.textContent !== text) this.banner.textContent = text;
    this.banner.hidden = false;
    this.#shown = true;
  }

  #recovered() {
    this.#shown = false;
    this.banner.dataset.state = "recovered";
    this.banner.textContent = "Reconnected.";
    this.#clearTimer = setTimeout(() => {
      if (!this.#shown) this.banner.hidden = true;
    }, 1500);
  }
}

export const SERVER_RESET = "The server's streams were reset or replaced since this page read them.";

/** What the banner says while the outbox retries a message the server did not store. */
function notStoredYet(error) {
  if (error?.status === 507) {
    return "What you sent has not been stored yet: the server's storage is full. It is kept here and sent as soon as there is room.";
  }
  if (error?.detail) return `What you sent has not been stored yet (the server said: ${error.detail}). Retrying…`;
  return "What you sent has not been stored yet. Retrying…";
}
