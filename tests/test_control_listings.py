"""The server's two listings (`GET __ds/streams` and `GET __ds/subscriptions`, extensions for
tools such as the inspector), over real sockets: a page at a time, with the total.

Both once answered with everything: with one subscription per conversation, 100,000
conversations made a 48 MB answer that took 6 s, and appends to every stream waited up to
2.3 s meanwhile; the stream listing held the server 180-260 ms at 200,000 streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from streams_server.storage.engine import StreamStore
from streams_server.storage.models import Expiry
from tests.support import ServerProcess


def _root(server: ServerProcess) -> str:
    return f"{server.url}/v1/stream"


def _listing(http: requests.Session, server: ServerProcess, kind: str,
             **params: Any) -> dict[str, Any]:
    response = http.get(f"{_root(server)}/__ds/{kind}", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _subscribe(http: requests.Session, server: ServerProcess, sub_id: str) -> None:
    response = http.put(f"{_root(server)}/__ds/subscriptions/{sub_id}",
                        json={"type": "pull-wake", "streams": [f"jobs/{sub_id}"],
                              "wake_stream": "wake/all"})
    assert response.status_code == 201, response.text


def test_streams_are_listed_a_page_at_a_time_in_path_order(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    paths = [f"list/s{n:02d}" for n in range(25)]
    for path in reversed(paths):  # created out of order: listed in path order all the same
        assert http.put(f"{_root(streams_server)}/{path}").status_code == 201
    assert http.put(f"{_root(streams_server)}/other/x").status_code == 201

    seen: list[str] = []
    after = None
    for _ in range(5):
        page = _listing(http, streams_server, "streams", prefix="list/", limit=10,
                        **({"after": after} if after else {}))
        assert page["total"] == 25
        seen += [s["path"] for s in page["streams"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == paths
    whole = _listing(http, streams_server, "streams")
    assert whole["total"] == 26 and whole["next_after"] is None
    assert [s["path"] for s in whole["streams"]] == [*paths, "other/x"]


def test_a_deleted_stream_is_not_listed(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    for path in ("gone/a", "gone/b"):
        assert http.put(f"{_root(streams_server)}/{path}").status_code == 201
    assert http.delete(f"{_root(streams_server)}/gone/a").status_code == 204
    page = _listing(http, streams_server, "streams", prefix="gone/")
    assert [s["path"] for s in page["streams"]] == ["gone/b"] and page["total"] == 1


def test_subscriptions_are_listed_a_page_at_a_time_by_id(
    streams_server: ServerProcess, http: requests.Session
) -> None:
    ids = [f"sub-{n:02d}" for n in range(12)]
    for sub_id in reversed(ids):
        _subscribe(http, streams_server, sub_id)
    first = _listing(http, streams_server, "subscriptions", limit=5)
    assert [s["id"] for s in first["subscriptions"]] == ids[:5]
    assert first["total"] == 12 and first["next_after"] == ids[4]
    rest = _listing(http, streams_server, "subscriptions", limit=1000, after=first["next_after"])
    assert [s["id"] for s in rest["subscriptions"]] == ids[5:] and rest["next_after"] is None
    assert rest["subscriptions"][0]["streams"][0]["path"] == "jobs/sub-05"

    assert http.delete(f"{_root(streams_server)}/__ds/subscriptions/sub-00").status_code == 204
    after_delete = _listing(http, streams_server, "subscriptions")
    assert after_delete["total"] == 11 and after_delete["subscriptions"][0]["id"] == "sub-01"


@pytest.mark.parametrize("kind", ["streams", "subscriptions"])
@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten", "1e3", "+5", "05", ""])
def test_a_listing_limit_out_of_range_is_refused_with_its_range(
    streams_server: ServerProcess, http: requests.Session, kind: str, limit: str
) -> None:
    response = http.get(f"{_root(streams_server)}/__ds/{kind}", params={"limit": limit})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_LIMIT" and "1 to 1000" in error["message"]


@pytest.mark.parametrize(("kind", "query"), [
    ("streams", "limit=1&limit=2"), ("streams", "after=a&after=b"),
    ("streams", "prefix=a&prefix=b"), ("subscriptions", "limit=5&limit=1"),
])
def test_a_listing_parameter_given_twice_is_refused(
    streams_server: ServerProcess, http: requests.Session, kind: str, query: str
) -> None:
    """`?limit=1&limit=2` listed by the first, where a read's repeated offset is refused."""
    response = http.get(f"{_root(streams_server)}/__ds/{kind}?{query}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "DUPLICATE_PARAMETER"
    assert error["message"] == f"{query.split('=')[0]} is given more than once"


def test_a_prefix_lists_exactly_the_paths_that_start_with_it(tmp_path: Path) -> None:
    """The prefix is read as a range of the path index (SQLite compares UTF-8 bytes): its
    end is the prefix's last character's successor, past the surrogates and U+10FFFF."""
    store = StreamStore.open_directory(str(tmp_path))
    try:
        paths = ["a", "ab", "a/b", "a\U0010ffff", "a\U0010ffffz", "b", "\ud7fex", "\ud7ff",
                 "\ud7ffy", "\ue000", "\ue000z", "\U0010ffff", "\U0010ffff/z", "é/x", "éa"]
        for path in paths:
            store.create(path, content_type="application/json", expiry=Expiry())
        for prefix in ["", "a", "a\U0010ffff", "\ud7ff", "\ue000", "\U0010ffff", "é", "é/", "z"]:
            listed = [info.path for info in store.list_streams(prefix).streams]
            assert listed == sorted(p for p in paths if p.startswith(prefix)), prefix
            assert store.list_streams(prefix).total == len(listed)
    finally:
        store.close()
