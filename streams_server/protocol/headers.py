"""Parsing and validating the protocol's request headers (sections 5.1, 5.2, 4.2)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from ..errors import BadRequest
from ..storage.models import Expiry, ProducerRef, media_type
from ..text import has_control_characters
from .messages import HeaderLookup

MAX_SAFE_INTEGER = 2**53 - 1
MAX_CONTENT_TYPE_LENGTH = 1024
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_RFC3339 = re.compile(  # an offset's hours 00-23, its minutes 00-59 (RFC 3339, 5.6)
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)"
)


def flag(headers: HeaderLookup, name: str) -> bool:
    """A presence header such as `Stream-Closed`: only `true` (any case) counts (4.1)."""
    value = headers.get(name)
    return value is not None and value.strip().lower() == "true"


def content_type(headers: HeaderLookup) -> str | None:
    """The Content-Type as given (trimmed), or None. It is stored and sent back on every
    read, so it must be a header value a client can take back: printable, and short."""
    value = (headers.get("Content-Type") or "").strip()
    if not value:
        return None
    if len(value) > MAX_CONTENT_TYPE_LENGTH:
        raise BadRequest(f"Content-Type is longer than {MAX_CONTENT_TYPE_LENGTH} characters",
                         code="INVALID_CONTENT_TYPE")
    if has_control_characters(value, tab_allowed=True):
        raise BadRequest("Content-Type contains control characters",
                         code="INVALID_CONTENT_TYPE")
    return value


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9110, 8.3.1: type "/" subtype *( OWS ";" OWS [ parameter ] ). The OWS after a ";"
# belongs to the parameter here: with it in both places, spaces between ";"s could be matched
# two ways, and " ;" repeated made the match exponential.
_MEDIA_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;(?:[ \t]*{_TOKEN}=(?:{_TOKEN}|\"(?:[^\"\\]|\\.)*\"))?)*"
)


def stream_content_type(headers: HeaderLookup) -> str | None:
    """The Content-Type a stream is created with, or None: a media type (`type/subtype`,
    with parameters), as every reader of the stream is told it is."""
    value = content_type(headers)
    if value is None:
        return None
    if not _MEDIA_TYPE.fullmatch(value):
        raise BadRequest(f"Content-Type {value[:80]!r} is not a media type (such as"
                         " application/json or text/plain; charset=utf-8)",
                         code="INVALID_CONTENT_TYPE")
    return value


def check_utf8_charset(content_type: str) -> None:
    """A text or JSON stream is made in UTF-8: its SSE readers get it as UTF-8 text (5.8),
    so its bytes are checked as UTF-8 (see `bodies._TextCheck`), and one declared in another
    charset would refuse every append of text in that charset."""
    media = media_type(content_type)
    if not (media.startswith("text/") or media == "application/json"):
        return
    charset = _CHARSET.search(content_type)
    name = charset and charset.group(1).strip('"').lower()
    if name and name not in _UTF8_CHARSETS:
        raise BadRequest(
            f"a {media} stream holds UTF-8 (its SSE readers get it as UTF-8 text, section"
            f" 5.8), not charset={name[:40]}: send it as UTF-8, with charset=utf-8",
            code="INVALID_CONTENT_TYPE")


_CHARSET = re.compile(r";[ \t]*charset=(\"[^\"]*\"|[^; \t]*)", re.IGNORECASE)
_UTF8_CHARSETS = {"utf-8", "utf8", "us-ascii"}  # ASCII text is UTF-8 too


def non_negative_integer(value: str, name: str, maximum: int = MAX_SAFE_INTEGER) -> int:
    text = value.strip()
    if not _DECIMAL.fullmatch(text):
        raise BadRequest(
            f"{name} must be a non-negative decimal integer without sign, leading zeros or "
            f"decimal point, got {value[:40]!r}",
            code=f"INVALID_{name.upper().replace('-', '_')}",
        )
    if len(text) > len(str(maximum)) or int(text) > maximum:  # int() fails past 4,300 digits
        raise BadRequest(f"{name} must be at most {maximum}", code="VALUE_TOO_LARGE")
    return int(text)


def expiry(headers: HeaderLookup) -> Expiry:
    """`Stream-TTL` (seconds, sliding) or `Stream-Expires-At` (RFC 3339), never both."""
    ttl_header = headers.get("Stream-TTL")
    expires_header = headers.get("Stream-Expires-At")
    if ttl_header is not None and expires_header is not None:
        raise BadRequest(
            "Stream-TTL and Stream-Expires-At cannot be combined", code="CONFLICTING_EXPIRY"
        )
    if ttl_header is not None:
        return Expiry(ttl_seconds=non_negative_integer(ttl_header, "Stream-TTL"))
    if expires_header is not None:
        return Expiry(expires_at_ms=rfc3339_ms(expires_header))
    return Expiry()


def rfc3339_ms(value: str) -> int:
    text = value.strip()
    if not _RFC3339.fullmatch(text):
        raise BadRequest(
            f"Stream-Expires-At must be an RFC 3339 timestamp, got {value[:60]!r}",
            code="INVALID_EXPIRES_AT",
        )
    normalized = text.replace("z", "Z").replace("t", "T").replace(" ", "T")
    leap_second = normalized[17:19] == "60"  # RFC 3339 (5.7): taken as the second after it
    if leap_second:
        normalized = normalized[:17] + "59" + normalized[19:]
    try:
        moment = datetime.fromisoformat(normalized.replace("Z", "+00:00"))
        utc = moment.astimezone(timezone.utc)  # OverflowError outside years 1-9999 in UTC
        utc += timedelta(seconds=1 if leap_second else 0)
    except (ValueError, OverflowError) as exc:
        raise BadRequest(
            f"Stream-Expires-At is not a valid date: {exc}", code="INVALID_EXPIRES_AT"
        ) from None
    return (utc - UNIX_EPOCH) // timedelta(milliseconds=1)  # exact, unlike float seconds


def producer(headers: HeaderLookup) -> ProducerRef | None:
    """The idempotent producer triple, all three headers or none (5.2.1)."""
    names = ("Producer-Id", "Producer-Epoch", "Producer-Seq")
    values = [headers.get(n) for n in names]
    present = [v is not None for v in values]
    if not any(present):
        return None
    if not all(present):
        missing = ", ".join(n for n, p in zip(names, present) if not p)
        raise BadRequest(
            f"Producer-Id, Producer-Epoch and Producer-Seq go together; missing {missing}",
            code="INCOMPLETE_PRODUCER_HEADERS",
        )
    producer_id, epoch, seq = values
    assert producer_id is not None and epoch is not None and seq is not None
    if not producer_id.strip():
        raise BadRequest("Producer-Id must not be empty", code="INVALID_PRODUCER_ID")
    return ProducerRef(
        producer_id=producer_id,
        epoch=non_negative_integer(epoch, "Producer-Epoch"),
        seq=non_negative_integer(seq, "Producer-Seq"),
    )


def stream_seq(headers: HeaderLookup) -> str | None:
    value = headers.get("Stream-Seq")
    if value is None:
        return None
    if value == "":
        raise BadRequest("Stream-Seq must not be empty", code="INVALID_STREAM_SEQ")
    return value
