"""Clients/PROTOCOL.md and its shared vectors stay in step: the committed vector file is exactly
what the spec's independent Python encoder (Clients/testdata/gen_vectors.py) writes; and every
encoder writes the canonical NaN (the Swift and C ones are checked by WireTests and test_client)."""
from __future__ import annotations

import socket
import struct
import subprocess
import sys

from conftest import ROOT

TESTDATA = ROOT / "Clients" / "testdata"
sys.path.insert(0, str(ROOT / "Clients" / "python"))
import p2pmetrics  # noqa: E402


def test_vector_file_is_what_the_generator_writes(tmp_path):
    out = tmp_path / "vectors.txt"
    subprocess.run([sys.executable, str(TESTDATA / "gen_vectors.py"), str(out)], check=True, capture_output=True)
    assert out.read_text() == (TESTDATA / "vectors.txt").read_text()


def test_python_client_writes_the_canonical_nan(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as r:
        r.bind(str(tmp_path / "r.sock"))
        r.settimeout(2)
        c = p2pmetrics.Client(str(tmp_path / "r.sock"), mode="immediate")
        odd = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000001))[0]  # negative, with a payload
        assert c.gauge_set("g", odd)
        assert r.recv(65536)[-8:] == bytes.fromhex("000000000000f87f")
        c.close()
