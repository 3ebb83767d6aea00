"""The sandbox's on-disk state and its processes' identities.

Contract: one sandbox per machine; its state lives in `STATE_DIR` (state.json names every
netns, /etc/netns dir, process and file the run created). `State` is written after each
step of `up`, so that `down` can undo a half-built run. Processes are identified by
(pid, start time from /proc/PID/stat), so a recycled pid is never signalled; nothing here
finds processes by name. `SandboxError` is the sandbox's member of the error tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from policy.errors import L7gateError

STATE_DIR = Path(os.environ.get("L7GATE_SANDBOX_DIR", "/run/l7gate/sandbox"))
LOCK_FILE = STATE_DIR.parent / "sandbox.lock"  # outside STATE_DIR: `down` removes that
NETNS_DIR = Path("/run/netns")  # where `ip netns add` pins namespaces
ETC_NETNS_DIR = Path("/etc/netns")  # `ip netns exec` bind-mounts these over /etc
PREFIX_BASE = "l7gsb-"
# Every name the sandbox creates matches this, so `down` can find a crashed run's leftovers
# without touching anyone else's namespaces.
PREFIX_PATTERN = re.compile(r"l7gsb-[0-9a-f]{6}(-.*)?")
STATE_VERSION = 1
POLL_S = 0.05  # process/socket polling period: short next to every bound below


class SandboxError(L7gateError):
    """The sandbox could not be built, driven or torn down."""


@dataclass(slots=True)
class Proc:
    role: str  # "dns", "echo:NS/POD", "external", "agent:NODE"
    pid: int
    start_time: int  # clock ticks since boot, /proc/PID/stat field 22
    netns: str
    log: str = ""

    def is_alive(self) -> bool:
        return start_time_of(self.pid) == self.start_time


@dataclass(slots=True)
class State:
    prefix: str
    topology: str
    policy_dir: str
    agents: bool
    uplink: str = "eth0"
    # netns names: "underlay", "external", "node:NAME", "pod:NS/NAME" -> netns
    netns: dict[str, str] = field(default_factory=dict)
    etc_netns: list[str] = field(default_factory=list)
    interfaces: dict[str, str] = field(default_factory=dict)  # pod ref -> node-side veth
    procs: list[Proc] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # status rows
    pods: list[dict[str, Any]] = field(default_factory=list)
    external: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False  # set when `up` finished

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE_DIR / "state.json.tmp"
        data = {"version": STATE_VERSION, **asdict(self)}
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        tmp.replace(STATE_DIR / "state.json")  # atomic: a reader never sees half a file

    def proc(self, role: str) -> Proc | None:
        return next((p for p in self.procs if p.role == role), None)


def load_state() -> State | None:
    """The recorded state, or None when no sandbox is up (or state.json is unreadable)."""
    path = STATE_DIR / "state.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"{path}: unreadable sandbox state ({exc}); "
                           "run `l7gate sandbox down` to clean up") from exc
    if data.pop("version", None) != STATE_VERSION:
        raise SandboxError(f"{path}: unknown state version; run `l7gate sandbox down`")
    procs = [Proc(**p) for p in data.pop("procs", [])]
    return State(procs=procs, **data)


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Serialise `up`/`down`/`restart` across processes (one sandbox per machine)."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def leftover_netns() -> list[str]:
    """Every netns whose name carries a sandbox prefix (ours or a crashed run's)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if PREFIX_PATTERN.fullmatch(n))


def leftover_etc_netns() -> list[str]:
    try:
        names = os.listdir(ETC_NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(str(ETC_NETNS_DIR / n) for n in names if PREFIX_PATTERN.fullmatch(n))


def start_time_of(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        _reap(pid)
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    """Collect our own dead child so it stops being a zombie; others' are none of ours."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(procs: list[Proc], timeout_s: float) -> None:
    """SIGTERM the recorded processes together, wait for them (bounded), SIGKILL the rest."""
    alive = [p for p in procs if p.is_alive()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        alive = wait_dead(alive, timeout_s)
        if not alive:
            return


def wait_dead(procs: list[Proc], timeout_s: float) -> list[Proc]:
    """Wait until the processes are gone; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if p.is_alive()]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL_S)
        alive = [p for p in alive if p.is_alive()]
    return alive


def is_listening(pid: int, proto: str, port: int) -> bool:
    """Whether the netns of `pid` has a TCP listener / UDP socket on `port`.

    /proc/PID/net/* shows the sockets of that process's network namespace, so this works
    from the root namespace without entering the sandbox.
    """
    try:
        lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
    except OSError:
        return False
    want = f":{port:04X}"
    for line in lines:
        cols = line.split()
        if cols[1].endswith(want) and (proto == "udp" or cols[3] == "0A"):  # 0A = LISTEN
            return True
    return False


def log_tail(path: str, max_lines: int = 30) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-max_lines:])
