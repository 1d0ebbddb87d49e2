"""What a conversation's streams say happened: its prompts, and each prompt's answer so far.

The agent rebuilds this on every start from the streams themselves (after fencing off any
older agent), which is what makes answers exactly-once: a prompt with a `done` or `error` is
never answered again, and a prompt with a partial answer is restarted with a `restart` marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from agent_actors import schema
from agent_actors.models.base import ASSISTANT, USER, Turn
from agent_actors.schema import Cancel, Prompt, Unanswerable, parse_prompt_message


class StoppedAnswer(NamedTuple):
    """An attempt its user stopped, since restarted, and the text it had then."""

    attempt: int
    text: str


@dataclass
class AnswerState:
    """The latest attempt at one prompt's answer."""

    attempt: int = 0
    parts: list[str] = field(default_factory=list)
    outcome: str | None = None  # "done" or "error" once finished
    stop_reason: str | None = None
    replaced: dict[int, str] = field(default_factory=dict)
    """The text of each earlier attempt a restart replaced (those that had any)."""

    def text_of(self, attempt: int) -> str:
        return self.text if attempt == self.attempt else self.replaced.get(attempt, "")

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def started(self) -> bool:
        return bool(self.parts) or self.attempt > 0


class ConversationLog:
    """Prompts in order and the state of their answers, fed from both streams."""

    def __init__(self) -> None:
        self.prompts: list[Prompt] = []
        self._prompt_ids: set[str] = set()
        self.answers: dict[str, AnswerState] = {}
        self.cancel_requests: dict[str, int | None] = {}
        """Prompts whose answer a cancel stopped, with the attempt its first cancel named."""
        self.max_epoch = -1

    # -- feeding -------------------------------------------------------------------------

    def add_prompt_messages(
        self, messages: tuple[Any, ...] | list[Any],
    ) -> list[Prompt | Cancel | Unanswerable]:
        """Record prompts-stream messages; returns the new, understood ones in order (and
        those meant as prompts that cannot be answered, to be reported)."""
        new: list[Prompt | Cancel | Unanswerable] = []
        for message in messages:
            parsed = parse_prompt_message(message)
            if isinstance(parsed, Prompt):
                if parsed.id in self._prompt_ids:
                    continue  # a client retried with a new producer: same prompt id
                self._prompt_ids.add(parsed.id)
                self.prompts.append(parsed)
                new.append(parsed)
            elif isinstance(parsed, Cancel):
                if parsed.prompt_id not in self._prompt_ids:
                    continue  # before its prompt: it cannot be about one sent later
                self.cancel_requests.setdefault(parsed.prompt_id, parsed.attempt)
                new.append(parsed)
            elif isinstance(parsed, Unanswerable):
                new.append(parsed)
        return new

    def apply_response(self, message: Any) -> None:
        """Record one responses-stream message."""
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "agent":
            epoch = message.get("epoch")
            # One past the server's limit could not have been written under, and the next
            # agent could not write at all: such a marker (any client's) is not taken.
            if isinstance(epoch, int) and not isinstance(epoch, bool) \
                    and 0 <= epoch < schema.MAX_PRODUCER_EPOCH:
                self.max_epoch = max(self.max_epoch, epoch)
            return
        prompt_id = message.get("promptId")
        if not isinstance(prompt_id, str):
            return
        answer = self.answers.setdefault(prompt_id, AnswerState())
        if answer.finished:
            return  # nothing counts after a final message, not even a restart (as for the page)
        attempt = _attempt(message.get("attempt"))
        if attempt > answer.attempt or kind == "restart":
            if answer.parts:
                answer.replaced[answer.attempt] = answer.text
            answer.attempt, answer.parts = max(attempt, answer.attempt), []
        if attempt < answer.attempt:
            return  # a late message of an abandoned attempt
        if kind == "chunk" and isinstance(message.get("content"), str):
            answer.parts.append(message["content"])
        elif kind in ("done", "error"):
            answer.outcome = kind
            stop = message.get("stopReason")
            answer.stop_reason = stop if isinstance(stop, str) else None

    def record_finished(self, prompt_id: str, attempt: int, text: str, outcome: str,
                        stop_reason: str | None) -> None:
        """What this agent itself just wrote as a complete answer (after what the same
        attempt had said before, where it ended an interrupted one)."""
        before = self.answers.get(prompt_id)
        kept = before.parts if before is not None and before.attempt == attempt else []
        self.answers[prompt_id] = AnswerState(attempt, [*kept, text], outcome, stop_reason)

    # -- questions -----------------------------------------------------------------------

    def is_finished(self, prompt_id: str) -> bool:
        answer = self.answers.get(prompt_id)
        return answer is not None and answer.finished

    def next_attempt(self, prompt_id: str) -> tuple[int, bool]:
        """The attempt number for a new answer, and whether a partial one must be dropped."""
        answer = self.answers.get(prompt_id)
        if answer is None or not answer.started:
            return (answer.attempt if answer else 0), False
        return answer.attempt + 1, True

    def stopped_text(self, prompt_id: str, writing: int) -> StoppedAnswer | None:
        """The attempt its user stopped the answer at and its text, when a cancel named an
        attempt before `writing` (the attempt being written, or about to be) that had text:
        that attempt was restarted before the cancel arrived, and its text is what the user
        saw."""
        named = self.cancel_requests.get(prompt_id)
        answer = self.answers.get(prompt_id)
        if named is None or answer is None or named >= writing:
            return None
        text = answer.text_of(named)
        return StoppedAnswer(named, text) if text else None

    def unfinished_without_prompt(self) -> list[tuple[str, int]]:
        """(prompt id, attempt) of each answer begun (a chunk, or only a `wait` for the
        model) and never finished whose prompt the prompts stream no longer holds: read
        after the answers, it holds every prompt they answer unless it was deleted (and made
        again) since."""
        asked = {prompt.id for prompt in self.prompts}
        return [(prompt_id, answer.attempt) for prompt_id, answer in self.answers.items()
                if not answer.finished and prompt_id not in asked]

    def unanswered(self) -> list[Prompt]:
        return [p for p in self.prompts if not self.is_finished(p.id)]

    def history_for(self, prompt: Prompt, budget_chars: int) -> list[Turn]:
        """Earlier prompts with their answers, then `prompt`, trimmed from the oldest turns
        to fit `budget_chars` (the newest prompt is always kept).

        An earlier prompt without an answer (it failed, or the model wrote nothing) is left
        out: kept, it was sent again inside every later request, so a prompt the API refuses
        (too long) failed every one after it, and Try again asked its question twice. So is
        a stopped answer whose question was asked again next (the page's Try again)."""
        turns: list[Turn] = []
        for earlier, following in zip(self.prompts, [*self.prompts[1:], None]):
            if earlier.id == prompt.id:
                break
            answer = self.answers.get(earlier.id)
            if earlier.problem is not None or answer is None or answer.outcome != "done" \
                    or not answer.text:
                continue
            if (answer.stop_reason == "cancelled" and following is not None
                    and following.content == earlier.content):
                continue
            turns.append(Turn(USER, earlier.content))
            turns.append(Turn(ASSISTANT, answer.text))
        kept: list[Turn] = [Turn(USER, prompt.content)]
        used = len(prompt.content)
        for turn in reversed(turns):
            if used + len(turn.text) > budget_chars:
                break
            kept.append(turn)
            used += len(turn.text)
        kept.reverse()
        while kept and kept[0].role == ASSISTANT:
            kept.pop(0)
        return kept


def _attempt(value: Any) -> int:
    """An attempt number as the page reads it, 0 when it is not a whole number."""
    number = schema.json_integer(value)
    return 0 if number is None else number
