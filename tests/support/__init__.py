"""Helpers shared by the project's pytest suites: server processes and the conformance run."""

from tests.support.conformance import CaseResult, ConformanceReport, run_conformance
from tests.support.processes import (
    ARTIFACTS_DIR,
    REPO_ROOT,
    ServerProcess,
    ServerStartError,
    free_port,
    start_reference_server,
    start_streams_server,
)

__all__ = [
    "ARTIFACTS_DIR",
    "REPO_ROOT",
    "CaseResult",
    "ConformanceReport",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "run_conformance",
    "start_reference_server",
    "start_streams_server",
]
