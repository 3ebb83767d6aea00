"""proxy/dns/session.py: scripted exchanges against the sans-IO core (no sockets, fake clock)."""

from __future__ import annotations

import random

import pytest

from observe.flow import Flow, FlowVerdict
from policy.dnsname import build_matcher
from policy.types import Decision, DropReason, Verdict
from proxy.dns import wire
from proxy.dns.session import (
    Channel,
    DnsConnInfo,
    DnsSession,
    Drop,
    Emit,
    Learn,
    SendClient,
    SendUpstream,
    Stage,
)

from .dnsmsg import a_rdata, header, name, question, raw_query, reply, rr

INFO = DnsConnInfo("10.0.1.5", 40000, "10.0.0.10", 53, "UDP")
ALLOW = Verdict(Decision.FORWARDED, rule_id="default/dns:egress[0]")
DENY = Verdict(Decision.DENIED, rule_id="default-deny", reason=DropReason.POLICY_DENIED)


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns


def make(decide=None, **kw):  # type: ignore[no-untyped-def]
    clock = Clock()
    matcher = build_matcher([], ["*.example.com"])
    if decide is None:
        def decide(info: DnsConnInfo, qname: str) -> Verdict:
            return ALLOW if matcher.matches(qname) else DENY
    stages: list[tuple[Stage, float]] = []
    sess = DnsSession(decide, clock_ns=clock, wall_ns=lambda: 1_700_000_000_000_000_000,
                      upstream_mark=lambda info: 0x100, rng=random.Random(7),
                      on_stage=lambda s, v: stages.append((s, v)), **kw)
    return sess, clock, stages


def test_allowed_forward_learn_then_reply_byte_identical_except_id() -> None:
    sess, clock, stages = make()
    query = raw_query(b"ApI", b"Example", b"com", qid=0x4242, edns=True)
    acts = sess.feed_query(query, INFO, client="c1")
    assert len(acts) == 1 and isinstance(acts[0], SendUpstream)
    up = acts[0]
    assert up.channel == Channel("10.0.0.10", 53, "UDP", 0x100, 0)
    up_id = int.from_bytes(up.data[:2], "big")
    assert up.data[2:] == query[2:]  # only the ID changed towards upstream
    clock.ns += 300_000
    answer = reply(up.data, [rr(name(b"api", b"example", b"com"), 1, a_rdata("93.1.1.1"), ttl=42)])
    acts = sess.feed_upstream(up.channel, answer)
    assert acts == [Learn(1, INFO, "api.example.com.", [("93.1.1.1", 42)])]
    assert sess.inflight == 1
    clock.ns += 50_000
    acts = sess.learn_done(1)
    assert isinstance(acts[0], SendClient) and acts[0].client == "c1"
    assert acts[0].data == (0x4242).to_bytes(2, "big") + answer[2:]
    assert int.from_bytes(up.data[:2], 'big') == up_id
    flow = acts[1].flow if isinstance(acts[1], Emit) else None
    assert flow is not None and flow.verdict is FlowVerdict.FORWARDED
    assert flow.dns is not None and flow.dns.ips == ["93.1.1.1"] and flow.dns.ttl == 42
    assert flow.dns.query == "api.example.com." and flow.dns.qtypes == ["A"]
    assert flow.latency_ns == 350_000 and flow.is_reply and flow.src_ip == "10.0.0.10"
    assert flow.allowed_by == ["default/dns"]
    back = Flow.from_json(flow.to_json())  # Hubble JSON carries every DNS field
    assert back.dns == flow.dns and back.l7_type == "RESPONSE" and back.latency_ns == 350_000
    assert [s for s, _ in stages] == [Stage.POLICY, Stage.UPSTREAM, Stage.DATAPATH, Stage.TOTAL]
    assert sess.inflight == 0 and sess.stats.queries[("forwarded", 0)] == 1


@pytest.mark.parametrize("reject,rcode", [("refused", 5), ("nameError", 3)])
def test_denied_answers_without_upstream(reject: str, rcode: int) -> None:
    sess, _clock, _ = make(reject_rcode=reject)
    query = raw_query(b"EvIl", b"NeT", qid=0x0101)
    acts = sess.feed_query(query, INFO)
    assert [type(a) for a in acts] == [SendClient, Emit]
    assert isinstance(acts[0], SendClient) and isinstance(acts[1], Emit)
    out = acts[0].data
    assert out[:2] == b"\x01\x01" and out[3] & 0xF == rcode
    assert out[12:] == query[12:]  # 0x20 question echoed byte for byte
    flow = acts[1].flow
    assert flow.verdict is FlowVerdict.DROPPED and flow.drop_reason_desc == "POLICY_DENIED"
    assert flow.dns is not None and flow.dns.query == "evil.net." and flow.src_ip == "10.0.1.5"
    assert sess.stats.queries[("dropped", rcode)] == 1 and sess.inflight == 0
    assert flow.denied_by == []  # default deny names no policy


def test_explicit_deny_rule_named_in_flow() -> None:
    deny = Verdict(Decision.DENIED, rule_id="default/no-evil:egressDeny[0]",
                   reason=DropReason.POLICY_DENY)
    sess, _clock, _ = make(lambda info, qname: deny)
    acts = sess.feed_query(raw_query(b"evil", b"net"), INFO)
    assert isinstance(acts[1], Emit) and acts[1].flow.denied_by == ["default/no-evil"]
    assert acts[1].flow.drop_reason_desc == "POLICY_DENY"


def test_mixed_case_is_matched_lowercase_and_forwarded_unchanged() -> None:
    seen: list[str] = []

    def decide(info: DnsConnInfo, qname: str) -> Verdict:
        seen.append(qname)
        return ALLOW

    sess, _, _ = make(decide)
    query = raw_query(b"WwW", b"eXaMpLe", b"CoM")
    acts = sess.feed_query(query, INFO)
    assert seen == ["www.example.com."]
    assert isinstance(acts[0], SendUpstream) and acts[0].data[12:] == query[12:]


def test_upstream_timeout_gives_servfail() -> None:
    sess, clock, _ = make(upstream_timeout_s=2.0)
    query = raw_query(b"a", b"example", b"com", qid=9)
    sess.feed_query(query, INFO, client="c")
    clock.ns += 1_999_000_000
    assert sess.tick() == []
    clock.ns += 2_000_000
    acts = sess.tick()
    assert isinstance(acts[0], SendClient) and acts[0].data[:2] == b"\x00\x09"
    assert acts[0].data[3] & 0xF == wire.RCODE_SERVFAIL
    assert sess.stats.upstream_errors["timeout"] == 1 and sess.inflight == 0


def test_late_answer_after_timeout_is_ignored() -> None:
    sess, clock, _ = make(upstream_timeout_s=1.0)
    up = sess.feed_query(raw_query(b"a", b"example", b"com"), INFO)[0]
    assert isinstance(up, SendUpstream)
    clock.ns += 2_000_000_000
    sess.tick()
    acts = sess.feed_upstream(up.channel, reply(up.data, []))
    assert acts == [Drop("unmatched answer")] and sess.stats.unmatched_answers == 1


def test_overload_is_refused_and_counted() -> None:
    sess, _, _ = make(max_inflight=2)
    for i in range(2):
        assert isinstance(sess.feed_query(raw_query(b"a%d" % i, b"example", b"com"), INFO)[0],
                          SendUpstream)
    acts = sess.feed_query(raw_query(b"z", b"example", b"com", qid=3), INFO)
    assert isinstance(acts[0], SendClient) and acts[0].data[3] & 0xF == wire.RCODE_REFUSED
    assert isinstance(acts[1], Emit) and acts[1].flow.verdict is FlowVerdict.ERROR
    assert sess.stats.overload_refusals == 1


def test_per_client_cap_refuses_only_the_noisy_pod() -> None:
    sess, _, _ = make(max_inflight_per_client=3)
    ups = [sess.feed_query(raw_query(b"s%d" % i, b"example", b"com"), INFO)[0] for i in range(3)]
    assert all(isinstance(u, SendUpstream) for u in ups)
    noisy = sess.feed_query(raw_query(b"s9", b"example", b"com"), INFO)
    assert isinstance(noisy[0], SendClient) and noisy[0].data[3] & 0xF == wire.RCODE_REFUSED
    other = DnsConnInfo("10.0.1.6", 40000, "10.0.0.10", 53, "UDP")
    assert isinstance(sess.feed_query(raw_query(b"o", b"example", b"com"), other)[0], SendUpstream)
    # One of the noisy pod's answers (with learning) frees exactly one slot for it.
    up = ups[0]
    assert isinstance(up, SendUpstream)
    acts = sess.feed_upstream(up.channel, reply(up.data, [rr(name(b"s0", b"example", b"com"), 1,
                                                               a_rdata("93.1.1.1"))]))
    assert isinstance(acts[0], Learn)
    blocked = sess.feed_query(raw_query(b"t", b"example", b"com"), INFO)
    assert isinstance(blocked[0], SendClient)  # still counted while learning
    sess.learn_done(acts[0].token)
    assert isinstance(sess.feed_query(raw_query(b"u", b"example", b"com"), INFO)[0], SendUpstream)
    assert sess.stats.overload_refusals == 2 and sess.inflight == 4


def test_malformed_query_formerr_never_forwarded() -> None:
    sess, _, _ = make()
    bad = header(qd=2) + question(b"a", b"example", b"com") * 2
    acts = sess.feed_query(bad, INFO)
    assert isinstance(acts[0], SendClient) and acts[0].data[3] & 0xF == wire.RCODE_FORMERR
    assert isinstance(acts[1], Emit) and acts[1].flow.drop_reason_desc == "INVALID_PACKET_DROPPED"
    assert sess.feed_query(b"\x00\x01", INFO)[0] == Drop("malformed")
    notimp = sess.feed_query(header(flags=0x1000) + question(b"a"), INFO)
    assert isinstance(notimp[0], SendClient) and notimp[0].data[3] & 0xF == wire.RCODE_NOTIMP
    assert sess.stats.malformed_queries == 2 and sess.stats.notimp_queries == 1
    assert sess.inflight == 0


def test_spoofed_or_mismatched_answers_never_learn_and_real_one_still_counts() -> None:
    sess, _, _ = make()
    query = raw_query(b"a", b"example", b"com", qid=5)
    up = sess.feed_query(query, INFO)[0]
    assert isinstance(up, SendUpstream)
    other = raw_query(b"b", b"example", b"com")
    wrong_q = reply(other, [rr(name(b"b", b"example", b"com"), 1, a_rdata("6.6.6.6"))],
                    qid=int.from_bytes(up.data[:2], "big"))
    assert sess.feed_upstream(up.channel, wrong_q) == [Drop("bad answer")]
    wrong_chan = Channel("10.0.0.11", 53, "UDP", 0x100)
    assert sess.feed_upstream(wrong_chan, reply(up.data, [])) == [Drop("unmatched answer")]
    assert sess.feed_upstream(up.channel, b"\x00") == [Drop("unmatched answer")]
    for_other_name = reply(up.data, [rr(name(b"evil", b"net"), 1, a_rdata("6.6.6.6"))])
    acts = sess.feed_upstream(up.channel, for_other_name)
    assert [type(a) for a in acts] == [SendClient, Emit]  # released, nothing learned
    assert sess.stats.bad_answers == 1 and sess.stats.ignored_records == 1


def test_tc_answer_passed_through_without_learning() -> None:
    sess, _, _ = make()
    up = sess.feed_query(raw_query(b"a", b"example", b"com", qid=77), INFO)[0]
    assert isinstance(up, SendUpstream)
    tc = reply(up.data, [], tc=True)
    acts = sess.feed_upstream(up.channel, tc)
    assert isinstance(acts[0], SendClient) and acts[0].data == b"\x00\x4d" + tc[2:]


def test_channel_closed_fails_pending_tcp_queries() -> None:
    sess, _, _ = make()
    tcp = DnsConnInfo("10.0.1.5", 40001, "10.0.0.10", 53, "TCP")
    ups = [sess.feed_query(raw_query(b"q%d" % i, b"example", b"com", qid=i), tcp, client="t")[0]
           for i in range(3)]
    assert all(isinstance(u, SendUpstream) and u.channel.proto == "TCP" for u in ups)
    acts = sess.channel_closed(Channel("10.0.0.10", 53, "TCP", 0x100))
    sends = [a for a in acts if isinstance(a, SendClient)]
    assert len(sends) == 3 and all(s.data[3] & 0xF == wire.RCODE_SERVFAIL for s in sends)
    assert sess.stats.upstream_errors["connection"] == 3


def test_ids_unique_per_channel_and_pool_grows() -> None:
    sess, _, _ = make(max_inflight=5000, max_inflight_per_client=5000)
    seen: set[tuple[Channel, int]] = set()
    for i in range(1500):
        up = sess.feed_query(raw_query(b"n%d" % i, b"example", b"com", qid=1), INFO)[0]
        assert isinstance(up, SendUpstream)
        key = (up.channel, int.from_bytes(up.data[:2], "big"))
        assert key not in seen
        seen.add(key)
    assert {c.slot for c, _ in seen} == {0, 1}


def test_learn_timeout_still_releases_and_counts() -> None:
    sess, _, _ = make()
    up = sess.feed_query(raw_query(b"a", b"example", b"com"), INFO)[0]
    assert isinstance(up, SendUpstream)
    acts = sess.feed_upstream(up.channel, reply(up.data, [rr(name(b"a", b"example", b"com"), 1,
                                                               a_rdata("1.1.1.1"))]))
    assert isinstance(acts[0], Learn)
    out = sess.learn_done(acts[0].token, timed_out=True)
    assert isinstance(out[0], SendClient) and sess.stats.learn_timeouts == 1


def test_bad_reject_rcode_config() -> None:
    with pytest.raises(ValueError):
        make(reject_rcode="servfail")


def _exchange_flows() -> list[Flow]:
    """Flows of one allowed (with an answer), one denied and one malformed query."""
    sess, _clock, _ = make()
    flows: list[Flow] = []
    up = sess.feed_query(raw_query(b"a", b"example", b"com", qid=3), INFO)[0]
    assert isinstance(up, SendUpstream)
    learn = sess.feed_upstream(up.channel, reply(up.data, [
        rr(name(b"a", b"example", b"com"), 1, a_rdata("93.1.1.1"), ttl=9)]))[0]
    assert isinstance(learn, Learn)
    acts = [*sess.learn_done(learn.token), *sess.feed_query(raw_query(b"evil", b"net"), INFO),
            *sess.feed_query(header(qd=2), INFO)]
    flows = [a.flow for a in acts if isinstance(a, Emit)]
    assert len(flows) == 3
    return flows


def test_positional_flow_equals_keyword_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.dns import session as session_mod
    assert session_mod._POSITIONAL  # observe/flow.py still has the field order _flow knows
    fast = _exchange_flows()
    monkeypatch.setattr(session_mod, "_POSITIONAL", False)
    slow = _exchange_flows()
    assert fast == slow
    assert [f.to_json() for f in fast] == [f.to_json() for f in slow]
    assert fast[0].allowed_by == ["default/dns"] and fast[0].dns is not None
    assert fast[0].dns.ips == ["93.1.1.1"] and fast[0].dns.ttl == 9


def test_flows_never_share_containers() -> None:
    a, b, _c = _exchange_flows()
    a.source.labels.append("k=v")
    a.tcp_flags.append("SYN")
    a.destination_names.append("x.")
    a.denied_by.append("ns/p")
    assert b.source.labels == [] and b.tcp_flags == [] and b.destination_names == []
    assert b.denied_by == [] and a.source is not a.destination
    assert a.source.labels is not a.destination.labels


def test_timeouts_in_order_across_channels_after_partial_answers() -> None:
    sess, clock, _ = make(upstream_timeout_s=2.0)
    other = DnsConnInfo("10.0.1.5", 40000, "10.0.0.11", 53, "UDP")  # a second server
    sent = []
    for i, info in enumerate([INFO, other, INFO, other]):
        up = sess.feed_query(raw_query(b"t%d" % i, b"example", b"com", qid=100 + i), info)[0]
        assert isinstance(up, SendUpstream)
        sent.append(up)
        clock.ns += 500_000_000  # queries at 0, 0.5, 1.0, 1.5 s
    done = sess.feed_upstream(sent[0].channel, reply(sent[0].data, []))  # the oldest answered
    assert isinstance(done[0], SendClient)
    clock.ns = 1_000_000_000 + 2_499_999_999  # query 1 is due at 2.5 s
    assert sess.tick() == []
    clock.ns += 1
    first = [a.data[:2] for a in sess.tick() if isinstance(a, SendClient)]
    assert first == [(101).to_bytes(2, "big")]
    clock.ns += 1_000_000_000  # 3.5 s: queries 2 and 3 are due
    rest = sorted(a.data[:2] for a in sess.tick() if isinstance(a, SendClient))
    assert rest == [(102).to_bytes(2, "big"), (103).to_bytes(2, "big")]
    assert sess.inflight == 0 and sess.stats.upstream_errors["timeout"] == 3
    assert sess.feed_upstream(sent[1].channel, reply(sent[1].data, [])) == [
        Drop("unmatched answer")]
