"""Shared fixtures for the integration tests: a real p2pmetricsd binary, started per test.

Every test that needs the daemon asks for `daemon`; it gets a freshly started process on a
temporary socket and a free loopback port, and the process is stopped (SIGTERM) afterwards.
"""
from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAEMON_BIN = Path(os.environ.get("P2PMETRICSD_BIN", ROOT / ".build" / "debug" / "p2pmetricsd"))
C_DIR = ROOT / "Clients" / "c"

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """Parses Prometheus text format 0.0.4 into {(name, frozenset(labels.items())): value}."""
    out: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparsable exposition line: {line!r}"
        name, labels, value = m.groups()
        lab = {}
        if labels:
            for k, v in _LABEL.findall(labels):
                lab[k] = v.encode().decode("unicode_escape") if "\\" in v else v
        out[(name, frozenset(lab.items()))] = float(value)
    return out


@dataclass
class Daemon:
    """A running p2pmetricsd started by a test."""
    socket_path: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape_text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as r:
            assert r.status == 200
            return r.read().decode("utf-8")

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        return parse_exposition(self.scrape_text())

    def value(self, name: str, **labels: str) -> float | None:
        """The value of one exposed series, or None when it is absent."""
        return self.scrape().get((name, frozenset(labels.items())))

    def send(self, data: bytes) -> None:
        """Sends one datagram with a blocking send."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(data, self.socket_path)

    def wait_for(self, name: str, expected: float, timeout: float = 10.0, **labels: str) -> float | None:
        """Polls until the series has the expected value (datagrams are asynchronous); returns the last value."""
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.value(name, **labels)
            if v is not None and (v == expected or (math.isnan(expected) and math.isnan(v))):
                return v
            time.sleep(0.02)
        return v

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(tmp_path: Path, *args: str, env: dict | None = None) -> Daemon:
    assert DAEMON_BIN.exists(), f"{DAEMON_BIN} is not built (run swift build first)"
    sock = str(tmp_path / "ingest.sock")
    port = free_port()
    log = tmp_path / "p2pmetricsd.log"
    proc = subprocess.Popen(
        [str(DAEMON_BIN), "--socket", sock, "--listen", f"127.0.0.1:{port}", *args],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env or os.environ.copy(),
    )
    d = Daemon(sock, port, proc, log, list(args))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"p2pmetricsd exited with {proc.returncode}: {log.read_text()}")
        try:
            d.scrape_text()
            return d
        except OSError:
            time.sleep(0.05)
    d.stop()
    raise AssertionError("p2pmetricsd did not start serving /metrics in time: " + log.read_text())


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path)
    yield d
    d.stop()


@pytest.fixture(scope="session")
def c_build() -> Path:
    """Builds the C client (make -C Clients/c) once per session; returns its build folder."""
    subprocess.run(["make", "-s", "-C", str(C_DIR)], check=True)
    return C_DIR / "build"
