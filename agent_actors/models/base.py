"""The model interface: a conversation in, a stream of text deltas out, then one result.

``Model.stream(turns, cancel=...)`` returns an iterator of `ModelEvent`: zero or more
`ModelWait`s (the model refused or failed before its answer began, and is asked again after a
wait), then zero or more `TextDelta`s, then exactly one `ModelResult`. Failures raise
`ModelError` (with a message fit for the chat) instead. Setting ``cancel`` (a
`threading.Event`, from any thread) ends the iteration promptly with a result whose
``stop_reason`` is ``"cancelled"``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

USER = "user"
ASSISTANT = "assistant"
CANCELLED = "cancelled"
"""The ``stop_reason`` of an answer stopped by its cancel event."""


class Turn(NamedTuple):
    """One turn of the conversation: ``role`` is ``"user"`` or ``"assistant"``.

    A plain ``(role, text)`` tuple works wherever a `Turn` is expected.
    """

    role: str
    text: str


@dataclass(frozen=True)
class TextDelta:
    """The next piece of the answer's text."""

    text: str


@dataclass(frozen=True)
class ModelWait:
    """The model could not begin its answer and is asked again after ``delay_s``: retry
    ``retry`` of at most ``retries``. ``reason`` says why in a sentence fit to show (the
    error's ``code`` beside it); it comes only before the answer's first `TextDelta`."""

    reason: str
    code: str
    delay_s: float
    retry: int
    retries: int


@dataclass(frozen=True)
class ModelResult:
    """How the answer ended: the model's stop reason (or ``"cancelled"``) and token usage."""

    stop_reason: str
    input_tokens: int
    output_tokens: int
    model: str

    @property
    def cancelled(self) -> bool:
        """True if the answer was stopped by its cancel event."""
        return self.stop_reason == CANCELLED


ModelEvent = ModelWait | TextDelta | ModelResult


@runtime_checkable
class Model(Protocol):
    """Anything that can answer a conversation as a stream (see the module docstring)."""

    @property
    def name(self) -> str:
        """A short description for logs, e.g. ``"anthropic:claude-sonnet-5-5"``."""
        ...

    @property
    def model_id(self) -> str:
        """The model's own id, as answers name it (``done``'s ``model``): what an answer
        that ends without asking the model (stopped, withdrawn, put back) says too."""
        ...

    def stream(
        self, turns: Sequence[Turn | tuple[str, str]], *, cancel: threading.Event | None = None,
    ) -> Iterator[ModelEvent]:
        """Answer the conversation ``turns`` (oldest first, ending with the user's prompt)."""
        ...


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def normalize_turns(turns: Iterable[Turn | tuple[str, str]]) -> list[Turn]:
    """The conversation as the Messages API accepts it: alternating roles, starting and ending
    with the user.

    Empty turns are dropped, consecutive turns of one role are joined (for example a prompt
    whose answer failed, followed by the next prompt), and leading assistant turns are dropped.
    A lone surrogate (JSON's "\\ud800" escape, valid in a stream, is one) becomes U+FFFD:
    the request is UTF-8, which has no such character, and could not be sent at all.
    Raises ValueError for an unknown role or a conversation that does not end with the user.
    """
    merged: list[Turn] = []
    for role, text in turns:
        if role not in (USER, ASSISTANT):
            raise ValueError(f"unknown role {role!r} (expected 'user' or 'assistant')")
        text = _LONE_SURROGATE.sub("\ufffd", text)
        if not text.strip():
            continue
        if not merged and role == ASSISTANT:
            continue
        if merged and merged[-1].role == role:
            merged[-1] = Turn(role, f"{merged[-1].text}\n\n{text}")
        else:
            merged.append(Turn(role, text))
    if not merged or merged[-1].role != USER:
        raise ValueError("the conversation must end with a non-empty user turn")
    return merged


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters per token) for offline models and logs."""
    return estimate_tokens_of(len(text))


def estimate_tokens_of(chars: int) -> int:
    """`estimate_tokens` for a text of `chars` characters."""
    return max(1, round(chars / 4)) if chars else 0
