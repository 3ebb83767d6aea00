"""`l7gate demo` / `make demo`: the README's story, end to end, on a sandbox cluster.

Builds the sandbox with the two reference policies (examples/, copied unchanged from what
users start with), drives allowed and denied HTTP, allowed and refused DNS and a blocked
egress, applies a policy change with SIGHUP, then shows what a user would look at:
`observe --verdict DROPPED`, the L7 flows, three metrics and `status`. Cleans up unless
`--keep`. Every command it runs is printed, so the story can be replayed by hand.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from agent.sandbox.api import METRICS_PORT, Sandbox

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CHANGE = Path(__file__).resolve().parent / "demo_policies" / "other-dns.yaml"
CURL = ["curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "HTTP %{http_code}\\n"]
DIG = ["dig", "+time=2", "+tries=1", "+noall", "+answer"]


def dig_status(name: str) -> list[str]:
    """dig, printing only the answer's rcode line (REFUSED shows no answer section)."""
    return ["sh", "-c", f"dig +time=2 +tries=1 {name} | grep -o 'status: [A-Z]*'"]


def say(text: str = "") -> None:
    print(text, flush=True)


def step(sb: Sandbox, title: str, target: str, argv: list[str], *, lines: int = 12) -> str:
    say(f"\n$ l7gate sandbox exec {target} -- {shlex.join(argv)}    # {title}")
    res = sb.exec(target, argv, timeout=30)
    out = (res.stdout or "") + (res.stderr or "")
    shown = [ln for ln in out.splitlines() if ln.strip()][:lines]
    for ln in shown:
        say("  " + ln)
    if not shown:
        say(f"  (no output; exit code {res.returncode})")
    elif res.returncode and "curl" in argv[0]:
        say(f"  (exit code {res.returncode}: the connection never completed)")
    return out


def run(keep: bool = False) -> int:
    policy_dir = Path(tempfile.mkdtemp(prefix="l7gate-demo-policies-"))
    for f in ("my-api-l7.yaml", "frontend-egress.yaml"):
        shutil.copy(EXAMPLES / f, policy_dir / f)
    say("== l7gate demo: Cilium L7 policy without sidecars, on a 2-node sandbox cluster ==")
    say(f"Policies: {', '.join(sorted(p.name for p in policy_dir.iterdir()))} (from examples/)")
    started = time.monotonic()
    sb = Sandbox.up(policy_dir=policy_dir, wait_s=5)
    try:
        say(f"Sandbox up in {time.monotonic() - started:.1f}s: node1 (frontend, other, "
            "kube-dns), node2 (my-api), external (api.stripe.com, x.internal.example.com, "
            "evil.example.net)")
        api = f"http://{sb.pod_ip('default/my-api')}:8080"
        say("\n-- 1. my-api accepts only GET /api/.* from role=frontend (L7, enforced on node2)")
        step(sb, "allowed", "default/frontend", [*CURL, f"{api}/api/users"])
        step(sb, "denied by the HTTP rule: 403", "default/frontend",
             [*CURL, "-X", "POST", f"{api}/api/users"])
        step(sb, "denied by the HTTP rule: 403", "default/frontend", [*CURL, f"{api}/admin"])
        step(sb, "not role=frontend: dropped in the kernel (curl times out)", "default/other",
             [*CURL, f"{api}/api/users"])
        say("\n-- 2. frontend's egress: DNS through the proxy, then only the names it allows")
        step(sb, "DNS allowed; the answer teaches the IP", "default/frontend",
             [*DIG, "api.stripe.com"], lines=4)
        step(sb, "toFQDNs matchName api.stripe.com on 443", "default/frontend",
             [*CURL, "http://api.stripe.com:443/v1/charges"])
        step(sb, "toFQDNs matchPattern *.internal.example.com", "default/frontend",
             [*CURL, "http://x.internal.example.com:443/"])
        evil = sb.external_ip("evil.example.net")
        step(sb, "an IP no allowed name taught: dropped", "default/frontend",
             [*CURL, f"http://{evil}:443/"])
        say("\n-- 3. a policy change: `other` may resolve only *.internal.example.com (SIGHUP)")
        shutil.copy(CHANGE, policy_dir / CHANGE.name)
        say(f"$ cp {CHANGE.relative_to(ROOT)} <policy-dir>/ && l7gate sandbox reload")
        sb.reload()
        time.sleep(1.5)
        step(sb, "allowed by the new rules.dns", "default/other",
             [*DIG, "x.internal.example.com"], lines=4)
        step(sb, "refused by the DNS proxy", "default/other", dig_status("evil.example.net"))
        time.sleep(1.0)
        say("\n-- 4. what happened? (the Hubble way)")
        for node in ("node1", "node2"):
            step(sb, f"drops seen by {node}'s agent", node,
                 ["l7gate", "observe", "--verdict", "DROPPED", "--last", "6"])
        step(sb, "L7 verdicts on node2", "node2",
             ["l7gate", "observe", "--type", "l7", "--protocol", "http", "--last", "6"])
        step(sb, "DNS verdicts on node1", "node1",
             ["l7gate", "observe", "--protocol", "dns", "--last", "4"])
        say(f"\n-- 5. metrics (Prometheus scrapes :{METRICS_PORT}/metrics on every node)")
        step(sb, "three of the families users' dashboards know", "node2",
             ["sh", "-c", f"curl -s http://{sb.node_ip('node2')}:{METRICS_PORT}/metrics | "
              "grep -E '^(hubble_drop_total|hubble_http_requests_total|"
              "hubble_flows_processed_total)' | grep -v ' 0.0$' | sort | "
              "awk -F'{' '{n[$1]++} n[$1] <= 3'"])
        step(sb, "agent health", "node2", ["l7gate", "status"], lines=9)
        say(f"\nDemo finished in {time.monotonic() - started:.1f}s.")
    finally:
        if keep:
            say("Sandbox kept (--keep): `l7gate sandbox status`, `l7gate sandbox down`.")
        else:
            sb.down()
            say("Sandbox removed.")
        shutil.rmtree(policy_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
