"""`python -m agent_actors supervisor`: run a supervisor until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import signal
import sys
import threading

from agent_actors import layout
from agent_actors.agent import AgentSettings
from agent_actors.errors import ConfigurationError
from agent_actors.models.settings import (
    model_from_settings, quiet_http_client_logs, warn_if_unusable,
)
from agent_actors.offsets_store import OffsetsFileError
from agent_actors.stop_hint import how_to_stop_at_once
from agent_actors.supervisor import Supervisor
from agent_actors.supervisor_settings import SupervisorSettings
from agent_actors.validation import (
    HTTP_URL,
    MAX_COALESCE_MS,
    MAX_IDLE_TIMEOUT_S,
    MAX_WORKER_NAME_CHARS,
    is_http_url,
    is_stream_path,
    is_token,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent_actors",
                                     description="Durable chat agents (Pykka actors).")
    commands = parser.add_subparsers(dest="command", required=True)
    sup = commands.add_parser(
        "supervisor", help="answer the prompts of every conversation on a streams server",
        description="Spawn a conversation agent whenever a conversation has pending prompts.",
    )
    sup.set_defaults(usage=sup)  # its own usage line for its errors
    sup.add_argument("--streams-url", default="http://127.0.0.1:4437/v1/stream",
                     help="the streams root (default http://127.0.0.1:4437/v1/stream)")
    sup.add_argument("--data-dir", default="./data/agents",
                     help="where processed-prompt offsets are kept (default ./data/agents)")
    sup.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                     help="stop an agent idle this long; it wakes on the next prompt (60)")
    sup.add_argument("--max-agents", type=int, default=100, help="live agents at most (100)")
    sup.add_argument("--model", default=None,
                     help="Claude model id, or 'demo' (default: $ANTHROPIC_MODEL, or the demo "
                          "model when ANTHROPIC_API_KEY is unset)")
    sup.add_argument("--coalesce-ms", type=float, default=0.0,
                     help="wait this long for more model tokens before a chunk append; with 0 "
                          "a chunk holds what arrived while the previous append was sent (0)")
    sup.add_argument("--lease-ttl-ms", type=int, default=layout.DEFAULT_LEASE_TTL_MS,
                     help="conversation lease duration, 1000 to 600000 (30000)")
    sup.add_argument("--wake-stream", default=layout.DEFAULT_WAKE_STREAM,
                     help="where the server writes wake events, relative to the streams root "
                          f"(default {layout.DEFAULT_WAKE_STREAM})")
    sup.add_argument("--worker-name", default=None,
                     help="this supervisor's name in leases: 1 to"
                          f" {MAX_WORKER_NAME_CHARS} printable characters (default: the host"
                          " name and the process id, as host-1234)")
    sup.add_argument("--auth-token", default=os.environ.get("STREAMS_AUTH_TOKEN"),
                     help="bearer token for the streams server (default: $STREAMS_AUTH_TOKEN,"
                          " which other users cannot read in ps)")
    sup.add_argument("--demo-tokens-per-second", type=float, default=30.0,
                     help="pace of the offline demo model, 0 for all at once (30)")
    sup.add_argument("--log-level", default="INFO", type=str.upper,
                     choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), help="(default INFO)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values the supervisor could only fail on later, one conversation at a time."""
    ttl_low, ttl_high = layout.LEASE_TTL_MS_RANGE
    if args.auth_token is not None and not args.auth_token.strip():
        # `--auth-token "$TOKEN"` (or STREAMS_AUTH_TOKEN) set but empty: no token, as the
        # streams server takes it; a server that wants one answers 401, which is reported.
        args.auth_token = None
    model_url = os.environ.get("ANTHROPIC_BASE_URL") or None
    api_key = (os.environ.get("ANTHROPIC_API_KEY") or "").strip()  # as the model takes it
    model = args.model or os.environ.get("ANTHROPIC_MODEL") or None
    problems = [
        (not is_http_url(args.streams_url),
         f"--streams-url must be {HTTP_URL}, not {args.streams_url!r}"),
        (not is_stream_path(args.wake_stream),
         f"--wake-stream must be a stream path such as agents/wake, not {args.wake_stream!r}"),
        (model_url is not None and not is_http_url(model_url),
         f"ANTHROPIC_BASE_URL must be {HTTP_URL}, not {model_url!r}"),
        # Written so that NaN, which fails every comparison, fails each check too.
        (not 0 < args.idle_timeout <= MAX_IDLE_TIMEOUT_S,
         f"--idle-timeout must be greater than 0 and at most {MAX_IDLE_TIMEOUT_S},"
         f" not {args.idle_timeout:g}"),
        (args.max_agents < 1, "--max-agents must be at least 1"),
        (not 0 <= args.coalesce_ms <= MAX_COALESCE_MS,
         f"--coalesce-ms must be from 0 to {MAX_COALESCE_MS}, not {args.coalesce_ms:g}"),
        (not args.data_dir.strip(), "--data-dir must name a directory"),
        (not ttl_low <= args.lease_ttl_ms <= ttl_high,
         f"--lease-ttl-ms must be from {ttl_low} to {ttl_high}"),
        (not 0 <= args.demo_tokens_per_second < math.inf,
         "--demo-tokens-per-second must be a finite number, 0 (instant) or more"),
        (args.auth_token is not None and not is_token(args.auth_token),
         "--auth-token (or STREAMS_AUTH_TOKEN) must be visible ASCII characters without"
         " spaces"),
        (args.worker_name is not None and not (
            args.worker_name.isprintable() and 0 < len(args.worker_name) <= MAX_WORKER_NAME_CHARS),
         f"--worker-name must be 1 to {MAX_WORKER_NAME_CHARS} printable characters"),
        (api_key and not is_token(api_key),
         "ANTHROPIC_API_KEY must be visible ASCII characters without spaces"),
        (model is not None and not is_token(model),
         f"{'--model' if args.model else 'ANTHROPIC_MODEL'} must be a model id: visible ASCII"
         f" characters without spaces, not {model!r}"),
    ]
    for failed, message in problems:
        if failed:
            usage = getattr(args, "usage", parser)
            if message.startswith("--"):
                usage.error(message)  # the usage lines show the flags
            # A variable of the environment: the flags' usage would only hide the line.
            print(f"{usage.prog}: error: {message}", file=sys.stderr)
            sys.exit(2)


def settings_from_args(args: argparse.Namespace) -> SupervisorSettings:
    extra = {"worker_name": args.worker_name} if args.worker_name else {}
    return SupervisorSettings(
        streams_url=args.streams_url.rstrip("/"),
        data_dir=args.data_dir,
        wake_stream=args.wake_stream,
        lease_ttl_ms=args.lease_ttl_ms,
        max_agents=args.max_agents,
        auth_token=args.auth_token,
        agent=AgentSettings(coalesce_window_s=args.coalesce_ms / 1000,
                            idle_timeout_s=args.idle_timeout),
        **extra,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_http_client_logs()
    model = model_from_settings(args.model, demo_tokens_per_second=args.demo_tokens_per_second)
    settings = settings_from_args(args)
    # Everything imported so far (the SDK, pydantic, ...) lives as long as the process: kept
    # out of the collector, a full collection no longer stops every conversation for 100+ ms.
    gc.freeze()
    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            if signum != signal.SIGINT:  # one stop signalled twice (`timeout` signals the
                return  # process and its group): the clean stop under way goes on
            # A second Ctrl+C: the leases expire by themselves (their TTL).
            print("stopped without waiting for the agents", file=sys.stderr, flush=True)
            os._exit(130)
        stopped_by.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        supervisor = Supervisor.start(settings, model)
    except (OffsetsFileError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"agent supervisor {settings.worker_name}: streams {settings.streams_url}, "
          f"model {model.name}", file=sys.stderr, flush=True)
    warn_if_unusable(model)
    while not stop.is_set():  # timed waits: under gevent, an untimed one with nothing
        stop.wait(60)  # else to run would end in LoopExit
    hurry = how_to_stop_at_once(stopped_by[0])
    print(f"stopping: the agents let go of their leases (about {settings.shutdown_timeout_s:.0f}"
          f" s if the streams server does not answer; {hurry} to stop at once)",
          file=sys.stderr, flush=True)
    supervisor.stop(timeout=30)
    return 0
