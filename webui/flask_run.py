"""Where `flask run` is about to serve the app, read from its parsed command line.

Flask's `run` command builds the app inside its click context, just before it starts
serving: the host and port are known then, so the app can hold its data directory at once
and start its agents as soon as the server listens, without waiting for a first request.
Anything else that builds the app (another WSGI server, the tests' in-process apps, the
watcher process of `flask run --reload`, which never serves) gets None and starts with its
first request.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import click
from flask import cli as flask_cli
from flask.helpers import get_debug_flag
from werkzeug.serving import is_running_from_reloader

from streams_server.config import is_host_text

MAX_PORT = 65535


@dataclass(frozen=True)
class ServingAddress:
    host: str  # an address to reach this server at (127.0.0.1 where it listens on all)
    port: int


def under_flask_run() -> bool:
    """Whether this process is `flask run` (its serving process, or a reloader's watcher)."""
    context = click.get_current_context(silent=True)
    return context is not None and context.command is flask_cli.run_command


def flask_run_address() -> ServingAddress | None:
    """The address this process's `flask run` will serve on; None where that is not known
    (see the module's docstring), or with TLS (``--cert``: the agents' URL must then name
    the certificate's host, ``CHAT_AGENT_STREAMS_URL``) or port 0 (picked as it binds).
    Raises ValueError for a port no server can listen on (Werkzeug took 99999 as 34463)."""
    if not under_flask_run():
        return None
    params = click.get_current_context().params
    host, port = params.get("host"), params.get("port")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"--port must be at least 0 and at most {MAX_PORT}, not {port}")
    if not is_host_text(host):  # Werkzeug's start failed with a traceback
        raise ValueError(f"--host must name an address or a host name, not {host!r}")
    try:  # Werkzeug's own failure said "Name or service not known", and not of what
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        cause = exc.args[1] if len(exc.args) > 1 else str(exc)
        raise ValueError(f"--host {host!r} is neither an address nor a name this machine can"
                         f" look up ({cause})") from exc
    reloading = params.get("reload")
    if reloading is None:  # as `flask run` decides it: with --debug
        reloading = get_debug_flag()
    if reloading and not is_running_from_reloader():
        return None  # the reloader's watcher: its child process serves
    if port == 0 or params.get("cert") is not None:
        return None
    return ServingAddress(_reachable_host(host), port)


def local_root_url(scheme: str, host: str, port: int | str) -> str:
    """The root URL of a server of this machine listening on `host` and `port`."""
    host = _reachable_host(host)
    if ":" in host:  # an IPv6 address; a zone (fe80::1%eth0) is percent-encoded in a URL
        host = "[" + host.replace("%", "%25") + "]"
    return f"{scheme}://{host}:{port}"


def _reachable_host(host: str) -> str:
    """Where a server listening on `host` is reached from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
