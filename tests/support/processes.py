"""Start, watch and stop server processes for tests.

A server counts as ready when it prints a line containing ``listening on http://HOST:PORT``
(on stdout or stderr), or one matching a custom ``ready_pattern`` whose first group is the
URL (``flask run`` says ``Running on http://HOST:PORT``). Its output is drained continuously into a log file, so pipes never
fill up and a failing test can show what the server said.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The project's root directory (the one holding ``streams_server/``)."""

CONFORMANCE_DIR = REPO_ROOT / "tests" / "conformance"
"""The Node project with the conformance suite and the reference server."""

ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
"""Git-ignored directory for logs and reports that outlive a test run."""

DEFAULT_LOG_DIR = ARTIFACTS_DIR / "logs"

_READY_RE = re.compile(rb"listening on (https?://[^\s/]+)")
_LOG_TAIL_LINES = 40


class ServerStartError(RuntimeError):
    """The server exited, or stayed silent too long, before saying it was listening."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server subprocess started from ``argv`` and considered ready once it logs its URL.

    ``start()`` may be called again after ``terminate()`` or ``kill()``; the log file is
    appended to, with a header per start. Use as a context manager to start and terminate.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30.0,
        ready_pattern: re.Pattern[bytes] = _READY_RE,
        process_group: bool = False,
    ) -> None:
        """``process_group``: run it in a session of its own and signal the whole group, for
        servers that fork helpers (``flask run --debug`` and its reloader child)."""
        self.argv: list[str] = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.ready_timeout = ready_timeout
        self.ready_pattern = ready_pattern
        self.process_group = process_group
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()  # set on the "listening on" line or at EOF
        self._url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ServerProcess:
        """Start the process and block until it is ready; raise ``ServerStartError`` if not."""
        if self.running:
            raise RuntimeError(f"already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A new event per start: the previous process's drain thread may see its EOF only
        # now, and must not mark this start ready.
        self._ready = threading.Event()
        self._url = None
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {self.argv}\n".encode())
        self._proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=self.process_group,
        )
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._drain, args=(self._proc.stdout, self._ready), daemon=True,
            name=f"drain-{self._proc.pid}",
        )
        self._reader.start()
        self._wait_ready()
        return self

    def terminate(self, timeout: float = 10.0) -> int | None:
        """Send SIGTERM and wait; SIGKILL if it has not exited after ``timeout`` seconds.

        Returns the exit code (negative for a signal), or None if it was never started.
        """
        return self._stop(signal.SIGTERM, timeout)

    def send_signal(self, sig: signal.Signals) -> None:
        """Deliver `sig` to the process (its whole group if it has one) without waiting."""
        assert self._proc is not None
        if self.process_group:
            os.killpg(self._proc.pid, sig)
        else:
            self._proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; its exit code."""
        assert self._proc is not None
        return self._proc.wait(timeout=timeout)

    def kill(self) -> int | None:
        """Send SIGKILL (a crash, no chance to clean up) and wait for the process to die."""
        return self._stop(signal.SIGKILL, 10.0)

    def restart(self, *, crash: bool = False) -> ServerProcess:
        """Stop (SIGTERM, or SIGKILL if ``crash``) and start again with the same argv."""
        if crash:
            self.kill()
        else:
            self.terminate()
        return self.start()

    def __enter__(self) -> ServerProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()

    # -- state ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL announced by the server, e.g. ``http://127.0.0.1:4437`` (no trailing /)."""
        if self._url is None:
            raise RuntimeError("server has not announced a URL (not started?)")
        return self._url

    @property
    def pid(self) -> int | None:
        """Process id of the current (or last) process, if any."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code of the last process, None while running or before the first start."""
        return self._proc.poll() if self._proc is not None else None

    def log_since_start(self) -> str:
        """The log file from the header of the latest start on (earlier starts left out)."""
        text = self.log_path.read_text(errors="replace")
        return text[text.rfind("\n=== ") + 1:]

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log file (all starts)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -----------------------------------------------------------------------

    def _drain(self, stream: IO[bytes], ready: threading.Event) -> None:
        with open(self.log_path, "ab", buffering=0) as log:
            for line in iter(stream.readline, b""):
                log.write(line)
                if not ready.is_set():
                    match = self.ready_pattern.search(line)
                    if match:
                        self._url = match.group(1).decode().rstrip(".,;:)")
                        ready.set()
        stream.close()
        ready.set()  # EOF: the process is gone (or closed its output)

    def _wait_ready(self) -> None:
        if self._ready.wait(self.ready_timeout) and self._url is not None:
            return
        if self._ready.is_set():
            self._join_exit()
            reason = f"exited with code {self.returncode} before it was ready"
        else:
            reason = f"was not ready after {self.ready_timeout:.1f}s"
        self.kill()
        raise ServerStartError(
            f"{self.argv[:4]} {reason}; last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _join_exit(self) -> None:
        assert self._proc is not None
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass

    def _stop(self, sig: signal.Signals, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(proc, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        if self.process_group:
            self._signal(proc, signal.SIGKILL)  # children the leader left behind
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        return proc.returncode

    def _signal(self, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if not self.process_group:
            proc.send_signal(sig)
            return
        try:
            os.killpg(proc.pid, sig)  # the group this process leads (start_new_session)
        except ProcessLookupError:
            pass


def start_streams_server(
    data_dir: Path,
    *,
    memory: bool = False,
    long_poll_timeout: float = 0.5,
    port: int | None = None,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    log_dir: Path = DEFAULT_LOG_DIR,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
) -> ServerProcess:
    """Start ``python -m streams_server`` (this project's server) and wait until it is ready.

    ``port`` defaults to a free port picked now, so ``restart()`` keeps the same URL.
    ``env`` entries are added to this process's environment.
    """
    port = free_port(host) if port is None else port
    argv = [
        sys.executable, "-m", "streams_server",
        "--host", host,
        "--port", str(port),
        "--long-poll-timeout", str(long_poll_timeout),
    ]
    argv.extend(["--memory"] if memory else ["--data-dir", str(Path(data_dir).resolve())])
    argv.extend(extra_args)
    server = ServerProcess(
        argv,
        log_path=Path(log_dir) / f"streams_server-{port}.log",
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        ready_timeout=ready_timeout,
    )
    return server.start()


def start_reference_server(
    *,
    data_dir: Path | None = None,
    long_poll_timeout_ms: int = 500,
    port: int | None = None,
    webhooks: bool = False,
    log_dir: Path = DEFAULT_LOG_DIR,
    ready_timeout: float = 30.0,
) -> ServerProcess:
    """Start the Node reference server (in-memory, or file-backed with ``data_dir``).

    Needs ``npm ci`` in ``tests/conformance`` first. ``port`` defaults to a free port picked
    now, so ``restart()`` keeps the same URL.
    """
    node = shutil.which("node")
    if node is None:
        raise ServerStartError("node is not on PATH (Node >= 20.19 is needed)")
    require_node_modules()
    port = free_port() if port is None else port
    argv = [
        node, str(CONFORMANCE_DIR / "reference_server.mjs"),
        "--port", str(port),
        "--long-poll-timeout-ms", str(long_poll_timeout_ms),
    ]
    if data_dir is not None:
        argv += ["--data-dir", str(Path(data_dir).resolve())]  # node runs in CONFORMANCE_DIR
    if webhooks:
        argv.append("--webhooks")
    server = ServerProcess(
        argv,
        log_path=Path(log_dir) / f"reference_server-{port}.log",
        cwd=CONFORMANCE_DIR,
        ready_timeout=ready_timeout,
    )
    return server.start()


def require_node_modules() -> None:
    """Raise a clear error if ``npm ci`` has not been run in ``tests/conformance``."""
    if not (CONFORMANCE_DIR / "node_modules" / "@durable-streams").is_dir():
        raise RuntimeError(f"Node dependencies are missing: run `npm ci` in {CONFORMANCE_DIR}")
