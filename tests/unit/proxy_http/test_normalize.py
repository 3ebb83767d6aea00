"""Path normalization table (Envoy path_utility_test.cc style) and its options."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.limits import BackslashAction, EscapedSlashAction
from proxy.http.normalize import normalize_origin, normalize_path, remove_dot_segments
from proxy.http.wire import HttpReject


@pytest.mark.parametrize(("raw", "want"), [
    ("/", "/"),
    ("/a/b/%2E%2E/c", "/a/c"),
    ("/../a", "/a"),
    ("/a/./b/.", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("//api//x", "/api/x"),
    ("/api/%7Euser", "/api/~user"),
    ("/api/%41", "/api/A"),
    ("/api/%3a", "/api/%3A"),  # reserved stays encoded, hex upper-cased
    ("/api/%252e", "/api/%252e"),  # decoded once only
    ("/API/X", "/API/X"),  # no case folding
    ("/a/b?x=../y//z", "/a/b?x=../y//z"),  # query untouched
    ("/a/..//b", "/b"),  # Envoy order: dot segments first, then merge slashes
])
def test_normalized(raw: str, want: str) -> None:
    assert normalize_origin(raw) == want


@pytest.mark.parametrize("raw", ["/a#b", "/a%00", "/a%zz", "/a%2", "/a%2f", "/a%5C", "/a\\b",
                                 "a/b", ""])
def test_rejected_with_400(raw: str) -> None:
    with pytest.raises(HttpReject) as exc:
        normalize_origin(raw)
    assert exc.value.status == 400


def test_unescape_and_convert_options() -> None:
    assert normalize_path("/a%2F..%2Fb", EscapedSlashAction.UNESCAPE) == "/b"
    assert normalize_path("/a/..\\b", backslash=BackslashAction.CONVERT) == "/b"
    assert normalize_path("/a/%5c../b", EscapedSlashAction.UNESCAPE,
                          BackslashAction.CONVERT) == "/a/b"  # "/a//../b": only "" is removed


def test_remove_dot_segments_rfc3986_examples() -> None:
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/mid/content=5/../6") == "/mid/6"


@given(st.text(alphabet="/.%2eEaAfF5c\\?#", max_size=30))
def test_normalization_is_idempotent_and_has_no_dot_segments(raw: str) -> None:
    try:
        once = normalize_origin("/" + raw)
    except HttpReject:
        return
    path = once.partition("?")[0]
    assert normalize_origin(once) == once
    assert "//" not in path and "/../" not in path + "/" and "/./" not in path + "/"
