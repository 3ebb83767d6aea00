"""Differential: the h11 and httptools codecs must make the session accept, reject and
frame identically (same actions, byte for byte) on generated and hostile inputs, fed whole
and split at arbitrary points."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from .harness import API, CODECS, allow_all, api_get_only, make, run, simplify
from .test_hostile import CORPUS, ORIGIN_OK, drive, raw_bytes, strict_reparse

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"get", b"CONNECT", b"OPTIONS", b"PATCH", b"FOO",
           b"G(T", b"", b"GET\x00"]
TARGETS = [b"/api/x", b"/api/../admin", b"/api/%2e%2e/x", b"//api//x?q=%zz", b"*", b"a:443",
           b"http://h/api/x", b"http://u@h/", b"/api/x#f", b"/%5c", b"/api/\\x", b"/\x7f",
           b"/api/%41%7e", b"/api x"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "]
HEADERS = [b"Host: h", b"Host: h", b"Host: a:80", b"Content-Length: 3", b"Content-Length: 0",
           b"Content-Length: +3", b"Content-Length: 3, 3", b"Transfer-Encoding: chunked",
           b"Transfer-Encoding: chunked, identity", b"Transfer-Encoding: gzip",
           b"Connection: close", b"Connection: keep-alive", b"Connection: upgrade",
           b"Upgrade: websocket", b"Expect: 100-continue", b"X_Y: 1", b" folded",
           b"X: \x01", b"X: a\tb", b"X : y", b"TE: trailers", b"Keep-Alive: 1", b"X-Y:",
           b"Transfer-Encoding:\tchunked", b"Host:h"]
BODIES = [b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"0\r\n\r\n", b"3\nabc\r\n0\r\n\r\n",
          b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n", b"zz\r\n",
          b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"]
EOL = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    line = b" ".join([draw(st.sampled_from(METHODS)), draw(st.sampled_from(TARGETS)),
                      draw(st.sampled_from(VERSIONS))])
    eol = draw(st.sampled_from(EOL))
    hdrs = draw(st.lists(st.sampled_from(HEADERS), max_size=6))
    raw = line + b"\r\n" + b"".join(h + eol for h in hdrs) + b"\r\n"
    return raw + draw(st.sampled_from(BODIES))


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(requests(), min_size=1, max_size=3)))
    if draw(st.booleans()) and data:  # one random byte mutation
        pos = draw(st.integers(0, len(data) - 1))
        data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1 :]
    return data


def outcome(codec: str, data: bytes, cuts: list[int], decide: object) -> list[tuple[object, ...]]:
    h = make(codec, decide=decide)
    actions = []
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        actions += drive(h, data[a:b], False)
    return simplify(actions)


@given(streams(), st.lists(st.integers(0, 10_000), max_size=4), st.booleans())
def test_codecs_agree_on_generated_requests(data: bytes, cuts: list[int], strict: bool) -> None:
    decide = api_get_only if strict else allow_all
    assert outcome("h11", data, cuts, decide) == outcome("httptools", data, cuts, decide)


@given(st.sampled_from(CORPUS), st.lists(st.integers(0, 100_000), max_size=3))
def test_codecs_agree_on_the_hostile_corpus_split_anywhere(case: dict[str, object],
                                                           cuts: list[int]) -> None:
    data = raw_bytes(case)  # type: ignore[arg-type]
    assert outcome("h11", data, cuts, api_get_only) == outcome("httptools", data, cuts,
                                                               api_get_only)


def test_differential_sees_real_differences() -> None:
    """Sanity of the comparison: different inputs give different outcomes."""
    a = outcome("h11", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n", [], api_get_only)
    b = outcome("h11", b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n", [], api_get_only)
    assert a != b and run(make("h11"), [("upstream", ORIGIN_OK)]) == [("release", False)]


@given(st.one_of(streams(), st.binary(max_size=300)), st.sampled_from(CODECS),
       st.lists(st.integers(0, 10_000), max_size=4))
def test_any_input_never_raises_and_never_forwards_a_denied_request(
        data: bytes, codec: str, cuts: list[int]) -> None:
    """h11's fuzz invariant, for the whole session: any input ends in actions (no exception),
    and whatever reaches the origin re-parses strictly as allowed requests only."""
    got = outcome(codec, data, cuts, api_get_only)
    to_origin = b"".join(x[1] for x in got if x[0] == "upstream")  # type: ignore[misc]
    lines, leftover = strict_reparse(to_origin)
    for ln in lines:
        method, target, _ = ln.split(b" ")
        assert method == b"GET" and API.fullmatch(target.decode()), ln
    if leftover:
        assert ("release", False) in got, leftover
