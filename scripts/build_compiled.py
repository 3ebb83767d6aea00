"""Build the HTTP proxy's compiled hot path (proxy/compiled.py) into build/mypyc/.

Run by scripts/setup.sh (so by `make test`, `make demo`, `make bench`) with the project
venv's Python: `python scripts/build_compiled.py [--force]`. Does nothing when the
manifest already matches the sources; otherwise compiles proxy.http's MODULES with mypyc
(from the venv's mypy, the same type checker `make lint` runs) out of tree, then writes the
manifest last, so an interrupted build is never loaded. Needs gcc and the Python headers
(python3-dev); exits non-zero with mypyc's message when the build fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import compiled  # after the path fix above


def main(argv: list[str]) -> int:
    import mypy.version
    want = compiled.expected_manifest(mypy.version.__version__)
    if "--force" not in argv and compiled.MANIFEST.exists():
        try:
            if json.loads(compiled.MANIFEST.read_text()) == want:
                print("build_compiled: up to date")
                return 0
        except ValueError:
            pass
    from mypyc.build import mypycify
    from setuptools import setup

    out = compiled.BUILD_DIR
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    sources = [f"proxy/http/{name}.py" for name in compiled.MODULES]
    with tempfile.TemporaryDirectory(prefix="l7gate-mypyc-") as tmp:
        cwd = Path.cwd()
        try:
            os.chdir(compiled.ROOT)  # mypyc names modules after their paths from here
            setup(name="l7gate-compiled", py_modules=[],
                  ext_modules=mypycify(sources, opt_level="3", target_dir=f"{tmp}/c"),
                  script_args=["-q", "build_ext", "--build-lib", str(out),
                               "--build-temp", f"{tmp}/o"])
        finally:
            os.chdir(cwd)
    built = sorted(p.name for p in (out / "proxy" / "http").glob("*.so"))
    if len(built) != len(compiled.MODULES):
        print(f"build_compiled: expected {len(compiled.MODULES)} modules, got {built}",
              file=sys.stderr)
        return 1
    compiled.MANIFEST.write_text(json.dumps(want, indent=1, sort_keys=True) + "\n")
    print(f"build_compiled: {len(built)} modules of proxy.http compiled with mypyc "
          f"{mypy.version.__version__} in {time.monotonic() - started:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
