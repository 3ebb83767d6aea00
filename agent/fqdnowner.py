"""The one owner of learned FQDN IPs: cache, BPF fqdn map and the state file.

The DNS proxy hands every allowed answer to `FqdnOwner.learn`, which (1) asks the pure
`policy.fqdn.FqdnCache` what changes, (2) writes the (endpoint, IP) allow entries into the
BPF map, (3) writes the cache through to `<state-dir>/fqdn-cache.json` (atomic rename), and
only then returns, so the proxy releases the answer after the datapath allows the IPs.
`gc()` expires IPs whose TTL plus grace has run out and that no conntrack entry uses.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

from agent.flows import wall_to_boottime_ns
from agent.state import ClusterState
from policy.fqdn import CacheDelta, FqdnCache, FqdnMapEntry, FqdnSelector
from policy.types import L4Action, Proto
from redirect.maps import DatapathMaps, FqdnPortRule

log = logging.getLogger("l7gate.fqdn")

STATE_FILE = "fqdn-cache.json"
DEFAULT_GRACE_S = 5.0  # after TTL, before removal (Cilium: idle-connection grace 0 s + GC 60 s)
# The kernel's own expiry is only a backstop for when the agent is away (the agent's GC
# removes entries on time); giving it slack lets TTL refreshes skip the map write.
KERNEL_EXPIRY_SLACK_S = 30.0
# An answer identical to one learned less than this long ago (same pod, name and IPs, no TTL
# longer than the one granted then, same policy state, nothing removed from the cache since)
# only moves expiries forward by less than this: it is not learned again. Applied only while
# the grace period (DEFAULT_GRACE_S) is at least as long, so no IP can expire earlier than its
# TTL promised. Why: learning an answer (name match, per-IP bookkeeping, map-write check) was
# the largest cost of a DNS query that teaches IPs (py-spy under dnsperf in the sandbox).
REFRESH_COALESCE_S = 1.0
RECENT_MAX = 16384  # remembered (pod, name) answers (names up to 255 chars); cleared when full
PERSIST_DEBOUNCE_S = 1.0  # TTL refreshes reach the state file within this; new IPs at once
MAX_PORT_RULES = 4  # what one l7g_fqdn_v1 value holds (L7G_FQDN_PORTS)
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


def name_id(name: str) -> int:
    """A stable 31-bit id for a DNS name (stored in the map for drop attribution)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF or 1


class FqdnOwner:
    def __init__(self, maps: DatapathMaps | None, state_dir: str, *,
                 state: Callable[[], ClusterState], min_ttl_s: int = 0,
                 max_ips_per_name: int = 1000, grace_s: float = DEFAULT_GRACE_S,
                 allow_private: bool = False, clock: Callable[[], float] = time.time,
                 in_use: Callable[[int, str], bool] | None = None) -> None:
        self.maps = maps
        self.path = os.path.join(state_dir, STATE_FILE)
        self.cache = FqdnCache()
        self._state = state
        self.min_ttl_s = min_ttl_s
        self.max_ips_per_name = max_ips_per_name
        self.grace_s = grace_s
        self.allow_private = allow_private
        self.clock = clock
        self.in_use = in_use or (lambda _ep, _ip: False)
        self.learned_total = 0
        self.expired_total = 0
        self.rejected_total = 0
        self.write_errors = 0
        self.map_writes = 0
        self._written: dict[tuple[int, str], tuple[frozenset[tuple[int, int, int]], float]] = {}
        self._dirty_since: float | None = None
        # (endpoint, name as asked) -> (learned at, IPs, earliest expiry granted, removals)
        self._recent: dict[tuple[int, str], tuple[float, frozenset[str], float, int]] = {}
        self._recent_state: ClusterState | None = None
        self.coalesced_total = 0

    # --- persistence ------------------------------------------------------------------------

    def restore(self) -> int:
        """Load the state file (if any) and re-apply every entry to the map; returns IP count."""
        try:
            with open(self.path) as f:
                data: dict[str, Any] = json.load(f)
            self.cache = FqdnCache.from_json(data)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s: cannot restore the FQDN cache (%s); starting empty", self.path, exc)
            return 0
        self._apply(CacheDelta(added=self.cache.map_entries()), force=True)
        return self.cache.ip_count

    def _persist(self) -> None:
        self._dirty_since = None
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".fqdn-", dir=directory)
            with os.fdopen(fd, "w") as f:
                json.dump(self.cache.to_json(), f)
            os.replace(tmp, self.path)
        except OSError as exc:
            self.write_errors += 1
            log.error("%s: cannot write the FQDN cache: %s", self.path, exc)

    # --- learning and expiry ----------------------------------------------------------------

    def learn(self, src_ip: str, qname: str, ips_ttls: list[tuple[str, int]]) -> int:
        st = self._state()
        ep = st.local_endpoint_str(src_ip)
        if ep is None:
            return 0
        now = self.clock()
        if self._recent_state is not st:  # a reload: selectors and ports may differ
            self._recent.clear()
            self._recent_state = st
        recent_key = (ep.endpoint_id, qname)
        # Longest and shortest of max(ttl, min_ttl_s) over the answer. This runs on every
        # answer that teaches IPs, coalesced or not: generator expressions and the max()/min()
        # builtins cost ~1.5-2k instructions each (callgrind), so the usual one-address answer
        # takes a branch of its own, and longer ones max/min(ttls) bounded by min_ttl_s.
        min_ttl = self.min_ttl_s
        if len(ips_ttls) == 1:
            (ip, ttl), = ips_ttls
            ips = frozenset((ip,))
            longest = shortest = ttl if ttl > min_ttl else min_ttl
        elif ips_ttls:
            ips = frozenset(map(_first, ips_ttls))
            ttls = list(map(_second, ips_ttls))
            longest = max(max(ttls), min_ttl)
            shortest = max(min(ttls), min_ttl)
        else:
            ips, longest, shortest = frozenset(), 0, 0
        last = self._recent.get(recent_key)
        if (last is not None and now - last[0] < REFRESH_COALESCE_S
                and self.grace_s >= REFRESH_COALESCE_S and last[1] == ips
                and now + longest <= last[2] + REFRESH_COALESCE_S
                and last[3] == self.cache.removals):
            self.coalesced_total += 1
            return 0
        selectors = self._selectors(st, ep.endpoint_id)
        if not selectors:
            return 0
        delta = self.cache.learn(ep.endpoint_id, qname, ips_ttls, now, selectors,
                                 allow_private=self.allow_private, min_ttl=self.min_ttl_s,
                                 max_ips_per_name=self.max_ips_per_name, in_use=self.in_use)
        learned = (now, ips, now + shortest, self.cache.removals)
        self.rejected_total += len(delta.rejected_ips)
        if delta:
            if self._apply(delta):  # raises if the map write fails: nothing is remembered
                self._persist()  # a new IP, port set or removal: write through now
            elif self._dirty_since is None:
                self._dirty_since = self.clock()  # only TTLs moved: batched (flush())
            self.learned_total += len(delta.added)
        if len(self._recent) >= RECENT_MAX:
            self._recent.clear()
        self._recent[recent_key] = learned  # only once the datapath has it
        return len(delta.added)

    @staticmethod
    def _selectors(st: ClusterState, endpoint_id: int) -> list[FqdnSelector]:
        key = ("fqdn_cache_selectors", endpoint_id)
        found = st.memo.get(key)
        if isinstance(found, list):
            return found
        sels = [FqdnSelector(r.matcher, r.port_ranges(), r.rule_id)
                for r in st.fqdn_selectors(endpoint_id)]
        st.memo[key] = sels
        return sels

    def flush(self) -> None:
        """Write pending TTL refreshes to the state file (called about once a second)."""
        if self._dirty_since is not None:
            self._persist()

    def gc(self) -> int:
        delta = self.cache.expire(self.clock(), self.in_use, self.grace_s)
        if delta:
            self._apply(delta)
            self._persist()
        self.expired_total += len(delta.removed)
        return len(delta.removed)

    def reapply(self) -> None:
        """After a policy reload (or a restore under a changed policy): every learned name is
        matched again against the new selectors (a name no rule selects any more loses its
        IPs now; the others take the new ports), then every entry is rewritten, as actions
        (allow / HTTP redirect) may have changed too."""
        st = self._state()
        delta = self.cache.reselect(lambda endpoint_id: self._selectors(st, endpoint_id))
        self._apply(CacheDelta(added=self.cache.map_entries(), removed=delta.removed),
                    force=True)
        if delta:
            self._persist()

    # --- the map ----------------------------------------------------------------------------

    def _apply(self, delta: CacheDelta, *, force: bool = False) -> bool:
        """Write the delta to the map; True when something besides a TTL refresh changed.

        A refresh whose new expiry is still covered by the kernel expiry written earlier
        (which carries KERNEL_EXPIRY_SLACK_S) needs no map write at all.
        """
        material = bool(delta.removed)
        st = self._state() if self.maps is not None else None
        for entry in delta.added:
            key = (entry.endpoint_id, entry.ip)
            want = entry.expiry + self.grace_s
            old = self._written.get(key)
            if old is not None and old[0] == entry.ports and old[1] >= want and not force:
                continue
            material = material or old is None or old[0] != entry.ports
            kernel_expiry = want + KERNEL_EXPIRY_SLACK_S
            self._written[key] = (entry.ports, kernel_expiry)
            if self.maps is not None and st is not None:
                names = self.cache.lookup_names(entry.endpoint_id, entry.ip)
                first = names[0] if names else ""
                self.maps.fqdn.set(entry.endpoint_id, entry.ip, self._port_rules(st, entry),
                                   wall_to_boottime_ns(kernel_expiry), name_id(first), first)
                self.map_writes += 1
        for endpoint_id, ip in delta.removed:
            self._written.pop((endpoint_id, ip), None)
            if self.maps is not None:
                self.maps.fqdn.delete(endpoint_id, ip)
        return material

    @staticmethod
    def _port_rules(st: ClusterState, entry: FqdnMapEntry) -> list[FqdnPortRule]:
        actions: dict[tuple[int, int, int], L4Action] = {}
        for rule in st.fqdn_selectors(entry.endpoint_id):
            for p in rule.ports:
                key = (int(p.proto), p.lo, p.hi)
                if actions.get(key) is not L4Action.REDIRECT_HTTP:
                    actions[key] = p.action
        out = [FqdnPortRule(Proto(proto), lo, hi, actions.get((proto, lo, hi), L4Action.ALLOW))
               for proto, lo, hi in sorted(entry.ports)]
        if len(out) > MAX_PORT_RULES:
            log.warning("FQDN IP %s: %d port ranges, keeping %d", entry.ip, len(out),
                        MAX_PORT_RULES)
        return out[:MAX_PORT_RULES]

    # --- queries ------------------------------------------------------------------------------

    def names_for(self, endpoint_id: int, ip: str) -> list[str]:
        return self.cache.lookup_names(endpoint_id, ip) or self.cache.expired_names(endpoint_id, ip)

    def rows(self, endpoint: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        st = self._state()
        out = []
        for e in self.cache.entries():
            ep = st.local_endpoint_by_id(e.endpoint_id)
            ref = ep.ref if ep is not None else str(e.endpoint_id)
            if endpoint and endpoint not in (ref, str(e.endpoint_id)):
                continue
            if name and name.lower().rstrip(".") + "." != e.name:
                continue
            out.append({"endpoint": ref, "endpoint_id": e.endpoint_id, "name": e.name,
                        "ip": e.ip, "ttl_remaining_s": max(0, int(e.expiry - self.clock())),
                        "expires": e.expiry, "learned": e.learned,
                        "ports": sorted(f"{p[1]}-{p[2]}/{Proto(p[0]).name}" for p in e.ports),
                        "selectors": sorted(e.selectors)})
        return out
