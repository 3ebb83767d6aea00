"""Loader and validator: accepted forms, every rejection with its exact FILE:LINE and field.

Rejection reasons follow Cilium's `pkg/policy/api/rule_validation.go` and the CRD schema
(docs: https://docs.cilium.io/en/latest/security/policy/language/ , .../layer4/ , .../layer7/,
.../deny/); l7gate also rejects the fields it does not enforce (policy-semantics.md §10).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from policy_helpers import errors, load

from policy.compile import compile_from_paths
from policy.errors import PolicyError
from policy.load import load_directory, load_documents
from policy.types import Proto

HEAD = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p
  namespace: default
spec:
  endpointSelector:
    matchLabels: {app: a}
"""  # 8 lines: the rule under test starts at line 9


def _one(text: str) -> tuple[int, str, str]:
    errs = errors(text)
    assert len(errs) == 1, [str(e) for e in errs]
    return errs[0].line, errs[0].field, errs[0].message


INVALID = [
    # (id, body after HEAD, line, field, message fragment)
    ("unknown-field", "  ingres:\n    - {}\n", 9, "spec.ingres", "unknown field"),
    ("wrong-type-ingress", "  ingress: {a: b}\n", 9, "spec.ingress", "must be a list"),
    ("bad-regex", "  ingress:\n    - toPorts:\n        - ports: [{port: '80', protocol: TCP}]\n"
     "          rules:\n            http:\n              - path: '/a('\n",
     14, "spec.ingress[0].toPorts[0].rules.http[0].path", "invalid regular expression"),
    ("port-out-of-range", "  ingress:\n    - toPorts:\n        - ports:\n"
     "            - port: '70000'\n", 12, "spec.ingress[0].toPorts[0].ports[0].port",
     "out of range"),
    ("endport-lower", "  egress:\n    - toPorts:\n        - ports:\n            - port: '90'\n"
     "              endPort: 80\n", 13, "spec.egress[0].toPorts[0].ports[0].endPort",
     "lower than port"),
    ("unknown-protocol", "  egress:\n    - toPorts:\n        - ports:\n            - port: '80'\n"
     "              protocol: tcp\n", 13, "spec.egress[0].toPorts[0].ports[0].protocol",
     "unknown protocol"),
    ("bad-operator", "  ingress:\n    - fromEndpoints:\n        - matchExpressions:\n"
     "            - {key: app, operator: in, values: [x]}\n", 12,
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator", "invalid operator"),
    ("exists-with-values", "  ingress:\n    - fromEndpoints:\n        - matchExpressions:\n"
     "            - {key: app, operator: Exists, values: [x]}\n", 12,
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values", "takes no values"),
    ("in-without-values", "  ingress:\n    - fromEndpoints:\n        - matchExpressions:\n"
     "            - {key: app, operator: In}\n", 12,
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values", "at least one value"),
    ("label-value-int", "  ingress:\n    - fromEndpoints:\n        - matchLabels:\n"
     "            version: 1\n", 12, "spec.ingress[0].fromEndpoints[0].matchLabels.version",
     "must be a string"),
    ("l3-combination", "  ingress:\n    - fromEndpoints: [{}]\n      fromCIDR: [10.0.0.0/8]\n",
     10, "spec.ingress[0]", "combining fromEndpoints and fromCIDR"),
    ("dns-on-ingress",
     "  ingress:\n    - toPorts:\n        - ports: [{port: '53', protocol: UDP}]\n"
     "          rules:\n            dns:\n              - matchName: a.com\n", 13,
     "spec.ingress[0].toPorts[0].rules.dns", "not allowed on ingress"),
    ("l7-on-port-0", "  ingress:\n    - toPorts:\n        - ports: [{port: '0', protocol: TCP}]\n"
     "          rules:\n            http: [{method: GET}]\n", 11,
     "spec.ingress[0].toPorts[0].ports[0].port", "port 0"),
    ("l7-on-udp", "  ingress:\n    - toPorts:\n        - ports: [{port: '80', protocol: UDP}]\n"
     "          rules:\n            http: [{method: GET}]\n", 11,
     "spec.ingress[0].toPorts[0].ports[0].protocol", "can only apply to TCP (not UDP)"),
    ("l7-explicit-any",
     "  ingress:\n    - toPorts:\n        - ports: [{port: '80', protocol: ANY}]\n"
     "          rules:\n            http: [{method: GET}]\n", 11,
     "spec.ingress[0].toPorts[0].ports[0].protocol", "can only apply to TCP (not ANY)"),
    ("dns-range", "  egress:\n    - toPorts:\n        - ports: [{port: '53', endPort: 54}]\n"
     "          rules:\n            dns: [{matchPattern: '*'}]\n", 11,
     "spec.egress[0].toPorts[0].ports[0].endPort", "port ranges"),
    ("dns-port-0", "  egress:\n    - toPorts:\n        - ports: [{port: '0'}]\n"
     "          rules:\n            dns: [{matchPattern: '*'}]\n", 11,
     "spec.egress[0].toPorts[0].ports[0].port", "port 0"),
    ("two-l7-kinds", "  egress:\n    - toPorts:\n        - ports: [{port: '53', protocol: TCP}]\n"
     "          rules:\n            dns: [{matchPattern: '*'}]\n            http: [{}]\n", 13,
     "spec.egress[0].toPorts[0].rules", "multiple L7 protocol rule types"),
    ("too-many-ports", "  egress:\n    - toPorts:\n        - ports: ["
     + ", ".join(f"{{port: '{p}'}}" for p in range(1, 42)) + "]\n", 11,
     "spec.egress[0].toPorts[0].ports", "max is 40"),
    ("unknown-entity", "  egress:\n    - toEntities: [wrld]\n", 10, "spec.egress[0].toEntities[0]",
     "unknown entity"),
    ("except-outside", "  egress:\n    - toCIDRSet:\n        - cidr: 10.0.0.0/8\n"
     "          except: [192.168.0.0/16]\n", 12, "spec.egress[0].toCIDRSet[0].except[0]",
     "not contained"),
    ("bad-cidr", "  egress:\n    - toCIDR: [10.0.0.300/8]\n", 10, "spec.egress[0].toCIDR[0]",
     "invalid CIDR"),
    ("fqdn-both",
     "  egress:\n    - toFQDNs:\n        - {matchName: a.com, matchPattern: '*.a.com'}\n",
     11, "spec.egress[0].toFQDNs[0]", "exactly one"),
    ("fqdn-bad-pattern", "  egress:\n    - toFQDNs:\n        - matchPattern: 'a/b'\n", 11,
     "spec.egress[0].toFQDNs[0].matchPattern", "invalid matchPattern"),
    ("deny-l7", "  ingressDeny:\n    - toPorts:\n        - ports: [{port: '80', protocol: TCP}]\n"
     "          rules: {http: [{}]}\n", 12, "spec.ingressDeny[0].toPorts[0].rules",
     "not supported in deny rules"),
    ("deny-fqdn", "  egressDeny:\n    - toFQDNs: [{matchName: a.com}]\n", 10,
     "spec.egressDeny[0].toFQDNs", "not supported in deny rules"),
    ("secret", "  ingress:\n    - toPorts:\n        - ports: [{port: '80', protocol: TCP}]\n"
     "          rules:\n            http:\n              - headerMatches:\n"
     "                  - name: x\n                    secret: {name: s}\n", 16,
     "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret", "secret"),
    ("bad-mismatch", "  ingress:\n    - toPorts:\n        - ports: [{port: '80', protocol: TCP}]\n"
     "          rules:\n            http:\n              - headerMatches:\n"
     "                  - {name: x, value: y, mismatch: DROP}\n", 15,
     "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch", "unknown mismatch"),
    ("unsupported-toServices", "  egress:\n    - toServices: [{k8sService: {serviceName: a}}]\n",
     10, "spec.egress[0].toServices", "not supported by l7gate"),
    ("unsupported-kafka",
     "  ingress:\n    - toPorts:\n        - ports: [{port: '9092', protocol: TCP}]\n"
     "          rules: {kafka: [{topic: a}]}\n", 12, "spec.ingress[0].toPorts[0].rules.kafka",
     "not supported by l7gate"),
    ("bad-port-name", "  egress:\n    - toPorts:\n        - ports: [{port: 'no_such!'}]\n", 11,
     "spec.egress[0].toPorts[0].ports[0].port", "invalid port"),
    ("enable-default-deny-type", "  enableDefaultDeny: {ingress: 'no'}\n", 9,
     "spec.enableDefaultDeny.ingress", "true or false"),
]


@pytest.mark.parametrize(("body", "line", "field", "fragment"),
                         [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_document_is_reported_at_its_line(body: str, line: int, field: str,
                                                  fragment: str) -> None:
    got_line, got_field, message = _one(HEAD + body)
    assert (got_line, got_field) == (line, field), message
    assert fragment in message


@pytest.mark.parametrize("text,line,fragment", [
    ("a: [1\n", 2, "YAML syntax error"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", 2, "unsupported kind"),
    ("apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: "
     "{endpointSelector: {}}\n", 1, "unsupported 'cilium.io/v1'"),
    ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {namespace: x}\nspec: "
     "{endpointSelector: {}}\n", 3, "required"),
    ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\n", 1,
     "neither spec nor specs"),
    ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {}\n", 4,
     "endpointSelector"),
    ("apiVersion: cilium.io/v2\napiVersion: cilium.io/v2\n", 2, "duplicate key"),
    ("- 1\n- 2\n", 1, "must be a mapping"),
    ("a: !!python/object:os.system x\n", 1, "unsupported YAML tag"),
])
def test_document_level_errors(text: str, line: int, fragment: str) -> None:
    errs = errors(text)
    assert errs and errs[0].line == line and fragment in str(errs[0]), [str(e) for e in errs]


def test_a_file_names_every_error_and_contributes_no_policy() -> None:
    text = HEAD + ("  ingress:\n    - toPorts:\n        - ports: [{port: '99999'}]\n"
                   "    - fromEntities: [nope]\n  egress:\n    - toCIDR: [bad]\n")
    result = load(text)
    assert [(p.line, p.field) for p in result.errors] == [
        (11, "spec.ingress[0].toPorts[0].ports[0].port"),
        (12, "spec.ingress[1].fromEntities[0]"),
        (14, "spec.egress[0].toCIDR[0]"),
    ]
    assert result.policies == []


def test_one_bad_document_rejects_the_whole_file() -> None:
    good = HEAD + "  ingress: [{fromEndpoints: [{}]}]\n"
    bad = HEAD.replace("name: p", "name: q") + "  ingress: [{fromEntities: [nope]}]\n"
    result = load(good + "---\n" + bad)
    assert result.policies == [] and len(result.errors) == 1
    assert result.errors[0].line == 19  # second document starts at line 11; its line 9


def test_problem_string_is_file_line_field_message() -> None:
    (problem,) = errors(HEAD + "  ingres: []\n")
    assert str(problem) == "p.yaml:9: spec.ingres: unknown field 'ingres'"


# --- the accepted forms -------------------------------------------------------------------


def test_list_multidoc_specs_and_ccnp_forms() -> None:
    ccnp = ("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\n"
            "specs:\n  - endpointSelector: {}\n    ingress: [{}]\n"
            "  - endpointSelector: {matchLabels: {a: b}}\n    egress: [{}]\n")
    lst = ("apiVersion: v1\nkind: List\nitems:\n"
           "  - apiVersion: cilium.io/v2\n    kind: CiliumNetworkPolicy\n"
           "    metadata: {name: l1, namespace: prod}\n    spec: {endpointSelector: {}}\n"
           "  - apiVersion: cilium.io/v2\n    kind: CiliumNetworkPolicy\n"
           "    metadata: {name: l2}\n    spec: {endpointSelector: {}}\n")
    result = load(HEAD + "---\n" + ccnp + "---\n" + lst + "---\n")
    assert not result.problems
    assert [(d.kind, d.ref, len(d.specs)) for d in result.policies] == [
        ("CiliumNetworkPolicy", "default/p", 1),
        ("CiliumClusterwideNetworkPolicy", "c", 2),
        ("CiliumNetworkPolicy", "prod/l1", 1),
        ("CiliumNetworkPolicy", "default/l2", 1),
    ]
    c = result.policies[1]
    assert c.namespace is None and c.specs[1].egress[0].rule_id == "c:specs[1].egress[0]"


def test_json_file_is_accepted(tmp_path: Path) -> None:
    obj = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "j"},
           "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["nope"]}]}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(obj, indent=2))
    result = load_documents([path])
    assert len(result.errors) == 1 and result.errors[0].line == 12


def test_example_l7_without_protocol_is_tcp_with_warning_and_error_under_strict() -> None:
    # examples/my-api-l7.yaml: Cilium rejects "L7 rules can only apply to TCP"; we accept as TCP.
    path = Path(__file__).parents[3] / "examples" / "my-api-l7.yaml"
    result = load_documents([path])
    assert not result.errors
    (warning,) = result.warnings
    assert warning.line == 15 and "accepted as TCP" in warning.message
    port = result.policies[0].specs[0].ingress[0].port_rules[0].ports[0]  # type: ignore[index]
    assert (port.proto, port.lo, port.hi) == (Proto.TCP, 8080, 8080)
    strict = load_documents([path], strict=True)
    assert strict.policies == [] and strict.errors[0].line == 15


def test_compile_from_paths_raises_policy_error_with_all_problems(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD + "  ingress: [{fromEntities: [x]}]\n")
    (tmp_path / "b.yml").write_text(HEAD + "  egress: [{toCIDR: [x]}]\n")
    (tmp_path / "c.txt").write_text("ignored")
    with pytest.raises(PolicyError) as info:
        compile_from_paths(sorted(tmp_path.glob("*.y*ml")))
    assert [(Path(p.file).name, p.line) for p in info.value.problems] == [("a.yaml", 9),
                                                                         ("b.yml", 9)]
    assert len(load_directory(tmp_path).errors) == 2


@pytest.mark.parametrize("text", [
    "a: &a [*a, *a]\n",  # recursive alias
    "a: &x [1,1,1,1,1,1,1,1,1]\nb: &y [*x,*x,*x,*x,*x,*x,*x,*x,*x]\n"
    "c: &z [*y,*y,*y,*y,*y,*y,*y,*y,*y]\n"
    "d: &w [*z,*z,*z,*z,*z,*z,*z,*z,*z]\ne: &v [*w,*w,*w,*w,*w,*w,*w,*w,*w]\n"
    "f: &u [*v,*v,*v,*v,*v,*v,*v,*v,*v]\n",  # billion laughs
    "[" * 5000,
    "\x00\x01binary",
    "key: 'unterminated\n",
])
def test_hostile_yaml_is_a_problem_not_a_crash(text: str) -> None:
    result = load(text)
    assert result.errors and result.policies == []


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: \xff\n")
    result = load_documents([bad, tmp_path / "missing.yaml"])
    assert [(p.line, p.message.split(":")[0]) for p in result.errors] == [
        (2, "file is not valid UTF-8"), (0, "cannot read")]


@pytest.mark.parametrize("regex", [r"(a)\1", "(?=x)y", "a{1001}", "(?<!x)y"])
def test_regexes_are_re2_not_python(regex: str) -> None:
    # policy-semantics.md §7: RE2 semantics (no back-references, no look-around)
    body = ("  ingress:\n    - toPorts:\n        - ports: [{port: '80', protocol: TCP}]\n"
            f"          rules: {{http: [{{path: '{regex}'}}]}}\n")
    line, field, message = _one(HEAD + body)
    assert (line, field) == (12, "spec.ingress[0].toPorts[0].rules.http[0].path")
    assert "invalid regular expression" in message
