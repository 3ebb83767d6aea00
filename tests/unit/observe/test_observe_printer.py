"""Output formats against the recorded flows."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from observe.flow import DnsInfo, EventKind, Flow, FlowEndpoint, FlowVerdict, HttpInfo
from observe.printer import fmt_time, make_printer, summary_str

T = 1_795_699_427_852_000_000  # Nov 26 13:23:47.852 UTC


def render(fmt: str, flows: list[Flow], **kw: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    p = make_printer(fmt, out, err, **kw)
    for f in flows:
        p.flow(f)
    p.close()
    return out.getvalue(), err.getvalue()


def other_to_my_api_drop() -> Flow:
    return Flow(time_ns=T, verdict=FlowVerdict.DROPPED, kind=EventKind.DROP,
                src_ip="10.244.1.11", dst_ip="10.244.2.10", protocol="TCP", src_port=51000,
                dst_port=8080, tcp_flags=["SYN"],
                source=FlowEndpoint(identity=257, namespace="default", pod_name="other"),
                destination=FlowEndpoint(identity=259, namespace="default", pod_name="my-api"),
                drop_reason_desc="POLICY_DENIED", traffic_direction="INGRESS",
                node_name="node2")


def test_compact_drop_line_is_the_contract() -> None:
    out, err = render("compact", [other_to_my_api_drop()])
    assert out == ("Nov 26 13:23:47.852: default/other:51000 -> default/my-api:8080 drop "
                   "DROPPED (POLICY_DENIED)\n")
    assert err == ""


def test_compact_every_recorded_flow_has_time_endpoints_verdict(flows: list[Flow]) -> None:
    out, _ = render("compact", flows)
    lines = out.splitlines()
    assert len(lines) == len(flows)
    for f, line in zip(flows, lines, strict=True):
        assert line.startswith(fmt_time(f.time_ns) + ": ")
        assert f" {f.verdict.value} (" in line
        if f.source.pod_name:
            assert f"{f.source.namespace}/{f.source.pod_name}" in line
        if f.drop_reason_desc and f.http is None and f.dns is None:
            assert line.endswith(f"DROPPED ({f.drop_reason_desc})")
        assert "\x1b[" not in line


def test_compact_recorded_drop_order(flows: list[Flow]) -> None:
    drops = [f for f in flows if f.verdict is FlowVerdict.DROPPED
             and f.source.pod_name == "other" and f.destination.pod_name == "my-api"
             and f.kind is EventKind.DROP and f.protocol == "TCP"]
    assert drops
    line = render("compact", drops[:1])[0]
    a = line.index("default/other")
    b = line.index("default/my-api:8080")
    c = line.index("DROPPED (POLICY_DENIED)")
    assert a < b < c


def test_l7_lines() -> None:
    base: dict[str, Any] = dict(
                time_ns=T, kind=EventKind.L7, src_ip="10.244.1.10", dst_ip="10.244.2.10",
                protocol="TCP", src_port=42820, dst_port=8080,
                source=FlowEndpoint(namespace="default", pod_name="frontend"),
                destination=FlowEndpoint(namespace="default", pod_name="my-api"))
    req = Flow(verdict=FlowVerdict.DROPPED, l7_type="REQUEST",
               http=HttpInfo(method="POST", url="http://my-api:8080/api/users"), **base)
    back = dict(base, src_ip=base["dst_ip"], dst_ip=base["src_ip"], src_port=8080,
                dst_port=42820, source=base["destination"], destination=base["source"])
    resp = Flow(verdict=FlowVerdict.FORWARDED, l7_type="RESPONSE", latency_ns=3_000_000,
                is_reply=True,
                http=HttpInfo(method="GET", url="http://my-api:8080/api/users", code=200),
                **back)
    dns_q = Flow(verdict=FlowVerdict.FORWARDED, l7_type="REQUEST",
                 dns=DnsInfo(query="api.stripe.com.", qtypes=["A"]), **base)
    dns_r = Flow(verdict=FlowVerdict.FORWARDED, l7_type="RESPONSE",
                 dns=DnsInfo(query="api.stripe.com.", qtypes=["A"], ips=["203.0.113.10"],
                             ttl=30), **base)
    out = render("compact", [req, resp, dns_q, dns_r])[0].splitlines()
    assert out[0].endswith(
        "http-request DROPPED (HTTP/1.1 POST http://my-api:8080/api/users)")
    assert out[1].endswith(
        "http-response FORWARDED (HTTP/1.1 200 3ms (GET http://my-api:8080/api/users))")
    assert "default/frontend:42820 <- default/my-api:8080" in out[1]  # reply flips sides
    assert out[2].endswith("dns-request proxy FORWARDED (DNS Query api.stripe.com. A)")
    assert out[3].endswith('(DNS Answer "203.0.113.10" TTL: 30 (Proxy api.stripe.com. A))')


def test_dns_rcode_summary() -> None:
    f = Flow(time_ns=T, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7,
             l7_type="RESPONSE", dns=DnsInfo(query="x.", qtypes=["A"], rcode=5))
    assert summary_str(f) == "DNS Answer RCode: Refused TTL: 0 (Proxy x. A)"


def test_json_roundtrips_every_recorded_flow(flows: list[Flow]) -> None:
    out, _ = render("json", flows, color=True)
    lines = out.splitlines()
    assert len(lines) == len(flows)
    for f, line in zip(flows, lines, strict=True):
        obj = json.loads(line)
        assert list(obj) == ["flow"]
        assert obj["flow"] == f.to_json()
        assert Flow.from_json(obj) == f
    assert "\x1b[" not in out


def test_jsonpb_is_json() -> None:
    f = other_to_my_api_drop()
    assert render("jsonpb", [f]) == render("json", [f])


def test_json_lost_events_line_on_stdout() -> None:
    out, err = io.StringIO(), io.StringIO()
    p = make_printer("json", out, err)
    p.lost({"source": "HUBBLE_RING_BUFFER", "num_events_lost": 3, "first": "a", "last": "b"})
    assert json.loads(out.getvalue()) == {"lost_events": {
        "source": "HUBBLE_RING_BUFFER", "num_events_lost": 3, "first": "a", "last": "b"}}
    assert err.getvalue() == ""


@pytest.mark.parametrize("fmt", ["compact", "table", "dict"])
def test_lost_events_go_to_stderr(fmt: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    p = make_printer(fmt, out, err)
    p.lost({"source": "HUBBLE_RING_BUFFER", "num_events_lost": 42,
            "first": "2026-11-26T13:00:01.000000000Z", "last": "2026-11-26T13:00:05.000000000Z"})
    p.close()
    assert out.getvalue() == ""
    assert err.getvalue() == ("EVENTS LOST: 42 flows lost between 2026-11-26T13:00:01.000000000Z"
                              " and 2026-11-26T13:00:05.000000000Z (HUBBLE_RING_BUFFER)\n")


def test_table_aligned_with_header(flows: list[Flow]) -> None:
    out, _ = render("table", flows)
    lines = out.splitlines()
    assert lines[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT",
                                "SUMMARY"]
    assert len(lines) == len(flows) + 1
    col = lines[0].index("VERDICT")
    for f, line in zip(flows, lines[1:], strict=True):
        assert line[col:].startswith(f.verdict.value)


def test_table_follow_prints_rows_immediately() -> None:
    out, err = io.StringIO(), io.StringIO()
    p = make_printer("table", out, err, follow=True, node_name=True)
    assert out.getvalue().split() == ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE",
                                      "VERDICT", "SUMMARY"]
    p.flow(other_to_my_api_drop())
    assert "node2" in out.getvalue().splitlines()[1]


def test_dict_blocks(flows: list[Flow]) -> None:
    out, _ = render("dict", flows[:2], node_name=True)
    blocks = out.split("------------\n")
    assert len(blocks) == 2
    keys = [line.split(":", 1)[0].strip() for line in blocks[0].splitlines()]
    assert keys == ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]


def test_print_node_name_compact() -> None:
    out, _ = render("compact", [other_to_my_api_drop()], node_name=True)
    assert out.startswith("Nov 26 13:23:47.852 [node2]: default/other:51000")


def test_color_only_when_asked() -> None:
    f = other_to_my_api_drop()
    assert "\x1b[31mDROPPED\x1b[0m" in render("compact", [f], color=True)[0]
    assert "\x1b[31mDROPPED\x1b[0m" in render("table", [f], color=True)[0]
    assert "\x1b[" not in render("compact", [f])[0]


def test_ip_and_names_when_no_pod(flows: list[Flow]) -> None:
    world = [f for f in flows if not f.destination.pod_name and f.dst_ip]
    assert world
    out = render("compact", world)[0].splitlines()
    for f, line in zip(world, out, strict=True):
        shown = ",".join(n.rstrip(".") for n in f.destination_names) or f.dst_ip
        assert f"-> {shown}" in line


def test_unknown_format() -> None:
    with pytest.raises(ValueError):
        make_printer("yaml", io.StringIO(), io.StringIO())
