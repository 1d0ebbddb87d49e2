"""The chat application: the streams protocol and the chat UI in one Flask app.

`create_app()` is the composition root: it opens the streams backend, serves the streams
protocol at `/v1/stream`, the chat at `/` and the inspector at `/inspector`, and (by default)
runs an embedded agent supervisor, so that `flask run` alone gives a working chat.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click
from flask import Flask

from agent_actors.models.settings import quiet_http_client_logs
from agent_actors.offsets_store import OffsetsFileError
from streams_server import StreamsBackend, StreamsSettings
from streams_server.backend import DataDirectoryError
from streams_server import init_app as init_streams
from streams_server.config import mib_to_bytes
from streams_server.routes import answer_flask_errors_in_json
from webui import chat
from webui.access_log import configure_access_log
from webui.config import STREAMS_PREFIX, ConfigError, load_config
from webui.embedded import BackgroundWork
from webui.flask_run import flask_run_address, under_flask_run
from webui.stop_signals import take_stop_signals


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; background work starts once it serves (see `webui.embedded`)."""
    app = Flask(__name__)
    try:
        load_config(app, test_config)
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc
    _configure_logging()
    configure_access_log(STREAMS_PREFIX, every_stream_request=app.config["LOG_STREAM_REQUESTS"])
    settings = StreamsSettings(
        long_poll_timeout_s=float(app.config["LONG_POLL_TIMEOUT_S"]),
        sse_keepalive_s=float(app.config["SSE_KEEPALIVE_S"]),
        sse_max_duration_s=float(app.config["SSE_MAX_DURATION_S"]),
        max_body_bytes=mib_to_bytes(app.config["MAX_BODY_MIB"]),
        max_json_messages=int(app.config["MAX_JSON_MESSAGES"]),
        auth_token=app.config["STREAMS_AUTH_TOKEN"],
        max_storage_bytes=(None if app.config["MAX_STORAGE_MIB"] is None
                           else mib_to_bytes(app.config["MAX_STORAGE_MIB"])),
        local_webhooks=app.config["ALLOW_LOCAL_WEBHOOKS"],
    )
    try:
        serving = flask_run_address()
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    data_dir = None if app.config["STREAMS_MEMORY"] else os.path.join(app.config["DATA_DIR"], "streams")
    try:
        # Held now by `flask run`'s serving process; elsewhere checked now and held from the
        # first request: the watcher process of a reloader builds the app too, never serving.
        backend = StreamsBackend.open(data_dir, settings, STREAMS_PREFIX,
                                      lock=serving is not None)
    except DataDirectoryError as exc:
        raise StartupError(str(exc)) from exc
    init_streams(app, backend, STREAMS_PREFIX)
    # The API's URLs answer in JSON; the pages keep Flask's pages.
    answer_flask_errors_in_json(app, under="/v1", streams_at=STREAMS_PREFIX)
    chat.init_app(app)
    try:
        work = BackgroundWork(app, backend)
    except OffsetsFileError as exc:
        backend.close()
        raise StartupError(str(exc)) from exc
    app.extensions["background_work"] = work
    if serving is not None:
        work.start_when_listening(serving)
    # `kill` (and systemd's or docker's stop) ends `flask run` the way Ctrl+C does, through
    # its clean exit, where the embedded agents' leases are released: killed outright, the
    # next start waits out the lease before finishing their answers.
    take_stop_signals(flask_run=under_flask_run())
    return app


class StartupError(click.ClickException):
    """The app cannot start (a damaged or unusable data directory). A ClickException, so
    that `flask run` prints its message alone ("Error: ...") instead of a traceback."""


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        quiet_http_client_logs()
