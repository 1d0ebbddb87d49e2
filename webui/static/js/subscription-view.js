// A subscription (section 6.3) as a definition list, a table of its linked streams with their
// acked offsets, and the raw JSON.

import { el } from "./util.js";

/** DOM nodes describing `sub`; `onOpenPath(path)` opens a linked stream. */
export function renderSubscription(sub, { onOpenPath }) {
  const fields = [
    ["Type", sub.type], ["Status", sub.status], ["Pattern", sub.pattern], ["Wake stream", sub.wake_stream],
    ["Webhook", sub.webhook?.url], ["Lease TTL", sub.lease_ttl_ms ? `${sub.lease_ttl_ms} ms` : null],
    ["Created", sub.created_at], ["Description", sub.description],
    // Lease state, where the server reports it (not part of the section 6.3 example).
    ["Generation", sub.generation], ["Lease holder", sub.holder], ["Lease expires", sub.lease_expires_at],
    ["Last error", sub.last_error],
  ].filter(([, v]) => v !== undefined && v !== null && v !== "");
  const grid = el("dl", { class: "meta-grid", dataset: { testid: "subscription-fields" } },
    ...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  const streams = Array.isArray(sub.streams) ? sub.streams : [];
  const table = el("table", { dataset: { testid: "subscription-streams" } },
    el("thead", {}, el("tr", {}, el("th", {}, "Stream"), el("th", {}, "Link"), el("th", {}, "Acked offset"))),
    el("tbody", {}, ...streams.map((s) => el("tr", {},
      el("td", {}, el("button", { type: "button", class: "path-button", dataset: { path: s.path }, onclick: () => onOpenPath(s.path) }, s.path)),
      el("td", {}, s.link_type ?? ""),
      el("td", {}, el("code", {}, s.acked_offset ?? "—"))))));
  return [
    grid,
    streams.length ? table : el("p", { class: "muted" }, "No linked streams."),
    el("details", {}, el("summary", {}, "Raw JSON"), el("pre", {}, JSON.stringify(sub, null, 2))),
  ];
}
