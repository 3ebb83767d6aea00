"""`l7gate agent`: one node's agent, wiring policy, datapath, proxies, flows and metrics.

Start-up order (fail closed): endpoints and policy are read and compiled first (a broken
policy at start falls back to the last good copy kept in the state dir, else the agent
refuses to start); the BPF maps are adopted or created and filled; the FQDN cache is
restored into the map; the programs are attached and the tproxy route installed; only then
do the proxies listen and the datapath learns their ports. SIGHUP rebuilds the whole
`ClusterState` and swaps it; a failure keeps the old one (STYLE.md §3). SIGTERM closes the
proxies and the API but leaves the pinned maps and tc programs in place, so the kernel keeps
enforcing the last policy while the agent is away (redirected traffic then fails closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent import gctune
from agent.endpoints import ClusterEndpoints, load_endpoints
from agent.flows import emit_l7_flow, emit_l7_flows, flow_from_event
from agent.fqdnowner import FqdnOwner
from agent.looplag import LoopLag
from agent.state import PLAN_CACHE_MAX, ClusterState
from observe.api import ApiServer
from observe.export import FlowExporter
from observe.flow import Flow
from observe.ring import FlowRing
from policy.compile import PolicySnapshot, compile_policies
from policy.errors import ConfigError, L7gateError, PolicyError
from policy.load import load_directory
from policy.types import HttpRequestView, L4Action, Proto, Verdict
from proxy.busypoll import BusyPoll, default_max_us
from redirect.marks import proxy_upstream_mark

log = logging.getLogger("l7gate.agent")

LAST_GOOD_DIR = "last-good-policy"  # copy of the policy files of the active snapshot
FQDN_GC_INTERVAL_S = 1.0  # expiry check period (Cilium's GC runs every 60 s)
CT_IDLE_NS = 300 * 1_000_000_000  # conntrack entries idle this long are reclaimed by the GC
CT_ACTIVE_NS = 10 * 1_000_000_000  # a flow seen this recently counts as "in use" for FQDN GC
CT_SNAPSHOT_NS = 1_000_000_000  # how long one conntrack dump answers "in use" questions
CT_GC_EVERY = 30  # housekeeping rounds between conntrack sweeps
# How long a proxy flow may wait in queue_l7's batch before it is published (ring, export,
# metrics). Why not once per event-loop iteration: under load the loop turns every couple
# of requests (sandbox, c=64: 1.7-3.7 flows per batch, `l7gate status` flows.l7_batches),
# and a batch costs ~28k instructions whatever its size (callgrind, scratch flush bench:
# 40.0k per flow in batches of 1, 26.0k of 2, 21.2k of 3, 14.0k of 14). Readers never see
# the delay: the API and a metrics scrape flush first (`flush_for_reader`).
L7_FLUSH_DELAY_S = 0.001
RELOAD_SWITCH_INTERVAL_S = 0.001  # sys.setswitchinterval while a reload compiles
READER_FLUSH_TIMEOUT_S = 1.0  # a scrape waits at most this long for the loop to flush


@dataclass
class AgentConfig:
    node_name: str
    endpoints: str
    policy_dir: str
    api_socket: str = "/run/l7gate/api.sock"
    state_dir: str = "/var/lib/l7gate"
    metrics_addr: str = ""
    pin_root: str = "/sys/fs/bpf/l7gate"
    http_proxy_port: int = 15001
    dns_proxy_port: int = 15053
    flow_export_file: str = ""
    flow_export_max_size_mb: int = 10
    dns_reject: str = "refused"
    fqdn_min_ttl_s: int = 0
    fqdn_max_ips_per_name: int = 1000
    fqdn_grace_s: float = 5.0
    fqdn_allow_private: bool = False
    http_codec: str = "auto"
    # --busy-poll-us: the event loop's adaptive polling window (proxy/busypoll.py); "auto":
    # 200 us with 2+ CPUs and no CPU quota, else off; 0: off
    busy_poll_us: int | str = "auto"
    # Cilium's --dns-policy-unload-on-shutdown: False = fail closed (DNS of pods with
    # rules.dns fails while the agent is down); True = fail open (their DNS goes straight to
    # the server, unfiltered and teaching no FQDN IPs, until the agent is back).
    dns_unload_on_shutdown: bool = False
    ring_capacity: int = 8192
    enable_datapath: bool = True


def read_cluster_state(cfg: AgentConfig, generation: int) -> tuple[ClusterState, list[str]]:
    """Read endpoints + policies and build a state; raises ConfigError/PolicyError."""
    cluster: ClusterEndpoints = load_endpoints(cfg.endpoints)
    if cfg.node_name not in {n.name for n in cluster.nodes}:
        raise ConfigError(f"{cfg.endpoints}:0: node {cfg.node_name!r} is not in the file")
    result = load_directory(cfg.policy_dir)
    if result.errors:
        raise PolicyError(result.errors)
    snapshot: PolicySnapshot = compile_policies(result.policies)
    warnings = [str(w) for w in result.warnings]
    return ClusterState.build(cfg.node_name, snapshot, cluster, generation), warnings


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.state: ClusterState | None = None
        self.started_at = time.time()
        self.generation = 0
        self.last_reload: dict[str, Any] = {"result": "none"}
        self.ring = FlowRing(capacity=cfg.ring_capacity, on_lost=self._count_lost)
        self.gc_policy: gctune.GcPolicy | None = None  # set once housekeeping runs
        self.loop_lag: LoopLag | None = None  # set once run() started
        self.busy_poll: BusyPoll | None = None  # set once run() started
        self.housekeeping_last_s = 0.0  # how long the last / longest housekeeping round took
        self.housekeeping_max_s = 0.0
        self._bpf_lost_seen = 0  # ringbuf reservations the BPF side could not make
        self.datapath: Any = None
        self.events: Any = None
        self.fqdn: FqdnOwner | None = None
        self.http: Any = None
        self.dns: Any = None
        self.api: ApiServer | None = None
        self.exporter: FlowExporter | None = None
        self.metrics: Any = None
        self.flow_metrics: Any = None
        self.metrics_server: Any = None
        self.registry: Any = None
        self._pinned: Any = None
        self._ct_active: tuple[int, set[tuple[int, str]]] | None = None
        self.dns_port = 0
        self.attached: list[str] = []
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._rule_names: dict[int, str] = {}
        self._fqdn_name_ids: dict[int, str] = {}
        self._l7_pending: list[Flow] = []  # queue_l7's batch, published by flush_l7
        self.l7_batches = 0  # flush_l7 calls that published flows
        self._loop: asyncio.AbstractEventLoop | None = None  # once bind_loop() ran
        self._flush_at: Any = None  # the pending flush's TimerHandle, if any

    # --- state ------------------------------------------------------------------------------

    def current(self) -> ClusterState:
        if self.state is None:
            raise RuntimeError("agent has no state yet")
        return self.state

    def _initial_state(self) -> ClusterState:
        try:
            st, warnings = read_cluster_state(self.cfg, 1)
        except PolicyError as exc:
            backup = os.path.join(self.cfg.state_dir, LAST_GOOD_DIR)
            log.error("policy is invalid:\n%s", exc)
            if not os.path.isdir(backup):
                raise
            log.error("starting with the last good policy kept in %s", backup)
            st, warnings = read_cluster_state(dataclasses.replace(self.cfg, policy_dir=backup), 1)
            self.last_reload = {"result": "failure", "errors": str(exc).splitlines()}
        else:
            self._keep_last_good()
            self.last_reload = {"result": "success", "time": time.time()}
        for w in warnings:
            log.warning("%s", w)
        self.generation = 1
        return st

    def _keep_last_good(self) -> None:
        dst = os.path.join(self.cfg.state_dir, LAST_GOOD_DIR)
        tmp = dst + ".new"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.cfg.policy_dir, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)

    def request_reload(self) -> None:
        """SIGHUP handler: only schedules (STYLE.md §3)."""
        self._reload_requested.set()

    def reload(self) -> bool:
        """Re-read endpoints and policy; swap on success, keep everything on failure."""
        try:
            read = read_cluster_state(self.cfg, self.generation + 1)
        except (PolicyError, ConfigError, L7gateError) as exc:
            return self._reload_failed(exc)
        return self._reload_with(*read)

    async def reload_async(self) -> bool:
        """`reload()` as the running agent does it (SIGHUP): the files are read, compiled and
        expanded into policy-map entries in a thread, so the proxies keep serving meanwhile
        (402 policies: 306 ms compile + 229 ms expansion, which held the loop 430-875 ms per
        reload); the map writes and the swap follow on the loop, in one step, as before: no
        request is decided on a policy the kernel does not enforce yet. The copy of the good
        files is made in a thread after the swap."""
        loop = asyncio.get_running_loop()
        generation = self.generation + 1

        def prepare() -> tuple[ClusterState, list[str]]:
            st, warnings = read_cluster_state(self.cfg, generation)
            st.policy_entries()  # the costly expansion (memoized on the new state)
            return st, warnings
        # the compiling thread and the loop share the GIL: hand it over every millisecond
        # rather than every 5 (CPython's default) while it runs
        switch = sys.getswitchinterval()
        sys.setswitchinterval(RELOAD_SWITCH_INTERVAL_S)
        try:
            read = await loop.run_in_executor(None, prepare)
        except (PolicyError, ConfigError, L7gateError) as exc:
            return self._reload_failed(exc)
        finally:
            sys.setswitchinterval(switch)
        if not self._reload_with(*read, keep_last_good=False):
            return False
        try:  # file copies: in a thread too
            await loop.run_in_executor(None, self._keep_last_good)
        except OSError as exc:
            log.error("reload: cannot keep a copy of the good policy: %s", exc)
        return True

    def _reload_failed(self, exc: Exception) -> bool:
        log.error("reload failed, keeping policy revision %s:\n%s",
                  self.state.snapshot.revision if self.state else "-", exc)
        self.last_reload = {"result": "failure", "time": time.time(),
                            "errors": str(exc).splitlines()}
        if self.metrics is not None:
            self.metrics.policy_reloads.labels(result="failure").inc()
            self.metrics.policy_reload_failures.inc()
        return False

    def _reload_with(self, st: ClusterState, warnings: list[str],
                     keep_last_good: bool = True) -> bool:
        try:
            self._apply_datapath(st)
        except (PolicyError, ConfigError, L7gateError) as exc:
            return self._reload_failed(exc)
        for w in warnings:
            log.warning("%s", w)
        self.generation += 1
        self.flush_l7()  # queued flows are bound to the state they were emitted under
        self.state = st
        if keep_last_good:
            self._keep_last_good()
        if self.fqdn is not None:
            self.fqdn.reapply()
        self.last_reload = {"result": "success", "time": time.time()}
        if self.metrics is not None:
            self.metrics.policy_reloads.labels(result="success").inc()
            self.metrics.policy_revision.set(self.generation)
        log.info("policy revision %s active (generation %d)", st.snapshot.revision,
                 self.generation)
        return True

    # --- datapath -----------------------------------------------------------------------------

    def _apply_datapath(self, st: ClusterState) -> None:
        if self.datapath is None:
            return
        from redirect.maps import EndpointConfig
        maps = self.datapath.maps
        wanted = dict(st.identities.ipcache_entries())
        local_ids = {p.endpoint.ip: p.endpoint.endpoint_id for p in st.local}
        for net, ident in wanted.items():
            ep_id = local_ids.get(net.network_address, 0) if net.prefixlen == 32 else 0
            maps.ipcache.set(net, ident, endpoint_id=ep_id, is_local_endpoint=bool(ep_id))
        for row in maps.ipcache.items():
            if row.network not in wanted:
                maps.ipcache.delete(row.network)
        enforcement = st.enforcement()
        for pod in st.local:
            ep = pod.endpoint
            ingress, egress = enforcement[ep.endpoint_id]
            ifindex = self._ifindex(pod.interface)
            maps.endpoints.set(ifindex, EndpointConfig(
                endpoint_id=ep.endpoint_id, identity=st.identities.identity_for_endpoint(ep).id,
                ip=ep.ip, ingress_enforced=ingress, egress_enforced=egress))
        maps.policy.replace_all(st.policy_entries(), enforcement)
        self._rule_names = maps.policy.rule_names()

    def _reclaim_dns_flows(self, st: ClusterState) -> None:
        """After a fail-open stop (--dns-unload-on-shutdown), DNS flows opened meanwhile sit
        in conntrack as plain allows and would keep bypassing the proxy: forget them."""
        dns_ports = {(ep, e.proto, p) for ep, es in st.policy_entries().items() for e in es
                     if e.action is L4Action.REDIRECT_DNS and e.port_hi - e.port_lo < 16
                     for p in range(e.port_lo, e.port_hi + 1)}
        if not dns_ports:
            return
        def bypassing(r: Any) -> bool:
            if "dns-proxy" in r.flags or r.proto not in (6, 17):
                return False
            return any((r.endpoint_id, proto, r.dport) in dns_ports
                       for proto in (Proto.ANY, Proto(r.proto)))
        n = self.datapath.maps.ct.delete_where(bypassing)
        if n:
            log.info("released %d DNS flows that bypassed the proxy while it was down", n)

    def _unload_dns_policy(self, st: ClusterState) -> None:
        """Fail open for DNS while the agent is away: REDIRECT_DNS entries become ALLOW.

        The next agent's start-up writes the real policy back before its proxies listen.
        """
        entries = {ep: [dataclasses.replace(e, action=L4Action.ALLOW)
                        if e.action is L4Action.REDIRECT_DNS else e for e in es]
                   for ep, es in st.policy_entries().items()}
        self.datapath.maps.policy.replace_all(entries, st.enforcement())
        # flows already steered to the proxy would keep going there (and be dropped with no
        # listener): forget them so their next datagram takes the plain allow
        flushed = self.datapath.maps.ct.delete_where(lambda r: "dns-proxy" in r.flags)
        log.warning("DNS policy unloaded for the shutdown (--dns-unload-on-shutdown); "
                    "%d proxied DNS flows released", flushed)

    @staticmethod
    def _ifindex(ifname: str) -> int:
        try:
            return socket.if_nametoindex(ifname)
        except OSError as exc:
            raise ConfigError(f"interface {ifname!r} not found in this netns") from exc

    def _load_datapath(self, st: ClusterState) -> None:
        from redirect.events import EventReader
        from redirect.loader import Datapath
        # the proxies already listen: publish their ports with the load
        self.datapath = Datapath(self.cfg.node_name, pin_root=self.cfg.pin_root,
                                 http_proxy_port=self.http.port,
                                 dns_proxy_port=self.dns_port).load()
        self._apply_datapath(st)
        for pod in st.local:
            if pod.interface:
                self.datapath.attach_endpoint(pod.interface)
                self.attached.append(pod.interface)
        uplink = st.cluster.node(self.cfg.node_name).uplink
        if uplink:
            self.datapath.attach_uplink(uplink)
            self.attached.append(uplink)
        self.datapath.install_routing()
        self._reclaim_dns_flows(st)
        self.events = EventReader(self.datapath)

    def _in_use(self, endpoint_id: int, ip: str) -> bool:
        """Does a live connection of this endpoint use this IP? (conntrack, recently seen)

        Established flows pass on their conntrack entry whatever the FQDN map says, so an
        open connection keeps working after its name expires; this only keeps the cache
        entry (and `fqdn cache list`) honest while packets still flow.
        """
        if self.datapath is None:
            return False
        return (endpoint_id, ip) in self._active_flows()

    def _active_flows(self) -> set[tuple[int, str]]:
        """(endpoint, peer IP) pairs with recent conntrack traffic: one map dump per second
        at most, however many FQDN entries expire or get evicted meanwhile."""
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if self._ct_active is not None and now - self._ct_active[0] < CT_SNAPSHOT_NS:
            return self._ct_active[1]
        active = self._scan_active_flows(now)
        self._ct_active = (now, active)
        return active

    def _scan_active_flows(self, now: int) -> set[tuple[int, str]]:
        return {(r.endpoint_id, str(peer)) for r in self.datapath.maps.ct.items()
                if now - r.last_seen_ns < CT_ACTIVE_NS for peer in (r.src, r.dst)}

    async def _refresh_active_flows(self) -> None:
        """Before the FQDN expiry check: when it will ask `_in_use` (an IP is past its TTL
        plus grace, as when a long-lived connection outlives its name), dump conntrack in a
        thread, so that the check reads a fresh snapshot instead of walking the map on the
        loop (~200 ms with 20k entries, and then every second while such a connection
        lives)."""
        fqdn = self.fqdn
        if self.datapath is None or fqdn is None or not fqdn.cache.due(fqdn.clock(),
                                                                       fqdn.grace_s):
            return
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        active = await asyncio.get_running_loop().run_in_executor(
            None, self._scan_active_flows, now)
        self._ct_active = (now, active)

    # --- flows ----------------------------------------------------------------------------------

    def publish(self, flow: Flow) -> None:
        """The one sink of every flow: ring, export file, metrics."""
        self.ring.push(flow)
        if self.exporter is not None:
            self.exporter.offer(flow)
        if self.flow_metrics is not None:
            self.flow_metrics.observe(flow)

    def _count_lost(self, source: str, count: int) -> None:
        if self.flow_metrics is not None:
            self.flow_metrics.lost(source, count)

    def _account_bpf_losses(self) -> None:
        """Events the kernel could not put in the ring buffer are losses users must see:
        in `observe` (a lost-events notice), in status and in hubble_lost_events_total."""
        from observe.ring import SOURCE_PERF
        lost = int(self.datapath.maps.lost_events()) + (self.events.unparseable
                                                        if self.events else 0)
        if lost > self._bpf_lost_seen:
            self.ring.record_lost(lost - self._bpf_lost_seen, SOURCE_PERF)
        self._bpf_lost_seen = lost

    def _fqdn_names(self, endpoint_id: int, ip: str) -> list[str]:
        return self.fqdn.names_for(endpoint_id, ip) if self.fqdn is not None else []

    def _on_events(self) -> None:
        if self.events is None:
            return
        st = self.current()
        events = self.events.consume()
        if self.datapath is not None and any(
                ev.fqdn_name_id is not None and ev.fqdn_name_id not in self._fqdn_name_ids
                for ev in events):
            self._fqdn_name_ids = self.datapath.maps.fqdn.names()  # a map dump: only if needed
        cache = self.fqdn.cache if self.fqdn is not None else None
        live = cache.lookup_names if cache is not None else _no_names
        expired = cache.expired_names if cache is not None else None
        for ev in events:
            self.publish(flow_from_event(ev, st, self._rule_names, live, self._fqdn_name_ids,
                                         expired))

    def emit_l7(self, flow: Flow) -> None:
        """Publish one proxy flow now: a lazy flow is bound to the state and names of now
        (agent/flows.py), never built here; then `publish`."""
        self.publish(emit_l7_flow(flow, self.state or self.current(), self._fqdn_names))

    def queue_l7(self, flow: Flow) -> None:
        """The proxies' sink (one call per request / query): `emit_l7`, batched. The flow
        joins a list that `flush_l7` publishes L7_FLUSH_DELAY_S after the first flow joined
        it. No reader sees a flow missing: the observe API and status (ApiServer's
        `before_read`) and a metrics scrape (`ScrapeBarrier`) flush first. The state and
        DNS names it is bound to are those it was emitted under: a reload, a DNS answer and
        the names' expiry (housekeeping) flush first. Why: a batch takes one call chain, one
        lock and one deque extend instead of one of each per flow (see L7_FLUSH_DELAY_S)."""
        pending = self._l7_pending
        pending.append(flow)
        if len(pending) == 1:
            self.wake_l7()

    def wake_l7(self) -> None:
        """A flow joined the empty queue: publish it L7_FLUSH_DELAY_S from now (at once when
        no loop is bound: tests, start-up). The HTTP proxy appends to `_l7_pending` and calls
        this itself (`l7_queue`), as queue_l7 does."""
        loop = self._loop
        if loop is None:
            self.flush_l7()
        elif self._flush_at is None:
            self._flush_at = loop.call_later(L7_FLUSH_DELAY_S, self.flush_l7)

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Batch proxy flows on `loop` from now on (run() binds its own); None: publish each
        at once again (after flushing what is queued)."""
        if loop is None:
            self.flush_l7()
        self._loop = loop

    def flush_for_reader(self) -> None:
        """Publish the queued flows before a reader looks, from any thread: in the loop's
        thread (or with no loop) at once; from another thread (the metrics server's) by
        asking the loop and waiting at most READER_FLUSH_TIMEOUT_S (a stuck loop makes the
        scrape a little stale, never blocked)."""
        loop = self._loop
        if loop is None or not loop.is_running() or _in_loop_thread(loop):
            self.flush_l7()
            return
        done = threading.Event()

        def flush() -> None:
            try:
                self.flush_l7()
            finally:
                done.set()
        try:
            loop.call_soon_threadsafe(flush)
        except RuntimeError:  # closed meanwhile: nothing is queued any more
            return
        done.wait(READER_FLUSH_TIMEOUT_S)

    def l7_queue(self) -> tuple[list[Flow], Callable[[], None]]:
        """(the pending list, wake_l7) for a proxy that queues flows itself: the list object
        stays the same for the agent's life (flush_l7 empties it in place)."""
        return self._l7_pending, self.wake_l7

    def flush_l7(self) -> None:
        """Publish what queue_l7 collected, in order: `emit_l7` for each, as one batch."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        pending = self._l7_pending
        if not pending:
            return
        flows = pending.copy()
        pending.clear()
        self.l7_batches += 1
        st = self.state or self.current()
        names = self._fqdn_names
        emit_l7_flows(flows, st, names)  # binds / enriches each flow in place
        self.ring.push_many(flows)
        if self.exporter is not None:
            for flow in flows:
                self.exporter.offer(flow)
        if self.flow_metrics is not None:
            self.flow_metrics.observe_many(flows)
        if self.gc_policy is not None:  # the ring keeps them: out of the young generation
            self.gc_policy.freeze_young(time.monotonic())

    # --- proxy callbacks --------------------------------------------------------------------------

    def decide_http(self, conn: Any, meta: HttpRequestView) -> Verdict:
        st = conn.context if isinstance(conn.context, ClusterState) else self.current()
        src_ep = st.local_endpoint_str(conn.src_ip)
        fqdns: frozenset[str] = frozenset()
        if src_ep is not None and self.fqdn is not None:
            names = self.fqdn.cache.lookup_names(src_ep.endpoint_id, conn.dst_ip)
            fqdns = frozenset(names) if names else fqdns
        verdict, _direction = st.decide_http(conn.src_ip, conn.dst_ip, conn.dst_port, meta,
                                             fqdns)
        return verdict

    def http_decide_for(self, conn: Any) -> Callable[[Any, HttpRequestView], Verdict]:
        """The HTTP proxy's decide for one connection, asked once when it is accepted: equal
        to `decide_http` on every request of that connection. A connection keeps the state
        it was accepted under (`conn.context`), so its decider is fixed unless the source is
        a local pod whose toFQDNs names can change while it lives (a DNS answer, an expiry):
        then `decide_http` itself, which looks the names up per request. Why: the decider
        lookups (local endpoint, names, the memo key of (source, destination, port, names))
        ran for every request: ~4k instructions (callgrind, tests/bench/inproc_http.py:
        106.9k -> 102.7k per request end to end)."""
        st = conn.context
        if not isinstance(st, ClusterState) or (
                self.fqdn is not None and st.local_endpoint_str(conn.src_ip) is not None):
            return self.decide_http
        return st.verdict_fn(st.http_decider(conn.src_ip, conn.dst_ip, conn.dst_port,
                                             frozenset()))

    # The three DNS callbacks run once per query each: `self.state or self.current()` reads
    # the state without a call (current() only raises when there is none).

    def decide_dns(self, conn: Any, qname: str) -> Verdict:
        return (self.state or self.current()).decide_dns_conn(conn, qname)

    def learn_dns(self, conn: Any, qname: str, ips_ttls: list[tuple[str, int]]) -> None:
        """Synchronous on purpose: the map write is a few syscalls, and returning None tells
        the DNS proxy the datapath is already updated when it releases the answer."""
        if self._l7_pending:  # flows queued before this answer are named as of before it
            self.flush_l7()
        if self.fqdn is not None:
            self.fqdn.learn(conn.src_ip, qname, ips_ttls)

    def upstream_mark(self, conn: Any) -> int:
        """The SO_MARK of the proxy's upstream socket: the source's identity (memoized per
        state and source address; asked once per DNS query)."""
        st = self.state or self.current()
        key = ("upstream_mark", conn.src_ip)
        mark = st.memo.get(key)
        if isinstance(mark, int):  # not typing.cast: a Python-level call on every query
            return mark
        mark = int(proxy_upstream_mark(st.peer_str(conn.src_ip).identity.id))
        if len(st.memo) < PLAN_CACHE_MAX:
            st.memo[key] = mark
        return mark

    # --- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        from agent.status import build_status
        return build_status(self)

    async def status_async(self) -> dict[str, Any]:
        """`status()` for the API: the map walk (one syscall per entry) runs in a thread, so
        that probes asking every few seconds never hold the proxies' loop (measured: 170-210
        ms per status with 20k conntrack entries when it ran on the loop)."""
        from agent.status import build_status
        sizes = None
        if self.datapath is not None:
            loop = asyncio.get_running_loop()
            sizes = await loop.run_in_executor(None, self.datapath.maps.sizes)
        return build_status(self, sizes)

    # --- run ------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Synchronous start-up before the event loop: policy, metrics, and the maps a
        previous agent left pinned (opened without bcc, so the proxies can serve at once)."""
        self.state = self._initial_state()
        os.makedirs(self.cfg.state_dir, exist_ok=True)
        self._setup_metrics()
        if self.cfg.enable_datapath:
            self._pinned = self._open_pinned_maps()

    def _open_pinned_maps(self) -> Any:
        from redirect.loader import pin_dir_of
        from redirect.maps import DatapathMaps
        try:
            return DatapathMaps.open_pinned(pin_dir_of(self.cfg.node_name, self.cfg.pin_root))
        except (L7gateError, OSError):
            return None  # first start on this node: nothing to adopt yet

    async def run(self) -> int:
        """Serve as early as possible, then (re)load the datapath.

        A restart is when pods notice the agent: the programs and maps of the previous agent
        are still attached and steer L7/DNS traffic to the proxy ports, so the proxies listen
        first (on the restored FQDN cache and the pinned maps) and bcc compiles afterwards.
        """
        loop = asyncio.get_running_loop()
        if self.state is None:
            raise RuntimeError("call prepare() before run()")
        self.fqdn = FqdnOwner(self._pinned, self.cfg.state_dir,
                              state=self.current, min_ttl_s=self.cfg.fqdn_min_ttl_s,
                              max_ips_per_name=self.cfg.fqdn_max_ips_per_name,
                              grace_s=self.cfg.fqdn_grace_s,
                              allow_private=self.cfg.fqdn_allow_private, in_use=self._in_use)
        restored = self.fqdn.restore()
        log.info("restored %d FQDN IPs from %s", restored, self.fqdn.path)
        self.bind_loop(loop)
        self.loop_lag = LoopLag(loop, self.metrics.loop_lag.labels()
                                if self.metrics is not None else None)
        self.loop_lag.start()
        self.busy_poll = self._busy_poll(loop)
        await self._start_proxies()
        if self.cfg.enable_datapath:
            await loop.run_in_executor(None, self._load_datapath, self.state)
            self.fqdn.maps = self.datapath.maps
            self.fqdn.reapply()
            self._bpf_lost_seen = int(self.datapath.maps.lost_events())
            if self._pinned is not None:
                self._pinned.close()
                self._pinned = None
        if self.cfg.flow_export_file:
            # "{node}" in the path lets one DaemonSet/sandbox setting serve every node
            path = self.cfg.flow_export_file.replace("{node}", self.cfg.node_name)
            self.exporter = FlowExporter(path,
                                         max_size_bytes=self.cfg.flow_export_max_size_mb << 20)
            self._tasks.append(asyncio.ensure_future(self.exporter.run()))
        self.api = ApiServer(self.ring, status_provider=self.status_async,
                             handlers={"fqdn_cache": self._api_fqdn},
                             before_read=self.flush_l7)
        await self.api.start(self.cfg.api_socket)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        if self.events is not None:
            loop.add_reader(self.events.fileno(), self._on_events)
        self._tasks.append(asyncio.ensure_future(self._housekeeping()))
        self._tasks.append(asyncio.ensure_future(self._reloader()))
        log.info("agent for %s ready: %d local endpoints, http proxy :%d, dns proxy :%d",
                 self.cfg.node_name, len(self.state.local), self.http.port, self.dns_port)
        await self._stop.wait()
        await self._shutdown()
        return 0

    def _busy_poll(self, loop: asyncio.AbstractEventLoop) -> BusyPoll:
        setting = self.cfg.busy_poll_us
        if setting == "auto":
            max_us, why = default_max_us()
        else:
            max_us, why = int(setting), "--busy-poll-us"
        log.info("event loop busy polling: %s", why if max_us else f"off ({why})")
        return BusyPoll(loop, max_us)

    def _api_fqdn(self, req: dict[str, Any]) -> dict[str, Any]:
        rows = self.fqdn.rows(req.get("endpoint"), req.get("name")) if self.fqdn else []
        return {"entries": rows}

    async def _reloader(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload_async()

    async def _housekeeping(self) -> None:
        rounds = 0
        self.gc_policy = gc_policy = gctune.GcPolicy(time.monotonic())
        while True:
            await asyncio.sleep(FQDN_GC_INTERVAL_S)
            rounds += 1
            try:
                await self._refresh_active_flows()  # in a thread, for fqdn.gc() below
            except L7gateError as exc:
                log.error("housekeeping: conntrack dump: %s", exc)
            started = time.perf_counter()
            gc_policy.tick(time.monotonic())  # FQDN_GC_INTERVAL_S == gctune.FREEZE_INTERVAL_S
            try:
                self.flush_l7()  # queued flows keep the names they were emitted under
                if self.fqdn is not None:
                    self.fqdn.gc()
                    self.fqdn.flush()
                if self.datapath is not None:
                    self._account_bpf_losses()
                self._on_events()  # never leave records behind a skipped wake-up
            except L7gateError as exc:
                log.error("housekeeping: %s", exc)
            # the loop waits for it: `l7gate status` shows it beside the loop's lag
            self.housekeeping_last_s = took = time.perf_counter() - started
            self.housekeeping_max_s = max(self.housekeeping_max_s, took)
            if self.datapath is not None and rounds % CT_GC_EVERY == 0:
                # a walk of the whole conntrack map, one syscall per entry: in a thread, not
                # on the loop (measured: 70-77 ms with 20k entries when it ran on the loop)
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, self.datapath.maps.ct.expire, CT_IDLE_NS)
                except L7gateError as exc:
                    log.error("housekeeping: conntrack sweep: %s", exc)

    async def _start_proxies(self) -> None:
        from agent.proxies import start_dns_proxy, start_http_proxy
        self.http = await start_http_proxy(self)
        self.dns, self.dns_port = await start_dns_proxy(self)

    def _setup_metrics(self) -> None:
        from agent.metricsrv import setup_metrics
        setup_metrics(self)

    async def _shutdown(self) -> None:
        log.info("stopping: proxies close; pinned maps and tc programs stay in place")
        # The proxy ports stay published: with the listeners closed, redirected traffic
        # finds no socket and is dropped (SOCKET_LOOKUP_FAILED, fail closed), and the next
        # agent's proxies take over the moment they listen.
        if self.datapath is not None and self.cfg.dns_unload_on_shutdown and self.state:
            with contextlib.suppress(L7gateError, OSError):
                self._unload_dns_policy(self.state)
        if self.events is not None:
            asyncio.get_running_loop().remove_reader(self.events.fileno())
        if self.loop_lag is not None:
            self.loop_lag.stop()
        if self.busy_poll is not None:
            self.busy_poll.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in (self.http, self.dns, self.api):
            if server is not None:
                await server.close()
        self.bind_loop(None)
        if self.exporter is not None:
            self.exporter.close()
        if self.fqdn is not None:
            self.fqdn.flush()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.datapath is not None:
            self.datapath.close()


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _no_names(_endpoint_id: int, _ip: str) -> list[str]:
    return []
