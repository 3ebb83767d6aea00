"""YAML/JSON text -> a small tree whose every value knows its 1-based line (no I/O here).

Policy problems are reported as `FILE:LINE: message`, so we compose PyYAML's node graph
ourselves (SafeLoader: no arbitrary tags are ever constructed) and wrap each value in
`YMap`, `YSeq` or `YScalar`. Scalars get SafeLoader's int/bool/null/float resolution.
Duplicate mapping keys (which `safe_load` silently accepts) are an error. The tree is built
straight from parser events (libyaml when present). Aliases are followed, but the total
number of values per document, aliases counted at full size, is capped so an alias bomb or
a recursive alias cannot blow up memory or time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_NODES_PER_DOCUMENT = 200_000  # far above any real policy; stops alias bombs ("billion laughs")
MAX_DEPTH = 64  # CNP nesting is < 12 levels; deeper input is hostile or broken

# libyaml's parser when present (~10x faster; same node marks and tag resolution).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:float",
}


_CONSTRUCTOR = yaml.constructor.SafeConstructor()  # stateless for scalars


class YamlProblem(Exception):
    """A YAML-level problem with its line (1-based)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(slots=True)
class YScalar:
    value: Any
    line: int


@dataclass(slots=True)
class YSeq:
    items: list[YNode]
    line: int


@dataclass(slots=True)
class YMap:
    items: dict[str, YNode]
    line: int
    key_lines: dict[str, int] = field(default_factory=dict)


YNode = YScalar | YSeq | YMap


_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
# YAML 1.1 implicit resolvers, as SafeLoader applies them to plain scalars (first char -> list)
_IMPLICIT = yaml.resolver.Resolver.yaml_implicit_resolvers


def _resolve_plain(value: str) -> str:
    for tag, regexp in _IMPLICIT.get(value[:1] or "", ()):  # "" -> the null resolver
        if regexp.match(value):
            return str(tag)
    return _STR


class _Builder:
    """Builds Y-nodes from parser events (cheaper than composing PyYAML nodes first).

    Aliases reuse the anchored value; their size counts against the budget each time they
    are used, so the walk over the result is bounded as well.
    """

    def __init__(self) -> None:
        self.left = MAX_NODES_PER_DOCUMENT
        self.anchors: dict[str, tuple[YNode, int]] = {}

    def spend(self, line: int, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise YamlProblem(line, f"document has more than {MAX_NODES_PER_DOCUMENT} values")

    def node(self, events: Iterator[yaml.Event], event: yaml.Event, depth: int) -> YNode:
        line = _line(event)
        if depth > MAX_DEPTH:
            raise YamlProblem(line, f"document nests deeper than {MAX_DEPTH} levels")
        if isinstance(event, yaml.AliasEvent):
            found = self.anchors.get(event.anchor or "")
            if found is None:
                raise YamlProblem(line, f"unknown or recursive alias *{event.anchor}")
            self.spend(line, found[1])
            return found[0]
        before = self.left
        self.spend(line, 1)
        result: YNode
        if isinstance(event, yaml.ScalarEvent):
            result = YScalar(self._scalar(event, line), line)
        elif isinstance(event, yaml.SequenceStartEvent):
            self._check_tag(event.tag, _SEQ, line)
            items: list[YNode] = []
            for child in _until(events, yaml.SequenceEndEvent):
                items.append(self.node(events, child, depth + 1))
            result = YSeq(items, line)
        elif isinstance(event, yaml.MappingStartEvent):
            self._check_tag(event.tag, _MAP, line)
            result = self._mapping(events, line, depth)
        else:  # pragma: no cover - the parser only yields these inside a document
            raise YamlProblem(line, "unexpected YAML event")
        anchor = getattr(event, "anchor", None)
        if anchor:
            self.anchors[anchor] = (result, before - self.left)
        return result

    def _mapping(self, events: Iterator[yaml.Event], line: int, depth: int) -> YMap:
        out = YMap({}, line)
        for key_event in _until(events, yaml.MappingEndEvent):
            key_line = _line(key_event)
            if not isinstance(key_event, yaml.ScalarEvent):
                raise YamlProblem(key_line, "mapping keys must be plain strings")
            if key_event.value == "<<" and key_event.implicit[0]:
                raise YamlProblem(key_line, "YAML merge keys (<<) are not supported")
            key = key_event.value
            if key in out.items:
                raise YamlProblem(key_line, f"duplicate key {key!r}")
            out.items[key] = self.node(events, next(events), depth + 1)
            out.key_lines[key] = key_line
        return out

    @staticmethod
    def _check_tag(tag: str | None, expected: str, line: int) -> None:
        if tag is not None and tag != expected:
            raise YamlProblem(line, f"unsupported YAML tag {tag!r}")

    @staticmethod
    def _scalar(event: yaml.ScalarEvent, line: int) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0]:
                return event.value  # quoted: always a string
            tag = _resolve_plain(event.value)
        if tag == _STR:
            return event.value
        if tag not in _SCALAR_TAGS:
            raise YamlProblem(line, f"unsupported YAML tag {tag!r}")
        node = yaml.ScalarNode(tag, event.value)
        try:
            return yaml.SafeLoader.yaml_constructors[tag](_CONSTRUCTOR, node)
        except (yaml.YAMLError, ValueError) as exc:
            raise YamlProblem(line, f"bad scalar: {exc}") from exc


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 1


def _until(events: Iterator[yaml.Event], end: type) -> Iterator[yaml.Event]:
    for event in events:
        if isinstance(event, end):
            return
        yield event


def _documents(text: str) -> Iterator[YNode | None]:
    events = iter(yaml.parse(text, Loader=_LOADER))
    for event in events:
        if not isinstance(event, yaml.DocumentStartEvent):
            continue
        first = next(events)
        if isinstance(first, yaml.DocumentEndEvent):
            yield None
            continue
        doc = _Builder().node(events, first, 0)
        next(events)  # DocumentEndEvent
        yield doc


def parse_documents(text: str) -> list[YNode | None]:
    """Every document of a (multi-document) YAML or JSON text; None for empty documents.

    Raises YamlProblem for syntax errors and hostile structure.
    """
    try:
        return list(_documents(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        # libyaml puts end-of-stream errors one line past the last one
        line = min(line, text.count("\n") + 1)
        raise YamlProblem(line, f"YAML syntax error: {exc.problem or exc}") from exc
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise YamlProblem(line, f"YAML error: {str(exc).splitlines()[0]}") from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(1, f"YAML error: {str(exc).splitlines()[0]}") from exc
    except RecursionError as exc:
        raise YamlProblem(1, "YAML nests too deeply") from exc


def plain(node: YNode) -> Any:
    """The plain Python value of a tree (for messages and tests)."""
    if isinstance(node, YScalar):
        return node.value
    if isinstance(node, YSeq):
        return [plain(i) for i in node.items]
    return {k: plain(v) for k, v in node.items.items()}
