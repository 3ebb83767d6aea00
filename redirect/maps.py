"""Typed accessors for the datapath's maps (layouts in bpf/include/l7g_maps.h).

`DatapathMaps` wraps map fds, either the loader's (bcc) or pinned ones opened by path
(`DatapathMaps.open_pinned(dir)`, used by `l7gate bpf ... list` without an agent). Writers
take policy values (`DatapathEntry`, networks, identities) and readers return readable
rows. `PolicyMap.replace_all` swaps the whole node's policy atomically for new flows:
entries are written under the idle generation, then l7g_config_v1.policy_gen flips, then the
old generation is deleted. Map access errors raise `RedirectError`.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from policy.errors import RedirectError
from policy.types import DatapathEntry, Direction, DropReason, L4Action, Proto
from redirect import structs as S
from redirect.bpfsys import BpfMap, possible_cpus

MAP_NAMES = (
    "l7g_config_v1", "l7g_endpoints_v1", "l7g_ipcache_v1", "l7g_policy_v1", "l7g_fqdn_v1",
    "l7g_ct_v1", "l7g_drops_v1", "l7g_stats_v1", "l7g_rule_names_v1", "l7g_fqdn_names_v1",
)
DIR_CODE = {Direction.INGRESS: 0, Direction.EGRESS: 1}  # L7G_DIR_*
DIR_OF_CODE = {v: k for k, v in DIR_CODE.items()}
ENFORCE_INGRESS = 0x01  # L7G_EP_ENFORCE_INGRESS
ENFORCE_EGRESS = 0x02  # L7G_EP_ENFORCE_EGRESS
IPC_LOCAL_ENDPOINT = 0x01  # L7G_IPC_LOCAL_ENDPOINT
POL_ALL_PORTS = 0x01  # L7G_POL_ALL_PORTS
CT_FLAGS = {0x01: "redirected", 0x02: "from-proxy", 0x04: "dns-proxy"}  # L7G_CT_*
STAT_FORWARDED, STAT_REDIRECTED, STAT_EVENTS_LOST = 0, 1, 2  # L7G_STAT_*
DROP_REASON_MAX = 256  # L7G_DROP_REASON_MAX
RULE_GEN_BIT = 31  # rule_index bit holding the policy generation


def ip_be(addr: ipaddress.IPv4Address | str) -> int:
    """IPv4 address as the u32 whose memory holds network byte order (our `*_be` fields)."""
    return int.from_bytes(ipaddress.IPv4Address(addr).packed, "little")


def ip_of_be(value: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(value.to_bytes(4, "little"))


def port_be(port: int) -> int:
    return socket.htons(port)


def port_range_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split the inclusive range lo..hi into (port, prefix bits) blocks that cover it exactly."""
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"bad port range {lo}-{hi}")
    out: list[tuple[int, int]] = []
    cur = lo
    while cur <= hi:
        size = cur & -cur if cur else 1 << 16  # largest block aligned at cur
        while size > hi - cur + 1:
            size >>= 1
        out.append((cur, 16 - size.bit_length() + 1))
        cur += size
    return out


def _name_bytes(text: str) -> S.Name:
    raw = text.encode("utf-8")[: S.L7G_NAME_BYTES - 1]
    return S.Name(name=raw)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """A pod on this node as the datapath sees it (l7g_endpoints_v1 value)."""

    endpoint_id: int
    identity: int
    ip: ipaddress.IPv4Address
    ingress_enforced: bool
    egress_enforced: bool


@dataclass(frozen=True, slots=True)
class IpcacheRow:
    network: ipaddress.IPv4Network
    identity: int
    endpoint_id: int
    is_local_endpoint: bool


@dataclass(frozen=True, slots=True)
class PolicyRow:
    generation: int
    endpoint_id: int
    direction: Direction
    peer_identity: int
    proto: Proto | int
    port: int
    port_prefix_bits: int
    action: L4Action | int
    rule_id: str


@dataclass(frozen=True, slots=True)
class FqdnPortRule:
    proto: Proto
    port_lo: int
    port_hi: int
    action: L4Action


@dataclass(frozen=True, slots=True)
class FqdnRow:
    endpoint_id: int
    ip: ipaddress.IPv4Address
    ports: tuple[FqdnPortRule, ...]
    expiry_ns: int
    name_id: int
    name: str


@dataclass(frozen=True, slots=True)
class CtRow:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    sport: int
    dport: int
    proto: int
    direction: Direction
    endpoint_id: int
    src_identity: int
    dst_identity: int
    action: int
    flags: tuple[str, ...]
    rule_index: int
    packets: int
    created_ns: int
    last_seen_ns: int


@dataclass(frozen=True, slots=True)
class DatapathCounters:
    drops: dict[DropReason | int, int]  # reason -> packets (summed over CPUs)
    forwarded: int
    redirected: int
    events_lost: int


def _read_names(m: BpfMap) -> dict[int, str]:
    out: dict[int, str] = {}
    for key in list(m.keys(ctypes.c_uint32)):
        val = S.Name()
        if m.lookup(key, val):
            out[int(key.value)] = val.name.decode("utf-8", "replace")
    return out


class _Base:
    def __init__(self, maps: Mapping[str, BpfMap]) -> None:
        self._m = maps

    def _config(self) -> S.Config:
        cfg = S.Config()
        if not self._m["l7g_config_v1"].lookup(ctypes.c_uint32(0), cfg):
            raise RedirectError("l7g_config_v1[0] missing")
        return cfg


class IpcacheMap(_Base):
    def set(self, network: ipaddress.IPv4Network | str, identity: int, endpoint_id: int = 0,
            is_local_endpoint: bool = False) -> None:
        net = ipaddress.IPv4Network(network)
        key = S.IpcacheKey(prefixlen=net.prefixlen, addr_be=ip_be(net.network_address))
        val = S.IpcacheVal(identity=identity, endpoint_id=endpoint_id,
                           flags=IPC_LOCAL_ENDPOINT if is_local_endpoint else 0)
        self._m["l7g_ipcache_v1"].update(key, val)

    def delete(self, network: ipaddress.IPv4Network | str) -> bool:
        net = ipaddress.IPv4Network(network)
        key = S.IpcacheKey(prefixlen=net.prefixlen, addr_be=ip_be(net.network_address))
        return self._m["l7g_ipcache_v1"].delete(key)

    def items(self) -> list[IpcacheRow]:
        m = self._m["l7g_ipcache_v1"]
        rows = []
        for key in list(m.keys(S.IpcacheKey)):
            val = S.IpcacheVal()
            if m.lookup(key, val):
                k: S.IpcacheKey = key
                net = ipaddress.IPv4Network((ip_of_be(k.addr_be), k.prefixlen))
                rows.append(IpcacheRow(net, val.identity, val.endpoint_id,
                                       bool(val.flags & IPC_LOCAL_ENDPOINT)))
        return sorted(rows, key=lambda r: (r.network.network_address, r.network.prefixlen))


class EndpointMap(_Base):
    def set(self, ifindex: int, cfg: EndpointConfig) -> None:
        bits = (ENFORCE_INGRESS if cfg.ingress_enforced else 0) | (
            ENFORCE_EGRESS if cfg.egress_enforced else 0)
        val = S.EndpointVal(endpoint_id=cfg.endpoint_id, identity=cfg.identity,
                            ip_be=ip_be(cfg.ip))
        val.enforce[0] = val.enforce[1] = bits  # same in both generations
        self._m["l7g_endpoints_v1"].update(ctypes.c_uint32(ifindex), val)

    def delete(self, ifindex: int) -> bool:
        return self._m["l7g_endpoints_v1"].delete(ctypes.c_uint32(ifindex))

    def items(self) -> dict[int, EndpointConfig]:
        m = self._m["l7g_endpoints_v1"]
        gen = self._config().policy_gen & 1
        out = {}
        for key in list(m.keys(ctypes.c_uint32)):
            val = S.EndpointVal()
            if m.lookup(key, val):
                bits = val.enforce[gen]
                out[int(key.value)] = EndpointConfig(
                    val.endpoint_id, val.identity, ip_of_be(val.ip_be),
                    bool(bits & ENFORCE_INGRESS), bool(bits & ENFORCE_EGRESS))
        return out

    def _set_enforce(self, gen: int, enforcement: Mapping[int, tuple[bool, bool]] | None
                     ) -> None:
        m = self._m["l7g_endpoints_v1"]
        for key in list(m.keys(ctypes.c_uint32)):
            val = S.EndpointVal()
            if not m.lookup(key, val):
                continue
            if enforcement is not None and val.endpoint_id in enforcement:
                ing, eg = enforcement[val.endpoint_id]
                bits = (ENFORCE_INGRESS if ing else 0) | (ENFORCE_EGRESS if eg else 0)
            else:
                bits = val.enforce[gen ^ 1]
            val.enforce[gen] = bits
            m.update(key, val)


class PolicyMap(_Base):
    def replace_all(self, entries: Mapping[int, Sequence[DatapathEntry]],
                    enforcement: Mapping[int, tuple[bool, bool]] | None = None) -> int:
        """Make `entries` ({endpoint_id: [...]}) the node's whole policy; returns the new
        generation. `enforcement` ({endpoint_id: (ingress, egress)}) switches with it;
        endpoints not named keep their current enforcement."""
        pol, names = self._m["l7g_policy_v1"], self._m["l7g_rule_names_v1"]
        cfg = self._config()
        cur = cfg.policy_gen & 1
        new = cur ^ 1
        self._delete_generation(new)  # leftovers of an interrupted swap
        rule_ids: dict[str, int] = {}
        for ep_id, ep_entries in entries.items():
            for e in ep_entries:
                idx = rule_ids.setdefault(e.rule_id, (new << RULE_GEN_BIT) | len(rule_ids))
                for key, val in self._encode(new, ep_id, e, idx):
                    pol.update(key, val)
        for rule_id, idx in rule_ids.items():
            names.update(ctypes.c_uint32(idx), _name_bytes(rule_id))
        EndpointMap(self._m)._set_enforce(new, enforcement)
        cfg.policy_gen = new
        self._m["l7g_config_v1"].update(ctypes.c_uint32(0), cfg)  # the switch
        self._delete_generation(cur)
        return int(new)

    @staticmethod
    def _encode(gen: int, ep_id: int, e: DatapathEntry, idx: int
                ) -> Iterable[tuple[S.PolicyKey, S.PolicyVal]]:
        all_ports = e.port_lo == 0 and e.port_hi == 0xFFFF
        for port, bits in port_range_prefixes(e.port_lo, e.port_hi):
            key = S.PolicyKey(prefixlen=S.L7G_POLICY_FIXED_BITS + bits, gen=gen,
                              direction=DIR_CODE[e.direction], endpoint_id=ep_id,
                              identity=e.peer_identity, proto=int(e.proto),
                              dport_be=port_be(port))
            val = S.PolicyVal(action=int(e.action), flags=POL_ALL_PORTS if all_ports else 0,
                              rule_index=idx)
            yield key, val

    def _delete_generation(self, gen: int) -> None:
        pol, names = self._m["l7g_policy_v1"], self._m["l7g_rule_names_v1"]
        for key in [k for k in pol.keys(S.PolicyKey) if k.gen == gen]:
            pol.delete(key)
        for nkey in [k for k in names.keys(ctypes.c_uint32)
                     if (int(k.value) >> RULE_GEN_BIT) == gen]:
            names.delete(nkey)

    def generation(self) -> int:
        return int(self._config().policy_gen) & 1

    def items(self, all_generations: bool = False) -> list[PolicyRow]:
        pol = self._m["l7g_policy_v1"]
        names = _read_names(self._m["l7g_rule_names_v1"])
        live = self.generation()
        rows = []
        for key in list(pol.keys(S.PolicyKey)):
            k: S.PolicyKey = key
            val = S.PolicyVal()
            if (k.gen != live and not all_generations) or not pol.lookup(k, val):
                continue
            rows.append(PolicyRow(
                k.gen, k.endpoint_id, DIR_OF_CODE.get(k.direction, Direction.INGRESS),
                k.identity, _enum_or_int(Proto, k.proto), socket.ntohs(k.dport_be),
                k.prefixlen - S.L7G_POLICY_FIXED_BITS, _enum_or_int(L4Action, val.action),
                names.get(val.rule_index, f"#{val.rule_index}")))
        return sorted(rows, key=lambda r: (r.generation, r.endpoint_id, r.direction.value,
                                           r.peer_identity, int(r.proto), r.port))

    def rule_names(self) -> dict[int, str]:
        return _read_names(self._m["l7g_rule_names_v1"])


def _enum_or_int(enum_type: type[Proto] | type[L4Action], value: int) -> Proto | L4Action | int:
    try:
        return enum_type(value)
    except ValueError:
        return value


class FqdnMap(_Base):
    def set(self, endpoint_id: int, ip: ipaddress.IPv4Address | str,
            ports: Sequence[FqdnPortRule], expiry_ns: int, name_id: int,
            name: str | None = None) -> None:
        """Allow `endpoint_id` to reach `ip` on `ports` until `expiry_ns` (CLOCK_BOOTTIME,
        0 = no expiry); `name` (optional) is recorded for `bpf fqdn list` and drop events."""
        if len(ports) > S.L7G_FQDN_PORTS:
            raise RedirectError(f"at most {S.L7G_FQDN_PORTS} port ranges per FQDN IP")
        val = S.FqdnVal(expiry_ns=expiry_ns, name_id=name_id, nports=len(ports))
        for i, p in enumerate(ports):
            val.ports[i] = S.FqdnPort(proto=int(p.proto), action=int(p.action),
                                      port_lo=p.port_lo, port_hi=p.port_hi)
        key = S.FqdnKey(endpoint_id=endpoint_id, addr_be=ip_be(ip))
        if name is not None:
            self._m["l7g_fqdn_names_v1"].update(ctypes.c_uint32(name_id), _name_bytes(name))
        self._m["l7g_fqdn_v1"].update(key, val)

    def delete(self, endpoint_id: int, ip: ipaddress.IPv4Address | str) -> bool:
        key = S.FqdnKey(endpoint_id=endpoint_id, addr_be=ip_be(ip))
        return self._m["l7g_fqdn_v1"].delete(key)

    def delete_name(self, name_id: int) -> bool:
        return self._m["l7g_fqdn_names_v1"].delete(ctypes.c_uint32(name_id))

    def names(self) -> dict[int, str]:
        return _read_names(self._m["l7g_fqdn_names_v1"])

    def items(self) -> list[FqdnRow]:
        m = self._m["l7g_fqdn_v1"]
        names = self.names()
        rows = []
        for key in list(m.keys(S.FqdnKey)):
            k: S.FqdnKey = key
            val = S.FqdnVal()
            if not m.lookup(k, val):
                continue
            ports = tuple(
                FqdnPortRule(Proto(p.proto), p.port_lo, p.port_hi, L4Action(p.action))
                for p in list(val.ports)[: min(val.nports, S.L7G_FQDN_PORTS)])
            rows.append(FqdnRow(k.endpoint_id, ip_of_be(k.addr_be), ports, val.expiry_ns,
                                val.name_id, names.get(val.name_id, "")))
        return sorted(rows, key=lambda r: (r.endpoint_id, r.ip))


class CtMap(_Base):
    def _rows(self) -> list[tuple[S.CtKey, CtRow]]:
        m = self._m["l7g_ct_v1"]
        rows = []
        for key in list(m.keys(S.CtKey)):
            k: S.CtKey = key
            v = S.CtVal()
            if not m.lookup(k, v):
                continue
            flags = tuple(name for bit, name in CT_FLAGS.items() if v.flags & bit)
            rows.append((k, CtRow(
                ip_of_be(k.saddr_be), ip_of_be(k.daddr_be), socket.ntohs(k.sport_be),
                socket.ntohs(k.dport_be), k.proto, DIR_OF_CODE.get(k.direction,
                                                                   Direction.INGRESS),
                v.endpoint_id, v.src_identity, v.dst_identity, v.action, flags, v.rule_index,
                v.packets, v.created_ns, v.last_seen_ns)))
        return rows

    def items(self) -> list[CtRow]:
        return sorted((row for _, row in self._rows()), key=lambda r: r.created_ns)

    def delete_where(self, pred: Callable[[CtRow], bool]) -> int:
        """Delete the entries `pred` selects; their next packet is decided afresh."""
        m = self._m["l7g_ct_v1"]
        return sum(1 for key, row in self._rows() if pred(row) and m.delete(key))

    def expire(self, idle_ns: int, now_ns: int | None = None) -> int:
        """Delete entries idle for longer than `idle_ns`; returns how many went."""
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_ns is None else now_ns
        m = self._m["l7g_ct_v1"]
        gone = 0
        for key in list(m.keys(S.CtKey)):
            v = S.CtVal()
            if m.lookup(key, v) and now - v.last_seen_ns > idle_ns and m.delete(key):
                gone += 1
        return gone


class DatapathMaps:
    """All of one node's maps. Build with the loader's fds or `open_pinned(dir)`."""

    def __init__(self, maps: Mapping[str, BpfMap]) -> None:
        missing = [n for n in MAP_NAMES if n not in maps]
        if missing:
            raise RedirectError(f"datapath maps missing: {', '.join(missing)}")
        self._m = dict(maps)
        self.ipcache = IpcacheMap(self._m)
        self.endpoints = EndpointMap(self._m)
        self.policy = PolicyMap(self._m)
        self.fqdn = FqdnMap(self._m)
        self.ct = CtMap(self._m)

    @classmethod
    def open_pinned(cls, pin_dir: str) -> DatapathMaps:
        if not os.path.isdir(pin_dir):
            raise RedirectError(f"no pinned datapath maps at {pin_dir}")
        return cls({n: BpfMap.open_pinned(os.path.join(pin_dir, n)) for n in MAP_NAMES})

    def close(self) -> None:
        for m in self._m.values():
            m.close()

    def set_proxy_ports(self, http_port: int, dns_port: int,
                        proxy_addr: ipaddress.IPv4Address | None = None) -> None:
        """Configure the proxy listener ports (0 = not ready: redirects drop)."""
        cfg = self.policy._config()
        cfg.http_port, cfg.dns_port = http_port, dns_port
        cfg.proxy_addr_be = ip_be(proxy_addr) if proxy_addr else 0
        self._m["l7g_config_v1"].update(ctypes.c_uint32(0), cfg)

    def config(self) -> S.Config:
        return self.policy._config()

    def _percpu_sum(self, name: str, index: int) -> int:
        ncpu = possible_cpus()
        buf = (ctypes.c_uint64 * ncpu)()
        if not self._m[name].lookup(ctypes.c_uint32(index), buf):
            return 0
        return int(sum(buf))

    def counters(self) -> DatapathCounters:
        drops: dict[DropReason | int, int] = {}
        for reason in range(1, DROP_REASON_MAX):
            n = self._percpu_sum("l7g_drops_v1", reason)
            if n:
                try:
                    drops[DropReason(reason)] = n
                except ValueError:
                    drops[reason] = n
        return DatapathCounters(drops, self._percpu_sum("l7g_stats_v1", STAT_FORWARDED),
                                self._percpu_sum("l7g_stats_v1", STAT_REDIRECTED),
                                self._percpu_sum("l7g_stats_v1", STAT_EVENTS_LOST))

    def lost_events(self) -> int:
        """Events the BPF side could not reserve in the ring buffer (all CPUs)."""
        return self._percpu_sum("l7g_stats_v1", STAT_EVENTS_LOST)

    def sizes(self) -> dict[str, int]:
        """Entries of the ipcache, policy (the live generation), FQDN and conntrack maps:
        what `len(X.items())` gives, from a walk of the keys alone (no value read, no row
        built). Still one syscall per entry, so callers on an event loop run it in a thread
        (a 20k-entry conntrack map held the agent's loop for 170-210 ms through items())."""
        live = self.policy.generation()
        policy = sum(1 for k in self._m["l7g_policy_v1"].keys(S.PolicyKey) if k.gen == live)
        return {"ipcache": self._m["l7g_ipcache_v1"].count(),
                "policy": policy,
                "fqdn": self._m["l7g_fqdn_v1"].count(),
                "ct": self._m["l7g_ct_v1"].count()}


__all__ = [
    "CtRow", "DatapathCounters", "DatapathMaps", "EndpointConfig", "FqdnPortRule", "FqdnRow",
    "IpcacheRow", "PolicyRow", "ip_be", "ip_of_be", "port_range_prefixes",
]
