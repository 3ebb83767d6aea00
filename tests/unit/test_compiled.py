"""proxy/compiled.py: the compiled hot path is used exactly when it matches the sources."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import proxy.http  # noqa: F401  (enables the build, if any, as every user does)
from proxy import compiled


def test_a_fresh_build_is_what_runs() -> None:
    """What `make test` relies on: after scripts/setup.sh built it, every listed module is
    imported from the build (so the suite and the benches run the compiled code), unless
    the pure pass asked for the sources."""
    if compiled.STATUS in ("L7GATE_PURE is set", "not built (scripts/build_compiled.py)"):
        pytest.skip(f"compiled hot path not in use here: {compiled.STATUS}")
    assert compiled.STATUS == ""
    assert compiled.loaded() == sorted(compiled.MODULES)


@pytest.fixture()
def fake_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of proxy/http's listed sources and a manifest built from them."""
    pkg = tmp_path / "proxy" / "http"
    pkg.mkdir(parents=True)
    for src in compiled.PACKAGE_DIR.glob("*.py"):
        shutil.copy(src, pkg / src.name)
    build = tmp_path / "build" / "mypyc"
    build.mkdir(parents=True)
    monkeypatch.setattr(compiled, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(compiled, "BUILD_DIR", build)
    monkeypatch.setattr(compiled, "MANIFEST", build / "MANIFEST.json")
    monkeypatch.delenv("L7GATE_PURE", raising=False)
    compiled.MANIFEST.write_text(json.dumps(compiled.expected_manifest("test")))
    return pkg


def test_a_matching_manifest_enables_the_build(fake_tree: Path) -> None:
    path = ["/src/proxy/http"]
    assert compiled.enable(path) == ""
    assert path == [str(compiled.BUILD_DIR / "proxy" / "http"), "/src/proxy/http"]
    assert str(compiled.BUILD_DIR) in sys.path
    sys.path.remove(str(compiled.BUILD_DIR))


@pytest.mark.parametrize("change", ["edited", "other-edited", "added", "interpreter", "pure",
                                    "missing", "garbled"])
def test_anything_else_keeps_the_sources(fake_tree: Path, monkeypatch: pytest.MonkeyPatch,
                                         change: str) -> None:
    if change == "edited":  # one byte of one source changed since the build
        src = fake_tree / "session.py"
        src.write_bytes(src.read_bytes() + b"\n")
        expected = "stale: session.py changed"
    elif change == "other-edited":  # not compiled, but compiled against
        src = fake_tree / "codec.py"
        src.write_bytes(src.read_bytes() + b"\n")
        expected = "stale: codec.py changed"
    elif change == "added":
        (fake_tree / "new.py").write_text("")
        expected = "stale: new.py changed"
    elif change == "interpreter":
        manifest = json.loads(compiled.MANIFEST.read_text())
        manifest["cache_tag"] = "cpython-312"
        compiled.MANIFEST.write_text(json.dumps(manifest))
        expected = "built for cpython-312"
    elif change == "pure":
        monkeypatch.setenv("L7GATE_PURE", "1")
        expected = "L7GATE_PURE is set"
    elif change == "missing":
        compiled.MANIFEST.unlink()
        expected = "not built"
    else:
        compiled.MANIFEST.write_text("{")
        expected = "unreadable manifest"
    path = ["/src/proxy/http"]
    assert compiled.enable(path).startswith(expected)
    assert path == ["/src/proxy/http"]


def test_written_out_inits_match_their_dataclass_fields() -> None:
    """Exchange and PreparedRequest define their own __init__ (C when compiled): the
    parameters are the fields in order, and every field not passed gets its default."""
    from dataclasses import MISSING, fields

    from proxy.http.codec import codec_factory
    from proxy.http.exchange import NO_BODY, Exchange
    from proxy.http.request import BodyKind, PreparedRequest

    values = ["GET", "1.1", "HTTP/1.1", "/", "h", (("host", "h"),), "http://h/",
              b"GET / HTTP/1.1\r\n\r\n", BodyKind.NONE, 0, True, False, None, False]
    req = PreparedRequest(*values)  # type: ignore[arg-type]
    assert [getattr(req, f.name) for f in fields(PreparedRequest)] == values
    codec = codec_factory("auto")(1 << 16)
    ex = Exchange(req, codec, NO_BODY, True, 7)
    given = dict(zip(("req", "codec", "decoder", "forward", "start_ns"),
                     (req, codec, NO_BODY, True, 7), strict=True))
    for f in fields(Exchange):
        want = given[f.name] if f.name in given else f.default
        assert want is not MISSING, f.name
        assert getattr(ex, f.name) == want, f.name
    assert [f.name for f in fields(Exchange)][:5] == list(given)
