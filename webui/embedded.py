"""The background parts of the app, started once it serves and stopped at exit.

Under `flask run` they start as soon as its server listens; under any other server, with
the first request. Not in `create_app`, because Flask's reloader (`flask run --debug`)
builds the app in a watcher process that never serves: starting there would run a second
supervisor beside the real one. The embedded supervisor reaches the streams over HTTP,
through this app's own URL, exactly as a separate supervisor process would. Only its leases
are touched in-process, at the edges of a run: the leases of a killed earlier run at the
start, and its own at exit, when the server it would ask has usually stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import pykka
from flask import Flask

from agent_actors.agent import AgentSettings
from agent_actors.errors import ConfigurationError
from agent_actors.models.settings import model_from_settings, warn_if_unusable
from agent_actors.offsets_store import OffsetsStore
from agent_actors.supervisor import Supervisor
from agent_actors.supervisor_settings import SettingNames, SupervisorSettings
from streams_server import StreamsBackend
from streams_server.storage.dirlock import DirectoryInUse
from webui.config import STREAMS_PREFIX
from webui.flask_run import ServingAddress, local_root_url
from webui.stop_signals import STOP_AT_ONCE, how_to_hurry

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 2.0
LISTEN_WAIT_S = 60.0
"""How long `start_when_listening` waits for the server (the first request starts it too)."""
EMBEDDED_WORKER_FILE = "embedded-worker"
"""In the agents' data directory: the worker name of the last run's embedded supervisor."""


class BackgroundWork:
    """Starts the streams backend's timers and the embedded supervisor exactly once."""

    def __init__(self, app: Flask, backend: StreamsBackend) -> None:
        self._app = app
        self._backend = backend
        self._lock = threading.Lock()
        self._started = False
        self._in_use = ""  # why the data directory cannot be held, while it cannot
        self.supervisor: Any = None
        self._worker_name = ""
        # The supervisor starts with the first request; its offsets file is opened now, as
        # a file it cannot open must stop the app, not leave a chat that never answers.
        self._offsets = (OffsetsStore(self._agents_data_dir())
                         if app.config["EMBEDDED_SUPERVISOR"] else None)
        # Wrapped around the whole WSGI chain, not a `before_request` hook: the streams
        # protocol is answered before Flask dispatches, and after a restart a browser may
        # send nothing but streams requests.
        serve = app.wsgi_app

        def start_then_serve(environ: dict[str, Any], start_response: Any) -> Any:
            if not self._started and not self._start_once(own_url(environ)):
                return _directory_in_use(environ, start_response, self._in_use,
                                         streams_root=self._backend.streams.stream_root)
            return serve(environ, start_response)

        app.wsgi_app = start_then_serve  # type: ignore[method-assign]
        atexit.register(self.stop)

    def start_when_listening(self, address: ServingAddress) -> None:
        """Start once this app serves at `address`, without waiting for a first request:
        after a crash, the answers it cut short resume at once, whether or not a page is open.

        A request of its own starts it, as any first request does (`start_then_serve`): a
        connection alone could be another server's, on a port this one then fails to bind.
        The request is a CORS preflight of the streams API, which the access log leaves out."""
        def start_when_listening() -> None:
            deadline = time.monotonic() + LISTEN_WAIT_S
            # (With the data directory refused, it waits for a first request from outside.)
            while not (self._started or self._in_use) and time.monotonic() < deadline:
                connection = http.client.HTTPConnection(address.host, address.port, timeout=2)
                try:
                    connection.request("OPTIONS", self._backend.streams.stream_root)
                    connection.getresponse().read()
                except (OSError, http.client.HTTPException):  # not (yet) this app's server
                    pass
                finally:
                    connection.close()
                if not (self._started or self._in_use):
                    time.sleep(0.05)

        threading.Thread(target=start_when_listening, name="start-when-listening",
                         daemon=True).start()

    def _start_once(self, root_url: str) -> bool:
        """False while another process holds the data directory (it may have started
        after this one was built; tried again at the next request)."""
        with self._lock:
            if self._started:
                return True
            try:
                self._backend.hold_directory()
            except (DirectoryInUse, OSError) as exc:
                if not self._in_use:
                    log.error("cannot serve the streams data directory: %s", exc)
                self._in_use = str(exc)
                return False
            self._started = True
            self._backend.start()
            if self._app.config["EMBEDDED_SUPERVISOR"]:
                try:
                    self.supervisor = self._start_supervisor(root_url)
                except ConfigurationError as exc:  # the chat still serves; nothing answers
                    log.error("the embedded supervisor cannot start, so no prompt will be"
                              " answered: %s", exc)
            return True

    def _start_supervisor(self, root_url: str) -> Any:
        config = self._app.config
        streams_url = config["AGENT_STREAMS_URL"] or root_url.rstrip("/") + STREAMS_PREFIX
        if not config["AGENT_STREAMS_URL"] and root_url.startswith("https:"):
            log.warning("the embedded supervisor connects to %s; if the TLS certificate does "
                        "not name that address, set CHAT_AGENT_STREAMS_URL", streams_url)
        model = model_from_settings(config["AGENT_MODEL"], name_setting="CHAT_AGENT_MODEL",
                                    demo_tokens_per_second=config["DEMO_TOKENS_PER_SECOND"])
        settings = SupervisorSettings(
            streams_url=streams_url,
            data_dir=self._agents_data_dir(),
            max_agents=config["AGENT_MAX_AGENTS"],
            lease_ttl_ms=config["AGENT_LEASE_TTL_MS"],
            wake_stream=config["AGENT_WAKE_STREAM"],
            named=SettingNames(streams_url="CHAT_AGENT_STREAMS_URL",
                               auth_token="CHAT_STREAMS_AUTH_TOKEN",
                               lease_ttl="CHAT_AGENT_LEASE_TTL_MS",
                               wake_stream="CHAT_AGENT_WAKE_STREAM"),
            auth_token=config["STREAMS_AUTH_TOKEN"],
            # At exit the app's own server has usually stopped already, so agents cannot
            # release their leases over HTTP: one try each (the leases are released
            # in-process in `stop`), so that Ctrl+C is not held up by retries.
            agent=AgentSettings(coalesce_window_s=config["AGENT_COALESCE_MS"] / 1000,
                                idle_timeout_s=config["AGENT_IDLE_TIMEOUT_S"],
                                quick_release=True),
            shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
            worker_name=f"embedded-{socket.gethostname()}-{os.getpid()}",
        )
        self._release_leases_of_earlier_runs(settings.worker_name)
        log.info("starting the embedded supervisor against %s", streams_url)
        self._worker_name = settings.worker_name
        supervisor = Supervisor.start(settings, model, offsets=self._offsets)
        warn_if_unusable(model)
        return supervisor

    def _agents_data_dir(self) -> str | None:
        """Where the agents keep their offsets: in memory only beside streams that are (this
        app's own, in memory), else under the data directory."""
        config = self._app.config
        if config["STREAMS_MEMORY"] and not config["AGENT_STREAMS_URL"]:
            return None
        return os.path.join(config["DATA_DIR"], "agents")

    def stop(self) -> None:
        with self._lock:
            if self.supervisor is not None:
                self._stop_supervisor()
                self.supervisor = None
                self._release_leases()
            elif self._offsets is not None:  # no supervisor started to own and close it
                self._offsets.close()
            self._offsets = None
        self._backend.close()

    def _stop_supervisor(self) -> None:
        """Wait for the agents to stop, at most SHUTDOWN_TIMEOUT_S + 1, or until a second
        Ctrl+C (`stop_signals`). Their leases are released in `stop` either way."""
        hurry = how_to_hurry()
        log.info("stopping the embedded agents (up to %.0f s%s)", SHUTDOWN_TIMEOUT_S + 1,
                 f"; {hurry} to stop at once" if hurry else "")
        try:
            stopped = self.supervisor.stop(block=False)
        except Exception:  # noqa: BLE001 - already dead: the process exits anyway
            return
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S + 1
        while not STOP_AT_ONCE.is_set() and time.monotonic() < deadline:
            try:
                stopped.get(timeout=0.05)
                return
            except pykka.Timeout:
                continue
            except Exception:  # noqa: BLE001 - it failed as it stopped: exiting anyway
                return
        if STOP_AT_ONCE.is_set():
            log.warning("stopped without waiting for the embedded agents: answers under way"
                        " resume at the next start, and count this stop among their"
                        " interruptions")

    def _release_leases_of_earlier_runs(self, worker_name: str) -> None:
        """Leases the embedded agents of this app's earlier run held when it was killed
        (`kill -9`, a crash: no clean exit released them). That run is gone, as this
        database has one server process at a time: released now, its answers resume at once
        instead of after the lease's TTL (30 s by default). The earlier run's worker name is
        kept in the agents' data directory, and the new one written in its place."""
        data_dir = self._agents_data_dir()
        if data_dir is None:
            return  # in memory: no earlier run's leases survived
        record = os.path.join(data_dir, EMBEDDED_WORKER_FILE)
        try:
            with open(record, encoding="utf-8") as file:
                earlier = file.read().strip()
        except FileNotFoundError:
            earlier = ""
        except (OSError, ValueError) as exc:  # unreadable, or not text
            log.warning("could not read %s (%s): an earlier run's leases expire instead",
                        record, exc)
            earlier = ""
        try:
            released = (self._backend.subscriptions.release_leases_of(earlier)
                        if earlier else 0)
        except Exception as exc:  # noqa: BLE001 - the leases then expire as after any crash
            log.warning("could not release the leases of an earlier run (%s): they expire "
                        "instead", exc)
        else:
            if released:
                log.info("released %d lease(s) the earlier run's embedded agents (%s) held",
                         released, earlier)
        try:
            with open(f"{record}.tmp", "w", encoding="utf-8") as file:
                file.write(worker_name)
            os.replace(f"{record}.tmp", record)
        except OSError as exc:  # a full disk: the next start after a crash waits out leases
            log.warning("could not record this run's worker name in %s (%s): after a crash, "
                        "its agents' leases expire instead of being released", record, exc)
            with contextlib.suppress(OSError):
                os.remove(f"{record}.tmp")

    def _release_leases(self) -> None:
        """Its agents have stopped, but by now the app's server usually has too, so they
        could not release their leases over HTTP: released here, in-process, the next start
        finishes their answers at once instead of after the lease's TTL."""
        try:
            released = self._backend.subscriptions.release_leases_of(self._worker_name)
        except Exception:  # noqa: BLE001 - at exit: the leases then expire as after a crash
            log.warning("could not release the embedded agents' leases", exc_info=True)
            return
        if released:
            log.info("released %d lease(s) of the stopped embedded agents", released)


def own_url(environ: dict[str, Any]) -> str:
    """This server's own root URL: the local address of the connection the first request came
    in on (or, without one, ``SERVER_NAME`` and ``SERVER_PORT``).

    Not the request's ``Host`` header: the first request would then choose where the
    embedded supervisor connects (and sends the streams token). Where that address is not
    right (TLS with a certificate for a name, a proxy that rewrites the port, a server that
    fills ``SERVER_NAME`` from the request), set ``CHAT_AGENT_STREAMS_URL``.
    """
    scheme = environ.get("wsgi.url_scheme", "http")
    sock = environ.get("werkzeug.socket")  # Werkzeug's server: the accepted connection
    try:
        host, port = sock.getsockname()[:2] if sock is not None else (None, None)
    except OSError:
        host = port = None
    if host is None:
        host, port = environ.get("SERVER_NAME") or "127.0.0.1", environ["SERVER_PORT"]
    return local_root_url(scheme, str(host), str(port))


def _directory_in_use(environ: dict[str, Any], start_response: Any, why: str, *,
                      streams_root: str) -> list[bytes]:
    """503 while another process holds the data directory: in the streams protocol's JSON
    for its clients, in a line of text for a person."""
    message = f"This chat cannot serve its data directory: {why}."
    if environ.get("PATH_INFO", "").startswith(streams_root.rstrip("/") + "/"):
        body = json.dumps({"error": {"code": "DATA_DIRECTORY_IN_USE", "message": message}})
        content_type = "application/json"
    else:
        body, content_type = message + "\n", "text/plain; charset=utf-8"
    data = body.encode()
    start_response("503 Service Unavailable", [
        ("Content-Type", content_type), ("Content-Length", str(len(data))),
        ("Retry-After", "5"), ("Access-Control-Allow-Origin", "*")])
    return [data]
