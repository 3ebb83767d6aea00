"""The one place that reads a redirected connection's original destination.

TCP: the proxy's listener is IP_TRANSPARENT and BPF assigned the SYN to it
(bpf_sk_assign), so the accepted socket's local address *is* the original destination
(`getsockname()`); `getpeername()` is the pod. No SO_ORIGINAL_DST: there is no NAT.
UDP: the IP_TRANSPARENT socket sets IP_RECVORIGDSTADDR; each `recvmsg` carries a
`struct sockaddr_in` (IP_ORIGDSTADDR ancillary message) with the original destination.
No I/O beyond the socket calls the caller asks for.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

IP_TRANSPARENT = 19  # linux/in.h
IP_RECVORIGDSTADDR = 20  # linux/in.h; the cmsg type is the same value (IP_ORIGDSTADDR)
IP_ORIGDSTADDR = IP_RECVORIGDSTADDR
SOCKADDR_IN_BYTES = 16  # struct sockaddr_in
ANCDATA_BYTES = socket.CMSG_SPACE(SOCKADDR_IN_BYTES)  # ancbufsize for recvmsg

AncData = list[tuple[int, int, bytes]]


def tcp_original_dst(sock: socket.socket) -> tuple[str, int]:
    """Original (ip, port) a pod connected to, for a socket accepted from the proxy."""
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def udp_original_dst(ancdata: AncData) -> tuple[str, int] | None:
    """Original (ip, port) of a datagram from `recvmsg(..., ANCDATA_BYTES)`'s ancillary data;
    None when absent or malformed (the caller drops such datagrams: fail closed)."""
    for level, ctype, data in ancdata:
        if level != socket.IPPROTO_IP or ctype != IP_ORIGDSTADDR:
            continue
        if len(data) < 8:
            return None
        family, port_be, addr = struct.unpack_from("=H2s4s", data)
        if family != socket.AF_INET:
            return None
        return str(ipaddress.IPv4Address(addr)), int.from_bytes(port_be, "big")
    return None


def make_transparent(sock: socket.socket, recv_origdst: bool = False) -> None:
    """IP_TRANSPARENT (bind to non-local addresses, accept assigned packets) and, for UDP
    listeners, IP_RECVORIGDSTADDR."""
    sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
    if recv_origdst:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVORIGDSTADDR, 1)
