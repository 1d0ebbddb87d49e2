"""Item 4: catch-up reads of a large JSON stream and a large binary stream."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

from streams_server.bench.httpclient import Connection
from streams_server.bench.stats import MIB, ms, summarize
from streams_server.bench.workloads.base import (
    BINARY,
    JSON,
    Context,
    Metric,
    Target,
    append,
    create_stream,
    delete_stream,
)


def json_post_body() -> bytes:
    """About 1 MiB: a JSON array of ~1 KiB objects (so ~1,000 messages per POST)."""
    item = json.dumps({"k": "x" * 1000})
    per_post = MIB // (len(item) + 1)
    return ("[" + ",".join([item] * per_post) + "]").encode()


def build_stream(conn: Connection, path: str, content_type: str, mib: int) -> tuple[int, float]:
    """Create ``path`` and fill it with ``mib`` 1 MiB POSTs; (bytes written, seconds)."""
    body = json_post_body() if content_type == JSON else b"a" * MIB
    create_stream(conn, path, content_type)
    started = time.perf_counter()
    written = 0
    for _ in range(mib):
        append(conn, path, body, content_type)
        written += len(body)
    return written, time.perf_counter() - started


def read_all(conn: Connection, path: str) -> tuple[int, int, float, float]:
    """Catch-up read from the start to the tail: (body bytes, requests, seconds, TTFB s)."""
    offset, received, requests, ttfb = "-1", 0, 0, -1.0
    started = time.perf_counter()
    while True:
        response = conn.request("GET", f"{path}?offset={quote(offset)}", keep_body=False)
        response.expect(200)
        if ttfb < 0:
            ttfb = response.ttfb
        requests += 1
        received += response.body_length
        next_offset = response.header("stream-next-offset") or offset
        if (response.header("stream-up-to-date") == "true" or next_offset == offset
                or response.body_length == 0):
            return received, requests, time.perf_counter() - started, ttfb
        offset = next_offset


def catchup(ctx: Context) -> list[Metric]:
    metrics: list[Metric] = []
    for kind, content_type, goal in (("json", JSON, 1.5), ("binary", BINARY, 1.0)):
        path = ctx.path(f"catchup-{kind}")
        with ctx.connect(timeout=300.0) as conn:
            written, build_s = build_stream(conn, path, content_type, ctx.sizes.catchup_mib)
            reads = [read_all(conn, path) for _ in range(ctx.sizes.catchup_reads)]
            delete_stream(conn, path)
        rates = [written / MIB / seconds for _, _, seconds, _ in reads]
        ttfb = summarize([ms(r[3]) for r in reads]).p50
        best = max(rates)
        ctx.details[f"4_catchup_{kind}"] = {
            "stream_bytes": written, "build_seconds": round(build_s, 2),
            "build_mib_per_s": round(written / MIB / build_s, 1),
            "reads": [{"body_bytes": b, "requests": n, "seconds": round(s, 3),
                       "ttfb_ms": round(ms(t), 2)} for b, n, s, t in reads],
        }
        ctx.log(f"catch-up {kind}: built {written / MIB:.0f} MiB at "
                f"{written / MIB / build_s:.0f} MiB/s; read at {best:.0f} MiB/s "
                f"({reads[0][1]} requests), TTFB {ttfb:.1f} ms")
        metrics += [
            Metric(f"4.{kind}.rate", f"4 catch-up read {kind}", "MiB/s", best,
                   Target("ratio>=", goal)),
            Metric(f"4.{kind}.ttfb", f"4 catch-up read {kind}: first byte", "ms", ttfb),
            Metric(f"4.{kind}.build", f"4 build {kind} with 1 MiB POSTs", "MiB/s",
                   written / MIB / build_s),
        ]
    return metrics
