"""Ctrl+C and `kill` under `flask run`: the first stops the app, a second one hurries.

The first SIGINT (or SIGTERM) raises KeyboardInterrupt, which ends Werkzeug's serving loop
and leads to the clean exit, where the embedded agents stop and their leases are released.
Later signals raise nothing: one arriving in the middle of the exit used to interrupt
whatever ran then (the agents' stop, another exit callback) and print a traceback. A second
SIGINT sets `STOP_AT_ONCE`, and the agents' stop stops waiting for them; a third ends the
process there and then. A later SIGTERM is the one stop signalled twice (`timeout` signals
the process and its group) and is ignored.

Elsewhere (another WSGI server, `flask shell`, the tests' in-process apps) only SIGTERM is
made to stop the app as Ctrl+C does, and only where nothing handles it yet.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from agent_actors.stop_hint import how_to_stop_at_once

STOP_AT_ONCE = threading.Event()
"""Set by the second Ctrl+C under `flask run`: stop without waiting for the agents."""

_stopping = threading.Event()
_taken = threading.Event()
_stopped_by: list[int] = []  # the signal that began the stop


def take_stop_signals(*, flask_run: bool) -> None:
    """Install the handlers, only where the default ones are in place: a WSGI server with
    handlers of its own keeps them, and a SIGINT ignored (a background job) stays ignored.
    Only the main thread can install a handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    if not flask_run:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_stop_signal)
        _taken.set()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_stop_signal)


def how_to_hurry() -> str | None:
    """What stops this process at once while it stops (see the module's docstring): another
    Ctrl+C, or a first one after a SIGTERM; None where signals were not taken."""
    if not _taken.is_set():
        return None
    return how_to_stop_at_once(_stopped_by[0] if _stopped_by else None)


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    if not _stopping.is_set():
        _stopping.set()
        _stopped_by.append(signum)
        raise KeyboardInterrupt
    if signum != signal.SIGINT:
        return
    if STOP_AT_ONCE.is_set():
        os._exit(130)  # a third: what is left of the exit hangs
    STOP_AT_ONCE.set()
