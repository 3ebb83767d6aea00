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


# --- memos, inline learning, stage observers (the per-query fast paths) --------------------


def test_query_memo_reuses_parse_with_each_querys_own_id() -> None:
    sess, _clock, _ = make()
    first = raw_query(b"a", b"example", b"com", qid=1)
    again = raw_query(b"a", b"example", b"com", qid=2)  # same bytes after the ID
    ups = []
    for query in (first, again):
        up = sess.feed_query(query, INFO, client=query[:2])[0]
        assert isinstance(up, SendUpstream) and up.data[2:] == query[2:]
        ups.append(up)
    assert len(sess._queries) == 1  # the second query was a memo hit
    for up, qid in zip(ups, (1, 2), strict=True):
        acts = sess.feed_upstream(up.channel, reply(up.data, []))
        assert isinstance(acts[0], SendClient) and acts[0].data[:2] == qid.to_bytes(2, "big")
        assert acts[0].client == qid.to_bytes(2, "big")
    # A memo hit that times out answers SERVFAIL with its own ID too.
    up = sess.feed_query(raw_query(b"a", b"example", b"com", qid=3), INFO)[0]
    assert isinstance(up, SendUpstream)
    assert sess.channel_closed(up.channel)[0] == SendClient(
        None, INFO, wire.servfail(wire.parse_query(raw_query(b"a", b"example", b"com", qid=3)),
                                  raw_query(b"a", b"example", b"com", qid=3)))


def test_malformed_queries_never_memoized_each_one_counted() -> None:
    sess, _, _ = make()
    bad = header(qd=2) + question(b"a", b"example", b"com") * 2
    for _ in range(3):
        acts = sess.feed_query(bad, INFO)
        assert isinstance(acts[0], SendClient) and acts[0].data[3] & 0xF == wire.RCODE_FORMERR
    assert sess.stats.malformed_queries == 3 and sess._queries == {}


def test_query_memo_bounded_in_entries_and_message_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.dns import session as session_mod
    sess, _, _ = make(max_inflight=10_000, max_inflight_per_client=10_000)
    for i in range(session_mod.MEMO_MAX_ENTRIES + 5):
        sess.feed_query(raw_query(b"n%d" % i, b"example", b"com"), INFO)
    assert 0 < len(sess._queries) <= session_mod.MEMO_MAX_ENTRIES
    sess._queries.clear()
    short, long = raw_query(b"a", b"example", b"com"), raw_query(b"long" * 8, b"example", b"com")
    monkeypatch.setattr(session_mod, "MEMO_MAX_BYTES", len(short) - 2)
    for query in (short, long):
        assert isinstance(sess.feed_query(query, INFO)[0], SendUpstream)
    assert list(sess._queries) == [short[2:]]


def test_answer_memo_never_serves_another_question() -> None:
    """A memoized answer replayed (with the right upstream ID) for a different question is
    still refused: the memo is keyed on the answer bytes and checked against the question."""
    sess, _, _ = make()
    up_a = sess.feed_query(raw_query(b"a", b"example", b"com", qid=1), INFO)[0]
    up_b = sess.feed_query(raw_query(b"b", b"example", b"com", qid=2), INFO)[0]
    assert isinstance(up_a, SendUpstream) and isinstance(up_b, SendUpstream)
    answer_a = reply(up_a.data, [rr(name(b"a", b"example", b"com"), 1, a_rdata("93.1.1.1"))])
    assert isinstance(sess.feed_upstream(up_a.channel, answer_a)[0], Learn)
    assert len(sess._answers) == 1
    replay = up_b.data[:2] + answer_a[2:]
    assert sess.feed_upstream(up_b.channel, replay) == [Drop("bad answer")]
    assert sess.stats.bad_answers == 1


def test_answer_memo_hit_gives_the_same_learn_and_flow() -> None:
    sess, _, _ = make()
    learns, flows = [], []
    for qid in (1, 2):
        up = sess.feed_query(raw_query(b"a", b"example", b"com", qid=qid), INFO)[0]
        assert isinstance(up, SendUpstream)
        acts = sess.feed_upstream(up.channel, reply(up.data, [
            rr(name(b"a", b"example", b"com"), 1, a_rdata("93.1.1.1"), ttl=7)]))
        assert isinstance(acts[0], Learn)
        learns.append(acts[0]._replace(token=0))
        released = sess.learn_done(acts[0].token)
        assert isinstance(released[1], Emit)
        flows.append(released[1].flow)
    assert learns[0] == learns[1] and learns[0].ips == [("93.1.1.1", 7)]
    assert learns[0].ips is not learns[1].ips  # each Learn gets its own list
    assert flows[0].dns == flows[1].dns and flows[0].dns is not None
    assert flows[0].dns.ips is not flows[1].dns.ips


def test_inline_learning_releases_in_the_same_call_after_learning() -> None:
    calls: list[tuple[str, list[tuple[str, int]]]] = []
    sess, clock, stages = make(learn=lambda info, qname, ips: calls.append((qname, ips)))
    up = sess.feed_query(raw_query(b"api", b"example", b"com", qid=9), INFO, client="c")[0]
    assert isinstance(up, SendUpstream)
    clock.ns += 1000
    acts = sess.feed_upstream(up.channel, reply(up.data, [
        rr(name(b"api", b"example", b"com"), 1, a_rdata("93.1.1.1"), ttl=42)]))
    assert calls == [("api.example.com.", [("93.1.1.1", 42)])]
    assert [type(a) for a in acts] == [SendClient, Emit]
    assert isinstance(acts[0], SendClient) and acts[0].data[:2] == b"\x00\x09"
    assert [s for s, _ in stages] == [Stage.POLICY, Stage.UPSTREAM, Stage.DATAPATH, Stage.TOTAL]
    assert sess.inflight == 0 and sess._learning == {}


def test_inline_learning_failure_still_releases_and_counts() -> None:
    def broken(info: DnsConnInfo, qname: str, ips: list[tuple[str, int]]) -> None:
        raise OSError("map full")
    sess, _, _ = make(learn=broken)
    up = sess.feed_query(raw_query(b"a", b"example", b"com"), INFO)[0]
    assert isinstance(up, SendUpstream)
    acts = sess.feed_upstream(up.channel, reply(up.data, [
        rr(name(b"a", b"example", b"com"), 1, a_rdata("1.1.1.1"))]))
    assert [type(a) for a in acts] == [SendClient, Emit]
    assert sess.stats.learn_errors == 1 and sess.inflight == 0


def test_inline_learning_awaitable_is_handed_to_the_server() -> None:
    marker = object()
    sess, _, _ = make(learn=lambda info, qname, ips: marker)
    up = sess.feed_query(raw_query(b"a", b"example", b"com"), INFO)[0]
    assert isinstance(up, SendUpstream)
    acts = sess.feed_upstream(up.channel, reply(up.data, [
        rr(name(b"a", b"example", b"com"), 1, a_rdata("1.1.1.1"))]))
    assert len(acts) == 1 and isinstance(acts[0], Learn) and acts[0].waiting is marker
    assert sess.inflight == 1
    assert [type(a) for a in sess.learn_done(acts[0].token)] == [SendClient, Emit]
    assert sess.inflight == 0


def test_stage_observers_get_one_callable_per_stage() -> None:
    seen: list[tuple[str, float]] = []
    observers = {stage: (lambda s, st=stage.value: seen.append((st, s))) for stage in Stage}
    sess = DnsSession(lambda info, qname: ALLOW, clock_ns=Clock(), wall_ns=lambda: 0,
                      stage_observers=observers, rng=random.Random(1))
    up = sess.feed_query(raw_query(b"a", b"example", b"com"), INFO)[0]
    assert isinstance(up, SendUpstream)
    acts = sess.feed_upstream(up.channel, reply(up.data, []))
    assert isinstance(acts[0], SendClient)
    assert [st for st, _ in seen] == ["policy", "upstream", "total"]


def test_answer_memo_bounded_in_entries() -> None:
    from proxy.dns import session as session_mod
    sess, _, _ = make(max_inflight=10_000, max_inflight_per_client=10_000)
    for i in range(session_mod.ANSWER_MEMO_MAX_ENTRIES + 5):
        up = sess.feed_query(raw_query(b"n%d" % i, b"example", b"com"), INFO)[0]
        assert isinstance(up, SendUpstream)
        sess.feed_upstream(up.channel, reply(up.data, []))
    assert 0 < len(sess._answers) <= session_mod.ANSWER_MEMO_MAX_ENTRIES
    assert sess.inflight == 0
