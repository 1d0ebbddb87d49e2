"""HTTP plumbing of the streams client: retries with backoff, and errors mapped to exceptions.

One place decides which failures are worth retrying (connection errors, ``5xx``, ``429``)
and how long to wait (exponential backoff with jitter, ``Retry-After`` honoured, bounded by
a total deadline), and one place turns an error response into the matching `StreamsError`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from agent_actors import errors
from agent_actors._wire import WirePool, WireResponse

log = logging.getLogger("agent_actors.streams_client")

_CONNECT_ERRORS = (requests.ConnectionError, requests.Timeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How a request is retried after a connection error, a ``5xx`` or a ``429``.

    The n-th retry waits ``min(max_delay, initial_delay * multiplier**n)``, reduced by up to
    ``jitter`` (a fraction) at random so that many clients do not retry in lockstep; a
    ``Retry-After`` header replaces the computed delay. No retry starts after ``deadline``
    seconds from the first attempt. ``log_retries`` False leaves each retry out of the log,
    for a caller that says itself what failed.
    """

    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    deadline: float = 30.0
    log_retries: bool = True

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:  # but "0" or a date gone by must not retry in a tight loop
            return max(self.initial_delay, retry_after)
        base = min(self.max_delay, self.initial_delay * self.multiplier ** min(attempt, 60))
        return base * (1.0 - self.jitter * random.random())


NO_RETRY = RetryPolicy(deadline=0.0)
"""A policy that never retries (the first failure is final)."""


class Stopped(Exception):
    """Internal: a stop event was set while waiting to retry."""


class Transport:
    """Sends requests to one Durable Streams server with retries and error mapping."""

    def __init__(
        self,
        session: requests.Session,
        *,
        auth_token: str | None,
        timeout: float,
        retry: RetryPolicy,
        wire: WirePool | None = None,
    ) -> None:
        self.session = session
        self.wire = wire
        self.auth_token = auth_token
        self.timeout = timeout
        self.retry = retry

    def with_retry(self, retry: RetryPolicy) -> Transport:
        """The same connections and credentials, retrying per ``retry``."""
        return Transport(self.session, auth_token=self.auth_token, timeout=self.timeout,
                         retry=retry, wire=self.wire)

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()
        if self.wire is not None:
            self.wire.close()

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Request headers: the bearer token (if any) plus ``extra``."""
        headers = {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else {}
        headers.update(extra or {})
        return headers

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        idempotent: bool = True,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        stop_event: threading.Event | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response | WireResponse:
        """Send one request, retrying transient failures; return the final response.

        Ordinary requests go through the lean `WirePool` when there is one; ``session``
        (a tail's interruptible session) sends this one through `requests` instead.

        Connection errors and ``5xx`` are retried only when ``idempotent`` (a repeat cannot
        do harm); ``429`` is always retried, since the server did not process the request.
        Error statuses that are not retried are returned, not raised: see `raise_for_status`.
        Raises `StreamsUnavailable` when the deadline passes, `Stopped` if ``stop_event`` is
        set while waiting.
        """
        policy = retry or self.retry
        started = time.monotonic()
        attempt = 0
        while True:
            failure: str
            retry_after: float | None = None
            status: int | None = None
            cause: BaseException | None = None  # kept, so a caller can tell a read timeout
            try:
                response = self._send(method, url, headers, params, data, idempotent,
                                      timeout if timeout is not None else self.timeout, session)
            except _CONNECT_ERRORS as exc:
                if not idempotent and not _surely_unsent(exc):
                    raise errors.StreamsUnavailable(
                        f"connection failed, request outcome unknown: {exc}",
                        method=method, url=url,
                    ) from exc
                failure, cause = connection_failure(exc), exc
            else:
                if not _retryable(response.status_code, idempotent):
                    return response
                status = response.status_code
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                said = _error_code_and_message(response.text)[1]
                failure = f"HTTP {status}: {said}" if said else f"HTTP {status}"
                response.close()
            wait = policy.delay(attempt, retry_after)
            if time.monotonic() - started + wait > policy.deadline:
                raise errors.StreamsUnavailable(
                    f"giving up after {attempt + 1} attempt(s): {failure}", reason=failure,
                    status=status, method=method, url=url,
                ) from cause
            if policy.log_retries:
                log.info("retrying %s %s in %.2fs after %s", method, url, wait, failure)
            if _wait(stop_event, wait):
                raise Stopped()
            attempt += 1


    def _send(
        self, method: str, url: str, headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None, data: bytes | None, idempotent: bool,
        timeout: float, session: requests.Session | None,
    ) -> requests.Response | WireResponse:
        if session is None and self.wire is not None and self.wire.serves(url):
            return self.wire.request(method, url, headers=self.headers(headers),
                                     params=dict(params) if params else None, data=data,
                                     timeout=timeout, idempotent=idempotent)
        return (session or self.session).request(
            method, url, headers=self.headers(headers), params=params, data=data,
            timeout=timeout, allow_redirects=False,
        )


def raise_for_status(
    response: requests.Response | WireResponse, *, resource: str = "stream",
) -> None:
    """Raise the `StreamsError` matching an error response; do nothing for ``2xx``.

    A ``3xx`` is an error too: redirects are not followed (a request's method and body
    would not survive every one), and taken for success an append would count as stored.
    ``resource`` (``"stream"`` or ``"subscription"``) picks the 404 subclass.
    """
    status = response.status_code
    if status < 300:
        return
    if status < 400:
        where = response.headers.get("Location") or "elsewhere"
        request = response.request
        raise errors.StreamsError(
            f"HTTP {status}: redirected to {where}; give the URL it leads to (redirects are"
            f" not followed)", status=status, method=request.method or "",
            url=request.url or "")
    body = response.text
    code, detail = _error_code_and_message(body)
    request = response.request
    common: dict[str, Any] = {
        "status": status, "code": code, "body": body,
        "method": request.method or "", "url": request.url or "",
    }
    message = f"HTTP {status}: {detail or response.reason}"
    raise _error_for(status, code, message, response.headers, resource, common)


def _error_for(
    status: int, code: str | None, message: str, headers: Mapping[str, str],
    resource: str, common: dict[str, Any],
) -> errors.StreamsError:
    if status == 400:
        return errors.BadRequest(message, **common)
    if status == 401:
        return errors.Unauthorized(message, **common)
    if status == 403:
        epoch = _int_header(headers, "Producer-Epoch")
        if epoch is None:
            return errors.Unauthorized(message, **common)
        fenced = errors.ProducerFenced(message, **common)
        fenced.server_epoch = epoch
        return fenced
    if status == 404:
        if resource == "subscription":
            return errors.SubscriptionNotFound(message, **common)
        return errors.StreamNotFound(message, **common)
    if status == 410:
        return errors.StreamGone(message, **common)
    if status == 409:
        return _conflict(code, message, headers, common)
    if status >= 500 or status == 429:
        return errors.StreamsUnavailable(message, **common)
    return errors.StreamsError(message, **common)


def _conflict(
    code: str | None, message: str, headers: Mapping[str, str], common: dict[str, Any],
) -> errors.Conflict:
    if headers.get("Stream-Closed", "").lower() == "true":
        closed = errors.StreamClosed(message, **common)
        closed.next_offset = headers.get("Stream-Next-Offset")
        return closed
    if "Producer-Expected-Seq" in headers:
        gap = errors.SequenceGap(message, **common)
        gap.expected_seq = _int_header(headers, "Producer-Expected-Seq")
        gap.received_seq = _int_header(headers, "Producer-Received-Seq")
        return gap
    if code == "CONTENT_TYPE_MISMATCH":
        return errors.ContentTypeMismatch(message, **common)
    if code == "ALREADY_CLAIMED":
        claimed = errors.AlreadyClaimed(message, **common)
        detail = _error_object(common["body"])
        holder, generation = detail.get("current_holder"), detail.get("generation")
        claimed.current_holder = holder if isinstance(holder, str) else None
        claimed.generation = generation if isinstance(generation, int) else None
        return claimed
    if code == "FENCED":
        return errors.LeaseFenced(message, **common)
    if code == "NO_PENDING_WORK":
        return errors.NoPendingWork(message, **common)
    return errors.Conflict(message, **common)


def _error_object(body: str) -> dict[str, Any]:
    """The ``error`` object of a JSON error body, or {}."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        if isinstance(inner, dict):
            return inner
        return parsed
    return {}


def _error_code_and_message(body: str) -> tuple[str | None, str]:
    detail = _error_object(body)
    code, message = detail.get("code"), detail.get("message")
    if not detail:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            message = parsed["error"]
    if isinstance(message, str):
        text = message
    elif body.lstrip().startswith("<"):  # a web page: some other server answers at this URL
        text = "an HTML page, not a Durable Streams error"
    else:
        text = " ".join(body.split())[:300]  # one log line
    return (code if isinstance(code, str) else None), text


def _retryable(status: int, idempotent: bool) -> bool:
    return status == 429 or (idempotent and status >= 500)


_OS_ERROR = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def connection_failure(exc: BaseException) -> str:
    """What a failed connection met, in a few words ("Connection refused", "timed out"):
    the operating system's reason, found through the layers of `requests` and urllib3."""
    if "Connection broken" in str(exc):  # urllib3: the server went in the middle of a body
        return "the connection broke off in the middle of the response"
    if isinstance(exc, requests.ConnectTimeout):
        return "timed out connecting"
    if isinstance(exc, requests.Timeout):
        return "timed out waiting for the answer"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__
    reason = _OS_ERROR.search(str(exc))
    return reason[1].strip() if reason else f"{type(exc).__name__}: {str(exc)[:200]}"


def _surely_unsent(exc: BaseException) -> bool:
    """True if the request certainly never reached the server (the connection failed)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    text = repr(exc)
    return "NewConnectionError" in text or "Connection refused" in text


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _wait(stop_event: threading.Event | None, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``stop_event`` is set; return True if it was set."""
    if stop_event is None:
        time.sleep(seconds)
        return False
    return stop_event.wait(seconds)
