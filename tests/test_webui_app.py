"""The app as `flask run` runs it, outside the browser: stopping it with Ctrl+C, and where
its embedded supervisor connects."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from agent_actors import layout, schema
from agent_actors.offsets_store import OffsetsStore
from agent_actors.streams_client import StreamsClient
from tests.fake_anthropic import FakeAnthropic
from tests.support import ServerProcess, start_streams_server
from tests.support.agents import ChatClient, mid_answer, wait_for_answers, wait_until
from tests.support.webapp import start_chat_app


def ask(streams_url: str, title: str, content: str, *,
        lease_ttl_ms: int = layout.DEFAULT_LEASE_TTL_MS) -> tuple[StreamsClient, str, str]:
    """A new conversation titled `title`, asked `content`, through the streams at
    `streams_url` as the page does: (a client of them, the conversation's id, the prompt's)."""
    client = StreamsClient(streams_url)
    chat = ChatClient(client, lease_ttl_ms=lease_ttl_ms)
    cid = chat.start_conversation(title)
    return client, cid, chat.send_prompt(cid, content)


def wait_until_streaming(client: StreamsClient, cid: str) -> None:
    """Until the conversation's agent has written a chunk of its answer."""
    for batch in client.tail(layout.responses_path(cid), "-1"):
        if any(m.get("type") == "chunk" for m in batch.messages):
            return


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_stops_flask_run_promptly_in_the_middle_of_an_answer(
    tmp_path: Path, sig: signal.Signals,
) -> None:
    """At exit the app's own server is already down, so its agents cannot release their
    leases over HTTP: Ctrl+C must still end the process within seconds, without a traceback
    (it used to wait 15 s per agent and end in a pykka Timeout)."""
    with FakeAnthropic(reply=" ".join(f"word{i}" for i in range(400)), tokens_per_second=20) as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url, interruptible=True)
        try:
            client, cid, _ = ask(f"{app.url}/v1/stream", "interrupted", "a long answer, please")
            wait_until_streaming(client, cid)
            started = time.monotonic()
            app.send_signal(sig)
            code = app.wait(timeout=20)
            elapsed = time.monotonic() - started
        finally:
            app.terminate()
    assert code == 0, app.log_tail()
    assert elapsed < 8, f"Ctrl+C took {elapsed:.1f} s"
    log = app.log_path.read_text(errors="replace")
    assert "Traceback" not in log, app.log_tail()
    assert "WARNING: This is a development server" in log
    assert "\x1b[" not in log, "Werkzeug's colours, written to a file"
    # Its agents hand their leases back to the server that has stopped with one try, without
    # retries to wait for. (An append under way as the server stopped may be retried once
    # before the agents hear of the stop: that is not waited for.)
    assert not re.search(r"retrying POST \S+/__ds/subscriptions/\S+/(ack|release)", log), app.log_tail()
    assert "did not stop in time" not in log, app.log_tail()
    assert "released 1 lease(s) of the stopped embedded agents" in log
    assert "could not release the lease" not in log, app.log_tail()  # expected: not news
    # How to stop at once: a `kill` is no Ctrl+C to press "again".
    hurry = "Ctrl+C again" if sig == signal.SIGINT else "Ctrl+C (SIGINT)"
    assert f"; {hurry} to stop at once)" in log, app.log_tail()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "kill", "kill-9"])
def test_after_ctrl_c_the_next_start_resumes_the_answer_without_waiting_for_the_lease(
    tmp_path: Path, sig: signal.Signals,
) -> None:
    """At exit the embedded agents cannot release their leases over HTTP (the app's server
    is down), so the next `flask run` waited out the lease (30 s by default) before it
    finished the answer. The app now releases its own agents' leases in-process as it stops.
    The lease here is ten minutes: the answer must not wait for it. `kill` (SIGTERM) used
    to end the process without that, so it waited; after `kill -9`, which leaves no chance
    to release anything, the next start releases the leases its dead predecessor held."""
    ten_minutes = 600_000
    with FakeAnthropic(reply=" ".join(f"word{i}" for i in range(60)), tokens_per_second=20) as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url, interruptible=True,
                             config={"AGENT_LEASE_TTL_MS": str(ten_minutes)})
        try:
            client, cid, prompt = ask(f"{app.url}/v1/stream", "interrupted, then resumed",
                                      "a long answer, please", lease_ttl_ms=ten_minutes)
            wait_until_streaming(client, cid)
            app.send_signal(sig)
            assert app.wait(timeout=20) == (-sig if sig == signal.SIGKILL else 0), app.log_tail()

            app.start()
            client = StreamsClient(f"{app.url}/v1/stream")
            answer = wait_for_answers(client, cid, [prompt], timeout=60).answers[prompt]
            assert answer.text == " ".join(f"word{i}" for i in range(60))
        finally:
            app.terminate()


def test_after_a_crash_the_next_start_finishes_the_answer_before_anyone_asks(
    tmp_path: Path,
) -> None:
    """The embedded agents started with the app's first request: after a crash, an answer
    cut short stayed unfinished until a page (or any client) came back. `flask run` starts
    them as soon as it listens."""
    reply = " ".join(f"word{i}" for i in range(60))
    with FakeAnthropic(reply=reply, tokens_per_second=20) as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url)
        try:
            client, cid, prompt = ask(f"{app.url}/v1/stream", "cut short by a crash",
                                      "a long answer, please")
            wait_until_streaming(client, cid)
            client.close()
            app.kill()

            app.start()  # and no request to it until the model has been asked again
            assert model.wait_for_requests(2, timeout=30), app.log_tail()
            client = StreamsClient(f"{app.url}/v1/stream")
            answer = wait_for_answers(client, cid, [prompt], timeout=60).answers[prompt]
            assert answer.text == reply
        finally:
            app.terminate()


def test_a_model_nothing_answers_for_is_reported_at_start(tmp_path: Path) -> None:
    """It was said only in the first answer, as an error, after the first prompt."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        model_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    app = start_chat_app(tmp_path / "data", model_url=model_url)
    try:
        says = f"Could not connect to the AI model at {model_url}. Answers will fail"
        wait_until(lambda: says in app.log_since_start(), timeout=30,
                   what=f"{says!r} in the log")
    finally:
        app.terminate()


def test_the_embedded_supervisor_names_its_settings_as_the_app_has_them(
    tmp_path: Path,
) -> None:
    """A subscription with another lease than the agents': the advice named a flag `flask
    run` does not have. It names the app's environment variable."""
    with FakeAnthropic() as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url)
        try:
            client = StreamsClient(f"{app.url}/v1/stream")
            chat = ChatClient(client, lease_ttl_ms=layout.DEFAULT_LEASE_TTL_MS + 1000)
            cid = chat.start_conversation("another lease")
            wait_for_answers(client, cid, [chat.send_prompt(cid, "Answered anyway?")])
            says = ("not this supervisor's 30000 (CHAT_AGENT_LEASE_TTL_MS): the client that"
                    " creates a conversation sets it")
            wait_until(lambda: says in app.log_since_start(), timeout=10,
                       what=f"{says!r} in the log")
        finally:
            app.terminate()


def test_a_second_ctrl_c_stops_flask_run_at_once_without_a_traceback(tmp_path: Path) -> None:
    """A Ctrl+C in the middle of the exit (while the agents stopped, or in any other exit
    callback) raised KeyboardInterrupt there and printed a traceback. It now cuts the wait
    for the agents short. Here their streams server does not answer (stopped with SIGSTOP),
    so that the agents' stop waits for it, and the second Ctrl+C lands in that wait."""
    reply = " ".join(f"word{i}" for i in range(400))
    with FakeAnthropic(reply=reply, tokens_per_second=20) as model:
        server = start_streams_server(tmp_path / "streams")
        app = start_chat_app(tmp_path / "app", model_url=model.url, interruptible=True,
                             config={"AGENT_STREAMS_URL": f"{server.url}/v1/stream"})
        try:
            client, cid, _ = ask(f"{server.url}/v1/stream", "stopped twice",
                                 "a long answer, please")
            wait_until_streaming(client, cid)
            server.send_signal(signal.SIGSTOP)
            app.send_signal(signal.SIGINT)
            wait_until(lambda: "stopping the embedded agents" in app.log_since_start(),
                       timeout=20, what="the agents' stop")
            started = time.monotonic()
            app.send_signal(signal.SIGINT)
            code = app.wait(timeout=20)
            elapsed = time.monotonic() - started
        finally:
            server.send_signal(signal.SIGCONT)
            app.terminate()
            server.terminate()
    log = app.log_since_start()
    assert code == 0, app.log_tail()
    assert "Traceback" not in log, app.log_tail()
    assert "stopped without waiting for the embedded agents" in log, app.log_tail()
    assert elapsed < 2, f"the second Ctrl+C took {elapsed:.1f} s"


def test_an_answer_stopped_by_ctrl_c_again_and_again_is_still_finished(tmp_path: Path) -> None:
    """Each Ctrl+C in the middle of the same answer counted as an agent dying in it: after
    the fourth, the next start gave up on the answer ("cut off 4 times") instead of
    finishing it. A clean stop is recorded in the agents' file and not counted."""
    reply = " ".join(f"word{i}" for i in range(60))
    with FakeAnthropic(reply=reply, tokens_per_second=20) as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url, interruptible=True)
        try:
            client, cid, prompt = ask(f"{app.url}/v1/stream", "stopped again and again",
                                      "a long answer, please")
            for attempt in range(schema.MAX_ANSWER_ATTEMPTS + 1):
                wait_for_answers(client, cid, [prompt], timeout=30,
                                 until=mid_answer(prompt, attempt))
                app.send_signal(signal.SIGINT)
                assert app.wait(timeout=20) == 0, app.log_tail()
                app.start()
                client = StreamsClient(f"{app.url}/v1/stream")
            answer = wait_for_answers(client, cid, [prompt], timeout=60).answers[prompt]
        finally:
            app.terminate()
    assert answer.terminal["type"] == "done", answer
    assert answer.text == reply
    assert answer.attempt == schema.MAX_ANSWER_ATTEMPTS + 1


def test_with_its_own_streams_in_memory_the_agents_of_another_server_still_keep_their_offsets(
        tmp_path: Path) -> None:
    """`CHAT_STREAMS_MEMORY` is about the app's own streams: it also kept the agents'
    offsets in memory when they used another, durable server (so each Ctrl+C counted
    among an answer's interruptions, and each start re-read every conversation)."""
    with FakeAnthropic(reply="kept", tokens_per_second=0) as model:
        server = start_streams_server(tmp_path / "streams")
        app = start_chat_app(tmp_path / "app", model_url=model.url, config={
            "STREAMS_MEMORY": "true", "AGENT_STREAMS_URL": f"{server.url}/v1/stream"})
        try:
            client, cid, prompt = ask(f"{server.url}/v1/stream", "offsets kept", "hello")
            assert wait_for_answers(client, cid, [prompt], timeout=30).answers[prompt].text == "kept"
            prompts_tail = client.head(layout.prompts_path(cid)).next_offset
            app.send_signal(signal.SIGTERM)
            assert app.wait(timeout=20) == 0, app.log_tail()
        finally:
            app.terminate()
            server.terminate()
    offsets = OffsetsStore(str(tmp_path / "app" / "agents"))
    try:
        assert offsets.get(cid) == prompts_tail
    finally:
        offsets.close()


def test_the_first_requests_host_header_does_not_choose_where_the_agents_connect(
    tmp_path: Path,
) -> None:
    """The embedded supervisor starts with the first request. It used to take its streams URL
    from that request's Host header: whoever sent it chose where the agents connected, with
    the streams token, and no prompt was answered until a restart."""
    trap = socket.create_server(("127.0.0.1", 0))
    trap.setblocking(False)
    trap_port = trap.getsockname()[1]
    with trap, FakeAnthropic(reply="Answered by the app's own agents.") as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url)
        try:
            page = requests.get(f"{app.url}/", headers={"Host": f"127.0.0.1:{trap_port}"},
                                timeout=10)
            assert page.status_code == 200
            client, cid, prompt = ask(f"{app.url}/v1/stream", "after a forged Host", "hello?")
            answer = wait_for_answers(client, cid, [prompt]).answers[prompt]
            assert answer.text == "Answered by the app's own agents."
        finally:
            app.terminate()
        with pytest.raises(BlockingIOError):  # nobody connected to the address it named
            trap.accept()


def test_a_restart_releases_only_its_own_earlier_runs_leases(tmp_path: Path) -> None:
    """Another supervisor's lease survives this app's restart, even one named like an
    embedded supervisor of this host (a second chat app whose agents use this app's
    streams): releasing by name prefix used to end it, restarting its answer."""
    with FakeAnthropic() as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url)
        try:
            root = f"{app.url}/v1/stream"
            http = requests.Session()
            assert http.put(f"{root}/wake/other", headers={"Content-Type": "application/json"},
                            timeout=10).status_code == 201
            assert http.put(f"{root}/__ds/subscriptions/other", timeout=10, json={
                "type": "pull-wake", "pattern": "jobs/*", "wake_stream": "wake/other",
                "lease_ttl_ms": 600_000}).status_code == 201
            assert http.put(f"{root}/jobs/a", headers={"Content-Type": "application/json"},
                            timeout=10).status_code == 201
            assert http.post(f"{root}/jobs/a", json={"n": 1}, timeout=10).status_code == 204
            other = f"embedded-{socket.gethostname()}-424242"
            claim = http.post(f"{root}/__ds/subscriptions/other/claim", json={"worker": other},
                              timeout=10)
            assert claim.status_code == 200, claim.text

            app.kill()
            app.start()
            http = requests.Session()
            assert http.get(f"{app.url}/", timeout=10).status_code == 200  # starts its agents
            # (Logged after the release; the log reaches its file a moment later.)
            wait_until(lambda: "starting the embedded supervisor" in app.log_since_start(),
                       timeout=10, what="the embedded supervisor's start")
            state = http.get(f"{root}/__ds/subscriptions/other", timeout=10).json()
            assert state["holder"] == other
        finally:
            app.terminate()


def test_a_record_of_this_run_that_cannot_be_written_only_costs_a_warning(
    tmp_path: Path,
) -> None:
    """On a full disk writing it logged a traceback and left an empty temporary file."""
    record = tmp_path / "data" / "agents" / "embedded-worker"
    (record / "in the way").mkdir(parents=True)  # no file can replace it
    with FakeAnthropic(reply="Answered all the same.") as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url)
        try:
            client, cid, prompt = ask(f"{app.url}/v1/stream", "with no record of this run",
                                      "answered?")
            answer = wait_for_answers(client, cid, [prompt], timeout=30).answers[prompt]
            assert answer.text == "Answered all the same."
            log = app.log_since_start()
            assert "could not record this run's worker name" in log, app.log_tail()
            assert "Traceback" not in log, app.log_tail()
            assert not record.with_name("embedded-worker.tmp").exists()
        finally:
            app.terminate()


def test_an_unreadable_record_of_the_earlier_run_only_costs_a_warning(tmp_path: Path) -> None:
    record = tmp_path / "data" / "agents" / "embedded-worker"
    record.parent.mkdir(parents=True)
    record.write_bytes(b"\xff\xfe not text \x00")
    with FakeAnthropic() as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url)
        try:
            assert requests.get(f"{app.url}/", timeout=10).status_code == 200
            client, cid, prompt = ask(f"{app.url}/v1/stream", "after a damaged record",
                                      "still answered?")
            wait_for_answers(client, cid, [prompt], timeout=30)
            log = app.log_since_start()
            assert "could not read" in log and "Traceback" not in log, app.log_tail()
            assert record.read_text().startswith("embedded-")  # this run's name, for the next
        finally:
            app.terminate()


def plain_log(app: ServerProcess) -> str:
    """The log since the last start, without Werkzeug's colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", app.log_since_start())


@pytest.mark.parametrize("every_request", [False, True], ids=["default", "all-logged"])
def test_the_access_log_leaves_out_the_streams_requests_that_succeed(
        tmp_path: Path, every_request: bool) -> None:
    """An answer wrote a line per token to `flask run`'s terminal (6,503 of 6,764 lines in a
    reviewer's session), and the warnings that matter scrolled away."""
    with FakeAnthropic(reply="one two three four five", tokens_per_second=50) as model:
        app = start_chat_app(tmp_path / "data", model_url=model.url,
                             config={"LOG_STREAM_REQUESTS": str(every_request).lower()})
        try:
            client, cid, prompt = ask(f"{app.url}/v1/stream", "logged", "five words, please")
            wait_for_answers(client, cid, [prompt], timeout=30)
            assert requests.get(f"{app.url}/", timeout=10).status_code == 200
            missing = f"{app.url}/v1/stream/no/such/stream"
            assert requests.get(missing, timeout=10).status_code == 404
            wait_until(lambda: '"GET /v1/stream/no/such/stream HTTP/1.1" 404' in plain_log(app),
                       timeout=10, what="the 404 in the access log")
            log = plain_log(app)
            assert '"GET / HTTP/1.1" 200' in log  # the pages' requests are still there
            appends = re.findall(rf'"POST /v1/stream/conversations/{cid}/responses HTTP/1.1" 20',
                                 log)
            assert bool(appends) == every_request, log[-2000:]
        finally:
            app.terminate()
