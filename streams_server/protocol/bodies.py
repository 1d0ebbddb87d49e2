"""Reading request bodies within the configured limits, spooling large ones to disk."""

from __future__ import annotations

import codecs
import errno
import tempfile
from collections.abc import Callable
from typing import IO, TypeVar

from ..config import StreamsSettings
from ..errors import BadRequest, PayloadTooLarge, StorageFailure, StorageFull
from ..storage.models import Entries, SpooledChunks, split_entries

_READ_CHUNK = 256 * 1024


def _too_large(settings: StreamsSettings) -> PayloadTooLarge:
    """The refusal of a body over the limit, which closes the connection: the rest of the
    body is not read (it may be endless), so nothing after it could be read as a request."""
    return PayloadTooLarge(
        f"request body exceeds the limit of {settings.max_body_bytes} bytes",
        code="PAYLOAD_TOO_LARGE", headers={"Connection": "close"},
    )


def check_declared_length(content_length: int | None, settings: StreamsSettings) -> None:
    """Refuse early, before reading anything, when Content-Length already says too much."""
    if content_length is not None and content_length > settings.max_body_bytes:
        raise _too_large(settings)


def read_all(stream: IO[bytes], settings: StreamsSettings) -> bytes:
    """The whole body in memory (JSON needs parsing), at most `max_body_bytes`."""
    parts: list[bytes] = []
    size = 0
    while chunk := stream.read(_READ_CHUNK):
        size += len(chunk)
        if size > settings.max_body_bytes:
            raise _too_large(settings)
        parts.append(chunk)
    return b"".join(parts)


def read_spooled(stream: IO[bytes], settings: StreamsSettings, *, text: bool = False
                 ) -> Entries:
    """A binary body as storage entries; beyond `spool_memory_bytes` it goes to a temp file.

    Entries are at most `max_chunk_bytes` long, so that a catch-up read (which returns whole
    entries) never has to exceed the chunk limit because of one large append. With `text`
    they end between UTF-8 characters.
    """
    first = _read_up_to(stream, settings.spool_memory_bytes + 1)
    if len(first) > settings.max_body_bytes:  # a chunked body declares no length up front
        raise _too_large(settings)
    check_text = _TextCheck() if text else None
    if check_text:
        check_text.feed(first)
    if len(first) <= settings.spool_memory_bytes:
        if check_text:
            check_text.end()
        return split_entries(first, settings.max_chunk_bytes, text=text)
    spool = _write_or_fail(lambda: tempfile.TemporaryFile())
    try:
        _write_or_fail(lambda: spool.write(first))
        size = len(first)
        while chunk := stream.read(_READ_CHUNK):
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise _too_large(settings)
            if check_text:
                check_text.feed(chunk)
            _write_or_fail(lambda: spool.write(chunk))
        if check_text:
            check_text.end()
        _write_or_fail(spool.flush)  # the last buffered bytes: the disk may refuse them too
    except BaseException:
        try:
            spool.close()  # flushes what is buffered: on a full disk that fails too
        except OSError:
            pass
        raise
    return SpooledChunks(spool, size, settings.max_chunk_bytes, text=text)


class _TextCheck:
    """Whether a text stream's body, fed piece by piece, is UTF-8 ending between characters.

    SSE readers of a `text/*` stream get its data as UTF-8 text (section 5.8): a character
    split across two appends, or bytes that are no UTF-8 at all, reached them as U+FFFD while
    catch-up reads returned the bytes, so live and catch-up readers saw different data.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._checked = 0

    def feed(self, data: bytes) -> None:
        self._decode(data, final=False)
        self._checked += len(data)

    def end(self) -> None:
        self._decode(b"", final=True)

    def _decode(self, data: bytes, *, final: bool) -> None:
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            where = self._checked + exc.start - len(self._decoder.getstate()[0])
            raise BadRequest(
                f"a text stream holds UTF-8 text, whole characters in each append (SSE"
                f" readers get it as text): the body is not, at byte {max(0, where)}",
                code="INVALID_TEXT") from None


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
T = TypeVar("T")


def _write_or_fail(write: Callable[[], T]) -> T:
    """`write` to the spool file, with the disk's failure as the request's error."""
    try:
        return write()
    except OSError as exc:
        if exc.errno in _FULL:
            raise StorageFull(f"the server's temporary storage is full ({exc.strerror}):"
                              " nothing of the request was stored") from exc
        raise StorageFailure(f"the server could not buffer the request body: {exc.strerror}"
                             ) from exc


def _read_up_to(stream: IO[bytes], limit: int) -> bytes:
    """Up to `limit` bytes, reading until the body ends if it is shorter.

    One `read` may return less than the body holds, and only a read at its end finds out
    whether it ended early: Werkzeug's input stream raises there, when the client sent less
    than its Content-Length, so a cut-off body is refused instead of stored.
    """
    parts: list[bytes] = []
    size = 0
    while size < limit and (chunk := stream.read(limit - size)):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)
