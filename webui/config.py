"""The app's settings: defaults, then `CHAT_*` environment variables, then `test_config`.

Every setting works on a laptop with no network and no API key. Environment variables use
the prefix `CHAT_` (e.g. `CHAT_DATA_DIR=/var/lib/chat`); values are parsed as JSON when they
can be (`CHAT_EMBEDDED_SUPERVISOR=false`). The model is configured the Anthropic way:
`ANTHROPIC_API_KEY`, `ANTHROPIC_MODEL`, `ANTHROPIC_BASE_URL`.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask

from agent_actors.layout import LEASE_TTL_MS_RANGE
from agent_actors.validation import (
    HTTP_URL,
    MAX_COALESCE_MS,
    MAX_IDLE_TIMEOUT_S,
    is_http_url,
    is_stream_path,
    is_token,
    is_visible_ascii,
)
from streams_server.config import LARGEST_BODY_MIB
from webui.chat import DEFAULTS as PAGE_DEFAULTS

log = logging.getLogger(__name__)

STREAMS_PREFIX = "/v1/stream"
"""Where the app serves the streams protocol."""

DEFAULTS: dict[str, Any] = {
    # Where the streams database and the agents' offsets live.
    "DATA_DIR": "./data",
    # Keep streams in memory instead (nothing survives a restart).
    "STREAMS_MEMORY": False,
    # The streams root the browser talks to, the bearer token the streams API then requires
    # (the page sends it), and the SSE keep-alive and duration the server and page share.
    **PAGE_DEFAULTS,
    "LONG_POLL_TIMEOUT_S": 30.0,
    "MAX_BODY_MIB": 64,
    "MAX_JSON_MESSAGES": 10_000,
    # The streams database's quota: writes past it get 507 (default: no limit but the disk).
    "MAX_STORAGE_MIB": None,
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
    # `flask run`'s access log shows the streams API's requests that succeed too (a line per
    # few tokens of every answer); by default only those that fail.
    "LOG_STREAM_REQUESTS": False,
    # Let webhook subscriptions call localhost and 127.0.0.x (development only).
    "ALLOW_LOCAL_WEBHOOKS": False,
}


class ConfigError(ValueError):
    """Settings the app cannot run with; the message names each one and what it must be."""


TEXT_SETTINGS = ("DATA_DIR", "STREAMS_BROWSER_URL", "STREAMS_AUTH_TOKEN", "AGENT_STREAMS_URL",
                 "AGENT_MODEL", "AGENT_WAKE_STREAM")
FLAG_SETTINGS = ("STREAMS_MEMORY", "EMBEDDED_SUPERVISOR", "LOG_STREAM_REQUESTS",
                 "ALLOW_LOCAL_WEBHOOKS")
OPTIONAL_SETTINGS = ("STREAMS_AUTH_TOKEN", "AGENT_STREAMS_URL", "AGENT_MODEL")
"""Settings an empty value leaves unset (their defaults apply)."""


def load_config(app: Flask, test_config: dict[str, Any] | None) -> None:
    """Fill `app.config`; raises `ConfigError` for a setting out of its range or type."""
    app.config.from_mapping(DEFAULTS)
    nested = sorted(name for name in os.environ
                    if name.startswith("CHAT_") and name[5:].split("__")[0] in DEFAULTS
                    and "__" in name[5:])
    if nested:  # Flask's syntax for a key inside a setting: none of the chat's has keys
        raise ConfigError(f"{nested[0]} is not a setting: {nested[0].split('__')[0]} has no"
                          " parts to set")
    app.config.from_prefixed_env("CHAT")
    _warn_of_unknown_settings(os.environ)
    for key in TEXT_SETTINGS:  # as written: JSON would make a token of digits a number
        if f"CHAT_{key}" in os.environ:
            app.config[key] = os.environ[f"CHAT_{key}"]
    for key in FLAG_SETTINGS:  # JSON takes only true and false; Python's spelling is as clear
        written = os.environ.get(f"CHAT_{key}", "").strip().lower()
        if written in ("true", "false"):
            app.config[key] = written == "true"
    if test_config:
        app.config.from_mapping(test_config)
    for key in OPTIONAL_SETTINGS:
        if isinstance(app.config[key], str) and not app.config[key].strip():
            app.config[key] = None
    if isinstance(app.config["DATA_DIR"], str):  # a shell leaves `~` alone in quotes
        app.config["DATA_DIR"] = os.path.expanduser(app.config["DATA_DIR"])
    check_config(app.config)


def _warn_of_unknown_settings(env: Mapping[str, str]) -> None:
    """A mistyped setting (`CHAT_AGENT_MAXAGENTS`) would be ignored without a word. (Flask's
    own settings, `CHAT_SECRET_KEY` and the like, are taken by Flask.)"""
    for name in sorted(env):
        if (name.startswith("CHAT_") and name[5:] not in DEFAULTS
                and name[5:] not in Flask.default_config):
            close = difflib.get_close_matches(name[5:], DEFAULTS, n=1)
            hint = f" (did you mean CHAT_{close[0]}?)" if close else ""
            log.warning("%s is not a setting of the chat and is ignored%s", name, hint)


def _number(low: float, *, above: bool = False, high: float | None = None,
            whole: bool = False, optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(value: Any) -> bool:
        if optional and value is None:
            return True
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            return False
        if not math.isfinite(value):  # JSON's NaN and Infinity; NaN passes every comparison
            return False
        return (value > low if above else value >= low) and (high is None or value <= high)
    kind = "a whole number" if whole else "a finite number"
    bound = f"greater than {low:g}" if above else f"at least {low:g}"
    return ok, (f"{kind} {bound}" + ("" if high is None else f" and at most {high:g}")
                + (" (or unset)" if optional else ""))


def _text(optional: bool = False, url: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(value: Any) -> bool:
        if optional and value is None:
            return True
        if not isinstance(value, str) or not value.strip():
            return False
        return not url or is_http_url(value)
    wanted = HTTP_URL if url else "text"
    return ok, wanted + (" (or unset)" if optional else "")


_STREAM_PATH = (lambda value: isinstance(value, str) and is_stream_path(value),
                "a stream path such as agents/wake")
# The page's streams root: a path on this app, or another server's URL.
_BROWSER_URL = (lambda value: isinstance(value, str) and (
    (value.startswith("/") and not value.startswith("//") and is_visible_ascii(value))
    or is_http_url(value)),
    "a path starting with / (ASCII, without spaces) or " + HTTP_URL)


_FLAG = (lambda value: isinstance(value, bool), "true or false")
_TOKEN = (lambda value: value is None or (isinstance(value, str) and is_token(value)),
          "visible ASCII characters without spaces (or unset)")

# The model id goes into every request to the API: "claude bad model" failed each answer.
_MODEL = (lambda value: value is None or (isinstance(value, str) and is_token(value)),
          "a model id: visible ASCII characters without spaces (or unset)")

_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "DATA_DIR": (_text()[0], "a directory"),
    "STREAMS_MEMORY": _FLAG,
    "STREAMS_BROWSER_URL": _BROWSER_URL,
    "STREAMS_AUTH_TOKEN": _TOKEN,
    # Upper bounds: past about 9e9 s a thread's timed wait overflows (`flask run` serves on
    # threads), which failed every long-poll.
    "LONG_POLL_TIMEOUT_S": _number(0, above=True, high=3600),
    "SSE_KEEPALIVE_S": _number(0.1, high=3600),  # shorter ones flood the readers
    "SSE_MAX_DURATION_S": _number(0, above=True, high=3600),
    "MAX_BODY_MIB": _number(0, above=True, high=LARGEST_BODY_MIB),
    "MAX_JSON_MESSAGES": _number(1, whole=True),
    "MAX_STORAGE_MIB": _number(0, above=True, optional=True),
    "EMBEDDED_SUPERVISOR": _FLAG,
    "AGENT_STREAMS_URL": _text(optional=True, url=True),
    "AGENT_MODEL": _MODEL,
    "AGENT_IDLE_TIMEOUT_S": _number(0, above=True, high=MAX_IDLE_TIMEOUT_S),
    "AGENT_MAX_AGENTS": _number(1, whole=True),
    "AGENT_COALESCE_MS": _number(0, high=MAX_COALESCE_MS),
    "AGENT_LEASE_TTL_MS": _number(LEASE_TTL_MS_RANGE[0], high=LEASE_TTL_MS_RANGE[1],
                                  whole=True),
    "AGENT_WAKE_STREAM": _STREAM_PATH,
    "DEMO_TOKENS_PER_SECOND": _number(0),  # 0: instant answers
    "LOG_STREAM_REQUESTS": _FLAG,
    "ALLOW_LOCAL_WEBHOOKS": _FLAG,
}


def check_config(config: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> None:
    problems = [f"CHAT_{key} must be {wanted}, not {config[key]!r}"
                for key, (ok, wanted) in _CHECKS.items() if not ok(config[key])]
    data_dir = config["DATA_DIR"]
    if isinstance(data_dir, str) and data_dir.startswith("~"):
        # Still so once expanded: the app made a directory named "~nouser" where it started.
        problems.append(f"CHAT_DATA_DIR starts with {data_dir.split('/')[0]!r}, which names no"
                        " home directory on this machine")
    model_url = env.get("ANTHROPIC_BASE_URL") or None
    if model_url is not None and not is_http_url(model_url):
        problems.append(f"ANTHROPIC_BASE_URL must be {HTTP_URL}, not {model_url!r}")
    api_key = (env.get("ANTHROPIC_API_KEY") or "").strip()  # a newline from a file is taken off
    if api_key and not is_token(api_key):
        problems.append("ANTHROPIC_API_KEY must be visible ASCII characters without spaces")
    model = env.get("ANTHROPIC_MODEL") or None
    if model is not None and not is_token(model):
        problems.append("ANTHROPIC_MODEL must be a model id: visible ASCII characters without"
                        f" spaces, not {model!r}")
    if problems:
        raise ConfigError("; ".join(problems))
