"""The official Durable Streams conformance suite, run against this project's server."""

from pathlib import Path

import pytest

from tests.support import ARTIFACTS_DIR, run_conformance, start_streams_server

LONG_POLL_TIMEOUT_S = 0.5


@pytest.mark.timeout(900)
def test_streams_server_passes_the_whole_conformance_suite(tmp_path: Path) -> None:
    """Every test of @durable-streams/server-conformance-tests passes, subscriptions
    included, on the durable SQLite engine."""
    with start_streams_server(  # the suite's webhook receivers listen on this machine
        tmp_path / "data", long_poll_timeout=LONG_POLL_TIMEOUT_S,
        extra_args=["--allow-local-webhooks"],
    ) as server:
        report = run_conformance(
            server.url,
            long_poll_timeout_ms=int(LONG_POLL_TIMEOUT_S * 1000),
            subscriptions=True,
            output_dir=ARTIFACTS_DIR / "conformance" / "streams_server",
        )
    assert report.ok, "conformance failures:\n" + report.summary()
    assert not report.not_run, f"tests not run: {[r.full_name for r in report.not_run]}"
    assert report.passed >= 338, report.summary()
