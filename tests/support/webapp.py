"""The chat app as a real server process for browser tests, and a scripted fake model.

`start_chat_app` runs ``python -m flask run`` in the repository root (Flask finds ``wsgi.py``),
exactly as a user would, with the model pointed at a `tests.fake_anthropic.FakeAnthropic`.
Ready when Flask logs ``Running on http://HOST:PORT``. The port and data directory are fixed
when the process object is built, so ``start()`` after ``kill()`` brings the same app back.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from tests.support.processes import DEFAULT_LOG_DIR, REPO_ROOT, ServerProcess, free_port

FLASK_READY_RE = re.compile(rb"Running on (https?://[^\s/]+)")
_DROPPED_ENV_PREFIXES = ("CHAT_", "FLASK_", "ANTHROPIC_", "WERKZEUG_")


def start_chat_app(
    data_dir: Path,
    *,
    model_url: str,
    port: int | None = None,
    debug: bool = False,
    interruptible: bool = False,
    config: Mapping[str, str] | None = None,
    log_dir: Path = DEFAULT_LOG_DIR,
    ready_timeout: float = 45.0,
) -> ServerProcess:
    """Start ``flask run`` (``--debug``: with the reloader) and wait until it serves.

    ``config`` holds extra ``CHAT_*`` settings, e.g. ``{"AGENT_LEASE_TTL_MS": "3000"}``.
    The process runs in a group of its own, so stopping it also stops a reloader's child.
    ``interruptible``: SIGINT raises KeyboardInterrupt in it, as Ctrl+C in a terminal does,
    even when this test process inherited an ignored SIGINT (background jobs do).
    """
    port = free_port() if port is None else port
    argv = [sys.executable, "-m", "flask", "run", "--host", "127.0.0.1", "--port", str(port)]
    if interruptible:
        argv[1:3] = ["-c", "import runpy, signal, sys; signal.signal(signal.SIGINT, "
                     "signal.default_int_handler); sys.argv[0] = 'flask'; "
                     "runpy.run_module('flask', run_name='__main__')"]
    if debug:
        argv.append("--debug")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV_PREFIXES)}
    env.update({
        "CHAT_DATA_DIR": str(Path(data_dir).resolve()),
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": model_url,
        "ANTHROPIC_MODEL": "claude-fake-1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"CHAT_{key}": value for key, value in (config or {}).items()})
    server = ServerProcess(
        argv,
        log_path=Path(log_dir) / f"webui-{'debug-' if debug else ''}{port}.log",
        cwd=REPO_ROOT,
        env=env,
        ready_timeout=ready_timeout,
        ready_pattern=FLASK_READY_RE,
        process_group=True,
    )
    return server.start()



@contextmanager
def chat_app_without_agents() -> Iterator[ServerProcess]:
    """`flask run` on a fresh data directory with no agents, so nothing answers and no
    model is asked: the page benchmarks measure the page alone."""
    with tempfile.TemporaryDirectory() as data:
        app = start_chat_app(Path(data), model_url="http://127.0.0.1:9",
                             config={"EMBEDDED_SUPERVISOR": "false"})
        try:
            yield app
        finally:
            app.terminate()


def read_json_stream(base_url: str, path: str, timeout: float = 10.0) -> list[Any]:
    """Every message of a JSON stream of the app, by catch-up reads from the beginning."""
    messages: list[Any] = []
    offset = "-1"
    with requests.Session() as http:
        while True:
            response = http.get(f"{base_url}/v1/stream/{path}", params={"offset": offset},
                                timeout=timeout)
            assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
            body = response.text.strip()
            if body:
                messages.extend(json.loads(body))
            next_offset = response.headers["Stream-Next-Offset"]
            if response.headers.get("Stream-Up-To-Date") == "true" or next_offset == offset:
                return messages
            offset = next_offset


class ScriptedReplies:
    """The fake model's reply, chosen by the text of the prompt being answered.

    Install with ``fake.reply = replies``; ``replies.set(prompt, reply)`` scripts one prompt,
    any other gets ``default``. Prompts are unique per test, so tests never see each other's.
    """

    def __init__(self, default: str = "Hello from the fake model.") -> None:
        self.default = default
        self._by_prompt: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, prompt: str, reply: str) -> None:
        with self._lock:
            self._by_prompt[prompt] = reply

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        prompt = _text_of(messages[-1]) if messages else ""
        with self._lock:
            return self._by_prompt.get(prompt.strip(), self.default)


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""
