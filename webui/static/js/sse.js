// An incremental Server-Sent Events parser (the text/event-stream format), fed decoded text.

export class SseParser {
  #buffer = "";
  #event = "";
  #data = [];
  #hasData = false;

  /** @param {(event: {event: string, data: string}) => void} onEvent */
  constructor(onEvent) {
    this.onEvent = onEvent;
  }

  /** Feed a chunk of decoded text; complete events are dispatched synchronously. */
  push(text) {
    this.#buffer += text;
    let start = 0;
    for (;;) {
      const end = this.#lineEnd(start);
      if (end < 0) break;
      const line = this.#buffer.slice(start, end);
      // \r\n counts as one line break; a lone \r or \n also ends a line.
      start = end + (this.#buffer[end] === "\r" && this.#buffer[end + 1] === "\n" ? 2 : 1);
      this.#line(line);
    }
    this.#buffer = this.#buffer.slice(start);
  }

  #lineEnd(from) {
    for (let i = from; i < this.#buffer.length; i++) {
      const c = this.#buffer[i];
      if (c === "\n") return i;
      // A trailing \r might be the first half of \r\n: wait for the next chunk.
      if (c === "\r") return i + 1 < this.#buffer.length ? i : -1;
    }
    return -1;
  }

  #line(line) {
    if (line === "") return this.#dispatch();
    if (line.startsWith(":")) return; // comment / keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") {
      this.#data.push(value);
      this.#hasData = true;
    }
  }

  #dispatch() {
    if (this.#hasData) this.onEvent({ event: this.#event || "message", data: this.#data.join("\n") });
    this.#event = "";
    this.#data = [];
    this.#hasData = false;
  }
}
