"""Every sample arrives: the seed-shaped burst with the clients' defaults, on the kernel's default
Unix datagram queue length.

The daemon is started inside a new network namespace (`unshare -n`), which starts with
`net.unix.max_dgram_qlen` = 10 whatever the host's sysctl says (a Unix socket takes its queue
length from the namespace that creates it). Clients reach its socket by path from outside; its
/metrics is scraped from inside the namespace (`nsenter -n curl`).

The workload (Clients/c/tests/seed_workload.h, mirrored by `seed_expected` below): one call per
event, as the seed's system calls its metrics functions — 200 imports, 500 downloads, 5,000
chunk transfers, their verifications and cache accesses, 20 transfers — from 4 threads at full
speed, with the library's defaults (no batch, no mode set). Every value must be exact, the client
must report 0 drops, and the daemon must have applied exactly the samples the client sent.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import DAEMON_BIN, Daemon, parse_exposition
from test_c_client import driver, fields

TYPES = ["microvm", "container", "storepath", "closure"]
IMPORTS, DOWNLOADS, CHUNKS, TRANSFERS = 200, 500, 5000, 20


def seed_expected() -> dict[tuple[str, frozenset], float]:
    """The exact exposition values of one run of the seed-shaped workload."""
    e: dict[tuple[str, frozenset], float] = {}

    def add(name: str, v: float = 1, **labels: str) -> None:
        k = (name, frozenset(labels.items()))
        e[k] = e.get(k, 0) + v

    for i in range(IMPORTS):
        t = TYPES[i % 4]
        add("p2p_image_imports_total", artifact_type=t)
        if i % 10 == 9:
            add("p2p_image_imports_failed", artifact_type=t)
        else:
            add("p2p_bytes_transferred_total", (i + 1) << 20, artifact_type=t)
    durations = 0.0
    for i in range(DOWNLOADS):
        add("p2p_image_downloads_total")
        if i % 25 == 24:
            add("p2p_image_downloads_failed")
        durations += (i % 8) / 4
        add("p2p_verification_success" if i % 50 != 49 else "p2p_verification_failed",
            verification_type="nar_hash")
        add("p2p_cache_hits" if i % 2 == 0 else "p2p_cache_misses", cache_type="vm_image")
    for i in range(CHUNKS):
        dedup = i % 3 == 0
        if dedup:
            add("p2p_chunks_deduplicated_total")
        else:
            add("p2p_chunks_transferred_total")
            add("p2p_bytes_transferred_total", 65536)
        add("p2p_verification_success" if i % 100 != 99 else "p2p_verification_failed",
            verification_type="chunk_hash")
        add("p2p_cache_hits" if dedup else "p2p_cache_misses", cache_type="chunk")
    add("p2p_transfer_duration_count", DOWNLOADS + TRANSFERS)
    e[("p2p_transfers_active", frozenset())] = 0
    e[("p2p_transfer_duration_download_sum", frozenset())] = durations   # checked as a bound
    return e


def seed_samples() -> dict[str, int]:
    """Samples one run of the workload records, by helper."""
    return {
        "imports": sum(2 if i % 10 == 9 else 2 for i in range(IMPORTS)),   # total + failed|bytes
        "downloads": sum(3 if i % 25 == 24 else 2 for i in range(DOWNLOADS)),
        "download_verifications_and_cache": 2 * DOWNLOADS,
        "chunks": sum(1 if i % 3 == 0 else 2 for i in range(CHUNKS)),
        "chunk_verifications_and_cache": 2 * CHUNKS,
        "transfers": 3 * TRANSFERS,   # +1, then -1 and the duration
    }


class NamespacedDaemon(Daemon):
    """A p2pmetricsd running in its own network namespace (default Unix queue length)."""

    def scrape_text(self) -> str:
        r = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-n", "curl", "-sf", self.url],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout


@pytest.fixture
def ns_daemon(tmp_path):
    sock, log, qlen = tmp_path / "ingest.sock", tmp_path / "p2pmetricsd.log", tmp_path / "qlen"
    script = 'ip link set lo up && cat /proc/sys/net/unix/max_dgram_qlen > "$0" && exec "$@"'
    proc = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", script, str(qlen), str(DAEMON_BIN), "--socket", str(sock),
         "--listen", "127.0.0.1:9478"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    d = NamespacedDaemon(str(sock), 9478, proc, log)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            d.scrape_text()
            break
        except (AssertionError, OSError):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    assert qlen.read_text().strip() == "10"   # the kernel's default, whatever the host has
    yield d
    d.stop()


def assert_seed_exact(d: Daemon, applied: int) -> None:
    # the daemon applied everything the client sent; then every value is exact
    assert d.wait_for("p2pmetricsd_samples_applied_total", applied, timeout=20) == applied
    m = d.scrape()
    expected = seed_expected()
    download_sum = expected.pop(("p2p_transfer_duration_download_sum", frozenset()))
    for key, value in expected.items():
        assert m.get(key, 0) == value, (key, m.get(key), value)
    # durations: the downloads' exact sum plus 20 short transfers
    total = m[("p2p_transfer_duration_sum", frozenset())]
    assert download_sum <= total < download_sum + 60
    assert m[("p2pmetricsd_client_dropped_datagrams_total", frozenset())] == 0
    for (name, _), v in m.items():
        if name in ("p2pmetricsd_datagrams_rejected_total", "p2pmetricsd_samples_rejected_total"):
            assert v == 0, name


def test_seed_burst_with_c_client_defaults_loses_nothing_on_default_qlen(ns_daemon, c_build):
    out = driver(c_build, ns_daemon.socket_path, "seed", "4", "flush", "fullstats")
    seed = fields(out[0], "seed")
    stats = fields(out[1], "fullstats")
    assert seed["failures"] == 0
    assert stats["dropped_datagrams"] == 0 and stats["dropped_samples"] == 0
    assert stats["sent_samples"] == sum(seed_samples().values())
    assert_seed_exact(ns_daemon, stats["sent_samples"])
    print(f"C client seed burst on qlen 10: {seed['calls']} calls, {stats['sent_samples']} samples "
          f"in {stats['sent_datagrams']} datagrams, {stats['waits']} waits for room, 0 lost")


def test_immediate_mode_on_default_qlen_drops_and_counts_exactly(ns_daemon, c_build):
    """The contrast the defaults fix: one datagram per call without waiting loses most of the
    burst on qlen 10 — and every loss is counted: the daemon applied exactly the samples the client
    sent, the client's drop count reaches /metrics exactly, and sent + dropped = recorded."""
    out = driver(c_build, ns_daemon.socket_path, "mode", "immediate", "0", "seed", "4",
                 "final", "e2e.final.total", "fullstats")
    attempts = fields(out[1], "final")["attempts"]
    stats = fields(out[2], "fullstats")
    assert ns_daemon.wait_for("e2e_final_total", 1) == 1
    applied = stats["sent_samples"] + stats["resent_adds"]
    assert ns_daemon.wait_for("p2pmetricsd_samples_applied_total", applied, timeout=20) == applied
    assert ns_daemon.wait_for("p2pmetricsd_client_dropped_datagrams_total",
                              stats["dropped_datagrams"]) == stats["dropped_datagrams"]
    # every sample recorded is sent, counted as lost, or kept (a transfer's +-1, resent later)
    recorded = sum(seed_samples().values()) + attempts   # + the final's attempts
    assert stats["sent_samples"] + stats["dropped_samples"] + stats["kept_samples"] == recorded
    # the kept +-1s were resent as their sum: the active gauge is exactly 0
    assert ns_daemon.value("p2p_transfers_active") == 0
    assert stats["dropped_datagrams"] > 0
    print(f"immediate mode on qlen 10: {stats['dropped_samples']} of {recorded} samples dropped "
          f"({stats['dropped_datagrams']} datagrams), all counted")


def test_seed_burst_with_swift_client_defaults_loses_nothing_on_default_qlen(ns_daemon):
    example = DAEMON_BIN.parent / "p2pmetrics-example"
    r = subprocess.run([str(example), "--socket", ns_daemon.socket_path, "burst", "4", "flush",
                        "fullstats"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    stats = fields(out[-1], "fullstats")
    assert stats["dropped_datagrams"] == 0 and stats["dropped_samples"] == 0
    assert stats["sent_samples"] == sum(seed_samples().values())
    assert_seed_exact(ns_daemon, stats["sent_samples"])
    print(f"Swift client seed burst on qlen 10: {stats['sent_samples']} samples in "
          f"{stats['sent_datagrams']} datagrams, {stats['waits']} waits for room, 0 lost")
