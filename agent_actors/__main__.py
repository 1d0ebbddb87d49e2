"""`python -m agent_actors supervisor --help`

The supervisor process runs its actors on gevent greenlets (monkey-patched here, before
anything else is imported): Pykka's actor threads, the answering and chunk-writing threads
and their sockets then cost a greenlet switch per token instead of an OS thread wake-up
under the GIL, which at 100 streaming conversations was most of the process's CPU (see the
README's performance section). The same code runs on real threads when embedded in the web
app. Disk work (the offsets file's fsync) is moved off the event loop (`_blocking`).
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from agent_actors.cli import main  # noqa: E402

sys.exit(main())
