"""HttpSession's fast paths for the dominant exchange (sans-IO, no I/O here).

Contract: `fast_request(session, data)` takes `data` that is exactly one complete request
head with nothing after it (the usual read) on an idle connection; `fast_response(session,
ex, data)` takes the first bytes of the response to `ex`. Each either does what the
session's full path (`_read_head` + `_start_exchange` + `_read_body`, resp.
`_read_response_head` + `_read_response_body` + `_exchange_done`) does for those bytes,
with the same checks, decision and actions, or changes nothing and returns None, and the
session runs the full path (which also names any error). fast.py says which heads
qualify. test_fastpaths.py and the whole-vs-byte-wise session tests hold both paths to the
same actions.

No codec on the fast path: the full path feeds every head to the codec (llhttp or h11) and
cross-checks it against our gate, because neither parser is trusted alone. A plain head is
not fed to it: the upstream gets a head re-serialised from our own parse (never the
client's bytes), plain_request accepts only a strict subset (origin-form canonical target,
Host first, no framing or hop-by-hop field, strict field grammar, head ends in CRLFCRLF),
and test_plain_codec_agreement.py proves on generated heads (2000 from the plain grammar's
own character classes up to the field limit, 1500 hostile near-misses) that on every head
plain_request accepts, llhttp and h11 both read exactly one complete bodiless message with
the same method, target, version, fields and keep-alive, and that plain_request refuses
every head either codec refuses. So the codec's answer is known in advance and feeding it
would only cost time: ~14k instructions per request with httptools, ~242k with h11
(callgrind, the core bench's small-varying requests: 103k -> 89k resp. 331k -> 89k).
The session asks fast.plain_request_wire, which equals plain_request on every head
(test_plain_lines.py), only matches the lines the connection has not sent before, and
gives the upstream head (what request.serialise writes) in pieces remembered with them.
The codec's state stays consistent: it is only ever fed messages the full path handles,
each from a message start (llhttp's parser is left at one by the previous full-path
message; h11 gets a fresh connection per message), which test_fastpaths.py checks by
alternating plain and full-path requests on one connection with the fast path on and off.

Head memo: keep-alive clients repeat the same request head (wrk, health checks, pollers)
and origins the same response head, and what the fast path computes from a head (parse,
Host check, re-serialised head, client response head) is a function of its bytes alone.
So each session keeps the last head of each direction that the fast path accepted with
what it computed; a byte-identical head reuses it. The decision is never memoised here
(`decide` runs for every request). Figures (callgrind, the core bench's small request
repeated, `run_core` under valgrind): ~136k -> ~56k instructions per exchange, of which
the request memo saves ~54k and the response memo ~30k; a head that is not a repeat pays
~2k more than before (the compare and the store).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from observe.flow import Flow, FlowVerdict
from policy.types import Decision
from proxy.http.actions import Action, Emit, SendClient
from proxy.http.exchange import CLIENT_WAIT, NO_BODY, UP_HEAD, ClientState, Exchange
from proxy.http.fast import plain_request_wire, plain_response
from proxy.http.flows import lazy_http_flow
from proxy.http.request import AUTHORITY, PROTOCOL, BodyKind, PreparedRequest
from proxy.http.response import ResponseFraming
from proxy.http.wire import LengthDecoder

if TYPE_CHECKING:
    from proxy.http.session import HttpSession

# Enum members as globals (as exchange.py's states): a member looked up on its class costs
# ~650 instructions in CPython 3.11, a global ~60 (callgrind); six such lookups per request
# were ~4k.
# Final: compiled, C statics rather than a module-dict lookup each (~100 instructions).
_FORWARDED: Final = FlowVerdict.FORWARDED
_ALLOW: Final = Decision.FORWARDED
_NO_BODY_KIND: Final = BodyKind.NONE

# Heads longer than this are not remembered: the memo holds the head and what was built
# from it (~3x its size) for the connection's life, so 10,000 connections (the cap) keep at
# most ~120 MB. Ordinary heads are far smaller (curl ~80 bytes, a browser's ~750:
# perf-anchors.md B3); longer ones take the fast path unremembered.
MEMO_MAX_HEAD_BYTES: Final = 4096

# (head bytes, the prepared request built from them)
RequestMemo = tuple[bytes, PreparedRequest]
# (head bytes, status, upstream reusable (HTTP/1.1), Content-Length, client head)
ResponseMemo = tuple[bytes, int, bool, int, bytes]


def fast_request(s: HttpSession, data: bytes) -> list[Action] | bytes | None:
    memo = s._req_memo
    if memo is not None and data == memo[0]:
        req = memo[1]
    else:  # parse a plain head, check its Host, build the request
        limits = s._limits
        if len(data) > limits.max_head_bytes:
            return None
        plain = plain_request_wire(data, limits.max_headers, s._lines)
        if plain is None:
            return None
        method, target, version, fields, first_wire, rest_wire = plain
        host_raw = fields[0][1]
        if host_raw == s._host_raw:  # the same Host as the last request: checked then
            host = s._host
        else:
            host = host_raw.lower()
            if not AUTHORITY.fullmatch(host):
                return None
            s._host_raw, s._host = host_raw, host
            s._host_wire = b"".join((b"host: ", host.encode("latin-1"), b"\r\n"))
            s._url_target = ""  # the remembered URL holds the previous Host
        # No codec here: on every head plain_request accepts, llhttp and h11 read the same
        # message (test_plain_codec_agreement.py), and the codec's state is left as the
        # last full-path message left it (see the module docstring).
        if host != host_raw:
            fields[0] = ("host", host)
        url = s._url  # the last one's while the target object repeats under this Host
        if target is not s._url_target:
            url = s._url = "".join(("http://", host, target))
            s._url_target = target
        req = PreparedRequest(method, version, PROTOCOL[version], target, host, tuple(fields),
                              url,
                              # serialise(method, target, fields), from the pieces
                              # plain_request_wire remembered with the lines
                              b"".join((first_wire, s._host_wire, rest_wire, b"\r\n")),
                              _NO_BODY_KIND, 0,
                              version == "1.1", False, None, False)
        # HTTP/1.0 closes after this exchange: nothing to repeat
        if version == "1.1" and len(data) <= MEMO_MAX_HEAD_BYTES:
            s._req_memo = (data, req)
    ex = Exchange(req, s._codec, NO_BODY, False, s._clock_ns())
    ex.codec_end = True
    try:
        verdict = s._decide(s.conn, req)
    except Exception:  # fail closed, as HttpSession._verdict does
        verdict = s._decide_failed()
    if verdict.decision is not _ALLOW:
        out: list[Action] = []
        s._apply_verdict(ex, verdict, out)
        if s.state is ClientState.BODY:
            s._read_body(out)
        return out
    s._stats.requests["forwarded"] += 1
    ex.forward = True
    ex.req_done = True
    s._ex = ex
    if not req.keep_alive:
        s._close_after = True
    s.up_state = UP_HEAD
    s.state = CLIENT_WAIT
    return req.upstream_head  # for the upstream: SendUpstream(it) is the only action


def fast_response(s: HttpSession, ex: Exchange,
                  data: bytes) -> list[Action] | tuple[Flow, bytes, bool] | None:
    req = ex.req
    if req.method == "HEAD" or req.is_connect:
        return None
    memo = s._resp_memo
    # The remembered head ends in its only CRLFCRLF, so a match ends data's head there too.
    if memo is None or not data.startswith(memo[0]):
        end = data.find(b"\r\n\r\n") + 4
        if end == 3:
            return None
        head = data if end == len(data) else data[:end]
        plain = plain_response(head, s._limits.max_headers)
        if plain is None:
            return None
        minor, status_s, reason, fields, length = plain
        # client_response_head's output for this head: same fields in the same order and
        # spelling, then our Content-Length (Connection: close is added when the client goes)
        head_b = (f"HTTP/1.1 {status_s} {reason}\r\n{fields}content-length: {length}\r\n\r\n"
                  .encode("latin-1"))
        status, reusable = int(status_s), minor == 1
        if end <= MEMO_MAX_HEAD_BYTES:
            s._resp_memo = (head, status, reusable, length, head_b)
    else:
        head, status, reusable, length, head_b = memo
        end = len(head)
    if s._close_after:
        head_b = head_b[:-2] + b"connection: close\r\n\r\n"
    if len(data) - end != length:  # partial (or too long): the general body path
        out: list[Action] = []
        s._final_response(ex, out, status,
                          ResponseFraming(LengthDecoder(length), False, length, False,
                                          reusable), head_b)
        s._rbuf += memoryview(data)[end:]
        s._read_response_body(ex, out, eof=False)
        return out
    # The whole response is here: what _final_response + _read_response_body do, then
    # the shared ending (_response_done: release or close, next pipelined request).
    ex.resp_started = True
    ex.reusable = reusable
    # HttpSession._flow's work without its call (~1.5k instructions): a response's latency
    flow = lazy_http_flow(s._wall_ns(), _FORWARDED, s.conn, req, status, "RESPONSE",
                          s._clock_ns() - ex.start_ns)
    body = head_b + data[end:] if length else head_b
    if s.express_done(ex):  # nothing follows: the flow, the bytes, then release
        return flow, body, reusable
    actions: list[Action] = [Emit(flow), SendClient(body)]
    s._response_done(ex, actions)
    return actions
