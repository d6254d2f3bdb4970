"""Just enough of the wire protocol (Clients/PROTOCOL.md) for the integration tests to build raw
datagrams without a client library: the tests that use it check the daemon, not an encoder.

Self-contained on purpose (standard library only, no import from Clients/): test_node.py copies
this file alone into a Debian node, so its varint cannot come from Clients/python/p2pmetrics.py."""
from __future__ import annotations

import struct

MAGIC = b"\xf5"
_TAGS = {"counter_add": 0x10, "gauge_set": 0x20, "gauge_add": 0x30, "histogram_observe": 0x40}


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def string(s: str) -> bytes:
    b = s.encode()
    return uvarint(len(b)) + b


def series(name: str, labels: dict[str, str] | None = None) -> bytes:
    """A series record (it becomes the next series index of its datagram)."""
    labels = labels or {}
    out = b"\x01" + string(name) + uvarint(len(labels))
    for k, v in labels.items():
        out += string(k) + string(v)
    return out


def counter(name: str, value: int, labels: dict[str, str] | None = None) -> bytes:
    """One datagram: counter name{labels} += value."""
    return MAGIC + series(name, labels) + b"\x10\x00" + uvarint(value)


def datagram(samples: list[tuple[str, str, float, dict]]) -> bytes:
    """One datagram of (kind, name, value, labels) samples, each with its own series record;
    integral non-negative values travel as varints, others as doubles."""
    out = bytearray(MAGIC)
    for i, (kind, name, value, labels) in enumerate(samples):
        out += series(name, labels)
        if float(value).is_integer() and value >= 0:
            out += bytes([_TAGS[kind]]) + uvarint(i) + uvarint(int(value))
        else:
            out += bytes([_TAGS[kind] | 2]) + uvarint(i) + struct.pack("<d", value)
    return bytes(out)
