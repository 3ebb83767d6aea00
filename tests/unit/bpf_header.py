"""Tiny parser for bpf/include/*.h used by the ABI unit tests: #define values, struct
field lists and _Static_assert sizes. Handles only what our headers use (fixed-width
integer types, arrays, nested l7g structs), and fails loudly on anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

INCLUDE = Path(__file__).resolve().parents[2] / "bpf" / "include"
SCALARS = {
    "__u8": 1, "__s8": 1, "char": 1, "__u16": 2, "__s16": 2, "__be16": 2,
    "__u32": 4, "__s32": 4, "__be32": 4, "__u64": 8, "__s64": 8, "__be64": 8,
}


def read(name: str) -> str:
    text = (INCLUDE / name).read_text()
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def defines(name: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in re.finditer(r"^#define\s+(\w+)\s+(.+?)\s*$", read(name), re.M):
        value = m.group(2).strip()
        try:
            out[m.group(1)] = int(eval(value, {"__builtins__": {}}, dict(out)))
        except (SyntaxError, NameError, TypeError):
            continue  # string or function-like macro
    return out


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    count: int  # 1 for scalars


def structs(name: str) -> dict[str, list[Field]]:
    consts = defines(name)
    out: dict[str, list[Field]] = {}
    for m in re.finditer(r"struct\s+(\w+)\s*\{(.*?)\};", read(name), re.S):
        fields = []
        for line in m.group(2).split(";"):
            line = line.strip()
            if not line:
                continue
            fm = re.fullmatch(r"(struct\s+\w+|\w+)\s+(\w+)(?:\[(\w+)\])?", line)
            if fm is None:
                raise ValueError(f"cannot parse field {line!r} of {m.group(1)}")
            count = fm.group(3)
            n = 1 if count is None else int(count) if count.isdigit() else consts[count]
            fields.append(Field(fm.group(2), fm.group(1).replace("struct ", ""), n))
        out[m.group(1)] = fields
    return out


def static_sizes(name: str) -> dict[str, int]:
    pat = r"_Static_assert\(sizeof\(struct\s+(\w+)\)\s*==\s*(\d+)"
    return {m.group(1): int(m.group(2)) for m in re.finditer(pat, read(name))}


def layout(all_structs: dict[str, list[Field]], struct: str) -> tuple[int, int, dict[str, int]]:
    """(size, alignment, {field: offset}) with the C ABI's natural alignment."""
    offset, align, offsets = 0, 1, {}
    for f in all_structs[struct]:
        if f.type in SCALARS:
            size = f_align = SCALARS[f.type]
        else:
            size, f_align, _ = layout(all_structs, f.type)
        offset = (offset + f_align - 1) // f_align * f_align
        offsets[f.name] = offset
        offset += size * f.count
        align = max(align, f_align)
    return (offset + align - 1) // align * align, align, offsets
