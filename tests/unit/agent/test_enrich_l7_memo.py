"""enrich_l7 memoizes per address pair what depends only on it, but never the DNS names
(they change as answers are learned): repeated flows must be enriched as the first one."""

from __future__ import annotations

from agent.daemon import AgentConfig, read_cluster_state
from agent.flows import enrich_l7
from observe.flow import DnsInfo, EventKind, Flow, FlowVerdict, HttpInfo


def _flow(src: str, dst: str, dns: bool = False) -> Flow:
    return Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7, src_ip=src,
                dst_ip=dst, l7_type="REQUEST",
                http=None if dns else HttpInfo("GET", "/", "HTTP/1.1", 200, []),
                dns=DnsInfo(query="a.example.") if dns else None)


def test_repeated_flows_are_enriched_like_the_first(cfg: AgentConfig) -> None:
    cfg.node_name = "node1"
    st, _ = read_cluster_state(cfg, 1)
    answers = iter([["one.example"], ["two.example"]])
    asked: list[tuple[int, str]] = []

    def names(endpoint_id: int, ip: str) -> list[str]:
        asked.append((endpoint_id, ip))
        return next(answers)

    first = enrich_l7(_flow("10.244.1.10", "10.244.2.10"), st, names)
    second = enrich_l7(_flow("10.244.1.10", "10.244.2.10"), st, names)
    assert first.source == second.source and first.source.pod_name == "frontend"
    assert first.destination == second.destination and first.destination.pod_name == "my-api"
    assert first.traffic_direction == second.traffic_direction == "EGRESS"  # dst not on node1
    assert first.node_name == second.node_name == "node1"
    # the names are asked every time: a later DNS answer must show up on later flows
    assert (first.destination_names, second.destination_names) == (
        ["one.example"], ["two.example"])
    assert len(asked) == 2
    # a flow to a local pod is INGRESS for HTTP but EGRESS for DNS (same address pair)
    back = enrich_l7(_flow("10.244.2.10", "10.244.1.10"), st, names)
    back_dns = enrich_l7(_flow("10.244.2.10", "10.244.1.10", dns=True), st, names)
    assert (back.traffic_direction, back_dns.traffic_direction) == ("INGRESS", "EGRESS")
    assert back.destination_names == [] and len(asked) == 2  # my-api is not local to node1
