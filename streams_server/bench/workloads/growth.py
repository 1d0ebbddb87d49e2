"""Item 6: append and tail-read latency must stay flat as a stream and the store grow.

Three measurements, each a series of (small append, read of just that append):
  1. one empty stream on an (almost) empty server: the baseline;
  2. the same stream after 10,000 more streams were created: "many streams", compared with
     the mean of the baseline before and a second baseline once those streams are deleted
     again (A-B-A), so that the machine's drift between phases does not pass for growth;
  3. a stream of 1 GiB (1 MiB JSON POSTs), interleaved with a fresh empty stream measured at
     the same time: "big stream" versus "empty stream".
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from urllib.parse import quote

from streams_server.bench.httpclient import Connection
from streams_server.bench.stats import MIB, ms, summarize
from streams_server.bench.workloads.base import (
    JSON,
    Context,
    Metric,
    Target,
    append,
    create_stream,
    delete_stream,
    request_retrying,
)
from streams_server.bench.workloads.catchup import build_stream

_THREADS = 4
_FLAT = Target("value<=", 1.2)


class _Series:
    """Append and tail-read latencies (ms) of one stream."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.appends: list[float] = []
        self.reads: list[float] = []
        self._tail: str | None = None

    def sample(self, conn: Connection, i: int) -> None:
        if self._tail is None:
            self._tail = conn.request("HEAD", self.path).expect(200).header(
                "stream-next-offset") or "-1"
        before = self._tail
        started = time.perf_counter()
        response = append(conn, self.path, json.dumps({"i": i, "msg": "growth probe"}).encode())
        self.appends.append(ms(time.perf_counter() - started))
        self._tail = response.header("stream-next-offset")
        started = time.perf_counter()
        body = conn.request("GET", f"{self.path}?offset={quote(before)}").expect(200).body
        self.reads.append(ms(time.perf_counter() - started))
        if b"growth probe" not in body:
            raise RuntimeError(f"tail read of {self.path} missed the append: {body[:200]!r}")

    def p50s(self) -> tuple[float, float]:
        return summarize(self.appends).p50, summarize(self.reads).p50


def _measure(conn: Connection, series: Sequence[_Series], samples: int,
             budget_s: float = 1e9) -> None:
    deadline = time.monotonic() + budget_s
    for i in range(samples):
        if i >= 10 and time.monotonic() > deadline:
            break
        for one in series:
            one.sample(conn, i)


def growth(ctx: Context) -> list[Metric]:
    samples, budget = ctx.sizes.growth_samples, ctx.sizes.growth_seconds
    with ctx.connect(timeout=300.0) as conn:
        base = _Series(ctx.path("growth/base"))
        create_stream(conn, base.path)

        def warm_up() -> None:
            """Equal footing for every phase: the same uncounted requests before each one,
            so none pays alone for what the previous step left behind (a WAL checkpoint)."""
            _measure(conn, [_Series(base.path)], max(10, samples // 4))

        warm_up()
        _measure(conn, [base], samples, budget)
        baseline = base.p50s()

        many_s = _create_many(ctx, ctx.sizes.growth_streams - 1)
        crowded = _Series(base.path)
        warm_up()
        _measure(conn, [crowded], samples, budget)
        _delete_many(ctx, ctx.sizes.growth_streams - 1)
        base_again = _Series(base.path)
        warm_up()
        _measure(conn, [base_again], samples, budget)
        baseline = _mean(baseline, base_again.p50s())

        big = _Series(ctx.path("growth/big"))
        written, build_s = build_stream(conn, big.path, JSON, ctx.sizes.growth_mib)
        empty = _Series(ctx.path("growth/empty"))
        create_stream(conn, empty.path)
        _measure(conn, [big, empty], samples, budget)
        delete_stream(conn, big.path)

    figures = {"baseline": baseline, "baseline_before": base.p50s(),
               "baseline_after": base_again.p50s(), "many_streams": crowded.p50s(),
               "big_stream": big.p50s(),
               "empty_stream": empty.p50s()}
    ctx.details["6_growth"] = {
        "streams": ctx.sizes.growth_streams, "create_seconds": round(many_s, 1),
        "big_stream_bytes": written, "big_build_seconds": round(build_s, 1),
        "p50_ms_append_read": {k: [round(v, 3) for v in pair] for k, pair in figures.items()},
    }
    size = f"{written / MIB:.0f} MiB"
    ctx.log(f"growth: append/read p50 ms: base {_pair(base.p50s())} before, "
            f"{_pair(base_again.p50s())} after, {ctx.sizes.growth_streams} "
            f"streams {_pair(crowded.p50s())}, {size} stream {_pair(big.p50s())} vs empty "
            f"{_pair(empty.p50s())} (built in {build_s:.0f} s)")
    n = ctx.sizes.growth_streams
    return [
        Metric("6.big.append", f"6 append p50 on {size} stream", "ms", big.p50s()[0]),
        Metric("6.big.read", f"6 tail read p50 on {size} stream", "ms", big.p50s()[1]),
        Metric("6.big.append.x", f"6 {size} / empty stream: append p50", "x",
               big.p50s()[0] / empty.p50s()[0], _FLAT),
        Metric("6.big.read.x", f"6 {size} / empty stream: tail read p50", "x",
               big.p50s()[1] / empty.p50s()[1], _FLAT),
        Metric("6.many.append.x", f"6 {n} streams / 1: append p50", "x",
               crowded.p50s()[0] / baseline[0], _FLAT),
        Metric("6.many.read.x", f"6 {n} streams / 1: tail read p50", "x",
               crowded.p50s()[1] / baseline[1], _FLAT),
        Metric("6.build", f"6 build {size} JSON with 1 MiB POSTs", "MiB/s",
               written / MIB / build_s),
    ]


def _mean(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2


def _pair(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f}/{pair[1]:.2f}"


def _many_paths(ctx: Context, count: int) -> list[str]:
    return [ctx.path(f"growth/many/{i:05d}") for i in range(count)]


def _in_threads(ctx: Context, paths: list[str], method: str) -> float:
    started = time.perf_counter()
    errors: list[BaseException] = []
    retries: list[str] = []

    def work(part: list[str]) -> None:
        with ctx.connect() as conn:
            for path in part:
                try:
                    if method == "PUT":
                        _put_retrying(conn, path, retries)
                    else:
                        delete_stream(conn, path)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=work, args=(paths[t::_THREADS],), daemon=True)
               for t in range(_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{method} of many streams failed: {errors[0]}") from errors[0]
    if retries:
        ctx.log(f"  {len(retries)} PUTs failed once and were retried, e.g. {retries[0]}")
        ctx.details.setdefault("6_growth_put_retries", []).extend(retries[:20])
    return time.perf_counter() - started


def _put_retrying(conn: Connection, path: str, retries: list[str]) -> None:
    """Create a stream with one small message; a failed PUT is retried twice (and noted)."""
    request_retrying(conn, "PUT", path, b'{"n":1}', {"Content-Type": JSON}, ok=(200, 201),
                     retry_if=lambda status: True, retries=retries)


def _create_many(ctx: Context, count: int) -> float:
    seconds = _in_threads(ctx, _many_paths(ctx, count), "PUT")
    ctx.log(f"  created {count} streams in {seconds:.1f} s")
    return seconds


def _delete_many(ctx: Context, count: int) -> None:
    _in_threads(ctx, _many_paths(ctx, count), "DELETE")
