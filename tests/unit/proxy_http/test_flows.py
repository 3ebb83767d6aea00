"""The fast flow builder (proxy/http/flows.py) against Flow's own constructor."""

from __future__ import annotations

from dataclasses import fields

from observe.flow import EventKind, Flow, FlowEndpoint, FlowVerdict, HttpInfo
from proxy.http import flows


def _args() -> tuple[object, ...]:
    return (123, FlowVerdict.DROPPED, "10.0.1.5", "10.0.2.7", 40000, 8080, "REQUEST", 0,
            "POLICY_DENIED", HttpInfo("GET", "http://h/admin", "HTTP/1.1", 403, []))


def test_direct_path_is_active_for_the_current_flow_layout() -> None:
    assert flows.DIRECT, "Flow changed: update _KNOWN_FIELDS and _direct in flows.py"
    assert tuple(f.name for f in fields(Flow)) == flows._KNOWN_FIELDS
    assert tuple(f.name for f in fields(FlowEndpoint)) == flows._KNOWN_ENDPOINT_FIELDS
    assert flows._endpoint() == FlowEndpoint()


def test_direct_equals_keyword_constructor_and_json() -> None:
    a = flows._direct(*_args())  # type: ignore[arg-type]
    b = flows._keyword(*_args())  # type: ignore[arg-type]
    assert a == b
    assert a.to_json() == b.to_json()
    assert a.kind is EventKind.L7 and a.protocol == "TCP" and a.http is not None
    assert a.http.code == 403 and a.drop_reason_desc == "POLICY_DENIED"


def test_direct_gives_fresh_containers() -> None:
    a = flows._direct(*_args())  # type: ignore[arg-type]
    b = flows._direct(*_args())  # type: ignore[arg-type]
    a.source.labels.append("k=v")
    a.tcp_flags.append("SYN")
    a.allowed_by.append("ns/p")
    assert b.source.labels == [] and b.tcp_flags == [] and b.allowed_by == []
    assert a.source is not a.destination
