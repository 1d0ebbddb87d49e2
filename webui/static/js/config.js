// The page's settings, injected by Flask as a JSON block (never as executable script).

function readConfig() {
  const node = document.getElementById("app-config");
  let raw = {};
  try {
    raw = JSON.parse(node?.textContent || "{}");
  } catch (err) {
    console.error("invalid #app-config", err);
  }
  const root = new URL(raw.streamsUrl || "/v1/stream", window.location.href);
  return Object.freeze({
    /** Absolute streams root without trailing slash, e.g. http://host/v1/stream */
    streamsUrl: root.href.replace(/\/+$/, ""),
    /** Optional bearer token for the streams server. */
    authToken: raw.authToken || null,
    /** Silence (ms) after which a live read reconnects and an append is retried; 0: never. */
    silenceMs: Number(raw.silenceMs) > 0 ? Number(raw.silenceMs) : 0,
    /** How long a request may wait for one of the browser's connections (see streams.js). */
    queuedMs: Number(raw.queuedMs) > 0 ? Number(raw.queuedMs) : 65_000,
    /** How conversations' subscriptions wake the agents (must match the supervisor's). */
    agents: Object.freeze({
      wakeStream: raw.agents?.wakeStream || "agents/wake",
      leaseTtlMs: raw.agents?.leaseTtlMs || 30000,
    }),
  });
}

export const config = readConfig();
