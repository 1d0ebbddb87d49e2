// The live flow diagram: browser → prompt stream → agent → response stream → browser, each
// node and edge lighting up as messages pass.

import { svg } from "./util.js";

/** How long a node or edge stays lit after a message passed it. */
const PULSE_MS = 900;
const NODE_W = 128;
const NODE_H = 56;
const NODES = {
  browser: { x: 8, y: 8, title: "Browser", testid: "flow-node-browser" },
  prompts: { x: 184, y: 8, title: "Prompt stream", testid: "flow-node-prompts" },
  agent: { x: 184, y: 156, title: "Agent", testid: "flow-node-agent" },
  responses: { x: 8, y: 156, title: "Response stream", testid: "flow-node-responses" },
};
const EDGES = {
  send: { d: "M136 36 H182", label: "POST", lx: 159, ly: 28, testid: "flow-edge-send" },
  wake: { d: "M248 64 V154", label: "read", lx: 256, ly: 113, anchor: "start", testid: "flow-edge-wake" },
  answer: { d: "M184 184 H138", label: "POST", lx: 161, ly: 176, testid: "flow-edge-answer" },
  deliver: { d: "M72 156 V66", label: "SSE", lx: 64, ly: 113, anchor: "end", testid: "flow-edge-deliver" },
};

export class FlowDiagram {
  #parts = {};
  #litUntil = new Map(); // name -> when a part lit by a pulse goes dark (performance.now())

  constructor(container) {
    const root = svg("svg", { viewBox: "0 0 320 220", class: "flow-svg", role: "img", "aria-labelledby": "flow-title flow-desc" });
    root.append(
      svg("title", { id: "flow-title", text: "Message flow" }),
      svg("desc", { id: "flow-desc", text: "Prompts go from this browser into the prompt stream, the agent reads them and appends its answer to the response stream, which the browser follows live." }),
      svg("defs", {}, svg("marker", { id: "flow-arrow", viewBox: "0 0 10 10", refX: "8", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
        svg("path", { d: "M0 0 L10 5 L0 10 z", class: "flow-arrowhead" }))),
    );
    for (const [key, e] of Object.entries(EDGES)) {
      const path = svg("path", { d: e.d, class: "flow-edge", "marker-end": "url(#flow-arrow)", "data-testid": e.testid });
      const label = svg("text", { x: e.lx, y: e.ly, class: "flow-edge-label", "text-anchor": e.anchor ?? "middle", text: e.label });
      root.append(path, label);
      this.#parts[key] = path;
    }
    for (const [key, n] of Object.entries(NODES)) {
      const group = svg("g", { class: "flow-node", "data-testid": n.testid, "data-node": key });
      const sub = svg("text", { x: n.x + NODE_W / 2, y: n.y + 40, class: "flow-node-sub", "text-anchor": "middle", text: "" });
      group.append(
        svg("rect", { x: n.x, y: n.y, width: NODE_W, height: NODE_H, rx: 10 }),
        svg("text", { x: n.x + NODE_W / 2, y: n.y + 22, class: "flow-node-title", "text-anchor": "middle", text: n.title }),
        sub,
      );
      root.append(group);
      this.#parts[key] = group;
      this.#parts[`${key}Sub`] = sub;
    }
    container.replaceChildren(root);
    this.root = root;
    this.setSub("browser", "this tab");
    this.setSub("agent", "idle");
  }

  setSub(node, text) {
    const sub = this.#parts[`${node}Sub`];
    if (sub && sub.textContent !== text) sub.textContent = text;
  }

  /** Light a node or an edge for PULSE_MS after its latest pulse. Called for every batch a
   * live read delivers (hundreds a second while an answer streams), so it only moves a
   * deadline: no timer per call, and no forced layout (which would lay out the whole page,
   * the longest answer included, each time). */
  pulse(...names) {
    const until = performance.now() + PULSE_MS;
    for (const name of names) {
      const part = this.#parts[name];
      if (!part) continue;
      const lit = this.#litUntil.has(name);
      this.#litUntil.set(name, until);
      if (lit) continue;
      part.classList.add("is-active");
      this.#unlightLater(name, part, PULSE_MS);
    }
  }

  #unlightLater(name, part, delay) {
    setTimeout(() => {
      const left = this.#litUntil.get(name) - performance.now();
      if (left > 1) return this.#unlightLater(name, part, left);
      part.classList.remove("is-active");
      this.#litUntil.delete(name);
    }, delay);
  }

  /** The agent node stays lit while an answer is being worked on. */
  setAgentState(state, text = state) {
    const node = this.#parts.agent;
    node.dataset.state = state;
    node.classList.toggle("is-busy", state === "thinking" || state === "streaming");
    this.setSub("agent", text);
  }

  /** `state`: one of `ConnectionStatus.overall()`'s; `text`: what the node says of it. */
  setBrowserState(state, text) {
    this.#parts.browser.dataset.state = state;
    this.setSub("browser", text);
  }

  /** A prompt (or cancel) left this browser and was stored. */
  promptSent() {
    this.pulse("browser", "send", "prompts");
  }

  /** The prompt stream grew. */
  promptsArrived(count) {
    this.setSub("prompts", `${count} ${count === 1 ? "entry" : "entries"}`);
    this.pulse("prompts", "wake");
  }

  /** The response stream grew. */
  responsesArrived(count) {
    this.setSub("responses", `${count} ${count === 1 ? "entry" : "entries"}`);
    this.pulse("agent", "answer", "responses", "deliver", "browser");
  }
}
