"""A `requests` session whose in-flight requests another thread can abort.

A long-poll or SSE read blocks its thread in ``recv`` for as long as the server holds the
request (tens of seconds). To stop such a reader promptly (an agent stopping, the supervisor
shutting down), `InterruptibleSession.interrupt` shuts down the sockets of every connection
the session has opened, and of every connection it opens afterwards (so a request racing
with the interrupt fails too): the blocked ``recv`` returns at once and `requests` raises a
`requests.ConnectionError`, which the reader then recognises as its own stop request.
An interrupted session is finished; make a new one to send more requests.

Best effort: connections made through a proxy are not tracked.
"""

from __future__ import annotations

import socket
import threading
import weakref
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class InterruptibleSession(requests.Session):
    """A `requests.Session` with a thread-safe `interrupt()` that aborts in-flight requests."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._interrupted = False
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        adapter = _TrackingAdapter(self._track)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def interrupt(self) -> None:
        """Shut down every connection's socket, now and from now on; blocked reads fail."""
        with self._lock:
            self._interrupted = True
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)

    def _track(self, connection: object) -> None:
        """Called once ``connection`` is connected."""
        with self._lock:
            self._connections.add(connection)
            interrupted = self._interrupted
        if interrupted:
            _shutdown(connection)


def _shutdown(connection: object) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _TrackingAdapter(HTTPAdapter):
    """An adapter whose connection pools report every connection once it is connected."""

    def __init__(self, track: Any) -> None:
        self._track_connection = track
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _tracking_pool_class(HTTPConnectionPool, self._track_connection),
            "https": _tracking_pool_class(HTTPSConnectionPool, self._track_connection),
        }


def _tracking_pool_class(base: type[HTTPConnectionPool], track: Any) -> type[HTTPConnectionPool]:
    def _new_conn(self: HTTPConnectionPool) -> Any:
        connection = base._new_conn(self)
        connect = connection.connect

        def connect_and_track() -> None:
            connect()
            track(connection)

        connection.connect = connect_and_track  # type: ignore[method-assign]
        return connection

    return cast(type[HTTPConnectionPool], type(f"Tracking{base.__name__}", (base,),
                                               {"_new_conn": _new_conn}))
