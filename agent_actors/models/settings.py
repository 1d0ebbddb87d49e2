"""Choose the model from settings: Claude when an API key is configured, else the demo."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from agent_actors.models.anthropic_model import DEFAULT_ANTHROPIC_MODEL, AnthropicModel
from agent_actors.models.base import Model
from agent_actors.models.demo import DemoModel

log = logging.getLogger("agent_actors.models")

# The SDK's HTTP client logs every request at INFO: a line per answer, and at start a "501
# Unsupported method" that reads like a failure (an endpoint without the models API is fine).
_HTTP_CLIENT_LOGGERS = ("httpx", "httpx2")


def quiet_http_client_logs() -> None:
    """Keep the SDK's HTTP client to its warnings, unless the process logs at debug level."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in _HTTP_CLIENT_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

DEMO = "demo"
"""The model name that selects the offline demo model even when a key is set."""


def model_from_settings(
    name: str | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
    demo_tokens_per_second: float = 30.0,
    demo_first_token_latency: float = 0.3,
    max_tokens: int = 1024,
    system: str | None = None,
    name_setting: str = "--model",
) -> Model:
    """The model to use, and one log line saying which.

    Explicit arguments win over the environment (``ANTHROPIC_API_KEY``, ``ANTHROPIC_MODEL``,
    ``ANTHROPIC_BASE_URL``; ``env`` defaults to ``os.environ``). ``name`` is a Claude model id,
    or ``"demo"`` to force the offline demo. Without an API key the demo model is used.
    ``name_setting`` is where ``name`` was given: errors about the model say to check it.
    """
    env = os.environ if env is None else env
    model_setting = name_setting if name else "ANTHROPIC_MODEL"
    name = name or env.get("ANTHROPIC_MODEL") or None
    # Stripped: a key read from a file ends in a newline, which no HTTP header may carry.
    given_key = api_key if api_key is not None else env.get("ANTHROPIC_API_KEY")
    api_key = (given_key or "").strip() or None
    base_url = base_url or env.get("ANTHROPIC_BASE_URL") or None
    if name == DEMO or not api_key:
        if given_key is not None and not api_key:  # `KEY="$(cat file)"` with an empty file
            log.warning("ANTHROPIC_API_KEY is set but blank; using the demo model")
        elif name not in (None, DEMO):
            log.warning("model %r requested but ANTHROPIC_API_KEY is not set; using the demo",
                        name)
        why = ("as asked (the API key is not used)" if api_key
               else "ANTHROPIC_API_KEY is blank" if given_key is not None
               else "set ANTHROPIC_API_KEY to use Claude")
        log.info("model: demo (offline, %g tokens/s); %s", demo_tokens_per_second, why)
        return DemoModel(tokens_per_second=demo_tokens_per_second,
                         first_token_latency=demo_first_token_latency)
    model = AnthropicModel(api_key=api_key, model=name or DEFAULT_ANTHROPIC_MODEL,
                           base_url=base_url, max_tokens=max_tokens, system=system,
                           model_setting=model_setting)
    log.info("model: %s via %s", model.name, model.base_url)
    return model


def warn_if_unusable(model: Model) -> None:
    """Look the model up in the background, and log a warning if every answer would fail
    (a rejected key, an address where nothing answers): said at start, not at the first
    prompt. The demo model has nothing to look up."""
    if not isinstance(model, AnthropicModel):
        return

    def look_up() -> None:
        problem = model.problem()
        if problem is not None:
            log.warning("%s Answers will fail until this is fixed.", problem)

    threading.Thread(target=look_up, name="model-check", daemon=True).start()
