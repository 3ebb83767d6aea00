"""Scripted exchanges through the sans-IO session: exact action lists, both codecs, fed whole
and one byte at a time (run_both asserts both feedings agree)."""

from __future__ import annotations

import pytest

from policy.types import HttpRequestMeta
from proxy.http.actions import ConnInfo
from proxy.http.wire import ChunkedDecoder

from .harness import CODECS, allow_all, make, run, run_both

pytestmark = pytest.mark.parametrize("codec", CODECS)

DENY = (b"HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\ncontent-type: text/plain\r\n\r\n"
        b"Access denied\r\n")
DENY_CLOSE = (b"HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\ncontent-type: text/plain\r\n"
              b"connection: close\r\n\r\nAccess denied\r\n")
OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK5_OUT = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"


def ok(url: str, code: int = 200) -> tuple[object, ...]:
    return ("flow", "FORWARDED", code, "RESPONSE", url)


def denied(url: str) -> tuple[object, ...]:
    return ("flow", "DROPPED", 403, "REQUEST", url)


def test_allowed_get_is_reserialised_and_pooled(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"GET /api/x?q=1 HTTP/1.1\r\nHost: Svc:8080\r\nAccept: */*\r\n\r\n"),
        ("upstream", OK5),
    ])
    assert got == [
        ("upstream", b"GET /api/x?q=1 HTTP/1.1\r\nhost: svc:8080\r\naccept: */*\r\n\r\n"),
        ok("http://svc:8080/api/x?q=1"),
        ("client", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
        ("release", True),
    ]


def test_denied_gets_403_and_connection_stays_usable(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("client", b"GET /api/ok HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("upstream", OK5),
    ])
    assert got == [
        denied("http://h/admin"), ("client", DENY),
        ("upstream", b"GET /api/ok HTTP/1.1\r\nhost: h\r\n\r\n"),
        ok("http://h/api/ok"), ("client", OK5_OUT), ("release", True),
    ]


def test_pipelined_requests_are_decided_one_by_one(codec: str) -> None:
    h = make(codec)
    first = run(h, [("client", b"GET /api/1 HTTP/1.1\r\nHost: h\r\n\r\n"
                               b"POST /api/2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                               b"GET /api/3 HTTP/1.1\r\nHost: h\r\n\r\n")])
    assert first == [("upstream", b"GET /api/1 HTTP/1.1\r\nhost: h\r\n\r\n")]
    assert h.session.buffered_bytes > 0  # the rest waits for the first response
    second = run(h, [("upstream", OK5)])
    assert second == [
        ok("http://h/api/1"), ("client", OK5_OUT), ("release", True),
        denied("http://h/api/2"), ("client", DENY),  # POST denied, its body drained
        ("upstream", b"GET /api/3 HTTP/1.1\r\nhost: h\r\n\r\n"),
    ]
    assert [m.path for m in h.metas] == ["/api/1", "/api/2", "/api/3"]


def test_head_response_has_no_body(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"HEAD /api/x HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("upstream", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
    ], decide=allow_all)
    assert got == [
        ("upstream", b"HEAD /api/x HTTP/1.1\r\nhost: h\r\n\r\n"),
        ok("http://h/api/x"),
        ("client", b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"), ("release", True),
    ]


def test_expect_continue_allowed_relays_100(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"PUT /api/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                   b"Content-Length: 4\r\n\r\n"),
        ("upstream", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("client", b"body"),
        ("upstream", b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ], decide=allow_all)
    assert got == [
        ("upstream", b"PUT /api/x HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\n"
                     b"content-length: 4\r\n\r\n"),
        ("client", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("upstream", b"body"),
        ok("http://h/api/x", 201),
        ("client", b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"), ("release", True),
    ]


def test_expect_continue_denied_gets_no_100_and_closes(codec: str) -> None:
    got = run_both(codec, [("client", b"PUT /api/x HTTP/1.1\r\nHost: h\r\n"
                                      b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")])
    assert got == [denied("http://h/api/x"), ("client", DENY_CLOSE), ("close", "client")]


def test_http10_client_gets_close_and_no_1xx(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"GET /api/x HTTP/1.0\r\n\r\nGET /api/smuggled HTTP/1.0\r\n\r\n"),
        ("upstream", b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ])
    assert got == [
        # no Host on 1.0: the original destination is decided and sent
        ("upstream", b"GET /api/x HTTP/1.1\r\nhost: 10.0.2.7:8080\r\n\r\n"),
        ("flow", "FORWARDED", 200, "RESPONSE", "http://10.0.2.7:8080/api/x"),
        ("client", b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello"),
        ("release", True), ("close", "client"),
    ]


def test_connection_close_drops_trailing_pipelined_bytes(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                   b"GET /api/y HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("upstream", OK5),
    ])
    assert got == [
        ("upstream", b"GET /api/x HTTP/1.1\r\nhost: h\r\n\r\n"),  # hop-by-hop close stripped
        ok("http://h/api/x"),
        ("client", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"),
        ("release", True), ("close", "client"),
    ]


def _dechunk(msg: bytes) -> tuple[bytes, bytes]:
    head, _, rest = msg.partition(b"\r\n\r\n")
    dec = ChunkedDecoder(4096, 4096)
    pieces, used = dec.feed(rest)
    assert dec.done and used == len(rest)
    return head, b"".join(pieces)


CHUNKED_STEPS = [
    ("client", b"POST /api/u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"),
    ("upstream", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"4\r\nwxyz\r\n0\r\n\r\n"),
]


def test_chunked_both_ways_is_reframed(codec: str) -> None:
    got = run(make(codec, decide=allow_all), CHUNKED_STEPS)
    assert got == [
        ("upstream", b"POST /api/u HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),  # extensions and trailers dropped
        ok("http://h/api/u"),
        ("client", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n"),
        ("release", True),
    ]


def test_chunked_fed_bytewise_carries_the_same_bytes(codec: str) -> None:
    # Re-chunking follows arrival, so compare the decoded bodies, not the chunk sizes.
    got = run(make(codec, decide=allow_all), CHUNKED_STEPS, bytewise=True)
    assert _dechunk(got[0][1]) == (  # type: ignore[arg-type]
        b"POST /api/u HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked", b"abcde")
    assert got[1] == ok("http://h/api/u")
    assert _dechunk(got[2][1]) == (  # type: ignore[arg-type]
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked", b"wxyz")
    assert got[3:] == [("release", True)]


def test_content_length_body_and_close_delimited_response(codec: str) -> None:
    got = run(make(codec, decide=allow_all), [
        ("client", b"POST /api/u HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"),
        ("upstream", b"HTTP/1.1 200 OK\r\n\r\nuntil close"),
        ("upstream", b""),
    ])
    assert got == [
        ("upstream", b"POST /api/u HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc"),
        ok("http://h/api/u"),
        ("client", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"b\r\nuntil close\r\n0\r\n\r\n"), ("release", False),
    ]


WS = (b"GET /api/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      b"Sec-WebSocket-Key: k\r\n\r\n")
WS_UP = (b"GET /api/ws HTTP/1.1\r\nhost: h\r\nsec-websocket-key: k\r\nconnection: upgrade\r\n"
         b"upgrade: websocket\r\n\r\n")


def test_upgrade_allowed_and_101_splices(codec: str) -> None:
    got = run_both(codec, [
        ("client", WS + b"\x81\x02hi"),
        ("upstream", b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n\x81\x02yo"),
        ("client", b"more"),
    ], exact=False)
    assert got == [
        ("upstream", WS_UP),
        ok("http://h/api/ws", 101),
        ("client", b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                   b"upgrade: websocket\r\n\r\n"),
        ("tunnel",), ("client", b"\x81\x02yo"),
        ("upstream", b"\x81\x02himore"),
    ]


def test_upgrade_answered_200_keeps_parsing_http(codec: str) -> None:
    got = run_both(codec, [
        ("client", WS + b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("upstream", OK5),
    ])
    assert got == [
        ("upstream", WS_UP), ok("http://h/api/ws"), ("client", OK5_OUT), ("release", True),
        denied("http://h/admin"), ("client", DENY),
    ]


def test_upgrade_denied_closes(codec: str) -> None:
    got = run_both(codec, [("client", WS.replace(b"/api/ws", b"/ws") + b"\x81\x02hi")])
    assert got == [denied("http://h/ws"), ("client", DENY_CLOSE), ("close", "client")]


def test_h2c_upgrade_is_never_offered_upstream(codec: str) -> None:
    got = run_both(codec, [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n"
                                      b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                      b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")])
    assert got == [("upstream", b"GET /api/x HTTP/1.1\r\nhost: h\r\n\r\n")]


def test_connect_allowed_and_2xx_splices(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\nraw"),
        ("upstream", b"HTTP/1.1 200 Connection established\r\n\r\n"),
        ("upstream", b"pong"),
    ], decide=allow_all, exact=False)
    assert got == [
        ("upstream", b"CONNECT db:5432 HTTP/1.1\r\nhost: db:5432\r\n\r\n"),
        ok("http://db:5432"), ("client", b"HTTP/1.1 200 Connection established\r\n\r\n"),
        ("tunnel",), ("upstream", b"raw"), ("client", b"pong"),
    ]


def test_connect_denied_closes(codec: str) -> None:
    got = run_both(codec, [("client", b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")])
    assert got == [denied("http://db:5432"), ("client", DENY_CLOSE), ("close", "client")]


def test_101_for_a_plain_request_is_bad_upstream(codec: str) -> None:
    got = run_both(codec, [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n"),
                           ("upstream", b"HTTP/1.1 101 Switching Protocols\r\n\r\nraw")])
    assert got[1:] == [
        ("flow", "ERROR", 502, "RESPONSE", "http://h/api/x"),
        ("client", b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 13\r\ncontent-type: "
                   b"text/plain\r\nconnection: close\r\n\r\nBad Gateway\r\n"), ("release", False),
        ("close", "client"),
    ]


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
])
def test_bad_upstream_framing_gets_502_and_closes(codec: str, bad: bytes) -> None:
    got = run(make(codec), [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n"),
                            ("upstream", bad), ("upstream", b"")])
    assert got[1][0] == "flow" and got[2][1].startswith(b"HTTP/1.1 502 ")  # type: ignore[union-attr]
    assert got[-2:] == [("release", False), ("close", "client")]


def test_bad_chunk_mid_body_closes_without_502(codec: str) -> None:
    got = run(make(codec), [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n"),
                            ("upstream", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"zz\r\n")])
    assert got[-2:] == [("release", False), ("close", "client")]
    assert not any(b"502" in x[1] for x in got if x[0] == "client")  # type: ignore[operator]


def test_upstream_connect_failure_gets_503(codec: str) -> None:
    h = make(codec)
    run(h, [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")])
    from .harness import simplify
    got = simplify(h.session.upstream_failed())
    assert got[0] == ("flow", "ERROR", 503, "RESPONSE", "http://h/api/x")
    assert got[1][1].startswith(b"HTTP/1.1 503 ")  # type: ignore[union-attr]
    assert got[2:] == [("release", False), ("close", "client")]


def test_retry_on_fresh_upstream_only_once_and_only_when_safe(codec: str) -> None:
    from .harness import simplify
    h = make(codec)
    run(h, [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")])
    retry = h.session.retry_on_fresh_upstream()
    assert retry is not None
    assert simplify(retry) == [("upstream", b"GET /api/x HTTP/1.1\r\nhost: h\r\n\r\n")]
    assert h.session.retry_on_fresh_upstream() is None  # once
    post = make(codec, decide=allow_all)
    run(post, [("client", b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")])
    assert post.session.retry_on_fresh_upstream() is None  # not idempotent, has a body
    late = make(codec)
    run(late, [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n"),
               ("upstream", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")])
    assert late.session.retry_on_fresh_upstream() is None  # the response had started


def test_early_response_before_request_body_end_closes(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc"),
        ("upstream", b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"),
    ], decide=allow_all)
    assert got[-4] == ok("http://h/api/x", 413)
    assert got[-2:] == [("release", False), ("close", "client")]


def test_hop_by_hop_fields_are_not_forwarded(codec: str) -> None:
    got = run_both(codec, [
        ("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
                   b"Keep-Alive: 5\r\nX-Secret: s\r\nTE: trailers\r\nProxy-Authorization: p\r\n"
                   b"X-Kept: k\r\n\r\n"),
        ("upstream", b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
                     b"Proxy-Authenticate: x\r\nX-Resp: r\r\nContent-Length: 0\r\n\r\n"),
    ])
    assert got[0] == ("upstream", b"GET /api/x HTTP/1.1\r\nhost: h\r\nx-kept: k\r\n\r\n")
    assert got[2] == ("client", b"HTTP/1.1 200 OK\r\nx-resp: r\r\ncontent-length: 0\r\n\r\n")


def test_decide_exception_fails_closed(codec: str) -> None:
    def broken(conn: ConnInfo, meta: HttpRequestMeta) -> object:
        raise KeyError("boom")

    h = make(codec, decide=broken)
    got = run(h, [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")])
    assert got == [denied("http://h/api/x"), ("client", DENY)]
    assert h.stats.decide_errors == 1


def test_header_timeout_answers_408_only_with_a_partial_head(codec: str) -> None:
    h = make(codec)
    run(h, [("client", b"GET /api/x HTT")])
    assert h.session.head_in_progress
    from .harness import simplify
    got = simplify(h.session.timeout())
    assert got[0][1].startswith(b"HTTP/1.1 408 ")  # type: ignore[union-attr]
    assert got[1:] == [("close", "client")]
    idle = make(codec)
    assert simplify(idle.session.timeout()) == [("close", "client")]


def test_client_half_close_still_gets_the_response(codec: str) -> None:
    got = run_both(codec, [("client", b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n"),
                           ("client", b""), ("upstream", OK5)])
    assert got[-3:] == [("client", OK5_OUT), ("release", True), ("close", "client")]


def test_stats_count_decisions_and_errors(codec: str) -> None:
    h = make(codec)
    run(h, [("client", b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\nGET /api/x HTTP/1.1\r\n"
                       b"Host: h\r\n\r\n"), ("upstream", OK5), ("client", b"BAD\r\n\r\n")])
    assert h.stats.requests == {"forwarded": 1, "denied": 1, "error": 0}
    assert h.stats.parse_errors == 1
