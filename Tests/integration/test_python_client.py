"""The pure-Python client (Clients/python/p2pmetrics.py): the shared vectors byte for byte, exact
values end to end, the seed-shaped burst on a default-qlen namespace, fork and exit."""
from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse

import pytest

from conftest import ROOT
from test_delivery import (CHUNKS, DOWNLOADS, IMPORTS, TRANSFERS, TYPES, assert_seed_exact,
                           ns_daemon, seed_samples)   # noqa: F401 (fixture)

sys.path.insert(0, str(ROOT / "Clients" / "python"))
import p2pmetrics  # noqa: E402

VECTORS = ROOT / "Clients" / "testdata" / "vectors.txt"
CALLS = {"counter_add": "counter_add", "gauge_set": "gauge_set", "gauge_add": "gauge_add",
         "histogram_observe": "histogram_observe", "distinct_add": "distinct_add",
         "topk_add": "topk_add"}


def untok(t: str) -> str:
    return urllib.parse.unquote(t, errors="strict")


def number(t: str):
    if t in ("nan", "inf", "-inf"):
        return float(t)
    if t == "-0":
        return -0.0
    try:
        return int(t)
    except ValueError:
        return float(t)


def encoder_vectors():
    """(id, drops, calls, bytes) of every `vector` block of vectors.txt."""
    out, cur = [], None
    for line in VECTORS.read_text().splitlines():
        t = line.split(" ")
        if t[0] == "vector":
            cur = {"id": t[1], "drops": 0, "calls": []}
        elif t[0] == "reject":
            cur = None
        elif cur is not None and t[0] == "drops":
            cur["drops"] = int(t[1])
        elif cur is not None and t[0] == "call":
            labels = [tuple(untok(x) for x in kv.split("=", 1)) for kv in t[4:]]
            cur["calls"].append((t[1], untok(t[2]), t[3], labels))
        elif cur is not None and t[0] == "bytes":
            cur["bytes"] = bytes.fromhex(t[1])
        elif cur is not None and t[0] == "end":
            out.append(cur)
            cur = None
    return out


@pytest.fixture
def receiver(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "r.sock"))
    s.settimeout(2)
    yield s
    s.close()


def drain(s: socket.socket) -> list[bytes]:
    out = []
    s.settimeout(0)
    try:
        while True:
            out.append(s.recv(65536))
    except BlockingIOError:
        pass
    s.settimeout(2)
    return out


@pytest.mark.parametrize("v", encoder_vectors(), ids=lambda v: v["id"])
def test_shared_vectors_byte_for_byte(receiver, v):
    c = p2pmetrics.Client(receiver.getsockname())
    if v["drops"]:   # real drops: fill the receiver's queue in immediate mode
        c.set_mode("immediate")
        while c.counter_add("filler", 1):
            pass
        for _ in range(v["drops"] - 1):
            assert not c.counter_add("filler", 1)
        drain(receiver)
        c.set_mode("buffered")
    with c.batch():
        for kind, name, value, labels in v["calls"]:
            if kind in ("distinct_add", "topk_add"):
                getattr(c, kind)(name, untok(value), labels)
            else:
                getattr(c, kind)(name, number(value), labels)
    assert receiver.recv(65536).hex() == v["bytes"].hex()
    assert drain(receiver) == []
    assert c.stats["dropped_datagrams"] == v["drops"]
    c.close()


def test_helpers_and_exact_values_end_to_end(daemon):
    c = p2pmetrics.Client(daemon.socket_path)
    c.record_image_import("microvm", True, 5 << 30)            # 5 GiB stays 5 GiB
    c.record_image_import("container", False, 4096)
    c.record_image_download("img", False, 12.5)
    c.record_image_download("img", True, 0.25, labels={"peer": "node-7"})
    c.record_chunk_transfer(65536, False, labels={"peer": "node-7"})
    c.record_chunk_transfer(65536, True)
    c.record_verification(True, "nar_hash")
    c.record_cache_access(False, "vm_image")
    c.counter_add("py.work.seconds", 0.5, {"node": "n1"})     # a float
    c.counter_add("py.bytes.total", 2**64 - 1)                 # exact to 2^64
    with c.transfer(labels={"peer": "node-7"}):
        time.sleep(0.05)
    for bad in [lambda: c.counter_add("py.c", -1), lambda: c.counter_add("bad name", 1),
                lambda: c.histogram_observe("h", 1, {"le": "1"}),
                lambda: c.gauge_add("g", math.nan), lambda: c.counter_add("p2pmetricsd_x", 1),
                lambda: c.counter_add("c", 1, {"a": "1", "__b": "2"})]:
        with pytest.raises(ValueError):
            bad()
    d = daemon
    assert d.wait_for("p2p_transfer_duration_count", 1, peer="node-7") == 1   # the last call
    assert d.wait_for("p2p_bytes_transferred_total", 5 << 30, artifact_type="microvm") == 5 << 30
    assert d.value("p2p_image_imports_failed", artifact_type="container") == 1
    assert d.value("p2p_image_downloads_total") == 1
    assert d.value("p2p_image_downloads_failed") == 1
    assert d.value("p2p_image_downloads_total", peer="node-7") == 1
    assert d.value("p2p_transfer_duration_sum") == 12.5
    assert d.value("p2p_bytes_transferred_total", peer="node-7") == 65536
    assert d.value("p2p_chunks_deduplicated_total") == 1
    assert d.value("p2p_verification_success", verification_type="nar_hash") == 1
    assert d.value("p2p_cache_misses", cache_type="vm_image") == 1
    assert d.value("py_work_seconds", node="n1") == 0.5
    assert "\npy_bytes_total 18446744073709551615\n" in d.scrape_text()   # exact integer part
    assert d.value("p2p_transfers_active") == 0
    assert 0.05 <= d.value("p2p_transfer_duration_sum", peer="node-7") < 30
    assert c.stats["dropped_datagrams"] == 0
    assert d.value("p2pmetricsd_samples_applied_total") == c.stats["sent_samples"]
    c.close()


def seed_thread(c: p2pmetrics.Client, t: int, threads: int) -> None:
    """Thread t's share of the seed-shaped workload (Clients/c/tests/seed_workload.h)."""
    guards = [c.start_transfer() for i in range(t, TRANSFERS, threads)]
    for i in range(t, IMPORTS, threads):
        c.record_image_import(TYPES[i % 4], i % 10 != 9, (i + 1) << 20)
    for i in range(t, DOWNLOADS, threads):
        c.record_image_download("img", i % 25 != 24, (i % 8) / 4)
        c.record_verification(i % 50 != 49, "nar_hash")
        c.record_cache_access(i % 2 == 0, "vm_image")
    for i in range(t, CHUNKS, threads):
        dedup = i % 3 == 0
        c.record_chunk_transfer(65536, dedup)
        c.record_verification(i % 100 != 99, "chunk_hash")
        c.record_cache_access(dedup, "chunk")
    for g in guards:
        g.end()


def test_seed_burst_with_python_defaults_loses_nothing_on_default_qlen(ns_daemon):
    c = p2pmetrics.Client(ns_daemon.socket_path)
    threads = [threading.Thread(target=seed_thread, args=(c, t, 4)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c.flush()
    assert c.stats["dropped_datagrams"] == 0 and c.stats["dropped_samples"] == 0
    assert c.stats["sent_samples"] == sum(seed_samples().values())
    assert_seed_exact(ns_daemon, c.stats["sent_samples"])
    c.close()


def test_fork_and_exit_flush(daemon):
    """Samples recorded before os.fork() are sent once (by the parent); the child's own samples
    and the parent's last ones are sent by the exit flush, without any flush() call."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT / "Clients" / "python")!r})
        import p2pmetrics
        c = p2pmetrics.Client({daemon.socket_path!r})
        with c.batch():
            for _ in range(100):
                c.counter_add("py.fork.parent", 1)
            pid = os.fork()
            if pid == 0:
                for _ in range(30):
                    c.counter_add("py.fork.child", 1)
                sys.exit(0)
        os.waitpid(pid, 0)
        for _ in range(5):
            c.counter_add("py.fork.parent_after", 1)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert daemon.wait_for("py_fork_parent_after", 5) == 5
    assert daemon.wait_for("py_fork_child", 30) == 30
    assert daemon.value("py_fork_parent") == 100
    assert daemon.wait_for("p2pmetricsd_samples_applied_total", 135) == 135


def test_stopped_sidecar_bounded_calls_exact_drops_and_transfer_that_cannot_stick(daemon):
    """SIGSTOP: calls keep returning quickly (one bounded wait, then none), every sample is sent or
    counted as dropped, and the transfer's -1 dropped meanwhile is delivered after SIGCONT."""
    c = p2pmetrics.Client(daemon.socket_path)
    t = c.start_transfer()
    c.flush()
    assert daemon.wait_for("p2p_transfers_active", 1) == 1
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        slowest = 0.0
        for _ in range(60000):
            t0 = time.monotonic()
            c.counter_add("py.stopped.total", 1)
            slowest = max(slowest, time.monotonic() - t0)
        t.end()
        t.end()                           # twice: nothing
        c.flush()                         # still stopped: dropped, counted; the -1 is kept
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    st = dict(c.stats)
    assert st["waits"] >= 1 and st["dropped_datagrams"] >= 1
    assert slowest < 2.0                  # stated bound about 2 x 50 ms; generous here
    assert daemon.wait_for("p2p_transfers_active", 0, timeout=10) == 0   # the flusher delivered it
    st = dict(c.stats)
    assert st["resent_adds"] == 1
    delivered = daemon.value("py_stopped_total") or 0
    # every counter sample delivered or counted; + the end's duration, dropped with its datagram
    assert delivered + st["dropped_samples"] == 60000 + 1
    c.counter_add("py.final.total", 1)
    c.flush()
    assert daemon.wait_for("py_final_total", 1) == 1
    assert daemon.wait_for("p2pmetricsd_client_dropped_datagrams_total",
                           st["dropped_datagrams"]) == st["dropped_datagrams"]
    print(f"python client, sidecar stopped: {int(delivered)} delivered, {st['dropped_samples']} "
          f"dropped and counted, slowest call {slowest * 1000:.1f} ms")
    c.close()


def test_a_dropped_client_sends_what_it_holds(receiver):
    c = p2pmetrics.Client(receiver.getsockname())
    c._batch_depth += 1   # an open batch: neither the linger nor a batch end will send it
    c.counter_add("py.dropped.total", 3)
    receiver.settimeout(0.2)
    with pytest.raises(socket.timeout):
        receiver.recv(65536)
    del c                 # garbage collection flushes
    import gc
    gc.collect()
    receiver.settimeout(2)
    assert receiver.recv(65536).hex().endswith("100003")
