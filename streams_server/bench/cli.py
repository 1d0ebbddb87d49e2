"""``python -m streams_server.bench``: the same workloads on each server, one server at a time."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams_server.bench.processes import (
    DEFAULT_REFERENCE_DIR,
    SERVER_KINDS,
    ManagedProcess,
    ServerOptions,
    StartError,
    server_process,
)
from streams_server.bench.table import build_rows, render
from streams_server.bench.workloads import FULL, QUICK, WORKLOADS, Context, Metric, Sizes, Workload

DEFAULT_SERVERS = ("ours", "ref-file", "ref-memory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streams_server.bench",
        description="Benchmark this project's streams server side by side with the Node "
                    "reference server: the same workloads against each, one server at a time, "
                    "then one table with the ratio ours/ref-file.",
        epilog="Workloads: " + "; ".join(f"{w.number} {w.name}" for w in WORKLOADS)
               + ".",
    )
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke run of a minute or two")
    parser.add_argument("--only", default=None, metavar="1,2,...",
                        help="workloads to run (default: all)")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS), metavar="LIST",
                        help=f"servers, in order, from {', '.join(SERVER_KINDS)} "
                             f"(default: {','.join(DEFAULT_SERVERS)})")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                        help="write every figure, details and the table as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one size, e.g. --set fanout_readers=500 "
                             "(names: " + ", ".join(f.name for f in dataclasses.fields(Sizes))
                             + ")")
    parser.add_argument("--long-poll-timeout", type=float, default=5.0, metavar="S",
                        help="the servers' long-poll timeout in seconds (5)")
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE_DIR,
                        help="where reference_server.mjs and its node_modules are")
    parser.add_argument("--node", default="node", help="the Node executable (node)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="data and logs (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (data and logs) afterwards")
    return parser


class UsageError(ValueError):
    """An argument that cannot be used: reported with the usage line, exit status 2."""


def parse_sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    types = {f.name: f.type for f in dataclasses.fields(Sizes)}
    changes: dict[str, Any] = {}
    for item in args.set:
        name, _, text = item.partition("=")
        if name not in types:
            raise UsageError(f"--set: unknown size {name!r}")
        current = getattr(sizes, name)
        try:
            if isinstance(current, tuple):
                changes[name] = tuple(int(x) for x in text.split(","))
            elif isinstance(current, float) or current is None:
                changes[name] = float(text)
            else:
                changes[name] = int(text)
        except ValueError:
            kind = "whole numbers, comma-separated" if isinstance(current, tuple) else "a number"
            raise UsageError(f"--set {name}: must be {kind}, not {text!r}") from None
        problem = _size_problem(name, changes[name])
        if problem:
            raise UsageError(f"--set {name}: {problem}, not {text!r}")
    return dataclasses.replace(sizes, **changes)


_MAX_COALESCE_MS = 10_000.0
"""The supervisor's own limit on ``--coalesce-ms``: refused here, before servers start."""


def _size_problem(name: str, value: object) -> str:
    """Why a size cannot be used ("" if it can): a zero or negative count, time or rate makes
    a workload divide by zero, wait for ever or measure nothing."""
    if name == "chat_coalesce_ms":
        assert isinstance(value, float)
        ok = 0.0 <= value <= _MAX_COALESCE_MS
        return "" if ok else f"must be from 0 to {_MAX_COALESCE_MS:g} ms"
    if isinstance(value, tuple):
        ok = all(n >= 1 for n in value) and all(a < b for a, b in zip(value, value[1:]))
        return "" if ok else "must be whole numbers of at least 1, in increasing order"
    if isinstance(value, float):
        return "" if 0.0 < value < float("inf") else "must be a number greater than 0"
    assert isinstance(value, int)
    return "" if value >= 1 else "must be at least 1"


def selected_workloads(only: str | None) -> list[Workload]:
    if only is None:
        return list(WORKLOADS)
    try:
        numbers = {int(x) for x in only.split(",") if x.strip()}
    except ValueError:
        raise UsageError(f"--only: workload numbers, comma-separated, not {only!r}") from None
    if not numbers:
        raise UsageError("--only: name at least one workload")
    unknown = numbers - {w.number for w in WORKLOADS}
    if unknown:
        raise UsageError(f"--only: no workload {sorted(unknown)}")
    return [w for w in WORKLOADS if w.number in numbers]


def check_paths(args: argparse.Namespace) -> None:
    """Before hours of work: where the results and the data will go must be usable."""
    if args.out is not None and not args.out.parent.is_dir():
        raise UsageError(f"--out: there is no directory {str(args.out.parent)!r}")
    if args.out is not None and args.out.is_dir():
        raise UsageError(f"--out: {str(args.out)!r} is a directory")
    if args.out is not None:
        existed = args.out.exists()
        try:
            with open(args.out, "a"):
                pass
        except OSError as exc:
            raise UsageError(f"--out: cannot write {str(args.out)!r}: {exc.strerror}") from None
        if not existed:
            args.out.unlink()
    if args.workdir is not None and args.workdir.exists() and not args.workdir.is_dir():
        raise UsageError(f"--workdir: {str(args.workdir)!r} is not a directory")
    if args.workdir is not None:
        try:
            args.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--workdir: cannot make {str(args.workdir)!r}: {exc.strerror}") from None
    if not 0 < args.long_poll_timeout < float("inf"):
        raise UsageError("--long-poll-timeout: must be a number greater than 0")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class Run:
    """Results of the whole run: figures and details per server, and errors."""

    def __init__(self, sizes: Sizes, servers: Sequence[str]) -> None:
        self.sizes = sizes
        self.servers = list(servers)
        self.metrics: dict[str, list[Metric]] = {s: [] for s in servers}
        self.details: dict[str, dict[str, Any]] = {s: {} for s in servers}
        self.errors: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.started = time.time()
        self.load_at_start = os.getloadavg()
        self.cpu_probe_ms: dict[str, float] = {"start": cpu_probe_ms()}

    def to_json(self) -> dict[str, Any]:
        rows = build_rows(self.metrics)
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "duration_s": round(time.time() - self.started, 1),
            "machine": {"cpus": os.cpu_count(), "loadavg_at_start": self.load_at_start,
                        "loadavg_at_end": os.getloadavg(), "cpu_probe_ms": self.cpu_probe_ms},
            "sizes": self.sizes.to_json(),
            "servers": {s: {"metrics": {m.key: m.to_json() for m in self.metrics[s]},
                            "details": self.details[s]} for s in self.servers},
            "table": [row.to_json() for row in rows],
            "errors": self.errors,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
        }


def cpu_probe_ms() -> float:
    """The CPU time of a fixed pure-Python loop, in milliseconds: how fast this machine runs
    Python right now. On a shared VM it moves with the neighbours' load (by 60 % within an
    hour here), and every figure of the run moves with it."""
    times = []
    for _ in range(3):  # the fastest of three: a probe of its own is noisy
        started = time.process_time()
        total = 0
        for i in range(1_000_000):
            total += i * i
        times.append(time.process_time() - started)
    return round(min(times) * 1000, 1)


def run_server(run: Run, kind: str, workloads: list[Workload], options: ServerOptions) -> None:
    """Start server ``kind``, run each workload against it, stop it; errors are recorded."""
    run.cpu_probe_ms[kind] = cpu_probe_ms()
    started = time.perf_counter()
    try:
        process = server_process(kind, options).start()
    except (StartError, OSError) as exc:
        run.errors[kind] = f"server did not start: {exc}"
        log(f"[{kind}] ERROR: server did not start: {exc}")
        return
    assert process.url is not None
    log(f"[{kind}] started at {process.url} (pid {process.pid})")
    try:
        for workload in workloads:
            if not process.running:
                run.errors[f"{kind} #{workload.number}"] = (
                    "server is no longer running; its log ends:\n" + process.log_tail(10))
                continue
            _run_workload(run, kind, workload, process, options)
    finally:
        process.stop()
        shutil.rmtree(options.workdir / f"data-{kind}", ignore_errors=True)
        run.timings[kind] = time.perf_counter() - started


def _run_workload(run: Run, kind: str, workload: Workload, process: ManagedProcess,
                  options: ServerOptions) -> None:
    assert process.url is not None
    ctx = Context(server=kind, base_url=process.url, process=process, sizes=run.sizes,
                  workdir=options.workdir, log=lambda m: log(f"[{kind}] {m}"),
                  details=run.details[kind])
    log(f"[{kind}] #{workload.number} {workload.name}")
    started = time.perf_counter()
    try:
        run.metrics[kind].extend(workload.run(ctx))
    except Exception as exc:  # noqa: BLE001 - reported; the other workloads still run
        message = f"{type(exc).__name__}: {exc}"
        run.errors[f"{kind} #{workload.number} {workload.name}"] = message
        log(f"[{kind}] ERROR in #{workload.number} {workload.name}: {message}")
        log("".join(traceback.format_exception(exc)).rstrip())
    finally:
        seconds = time.perf_counter() - started
        run.timings[f"{kind} #{workload.number}"] = seconds
        log(f"[{kind}] #{workload.number} took {seconds:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sizes = parse_sizes(args)
        workloads = selected_workloads(args.only)
        servers = [s.strip() for s in args.servers.split(",") if s.strip()]
        unknown = [s for s in servers if s not in SERVER_KINDS]
        if unknown or not servers:
            raise UsageError(f"--servers: {'unknown ' + str(unknown) if unknown else 'none'};"
                             f" expected some of {', '.join(SERVER_KINDS)}")
        check_paths(args)
    except UsageError as exc:
        parser.error(str(exc))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="streams-bench-"))
    options = ServerOptions(workdir=workdir, long_poll_timeout_s=args.long_poll_timeout,
                            reference_dir=args.reference_dir, node=args.node)
    run = Run(sizes, servers)
    log(f"benchmark: servers {', '.join(servers)}; workloads "
        f"{', '.join(str(w.number) for w in workloads)}; {'quick' if args.quick else 'full'} "
        f"sizes; work directory {workdir}")
    interrupted = False
    try:
        for kind in servers:
            run_server(run, kind, workloads, options)
    except KeyboardInterrupt:  # each server was stopped on the way out: report what ran
        interrupted = True
        run.errors["interrupted"] = "stopped with Ctrl+C; the figures are those taken before"
        log("interrupted: the figures taken so far follow")
    finally:
        run.cpu_probe_ms["end"] = cpu_probe_ms()
        result = run.to_json()
        if args.out:
            try:
                args.out.write_text(json.dumps(result, indent=2) + "\n")
                log(f"results written to {args.out}")
            except OSError as exc:  # writable at the start: the table below still shows
                run.errors["results file"] = f"could not write {args.out}: {exc.strerror}"
                log(f"could not write the results to {args.out}: {exc.strerror}")
        if args.keep or run.errors:
            log(f"work directory kept (logs under {workdir / 'logs'})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(render(build_rows(run.metrics), servers, run.errors))
    load = ", ".join(f"{x:.1f}" for x in run.load_at_start)
    print(f"\ntotal {result['duration_s']:.0f} s on {os.cpu_count()} CPUs, "
          f"{'quick' if args.quick else 'full'} sizes; load average at start {load} "
          "(figures drift with load: compare columns of one run only)")
    probes = ", ".join(f"{where} {ms:.0f}" for where, ms in run.cpu_probe_ms.items())
    print(f"CPU probe, ms for a fixed Python loop (lower is faster; a server's is taken just "
          f"before it starts): {probes}")
    return 130 if interrupted else 1 if run.errors else 0
