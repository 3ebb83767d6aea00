"""Read CNP/CCNP files into `PolicyDoc`s, reporting every problem as FILE:LINE (file I/O only).

Accepts single objects, `List`/`*List` objects with `items`, and multi-document YAML; the
`spec` and `specs` forms; `.yaml`, `.yml` and `.json` (JSON is parsed as YAML so positions
survive). Validation follows Cilium (`pkg/policy/api/rule_validation.go`, the CRD schema)
and rejects fields l7gate does not enforce rather than silently ignoring them (an ignored
deny or selector would be a security hole). A file with any error contributes no policy.
The field-level parsing lives in `policy.parse`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policy.errors import PolicyError, PolicyProblem
from policy.model import PolicyDoc
from policy.parse import Ctx, parse_policy_object
from policy.yamlnode import YamlProblem, YMap, YNode, YScalar, parse_documents

MAX_FILE_BYTES = 8 * 1024 * 1024  # k8s objects are capped at ~1.5 MiB by etcd; 8 MiB is generous
POLICY_SUFFIXES = (".yaml", ".yml", ".json")
API_VERSION = "cilium.io/v2"
CNP = "CiliumNetworkPolicy"
CCNP = "CiliumClusterwideNetworkPolicy"
LIST_KINDS = {"List": None, f"{CNP}List": CNP, f"{CCNP}List": CCNP}


@dataclass(slots=True)
class LoadResult:
    policies: list[PolicyDoc] = field(default_factory=list)
    problems: list[PolicyProblem] = field(default_factory=list)

    @property
    def errors(self) -> list[PolicyProblem]:
        return [p for p in self.problems if not p.warning]

    @property
    def warnings(self) -> list[PolicyProblem]:
        return [p for p in self.problems if p.warning]


def load_text(text: str, file: str, *, strict: bool = False) -> LoadResult:
    """Parse one file's text. Any error -> no policies from this file."""
    ctx = Ctx(file=file, strict=strict,
              fingerprint=hashlib.sha256(text.encode("utf-8", "replace")).hexdigest())
    docs: list[PolicyDoc] = []
    try:
        trees = parse_documents(text)
    except YamlProblem as exc:
        ctx.error(exc.line, "", exc.message)
        return LoadResult([], ctx.problems)
    for tree in trees:
        if tree is None or (isinstance(tree, YScalar) and tree.value is None):
            continue
        docs.extend(_document(tree, ctx))
    if not docs and not ctx.problems:
        ctx.warn(1, "", "no policy in this file")
    if any(not p.warning for p in ctx.problems):
        return LoadResult([], ctx.problems)
    return LoadResult(docs, ctx.problems)


def _document(tree: YNode, ctx: Ctx) -> list[PolicyDoc]:
    if not isinstance(tree, YMap):
        ctx.error(tree.line, "", "a document must be a mapping (a Kubernetes object)")
        return []
    kind_node = tree.items.get("kind")
    kind = kind_node.value if isinstance(kind_node, YScalar) else None
    if isinstance(kind, str) and kind in LIST_KINDS:
        return _list_object(tree, ctx, LIST_KINDS[kind])
    doc = _object(tree, ctx, "", None)
    return [doc] if doc is not None else []


def _list_object(tree: YMap, ctx: Ctx, item_kind: str | None) -> list[PolicyDoc]:
    ctx.check_keys(tree, {"apiVersion", "kind", "metadata", "items"}, "")
    out: list[PolicyDoc] = []
    for i, item in enumerate(ctx.seq(tree.items.get("items"), "items") or ()):
        fld = f"items[{i}]"
        if not isinstance(item, YMap):
            ctx.error(item.line, fld, "must be a mapping (a policy object)")
            continue
        doc = _object(item, ctx, fld + ".", item_kind)
        if doc is not None:
            out.append(doc)
    return out


def _object(tree: YMap, ctx: Ctx, prefix: str, implied_kind: str | None) -> PolicyDoc | None:
    api = tree.items.get("apiVersion")
    kind_node = tree.items.get("kind")
    kind = kind_node.value if isinstance(kind_node, YScalar) else implied_kind
    if kind_node is None and implied_kind is None:
        ctx.error(tree.line, prefix + "kind", f"missing; expected {CNP} or {CCNP}")
        return None
    if kind not in (CNP, CCNP):
        line = kind_node.line if kind_node is not None else tree.line
        ctx.error(line, prefix + "kind", f"unsupported kind {kind!r}; expected {CNP} or {CCNP}")
        return None
    if api is None and implied_kind is None:
        ctx.error(tree.line, prefix + "apiVersion", f"missing; expected {API_VERSION}")
    elif api is not None and (not isinstance(api, YScalar) or api.value != API_VERSION):
        shown = api.value if isinstance(api, YScalar) else "a collection"
        ctx.error(api.line, prefix + "apiVersion", f"unsupported {shown!r}; expected {API_VERSION}")
    doc = parse_policy_object(tree, ctx, prefix, kind == CCNP)
    if doc is None:
        return None
    return PolicyDoc(
        kind=kind, name=doc[0], namespace=doc[1], specs=doc[2], file=ctx.file,
        line=tree.line, fingerprint=f"{ctx.fingerprint}:{tree.line}",
    )


def load_documents(paths: Sequence[str | Path], *, strict: bool = False) -> LoadResult:
    """Load several files; problems of every file are collected, bad files add no policy."""
    result = LoadResult()
    for path in paths:
        name = str(path)
        try:
            raw = Path(path).read_bytes()[: MAX_FILE_BYTES + 1]
        except OSError as exc:
            result.problems.append(PolicyProblem(name, 0, f"cannot read: {exc.strerror or exc}"))
            continue
        if len(raw) > MAX_FILE_BYTES:
            result.problems.append(
                PolicyProblem(name, 0, f"file larger than {MAX_FILE_BYTES} bytes")
            )
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            result.problems.append(PolicyProblem(name, line, "file is not valid UTF-8"))
            continue
        one = load_text(text, name, strict=strict)
        result.policies.extend(one.policies)
        result.problems.extend(one.problems)
    return result


def policy_files(directory: str | Path) -> list[Path]:
    """Every `*.yaml`/`*.yml`/`*.json` directly in `directory`, sorted by name."""
    root = Path(directory)
    return sorted(p for p in root.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())


def load_directory(directory: str | Path, *, strict: bool = False) -> LoadResult:
    try:
        files = policy_files(directory)
    except OSError as exc:
        return LoadResult([], [PolicyProblem(str(directory), 0, f"cannot list: {exc}")])
    return load_documents(files, strict=strict)


def raise_on_errors(result: LoadResult) -> LoadResult:
    if result.errors:
        raise PolicyError(result.errors)
    return result
