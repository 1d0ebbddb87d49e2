"""What a `Supervisor` is told: where the streams are, its limits, its agents' settings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from agent_actors import layout
from agent_actors.agent import AgentSettings


@dataclass(frozen=True)
class SettingNames:
    """What the person running the supervisor calls its settings, for the log's advice: the
    command's flags, or the web app's environment variables for its embedded supervisor."""

    streams_url: str = "--streams-url"
    auth_token: str = "--auth-token"
    lease_ttl: str = "--lease-ttl-ms"
    wake_stream: str = "--wake-stream"


@dataclass(frozen=True)
class SupervisorSettings:
    streams_url: str
    data_dir: str | None = "./data/agents"
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    wake_stream: str = layout.DEFAULT_WAKE_STREAM
    lease_ttl_ms: int = layout.DEFAULT_LEASE_TTL_MS
    max_agents: int = 100
    restart_backoff_s: float = 1.0
    auth_token: str | None = None
    agent: AgentSettings = AgentSettings()
    # How long stopping waits for agents to release their leases; after that the leases
    # simply expire (e.g. when the streams server is already gone).
    shutdown_timeout_s: float = 15.0
    named: SettingNames = SettingNames()
    # Threads for claims and start-up checks, a few requests each: conversations woken
    # together (a burst of prompts, a restart's scan) do not queue behind one another's.
    job_threads: int = 8
