"""Which conversations have prompts waiting for an answer, as the streams server tells it.

The supervisor asks on its job threads, over HTTP. A conversation's subscription says where
its prompts were acked, the prompts stream's tail how far they go, and this supervisor's
offsets file what it processed; where those disagree, only reading both streams can tell.
At a start, the server's listings of subscriptions and streams answer for every
conversation a page at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from agent_actors import layout
from agent_actors.conversation_log import ConversationLog
from agent_actors.errors import (
    Conflict,
    ContentTypeMismatch,
    NotFound,
    StreamGone,
    StreamsError,
)
from agent_actors.offsets_store import OffsetsStore
from agent_actors.stream_types import ListedStream, ListingPage, Subscription
from agent_actors.streams_client import StreamsClient
from agent_actors.supervisor_settings import SupervisorSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

LISTING_PAGE = 1000
"""How many subscriptions or streams a start asks the server's listings for at once."""


class PendingPrompts:
    def __init__(self, client: StreamsClient, offsets: OffsetsStore,
                 settings: SupervisorSettings) -> None:
        self._client = client
        self._offsets = offsets
        self._settings = settings
        self._lease_note_given = False  # see note_lease
        self._other_wake_noted: set[str] = set()  # see _note_wake_stream

    def check(self, cid: str) -> bool | None:
        """Ensure the conversation's subscription, then whether prompts await an answer;
        None if the server could not be asked."""
        sub_id = layout.subscription_id(cid)
        config = layout.subscription_config(cid, self._settings.wake_stream,
                                            self._settings.lease_ttl_ms)
        try:
            try:
                subscription = self._client.put_subscription(sub_id, config)
            except Conflict:  # created by a client with other settings (e.g. lease TTL)
                subscription = self._client.get_subscription(sub_id)
                self.note_lease(cid, subscription.lease_ttl_ms)
                self._note_wake_stream(cid, subscription.wake_stream)
            prompts = self._client.head(layout.prompts_path(cid))
        except NotFound:
            return False  # prompts stream not created yet: its creation will wake us
        except StreamGone:  # soft-deleted, for good: no prompt can come
            log.info("checked conversation=%s: its prompts stream is gone (410)", cid)
            return False
        except StreamsError as exc:
            log.warning("could not check conversation %s: %s", cid, exc)
            return None
        pending = pending_by_offsets(_prompts_acked(cid, subscription), prompts.next_offset,
                                     self._offsets.get(cid))
        return self.unanswered(cid) if pending is None else pending

    def listed(self) -> tuple[dict[str, str | None], dict[str, str]]:
        """From the server's listings: the conversations whose subscription is as this
        supervisor makes it (what a `PUT` of it would confirm), each with its prompts
        stream's acked offset (None: not linked); and every conversation's prompts stream,
        by path, with its tail. `StreamsError` if the server cannot list them."""
        acked: dict[str, str | None] = {}
        for subscription in self.subscriptions():
            cid = layout.conversation_of_subscription(subscription.id)
            if cid is not None and self._made_here(cid, subscription):
                acked[cid] = _prompts_acked(cid, subscription)
        tails = {s.path: s.next_offset for s in self.streams()
                 if s.path.endswith(layout.PROMPTS_SUFFIX)}
        return acked, tails

    def subscriptions(self) -> Iterator[Subscription]:
        """The subscriptions whose ids have the conversations' prefix, from the listing."""
        prefix = layout.SUBSCRIPTION_PREFIX
        # Ids sort: every conversation's comes after the bare prefix, and those after its
        # last are not conversations'.
        for page in _pages(lambda after: self._client.list_subscriptions(
                after=after, limit=LISTING_PAGE), after=prefix):
            yield from (s for s in page.items if s.id.startswith(prefix))
            if page.next_after is not None and not page.next_after.startswith(prefix):
                return

    def streams(self) -> Iterator[ListedStream]:
        """Every stream of every conversation, from the listing."""
        for page in _pages(lambda after: self._client.list_streams(
                layout.CONVERSATIONS_PREFIX, after=after, limit=LISTING_PAGE)):
            yield from page.items

    def unanswered(self, cid: str) -> bool | None:
        """Whether the streams show a prompt with no finished answer; None if they could
        not be read.

        Needed where this supervisor's processed offset is behind (or it has none) and the
        subscription's is not: a subscription created after a prompt (by a client that did
        not create it first, or made again) starts at the stream's tail, and no wake would
        ever come for that prompt.
        """
        conversation = ConversationLog()
        try:
            prompts = self._client.read_all(layout.prompts_path(cid)).messages
            if self._client.exists(layout.responses_path(cid)):  # else: nothing answered yet
                for message in self._client.read_all(layout.responses_path(cid)).messages:
                    conversation.apply_response(message)
        except (NotFound, StreamGone):
            return False  # no prompts stream: no work
        except ContentTypeMismatch:
            # Not JSON: no answer can be read or written. Taken for a server that could not
            # answer, it was read again every 30 s for good; an agent says why, once.
            return True
        except StreamsError as exc:
            log.warning("could not read conversation %s: %s; trying again", cid, exc)
            return None
        conversation.add_prompt_messages(prompts)
        return bool(conversation.unanswered())

    def note_lease(self, cid: str, ttl: int | None) -> None:
        """Say once that a conversation's subscription has another lease than the one this
        supervisor was told to use: whoever creates it first (a client, before its first
        prompt) sets it, so this supervisor's lease TTL was not what a takeover waits for."""
        if ttl is None or ttl == self._settings.lease_ttl_ms or self._lease_note_given:
            return
        self._lease_note_given = True
        log.warning("conversation %s: its subscription was made with a lease of %d ms, not this"
                    " supervisor's %d (%s): the client that creates a conversation sets it,"
                    " and an agent that dies there is replaced after %d ms (said once)", cid,
                    ttl, self._settings.lease_ttl_ms, self._settings.named.lease_ttl, ttl)

    def _note_wake_stream(self, cid: str, wake_stream: str | None) -> None:
        """Say once per conversation that its subscription wakes another stream than the
        one this supervisor watches: its prompts are then seen only at a start, or when the
        conversation is announced again, not as they come."""
        if wake_stream == self._settings.wake_stream or cid in self._other_wake_noted:
            return
        self._other_wake_noted.add(cid)
        log.warning("conversation %s: its subscription wakes %s, not this supervisor's %r"
                    " (%s): its prompts are seen only when a supervisor looks at the whole"
                    " conversation (at its start, or when the conversation is announced), not"
                    " as they come; a client must create it as every supervisor does", cid,
                    "nothing" if wake_stream is None else repr(wake_stream),
                    self._settings.wake_stream, self._settings.named.wake_stream)

    def _made_here(self, cid: str, subscription: Subscription) -> bool:
        made = layout.subscription_config(cid, self._settings.wake_stream,
                                          self._settings.lease_ttl_ms)
        return (subscription.type == made.type and subscription.pattern == made.pattern
                and subscription.wake_stream == made.wake_stream
                and subscription.lease_ttl_ms == made.lease_ttl_ms
                and subscription.description is None)


def pending_by_offsets(acked: str | None, prompts_tail: str, processed: str | None,
                       ) -> bool | None:
    """Whether prompts wait for an answer: True where the prompts stream's tail is past what
    its subscription acked (None: not linked); False where neither the subscription nor this
    supervisor's processed offset is behind it; None where only the streams can tell."""
    # Offsets of one stream sort lexicographically (section 8).
    if acked is None or prompts_tail > acked:
        return True
    # This supervisor's offset alone behind: a subscription made again links the stream at
    # its tail, hiding unanswered prompts; or another supervisor (with its own data
    # directory) answered them since. Only the streams tell the two apart.
    return None if processed is None or prompts_tail > processed else False


def _prompts_acked(cid: str, subscription: Subscription) -> str | None:
    """Where the subscription acked the conversation's prompts stream; None if not linked."""
    path = layout.prompts_path(cid)
    return next((s.acked_offset for s in subscription.streams if s.path == path), None)


def _pages(list_page: Callable[[str], ListingPage[T]], after: str = "",
           ) -> Iterator[ListingPage[T]]:
    """Every page of a listing, from the one after `after`. `StreamsError` if a page does not
    move on past the one before (a server answering the same page would be read forever)."""
    while True:
        page = list_page(after)
        yield page
        if page.next_after is None:
            return
        if page.next_after <= after:
            raise StreamsError(f"the listing does not move on past {after!r}")
        after = page.next_after
