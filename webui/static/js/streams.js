// A small Durable Streams client for the browser: create, HEAD, catch-up reads, appends and
// SSE live reads that resume from the last control offset after any drop.

import { SseParser } from "./sse.js";
import { backoff, sleep } from "./util.js";

/** A non-2xx answer from the server; `status` and `headers` say what went wrong. */
export class HttpError extends Error {
  constructor(status, detail, headers) {
    super(`HTTP ${status}${detail ? `: ${detail}` : ""}`);
    this.name = "HttpError";
    this.status = status;
    this.detail = detail;
    this.headers = headers;
  }
}

/** True when trying the same request again later may succeed. */
export function isRetryable(err) {
  if (err instanceof HttpError) return err.status >= 500 || err.status === 429 || err.status === 408;
  return err?.name !== "AbortError"; // network failures surface as TypeError
}

/** How the bytes of a stream are shown to callers: JSON messages, text, or raw bytes. */
export function bodyKind(contentType) {
  const type = (contentType || "").split(";")[0].trim().toLowerCase();
  if (type === "application/json") return "json";
  if (type.startsWith("text/")) return "text";
  return "bytes";
}

/** Parse a JSON-mode body (a JSON array of messages). */
export function parseJsonBody(text) {
  const trimmed = text.trim();
  if (trimmed === "") return [];
  const value = JSON.parse(trimmed);
  return Array.isArray(value) ? value : [value];
}

/** A request that heard nothing from the server for too long (see RequestGuard). */
export class StalledError extends Error {
  constructor(ms) {
    super(`no word from the server for ${Math.round(ms / 1000)} s`);
    this.name = "StalledError";
  }
}

/**
 * An AbortController for one request that also aborts when `outer` does, or when the server
 * says nothing for too long: `firstMs` until the response starts, then `silenceMs` between
 * two `feed()`s. A server that froze, or a connection that died without closing, sends
 * nothing, and a fetch would wait for it forever. (0: no limit.)
 */
class RequestGuard {
  constructor(outer, silenceMs, firstMs = silenceMs) {
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.silenceMs = silenceMs;
    this.timer = null;
    this.onOuterAbort = () => this.controller.abort(outer.reason);
    this.outer = outer;
    if (outer?.aborted) this.controller.abort(outer.reason);
    else outer?.addEventListener("abort", this.onOuterAbort, { once: true });
    this.#arm(firstMs);
  }

  /** The server said something: it gets `silenceMs` again. */
  feed() {
    this.#arm(this.silenceMs);
  }

  #arm(ms) {
    clearTimeout(this.timer);
    if (ms > 0) this.timer = setTimeout(() => this.controller.abort(new StalledError(ms)), ms);
  }

  /** The error to report: the stall, rather than the AbortError it caused. */
  reason(err) {
    return this.signal.reason instanceof StalledError ? this.signal.reason : err;
  }

  release() {
    clearTimeout(this.timer);
    this.outer?.removeEventListener("abort", this.onOuterAbort);
  }
}

/** A request body larger than this gets more time to answer, at this slowest upload rate:
 * a slow upload is not a stalled server, but a request never answered (a connection half
 * open) must be given up in the end, as the outbox sends nothing else meanwhile. */
const TIMED_BODY_BYTES = 64 * 1024;
const SLOWEST_UPLOAD_BYTES_PER_S = 16 * 1024;
const LONGEST_TIMER_MS = 2 ** 31 - 1;

/** How long a read of a missing stream waits, at most, before it asks again. A client makes
 * the stream with its next message; the chat asks again at once when that message is its
 * own or is listed (an `activity` in the conversations stream), so this bounds only how soon a
 * stream made by some other client is seen. (Every 1-2 s, a tab left on a conversation whose
 * streams were deleted asked forever.) */
export const MISSING_RETRY_MAX_MS = 30_000;

/** Live reads that lost the server nap through their backoff (up to 5 s), or until any
 * request of their client hears from it again: after an outage each read otherwise came
 * back on its own schedule, text streaming in while the page still said "Reconnecting".
 * One wake a second at most, so that a read failing for a reason of its own (a 500 on one
 * stream) does not retry at the pace of the others' successes. */
const WAKE_INTERVAL_MS = 1000;

class ServerReach {
  #lost = false;
  #wokenAt = -Infinity;
  #wake = null; // {promise, resolve}: what the naps of reads that lost the server wait for

  lost() {
    this.#lost = true;
  }

  /** A response came from the server (not a gateway's 5xx standing in for it). */
  heard() {
    if (!this.#lost || performance.now() - this.#wokenAt < WAKE_INTERVAL_MS) return;
    this.#lost = false;
    this.#wokenAt = performance.now();
    this.#wake?.resolve();
    this.#wake = null;
  }

  /** Resolves at the next `heard` after a `lost`. */
  back() {
    if (!this.#wake) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      this.#wake = { promise, resolve };
    }
    return this.#wake.promise;
  }
}

export class StreamsClient {
  #reach = new ServerReach();

  /**
   * @param {{baseUrl: string, token?: string|null, silenceMs?: number}} options
   * `silenceMs`: a live read that receives nothing (not even the server's keep-alive
   * comments) for this long is dropped and resumed; any request whose response has not
   * started after this long plus `queuedMs` is given up (a StalledError); one with a large
   * body gets the time to upload it slowly too. 0 waits forever. `queuedMs`: how long a request may wait for a connection:
   * over HTTP/1.1 a browser opens six per host, and live reads hold theirs until the server
   * ends them (about once a minute).
   */
  constructor({ baseUrl, token = null, silenceMs = 0, queuedMs = 65_000 }) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.token = token;
    const most = (2 ** 31 - 1) / 2; // setTimeout's limit, for the sum of the two
    this.silenceMs = Math.min(silenceMs, most);
    this.queuedMs = Math.min(queuedMs, most);
  }

  /** `fetch`, given up (a StalledError) when no response starts in time (see RequestGuard). */
  async #fetch(url, init = {}) {
    const body = init.body;
    const size = body == null ? 0 : typeof body === "string" ? body.length * 3 : body.byteLength ?? body.size ?? Infinity;
    const upload = size <= TIMED_BODY_BYTES ? 0 : (size / SLOWEST_UPLOAD_BYTES_PER_S) * 1000;
    const limit = this.silenceMs > 0 && Number.isFinite(size)
      ? Math.min(LONGEST_TIMER_MS, this.silenceMs + this.queuedMs + upload) : 0;
    const guard = new RequestGuard(init.signal, 0, limit);
    try {
      const res = await fetch(url, { ...init, signal: guard.signal });
      if (res.status < 500) this.#reach.heard();
      return res;
    } catch (err) {
      throw guard.reason(err);
    } finally {
      guard.release();
    }
  }

  /** The URL of a stream path (segments are percent-encoded, slashes kept). */
  url(path, params) {
    const encoded = String(path).replace(/^\/+/, "").split("/").map(encodeURIComponent).join("/");
    const url = new URL(`${this.baseUrl}/${encoded}`);
    for (const [key, value] of Object.entries(params ?? {})) url.searchParams.set(key, value);
    return url.href;
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  /** PUT: create the stream, or confirm it exists with this content type (idempotent). */
  async ensure(path, contentType = "application/json", { signal } = {}) {
    const res = await this.#fetch(this.url(path), {
      method: "PUT",
      headers: this.headers({ "Content-Type": contentType }),
      signal,
    });
    if (res.status === 200 || res.status === 201) {
      await drain(res);
      return { created: res.status === 201, nextOffset: res.headers.get("Stream-Next-Offset") };
    }
    throw await httpError(res);
  }

  /** PUT with an optional initial body (the inspector's "create"). */
  async create(path, contentType, { body, signal } = {}) {
    const res = await this.#fetch(this.url(path), {
      method: "PUT",
      headers: this.headers({ "Content-Type": contentType }),
      body,
      signal,
    });
    if (!res.ok) throw await httpError(res);
    await drain(res);
    return { status: res.status, nextOffset: res.headers.get("Stream-Next-Offset") };
  }

  /** HEAD: metadata, or `{exists: false, status}` for 404/410. */
  async head(path, { signal } = {}) {
    const res = await this.#fetch(this.url(path), { method: "HEAD", headers: this.headers(), signal, cache: "no-store" });
    await drain(res); // none to read, but unread the request shows as failed in DevTools
    if (res.status === 404 || res.status === 410) return { exists: false, status: res.status };
    if (!res.ok) throw await httpError(res);
    const h = res.headers;
    return {
      exists: true,
      status: res.status,
      contentType: h.get("Content-Type"),
      nextOffset: h.get("Stream-Next-Offset"),
      closed: (h.get("Stream-Closed") || "").toLowerCase() === "true",
      ttl: h.get("Stream-TTL"),
      expiresAt: h.get("Stream-Expires-At"),
      headers: h,
    };
  }

  /** One catch-up GET from `offset`: bytes plus the protocol headers. */
  async read(path, offset = "-1", { signal } = {}) {
    const res = await this.#fetch(this.url(path, { offset }), { headers: this.headers(), signal, cache: "no-store" });
    if (!res.ok) throw await httpError(res);
    const h = res.headers;
    return {
      bytes: new Uint8Array(await res.arrayBuffer()),
      contentType: h.get("Content-Type"),
      nextOffset: h.get("Stream-Next-Offset") ?? offset,
      upToDate: (h.get("Stream-Up-To-Date") || "").toLowerCase() === "true",
      closed: (h.get("Stream-Closed") || "").toLowerCase() === "true",
    };
  }

  /** Catch-up reads from `offset` until up to date; JSON streams yield their messages. */
  async readAll(path, offset = "-1", { signal, maxBytes = 8 * 1024 * 1024 } = {}) {
    const chunks = [];
    let total = 0;
    let current = offset;
    for (;;) {
      const page = await this.read(path, current, { signal });
      chunks.push({ from: current, ...page });
      total += page.bytes.length;
      const stalled = page.nextOffset === current && page.bytes.length === 0;
      current = page.nextOffset;
      if (page.upToDate || page.closed || stalled || total >= maxBytes) {
        return { pages: chunks, nextOffset: current, closed: page.closed, truncated: total >= maxBytes && !page.upToDate };
      }
    }
  }

  /**
   * POST one body. Returns the outcome for every HTTP status (the caller decides what a 403 or
   * 409 means); throws only when the request never got an answer (network failure, abort).
   */
  async append(path, body, { contentType = "application/json", producer, close = false, signal } = {}) {
    const extra = { "Content-Type": contentType };
    if (producer) {
      extra["Producer-Id"] = producer.id;
      extra["Producer-Epoch"] = String(producer.epoch);
      extra["Producer-Seq"] = String(producer.seq);
    }
    if (close) extra["Stream-Closed"] = "true";
    const res = await this.#fetch(this.url(path), { method: "POST", headers: this.headers(extra), body, signal });
    const h = res.headers;
    return {
      ok: res.ok,
      status: res.status,
      duplicate: res.status === 204 && !!producer,
      nextOffset: h.get("Stream-Next-Offset"),
      closed: (h.get("Stream-Closed") || "").toLowerCase() === "true",
      producerEpoch: h.get("Producer-Epoch"),
      expectedSeq: h.get("Producer-Expected-Seq"),
      receivedSeq: h.get("Producer-Received-Seq"),
      detail: res.ok ? await drain(res) : await safeText(res),
    };
  }

  /** PUT a subscription: create it, or confirm an identical one (section 6.2). */
  async putSubscription(id, body, { signal } = {}) {
    const res = await this.#fetch(`${this.baseUrl}/__ds/subscriptions/${encodeURIComponent(id)}`, {
      method: "PUT",
      headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal,
    });
    if (!res.ok) throw await httpError(res);
    return res.json();
  }

  /** GET a subscription's state (section 6.3). */
  async subscription(id, { signal } = {}) {
    const res = await this.#fetch(`${this.baseUrl}/__ds/subscriptions/${encodeURIComponent(id)}`, {
      headers: this.headers(),
      signal,
      cache: "no-store",
    });
    if (!res.ok) throw await httpError(res);
    return res.json();
  }

  /**
   * GET `__ds/streams?prefix=`: every stream, where the server offers this listing (an
   * extension under the reserved prefix, not part of the protocol). Throws an HttpError (404 or
   * 405 where it is not offered) or an Error when the answer is not such a listing.
   */
  async listStreams({ prefix = "", signal } = {}) {
    const body = await this.getJson("__ds/streams", prefix ? { prefix } : {}, signal);
    if (!Array.isArray(body?.streams)) throw new Error("the answer is not a stream listing");
    const streams = body.streams.filter((s) => s && typeof s === "object" && typeof s.path === "string");
    return { streams, total: listingTotal(body, streams) };
  }

  /** GET `__ds/subscriptions`: the first page of subscriptions, where the server offers this
   * listing, and how many there are. */
  async listSubscriptions({ signal } = {}) {
    const body = await this.getJson("__ds/subscriptions", {}, signal);
    if (!Array.isArray(body?.subscriptions)) throw new Error("the answer is not a subscription listing");
    const subscriptions = body.subscriptions.filter((s) => s && typeof s === "object" && typeof (s.id ?? s.subscription_id) === "string");
    return { subscriptions, total: listingTotal(body, subscriptions) };
  }

  /** GET a control path under the stream root and parse its JSON answer. */
  async getJson(controlPath, params, signal) {
    const url = new URL(`${this.baseUrl}/${controlPath}`);
    for (const [key, value] of Object.entries(params ?? {})) url.searchParams.set(key, value);
    const res = await this.#fetch(url.href, { headers: this.headers({ Accept: "application/json" }), signal, cache: "no-store" });
    if (!res.ok) throw await httpError(res);
    return res.json();
  }

  /**
   * Follow a stream live over SSE from `offset`, forever: after a drop it reconnects from the
   * last `streamNextOffset` of a control event. Data events are held back until the control
   * event that follows them, so a batch is delivered together with the offset that ends it and
   * a reconnect can never deliver the same data twice.
   *
   * onBatch({from, to, messages|text|bytes, upToDate, closed}) and onStatus({state, ...}) where
   * state is "connecting" | "live" | "reconnecting" | "missing" | "closed" | "error".
   * `beforeReconnect(signal)`, if given, is awaited before a response the server ended is
   * read on: a deleted stream's reads end too, and a caller that can tell (from another
   * stream) stops here, with `signal`, rather than be answered 404.
   * Resolves with the final offset when the stream is closed, the signal aborts, or the server
   * answers with an error that retrying cannot fix (400, 401, 403, 410).
   */
  async live(path, { offset = "-1", contentType = "application/json", onBatch, onStatus, beforeReconnect, signal } = {}) {
    let current = offset;
    let attempt = 0;
    let lastMissing = false;
    let lastStatus = "";
    const status = (state, extra = {}) => {
      const key = `${state}|${extra.upToDate ?? ""}`;
      if (key === lastStatus) return;
      lastStatus = key;
      onStatus?.({ state, ...extra });
    };
    status("connecting");
    while (!signal?.aborted) {
      let delivered = false;
      const guard = new RequestGuard(signal, this.silenceMs, this.silenceMs > 0 ? this.silenceMs + this.queuedMs : 0);
      try {
        const res = await fetch(this.url(path, { offset: current, live: "sse" }), {
          headers: this.headers({ Accept: "text/event-stream" }),
          signal: guard.signal,
          cache: "no-store",
        }).catch((err) => {
          throw guard.reason(err);
        });
        guard.feed();
        if (res.status < 500) this.#reach.heard();
        if (!res.ok) throw await httpError(res);
        const base64 = (res.headers.get("Stream-SSE-Data-Encoding") || "").toLowerCase() === "base64";
        const kind = base64 ? "bytes" : bodyKind(contentType);
        const outcome = await consumeSse(res, kind, current, (batch) => {
          current = batch.to;
          delivered = true;
          attempt = 0;
          status("live", { upToDate: batch.upToDate });
          if (batch.count > 0 || batch.from !== batch.to || batch.closed) onBatch?.(batch);
        }, () => guard.feed()).catch((err) => {
          throw guard.reason(err);
        });
        if (outcome.closed) {
          status("closed");
          return { offset: current, closed: true };
        }
        if (!delivered) throw new Error("SSE response ended without a control event");
        // The server ended the response normally (it does so periodically, and when the
        // stream is deleted): reconnect at once, once the caller has had its say.
        await beforeReconnect?.(signal);
      } catch (err) {
        if (signal?.aborted) break;
        const http = err instanceof HttpError ? err.status : 0;
        if ([400, 401, 403, 410].includes(http)) {
          status("error", { error: err });
          return { offset: current, error: err };
        }
        const missing = http === 404;
        // Counted apart: a stream found missing after a long outage waited out the
        // outage's backoff.
        if (missing !== lastMissing) attempt = 0;
        lastMissing = missing;
        attempt += 1;
        status(missing ? "missing" : "reconnecting", { error: err, attempt });
        if (!missing) this.#reach.lost();
        try {
          const nap = sleep(missing ? backoff(attempt, 500, MISSING_RETRY_MAX_MS) : backoff(attempt), signal);
          await (missing ? nap : Promise.race([nap, this.#reach.back()]));
        } catch {
          break;
        }
      } finally {
        guard.release();
      }
    }
    return { offset: current, aborted: true };
  }
}

async function consumeSse(res, kind, startOffset, deliver, heard) {
  let from = startOffset;
  let pending = [];
  let closed = false;
  let failure = null;
  const parser = new SseParser(({ event, data }) => {
    if (failure || closed) return;
    if (event === "data") {
      pending.push(data);
      return;
    }
    if (event !== "control") return; // unknown events are ignored, as SSE intends
    try {
      const control = JSON.parse(data);
      const to = control.streamNextOffset ?? from;
      const batch = { from, to, upToDate: !!(control.upToDate || control.streamClosed), closed: !!control.streamClosed };
      Object.assign(batch, decodeBatch(kind, pending));
      pending = [];
      from = to;
      closed = batch.closed;
      deliver(batch);
    } catch (err) {
      failure = err;
    }
  });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      heard();
      parser.push(value);
      if (failure) throw failure;
      if (closed) break;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return { closed };
}

function decodeBatch(kind, payloads) {
  if (kind === "json") {
    // Not push(...): one batch may hold more messages than a call takes arguments.
    const messages = payloads.length === 1 ? parseJsonBody(payloads[0]) : payloads.flatMap(parseJsonBody);
    return { messages, count: messages.length };
  }
  if (kind === "text") {
    const text = payloads.join("");
    return { text, count: payloads.length };
  }
  const parts = payloads.map((p) => base64ToBytes(p.replace(/[\r\n]/g, "")));
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return { bytes, count: payloads.length };
}

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

async function httpError(res) {
  const { message, code } = await errorOf(res);
  const error = new HttpError(res.status, message, res.headers);
  error.code = code; // the server's machine-readable reason, when it gave one
  return error;
}

/** Read the body of an answer whose headers say all (an empty one, mostly): left unread,
 * the browser cancels the request once the response is collected, and its developer tools
 * list every PUT and POST as failed (net::ERR_ABORTED). Resolves with "". */
async function drain(res) {
  await res.arrayBuffer().catch(() => {});
  return "";
}

async function safeText(res) {
  return (await errorOf(res)).message;
}

/** The message (at most 300 characters) and code of an error response's body. */
async function errorOf(res) {
  let text;
  try {
    text = await res.text();
  } catch {
    return { message: "", code: null };
  }
  try {
    const body = JSON.parse(text);
    const message = body?.error?.message ?? body?.message ?? body?.error;
    const code = typeof body?.error?.code === "string" ? body.error.code : null;
    if (typeof message === "string") return { message: message.slice(0, 300), code };
  } catch {
    /* not JSON */
  }
  return { message: text.slice(0, 300), code: null };
}

/** How many entries a listing says the server holds (this project's server answers a page at
 * a time, with the total); a server that does not say listed them all. */
function listingTotal(body, entries) {
  return Number.isSafeInteger(body?.total) && body.total >= entries.length ? body.total : entries.length;
}
