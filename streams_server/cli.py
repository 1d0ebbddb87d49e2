"""The standalone Durable Streams server's command line (run by ``__main__``, on gevent)."""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sys
from collections.abc import Callable

from streams_server.app import create_app
from streams_server.backend import DataDirectoryError, StreamsBackend
from streams_server.config import (
    LARGEST_BODY_MIB,
    LARGEST_CHUNK_KIB,
    StreamsSettings,
    is_host_text,
    mib_to_bytes,
)
from streams_server.server import SOCKET_TIMEOUT_S, CannotListen, serve


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TOKEN_VARIABLE = "STREAMS_AUTH_TOKEN"
"""Where the token may be given instead of ``--auth-token`` (an argument shows in ``ps``)."""


def bounded(convert: Callable[[str], float], low: float, high: float | None = None,
            *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: `convert`, then `low` <= value (or < with `above`) <= `high`."""
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):  # NaN passes every comparison below
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        too_low = value <= low if above else value < low
        if too_low or (high is not None and value > high):
            bound = f"greater than {low:g}" if above else f"at least {low:g}"
            limit = "" if high is None else f" and at most {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}{limit}, not {text}")
        return value
    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m streams_server",
        description="A durable Durable Streams protocol server (SQLite storage, gevent).",
    )
    seconds = bounded(float, 0, above=True)
    # As `flask run` bounds them (webui/config.py): an hour is past any proxy's patience.
    up_to_an_hour = bounded(float, 0, 3600, above=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=bounded(int, 0, 65535), default=4437,
                        help="port (default 4437; 0 picks one)")
    parser.add_argument("--data-dir", default=None,
                        help="where the SQLite file lives (default ./data/streams, where flask"
                             " run keeps its streams)")
    parser.add_argument("--memory", action="store_true", help="keep streams in memory only")
    parser.add_argument(
        "--long-poll-timeout", type=up_to_an_hour, default=30.0, metavar="SECONDS",
        help="how long a long-poll read waits for data before 204 (default 30, at most 3600)",
    )
    parser.add_argument("--socket-timeout", type=seconds, default=SOCKET_TIMEOUT_S,
                        metavar="SECONDS",
                        help="close a connection that sends or takes nothing for this long"
                             " while the server waits on it: idle keep-alive, slow headers"
                             f" or bodies (default {SOCKET_TIMEOUT_S:g}; live reads waiting for"
                             " data are not affected)")
    parser.add_argument("--sse-max-duration", type=up_to_an_hour, default=60.0, metavar="SECONDS",
                        help="close SSE connections after this long (default 60, at most 3600)")
    parser.add_argument("--sse-keepalive", type=bounded(float, 0.1, 3600), default=15.0,
                        metavar="SECONDS",
                        help="send an SSE comment after this long without an event, so that"
                             " proxies keep the connection (0.1 to 3600, default 15)")
    parser.add_argument("--max-body-mib", type=bounded(float, 0, LARGEST_BODY_MIB, above=True),
                        default=64,
                        help=f"largest request body (default 64, at most {LARGEST_BODY_MIB})")
    parser.add_argument("--max-json-messages", type=bounded(int, 1), default=10_000,
                        help="most messages in one JSON request (default 10000)")
    parser.add_argument("--max-chunk-kib", type=bounded(int, 1, LARGEST_CHUNK_KIB), default=1024,
                        help="largest catch-up read response (default 1024, at most"
                             f" {LARGEST_CHUNK_KIB})")
    parser.add_argument("--max-path-length", type=bounded(int, 1), default=1024,
                        help="longest stream path (and subscription id), in characters"
                             " (default 1024)")
    parser.add_argument("--allow-local-webhooks", action="store_true",
                        help="let webhook subscriptions call localhost and 127.0.0.x, over http"
                             " too: for development (section 12.8); off, only https to public"
                             " hosts")
    parser.add_argument("--max-storage-mib", type=bounded(float, 0, above=True), default=None,
                        help="refuse writes (507) that would grow the database past this size"
                             " (default: no limit but the disk's)")
    parser.add_argument("--auth-token", default=os.environ.get(TOKEN_VARIABLE),
                        help="require Authorization: Bearer TOKEN on the streams API (not on"
                             " CORS preflights, the webhook keys, or the subscription calls"
                             " that carry their own tokens); visible ASCII, no spaces (default:"
                             f" ${TOKEN_VARIABLE}, which other users cannot read in ps)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="(default INFO)")
    args = parser.parse_args(argv)
    if args.memory and args.data_dir is not None:
        parser.error("--memory keeps nothing on disk: leave out --data-dir, or --memory")
    if args.data_dir is None:
        args.data_dir = DEFAULT_DATA_DIR
    elif not args.data_dir.strip():  # `--data-dir "$DIR"` with DIR unset
        parser.error("--data-dir must name a directory")
    # `--host "$HOST"` with HOST unset listened everywhere; a host no lookup can take, a
    # traceback.
    if not is_host_text(args.host):
        parser.error("--host must name an address (0.0.0.0 or :: for every network interface)"
                     " or a host name")
    token = args.auth_token
    if token is not None and token.strip() and not all("!" <= c <= "~" for c in token):
        # A newline from a file, or a non-Latin-1 character: no client could ever send it.
        # (An empty one is said in `main` to leave the server open.)
        parser.error(f"--auth-token (or {TOKEN_VARIABLE}) must be visible ASCII characters"
                     " without spaces")
    return args


DEFAULT_DATA_DIR = "./data/streams"
EARLIER_DEFAULT_DATABASE = "./data/streams.sqlite3"
"""Where the server kept its database by default before it took the chat's directory."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # The event loop and the commit thread share the GIL; a short switch interval lets a
    # finished fsync hand its result back in well under a millisecond instead of up to 5.
    sys.setswitchinterval(0.0005)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.auth_token is not None and not args.auth_token.strip():
        # `--auth-token "$TOKEN"` with TOKEN unset: say so rather than serve everyone.
        logging.getLogger("streams_server").warning(
            f"--auth-token (or {TOKEN_VARIABLE}) is empty: no token is required (the server is open to anyone who"
            " can reach it)")
        args.auth_token = None
    if (not args.memory and args.data_dir == DEFAULT_DATA_DIR
            and os.path.exists(EARLIER_DEFAULT_DATABASE)):
        logging.getLogger("streams_server").warning(
            "%s is the database of an earlier default data directory and is not used: the"
            " default is now %s, the chat's; pass --data-dir ./data to serve the earlier one",
            EARLIER_DEFAULT_DATABASE, DEFAULT_DATA_DIR)
    settings = StreamsSettings(
        long_poll_timeout_s=args.long_poll_timeout,
        sse_max_duration_s=args.sse_max_duration,
        sse_keepalive_s=args.sse_keepalive,
        max_body_bytes=mib_to_bytes(args.max_body_mib),
        max_json_messages=int(args.max_json_messages),
        max_chunk_bytes=args.max_chunk_kib * 1024,
        max_path_length=args.max_path_length,
        auth_token=args.auth_token,
        max_storage_bytes=(None if args.max_storage_mib is None
                           else mib_to_bytes(args.max_storage_mib)),
        local_webhooks=args.allow_local_webhooks,
    )
    try:
        backend = StreamsBackend.open(None if args.memory else args.data_dir, settings)
    except DataDirectoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    backend.start()
    app = create_app(backend)
    # Modules, the app and the opened store live as long as the process: kept out of the
    # collector, a full collection no longer pauses every connection for 40 ms.
    gc.freeze()
    try:
        serve(app, args.host, args.port, on_stop=backend.close, on_draining=backend.drain,
              socket_timeout_s=args.socket_timeout)
    except CannotListen as exc:
        backend.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
