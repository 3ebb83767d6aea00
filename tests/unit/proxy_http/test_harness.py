"""The harness's own behaviour: merging, flow summaries, whole vs byte-wise feeding."""

from __future__ import annotations

from observe.flow import EventKind, Flow, FlowVerdict, HttpInfo
from proxy.http.actions import Close, Emit, ReleaseUpstream, SendClient, SendUpstream, Side

from .harness import CONN, api_get_only, make, run, simplify


def test_simplify_merges_adjacent_sends_and_summarises_flows() -> None:
    flow = Flow(time_ns=1, verdict=FlowVerdict.DROPPED, kind=EventKind.L7,
                l7_type="REQUEST", http=HttpInfo(method="GET", url="http://a/", code=403))
    got = simplify([SendClient(b"a"), SendClient(b"b"), SendUpstream(b"c"), SendUpstream(b""),
                    Emit(flow), ReleaseUpstream(True), Close(Side.CLIENT)])
    assert got == [("client", b"ab"), ("upstream", b"c"), ("flow", "DROPPED", 403, "REQUEST",
                   "http://a/"), ("release", True), ("close", "client")]


def test_policy_is_full_match_and_case_sensitive() -> None:
    from policy.types import HttpRequestMeta
    assert api_get_only(CONN, HttpRequestMeta("GET", "/api/x", "h")).is_allowed
    assert not api_get_only(CONN, HttpRequestMeta("get", "/api/x", "h")).is_allowed
    assert not api_get_only(CONN, HttpRequestMeta("GET", "/xapi/x", "h")).is_allowed


def test_bytewise_feeding_reaches_the_same_result() -> None:
    steps = [("client", b"GET /api/a HTTP/1.1\r\nHost: h\r\n\r\n")]
    assert run(make("h11"), steps) == run(make("h11"), steps, bytewise=True)
