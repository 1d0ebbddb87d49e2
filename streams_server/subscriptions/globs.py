"""Subscription glob patterns: `*` matches one path segment, `**` zero or more segments."""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import BadRequest


def validate_pattern(pattern: str) -> str:
    if not pattern or pattern.startswith("/") or pattern.endswith("/"):
        raise BadRequest(
            "pattern must be a non-empty stream path glob without leading or trailing '/'",
            code="INVALID_PATTERN",
        )
    for segment in pattern.split("/"):
        if not segment:
            raise BadRequest("pattern has an empty path segment", code="INVALID_PATTERN")
        if "**" in segment and segment != "**":
            raise BadRequest("'**' must be a whole path segment", code="INVALID_PATTERN")
    return pattern


@lru_cache(maxsize=4096)
def _segment_regex(segment: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if ch == "*" else re.escape(ch) for ch in segment))


def _match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, path[i:]) for i in range(len(path) + 1))
    if not path or _segment_regex(head).fullmatch(path[0]) is None:
        return False
    return _match(rest, path[1:])


def matches(pattern: str, path: str) -> bool:
    """Whether a stream-root-relative path matches a subscription pattern."""
    return _match(tuple(pattern.split("/")), tuple(path.split("/")))
