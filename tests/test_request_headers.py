"""The standalone server's request-header parser, as gevent's pywsgi handler uses it."""

from __future__ import annotations

import io

import pytest

from streams_server.request_head import RequestHeaders, UnreadableRequest


def parse(block: bytes) -> RequestHeaders:
    return RequestHeaders(io.BytesIO(block + b"ignored body"))


def test_values_by_name_case_insensitively_first_one_wins() -> None:
    headers = parse(b"Host: x\r\nContent-Type: application/json\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert headers.get("content-type") == "application/json" == headers.typeheader
    assert headers.get("X-A") == "1" and headers.getheader("x-a") == "1"
    assert headers.get("missing") is None and headers.get("missing", "d") == "d"
    assert headers.headers == ["Host: x\r\n", "Content-Type: application/json\r\n",
                               "X-A: 1\r\n", "x-a: 2\r\n"]
    assert headers.status == ""


def test_the_block_ends_at_the_blank_line_and_bare_newlines_count() -> None:
    reader = io.BytesIO(b"A: 1\nB: 2\n\nbody")
    headers = RequestHeaders(reader)
    assert (headers.get("a"), headers.get("b")) == ("1", "2") and reader.read() == b"body"


@pytest.mark.parametrize("cut_off", [b"", b"A: 1\r\n", b"A: 1\r\nB: tw"])
def test_a_block_the_connection_ends_inside_is_refused(cut_off: bytes) -> None:
    with pytest.raises(UnreadableRequest, match="closed before the request's headers ended"):
        RequestHeaders(io.BytesIO(cut_off))


@pytest.mark.parametrize("fold", [b" two", b"\tthree"])
def test_folded_lines_are_refused(fold: bytes) -> None:
    """Joined with their CR LF, an echoed value (an Origin) failed the response (RFC 9112
    5.2: refuse obsolete line folding, or replace it with spaces)."""
    with pytest.raises(UnreadableRequest, match="starts with a space or tab: folded header"):
        parse(b"X-Long: one\r\n" + fold + b"\r\nY: 2\r\n\r\n")


def test_deleting_a_name_removes_every_occurrence() -> None:
    headers = parse(b"Content-Length: 5\r\nA: 1\r\ncontent-length: 6\r\nB: 2\r\n\r\n")
    del headers["Content-Length"]
    assert headers.get("content-length") is None
    assert headers.headers == ["A: 1\r\n", "B: 2\r\n"]
    assert (headers.get("a"), headers.get("b")) == ("1", "2")  # found after the lines moved
    with pytest.raises(KeyError):
        del headers["content-length"]


@pytest.mark.parametrize("block", [
    b"No colon here\r\n\r\n",
    b": no name\r\n\r\n",
    b"Space before : colon\r\n\r\n",
    b" leading continuation\r\n\r\n",
    b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n",
    b"Big: " + b"x" * 70000 + b"\r\n\r\n",
])
def test_malformed_or_oversized_blocks_are_refused(block: bytes) -> None:
    with pytest.raises(ValueError):
        parse(block)
