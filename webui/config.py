"""The app's settings: defaults, then `CHAT_*` environment variables, then `test_config`.

Every setting works on a laptop with no network and no API key. Environment variables use
the prefix `CHAT_` (e.g. `CHAT_DATA_DIR=/var/lib/chat`); values are parsed as JSON when they
can be (`CHAT_EMBEDDED_SUPERVISOR=false`). The model is configured the Anthropic way:
`ANTHROPIC_API_KEY`, `ANTHROPIC_MODEL`, `ANTHROPIC_BASE_URL`.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

DEFAULTS: dict[str, Any] = {
    # Where the streams database and the agents' offsets live.
    "DATA_DIR": "./data",
    # Keep streams in memory instead (nothing survives a restart).
    "STREAMS_MEMORY": False,
    # The streams root the browser talks to (same origin by default).
    "STREAMS_BROWSER_URL": "/v1/stream",
    # Require `Authorization: Bearer <token>` on the streams API (the page sends it).
    "STREAMS_AUTH_TOKEN": None,
    "LONG_POLL_TIMEOUT_S": 30.0,
    "MAX_BODY_MIB": 64,
    # Run a supervisor inside the app, so that `flask run` alone answers prompts.
    "EMBEDDED_SUPERVISOR": True,
    # The streams root the embedded supervisor uses; default: this app's own URL.
    "AGENT_STREAMS_URL": None,
    # A Claude model id, or "demo"; default: $ANTHROPIC_MODEL, else the demo model without a key.
    "AGENT_MODEL": None,
    "AGENT_IDLE_TIMEOUT_S": 60.0,
    "AGENT_MAX_AGENTS": 100,
    "AGENT_COALESCE_MS": 0.0,
    "AGENT_LEASE_TTL_MS": 30_000,
    # The stream where the server writes wake events for the agents.
    "AGENT_WAKE_STREAM": "agents/wake",
    "DEMO_TOKENS_PER_SECOND": 30.0,
}


def load_config(app: Flask, test_config: dict[str, Any] | None) -> None:
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("CHAT")
    if test_config:
        app.config.from_mapping(test_config)
