"""The live console of the real `tether server` binary, read by a real SSE client (httpx-sse).

A user token comes from `tether server token create`; the agent, its dongles and a group are
created through the REST API. Group activations produce `group_state` events; the client
resumes with `Last-Event-ID` without gaps and gets `stream_reset` for a stale ID.

Needs env TETHER_BIN (the built `tether` binary). Runs the embedded default (no Redis).
"""

import json
import re

import httpx
import pytest
from httpx_sse import connect_sse
from tether_server import TIMEOUT, api, create_token, pair_in_group, running_server


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "data"
    token = create_token(data, "alice")
    stranger = create_token(data, "mallory")
    with running_server(data) as addr:
        yield {"base": f"http://{addr}", "token": token, "stranger": stranger}


def setup_group(s):
    _agent, dongles, group = pair_in_group(s["base"], s["token"], "edge", ("SN-A", "SN-B"), "pair")
    return dongles, group["id"]


def toggle(s, group, n):
    """n mode changes, alternating activate (degraded: both dongles are offline) and deactivate."""
    for _ in range(n):
        active = s.get("active", False)
        action = "deactivate" if active else "activate"
        api(s["base"], s["token"], "POST", f"/api/v1/groups/{group}/{action}")
        s["active"] = not active


def read(source, n):
    """The next n events. httpx-sse (unlike browsers and the WHATWG rules) also yields a field
    block that only sets `retry`, as an empty `message`: those are checked and skipped."""
    if not hasattr(source, "events"):
        source.events = source.iter_sse()  # one iterator per response, reused across calls
    events = []
    for sse in source.events:
        if sse.data == "" and sse.event == "message" and sse.retry is not None:
            assert sse.retry == 2000
            continue
        events.append(sse)
        if len(events) == n:
            return events
    pytest.fail(f"stream ended after {len(events)} of {n} events")


def client():
    return httpx.Client(timeout=httpx.Timeout(TIMEOUT))


def test_resume_with_last_event_id_has_no_gap_and_stale_ids_reset(server):
    s = server
    _dongles, group = setup_group(s)
    url = f"{s['base']}/api/v1/streams/groups/{group}/console"
    auth = {"Authorization": f"Bearer {s['token']}"}

    with client() as c, connect_sse(c, "GET", url, headers=auth) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"] == "text/event-stream"
        toggle(s, group, 4)
        current, *first = read(source, 5)
    # A fresh subscriber gets the group's current state first, without an ID.
    assert current.event == "group_state" and current.id == ""
    assert json.loads(current.data)["mode"] == "inactive"
    assert [e.event for e in first] == ["group_state"] * 4
    states = [json.loads(e.data) for e in first]
    assert [st["mode"] for st in states] == ["degraded", "inactive", "degraded", "inactive"]
    assert states[0]["id"] == group and states[0]["name"] == "pair"
    assert states[0]["backlog"] == {"a_to_b": 0, "b_to_a": 0}
    ids = [e.id for e in first]
    assert len(set(ids)) == 4 and all(re.fullmatch(r"\d+-\d+", i) for i in ids)

    # Away: one more change happens. Resuming after the second event gives exactly the rest.
    toggle(s, group, 1)
    with client() as c, connect_sse(c, "GET", url, headers={**auth, "Last-Event-ID": ids[1]}) as source:
        rest = read(source, 3)
        assert [e.id for e in rest[:2]] == ids[2:]
        assert json.loads(rest[2].data)["mode"] == "degraded"
        toggle(s, group, 2)  # live: inactive, then degraded
        live = read(source, 2)
    all_ids = ids + [rest[2].id] + [e.id for e in live]
    assert len(set(all_ids)) == 7

    # EventSource style: token and last ID in the query.
    query_url = f"{url}?access_token={s['token']}&last_event_id={all_ids[5]}"
    with client() as c, connect_sse(c, "GET", query_url) as source:
        toggle(s, group, 1)
        got = read(source, 2)
    assert got[0].id == all_ids[6]
    assert got[1].event == "group_state"

    # A stale ID: exactly one stream_reset (no id), then the whole retained history in order.
    with client() as c, connect_sse(c, "GET", url, headers={**auth, "Last-Event-ID": "1-0"}) as source:
        events = read(source, 9)
    reset, history = events[0], events[1:]
    assert reset.event == "stream_reset"
    assert reset.id == ""
    body = json.loads(reset.data)
    assert body["requested"] == "1-0"
    assert body["reason"] in ("earlier_process", "too_old")
    assert body["oldest"] == all_ids[0]
    assert [e.id for e in history] == all_ids + [got[1].id]
    assert all(e.event == "group_state" for e in history)


def test_multiplexed_stream_and_refusals(server):
    s = server
    dongles, group = setup_group(s)
    url = (f"{s['base']}/api/v1/streams/console?dongles={dongles[0]}&groups={group}"
           f"&access_token={s['token']}")
    with client() as c, connect_sse(c, "GET", url) as source:
        assert source.response.status_code == 200, source.response.read()
        toggle(s, group, 1)
        current, event = read(source, 2)
    assert current.event == "group_state" and current.id == ""
    body = json.loads(event.data)
    assert event.event == "group_state"
    assert body["stream"] == f"group:{group}"
    # One position per stream, dongle first: nothing came from the dongle yet.
    assert event.id == f"~,{body['stream_id']}"

    with client() as c:
        r = c.get(f"{s['base']}/api/v1/streams/groups/{group}/console",
                  headers={"Authorization": f"Bearer {s['stranger']}"})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
        r = c.get(f"{s['base']}/api/v1/streams/groups/{group}/console?access_token=tu_nope")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
