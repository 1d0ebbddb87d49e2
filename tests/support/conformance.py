"""Run the official Durable Streams conformance suite (vitest) and parse its JSON report.

The command-line front end is ``python -m tests.support.run_conformance``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import ARTIFACTS_DIR, CONFORMANCE_DIR, require_node_modules

VITEST = CONFORMANCE_DIR / "node_modules" / "vitest" / "vitest.mjs"


@dataclass(frozen=True)
class CaseResult:
    """One conformance test: ``full_name`` is ``"Group > Subgroup > title"``."""

    full_name: str
    status: str  # "passed", "failed", "skipped", "pending" or "todo"
    duration_ms: float
    failure_messages: tuple[str, ...]


@dataclass(frozen=True, repr=False)
class ConformanceReport:
    """Outcome of one vitest run of the suite."""

    results: tuple[CaseResult, ...]
    file_errors: tuple[str, ...]  # e.g. the test file failed to load
    exit_code: int
    duration_s: float
    json_path: Path
    log_path: Path

    def __repr__(self) -> str:
        return f"<ConformanceReport {self.counts} exit={self.exit_code} json={self.json_path}>"

    @property
    def counts(self) -> dict[str, int]:
        """Number of tests per status."""
        return dict(Counter(r.status for r in self.results))

    @property
    def passed(self) -> int:
        """Number of passed tests."""
        return self.counts.get("passed", 0)

    @property
    def failures(self) -> list[CaseResult]:
        """Tests that ran and failed."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def not_run(self) -> list[CaseResult]:
        """Tests that were skipped (e.g. subscription tests with ``subscriptions=False``)."""
        return [r for r in self.results if r.status not in ("passed", "failed")]

    @property
    def ok(self) -> bool:
        """True if the suite loaded and ran, and no test failed (skipped tests are allowed)."""
        return self.passed > 0 and not self.failures and not self.file_errors

    def summary(self, *, show_not_run: bool = False) -> str:
        """A short multi-line text: counts, time, the names of failed (and skipped) tests."""
        lines = [
            f"{self.passed} of {len(self.results)} passed in {self.duration_s:.1f}s "
            f"{self.counts} (vitest exit {self.exit_code}; log {self.log_path})"
        ]
        lines += [f"  file error: {e.splitlines()[0] if e else '?'}" for e in self.file_errors]
        shown = self.failures + (self.not_run if show_not_run else [])
        lines += [f"  {r.status.upper()}: {r.full_name}{_first_line(r)}" for r in shown]
        return "\n".join(lines)


def _first_line(result: CaseResult) -> str:
    """`` -- <first line of the first failure message>``, shortened, or an empty string."""
    text = result.failure_messages[0].strip() if result.failure_messages else ""
    return f" -- {text.splitlines()[0][:160]}" if text else ""


def run_conformance(
    base_url: str,
    *,
    long_poll_timeout_ms: int = 500,
    subscriptions: bool = False,
    output_dir: Path | None = None,
    test_name_pattern: str | None = None,
    timeout: float = 600.0,
) -> ConformanceReport:
    """Run the suite against ``base_url`` (streams at ``{base_url}/v1/stream/...``).

    ``long_poll_timeout_ms`` must match the server's long-poll timeout. Writes
    ``vitest.json`` and ``vitest.log`` to ``output_dir`` (default: a new directory under
    ``test-artifacts/conformance``). ``test_name_pattern`` is vitest's ``-t`` filter.
    Raises ``RuntimeError`` if vitest runs longer than ``timeout`` seconds or writes no
    report. Against a dead server each remaining test fails slowly (the suite's client
    retries), so a crash mid-run usually ends in that timeout: read the server's log.
    """
    require_node_modules()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH (Node >= 20.19 is needed)")
    if output_dir is None:
        (ARTIFACTS_DIR / "conformance").mkdir(parents=True, exist_ok=True)
        output_dir = Path(tempfile.mkdtemp(prefix="run-", dir=ARTIFACTS_DIR / "conformance"))
    output_dir = output_dir.resolve()  # vitest runs in CONFORMANCE_DIR
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, log_path = output_dir / "vitest.json", output_dir / "vitest.log"
    json_path.unlink(missing_ok=True)
    argv = [node, str(VITEST), "run", "--reporter=default", "--reporter=json",
            f"--outputFile.json={json_path}"]
    if test_name_pattern:
        argv += ["-t", test_name_pattern]
    env = {
        **os.environ,
        "DS_BASE_URL": base_url,
        "DS_LONG_POLL_TIMEOUT_MS": str(long_poll_timeout_ms),
        "DS_SUBSCRIPTIONS": "1" if subscriptions else "0",
        "NO_COLOR": "1",
        "CI": "1",
    }
    started = time.monotonic()
    exit_code = _run_vitest(argv, env, log_path, timeout)
    duration = time.monotonic() - started
    if not json_path.exists():
        raise RuntimeError(f"vitest wrote no JSON report (exit {exit_code}); see {log_path}")
    results, file_errors = _parse_report(json.loads(json_path.read_text()))
    return ConformanceReport(results, file_errors, exit_code, duration, json_path, log_path)


def _run_vitest(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> int:
    """Run vitest in its own process group, so that no worker outlives a timeout or Ctrl-C."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=CONFORMANCE_DIR, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
    raise RuntimeError(f"vitest did not finish within {timeout:.0f}s (server hung or died?); "
                       f"last lines of {log_path}:\n{tail}")


def _parse_report(report: dict[str, Any]) -> tuple[tuple[CaseResult, ...], tuple[str, ...]]:
    results: list[CaseResult] = []
    file_errors: list[str] = []
    for file_result in report.get("testResults", []):
        if file_result.get("status") == "failed" and file_result.get("message"):
            file_errors.append(str(file_result["message"]))
        for test in file_result.get("assertionResults", []):
            name = " > ".join([*test.get("ancestorTitles", []), test["title"]])
            results.append(CaseResult(
                full_name=name,
                status=str(test["status"]),
                duration_ms=float(test.get("duration") or 0.0),
                failure_messages=tuple(test.get("failureMessages", [])),
            ))
    return tuple(results), tuple(file_errors)
