"""Whether to ask the model again after a request failed before its answer began, and when.

The policy is the one the Anthropic SDK applies to its own retries, which `AnthropicModel`
turns off so that the wait between attempts is one a cancel can end (the SDK sleeps through
it, then sends the retried request anyway):

- a failed connection or a timeout is retried;
- an error status is retried if the response's ``x-should-retry`` header says ``true``, or,
  without that header, for ``408``, ``409``, ``429`` and every ``5xx``; ``x-should-retry:
  false`` forbids it;
- the wait is what the response asks for (``retry-after-ms``, else ``retry-after`` in seconds
  or as an HTTP date) when that is more than zero and at most a minute; otherwise 0.5 s
  doubling with each retry up to 8 s, shortened by up to a quarter at random so that many
  agents rate-limited together do not all come back at once.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

import anthropic

INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0

_jitter = random.Random()  # its own generator: the global one is the application's


def retry_delay(exc: BaseException, retries_so_far: int) -> float | None:
    """Seconds to wait before retrying after ``exc``, or None if it must not be retried."""
    if isinstance(exc, anthropic.APIStatusError):
        headers = exc.response.headers
        if not should_retry(exc.status_code, headers):
            return None
        asked = retry_after(headers)
        if asked is not None and 0 < asked <= MAX_RETRY_AFTER_S:
            return asked
    elif not isinstance(exc, anthropic.APIConnectionError):  # APITimeoutError is one too
        return None
    return backoff_delay(retries_so_far)


def backoff_delay(retries_so_far: int) -> float:
    """0.5 s doubling with each retry up to 8 s, shortened by up to a quarter at random."""
    backoff = min(INITIAL_DELAY_S * 2.0 ** min(retries_so_far, 32), MAX_DELAY_S)
    return backoff * (1 - 0.25 * _jitter.random())


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """Whether a response with ``status`` and ``headers`` (lower-case names) may be retried."""
    explicit = headers.get("x-should-retry")
    if explicit in ("true", "false"):
        return explicit == "true"
    return status in (408, 409, 429) or status >= 500


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for, in seconds; None if it asks for none readable."""
    try:
        return float(headers["retry-after-ms"]) / 1000
    except (KeyError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    date = email.utils.parsedate_tz(value)
    return None if date is None else email.utils.mktime_tz(date) - time.time()
