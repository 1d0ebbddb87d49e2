"""Run the conformance suite from the command line, against a URL or the reference server.

    python -m tests.support.run_conformance --base-url http://127.0.0.1:4437 [--subscriptions]
    python -m tests.support.run_conformance --reference [--durable] [--subscriptions]

Prints the counts and the names of the tests that did not pass; exits 0 only if none failed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.support.conformance import ConformanceReport, run_conformance
from tests.support.processes import ARTIFACTS_DIR, start_reference_server


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit status 0 only if no test failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--base-url", help="server to test, e.g. http://127.0.0.1:4437")
    target.add_argument("--reference", action="store_true", help="start the Node reference server")
    parser.add_argument("--durable", action="store_true", help="reference server: use a data dir")
    parser.add_argument("--webhooks", action="store_true", help="reference server: enable webhooks")
    parser.add_argument("--subscriptions", action="store_true", help="include subscription tests")
    parser.add_argument("--long-poll-timeout-ms", type=int, default=500)
    parser.add_argument("--out", type=Path, help="directory for vitest.json and vitest.log")
    parser.add_argument("-t", dest="pattern", help="only tests whose name matches")
    args = parser.parse_args(argv)

    def run(url: str) -> ConformanceReport:
        return run_conformance(url, long_poll_timeout_ms=args.long_poll_timeout_ms,
                               subscriptions=args.subscriptions, output_dir=args.out,
                               test_name_pattern=args.pattern)

    if args.base_url:
        report = run(args.base_url)
    else:
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ref-data-", dir=ARTIFACTS_DIR) as data_dir:
            with start_reference_server(
                data_dir=Path(data_dir) if args.durable else None,
                long_poll_timeout_ms=args.long_poll_timeout_ms,
                webhooks=args.webhooks,
            ) as server:
                report = run(server.url)
    print(report.summary(show_not_run=True))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
