"""The commands as a user runs them: how they start, and how they refuse to.

Both gevent commands hand sockets and threads to gevent before anything could have imported
them: gevent warns (``MonkeyPatchWarning``) when ``ssl`` was imported before its patching, and
those modules then keep the blocking originals. Importing either package must not pull them in.

A command that cannot start (a damaged database, a busy port) says why in one line and exits
with status 1, where each used to print a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anthropic
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask

from agent_actors.cli import build_parser, check_args
from agent_actors.validation import HTTP_URL
from streams_server.subscriptions.keys import SIGNING_KEY_FILE, TOKEN_KEY_FILE
from tests.support import REPO_ROOT, start_streams_server
from tests.support.processes import free_port
from agent_actors import StreamsClient
from tests.support.agents import ChatClient, wait_for_answers, wait_until
from tests.fake_anthropic import command_fake
from tests.support.webapp import start_chat_app
from webui import create_app
from webui.config import load_config

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("command", [["agent_actors", "supervisor"], ["streams_server"]])
def test_the_command_patches_before_ssl_is_imported(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert "MonkeyPatchWarning" not in done.stderr, done.stderr


def _not_a_database(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an SQLite database\n" * 200)
    return path


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=45, cwd=REPO_ROOT,
                          env=env)


def _assert_refused_clearly(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """Exit status 1 and a one-line reason, not a traceback."""
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    for phrase in phrases:
        assert phrase in done.stderr, done.stderr[-2000:]


def test_the_streams_server_refuses_a_damaged_database_clearly(tmp_path: Path) -> None:
    _not_a_database(tmp_path / "streams.sqlite3")
    done = _run([sys.executable, "-m", "streams_server", "--port", "0",
                 "--data-dir", str(tmp_path)])
    _assert_refused_clearly(done, f"cannot open the streams data directory {str(tmp_path)!r}",
                            "file is not a database")


@pytest.mark.parametrize("content", [
    b"not a key\n",
    # A valid PEM key, of another type than the Ed25519 one the server writes.
    ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()),
], ids=["garbage", "wrong-type"])
def test_the_streams_server_refuses_a_damaged_key_file_clearly(tmp_path: Path,
                                                                content: bytes) -> None:
    (tmp_path / SIGNING_KEY_FILE).write_bytes(content)
    done = _run([sys.executable, "-m", "streams_server", "--port", "0",
                 "--data-dir", str(tmp_path)])
    _assert_refused_clearly(done, "cannot open the streams data directory", SIGNING_KEY_FILE)


@pytest.mark.parametrize("content", [b"garbage\n", b""], ids=["garbage", "empty"])
def test_the_streams_server_refuses_a_damaged_token_key_clearly(tmp_path: Path,
                                                                content: bytes) -> None:
    """It was taken as it was: an empty file made lease tokens signed with an empty key."""
    (tmp_path / TOKEN_KEY_FILE).write_bytes(content)
    done = _run([sys.executable, "-m", "streams_server", "--port", "0",
                 "--data-dir", str(tmp_path)])
    _assert_refused_clearly(done, "cannot open the streams data directory", TOKEN_KEY_FILE,
                            "not a key of 32")


def test_the_streams_server_refuses_a_data_dir_that_is_a_file_clearly(tmp_path: Path) -> None:
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    done = _run([sys.executable, "-m", "streams_server", "--port", "0",
                 "--data-dir", str(a_file)])
    _assert_refused_clearly(done, "cannot open the streams data directory",
                            "it is a file, not a directory")  # was "[Errno 17] File exists"


def test_the_streams_server_on_ipv6_announces_a_url_that_works(tmp_path: Path) -> None:
    """It said `http://::1:PORT`, which is not a URL: the brackets were missing."""
    server = start_streams_server(tmp_path / "data", host="::1", port=0)
    try:
        assert server.url.startswith("http://[::1]:"), server.url
        assert requests.put(f"{server.url}/v1/stream/six", timeout=10).status_code == 201
    finally:
        server.terminate()


def test_an_empty_auth_token_is_said_to_leave_the_server_open(tmp_path: Path) -> None:
    """`--auth-token "$TOKEN"` with TOKEN unset turned authentication off without a word."""
    server = start_streams_server(tmp_path / "data", extra_args=["--auth-token", ""])
    try:
        assert requests.put(f"{server.url}/v1/stream/open", timeout=10).status_code == 201
        assert ("--auth-token (or STREAMS_AUTH_TOKEN) is empty: no token is required"
                in server.log_since_start())
    finally:
        server.terminate()


def test_the_streams_server_refuses_a_busy_port_clearly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run([sys.executable, "-m", "streams_server", "--port", str(port),
                     "--data-dir", str(tmp_path)])
    _assert_refused_clearly(done, f"cannot listen on 127.0.0.1:{port}")


def test_the_streams_server_says_an_address_it_cannot_look_up_in_words(tmp_path: Path) -> None:
    """gevent adds the address to a failed name lookup's message, which read like a leaked
    Python value: `... Name or service not known: ('999.1.1.1', 4555)`."""
    done = _run([sys.executable, "-m", "streams_server", "--host", "999.1.1.1", "--port", "4555",
                 "--data-dir", str(tmp_path)])
    _assert_refused_clearly(done, "cannot listen on 999.1.1.1:4555: not an address of this"
                                  " machine, nor a name it can look up")
    assert "('999.1.1.1'" not in done.stderr


def test_flask_run_on_a_port_in_use_starts_nothing_against_the_server_there(
        tmp_path: Path) -> None:
    """It took the other server's listening for its own: its agents started against that
    server, and wrote their worker record into this data directory, as the bind failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
    env["CHAT_DATA_DIR"] = str(tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run([sys.executable, "-m", "flask", "run", "--port", str(port)], env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Address already in use" in done.stderr, done.stderr[-2000:]
    assert "embedded supervisor" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "data" / "agents" / "embedded-worker").exists()


def test_the_supervisor_refuses_a_damaged_offsets_file_clearly(tmp_path: Path) -> None:
    _not_a_database(tmp_path / "agents.sqlite3")
    done = _run([sys.executable, "-m", "agent_actors", "supervisor", "--model", "demo",
                 "--data-dir", str(tmp_path), "--streams-url", "http://127.0.0.1:9/v1/stream"])
    _assert_refused_clearly(done, "cannot open the agents' offsets file",
                            "file is not a database")


def test_the_supervisor_refuses_a_data_dir_that_is_a_file_clearly(tmp_path: Path) -> None:
    """It said "[Errno 17] File exists", which reads as the opposite of the problem."""
    (tmp_path / "afile").write_text("not a directory")
    done = _run([sys.executable, "-m", "agent_actors", "supervisor", "--model", "demo",
                 "--data-dir", str(tmp_path / "afile"),
                 "--streams-url", "http://127.0.0.1:9/v1/stream"])
    _assert_refused_clearly(done, "it is a file, not a directory")


def test_the_streams_server_keeps_its_streams_where_flask_run_does_by_default(
        tmp_path: Path) -> None:
    """Its default was ./data, beside the chat's ./data/streams: run from the same folder
    without --data-dir, it made a second, empty database and showed none of the chat's."""
    server = subprocess.Popen([sys.executable, "-m", "streams_server", "--port", "0"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        database = tmp_path / "data" / "streams" / "streams.sqlite3"
        wait_until(database.exists, timeout=30, what=f"{database}")
        assert not (tmp_path / "data" / "streams.sqlite3").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_streams_server_says_where_the_database_of_its_earlier_default_went_unused(
        tmp_path: Path) -> None:
    """Started without --data-dir after the default moved, it showed an empty database
    without a word about the earlier one."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "streams.sqlite3").write_bytes(b"")
    server = subprocess.Popen([sys.executable, "-m", "streams_server", "--port", "0"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        assert server.stdout is not None
        said = ""
        while "listening on" not in said:
            line = server.stdout.readline()
            assert line, said
            said += line
        assert ("./data/streams.sqlite3 is the database of an earlier default data directory"
                " and is not used") in said, said
        assert "--data-dir ./data" in said, said
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_second_server_on_a_data_dir_in_use_is_refused_until_the_first_is_gone(
        tmp_path: Path) -> None:
    """Two processes on one database each kept their own view of the streams: a stream
    created through one was missing in the other, and `flask run` on the directory of a
    running server released that server's agents' leases as "left by an earlier run"."""
    data = tmp_path / "data"
    first = start_streams_server(data / "streams")
    try:
        done = _run([sys.executable, "-m", "streams_server", "--port", "0",
                     "--data-dir", str(data / "streams")])
        _assert_refused_clearly(done, "cannot open the streams data directory",
                                f"another server process (pid {first.pid}) is using it")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
        env["CHAT_DATA_DIR"] = str(data)
        done = _run([sys.executable, "-m", "flask", "run", "--port", "0"], env=env)
        _assert_refused_clearly(done, "Error: cannot open the streams data directory",
                                "is using it")
        first.kill()  # the kernel drops the lock of a dead process: nothing stale is left
        second = start_streams_server(data / "streams")
        second.terminate()
    finally:
        first.terminate()


@pytest.mark.parametrize("debug", [False, True], ids=["flask-run", "flask-run-debug"])
def test_flask_run_holds_its_data_dir_as_soon_as_it_serves(tmp_path: Path, debug: bool) -> None:
    """A reloader's watcher builds the app too and never serves, so the app held its
    directory from its first request; until then another server could start on it. The
    process `flask run` serves from holds it from the start, before any request."""
    app = start_chat_app(tmp_path / "data", model_url="http://127.0.0.1:9", debug=debug)
    try:
        # With the reloader, "Running on" is printed before the serving process starts.
        wait_until(lambda: "starting the embedded supervisor" in app.log_since_start(),
                   timeout=30, what="the serving process to start its agents")
        done = _run([sys.executable, "-m", "streams_server", "--port", "0",
                     "--data-dir", str(tmp_path / "data" / "streams")])
        _assert_refused_clearly(done, "another server process (pid", "is using it")
    finally:
        app.terminate()
    second = start_streams_server(tmp_path / "data" / "streams")  # free once it stopped
    second.terminate()


def test_an_app_that_waited_for_its_data_dir_serves_what_is_there_when_it_gets_it(
        tmp_path: Path) -> None:
    """Built while the directory was free (by a server other than `flask run`, which holds
    it from the start), the app read the streams then; another server wrote to the
    directory before the app's first request, and the app, once it held the directory,
    served its stale view: a stream written meanwhile was missing."""
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "EMBEDDED_SUPERVISOR": False})
    try:
        other = start_streams_server(tmp_path / "data" / "streams")  # before any request
        requests.put(f"{other.url}/v1/stream/meanwhile", data="hello", timeout=10,
                     headers={"Content-Type": "text/plain"}).raise_for_status()
        refused = app.test_client().get("/v1/stream/meanwhile")
        assert refused.status_code == 503 and "is using it" in refused.text
        # In JSON, for its clients:
        assert json.loads(refused.text)["error"]["code"] == "DATA_DIRECTORY_IN_USE"
        other.terminate()
        read = app.test_client().get("/v1/stream/meanwhile?offset=-1")
        assert read.status_code == 200 and read.text == "hello", (read.status_code, read.text)
    finally:
        app.extensions["background_work"].stop()


def test_flask_runs_embedded_supervisor_names_the_apps_settings_in_its_advice(
        tmp_path: Path) -> None:
    """The advice named the supervisor command's flags (check --streams-url), which a
    person running `flask run` has no way to give: it names the environment variables."""
    port = free_port()
    wrong = f"http://127.0.0.1:{port}/not-streams"
    app = start_chat_app(tmp_path / "data", model_url="http://127.0.0.1:9", port=port,
                         config={"AGENT_STREAMS_URL": wrong})
    try:
        wait_until(lambda: f"no Durable Streams server answers at {wrong}"
                   in app.log_since_start(), timeout=20, what="the supervisor's advice")
        assert "check CHAT_AGENT_STREAMS_URL;" in app.log_since_start()
        assert "--streams-url" not in app.log_since_start()
    finally:
        app.terminate()


def test_flask_run_refuses_a_port_no_server_can_listen_on(tmp_path: Path) -> None:
    """Werkzeug took 99999 as port 34463, and served there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
    env["CHAT_DATA_DIR"] = str(tmp_path)
    done = _run([sys.executable, "-m", "flask", "run", "--port", "99999"], env=env)
    _assert_refused_clearly(done, "Error: --port must be at least 0 and at most 65535, not 99999")


def test_flask_run_refuses_a_host_no_lookup_can_take(tmp_path: Path) -> None:
    """Werkzeug's start failed with a traceback (UnicodeError from the idna codec), or said
    "Name or service not known" without naming what it had looked up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
    env["CHAT_DATA_DIR"] = str(tmp_path)
    done = _run([sys.executable, "-m", "flask", "run", "--host", "h\udcff"], env=env)
    _assert_refused_clearly(done, "Error: --host must name an address or a host name")
    done = _run([sys.executable, "-m", "flask", "run", "--host", "no-such-host.invalid"], env=env)
    _assert_refused_clearly(done, "Error: --host 'no-such-host.invalid' is neither an address"
                                  " nor a name this machine can look up")


@pytest.mark.parametrize("damaged", ["streams/streams.sqlite3", "agents/agents.sqlite3"])
def test_flask_run_refuses_a_damaged_data_dir_clearly(tmp_path: Path, damaged: str) -> None:
    """Before: a traceback from the app factory; or, for the agents' file, a chat that
    started, answered its first request with a 500, and then never answered a prompt."""
    _not_a_database(tmp_path / damaged)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
    env["CHAT_DATA_DIR"] = str(tmp_path)
    done = _run([sys.executable, "-m", "flask", "run", "--port", "0"], env=env)
    _assert_refused_clearly(done, "Error: cannot open", "file is not a database")


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("MAX_BODY_MIB", "abc",
     "CHAT_MAX_BODY_MIB must be a finite number greater than 0 and at most 900, not 'abc'"),
    ("MAX_BODY_MIB", "Infinity", "CHAT_MAX_BODY_MIB must be a finite number greater than 0"),
    ("MAX_BODY_MIB", "1000",  # past SQLite's largest row: a 503 for such an append
     "CHAT_MAX_BODY_MIB must be a finite number greater than 0 and at most 900, not 1000"),
    ("LONG_POLL_TIMEOUT_S", "NaN",
     "CHAT_LONG_POLL_TIMEOUT_S must be a finite number greater than 0 and at most 3600, not nan"),
    ("SSE_KEEPALIVE_S", "1000000",  # the page's timers would overflow and fire at once
     "CHAT_SSE_KEEPALIVE_S must be a finite number at least 0.1 and at most 3600"),
    ("SSE_KEEPALIVE_S", "0.000001",  # 726 KB of keep-alives in 2 s to one reader
     "CHAT_SSE_KEEPALIVE_S must be a finite number at least 0.1 and at most 3600"),
    # Past about 9e9 s a thread's timed wait overflows: every long-poll failed with a 500,
    # and a coalescing window lost the answer's text.
    ("LONG_POLL_TIMEOUT_S", "1e10",
     "CHAT_LONG_POLL_TIMEOUT_S must be a finite number greater than 0 and at most 3600"),
    ("AGENT_COALESCE_MS", "1e13",
     "CHAT_AGENT_COALESCE_MS must be a finite number at least 0 and at most 10000"),
    # Taken, a token no header can carry locked every client and agent out.
    ("STREAMS_AUTH_TOKEN", "tok\n",
     "CHAT_STREAMS_AUTH_TOKEN must be visible ASCII characters without spaces"),
    ("STREAMS_AUTH_TOKEN", "t\u00f6k\u20acn",
     "CHAT_STREAMS_AUTH_TOKEN must be visible ASCII characters without spaces"),
    ("DATA_DIR", "", "CHAT_DATA_DIR must be a directory, not ''"),  # it said "text"
    # No such user: it made a directory named "~nosuchuser" where `flask run` started.
    ("DATA_DIR", "~nosuchuser/chat",
     "CHAT_DATA_DIR starts with '~nosuchuser', which names no home directory on this machine"),
    ("DATA_DIR__X", "1",  # Flask's syntax for a key inside a setting: a traceback
     "CHAT_DATA_DIR__X is not a setting: CHAT_DATA_DIR has no parts to set"),
    ("AGENT_STREAMS_URL", "localhost:4437/v1/stream",
     f"CHAT_AGENT_STREAMS_URL must be {HTTP_URL} (or unset)"),
    ("AGENT_STREAMS_URL", "http://a..b:4437/v1/stream",  # a traceback, and no answers
     f"CHAT_AGENT_STREAMS_URL must be {HTTP_URL} (or unset)"),
    ("STREAMS_BROWSER_URL", "/ x", "CHAT_STREAMS_BROWSER_URL must be a path starting with /"),
    ("AGENT_MAX_AGENTS", "-5", "CHAT_AGENT_MAX_AGENTS must be a whole number at least 1"),
    ("AGENT_LEASE_TTL_MS", "0", "CHAT_AGENT_LEASE_TTL_MS must be a whole number at least 1000"),
    ("EMBEDDED_SUPERVISOR", "yes", "CHAT_EMBEDDED_SUPERVISOR must be true or false"),
    # Taken, and every answer failed: the id goes into each request to the model.
    ("AGENT_MODEL", "claude bad model", "CHAT_AGENT_MODEL must be a model id"),
    # These three were taken: the first failed as the supervisor started, on the first
    # request (a 500, then a chat that never answered), the others at every prompt.
    ("AGENT_STREAMS_URL", "http://127.0.0.1:notaport/v1/stream",
     f"CHAT_AGENT_STREAMS_URL must be {HTTP_URL} (or unset)"),
    ("AGENT_WAKE_STREAM", "/agents/wake", "CHAT_AGENT_WAKE_STREAM must be a stream path"),
    ("STREAMS_BROWSER_URL", "localhost:4437/v1/stream",
     "CHAT_STREAMS_BROWSER_URL must be a path starting with / (ASCII, without spaces) or an"
     " http:// or https:// URL"),
])
def test_flask_run_refuses_a_setting_out_of_range_clearly(tmp_path: Path, setting: str,
                                                          value: str, says: str) -> None:
    """Before: a traceback for a non-number; other values were taken, and failed later
    (no agent could take a lease of 0 ms) or never (an agent limit of -5)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
    env.update({"CHAT_DATA_DIR": str(tmp_path), f"CHAT_{setting}": value})
    done = _run([sys.executable, "-m", "flask", "run", "--port", "0"], env=env)
    _assert_refused_clearly(done, f"Error: {says}")


def _assert_both_commands_refuse(env: dict[str, str], tmp_path: Path, says: str) -> None:
    """`flask run` and the supervisor, started with `env`, each refuse it saying `says`."""
    done = _run([sys.executable, "-m", "flask", "run", "--port", "0"], env=env)
    _assert_refused_clearly(done, f"Error: {says}")
    done = _run([sys.executable, "-m", "agent_actors", "supervisor", "--data-dir",
                 str(tmp_path / "agents")], env=env)
    assert done.returncode == 2 and says in done.stderr, done.stderr[-2000:]


def test_an_api_key_no_header_can_carry_is_refused_at_start(tmp_path: Path) -> None:
    """It was taken, and every answer then failed as "Could not connect to the AI model"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
    env.update({"CHAT_DATA_DIR": str(tmp_path), "ANTHROPIC_API_KEY": "sk-ant k\u20acy"})
    _assert_both_commands_refuse(
        env, tmp_path, "ANTHROPIC_API_KEY must be visible ASCII characters without spaces")


@pytest.mark.parametrize("model", [" ", "claude bad model", "claude-\u00e9"])
def test_a_model_id_no_request_can_carry_is_refused_at_start(tmp_path: Path, model: str) -> None:
    """It was taken, and every answer then failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
    env.update({"CHAT_DATA_DIR": str(tmp_path), "ANTHROPIC_API_KEY": "sk-test",
                "ANTHROPIC_MODEL": model})
    _assert_both_commands_refuse(env, tmp_path, "ANTHROPIC_MODEL must be a model id: visible"
                                 " ASCII characters without spaces")
    done = _run([sys.executable, "-m", "agent_actors", "supervisor", "--data-dir",
                 str(tmp_path / "agents"), "--model", model], env=env)
    assert done.returncode == 2 and "--model must be a model id" in done.stderr, done.stderr[-2000:]


# The last three were taken; the supervisor then died with a traceback (a path byte that is
# not UTF-8), and `flask run` answered its own first request with a 500 and started no agents.
@pytest.mark.parametrize("url", ["http://127.0.0.1:notaport", "not a url", "ftp://host",
                                 "http://127.0.0.1:9/\udcff", "http://h\udcff:9", "http://a..b:9"])
def test_a_model_url_that_is_not_one_is_refused_at_start(tmp_path: Path, url: str) -> None:
    """`flask run` started with it and its first request failed (a 500, then no supervisor);
    the supervisor command printed a traceback, or asked it at every prompt and failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_", "FLASK_"))}
    env.update({"CHAT_DATA_DIR": str(tmp_path), "ANTHROPIC_API_KEY": "sk-test",
                "ANTHROPIC_BASE_URL": url})
    done = _run([sys.executable, "-m", "flask", "run", "--port", "0"], env=env)
    _assert_refused_clearly(done, f"Error: ANTHROPIC_BASE_URL must be {HTTP_URL}")
    done = _run([sys.executable, "-m", "agent_actors", "supervisor", "--data-dir",
                 str(tmp_path / "agents")], env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    # One line: the usage of the flags (15 lines) said nothing of an environment variable.
    assert done.stderr.strip().splitlines() == [
        f"python -m agent_actors supervisor: error: ANTHROPIC_BASE_URL must be {HTTP_URL},"
        f" not {url!r}"]


@pytest.mark.parametrize(("argv", "says"), [
    (["streams_server", "--port", "70000"], "--port: must be at least 0 and at most 65535"),
    (["streams_server", "--long-poll-timeout", "0"], "--long-poll-timeout: must be greater than 0"),
    (["streams_server", "--log-level", "loud"], "--log-level: invalid choice"),
    (["streams_server", "--long-poll-timeout", "nan"],
     "--long-poll-timeout: must be a finite number, not nan"),
    (["streams_server", "--max-body-mib", "inf"], "--max-body-mib: must be a finite number"),
    # Past SQLite's largest row, such an append failed as "commits are failing" (503).
    (["streams_server", "--max-body-mib", "1000"],
     "--max-body-mib: must be greater than 0 and at most 900, not 1000"),
    (["streams_server", "--max-chunk-kib", "2000000"],
     "--max-chunk-kib: must be at least 1 and at most 921600, not 2000000"),
    # As flask run's: past an hour no proxy waits, and the timers of live reads overflow.
    (["streams_server", "--long-poll-timeout", "99999"],
     "--long-poll-timeout: must be greater than 0 and at most 3600, not 99999"),
    (["streams_server", "--sse-max-duration", "1e300"],
     "--sse-max-duration: must be greater than 0 and at most 3600, not 1e300"),
    (["streams_server", "--sse-keepalive", "0"],
     "--sse-keepalive: must be at least 0.1 and at most 3600, not 0"),
    (["streams_server", "--data-dir", ""], "--data-dir must name a directory"),
    # `--host "$HOST"` with HOST unset: it listened on every interface, with only a warning.
    (["streams_server", "--host", ""],
     "--host must name an address (0.0.0.0 or :: for every network interface)"),
    (["streams_server", "--host", " "],
     "--host must name an address (0.0.0.0 or :: for every network interface)"),
    # A traceback each ("encoding of hostname failed"): not UTF-8, and a label too long.
    (["streams_server", "--host", "h\udcff"],
     "--host must name an address (0.0.0.0 or :: for every network interface)"),
    (["streams_server", "--host", "\u00e9" * 70],
     "--host must name an address (0.0.0.0 or :: for every network interface)"),
    # Taken, the directory was ignored without a word, even one that cannot be.
    (["streams_server", "--memory", "--data-dir", "/etc/passwd"],
     "--memory keeps nothing on disk: leave out --data-dir, or --memory"),
    (["agent_actors", "supervisor", "--data-dir", " "], "--data-dir must name a directory"),
    (["agent_actors", "supervisor", "--idle-timeout", "-1"],
     "--idle-timeout must be greater than 0 and at most 604800, not -1\n"),
    (["agent_actors", "supervisor", "--idle-timeout", "nan"],
     "--idle-timeout must be greater than 0 and at most 604800, not nan"),
    (["agent_actors", "supervisor", "--coalesce-ms", "inf"],
     "--coalesce-ms must be from 0 to 10000, not inf"),
    # Taken, these failed later: a window past about 9e9 s lost the answer's text in a
    # threaded process; a token no header can carry (or a worker name the server refuses
    # in a claim) left a supervisor running that never answered.
    (["agent_actors", "supervisor", "--coalesce-ms", "1e13"],
     "--coalesce-ms must be from 0 to 10000"),
    (["agent_actors", "supervisor", "--idle-timeout", "1e10"],
     "--idle-timeout must be greater than 0 and at most 604800"),
    (["agent_actors", "supervisor", "--auth-token", "s3cr\u20act"],
     "--auth-token (or STREAMS_AUTH_TOKEN) must be visible ASCII characters without spaces"),
    (["agent_actors", "supervisor", "--auth-token", "s3cret\n"],
     "--auth-token (or STREAMS_AUTH_TOKEN) must be visible ASCII characters without spaces"),
    (["agent_actors", "supervisor", "--worker-name", "w" * 257],
     "--worker-name must be 1 to 256 printable characters"),
    (["agent_actors", "supervisor", "--streams-url", "http://127.0.0.1:4437/v1/stream?x=1"],
     "--streams-url must be an http:// or https:// URL"),
    (["streams_server", "--auth-token", "abc "],  # 401 to every client, "abc" included
     "--auth-token (or STREAMS_AUTH_TOKEN) must be visible ASCII characters without spaces"),
    (["agent_actors", "supervisor", "--max-agents", "0"], "--max-agents must be at least 1"),
    (["agent_actors", "supervisor", "--lease-ttl-ms", "10"],
     "--lease-ttl-ms must be from 1000 to 600000"),
    (["agent_actors", "supervisor", "--streams-url", "localhost:4437"],
     "--streams-url must be an http:// or https:// URL"),
    (["agent_actors", "supervisor", "--streams-url", "http://"],  # these two: tracebacks
     "--streams-url must be an http:// or https:// URL"),
    (["agent_actors", "supervisor", "--streams-url", "http://127.0.0.1:notaport/v1/stream"],
     "--streams-url must be an http:// or https:// URL"),
    # Taken, these three left a supervisor that logged a traceback and never answered.
    (["agent_actors", "supervisor", "--streams-url", "http://a..b:4437/v1/stream"],
     f"--streams-url must be {HTTP_URL}"),
    (["agent_actors", "supervisor", "--streams-url", "http://127.0.0.1:4437/v1/\u017estream"],
     f"--streams-url must be {HTTP_URL}"),
    (["agent_actors", "supervisor", "--streams-url", "http://127.0.0.1:4437/v1/\udcff"],
     f"--streams-url must be {HTTP_URL}"),
    # Taken, and the supervisor asked [::1] on port 80: what followed the bracket was dropped.
    (["agent_actors", "supervisor", "--streams-url", "http://[::1]4437/v1/stream"],
     f"--streams-url must be {HTTP_URL}"),
    (["agent_actors", "supervisor", "--wake-stream", ""],  # a traceback, then LoopExit
     "--wake-stream must be a stream path such as agents/wake"),
    (["agent_actors", "supervisor", "--wake-stream", "../x"],  # no answers, ever
     "--wake-stream must be a stream path such as agents/wake"),
    (["agent_actors", "supervisor", "--wake-stream", "__ds/wake"],  # the server's own paths
     "--wake-stream must be a stream path such as agents/wake"),
    # The benchmark: tracebacks, a full run for "--only ''", or (--out) a whole run's
    # figures lost at its very end.
    (["streams_server.bench", "--only", "a"], "--only: workload numbers, comma-separated"),
    (["streams_server.bench", "--only", ""], "--only: name at least one workload"),
    (["streams_server.bench", "--set", "seq_appends=abc"], "--set seq_appends: must be a number"),
    (["streams_server.bench", "--set", "chat_steps=1,x"],
     "--set chat_steps: must be whole numbers, comma-separated"),
    # A zero, negative or endless size: a division by zero hours into a run, or a wait for ever.
    (["streams_server.bench", "--set", "seq_appends=0"], "--set seq_appends: must be at least 1"),
    (["streams_server.bench", "--set", "writer_seconds=nan"],
     "--set writer_seconds: must be a number greater than 0"),
    (["streams_server.bench", "--set", "chat_tokens_per_second=0"],
     "--set chat_tokens_per_second: must be a number greater than 0"),
    (["streams_server.bench", "--set", "chat_steps=100,50"],
     "--set chat_steps: must be whole numbers of at least 1, in increasing order"),
    (["streams_server.bench", "--set", "chat_coalesce_ms=-5"],
     "--set chat_coalesce_ms: must be from 0 to 10000 ms"),
    (["streams_server.bench", "--servers", ""], "--servers: none"),
    (["streams_server.bench", "--out", "/no/such/dir/x.json"],
     "--out: there is no directory '/no/such/dir'"),
    (["streams_server.bench", "--out", "/proc/results.json"],  # a directory no file goes in
     "--out: cannot write '/proc/results.json'"),
    (["streams_server.bench", "--workdir", "/proc/bench-work"],
     "--workdir: cannot make '/proc/bench-work'"),
    (["streams_server.bench", "--long-poll-timeout", "-1"],
     "--long-poll-timeout: must be a number greater than 0"),
])
def test_a_command_refuses_an_option_out_of_range_as_a_usage_error(argv: list[str],
                                                                   says: str) -> None:
    done = _run([sys.executable, "-m", *argv])
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("usage: "), done.stderr[-2000:]  # as argparse's own are


def test_settings_left_empty_written_as_digits_or_zero_are_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Empty meant "the default" before the settings were checked, a token of digits is
    still a token (not the number JSON makes of it), 0 tokens/s is the demo's instant, and
    `~` in the data directory is the home directory."""
    for key in [k for k in os.environ if k.startswith("CHAT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CHAT_STREAMS_AUTH_TOKEN", "0123456")
    monkeypatch.setenv("CHAT_AGENT_MODEL", "")
    monkeypatch.setenv("CHAT_AGENT_STREAMS_URL", " ")
    monkeypatch.setenv("CHAT_DEMO_TOKENS_PER_SECOND", "0")
    # In quotes (or in a file of settings) the shell leaves `~` alone: it made ./~/chat.
    monkeypatch.setenv("CHAT_DATA_DIR", "~/chat")
    monkeypatch.setenv("HOME", "/home/someone")
    app = Flask("settings")
    load_config(app, None)
    assert app.config["DATA_DIR"] == "/home/someone/chat"
    assert app.config["STREAMS_AUTH_TOKEN"] == "0123456"
    assert app.config["AGENT_MODEL"] is None and app.config["AGENT_STREAMS_URL"] is None
    assert app.config["DEMO_TOKENS_PER_SECOND"] == 0

    # JSON's true and false, and Python's spelling: False was refused as not "true or false".
    for written, meant in [("False", False), ("TRUE", True), (" true ", True), ("false", False)]:
        monkeypatch.setenv("CHAT_EMBEDDED_SUPERVISOR", written)
        monkeypatch.setenv("CHAT_STREAMS_MEMORY", written)
        load_config(app, None)
        assert app.config["EMBEDDED_SUPERVISOR"] is meant, written
        assert app.config["STREAMS_MEMORY"] is meant, written

    parser = build_parser()
    args = parser.parse_args(["supervisor", "--demo-tokens-per-second", "0",
                              "--log-level", "critical"])
    check_args(parser, args)  # exits (SystemExit) if refused
    assert args.log_level == "CRITICAL"


def test_an_app_that_never_served_closes_the_agents_offsets_file_when_stopped(
    tmp_path: Path,
) -> None:
    def open_offsets_files() -> list[str]:
        fds = Path("/proc/self/fd")
        targets = [os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()]
        return [t for t in targets if "agents.sqlite3" in t and t.startswith(str(tmp_path))]

    app = create_app({"DATA_DIR": str(tmp_path)})
    assert open_offsets_files()  # opened at start, to refuse a damaged one at once
    app.extensions["background_work"].stop()
    assert open_offsets_files() == []


def test_an_app_built_outside_flask_run_leaves_ctrl_c_as_it_was(tmp_path: Path) -> None:
    """Only `flask run` takes Ctrl+C for its two-step stop: taken wherever the app was built
    (`flask shell`, another WSGI server, the tests), every Ctrl+C after a first one was
    swallowed for good. Elsewhere SIGTERM still stops the app as Ctrl+C does."""
    # The defaults a terminal gives (a background job, as CI runs, starts with SIGINT ignored).
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        app = create_app({"DATA_DIR": str(tmp_path), "EMBEDDED_SUPERVISOR": False})
        try:
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        finally:
            app.extensions["background_work"].stop()
    finally:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, sigterm)


def test_a_mistyped_setting_is_named_with_the_one_probably_meant(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    """It was ignored without a word, and the default silently applied."""
    for key in [k for k in os.environ if k.startswith("CHAT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CHAT_AGENT_MAXAGENTS", "5")
    monkeypatch.setenv("CHAT_SECRET_KEY", "a Flask setting, taken by Flask: not named")
    monkeypatch.setenv("CHAT_DATA_DIR", str(tmp_path))
    app = Flask(__name__)
    with caplog.at_level(logging.WARNING, logger="webui.config"):
        load_config(app, None)
    assert [r.getMessage() for r in caplog.records] == [
        "CHAT_AGENT_MAXAGENTS is not a setting of the chat and is ignored"
        " (did you mean CHAT_AGENT_MAX_AGENTS?)"]


@pytest.mark.parametrize(("sig", "says"), [
    (signal.SIGINT, "interrupted while starting"),
    (signal.SIGTERM, "stopped while starting"),
], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize("command", [
    ["agent_actors", "supervisor", "--streams-url", "http://127.0.0.1:9/v1/stream"],
    ["streams_server", "--port", "0"],
], ids=["supervisor", "streams-server"])
def test_ctrl_c_while_a_command_loads_stops_it_without_a_traceback(
        tmp_path: Path, command: list[str], sig: signal.Signals, says: str) -> None:
    """Loading the modules takes a second or more (seconds on a busy machine) before the
    command's own stop handler is in place: a Ctrl+C then printed a KeyboardInterrupt
    traceback, and a SIGTERM (a service manager's stop) ended it without a word. The signal
    is sent once gevent's C extension is loaded: the ``__main__`` module runs, and the heavy
    imports are still ahead."""
    process = subprocess.Popen([sys.executable, "-m", *command, "--data-dir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO_ROOT)
    maps = Path(f"/proc/{process.pid}/maps")
    try:
        while process.poll() is None and "gevent" not in maps.read_text():
            pass  # a busy wait: the window is a fraction of a second on a fast machine
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert "Traceback" not in stderr, stderr[-2000:]
    assert process.returncode == 128 + sig, (process.returncode, stderr[-2000:])
    assert says in stderr


def test_the_token_may_be_given_in_the_environment_out_of_sight_of_ps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token given as `--auth-token` shows in every user's `ps`: both commands also read
    `STREAMS_AUTH_TOKEN`."""
    server = start_streams_server(tmp_path / "data", env={**os.environ,
                                                          "STREAMS_AUTH_TOKEN": "s3cret"})
    try:
        url = f"{server.url}/v1/stream/guarded"
        assert requests.put(url, timeout=10).status_code == 401
        assert requests.put(url, headers={"Authorization": "Bearer s3cret"},
                            timeout=10).status_code == 201
    finally:
        server.terminate()
    monkeypatch.setenv("STREAMS_AUTH_TOKEN", "s3cret")
    assert build_parser().parse_args(["supervisor"]).auth_token == "s3cret"
    # Set but empty, it means no token to both commands: the supervisor refused to start.
    monkeypatch.setenv("STREAMS_AUTH_TOKEN", "")
    parser = build_parser()
    args = parser.parse_args(["supervisor"])
    check_args(parser, args)
    assert args.auth_token is None


def test_the_fake_anthropic_command_answers_the_chat_through_the_real_sdk(tmp_path: Path) -> None:
    """`python -m tests.fake_anthropic` (the README's way to run the SDK path offline) serves
    until stopped, and the chat's agents answer through it."""
    fake = subprocess.Popen([sys.executable, "-m", "tests.fake_anthropic", "--port", "0",
                             "--tokens-per-second", "0"], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    app = None
    try:
        assert fake.stdout is not None
        line = fake.stdout.readline()
        url = line.split(" on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:"), line
        app = start_chat_app(tmp_path, model_url=url)
        client = StreamsClient(f"{app.url}/v1/stream")
        chat = ChatClient(client, lease_ttl_ms=30_000)
        cid = chat.start_conversation("fake")
        prompt_id = chat.send_prompt(cid, "first line\nsecond line")
        answer = wait_for_answers(client, cid, [prompt_id], timeout=30).answers[prompt_id]
        assert answer.terminal["type"] == "done", answer.terminal
        assert "came through the real `anthropic` SDK" in answer.text, answer.text
        assert "> first line\n> second line" in answer.text, answer.text
    finally:
        try:
            if app is not None:
                app.terminate()
        finally:  # the fake goes whatever happened to the app (it was left running once)
            fake.send_signal(signal.SIGTERM)
            _, errors = fake.communicate(timeout=15)
    assert fake.returncode == 0, errors
    assert "Traceback" not in errors, errors


def test_the_fake_anthropic_command_keeps_no_request() -> None:
    """It kept every request's body for the tests' sake: left running beside the chat, it
    grew by the size of every conversation sent to it (448 MB in a 15-minute soak)."""
    with command_fake("127.0.0.1", 0, 0) as fake:
        client = anthropic.Anthropic(base_url=fake.url, api_key="any")
        with client.messages.stream(model="claude-fake-1", max_tokens=50,
                                    messages=[{"role": "user", "content": "x" * 10_000}]) as stream:
            assert "> " + "x" * 10_000 in stream.get_final_text()
        assert fake.requests == [] and fake.headers == []


def test_the_fake_anthropic_command_refuses_a_busy_port_clearly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run([sys.executable, "-m", "tests.fake_anthropic", "--port", str(port)])
    _assert_refused_clearly(done, f"cannot listen on 127.0.0.1:{port}")
