"""Turning datapath events and proxy records into complete Flows (no I/O here).

The BPF ring buffer and the proxies know addresses and numbers; users want pods, labels,
policy names and DNS names. Everything that enriches a Flow happens here, from one
`ClusterState`, so that `observe`, the export file and the metrics all see the same record.

`enrich_l7(flow, st, fqdn_names)` finishes an eager proxy Flow; `bind_l7(flow, ...)` does
the same for a `LazyFlow` (observe/flow.py) without building anything: it stores the same
shared endpoint objects, node, direction and the DNS names looked up now (at emit time), so
the flow materialised later equals the eager one (tests/unit/agent/test_lazy_flows.py).
`emit_l7_flow` picks the right one.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import cast

from agent.state import ClusterState
from observe.flow import EventKind, Flow, FlowEndpoint, FlowVerdict, LazyFlow
from policy.types import DropReason, Endpoint
from redirect.events import DatapathEvent, TraceVerdict

PROTO_NAMES = {1: "ICMPv4", 6: "TCP", 17: "UDP", 132: "SCTP"}
TCP_FLAG_BITS = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"),
                 (0x20, "URG"))
MEMO_MAX = 65536  # endpoints memoized per state (bounded: world IPs are unbounded)
CLOCK_BOOTTIME = 7  # time.CLOCK_BOOTTIME (Linux); bpf_ktime_get_boot_ns() counts on it


def boottime_to_wall_ns(boot_ns: int) -> int:
    """Map a CLOCK_BOOTTIME stamp from BPF to wall-clock ns since the epoch."""
    return time.time_ns() - (time.clock_gettime_ns(CLOCK_BOOTTIME) - boot_ns)


def wall_to_boottime_ns(wall_s: float) -> int:
    """Map a wall-clock time (seconds) to CLOCK_BOOTTIME ns, for expiries the BPF side checks."""
    return time.clock_gettime_ns(CLOCK_BOOTTIME) + int((wall_s - time.time()) * 1e9)


def tcp_flag_names(bits: int) -> list[str]:
    return [name for bit, name in TCP_FLAG_BITS if bits & bit]


def policy_of_rule(rule_id: str) -> str:
    """`default/my-api-l7:ingress[0]` -> `default/my-api-l7` (empty for built-in rules)."""
    ref, sep, _ = rule_id.rpartition(":")
    return ref if sep else ""


def endpoint_json(st: ClusterState, ip: str, identity: int) -> FlowEndpoint:
    """Hubble's Endpoint for an address, memoized per state (flows share the objects:
    nothing mutates a published Flow's endpoints)."""
    key = ("endpoint_json", ip, identity)
    cached = st.memo.get(key)
    if isinstance(cached, FlowEndpoint):
        return cached
    out = _endpoint_json(st, ip, identity)
    if len(st.memo) < MEMO_MAX:
        st.memo[key] = out
    return out


def _endpoint_json(st: ClusterState, ip: str, identity: int) -> FlowEndpoint:
    ep = st.endpoint_by_ip(ipaddress.IPv4Address(ip)) if ip else None
    if identity == 0 and ip:
        identity = st.identities.identity_for_ip(ipaddress.IPv4Address(ip)).id
    if ep is None:
        ident = st.identities.by_id.get(identity)
        labels = ident.label_strings() if ident is not None else []
        return FlowEndpoint(identity=identity, labels=labels)
    return FlowEndpoint(identity=identity, namespace=ep.namespace, pod_name=ep.name,
                        labels=_pod_labels(ep),
                        ID=ep.endpoint_id if ep.node == st.node else 0)


def _pod_labels(ep: Endpoint) -> list[str]:
    return sorted(f"k8s:{lbl.key}={lbl.value}" for lbl in ep.identity_labels())


def flow_from_event(ev: DatapathEvent, st: ClusterState, rule_names: dict[int, str],
                    fqdn_names: Callable[[int, str], list[str]],
                    fqdn_name_of_id: dict[int, str],
                    expired_names: Callable[[int, str], list[str]] | None = None) -> Flow:
    """One ring-buffer record as a Hubble-shaped Flow.

    `fqdn_names(endpoint, ip)`: names the IP is currently allowed for; `expired_names`: names
    that used to allow it. A default-deny egress drop towards an IP whose names have all
    expired (the agent's GC removed the map entry, so BPF can only say POLICY_DENIED) is
    reported as FQDN_EXPIRED with those names.
    """
    src, dst = str(ev.src), str(ev.dst)
    flow = Flow(
        time_ns=boottime_to_wall_ns(ev.time_ns),
        verdict=_verdict(ev),
        kind=EventKind.DROP if ev.is_drop else EventKind.TRACE,
        src_ip=src, dst_ip=dst, protocol=PROTO_NAMES.get(ev.proto, str(ev.proto)),
        src_port=ev.sport, dst_port=ev.dport,
        tcp_flags=tcp_flag_names(ev.tcp_flags) if ev.proto == 6 else [],
        source=endpoint_json(st, src, ev.src_identity),
        destination=endpoint_json(st, dst, ev.dst_identity),
        traffic_direction=ev.direction.name, node_name=st.node,
    )
    if ev.is_drop:
        reason = ev.reason
        flow.drop_reason_desc = reason.name if isinstance(reason, DropReason) else str(reason)
    names: list[str] = []
    if ev.fqdn_name_id is not None and ev.fqdn_name_id in fqdn_name_of_id:
        names = [fqdn_name_of_id[ev.fqdn_name_id]]
    elif ev.endpoint_id:
        names = fqdn_names(ev.endpoint_id, dst)
        if (not names and expired_names is not None and ev.reason is DropReason.POLICY_DENIED
                and ev.direction.name == "EGRESS"):
            names = expired_names(ev.endpoint_id, dst)
            if names:
                flow.drop_reason_desc = DropReason.FQDN_EXPIRED.name
    flow.destination_names = names
    rule = rule_names.get(ev.rule_index) if ev.rule_index is not None else None
    if rule:
        ref = policy_of_rule(rule)
        if ref:
            (flow.denied_by if ev.is_drop else flow.allowed_by).append(ref)
    flow.summary = _summary(flow)
    return flow


def _verdict(ev: DatapathEvent) -> FlowVerdict:
    if ev.is_drop:
        return FlowVerdict.DROPPED
    if ev.verdict is TraceVerdict.REDIRECTED:
        return FlowVerdict.REDIRECTED
    return FlowVerdict.FORWARDED


def _summary(flow: Flow) -> str:
    text = flow.protocol
    if flow.protocol == "TCP" and flow.tcp_flags:
        text = "TCP Flags: " + ", ".join(flow.tcp_flags)
    if flow.drop_reason_desc == DropReason.FQDN_EXPIRED.name and flow.destination_names:
        text += f" (FQDN {', '.join(flow.destination_names)} expired)"
    return text


def enrich_l7(flow: Flow, st: ClusterState, fqdn_names: Callable[[int, str], list[str]]) -> Flow:
    """Fill what a proxy cannot know: pods, identities, direction, node, DNS names."""
    flow.node_name = st.node
    # Everything but the DNS names depends only on the address pair (and on whether this is
    # a DNS flow) within one state: one HTTP flow per request would otherwise repeat the
    # endpoint and direction lookups of every earlier request on the same connection.
    key = ("enrich_l7", flow.src_ip, flow.dst_ip, flow.dns is None)
    cached = st.memo.get(key)
    if cached is None:
        cached = _enrich_parts(st, flow.src_ip, flow.dst_ip, flow.dns is None)
        if len(st.memo) < MEMO_MAX:
            st.memo[key] = cached
    source, destination, direction, src_endpoint_id = cast(_EnrichParts, cached)
    flow.source = source
    flow.destination = destination
    if not flow.traffic_direction:
        flow.traffic_direction = direction
    # DNS names of the destination as the source learned them (toFQDNs). A DNS flow's peers
    # are a pod and its DNS server, never a learned address: no lookup per query.
    if (src_endpoint_id is not None and flow.dst_ip and not flow.destination_names
            and flow.dns is None):
        flow.destination_names = fqdn_names(src_endpoint_id, flow.dst_ip)
    return flow


_EnrichParts = tuple[FlowEndpoint, FlowEndpoint, str, int | None]


def _enrich_parts(st: ClusterState, src_ip: str, dst_ip: str,
                  not_dns: bool) -> _EnrichParts:
    dst_local = dst_ip and st.local_endpoint_str(dst_ip)
    direction = "INGRESS" if dst_local and not_dns else "EGRESS"
    src = st.local_endpoint_str(src_ip) if src_ip else None
    return (endpoint_json(st, src_ip, 0), endpoint_json(st, dst_ip, 0), direction,
            src.endpoint_id if src is not None else None)


def bind_l7(flow: LazyFlow, st: ClusterState,
            fqdn_names: Callable[[int, str], list[str]]) -> LazyFlow:
    """`enrich_l7` for a lazy flow nobody read yet: the same values, bound without building.

    Reads only the fields a LazyFlow producer sets (addresses, traffic_direction); a producer
    never sets `destination_names`, so enrich_l7's "not already named" test always holds.
    """
    emit_l7_flows([flow], st, fqdn_names)  # the one binder (an unread lazy flow: bound)
    return flow


_BindParts = tuple[tuple[str, FlowEndpoint, FlowEndpoint], str, "int | None"]


def _bind_parts(st: ClusterState, src_ip: str, dst_ip: str, not_dns: bool) -> _BindParts:
    """What bind_l7 stores for an address pair: memoized per state."""
    key = ("bind_l7", src_ip, dst_ip, not_dns)
    cached = st.memo.get(key)
    if cached is None:
        source, destination, direction, src_id = _enrich_parts(st, src_ip, dst_ip, not_dns)
        cached = ((st.node, source, destination), direction, src_id)
        if len(st.memo) < MEMO_MAX:
            st.memo[key] = cached
    return cached  # type: ignore[return-value]  # (not cast(): a call per flow)


def emit_l7_flows(flows: list[Flow], st: ClusterState,
                  fqdn_names: Callable[[int, str], list[str]]) -> None:
    """`emit_l7_flow` for each flow of a batch, in place (the agent's flush_l7): consecutive
    unread lazy flows of one address pair and protocol (the usual batch: one client pod
    talking to one service) share one parts lookup and one DNS-names lookup, each flow
    getting its own copy of the names (as bind_l7's per-flow lookup gives). The names cannot
    change within a batch: a DNS answer and the names' expiry flush the queue first
    (Agent.learn_dns, housekeeping)."""
    parts: _BindParts | None = None
    names: list[str] | None = None
    last_src = last_dst = last_proto = ""
    for flow in flows:
        if not isinstance(flow, LazyFlow) or flow._done:
            enrich_l7(flow, st, fqdn_names)
            continue
        src_ip, dst_ip, proto = flow.src_ip, flow.dst_ip, flow.l7_protocol
        if parts is None or src_ip != last_src or dst_ip != last_dst or proto != last_proto:
            parts = _bind_parts(st, src_ip, dst_ip, proto != "dns")
            last_src, last_dst, last_proto = src_ip, dst_ip, proto
            names = None
        flow._bound, direction, src_endpoint_id = parts
        if not flow.traffic_direction:
            flow.traffic_direction = direction
        if src_endpoint_id is not None and dst_ip and proto != "dns":
            if names is None:
                names = fqdn_names(src_endpoint_id, dst_ip)
            flow._names = names.copy()


def emit_l7_flow(flow: Flow, st: ClusterState,
                 fqdn_names: Callable[[int, str], list[str]]) -> Flow:
    """The agent's L7 step before publishing: bind a lazy flow, enrich an eager one."""
    if isinstance(flow, LazyFlow) and not flow._done:
        return bind_l7(flow, st, fqdn_names)
    return enrich_l7(flow, st, fqdn_names)
