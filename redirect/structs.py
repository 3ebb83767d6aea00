"""ctypes mirrors of every struct in bpf/include/l7g_maps.h. Keep in sync (ABI).

Each size assert uses the same literal as the header's _Static_assert, and
tests/unit/test_bpf_layout.py parses the header to compare sizes and field offsets.
Fields named `*_be` hold network byte order. No I/O here.
"""

from __future__ import annotations

import ctypes

L7G_FQDN_PORTS = 4  # l7g_maps.h
L7G_NAME_BYTES = 120  # l7g_maps.h
L7G_POLICY_FIXED_BITS = 80  # l7g_maps.h: gen..pad of the policy key


class Config(ctypes.Structure):
    """struct l7g_config"""

    _fields_ = [
        ("policy_gen", ctypes.c_uint8),
        ("pad0", ctypes.c_uint8),
        ("http_port", ctypes.c_uint16),
        ("dns_port", ctypes.c_uint16),
        ("pad1", ctypes.c_uint16),
        ("proxy_addr_be", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
    ]


class EndpointVal(ctypes.Structure):
    """struct l7g_endpoint"""

    _fields_ = [
        ("endpoint_id", ctypes.c_uint16),
        ("enforce", ctypes.c_uint8 * 2),
        ("identity", ctypes.c_uint32),
        ("ip_be", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class IpcacheKey(ctypes.Structure):
    """struct l7g_ipcache_key"""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr_be", ctypes.c_uint32)]


class IpcacheVal(ctypes.Structure):
    """struct l7g_ipcache_val"""

    _fields_ = [
        ("identity", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class PolicyKey(ctypes.Structure):
    """struct l7g_policy_key"""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("gen", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("endpoint_id", ctypes.c_uint16),
        ("identity", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("dport_be", ctypes.c_uint16),
    ]


class PolicyVal(ctypes.Structure):
    """struct l7g_policy_val"""

    _fields_ = [
        ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
        ("rule_index", ctypes.c_uint32),
    ]


class FqdnKey(ctypes.Structure):
    """struct l7g_fqdn_key"""

    _fields_ = [("endpoint_id", ctypes.c_uint16), ("pad", ctypes.c_uint16),
                ("addr_be", ctypes.c_uint32)]


class FqdnPort(ctypes.Structure):
    """struct l7g_fqdn_port"""

    _fields_ = [
        ("proto", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
        ("port_lo", ctypes.c_uint16),
        ("port_hi", ctypes.c_uint16),
    ]


class FqdnVal(ctypes.Structure):
    """struct l7g_fqdn_val"""

    _fields_ = [
        ("expiry_ns", ctypes.c_uint64),
        ("name_id", ctypes.c_uint32),
        ("nports", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("ports", FqdnPort * L7G_FQDN_PORTS),
    ]


class CtKey(ctypes.Structure):
    """struct l7g_ct_key"""

    _fields_ = [
        ("saddr_be", ctypes.c_uint32),
        ("daddr_be", ctypes.c_uint32),
        ("sport_be", ctypes.c_uint16),
        ("dport_be", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class CtVal(ctypes.Structure):
    """struct l7g_ct_val"""

    _fields_ = [
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("rule_index", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
        ("packets", ctypes.c_uint64),
    ]


class Name(ctypes.Structure):
    """struct l7g_name"""

    _fields_ = [("name", ctypes.c_char * L7G_NAME_BYTES)]


class Event(ctypes.Structure):
    """struct l7g_event"""

    _fields_ = [
        ("time_ns", ctypes.c_uint64),
        ("ifindex", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("code", ctypes.c_int32),
        ("saddr_be", ctypes.c_uint32),
        ("daddr_be", ctypes.c_uint32),
        ("sport_be", ctypes.c_uint16),
        ("dport_be", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("hook", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("rule_index", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


# The same literals as the header's _Static_asserts.
assert ctypes.sizeof(Config) == 16
assert ctypes.sizeof(EndpointVal) == 16
assert ctypes.sizeof(IpcacheKey) == 8
assert ctypes.sizeof(IpcacheVal) == 8
assert ctypes.sizeof(PolicyKey) == 16
assert ctypes.sizeof(PolicyVal) == 8
assert ctypes.sizeof(FqdnKey) == 8
assert ctypes.sizeof(FqdnPort) == 8
assert ctypes.sizeof(FqdnVal) == 48
assert ctypes.sizeof(CtKey) == 16
assert ctypes.sizeof(CtVal) == 40
assert ctypes.sizeof(Name) == 120
assert ctypes.sizeof(Event) == 56

# C struct name -> mirror, for the layout test.
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "l7g_config": Config,
    "l7g_endpoint": EndpointVal,
    "l7g_ipcache_key": IpcacheKey,
    "l7g_ipcache_val": IpcacheVal,
    "l7g_policy_key": PolicyKey,
    "l7g_policy_val": PolicyVal,
    "l7g_fqdn_key": FqdnKey,
    "l7g_fqdn_port": FqdnPort,
    "l7g_fqdn_val": FqdnVal,
    "l7g_ct_key": CtKey,
    "l7g_ct_val": CtVal,
    "l7g_name": Name,
    "l7g_event": Event,
}
