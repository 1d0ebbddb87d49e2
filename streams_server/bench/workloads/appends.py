"""Items 1 and 2: sequential small JSON appends, and 16 concurrent writers."""

from __future__ import annotations

import json
import threading
import time

from streams_server.bench.stats import ms, summarize
from streams_server.bench.workloads.base import Context, Metric, Target, append, create_stream

_WARMUP = 50


def _small_message(i: int, writer: int = 0) -> bytes:
    return json.dumps({"w": writer, "i": i, "ts": time.time(), "msg": "hello durable streams"},
                      separators=(",", ":")).encode()


def sequential(ctx: Context) -> list[Metric]:
    """One client appending small JSON messages one after the other: latency per append."""
    path = ctx.path("seq")
    latencies: list[float] = []
    with ctx.connect() as conn:
        create_stream(conn, path)
        for i in range(_WARMUP + ctx.sizes.seq_appends):
            started = time.perf_counter()
            append(conn, path, _small_message(i))
            if i >= _WARMUP:
                latencies.append(ms(time.perf_counter() - started))
    s = summarize(latencies)
    ctx.details["1_sequential"] = {"latency_ms": s.to_json(),
                                   "appends_per_s": round(1000 * s.n / sum(latencies), 1)}
    ctx.log(f"sequential x{s.n}: p50 {s.p50:.2f} ms, p99 {s.p99:.2f} ms")
    return [
        Metric("1.seq.p50", "1 sequential append p50", "ms", s.p50, Target("ratio<=", 1.0)),
        Metric("1.seq.p99", "1 sequential append p99", "ms", s.p99),
    ]


def concurrent(ctx: Context) -> list[Metric]:
    """16 writers for a fixed time, on one shared stream and then on one stream each."""
    metrics: list[Metric] = []
    for shape in ("shared", "separate"):
        rate, p99, errors = _writers(ctx, shape)
        note = f"{errors} errors" if errors else ""
        metrics += [
            Metric(f"2.{shape}.rate", f"2 {ctx.sizes.writers} writers, {shape} stream(s)",
                   "appends/s", rate, Target("ratio>=", 1.5), note),
            Metric(f"2.{shape}.p99", f"2 {ctx.sizes.writers} writers, {shape}: p99", "ms", p99),
        ]
    return metrics


def _writers(ctx: Context, shape: str) -> tuple[float, float, int]:
    count = ctx.sizes.writers
    paths = ([ctx.path("writers-shared")] * count if shape == "shared"
             else [ctx.path(f"writers-{w}") for w in range(count)])
    with ctx.connect() as conn:
        for path in sorted(set(paths)):
            create_stream(conn, path)
    latencies: list[list[float]] = [[] for _ in range(count)]
    errors = [0] * count
    barrier = threading.Barrier(count + 1)
    deadline = [0.0]

    def writer(w: int) -> None:
        with ctx.connect() as conn:
            append(conn, paths[w], _small_message(-1, w))  # connect and warm up
            barrier.wait()
            i = 0
            while time.perf_counter() < deadline[0]:
                started = time.perf_counter()
                try:
                    append(conn, paths[w], _small_message(i, w))
                    latencies[w].append(ms(time.perf_counter() - started))
                except Exception:  # noqa: BLE001 - counted, reported in the table
                    errors[w] += 1
                i += 1

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(count)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + 3600.0  # until the barrier sets the real one
    barrier.wait()
    started, cpu_before = time.perf_counter(), time.process_time()
    deadline[0] = started + ctx.sizes.writer_seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    client_cpu = (time.process_time() - cpu_before) / elapsed
    merged = [x for per in latencies for x in per]
    s = summarize(merged)
    rate = len(merged) / elapsed
    ctx.details[f"2_writers_{shape}"] = {"appends": len(merged), "seconds": round(elapsed, 2),
                                         "errors": sum(errors), "appends_per_s": round(rate, 1),
                                         "client_cpu_fraction": round(client_cpu, 2),
                                         "latency_ms": s.to_json()}
    ctx.log(f"{count} writers {shape}: {rate:.0f} appends/s, p50 {s.p50:.2f} ms, "
            f"p99 {s.p99:.2f} ms, {sum(errors)} errors; bench client CPU {client_cpu:.0%}")
    return rate, s.p99, sum(errors)
