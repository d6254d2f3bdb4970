"""Just enough of the wire protocol (Clients/PROTOCOL.md) for the integration tests to build raw
datagrams without a client library: the tests that use it check the daemon, not an encoder."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "Clients" / "python"))
from p2pmetrics import uvarint  # noqa: E402  (the Python client's varint encoder)

MAGIC = b"\xf5"
_TAGS = {"counter_add": 0x10, "gauge_set": 0x20, "gauge_add": 0x30, "histogram_observe": 0x40}




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
