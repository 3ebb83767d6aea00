"""Kubernetes label selectors with Cilium's label sources (pure; no I/O here).

A `Selector` is the compiled form of a LabelSelector (`matchLabels` AND `matchExpressions`,
policy-semantics.md §2). Keys carry a source prefix: `k8s:app` matches only k8s-sourced
labels, `reserved:host` only reserved ones, and a key without a prefix (or `any:`) matches a
label of any source (Cilium `pkg/labels` GetExtendedKeyFrom / Labels.Intersects).
An empty selector (no requirements) selects every identity; namespace injection, which
makes `{}` mean "this namespace" in a CNP, is applied by the loader (`inject_namespace`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from policy.types import NAMESPACE_LABEL, Label


class Op(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


ANY_SOURCE = "any"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."


def split_key(raw: str) -> tuple[str, str]:
    """`k8s:app` -> ("k8s", "app"); `app` and `any:app` -> ("any", "app")."""
    source, sep, key = raw.partition(":")
    if not sep:
        return ANY_SOURCE, raw
    return source, key


@dataclass(frozen=True, slots=True)
class Requirement:
    source: str
    key: str
    op: Op
    values: frozenset[str]


class LabelView:
    """An identity's labels indexed for selector matching (built once per label set)."""

    __slots__ = ("by_key", "by_source_key")

    def __init__(self, labels: Iterable[Label]) -> None:
        self.by_source_key: dict[tuple[str, str], str] = {}
        self.by_key: dict[str, set[str]] = {}
        for lbl in labels:
            self.by_source_key[(lbl.source, lbl.key)] = lbl.value
            self.by_key.setdefault(lbl.key, set()).add(lbl.value)

    def values(self, source: str, key: str) -> set[str] | None:
        if source == ANY_SOURCE:
            return self.by_key.get(key)
        value = self.by_source_key.get((source, key))
        return None if value is None else {value}


@dataclass(frozen=True, slots=True)
class Selector:
    """All requirements must hold. No requirements = selects everything."""

    requirements: tuple[Requirement, ...]

    def matches(self, view: LabelView) -> bool:
        for req in self.requirements:
            present = view.values(req.source, req.key)
            if req.op is Op.IN:
                if present is None or present.isdisjoint(req.values):
                    return False
            elif req.op is Op.NOT_IN:
                if present is not None and not present.isdisjoint(req.values):
                    return False
            elif req.op is Op.EXISTS:
                if present is None:
                    return False
            elif present is not None:  # DOES_NOT_EXIST
                return False
        return True

    def has_key(self, key: str, sources: tuple[str, ...]) -> bool:
        return any(r.key == key and r.source in sources for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def has_key_prefix(self, prefix: str) -> bool:
        return any(r.key.startswith(prefix) for r in self.requirements)

    def index_key(self) -> tuple[str, str, str] | None:
        """One (source, key, value) every selected label set must carry, for indexing."""
        best: tuple[str, str, str] | None = None
        for r in self.requirements:
            if r.op is Op.IN and len(r.values) == 1:
                (value,) = r.values
                cand = (r.source, r.key, value)
                if best is None or best[1] == NAMESPACE_LABEL:
                    best = cand
        return best

    def describe(self) -> str:
        parts = []
        for r in self.requirements:
            key = r.key if r.source == ANY_SOURCE else f"{r.source}:{r.key}"
            if r.op is Op.IN and len(r.values) == 1:
                parts.append(f"{key}={next(iter(r.values))}")
            elif r.op in (Op.IN, Op.NOT_IN):
                parts.append(f"{key} {r.op.value} ({','.join(sorted(r.values))})")
            else:
                parts.append(f"{key} {r.op.value}")
        return "{" + ", ".join(parts) + "}"


def equals(source: str, key: str, value: str) -> Requirement:
    return Requirement(source, key, Op.IN, frozenset({value}))


def inject_namespace(sel: Selector, namespace: str | None) -> Selector:
    """Cilium's peer-selector namespace injection (pkg/k8s/apis/cilium.io/utils/utils.go).

    CNP (`namespace` set): add `k8s:io.kubernetes.pod.namespace=<ns>` unless the selector
    already constrains the namespace (k8s:/any: key, label or expression), names a
    `reserved:` label, or uses namespace labels (see README-decisions.md, conflict 2).
    CCNP (`namespace` None): add `k8s:io.kubernetes.pod.namespace Exists` under the same
    exemptions, so `{}` means every pod of every namespace but not world/host (#12844).
    """
    if sel.has_key(NAMESPACE_LABEL, ("k8s", ANY_SOURCE)) or sel.has_source("reserved"):
        return sel
    if sel.has_key_prefix(NAMESPACE_LABELS_PREFIX):
        return sel
    if namespace is None:
        req = Requirement("k8s", NAMESPACE_LABEL, Op.EXISTS, frozenset())
    else:
        req = equals("k8s", NAMESPACE_LABEL, namespace)
    return Selector((*sel.requirements, req))


def endpoint_selector_for(sel: Selector, namespace: str | None) -> Selector:
    """A CNP's endpointSelector always gets its own namespace (a user value is replaced)."""
    if namespace is None:
        return sel
    kept = tuple(
        r for r in sel.requirements
        if not (r.key == NAMESPACE_LABEL and r.source in ("k8s", ANY_SOURCE))
    )
    return Selector((*kept, equals("k8s", NAMESPACE_LABEL, namespace)))
