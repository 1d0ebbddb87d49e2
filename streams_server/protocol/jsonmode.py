"""JSON mode (section 9.1): validation, one level of array flattening, array responses.

Each message is stored as the exact JSON text the client sent for it, so reads return the
client's bytes and no number or string is re-encoded on the way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..errors import BadRequest, PayloadTooLarge

_WHITESPACE = " \t\n\r"


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _unconverted(text: str) -> str:
    return text


# Integers are only validated, not converted: past 4,300 digits Python refuses to convert
# one, and the JSON is valid.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_unconverted)


def split_messages(body: bytes, *, allow_empty_array: bool, max_messages: int) -> list[bytes]:
    """The messages of a JSON body: the elements of a top-level array, else the value; a
    `PayloadTooLarge` past `max_messages`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"JSON body is not valid UTF-8: {exc.reason}", code="INVALID_JSON") from None
    start = _skip(text, 0)
    if start == len(text):
        raise BadRequest("JSON body is empty", code="INVALID_JSON")
    if text[start] != "[":
        end = _value_end(text, start)
        if _skip(text, end) != len(text):
            raise _invalid(_skip(text, end), "unexpected data after the JSON value")
        return [text[start:end].encode("utf-8")]
    messages = _array_elements(text, start, max_messages)
    if not messages and not allow_empty_array:
        raise BadRequest(
            "an empty JSON array appends nothing; send at least one message",
            code="EMPTY_JSON_ARRAY",
        )
    return messages


def encode_array(messages: Iterable[bytes]) -> bytes:
    """A read response body: the messages as one JSON array."""
    return b"[" + b",".join(messages) + b"]"


def _array_elements(text: str, start: int, max_messages: int) -> list[bytes]:
    messages: list[bytes] = []
    i = _skip(text, start + 1)
    if i < len(text) and text[i] == "]":
        i += 1
    else:
        while True:
            if len(messages) == max_messages:
                raise PayloadTooLarge(
                    f"a JSON request holds at most {max_messages} messages: send them in"
                    " several appends", code="TOO_MANY_MESSAGES")
            end = _value_end(text, i)
            messages.append(text[i:end].encode("utf-8"))
            i = _skip(text, end)
            if i < len(text) and text[i] == ",":
                i = _skip(text, i + 1)
                continue
            if i < len(text) and text[i] == "]":
                i += 1
                break
            raise _invalid(i, "expected ',' or ']' in the JSON array")
    if _skip(text, i) != len(text):
        raise _invalid(_skip(text, i), "unexpected data after the JSON array")
    return messages


def _value_end(text: str, start: int) -> int:
    try:
        _, end = _DECODER.raw_decode(text, start)
    except RecursionError:
        raise BadRequest("JSON nested too deeply for this server (several hundred levels)",
                         code="INVALID_JSON") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise BadRequest(f"invalid JSON: {exc}", code="INVALID_JSON") from None
    return end


def _skip(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WHITESPACE:
        i += 1
    return i


def _invalid(position: int, message: str) -> BadRequest:
    return BadRequest(f"invalid JSON at character {position}: {message}", code="INVALID_JSON")
