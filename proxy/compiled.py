"""The HTTP proxy's hot path compiled to C by mypyc, used only when it matches the sources.

Why: after the in-Python cuts (stops 7-13), the proxy's remaining cost per request was the
CPython eval loop itself (perf: `_PyEval_EvalFrameDefault` 20 % of the agent's CPU in the
sandbox bench, against 11 % for the least-Python forwarder, tests/bench/pyfloor.py). mypyc
compiles the same type-annotated modules (mypy --strict clean) to a C extension: no
hand-written C, the Python sources stay the reference and run wherever the build is
missing or stale. Figures (`python -m tests.bench.inproc_http instr l7gate-pure` resp.
`l7gate`; callgrind, the whole loop with its client and origin, ~12k of it): 88.5k
instructions per request from the sources, 62.8k compiled; proxy-side Python bytecodes
per request (`ops`) 1,150 -> 246, the rest being the agent's flow and decide callbacks.

Contract:
- `MODULES` lists the compiled modules of `proxy.http` (scripts/build_compiled.py builds
  them into `build/mypyc/`, with a manifest of the sha256 of every source of the package,
  the interpreter's cache tag and the mypy version).
- `enable(package_path)` is called by `proxy/http/__init__.py` before any submodule is
  imported: when the manifest matches every listed source byte for byte, it puts the
  compiled directory in front of the package's `__path__` (the extension modules are then
  found first) and returns ""; otherwise it changes nothing and returns why (a missing
  build, `L7GATE_PURE=1`, a source of the package edited, added or removed since the
  build, another interpreter). All or
  nothing: the compiled modules call each other directly, so a mix is never loaded.
- `STATUS` holds the answer ("" = compiled), for the agent's start-up log and the benches.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

# The modules of the express lane (server.py's module doc), compiled together as one mypyc
# group. The rest of proxy.http stays interpreted: wire.py's exception classes are
# subclassed by codec.py (a native class cannot have interpreted subclasses), tests patch
# codec.py's classes, flows.py's LazyHttpFlow extends observe's slotted LazyFlow (which
# mypyc cannot extend natively), and actions.py builds its frozen dataclasses through slot
# descriptors; the express lane builds no action.
MODULES = ("exchange", "fast", "request", "server", "session", "session_fast")

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "mypyc"
MANIFEST = BUILD_DIR / "MANIFEST.json"
PACKAGE_DIR = ROOT / "proxy" / "http"

STATUS = "not asked"


def source_digests() -> dict[str, str]:
    """sha256 of every source of the package, compiled or not: the compiled modules are
    built against the others' types, so any edit in the package asks for a rebuild."""
    return {path.stem: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(PACKAGE_DIR.glob("*.py"))}


def expected_manifest(mypy_version: str) -> dict[str, object]:
    return {"cache_tag": sys.implementation.cache_tag, "mypy": mypy_version,
            "sources": source_digests()}


def why_not_compiled() -> str:
    """"" when the build in BUILD_DIR may be loaded, else the reason it may not."""
    if os.environ.get("L7GATE_PURE"):
        return "L7GATE_PURE is set"
    try:
        built = json.loads(MANIFEST.read_text())
    except FileNotFoundError:
        return "not built (scripts/build_compiled.py)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest {MANIFEST}: {exc}"
    if built.get("cache_tag") != sys.implementation.cache_tag:
        return f"built for {built.get('cache_tag')}, running {sys.implementation.cache_tag}"
    sources = built.get("sources")
    if not isinstance(sources, dict):
        return f"manifest {MANIFEST} has no sources"
    now = source_digests()
    changed = sorted(name for name in now.keys() | sources.keys()
                     if sources.get(name) != now.get(name))
    if changed:
        return "stale: " + ", ".join(f"{name}.py" for name in changed) + \
            " changed since the build (make setup rebuilds it)"
    return ""


def enable(package_path: list[str]) -> str:
    global STATUS
    STATUS = why_not_compiled()
    if not STATUS:
        compiled = str(BUILD_DIR / "proxy" / "http")
        if compiled not in package_path:
            package_path.insert(0, compiled)
        if str(BUILD_DIR) not in sys.path:  # mypyc's shared library of the group
            sys.path.append(str(BUILD_DIR))
    return STATUS


def loaded() -> list[str]:
    """The modules of MODULES imported from the compiled build (for tests and logs)."""
    return sorted(name for name in MODULES
                  if (mod := sys.modules.get(f"proxy.http.{name}")) is not None
                  and str(getattr(mod, "__file__", "")).startswith(str(BUILD_DIR)))
