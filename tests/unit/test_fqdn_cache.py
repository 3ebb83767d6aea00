"""policy/fqdn.py: the FQDN cache's pure logic (injected time, fake conntrack)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.dnsname import build_matcher
from policy.errors import ConfigError
from policy.fqdn import (
    ALL_PORTS,
    FqdnCache,
    FqdnMapEntry,
    FqdnSelector,
    is_rebinding_address,
)

HTTPS = frozenset({(6, 443, 443)})
HTTP = frozenset({(6, 80, 80)})
STRIPE = FqdnSelector(build_matcher(["api.stripe.com"], []), HTTPS, "default/fe:egress[1]")
WILD = FqdnSelector(build_matcher([], ["*.example.com"]), HTTP, "default/fe:egress[2]")
SELS = [STRIPE, WILD]


def never(ep: int, ip: str) -> bool:
    return False


def test_learn_only_matching_names_with_their_ports() -> None:
    c = FqdnCache()
    d = c.learn(1, "API.Stripe.com", [("93.1.1.1", 30)], 100.0, SELS, allow_private=False)
    assert d.added == [FqdnMapEntry(1, "93.1.1.1", HTTPS, 130.0)] and d.removed == []
    assert c.learn(1, "evil.net.", [("6.6.6.6", 30)], 100.0, SELS, allow_private=False).added == []
    assert c.lookup_names(1, "93.1.1.1") == ["api.stripe.com."]
    assert c.lookup_names(2, "93.1.1.1") == []  # per endpoint


def test_ports_merged_across_names_and_selectors() -> None:
    c = FqdnCache()
    both = FqdnSelector(build_matcher([], ["api.*.com"]), HTTP, "r3")
    d = c.learn(1, "api.stripe.com", [("93.1.1.1", 30)], 0.0, [*SELS, both], allow_private=False)
    assert d.added[0].ports == HTTPS | HTTP
    c2 = FqdnCache()
    c2.learn(1, "api.stripe.com", [("93.1.1.1", 30)], 0.0, SELS, allow_private=False)
    d = c2.learn(1, "www.example.com", [("93.1.1.1", 90)], 0.0, SELS, allow_private=False)
    assert d.added == [FqdnMapEntry(1, "93.1.1.1", HTTPS | HTTP, 90.0)]
    assert c2.lookup_names(1, "93.1.1.1") == ["api.stripe.com.", "www.example.com."]


def test_ttl_floor() -> None:
    c = FqdnCache()
    d = c.learn(1, "api.stripe.com", [("93.1.1.1", 0)], 10.0, SELS, allow_private=False, min_ttl=60)
    assert d.added[0].expiry == 70.0
    d = c.learn(1, "api.stripe.com", [("93.1.1.2", 600)], 10.0, SELS, allow_private=False,
                min_ttl=60)
    assert d.added[0].expiry == 610.0


def test_expiry_with_grace_and_in_use_never_expires() -> None:
    c = FqdnCache()
    c.learn(1, "api.stripe.com", [("93.1.1.1", 10), ("93.1.1.2", 10)], 0.0, SELS,
            allow_private=False)
    assert not c.expire(10.0, never, grace_s=5.0)
    assert not c.expire(14.9, never, grace_s=5.0)
    busy = {(1, "93.1.1.2")}
    d = c.expire(15.0, lambda ep, ip: (ep, ip) in busy, grace_s=5.0)
    assert d.removed == [(1, "93.1.1.1")]
    assert c.expired_names(1, "93.1.1.1") == ["api.stripe.com."]
    assert c.expired_names(1, "93.1.1.2") == []  # still allowed (zombie)
    assert not c.expire(1000.0, lambda ep, ip: (ep, ip) in busy, grace_s=5.0)
    busy.clear()
    assert c.expire(1000.0, never, grace_s=5.0).removed == [(1, "93.1.1.2")]
    assert c.ip_count == 0 and c.name_count == 0


def test_due_says_exactly_when_expire_would_ask_in_use() -> None:
    """The agent dumps conntrack (in a thread) only when `due`: it must be true whenever
    expire() would call in_use, and false otherwise."""
    c = FqdnCache()
    assert not c.due(0.0, grace_s=5.0)
    c.learn(1, "api.stripe.com", [("93.1.1.1", 10), ("93.1.1.2", 30)], 0.0, SELS,
            allow_private=False)
    for now, grace in ((0.0, 5.0), (14.9, 5.0), (15.0, 5.0), (34.9, 5.0), (35.0, 5.0),
                       (10.0, 0.0), (9.9, 0.0), (1000.0, 5.0)):
        asked: list[str] = []

        def in_use(ep: int, ip: str, asked: list[str] = asked) -> bool:
            asked.append(ip)
            return True  # keep everything: the cache stays the same for the next round
        due = c.due(now, grace_s=grace)
        c.expire(now, in_use, grace_s=grace)
        assert due == bool(asked), (now, grace, asked)


def test_shared_ip_stays_while_another_name_holds_it() -> None:
    c = FqdnCache()
    c.learn(1, "api.stripe.com", [("93.1.1.1", 10)], 0.0, SELS, allow_private=False)
    c.learn(1, "a.example.com", [("93.1.1.1", 100)], 0.0, SELS, allow_private=False)
    d = c.expire(50.0, never, grace_s=0.0)
    assert d.removed == [] and d.added == [FqdnMapEntry(1, "93.1.1.1", HTTP, 100.0)]


def test_relearn_extends_never_shortens() -> None:
    c = FqdnCache()
    c.learn(1, "api.stripe.com", [("93.1.1.1", 100)], 0.0, SELS, allow_private=False)
    d = c.learn(1, "api.stripe.com", [("93.1.1.1", 5)], 10.0, SELS, allow_private=False)
    assert d.added[0].expiry == 100.0


def test_per_name_cap_evicts_oldest_unused() -> None:
    c = FqdnCache()
    for i in range(4):
        c.learn(1, "api.stripe.com", [(f"93.0.0.{i}", 300)], float(i), SELS,
                allow_private=False, max_ips_per_name=4)
    busy = {(1, "93.0.0.0")}
    d = c.learn(1, "api.stripe.com", [("93.0.0.9", 300)], 10.0, SELS, allow_private=False,
                max_ips_per_name=4, in_use=lambda ep, ip: (ep, ip) in busy)
    assert d.removed == [(1, "93.0.0.1")] and d.evicted == 1  # 93.0.0.0 is oldest but in use
    assert {e.ip for e in c.entries()} == {"93.0.0.0", "93.0.0.2", "93.0.0.3", "93.0.0.9"}


def test_huge_answer_cut_at_cap() -> None:
    c = FqdnCache()
    ips = [(f"93.0.{i // 256}.{i % 256}", 30) for i in range(500)]
    d = c.learn(1, "api.stripe.com", ips, 0.0, SELS, allow_private=False, max_ips_per_name=50)
    assert len(d.added) == 50 and c.ip_count == 50


def test_rotating_ips_keep_working() -> None:
    """8 of 300 IPs per answer, TTL 5 s, a query every second for 10 minutes, cap 50."""
    rng = random.Random(1)
    pool = [f"52.1.{i // 200}.{i % 200}" for i in range(300)]
    c = FqdnCache()
    allowed: dict[str, float] = {}  # what the BPF map holds (ip -> expiry)
    conns: dict[str, float] = {}  # ip -> time the pod's connection closes
    for t in range(600):
        now = float(t)
        answer = rng.sample(pool, 8)

        def in_use(ep: int, ip: str, now: float = now) -> bool:
            return conns.get(ip, -1.0) > now

        d = c.learn(7, "api.stripe.com", [(ip, 5) for ip in answer], now, SELS,
                    allow_private=False, max_ips_per_name=50, in_use=in_use)
        for e in d.added:
            allowed[e.ip] = e.expiry
        for _ep, ip in d.removed:
            del allowed[ip]
        # The pod connects to the first IP of the latest answer: it must be allowed now.
        assert all(ip in allowed for ip in answer)
        conns[answer[0]] = now + rng.choice([1, 3, 30])
        d = c.expire(now + 0.5, in_use, grace_s=0.0)
        for _ep, ip in d.removed:
            del allowed[ip]
        # No open connection ever loses its entry.
        assert all(ip in allowed for ip, end in conns.items() if end > now + 0.5)
        assert c.ip_count <= 50 + sum(1 for end in conns.values() if end > now)
    assert sorted(allowed) == sorted(e.ip for e in c.map_entries())


def test_rebinding_guard() -> None:
    c = FqdnCache()
    bad = [("127.0.0.1", 30), ("10.1.2.3", 30), ("169.254.1.1", 30), ("::ffff:1.2.3.4", 30),
           ("fd00::1", 30), ("fe80::1", 30), ("0.0.0.0", 30), ("not-an-ip", 30)]
    d = c.learn(1, "api.stripe.com", bad, 0.0, SELS, allow_private=False)
    assert d.added == [] and len(d.rejected_ips) == len(bad)
    d = c.learn(1, "api.stripe.com", [("10.1.2.3", 30)], 0.0, SELS, allow_private=True)
    assert [e.ip for e in d.added] == ["10.1.2.3"]
    assert not is_rebinding_address("93.184.216.34") and not is_rebinding_address("2606:4700::1")


def test_all_ports_selector_and_pairs_accepted() -> None:
    c = FqdnCache()
    pair = (build_matcher(["x.io"], []), ALL_PORTS)
    d = c.learn(1, "x.io.", [("93.1.1.1", 1)], 0.0, [FqdnSelector(*pair)], allow_private=False)
    assert d.added[0].ports == ALL_PORTS


def test_persistence_round_trip() -> None:
    c = FqdnCache()
    c.learn(1, "api.stripe.com", [("93.1.1.1", 30), ("2606:4700::1", 60)], 5.0, SELS,
            allow_private=False)
    c.learn(2, "a.example.com", [("93.1.1.1", 90)], 6.0, SELS, allow_private=False)
    blob = json.dumps(c.to_json())
    back = FqdnCache.from_json(json.loads(blob))
    assert back.entries() == c.entries() and back.map_entries() == c.map_entries()
    assert back.lookup_names(1, "93.1.1.1") == ["api.stripe.com."]
    assert back.entries()[0].selectors == frozenset({"default/fe:egress[1]"})


@pytest.mark.parametrize("blob", [[], {"version": 9}, {"version": 1, "entries": [{"ip": "x"}]},
                                  {"version": 1, "entries": [{"endpoint_id": 1, "name": "a",
                                   "ip": "1.1.1.1", "expiry": "soon", "learned": 0,
                                   "ports": [], "selectors": []}]}])
def test_from_json_rejects_garbage(blob: object) -> None:
    with pytest.raises(ConfigError):
        FqdnCache.from_json(blob)  # type: ignore[arg-type]


@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["a.example.com", "api.stripe.com"]),
                          st.integers(1, 20), st.integers(0, 30), st.integers(0, 100)),
                max_size=60))
def test_map_view_matches_deltas(ops: list[tuple[int, str, int, int, int]]) -> None:
    """Applying every delta to a dict gives exactly the cache's own map view."""
    c = FqdnCache()
    view: dict[tuple[int, str], FqdnMapEntry] = {}
    for ep, name, host, ttl, t in sorted(ops, key=lambda o: o[4]):
        d = c.learn(ep, name, [(f"93.0.0.{host}", ttl)], float(t), SELS, allow_private=False,
                    max_ips_per_name=5)
        d2 = c.expire(float(t), lambda e, i: (e + len(i)) % 3 == 0, grace_s=1.0)
        for delta in (d, d2):
            for e in delta.added:
                view[(e.endpoint_id, e.ip)] = e
            for key in delta.removed:
                view.pop(key, None)
    assert sorted(view.values(), key=lambda e: (e.endpoint_id, e.ip)) == c.map_entries()


def test_reselect_revokes_unselected_names_and_takes_new_ports() -> None:
    """A policy change: a name no selector matches any more loses its IPs at once (also
    when another name keeps a shared IP, which keeps only that name's ports); names still
    selected take the new ports; an endpoint that is gone loses everything."""
    c = FqdnCache()
    c.learn(1, "api.stripe.com", [("93.1.1.1", 300)], 0.0, SELS, allow_private=False)
    c.learn(1, "www.example.com", [("93.1.1.2", 300), ("93.1.1.3", 300)], 0.0, SELS,
            allow_private=False)
    c.learn(1, "cdn.example.com", [("93.1.1.1", 300)], 0.0, SELS, allow_private=False)
    c.learn(2, "api.stripe.com", [("93.1.1.9", 300)], 0.0, SELS, allow_private=False)
    assert c.map_entries()[0] == FqdnMapEntry(1, "93.1.1.1", HTTPS | HTTP, 300.0)
    removals = c.removals
    # the STRIPE rule is removed and the wildcard now allows 8080; endpoint 2 is gone
    wild_8080 = FqdnSelector(WILD.matcher, frozenset({(6, 8080, 8080)}), WILD.rule_id)
    d = c.reselect(lambda ep: [wild_8080] if ep == 1 else [])
    assert sorted(d.removed) == [(2, "93.1.1.9")]
    assert sorted(d.added, key=lambda e: e.ip) == [
        FqdnMapEntry(1, ip, frozenset({(6, 8080, 8080)}), 300.0)
        for ip in ("93.1.1.1", "93.1.1.2", "93.1.1.3")]
    assert c.lookup_names(1, "93.1.1.1") == ["cdn.example.com."]  # stripe's claim is gone
    assert c.lookup_names(2, "93.1.1.9") == []
    assert c.removals > removals  # callers that remember "learned" must forget
    # nothing selects anything any more: every entry goes
    d = c.reselect(lambda ep: [])
    assert sorted(d.removed) == [(1, "93.1.1.1"), (1, "93.1.1.2"), (1, "93.1.1.3")]
    assert c.map_entries() == [] and d.added == []
    # unchanged policy: no map change at all
    c.learn(1, "api.stripe.com", [("93.1.1.1", 300)], 0.0, SELS, allow_private=False)
    assert not c.reselect(lambda ep: SELS)
