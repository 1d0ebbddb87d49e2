"""`python -m streams_server.bench.groupcommit`: what group commit buys, measured in-process.

Writer threads append small JSON messages through the storage engine on a real SQLite file
(`synchronous=FULL`), once with one transaction and fsync per append and once with group
commit, and print appends/s, latency and appends per transaction. The HTTP layer is left out
so that the figure is the storage engine's alone.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

from ..storage.engine import StreamStore
from ..storage.models import Expiry
from .stats import percentile


def run(writers: int, seconds: float, max_batch: int | None, shared: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="groupcommit-") as data_dir:
        store = StreamStore.open_directory(data_dir, max_batch=max_batch)
        paths = ["shared"] * writers if shared else [f"w{i}" for i in range(writers)]
        for path in set(paths):
            store.create(path, content_type="application/json", expiry=Expiry())
        latencies: list[float] = []
        lock = threading.Lock()
        start_batches, start_ops = store.commit_stats
        deadline = time.monotonic() + seconds

        def writer(path: str) -> None:
            mine = []
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                store.append(path, [b'{"n":1}'], content_type="application/json")
                mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=writer, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches, ops = store.commit_stats
        store.close()
    latencies.sort()
    return {
        "appends_per_s": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "appends_per_commit": (ops - start_ops) / max(1, batches - start_batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m streams_server.bench.groupcommit")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"{args.writers} writer threads, {args.seconds:.0f} s each, SQLite synchronous=FULL")
    print(f"{'streams':9} {'commits':22} {'appends/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'appends/commit':>15}")
    for shared in (True, False):
        for label, max_batch in (("one per append", 1), ("group commit", None)):
            r = run(args.writers, args.seconds, max_batch, shared)
            print(f"{'shared' if shared else 'separate':9} {label:22} {r['appends_per_s']:10.0f}"
                  f" {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['appends_per_commit']:15.1f}")


if __name__ == "__main__":
    main()
