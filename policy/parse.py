"""Field-level validation of one CNP/CCNP object into the frozen model (pure; no I/O here).

Every check names the field path and the line; parsing goes on after an error so a file
reports all of its problems at once. Messages follow Cilium's where Cilium has one
(`pkg/policy/api/rule_validation.go`). Ports, L7 rules and peers are in `policy.parse_l4`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from policy.errors import PolicyProblem
from policy.model import PeerRule, RuleSpec
from policy.selector import Op, Requirement, Selector, endpoint_selector_for, split_key
from policy.types import Direction
from policy.yamlnode import YMap, YNode, YScalar, YSeq

MAX_NAME_CHARS = 253  # Kubernetes object names (RFC 1123 subdomain)


@dataclass(slots=True)
class Ctx:
    """Collects problems for one file."""

    file: str
    strict: bool = False
    fingerprint: str = ""
    problems: list[PolicyProblem] = field(default_factory=list)

    def error(self, line: int, fld: str, message: str) -> None:
        self.problems.append(PolicyProblem(self.file, line, message, fld))

    def warn(self, line: int, fld: str, message: str) -> None:
        """A warning; under --strict it is an error."""
        if self.strict:
            self.problems.append(PolicyProblem(self.file, line, message + " (--strict)", fld))
        else:
            self.problems.append(PolicyProblem(self.file, line, message, fld, warning=True))

    def check_keys(
        self, node: YMap, allowed: set[str], fld: str, unsupported: dict[str, str] | None = None
    ) -> None:
        for key, key_line in node.key_lines.items():
            if key in allowed:
                continue
            path = f"{fld}.{key}" if fld else key
            if unsupported and key in unsupported:
                self.error(key_line, path, unsupported[key])
            else:
                self.error(key_line, path, f"unknown field {key!r}")

    def mapping(self, node: YNode | None, fld: str) -> YMap | None:
        if node is None:
            return None
        if not isinstance(node, YMap):
            self.error(node.line, fld, "must be a mapping")
            return None
        return node

    def seq(self, node: YNode | None, fld: str) -> list[YNode] | None:
        """A list; YAML null counts as absent (omitted)."""
        if node is None or (isinstance(node, YScalar) and node.value is None):
            return None
        if not isinstance(node, YSeq):
            self.error(node.line, fld, "must be a list")
            return None
        return node.items

    def string(self, node: YNode | None, fld: str, *, allow_int: bool = False) -> str | None:
        if node is None:
            return None
        if isinstance(node, YScalar):
            if isinstance(node.value, str):
                return node.value
            if allow_int and isinstance(node.value, int) and not isinstance(node.value, bool):
                return str(node.value)
        self.error(node.line, fld, "must be a string")
        return None

    def boolean(self, node: YNode | None, fld: str) -> bool | None:
        if node is None:
            return None
        if isinstance(node, YScalar) and isinstance(node.value, bool):
            return node.value
        self.error(node.line, fld, "must be true or false")
        return None


def unsupported(*names: str) -> dict[str, str]:
    return {n: f"{n} is not supported by l7gate (policy-semantics.md §10)" for n in names}


# --- selectors ------------------------------------------------------------------------------

_OPS = {op.value: op for op in Op}


def parse_selector(node: YNode, ctx: Ctx, fld: str) -> Selector | None:
    m = ctx.mapping(node, fld)
    if m is None:
        return None
    ctx.check_keys(m, {"matchLabels", "matchExpressions"}, fld)
    reqs: list[Requirement] = []
    ok = True
    labels = m.items.get("matchLabels")
    if labels is not None and not (isinstance(labels, YScalar) and labels.value is None):
        lm = ctx.mapping(labels, f"{fld}.matchLabels")
        ok = lm is not None and ok
        for key, value_node in (lm.items.items() if lm else ()):
            value = ctx.string(value_node, f"{fld}.matchLabels.{key}")
            if value is None or not key:
                ok = False
                continue
            source, k = split_key(key)
            reqs.append(Requirement(source, k, Op.IN, frozenset({value})))
    exprs = ctx.seq(m.items.get("matchExpressions"), f"{fld}.matchExpressions")
    for i, expr in enumerate(exprs or ()):
        req = _expression(expr, ctx, f"{fld}.matchExpressions[{i}]")
        ok = req is not None and ok
        if req is not None:
            reqs.append(req)
    return Selector(tuple(reqs)) if ok else None


def _expression(node: YNode, ctx: Ctx, fld: str) -> Requirement | None:
    m = ctx.mapping(node, fld)
    if m is None:
        return None
    ctx.check_keys(m, {"key", "operator", "values"}, fld)
    key = ctx.string(m.items.get("key"), f"{fld}.key")
    op_text = ctx.string(m.items.get("operator"), f"{fld}.operator")
    if "key" not in m.items or not key:
        ctx.error(m.line, f"{fld}.key", "required")
        return None
    if op_text is None:
        if "operator" not in m.items:
            ctx.error(m.line, f"{fld}.operator", "required")
        return None
    op = _OPS.get(op_text)
    if op is None:
        line = m.key_lines.get("operator", m.line)
        ctx.error(line, f"{fld}.operator",
                  f"invalid operator {op_text!r}; expected In, NotIn, Exists or DoesNotExist")
        return None
    values: list[str] = []
    raw = ctx.seq(m.items.get("values"), f"{fld}.values")
    for j, v in enumerate(raw or ()):
        s = ctx.string(v, f"{fld}.values[{j}]")
        if s is None:
            return None
        values.append(s)
    if op in (Op.IN, Op.NOT_IN) and not values:
        ctx.error(m.line, f"{fld}.values", f"operator {op.value} needs at least one value")
        return None
    if op in (Op.EXISTS, Op.DOES_NOT_EXIST) and values:
        ctx.error(m.line, f"{fld}.values", f"operator {op.value} takes no values")
        return None
    source, k = split_key(key)
    return Requirement(source, k, op, frozenset(values))


# --- the object and its rules -----------------------------------------------------------------

_SPEC_KEYS = {
    "endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels",
    "description", "enableDefaultDeny", "log",
}
_DIRECTIONS = (
    ("ingress", Direction.INGRESS, False),
    ("ingressDeny", Direction.INGRESS, True),
    ("egress", Direction.EGRESS, False),
    ("egressDeny", Direction.EGRESS, True),
)


def parse_policy_object(
    tree: YMap, ctx: Ctx, prefix: str, clusterwide: bool
) -> tuple[str, str | None, tuple[RuleSpec, ...]] | None:
    """(name, namespace or None for CCNP, specs) or None after reporting problems."""
    before = len(ctx.problems)
    ctx.check_keys(tree, {"apiVersion", "kind", "metadata", "spec", "specs", "status"}, prefix[:-1])
    meta = ctx.mapping(tree.items.get("metadata"), prefix + "metadata")
    name = namespace = None
    if meta is None:
        if "metadata" not in tree.items:
            ctx.error(tree.line, prefix + "metadata", "required (metadata.name)")
    else:
        name = ctx.string(meta.items.get("name"), prefix + "metadata.name")
        if "name" not in meta.items or name == "":
            ctx.error(meta.line, prefix + "metadata.name", "required")
        elif name is not None and len(name) > MAX_NAME_CHARS:
            ctx.error(meta.line, prefix + "metadata.name", "longer than 253 characters")
        namespace = ctx.string(meta.items.get("namespace"), prefix + "metadata.namespace")
        if clusterwide and namespace is not None:
            ctx.warn(meta.key_lines["namespace"], prefix + "metadata.namespace",
                     "ignored: a CiliumClusterwideNetworkPolicy is not namespaced")
    ns: str | None = None if clusterwide else (namespace or "default")
    ref = f"{ns}/{name}" if ns is not None else str(name)
    specs: list[RuleSpec] = []
    spec_node = tree.items.get("spec")
    specs_node = tree.items.get("specs")
    if spec_node is None and specs_node is None:
        ctx.error(tree.line, prefix + "spec", "policy has neither spec nor specs")
    if spec_node is not None:
        spec = _rule_spec(spec_node, ctx, prefix + "spec", ns, f"{ref}:")
        if spec is not None:
            specs.append(spec)
    for i, item in enumerate(ctx.seq(specs_node, prefix + "specs") or ()):
        spec = _rule_spec(item, ctx, f"{prefix}specs[{i}]", ns, f"{ref}:specs[{i}].")
        if spec is not None:
            specs.append(spec)
    if any(not p.warning for p in ctx.problems[before:]) or name is None:
        return None
    return name, ns, tuple(specs)


def _rule_spec(node: YNode, ctx: Ctx, fld: str, ns: str | None, id_prefix: str) -> RuleSpec | None:
    from policy.parse_l4 import parse_peer_rule  # local: parse_l4 imports Ctx from here

    m = ctx.mapping(node, fld)
    if m is None:
        return None
    ctx.check_keys(m, _SPEC_KEYS, fld, unsupported("nodeSelector"))
    sel_node = m.items.get("endpointSelector")
    selector = None
    if sel_node is None:
        if "nodeSelector" not in m.items:
            ctx.error(m.line, f"{fld}.endpointSelector", "required")
    else:
        selector = parse_selector(sel_node, ctx, f"{fld}.endpointSelector")
    dd_in = dd_out = True
    dd = ctx.mapping(m.items.get("enableDefaultDeny"), f"{fld}.enableDefaultDeny")
    if dd is not None:
        ctx.check_keys(dd, {"ingress", "egress"}, f"{fld}.enableDefaultDeny")
        v_in = ctx.boolean(dd.items.get("ingress"), f"{fld}.enableDefaultDeny.ingress")
        v_out = ctx.boolean(dd.items.get("egress"), f"{fld}.enableDefaultDeny.egress")
        dd_in = True if v_in is None else v_in
        dd_out = True if v_out is None else v_out
    if "description" in m.items:
        ctx.string(m.items["description"], f"{fld}.description")
    rules: dict[str, tuple[PeerRule, ...]] = {}
    for key, direction, deny in _DIRECTIONS:
        out: list[PeerRule] = []
        for i, item in enumerate(ctx.seq(m.items.get(key), f"{fld}.{key}") or ()):
            rule = parse_peer_rule(item, ctx, f"{fld}.{key}[{i}]", direction, deny, ns,
                                   f"{id_prefix}{key}[{i}]")
            if rule is not None:
                out.append(rule)
        rules[key] = tuple(out)
    if selector is None:
        return None
    return RuleSpec(
        endpoint_selector=endpoint_selector_for(selector, ns),
        ingress=rules["ingress"], ingress_deny=rules["ingressDeny"],
        egress=rules["egress"], egress_deny=rules["egressDeny"],
        default_deny_ingress=dd_in, default_deny_egress=dd_out, line=m.line,
    )
