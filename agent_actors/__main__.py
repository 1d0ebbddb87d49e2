"""`python -m agent_actors supervisor --help`

The supervisor process runs its actors on gevent greenlets (monkey-patched here, before
anything else is imported): Pykka's actor threads, the answering and chunk-writing threads
and their sockets then cost a greenlet switch per token instead of an OS thread wake-up
under the GIL, which at 100 streaming conversations was most of the process's CPU (see the
README's performance section). The same code runs on real threads when embedded in the web
app. Disk work (the offsets file's fsync) is moved off the event loop (`_blocking`).
"""

import os
import signal
import sys


def _interrupted_while_starting(signum: int, _frame: object) -> None:
    # Ctrl+C before the supervisor's own stop handler is in place (loading alone takes
    # seconds on a busy machine): a KeyboardInterrupt would print a traceback, or hang the
    # exit if it lands inside gevent's monkey-patching. Nothing has started yet.
    print("interrupted while starting" if signum == signal.SIGINT else "stopped while starting",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)


for _sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C, or a service manager's stop
    signal.signal(_sig, _interrupted_while_starting)

from gevent import monkey  # noqa: E402

monkey.patch_all()

from agent_actors.cli import main  # noqa: E402

sys.exit(main())
