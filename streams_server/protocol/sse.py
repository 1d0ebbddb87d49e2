"""Server-Sent Events framing for live reads (section 5.8)."""

from __future__ import annotations

import base64
import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def event(name: str, data: str, *, event_id: str | None = None) -> bytes:
    """One SSE event; every line of `data` gets its own `data:` field. `event_id`: the offset
    after it, which an `EventSource` sends back as `Last-Event-ID` when it reconnects."""
    lines = _LINE_BREAK.split(data)
    # A client strips one space after "data:", so only lines that start with one get a
    # separating space of their own.
    body = "".join(f"data: {line}\n" if line[:1] == " " else f"data:{line}\n" for line in lines)
    id_field = "" if event_id is None else f"id:{event_id}\n"
    return f"event: {name}\n{body}{id_field}\n".encode("utf-8")


def data_event_text(payload: bytes, *, base64_encoded: bool) -> str:
    if base64_encoded:
        return base64.b64encode(payload).decode("ascii")
    return payload.decode("utf-8", errors="replace")


def control_event(
    next_offset: str, *, cursor: str | None, up_to_date: bool, closed: bool
) -> bytes:
    """The ``control`` event, with the offset as its ``id`` too (see `event`). Offsets and
    cursors are made of digits and ``_`` only (they are the server's own), so the JSON is
    written directly: this runs once per reader per batch."""
    fields = f'"streamNextOffset":"{next_offset}"'
    if cursor is not None and not closed:
        fields += f',"streamCursor":"{cursor}"'
    if up_to_date or closed:
        fields += ',"upToDate":true'
    if closed:
        fields += ',"streamClosed":true'
    # `id` after `data`: some clients read the line after `event: control` as its data.
    return (b"event: control\ndata:{" + fields.encode("ascii") + b"}\nid:"
            + next_offset.encode("ascii") + b"\n\n")


def retry_field(milliseconds: int) -> bytes:
    """Tells EventSource clients how soon to reconnect after the server ends a connection."""
    return f"retry: {milliseconds}\n\n".encode("ascii")


def comment(text: str) -> bytes:
    """A keep-alive line that clients ignore but proxies see as traffic."""
    return f": {text}\n\n".encode("utf-8")


def uses_base64(content_type: str) -> bool:
    """Binary streams are base64-encoded in SSE; text/* and application/json are not."""
    media = content_type.split(";", 1)[0].strip().lower()
    return not (media.startswith("text/") or media == "application/json")
