// Exactly-once appends from the browser: an idempotent producer (section 5.2.1) with a
// persistent outbox.
//
// Every append is stored (see outbox-storage.js) before it is sent, together with the
// (Producer-Id, Producer-Epoch, Producer-Seq) it was first sent with. Until the server answers
// 200/204 it is retried - after a network failure, a 5xx, a reload of the page, or by another
// tab once this one is closed - with that same tuple, so the server deduplicates any copy that
// did land: the message appears once.
//
// The producer id is fresh for every page load: two writers sharing one (id, epoch) would
// see each other's different messages answered "204 duplicate" and silently dropped.
// Entries left over from an earlier load keep their own tuples, and are re-sent with them.

import { backoff, Emitter, randomId, sleep } from "./util.js";
import { OutboxStorage } from "./outbox-storage.js";
import { HttpError, isRetryable } from "./streams.js";

/** Run a PUT that makes something; what the server said if it refused for good, else null
 * (done, or there with other settings: 409). Throws what is worth another try. */
async function refusal(put) {
  try {
    await put();
    return null;
  } catch (err) {
    if (err?.status === 409) return null;
    if (isRetryable(err)) throw err;
    return err?.detail || err?.message || String(err);
  }
}

export class Outbox extends Emitter {
  #entries;
  #producerId = randomId("web-");
  #nextSeq = new Map(); // stream path -> next Producer-Seq for #producerId
  #running = false;
  #wake = null;
  #toldError = null; // the lastError the last "state" event carried
  #waiters = new Map(); // entry key -> {resolve, reject}, for entries queued by this page load
  #sendAfter;
  #mayRemake;
  #storage;

  /**
   * @param {import("./streams.js").StreamsClient} client
   * @param {{sendAfter?: Promise<unknown>, mayRemake?: (entry: object) => Promise<boolean>}} options
   *   nothing is sent before `sendAfter` resolves; an entry's streams (and subscription) are
   *   made, at first or again after a 404, only if `mayRemake(entry)` says so (false: it is
   *   retried later, unmade)
   */
  constructor(client, { sendAfter = Promise.resolve(), mayRemake = async () => true } = {}) {
    super();
    this.client = client;
    this.#sendAfter = sendAfter;
    this.#mayRemake = mayRemake;
    this.#storage = new OutboxStorage(client.baseUrl, (entries) => this.#adopt(entries));
    this.#entries = this.#storage.load();
    if (this.#entries.length) this.#save(); // kept where this page keeps its own
    /** "idle" | "sending" | "retrying" */
    this.state = "idle";
    this.lastError = null;
  }

  /** Entries not yet acknowledged, oldest first (copies; for rendering pending items).
   * `subscribes`: it was queued with a subscription to make first. */
  pending() {
    return this.#entries.map((e) => ({ key: e.key, path: e.path, body: e.body, ensured: e.ensured, subscribes: !!e.subscription }));
  }

  /**
   * Queue `body` (a JSON value) for appending to `path`. `ensure` lists streams to PUT
   * (application/json, idempotent) before the first attempt; `ensured: true` skips that until a
   * 404 says otherwise. `subscription` ({id, config}) is PUT before those streams (see
   * chat-protocol.js for why the order matters). Resolves when the server has acknowledged it
   * (in this page load).
   */
  enqueue(path, body, { ensure = [], ensured = false, subscription = null } = {}) {
    const entry = {
      key: randomId("ob-"), path, body, ensure, subscription,
      ensured: ensured || (ensure.length === 0 && !subscription), tuple: null,
    };
    this.#entries.push(entry);
    this.#save();
    this.emit("change");
    const done = new Promise((resolve, reject) => this.#waiters.set(entry.key, { resolve, reject }));
    done.catch(() => {}); // failures are also reported through the "failed" event
    this.start();
    return { key: entry.key, done };
  }

  /**
   * Drop the entries `matches({key, path, body})` picks, e.g. the unsent prompts of a
   * conversation being deleted. One being sent at this moment may still land. Returns the
   * dropped ones ({path, body}).
   */
  discard(matches) {
    const dropped = this.#entries.filter((e) => matches({ key: e.key, path: e.path, body: e.body }));
    if (!dropped.length) return [];
    this.#entries = this.#entries.filter((e) => !dropped.includes(e));
    // A dropped message may have reached the server under its Producer-Seq: the next one on
    // its stream must not reuse that number (it would be answered "duplicate" and lost).
    if (dropped.some((e) => e.tuple)) this.#rotate();
    this.#save();
    for (const e of dropped) {
      this.#waiters.get(e.key)?.reject(new Error("discarded"));
      this.#waiters.delete(e.key);
    }
    this.emit("change");
    return dropped.map((e) => ({ path: e.path, body: e.body }));
  }

  /** Start (or nudge) the flush loop; call once at page start to re-send leftovers. */
  start() {
    if (this.#wake) this.#wake.abort();
    if (this.#running) return;
    this.#running = true;
    this.#run().finally(() => {
      this.#running = false;
      if (this.#entries.length) this.start();
    });
  }

  async #run() {
    await this.#sendAfter;
    let attempt = 0;
    let previous = null;
    while (this.#entries.length) {
      const entry = this.#entries[0];
      if (entry !== previous) attempt = 0; // the one being retried was discarded
      previous = entry;
      this.#setState(attempt ? "retrying" : "sending");
      let outcome;
      try {
        outcome = await this.#attempt(entry);
      } catch (err) {
        outcome = { retry: true, error: err };
      }
      if (!this.#entries.includes(entry)) continue; // discarded while it was being sent
      if (outcome.retry) {
        attempt += 1;
        this.lastError = outcome.error ?? null;
        this.#setState("retrying");
        this.#wake = new AbortController();
        await sleep(backoff(attempt, 300, 8000), this.#wake.signal).catch(() => {});
        this.#wake = null;
        continue;
      }
      attempt = 0;
      this.lastError = null;
      this.#finish(entry, outcome);
    }
    this.#setState("idle");
  }

  async #attempt(entry) {
    // Asked before the first making too: a prompt sent to a conversation whose streams were
    // found missing makes them again, and they may be missing because another tab deleted it.
    if (!entry.ensured && !(await this.#mayRemake(entry))) {
      return { retry: true, error: new Error("its conversation was deleted") };
    }
    if (!entry.ensured) {
      // 409: the subscription or stream exists with other settings; the agents still watch
      // it, and the append below reports what matters. Another refusal fails the message
      // (asking again cannot change it) rather than hold up every message behind it.
      // Each PUT awaited, the entry may have been discarded meanwhile (its conversation
      // deleted): then nothing more of it is sent.
      if (entry.subscription) {
        const refused = await refusal(() => this.client.putSubscription(entry.subscription.id, entry.subscription.config));
        if (refused) return { ok: false, error: new Error(`the agents' subscription was refused: ${refused}`) };
      }
      for (const path of entry.ensure) {
        if (!this.#entries.includes(entry)) return { discarded: true };
        const refused = await refusal(() => this.client.ensure(path, "application/json"));
        if (refused) return { ok: false, error: new Error(`the stream ${path} could not be made: ${refused}`) };
      }
      if (!this.#entries.includes(entry)) return { discarded: true };
      entry.ensured = true;
      this.#save();
      this.emit("change"); // the streams exist now: readers may start
    }
    if (!entry.tuple) {
      entry.tuple = { id: this.#producerId, epoch: 0, seq: this.#nextSeq.get(entry.path) ?? 0 };
      this.#save(); // persisted before the first byte leaves: a reload re-sends the same tuple
    }
    const result = await this.client.append(entry.path, JSON.stringify(entry.body), { producer: entry.tuple });
    if (result.status === 200 || result.status === 204) {
      if (entry.tuple.id === this.#producerId) this.#nextSeq.set(entry.path, entry.tuple.seq + 1);
      return { ok: true, result };
    }
    if (result.status >= 500 || result.status === 429 || result.status === 408) {
      return { retry: true, error: new HttpError(result.status, result.detail) };
    }
    if (result.status === 404 && entry.ensure.length && !entry.retriedEnsure) {
      entry.ensured = false;
      entry.retriedEnsure = true;
      return { retry: true, error: new Error("stream not found; creating it") };
    }
    if (result.status === 403 || (result.status === 409 && result.expectedSeq !== null)) {
      // Fenced or out of sequence: this tuple never stored the message. Start a new producer.
      this.#rotate();
      entry.tuple = null;
      return { retry: true, error: new Error(`producer reset after HTTP ${result.status}`) };
    }
    return { ok: false, error: new Error(result.detail || `HTTP ${result.status}`), result };
  }

  #rotate() {
    this.#producerId = randomId("web-");
    this.#nextSeq.clear();
  }

  #finish(entry, outcome) {
    this.#entries = this.#entries.filter((e) => e.key !== entry.key);
    this.#save();
    const waiter = this.#waiters.get(entry.key);
    this.#waiters.delete(entry.key);
    if (outcome.ok) {
      this.emit("sent", { key: entry.key, path: entry.path, body: entry.body, result: outcome.result });
      waiter?.resolve(outcome.result);
    } else {
      this.emit("failed", { key: entry.key, path: entry.path, body: entry.body, error: outcome.error });
      waiter?.reject(outcome.error);
    }
    this.emit("change");
  }

  #setState(state) {
    // A new error while retrying is news too: the server may be back, but full.
    if (state === this.state && this.#toldError === this.lastError) return;
    this.state = state;
    this.#toldError = this.lastError;
    this.emit("state", state, this.lastError);
  }

  /** Take on what a closed page left unsent, if it can be stored. After this page's own:
   * one of those may have been sent under the Producer-Seq an adopted entry would take. */
  #adopt(entries) {
    const known = new Set(this.#entries.map((e) => e.key));
    const merged = [...this.#entries, ...entries.filter((e) => !known.has(e.key))];
    if (!this.#storage.save(merged)) return false;
    this.#entries = merged;
    this.emit("adopted"); // before they are sent: the page may drop some (a deleted conversation's)
    this.emit("change");
    this.start();
    return true;
  }

  #save() {
    this.#storage.save(this.#entries);
  }
}
