"""The FQDN cache's pure logic: which IPs each endpoint may reach because of toFQDNs.

Contract (no I/O, no clock of its own, no logging): every method takes `now` as wall-clock
seconds (float, `time.time()`), so persisted expiries stay meaningful across a restart. The
agent owns one `FqdnCache`, feeds it allowed DNS answers (`learn`), runs `expire` on a timer,
turns the returned `CacheDelta`s into BPF fqdn-map writes/deletes (keyed by endpoint and IP,
value = merged ports + expiry) and persists `to_json()` atomically after every change.

Semantics (policy-semantics.md §8, Cilium `DNSCache`/namemanager):
- Only names matched by at least one of the endpoint's toFQDNs selectors are learned; the
  ports are the union of the matching selectors' ports, across every name holding that IP.
- TTL = max(record TTL, `min_ttl`) (`--tofqdns-min-ttl`); an IP is removed once
  `expiry + grace_s <= now`, but never while `in_use(endpoint_id, ip)` says conntrack still
  has a connection using it (Cilium keeps such "zombies").
- A per-(endpoint, name) cap evicts the oldest IPs that are not in the current answer and not
  in use (`--tofqdns-endpoint-max-ip-per-hostname`). Names that rotate many IPs with short
  TTLs keep working because the IPs of the latest answer are never evicted by it.
- Rebinding guard (security-reliability §1.3): loopback, link-local, private/ULA, unspecified,
  multicast, reserved and IPv4-mapped addresses are refused unless `allow_private=True`.
- Recently expired (endpoint, IP) pairs remember their names so a later drop's flow can say
  "FQDN_EXPIRED" and which name it was.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from policy.dnsname import NameMatcher, normalize_name
from policy.errors import ConfigError

PortRange = tuple[int, int, int]  # (IP protocol, first port, last port); protocol 0 = any
ALL_PORTS: frozenset[PortRange] = frozenset({(0, 0, 65535)})  # toFQDNs without toPorts
DEFAULT_MAX_IPS_PER_NAME = 1000  # Cilium pkg/defaults ToFQDNsMaxIPsPerHost (docs say 50)
DEFAULT_MIN_TTL_S = 0  # Cilium default since 1.14 (was 3600)
MAX_EXPIRED_MEMORY = 4096  # (endpoint, IP) pairs remembered after expiry, for drop flows
JSON_VERSION = 1
IP_CLASSIFY_CACHE = 65536  # distinct IPs whose parse is memoized (~10 MiB at most)


class FqdnSelector(NamedTuple):
    """One toFQDNs selector of an endpoint: its names/patterns, ports and the rule it came from.

    A plain `(matcher, ports)` pair is accepted too (`FqdnSelector(*pair)`).
    """

    matcher: NameMatcher
    ports: frozenset[PortRange]
    rule_id: str = ""


@dataclass(frozen=True, slots=True)
class FqdnMapEntry:
    """What one BPF fqdn-map entry must hold for (endpoint, IP)."""

    endpoint_id: int
    ip: str
    ports: frozenset[PortRange]
    expiry: float


@dataclass(slots=True)
class CacheDelta:
    """Map writes (`added`: insert or update) and deletions (`removed`: (endpoint, ip))."""

    added: list[FqdnMapEntry] = field(default_factory=list)
    removed: list[tuple[int, str]] = field(default_factory=list)
    rejected_ips: list[str] = field(default_factory=list)  # rebinding guard or unparsable
    evicted: int = 0  # IPs dropped from a name by the per-name cap

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


@dataclass(frozen=True, slots=True)
class FqdnCacheEntry:
    """One row of `l7gate fqdn cache list`."""

    endpoint_id: int
    name: str
    ip: str
    expiry: float
    learned: float
    ports: frozenset[PortRange]
    selectors: frozenset[str]


@dataclass(slots=True)
class _IpState:
    expiry: float
    learned: float  # last time an answer carried this IP (eviction order: oldest first)
    ports: frozenset[PortRange]
    selectors: frozenset[str]


def is_rebinding_address(ip: str) -> bool:
    """True for addresses a public name must not teach (DNS rebinding, RFC 1918, ...)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return True
    return bool(addr.is_loopback or addr.is_link_local or addr.is_private or addr.is_unspecified
                or addr.is_multicast or addr.is_reserved)


@functools.lru_cache(maxsize=IP_CLASSIFY_CACHE)
def _classify(raw_ip: str) -> tuple[str, bool | None]:
    """(canonical IP, is_rebinding_address) or (raw, None) when unparsable. Cached: parsing
    and the private-range checks cost ~20 µs per answer, and answers repeat the same IPs."""
    try:
        ip = str(ipaddress.ip_address(raw_ip))
    except ValueError:
        return raw_ip, None
    return ip, is_rebinding_address(ip)


class FqdnCache:
    """(endpoint_id, name) -> {ip -> expiry, last learned, ports, selectors}. Pure."""

    def __init__(self) -> None:
        self.removals = 0  # bumped whenever an (endpoint, name, IP) leaves: callers that
        # remember "already learned" must forget it then
        self._names: dict[tuple[int, str], dict[str, _IpState]] = {}
        self._by_ip: dict[tuple[int, str], set[str]] = {}
        # Merged view per (endpoint, IP), kept incrementally: one CDN IP may serve thousands
        # of names, so recomputing it on every answer would be O(names) per learn.
        self._agg: dict[tuple[int, str], FqdnMapEntry] = {}
        self._expired: collections.OrderedDict[tuple[int, str], tuple[str, ...]] = (
            collections.OrderedDict())

    # --- learning -----------------------------------------------------------------------------

    def learn(
        self,
        endpoint_id: int,
        name: str,
        ips_ttls: Iterable[tuple[str, int]],
        now: float,
        selectors: Sequence[FqdnSelector],
        *,
        allow_private: bool,
        min_ttl: int = DEFAULT_MIN_TTL_S,
        max_ips_per_name: int = DEFAULT_MAX_IPS_PER_NAME,
        in_use: Callable[[int, str], bool] | None = None,
    ) -> CacheDelta:
        """Record an allowed answer's IPs for `name` if a selector of the endpoint matches it."""
        name = normalize_name(name)
        matched = [s for s in selectors if s.matcher.matches(name)]
        delta = CacheDelta()
        if not matched:
            return delta
        if len(matched) == 1:  # the common case, without building new sets
            ports = matched[0].ports
            rule_ids = frozenset((matched[0].rule_id,)) if matched[0].rule_id else frozenset()
        else:
            ports = frozenset().union(*(s.ports for s in matched))
            rule_ids = frozenset(s.rule_id for s in matched if s.rule_id)
        fresh = self._filter(ips_ttls, allow_private, max_ips_per_name, delta)
        if not fresh:
            return delta
        ips = self._names.setdefault((endpoint_id, name), {})
        for ip, ttl in fresh.items():
            expiry = now + max(ttl, min_ttl)
            state = ips.get(ip)
            key = (endpoint_id, ip)
            if state is None:
                state = ips[ip] = _IpState(expiry, now, ports, rule_ids)
                self._by_ip.setdefault(key, set()).add(name)
                self._expired.pop(key, None)
                stale = False
            else:
                stale = state.ports != ports  # the policy changed this name's ports
                state.expiry = max(state.expiry, expiry)  # never shorten a granted allowance
                state.learned, state.ports, state.selectors = now, ports, rule_ids
            old = self._agg.get(key)
            if stale or old is None:
                self._agg.pop(key, None)
                self._recompute(endpoint_id, ip)
            else:
                self._agg[key] = FqdnMapEntry(endpoint_id, ip, old.ports | ports,
                                              max(old.expiry, state.expiry))
        delta.added.extend(self._agg[(endpoint_id, ip)] for ip in sorted(fresh))
        if len(ips) > max_ips_per_name:
            victims = self._evict(endpoint_id, name, set(fresh), max_ips_per_name, in_use, delta)
            self._emit(endpoint_id, victims, delta)
        return delta

    @staticmethod
    def _filter(ips_ttls: Iterable[tuple[str, int]], allow_private: bool, cap: int,
                delta: CacheDelta) -> dict[str, int]:
        fresh: dict[str, int] = {}
        for raw_ip, ttl in ips_ttls:
            ip, rebinding = _classify(raw_ip)
            rejected = rebinding is None or (not allow_private and rebinding)
            if rejected:
                delta.rejected_ips.append(ip)
            elif len(fresh) < cap:  # a huge answer is cut at the per-name cap
                fresh[ip] = max(fresh.get(ip, 0), int(ttl))
        return fresh

    def _evict(self, endpoint_id: int, name: str, keep: set[str], cap: int,
               in_use: Callable[[int, str], bool] | None, delta: CacheDelta) -> set[str]:
        ips = self._names[(endpoint_id, name)]
        if len(ips) <= cap:
            return set()
        victims: set[str] = set()
        for ip in sorted((ip for ip in ips if ip not in keep), key=lambda i: ips[i].learned):
            if len(ips) <= cap:
                break
            if in_use is not None and in_use(endpoint_id, ip):
                continue  # a live connection uses it: keep it (Cilium's zombie rule)
            self._drop_ip(endpoint_id, name, ip)
            victims.add(ip)
            delta.evicted += 1
        return victims

    # --- expiry ----------------------------------------------------------------------------

    def due(self, now: float, grace_s: float) -> bool:
        """Would `expire(now, ..., grace_s)` ask `in_use` about any IP (one past its TTL plus
        grace)? Lets the caller build what in_use reads beforehand, off the hot path."""
        return any(state.expiry + grace_s <= now
                   for ips in self._names.values() for state in ips.values())

    def expire(self, now: float, in_use: Callable[[int, str], bool], grace_s: float) -> CacheDelta:
        """Remove IPs whose TTL plus grace has run out and that no open connection uses."""
        delta = CacheDelta()
        touched: dict[int, set[str]] = {}
        for (endpoint_id, name), ips in list(self._names.items()):
            for ip, state in list(ips.items()):
                if state.expiry + grace_s > now or in_use(endpoint_id, ip):
                    continue
                self._drop_ip(endpoint_id, name, ip)
                self._remember_expired(endpoint_id, ip, name)
                touched.setdefault(endpoint_id, set()).add(ip)
        for endpoint_id, ips_touched in touched.items():
            self._emit(endpoint_id, ips_touched, delta)
        return delta

    def reselect(self, selectors_of: Callable[[int], Sequence[FqdnSelector]]) -> CacheDelta:
        """After a policy change: match every learned name again against its endpoint's
        selectors (`selectors_of(endpoint_id)`, [] for an endpoint that is gone). Names no
        selector matches any more lose their IPs now, so a revoked toFQDNs rule stops
        allowing at once (as Cilium drops a selector's identities), not when the TTL runs
        out; the others take the new ports. Returns the map changes."""
        delta = CacheDelta()
        touched: dict[int, set[str]] = {}
        for (endpoint_id, name), ips in list(self._names.items()):
            matched = [s for s in selectors_of(endpoint_id) if s.matcher.matches(name)]
            if not matched:
                for ip in list(ips):
                    self._drop_ip(endpoint_id, name, ip)
                    touched.setdefault(endpoint_id, set()).add(ip)
                continue
            ports = frozenset().union(*(s.ports for s in matched))
            rule_ids = frozenset(s.rule_id for s in matched if s.rule_id)
            for ip, state in ips.items():
                if state.ports != ports or state.selectors != rule_ids:
                    state.ports, state.selectors = ports, rule_ids
                    touched.setdefault(endpoint_id, set()).add(ip)
        for endpoint_id, ips_touched in touched.items():
            self._emit(endpoint_id, ips_touched, delta)
        return delta

    def _remember_expired(self, endpoint_id: int, ip: str, name: str) -> None:
        key = (endpoint_id, ip)
        names = self._expired.pop(key, ())
        self._expired[key] = tuple(sorted({*names, name}))
        while len(self._expired) > MAX_EXPIRED_MEMORY:
            self._expired.popitem(last=False)

    def expired_names(self, endpoint_id: int, ip: str) -> list[str]:
        """Names that used to allow this IP for this endpoint and have expired (for drops)."""
        if (endpoint_id, ip) in self._by_ip:
            return []
        return list(self._expired.get((endpoint_id, ip), ()))

    def forget_endpoint(self, endpoint_id: int) -> CacheDelta:
        """The endpoint is gone: remove everything it had learned."""
        delta = CacheDelta()
        for key in [k for k in self._names if k[0] == endpoint_id]:
            for ip in list(self._names[key]):
                self._drop_ip(endpoint_id, key[1], ip)
        for ep, ip in [k for k in self._agg if k[0] == endpoint_id]:
            self.removals += 1
            del self._agg[(ep, ip)]
            delta.removed.append((ep, ip))
        return delta

    # --- shared bookkeeping ---------------------------------------------------------------

    def _drop_ip(self, endpoint_id: int, name: str, ip: str) -> None:
        self.removals += 1
        ips = self._names[(endpoint_id, name)]
        del ips[ip]
        if not ips:
            del self._names[(endpoint_id, name)]
        names = self._by_ip[(endpoint_id, ip)]
        names.discard(name)
        if not names:
            del self._by_ip[(endpoint_id, ip)]

    def _recompute(self, endpoint_id: int, ip: str) -> FqdnMapEntry | None:
        key = (endpoint_id, ip)
        names = self._by_ip.get(key)
        if not names:
            self._agg.pop(key, None)
            return None
        states = [self._names[(endpoint_id, n)][ip] for n in names]
        ports = frozenset().union(*(s.ports for s in states))
        entry = self._agg[key] = FqdnMapEntry(endpoint_id, ip, ports, max(s.expiry for s in states))
        return entry

    def _emit(self, endpoint_id: int, ips: Iterable[str], delta: CacheDelta) -> None:
        """Recompute the merged entry of IPs that lost a name; write or delete it."""
        for ip in sorted(ips):
            entry = self._recompute(endpoint_id, ip)
            if entry is None:
                delta.removed.append((endpoint_id, ip))
            else:
                delta.added.append(entry)

    # --- queries ---------------------------------------------------------------------------

    def lookup_names(self, endpoint_id: int, ip: str) -> list[str]:
        return sorted(self._by_ip.get((endpoint_id, ip), ()))

    def map_entries(self) -> list[FqdnMapEntry]:
        """Every (endpoint, IP) entry the BPF map must hold (used after a restore)."""
        return [self._agg[key] for key in sorted(self._by_ip)]

    def entries(self) -> list[FqdnCacheEntry]:
        return [
            FqdnCacheEntry(ep, name, ip, s.expiry, s.learned, s.ports, s.selectors)
            for (ep, name), ips in sorted(self._names.items())
            for ip, s in sorted(ips.items())
        ]

    @property
    def ip_count(self) -> int:
        """(endpoint, IP) pairs = BPF fqdn-map entries in use (map pressure numerator)."""
        return len(self._by_ip)

    @property
    def name_count(self) -> int:
        return len(self._names)

    # --- persistence -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"version": JSON_VERSION, "entries": [
            {"endpoint_id": e.endpoint_id, "name": e.name, "ip": e.ip, "expiry": e.expiry,
             "learned": e.learned, "ports": sorted(list(p) for p in e.ports),
             "selectors": sorted(e.selectors)}
            for e in self.entries()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FqdnCache:
        """Rebuild a cache from `to_json()`; raises ConfigError on anything malformed."""
        if not isinstance(data, dict) or data.get("version") != JSON_VERSION:
            raise ConfigError(f"fqdn cache state: unsupported version {data.get('version')!r}"
                              if isinstance(data, dict) else "fqdn cache state: not an object")
        cache = cls()
        for index, row in enumerate(data.get("entries", [])):
            try:
                ep, name = int(row["endpoint_id"]), normalize_name(str(row["name"]))
                ip = str(ipaddress.ip_address(row["ip"]))
                ports = frozenset((int(a), int(b), int(c)) for a, b, c in row["ports"])
                state = _IpState(float(row["expiry"]), float(row["learned"]), ports,
                                 frozenset(str(s) for s in row["selectors"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"fqdn cache state: entry {index}: {exc}") from exc
            cache._names.setdefault((ep, name), {})[ip] = state
            cache._by_ip.setdefault((ep, ip), set()).add(name)
        for ep, ip in list(cache._by_ip):
            cache._recompute(ep, ip)
        return cache
