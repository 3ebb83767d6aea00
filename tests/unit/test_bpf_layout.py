"""The ctypes mirrors (redirect/structs.py) match bpf/include/l7g_maps.h: same fields in the
same order at the same offsets, and the sizes the header's _Static_asserts fix."""

from __future__ import annotations

import ctypes

import pytest

from redirect import structs as S
from tests.unit import bpf_header as hdr

STRUCTS = hdr.structs("l7g_maps.h")
SIZES = hdr.static_sizes("l7g_maps.h")


def test_every_struct_has_a_mirror_and_a_static_assert() -> None:
    assert set(STRUCTS) == set(S.MIRRORS)
    assert set(SIZES) == set(STRUCTS)


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_mirror_matches_header(name: str) -> None:
    mirror = S.MIRRORS[name]
    size, _align, offsets = hdr.layout(STRUCTS, name)
    assert size == SIZES[name] == ctypes.sizeof(mirror)
    names_c = [f.name for f in STRUCTS[name]]
    names_py = [f[0] for f in mirror._fields_]
    # Python names carry the byte order (`dport_be`) where C has a __be type
    assert [n.removesuffix("_be") for n in names_py] == names_c
    for py_name, c_name in zip(names_py, names_c, strict=True):
        assert getattr(mirror, py_name).offset == offsets[c_name], f"{name}.{c_name}"


def test_be_suffix_exactly_on_network_order_fields() -> None:
    for name, fields in STRUCTS.items():
        py = dict(zip([f.name for f in fields], [f[0] for f in S.MIRRORS[name]._fields_],
                      strict=True))
        for f in fields:
            assert py[f.name].endswith("_be") == f.type.startswith("__be"), f"{name}.{f.name}"


def test_python_copies_of_header_constants() -> None:
    d = hdr.defines("l7g_maps.h")
    assert d["L7G_FQDN_PORTS"] == S.L7G_FQDN_PORTS
    assert d["L7G_NAME_BYTES"] == S.L7G_NAME_BYTES
    fixed = sum(ctypes.sizeof(f[1]) for f in S.PolicyKey._fields_[1:-1]) * 8
    assert d["L7G_POLICY_FIXED_BITS"] == S.L7G_POLICY_FIXED_BITS == fixed
