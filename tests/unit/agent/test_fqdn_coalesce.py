"""FqdnOwner coalesces an answer identical to one learned under a second ago, and only then:
a new IP, a longer TTL, a removal from the cache, a reload or an older answer learn again."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.daemon import AgentConfig, read_cluster_state
from agent.fqdnowner import REFRESH_COALESCE_S, FqdnOwner
from agent.state import ClusterState

FRONTEND = "10.244.1.10"
NAME = "x.internal.example.com"  # matches frontend's toFQDNs pattern *.internal.example.com
IP1, IP2 = "203.0.113.11", "203.0.113.12"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


Owner = tuple[FqdnOwner, Clock, list[ClusterState]]


@pytest.fixture
def owner(cfg: AgentConfig, tmp_path: Path) -> Owner:
    cfg.node_name = "node1"
    st, _ = read_cluster_state(cfg, 1)
    states = [st]
    clock = Clock()
    (tmp_path / "fqdn-state").mkdir()
    fo = FqdnOwner(None, str(tmp_path / "fqdn-state"), state=lambda: states[-1],
                   allow_private=True, clock=clock)
    return fo, clock, states


def _endpoint_id(fo: FqdnOwner) -> int:
    st = fo._recent_state
    assert st is not None
    ep = st.local_endpoint_str(FRONTEND)
    assert ep is not None
    return ep.endpoint_id


def _expiry(fo: FqdnOwner, ip: str) -> float:
    return fo.cache._agg[(_endpoint_id(fo), ip)].expiry


def test_identical_answer_within_the_window_is_coalesced(owner: Owner) -> None:
    fo, clock, _ = owner
    assert fo.learn(FRONTEND, NAME, [(IP1, 60)]) == 1
    first = _expiry(fo, IP1)
    clock.t += REFRESH_COALESCE_S / 2
    assert fo.learn(FRONTEND, NAME, [(IP1, 60)]) == 0
    assert fo.coalesced_total == 1
    assert _expiry(fo, IP1) == first  # not refreshed: at most REFRESH_COALESCE_S behind
    clock.t += REFRESH_COALESCE_S  # the window has passed: learned (refreshed) again
    assert fo.learn(FRONTEND, NAME, [(IP1, 60)]) == 1
    assert _expiry(fo, IP1) == clock.t + 60 and fo.coalesced_total == 1


@pytest.mark.parametrize("answer", [
    [(IP1, 60), (IP2, 60)],  # a new IP
    [(IP2, 60)],  # another IP set
    [(IP1, 600)],  # a longer TTL than the one granted
])
def test_a_different_answer_is_learned(owner: Owner, answer: list[tuple[str, int]]) -> None:
    fo, clock, _ = owner
    fo.learn(FRONTEND, NAME, [(IP1, 60)])
    clock.t += 0.1
    assert fo.learn(FRONTEND, NAME, answer) == len(answer)
    assert fo.coalesced_total == 0
    for ip, ttl in answer:
        assert _expiry(fo, ip) == clock.t + ttl


def test_a_removal_since_forbids_coalescing(owner: Owner) -> None:
    fo, clock, _ = owner
    fo.learn(FRONTEND, NAME, [(IP1, 1)])
    clock.t += 0.5
    fo.cache.expire(clock.t + 100, lambda _e, _i: False, 0.0)  # IP1 leaves the cache
    assert fo.cache.lookup_names(_endpoint_id(fo), IP1) == []
    assert fo.learn(FRONTEND, NAME, [(IP1, 1)]) == 1  # must come back at once
    assert fo.coalesced_total == 0


def test_a_reload_forbids_coalescing(owner: Owner, cfg: AgentConfig) -> None:
    fo, clock, states = owner
    fo.learn(FRONTEND, NAME, [(IP1, 60)])
    states.append(read_cluster_state(cfg, 2)[0])
    clock.t += 0.1
    assert fo.learn(FRONTEND, NAME, [(IP1, 60)]) == 1
    assert fo.coalesced_total == 0


def test_no_coalescing_without_a_grace_period_to_cover_it(owner: Owner) -> None:
    fo, clock, _ = owner
    fo.grace_s = 0.0
    fo.learn(FRONTEND, NAME, [(IP1, 60)])
    clock.t += 0.1
    assert fo.learn(FRONTEND, NAME, [(IP1, 60)]) == 1
    assert fo.coalesced_total == 0


def test_a_failed_map_write_is_not_remembered(owner: Owner,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """If the datapath write fails, the next identical answer must try again at once."""
    fo, clock, _ = owner
    real_apply = fo._apply

    def failing(*_args: object, **_kwargs: object) -> bool:
        raise OSError("map full")

    monkeypatch.setattr(fo, "_apply", failing)
    with pytest.raises(OSError):
        fo.learn(FRONTEND, NAME, [(IP1, 60)])
    monkeypatch.setattr(fo, "_apply", real_apply)
    clock.t += 0.1
    assert fo.learn(FRONTEND, NAME, [(IP1, 60)]) == 1
    assert fo.coalesced_total == 0


def test_reload_that_drops_a_name_revokes_its_ips_at_once(owner: Owner,
                                                           cfg: AgentConfig) -> None:
    """frontend may reach api.stripe.com and *.internal.example.com on 443; a reload that
    keeps only the pattern, on 8443, must take api.stripe.com's IP out now (not after its
    TTL) and move the other to 8443."""
    fo, clock, states = owner
    assert fo.learn(FRONTEND, "api.stripe.com", [("203.0.113.10", 300)]) == 1
    assert fo.learn(FRONTEND, NAME, [(IP1, 300)]) == 1
    policy = Path(cfg.policy_dir) / "frontend-egress.yaml"
    policy.write_text(policy.read_text().replace("        - matchName: api.stripe.com\n", "")
                      .replace('- ports: [{port: "443"}]', '- ports: [{port: "8443"}]'))
    states.append(read_cluster_state(cfg, 2)[0])
    fo.reapply()
    ep = _endpoint_id(fo)
    assert fo.cache.lookup_names(ep, "203.0.113.10") == []
    assert [(e.ip, sorted(e.ports)) for e in fo.cache.map_entries()] == [
        (IP1, [(0, 8443, 8443)])]  # no protocol given: any
    # the coalescing memo does not bring the revoked name back
    clock.t += 0.1
    assert fo.learn(FRONTEND, "api.stripe.com", [("203.0.113.10", 300)]) == 0
    assert fo.cache.lookup_names(ep, "203.0.113.10") == []
