"""The fast paths' head memo (proxy/http/session_fast.py): a byte-identical repeat of the
last plain head reuses what the fast path computed from it. Fed whole, repeats take the
memo; fed byte by byte, never (run_both asserts both give the same actions). The decision
still runs for every request; the codec sees no plain head, repeat or not
(test_plain_codec_agreement.py says why)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.types import Decision, DropReason, HttpRequestMeta, Verdict
from proxy.http.actions import ConnInfo
from proxy.http.session_fast import MEMO_MAX_HEAD_BYTES

from .harness import CODECS, allow_all, api_get_only, make, run, run_both

GET = b"GET /api/x HTTP/1.1\r\nHost: Svc:8080\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n"
GET_Y = GET.replace(b"/api/x", b"/api/y")
ADMIN = GET.replace(b"/api/x", b"/admin")
GET_10 = b"GET /api/x HTTP/1.0\r\nHost: svc\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: o\r\n\r\nhello"
OK_HTML = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/html\r\n\r\nhello"
OK_10 = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nServer: o\r\n\r\nhello"


@pytest.mark.parametrize("codec", CODECS)
def test_repeated_heads_act_like_the_full_path(codec: str) -> None:
    steps = [("client", GET), ("upstream", OK), ("client", GET), ("upstream", OK),
             ("client", GET_Y), ("upstream", OK_HTML), ("client", GET), ("upstream", OK_HTML),
             ("client", ADMIN), ("client", ADMIN), ("client", GET),
             ("upstream", OK[:-3]), ("upstream", OK[-3:]),  # a repeat head, a split body
             ("client", GET), ("upstream", OK_10), ("client", GET), ("upstream", OK),
             ("client", GET_10), ("upstream", OK)]  # the remembered response, client closing
    got = run_both(codec, steps, decide=api_get_only)
    assert [x for x in got if x[0] == "flow"][4:6] == [
        ("flow", "DROPPED", 403, "REQUEST", "http://svc:8080/admin")] * 2
    assert got[-9:] == [
        ("upstream", b"GET /api/x HTTP/1.1\r\nhost: svc:8080\r\nuser-agent: curl/8\r\n"
                     b"accept: */*\r\n\r\n"),
        ("flow", "FORWARDED", 200, "RESPONSE", "http://svc:8080/api/x"),
        ("client", b"HTTP/1.1 200 OK\r\nserver: o\r\ncontent-length: 5\r\n\r\nhello"),
        ("release", True),
        ("upstream", b"GET /api/x HTTP/1.1\r\nhost: svc\r\n\r\n"),
        ("flow", "FORWARDED", 200, "RESPONSE", "http://svc/api/x"),
        ("client", b"HTTP/1.1 200 OK\r\nserver: o\r\ncontent-length: 5\r\n"
                   b"connection: close\r\n\r\nhello"),
        ("release", True),
        ("close", "client"),
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_a_repeat_reuses_the_request_but_is_decided_again(codec: str) -> None:
    answers = iter([Decision.FORWARDED, Decision.DENIED, Decision.FORWARDED])

    def flip(conn: ConnInfo, meta: HttpRequestMeta) -> Verdict:
        if next(answers) is Decision.FORWARDED:
            return Verdict(Decision.FORWARDED, "t:allow")
        return Verdict(Decision.DENIED, "t:deny", DropReason.POLICY_DENIED)

    h = make(codec, decide=flip)
    got = run(h, [("client", GET), ("upstream", OK), ("client", GET), ("client", GET),
                  ("upstream", OK)])
    assert [x[0] for x in got] == ["upstream", "flow", "client", "release", "flow", "client",
                                   "upstream", "flow", "client", "release"]
    assert got[5][1].startswith(b"HTTP/1.1 403 ")  # type: ignore[union-attr]
    assert len(h.metas) == 3 and h.metas[0] is h.metas[1] is h.metas[2]  # one parse


@pytest.mark.parametrize("codec", CODECS)
def test_the_codec_sees_no_plain_head(codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = make(codec, decide=allow_all)
    seen: list[bytes] = []
    original = type(h.session._codec).feed

    def counting(self: object, data: bytes) -> object:
        seen.append(data)
        return original(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(type(h.session._codec), "feed", counting)
    run(h, [("client", GET), ("upstream", OK), ("client", GET), ("upstream", OK),
            ("client", GET_Y), ("upstream", OK), ("client", GET), ("upstream", OK)])
    assert seen == []
    assert len(h.metas) == 4  # all four were decided


@pytest.mark.parametrize("codec", CODECS)
def test_what_is_not_remembered(codec: str) -> None:
    h = make(codec, decide=allow_all)
    run(h, [("client", GET_10), ("upstream", OK)])  # HTTP/1.0: the connection closes after
    assert h.session._req_memo is None and h.session._resp_memo is not None
    big = GET[:-2] + b"X-Pad: " + b"p" * MEMO_MAX_HEAD_BYTES + b"\r\n\r\n"
    h = make(codec, decide=allow_all)
    got = run(h, [("client", big), ("upstream", OK), ("client", big), ("upstream", OK)])
    assert h.session._req_memo is None and len(h.metas) == 2
    assert [x[0] for x in got].count("upstream") == 2


HEADS = [GET, GET_Y, ADMIN, GET.replace(b"Svc", b"other"), GET_10,
         b"GET /api/x HTTP/1.1\r\nUser-Agent: u\r\nHost: h\r\n\r\n",  # full path
         b"GET /api/./x HTTP/1.1\r\nHost: h\r\n\r\n"]
RESPONSES = [OK, OK_HTML, OK_10, b"HTTP/1.1 404 Nope\r\ncontent-length:5 \r\n\r\nhello",
             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"]


@given(st.sampled_from(CODECS),
       st.lists(st.tuples(st.sampled_from(HEADS), st.sampled_from(RESPONSES)), max_size=6))
def test_any_mix_of_repeats_acts_like_the_full_path(
        codec: str, exchanges: list[tuple[bytes, bytes]]) -> None:
    steps = []
    for head, response in exchanges:
        steps += [("client", head), ("upstream", response)]
    run_both(codec, steps, decide=allow_all)
