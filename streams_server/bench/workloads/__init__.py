"""The benchmark's workloads, numbered as in the benchmark issue; each returns `Metric`s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from streams_server.bench.workloads.appends import concurrent, sequential
from streams_server.bench.workloads.base import FULL, QUICK, Context, Metric, Sizes, Target
from streams_server.bench.workloads.catchup import catchup
from streams_server.bench.workloads.chat import chat
from streams_server.bench.workloads.delivery import delivery
from streams_server.bench.workloads.fanout import fanout
from streams_server.bench.workloads.growth import growth


@dataclass(frozen=True)
class Workload:
    """One numbered workload, run against every server."""

    number: int
    name: str
    run: Callable[[Context], list[Metric]]


WORKLOADS: tuple[Workload, ...] = (
    Workload(1, "sequential appends", sequential),
    Workload(2, "concurrent writers", concurrent),
    Workload(3, "live delivery", delivery),
    Workload(4, "catch-up reads", catchup),
    Workload(5, "SSE fan-out", fanout),
    Workload(6, "growth", growth),
    Workload(7, "chat", chat),
)

__all__ = ["FULL", "QUICK", "WORKLOADS", "Context", "Metric", "Sizes", "Target", "Workload"]
