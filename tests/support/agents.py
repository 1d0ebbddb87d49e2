"""Helpers for the agent tests: a supervisor subprocess, a chat client, and a response renderer.

The renderer reads a conversation's responses stream the way a UI does (see
`agent_actors.schema`): a `restart` (or a chunk of a higher attempt) drops the text shown so
far for that prompt, and `done`/`error` complete the answer. It also counts what a UI would
hide, so that tests can assert that nothing was duplicated or answered twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from agent_actors import layout, schema
from agent_actors.producer import Producer
from agent_actors.streams_client import StreamsClient
from tests.support.processes import DEFAULT_LOG_DIR, REPO_ROOT

_SUPERVISOR_READY = "agent supervisor "
TERMINAL_TYPES = ("done", "error")


# -- the supervisor as a subprocess ------------------------------------------------------------


class SupervisorProcess:
    """`python -m agent_actors supervisor ...` run as a child process, its output logged.

    Ready once it prints its startup line. Its log lines are kept in memory too, so a test
    can wait for a line (`wait_for_line`) instead of sleeping.
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> None:
        self.argv = [str(a) for a in argv]
        self.env = dict(env)
        self.log_path = log_path
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._eof = False

    def start(self, *, crash_at: str | None = None, ready_timeout: float = 30.0) -> SupervisorProcess:
        """Start (again); with ``crash_at`` the process SIGKILLs itself at that crash point."""
        env = {k: v for k, v in self.env.items() if k != "AGENT_ACTORS_CRASH_AT"}
        if crash_at:
            env["AGENT_ACTORS_CRASH_AT"] = crash_at
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start (crash_at={crash_at}):"
                      f" {self.argv}\n".encode())
        with self._changed:
            start_line = len(self.lines)
            self._eof = False
        self._proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self._proc.stdout is not None
        self._reader = threading.Thread(target=self._drain, args=(self._proc.stdout,),
                                        daemon=True, name=f"drain-supervisor-{self._proc.pid}")
        self._reader.start()
        if not self.wait_for_line(re.escape(_SUPERVISOR_READY), ready_timeout, since=start_line):
            self.kill()
            raise RuntimeError(f"supervisor did not start; log:\n{self.log_tail()}")
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def pause(self) -> None:
        """SIGSTOP: the process freezes mid-whatever, as in a long GC pause or a VM stall."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """Wait for the process to end by itself (e.g. a crash point); its exit code."""
        assert self._proc is not None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop within ``timeout``."""
        return self._stop(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        return self._stop(signal.SIGKILL, 5.0)

    def send_signal(self, sig: signal.Signals) -> None:
        """Deliver ``sig`` without waiting for anything."""
        assert self._proc is not None, "not started"
        self._proc.send_signal(sig)

    def stop_with(self, sig: signal.Signals, timeout: float) -> int | None:
        """Send ``sig`` and wait ``timeout`` seconds for the exit (SIGKILL after that)."""
        return self._stop(sig, timeout)

    def _stop(self, sig: signal.Signals, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        return proc.returncode

    def wait_for_line(self, pattern: str, timeout: float, *, since: int = 0) -> str | None:
        """The first log line from index ``since`` matching ``pattern`` (regex), or None."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    if regex.search(line):
                        return line
                since = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._eof and not self.running):
                    return None
                self._changed.wait(remaining)

    def count_lines(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self.lines if regex.search(line))

    def log_tail(self, lines: int = 60) -> str:
        with self._changed:
            return "\n".join(self.lines[-lines:])

    def _drain(self, stream: IO[bytes]) -> None:
        with open(self.log_path, "ab", buffering=0) as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                with self._changed:
                    self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                    self._changed.notify_all()
        stream.close()
        with self._changed:
            self._eof = True
            self._changed.notify_all()


def supervisor_process(
    streams_url: str,
    data_dir: Path,
    *,
    model_url: str,
    worker_name: str,
    idle_timeout: float = 30.0,
    lease_ttl_ms: int = 2000,
    coalesce_ms: float = 0.0,
    max_agents: int = 20,
    model: str = "claude-fake-1",
    log_dir: Path = DEFAULT_LOG_DIR,
    log_name: str | None = None,
) -> SupervisorProcess:
    """A (not yet started) supervisor using the real Anthropic SDK against ``model_url``."""
    argv = [
        sys.executable, "-m", "agent_actors", "supervisor",
        "--streams-url", streams_url,
        "--data-dir", str(data_dir),
        "--idle-timeout", str(idle_timeout),
        "--lease-ttl-ms", str(lease_ttl_ms),
        "--coalesce-ms", str(coalesce_ms),
        "--max-agents", str(max_agents),
        "--worker-name", worker_name,
    ]
    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": model_url,
        "ANTHROPIC_MODEL": model,
        "PYTHONUNBUFFERED": "1",
    }
    name = log_name or f"{worker_name}-{os.getpid()}"
    return SupervisorProcess(argv, env=env, log_path=log_dir / f"supervisor-{name}.log")


# -- a chat client (what the browser does) ------------------------------------------------------


class ChatClient:
    """Starts conversations and sends prompts the way README's client protocol says."""

    def __init__(self, client: StreamsClient, *, lease_ttl_ms: int) -> None:
        self.client = client
        self.lease_ttl_ms = lease_ttl_ms
        self._producers: dict[str, Producer] = {}
        self._conversations: Producer | None = None

    def start_conversation(self, title: str = "test", *, responses_stream: bool = True,
                           listed: bool = True) -> str:
        """Subscription first, then the two streams (or only the prompts stream, as a client
        may leave the responses stream to the agent), then the conversation list entry
        (unless not `listed`: a client may leave it out)."""
        cid = f"c{uuid.uuid4().hex[:12]}"
        config = layout.subscription_config(cid, lease_ttl_ms=self.lease_ttl_ms)
        self.client.put_subscription(layout.subscription_id(cid), config)
        self.client.ensure_stream(layout.prompts_path(cid))
        if responses_stream:
            self.client.ensure_stream(layout.responses_path(cid))
        if listed:
            self.client.ensure_stream(layout.CONVERSATIONS_STREAM)
            if self._conversations is None:
                self._conversations = self.client.producer(
                    layout.CONVERSATIONS_STREAM, f"test-{uuid.uuid4().hex[:8]}",
                    auto_claim=True)
            self._conversations.append([{"type": "conversation", "id": cid, "title": title,
                                         "timestamp": schema.now_ms()}])
        self._producers[cid] = self.client.producer(layout.prompts_path(cid),
                                                    f"tab-{uuid.uuid4().hex[:8]}",
                                                    auto_claim=True)
        return cid

    def delete_conversation(self, cid: str) -> None:
        assert self._conversations is not None, "start a conversation first"
        self._conversations.append([{"type": "delete", "id": cid, "timestamp": schema.now_ms()}])

    def send_prompt(self, cid: str, content: Any) -> str:
        """Append a prompt; `content` is sent as given (a client could send anything)."""
        prompt_id = f"p{uuid.uuid4().hex[:10]}"
        self._producers[cid].append([{"type": "prompt", "id": prompt_id, "content": content,
                                      "timestamp": schema.now_ms()}])
        return prompt_id

    def cancel(self, cid: str, prompt_id: str, attempt: int | None = None) -> None:
        """`attempt`: the answer's attempt its user saw, as the page names it."""
        named = {} if attempt is None else {"attempt": attempt}
        self._producers[cid].append([{"type": "cancel", "promptId": prompt_id, **named,
                                      "timestamp": schema.now_ms()}])


# -- rendering the responses stream as a UI would -------------------------------------------------


@dataclass
class RenderedAnswer:
    """One prompt's answer as a reader shows it, plus what the reader had to hide."""

    attempt: int = 0
    text: str = ""
    terminals: list[dict[str, Any]] = field(default_factory=list)
    """`done`/`error` messages of the final attempt."""
    terminals_total: int = 0
    """`done`/`error` messages of all attempts: more than one means answered twice."""
    restarts: int = 0
    chunks_after_terminal: int = 0
    """Chunks of the final attempt that arrived after its terminal message (never valid)."""

    @property
    def complete(self) -> bool:
        return bool(self.terminals)

    @property
    def terminal(self) -> dict[str, Any]:
        assert len(self.terminals) == 1, f"expected one terminal message, got {self.terminals}"
        return self.terminals[0]


class Renderer:
    """Applies responses-stream messages in order; `answers` maps prompt id to its answer."""

    def __init__(self) -> None:
        self.answers: dict[str, RenderedAnswer] = {}
        self.messages: list[Any] = []

    def feed(self, messages: Iterable[Any]) -> None:
        for message in messages:
            self.messages.append(message)
            self._apply(message)

    def _apply(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("promptId"), str):
            return
        answer = self.answers.setdefault(message["promptId"], RenderedAnswer())
        kind, attempt = message.get("type"), int(message.get("attempt", 0))
        if kind == "restart" or attempt > answer.attempt:
            if kind == "restart":
                answer.restarts += 1
            answer.attempt, answer.text, answer.terminals = max(attempt, answer.attempt), "", []
        if kind in TERMINAL_TYPES:
            answer.terminals_total += 1
        if attempt < answer.attempt:
            return
        if kind == "chunk":
            if answer.terminals:
                answer.chunks_after_terminal += 1
            answer.text += str(message.get("content", ""))
        elif kind in TERMINAL_TYPES:
            answer.terminals.append(message)

    def complete(self, prompt_ids: Iterable[str]) -> bool:
        return all(p in self.answers and self.answers[p].complete for p in prompt_ids)


def render(messages: Iterable[Any]) -> Renderer:
    renderer = Renderer()
    renderer.feed(messages)
    return renderer


def wait_for_answers(
    client: StreamsClient, cid: str, prompt_ids: Sequence[str], *, timeout: float = 20.0,
    until: Callable[[Renderer], bool] | None = None,
) -> Renderer:
    """Follow the responses stream live until every prompt's answer is complete (or ``until``
    holds); raises AssertionError after ``timeout`` seconds."""
    condition = until or (lambda r: r.complete(prompt_ids))
    renderer = Renderer()
    tail = client.tail(layout.responses_path(cid), "-1", live="long-poll", yield_empty=True)
    timer = threading.Timer(timeout, tail.close)
    timer.start()
    try:
        for batch in tail:
            renderer.feed(batch.messages)
            if condition(renderer):
                return renderer
    finally:
        timer.cancel()
        tail.close()
    raise AssertionError(f"conversation {cid}: answers incomplete after {timeout}s: "
                         f"{ {p: renderer.answers.get(p) for p in prompt_ids} }")


def mid_answer(prompt_id: str, attempt: int) -> Callable[[Renderer], bool]:
    """A `wait_for_answers` condition: the answer's ``attempt`` has shown some text."""
    def condition(renderer: Renderer) -> bool:
        answer = renderer.answers.get(prompt_id)
        return answer is not None and answer.attempt == attempt and bool(answer.text)
    return condition


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll ``condition`` (for state that has no event to wait on) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def all_prompts_acked(client: StreamsClient, cid: str) -> bool:
    """True once the subscription's acked offset reached the prompts stream's tail."""
    tail = client.head(layout.prompts_path(cid)).next_offset
    sub = client.get_subscription(layout.subscription_id(cid))
    return any(s.path == layout.prompts_path(cid) and s.acked_offset == tail for s in sub.streams)
