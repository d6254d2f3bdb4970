"""End-to-end tests of the Swift client (Sources/P2PMetrics) against a running p2pmetricsd.

The Swift side is driven through the `p2pmetrics-example` executable (Sources/p2pmetrics-example),
a small CLI that runs client calls and scripted scenarios given on its command line; it is built
next to the daemon (`swift build` puts both in .build/debug, or in the folder of
$P2PMETRICSD_BIN; $P2PMETRICS_EXAMPLE_BIN overrides). Values are checked exactly in the scraped
/metrics; datagrams are asynchronous, so every check polls with `daemon.wait_for`.

The client batches by default (8,192-byte datagrams, 10 ms flush interval); `--immediate` sends
one datagram per call like the C client outside batch mode, `--blocking-ms N` opts into sends
that wait for room in the daemon's 10-deep queue.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DAEMON_BIN, ROOT

EXAMPLE_BIN = Path(os.environ.get("P2PMETRICS_EXAMPLE_BIN", DAEMON_BIN.parent / "p2pmetrics-example"))
DROPPED = "p2pmetricsd_client_dropped_datagrams_total"
EAGAIN, ENOENT = 11, 2
MODES = {"batched": [], "immediate": ["--immediate"]}


def example(socket_path: str, *args: str, options=(), env=None, timeout=120) -> list[str]:
    """Runs p2pmetrics-example to completion; returns its stdout lines."""
    assert EXAMPLE_BIN.exists(), f"{EXAMPLE_BIN} is not built (run swift build first)"
    r = subprocess.run([str(EXAMPLE_BIN), "--socket", socket_path, *options, *args], env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"p2pmetrics-example failed ({r.returncode}): {r.stderr}"
    return r.stdout.splitlines()


def spawn(socket_path: str, *args: str, options=()) -> subprocess.Popen:
    """Starts p2pmetrics-example with pipes on stdin (for `wait`) and stdout."""
    assert EXAMPLE_BIN.exists(), f"{EXAMPLE_BIN} is not built (run swift build first)"
    return subprocess.Popen([str(EXAMPLE_BIN), "--socket", socket_path, *options, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def fields(line: str, word: str) -> dict[str, int]:
    """'flood sent=3 dropped=2' -> {'sent': 3, 'dropped': 2}, checking the first word."""
    head, *rest = line.split()
    assert head == word, line
    return {k: int(v) for k, v in (kv.split("=") for kv in rest)}


def last_stats(lines: list[str]) -> dict[str, int]:
    return fields([l for l in lines if l.startswith("stats ")][-1], "stats")


def total(daemon, name: str, **labels: str) -> float | None:
    """Sum of every series of `name` whose labels include `labels`; None when there is none."""
    want = set(labels.items())
    vals = [v for (n, lab), v in daemon.scrape().items() if n == name and want <= set(lab)]
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


def types(daemon) -> dict[str, str]:
    return {p[2]: p[3] for p in (l.split() for l in daemon.scrape_text().splitlines())
            if len(p) == 4 and p[:2] == ["#", "TYPE"]}


def test_readme_example(daemon):
    """The README section's example (the `seed` scenario), values exact."""
    out = example(daemon.socket_path, "seed", "stats")
    d = daemon
    assert d.wait_for("p2p_verification_success", 1, verification_type="nar_hash") == 1
    assert d.wait_for("vm_starts", 1, node="n1") == 1
    assert d.value("p2p_image_imports_total", artifact_type="microvm") == 1
    assert d.value("p2p_bytes_transferred_total", artifact_type="microvm") == 2**30
    assert d.value("p2p_cache_hits", cache_type="vm_image") == 1
    assert d.value("p2p_chunks_transferred_total") == 1
    assert d.value("p2p_chunks_deduplicated_total") == 1
    assert d.value("p2p_bytes_transferred_total") == 65536
    assert d.value("p2p_transfer_duration_count") == 1
    assert d.value("p2p_transfers_active") == 0
    assert last_stats(out)["dropped"] == 0
    assert wait_total(d, DROPPED, 0) == 0
    assert_nothing_rejected(d)


@pytest.mark.parametrize("mode", MODES)
def test_swift_metrics_handlers(daemon, mode):
    """Counter, FloatingPointCounter, Meter, Recorder (both modes) and Timer through
    MetricsSystem.bootstrap(P2PMetricsFactory(...)), and swift-metrics names sanitized."""
    # immediate: ~25 datagrams in a burst would overflow the daemon's 10-deep queue (handlers do
    # not retry), so that variant opts into blocking sends; batched: one or two datagrams
    options = ["--immediate", "--blocking-ms", "5000"] if mode == "immediate" else []
    out = example(daemon.socket_path, "handlers", "final", "e2e.swift.final.total", "stats",
                  options=options)
    dropped = last_stats(out)["dropped"]
    assert dropped == 0
    d = daemon
    assert d.wait_for("e2e_swift_final_total", 1) == 1
    expected = [
        ("e2e_swift_counter", {"kind": "a"}, 42),                 # 1 + 41, the -5 ignored
        ("e2e_swift_work_seconds", {}, 2.75),                     # FloatingPointCounter
        ("e2e_swift_meter", {"pool": "p1"}, 12),                  # 10 + 2.5 - 0.5 + 1 - 1
        ("e2e_swift_recorder_gauge", {}, -7.25),                  # last value
        ("e2e_swift_recorder_hist_count", {"_le": "x"}, 3),       # NaN left out; le -> _le
        ("e2e_swift_recorder_hist_sum", {"_le": "x"}, 7.5),
        ("e2e_swift_recorder_hist_bucket", {"_le": "x", "le": "+Inf"}, 3),
        ("e2e_swift_timer_count", {"op": "pull"}, 3),
        ("e2e_swift_timer_sum", {"op": "pull"}, 3.75),            # 0.25 s + 1.5 s + 2 s
        ("_9bad_name_", {"dim_key": "v", "_x": "y"}, 3),          # "9bad-name!", "dim-key", "__x"
    ]
    for name, labels, value in expected:
        assert d.value(name, **labels) == value, (name, labels)
    t = types(d)
    assert t["e2e_swift_counter"] == "counter" and t["e2e_swift_work_seconds"] == "counter"
    assert t["e2e_swift_meter"] == "gauge" and t["e2e_swift_recorder_gauge"] == "gauge"
    assert t["e2e_swift_recorder_hist"] == "histogram" and t["e2e_swift_timer"] == "histogram"
    assert absent_or_zero(d, "e2e_swift_timer_bucket", op="pull", le="0.1")
    assert d.value("e2e_swift_timer_bucket", op="pull", le="+Inf") == 3
    assert wait_total(d, DROPPED, dropped) == dropped
    assert_nothing_rejected(d)


HELPER_CALLS = [   # the same calls as test_c_client.py
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


@pytest.mark.parametrize("mode", ["immediate", "batch"])
def test_every_seed_helper_exact(daemon, mode):
    calls = [word for call in HELPER_CALLS for word in call]
    # batch: no flush timer, so the whole run is one datagram sent by the final flush
    options = ["--immediate"] if mode == "immediate" else ["--flush-ms", "0"]
    out = example(daemon.socket_path, *calls, "flush", "stats", options=options)
    dropped = last_stats(out)["dropped"]   # retried by the example when the queue was full
    d = daemon
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
    assert not any("img-a" in v for (_, labels) in d.scrape() for _, v in labels)   # not a label
    # one datagram per helper call (each applied atomically), or one for the whole batch
    assert d.value("p2pmetricsd_datagrams_received_total") == (len(HELPER_CALLS) if mode == "immediate" else 1)
    assert wait_total(d, DROPPED, dropped) == dropped
    assert_nothing_rejected(d)


@pytest.mark.parametrize("mode", MODES)
def test_transfer_token(daemon, mode):
    """startTransfer() / finish(): the gauge is 1 while the transfer runs; finishing twice
    records once."""
    p = spawn(daemon.socket_path, "tstart", "wait", "tend", "tend", "stats", options=MODES[mode])
    try:
        assert p.stdout.readline().split()[0] == "tstart"
        assert p.stdout.readline().strip() == "waiting"
        assert daemon.wait_for("p2p_transfers_active", 1) == 1   # in flight (batched: timer flush)
        time.sleep(0.3)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().split()[0] == "tend"
        assert p.stdout.readline().strip() == "tend none"
        dropped = fields(p.stdout.readline().strip(), "stats")["dropped"]
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert daemon.wait_for("p2p_transfer_duration_count", 1) == 1
    assert daemon.wait_for("p2p_transfers_active", 0) == 0
    assert 0.3 <= daemon.value("p2p_transfer_duration_sum") < 30
    assert wait_total(daemon, DROPPED, dropped) == dropped
    assert_nothing_rejected(daemon)


@pytest.mark.parametrize("body", ["sync", "sync-throw", "async", "async-throw"])
@pytest.mark.parametrize("mode", MODES)
def test_with_transfer(daemon, mode, body):
    """withTransfer { } records the duration and brings the gauge back, also when the body throws."""
    out = example(daemon.socket_path, "transfer", body, "200", "stats", options=MODES[mode])
    assert out[0] == f"transfer {body} {'threw' if body.endswith('throw') else 'returned'}"
    assert last_stats(out)["dropped"] == 0
    assert daemon.wait_for("p2p_transfer_duration_count", 1) == 1
    assert daemon.wait_for("p2p_transfers_active", 0) == 0
    assert 0.2 <= daemon.value("p2p_transfer_duration_sum") < 30
    assert_nothing_rejected(daemon)


def test_with_transfer_all_bodies_one_process(daemon):
    modes = ["sync", "sync-throw", "async", "async-throw"]
    args = [w for m in modes for w in ("transfer", m, "50")]
    example(daemon.socket_path, *args, "final", "e2e.swift.final.total")
    assert daemon.wait_for("e2e_swift_final_total", 1) == 1
    assert daemon.value("p2p_transfer_duration_count") == 4
    assert daemon.value("p2p_transfers_active") == 0
    assert 0.2 <= daemon.value("p2p_transfer_duration_sum") < 30


@pytest.mark.parametrize("mode", MODES)
def test_generic_api(daemon, mode):
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
    example(daemon.socket_path, *calls, options=MODES[mode])
    d = daemon
    assert d.wait_for("e2e_last_total", 1) == 1
    assert d.value("e2e_bytes_total") == (1 << 40) + 1
    assert d.value("e2e_work_seconds", node="n1", zone="a") == 2.5
    assert d.value("e2e_temperature", sensor="cpu") == -12.5
    assert d.value("e2e_queue") == -3
    assert d.value("e2e_latency_count") == 2
    assert d.value("e2e_latency_sum") == 2.0
    assert_nothing_rejected(d)


def test_pending_batch_sent_at_exit(daemon):
    """A batch still pending when the program exits (no flush timer, no explicit flush, the
    bootstrapped factory's client never deinitialized) is sent by the client's atexit handler."""
    example(daemon.socket_path, "handlers", "counter", "e2e.exit.total", "5", "-", "exit",
            options=["--flush-ms", "0"])
    assert daemon.wait_for("e2e_exit_total", 5) == 5
    assert daemon.value("e2e_swift_counter", kind="a") == 42
    assert daemon.value("p2pmetricsd_datagrams_received_total") == 1


def test_default_socket_from_environment(daemon):
    env = dict(os.environ, P2PM_SOCKET=daemon.socket_path)
    r = subprocess.run([str(EXAMPLE_BIN), "cache", "1", "chunk", "counter", "e2e.default.total", "3", "-"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert daemon.wait_for("e2e_default_total", 3) == 3
    assert daemon.wait_for("p2p_cache_hits", 1, cache_type="chunk") == 1


@pytest.mark.parametrize("blocking", [False, True], ids=["nonblocking", "blocking"])
def test_eight_tasks_exact_totals(daemon, blocking):
    """8 Swift tasks x 10,000 swift-metrics Counter increments on one client. Non-blocking
    (default): every increment is delivered or counted in a dropped datagram, and every dropped
    datagram reaches p2pmetricsd_client_dropped_datagrams_total. Blocking (opt-in): exact totals."""
    tasks, calls = 8, 10_000
    options = ["--blocking-ms", "5000"] if blocking else []
    out = example(daemon.socket_path, "tasks", str(tasks), str(calls), "e2e.swift.tasks.total",
                  "final", "e2e.swift.final.total", "stats", options=options)
    assert fields(out[0], "tasks")["calls"] == tasks * calls
    st = last_stats(out)
    print("client statistics:", st)
    assert st["unreported"] == 0                                     # `final` carried the report
    assert daemon.wait_for("e2e_swift_final_total", 1) == 1
    assert st["sent_samples"] + st["dropped_samples"] == tasks * calls + 1   # + final
    assert wait_total(daemon, "e2e_swift_tasks_total", tasks * calls - st["dropped_samples"]) \
        == tasks * calls - st["dropped_samples"]
    assert wait_total(daemon, DROPPED, st["dropped"]) == st["dropped"]
    if blocking:
        assert st["dropped"] == 0
    if st["dropped"] == 0:
        for t in range(tasks):
            assert daemon.value("e2e_swift_tasks_total", task=str(t)) == calls, t
    # batching: ~2,700 increments per 8 KiB datagram, not one datagram per increment
    assert daemon.value("p2pmetricsd_datagrams_received_total") < 200
    assert_nothing_rejected(daemon)


def test_drops_while_daemon_stalls_are_reported(daemon):
    """The daemon stops reading (SIGSTOP): its 10-datagram queue fills, further calls are dropped
    with EAGAIN without blocking, and the exact drop count reaches /metrics once it reads again."""
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    p = None
    try:
        p = spawn(daemon.socket_path, "flood", "200", "e2e.flood.total", "stats", "wait",
                  "final", "e2e.final.total", "stats", options=["--immediate"])
        flood = fields(p.stdout.readline().strip(), "flood")
        stalled = fields(p.stdout.readline().strip(), "stats")["dropped"]
        assert p.stdout.readline().strip() == "waiting"
        assert flood["dropped"] > 0 and flood["sent"] + flood["dropped"] == 200
        assert flood["first_error"] == EAGAIN
        assert stalled == flood["dropped"]
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
        if p is not None and p.poll() is None and p.stdin:
            p.stdin.write("\n")
            p.stdin.flush()
    attempts = fields(p.stdout.readline().strip(), "final")["attempts"]
    dropped = fields(p.stdout.readline().strip(), "stats")["dropped"]
    assert p.wait(timeout=30) == 0
    assert dropped == stalled + attempts - 1
    assert daemon.wait_for("e2e_final_total", 1) == 1
    assert daemon.wait_for("e2e_flood_total", flood["sent"]) == flood["sent"]
    assert wait_total(daemon, DROPPED, dropped) == dropped
    assert_nothing_rejected(daemon)


@pytest.mark.parametrize("mode", MODES)
def test_absent_sidecar_then_reconnect(daemon, tmp_path, mode):
    """No socket at the client's path (ENOENT): calls never throw or block, drops are counted;
    once the path leads to the daemon, the client reconnects and reports them."""
    late = tmp_path / "late"
    late.mkdir()
    path = late / "ingest.sock"
    options = MODES[mode] + ["--flush-ms", "0"] if mode == "batched" else MODES[mode]
    flood_then_flush = ["flood", "5", "e2e.late.total", "flush"] if mode == "batched" else ["flood", "5", "e2e.late.total"]
    p = spawn(str(path), *flood_then_flush, "stats", "wait", "final", "e2e.late_final.total", "stats",
              options=options)
    try:
        flood = fields(p.stdout.readline().strip(), "flood")
        stats = fields(p.stdout.readline().strip(), "stats")
        if mode == "immediate":
            assert flood == {"sent": 0, "dropped": 5, "first_error": ENOENT}
            assert stats["dropped"] == 5
        else:   # the 5 samples were buffered, then their one datagram was dropped
            assert flood == {"sent": 5, "dropped": 0, "first_error": 0}
            assert stats["dropped"] == 1 and stats["dropped_samples"] == 5
        assert p.stdout.readline().strip() == "waiting"
        os.symlink(daemon.socket_path, path)   # the sidecar "appears" at the client's path
        p.stdin.write("\n")
        p.stdin.flush()
        attempts = fields(p.stdout.readline().strip(), "final")["attempts"]
        dropped = fields(p.stdout.readline().strip(), "stats")["dropped"]
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert dropped == stats["dropped"] + attempts - 1
    assert daemon.wait_for("e2e_late_final_total", 1) == 1
    assert absent_or_zero(daemon, "e2e_late_total")
    assert wait_total(daemon, DROPPED, dropped) == dropped
    assert_nothing_rejected(daemon)


MALLOC_COUNTER = r"""
#include <stddef.h>
#include <stdatomic.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
static _Atomic unsigned long long n;
void *malloc(size_t s) { atomic_fetch_add(&n, 1); return __libc_malloc(s); }
void *calloc(size_t a, size_t b) { atomic_fetch_add(&n, 1); return __libc_calloc(a, b); }
void *realloc(void *p, size_t s) { atomic_fetch_add(&n, 1); return __libc_realloc(p, s); }
void *aligned_alloc(size_t a, size_t s) { atomic_fetch_add(&n, 1); return __libc_memalign(a, s); }
void *memalign(size_t a, size_t s) { atomic_fetch_add(&n, 1); return __libc_memalign(a, s); }
int posix_memalign(void **p, size_t a, size_t s) { atomic_fetch_add(&n, 1); *p = __libc_memalign(a, s); return *p ? 0 : 12; }
unsigned long long p2pm_alloc_count(void) { return n; }
"""

# Heap allocations per call of the hot paths in a release build. All of them come from the shared
# DatagramEncoder (P2PMetricsWire), which copies the metric name and each label name into arrays
# per sample: 1 per sample + 2 per label (+1 for the label list). The client layer adds none.
ALLOC_BOUNDS = {
    "handler_counter": 4,     # one label
    "handler_timer": 1,
    "counter_no_labels": 1,
    "counter_one_label": 4,
    "cache_access": 4,
    "chunk_transfer": 2,      # two samples
}


def test_hot_path_allocations(daemon, tmp_path):
    """Counts malloc calls per recording call (LD_PRELOAD counter) in the release build."""
    release = Path(os.environ.get("P2PMETRICS_EXAMPLE_RELEASE_BIN",
                                  ROOT / ".build" / "release" / "p2pmetrics-example"))
    if not release.exists():
        pytest.skip(f"{release} not built (swift build -c release --product p2pmetrics-example)")
    src = tmp_path / "count.c"
    src.write_text(MALLOC_COUNTER)
    lib = tmp_path / "count.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)], check=True)
    env = dict(os.environ, LD_PRELOAD=str(lib))
    r = subprocess.run([str(release), "--socket", daemon.socket_path, "--flush-ms", "0",
                        "--blocking-ms", "1000", "allocs", "20000"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = {k: float(v) for k, v in (l.split()[1].split("=") for l in r.stdout.splitlines()
                                    if l.startswith("allocs ") and "=" in l)}
    print("allocations per call:", got)
    assert set(got) == set(ALLOC_BOUNDS), r.stdout
    for name, bound in ALLOC_BOUNDS.items():
        assert got[name] <= bound + 0.05, (name, got[name])


def test_unique_chunks_and_chunk_popularity(daemon):
    """Beyond the seed, from Swift: recordChunkTransfer(hash:) feeds p2p.chunks.unique and
    recordChunkRequest(hash:) the p2p.chunks.requested top-K sketch."""
    commands = []
    for i in range(40):
        commands += ["chunkh", "1024", str(i % 2), f"sha256:{i % 10:04x}"]
    for i in range(120):
        commands += ["request", "sha256:hot" if i % 3 == 0 else f"sha256:{i % 50:04x}"]
    example(daemon.socket_path, *commands, "flush")
    assert daemon.wait_for("p2p_chunks_requested", 40, key="sha256:hot") == 40
    m = daemon.scrape()
    assert abs(m[("p2p_chunks_unique", frozenset())] - 10) <= 1
    assert m[("p2p_chunks_transferred_total", frozenset())] == 20
    assert m[("p2p_chunks_deduplicated_total", frozenset())] == 20
    assert m[("p2p_bytes_transferred_total", frozenset())] == 20 * 1024
    assert sum(1 for (n, _) in m if n == "p2p_chunks_requested") == 10


def test_fork_sends_nothing_twice_and_the_child_exit_flush_sends_its_own(daemon):
    """Samples pending in the parent at fork() are sent once (by the parent); the child starts
    empty and its exit flush sends its own samples (no timer: --flush-ms 0)."""
    out = example(daemon.socket_path, "fork", "100", "30", "swift.fork", "u64", "swift.fork.after", "5",
                  options=["--flush-ms", "0"])
    assert "fork child_status=0" in out
    assert daemon.wait_for("swift_fork_after", 5) == 5
    assert daemon.wait_for("swift_fork_child", 30) == 30
    assert daemon.value("swift_fork_parent") == 100
    # 100 + 30 + the one u64 sample: the parent's pending 100 were not sent again by the child
    assert daemon.wait_for("p2pmetricsd_samples_applied_total", 131) == 131
