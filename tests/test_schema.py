"""What an agent makes of a prompts stream's messages: written by any client, so anything."""

from __future__ import annotations

from typing import Any

import pytest

from agent_actors.schema import (BLANK_PROMPT, UNREADABLE_PROMPT, Cancel, Prompt, Unanswerable,
                                  parse_prompt_message)

MESSAGE_RULE = ('an agent reads "prompt" and "cancel" messages (see the message schema in the'
                " README)")


@pytest.mark.parametrize(("message", "parsed"), [
    ({"type": "prompt", "id": "p1", "content": "hi", "timestamp": 5}, Prompt("p1", "hi", 5)),
    ({"id": "p1", "content": "hi"}, Prompt("p1", "hi", 0)),  # the original example's shape
    ({"type": "cancel", "promptId": "p1"}, Cancel("p1")),
    # The attempt its user saw: a whole number as a browser reads one, else not named.
    ({"type": "cancel", "promptId": "p1", "attempt": 2}, Cancel("p1", 2)),
    ({"type": "cancel", "promptId": "p1", "attempt": 0.0}, Cancel("p1", 0)),
    ({"type": "cancel", "promptId": "p1", "attempt": -1}, Cancel("p1")),
    ({"type": "cancel", "promptId": "p1", "attempt": 1.5}, Cancel("p1")),
    ({"type": "cancel", "promptId": "p1", "attempt": True}, Cancel("p1")),
    ({"type": "cancel", "promptId": "p1", "attempt": "1"}, Cancel("p1")),
    # Meant as a prompt, but its content is not text: answered with an error, not ignored.
    ({"type": "prompt", "id": "p1", "content": ["hi"]},
     Prompt("p1", "", 0, problem=UNREADABLE_PROMPT)),
    ({"type": "prompt", "id": "p1"}, Prompt("p1", "", 0, problem=UNREADABLE_PROMPT)),
    ({"id": "p1", "content": None}, Prompt("p1", "", 0, problem=UNREADABLE_PROMPT)),
    # Text with nothing in it to answer (Python's whitespace, which is more than a browser's
    # `trim()`: U+0085 and U+001C-U+001F too): an error, as the model must not be asked.
    ({"id": "p1", "content": ""}, Prompt("p1", "", 0, problem=BLANK_PROMPT)),
    ({"id": "p1", "content": " \n\t"}, Prompt("p1", " \n\t", 0, problem=BLANK_PROMPT)),
    ({"id": "p1", "content": "\x85\x1c"}, Prompt("p1", "\x85\x1c", 0, problem=BLANK_PROMPT)),
    # Nothing visible: zero-width spaces and joiners, a byte-order mark.
    ({"id": "p1", "content": "\u200b \u200d\ufeff\u2060"},
     Prompt("p1", "\u200b \u200d\ufeff\u2060", 0, problem=BLANK_PROMPT)),
    # Direction marks, a soft hyphen, Hangul fillers, a variation selector, a tag character.
    ({"id": "p1", "content": "\u200e\u202a\u00ad\u3164\ufe0f\U000e0041 \u034f"},
     Prompt("p1", "\u200e\u202a\u00ad\u3164\ufe0f\U000e0041 \u034f", 0,
            problem=BLANK_PROMPT)),
    ({"id": "p1", "content": "\u200ba"}, Prompt("p1", "\u200ba", 0)),
    ({"id": "p1", "content": "\u3164\u1100"}, Prompt("p1", "\u3164\u1100", 0)),
    # Meant as prompts, with no id an answer could be written under: skipped, and said so.
    ({"type": "prompt", "id": "", "content": "hi"}, Unanswerable("a prompt whose id is empty")),
    ({"type": "prompt", "id": 7, "content": "hi"},
     Unanswerable("a prompt whose id is not a string but a JSON number")),
    ({"content": "hi"}, Unanswerable("a prompt without an id")),
    ({"type": "prompt", "id": "i" * 257, "content": "hi"},
     Unanswerable("a prompt whose id is 257 characters long (at most 256)")),
    ({"type": "prompt", "id": "i" * 256, "content": "hi"}, Prompt("i" * 256, "hi", 0)),
    # No message an agent reads: skipped too, and said so (they were skipped without a word,
    # and a client that mistyped "type" waited for good).
    ({"id": "p1"}, Unanswerable("a message with neither a type nor a content", MESSAGE_RULE)),
    ({"type": "promt", "id": "p1", "content": "hi"},
     Unanswerable("a message of type 'promt'", MESSAGE_RULE)),
    ({"type": 3, "id": "p1"},
     Unanswerable("a message whose type is not a string but a JSON number", MESSAGE_RULE)),
    ({"type": "cancel"}, Unanswerable(
        "a cancel naming no prompt (its promptId is not a non-empty string)", MESSAGE_RULE)),
    (["not", "an", "object"],
     Unanswerable("a message that is not a JSON object but a JSON array", MESSAGE_RULE)),
    ("text", Unanswerable("a message that is not a JSON object but a JSON string", MESSAGE_RULE)),
])
def test_prompts_stream_messages(message: Any, parsed: Prompt | Cancel | Unanswerable) -> None:
    assert parse_prompt_message(message) == parsed
