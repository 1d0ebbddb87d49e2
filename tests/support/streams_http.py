"""A thin HTTP toolkit for testing a Durable Streams server over real sockets.

It knows the protocol's URLs, headers and chunked catch-up reads, and nothing of the server's
internals except one white-box fact the durability tests need: this project's offsets are
``EPOCH_POSITION`` with the byte position of the stored representation in the second field,
so an append's start is its ``Stream-Next-Offset`` minus its stored length.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

STREAM_ROOT = "/v1/stream/"
METADATA_HEADERS = (
    "Content-Type",
    "Stream-Next-Offset",
    "Stream-TTL",
    "Stream-Expires-At",
    "Stream-Closed",
)
"""The HEAD headers that describe a stream (section 5.5)."""

_OFFSET = re.compile(r"([0-9]{16})_([0-9]{16})")


def offset_position(token: str) -> int:
    """The byte position a ``streams_server`` offset token names (white-box)."""
    match = _OFFSET.fullmatch(token)
    assert match is not None, f"not an offset of this server: {token!r}"
    assert int(match.group(1)) == 0, f"unexpected storage epoch in {token!r}"
    return int(match.group(2))


def offset_token(position: int) -> str:
    """The offset token ``streams_server`` hands out for a byte position (white-box)."""
    return f"{0:016d}_{position:016d}"


def error_body(response: requests.Response) -> dict[str, Any]:
    """The ``{"error": {"code", "message"}}`` body of an error response, checked."""
    assert response.headers.get("Content-Type", "").startswith("application/json"), (
        f"{response.status_code} error without a JSON content type: "
        f"{response.headers.get('Content-Type')!r} {response.content[:200]!r}"
    )
    payload = response.json()
    error = payload["error"]
    assert isinstance(error["code"], str) and error["code"], payload
    assert isinstance(error["message"], str) and error["message"], payload
    return payload  # type: ignore[no-any-return]


@dataclass
class CatchUp:
    """Everything a catch-up read returned, one response per chunk."""

    responses: list[requests.Response] = field(default_factory=list)

    @property
    def bodies(self) -> list[bytes]:
        return [r.content for r in self.responses]

    @property
    def content(self) -> bytes:
        """The bytes of a non-JSON stream, chunks joined."""
        return b"".join(self.bodies)

    @property
    def messages(self) -> list[Any]:
        """The messages of a JSON stream, chunk arrays joined."""
        out: list[Any] = []
        for body in self.bodies:
            out.extend(json.loads(body))
        return out

    @property
    def next_offset(self) -> str:
        return self.responses[-1].headers["Stream-Next-Offset"]

    @property
    def closed(self) -> bool:
        return self.responses[-1].headers.get("Stream-Closed") == "true"


class StreamsHttp:
    """Requests to one server's stream URLs; every call returns the raw `requests` response."""

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.headers = dict(headers or {})
        self.timeout = timeout

    def url(self, path: str) -> str:
        return f"{self.base_url}{STREAM_ROOT}{path}"

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> requests.Response:
        return self.session.request(
            method,
            self.url(path),
            headers={**self.headers, **(headers or {})},
            data=body,
            params=params,
            timeout=self.timeout,
        )

    def put(
        self,
        path: str,
        content_type: str | None = "application/octet-stream",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers.setdefault("Content-Type", content_type)
        return self.request("PUT", path, headers=all_headers, body=body)

    def post(
        self,
        path: str,
        body: Any,
        content_type: str | None = "application/octet-stream",
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers.setdefault("Content-Type", content_type)
        return self.request("POST", path, headers=all_headers, body=body)

    def close(self, path: str, headers: Mapping[str, str] | None = None) -> requests.Response:
        """The close-only operation of section 5.3 (empty body, ``Stream-Closed: true``)."""
        return self.request("POST", path, headers={"Stream-Closed": "true", **(headers or {})})

    def head(self, path: str) -> requests.Response:
        return self.request("HEAD", path)

    def get(self, path: str, offset: str | None = None, **params: str) -> requests.Response:
        query = dict(params)
        if offset is not None:
            query["offset"] = offset
        return self.request("GET", path, params=query)

    def delete(self, path: str) -> requests.Response:
        return self.request("DELETE", path)

    def metadata(self, path: str) -> tuple[int, dict[str, str]]:
        """HEAD status and the headers that describe the stream."""
        response = self.head(path)
        described = {n: response.headers[n] for n in METADATA_HEADERS if n in response.headers}
        return response.status_code, described

    def catch_up(self, path: str, offset: str = "-1", max_requests: int = 10_000) -> CatchUp:
        """Read from ``offset`` chunk by chunk until ``Stream-Up-To-Date``."""
        result = CatchUp()
        for _ in range(max_requests):
            response = self.get(path, offset)
            assert response.status_code == 200, (
                f"GET {path} at {offset}: {response.status_code} {response.content[:200]!r}"
            )
            result.responses.append(response)
            if response.headers.get("Stream-Up-To-Date") == "true":
                return result
            next_offset = response.headers["Stream-Next-Offset"]
            assert next_offset > offset or offset == "-1", "catch-up read made no progress"
            offset = next_offset
        raise AssertionError(f"{path}: not up to date after {max_requests} reads")
