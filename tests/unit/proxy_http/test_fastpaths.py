"""The one-pass fast paths against the step-by-step definitions they replace.

`check_request_head` matches a whole head with one pattern and only falls back to the
step-by-step checks to name the status; `prepare_request` takes a short path for heads the
gate marked `plain`. Both must give exactly what the step-by-step path gives."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http import wire
from proxy.http.codec import HttptoolsCodec
from proxy.http.limits import HttpLimits
from proxy.http.request import _SPECIAL, HOP_BY_HOP, prepare_request
from proxy.http.wire import HttpReject, check_request_head

from .harness import CONN
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
