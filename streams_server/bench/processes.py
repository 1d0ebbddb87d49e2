"""Starting and stopping the processes a benchmark needs: servers, the fake model, agents.

A process is ready when a line of its output matches its ready pattern (the servers print
``listening on http://HOST:PORT``). Output is drained into a log file so pipes never fill,
and a process that fails to start is reported with the end of that log.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The project's root (holding ``streams_server/``): the working directory of children."""

DEFAULT_REFERENCE_DIR = REPO_ROOT / "tests" / "conformance"
"""Where ``reference_server.mjs`` and its ``node_modules`` live."""

URL_PATTERN = r"listening on (https?://[^\s/]+)"

SERVER_KINDS = ("ours", "ours-memory", "ref-file", "ref-memory")
"""Servers the benchmark knows how to start."""


class StartError(RuntimeError):
    """A process exited, or said nothing useful in time, before it was ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc/PID/status), None if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class ManagedProcess:
    """A child process whose output goes to ``log_path``; ready when ``ready`` matches."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, ready: str,
                 cwd: Path = REPO_ROOT, env: Mapping[str, str] | None = None,
                 ready_timeout: float = 60.0) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.ready_timeout = ready_timeout
        self.url: str | None = None
        self._ready_re = re.compile(ready)
        self._ready = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._drainer: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ManagedProcess:
        """Start and block until ready; raise `StartError` (with the log's tail) if not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert self._proc.stdout is not None
        self._drainer = threading.Thread(target=self._drain, args=(self._proc.stdout,),
                                         daemon=True, name=f"drain-{self.name}")
        self._drainer.start()
        if not self._ready.wait(self.ready_timeout) or not self.running:
            reason = ("exited with code %s" % self._proc.poll() if not self.running
                      else f"was not ready after {self.ready_timeout:.0f}s")
            self.stop()
            raise StartError(f"{self.name} {reason}: {' '.join(self.argv[:6])}\n"
                             f"--- last lines of {self.log_path}:\n{self.log_tail()}")
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=5.0)
        return proc.returncode

    def rss_kib(self) -> int | None:
        return rss_kib(self.pid) if self.running else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _drain(self, stream: IO[bytes]) -> None:
        with open(self.log_path, "ab", buffering=0) as log:
            for line in iter(stream.readline, b""):
                log.write(line)
                if not self._ready.is_set():
                    match = self._ready_re.search(line.decode(errors="replace"))
                    if match:
                        self.url = match.group(1) if match.groups() else None
                        self._ready.set()
        stream.close()
        self._ready.set()  # EOF: the process has gone


@dataclass(frozen=True)
class ServerOptions:
    """How to start the servers under test."""

    workdir: Path
    long_poll_timeout_s: float = 5.0
    reference_dir: Path = DEFAULT_REFERENCE_DIR
    node: str = "node"
    python: str = sys.executable


def server_process(kind: str, options: ServerOptions) -> ManagedProcess:
    """A (not started) server of ``kind`` (one of `SERVER_KINDS`) on a free port."""
    port = free_port()
    data_dir = options.workdir / f"data-{kind}"
    log_path = options.workdir / "logs" / f"{kind}.log"
    if kind in ("ours", "ours-memory"):
        argv = [options.python, "-m", "streams_server", "--host", "127.0.0.1",
                "--port", str(port), "--long-poll-timeout", str(options.long_poll_timeout_s),
                "--sse-max-duration", "300", "--log-level", "WARNING"]
        if kind == "ours-memory":
            argv.append("--memory")
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            argv.extend(["--data-dir", str(data_dir)])
        return ManagedProcess(kind, argv, log_path=log_path, ready=URL_PATTERN)
    if kind in ("ref-file", "ref-memory"):
        script = options.reference_dir / "reference_server.mjs"
        node = shutil.which(options.node)
        if node is None:
            raise StartError(f"{kind}: node ({options.node}) is not on PATH")
        if not script.is_file() or not (options.reference_dir / "node_modules").is_dir():
            raise StartError(f"{kind}: {script} or its node_modules is missing "
                             f"(run `npm ci` in {options.reference_dir})")
        argv = [node, str(script), "--port", str(port),
                "--long-poll-timeout-ms", str(int(options.long_poll_timeout_s * 1000))]
        if kind == "ref-file":
            data_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--data-dir", str(data_dir)]
        return ManagedProcess(kind, argv, log_path=log_path, ready=URL_PATTERN,
                              cwd=options.reference_dir)
    raise ValueError(f"unknown server {kind!r}; expected one of {SERVER_KINDS}")


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it returns true; False on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
