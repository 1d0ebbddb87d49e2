"""Checks on text from requests that every layer meets (stream paths, subscription
patterns, header values): a leaf module, so the layers need not import one another for it."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def has_control_characters(text: str, *, tab_allowed: bool = False) -> bool:
    """Whether `text` holds ASCII control characters (C0 or DEL); a header value may hold
    tabs, a path may not. (A regular expression: every request's path goes through here,
    and a generator over its characters was 1-2 % of the server's CPU in the chat.)"""
    return (_CONTROL_BUT_TAB if tab_allowed else _CONTROL).search(text) is not None
