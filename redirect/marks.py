"""skb mark layout shared with the BPF programs (bpf/include/l7g_codes.h). No I/O here.

Two kinds of marks:
- TPROXY_MARK: set by BPF on packets it assigned to a proxy socket; the node's
  `ip rule fwmark TPROXY_MARK/TPROXY_MASK lookup TPROXY_TABLE` routes them locally.
- proxy upstream marks: set by the proxy (SO_MARK) on its transparent upstream sockets;
  they carry the source identity so that to_endpoint can apply the destination's ingress
  policy to the original source, and they tell every hook not to redirect again.
  Layout: (identity & 0xffffff) << 8 | 0xb0 | identity bit 24. The low byte never equals
  0xa0, so the tproxy rule never matches the proxy's own packets.
"""

from __future__ import annotations

from dataclasses import dataclass

TPROXY_MARK = 0xA0  # L7G_MARK_TPROXY
TPROXY_MASK = 0xFF  # L7G_MARK_TPROXY_MASK
TPROXY_TABLE = 2004  # L7G_TPROXY_ROUTE_TABLE
TPROXY_RULE_PRIORITY = 90  # L7G_TPROXY_RULE_PRIORITY
MAGIC_MASK = 0xFE  # L7G_MARK_MAGIC_MASK
PROXY_UPSTREAM_MAGIC = 0xB0  # L7G_MARK_PROXY_UPSTREAM
IDENTITY_SHIFT = 8  # L7G_MARK_IDENTITY_SHIFT
IDENTITY_LOW = 0xFFFFFF  # L7G_MARK_IDENTITY_LOW
MAX_IDENTITY = (1 << 25) - 1  # 24 bits + the CIDR bit (policy.types.FIRST_CIDR_IDENTITY)


@dataclass(frozen=True, slots=True)
class DecodedMark:
    is_proxy_upstream: bool
    is_tproxy: bool
    identity: int | None  # the source identity of a proxy upstream mark


def proxy_upstream_mark(identity: int) -> int:
    """SO_MARK value for a proxy upstream socket acting for `identity`."""
    if not 0 <= identity <= MAX_IDENTITY:
        raise ValueError(f"identity {identity} does not fit the mark (max {MAX_IDENTITY})")
    return ((identity & IDENTITY_LOW) << IDENTITY_SHIFT) | PROXY_UPSTREAM_MAGIC | (
        (identity >> 24) & 1
    )


def decode_mark(mark: int) -> DecodedMark:
    mark &= 0xFFFFFFFF
    if (mark & MAGIC_MASK) == PROXY_UPSTREAM_MAGIC:
        identity = ((mark >> IDENTITY_SHIFT) & IDENTITY_LOW) | ((mark & 1) << 24)
        return DecodedMark(True, False, identity)
    return DecodedMark(False, (mark & TPROXY_MASK) == TPROXY_MARK, None)
