"""An offline stand-in for Claude, so the whole system can be seen working with no network.

Its answers are clearly labelled, echo and discuss the prompt, and stream word by word at a
realistic, configurable rate, with token usage counted, so the UI, the agents and the
durability machinery behave as they would with a real model.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence

from agent_actors.models.base import (
    CANCELLED,
    USER,
    ModelEvent,
    ModelResult,
    TextDelta,
    Turn,
    estimate_tokens,
    normalize_turns,
)

DEMO_LABEL = "(Demo model — set ANTHROPIC_API_KEY for Claude)"
_ECHO_WORDS = 40
_TOKEN_RE = re.compile(r"\s*\S+")


class DemoModel:
    """Streams a labelled, prompt-aware reply word by word; never touches the network.

    ``tokens_per_second`` sets the pace; ``first_token_latency`` the pause before the first
    word, as a real model "thinks". Both may be 0 for instant answers in tests.
    """

    def __init__(self, *, tokens_per_second: float = 30.0, first_token_latency: float = 0.3
                 ) -> None:
        if tokens_per_second < 0 or first_token_latency < 0:
            raise ValueError("tokens_per_second and first_token_latency must be >= 0")
        self.tokens_per_second = tokens_per_second
        self.first_token_latency = first_token_latency

    @property
    def name(self) -> str:
        """``"demo"``."""
        return "demo"

    @property
    def model_id(self) -> str:
        return "demo"

    def stream(
        self, turns: Sequence[Turn | tuple[str, str]], *, cancel: threading.Event | None = None,
    ) -> Iterator[ModelEvent]:
        """Stream the demo reply to the conversation's last prompt (see `reply_text`)."""
        conversation = normalize_turns(turns)
        cancel = cancel or threading.Event()
        input_tokens = sum(estimate_tokens(turn.text) for turn in conversation)
        # At most a word a minute: a pace of 1e-12 was a wait too long for a timer.
        interval = min(1.0 / self.tokens_per_second, 60.0) if self.tokens_per_second > 0 else 0.0
        sent = 0
        if cancel.wait(self.first_token_latency):
            yield ModelResult(CANCELLED, input_tokens, sent, self.name)
            return
        for token in _TOKEN_RE.findall(reply_text(conversation)):
            if (sent and cancel.wait(interval)) or cancel.is_set():
                yield ModelResult(CANCELLED, input_tokens, sent, self.name)
                return
            sent += 1
            yield TextDelta(token)
        yield ModelResult("end_turn", input_tokens, sent, self.name)


def reply_text(conversation: Sequence[Turn]) -> str:
    """The demo's whole answer, in Markdown (so the page's rendering shows too): a label, an
    echo of the prompt with some context, and what a piece of the answer looks like stored."""
    prompts = [turn.text for turn in conversation if turn.role == USER]
    prompt = prompts[-1]
    words = prompt.split()
    echo = " ".join(words[:_ECHO_WORDS]) + (" …" if len(words) > _ECHO_WORDS else "")
    facts = [f"- **Words:** {len(words):,}",
             f"- **Message:** {len(prompts)} of this conversation"]
    if len(prompts) > 1:
        facts.append(f"- **Before that you asked:** “{' '.join(prompts[-2].split()[:12])}”,"
                     " so I have the whole history")
    parts = [DEMO_LABEL, f"You said: “{echo}”", "\n".join(facts)]
    if prompt.rstrip().endswith("?"):
        parts.append("It is a good question; a real model would answer it here.")
    parts.append("Every word of this reply travelled through a durable stream, so reloading"
                 " the page will not lose or repeat any of it. Each piece is one message in the"
                 " conversation's response stream:")
    parts.append('```json\n{"type": "chunk", "promptId": "…", "content": " word",'
                 ' "isComplete": false}\n```')
    return "\n\n".join(parts)
