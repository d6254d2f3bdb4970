"""Clients/PROTOCOL.md and its shared vectors stay in step: the committed vector file is exactly
what the spec's independent Python encoder (Clients/testdata/gen_vectors.py) writes."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

TESTDATA = ROOT / "Clients" / "testdata"


def test_vector_file_is_what_the_generator_writes(tmp_path):
    out = tmp_path / "vectors.txt"
    subprocess.run([sys.executable, str(TESTDATA / "gen_vectors.py"), str(out)], check=True, capture_output=True)
    assert out.read_text() == (TESTDATA / "vectors.txt").read_text()
