"""`l7gate policy validate|trace` end to end through `agent.cli.main`, incl. the README example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main

EXAMPLES = Path(__file__).parents[3] / "examples"
POLICIES = ["--policy", str(EXAMPLES / "frontend-egress.yaml"), str(EXAMPLES / "my-api-l7.yaml")]
FRONTEND = ["--src-namespace", "default", "--src-labels", "role=frontend"]
MY_API = ["--dst-labels", "app=my-api"]


def run_trace(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    rc = main(["policy", "trace", *POLICIES, *args])
    out = capsys.readouterr().out
    assert rc == 0
    result: dict[str, Any] = json.loads(out)
    return result


# --- the README example ----------------------------------------------------------------------


def test_frontend_get_api_users_is_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_trace(capsys, *FRONTEND, *MY_API, "--dport", "8080",
                    "--http-method", "GET", "--http-path", "/api/users")
    assert out["verdict"] == "allowed"
    assert out["egress"]["rule"] == "default/frontend-egress:egress[2]"
    assert out["ingress"]["l4"] == "REDIRECT_HTTP"
    assert out["ingress"]["l7"]["rule"] == "default/my-api-l7:ingress[0]"
    assert out["ingress"]["rule_ref"] == {"namespace": "default", "policy": "my-api-l7",
                                          "spec": None, "section": "ingress", "index": 0}
    assert out["egress"]["enforced"] and out["ingress"]["enforced"]


def test_frontend_post_is_denied_at_ingress_l7(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_trace(capsys, *FRONTEND, *MY_API, "--dport", "8080",
                    "--http-method", "POST", "--http-path", "/api/users")
    assert out["verdict"] == "denied"
    assert out["decided_by"] == {"direction": "ingress", "rule": "default/my-api-l7:ingress[0]"}
    assert out["ingress"]["l7"]["verdict"] == "denied"


def test_other_pod_is_denied(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_trace(capsys, "--src-labels", "app=other", *MY_API, "--dport", "8080",
                    "--http-method", "GET", "--http-path", "/api/users")
    assert out["verdict"] == "denied"
    assert out["egress"]["enforced"] is False and out["egress"]["verdict"] == "allowed"
    assert out["ingress"]["rule"] == "default-deny" and out["ingress"]["rule_ref"] is None
    assert out["ingress"]["reason"] == "POLICY_DENIED"


@pytest.mark.parametrize(("fqdn", "verdict"), [("api.stripe.com", "allowed"),
                                               ("evil.example.net", "denied"),
                                               ("x.internal.example.com", "allowed")])
def test_frontend_egress_to_learned_ips(capsys: pytest.CaptureFixture[str], fqdn: str,
                                        verdict: str) -> None:
    out = run_trace(capsys, *FRONTEND, "--dst-ip", "203.0.113.7", "--dst-fqdn", fqdn,
                    "--dport", "443")
    assert out["verdict"] == verdict
    assert out["ingress"]["enforced"] is False  # an outside IP has no ingress policy here


def test_dns_queries_to_kube_dns_are_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_trace(capsys, *FRONTEND, "--dst-namespace", "kube-system", "--dst-labels",
                    "k8s-app=kube-dns", "--dport", "53", "--protocol", "UDP",
                    "--dns-query", "api.stripe.com")
    assert out["verdict"] == "allowed"
    assert out["egress"]["l4"] == "REDIRECT_DNS"
    assert out["egress"]["l7"] == {"type": "dns", "evaluated": True, "verdict": "allowed",
                                   "rule": "default/frontend-egress:egress[0]", "reason": None}


def test_entity_source_and_host_header(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_trace(capsys, "--src-entity", "world", *MY_API, "--dport", "8080",
                    "--http-header", "X-A: b")
    assert out["verdict"] == "denied" and out["source"]["identity"] == 2


# --- unusable input: exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    [*FRONTEND, "--dport", "8080"],  # no destination
    [*FRONTEND, "--src-ip", "1.2.3.4", *MY_API, "--dport", "8080"],  # two sources
    [*FRONTEND, "--dst-ip", "1.2.3", "--dport", "80"],
    [*FRONTEND, "--dst-ip", "1.2.3.4", "--dport", "70000"],
    ["--src-labels", "role", *MY_API, "--dport", "80"],
    ["--src-entity", "moon", *MY_API, "--dport", "80"],
    [*FRONTEND, *MY_API, "--dst-fqdn", "a.com", "--dport", "80"],
    [*FRONTEND, *MY_API, "--dport", "80", "--http-header", "nocolon"],
])
def test_unusable_trace_input_exits_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(["policy", "trace", *POLICIES, *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "l7gate policy trace:" in captured.err


def test_trace_with_invalid_policy_exits_2(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [")
    assert main(["policy", "trace", "--policy", str(bad), *FRONTEND, *MY_API,
                 "--dport", "80"]) == 2
    assert f"{bad}:1:" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["policy", "trace", *POLICIES, *FRONTEND, *MY_API, "--dport", "x"])
    assert info.value.code == 2
    capsys.readouterr()


# --- validate --------------------------------------------------------------------------------


def test_validate_examples_ok_with_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", *POLICIES[1:]]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{EXAMPLES / 'my-api-l7.yaml'}:15: warning: " in captured.err


def test_validate_strict_turns_the_warning_into_an_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", "--strict", *POLICIES[1:]]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{EXAMPLES / 'my-api-l7.yaml'}:15: ")


def test_validate_reports_every_error_as_file_line(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n"
                   "spec:\n  endpointSelector: {}\n  ingress:\n    - toPorts:\n"
                   "        - ports: [{port: '80', endPort: 10}]\n"
                   "  egress:\n    - toCIDR: [nope]\n")
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("a: b\n  c: d\n")
    assert main(["policy", "validate", str(bad), str(syntax),
                 str(EXAMPLES / "frontend-egress.yaml")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith(f"{syntax}:2: YAML syntax error: mapping values are not allowed")
    assert lines[:2] == [
        f"{bad}:8: spec.ingress[0].toPorts[0].ports[0].endPort: endPort 10 is lower than port 80",
        f"{bad}:10: spec.egress[0].toCIDR[0]: invalid CIDR 'nope'",
    ]


def test_validate_accepts_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(EXAMPLES)]) == 0
    assert "ok: " in capsys.readouterr().err


@pytest.mark.parametrize(("rule_id", "ref"), [
    ("c:specs[1].egressDeny[3]", {"namespace": None, "policy": "c", "spec": 1,
                                  "section": "egressDeny", "index": 3}),
    ("allow-localhost", None), (None, None),
])
def test_rule_ref(rule_id: str | None, ref: dict[str, Any] | None) -> None:
    from policy.engine import rule_ref
    assert rule_ref(rule_id) == ref
