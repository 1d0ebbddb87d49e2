"""Item 7: the whole chat, token by token, with a fake model streaming at 50 tokens/s.

For a growing number N of conversations at once, each conversation gets one prompt and one
SSE reader on its responses stream; the supervisor's agents stream the fake model's answers
into those streams. Every token carries its emit time, so the latency of each token from the
model to the reader is exact. The ramp always reaches N=100 (or its last step)
and stops after that at the first N whose p99 exceeds the limit.
The same readers then consume the fake model directly (no agent, no durable stream): the
difference of the two p50s is what durability costs. Each step also counts the agents'
appends (one message each) in the responses streams, the price of a coalescing window
(``--set chat_coalesce_ms=...``) in requests per second.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

from streams_server.bench.fake_model import END_TOKEN, STAMP_PATTERN
from streams_server.bench.httpclient import Connection, HttpError
from streams_server.bench.live import LiveMux, LiveReader, parse_log
from streams_server.bench.processes import URL_PATTERN, ManagedProcess, free_port, wait_until
from streams_server.bench.stats import ms, summarize
from streams_server.bench.workloads.base import (
    JSON,
    Context,
    Metric,
    Target,
    create_stream,
    request_retrying,
    tail_offset,
)

_STAMP = re.compile(STAMP_PATTERN)
_WAKE_STREAM = "agents/wake"
_LEASE_TTL_MS = 30_000
_OVERHEAD_N = 100
"""The N at which durability overhead is measured (or the largest step, if smaller)."""


@dataclass
class StepResult:
    """Token latencies (ms) of one ramp step with ``n`` conversations."""

    n: int
    tokens: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    """From sending a prompt to its first token reaching the reader (wake-up + model start)."""
    complete: int = 0
    appends: int = 0
    """Appends the agents made to the responses streams (each carries one message)."""
    chunks: int = 0
    """Of which `chunk` messages: tokens per chunk is what the coalescing window buys."""
    seconds: float = 0.0
    """From the first prompt sent to the last answer's end at its reader."""

    @property
    def appends_per_second(self) -> float:
        return self.appends / self.seconds if self.seconds > 0 else float("nan")

    def to_json(self) -> dict[str, object]:
        return {"n": self.n, "complete": self.complete, "appends": self.appends,
                "chunks": self.chunks, "seconds": round(self.seconds, 3),
                "tokens_ms": summarize(self.tokens).to_json(),
                "prompt_to_first_token_ms": summarize(self.first_token).to_json()}


def chat(ctx: Context) -> list[Metric]:
    sizes = ctx.sizes
    overhead_n = min(_OVERHEAD_N, max(sizes.chat_steps))
    steps: list[StepResult] = []
    with _fake_model(ctx) as model:
        assert model.url is not None
        with contextlib.ExitStack() as supervisors:
            for index in range(sizes.chat_supervisors):
                supervisors.enter_context(_supervisor(ctx, model.url, index))
            with _Conversations(ctx) as conversations:
                stopped = ""
                for n in sizes.chat_steps:
                    try:
                        step = _run_step(ctx, conversations, n)
                    except HttpError as exc:  # keep the steps measured so far, say why not more
                        stopped = f"stopped at N={n}: {exc}"
                        ctx.log(f"ERROR: chat {stopped}")
                        break
                    steps.append(step)
                    over_limit = _log_step(ctx, step)
                    if step.complete < n or (over_limit and n >= overhead_n):
                        break
                if conversations.retries:
                    ctx.log(f"  {len(conversations.retries)} appends to streams just created "
                            f"were refused and retried, e.g. {conversations.retries[0]}")
        direct = _direct_step(ctx, model.url, overhead_n)
    d = summarize(direct.tokens)
    ctx.log(f"direct model->reader N={overhead_n}: token p50 {d.p50:.1f} ms p99 {d.p99:.1f} ms")
    ctx.details["7_chat"] = {"steps": [s.to_json() for s in steps], "direct": direct.to_json(),
                             "coalesce_ms": sizes.chat_coalesce_ms,
                             "supervisors": sizes.chat_supervisors, "stopped": stopped,
                             "append_retries": conversations.retries[:20]}
    return _metrics(ctx, steps, direct, stopped)


def _log_step(ctx: Context, step: StepResult) -> bool:
    """Log the step's figures; True if its p99 is over the limit."""
    s = summarize(step.tokens)
    ctx.log(f"chat N={step.n}: token p50 {s.p50:.1f} ms p99 {s.p99:.1f} ms, "
            f"prompt->first token p50 {summarize(step.first_token).p50:.0f} ms, "
            f"{step.complete}/{step.n} answers complete, {step.appends} appends "
            f"({step.appends_per_second:.0f}/s, {step.chunks} chunks)")
    return not s.p99 <= ctx.sizes.chat_p99_limit_ms


def _metrics(ctx: Context, steps: list[StepResult], direct: StepResult,
             stopped: str) -> list[Metric]:
    limit = ctx.sizes.chat_p99_limit_ms
    metrics: list[Metric] = []
    by_n = {step.n: step for step in steps}
    for n in ctx.sizes.chat_steps:
        step = by_n.get(n)
        s = summarize(step.tokens if step else [])
        note = f"N={n}: {step.complete}/{n} answers complete" if step and step.complete < n else ""
        metrics += [
            Metric(f"7.n{n}.p50", f"7 chat N={n}: token p50", "ms", s.p50, note=note),
            Metric(f"7.n{n}.p99", f"7 chat N={n}: token p99", "ms", s.p99),
            Metric(f"7.n{n}.appends", f"7 chat N={n}: agent appends", "req/s",
                   step.appends_per_second if step else float("nan")),
        ]
    held = max((step.n for step in steps if step.complete == step.n
                and summarize(step.tokens).p99 <= limit), default=0)
    chat_at = by_n.get(direct.n)
    chat_p50 = summarize(chat_at.tokens if chat_at else []).p50
    d = summarize(direct.tokens)
    first = summarize(chat_at.first_token if chat_at else []).p50
    metrics += [
        Metric("7.held", f"7 chat: largest N with token p99 <= {limit:g} ms", "convs",
               float(held), Target("value>=", 100.0), note=stopped),
        Metric("7.first", f"7 chat N={direct.n}: prompt->first token p50", "ms", first),
        Metric("7.direct.p50", f"7 direct model->reader N={direct.n}: p50", "ms", d.p50),
        Metric("7.direct.p99", f"7 direct model->reader N={direct.n}: p99", "ms", d.p99),
        Metric("7.overhead", f"7 durability overhead p50 (N={direct.n})", "ms",
               chat_p50 - d.p50, Target("value<=", 10.0)),
    ]
    return metrics


# -- processes ---------------------------------------------------------------------------------


def _fake_model(ctx: Context) -> ManagedProcess:
    sizes = ctx.sizes
    argv = [sys.executable, "-m", "streams_server.bench.fake_model", "--port", str(free_port()),
            "--tokens", str(sizes.chat_tokens),
            "--tokens-per-second", str(sizes.chat_tokens_per_second)]
    return ManagedProcess("fake-model", argv, ready=URL_PATTERN,
                          log_path=ctx.workdir / "logs" / f"fake-model-{ctx.server}.log").start()


def _supervisor(ctx: Context, model_url: str, index: int) -> ManagedProcess:
    sizes = ctx.sizes
    argv = [sys.executable, "-m", "agent_actors", "supervisor",
            "--streams-url", f"{ctx.base_url}{ctx.stream_root}",
            "--data-dir", str(ctx.workdir / f"agents-{ctx.server}-{index}"),
            "--max-agents", str(max(sizes.chat_steps) + 10),
            "--idle-timeout", "600", "--lease-ttl-ms", str(_LEASE_TTL_MS),
            "--worker-name", f"bench-{ctx.server}-{index}", "--log-level", "WARNING"]
    if sizes.chat_coalesce_ms is not None:
        argv += ["--coalesce-ms", str(sizes.chat_coalesce_ms)]
    env = {**os.environ, "ANTHROPIC_API_KEY": "bench-key", "ANTHROPIC_BASE_URL": model_url,
           "ANTHROPIC_MODEL": "claude-bench", "PYTHONUNBUFFERED": "1"}
    log_path = ctx.workdir / "logs" / f"supervisor-{ctx.server}-{index}.log"
    return ManagedProcess(f"supervisor-{index}", argv, ready="agent supervisor ", env=env,
                          log_path=log_path).start()


# -- conversations, the way any client starts them (see the README) ----------------------------


class _Conversations:
    """Conversations created so far, and a producer sequence number for each one's prompts."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ids: list[str] = []
        self.seq: dict[str, int] = {}
        self.conn = ctx.connect()
        self.prefix = f"b{uuid.uuid4().hex[:6]}"
        self.retries: list[str] = []

    def __enter__(self) -> _Conversations:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def ensure(self, count: int) -> list[str]:
        root = self.ctx.stream_root
        if not self.ids:
            create_stream(self.conn, f"{root}/conversations")
        while len(self.ids) < count:
            cid = f"{self.prefix}-{len(self.ids)}"
            config = {"type": "pull-wake", "pattern": f"conversations/{cid}/prompts",
                      "wake_stream": _WAKE_STREAM, "lease_ttl_ms": _LEASE_TTL_MS}
            self.conn.request("PUT", f"{root}/__ds/subscriptions/conversation-{cid}",
                              json.dumps(config).encode(),
                              {"Content-Type": JSON}).expect(200, 201)
            create_stream(self.conn, f"{root}/conversations/{cid}/prompts")
            create_stream(self.conn, f"{root}/conversations/{cid}/responses")
            entry = {"type": "conversation", "id": cid, "title": "benchmark",
                     "timestamp": int(time.time() * 1000)}
            self._append(f"{root}/conversations", json.dumps([entry]).encode())
            self.ids.append(cid)
            self.seq[cid] = 0
        return self.ids[:count]

    def responses(self, cid: str) -> str:
        return f"{self.ctx.stream_root}/conversations/{cid}/responses"

    def prompt(self, cid: str) -> None:
        seq = self.seq[cid]
        self.seq[cid] = seq + 1
        message = {"type": "prompt", "id": f"p{seq}-{uuid.uuid4().hex[:8]}",
                   "content": f"benchmark prompt {seq}", "timestamp": int(time.time() * 1000)}
        self._append(f"{self.ctx.stream_root}/conversations/{cid}/prompts",
                     json.dumps([message]).encode(),
                     {"Producer-Id": f"bench-{cid}", "Producer-Epoch": "0",
                      "Producer-Seq": str(seq)})

    def _append(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Append; a ``404`` from a stream this bench has just created is retried twice.

        The reference server's file store sometimes answers so right after a ``201`` (and
        the growth workload sees it on PUTs); noted, as there. A retried prompt carries the
        same producer sequence, so it is never stored twice.
        """
        request_retrying(self.conn, "POST", path, body, {"Content-Type": JSON, **(headers or {})},
                         ok=(200, 204), retry_if=lambda status: status == 404,
                         retries=self.retries, pause_s=0.05)


# -- one step ------------------------------------------------------------------------------------


def _run_step(ctx: Context, conversations: _Conversations, n: int) -> StepResult:
    cids = conversations.ensure(n)
    offsets = [tail_offset(conversations.conn, conversations.responses(c)) for c in cids]
    step = StepResult(n)
    with LiveMux() as mux:
        readers = [mux.open(f"{ctx.base_url}{conversations.responses(c)}?offset={quote(o)}"
                            "&live=sse") for c, o in zip(cids, offsets)]
        wait_until(lambda: all(r.log for r in readers), 10.0)
        done = mux.watch(END_TOKEN.encode(), n)
        sent: list[float] = []
        for cid in cids:
            sent.append(time.time())
            conversations.prompt(cid)
        answer_s = ctx.sizes.chat_tokens / ctx.sizes.chat_tokens_per_second
        done.wait(answer_s + 30.0 + n * 0.1)
        step.complete = len(done.hits)
        step.seconds = max(done.hits.values(), default=time.time()) - sent[0]
    _collect(step, readers, sent)
    for cid, offset in zip(cids, offsets):
        messages = _read_from(conversations.conn, conversations.responses(cid), offset)
        step.appends += len(messages)
        step.chunks += sum(1 for m in messages if isinstance(m, dict) and m.get("type") == "chunk")
    return step


def _read_from(conn: Connection, path: str, offset: str) -> list[object]:
    """Every message of a JSON stream from ``offset`` to its tail (catch-up reads)."""
    messages: list[object] = []
    while True:
        response = conn.request("GET", f"{path}?offset={quote(offset)}").expect(200, 204)
        if response.body.strip():
            messages.extend(json.loads(response.body))
        next_offset = response.header("stream-next-offset") or offset
        if response.header("stream-up-to-date") == "true" or next_offset == offset:
            return messages
        offset = next_offset


def _direct_step(ctx: Context, model_url: str, n: int) -> StepResult:
    """``n`` readers consuming the fake model's own SSE: the latency floor."""
    step = StepResult(n)
    body = json.dumps({"model": "claude-bench", "max_tokens": 1024, "stream": True,
                       "messages": [{"role": "user", "content": "direct"}]}).encode()
    with LiveMux() as mux:
        done = mux.watch(END_TOKEN.encode(), n)
        sent: list[float] = []
        readers: list[LiveReader] = []
        for _ in range(n):
            sent.append(time.time())
            readers.append(mux.open(f"{model_url}/v1/messages", "POST", body,
                                    {"Content-Type": JSON}))
        answer_s = ctx.sizes.chat_tokens / ctx.sizes.chat_tokens_per_second
        done.wait(answer_s + 30.0)
        step.complete = len(done.hits)
    _collect(step, readers, sent)
    return step


def _collect(step: StepResult, readers: list[LiveReader], sent: list[float]) -> None:
    for reader, sent_at in zip(readers, sent):
        first: float | None = None
        for event in parse_log(reader.log).events:
            for stamp in _STAMP.findall(event.data.encode()):
                step.tokens.append(ms(event.time - int(stamp) / 1e6))
                first = event.time if first is None else first
        if first is not None:
            step.first_token.append(ms(first - sent_at))

