"""YAML with positions: parse text into a small tree whose every value knows its line.

The sandbox's topology loader reports problems as `FILE:LINE: message`; PyYAML's plain
`safe_load` forgets positions, so this module composes the node graph with `SafeLoader`
and wraps each value in `YMap`, `YSeq` or `YScalar` carrying the 1-based line of its
node. Scalars are constructed by SafeLoader itself (same int/bool/null rules as
`safe_load`). Duplicate mapping keys, which `safe_load` silently accepts, are an error.
No I/O here beyond the text handed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from policy.errors import ConfigError


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


def where(file: str, line: int) -> str:
    return f"{file}:{line}"


def fail(file: str, line: int, message: str) -> ConfigError:
    """The one shape of topology errors: `FILE:LINE: message`."""
    return ConfigError(f"{where(file, line)}: {message}")


def parse(text: str, file: str) -> YNode | None:
    """Parse one YAML document; None for an empty document. Raises ConfigError."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return None if root is None else _wrap(loader, root, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise fail(file, line, f"YAML syntax error: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise fail(file, 0, f"YAML error: {exc}") from exc
    finally:
        loader.dispose()


def _wrap(loader: yaml.SafeLoader, node: yaml.Node, file: str) -> YNode:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, _ in node.value:  # duplicates among the keys written here
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise fail(file, key_node.start_mark.line + 1, f"duplicate key {key!r}")
            seen.add(key)
        # Resolve `<<:` merge keys like safe_load: merged entries come first, so the
        # explicit ones written after them win.
        loader.flatten_mapping(node)
        out = YMap(items={}, line=line)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise fail(file, key_line, f"mapping key must be a string, got {key!r}")
            out.items[key] = _wrap(loader, value_node, file)
            out.key_lines[key] = key_line
        return out
    if isinstance(node, yaml.SequenceNode):
        return YSeq(items=[_wrap(loader, n, file) for n in node.value], line=line)
    return YScalar(value=loader.construct_object(node, deep=True), line=line)
