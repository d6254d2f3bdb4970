"""End-to-end tests of the built p2pmetricsd binary: datagrams in, exact values out of /metrics."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time

import pytest

from conftest import DAEMON_BIN, ROOT, free_port, parse_exposition, start_daemon
from wire import counter, string

VECTORS = ROOT / "Clients" / "testdata" / "vectors.txt"


def load_vectors():
    valid, reject, cur = [], [], None
    for line in VECTORS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        t = line.split(" ")
        if t[0] in ("vector", "accept", "reject"):
            cur = {"kind": t[0], "id": t[1]}
        elif t[0] == "bytes":
            cur["bytes"] = bytes.fromhex(t[1])
        elif t[0] == "reason":
            cur["reason"] = t[1]
        elif t[0] == "end":
            (reject if cur["kind"] == "reject" else valid).append(cur)
    return valid, reject


def wait_value(daemon, name, expected, **labels):
    got = daemon.wait_for(name, expected, **labels)
    assert got == expected, f"{name}{labels}: expected {expected}, got {got}"


def test_every_shared_vector_end_to_end(daemon):
    valid, reject = load_vectors()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # the `oversized` vector
        for v in valid + reject:
            s.sendto(v["bytes"], daemon.socket_path)
    total = len(valid) + len(reject)
    wait_value(daemon, "p2pmetricsd_datagrams_received_total", total)
    m = daemon.scrape()
    v = lambda name, **labels: m.get((name, frozenset(labels.items())))
    # Exact values implied by the vectors (see Clients/testdata/gen_vectors.py).
    assert v("p2p_image_downloads_total") == 2
    assert v("p2p_image_downloads_failed") == 1
    assert v("p2p_cache_hits", cache_type="chunk") == 1
    # -1, then set to 0 through {node=""} (an empty label is no label), then +1 -1.
    assert v("p2p_transfers_active") == 0
    assert v("p2p_transfers_active", node="") is None
    assert v("p2p_image_imports_total", artifact_type="microvm") == 1
    assert v("p2p_image_imports_total", artifact_type="container") == 1
    assert v("p2p_image_imports_failed", artifact_type="container") == 1
    assert v("p2p_bytes_transferred_total", artifact_type="microvm") == 1073741824
    assert v("p2p_bytes_transferred_total") == 65536 + 4096 + 4096  # + seed_chunk_transfer_with_hash
    assert v("p2p_chunks_transferred_total") == 3
    assert v("p2p_chunks_requested", key="sha256:4f2a") == 1  # seed_chunk_request
    assert v("p2p_chunks_requested", key="sha256:4f2a", node="n1") == 1
    assert v("p2p_chunks_requested", key="chunk é 1", node="n1") == 1
    assert v("p2p_chunks_unique") == 2  # sha256:4f2a, sha256:9b1c
    assert v("p2p_chunks_deduplicated_total") == 1
    assert v("jobs", a="1", b="2") == 3
    assert v("big") == 18446744073709549568
    assert v("p2p_transfer_duration_count") == 4
    assert v("p2p_transfer_duration_sum") == pytest.approx(0.25 + 0.001 + 12.5 + 3.75)
    assert v("p2p_transfer_duration_bucket", le="0.01") == 1
    assert v("p2p_transfer_duration_bucket", le="+Inf") == 4
    assert v("wide", **{f"l{i}": f"v{i}" for i in range(16)}) == 7
    assert v("p2p_verification_failed", verification_type='nar "hash"\\\n', node="nœud-é=日本 x") == 1
    assert v("p2pmetricsd_client_dropped_datagrams_total") == sum(
        int(line.split(" ")[1]) for line in VECTORS.read_text().splitlines() if line.startswith("drops "))
    # Every reject vector counted under its own reason, nothing else rejected.
    expected: dict[str, int] = {}
    for r in reject:
        expected[r["reason"]] = expected.get(r["reason"], 0) + 1
    for reason, count in expected.items():
        assert v("p2pmetricsd_datagrams_rejected_total", reason=reason) == count, reason
    rejected = sum(val for (name, _), val in m.items() if name == "p2pmetricsd_datagrams_rejected_total")
    assert rejected == len(reject)
    assert v("p2pmetricsd_samples_applied_total") == sum(
        1 for line in VECTORS.read_text().splitlines() if line.startswith("call "))


def test_exposition_passes_promtool_except_the_seed_total_suffix_lint(daemon):
    valid, _ = load_vectors()
    for v in valid:
        daemon.send(v["bytes"])
    wait_value(daemon, "p2pmetricsd_datagrams_received_total", len(valid))
    text = daemon.scrape_text()
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
    problems = [l for l in (r.stdout + r.stderr).decode().splitlines() if l.strip()]
    assert r.returncode in (0, 3), problems  # 3: lint findings only
    others = [p for p in problems if 'counter metrics should have "_total" suffix' not in p]
    assert others == [], others
    assert any(p.startswith("p2p_cache_hits ") for p in problems)  # the seed's own name triggers the lint


def test_oversized_datagram_is_counted_and_changes_nothing(daemon):
    big = counter("c", 1) + b"\x10\x00\x01" * 30000  # > 64 KiB
    assert len(big) > 65536
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.sendto(big, daemon.socket_path)
    wait_value(daemon, "p2pmetricsd_datagrams_rejected_total", 1, reason="oversized")
    assert daemon.value("c") is None


def test_type_clash_and_series_limits_are_counted_and_scrape_stays_valid(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"limits": {"max_series": 5, "max_series_per_metric": 3}}))
    d = start_daemon(tmp_path, "--config", str(cfg))
    try:
        d.send(counter("jobs", 1))
        gauge_set = b"\xf5\x01" + string("jobs") + b"\x00" + b"\x20\x00\x05"
        d.send(gauge_set)
        for i in range(10):
            d.send(counter("flood", 1, {"i": str(i)}))
        d.send(counter("other", 1))
        d.send(counter("flood", 1, {"i": "0"}))
        wait_value(d, "p2pmetricsd_datagrams_received_total", 14)
        m = d.scrape()
        v = lambda name, **labels: m.get((name, frozenset(labels.items())))
        assert v("jobs") == 1
        assert v("p2pmetricsd_samples_rejected_total", reason="type_clash") == 1
        assert v("p2pmetricsd_samples_rejected_total", reason="metric_series_limit") == 7
        assert v("flood", i="0") == 2
        assert v("other") == 1
        assert v("p2pmetricsd_series") == 5
        assert v("flood", i="5") is None
        r = subprocess.run(["promtool", "check", "metrics"], input=d.scrape_text().encode(), capture_output=True)
        assert r.returncode in (0, 3)
    finally:
        d.stop()


def http_exchange(port: int, payload: bytes, read_until_close: bool = True, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            chunks.append(b)
            if not read_until_close:
                break
        return b"".join(chunks)


def test_http_methods_paths_keepalive_and_pipelining(daemon):
    req = lambda line, extra="": f"{line}\r\nHost: x\r\n{extra}".encode()
    # Pipelined: three requests in one write on one keep-alive connection, answered in order.
    out = http_exchange(daemon.port, req("GET /-/healthy HTTP/1.1", "\r\n") + req("GET /nope HTTP/1.1", "\r\n")
                        + req("DELETE /metrics HTTP/1.1", "Connection: close\r\n\r\n"))
    text = out.decode()
    assert text.index("HTTP/1.1 200 OK") < text.index("HTTP/1.1 404 Not Found") < text.index("HTTP/1.1 405 Method Not Allowed")
    assert "Allow: GET, HEAD" in text
    # HEAD has no body.
    out = http_exchange(daemon.port, req("HEAD /metrics HTTP/1.1", "Connection: close\r\n\r\n"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"text/plain; version=0.0.4" in head and body == b""
    # Garbage gets a 400 and a closed connection.
    out = http_exchange(daemon.port, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request")
    # A head over the limit gets 431.
    out = http_exchange(daemon.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 10000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    # HTTP/1.0 works and closes.
    out = http_exchange(daemon.port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 200 OK") and b"p2pmetricsd_build_info" in out
    # Nothing of that changed state: no series exist.
    assert daemon.value("p2pmetricsd_series") == 0
    m = daemon.scrape()
    assert m[("p2pmetricsd_http_responses_total", frozenset({"code": "405"}.items()))] == 1


def test_slow_request_gets_408_and_idle_connections_close(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"limits": {"request_timeout_seconds": 1, "idle_timeout_seconds": 1}}))
    d = start_daemon(tmp_path, "--config", str(cfg))
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished (slowloris)
            data = s.recv(4096)
            assert data.startswith(b"HTTP/1.1 408 Request Timeout")
            assert s.recv(4096) == b""
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            assert s.recv(4096) == b""  # idle: closed without a word
        assert d.scrape_text()  # the daemon still serves
    finally:
        d.stop()


def test_large_exposition_is_sliced_and_exact(daemon):
    n = 20000
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(counter("p2p.bytes_transferred.total", i + 1, {"peer": f"peer-{i:05d}"}), daemon.socket_path)
    wait_value(daemon, "p2pmetricsd_series", n)
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := s.recv(1 << 20):
            raw += chunk
    head, _, text = raw.partition(b"\r\n\r\n")
    # Rendered in slices between ingest drains, then sent with its exact length.
    assert f"Content-Length: {len(text)}\r\n".encode() in head + b"\r\n"
    m = parse_exposition(text.decode())
    for i in (0, 1, n // 2, n - 1):
        assert m[("p2p_bytes_transferred_total", frozenset({"peer": f"peer-{i:05d}"}.items()))] == i + 1
    assert sum(1 for (name, _) in m if name == "p2p_bytes_transferred_total") == n


def test_sigterm_drains_the_queue_and_reports(tmp_path):
    d = start_daemon(tmp_path)
    d.proc.send_signal(19)  # SIGSTOP: let datagrams queue up in the socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            sent = 0
            while sent < 100:
                try:
                    s.sendto(counter("queued", 1), d.socket_path)
                    sent += 1
                except BlockingIOError:
                    break
        assert sent >= 5
    finally:
        d.proc.send_signal(15)
        d.proc.send_signal(18)  # SIGCONT
    assert d.proc.wait(timeout=10) == 0
    log = d.log_path.read_text()
    assert f"p2pmetricsd: shutdown: datagrams_received={sent} samples_applied={sent}" in log


def run_cli(*args, timeout=10):
    return subprocess.run([str(DAEMON_BIN), *args], capture_output=True, timeout=timeout, text=True)


def test_cli_errors_are_one_clear_line_and_nonzero(tmp_path):
    r = run_cli("--bogus")
    assert r.returncode != 0 and r.stderr.strip().splitlines() == ["p2pmetricsd: Unknown option '--bogus' (see p2pmetricsd --help)"]
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == (ROOT / "VERSION").read_text().strip()
    r = run_cli("--help")
    assert r.returncode == 0 and "--socket" in r.stdout and "--listen" in r.stdout and "--config" in r.stdout

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("--socket", str(tmp_path / "a.sock"), "--listen", f"127.0.0.1:{port}")
        assert r.returncode == 1
        assert r.stderr.strip() == f"p2pmetricsd: cannot listen on 127.0.0.1:{port}: address already in use"

    (tmp_path / "file").write_text("x")
    r = run_cli("--socket", str(tmp_path / "file" / "x.sock"), "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and r.stderr.startswith("p2pmetricsd: cannot") and len(r.stderr.strip().splitlines()) == 1

    r = run_cli("--socket", str(tmp_path / "b.sock"), "--listen", "nonsense")
    assert r.returncode == 1 and "bad --listen address 'nonsense'" in r.stderr

    bad = tmp_path / "bad.json"
    for content, message in [
        ("{", "is not valid JSON"),
        ('{"limits": {"max_series": 0}}', "limits.max_series must be a whole number"),
        ('{"limitz": {}}', "unknown key limitz"),
        ('{"metrics": {"x": {"type": "histogram", "buckets": [2, 1]}}}', "metrics.x.buckets must be strictly increasing"),
    ]:
        bad.write_text(content)
        r = run_cli("--config", str(bad), "--socket", str(tmp_path / "c.sock"), "--listen", f"127.0.0.1:{free_port()}")
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("--config", str(tmp_path / "missing.json"))
    assert r.returncode == 1 and "cannot read config file" in r.stderr


def test_second_daemon_on_a_live_socket_refuses(daemon, tmp_path):
    r = run_cli("--socket", daemon.socket_path, "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "another process is serving it" in r.stderr
    daemon.send(counter("still.alive", 1))
    wait_value(daemon, "still_alive", 1)


def test_self_bound_socket_mode_is_0660(daemon):
    assert os.stat(daemon.socket_path).st_mode & 0o777 == 0o660


def test_configured_histogram_buckets(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"metrics": {"job.seconds": {"type": "histogram", "help": "Job time.", "buckets": [1, 5]}}}))
    d = start_daemon(tmp_path, "--config", str(cfg))
    try:
        rec = b"\xf5\x01" + string("job.seconds") + b"\x00"
        d.send(rec + b"\x40\x00\x03" + b"\x40\x00\x07" + b"\x42\x00" + struct.pack("<d", 0.5))
        wait_value(d, "job_seconds_count", 3)
        text = d.scrape_text()
        assert "# HELP job_seconds Job time.\n# TYPE job_seconds histogram\n" in text
        assert 'job_seconds_bucket{le="1"} 1\njob_seconds_bucket{le="5"} 2\njob_seconds_bucket{le="+Inf"} 3\n' in text
    finally:
        d.stop()


def test_sd_notify_ready_status_and_watchdog(tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(10)
        env = os.environ.copy()
        env.update({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"})
        d = start_daemon(tmp_path, env=env)
        try:
            messages = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (
                    "READY=1" in messages and "WATCHDOG=1" in messages and any(m.startswith("STATUS=") for m in messages)):
                messages += notify.recv(4096).decode().split("\n")
            assert "READY=1" in messages
            assert "WATCHDOG=1" in messages
            status = next(m for m in messages if m.startswith("STATUS="))
            assert status.startswith("STATUS=0 series, 0 samples applied")
        finally:
            d.stop()
        messages = []
        try:
            while True:
                messages += notify.recv(4096).decode().split("\n")
        except socket.timeout:
            pass
        except OSError:
            pass
        assert "STOPPING=1" in messages


def http_get(port: int, path: str = "/metrics", headers: dict | None = None) -> tuple[int, dict, bytes]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()  # http.client de-chunks
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def test_openmetrics_when_the_scraper_asks_for_it(daemon):
    daemon.send(counter("p2p.cache.hits", 4, {"cache_type": "chunk"}))
    daemon.send(counter("p2p.image.downloads.total", 2))
    wait_value(daemon, "p2p_image_downloads_total", 2)
    status, headers, body = http_get(daemon.port, headers={"Accept": PROMETHEUS_ACCEPT})
    text = body.decode()
    assert status == 200
    assert headers["content-type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert text.endswith("# EOF\n")
    assert "# TYPE p2p_cache_hits unknown\np2p_cache_hits{cache_type=\"chunk\"} 4\n" in text
    assert "# TYPE p2p_image_downloads counter\np2p_image_downloads_total 2\n" in text
    assert "# TYPE p2pmetricsd_datagrams_received counter\np2pmetricsd_datagrams_received_total 2\n" in text
    # The OpenMetrics body is parsed by the real Prometheus in test_contrib (it scrapes with this
    # Accept header); here: plain text stays the default for everyone else.
    _, headers, _ = http_get(daemon.port)
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_gzip_round_trip_small_and_sliced(daemon):
    import gzip
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for i in range(5000):
            s.sendto(counter("p2p.bytes_transferred.total", i + 1, {"peer": f"peer-{i:05d}", "node": "n1"}), daemon.socket_path)
    wait_value(daemon, "p2pmetricsd_series", 5000)
    _, plain_headers, plain = http_get(daemon.port)
    status, headers, packed = http_get(daemon.port, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip" and "content-encoding" not in plain_headers
    assert int(headers["content-length"]) == len(packed)  # large: compressed slice by slice, sent with its length
    unpacked = gzip.decompress(packed).decode()
    assert len(packed) * 5 < len(unpacked)
    series = lambda text: {k: v for k, v in parse_exposition(text).items() if not k[0].startswith("p2pmetricsd_")}
    assert series(unpacked) == series(plain.decode())
    # q=0 refuses gzip.
    daemon_small = http_get(daemon.port, "/metrics", {"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in daemon_small[1]
    status, headers, packed = http_get(daemon.port, headers={"Accept-Encoding": "gzip", "Accept": PROMETHEUS_ACCEPT})
    assert gzip.decompress(packed).decode().endswith("# EOF\n")


def test_topk_and_distinct_end_to_end(daemon):
    def topk(key):
        return b"\xf5\x01" + string("p2p.chunks.requested") + b"\x00\x63\x00" + string(key)

    def distinct(key):
        return b"\xf5\x01" + string("p2p.chunks.unique") + b"\x00\x53\x00" + string(key)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for i in range(300):
            s.sendto(topk("sha256:hot" if i % 3 == 0 else f"sha256:c{i % 40}"), daemon.socket_path)
            s.sendto(distinct(f"sha256:c{i % 120}"), daemon.socket_path)
    wait_value(daemon, "p2pmetricsd_datagrams_received_total", 600)
    m = daemon.scrape()
    assert m[("p2p_chunks_requested", frozenset({"key": "sha256:hot"}.items()))] == 100
    # HyperLogLog (2^12 registers, seeded per process): within 3 standard errors (3 × 1.6 %).
    assert abs(m[("p2p_chunks_unique", frozenset())] - 120) <= 120 * 0.05
    assert sum(1 for (n, _) in m if n == "p2p_chunks_requested") == 10  # K = 10 by default
