"""ClusterState.decide_http's memos (HttpDecider per connection pair, verdicts per request)
against the unmemoized evaluation they replace: http_plan's sides, each decided by
engine.decide_http, the first denial winning. Header rules widen the memo key, so the
policy here reads headers (presence, exact value, headerMatches with and without mismatch)."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.daemon import AgentConfig, read_cluster_state
from agent.state import (
    HTTP_VERDICT_CACHE_MAX,
    HTTP_VERDICT_KEY_MAX,
    NO_REDIRECT_RULE,
    ClusterState,
)
from policy.engine import decide_http
from policy.types import Decision, Direction, DropReason, HttpRequestMeta, Verdict
from tests.unit.agent.conftest import ENDPOINTS, ROOT

HEADER_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: headers, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: my-api}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: frontend}}]
      toPorts:
        - ports: [{port: "9090"}]
          rules:
            http:
              - {method: PUT, headers: ["X-My-Header: true"]}
              - {method: DELETE, headers: ["X-Token"]}
              - {method: GET, path: "/v1/.*", host: "api\\\\.example\\\\.com"}
              - method: OPTIONS
                headerMatches: [{name: X-Must, value: "yes"}]
              - method: PATCH
                headerMatches: [{name: X-Log, value: "yes", mismatch: LOG}]
"""
FRONTEND, OTHER, MY_API = "10.244.1.10", "10.244.1.11", "10.244.2.10"


def state(cfg: AgentConfig) -> ClusterState:
    (Path(cfg.policy_dir) / "headers.yaml").write_text(HEADER_POLICY)
    st_, _ = read_cluster_state(cfg, 1)
    return st_


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> ClusterState:
    """One state for the property test (hypothesis takes no function-scoped fixture)."""
    tmp = tmp_path_factory.mktemp("decider")
    (tmp / "endpoints.yaml").write_text(ENDPOINTS)
    (tmp / "policies").mkdir()
    for f in ("my-api-l7.yaml", "frontend-egress.yaml"):
        (tmp / "policies" / f).write_text((ROOT / "examples" / f).read_text())
    return state(AgentConfig(node_name="node2", endpoints=str(tmp / "endpoints.yaml"),
                             policy_dir=str(tmp / "policies"), state_dir=str(tmp / "state"),
                             enable_datapath=False))


def reference(st_: ClusterState, src: str, dst: str, port: int,
              meta: HttpRequestMeta) -> tuple[Verdict, Direction]:
    """The evaluation the memos replace (agent/state.py before them)."""
    plan = st_.http_plan(src, dst, port)
    if not plan:
        src_local = st_.local_endpoint_str(src) is not None
        return (Verdict(Decision.DENIED, NO_REDIRECT_RULE, DropReason.POLICY_DENIED),
                Direction.EGRESS if src_local else Direction.INGRESS)
    result = None
    for direction, local, peer in plan:
        verdict = decide_http(st_.snapshot, direction, local, peer, port, meta)
        result = (verdict, direction)
        if not verdict.is_allowed:
            break
    assert result is not None
    return result


METHODS = ["GET", "PUT", "DELETE", "OPTIONS", "PATCH", "POST", "get"]
PATHS = ["/", "/v1/", "/v1/x", "/api/users", "/admin", "/api/"]
HOSTS = ["", "api.example.com", "api.example.com:8080", "x"]
HEADERS = [("x-my-header", "true"), ("x-my-header", "True"), ("x-token", "t"),
           ("x-must", "yes"), ("x-must", "no"), ("x-log", "no"), ("accept", "*/*"),
           ("user-agent", "curl")]
PAIRS = [(FRONTEND, MY_API, 9090), (FRONTEND, MY_API, 8080), (OTHER, MY_API, 9090),
         (OTHER, MY_API, 8080), (FRONTEND, OTHER, 8080)]


@given(st.lists(st.tuples(st.sampled_from(PAIRS), st.sampled_from(METHODS),
                          st.sampled_from(PATHS), st.sampled_from(HOSTS),
                          st.lists(st.sampled_from(HEADERS), max_size=3)),
                min_size=1, max_size=12))
def test_memoized_verdicts_equal_a_fresh_evaluation(
        shared: ClusterState,
        requests: list[tuple[tuple[str, str, int], str, str, str, list[tuple[str, str]]]]
) -> None:
    for (src, dst, port), method, path, host, headers in requests:
        meta = HttpRequestMeta(method, path, host, tuple(headers))
        want = reference(shared, src, dst, port, meta)
        assert shared.decide_http(src, dst, port, meta) == want  # fills the memo
        assert shared.decide_http(A(src), A(dst), port, meta) == want  # reads it


def test_only_headers_the_rules_read_widen_the_key(cfg: AgentConfig) -> None:
    st_ = state(cfg)
    put = HttpRequestMeta("PUT", "/", "h", (("x-my-header", "true"), ("accept", "a")))
    assert st_.decide_http(FRONTEND, MY_API, 9090, put)[0].is_allowed
    # an unread header differs: same entry; a read header differs: its own, denied, entry
    other_accept = HttpRequestMeta("PUT", "/", "h", (("x-my-header", "true"), ("accept", "b")))
    assert st_.decide_http(FRONTEND, MY_API, 9090, other_accept)[0].is_allowed
    assert len(st_._http_verdicts) == 1
    wrong = HttpRequestMeta("PUT", "/", "h", (("x-my-header", "True"), ("accept", "a")))
    assert not st_.decide_http(FRONTEND, MY_API, 9090, wrong)[0].is_allowed
    assert len(st_._http_verdicts) == 2
    decider = st_.http_decider(FRONTEND, MY_API, 9090)
    assert decider.headers == {"x-my-header", "x-token", "x-must", "x-log"}
    # the README's rule reads no header: its key is method, path and host only
    assert st_.http_decider(FRONTEND, MY_API, 8080).headers == frozenset()


def test_fixed_answers_skip_the_memo(cfg: AgentConfig) -> None:
    st_ = state(cfg)
    meta = HttpRequestMeta("GET", "/api/users", "x")
    # no local side redirects other -> frontend on 8080 here (node2): denied, fail closed
    verdict, direction = st_.decide_http(OTHER, FRONTEND, 8080, meta)
    assert not verdict.is_allowed and direction is Direction.INGRESS
    assert st_.http_decider(OTHER, FRONTEND, 8080).fixed == (verdict, direction)
    assert not st_._http_verdicts


def test_verdict_memo_stays_bounded_and_skips_long_requests(cfg: AgentConfig) -> None:
    st_ = state(cfg)
    long_path = "/api/" + "a" * HTTP_VERDICT_KEY_MAX
    assert st_.decide_http(FRONTEND, MY_API, 8080, HttpRequestMeta("GET", long_path, "h")
                           )[0].is_allowed
    assert not st_._http_verdicts
    for i in range(HTTP_VERDICT_CACHE_MAX + 10):
        meta = HttpRequestMeta("GET", f"/api/{i}" if i % 2 else f"/x/{i}", "h")
        assert st_.decide_http(FRONTEND, MY_API, 8080, meta)[0].is_allowed == bool(i % 2)
        assert len(st_._http_verdicts) <= HTTP_VERDICT_CACHE_MAX
