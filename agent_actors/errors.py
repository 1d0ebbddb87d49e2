"""The exceptions of `agent_actors`, each carrying what a caller needs to decide what to do.

Two families:

- `StreamsError` and its subclasses: a Durable Streams server refused a request, or could not
  be reached. Each carries the HTTP `status` (None when no response arrived), the server's
  machine-readable `code` when it sent one, and the raw error `body`.
- `ModelError`: the language model could not produce (or finish) an answer. Its `message` is
  written for the person reading the chat; details go to the log, never to the user.
"""

from __future__ import annotations

from typing import Any


class AgentActorsError(Exception):
    """Base class of every error raised by this package."""


class ConfigurationError(AgentActorsError):
    """A setting is missing or invalid (a bad URL, a negative timeout, ...)."""


# -- Durable Streams client errors ------------------------------------------------------------


class StreamsError(AgentActorsError):
    """A Durable Streams request failed.

    ``status`` is the HTTP status (None if no response arrived), ``code`` the server's error code
    when its body was JSON of the form ``{"error": {"code": ...}}``, ``body`` the raw body text.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        body: str = "",
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body
        self.method = method
        self.url = url

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        return f"{self.message}{where}"


class StreamsUnavailable(StreamsError):
    """The server could not be reached, or kept failing (5xx, 429) until the retry deadline.

    ``reason`` is the last failure alone ("Connection refused", "HTTP 503 ..."), for a caller
    that says in its own words that it gave up."""

    def __init__(self, message: str, *, reason: str = "", **details: Any) -> None:
        super().__init__(message, **details)
        self.reason = reason or message


class BadRequest(StreamsError):
    """400: the server says the request is malformed (headers, body, offset, ...)."""


class Unauthorized(StreamsError):
    """401 (or a 403 that is not producer fencing): missing or rejected credentials."""


class NotFound(StreamsError):
    """404: the addressed resource does not exist."""


class StreamNotFound(NotFound):
    """404 on a stream operation: the stream does not exist (or was deleted)."""


class SubscriptionNotFound(NotFound):
    """404 on a subscription operation: no subscription with that id."""


class StreamGone(StreamsError):
    """410: the stream was soft-deleted, or the offset is before the retained data."""


class Conflict(StreamsError):
    """409: the request conflicts with the resource's current state."""


class StreamClosed(Conflict):
    """409 with ``Stream-Closed: true``: the stream is closed and accepts no more appends.

    ``next_offset`` is the stream's final offset when the server reported it.
    """

    next_offset: str | None = None


class ContentTypeMismatch(Conflict):
    """The stream holds another content type than the request's: an append refused with 409
    ``CONTENT_TYPE_MISMATCH``, or a read of a JSON stream that answered with another type."""


class SequenceGap(Conflict):
    """409 for an idempotent producer: the server expected another ``Producer-Seq``.

    A gap means the producer's bookkeeping and the server's disagree (for example, the server
    lost producer state); the writer should stop rather than guess.
    """

    expected_seq: int | None = None
    received_seq: int | None = None


class ProducerFenced(StreamsError):
    """403 for an idempotent producer: a newer epoch has claimed this producer id.

    ``server_epoch`` is the epoch the server now holds. For an agent this means it was replaced
    (restart, another supervisor) and must stop writing.
    """

    server_epoch: int | None = None


class AlreadyClaimed(Conflict):
    """409 ``ALREADY_CLAIMED``: another worker holds the subscription's lease."""

    current_holder: str | None = None
    generation: int | None = None


class NoPendingWork(Conflict):
    """409 ``NO_PENDING_WORK``: a claim found nothing to do (another worker already did it)."""


class LeaseFenced(Conflict):
    """409 ``FENCED``: the lease's wake id or generation is stale; the lease is lost."""


# -- model errors -------------------------------------------------------------------------------


class ModelError(AgentActorsError):
    """The model failed to produce an answer.

    ``message`` is short, readable and safe to show in the chat. ``code`` is stable and
    machine-readable (``rate_limited``, ``overloaded``, ``authentication``, ``connection``,
    ``timeout``, ``bad_request``, ``not_found``, ``api_error``, ``incomplete``, and
    ``internal`` for an adapter that raised something else, a bug);
    ``retryable`` says whether trying again later may help; ``status`` is the HTTP status when
    there was one.
    """

    def __init__(
        self, message: str, *, code: str, retryable: bool = False, status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.status = status
