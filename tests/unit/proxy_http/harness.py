"""Test harness for the sans-IO HTTP session: a policy, a session factory, and feeding
helpers that run the same script whole and one byte at a time (tested in test_harness.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import re2

from policy.types import Decision, DropReason, HttpRequestMeta, Verdict
from proxy.http.actions import (
    Action,
    Close,
    ConnInfo,
    Emit,
    HttpProxyStats,
    ReleaseUpstream,
    SendClient,
    SendUpstream,
    StartTunnel,
)
from proxy.http.codec import codec_factory
from proxy.http.limits import HttpLimits
from proxy.http.session import HttpSession

CODECS = ["h11", "httptools"]
CONN = ConnInfo("10.0.1.5", 40000, "10.0.2.7", 8080)
API = re2.compile(r"/api/.*")


def api_get_only(conn: ConnInfo, meta: HttpRequestMeta) -> Verdict:
    """The corpus policy: `method: GET, path: /api/.*` (full match, case-sensitive)."""
    if meta.method == "GET" and API.fullmatch(meta.path):
        return Verdict(Decision.FORWARDED, rule_id="test:api")
    return Verdict(Decision.DENIED, rule_id="default-deny", reason=DropReason.POLICY_DENIED)


def allow_all(conn: ConnInfo, meta: HttpRequestMeta) -> Verdict:
    return Verdict(Decision.FORWARDED, rule_id="test:all")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


@dataclass
class Harness:
    session: HttpSession
    stats: HttpProxyStats
    metas: list[HttpRequestMeta] = field(default_factory=list)


def make(codec: str, decide: object = api_get_only, limits: HttpLimits | None = None) -> Harness:
    stats = HttpProxyStats()
    metas: list[HttpRequestMeta] = []

    def recording(conn: ConnInfo, meta: HttpRequestMeta) -> Verdict:
        metas.append(meta)
        return decide(conn, meta)  # type: ignore[operator,no-any-return]

    s = HttpSession(CONN, recording, codec=codec_factory(codec), limits=limits or HttpLimits(),
                    stats=stats, clock_ns=FakeClock(), wall_ns=FakeClock())
    return Harness(s, stats, metas)


def simplify(actions: Iterable[Action]) -> list[tuple[object, ...]]:
    """Merge adjacent sends of the same direction; flows become (verdict, code, type, url)."""
    out: list[tuple[object, ...]] = []
    for a in actions:
        match a:
            case SendClient(data=d) | SendUpstream(data=d):
                tag = "client" if isinstance(a, SendClient) else "upstream"
                if not d:
                    continue
                if out and out[-1][0] == tag:
                    out[-1] = (tag, out[-1][1] + d)  # type: ignore[operator]
                else:
                    out.append((tag, d))
            case Emit(flow=f):
                assert f.http is not None
                out.append(("flow", f.verdict.value, f.http.code, f.l7_type, f.http.url))
            case ReleaseUpstream(reusable=r):
                out.append(("release", r))
            case Close(side=side):
                out.append(("close", side.value))
            case StartTunnel():
                out.append(("tunnel",))
            case _:
                raise AssertionError(f"unknown action {a!r}")
    return out


Step = tuple[str, bytes]  # ("client" | "upstream", bytes)


def run(h: Harness, steps: list[Step], *, bytewise: bool = False) -> list[tuple[object, ...]]:
    actions: list[Action] = []
    for side, data in steps:
        feed = h.session.feed_client if side == "client" else h.session.feed_upstream
        if not data:
            actions += feed(b"")
        elif bytewise:
            for i in range(len(data)):
                actions += feed(data[i : i + 1])
        else:
            actions += feed(data)
    return simplify(actions)


def streams(got: list[tuple[object, ...]]) -> tuple[bytes, bytes, list[tuple[object, ...]]]:
    """(all upstream bytes, all client bytes, the other events in order)."""
    up = b"".join(x[1] for x in got if x[0] == "upstream")  # type: ignore[misc]
    cl = b"".join(x[1] for x in got if x[0] == "client")  # type: ignore[misc]
    return up, cl, [x for x in got if x[0] not in ("upstream", "client")]


def run_both(codec: str, steps: list[Step], *, exact: bool = True,
             **kw: object) -> list[tuple[object, ...]]:
    """Run whole and byte-by-byte on fresh sessions; both must give the same actions
    (`exact=False`: the same bytes per direction and the same other events, for tunnels whose
    interleaving follows arrival)."""
    whole = run(make(codec, **kw), steps)  # type: ignore[arg-type]
    bytewise = run(make(codec, **kw), steps, bytewise=True)  # type: ignore[arg-type]
    if exact:
        assert whole == bytewise
    else:
        assert streams(whole) == streams(bytewise)
    return whole
