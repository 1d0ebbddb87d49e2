"""What every workload shares: sizes, the figures it reports, and the server it runs against."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from streams_server.bench.httpclient import Connection, Response
from streams_server.bench.processes import ManagedProcess

JSON = "application/json"
BINARY = "application/octet-stream"


@dataclass(frozen=True)
class Sizes:
    """How much each workload does; `FULL` is the real run, `QUICK` a smoke run."""

    seq_appends: int = 2000
    writers: int = 16
    writer_seconds: float = 10.0
    deliveries: int = 500
    catchup_mib: int = 50
    catchup_reads: int = 3
    fanout_readers: int = 1000
    fanout_appends: int = 40
    fanout_seconds: float = 60.0
    """Stop sending fan-out appends after this long (at least 5 are sent)."""
    growth_mib: int = 1024
    growth_streams: int = 10_000
    growth_samples: int = 300
    growth_seconds: float = 30.0
    """Stop sampling one phase after this long (at least 10 samples): slow reads stay short."""
    chat_steps: tuple[int, ...] = (10, 25, 50, 75, 100, 150, 200)
    chat_tokens: int = 150
    chat_tokens_per_second: float = 50.0
    chat_p99_limit_ms: float = 100.0
    chat_coalesce_ms: float | None = None
    """The agents' ``--coalesce-ms`` (None: the supervisor's default)."""
    chat_supervisors: int = 1
    """Supervisor processes sharing the conversations (through their leases)."""

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


FULL = Sizes()
QUICK = Sizes(
    seq_appends=200, writer_seconds=2.0, deliveries=50, catchup_mib=5, catchup_reads=1,
    fanout_readers=300, fanout_appends=10, growth_mib=32, growth_streams=500,
    growth_samples=50, growth_seconds=10.0, fanout_seconds=15.0, chat_steps=(2, 5), chat_tokens=25,
)


@dataclass(frozen=True)
class Target:
    """A goal from the benchmark issue: on the ratio ours/ref-file, or on the value itself."""

    kind: str  # "ratio>=", "ratio<=", "value<=", "value>="
    bound: float

    def describe(self, unit: str) -> str:
        if self.kind.startswith("ratio"):
            return f"{self.kind[5:]}{self.bound:g}x ref"
        return f"{self.kind[5:]}{self.bound:g} {unit}".rstrip()

    def met(self, value: float, ratio: float | None) -> bool | None:
        subject = ratio if self.kind.startswith("ratio") else value
        if subject is None or subject != subject:  # missing or NaN
            return None
        return subject >= self.bound if self.kind.endswith(">=") else subject <= self.bound


@dataclass(frozen=True)
class Metric:
    """One figure of one server: a row of the table is the same ``key`` on every server."""

    key: str
    label: str
    unit: str
    value: float
    target: Target | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "unit": self.unit,
                               "value": None if self.value != self.value else round(self.value, 3)}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Context:
    """The server a workload runs against, and where it may put things."""

    server: str
    """The server's kind: "ours", "ours-memory", "ref-file" or "ref-memory"."""
    base_url: str
    process: ManagedProcess
    sizes: Sizes
    workdir: Path
    log: Callable[[str], None]
    stream_root: str = "/v1/stream"
    run_id: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    details: dict[str, Any] = field(default_factory=dict)
    """Extra, non-tabulated results of this server's run (written to the JSON file)."""

    def path(self, name: str) -> str:
        """The URL path of this run's stream ``name``."""
        return f"{self.stream_root}/{self.run_id}/{quote(name, safe='/')}"

    def url(self, name: str) -> str:
        return self.base_url + self.path(name)

    def connect(self, timeout: float = 60.0) -> Connection:
        return Connection(self.base_url, timeout=timeout)


def create_stream(conn: Connection, path: str, content_type: str = JSON) -> Response:
    """``PUT`` a stream (201, or 200 if an identical one exists)."""
    return conn.request("PUT", path, headers={"Content-Type": content_type}).expect(200, 201)


def append(conn: Connection, path: str, body: bytes, content_type: str = JSON,
           headers: dict[str, str] | None = None) -> Response:
    """``POST`` one append; 200 or 204 expected."""
    all_headers = {"Content-Type": content_type, **(headers or {})}
    return conn.request("POST", path, body, all_headers).expect(200, 204)


def request_retrying(conn: Connection, method: str, path: str, body: bytes,
                     headers: dict[str, str], *, ok: tuple[int, ...],
                     retry_if: Callable[[int], bool], retries: list[str],
                     pause_s: float = 0.0) -> Response:
    """A request whose refusal (a status not in ``ok`` for which ``retry_if`` holds) is sent
    twice more, ``pause_s`` apart; each refusal is noted in ``retries`` for the report.

    For the reference server, which sometimes refuses a request on a stream it has just
    created; the bench says how often it had to.
    """
    for _ in range(2):
        response = conn.request(method, path, body, headers)
        if response.status in ok or not retry_if(response.status):
            return response.expect(*ok)
        retries.append(f"{path} -> {response.status} {response.body[:80]!r}")
        time.sleep(pause_s)
    return conn.request(method, path, body, headers).expect(*ok)


def delete_stream(conn: Connection, path: str) -> None:
    """``DELETE`` a stream, ignoring failures (cleanup)."""
    try:
        conn.request("DELETE", path)
    except Exception:  # noqa: BLE001 - best effort
        pass


def tail_offset(conn: Connection, path: str) -> str:
    """The stream's current tail (``Stream-Next-Offset`` of a ``HEAD``)."""
    response = conn.request("HEAD", path).expect(200)
    offset = response.header("stream-next-offset")
    if offset is None:
        raise RuntimeError(f"HEAD {path}: no Stream-Next-Offset header")
    return offset
