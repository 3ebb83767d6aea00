"""The hostile corpus (hostile.yaml) through the session, both codecs, whole and byte-wise.

For every case: the first status the client sees, the path the policy decided, the request
lines the origin received, and the invariant: every complete request the origin received is
`GET /api/...` and re-parses strictly, with nothing left over unless the upstream connection
was aborted (then the origin holds an incomplete request it must discard).
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import yaml

from proxy.http.actions import Action, ReleaseUpstream, SendClient, SendUpstream
from proxy.http.session import ClientState
from proxy.http.wire import ChunkedDecoder, HttpReject, LengthDecoder, check_request_head

from .harness import API, CODECS, Harness, make

CORPUS = yaml.safe_load((pathlib.Path(__file__).parent / "hostile.yaml").read_text())["cases"]
ORIGIN_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
MAX_ROUNDS = 50


def raw_bytes(case: dict[str, Any]) -> bytes:
    if "raw_repeat" in case:
        r = case["raw_repeat"]
        return (r["prefix"] + r["unit"] * r["count"] + r["suffix"]).encode("latin-1")
    return str(case["raw"]).encode("latin-1")


def drive(h: Harness, raw: bytes, bytewise: bool) -> list[Action]:
    """Feed the client bytes; the fake origin answers each complete request with 200."""
    actions: list[Action] = []
    pieces = [raw[i : i + 1] for i in range(len(raw))] if bytewise else [raw]
    for piece in pieces:
        actions += h.session.feed_client(piece)
        for _ in range(MAX_ROUNDS):
            if h.session.state is not ClientState.WAIT:
                break
            actions += h.session.feed_upstream(ORIGIN_OK)
    return actions


def strict_reparse(data: bytes) -> tuple[list[bytes], bytes]:
    """Split what the origin received into requests with our strict grammar.
    Returns (request lines, leftover bytes that do not form a complete request)."""
    lines: list[bytes] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end == -1:
            return lines, data
        head = data[: end + 4]
        gate = check_request_head(head, 1 << 20, 1000)
        names = [k for k, _ in gate.headers]
        assert names.count("host") == 1, head
        assert not ("content-length" in names and "transfer-encoding" in names), head
        rest = data[end + 4 :]
        if "transfer-encoding" in names:
            dec = ChunkedDecoder(4096, 1 << 16)
            _, used = dec.feed(rest)
            if not dec.done:
                return lines, data
        else:
            cl = [int(v) for k, v in gate.headers if k == "content-length"]
            used = cl[0] if cl else 0
            if len(rest) < used:
                return lines, data
            LengthDecoder(used)
        lines.append(head.split(b"\r\n", 1)[0])
        data = rest[used:]
    return lines, b""


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_hostile_case(case: dict[str, Any], codec: str, bytewise: bool) -> None:
    raw = raw_bytes(case)
    if bytewise and len(raw) > 4096:
        raw_cut = raw  # byte-wise on a 70 KB head is slow and adds nothing over 4 KB steps
        pieces = [raw_cut[i : i + 997] for i in range(0, len(raw_cut), 997)]
        h = make(codec)
        actions: list[Action] = []
        for p in pieces:
            actions += drive(h, p, False)
    else:
        h = make(codec)
        actions = drive(h, raw, bytewise)
    to_client = b"".join(a.data for a in actions if isinstance(a, SendClient))
    to_origin = b"".join(a.data for a in actions if isinstance(a, SendUpstream))
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", to_client)
    assert m is not None, to_client[:200]
    assert int(m.group(1)) == case["expect"]
    if "decided" in case:
        assert h.metas and h.metas[0].path == case["decided"]
    if "host" in case:
        assert h.metas[0].host == case["host"]
        assert f"host: {case['host']}\r\n".encode() in to_origin
    lines, leftover = strict_reparse(to_origin)
    assert [ln.decode() for ln in lines] == case.get("forwarded", [])
    for ln in lines:
        method, target, _ = ln.split(b" ")
        assert method == b"GET" and API.fullmatch(target.decode()), ln
    aborted = any(isinstance(a, ReleaseUpstream) and not a.reusable for a in actions)
    assert aborted == bool(case.get("aborted", False))
    if leftover:
        assert aborted, leftover  # an incomplete request is only left on an aborted connection


def test_corpus_is_large_and_names_are_unique() -> None:
    names = [c["name"] for c in CORPUS]
    assert len(names) >= 40 and len(set(names)) == len(names)


def test_strict_reparse_helper() -> None:
    lines, left = strict_reparse(b"GET /a HTTP/1.1\r\nhost: h\r\ncontent-length: 1\r\n\r\nx"
                                 b"GET /b HTTP/1.1\r\nhost: h\r\n\r\nGET /c")
    assert lines == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"] and left == b"GET /c"
    with pytest.raises(HttpReject):
        strict_reparse(b"GET /a HTTP/1.1\nhost: h\n\n\r\n\r\n")
