"""The HTTP proxy's per-connection decide (Agent.http_decide_for) answers every request
exactly as Agent.decide_http does, for local and remote sources, every destination and
port of the README cluster, with and without learned toFQDNs names. The proxy passes its
prepared request (the policy's HttpRequestView), so every request is decided both as that
and as the HttpRequestMeta with the same fields."""

from __future__ import annotations

import itertools
from pathlib import Path

from agent.daemon import Agent
from policy.types import HttpRequestMeta
from proxy.http.actions import ConnInfo
from proxy.http.request import BodyKind, PreparedRequest
from tests.unit.agent.conftest import agent_config

SOURCES = ["10.244.1.10", "10.244.1.11", "10.244.2.10", "10.244.1.53", "203.0.113.5"]
DESTS = ["10.244.2.10", "10.244.1.10", "10.244.1.53", "203.0.113.10", "198.51.100.7"]
PORTS = [8080, 80, 443, 53, 9090]
METHODS = ["GET", "POST", "HEAD", "DELETE"]
# /v1/...: conftest FRONTEND_EGRESS_L7
PATHS = ["/api/users", "/api/", "/admin", "/", "/api/users/1?x=y", "/v1/charges"]
HOSTS = ["my-api", "api.stripe.com", "10.244.2.10:8080", "db.internal.example.com"]
HEADERS = [(), (("x-debug", "1"),), (("user-agent", "curl"), ("x-request-id", "7"))]

KINDS: set[str] = set()  # which kinds of per-connection decide the checks went through


def request(method: str, path: str, host: str,
            headers: tuple[tuple[str, str], ...]) -> PreparedRequest:
    """What the HTTP proxy hands to decide for such a request."""
    return PreparedRequest(method, "1.1", "HTTP/1.1", path, host, headers,
                           f"http://{host}{path}", b"", BodyKind.NONE, 0, True, False, None,
                           False)


def _check_all(agent: Agent) -> int:
    """Every connection of SOURCES x DESTS x PORTS, every request shape on each; returns how
    many were allowed (so a test can tell it saw both answers)."""
    allowed = 0
    shapes = list(itertools.product(METHODS, PATHS, HOSTS, HEADERS))
    for src, dst, port in itertools.product(SOURCES, DESTS, PORTS):
        conn = ConnInfo(src, 40000, dst, port, agent.current())
        decide = agent.http_decide_for(conn)  # once, at accept
        KINDS.add(decide.__name__)
        for method, path, host, headers in shapes:
            fields = (("host", host), *headers)
            meta = HttpRequestMeta(method, path, host, fields)
            got = decide(conn, request(method, path, host, fields))
            assert got == agent.decide_http(conn, meta), (src, dst, port, method, path)
            assert decide(conn, meta) == got
            allowed += got.is_allowed
    return allowed


def test_without_fqdn_names(cfg_agent: Agent) -> None:
    KINDS.clear()
    assert _check_all(cfg_agent) > 0
    # a fixed answer and rules on method/path/host only (the memo looked up inline): both
    # kinds of decide were compared with decide_http above (rules that read headers: below)
    assert {"decide_fixed", "decide_plain"} <= KINDS, KINDS


def test_with_learned_names(fqdn_agent: Agent) -> None:
    assert _check_all(fqdn_agent) > 0


def test_a_local_source_with_names_is_decided_per_request(fqdn_agent: Agent) -> None:
    """Names can change while the connection lives: its decide is decide_http itself."""
    conn = ConnInfo("10.244.1.10", 1, "203.0.113.10", 443, fqdn_agent.current())
    assert fqdn_agent.http_decide_for(conn) == fqdn_agent.decide_http
    inbound = ConnInfo("10.244.2.10", 1, "10.244.1.10", 8080, fqdn_agent.current())
    assert fqdn_agent.http_decide_for(inbound) != fqdn_agent.decide_http  # remote source


def test_readme_example_through_the_connection_decide(cfg_agent: Agent) -> None:
    conn = ConnInfo("10.244.1.10", 40000, "10.244.2.10", 8080, cfg_agent.current())
    decide = cfg_agent.http_decide_for(conn)
    assert decide != cfg_agent.decide_http  # a remote source: resolved once
    host = (("host", "my-api"),)
    assert decide(conn, request("GET", "/api/users", "my-api", host)).is_allowed
    assert not decide(conn, request("POST", "/api/users", "my-api", host)).is_allowed
    assert not decide(conn, request("GET", "/admin", "my-api", host)).is_allowed


# my-api also takes requests that carry X-Debug: 1 on 9090 (a rule that reads a header)
HEADER_RULE = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: my-api-debug, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: my-api}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/api/.*", headers: ["X-Debug: 1"]}]
"""


def test_rules_that_read_headers(tmp_path: Path) -> None:
    agent = Agent(agent_config(tmp_path, "node2", my_api_debug=HEADER_RULE))
    agent.prepare()
    KINDS.clear()
    assert _check_all(agent) > 0
    assert "decide" in KINDS, KINDS
    conn = ConnInfo("10.244.1.10", 40000, "10.244.2.10", 9090, agent.current())
    decide = agent.http_decide_for(conn)
    debug = (("host", "my-api"), ("x-debug", "1"))
    assert decide(conn, request("GET", "/api/users", "my-api", debug)).is_allowed
    assert not decide(conn, request("GET", "/api/users", "my-api", debug[:1])).is_allowed
