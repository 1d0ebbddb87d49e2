"""`python -m streams_server --help`: the standalone Durable Streams server.

It serves on gevent greenlets, monkey-patched here before anything else is imported.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum: int, _frame: object) -> None:
    # Ctrl+C before the server's own stop handler is in place (loading alone takes seconds
    # on a busy machine): a KeyboardInterrupt would print a traceback, or hang the exit if it
    # lands inside gevent's monkey-patching. A store being opened is as safe as after kill -9.
    print("interrupted while starting" if signum == signal.SIGINT else "stopped while starting",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)


for _sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C, or a service manager's stop
    signal.signal(_sig, _interrupted_while_starting)

from gevent import monkey  # noqa: E402

monkey.patch_all()

from streams_server.cli import main  # noqa: E402

sys.exit(main())
