"""What a stopping process tells its user to press to stop at once, after its first signal.

The supervisor's command and `flask run` (with its embedded agents) both wait for their
agents to let go of their leases when asked to stop, and a Ctrl+C ends that wait. After a
first Ctrl+C the advice is "again"; after a SIGTERM (no Ctrl+C was pressed) it names it.
"""

from __future__ import annotations

import signal


def how_to_stop_at_once(first_signal: int | None) -> str:
    """The advice, for a stop begun by `first_signal` (None: by no signal)."""
    return "Ctrl+C again" if first_signal == signal.SIGINT else "Ctrl+C (SIGINT)"
