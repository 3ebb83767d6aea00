"""--http-url, --http-header and --tcp-flags (Hubble's flags) on the recorded flows."""

from __future__ import annotations

from typing import Any

import pytest

from observe.filters import FilterError, SpecBuilder, compile_spec
from observe.flow import EventKind, Flow, FlowVerdict, HttpInfo


def _pred(*flags: tuple[str, str]) -> Any:
    b = SpecBuilder()
    for flag, value in flags:
        b.add(flag, value)
    return compile_spec(b.spec())


def test_http_url_matches_the_recorded_flows(flows: list[Flow]) -> None:
    pred = _pred(("http-url", r"/api/users$"))
    hits = [f for f in flows if pred(f)]
    assert hits and all(f.http is not None and f.http.url.endswith("/api/users") for f in hits)
    assert len(hits) == sum(1 for f in flows if f.http and f.http.url.endswith("/api/users"))


def test_tcp_flags_all_listed_must_be_set(flows: list[Flow]) -> None:
    syn = [f for f in flows if _pred(("tcp-flags", "syn"))(f)]
    assert syn and all("SYN" in f.tcp_flags for f in syn)
    assert not [f for f in flows if _pred(("tcp-flags", "syn,fin"))(f)
                and "FIN" not in f.tcp_flags]
    with pytest.raises(FilterError):
        _pred(("tcp-flags", "syn,bogus"))


def test_http_header_exact_value_any_case_name() -> None:
    fl = Flow(time_ns=1, verdict=FlowVerdict.FORWARDED, kind=EventKind.L7,
              http=HttpInfo(method="GET", url="http://a/x", headers=[("X-Team", "blue")]))
    assert _pred(("http-header", "x-team:blue"))(fl)
    assert not _pred(("http-header", "x-team:blu"))(fl)
    with pytest.raises(FilterError):
        _pred(("http-header", "novalue"))
