"""Ctrl+C and `kill` under `flask run`: the first one stops the app, a second Ctrl+C hurries.

The first SIGINT (or SIGTERM) raises KeyboardInterrupt, which ends Werkzeug's serving loop
and leads to the clean exit, where the embedded agents stop and their leases are released.
Later signals raise nothing: one arriving in the middle of the exit used to interrupt
whatever ran then (the agents' stop, another exit callback) and print a traceback. A later
SIGINT sets `STOP_AT_ONCE`, and the agents' stop stops waiting for them; a later SIGTERM is
the one stop signalled twice (`timeout` signals the process and its group) and is ignored.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_AT_ONCE = threading.Event()
"""Set by a Ctrl+C after the first: stop without waiting for the agents."""

_stopping = threading.Event()


def take_stop_signals() -> None:
    """Install the handlers, only where the default ones are in place: a WSGI server with
    handlers of its own keeps them, and a SIGINT ignored (a background job) stays ignored.
    Only the main thread can install a handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_stop_signal)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_stop_signal)


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    if not _stopping.is_set():
        _stopping.set()
        raise KeyboardInterrupt
    if signum == signal.SIGINT:
        STOP_AT_ONCE.set()
