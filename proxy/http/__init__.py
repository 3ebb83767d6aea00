"""Transparent HTTP/1.1 L7 proxy.

Sans-IO core: `session.HttpSession` (wire.py grammar, codec.py parsers, request.py /
response.py semantics, normalize.py paths, fast.py one-scan parsing of the usual heads).
asyncio side: `server.HttpProxyServer`.
"""

from proxy.http.actions import ConnInfo, HttpProxyStats
from proxy.http.limits import BackslashAction, EscapedSlashAction, HttpLimits
from proxy.http.server import HttpProxyServer, loop_factory
from proxy.http.session import HttpSession

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
