"""The seed's metrics from Swift: swift-metrics -> swift-otel 1.6.0 -> OTLP/HTTP protobuf -> the
daemon's receiver (issue 16: "if swift-otel can export OTLP/HTTP, the same from Swift").

`Tests/otel-swift` is a package of its own (its own .build: swift-otel brings AsyncHTTPClient,
SwiftNIO and swift-protobuf, which the daemon never builds), with one program, `seed-otel`: the
seed's metric functions on swift-metrics (Counter, Recorder with the catalog's bounds, Meter), the
C driver's command words. The same workload as the Prometheus comparison, from two processes,
one cumulative (restarted midway under the same service.instance.id), one delta: exact totals.

Not part of `make test` (skipped there): the package's first build took 16 minutes on the shared
2-core machine (swift-otel, AsyncHTTPClient, SwiftNIO, BoringSSL through NIOSSL), twice what a
clean CI run may add. `make test-swift-otel` builds it and runs this file (P2PM_SWIFT_OTEL=1).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, free_port, start_daemon
from test_otlp_prometheus import Process, commands, key, totals, wait_for_series, workload

PACKAGE = ROOT / "Tests" / "otel-swift"


@pytest.fixture(scope="session")
def seed_otel() -> Path:
    if os.environ.get("P2PM_SWIFT_OTEL") != "1":
        pytest.skip("swift-otel's build takes 16 minutes here: run `make test-swift-otel`")
    """Builds Tests/otel-swift once per session (its first build takes minutes: swift-otel and
    its dependencies); returns the program."""
    subprocess.run(["swift", "build", "--package-path", str(PACKAGE), "--product", "seed-otel"], check=True,
                   timeout=3600)
    binary = PACKAGE / ".build" / "debug" / "seed-otel"
    assert binary.exists()
    return binary


def swift_process(binary: Path, port: int, temporality: str, instance: str, words: list[str]) -> Process:
    env = dict(os.environ, OTEL_RESOURCE_ATTRIBUTES=f"service.name=seed,service.instance.id={instance}")
    return Process([str(binary), f"http://127.0.0.1:{port}/v1/metrics", temporality, *words], env)


def test_swift_otel_cumulative_and_delta_processes_with_a_restart_give_exact_totals(tmp_path, seed_otel):
    events = workload()
    port = free_port()
    d = start_daemon(tmp_path, "--otlp", f"127.0.0.1:{port}")
    try:
        # A (cumulative) runs its first half and exits; B (delta) runs all of its share meanwhile
        # and opens 2 transfers; A restarts and runs its second half.
        a1 = swift_process(seed_otel, port, "cumulative", "a", commands(events, "a", 0))
        b = swift_process(seed_otel, port, "delta", "b",
                          commands(events, "b", 0) + ["flush"] + commands(events, "b", 1) + ["tstart", "tstart"])
        a1.expect("exported")
        assert a1.finish() == 0, a1.seen
        a2 = swift_process(seed_otel, port, "cumulative", "a", commands(events, "a", 1))
        for p in (a2, b):
            p.expect("exported")
            assert p.finish() == 0, p.seen

        # A swift-metrics Meter is exported as an OTLP Gauge (swift-metrics has no up-down
        # counter): the receiver sets it, so only one process may report it (here B: 2).
        expected = totals([w for _, _, words in events for w in words]) | {key("p2p_transfers_active"): 2}
        got = wait_for_series(d, expected)
        assert got == expected, {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        assert d.value("p2pmetricsd_otlp_requests_rejected_total") == 0
        assert sum(v for (n, _), v in d.scrape().items() if n == "p2pmetricsd_otlp_points_rejected_total") == 0
    finally:
        assert d.stop() == 0
