"""The app as `flask run` runs it, outside the browser: stopping it with Ctrl+C."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from agent_actors import layout
from agent_actors.streams_client import StreamsClient
from tests.fake_anthropic import FakeAnthropic
from tests.support.agents import ChatClient
from tests.support.webapp import start_chat_app


def test_ctrl_c_stops_flask_run_promptly_in_the_middle_of_an_answer(tmp_path: Path) -> None:
    """At exit the app's own server is already down, so its agents cannot release their
    leases over HTTP: Ctrl+C must still end the process within seconds, without a traceback
    (it used to wait 15 s per agent and end in a pykka Timeout)."""
    with FakeAnthropic(reply=" ".join(f"word{i}" for i in range(400)), tokens_per_second=20) as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url, interruptible=True)
        try:
            client = StreamsClient(f"{app.url}/v1/stream")
            chat = ChatClient(client, lease_ttl_ms=layout.DEFAULT_LEASE_TTL_MS)
            cid = chat.start_conversation("interrupted")
            chat.send_prompt(cid, "a long answer, please")
            for batch in client.tail(layout.responses_path(cid), "-1"):
                if any(m.get("type") == "chunk" for m in batch.messages):
                    break  # the agent is streaming its answer
            started = time.monotonic()
            app.send_signal(signal.SIGINT)
            code = app.wait(timeout=20)
            elapsed = time.monotonic() - started
        finally:
            app.terminate()
    assert code == 0, app.log_tail()
    assert elapsed < 8, f"Ctrl+C took {elapsed:.1f} s"
    assert "Traceback" not in app.log_path.read_text(errors="replace"), app.log_tail()
