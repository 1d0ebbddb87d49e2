"""The JSON messages of a conversation's streams, as frozen values with codecs at the edge.

Field names follow the original TypeScript example (`id`, `promptId`, `content`,
`isComplete`, `timestamp` in ms) plus a `type` on every message. The README documents the
schema for other clients.

prompts stream (written by clients):
    {"type": "prompt", "id", "content", "timestamp"}
    {"type": "cancel", "promptId", "attempt"?, "timestamp"}   `attempt`: the one its user saw
responses stream (written by the agent):
    {"type": "agent", "event": "started", "epoch", "worker", "timestamp"}   fences older agents
    {"type": "chunk", "id", "promptId", "attempt", "content", "isComplete": false, "timestamp"}
    {"type": "restart", "promptId", "attempt", "reason", "isComplete": false, "timestamp"}
    {"type": "wait", "promptId", "attempt", "message", "code", "retryInMs", "retry", "retries",
     "isComplete": false, "timestamp"}                  the model is asked again after a wait
    {"type": "done", "promptId", "attempt", "stopReason", "usage", "model", "isComplete": true,
     "timestamp"}
    {"type": "error", "promptId", "attempt", "message", "code", "isComplete": true, "timestamp"}
A `restart` tells readers to drop the text of earlier attempts of that prompt's answer.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from agent_actors.layout import is_conversation_id


MAX_PROMPT_ID_CHARS = 256
"""The longest prompt id answered: every piece of the answer carries it, twice."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Prompt:
    id: str
    content: str
    timestamp: int
    problem: str | None = None
    """Why the prompt cannot be answered (its content is not text, or blank): it gets an
    `error`."""


@dataclass(frozen=True)
class Cancel:
    prompt_id: str
    attempt: int | None = None
    """The answer's attempt its user stopped, where the client says: a Stop sent while the
    server was away can arrive after a new agent restarted the answer, and what its user
    stopped at is then the text of the attempt before."""


@dataclass(frozen=True)
class Unanswerable:
    """A prompts-stream message nothing can be done with: a prompt with no id an answer
    could be written under (so not even an error), or no message an agent reads (a mistyped
    `type`, a cancel naming no prompt). Skipped, and the agent's log says why (`reason`)
    and what it takes (`rule`): its writer would otherwise wait for good without a sign."""

    reason: str
    rule: str = ("an answer is written under the prompt's id, a string of 1 to"
                 f" {MAX_PROMPT_ID_CHARS} characters")


@dataclass(frozen=True)
class ConversationEntry:
    id: str
    title: str


UNREADABLE_PROMPT = "This prompt could not be read: its content is not text."
BLANK_PROMPT = "This prompt is empty: there is nothing to answer."
INVALID_PROMPT = "invalid_prompt"
"""The `code` of the error that answers a prompt with a `problem`."""

MAX_ANSWER_ATTEMPTS = 4
"""Attempts at one answer before an agent gives up on it: each restart follows an agent that
stopped mid-answer, and an answer that kills its agent every time (a crash in the model's
output handling, memory) must not block its conversation, or re-bill the model, forever."""
INTERRUPTED = "interrupted"
"""The `code` of the error that ends an answer after `MAX_ANSWER_ATTEMPTS`."""
PROMPT_GONE = "prompt_gone"
"""The `code` of the error that ends an unfinished answer whose prompt has left the prompts
stream (deleted, and made again): no agent could ever finish it."""
PROMPT_GONE_MESSAGE = ("This answer was cut short, and its question is no longer on the"
                       " server (the conversation's prompts were deleted).")


def gave_up_message(attempts: int) -> str:
    return (f"The agent was cut off in the middle of this answer {attempts} times, so it was"
            " not tried again. Ask again, as a new prompt (a new id), to retry.")


# Characters that show nothing and are not whitespace to Python's `str.strip` (U+FEFF is
# to JavaScript's `trim`): Unicode's Default_Ignorable_Code_Point set (zero-width spaces and
# joiners, direction marks, soft hyphens, fillers, variation selectors, tags). A prompt of
# them and whitespace is an invisible, empty bubble.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


def is_blank(text: str) -> bool:
    """Whether a prompt has nothing in it to answer: only whitespace (Python's measure,
    which the model adapters use: U+0085 and U+001C-U+001F included) and invisible
    characters. The chat page (`isBlank` in chat-protocol.js) counts the same ones."""
    return not _INVISIBLE.sub("", text).strip()


_PLAIN_ID = re.compile(r"[!-~]+")  # visible ASCII, no spaces
MAX_PRODUCER_EPOCH = 2**53 - 1  # the protocol's largest Producer-Epoch (a JSON-safe integer)


def parse_prompt_message(message: Any) -> Prompt | Cancel | Unanswerable:
    """What a message of a prompts stream asks of an agent."""
    if not isinstance(message, dict):
        return Unanswerable(f"a message that is not a JSON object but {_json_kind(message)}",
                            _MESSAGE_RULE)
    kind = message.get("type", "prompt")  # the original example had no type field
    if kind == "prompt":
        pid, content = message.get("id"), message.get("content")
        if "type" not in message and "content" not in message:
            return Unanswerable("a message with neither a type nor a content", _MESSAGE_RULE)
        if not isinstance(pid, str) or not pid or len(pid) > MAX_PROMPT_ID_CHARS:
            return Unanswerable(_id_problem(pid))
        stamp = message.get("timestamp")
        stamp = stamp if isinstance(stamp, int) else 0
        if isinstance(content, str):
            blank = is_blank(content)
            return Prompt(pid, content, stamp, problem=BLANK_PROMPT if blank else None)
        return Prompt(pid, "", stamp, problem=UNREADABLE_PROMPT)  # says why it is not answered
    if kind == "cancel":
        pid = message.get("promptId")
        if isinstance(pid, str) and pid:
            return Cancel(pid, whole_number(message.get("attempt")))
        return Unanswerable("a cancel naming no prompt (its promptId is not a non-empty string)",
                            _MESSAGE_RULE)
    if isinstance(kind, str):
        return Unanswerable(f"a message of type {kind[:40]!r}", _MESSAGE_RULE)
    return Unanswerable(f"a message whose type is not a string but {_json_kind(kind)}",
                        _MESSAGE_RULE)


_MESSAGE_RULE = ('an agent reads "prompt" and "cancel" messages (see the message schema in'
                 " the README)")


def json_integer(value: Any) -> int | None:
    """A JSON whole number as a browser reads it (JSON has one kind of number: 1 and 1.0 are
    the same to a browser), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def whole_number(value: Any) -> int | None:
    """A JSON whole number of zero or more (see `json_integer`), else None."""
    number = json_integer(value)
    return number if number is not None and number >= 0 else None


def _id_problem(pid: Any) -> str:
    if pid is None:
        return "a prompt without an id"
    if not isinstance(pid, str):
        return f"a prompt whose id is not a string but {_json_kind(pid)}"
    if not pid:
        return "a prompt whose id is empty"
    return f"a prompt whose id is {len(pid):,} characters long (at most {MAX_PROMPT_ID_CHARS})"


def _json_kind(value: Any) -> str:
    kind = {bool: "boolean", int: "number", float: "number", list: "array", str: "string",
            type(None): "null"}.get(type(value), "object")
    return f"a JSON {kind}"


def parse_deletion(message: Any) -> str | None:
    """The id of the conversation a `{"type": "delete", "id"}` message deletes, else None."""
    if not isinstance(message, dict) or message.get("type") != "delete":
        return None
    cid = message.get("id")
    return cid if is_conversation_id(cid) else None


def parse_conversation_entry(message: Any) -> ConversationEntry | None:
    if not isinstance(message, dict) or message.get("type", "conversation") != "conversation":
        return None
    cid = message.get("id")
    if not isinstance(cid, str) or not is_conversation_id(cid):
        return None
    title = message.get("title")
    return ConversationEntry(cid, title if isinstance(title, str) else "")


def agent_started(epoch: int, worker: str) -> dict[str, Any]:
    return {"type": "agent", "event": "started", "epoch": epoch, "worker": worker,
            "timestamp": now_ms()}


def chunk(prompt_id: str, attempt: int, index: int, content: str) -> dict[str, Any]:
    return {"type": "chunk", "id": f"{prompt_id}/{attempt}/{index}", "promptId": prompt_id,
            "attempt": attempt, "content": content, "isComplete": False, "timestamp": now_ms()}


def restart(prompt_id: str, attempt: int, reason: str, *, restores: int | None = None
            ) -> dict[str, Any]:
    """`restores`: the attempt whose text this one puts back, as its user stopped it."""
    restored = {} if restores is None else {"restores": restores}
    return {"type": "restart", "promptId": prompt_id, "attempt": attempt, "reason": reason,
            **restored, "isComplete": False, "timestamp": now_ms()}


def wait(prompt_id: str, attempt: int, reason: str, code: str, retry_in_ms: int, retry: int,
         retries: int) -> dict[str, Any]:
    return {"type": "wait", "promptId": prompt_id, "attempt": attempt, "message": reason,
            "code": code, "retryInMs": retry_in_ms, "retry": retry, "retries": retries,
            "isComplete": False, "timestamp": now_ms()}


def done(prompt_id: str, attempt: int, stop_reason: str, input_tokens: int, output_tokens: int,
         model: str) -> dict[str, Any]:
    return {"type": "done", "promptId": prompt_id, "attempt": attempt, "stopReason": stop_reason,
            "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens},
            "model": model, "isComplete": True, "timestamp": now_ms()}


def error(prompt_id: str, attempt: int, message: str, code: str) -> dict[str, Any]:
    return {"type": "error", "promptId": prompt_id, "attempt": attempt, "message": message,
            "code": code, "isComplete": True, "timestamp": now_ms()}


def shown_id(prompt_id: str) -> str:
    """A prompt id (any client's string) as a log line shows it: quoted and escaped unless
    it is plain, so that a newline in one cannot forge a line of its own."""
    return prompt_id if _PLAIN_ID.fullmatch(prompt_id) else repr(prompt_id)
