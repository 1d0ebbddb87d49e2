"""The agents' lease keeper (`agent_actors.lease_keeper`) against the real streams server:
heartbeats for short leases, and the answers that mean the lease is gone."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator

import pytest

from agent_actors import layout
from agent_actors._http import RetryPolicy
from agent_actors.errors import AlreadyClaimed
from agent_actors.lease_keeper import LeaseKeeper
from agent_actors.offsets_store import OffsetsStore
from agent_actors.stream_types import Lease
from agent_actors.streams_client import StreamsClient
from tests.support import ServerProcess
from tests.support.agents import ChatClient

pytestmark = pytest.mark.timeout(60)


class Keeping:
    """A keeper of one claimed conversation lease, and what it reported."""

    def __init__(self, client: StreamsClient, lease: Lease, cid: str) -> None:
        self.lost = threading.Event()
        self.reasons: list[str] = []
        self.keeper = LeaseKeeper(
            client, lease, conversation_id=cid, prompts_path=layout.prompts_path(cid),
            offsets=OffsetsStore(None),
            heartbeat_s=max(0.5, lease.lease_ttl_ms / 3000),  # as the agent sets it
            on_tick=lambda: None, on_lost=self._on_lost,
        )

    def _on_lost(self, reason: str) -> None:
        self.reasons.append(reason)
        self.lost.set()


@pytest.fixture
def client(streams_server: ServerProcess) -> Iterator[StreamsClient]:
    streams = StreamsClient(f"{streams_server.url}/v1/stream",
                            retry=RetryPolicy(initial_delay=0.05, max_delay=0.2, deadline=1.0))
    yield streams
    streams.close()


def claimed(client: StreamsClient, lease_ttl_ms: int) -> tuple[Lease, str]:
    """A conversation with a prompt waiting, claimed by "worker-1"."""
    chat = ChatClient(client, lease_ttl_ms=lease_ttl_ms)
    cid = chat.start_conversation("kept")
    chat.send_prompt(cid, "hello")
    return client.claim(layout.subscription_id(cid), "worker-1"), cid


def test_heartbeats_keep_the_shortest_lease_allowed(client: StreamsClient) -> None:
    """With a lease of one second (the least the settings allow) the beats were due every
    half second, but the keeper woke once a second: each beat came as the lease ran out,
    the agent lost it, and a long answer was restarted until it was given up on."""
    lease, cid = claimed(client, lease_ttl_ms=1000)
    kept = Keeping(client, lease, cid)
    kept.keeper.start()
    try:
        assert not kept.lost.wait(3.5), kept.reasons  # three and a half lease lifetimes
        with pytest.raises(AlreadyClaimed):
            client.claim(layout.subscription_id(cid), "worker-2")
    finally:
        kept.keeper.stop()


def test_a_heartbeat_refused_for_its_token_loses_the_lease(client: StreamsClient) -> None:
    """A `401` (an expired token, a server whose key changed) was retried once a second for
    ever: the lease ran out while the agent went on answering as if it held it."""
    lease, cid = claimed(client, lease_ttl_ms=3000)  # a beat a second
    forged = dataclasses.replace(lease, token=lease.token[:-4] + "AAAA")
    kept = Keeping(client, forged, cid)
    kept.keeper.start()
    try:
        assert kept.lost.wait(10), "the keeper went on retrying"
    finally:
        kept.keeper.stop()
    assert "401" in kept.reasons[0] or "token" in kept.reasons[0], kept.reasons


def test_going_idle_while_the_server_is_down_is_a_warning_not_a_crash(
    client: StreamsClient, streams_server: ServerProcess, caplog: pytest.LogCaptureFixture,
) -> None:
    """The final `done` ack of an idle agent raised once its retries ran out: the agent
    crashed with a traceback, and its supervisor backed off before waking it again."""
    lease, cid = claimed(client, lease_ttl_ms=30_000)
    kept = Keeping(client, lease, cid)
    kept.keeper.start()
    streams_server.terminate()
    with caplog.at_level(logging.WARNING, logger="agent_actors.lease_keeper"):
        assert kept.keeper.finish() is False
    assert f"could not hand back the lease of {cid}" in caplog.text


@pytest.mark.parametrize("at_exit", [False, True])
def test_a_release_that_fails_is_news_unless_the_process_is_exiting(
    client: StreamsClient, streams_server: ServerProcess, caplog: pytest.LogCaptureFixture,
    at_exit: bool,
) -> None:
    """At an exit the server has usually stopped first, and every open conversation logged
    a failed release; an agent that failed or whose conversation was deleted must still say
    that its release failed, as the lease then runs out by itself."""
    lease, cid = claimed(client, lease_ttl_ms=30_000)
    kept = Keeping(client, lease, cid)
    kept.keeper.start()
    streams_server.terminate()
    with caplog.at_level(logging.DEBUG, logger="agent_actors.lease_keeper"):
        kept.keeper.release(quick=True, at_exit=at_exit)
    failures = [r for r in caplog.records if r.getMessage().startswith("could not release the lease")]
    assert [r.levelno for r in failures] == [logging.DEBUG if at_exit else logging.INFO]
