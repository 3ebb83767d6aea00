"""Transparent HTTP/1.1 L7 proxy.

Sans-IO core: `session.HttpSession` (wire.py grammar, codec.py parsers, request.py /
response.py semantics, normalize.py paths, fast.py one-scan parsing of the usual heads).
asyncio side: `server.HttpProxyServer`.

Compiled hot path: when build/mypyc holds a build of these very sources, the submodules
listed in proxy/compiled.py are imported from it (mypyc); otherwise from the sources here.
"""

from proxy import compiled

compiled.enable(__path__)  # before any submodule import (see proxy/compiled.py)

from proxy.http.actions import ConnInfo, HttpProxyStats  # noqa: E402
from proxy.http.limits import BackslashAction, EscapedSlashAction, HttpLimits  # noqa: E402
from proxy.http.server import HttpProxyServer, loop_factory  # noqa: E402
from proxy.http.session import HttpSession  # noqa: E402

__all__ = [
    "BackslashAction",
    "ConnInfo",
    "EscapedSlashAction",
    "HttpLimits",
    "HttpProxyServer",
    "HttpProxyStats",
    "HttpSession",
    "loop_factory",
]
