"""Claude through the official `anthropic` SDK, streaming (``messages.with_streaming_response``).

The SDK makes the request (connection, headers and key) and raises its typed exceptions for an
error status. A request that failed before its answer began is retried here, with the SDK's
own policy (`_retry_policy`), because the SDK's wait between attempts cannot be cut short by a
cancel. The answer's Server-Sent Events are decoded here too, as plain JSON, instead of into
the SDK's typed event objects: building those cost a third of the agents' CPU at 100
conversations (see the README's performance section), and an answer needs only text deltas,
usage and the stop reason. Only the documented event names are acted on; unknown ones are
skipped, as the API asks of clients.

The request is opened on a short-lived thread, so that a cancel takes effect within a tenth of
a second even while the answer has not begun; the events are then read on the caller's own
thread, so a token costs one wake-up, not a hand-over between threads. While an answer
streams, the model's `_CancelWatch` shuts its socket down once its cancel event is set, which
ends a blocked read at once.

A failure after the stream started becomes a `ModelError`.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anthropic

from agent_actors._sse import SseEvent, parse_events
from agent_actors.errors import ModelError
from agent_actors.models._anthropic_errors import (
    error_type,
    model_error,
    stream_error,
    wait_reason,
)
from agent_actors.models._retry_policy import backoff_delay, retry_delay
from agent_actors.models.base import (
    CANCELLED,
    ModelEvent,
    ModelResult,
    ModelWait,
    TextDelta,
    Turn,
    estimate_tokens_of,
    normalize_turns,
)

log = logging.getLogger("agent_actors.models")

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5-5"
"""Claude Sonnet 5: the current model with the best balance of speed and intelligence."""
DEFAULT_BASE_URL = "https://api.anthropic.com"
_CANCEL_CHECK_S = 0.1
_PROBLEM_CHECK_TIMEOUT_S = 10.0
_INCOMPLETE = "The AI model's answer was cut off before it finished."
_UNREADABLE = "The AI model sent an answer this app could not read."
_NOT_THE_API = ("No Anthropic Messages API answers at this address (it did not answer with a"
                " stream of events). Check ANTHROPIC_BASE_URL.")


class AnthropicModel:
    """Answers with Claude via the Messages API, streaming text deltas.

    ``base_url`` may point at any Anthropic-compatible endpoint. ``max_retries`` is the retry
    budget for ``429``/``529``/``5xx``/connection errors before the stream starts;
    ``timeout`` bounds each network read. Safe to share between threads: the SDK client's
    connection pool is, and each `stream` call keeps its own state.
    """

    def __init__(
        self,
        *,
        api_key: str,
        model: str = DEFAULT_ANTHROPIC_MODEL,
        base_url: str | None = None,
        max_tokens: int = 1024,
        system: str | None = None,
        max_retries: int = 3,
        timeout: float = 60.0,
        model_setting: str = "ANTHROPIC_MODEL",
    ) -> None:
        self.model = model
        self.model_setting = model_setting  # where `model` was given, for error advice
        self.base_url = base_url or DEFAULT_BASE_URL
        self.max_tokens = max_tokens
        self.system = system
        self.max_retries = max_retries
        self.client = anthropic.Anthropic(
            api_key=api_key, base_url=self.base_url, max_retries=0, timeout=timeout,
        )
        self._watch = _CancelWatch()

    @property
    def name(self) -> str:
        """``"anthropic:<model id>"``."""
        return f"anthropic:{self.model}"

    @property
    def model_id(self) -> str:
        return self.model

    def problem(self) -> str | None:
        """What would fail every answer, if a look at the model's own entry in the API shows
        it: no connection, the key rejected or not allowed, or no such model. None when it
        looks fine or cannot tell (an Anthropic-compatible endpoint need not serve the
        models API)."""
        try:
            self.client.models.retrieve(self.model, timeout=_PROBLEM_CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - classified below, else inconclusive
            error = self._model_error(exc)
            unknown_model = (isinstance(exc, anthropic.APIStatusError)
                             and error_type(exc) == "not_found_error")
            # A connection that failed, not any other surprise (an answer it could not read
            # is classified like a stream that broke off, and a slow look tells nothing).
            refused = error.code in ("authentication", "permission") or unknown_model
            unreachable = (isinstance(exc, anthropic.APIConnectionError)
                           and not isinstance(exc, anthropic.APITimeoutError))
            if refused or unreachable:
                return error.message
            log.debug("model %s: looking it up was inconclusive: %r", self.model, exc)
        return None

    def stream(
        self, turns: Sequence[Turn | tuple[str, str]], *, cancel: threading.Event | None = None,
    ) -> Iterator[ModelEvent]:
        """Stream Claude's answer to ``turns``; see `agent_actors.models.base`."""
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": t.role, "content": t.text} for t in normalize_turns(turns)],
            "stream": True,
        }
        if self.system:
            request["system"] = self.system
        return self._answer(request, cancel or threading.Event())

    def _answer(self, request: dict[str, Any], cancel: threading.Event) -> Iterator[ModelEvent]:
        """The answer; asked again (as `_retry_policy` backs off, within ``max_retries``) when
        its stream fails before the first words in a way that may pass: an ``overloaded``
        error event, the stream cut off. The API sends such an error with status 200, after
        the request was accepted, where the SDK's retries no longer apply."""
        retries = _Retries(self.max_retries)  # one budget for these and `_Opening`'s
        while True:
            try:
                yield from self._attempt(request, cancel, retries)
                return
            except _FailedBeforeFirstWords as failed:
                error = failed.error
                if not error.retryable or retries.spent:
                    raise error from failed.__cause__
                delay = backoff_delay(retries.made)
                retries.made += 1
                log.info("model %s: the answer failed before its first words (%s); asking again"
                         " in %.1f s (%d of %d)", self.model, error.code, delay, retries.made,
                         retries.allowed)
                yield ModelWait(wait_reason(error), error.code, delay, retries.made,
                                retries.allowed)
                if cancel.wait(delay):
                    yield ModelResult(CANCELLED, 0, 0, self.model)
                    return

    def _attempt(self, request: dict[str, Any], cancel: threading.Event,
                 retries: _Retries) -> Iterator[ModelEvent]:
        usage = _Usage()
        opening = _Opening(self.client, request, self.model, retries, cancel,
                           describe=self._model_error)
        handed_over = False
        try:
            response = opening.wait()
            while isinstance(response, ModelWait):
                yield response  # the caller may stop here (closing this generator)
                response = opening.wait()
            handed_over = True
        finally:
            if not handed_over:
                opening.abandon()  # a response that comes after all is closed
        if response is None:
            yield ModelResult(CANCELLED, 0, 0, self.model)
            return
        if isinstance(response, BaseException):
            raise self._error(response) from response
        content_type = response.headers.get("content-type", "")
        if not content_type.lower().startswith("text/event-stream"):
            response.close()
            log.warning("model %s: %s answered %s, not an event stream", self.model,
                        self.base_url, content_type or "with no content type")
            raise ModelError(_NOT_THE_API, code="not_found")
        watched = self._watch.add(cancel, response.http_response)
        finished = False
        spoke = False  # a word of the answer was given out: it cannot be asked again
        streamed_chars = 0
        try:
            for event in parse_events(response.iter_bytes()):
                if cancel.is_set():
                    break
                name = event.event
                if name == "content_block_delta":
                    delta = _object(_data(event).get("delta"))
                    if delta.get("type") == "text_delta":
                        text = delta.get("text")
                        if not isinstance(text, str):
                            raise ModelError(_UNREADABLE, code="bad_response", retryable=True)
                        spoke = True
                        streamed_chars += len(text)
                        yield TextDelta(text)
                elif name == "message_stop":
                    # Reading on hands the connection back to the SDK's pool: unwatch it first.
                    self._watch.remove(watched)
                    finished = True
                elif name == "error":
                    raise stream_error(_data(event), model=self.model,
                                       model_setting=self.model_setting)
                elif name in ("message_start", "message_delta"):
                    usage.update(name, _data(event))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ModelError
            if finished or usage.stop_reason is not None:  # the answer is whole
                log.debug("model %s: the stream failed after its end (%s): %r", self.model,
                          "message_stop" if finished else "message_delta", exc)
            elif not cancel.is_set():
                error = self._error(exc)
                raise (error if spoke else _FailedBeforeFirstWords(error)) from exc
        finally:
            self._watch.remove(watched)
            response.close()
        # The stop reason (`message_delta`) ends the answer's text; `message_stop` only follows.
        ended = finished or usage.stop_reason is not None
        if cancel.is_set() and not ended:
            # The count so far comes only with the stop reason: `message_start`'s is a
            # placeholder (1). The text received is estimated instead.
            output_tokens = max(usage.output_tokens, estimate_tokens_of(streamed_chars))
            yield ModelResult(CANCELLED, usage.input_tokens, output_tokens, self.model)
        elif not ended:
            cut_off = ModelError(_INCOMPLETE, code="incomplete", retryable=True)
            if spoke:
                raise cut_off
            raise _FailedBeforeFirstWords(cut_off)
        else:
            yield ModelResult(usage.stop_reason or "end_turn", usage.input_tokens,
                              usage.output_tokens, self.model)

    def _model_error(self, exc: BaseException) -> ModelError:
        return model_error(exc, model=self.model, base_url=self.base_url,
                           model_setting=self.model_setting)

    def _error(self, exc: BaseException) -> ModelError:
        """The `ModelError` to raise for `exc` (logged)."""
        log.warning("model %s failed: %r", self.model, exc)
        return self._model_error(exc)


class _FailedBeforeFirstWords(Exception):
    """An answer's stream failed before any of its text was given out (see `_answer`)."""

    def __init__(self, error: ModelError) -> None:
        super().__init__(error.message)
        self.error = error


def _data(event: SseEvent) -> dict[str, Any]:
    """An event's JSON object; anything else is a `ModelError` (the answer is unreadable)."""
    try:
        data = json.loads(event.data)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ModelError(_UNREADABLE, code="bad_response", retryable=True)
    return data


class _Usage:
    """Token counts and stop reason, from ``message_start`` and ``message_delta``."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None

    def update(self, name: str, data: dict[str, Any]) -> None:
        if name == "message_start":
            usage = _object(_object(data.get("message")).get("usage"))
            self.input_tokens = _count(usage.get("input_tokens"), self.input_tokens)
            self.output_tokens = _count(usage.get("output_tokens"), self.output_tokens)
        else:
            stop_reason = _object(data.get("delta")).get("stop_reason")
            self.stop_reason = stop_reason if isinstance(stop_reason, str) else self.stop_reason
            usage = _object(data.get("usage"))
            self.output_tokens = _count(usage.get("output_tokens"), self.output_tokens)
            self.input_tokens = _count(usage.get("input_tokens"), self.input_tokens)


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class _Retries:
    """An answer's retry budget, shared by the requests sent again (`_Opening`) and the
    answers asked again (`AnthropicModel._answer`): each retry is numbered once."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.made = 0

    @property
    def spent(self) -> bool:
        return self.made >= self.allowed


class _Opening(threading.Thread):
    """Opens one streaming request on its own thread, so the caller can give up waiting.

    Retries as `_retry_policy` says, within the answer's budget, telling the caller of each
    wait (`describe` turns the failure into the `ModelError` it says why with); a cancel ends
    the wait between attempts, and no further attempt is made.
    """

    def __init__(self, client: anthropic.Anthropic, request: dict[str, Any], model: str,
                 retries: _Retries, cancel: threading.Event, *,
                 describe: Callable[[BaseException], ModelError]) -> None:
        super().__init__(name=f"anthropic-open-{model}", daemon=True)
        self.client = client
        self.request = request
        self.retries = retries
        self.cancel = cancel
        self._describe = describe
        self._waits: collections.deque[ModelWait] = collections.deque()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._result: Any = None
        self.start()

    def wait(self) -> Any:
        """The next `ModelWait` while a failed request waits to be sent again (each one is
        told, even one over by the time it is asked for); else the SDK's streaming response
        or the exception that prevented it; None if cancelled."""
        while not self._done.wait(_CANCEL_CHECK_S):
            if self.cancel.is_set():
                self.abandon()
                return None
            if self._waits:
                return self._waits.popleft()
        if self.cancel.is_set():
            self._close_result()
            return None
        if self._waits:
            return self._waits.popleft()
        return self._result

    def abandon(self) -> None:
        """The caller stops waiting: the response, now or when it comes, is closed."""
        with self._lock:
            self._abandoned = True
            if not self._done.is_set():
                return  # `run` closes it
        self._close_result()

    def run(self) -> None:
        result = self._attempt()
        retries = self.retries
        while isinstance(result, Exception) and not retries.spent:
            delay = retry_delay(result, retries.made)
            if delay is None:
                break
            retries.made += 1
            log.info("model request failed (%r); retry %d of %d in %.1f s", result,
                     retries.made, retries.allowed, delay)
            error = self._describe(result)
            self._waits.append(ModelWait(wait_reason(error), error.code, delay, retries.made,
                                         retries.allowed))
            if self.cancel.wait(delay):
                break
            result = self._attempt()
        with self._lock:
            self._result = result
            self._done.set()
            abandoned = self._abandoned
        if abandoned:
            self._close_result()

    def _attempt(self) -> Any:
        try:
            # Entered here, closed by the caller (`APIResponse.close`): the request is made now.
            return self.client.messages.with_streaming_response.create(**self.request).__enter__()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            return exc

    def _close_result(self) -> None:
        if not isinstance(self._result, BaseException) and self._result is not None:
            self._result.close()


class _CancelWatch:
    """One thread per model: shuts down the socket of each streaming answer once cancelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[threading.Event, Any]] = {}
        self._next_key = 0
        self._thread: threading.Thread | None = None

    def add(self, cancel: threading.Event, response: Any) -> int:
        with self._lock:
            key = self._next_key
            self._next_key += 1
            self._watched[key] = (cancel, response)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="anthropic-cancel-watch",
                                                daemon=True)
                self._thread.start()
            return key

    def remove(self, key: int) -> None:
        """Stop watching; after this returns the socket is never touched."""
        with self._lock:
            self._watched.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(_CANCEL_CHECK_S)
            with self._lock:  # held while shutting down, so `remove` waits for it
                for key, (cancel, response) in list(self._watched.items()):
                    if cancel.is_set():
                        del self._watched[key]
                        _shutdown_socket(response)
                if not self._watched:
                    self._thread = None  # the next `add` starts another
                    return


def _shutdown_socket(response: Any) -> None:
    """Shut down the socket under an httpx response (httpcore's ``network_stream``)."""
    try:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass  # already closed, or a transport without sockets
