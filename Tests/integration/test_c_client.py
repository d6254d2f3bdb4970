"""End-to-end tests of the C client (Clients/c) against a running p2pmetricsd.

The C side is driven through two programs that `make -C Clients/c` builds (the `c_build`
fixture): the seed-style example (`build/example`, default client via $P2PM_SOCKET) and
`build/e2e_driver`, which runs client calls given on its command line (see
Clients/c/tests/e2e_driver.c). Values are checked exactly in the scraped /metrics; datagrams are
asynchronous, so every check polls with `daemon.wait_for`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

DROPPED = "p2pmetricsd_client_dropped_datagrams_total"
EAGAIN, ENOENT = 11, 2


def driver(c_build: Path, socket_path: str, *commands: str, env: dict | None = None, **kw):
    """Runs e2e_driver to completion; returns its stdout lines."""
    r = subprocess.run([str(c_build / "e2e_driver"), socket_path, *commands], env=env,
                       capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, f"e2e_driver failed ({r.returncode}): {r.stderr}"
    return r.stdout.splitlines()


def spawn(c_build: Path, socket_path: str, *commands: str) -> subprocess.Popen:
    """Starts e2e_driver with a pipe on stdin (for its `wait` command) and stdout."""
    return subprocess.Popen([str(c_build / "e2e_driver"), socket_path, *commands],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def fields(line: str, word: str) -> dict[str, int]:
    """'flood sent=3 dropped=2' -> {'sent': 3, 'dropped': 2}, checking the first word."""
    head, *rest = line.split()
    assert head == word or (not rest and head.startswith(word + "=")), line
    return {k: int(v) for k, v in (kv.split("=") for kv in (rest or [head]))}


def total(daemon, name: str) -> float | None:
    """Sum of every series of `name`, whatever its labels; None when there is none."""
    vals = [v for (n, _), v in daemon.scrape().items() if n == name]
    return sum(vals) if vals else None


def wait_total(daemon, name: str, expected: float, timeout: float = 10.0) -> float:
    """Polls until total(name) == expected; an absent metric counts as 0."""
    deadline = time.monotonic() + timeout
    while True:
        v = total(daemon, name) or 0
        if v == expected or time.monotonic() > deadline:
            return v
        time.sleep(0.02)


def absent_or_zero(daemon, name: str, **labels: str) -> bool:
    return daemon.value(name, **labels) in (None, 0)


def assert_nothing_rejected(daemon) -> None:
    assert (total(daemon, "p2pmetricsd_datagrams_rejected_total") or 0) == 0
    assert (total(daemon, "p2pmetricsd_samples_rejected_total") or 0) == 0


def test_example_program(daemon, c_build):
    env = dict(os.environ, P2PM_SOCKET=daemon.socket_path)
    r = subprocess.run([str(c_build / "example")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "0 failed call(s), 0 datagram(s) dropped" in r.stdout
    d = daemon
    assert d.wait_for("p2p_cache_hits", 1, cache_type="vm_image") == 1   # the last call
    assert d.wait_for("p2p_image_imports_total", 1, artifact_type="microvm") == 1
    assert d.wait_for("p2p_bytes_transferred_total", 2**30, artifact_type="microvm") == 2**30
    assert absent_or_zero(d, "p2p_image_imports_failed", artifact_type="microvm")
    assert d.wait_for("p2p_transfer_duration_count", 1) == 1
    assert 0.05 <= d.value("p2p_transfer_duration_sum") < 30
    assert d.value("p2p_transfer_duration_bucket", le="+Inf") == 1
    assert d.wait_for("p2p_transfers_active", 0) == 0
    assert d.wait_for("p2p_chunks_transferred_total", 2) == 2
    assert d.wait_for("p2p_chunks_deduplicated_total", 2) == 2
    assert d.wait_for("p2p_bytes_transferred_total", 65536 + 32768) == 98304
    assert d.wait_for("p2p_verification_success", 1, verification_type="nar_hash") == 1
    assert absent_or_zero(d, "p2p_verification_failed", verification_type="nar_hash")
    # buffered by default: fewer datagrams than calls, every sample applied (13), none lost
    assert d.wait_for("p2pmetricsd_samples_applied_total", 13) == 13
    assert d.value("p2pmetricsd_datagrams_received_total") < 9
    assert wait_total(d, DROPPED, 0) == 0
    assert_nothing_rejected(d)


HELPER_CALLS = [
    ["import", "microvm", "1", "1073741824"],
    ["import", "container", "0", "4096"],  # failed: no bytes
    ["import", "storepath", "1", "0"],  # size 0: no bytes sample
    ["import", "microvm", "1", "5"],
    ["download", "img-a", "1", "1.5"],
    ["download", "img-b", "0", "12.5"],
    ["download", "img-c", "1", "0.25"],
    ["chunk", "65536", "0"],
    ["chunk", "65536", "1"],
    ["chunk", "4096", "0"],
    ["chunk", "1", "1"],
    ["verify", "1", "nar_hash"],
    ["verify", "1", "nar_hash"],
    ["verify", "0", "chunk_hash"],
    ["cache", "1", "chunk"],
    ["cache", "0", "chunk"],
    ["cache", "1", "vm_image"],
    ["cache", "0", "vm_image"],
    ["cache", "0", "vm_image"],
]


@pytest.mark.parametrize("batched", [False, True], ids=["datagram_per_call", "batch"])
def test_every_seed_helper_exact(daemon, c_build, batched):
    calls = [word for call in HELPER_CALLS for word in call]
    if batched:
        calls = ["batch_begin", *calls, "batch_end"]
    else:
        calls = ["mode", "immediate", "0", *calls]
    out = driver(c_build, daemon.socket_path, *calls, "stats")
    dropped = fields(out[-1], "dropped")["dropped"]   # retried by the driver if the queue filled
    d = daemon
    # the last call's series first: once it is there, everything before it is applied
    assert d.wait_for("p2p_cache_misses", 2, cache_type="vm_image") == 2
    expected = [
        ("p2p_image_imports_total", {"artifact_type": "microvm"}, 2),
        ("p2p_image_imports_total", {"artifact_type": "container"}, 1),
        ("p2p_image_imports_total", {"artifact_type": "storepath"}, 1),
        ("p2p_image_imports_failed", {"artifact_type": "container"}, 1),
        ("p2p_bytes_transferred_total", {"artifact_type": "microvm"}, 1073741829),
        ("p2p_bytes_transferred_total", {}, 65536 + 4096),
        ("p2p_image_downloads_total", {}, 3),
        ("p2p_image_downloads_failed", {}, 1),
        ("p2p_transfer_duration_count", {}, 3),
        ("p2p_transfer_duration_sum", {}, 14.25),
        ("p2p_transfer_duration_bucket", {"le": "+Inf"}, 3),
        ("p2p_chunks_transferred_total", {}, 2),
        ("p2p_chunks_deduplicated_total", {}, 2),
        ("p2p_verification_success", {"verification_type": "nar_hash"}, 2),
        ("p2p_verification_failed", {"verification_type": "chunk_hash"}, 1),
        ("p2p_cache_hits", {"cache_type": "chunk"}, 1),
        ("p2p_cache_misses", {"cache_type": "chunk"}, 1),
        ("p2p_cache_hits", {"cache_type": "vm_image"}, 1),
        ("p2p_cache_misses", {"cache_type": "vm_image"}, 2),
    ]
    for name, labels, value in expected:
        assert d.wait_for(name, value, **labels) == value, (name, labels)
    for name, labels in [
        ("p2p_image_imports_failed", {"artifact_type": "microvm"}),
        ("p2p_image_imports_failed", {"artifact_type": "storepath"}),
        ("p2p_bytes_transferred_total", {"artifact_type": "container"}),
        ("p2p_bytes_transferred_total", {"artifact_type": "storepath"}),
        ("p2p_verification_failed", {"verification_type": "nar_hash"}),
        ("p2p_verification_success", {"verification_type": "chunk_hash"}),
    ]:
        assert absent_or_zero(d, name, **labels), (name, labels)
    # image_id is not a label
    assert not any("img-a" in v for (_, labels) in d.scrape() for _, v in labels)
    # one datagram per helper call (each applied atomically), or one for the whole batch
    assert d.value("p2pmetricsd_datagrams_received_total") == (1 if batched else len(HELPER_CALLS))
    assert wait_total(d, DROPPED, dropped) == dropped
    assert_nothing_rejected(d)


def test_transfer_guard(daemon, c_build):
    p = spawn(c_build, daemon.socket_path, "tstart", "wait", "tend", "tend", "stats")
    try:
        assert p.stdout.readline().strip() == "waiting"
        assert daemon.wait_for("p2p_transfers_active", 1) == 1   # in flight
        time.sleep(0.3)
        p.stdin.write("\n")
        p.stdin.flush()
        dropped = fields(p.stdout.readline().strip(), "dropped")["dropped"]
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert daemon.wait_for("p2p_transfer_duration_count", 1) == 1   # ending twice: one end
    assert daemon.wait_for("p2p_transfers_active", 0) == 0
    assert 0.3 <= daemon.value("p2p_transfer_duration_sum") < 30
    assert daemon.value("p2p_transfer_duration_bucket", le="+Inf") == 1
    assert wait_total(daemon, DROPPED, dropped) == dropped
    assert_nothing_rejected(daemon)


@pytest.mark.parametrize("batched", [False, True], ids=["datagram_per_call", "batch"])
def test_generic_api(daemon, c_build, batched):
    calls = [
        "u64", "e2e.bytes.total", str(1 << 40),
        "u64", "e2e.bytes.total", "1",
        "counter", "e2e.work.seconds", "0.5", "node=n1,zone=a",
        "counter", "e2e.work.seconds", "2", "zone=a,node=n1",   # same series, other order
        "gauge_set", "e2e.temperature", "-12.75", "sensor=cpu",
        "gauge_add", "e2e.temperature", "0.25", "sensor=cpu",
        "gauge_add", "e2e.queue", "-3", "-",
        "observe", "e2e.latency", "0.5", "-",
        "observe", "e2e.latency", "1.5", "-",
        "counter", "e2e.last.total", "1", "-",
    ]
    if batched:
        calls = ["batch_begin", *calls, "batch_end"]
    driver(c_build, daemon.socket_path, *calls)
    d = daemon
    assert d.wait_for("e2e_last_total", 1) == 1
    assert d.wait_for("e2e_bytes_total", (1 << 40) + 1) == (1 << 40) + 1
    assert d.wait_for("e2e_work_seconds", 2.5, node="n1", zone="a") == 2.5
    assert d.wait_for("e2e_temperature", -12.5, sensor="cpu") == -12.5
    assert d.wait_for("e2e_queue", -3) == -3
    assert d.wait_for("e2e_latency_count", 2) == 2
    assert d.wait_for("e2e_latency_sum", 2.0) == 2.0
    assert_nothing_rejected(d)


def test_default_client_from_environment(daemon, c_build):
    env = dict(os.environ, P2PM_SOCKET=daemon.socket_path)
    driver(c_build, "-", "cache", "1", "chunk", "counter", "e2e.default.total", "3", "-",
           env=env)
    assert daemon.wait_for("e2e_default_total", 3) == 3
    assert daemon.wait_for("p2p_cache_hits", 1, cache_type="chunk") == 1


def test_eight_threads_one_client_exact_totals(daemon, c_build):
    threads, calls = 8, 5000
    out = driver(c_build, daemon.socket_path, "threads", str(threads), str(calls),
                 "e2e.thread.calls.total", "final", "e2e.final.total", "stats")
    assert fields(out[0], "threads")["calls"] == threads * calls
    dropped = fields(out[-1], "dropped")["dropped"]
    assert daemon.wait_for("e2e_final_total", 1) == 1
    for t in range(threads):
        assert daemon.wait_for("e2e_thread_calls_total", calls, thread=str(t)) == calls, t
    # every drop (a full socket queue while the daemon catches up) was reported in-band
    assert wait_total(daemon, DROPPED, dropped) == dropped
    assert_nothing_rejected(daemon)


def test_drops_while_daemon_stalls_are_reported(daemon, c_build):
    """The daemon stops reading (SIGSTOP): its 10-datagram queue fills, further calls return
    -EAGAIN without blocking, and the exact drop count reaches /metrics once it reads again."""
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    p = None
    try:
        p = spawn(c_build, daemon.socket_path, "mode", "immediate", "0",
                  "flood", "200", "e2e.flood.total", "stats",
                  "wait", "final", "e2e.final.total", "stats")
        flood = fields(p.stdout.readline().strip(), "flood")
        stalled = fields(p.stdout.readline().strip(), "dropped")["dropped"]
        assert p.stdout.readline().strip() == "waiting"
        assert flood["dropped"] > 0 and flood["sent"] + flood["dropped"] == 200
        assert flood["first_error"] == -EAGAIN
        assert stalled == flood["dropped"]
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
        if p is not None and p.poll() is None and p.stdin:
            p.stdin.write("\n")
            p.stdin.flush()
    attempts = fields(p.stdout.readline().strip(), "final")["attempts"]
    dropped = fields(p.stdout.readline().strip(), "dropped")["dropped"]
    assert p.wait(timeout=30) == 0
    assert dropped == stalled + attempts - 1
    assert daemon.wait_for("e2e_final_total", 1) == 1
    assert daemon.wait_for("e2e_flood_total", flood["sent"]) == flood["sent"]
    assert wait_total(daemon, DROPPED, dropped) == dropped
    assert_nothing_rejected(daemon)


def test_absent_sidecar_then_reconnect(daemon, c_build, tmp_path):
    """No socket at the client's path (ENOENT): calls fail fast and count drops; once the path
    leads to the daemon, the client reconnects and reports them."""
    late = tmp_path / "late"
    late.mkdir()
    path = late / "ingest.sock"
    p = spawn(c_build, str(path), "mode", "immediate", "0", "flood", "5", "e2e.late.total", "stats", "wait",
              "final", "e2e.late_final.total", "stats")
    try:
        flood = fields(p.stdout.readline().strip(), "flood")
        assert flood == {"sent": 0, "dropped": 5, "first_error": -ENOENT}
        assert fields(p.stdout.readline().strip(), "dropped") == {"dropped": 5}
        assert p.stdout.readline().strip() == "waiting"
        os.symlink(daemon.socket_path, path)   # the sidecar "appears" at the client's path
        p.stdin.write("\n")
        p.stdin.flush()
        attempts = fields(p.stdout.readline().strip(), "final")["attempts"]
        dropped = fields(p.stdout.readline().strip(), "dropped")["dropped"]
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert dropped == 5 + attempts - 1
    assert daemon.wait_for("e2e_late_final_total", 1) == 1
    assert absent_or_zero(daemon, "e2e_late_total")
    assert wait_total(daemon, DROPPED, dropped) == dropped
    assert_nothing_rejected(daemon)


def test_unique_chunks_and_chunk_popularity(daemon, c_build):
    """Beyond the seed: record_chunk_transfer_hash feeds p2p.chunks.unique, record_chunk_request
    feeds the p2p.chunks.requested top-K sketch."""
    commands = ["mode", "immediate", "0"]
    for i in range(60):
        commands += ["chunkh", "4096", str(i % 2), f"sha256:{i % 25:04x}"]
    for i in range(200):
        commands += ["request", "sha256:hot" if i % 4 == 0 else f"sha256:{i % 30:04x}"]
    driver(c_build, daemon.socket_path, *commands)
    assert daemon.wait_for("p2pmetricsd_datagrams_received_total", 260) == 260
    m = daemon.scrape()
    assert abs(m[("p2p_chunks_unique", frozenset())] - 25) <= 1  # small sets: linear counting, within a key
    assert m[("p2p_chunks_transferred_total", frozenset())] == 30
    assert m[("p2p_chunks_deduplicated_total", frozenset())] == 30
    assert m[("p2p_bytes_transferred_total", frozenset())] == 30 * 4096
    assert m[("p2p_chunks_requested", frozenset({"key": "sha256:hot"}.items()))] == 50
    top = sorted(((v, dict(l)["key"]) for (n, l), v in m.items() if n == "p2p_chunks_requested"), reverse=True)
    assert len(top) == 10 and top[0] == (50, "sha256:hot")
    for (n, l), v in m.items():
        if n == "p2p_chunks_requested_error":
            assert v >= 0


def test_pkg_config_link_runs_as_installed(daemon, c_build, tmp_path):
    """A program linked with $(pkg-config --cflags --libs p2pmetrics) against an installed
    library runs as built: the .pc's Libs carry an rpath to the library's folder."""
    prefix = tmp_path / "prefix"
    subprocess.run(["make", "-s", "-C", str(c_build.parent), "install", f"PREFIX={prefix}"],
                   check=True, capture_output=True)
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    env.pop("LD_LIBRARY_PATH", None)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "p2pmetrics"], env=env,
                           check=True, capture_output=True, text=True).stdout.split()
    exe = tmp_path / "example"
    subprocess.run(["cc", str(c_build.parent / "examples" / "example.c"), *flags, "-o", str(exe)],
                   check=True, env=env)
    ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    assert f"{prefix}/lib/libp2pmetrics.so.1" in ldd, ldd   # the installed shared library
    r = subprocess.run([str(exe)], env=dict(env, P2PM_SOCKET=daemon.socket_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert daemon.wait_for("p2p_cache_hits", 1, cache_type="vm_image") == 1
    assert daemon.wait_for("p2p_bytes_transferred_total", 2**30, artifact_type="microvm") == 2**30
