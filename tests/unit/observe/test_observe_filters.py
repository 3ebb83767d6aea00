"""Each Hubble filter flag against the recorded flows; expectations come from the raw JSON.

The oracles below read the exported JSON directly (not through Flow), so a file recorded from
the real sandbox can replace flows.jsonl without touching these tests.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

import pytest

from observe.cli import build_spec
from observe.filters import FilterError, SpecBuilder, compile_spec, fqdn_regex, url_path
from observe.flow import Flow

Raw = dict[str, Any]


def _ep(d: Raw, side: str) -> Raw:
    ep: Raw = d.get(side, {})
    return ep


def _pod(d: Raw, side: str, ns: str, prefix: str) -> bool:
    e = _ep(d, side)
    return e.get("namespace") == ns and e.get("pod_name", "").startswith(prefix)


def _port(d: Raw, side: str) -> int | None:
    for l4 in d.get("l4", {}).values():
        return int(l4.get(f"{side}_port", 0))
    return None


def _ip(d: Raw, side: str) -> str:
    return str(d.get("IP", {}).get(side, ""))


def _http(d: Raw) -> Raw | None:
    return (d.get("l7") or {}).get("http")


def _dns(d: Raw) -> Raw | None:
    return (d.get("l7") or {}).get("dns")


def _in_net(ip: str, cidr: str) -> bool:
    return bool(ip) and ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


# (flags as (flag, value) pairs, oracle over the raw flow)
CASES: list[tuple[str, list[tuple[str, str]], Callable[[Raw], bool]]] = [
    ("verdict", [("verdict", "DROPPED")], lambda d: d["verdict"] == "DROPPED"),
    ("verdict-lower", [("verdict", "forwarded")], lambda d: d["verdict"] == "FORWARDED"),
    ("verdict-redirected", [("verdict", "REDIRECTED")], lambda d: d["verdict"] == "REDIRECTED"),
    ("drop-reason", [("drop-reason-desc", "POLICY_DENIED")],
     lambda d: d.get("drop_reason_desc") == "POLICY_DENIED"),
    ("type-drop", [("type", "drop")], lambda d: d["event_type"]["type"] == "drop"),
    ("type-l7", [("type", "l7")], lambda d: d["event_type"]["type"] == "l7"),
    ("type-trace", [("type", "trace")], lambda d: d["event_type"]["type"] == "trace"),
    ("type-pv", [("type", "policy-verdict")],
     lambda d: d["event_type"]["type"] == "policy-verdict"),
    ("pod-either", [("pod", "default/my-api")],
     lambda d: _pod(d, "source", "default", "my-api")
     or _pod(d, "destination", "default", "my-api")),
    ("pod-default-ns", [("pod", "other")],
     lambda d: _pod(d, "source", "default", "other")
     or _pod(d, "destination", "default", "other")),
    ("pod-prefix", [("pod", "kube-system/kube")],
     lambda d: _pod(d, "source", "kube-system", "kube")
     or _pod(d, "destination", "kube-system", "kube")),
    ("from-pod", [("from-pod", "default/other")],
     lambda d: _pod(d, "source", "default", "other")),
    ("to-pod", [("to-pod", "default/my-api")],
     lambda d: _pod(d, "destination", "default", "my-api")),
    ("namespace", [("namespace", "kube-system")],
     lambda d: "kube-system" in (_ep(d, "source").get("namespace"),
                                 _ep(d, "destination").get("namespace"))),
    ("from-namespace", [("from-namespace", "kube-system")],
     lambda d: _ep(d, "source").get("namespace") == "kube-system"),
    ("to-namespace", [("to-namespace", "default")],
     lambda d: _ep(d, "destination").get("namespace") == "default"),
    ("label", [("label", "app=my-api")],
     lambda d: "k8s:app=my-api" in _ep(d, "source").get("labels", [])
     or "k8s:app=my-api" in _ep(d, "destination").get("labels", [])),
    ("label-k8s", [("to-label", "k8s:app=my-api")],
     lambda d: "k8s:app=my-api" in _ep(d, "destination").get("labels", [])),
    ("label-world", [("to-label", "reserved:world")],
     lambda d: "reserved:world" in _ep(d, "destination").get("labels", [])),
    ("from-label", [("from-label", "role=frontend")],
     lambda d: "k8s:role=frontend" in _ep(d, "source").get("labels", [])),
    ("ip-exact", [("ip", "10.244.1.11")],
     lambda d: "10.244.1.11" in (_ip(d, "source"), _ip(d, "destination"))),
    ("ip-cidr", [("to-ip", "203.0.113.0/24")],
     lambda d: _in_net(_ip(d, "destination"), "203.0.113.0/24")),
    ("from-ip", [("from-ip", "10.244.2.0/24")],
     lambda d: _in_net(_ip(d, "source"), "10.244.2.0/24")),
    ("protocol-tcp", [("protocol", "tcp")], lambda d: "TCP" in d.get("l4", {})),
    ("protocol-udp", [("protocol", "UDP")], lambda d: "UDP" in d.get("l4", {})),
    ("protocol-icmp", [("protocol", "icmp")],
     lambda d: any(k.startswith("ICMP") for k in d.get("l4", {}))),
    ("protocol-http", [("protocol", "http")], lambda d: _http(d) is not None),
    ("protocol-dns", [("protocol", "dns")], lambda d: _dns(d) is not None),
    ("port", [("port", "8080")], lambda d: 8080 in (_port(d, "source"),
                                                      _port(d, "destination"))),
    ("to-port", [("to-port", "53")], lambda d: _port(d, "destination") == 53),
    ("from-port", [("from-port", "53")], lambda d: _port(d, "source") == 53),
    ("http-method", [("http-method", "post")],
     lambda d: (_http(d) or {}).get("method") == "POST"),
    ("http-path", [("http-path", "^/api/")],
     lambda d: re.search("^/api/", url_path((_http(d) or {}).get("url", ""))) is not None
     and _http(d) is not None),
    ("http-status-exact", [("http-status", "200")],
     lambda d: (_http(d) or {}).get("code") == 200),
    ("http-status-4", [("http-status", "4+")],
     lambda d: 400 <= (_http(d) or {}).get("code", 0) < 500),
    ("http-status-5", [("http-status", "5+")],
     lambda d: 500 <= (_http(d) or {}).get("code", 0) < 600),
    ("fqdn", [("fqdn", "*.example.net")],
     lambda d: any(n.rstrip(".").endswith(".example.net")
                   for n in [*d.get("source_names", []), *d.get("destination_names", []),
                             (_dns(d) or {}).get("query", "")])),
    ("to-fqdn", [("to-fqdn", "api.stripe.com")],
     lambda d: any(n.rstrip(".") == "api.stripe.com"
                   for n in [*d.get("destination_names", []),
                             (_dns(d) or {}).get("query", "")])),
    ("node-name", [("node-name", "node2")], lambda d: d.get("node_name") == "node2"),
    ("node-glob", [("node-name", "node*")], lambda d: d.get("node_name", "").startswith("node")),
    ("identity", [("identity", "2")],
     lambda d: 2 in (_ep(d, "source").get("identity"), _ep(d, "destination").get("identity"))),
    ("direction", [("traffic-direction", "egress")],
     lambda d: d.get("traffic_direction") == "EGRESS"),
    # combinations
    ("or-within-flag", [("verdict", "DROPPED"), ("verdict", "REDIRECTED")],
     lambda d: d["verdict"] in ("DROPPED", "REDIRECTED")),
    ("and-across-flags", [("verdict", "DROPPED"), ("to-pod", "default/my-api")],
     lambda d: d["verdict"] == "DROPPED" and _pod(d, "destination", "default", "my-api")),
    ("not", [("not", ""), ("verdict", "FORWARDED")], lambda d: d["verdict"] != "FORWARDED"),
    ("not-then-allow", [("not", ""), ("type", "l7"), ("verdict", "DROPPED")],
     lambda d: d["event_type"]["type"] != "l7" and d["verdict"] == "DROPPED"),
    ("pod-and-verdict", [("pod", "default/other"), ("verdict", "DROPPED")],
     lambda d: d["verdict"] == "DROPPED" and (_pod(d, "source", "default", "other")
                                             or _pod(d, "destination", "default", "other"))),
    ("two-pods-or", [("pod", "default/other"), ("pod", "kube-system/kube-dns")],
     lambda d: any(_pod(d, s, ns, p) for s in ("source", "destination")
                   for ns, p in (("default", "other"), ("kube-system", "kube-dns")))),
]


@pytest.mark.parametrize(("name", "items", "oracle"), CASES, ids=[c[0] for c in CASES])
def test_filter_matches_oracle(name: str, items: list[tuple[str, str]],
                               oracle: Callable[[Raw], bool], raw_flows: list[Raw]) -> None:
    pred = compile_spec(build_spec(items))
    got = [i for i, d in enumerate(raw_flows) if pred(Flow.from_json(d))]
    want = [i for i, d in enumerate(raw_flows) if oracle(d)]
    assert got == want
    assert want, f"{name}: the recorded flows hold no example; extend flows.jsonl"


def test_not_only_negates_next_flag(raw_flows: list[Raw]) -> None:
    # `--not --verdict FORWARDED --pod other`: pod stays a positive filter.
    pred = compile_spec(build_spec([("not", ""), ("verdict", "FORWARDED"), ("pod", "other")]))
    for d in raw_flows:
        involved = _pod(d, "source", "default", "other") or _pod(d, "destination", "default",
                                                                 "other")
        assert pred(Flow.from_json(d)) == (involved and d["verdict"] != "FORWARDED")


def test_spec_is_json_shape() -> None:
    spec = build_spec([("pod", "x"), ("verdict", "DROPPED"), ("not", ""), ("port", "53")])
    assert spec == {
        "allow": [{"source_pod": ["default/x"], "verdict": ["DROPPED"]},
                  {"destination_pod": ["default/x"], "verdict": ["DROPPED"]}],
        "deny": [{"source_port": [53]}, {"destination_port": [53]}],
    }


def test_empty_spec_matches_everything(flows: list[Flow]) -> None:
    pred = compile_spec({})
    assert all(pred(f) for f in flows)
    assert all(compile_spec(None)(f) for f in flows)


@pytest.mark.parametrize(("flag", "value"), [
    ("verdict", "MAYBE"), ("type", "bogus"), ("protocol", "kafka2"), ("ip", "10.0.0.300"),
    ("port", "http"), ("http-status", "2x"), ("http-status", "20"), ("http-path", "(unclosed"),
    ("traffic-direction", "sideways"), ("fqdn", "bad name!"), ("identity", "-1"),
])
def test_bad_values_raise_filter_error(flag: str, value: str) -> None:
    with pytest.raises(FilterError):
        compile_spec(build_spec([(flag, value)]))


def test_bad_specs_raise() -> None:
    specs: list[dict[str, Any]] = [{"allow": [{"nope": [1]}]}, {"allow": [{"verdict": []}]},
                                   {"weird": []}, {"allow": ["x"]}]
    for spec in specs:
        with pytest.raises(FilterError):
            compile_spec(spec)


def test_dangling_not_is_an_error() -> None:
    b = SpecBuilder()
    b.negate_next()
    with pytest.raises(FilterError):
        b.spec()


def test_fqdn_star_matches_dns_chars_only() -> None:
    rx = fqdn_regex("*.example.com")
    assert rx.fullmatch("a-b.example.com")
    assert not rx.fullmatch("a.b.example.com")
    assert not rx.fullmatch("example.com")
    assert fqdn_regex("API.Stripe.com.").fullmatch("api.stripe.com")


def test_url_path() -> None:
    assert url_path("http://h:80/a/b?c=1") == "/a/b"
    assert url_path("/x?y") == "/x"
    assert url_path("http://h") == "/"


def test_label_selector_forms(flows: list[Flow]) -> None:
    def count(sel: str) -> int:
        return sum(compile_spec(build_spec([("from-label", sel)]))(f) for f in flows)

    has_role = sum("k8s:role=frontend" in f.source.labels for f in flows)
    assert count("role=frontend") == has_role > 0
    assert count("role") == has_role
    assert count("any:role=frontend") == has_role
    assert count("reserved:role=frontend") == 0
    assert count("!role") == len(flows) - has_role
    assert count("role!=frontend") == len(flows) - has_role
    assert count("role=frontend,k8s:io.kubernetes.pod.namespace=default") == has_role
