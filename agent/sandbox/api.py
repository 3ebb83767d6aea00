"""Python API of the sandbox, for the CLI, tests, benchmarks and the demo.

Contract:
    sb = Sandbox.up(topology_path=None, policy_dir=None, agents=True, wait_s=0.0)
    sb.exec("default/frontend", ["curl", "-s", "http://api.stripe.com/"])  # CompletedProcess
    sb.command("node1", ["l7gate", "observe"])  # (argv, env) for your own Popen
    sb.pod_ip("default/my-api"); sb.status(); sb.reload(); sb.restart("node1"); sb.down()
    with running(agents=False) as sb: ...       # pytest-fixture friendly: always `down`
    Sandbox.attach()                            # the sandbox some other process started
    down()                                      # module level: clean whatever is there

One sandbox per machine: `up` refuses (SandboxError) while another is up or a crashed run
left namespaces behind, unless `wait_s` lets it wait for that one to go. Any failure during
`up` tears down what was built and re-raises. Processes are started with
`start_new_session=True` and recorded by (pid, start time); only those are ever signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agent.sandbox import netns
from agent.sandbox.state import (
    POLL_S,
    PREFIX_BASE,
    STATE_DIR,
    Proc,
    SandboxError,
    State,
    is_listening,
    leftover_netns,
    load_state,
    locked,
    log_tail,
    start_time_of,
    stop,
)
from agent.sandbox.topology import Topology, load_topology, render_endpoints

SERVER_START_TIMEOUT_S = 20.0  # echo/dnsmasq bind within a second; slack for a busy box
AGENT_START_TIMEOUT_S = 180.0  # bcc compiles every program at start: tens of seconds on
#                               a 2-core machine shared with other test runs
AGENT_STOP_TIMEOUT_S = 20.0  # the agent closes its proxies on SIGTERM (tc and pins stay)
SERVER_STOP_TIMEOUT_S = 5.0
PIN_ROOT_BASE = "/sys/fs/bpf/l7gsb"  # every sandbox agent pins below this; `down` removes it
METRICS_PORT = 9965  # Cilium agent's metrics port, as users' scrape configs expect
REQUIRED_TOOLS = ("ip", "nsenter", "sysctl")
POD_TOOLS = ("curl", "dig", "python3", "ping")  # what users and tests run inside pods

# Popen objects of processes this Python process started, kept until they are reaped so
# that the interpreter never warns about (or forgets) a running child.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class Sandbox:
    """Handle on the (single) running sandbox."""

    def __init__(self, state: State) -> None:
        self.state = state

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    def up(cls, topology_path: str | Path | None = None, policy_dir: str | Path | None = None,
           agents: bool = True, wait_s: float = 0.0, dns_ttl_s: int | None = None,
           agent_args: Sequence[str] = ()) -> Sandbox:
        """Build the sandbox. ConfigError for a bad topology (nothing built).

        `wait_s`: how long to wait for another sandbox to go away before refusing.
        `dns_ttl_s`: overrides the topology's `dns.ttl` (tests of FQDN expiry shorten it).
        `agent_args`: extra `l7gate agent` flags for every agent started by this `up`
        (benchmarks pick `--http-codec`); `restart` starts agents without them.
        """
        topology = load_topology(topology_path)  # first: bad input is reported even unprivileged
        if os.geteuid() != 0:
            raise SandboxError("the sandbox needs root (network namespaces)")
        if dns_ttl_s is not None:
            if dns_ttl_s < 0:
                raise SandboxError(f"dns_ttl_s must be >= 0, not {dns_ttl_s}")
            topology = dataclasses.replace(topology, dns_ttl_s=dns_ttl_s)
        _check_tools(topology)
        deadline = time.monotonic() + wait_s
        while True:
            with locked():
                busy = _busy_reason()
                if busy is None:
                    return cls(_up_locked(topology, policy_dir, agents, agent_args))
            if time.monotonic() >= deadline:
                raise SandboxError(busy)
            time.sleep(min(0.5, max(POLL_S, deadline - time.monotonic())))

    @classmethod
    def attach(cls) -> Sandbox:
        state = load_state()
        if state is None:
            raise SandboxError("no sandbox is up (run `l7gate sandbox up`)")
        return cls(state)

    def down(self) -> list[str]:
        return down()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- queries ------------------------------------------------------------------------
    def pod_ip(self, ref: str) -> str:
        for pod in self.state.pods:
            if f"{pod['namespace']}/{pod['name']}" == ref:
                return str(pod["ip"])
        raise SandboxError(f"no pod {ref!r} in the sandbox")

    def node_ip(self, name: str) -> str:
        for node in self.state.nodes:
            if node["name"] == name:
                return str(node["ip"])
        raise SandboxError(f"no node {name!r} in the sandbox")

    def external_ip(self, name: str) -> str:
        for ext in self.state.external:
            if ext["name"] == name:
                return str(ext["ip"])
        raise SandboxError(f"no external server {name!r} in the sandbox")

    def netns(self, target: str) -> str:
        """netns name of NODE, NS/POD or `external`."""
        key = "external" if target == "external" else (
            f"pod:{target}" if "/" in target else f"node:{target}")
        try:
            return self.state.netns[key]
        except KeyError:
            raise SandboxError(f"unknown target {target!r}; one of: "
                               f"{', '.join(self.targets())}") from None

    def targets(self) -> list[str]:
        return [k.split(":", 1)[-1] for k in self.state.netns if k != "underlay"]

    def agent_state(self, node: str) -> str:
        if not self.state.agents:
            return "disabled"
        proc = self.state.proc(f"agent:{node}")
        return "running" if proc is not None and proc.is_alive() else "stopped"

    def status(self) -> dict[str, Any]:
        """The `sandbox status -o json` document (ARCHITECTURE.md shape, plus extras)."""
        nodes = []
        for row in self.state.nodes:
            proc = self.state.proc(f"agent:{row['name']}")
            nodes.append({**row, "agent": self.agent_state(row["name"]),
                          "agent_pid": proc.pid if proc is not None else None})
        return {"nodes": nodes, "pods": list(self.state.pods),
                "external": list(self.state.external), "prefix": self.state.prefix,
                "state_dir": str(STATE_DIR), "topology": self.state.topology,
                "policy_dir": self.state.policy_dir}

    # -- running things inside ----------------------------------------------------------
    def command(self, target: str, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run `argv` inside NODE, NS/POD or `external`.

        Nodes are entered with nsenter (keeps /sys/fs/bpf visible, and the node's agent
        reachable through L7GATE_API_SOCKET); pods and external with `ip netns exec`, so
        /etc/netns/<netns>/resolv.conf applies.
        """
        ns = self.netns(target)
        env = dict(os.environ)
        # `l7gate` itself must be found inside even when the venv is not activated.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if target == "external" or "/" in target:
            return ["ip", "netns", "exec", ns, *argv], env
        env["L7GATE_API_SOCKET"] = str(STATE_DIR / target / "api.sock")
        env["L7GATE_NODE"] = target
        env["L7GATE_PIN_ROOT"] = pin_root(self.state.prefix)
        return ["nsenter", f"--net=/run/netns/{ns}", *argv], env

    def exec(self, target: str, argv: Sequence[str],
             **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside `target`; kwargs go to subprocess.run (default check=False,
        capture_output=True, text=True, timeout=60)."""
        cmd, env = self.command(target, argv)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("check", False)
        env.update(kwargs.pop("env", None) or {})
        return subprocess.run(cmd, env=env, **kwargs)

    # -- agents -------------------------------------------------------------------------
    def reload(self) -> list[str]:
        """SIGHUP every running agent; returns the nodes signalled."""
        done = []
        for proc in self.state.procs:
            if proc.role.startswith("agent:") and proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP)
                    done.append(proc.role.split(":", 1)[1])
        return done

    def restart(self, node: str) -> None:
        """Stop the node's agent (SIGTERM, then SIGKILL after a bound) and start a new one."""
        if not self.state.agents:
            raise SandboxError("the sandbox runs without agents (--no-agent)")
        self.netns(node)  # validates the name
        with locked():
            proc = self.state.proc(f"agent:{node}")
            if proc is not None:
                stop([proc], AGENT_STOP_TIMEOUT_S)
                _reap_child(proc.pid)
                self.state.procs.remove(proc)
            _wait_agents(self.state, [_spawn_agent(self.state, node)])


def running(topology_path: str | Path | None = None, policy_dir: str | Path | None = None,
            agents: bool = True, wait_s: float = 0.0, dns_ttl_s: int | None = None
            ) -> contextlib.AbstractContextManager[Sandbox]:
    """`with running(...) as sb:` — up, then down even when the body fails."""

    @contextlib.contextmanager
    def _cm() -> Iterator[Sandbox]:
        sb = Sandbox.up(topology_path, policy_dir, agents, wait_s, dns_ttl_s)
        try:
            yield sb
        finally:
            sb.down()

    return _cm()


def down() -> list[str]:
    """Remove the sandbox and a crashed run's leftovers. Idempotent. Returns problems."""
    with locked():
        try:
            state = load_state()
        except SandboxError as exc:
            state, problems = None, [str(exc)]
        else:
            problems = []
        if state is not None:
            # Agents first: they detach their BPF from interfaces that are about to vanish.
            stop([p for p in state.procs if p.role.startswith("agent:")], AGENT_STOP_TIMEOUT_S)
            stop(state.procs, SERVER_STOP_TIMEOUT_S)
            for proc in state.procs:
                _reap_child(proc.pid)
        problems += netns.remove(state, leftover_netns())
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        # Agents leave their maps pinned on purpose (restarts adopt them); the sandbox's
        # pins all live under PIN_ROOT_BASE, also those of a crashed run.
        shutil.rmtree(PIN_ROOT_BASE, ignore_errors=True)
    return problems


def pin_root(prefix: str) -> str:
    """Where this sandbox's agents pin their maps (one directory per node below it)."""
    return f"{PIN_ROOT_BASE}/{prefix}"


# -- internals --------------------------------------------------------------------------
def _busy_reason() -> str | None:
    if (STATE_DIR / "state.json").exists():
        return "a sandbox is already up (see `l7gate sandbox status`; `down` removes it)"
    left = leftover_netns()
    if left:
        return (f"a crashed sandbox left {len(left)} netns ({left[0]}, ...); "
                "run `l7gate sandbox down` first")
    return None


def missing_pod_tools() -> list[str]:
    """Tools pods are expected to have (the machine's binaries) that this machine lacks."""
    return [t for t in POD_TOOLS if shutil.which(t) is None]


def _check_tools(topology: Topology) -> None:
    need = list(REQUIRED_TOOLS) + (["dnsmasq"] if topology.dns_pod is not None else [])
    missing = [t for t in need if shutil.which(t) is None
               and not Path("/usr/sbin", t).exists()]
    if missing:
        raise SandboxError(f"missing tools: {', '.join(missing)} (run scripts/setup.sh)")


def _up_locked(topology: Topology, policy_dir: str | Path | None, agents: bool,
               agent_args: Sequence[str] = ()) -> State:
    shutil.rmtree(STATE_DIR, ignore_errors=True)  # a crashed run's files, no netns left
    STATE_DIR.mkdir(parents=True)
    policies = Path(policy_dir).resolve() if policy_dir is not None else STATE_DIR / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    state = State(prefix=PREFIX_BASE + secrets.token_hex(3), topology=topology.source,
                  policy_dir=str(policies), agents=agents)
    state.save()
    try:
        netns.build(topology, state)
        _write_endpoints(topology, state)
        _record_rows(topology, state)
        _start_servers(topology, state)
        if agents:
            _wait_agents(state, [_spawn_agent(state, n.name, agent_args)
                                 for n in topology.nodes])
        state.complete = True
        state.save()
    except BaseException:
        _abort(state)
        raise
    return state


def _abort(state: State) -> None:
    stop(state.procs, SERVER_STOP_TIMEOUT_S)
    for proc in state.procs:
        _reap_child(proc.pid)
    netns.remove(state, [])
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def _write_endpoints(topology: Topology, state: State) -> None:
    path = STATE_DIR / "endpoints.yaml"
    path.write_text(render_endpoints(topology, state.uplink, state.interfaces),
                    encoding="utf-8")
    state.files["endpoints"] = str(path)


def _record_rows(topology: Topology, state: State) -> None:
    state.nodes = [{"name": n.name, "ip": str(n.ip), "pod_cidr": str(n.pod_cidr),
                    "uplink": state.uplink, "netns": state.netns[f"node:{n.name}"],
                    "api_socket": str(STATE_DIR / n.name / "api.sock"),
                    "metrics": f"{n.ip}:{METRICS_PORT}"} for n in topology.nodes]
    state.pods = [{"namespace": p.namespace, "name": p.name, "labels": dict(p.labels),
                   "ip": str(p.ip), "node": p.node, "netns": state.netns[f"pod:{p.ref}"],
                   "interface": state.interfaces[p.ref], "server": p.server,
                   "ports": list(p.ports)} for p in topology.pods]
    state.external = [{"name": e.name, "ip": str(e.ip), "ports": list(e.ports)}
                      for e in topology.external]
    state.save()


def _spawn(state: State, role: str, ns: str, argv: Sequence[str], log: Path,
           env: dict[str, str] | None = None) -> Proc:
    """Start argv inside netns `ns` (nsenter execs it: the pid we record is the server)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        try:
            child = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *argv],
                                     stdin=subprocess.DEVNULL, stdout=fh,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        except OSError as exc:
            raise SandboxError(f"{role}: cannot start {argv[0]}: {exc}") from exc
    _CHILDREN[child.pid] = child
    started = start_time_of(child.pid)
    if started is None:
        raise SandboxError(f"{role} exited at once:\n{log_tail(str(log))}")
    proc = Proc(role=role, pid=child.pid, start_time=started, netns=ns, log=str(log))
    state.procs.append(proc)
    state.save()
    return proc


def _reap_child(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=SERVER_STOP_TIMEOUT_S)


def _start_servers(topology: Topology, state: State) -> None:
    logs = STATE_DIR / "logs"
    waits: list[tuple[Proc, str, int]] = []
    dns = topology.dns_pod
    if dns is not None:
        argv = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", f"--port={dns.ports[0]}", f"--listen-address={dns.ip}",
                "--bind-interfaces", "--pid-file=", "--log-facility=-",
                f"--local-ttl={topology.dns_ttl_s}",
                # Authoritative for every name: unknown names get NXDOMAIN, never a
                # forward attempt (there is no upstream inside the sandbox).
                "--local=/#/"]
        argv += [f"--host-record={name},{addr}" for name, addr in topology.all_dns_records()]
        proc = _spawn(state, "dns", state.netns[f"pod:{dns.ref}"], argv, logs / "dns.log")
        waits += [(proc, "udp", dns.ports[0]), (proc, "tcp", dns.ports[0])]
    echo = [sys.executable, "-m", "agent.sandbox.echo"]
    for pod in topology.pods:
        if pod.server == "http-echo":
            listens = [f"--listen={pod.ip}:{port}={pod.name}" for port in pod.ports]
            proc = _spawn(state, f"echo:{pod.ref}", state.netns[f"pod:{pod.ref}"],
                          [*echo, *listens], logs / f"echo-{pod.namespace}_{pod.name}.log")
            waits += [(proc, "tcp", port) for port in pod.ports]
    if topology.external:
        listens = [f"--listen={e.ip}:{port}={e.name}" for e in topology.external
                   for port in e.ports]
        proc = _spawn(state, "external", state.netns["external"], [*echo, *listens],
                      logs / "external.log")
        waits += [(proc, "tcp", port) for e in topology.external for port in e.ports]
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    for proc, proto, port in waits:
        while not is_listening(proc.pid, proto, port):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise SandboxError(f"{proc.role} is not listening on {proto}/{port}:\n"
                                   f"{log_tail(proc.log)}")
            time.sleep(POLL_S)


def _l7gate_argv() -> list[str]:
    script = Path(sys.executable).parent / "l7gate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]


def _spawn_agent(state: State, node: str, extra_args: Sequence[str] = ()) -> Proc:
    node_dir = STATE_DIR / node
    (node_dir / "state").mkdir(parents=True, exist_ok=True)
    sock = node_dir / "api.sock"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # a stale socket would look like readiness
    ip = next(n["ip"] for n in state.nodes if n["name"] == node)
    argv = [*_l7gate_argv(), "agent", "--node-name", node,
            "--endpoints", state.files["endpoints"], "--policy-dir", state.policy_dir,
            "--api-socket", str(sock), "--state-dir", str(node_dir / "state"),
            "--metrics-addr", f"{ip}:{METRICS_PORT}", "--pin-root", pin_root(state.prefix),
            # the sandbox's "outside world" lives in TEST-NET-3 (203.0.113.0/24), which the
            # DNS-rebinding guard would otherwise refuse to learn
            "--fqdn-allow-private-ips", *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # the log tail must be current on failure
    return _spawn(state, f"agent:{node}", state.netns[f"node:{node}"], argv,
                  node_dir / "agent.log", env)


def _wait_agents(state: State, procs: Sequence[Proc]) -> None:
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    for proc in procs:
        node = proc.role.split(":", 1)[1]
        sock = STATE_DIR / node / "api.sock"
        while not sock.exists():
            if not proc.is_alive():
                raise SandboxError(f"agent of {node} exited during start; log tail:\n"
                                   f"{log_tail(proc.log)}")
            if time.monotonic() > deadline:
                raise SandboxError(f"agent of {node}: no API socket after "
                                   f"{AGENT_START_TIMEOUT_S:.0f}s; log tail:\n"
                                   f"{log_tail(proc.log)}")
            time.sleep(POLL_S)
