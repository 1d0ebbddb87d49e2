"""SSE control events: their cursor (PROTOCOL.md section 10.1) and their exact encoding."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from streams_server.protocol.cursor import current_interval, next_cursor
from streams_server.protocol.sse import control_event
from tests.support import ServerProcess

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("cursor", [None, "1234"])
@pytest.mark.parametrize("up_to_date", [False, True])
@pytest.mark.parametrize("closed", [False, True])
def test_control_events_are_the_json_the_protocol_describes(
    cursor: str | None, up_to_date: bool, closed: bool,
) -> None:
    raw = control_event("0000000000000000_0000000000000042", cursor=cursor,
                        up_to_date=up_to_date, closed=closed)
    name, data, event_id, blank, end = raw.decode().split("\n")
    assert (name, blank, end) == ("event: control", "", "")
    assert event_id == "id:0000000000000000_0000000000000042"  # for EventSource's reconnects
    expected: dict[str, object] = {"streamNextOffset": "0000000000000000_0000000000000042"}
    if cursor is not None and not closed:
        expected["streamCursor"] = cursor
    if up_to_date or closed:
        expected["upToDate"] = True
    if closed:
        expected["streamClosed"] = True
    assert data.startswith("data:") and json.loads(data[5:]) == expected


def _cursors(url: str, params: dict[str, str], appends: int) -> list[int]:
    """The streamCursor of every control event while ``appends`` appends arrive live."""
    cursors: list[int] = []
    with requests.get(url, params={"offset": "now", "live": "sse", **params}, stream=True,
                      timeout=20) as response:
        assert response.status_code == 200
        writer = threading.Thread(target=_append_slowly, args=(url, appends))
        writer.start()
        for line in response.iter_lines():
            if line.startswith(b"data:{\"streamNextOffset\""):
                cursors.append(int(json.loads(line[5:])["streamCursor"]))
                if len(cursors) == appends + 1:
                    break
        writer.join()
    return cursors


def _append_slowly(url: str, count: int) -> None:
    for index in range(count):
        time.sleep(0.05)
        requests.post(url, data=json.dumps([index]),
                      headers={"Content-Type": "application/json"}).raise_for_status()


def test_cursors_on_one_connection_follow_the_clock_not_jitter(
    streams_server: ServerProcess,
) -> None:
    url = f"{streams_server.url}/v1/stream/cursor-test"
    requests.put(url, headers={"Content-Type": "application/json"}).raise_for_status()
    # Without an echoed cursor every event carries the current interval, the same value any
    # other reader gets, so one encoding of the event serves all of them.
    plain = _cursors(url, {}, 5)
    assert len(plain) == 6 and set(plain) <= {current_interval() - 1, current_interval()}
    # An echoed cursor at or past the current interval is jittered ahead once, then the
    # connection's later events never go back from it, nor keep jumping ahead.
    echoed = current_interval() + 10
    jittered = _cursors(url, {"cursor": str(echoed)}, 5)
    assert jittered[0] > echoed
    assert jittered == [jittered[0]] * 6


@pytest.mark.parametrize("digits", [38, 41, 300])
def test_a_cursor_echoed_back_is_always_exceeded_however_long(digits: int) -> None:
    """Only its first 30 digits were read, so a longer cursor got a smaller one back."""
    echoed = "9" * digits
    assert int(next_cursor(echoed)) > int(echoed)


def test_a_cursor_too_long_for_int_still_gets_its_live_events(
    streams_server: ServerProcess,
) -> None:
    """Past Python's 4,300 digits, the next control event's cursor was `int()` of the one
    sent: a ValueError that cut the SSE connection before its first data event."""
    url = f"{streams_server.url}/v1/stream/long-cursor"
    requests.put(url, headers={"Content-Type": "application/json"}).raise_for_status()
    echoed = "9" * 4400
    with requests.get(url, params={"offset": "now", "live": "sse", "cursor": echoed},
                      stream=True, timeout=20) as response:
        assert response.status_code == 200
        writer = threading.Thread(target=_append_slowly, args=(url, 2))
        writer.start()
        data: list[bytes] = []
        cursors: set[str] = set()
        lines = response.iter_lines()
        while len(data) < 2:
            line = next(lines)
            if line.startswith(b"data:{\"streamNextOffset\""):
                cursors.add(json.loads(line[5:])["streamCursor"])
            elif line.startswith(b"data:"):
                data.append(line[5:])
        writer.join()
    assert [json.loads(d) for d in data] == [[0], [1]]
    assert cursors == {"1" + echoed}
    assert "Traceback" not in streams_server.log_path.read_text(errors="replace")
