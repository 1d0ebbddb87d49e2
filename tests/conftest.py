"""Fixtures shared by the test suites: real servers on real sockets, temporary data dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import ServerProcess, start_streams_server
from tests.support.streams_http import StreamsHttp
from tests.support.webapp import start_chat_app


@pytest.fixture
def streams_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """This project's server (`python -m streams_server`) on the SQLite engine."""
    server = start_streams_server(tmp_path / "streams-data", long_poll_timeout=2.0)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def flask_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamsHttp]:
    """The chat app under `flask run` (Werkzeug's server), which serves the same protocol."""
    app = start_chat_app(tmp_path_factory.mktemp("flask") / "data",
                         model_url="http://127.0.0.1:9", config={"EMBEDDED_SUPERVISOR": "false"})
    try:
        yield StreamsHttp(app.url)
    finally:
        app.terminate()
