"""Both commands hand sockets and threads to gevent before anything could have imported them.

gevent warns (``MonkeyPatchWarning``) when ``ssl`` was imported before its patching: those
modules then keep the blocking originals. Importing either package must not pull them in.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("command", [["agent_actors", "supervisor"], ["streams_server"]])
def test_the_command_patches_before_ssl_is_imported(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert "MonkeyPatchWarning" not in done.stderr, done.stderr
