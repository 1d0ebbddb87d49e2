"""Keeping `flask run`'s access log readable while answers stream.

Werkzeug's development server logs every request. An answer is a request per few tokens
from the agents and a live read or two from each page, so the lines that matter (the pages'
own requests, failures, the agents' warnings) scrolled out of sight within seconds. By default
the streams API's requests are logged only when they fail; `CHAT_LOG_STREAM_REQUESTS=true`
logs them all. Written to a file or a pipe, the lines lose Werkzeug's colours.
"""

from __future__ import annotations

import logging
import re
import sys

_ANSI_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # Werkzeug colours a line by its status
_REQUEST = re.compile(r'"[A-Z]+ (\S+) HTTP/[^"]*" (\d{3}) ')


class SucceededStreamRequests(logging.Filter):
    """Drops the access-log lines of streams API requests answered below 400."""

    def __init__(self, streams_prefix: str) -> None:
        super().__init__()
        self.streams_prefix = streams_prefix.rstrip("/")

    def filter(self, record: logging.LogRecord) -> bool:
        match = _REQUEST.search(_ANSI_STYLE.sub("", record.getMessage()))
        if match is None:
            return True  # not an access-log line
        path, status = match.groups()
        in_streams = path == self.streams_prefix or path.startswith(self.streams_prefix + "/")
        return not (in_streams and int(status) < 400)


class PlainText(logging.Filter):
    """Takes Werkzeug's colours out of its lines: it adds them whatever the output is, and
    in a file or a pipe they are escape codes around every line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b[" in message:
            record.msg, record.args = _ANSI_STYLE.sub("", message), ()
        return True


def configure_access_log(streams_prefix: str, *, every_stream_request: bool) -> None:
    """Set up Werkzeug's logger for the app being built (the last one built wins)."""
    logger = logging.getLogger("werkzeug")
    for existing in list(logger.filters):
        if isinstance(existing, (SucceededStreamRequests, PlainText)):
            logger.removeFilter(existing)
    if not every_stream_request:
        logger.addFilter(SucceededStreamRequests(streams_prefix))
    if not sys.stderr.isatty():
        logger.addFilter(PlainText())
