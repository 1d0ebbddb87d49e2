"""Item 5: one append fanned out to many live SSE readers of one stream, and server memory."""

from __future__ import annotations

import time
from urllib.parse import quote

from streams_server.bench.live import LiveMux
from streams_server.bench.processes import wait_until
from streams_server.bench.stats import ms, summarize
from streams_server.bench.workloads.base import Context, Metric, Target, append, create_stream

_BATCH = 100
"""Readers connected at a time before waiting for the server to answer them."""


def fanout(ctx: Context) -> list[Metric]:
    count = ctx.sizes.fanout_readers
    path = ctx.path("fanout")
    last: list[float] = []
    first: list[float] = []
    with ctx.connect() as conn, LiveMux() as mux:
        create_stream(conn, path)
        offset = append(conn, path, b'{"m":"start"}').header("stream-next-offset") or "-1"
        rss_before = ctx.process.rss_kib() or 0
        connect_s = _connect_readers(ctx, mux, f"{ctx.base_url}{path}?offset={quote(offset)}"
                                     "&live=sse", count)
        warm = mux.watch(b"FANWARMX")
        append(conn, path, b'{"m":"FANWARMX"}')
        if not warm.wait(60.0):
            raise RuntimeError(f"only {len(warm.hits)} of {count} SSE readers got the "
                               "warm-up append within 60 s")
        rss_with = ctx.process.rss_kib() or 0
        busy_before, recvs_before = mux.busy_s, sum(len(r.log) for r in mux.readers)
        deadline = time.monotonic() + ctx.sizes.fanout_seconds
        for i in range(ctx.sizes.fanout_appends):
            if i >= 5 and time.monotonic() > deadline:
                ctx.log(f"  fan-out time budget used up after {i} appends")
                break
            marker = b"FAN%07dX" % i
            watch = mux.watch(marker)
            sent = time.time()
            append(conn, path, b'{"m":"%s"}' % marker)
            if not watch.wait(60.0):
                raise RuntimeError(f"append {i} reached only {len(watch.hits)} of "
                                   f"{watch.expected} readers within 60 s")
            times = watch.hits.values()
            last.append(ms(max(times) - sent))
            first.append(ms(min(times) - sent))
            time.sleep(0.05)
        rounds = len(last)
        loop_ms = ms(mux.busy_s - busy_before) / rounds
        recvs = (sum(len(r.log) for r in mux.readers) - recvs_before) / rounds / count
        still_open = mux.open_count()
    s_last, s_first = summarize(last), summarize(first)
    ctx.details["5_fanout"] = {
        "readers": count, "appends": rounds, "still_open": still_open,
        "connect_seconds": round(connect_s, 2),
        "last_reader_ms": s_last.to_json(), "first_reader_ms": s_first.to_json(),
        "rss_kib_before": rss_before, "rss_kib_with_readers": rss_with,
        "client_loop_ms_per_append": round(loop_ms, 2),
        "client_recvs_per_reader_per_append": round(recvs, 2),
    }
    ctx.log(f"fan-out to {count}: last reader p50 {s_last.p50:.1f} ms p99 {s_last.p99:.1f} ms "
            f"(first p50 {s_first.p50:.1f} ms); RSS {rss_before / 1024:.0f} -> "
            f"{rss_with / 1024:.0f} MiB; client loop {loop_ms:.1f} ms/append, "
            f"{recvs:.1f} recv/reader/append")
    label = f"5 fan-out to {count} SSE"
    return [
        Metric("5.last.p50", f"{label}: last reader p50", "ms", s_last.p50),
        Metric("5.last.p99", f"{label}: last reader p99", "ms", s_last.p99,
               Target("value<=", 100.0)),
        Metric("5.first.p50", f"{label}: first reader p50", "ms", s_first.p50),
        Metric("5.rss", f"{label}: server RSS", "MiB", rss_with / 1024,
               note=f"{rss_before / 1024:.0f} MiB before"),
        Metric("5.client", f"{label}: bench client loop/append", "ms", loop_ms,
               note="client-side cost, not the server's"),
    ]


def _connect_readers(ctx: Context, mux: LiveMux, url: str, count: int) -> float:
    """Open ``count`` readers in batches, each batch answered before the next; seconds."""
    started = time.perf_counter()
    while len(mux.readers) < count:
        batch = [mux.open(url) for _ in range(min(_BATCH, count - len(mux.readers)))]
        if not wait_until(lambda: all(r.log or r.closed_at for r in batch), 10.0):
            ctx.log("  (some SSE readers have no response yet; going on)")
    if mux.open_count() < count:
        raise RuntimeError(f"{count - mux.open_count()} of {count} SSE readers were closed")
    return time.perf_counter() - started
