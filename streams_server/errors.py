"""The exceptions of `streams_server`, each carrying what an HTTP response needs.

Every error a client can cause is a `StreamError` with a status, a machine-readable code and a
message for people. The web layer maps them to responses in exactly one place
(`routes._error_reply`); the storage engine raises them without knowing about HTTP
beyond the status number.
"""

from __future__ import annotations

from collections.abc import Mapping


class StreamError(Exception):
    """A request the server refuses; `status` is the HTTP status to answer with."""

    status = 400
    code = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        empty_body: bool = False,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.empty_body = empty_body
        self.details: dict[str, object] = dict(details or {})


class BadRequest(StreamError):
    status = 400
    code = "BAD_REQUEST"


class Unauthorized(StreamError):
    status = 401
    code = "UNAUTHORIZED"


class ProducerFenced(StreamError):
    """A producer epoch older than the server's (section 5.2.1): a zombie writer, told the
    current epoch."""

    status = 403
    code = "PRODUCER_FENCED"

    def __init__(self, message: str, *, current_epoch: int) -> None:
        super().__init__(message, headers={"Producer-Epoch": str(current_epoch)})


class NotFound(StreamError):
    status = 404
    code = "NOT_FOUND"


class MethodNotAllowed(StreamError):
    status = 405
    code = "METHOD_NOT_ALLOWED"


class RequestTimeout(StreamError):
    """The rest of a request did not arrive within the server's socket timeout."""

    status = 408
    code = "REQUEST_TIMEOUT"


class Conflict(StreamError):
    status = 409
    code = "CONFLICT"


class StreamClosedConflict(Conflict):
    """Data for a closed stream (section 5.2): refused with the stream's final offset, and
    ``Stream-Closed`` for clients that do not read bodies."""

    code = "STREAM_CLOSED"

    def __init__(self, path: str, final_offset: str) -> None:
        super().__init__(f"stream {path!r} is closed",
                         headers={"Stream-Closed": "true", "Stream-Next-Offset": final_offset})


class ProducerSeqGap(Conflict):
    """A producer's sequence number past the next one expected (section 5.2.1)."""

    code = "PRODUCER_SEQ_GAP"

    def __init__(self, expected: int, received: int) -> None:
        super().__init__(
            f"producer sequence gap: expected {expected}, received {received}",
            headers={"Producer-Expected-Seq": str(expected),
                     "Producer-Received-Seq": str(received)})


class Gone(StreamError):
    status = 410
    code = "GONE"


class PayloadTooLarge(StreamError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class UriTooLong(StreamError):
    status = 414
    code = "URI_TOO_LONG"


class UnsupportedMediaType(StreamError):
    status = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class StorageFailure(StreamError):
    """The disk or database failed: nothing of the request was acknowledged."""

    status = 503
    code = "STORAGE_UNAVAILABLE"


class StorageFull(StorageFailure):
    """The disk, or the storage quota (`--max-storage-mib`), is full: nothing of the request
    was stored; deleting streams (or freeing the disk) makes room."""

    status = 507
    code = "STORAGE_FULL"
