"""Everything a streams server runs on, opened and closed together."""

from __future__ import annotations

import os
import sqlite3

from .config import StreamsSettings
from .protocol.control import ControlOperations
from .protocol.operations import StreamOperations
from .storage.dirlock import DirectoryInUse, DirectoryLock
from .storage.engine import StreamStore
from .subscriptions.keys import DamagedKeyFile, ServerKeys
from .subscriptions.service import SubscriptionService


class DataDirectoryError(RuntimeError):
    """The data directory cannot be used (not a directory, no access, a damaged database):
    the server cannot start, and the message says why."""


class StreamsBackend:
    """The storage engine, the subscription service and the protocol operations on them."""

    def __init__(self, store: StreamStore, keys: ServerKeys, settings: StreamsSettings,
                 url_prefix: str, lock: DirectoryLock | None = None,
                 data_dir: str | None = None) -> None:
        self.store = store
        self._lock = lock
        self._data_dir = data_dir
        self.settings = settings
        self.subscriptions = SubscriptionService(store, keys,
                                                 local_webhooks=settings.local_webhooks)
        self.streams = StreamOperations(store, settings, url_prefix)
        self.control = ControlOperations(store, self.subscriptions)

    @classmethod
    def open(
        cls,
        data_dir: str | None,
        settings: StreamsSettings | None = None,
        url_prefix: str = "/v1/stream",
        *,
        lock: bool = True,
    ) -> StreamsBackend:
        """Durable under `data_dir` (created if missing), or in memory when it is None.
        `lock`: hold the directory for this process, refusing it if another process does.
        With False it is only checked (refused if another process holds it now), and
        `hold_directory` takes it later: for a process that may never serve (the watcher of
        a reloader builds the app too)."""
        settings = settings or StreamsSettings()
        if data_dir is None:
            return cls(StreamStore.open_memory(max_bytes=settings.max_storage_bytes),
                       ServerKeys(None), settings, url_prefix)
        if os.path.exists(data_dir) and not os.path.isdir(data_dir):
            raise DataDirectoryError(f"cannot open the streams data directory {data_dir!r}:"
                                     " it is a file, not a directory")
        try:
            os.makedirs(data_dir, exist_ok=True)
            held = DirectoryLock(data_dir) if lock else None
            if held is None:
                DirectoryLock.probe(data_dir)
        except (OSError, DirectoryInUse) as exc:
            raise DataDirectoryError(
                f"cannot open the streams data directory {data_dir!r}: {exc}") from exc
        try:
            store = StreamStore.open_directory(data_dir, max_bytes=settings.max_storage_bytes)
        except (OSError, sqlite3.Error) as exc:
            if held is not None:
                held.release()
            raise DataDirectoryError(
                f"cannot open the streams data directory {data_dir!r}: {exc}") from exc
        try:
            keys = ServerKeys(data_dir)
        except (OSError, DamagedKeyFile) as exc:
            store.close()
            if held is not None:
                held.release()
            raise DataDirectoryError(
                f"cannot open the streams data directory {data_dir!r}: {exc}") from exc
        return cls(store, keys, settings, url_prefix, held, data_dir)

    def start(self) -> None:
        """Start the background work: expiry sweeps, lease expiry, webhook deliveries."""
        self.store.start_background_work()
        self.subscriptions.start()

    def hold_directory(self) -> None:
        """Take the data directory's lock now, if it was opened without (`open`'s `lock`),
        and read the streams again: another process may have used the directory since it
        was opened. Raises `DirectoryInUse` if another process holds it (or `OSError`)."""
        if self._lock is None and self._data_dir is not None:
            self._lock = DirectoryLock(self._data_dir)
            self.store.reload()

    def drain(self) -> None:
        """Live reads end (the server is stopping); see `StreamStore.drain`."""
        self.store.drain()

    def close(self) -> None:
        self.subscriptions.close()
        self.store.close()
        if self._lock is not None:
            self._lock.release()
