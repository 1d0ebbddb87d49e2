"""Claude through the official `anthropic` SDK's streaming API (``client.messages.stream``).

The SDK call runs on a short-lived pump thread that feeds a queue; the caller's iterator reads
the queue and watches the cancel event, so a cancel takes effect within a tenth of a second
whatever the SDK is doing (waiting for the first byte, reading, or sleeping before a retry).
On cancel the pump's socket is shut down, which ends the HTTP stream at once.

The SDK retries ``429`` and ``5xx``/``529`` before the stream starts (``max_retries``,
honouring ``retry-after``); a failure after that becomes a `ModelError`.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import anthropic

from agent_actors.errors import ModelError
from agent_actors.models._anthropic_errors import model_error
from agent_actors.models.base import (
    CANCELLED,
    ModelEvent,
    ModelResult,
    TextDelta,
    Turn,
    normalize_turns,
)

log = logging.getLogger("agent_actors.models")

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5-5"
"""Claude Sonnet 5: the current model with the best balance of speed and intelligence."""
DEFAULT_BASE_URL = "https://api.anthropic.com"
_CANCEL_CHECK_S = 0.1


class AnthropicModel:
    """Answers with Claude via the Messages API, streaming text deltas.

    ``base_url`` may point at any Anthropic-compatible endpoint. ``max_retries`` is the SDK's
    retry budget for ``429``/``529``/``5xx``/connection errors before the stream starts;
    ``timeout`` bounds each network read.
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
    ) -> None:
        self.model = model
        self.base_url = base_url or DEFAULT_BASE_URL
        self.max_tokens = max_tokens
        self.system = system
        self.client = anthropic.Anthropic(
            api_key=api_key, base_url=self.base_url, max_retries=max_retries, timeout=timeout,
        )

    @property
    def name(self) -> str:
        """``"anthropic:<model id>"``."""
        return f"anthropic:{self.model}"

    def stream(
        self, turns: Sequence[Turn | tuple[str, str]], *, cancel: threading.Event | None = None,
    ) -> Iterator[ModelEvent]:
        """Stream Claude's answer to ``turns``; see `agent_actors.models.base`."""
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": t.role, "content": t.text} for t in normalize_turns(turns)],
        }
        if self.system:
            request["system"] = self.system
        pump = _Pump(self, request)
        return _follow(pump, cancel or threading.Event(), self.model)


def _follow(pump: _Pump, cancel: threading.Event, model: str) -> Iterator[ModelEvent]:
    """Yield the pump's events until its result, an error, or the cancel event."""
    pump.start()
    try:
        while True:
            try:
                item = pump.events.get(timeout=_CANCEL_CHECK_S)
            except queue.Empty:
                item = None
            if cancel.is_set():
                pump.cancel()
                yield ModelResult(CANCELLED, pump.input_tokens, pump.output_tokens, model)
                return
            if item is None:
                continue
            if isinstance(item, ModelError):
                raise item
            yield item
            if isinstance(item, ModelResult):
                return
    finally:
        pump.cancel()  # a no-op after the result; stops the HTTP stream if abandoned early


class _Pump(threading.Thread):
    """Runs one SDK stream and puts `TextDelta`, then a `ModelResult` or `ModelError`."""

    def __init__(self, owner: AnthropicModel, request: dict[str, Any]) -> None:
        super().__init__(name=f"anthropic-stream-{owner.model}", daemon=True)
        self.owner = owner
        self.request = request
        self.events: queue.Queue[TextDelta | ModelResult | ModelError] = queue.Queue()
        self.input_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._response: Any = None

    def cancel(self) -> None:
        """Stop: shut the HTTP stream's socket so a blocked read returns at once."""
        with self._lock:  # held so the pump cannot hand the connection back meanwhile
            self._cancelled = True
            if self._response is not None:
                _shutdown_socket(self._response)

    def run(self) -> None:
        try:
            finished = self._stream()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ModelError
            if not self._cancelled:
                log.warning("model %s failed: %r", self.owner.model, exc)
                self.events.put(model_error(exc, model=self.owner.model,
                                            base_url=self.owner.base_url))
            return
        if self._cancelled:
            return
        if not finished:
            self.events.put(ModelError("The AI model's answer was cut off before it finished.",
                                       code="incomplete", retryable=True))
            return
        self.events.put(ModelResult(self.stop_reason or "end_turn", self.input_tokens,
                                    self.output_tokens, self.owner.model))

    def _stream(self) -> bool:
        """Read the SDK's events into the queue; True once ``message_stop`` arrived."""
        with self.owner.client.messages.stream(**self.request) as stream:
            with self._lock:
                if self._cancelled:
                    return False
                self._response = stream.response
            try:
                return self._read_events(stream)
            finally:
                # Leaving the ``with`` closes the response or hands its connection back to the
                # SDK's pool, where another stream may reuse it: no longer ours to shut down.
                with self._lock:
                    self._response = None

    def _read_events(self, stream: Any) -> bool:
        finished = False
        for event in stream:  # read to the end, so the connection can be reused
            if self._cancelled:
                return False
            if event.type == "message_start":
                self.input_tokens = event.message.usage.input_tokens
                self.output_tokens = event.message.usage.output_tokens
            elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                self.events.put(TextDelta(event.delta.text))
            elif event.type == "message_delta":
                self.stop_reason = event.delta.stop_reason or self.stop_reason
                self.output_tokens = event.usage.output_tokens
                self.input_tokens = event.usage.input_tokens or self.input_tokens
            elif event.type == "message_stop":
                finished = True
        return finished


def _shutdown_socket(response: Any) -> None:
    """Shut down the socket under an httpx response (httpcore's ``network_stream``)."""
    try:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass  # already closed, or a transport without sockets
