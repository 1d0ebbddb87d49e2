// Where the outbox keeps the appends the server has not acknowledged yet, so that closing
// the tab, or the whole browser, loses no prompt.
//
// With Web Locks (https and localhost origins) each page load keeps its entries in
// localStorage under a key of its own, and holds a lock of that name for as long as it is
// open. A key whose lock is free is an orphan: its page was closed, or crashed, before the
// server had everything. Every page adopts the orphans it finds when it starts, and waits on
// the lock of every other page that keeps entries, to adopt them the moment that page goes.
// The lock is held while adopting, so each orphan is adopted once; its entries keep the
// producer tuples they were sent with, so the server drops a copy that had already landed.
//
// Without Web Locks (plain-http LAN origins) the entries stay in this tab's sessionStorage:
// a reload finds them again, closing the tab loses them.

import { randomId } from "./util.js";

const PREFIX = "ds-outbox:";

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
   * @param {(entries: object[]) => void} onAdopt given the entries of a closed page
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
    this.#leftInTab = read(window.sessionStorage, tabKey);
    navigator.locks
      .request(this.#key, () => {
        window.sessionStorage.removeItem(tabKey); // kept under this page's key from now on
        this.#held(`${tabKey}#`);
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

  save(entries) {
    if (this.#shared && !this.#locked) {
      this.#unsaved = entries; // written once the lock is ours, or another page could adopt it
      return;
    }
    write(this.#storage, this.#key, entries);
  }

  #held(prefix) {
    this.#locked = true;
    if (this.#unsaved) write(this.#storage, this.#key, this.#unsaved);
    this.#unsaved = null;
    const watch = (key) => {
      if (key?.startsWith(prefix) && key !== this.#key) this.#watch(key);
    };
    for (let i = 0; i < this.#storage.length; i += 1) watch(this.#storage.key(i));
    // A page that starts keeping entries after this one started.
    window.addEventListener("storage", (event) => {
      if (event.storageArea === this.#storage && event.newValue !== null) watch(event.key);
    });
  }

  #watch(key) {
    if (this.#watched.has(key)) return;
    this.#watched.add(key);
    navigator.locks
      .request(key, () => this.#adopt(key))
      .catch((err) => console.warn("outbox adoption failed", err));
  }

  /** Called holding the lock of `key`: its page has gone. */
  #adopt(key) {
    const entries = read(this.#storage, key);
    // Saved under this page's key, then removed from the closed one's, in one task: closing
    // this page cannot come in between.
    if (entries.length) this.#onAdopt(entries);
    this.#storage.removeItem(key);
  }
}

function read(storage, key) {
  try {
    const entries = JSON.parse(storage.getItem(key) || "[]");
    return Array.isArray(entries) ? entries.filter((e) => e && e.key && e.path) : [];
  } catch {
    return [];
  }
}

function write(storage, key, entries) {
  try {
    if (entries.length) storage.setItem(key, JSON.stringify(entries));
    else storage.removeItem(key);
  } catch (err) {
    console.warn("outbox not persisted", err);
  }
}
