"""Where a fork may diverge from its source (section 4.2), over real sockets.

A JSON stream may only be forked at a message boundary: a fork inside a message would read back
as broken JSON forever, so it is refused with ``400 INVALID_OFFSET`` exactly where a read of
the source is, and nothing is created. Binary streams keep byte-granular divergence points
(with or without ``Stream-Fork-Sub-Offset``), since bytes cut anywhere are still the bytes.

Some offsets here are built with the white-box `offset_token`: clients must not do that
(section 8), and this is what a server should answer when one does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support import start_streams_server
from tests.support.streams_http import StreamsHttp, error_body, offset_position, offset_token

pytestmark = pytest.mark.timeout(120)

BINARY = "application/octet-stream"
JSON = "application/json"
MAX_CHUNK = 1024  # --max-chunk-kib 1: catch-up reads hand out many offsets


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamsHttp]:
    """One server for the module, with 1 KiB catch-up chunks."""
    server = start_streams_server(
        tmp_path_factory.mktemp("forks") / "data", extra_args=["--max-chunk-kib", "1"]
    )
    try:
        yield StreamsHttp(server.url)
    finally:
        server.terminate()


def fork(
    client: StreamsHttp, target: str, source: str, offset: str | None = None, sub: int | None = None
) -> requests.Response:
    """PUT a fork of `source` at `target`, inheriting the source's content type."""
    headers = {"Stream-Forked-From": f"/v1/stream/{source}"}
    if offset is not None:
        headers["Stream-Fork-Offset"] = offset
    if sub is not None:
        headers["Stream-Fork-Sub-Offset"] = str(sub)
    return client.put(target, None, headers=headers)


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert error_body(response)["error"]["code"] == code, response.content


def assert_absent(client: StreamsHttp, path: str) -> None:
    """The stream does not exist: GET and HEAD are 404."""
    assert client.get(path, "-1").status_code == 404
    assert client.head(path).status_code == 404


def json_messages(client: StreamsHttp, path: str, offset: str = "-1") -> list[Any]:
    """The messages of a JSON stream from `offset`, each chunk checked to be a JSON array."""
    out: list[Any] = []
    for body in client.catch_up(path, offset).bodies:
        chunk = json.loads(body)
        assert isinstance(chunk, list), body
        out.extend(chunk)
    return out


def create_json(client: StreamsHttp, path: str, *appends: list[Any]) -> list[str]:
    """A JSON stream made of `appends` (the first by PUT); the offset after each."""
    offsets = []
    for i, messages in enumerate(appends):
        body = json.dumps(messages, separators=(",", ":")).encode()
        response = client.put(path, JSON, body) if i == 0 else client.post(path, body, JSON)
        assert response.status_code in (201, 204), response.content
        offsets.append(response.headers["Stream-Next-Offset"])
    return offsets


# ---------------------------------------------------------------------- JSON streams


def test_json_fork_inside_a_message_is_400_and_creates_nothing(client: StreamsHttp) -> None:
    """The fuzzer's case: a fork 3 bytes into ``{"a":1}`` used to be created and read back as
    ``[{"a]``. It is refused like a GET there, and the path stays free for a correct fork."""
    create_json(client, "mid/src", [{"a": 1}, {"b": 2}, {"c": 3}])
    inside = offset_token(3)
    assert_error(client.get("mid/src", inside), 400, "INVALID_OFFSET")

    refused = fork(client, "mid/fork", "mid/src", inside)
    assert_error(refused, 400, "INVALID_OFFSET")
    assert "Stream-Fork-Offset" in error_body(refused)["error"]["message"]
    assert_absent(client, "mid/fork")
    assert client.post("mid/fork", b'{"x":1}', JSON).status_code == 404
    assert_absent(client, "mid/fork")

    assert fork(client, "mid/fork", "mid/src", offset_token(7)).status_code == 201
    assert json_messages(client, "mid/fork") == [{"a": 1}]


def test_json_fork_is_created_exactly_where_a_read_may_start(client: StreamsHttp) -> None:
    """At every position of a JSON stream, forking succeeds if and only if a GET of the source
    at that offset does; each fork reads back the messages before it, as valid JSON."""
    appends: list[list[Any]] = [[{"id": 1}, "two", [3, 3]], [{"text": "é ü"}], [None, 6.5]]
    tail = offset_position(create_json(client, "every/src", *appends)[-1])
    for position in range(tail + 1):
        token = offset_token(position)
        read = client.get("every/src", token)
        created = fork(client, f"every/fork-{position}", "every/src", token)
        if read.status_code == 400:
            assert_error(created, 400, "INVALID_OFFSET")
            assert_absent(client, f"every/fork-{position}")
            continue
        assert read.status_code == 200 and created.status_code == 201, (position, created.content)
        assert created.headers["Stream-Next-Offset"] == token
        inherited = json_messages(client, f"every/fork-{position}")
        assert inherited + json_messages(client, "every/src", token) == sum(appends, [])


def test_json_fork_at_a_boundary_stays_valid_json_after_appends(client: StreamsHttp) -> None:
    """A fork at an offset the server returned inherits the messages before it; its own appends
    follow them in one JSON array, and the source is untouched."""
    offsets = create_json(client, "ok/src", [{"a": 1}, {"b": 2}], [{"c": 3}])
    created = fork(client, "ok/fork", "ok/src", offsets[0])
    assert created.status_code == 201
    assert created.headers["Content-Type"] == JSON
    assert client.post("ok/fork", b'[{"x":1},{"y":2}]', JSON).status_code == 204

    assert json_messages(client, "ok/fork") == [{"a": 1}, {"b": 2}, {"x": 1}, {"y": 2}]
    assert json_messages(client, "ok/fork", offsets[0]) == [{"x": 1}, {"y": 2}]
    assert json_messages(client, "ok/src") == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_json_fork_at_every_offset_a_catch_up_read_returned(client: StreamsHttp) -> None:
    """Catch-up reads split a long JSON stream into chunks; every ``Stream-Next-Offset`` they
    hand out is a valid fork offset, and the fork holds exactly the messages read before it."""
    messages = [{"i": i, "pad": "p" * (i * 37 % 200)} for i in range(60)]
    create_json(client, "chunks/src", *(messages[i : i + 7] for i in range(0, 60, 7)))
    read = client.catch_up("chunks/src")
    assert len(read.responses) > 3
    seen: list[Any] = []
    for n, response in enumerate(read.responses):
        seen.extend(json.loads(response.content))
        offset = response.headers["Stream-Next-Offset"]
        assert fork(client, f"chunks/fork-{n}", "chunks/src", offset).status_code == 201
        assert json_messages(client, f"chunks/fork-{n}") == seen


def test_json_fork_of_a_fork_is_checked_against_the_whole_chain(client: StreamsHttp) -> None:
    """The source of a fork may itself be a fork: its boundaries are those of the messages it
    inherits, the divergence point, and its own messages."""
    create_json(client, "chain/root", [{"r": 1}, {"r": 2}, {"r": 3}])
    assert fork(client, "chain/mid", "chain/root", offset_token(0), sub=2).status_code == 201
    middle = client.post("chain/mid", b'{"m":1}', JSON).headers["Stream-Next-Offset"]
    divergence = offset_token(2 * len(b'{"r":1}'))

    for position in (1, 9, offset_position(middle) - 1):
        target = f"chain/bad-{position}"
        assert_error(fork(client, target, "chain/mid", offset_token(position)), 400,
                     "INVALID_OFFSET")
        assert_absent(client, target)
    assert fork(client, "chain/at-divergence", "chain/mid", divergence).status_code == 201
    assert json_messages(client, "chain/at-divergence") == [{"r": 1}, {"r": 2}]
    assert fork(client, "chain/at-tail", "chain/mid").status_code == 201
    assert json_messages(client, "chain/at-tail") == [{"r": 1}, {"r": 2}, {"m": 1}]


def test_json_sub_offset_forks_count_whole_messages(client: StreamsHttp) -> None:
    """``Stream-Fork-Sub-Offset`` on JSON counts messages past a boundary anchor, so it can end
    inside a batch; an anchor inside a message is refused like any other fork offset."""
    offsets = create_json(client, "sub/src", [{"a": 1}], [{"b": 2}, {"c": 3}, {"d": 4}])
    assert fork(client, "sub/fork", "sub/src", offsets[0], sub=2).status_code == 201
    assert json_messages(client, "sub/fork") == [{"a": 1}, {"b": 2}, {"c": 3}]
    inside = offset_token(offset_position(offsets[0]) + 2)
    assert_error(fork(client, "sub/bad", "sub/src", inside, sub=1), 400, "INVALID_OFFSET")
    assert_absent(client, "sub/bad")
    assert_error(fork(client, "sub/over", "sub/src", offsets[0], sub=4), 400,
                 "INVALID_SUB_OFFSET")
    assert_absent(client, "sub/over")


# ---------------------------------------------------------------------- binary streams


def test_binary_fork_may_diverge_at_any_byte(client: StreamsHttp) -> None:
    """A binary fork inside an append, by offset alone or by anchor plus sub-offset, inherits
    exactly the bytes before it (section 4.2: a fork boundary may lie inside a producer batch);
    its own appends follow and the source is untouched."""
    assert client.put("bin/src", BINARY, b"hello").status_code == 201
    anchor = client.post("bin/src", b"world", BINARY).headers["Stream-Next-Offset"]
    assert client.post("bin/src", b"!!", BINARY).status_code == 204

    assert fork(client, "bin/by-offset", "bin/src", offset_token(7)).status_code == 201
    assert fork(client, "bin/by-sub", "bin/src", offset_token(5), sub=2).status_code == 201
    assert fork(client, "bin/at-anchor", "bin/src", anchor, sub=1).status_code == 201
    for path in ("bin/by-offset", "bin/by-sub"):
        assert client.catch_up(path).content == b"hellowo"
        assert client.post(path, b"RLD", BINARY).status_code == 204
        assert client.catch_up(path).content == b"hellowoRLD"
    assert client.catch_up("bin/at-anchor").content == b"helloworld!"
    assert client.catch_up("bin/src").content == b"helloworld!!"


def test_a_fork_made_at_the_default_offset_may_be_asked_again_by_that_offset(
        client: StreamsHttp) -> None:
    """Section 4.2: a PUT matching an existing fork's configuration is a 200. A fork made
    without an offset (the source's tail) and asked again with that tail named was a 409."""
    tail = client.put("again/src", BINARY, b"abc").headers["Stream-Next-Offset"]
    assert fork(client, "again/fork", "again/src").status_code == 201
    assert client.post("again/src", b"def", BINARY).status_code == 204
    assert fork(client, "again/fork", "again/src", tail).status_code == 200
    assert fork(client, "again/fork", "again/src").status_code == 200
    assert_error(fork(client, "again/fork", "again/src", offset_token(1)), 409, "STREAM_EXISTS")
    assert client.catch_up("again/fork").content == b"abc"


def test_a_fork_made_at_a_named_offset_asked_again_for_the_tail_conflicts_once_they_differ(
        client: StreamsHttp) -> None:
    """Section 4.2: a PUT whose fork offset differs from the existing fork's is a 409, and
    an omitted offset means the source's tail (5.1). Made at offset 3 of a source at 6, the
    fork asked again without an offset was a 200, as if it were at the tail."""
    middle = client.put("named/src", BINARY, b"abc").headers["Stream-Next-Offset"]
    assert fork(client, "named/fork", "named/src", middle).status_code == 201
    assert fork(client, "named/fork", "named/src").status_code == 200  # the tail is still there
    assert client.post("named/src", b"def", BINARY).status_code == 204
    assert_error(fork(client, "named/fork", "named/src"), 409, "STREAM_EXISTS")
    assert fork(client, "named/fork", "named/src", middle).status_code == 200
    assert client.catch_up("named/fork").content == b"abc"


def test_a_text_fork_diverges_between_characters(client: StreamsHttp) -> None:
    """SSE readers of a text stream get text, and an append must end between characters:
    a fork inside one (by offset or sub-offset) handed its readers half a character."""
    text = "text/plain; charset=utf-8"
    assert client.put("text/src", text, "héllo".encode()).status_code == 201  # é: bytes 1-2
    for offset, sub in ((offset_token(2), None), (offset_token(0), 2)):
        assert_error(fork(client, "text/fork", "text/src", offset, sub), 400, "INVALID_OFFSET")
        assert_absent(client, "text/fork")
    assert fork(client, "text/fork", "text/src", offset_token(3)).status_code == 201
    assert client.catch_up("text/fork").content == "hé".encode()
    assert fork(client, "text/by-sub", "text/src", offset_token(0), sub=3).status_code == 201


def test_a_binary_fork_past_the_source_tail_is_refused_and_creates_nothing(
        client: StreamsHttp) -> None:
    """Section 4.2: 400 when the fork offset exceeds the source's tail. Accepted, the fork
    would claim a tail its reads can never reach."""
    assert client.put("binpast/src", BINARY, b"abc").status_code == 201
    for offset, sub in ((offset_token(4), None), (offset_token(99), None), (offset_token(3), 1)):
        response = fork(client, "binpast/fork", "binpast/src", offset, sub)
        assert response.status_code == 400, (offset, sub, response.status_code)
        assert_absent(client, "binpast/fork")
    assert fork(client, "binpast/fork", "binpast/src", offset_token(3)).status_code == 201
    assert client.catch_up("binpast/fork").content == b"abc"


def test_binary_sub_offset_needs_an_entry_boundary_anchor(client: StreamsHttp) -> None:
    """A sub-offset counts from an entry boundary and may not run past its append: an anchor
    inside an entry is ``INVALID_OFFSET``, an overshoot ``INVALID_SUB_OFFSET``; neither
    creates the fork."""
    assert client.put("binsub/src", BINARY, b"abcdef").status_code == 201
    assert client.post("binsub/src", b"ghi", BINARY).status_code == 204
    refusals = [(offset_token(2), 1, "INVALID_OFFSET"), (offset_token(0), 7, "INVALID_SUB_OFFSET")]
    for n, (offset, sub, code) in enumerate(refusals):
        assert_error(fork(client, f"binsub/bad-{n}", "binsub/src", offset, sub), 400, code)
        assert_absent(client, f"binsub/bad-{n}")
    assert fork(client, "binsub/edge", "binsub/src", offset_token(0), sub=6).status_code == 201
    assert client.catch_up("binsub/edge").content == b"abcdef"


def test_binary_fork_of_a_sub_offset_fork_at_its_tail(client: StreamsHttp) -> None:
    """A sub-offset fork's tail lies inside a source entry, yet it is an offset the server
    returned for that fork: forking the fork there, with or without a sub-offset, works."""
    assert client.put("binchain/root", BINARY, b"abcdef").status_code == 201
    created = fork(client, "binchain/one", "binchain/root", offset_token(0), sub=4)
    tail = created.headers["Stream-Next-Offset"]
    assert client.post("binchain/one", b"XYZ", BINARY).status_code == 204

    assert fork(client, "binchain/two", "binchain/one", tail).status_code == 201
    assert client.catch_up("binchain/two").content == b"abcd"
    assert fork(client, "binchain/three", "binchain/one", tail, sub=2).status_code == 201
    assert client.catch_up("binchain/three").content == b"abcdXY"
