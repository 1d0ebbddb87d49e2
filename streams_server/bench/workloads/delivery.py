"""Item 3: how long an append takes to reach a live reader, by long-poll and by SSE."""

from __future__ import annotations

import json
import queue
import threading
import time
from urllib.parse import quote

from streams_server.bench.httpclient import Connection
from streams_server.bench.live import LiveMux
from streams_server.bench.stats import Summary, ms, summarize
from streams_server.bench.workloads.base import Context, Metric, Target, append, create_stream

_SETTLE_S = 0.002
"""Pause between (re)starting the live read and appending, so the read is waiting."""


def delivery(ctx: Context) -> list[Metric]:
    lp = _long_poll(ctx)
    sse = _sse(ctx)
    ctx.details["3_delivery"] = {"long_poll_ms": lp.to_json(), "sse_ms": sse.to_json()}
    ctx.log(f"delivery long-poll p50 {lp.p50:.2f} ms p99 {lp.p99:.2f} ms; "
            f"SSE p50 {sse.p50:.2f} ms p99 {sse.p99:.2f} ms")
    return [
        Metric("3.lp.p50", "3 append->long-poll p50", "ms", lp.p50, Target("ratio<=", 1.0)),
        Metric("3.lp.p99", "3 append->long-poll p99", "ms", lp.p99),
        Metric("3.sse.p50", "3 append->SSE p50", "ms", sse.p50, Target("ratio<=", 1.0)),
        Metric("3.sse.p99", "3 append->SSE p99", "ms", sse.p99),
    ]


class _Poller(threading.Thread):
    """Long-polls ``path`` from a given offset until message ``i`` arrives; reports its time."""

    def __init__(self, ctx: Context, path: str) -> None:
        super().__init__(daemon=True, name="long-poller")
        self.conn = Connection(ctx.base_url, timeout=60.0)
        self.path = path
        self.cursor: str | None = None
        self.requests: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self.results: queue.Queue[tuple[float, str]] = queue.Queue()

    def run(self) -> None:
        while (job := self.requests.get()) is not None:
            offset, wanted = job
            self.results.put(self._poll_until(offset, wanted))
        self.conn.close()

    def _poll_until(self, offset: str, wanted: int) -> tuple[float, str]:
        while True:
            query = f"?offset={quote(offset)}&live=long-poll"
            if self.cursor:
                query += f"&cursor={quote(self.cursor)}"
            response = self.conn.request("GET", self.path + query)
            received = time.time()
            self.cursor = response.header("stream-cursor") or self.cursor
            offset = response.header("stream-next-offset") or offset
            if response.status == 204:
                continue
            response.expect(200)
            if any(m.get("i") == wanted for m in json.loads(response.body or b"[]")):
                return received, offset


def _long_poll(ctx: Context) -> Summary:
    path = ctx.path("delivery-lp")
    latencies: list[float] = []
    with ctx.connect() as conn:
        create_stream(conn, path)
        offset = append(conn, path, b'{"i":-1}').header("stream-next-offset") or "-1"
        poller = _Poller(ctx, path)
        poller.start()
        try:
            for i in range(ctx.sizes.deliveries):
                poller.requests.put((offset, i))
                time.sleep(_SETTLE_S)
                sent = time.time()
                append(conn, path, json.dumps({"i": i}).encode())
                received, offset = poller.results.get(timeout=30.0)
                latencies.append(ms(received - sent))
        finally:
            poller.requests.put(None)
    return summarize(latencies)


def _sse(ctx: Context) -> Summary:
    path = ctx.path("delivery-sse")
    latencies: list[float] = []
    with ctx.connect() as conn, LiveMux() as mux:
        create_stream(conn, path)
        offset = append(conn, path, b'{"m":"warm"}').header("stream-next-offset") or "-1"
        mux.open(f"{ctx.base_url}{path}?offset={quote(offset)}&live=sse")
        warm = mux.watch(b"SSEWARMX")
        append(conn, path, b'{"m":"SSEWARMX"}')
        if not warm.wait(10.0):
            raise RuntimeError("the SSE reader received nothing within 10 s")
        for i in range(ctx.sizes.deliveries):
            marker = b"SSE%07dX" % i
            watch = mux.watch(marker)
            sent = time.time()
            append(conn, path, b'{"m":"%s"}' % marker)
            if not watch.wait(10.0):
                raise RuntimeError(f"SSE message {i} not delivered within 10 s")
            latencies.append(ms(watch.hits[0] - sent))
            time.sleep(_SETTLE_S)
    return summarize(latencies)

