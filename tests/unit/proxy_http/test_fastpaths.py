"""The one-pass fast paths against the step-by-step definitions they replace.

`check_request_head` matches a whole head with one pattern and only falls back to the
step-by-step checks to name the status; `prepare_request` takes a short path for heads the
gate marked `plain`. Both must give exactly what the step-by-step path gives. The session's
fast paths (proxy/http/fast.py) must accept only what the full path accepts and compute the
same values from it; the session-level equality (whole reads take the fast paths, byte-wise
reads never do) is what test_session/test_differential/test_hostile check on top."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy import compiled
from proxy.http import fast, wire
from proxy.http import session as session_module
from proxy.http.actions import Emit, SendClient, SendUpstream
from proxy.http.codec import HttptoolsCodec
from proxy.http.limits import HttpLimits
from proxy.http.request import (
    _SPECIAL,
    AUTHORITY,
    HOP_BY_HOP,
    BodyKind,
    PreparedRequest,
    prepare_request,
)
from proxy.http.response import client_response_head, response_framing
from proxy.http.session_fast import fast_request
from proxy.http.wire import HttpReject, LengthDecoder, check_request_head

from .harness import CODECS, CONN, allow_all, api_get_only, make, run, run_both
from .test_differential import requests


def reference_gate(head: bytes, max_head: int, max_headers: int) -> tuple[object, ...]:
    """The step-by-step gate (line endings, count, request line, version, field block)."""
    if len(head) > max_head:
        return (431,)
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        return (400,)
    first_end = head.find(b"\r\n")
    block = head[first_end + 2 : -2]
    if block.count(b"\r\n") > max_headers:
        return (431,)
    m = wire._REQUEST_LINE.fullmatch(head, 0, first_end)
    if m is None:
        return (400,)
    if (int(m.group(3)), int(m.group(4))) not in ((1, 0), (1, 1)):
        return (505,)
    if wire._HEADER_BLOCK.fullmatch(block) is None:
        return (400,)
    fields = []
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        fields.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))
    version = f"{m.group(3).decode()}.{m.group(4).decode()}"
    return (m.group(1).decode(), m.group(2).decode(), version, fields)


def fast_gate(head: bytes, max_head: int, max_headers: int) -> tuple[object, ...]:
    try:
        g = check_request_head(head, max_head, max_headers)
    except HttpReject as exc:
        return (exc.status,)
    return (g.method, g.target, g.version, g.headers)


def head_of(data: bytes) -> bytes | None:
    end = data.find(b"\r\n\r\n")
    return data[: end + 4] if end != -1 else None


@given(requests(), st.integers(0, 8))
def test_one_pass_gate_equals_the_step_by_step_gate(data: bytes, max_headers: int) -> None:
    head = head_of(data)
    if head is not None:
        for cap in (max_headers, 100):
            assert fast_gate(head, 60 * 1024, cap) == reference_gate(head, 60 * 1024, cap)


@given(st.binary(max_size=200))
def test_one_pass_gate_equals_the_step_by_step_gate_on_junk(junk: bytes) -> None:
    head = junk + b"\r\n\r\n"
    assert fast_gate(head, 150, 4) == reference_gate(head, 150, 4)


def test_gate_counts_fields_and_sizes_like_before() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5 + b"\r\n"
    assert fast_gate(head, 1000, 4) == (431,) and fast_gate(head, 1000, 5)[0] == "GET"
    assert fast_gate(head, 20, 100) == (431,)


ACTED_ON = [*sorted((HOP_BY_HOP | _SPECIAL) - {"host"}), "Proxy-Authorization", "X_Y", "TE"]


@pytest.mark.parametrize("name", ACTED_ON)
def test_plain_is_false_for_every_field_request_py_acts_on(name: str) -> None:
    head = f"GET /api/x HTTP/1.1\r\nHost: h\r\n{name}: 1\r\n\r\n".encode()
    assert check_request_head(head, 60 * 1024, 100).plain is False


@pytest.mark.parametrize("head", [
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nUser-Agent: u\r\nAccept: */*\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nhost: H:80\r\nX-Te: 1\r\nX-Connection: a\r\nTEx: 1\r\n\r\n",
    b"GET //api/./x?q=1 HTTP/1.0\r\nX: 1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://a:8/api/x HTTP/1.1\r\nHost: evil\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
])
def test_plain_short_path_equals_the_full_path(head: bytes) -> None:
    gate = check_request_head(head, 60 * 1024, 100)
    assert gate.plain
    codec = HttptoolsCodec(0)
    codec.start()
    ev = codec.feed(head)[0]
    short = prepare_request(gate, ev, CONN, HttpLimits())  # type: ignore[arg-type]
    full = prepare_request(dataclasses.replace(gate, plain=False),
                           ev, CONN, HttpLimits())  # type: ignore[arg-type]
    assert short == full


# --- session fast paths (proxy/http/fast.py) -------------------------------------------------

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: o\r\n\r\nok"
STATUSES = [b"200 OK", b"201 Created", b"204 No Content", b"304 Not Modified", b"404 ",
            b"500 Oops", b"101 Switching", b"099 X", b"600 X", b"200"]
RESPONSE_FIELDS = [b"Content-Length: 5", b"content-length:5", b"Content-Length: 05",
                   b"Content-Length: 0", b"Content-Length: 5 ", b"Content-Length: +5",
                   b"Content-Length: 1234567890123456789", b"Transfer-Encoding: chunked",
                   b"Connection: close", b"Connection: x-hop", b"X-Hop: 1", b"Keep-Alive: 5",
                   b"Proxy-Authenticate: x", b"Server: nginx", b"X_Y: 1", b"X: \tv\t ",
                   b"Host: h", b"TE: x", b" folded", b"X: \x01", b"Date: Thu, 26 Nov 2026"]


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    fields = draw(st.lists(st.sampled_from(RESPONSE_FIELDS), max_size=5))
    if draw(st.booleans()):  # most real responses: one Content-Length among other fields
        fields.insert(draw(st.integers(0, len(fields))), b"Content-Length: 5")
    return (version + b" " + draw(st.sampled_from(STATUSES)) + b"\r\n"
            + b"".join(f + eol for f in fields) + b"\r\n")


def full_request(head: bytes) -> object:
    """What the full path makes of a head: the prepared request, or the rejection status."""
    try:
        gate = check_request_head(head, 60 * 1024, 100)
        codec = HttptoolsCodec(0)
        codec.start()
        ev = codec.feed(head)[0]
        return prepare_request(gate, ev, CONN, HttpLimits())  # type: ignore[arg-type]
    except HttpReject as exc:
        return exc.status


def check_plain_request(head: bytes, max_headers: int = 100) -> None:
    plain = fast.plain_request(head, max_headers)
    if plain is None:
        return
    method, target, version, fields = plain
    full = full_request(head)
    host = fields[0][1].lower()
    if not AUTHORITY.fullmatch(host):  # the session checks the Host (cached per connection)
        assert full == 400
        return
    assert isinstance(full, PreparedRequest), (head, full)
    assert full.body is BodyKind.NONE and not full.expect_continue and full.upgrade is None
    assert full.keep_alive == (version == "1.1") and not full.is_connect
    assert (full.method, full.version, full.path, full.host) == (method, version, target, host)
    gate = check_request_head(head, 60 * 1024, 100)
    assert fields == gate.headers  # what the codecs are compared with
    assert full.headers == (("host", host), *fields[1:])
    assert len(fields) <= max_headers


@st.composite
def near_plain_heads(draw: st.DrawFn) -> bytes:
    """Heads close to the fast path's case, so that both sides of its edge are generated."""
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"DELETE", b"OPTIONS",
                                   b"PATCH", b"PUT", b"get", b"FOO", b"CONNECT"]))
    target = draw(st.sampled_from([b"/", b"/api/x", b"/api/x/", b"/a.b/c.?q=/./%zz", b"/a?",
                                   b"/api/../x", b"/api//x", b"/.x", b"/a%41", b"/a\\b",
                                   b"/a#f", b"*", b"http://h/a", b"/a'\"<>[]^`{|}~!$&()*+,;=:@"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2"]))
    host = draw(st.sampled_from([b"Host: h", b"host:H:80", b"HOST:\th \t", b"Host: a b",
                                 b"Host: u@h", b"Host: ", b"Host: [::1]:8", b"X: y"]))
    others = draw(st.lists(st.sampled_from(
        [b"User-Agent: curl/8", b"Accept: */*", b"Accept: */*", b"X-Te: 1", b"TEx: 1",
         b"X:", b"X: \x80\xff", b"Cookie: a=b; c=d", b"Host: h", b"host: evil", b"TE: x",
         b"Content-Length: 0", b"Connection: close", b"Proxy-X: 1", b"X_Y: 1", b" fold",
         b"Keep-Alive: 1", b"Expect: 100-continue", b"X: a\x00"]), max_size=4))
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    lines = [method + b" " + target + b" " + version, host, *others]
    return b"".join(ln + eol for ln in lines) + b"\r\n"


@given(st.one_of(requests(), near_plain_heads()), st.integers(0, 8))
def test_plain_request_agrees_with_the_full_path(data: bytes, max_headers: int) -> None:
    head = head_of(data)
    if head is not None:
        check_plain_request(head, max_headers)
        check_plain_request(head)


PLAIN_HEADS = [
    b"GET /api/x HTTP/1.1\r\nHost: Svc:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.0\r\nhost: h\r\n\r\n",
    b"DELETE /a.b/c./d?x=/./..//%zz HTTP/1.1\r\nHost:\th \r\nX-Te: 1\r\nTEx: 2\r\nX:\r\n\r\n",
    b"GET /a/ HTTP/1.1\r\nHost: h\r\nAccept: a\r\nAccept: b\r\n\r\n",
]
NOT_PLAIN_HEADS = [
    b"GET /api/x HTTP/1.1\r\nUser-Agent: u\r\nHost: h\r\n\r\n",  # Host not first
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    b"GET /api/x HTTP/1.0\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nProxy-Authorization: x\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nX_Y: 1\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"GET http://h/api/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"get /api/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"FOO /api/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /api//x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /api/./x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /api/%41 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /api\\x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /api/x#f HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET // HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /api/x HTTP/1.2\r\nHost: h\r\n\r\n",
    b"GET /api/x HTTP/1.1\nHost: h\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nX: a\x00\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\nX: y\r\n\r\n",
    b"\r\nGET /api/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\n\r\n",
]


@pytest.mark.parametrize("head", PLAIN_HEADS)
def test_plain_request_takes_the_usual_heads(head: bytes) -> None:
    assert fast.plain_request(head, 100) is not None
    check_plain_request(head)


@pytest.mark.parametrize("head", NOT_PLAIN_HEADS)
def test_plain_request_leaves_everything_else_to_the_full_path(head: bytes) -> None:
    assert fast.plain_request(head, 100) is None


def test_plain_request_counts_fields_like_the_gate() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 4 + b"\r\n"
    assert fast.plain_request(head, 4) is None and fast.plain_request(head, 5) is not None
    assert fast_gate(head, 1000, 4) == (431,)


def check_plain_response(head: bytes, max_headers: int = 100) -> None:
    plain = fast.plain_response(head, max_headers)
    if plain is None:
        return
    minor, status, reason, lines, length = plain
    rh = wire.parse_response_head(head, max_headers)  # must not raise
    framing = response_framing(rh, "GET", client_version="1.1")
    assert (rh.minor, rh.status, rh.reason) == (minor, int(status), reason)
    assert isinstance(framing.decoder, LengthDecoder) and framing.decoder.remaining == length
    assert framing.content_length == length and not framing.client_chunked
    assert not framing.close_client and framing.upstream_reusable == (minor == 1)
    for close in (False, True):
        expect = client_response_head(rh, framing, close=close, switch=False)
        tail = "connection: close\r\n" if close else ""
        got = f"HTTP/1.1 {status} {reason}\r\n{lines}content-length: {length}\r\n{tail}\r\n"
        assert got.encode("latin-1") == expect


@given(responses(), st.integers(0, 6))
def test_plain_response_agrees_with_the_full_path(head: bytes, max_headers: int) -> None:
    check_plain_response(head, max_headers)
    check_plain_response(head)


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\nContent-Type: text/plain\r\n\r\n",
    b"HTTP/1.0 404 \r\ncontent-length:\t007 \r\nX_Y: a b \r\n\r\n",
    b"HTTP/1.1 500\r\nContent-Length: 0\r\n\r\n",
])
def test_plain_response_takes_the_usual_heads(head: bytes) -> None:
    assert fast.plain_response(head, 100) is not None
    check_plain_response(head)


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\n\r\n",  # close-delimited
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nProxy-Connection: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nHost: h\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\nX: y\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: y\r\n z\r\n\r\n",
    b"HTTP/1.2 200 OK\r\nContent-Length: 1\r\n\r\n",
])
def test_plain_response_leaves_everything_else_to_the_full_path(head: bytes) -> None:
    assert fast.plain_response(head, 100) is None


def test_actions_keep_their_value_semantics() -> None:
    for cls in (SendClient, SendUpstream):
        a = cls(b"x")
        assert a == cls(b"x") and a != cls(b"y") and hash(a) == hash(cls(b"x"))
        assert a.data == b"x" and repr(a) == f"{cls.__name__}(data=b'x')"
        with pytest.raises(dataclasses.FrozenInstanceError):
            a.data = b"y"  # type: ignore[misc]
    assert Emit(None).flow is None  # type: ignore[arg-type]


@given(near_plain_heads(), st.sampled_from(CODECS), st.booleans(), responses(),
       st.sampled_from(["complete", "partial"]))
def test_session_fast_paths_act_like_the_full_path(head: bytes, codec: str, strict: bool,
                                                   response: bytes, body: str) -> None:
    """Fed whole, a plain head/response takes the fast path; fed byte by byte, never.
    run_both asserts both give the same actions (and the session never raises)."""
    lowered = response.lower()
    length = re.search(rb"^content-length:[ \t]*([0-9]{1,6})[ \t]*\r?$", lowered, re.M)
    # a close-delimited or chunked body is re-chunked as it arrives, and bytes beyond the
    # declared length are judged per read: neither compares exactly whole vs byte-wise
    assume(length is not None and b"transfer-encoding" not in lowered)
    assert length is not None
    bodiless = head.startswith(b"HEAD ") or response[9:12] in (b"204", b"304")
    data = b"" if bodiless else b"x" * int(length.group(1))
    cut = len(data) // 2 if body == "partial" else len(data)
    if strict:  # denials answered locally (no upstream bytes are expected for them)
        run_both(codec, [("client", head), ("client", head)], decide=api_get_only)
        return
    rest = [("upstream", data[cut:])] if data[cut:] else []  # (b"" would be EOF)
    second = OK_RESPONSE[:-2] if head.startswith(b"HEAD ") else OK_RESPONSE
    run_both(codec, [("client", head), ("upstream", response + data[:cut]), *rest,
                     ("client", head), ("upstream", second)], decide=allow_all)


# --- plain and full-path requests on one keep-alive connection -------------------------------
# The fast path does not feed the codec (test_plain_codec_agreement.py), so the codec must
# still be at a message start whenever the full path runs after plain requests, and plain
# requests must act the same after the codec parsed a body. Each script runs on a session
# whose fast path is on and on one where it is off (every request through the codec), fed
# the same reads; and, where no body is re-chunked per read, whole vs byte by byte too.

PLAIN_GETS = [b"GET /api/x HTTP/1.1\r\nHost: svc\r\nX-Request-Id: %d\r\n\r\n" % i
              for i in range(3)]
CHUNKED = (b"POST /api/x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")
NOT_PLAIN = [
    b"POST /api/x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello",
    CHUNKED,
    b"GET /api/x HTTP/1.1\r\nUser-Agent: u\r\nHost: svc\r\n\r\n",  # Host second
    b"PURGE /api/x HTTP/1.1\r\nHost: svc\r\n\r\n",  # a method llhttp does not know
    b"GET /api/./x HTTP/1.1\r\nHost: svc\r\n\r\n",  # normalized by the full path
    b"PUT /api/x HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: svc\r\nX-Request-Id: 9\r\n\r\n"[:-4],  # a split head
]
OBS_FOLD = b"GET /api/x HTTP/1.1\r\nHost: svc\r\nX: a\r\n b\r\n\r\n"
PLAIN_10 = b"GET /api/x HTTP/1.0\r\nHost: svc\r\n\r\n"  # plain; the connection closes


# The seam below replaces session.py's `fast_request`; compiled (proxy/compiled.py), the
# session calls the compiled function directly and the seam is not seen. `make test` runs
# this directory again with L7GATE_PURE=1, where these tests run.
needs_pure_session = pytest.mark.skipif(
    "session" in compiled.loaded(),
    reason="patches session.fast_request, which compiled code calls directly; "
           "run by make test's L7GATE_PURE=1 pass over tests/unit/proxy_http")


def run_fast_and_full(codec: str,
                      steps: list[tuple[str, bytes]]) -> tuple[list[tuple[object, ...]], int]:
    """The same reads with the fast path on and off: the same actions. Also returns how
    many requests the fast path took."""
    taken = 0

    def counting(s: object, data: bytes) -> object:
        nonlocal taken
        out = fast_request(s, data)  # type: ignore[arg-type]
        taken += out is not None
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session_module, "fast_request", counting)
        fast_on = run(make(codec, decide=allow_all), steps)
        mp.setattr(session_module, "fast_request", lambda s, data: None)
        fast_off = run(make(codec, decide=allow_all), steps)
    assert fast_on == fast_off
    return fast_on, taken


def alternate(others: list[bytes]) -> list[tuple[str, bytes]]:
    steps: list[tuple[str, bytes]] = []
    for i, other in enumerate(others):
        steps += [("client", PLAIN_GETS[i % 3]), ("upstream", OK_RESPONSE), ("client", other)]
        if other.endswith(b"9"):  # the rest of the split head
            steps.append(("client", b"\r\n\r\n"))
        steps.append(("upstream", OK_RESPONSE))
    return [*steps, ("client", PLAIN_GETS[0]), ("upstream", OK_RESPONSE), ("client", OBS_FOLD)]


@needs_pure_session
@pytest.mark.parametrize("codec", CODECS)
def test_plain_and_full_path_requests_alternate_on_one_connection(codec: str) -> None:
    got, taken = run_fast_and_full(codec, alternate(NOT_PLAIN))
    assert taken == len(NOT_PLAIN) + 1  # every plain GET, and nothing else
    up = [x[1] for x in got if x[0] == "upstream" and isinstance(x[1], bytes)]
    assert len(up) == 2 * len(NOT_PLAIN) + 1  # every request but the folded one went up
    assert up[1].endswith(b"\r\n\r\nhello")  # the Content-Length body
    assert up[3].endswith(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")  # re-chunked as read
    assert [x[0] for x in got][-2:] == ["client", "close"]
    assert got[-2][1].startswith(b"HTTP/1.1 400 ")  # type: ignore[attr-defined]
    run_both(codec, alternate([h for h in NOT_PLAIN if h != CHUNKED]), decide=allow_all)


@needs_pure_session
@given(st.sampled_from(CODECS),
       st.lists(st.sampled_from([*PLAIN_GETS, *NOT_PLAIN[:-1], PLAIN_10, OBS_FOLD]),
                min_size=1, max_size=8))
def test_any_mix_of_plain_and_full_path_requests_acts_the_same(codec: str,
                                                               heads: list[bytes]) -> None:
    steps: list[tuple[str, bytes]] = []
    for head in heads:
        steps += [("client", head), ("upstream", OK_RESPONSE)]
        if head in (OBS_FOLD, PLAIN_10):  # the connection closes after it
            break
    _, taken = run_fast_and_full(codec, steps)
    assert taken == sum(h in (*PLAIN_GETS, PLAIN_10) for h in heads[: len(steps) // 2])
    if CHUNKED not in heads:
        run_both(codec, steps, decide=allow_all)


# The tree of the names plain_request leaves to the full path against the plain spelling.
NOT_PLAIN_REFERENCE = re.compile(
    r"(?i:transfer-encoding|content-length|connection|expect|upgrade|keep-alive|te|trailer"
    r"|http2-settings|host):|(?i:proxy-)")
NOT_PLAIN_WORDS = ["transfer-encoding:", "content-length:", "connection:", "expect:",
                   "upgrade:", "keep-alive:", "te:", "trailer:", "http2-settings:", "host:",
                   "proxy-", "content-type:", "contents:", "tea:", "trailers:", "hosts:",
                   "http2:", "con:", "t:", "x-te:"]


@given(st.sampled_from(NOT_PLAIN_WORDS), st.integers(0, 2**20), st.integers(0, 20),
       st.text(st.sampled_from("ahnost-:x\x80\xff"), max_size=4))
def test_not_plain_name_tree_is_the_plain_name_set(word: str, flips: int, cut: int,
                                                   tail: str) -> None:
    name = "".join(c.swapcase() if flips >> i & 1 else c for i, c in enumerate(word))
    for text in (name, name[:cut] + tail, tail + name, name[:-1] + tail):
        assert (re.match(fast._NOT_PLAIN_NAME_S, text) is None) == (
            NOT_PLAIN_REFERENCE.match(text) is None), text


def test_each_flow_has_its_own_requests_url() -> None:
    """The fast path reuses the last URL while the target and Host repeat: a new Host or
    target on the same connection gets its own."""
    s = make("auto", decide=allow_all).session
    urls = []
    for host, target in [("one", "/a"), ("one", "/a"), ("Two", "/a"), ("two", "/b"),
                         ("two", "/b"), ("one", "/b")]:
        assert s.feed_client(b"GET %s HTTP/1.1\r\nHost: %s\r\nX-Id: %d\r\n\r\n"
                             % (target.encode(), host.encode(), len(urls)))
        out = s.feed_upstream(OK_RESPONSE)
        urls += [a.flow.http.url for a in out if isinstance(a, Emit)]
    assert urls == ["http://one/a", "http://one/a", "http://two/a", "http://two/b",
                    "http://two/b", "http://one/b"]
