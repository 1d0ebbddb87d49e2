"""Offset tokens: fixed-width, lexicographically sortable positions in a stream.

A token is `EEEEEEEEEEEEEEEE_PPPPPPPPPPPPPPPP`: two 16-digit decimal fields, the storage epoch
and the byte position in the stream's stored representation. The epoch is 0 for every stream
today; it is reserved so that a future retention or compaction scheme can move positions
forward without ever sorting a new token before an old one. Fixed width makes string order
equal numeric order, and no token can be mistaken for the sentinels `-1` and `now` (section 8).
"""

from __future__ import annotations

import re

from .errors import BadRequest

FIELD_WIDTH = 16
START_SENTINEL = "-1"
TAIL_SENTINEL = "now"
STORAGE_EPOCH = 0
_TOKEN = re.compile(r"([0-9]{16})_([0-9]{16})")


def format_offset(position: int) -> str:
    """The token for a byte position."""
    return f"{STORAGE_EPOCH:0{FIELD_WIDTH}d}_{position:0{FIELD_WIDTH}d}"


def parse_offset(token: str, *, field: str = "offset", now_too: bool = False) -> int:
    """The byte position a token names; `-1` means 0. `now` is resolved by the caller, where
    it is one (`now_too`, for the error's words)."""
    if token == START_SENTINEL:
        return 0
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise BadRequest(
            f"malformed {field} {token[:64]!r}: expected -1{', now' if now_too else ''} or an"
            " offset returned by this server",
            code="INVALID_OFFSET",
        )
    if int(match.group(1)) != STORAGE_EPOCH:
        raise BadRequest(f"{field} {token!r} is beyond the stream's tail", code="OFFSET_OUT_OF_RANGE")
    return int(match.group(2))
