"""Subscription glob patterns over stream-root-relative paths.

A pattern is a `/`-separated list of segments. A `*` inside a segment matches any run of
characters other than `/` (so a bare `*` segment matches exactly one path segment), and a
segment that is exactly `**` matches zero or more whole path segments.

Matching runs inside the server's write transaction (on every subscription PUT against the
existing streams, and on every stream create against every stored pattern), so it must never
backtrack exponentially: the segment-level match is a dynamic programme over (pattern segment,
path segment) and the within-segment match is a greedy left-to-right scan, both polynomial.
`validate_pattern` also bounds what a client may submit, so one match is cheap as well as
polynomial.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import BadRequest
from ..text import has_control_characters

DOUBLE_STAR = "**"

# Far above legitimate use. The length equals the default maximum stream path length, so any
# creatable stream path (of at most MAX_PATTERN_SEGMENTS segments) is still a valid literal
# pattern.
MAX_PATTERN_LENGTH = 1024
MAX_PATTERN_SEGMENTS = 32
MAX_PATTERN_STARS = 64


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, code="INVALID_PATTERN")


def validate_pattern(pattern: str) -> str:
    """Check a client-supplied pattern's shape and size; return it unchanged.

    The size limits keep the cost of one match (at worst proportional to the pattern's length
    times the path's) small, since every stream create matches against every stored pattern.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise _invalid(f"pattern must be at most {MAX_PATTERN_LENGTH} characters long")
    if not pattern or pattern.startswith("/") or pattern.endswith("/"):
        raise _invalid(
            "pattern must be a non-empty stream path glob without leading or trailing '/'"
        )
    if has_control_characters(pattern):
        raise _invalid("pattern contains control characters, which no stream path has")
    segments = pattern.split("/")
    if len(segments) > MAX_PATTERN_SEGMENTS:
        raise _invalid(f"pattern must have at most {MAX_PATTERN_SEGMENTS} path segments")
    if pattern.count("*") > MAX_PATTERN_STARS:
        raise _invalid(f"pattern must contain at most {MAX_PATTERN_STARS} '*' characters")
    for segment in segments:
        if not segment:
            raise _invalid("pattern has an empty path segment")
        if segment in (".", ".."):
            raise _invalid("pattern has a '.' or '..' segment, which no stream path has")
        if DOUBLE_STAR in segment and segment != DOUBLE_STAR:
            raise _invalid("'**' must be a whole path segment")
    return pattern


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> tuple[str, ...]:
    """The pattern's segments with each run of consecutive `**` segments collapsed to one.

    `**/**` matches exactly what `**` matches; collapsing keeps the programme in `_match` small.
    """
    segments: list[str] = []
    for segment in pattern.split("/"):
        if not (segment == DOUBLE_STAR and segments and segments[-1] == DOUBLE_STAR):
            segments.append(segment)
    return tuple(segments)


def _segment_matches(glob: str, text: str) -> bool:
    """Whether one path segment matches one pattern segment, `*` standing for any run.

    The literal pieces between the stars must occur in order: the first as a prefix, the last
    as a suffix, and each middle piece at its leftmost place after the previous one. Taking the
    leftmost place is always safe (it leaves the most room for the rest), so there is no
    backtracking: the cost is at worst proportional to len(glob) * len(text). Consecutive stars
    give empty pieces, which are skipped.
    """
    pieces = glob.split("*")
    if len(pieces) == 1:
        return glob == text
    first, last = pieces[0], pieces[-1]
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    position = len(first)
    for piece in filter(None, pieces[1:-1]):
        found = text.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _match(pattern: tuple[str, ...], path: list[str]) -> bool:
    """Whether the segments of `path` match the compiled `pattern`.

    `reachable[i]` says whether the path segments consumed so far can be matched by
    `pattern[:i]`; each path segment advances the whole row at once, so the cost is
    len(pattern) * len(path) segment comparisons rather than one branch per `**` choice.
    """
    reachable = _close([True] + [False] * len(pattern), pattern)
    for segment in path:
        advanced = [False] * (len(pattern) + 1)
        for i, glob in enumerate(pattern):
            if not reachable[i]:
                continue
            if glob == DOUBLE_STAR:
                advanced[i] = True  # `**` absorbs this segment and may absorb more
            elif _segment_matches(glob, segment):
                advanced[i + 1] = True
        reachable = _close(advanced, pattern)
        if not any(reachable):
            return False
    return reachable[len(pattern)]


def _close(reachable: list[bool], pattern: tuple[str, ...]) -> list[bool]:
    """Extend `reachable` (in place) past every `**` that may match zero segments."""
    for i, glob in enumerate(pattern):
        if reachable[i] and glob == DOUBLE_STAR:
            reachable[i + 1] = True
    return reachable


def matches(pattern: str, path: str) -> bool:
    """Whether a stream-root-relative path matches a subscription pattern."""
    return _match(_compile(pattern), path.split("/"))
