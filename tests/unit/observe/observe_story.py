"""Builds `flows.jsonl`: the sandbox story as the datapath and proxies will record it.

Run `python tests/unit/observe/observe_story.py > tests/unit/observe/flows.jsonl` to
regenerate. The lead replaces/extends flows.jsonl with flows recorded from the real sandbox;
the tests read the file and compute expectations from its raw JSON, so they keep working.
Names and addresses follow agent/sandbox/default-topology.yaml.
"""

from __future__ import annotations

import json
import sys

from observe.flow import DnsInfo, EventKind, Flow, FlowEndpoint, FlowVerdict, HttpInfo

T0 = 1_795_699_427_852_000_000  # 2026-11-26T13:23:47.852Z
MS = 1_000_000

POD_LABELS = ["k8s:io.cilium.k8s.policy.cluster=default",
              "k8s:io.cilium.k8s.policy.serviceaccount=default"]


def ep(ns: str, pod: str, ident: int, *labels: str, ep_id: int = 0) -> FlowEndpoint:
    return FlowEndpoint(identity=ident, namespace=ns, pod_name=pod, ID=ep_id,
                        labels=sorted([*POD_LABELS, f"k8s:io.kubernetes.pod.namespace={ns}",
                                       *labels]))


FRONTEND = ("10.244.1.10", lambda: ep("default", "frontend", 256, "k8s:role=frontend",
                                      ep_id=101))
OTHER = ("10.244.1.11", lambda: ep("default", "other", 257, "k8s:app=other", ep_id=102))
KUBE_DNS = ("10.244.1.53", lambda: ep("kube-system", "kube-dns", 258, "k8s:k8s-app=kube-dns",
                                      ep_id=103))
MY_API = ("10.244.2.10", lambda: ep("default", "my-api", 259, "k8s:app=my-api", ep_id=201))


def world() -> FlowEndpoint:
    return FlowEndpoint(identity=2, labels=["reserved:world"])


def story() -> list[Flow]:
    out: list[Flow] = []
    t = T0

    def add(**kw: object) -> None:
        nonlocal t
        t += 7 * MS
        out.append(Flow(time_ns=t, **kw))  # type: ignore[arg-type]

    # frontend resolves api.stripe.com through kube-dns (DNS proxy, allowed)
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=FRONTEND[0],
        dst_ip=KUBE_DNS[0], protocol="UDP", src_port=40001, dst_port=53,
        source=FRONTEND[1](), destination=KUBE_DNS[1](), traffic_direction="EGRESS",
        node_name="node1", is_reply=False, l7_type="REQUEST",
        dns=DnsInfo(query="api.stripe.com.", qtypes=["A"]),
        allowed_by=["default/frontend-egress"], summary="DNS Query api.stripe.com. A")
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=KUBE_DNS[0],
        dst_ip=FRONTEND[0], protocol="UDP", src_port=53, dst_port=40001,
        source=KUBE_DNS[1](), destination=FRONTEND[1](), traffic_direction="EGRESS",
        node_name="node1", is_reply=True, l7_type="RESPONSE", latency_ns=2 * MS,
        dns=DnsInfo(query="api.stripe.com.", ips=["203.0.113.10"], ttl=30, qtypes=["A"],
                    rrtypes=["A"]),
        summary='DNS Answer "203.0.113.10" TTL: 30 (Proxy api.stripe.com. A)')
    # frontend -> api.stripe.com:443: allowed at L3/L4 by toFQDNs (a trace)
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.TRACE, src_ip=FRONTEND[0],
        dst_ip="203.0.113.10", protocol="TCP", src_port=50010, dst_port=443,
        tcp_flags=["SYN"], source=FRONTEND[1](), destination=world(),
        destination_names=["api.stripe.com"], traffic_direction="EGRESS",
        node_name="node1", is_reply=False)
    # frontend resolves evil.example.net: allowed by matchPattern "*", then TCP to it dropped
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=FRONTEND[0],
        dst_ip=KUBE_DNS[0], protocol="UDP", src_port=40002, dst_port=53,
        source=FRONTEND[1](), destination=KUBE_DNS[1](), traffic_direction="EGRESS",
        node_name="node1", is_reply=False, l7_type="REQUEST",
        dns=DnsInfo(query="evil.example.net.", qtypes=["A"]))
    add(verdict=FlowVerdict.DROPPED, kind=EventKind.DROP, src_ip=FRONTEND[0],
        dst_ip="203.0.113.12", protocol="TCP", src_port=50020, dst_port=443,
        tcp_flags=["SYN"], source=FRONTEND[1](), destination=world(),
        destination_names=["evil.example.net"], drop_reason_desc="POLICY_DENIED",
        traffic_direction="EGRESS", node_name="node1")
    # frontend -> my-api GET /api/users: redirected to the HTTP proxy, request + response
    add(verdict=FlowVerdict.REDIRECTED, kind=EventKind.TRACE, src_ip=FRONTEND[0],
        dst_ip=MY_API[0], protocol="TCP", src_port=42818, dst_port=8080,
        tcp_flags=["SYN"], source=FRONTEND[1](), destination=MY_API[1](),
        traffic_direction="INGRESS", node_name="node2", is_reply=False)
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=FRONTEND[0],
        dst_ip=MY_API[0], protocol="TCP", src_port=42818, dst_port=8080,
        source=FRONTEND[1](), destination=MY_API[1](), traffic_direction="INGRESS",
        node_name="node2", is_reply=False, l7_type="REQUEST",
        http=HttpInfo(method="GET", url="http://my-api:8080/api/users"),
        allowed_by=["default/my-api-l7"])
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=MY_API[0],
        dst_ip=FRONTEND[0], protocol="TCP", src_port=8080, dst_port=42818,
        source=MY_API[1](), destination=FRONTEND[1](), traffic_direction="INGRESS",
        node_name="node2", is_reply=True, l7_type="RESPONSE", latency_ns=3 * MS,
        http=HttpInfo(method="GET", url="http://my-api:8080/api/users", code=200))
    # frontend POST /api/users: denied by the L7 rule (403 from the proxy)
    add(verdict=FlowVerdict.DROPPED, kind=EventKind.L7, src_ip=FRONTEND[0],
        dst_ip=MY_API[0], protocol="TCP", src_port=42820, dst_port=8080,
        source=FRONTEND[1](), destination=MY_API[1](), traffic_direction="INGRESS",
        node_name="node2", is_reply=False, l7_type="REQUEST",
        http=HttpInfo(method="POST", url="http://my-api:8080/api/users"),
        drop_reason_desc="POLICY_DENIED")
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=MY_API[0],
        dst_ip=FRONTEND[0], protocol="TCP", src_port=8080, dst_port=42820,
        source=MY_API[1](), destination=FRONTEND[1](), traffic_direction="INGRESS",
        node_name="node2", is_reply=True, l7_type="RESPONSE", latency_ns=1 * MS,
        http=HttpInfo(method="POST", url="http://my-api:8080/api/users", code=403))
    # frontend GET /admin: denied
    add(verdict=FlowVerdict.DROPPED, kind=EventKind.L7, src_ip=FRONTEND[0],
        dst_ip=MY_API[0], protocol="TCP", src_port=42822, dst_port=8080,
        source=FRONTEND[1](), destination=MY_API[1](), traffic_direction="INGRESS",
        node_name="node2", is_reply=False, l7_type="REQUEST",
        http=HttpInfo(method="GET", url="http://my-api:8080/admin"),
        drop_reason_desc="POLICY_DENIED")
    # other -> my-api:8080 dropped at L3/L4 (only role=frontend may connect), twice (SYN retry)
    for sport in (51000, 51000):
        add(verdict=FlowVerdict.DROPPED, kind=EventKind.DROP, src_ip=OTHER[0],
            dst_ip=MY_API[0], protocol="TCP", src_port=sport, dst_port=8080,
            tcp_flags=["SYN"], source=OTHER[1](), destination=MY_API[1](),
            drop_reason_desc="POLICY_DENIED", traffic_direction="INGRESS", node_name="node2")
    # a policy-verdict event for the same drop (carries identities)
    add(verdict=FlowVerdict.DROPPED, kind=EventKind.POLICY_VERDICT, src_ip=OTHER[0],
        dst_ip=MY_API[0], protocol="TCP", src_port=51000, dst_port=8080,
        tcp_flags=["SYN"], source=OTHER[1](), destination=MY_API[1](),
        drop_reason_desc="POLICY_DENIED", traffic_direction="INGRESS", node_name="node2")
    # frontend DNS for a name kube-dns refuses (policy allows "*"; rcode from upstream)
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=KUBE_DNS[0],
        dst_ip=FRONTEND[0], protocol="UDP", src_port=53, dst_port=40003,
        source=KUBE_DNS[1](), destination=FRONTEND[1](), traffic_direction="EGRESS",
        node_name="node1", is_reply=True, l7_type="RESPONSE",
        dns=DnsInfo(query="nope.example.org.", rcode=3, qtypes=["AAAA"]))
    # other -> kube-dns forwarded (a trace); other -> x.internal hits an explicit deny rule
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.TRACE, src_ip=OTHER[0],
        dst_ip=KUBE_DNS[0], protocol="UDP", src_port=33333, dst_port=53,
        source=OTHER[1](), destination=KUBE_DNS[1](), traffic_direction="EGRESS",
        node_name="node1", is_reply=False)
    add(verdict=FlowVerdict.DROPPED, kind=EventKind.DROP, src_ip=OTHER[0],
        dst_ip="203.0.113.11", protocol="TCP", src_port=51010, dst_port=80,
        tcp_flags=["SYN"], source=OTHER[1](), destination=world(),
        drop_reason_desc="POLICY_DENY", traffic_direction="EGRESS", node_name="node1",
        denied_by=["default/deny-internal"])
    # an ICMP ping from other to my-api dropped; a DNS query denied by the DNS proxy
    add(verdict=FlowVerdict.DROPPED, kind=EventKind.DROP, src_ip=OTHER[0],
        dst_ip=MY_API[0], protocol="ICMPv4", source=OTHER[1](), destination=MY_API[1](),
        drop_reason_desc="POLICY_DENIED", traffic_direction="INGRESS", node_name="node2")
    add(verdict=FlowVerdict.DROPPED, kind=EventKind.L7, src_ip=OTHER[0],
        dst_ip=KUBE_DNS[0], protocol="UDP", src_port=33334, dst_port=53,
        source=OTHER[1](), destination=KUBE_DNS[1](), traffic_direction="EGRESS",
        node_name="node1", is_reply=False, l7_type="REQUEST",
        dns=DnsInfo(query="evil.example.net.", qtypes=["A"]),
        drop_reason_desc="POLICY_DENIED")
    # a 500 from my-api
    add(verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=MY_API[0],
        dst_ip=FRONTEND[0], protocol="TCP", src_port=8080, dst_port=42830,
        source=MY_API[1](), destination=FRONTEND[1](), traffic_direction="INGRESS",
        node_name="node2", is_reply=True, l7_type="RESPONSE", latency_ns=12 * MS,
        http=HttpInfo(method="GET", url="http://my-api:8080/api/boom", code=500))
    return out


if __name__ == "__main__":
    for f in story():
        sys.stdout.write(json.dumps({"flow": f.to_json()}, separators=(",", ":")) + "\n")
