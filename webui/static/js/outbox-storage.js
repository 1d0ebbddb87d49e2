// Where the outbox keeps the appends the server has not acknowledged yet, so that closing
// the tab, or the whole browser, loses no prompt.
//
// With Web Locks (https and localhost origins) each page load keeps its entries in
// localStorage under a key of its own, and holds a lock of that name for as long as it is
// open. A key whose lock is free is an orphan: its page was closed, or crashed, before the
// server had everything. A page takes its predecessor's back as it starts (a reload: the
// tab's sessionStorage names it), and waits on the lock of every other page that keeps
// entries, to take on theirs once that page has been gone for a few seconds (time for its
// own reload to come back). The lock is held while taking on, so each orphan goes to one
// page; its entries keep the producer tuples they were sent with, so the server drops a copy
// that had already landed.
//
// Without Web Locks (plain-http LAN origins) the entries stay in this tab's sessionStorage:
// a reload finds them again, closing the tab loses them.

import { randomId, sleep } from "./util.js";

const PREFIX = "ds-outbox:";
const PREDECESSOR = "ds-outbox-of-this-tab:";
const GONE_AT = "ds-outbox-gone:"; // + a page's key: when it went, leaving entries
/** How long a page that has gone is given to come back (a reload) before another takes on
 * its entries: counted from when it went, so that a tab opened later takes them without
 * waiting it out; but at least `RESTORE_GRACE_MS`, for the tabs of a browser restarted
 * together to take back their own first. */
const RELOAD_GRACE_MS = 5000;
const RESTORE_GRACE_MS = 1500;

export class OutboxStorage {
  #key;
  #storage;
  #onAdopt;
  #shared;
  #locked = false;
  #unsaved = null; // entries saved before this page held its lock
  #watched = new Set();
  #leftInTab = []; // what an earlier version of the page kept in this tab's sessionStorage

  /**
   * @param {string} baseUrl the streams API the entries are for (each has its own outbox)
   * @param {(entries: object[]) => boolean} onAdopt given the entries of a closed page;
   *   whether it could keep them (else they stay where they are, for another page)
   */
  constructor(baseUrl, onAdopt) {
    this.#onAdopt = onAdopt;
    this.#shared = !!globalThis.navigator?.locks;
    // The key of this tab in sessionStorage, where earlier versions of the page also kept it.
    const tabKey = PREFIX + baseUrl;
    if (!this.#shared) {
      this.#key = tabKey;
      this.#storage = window.sessionStorage;
      return;
    }
    this.#storage = window.localStorage;
    this.#key = `${tabKey}#${randomId()}`; // "#": no part of a URL the page is given
    window.addEventListener("pagehide", () => {
      if (!this.#shared || this.#storage.getItem(this.#key) === null) return; // none for others
      try {
        this.#storage.setItem(GONE_AT + this.#key, String(Date.now()));
      } catch {} // storage full: other pages give it the whole grace
    });
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) this.#storage.removeItem(GONE_AT + this.#key); // back from the cache
    });
    this.#leftInTab = read(window.sessionStorage, tabKey);
    const predecessor = window.sessionStorage.getItem(PREDECESSOR + baseUrl);
    window.sessionStorage.setItem(PREDECESSOR + baseUrl, this.#key);
    navigator.locks
      .request(this.#key, () => {
        window.sessionStorage.removeItem(tabKey); // kept under this page's key from now on
        this.#held(`${tabKey}#`, predecessor);
        return new Promise(() => {}); // held until the page goes
      })
      .catch((err) => {
        console.warn("outbox lock failed: unsent messages are kept in this tab only", err);
        this.#shared = false;
        this.#storage = window.sessionStorage;
        this.#key = tabKey;
        if (this.#unsaved) write(this.#storage, this.#key, this.#unsaved);
      });
  }

  /** What this tab left unsent in an earlier load (only without Web Locks, or from an
   * earlier version of the page: otherwise a closed page's entries are adopted). */
  load() {
    if (!this.#shared) return read(this.#storage, this.#key);
    const entries = this.#leftInTab;
    this.#leftInTab = [];
    return entries;
  }

  /** Whether `entries` are stored (not when storage is full). */
  save(entries) {
    if (this.#shared && !this.#locked) {
      this.#unsaved = entries; // written once the lock is ours, or another page could adopt it
      return true;
    }
    return write(this.#storage, this.#key, entries);
  }

  #held(prefix, predecessor) {
    this.#locked = true;
    if (this.#unsaved) write(this.#storage, this.#key, this.#unsaved);
    this.#unsaved = null;
    const ours = (key) => key?.startsWith(prefix) && key !== this.#key && key !== predecessor;
    if (predecessor?.startsWith(prefix)) {
      // Granted once the page this one replaces has gone (at once, or as its unload ends);
      // a duplicated tab names the page it was copied from, and waits for it to close.
      navigator.locks
        .request(predecessor, () => this.#adopt(predecessor))
        .catch((err) => console.warn("outbox adoption failed", err));
    }
    const keys = [];
    for (let i = 0; i < this.#storage.length; i += 1) if (ours(this.#storage.key(i))) keys.push(this.#storage.key(i));
    for (const key of keys) this.#watch(key);
    // A page that starts keeping entries after this one started.
    window.addEventListener("storage", (event) => {
      if (event.storageArea === this.#storage && event.newValue !== null && ours(event.key)) this.#watch(event.key);
    });
  }

  /** Take on `key` if its page has gone; else wait for it to go. */
  #adoptNow(key) {
    navigator.locks
      .request(key, { ifAvailable: true }, (lock) => {
        if (lock) this.#adopt(key);
        else this.#watch(key);
      })
      .catch((err) => console.warn("outbox adoption failed", err));
  }

  #watch(key) {
    if (this.#watched.has(key)) return;
    this.#watched.add(key);
    navigator.locks
      .request(key, () => {}) // granted once its page has gone
      .then(() => sleep(graceLeft(this.#storage, key)))
      .then(() => {
        this.#watched.delete(key);
        if (this.#storage.getItem(key) !== null) this.#adoptNow(key);
        else this.#storage.removeItem(GONE_AT + key); // taken by another page, or sent
      })
      .catch((err) => console.warn("outbox adoption failed", err));
  }

  /** Called holding the lock of `key`: its page has gone. */
  #adopt(key) {
    this.#storage.removeItem(GONE_AT + key);
    const stored = this.#storage.getItem(key);
    if (stored === null) return;
    const entries = read(this.#storage, key);
    // Removed from the closed page's key (which frees its room) and kept under this page's,
    // in one task: closing this page cannot come in between. Not kept (storage full): put
    // back, for another page.
    this.#storage.removeItem(key);
    if (entries.length && !this.#onAdopt(entries)) write(this.#storage, key, entries, stored);
  }
}

/** What is left of the grace of the page of `key`, gone (all of it if when is unknown: it
 * crashed, or went as this page started). */
function graceLeft(storage, key) {
  const goneAt = Number(storage.getItem(GONE_AT + key));
  if (!goneAt) return RELOAD_GRACE_MS;
  return Math.min(RELOAD_GRACE_MS, Math.max(RESTORE_GRACE_MS, goneAt + RELOAD_GRACE_MS - Date.now()));
}

function read(storage, key) {
  try {
    const entries = JSON.parse(storage.getItem(key) || "[]");
    return Array.isArray(entries) ? entries.filter((e) => e && e.key && e.path) : [];
  } catch {
    return [];
  }
}

function write(storage, key, entries, json = JSON.stringify(entries)) {
  try {
    if (entries.length) storage.setItem(key, json);
    else storage.removeItem(key);
    return true;
  } catch (err) {
    console.warn("outbox not persisted", err);
    return false;
  }
}
