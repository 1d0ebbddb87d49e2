// One live connection per stream for all tabs of this browser.
//
// Browsers allow about six HTTP/1.1 connections per host, shared by every tab. A chat tab
// follows three streams live, so two tabs would use all six and every further request (a POST
// of a prompt) would hang. The hub elects, per stream, one tab as the leader (Web Locks); it
// holds the SSE connection and broadcasts each batch to the other tabs (BroadcastChannel).
// Followers read history themselves with ordinary catch-up GETs, apply broadcast batches that
// start exactly at their offset, and fill any gap or overlap with another catch-up GET, so
// every tab sees one contiguous, non-overlapping sequence of batches. When the leader tab
// goes away its lock is released and the next tab in line opens the connection from its own
// offset. Without Web Locks (plain-http LAN origins) every tab simply reads on its own.

import { backoff, sleep } from "./util.js";
import { MISSING_RETRY_MAX_MS, bodyKind, parseJsonBody } from "./streams.js";

/** Offsets are opaque but lexicographically ordered; "-1" is before everything. */
export function compareOffsets(a, b) {
  if (a === b) return 0;
  if (a === "-1") return -1;
  if (b === "-1") return 1;
  return a < b ? -1 : 1;
}

export class StreamHub {
  #follows = new Map();

  /** @param {import("./streams.js").StreamsClient} client */
  constructor(client) {
    this.client = client;
    const shared = typeof BroadcastChannel === "function" && !!navigator.locks;
    this.channel = shared ? new BroadcastChannel(`ds-hub:${client.baseUrl}`) : null;
    this.channel?.addEventListener("message", (event) => this.#onMessage(event.data));
    document.addEventListener("visibilitychange", () => {
      // A leader in a background tab may be throttled or frozen: catch up when we are seen.
      if (document.visibilityState === "visible") for (const f of this.#follows.values()) f.refresh();
    });
  }

  /**
   * Follow `path` from `offset` (default: its beginning). `onBatch(batch)` receives contiguous batches
   * ({from, to, messages|text|bytes, upToDate, closed}); `onStatus(status)` the connection
   * state ({state: "connecting"|"live"|"reconnecting"|"missing"|"closed"|"error"});
   * `beforeReconnect(signal)` is the live read's (streams.js), when this tab holds it.
   * Returns {stop(), offset} where offset is the end of the last batch delivered.
   */
  follow(path, { offset = "-1", onBatch, onStatus, beforeReconnect, contentType = "application/json" } = {}) {
    const follow = new Follow(this, path, contentType, { onBatch, onStatus, beforeReconnect });
    follow.offset = offset;
    const key = `${path}\n${Math.random()}`;
    this.#follows.set(key, follow);
    follow.start();
    return {
      stop: () => {
        this.#follows.delete(key);
        follow.stop();
      },
      get offset() {
        return follow.offset;
      },
    };
  }

  /** Tell the other tabs, and other follows of the same path in this tab. */
  broadcast(message, sender = null) {
    this.channel?.postMessage(message);
    for (const follow of this.#follows.values()) if (follow !== sender && follow.path === message.path) follow.receive(message);
  }

  #onMessage(message) {
    if (!message || typeof message.path !== "string") return;
    for (const follow of this.#follows.values()) if (follow.path === message.path) follow.receive(message);
  }
}

class Follow {
  offset = "-1";
  leading = false;
  stopped = false;
  #chain = Promise.resolve();
  #abort = new AbortController();
  #status = { state: "connecting" };
  #refused = false; // this tab's own last read was refused for good
  #failedHere = false; // the status shown is this tab's own failed read's, not the leader's
  #leaderStatus = null; // the last status the tab holding the live read told

  constructor(hub, path, contentType, listener) {
    this.hub = hub;
    this.path = path;
    this.kind = bodyKind(contentType);
    this.contentType = contentType;
    this.listener = listener;
  }

  get client() {
    return this.hub.client;
  }

  start() {
    this.#setStatus({ state: "connecting" });
    if (!this.hub.channel) {
      this.#lead();
      return;
    }
    const name = `ds-live:${this.client.baseUrl}/${this.path}`;
    navigator.locks
      .request(name, { ifAvailable: true }, async (lock) => {
        if (lock) return this.#lead();
        // Someone else leads: read the history ourselves and queue up for leadership.
        this.hub.broadcast({ kind: "hello", path: this.path }, this);
        this.#enqueue(() => this.#catchUp());
        navigator.locks
          .request(name, { signal: this.#abort.signal }, () => this.#lead())
          .catch(() => {}); // AbortError once stopped
      })
      .catch((err) => console.warn("stream hub lock failed", err));
  }

  stop() {
    this.stopped = true;
    this.#abort.abort();
  }

  /** Catch up now (e.g. when the tab becomes visible), unless we hold the connection. */
  refresh() {
    if (!this.leading && !this.stopped) this.#enqueue(() => this.#catchUp());
  }

  receive(message) {
    if (this.stopped) return;
    if (this.leading) {
      if (message.kind === "hello") this.hub.broadcast({ kind: "status", path: this.path, status: this.#status }, this);
      return;
    }
    // In turn with the batches and this tab's own reads: the leader's "up to date" is about
    // its offset, not ours, until our catch-up has applied the history it holds.
    if (message.kind === "status") this.#enqueue(() => this.#takeLeaderStatus(message.status));
    else if (message.kind === "batch") this.#enqueue(() => this.#offer(message.batch));
  }

  #takeLeaderStatus(status) {
    this.#leaderStatus = status;
    if (!this.#refused) this.#setStatus(status); // it may read what this tab may not
  }

  async #lead() {
    // Finish any catch-up in progress first; from here on no follower task is queued.
    for (let seen = null; seen !== this.#chain; ) {
      seen = this.#chain;
      await seen;
    }
    if (this.stopped) return;
    this.leading = true;
    await this.client.live(this.path, {
      offset: this.offset,
      contentType: this.contentType,
      signal: this.#abort.signal,
      beforeReconnect: this.listener.beforeReconnect,
      onBatch: (batch) => {
        if (this.stopped) return;
        this.#apply(batch);
        this.hub.broadcast({ kind: "batch", path: this.path, batch }, this);
      },
      onStatus: (status) => {
        const plain = {
          state: status.state, upToDate: status.upToDate, attempt: status.attempt,
          error: status.error ? String(status.error.message || status.error) : undefined,
          errorCode: status.error?.code ?? undefined,
        };
        this.#setStatus(plain);
        this.hub.broadcast({ kind: "status", path: this.path, status: plain }, this);
      },
    });
    this.leading = false;
  }

  async #offer(batch) {
    if (compareOffsets(batch.from, this.offset) === 0) return this.#apply(batch);
    if (compareOffsets(batch.to, this.offset) <= 0) return; // already have all of it
    await this.#catchUp(); // a gap, or a batch that straddles our offset
  }

  async #catchUp() {
    let attempt = 0;
    let lastMissing = false;
    while (!this.stopped) {
      try {
        for (;;) {
          const page = await this.client.read(this.path, this.offset, { signal: this.#abort.signal });
          if (this.stopped) return;
          const batch = { from: this.offset, to: page.nextOffset, upToDate: page.upToDate, closed: page.closed, ...this.#decode(page.bytes) };
          if (batch.count > 0 || batch.to !== batch.from || batch.closed) this.#apply(batch);
          if (page.upToDate || page.closed || page.nextOffset === batch.from) break;
        }
        this.#refused = false;
        if (this.#failedHere) {
          // Ours was the failure shown: now the live read's state again (the leader tells
          // only of changes, and a healthy one has none to tell).
          this.#failedHere = false;
          this.#setStatus(this.#leaderStatus ?? { state: "live", upToDate: true });
        } else if (this.#status.state !== "live" && this.#status.state !== "reconnecting") {
          this.#setStatus({ state: "live", upToDate: true });
        }
        return;
      } catch (err) {
        if (this.stopped) return;
        if ([400, 401, 403, 410].includes(err?.status)) {
          // Refused for good, as a live read is (streams.js): retrying cannot help.
          this.#refused = true;
          this.#setStatus({ state: "error", error: String(err?.message || err), errorCode: err?.code });
          return;
        }
        const missing = err?.status === 404;
        if (missing !== lastMissing) attempt = 0; // counted apart, as in streams.js
        lastMissing = missing;
        attempt += 1;
        this.#failedHere = true;
        this.#setStatus({ state: missing ? "missing" : "reconnecting", attempt, error: String(err?.message || err) });
        await sleep(missing ? backoff(attempt, 500, MISSING_RETRY_MAX_MS) : backoff(attempt), this.#abort.signal).catch(() => {});
      }
    }
  }

  #decode(bytes) {
    const text = this.kind === "bytes" ? "" : new TextDecoder().decode(bytes);
    if (this.kind === "json") {
      const messages = parseJsonBody(text);
      return { messages, count: messages.length };
    }
    if (this.kind === "text") return { text, count: text ? 1 : 0 };
    return { bytes, count: bytes.length ? 1 : 0 };
  }

  #apply(batch) {
    this.offset = batch.to;
    try {
      this.listener.onBatch?.(batch);
    } catch (err) {
      console.error(`batch handler for ${this.path} failed`, err);
    }
  }

  #setStatus(status) {
    this.#status = status;
    try {
      this.listener.onStatus?.(status);
    } catch (err) {
      console.error(`status handler for ${this.path} failed`, err);
    }
  }

  #enqueue(task) {
    this.#chain = this.#chain.then(() => (this.stopped ? undefined : task())).catch((err) => console.error(err));
    return this.#chain;
  }
}
