"""What an agent sends the model as a conversation's history (`ConversationLog.history_for`)."""

from __future__ import annotations

from typing import Any

from agent_actors.conversation_log import ConversationLog
from agent_actors.models.base import ASSISTANT, USER, Turn
from agent_actors.schema import Prompt


def prompt(pid: str, content: str) -> dict[str, Any]:
    return {"type": "prompt", "id": pid, "content": content, "timestamp": 1}


def chunk(pid: str, text: str) -> dict[str, Any]:
    return {"type": "chunk", "promptId": pid, "attempt": 0, "content": text, "isComplete": False}


def end(pid: str, kind: str = "done", stop_reason: str = "end_turn") -> dict[str, Any]:
    return {"type": kind, "promptId": pid, "attempt": 0, "stopReason": stop_reason,
            "isComplete": True}


def history(responses: list[dict[str, Any]], prompts: list[tuple[str, str]],
            budget_chars: int = 100_000) -> list[Turn]:
    log = ConversationLog()
    log.add_prompt_messages([prompt(pid, text) for pid, text in prompts])
    for message in responses:
        log.apply_response(message)
    last = log.prompts[-1]
    return log.history_for(Prompt(last.id, last.content, 1), budget_chars)


def test_a_prompt_whose_answer_failed_is_not_sent_again_with_later_ones() -> None:
    """Kept, it went out inside every later request (merged with the next question): a
    prompt the API refused as too long failed all the prompts after it."""
    turns = history(
        [chunk("a", "Answer A."), end("a"), chunk("b", "half"), end("b", "error")],
        [("a", "Question A"), ("b", "x" * 50_000), ("c", "Question C")])
    assert turns == [Turn(USER, "Question A"), Turn(ASSISTANT, "Answer A."),
                     Turn(USER, "Question C")]


def test_a_stopped_answer_is_kept_with_what_it_said_and_an_empty_one_is_not() -> None:
    turns = history(
        [chunk("a", "Partly"), end("a", stop_reason="cancelled"),
         end("b", stop_reason="cancelled")],
        [("a", "Question A"), ("b", "Question B"), ("c", "Question C")])
    assert turns == [Turn(USER, "Question A"), Turn(ASSISTANT, "Partly"),
                     Turn(USER, "Question C")]


def test_a_stopped_answer_asked_again_is_not_sent_with_its_retry() -> None:
    """The page offers Try again on a stopped answer, which sends the same question again:
    the model was sent the question, the cut-off answer, and the question a second time.
    The retry stands for the stopped turn; a stopped turn followed by another question
    stays (the question may build on what the answer had said)."""
    turns = history(
        [chunk("a", "Answer A."), end("a"), chunk("b", "Cut o"), end("b", stop_reason="cancelled")],
        [("a", "Question A"), ("b", "Question B"), ("b2", "Question B")])
    assert turns == [Turn(USER, "Question A"), Turn(ASSISTANT, "Answer A."),
                     Turn(USER, "Question B")]
    turns = history(
        [chunk("b", "Cut o"), end("b", stop_reason="cancelled")],
        [("b", "Question B"), ("c", "Go on")])
    assert turns == [Turn(USER, "Question B"), Turn(ASSISTANT, "Cut o"), Turn(USER, "Go on")]


def test_the_oldest_exchanges_go_first_to_fit_the_budget() -> None:
    turns = history(
        [chunk("a", "A" * 40), end("a"), chunk("b", "B" * 40), end("b")],
        [("a", "q" * 40), ("b", "r" * 40), ("c", "s" * 10)], budget_chars=100)
    assert turns == [Turn(USER, "r" * 40), Turn(ASSISTANT, "B" * 40), Turn(USER, "s" * 10)]


def test_an_attempt_is_read_as_the_page_reads_it() -> None:
    """JSON has one kind of number: 1.0 is the browser's 1, so the page took a restart
    marked `"attempt": 1.0` and the agent did not (a float was attempt 0); `true` was the
    agent's 1 and the page's 0. The two showed and sent the model different answers."""
    log = ConversationLog()
    for message in [chunk("a", "void"), {"type": "restart", "promptId": "a", "attempt": 1.0},
                    {**chunk("a", "kept"), "attempt": 1},
                    {**chunk("a", " (true is no attempt)"), "attempt": True},
                    {**end("a"), "attempt": 1.0}]:
        log.apply_response(message)
    assert log.is_finished("a") and log.answers["a"].parts == ["kept"]


def test_an_interrupted_answer_its_user_stopped_keeps_its_text_in_the_history() -> None:
    """Ended as stopped under the interrupted attempt (no restart), the answer is what that
    attempt had said: recording it as only what the ending agent wrote (nothing) left it
    out of the next prompt's history."""
    log = ConversationLog()
    log.add_prompt_messages([prompt("a", "Question A"), prompt("b", "Question B")])
    log.apply_response(chunk("a", "Half an answer"))
    log.record_finished("a", 0, "", "done", "cancelled")
    assert log.history_for(Prompt("b", "Question B", 1), 100_000) == [
        Turn(USER, "Question A"), Turn(ASSISTANT, "Half an answer"), Turn(USER, "Question B")]


def test_a_cancel_naming_an_attempt_since_restarted_gives_the_text_its_user_stopped_at() -> None:
    """A Stop sent while the server was away could reach the agent after a new agent had
    restarted the answer: it stopped the new attempt, and the text the user had stopped at
    gave way to the new attempt's first words."""
    log = ConversationLog()
    log.add_prompt_messages([prompt("a", "Question A")])
    for message in [chunk("a", "What the user "), chunk("a", "saw"),
                    {"type": "restart", "promptId": "a", "attempt": 1},
                    {**chunk("a", "Some"), "attempt": 1}]:
        log.apply_response(message)
    assert log.stopped_text("a", writing=1) is None  # no cancel yet
    log.add_prompt_messages([{"type": "cancel", "promptId": "a", "attempt": 0}])
    log.add_prompt_messages([{"type": "cancel", "promptId": "a", "attempt": 1}])  # the first counts
    assert log.stopped_text("a", writing=2) == (0, "What the user saw")
    assert log.stopped_text("a", writing=0) is None  # the attempt being written: a plain stop

    unnamed = ConversationLog()
    unnamed.add_prompt_messages([prompt("a", "Question A"), {"type": "cancel", "promptId": "a"}])
    unnamed.apply_response(chunk("a", "Text"))
    assert unnamed.stopped_text("a", writing=1) is None

    empty = ConversationLog()  # the named attempt had no text: nothing to keep
    empty.add_prompt_messages([prompt("a", "Question A"),
                               {"type": "cancel", "promptId": "a", "attempt": 0}])
    empty.apply_response({"type": "restart", "promptId": "a", "attempt": 1})
    assert empty.stopped_text("a", writing=1) is None


def test_answers_begun_whose_prompts_are_gone_are_found_even_before_their_text() -> None:
    """An answer cut short whose prompt left the prompts stream (deleted, then made again)
    is for no agent to finish, also one that had only waited for the model (a `wait`)."""
    log = ConversationLog()
    log.add_prompt_messages([prompt("kept", "Still asked")])
    for message in [chunk("kept", "Half"), chunk("gone", "Half an answer"),
                    {"type": "wait", "promptId": "waited", "attempt": 0, "code": "overloaded"},
                    {**chunk("done", "All"), "attempt": 0},
                    {"type": "done", "promptId": "done", "attempt": 0}]:
        log.apply_response(message)
    assert sorted(log.unfinished_without_prompt()) == [("gone", 0), ("waited", 0)]
