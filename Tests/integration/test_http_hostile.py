"""Hostile and unusual HTTP clients, and ingest under scrape load (issues 14 and 19).

Each attack is reproduced against the built daemon with its exact expectation. Figures that depend
on the shared machine (drop ratios, latencies) are printed and asserted only with generous bounds.
"""
from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import socket
import threading
import time

import pytest

from conftest import parse_exposition, start_daemon
from wire import counter


def config(tmp_path, **content) -> str:
    path = tmp_path / "http-config.json"
    path.write_text(json.dumps(content))
    return str(path)


def fill(daemon, n: int, name: str = "p2p.bytes_transferred.total") -> None:
    """n counter series with long-ish labels (blocking sends: all of them arrive)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(counter(name, i + 1, {"peer": f"peer-{i:06d}", "zone": "z" * 40}), daemon.socket_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and daemon.value("p2pmetricsd_series") != n:
        time.sleep(0.05)
    assert daemon.value("p2pmetricsd_series") == n


def read_all(s: socket.socket, timeout: float = 30) -> bytes:
    s.settimeout(timeout)
    raw = b""
    while chunk := s.recv(1 << 20):
        raw += chunk
    return raw


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        assert sep, "chunked body cut before its last chunk"
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return out
        out, rest = out + rest[:size], rest[size + 2:]


def decode_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Status line, headers (lower-case names) and the exact body: a response whose framing says
    it is incomplete fails the assertion instead of looking complete."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no complete head"
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), f"{len(body)} of {headers['content-length']} bytes"
    elif headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    else:
        raise AssertionError(f"body without a length or chunked framing: {lines[0]} {headers}")
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return lines[0], headers, body


def test_oversized_datagram_counts_its_real_size(daemon):
    big = counter("c", 1) + b"\x10\x00\x01" * 33_333  # 100,000-odd bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.sendto(big, daemon.socket_path)
        s.sendto(counter("c", 1), daemon.socket_path)
    assert daemon.wait_for("c", 1) == 1
    assert daemon.value("p2pmetricsd_datagrams_rejected_total", reason="oversized") == 1
    assert daemon.value("p2pmetricsd_bytes_received_total") == len(big) + len(counter("c", 1))


def test_half_closed_request_gets_the_whole_response(daemon):
    fill(daemon, 20_000)
    full = daemon.scrape_text().encode()
    assert len(full) > 1_000_000
    for version in (b"1.1", b"1.0"):
        with socket.create_connection(("127.0.0.1", daemon.port)) as s:
            s.sendall(b"GET /metrics HTTP/" + version + b"\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)  # what some clients do once their request is out
            status, headers, body = decode_response(read_all(s))
        assert status.endswith("200 OK")
        m = parse_exposition(body.decode())
        assert sum(1 for (name, _) in m if name == "p2p_bytes_transferred_total") == 20_000
        assert m[("p2p_bytes_transferred_total", frozenset({"peer": "peer-019999", "zone": "z" * 40}.items()))] == 20_000


def test_http_1_0_bodies_are_delimited_and_never_chunked(daemon):
    fill(daemon, 20_000)
    for accept_encoding in (b"", b"Accept-Encoding: gzip\r\n"):
        with socket.create_connection(("127.0.0.1", daemon.port)) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n" + accept_encoding + b"\r\n")
            raw = read_all(s)
        status, headers, body = decode_response(raw)
        assert status == "HTTP/1.0 200 OK"
        assert "transfer-encoding" not in headers
        assert "content-length" in headers  # a cut body can never look complete
        assert len(body) > 1_000_000 and body.endswith(b"\n")
        assert sum(1 for line in body.splitlines() if line.startswith(b"p2p_bytes_transferred_total{")) == 20_000
    # Keep-alive under 1.0: the same connection answers a second request after a full body.
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        s.settimeout(30)
        for _ in range(2):
            s.sendall(b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            raw = b""
            while b"\r\n\r\n" not in raw:
                raw += s.recv(65536)
            head = raw.partition(b"\r\n\r\n")[0].decode().lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            while len(raw.partition(b"\r\n\r\n")[2]) < length:
                raw += s.recv(1 << 20)
            assert len(raw.partition(b"\r\n\r\n")[2]) == length


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_idle_slow_and_half_open_connections_cannot_lock_out_a_scrape(tmp_path):
    """Issue 14: 300 idle half-open connections used to lock Prometheus out for the 10 s head
    timeout (cap 64). Now the oldest connection without a completed request is evicted."""
    d = start_daemon(tmp_path)
    fill(d, 5_000)
    held = []
    rss_before = rss_kib(d.proc.pid)
    try:
        for i in range(1_200):
            s = socket.create_connection(("127.0.0.1", d.port))
            if i % 4 == 1:
                s.sendall(b"GET /metr")  # a slow head
            elif i % 4 == 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # a scraper that never reads
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            elif i % 4 == 3:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /-/hea")  # one request done, then slow
            held.append(s)
        time.sleep(0.5)
        rss_held = rss_kib(d.proc.pid)
        for attempt in range(5):
            start = time.monotonic()
            status, headers, body = None, None, None
            with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                status, headers, body = decode_response(read_all(s, timeout=10))
            elapsed = time.monotonic() - start
            assert status == "HTTP/1.1 200 OK"
            m = parse_exposition(body.decode())
            assert sum(1 for (name, _) in m if name == "p2p_bytes_transferred_total") == 5_000
            assert elapsed < 5, f"scrape took {elapsed:.2f} s with {len(held)} hostile connections"
            print(f"lock-out: scrape {attempt} served in {elapsed * 1000:.0f} ms past 1,200 hostile connections")
        m = d.scrape()
        evicted = {dict(labels)["reason"]: v for (name, labels), v in m.items()
                   if name == "p2pmetricsd_http_connections_evicted_total"}
        assert set(evicted) == {"no_request", "idle", "stalled"}
        # The default cap is 1,024: every connection past it evicted one that never completed a
        # request (the idle ones and slow heads, oldest first), and the first scrape one more
        # (each later scrape took the slot its predecessor freed).
        assert evicted == {"no_request": 1_200 - 1_024 + 1, "idle": 0, "stalled": 0}
        assert m[("p2pmetricsd_http_connections_refused_total", frozenset())] == 0
        assert m[("p2pmetricsd_http_connections", frozenset())] <= 1_024
        print(f"lock-out: evicted {evicted}; RSS {rss_before} KiB → {rss_held} KiB with 1,024 connections held")
        assert rss_held - rss_before < 64 * 1024  # bounded per connection (no per-connection copy of a body)
    finally:
        for s in held:
            s.close()
        d.stop()


def never_reading_scraper(port: int, headers: bytes = b"") -> socket.socket:
    """A connection that asks for /metrics and never reads (a tiny receive buffer: the response
    stays stuck at the daemon)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    return s


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scraper(port: int, use_gzip: bool, seconds: float, results) -> None:
    import http.client
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if use_gzip else {})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 200 and len(body) > 0
        done += 1
    results.put(done)


def _blocking_sender(path: str, seconds: float, results) -> None:
    sent, deadline = 0, time.monotonic() + seconds
    datagram = counter("ingest.exact", 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        while time.monotonic() < deadline:
            s.sendto(datagram, path)
            sent += 1
    results.put(sent)


def _paced_sender(path: str, rate: int, seconds: float, results) -> None:
    """Non-blocking, at a fixed rate: what it could not send (EAGAIN) is a drop."""
    sent = dropped = 0
    datagram = counter("ingest.paced", 1)
    start = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while sent + dropped < due:
                try:
                    s.sendto(datagram, path)
                    sent += 1
                except BlockingIOError:
                    dropped += 1
            time.sleep(0.0005)
    results.put((sent, dropped))


def _run(ctx, target, args_list):
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, results)) for args in args_list]
    for p in procs:
        p.start()
    return procs, results


def _collect(procs, results):
    for p in procs:
        p.join(120)
    return [results.get(timeout=10) for _ in procs]


def test_ingest_keeps_priority_over_concurrent_scrapes(tmp_path):
    """Issue 19: 4 concurrent scrapers used to make a non-blocking sender lose 90 % (98 % with
    gzip). Scaled down: 30 k series, 8 scrapers (half gzip) in loops. Blocking senders must lose
    nothing; the non-blocking sender's drops are measured and reported (the machine is shared)."""
    ctx = multiprocessing.get_context("fork")
    d = start_daemon(tmp_path)
    try:
        fill(d, 30_000)
        seconds = 4.0
        # Drops of a paced non-blocking sender alone, then with 8 scrapers.
        alone = _collect(*_run(ctx, _paced_sender, [(d.socket_path, 10_000, seconds)]))[0]
        scrapers, scraped = _run(ctx, _scraper, [(d.port, i % 2 == 0, seconds + 1) for i in range(8)])
        loaded = _collect(*_run(ctx, _paced_sender, [(d.socket_path, 10_000, seconds)]))[0]
        scrapes = sum(_collect(scrapers, scraped))
        ratio = lambda r: r[1] / max(1, r[0] + r[1])
        print(f"priority: non-blocking sender at 10 k/s (qlen 10): drops alone {ratio(alone):.2%}, "
              f"with 8 scrapers {ratio(loaded):.2%} ({scrapes} scrapes of 30 k series in {seconds + 1:.0f} s)")
        # Blocking senders with the same scrapers: exact.
        base_sent = _collect(*_run(ctx, _blocking_sender, [(d.socket_path, 2.0)]))[0]
        scrapers, scraped = _run(ctx, _scraper, [(d.port, i % 2 == 0, 3.0) for i in range(8)])
        sent = sum(_collect(*_run(ctx, _blocking_sender, [(d.socket_path, 2.0), (d.socket_path, 2.0)])))
        scrapes = sum(_collect(scrapers, scraped))
        total = base_sent + sent
        assert d.wait_for("ingest_exact", total, timeout=30) == total
        assert d.value("ingest_paced") == alone[0] + loaded[0]  # every datagram the kernel accepted
        print(f"priority: blocking sender {base_sent / 2:.0f}/s alone, {sent / 2:.0f}/s for two with 8 scrapers "
              f"({scrapes} scrapes); all {total} applied")
        assert scrapes >= 8
        # The only robust bound (before: blocking sends 34x slower with the scrapers, 99 % drops).
        # The drop ratio is reported, not asserted: with 8 scraper processes reading ~100 MB/s on
        # 2 shared cores, the sender itself is short of CPU.
        assert sent * 10 > base_sent
    finally:
        d.stop()


def test_scrapers_that_never_read_cost_nothing_after_their_timeout(tmp_path):
    """Issue 19: 60 gzip scrapers of a big store that never read kept the daemon at 100 % CPU
    and made blocking sends 150x slower. Now they share renderings, cost no CPU while stalled,
    hold bounded memory, and are closed after the send timeout."""
    ctx = multiprocessing.get_context("fork")
    d = start_daemon(tmp_path, "--config", config(tmp_path, limits={"request_timeout_seconds": 3, "idle_timeout_seconds": 3}))
    held = []
    try:
        fill(d, 30_000)
        base_sent = _collect(*_run(ctx, _blocking_sender, [(d.socket_path, 1.0)]))[0]
        rss_before = rss_kib(d.proc.pid)
        for i in range(60):
            held.append(never_reading_scraper(d.port, b"Accept-Encoding: gzip\r\n"))
            if i % 10 == 9:
                time.sleep(0.2)  # in waves: several renderings, some held by stalled clients
        time.sleep(1.0)
        cpu_start = cpu_seconds(d.proc.pid)
        stalled_sent = _collect(*_run(ctx, _blocking_sender, [(d.socket_path, 1.0)]))[0]
        time.sleep(0.5)
        cpu = cpu_seconds(d.proc.pid) - cpu_start
        rss_held = rss_kib(d.proc.pid)
        print(f"never-reading: 60 gzip scrapers held; daemon CPU {cpu:.2f} s over 1.5 s (of which a 1 s blocking "
              f"send at {stalled_sent}/s vs {base_sent}/s before); RSS {rss_before} → {rss_held} KiB")
        assert stalled_sent * 10 > base_sent  # not starved (was 150x slower)
        assert rss_held - rss_before < 128 * 1024
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and d.value("p2pmetricsd_http_connections") != 1:
            time.sleep(0.2)
        # Only the scrape asking is left: the 60 were closed by the send timeout (a body the
        # kernel could not take) or the idle timeout (a small gzip body the kernel buffered).
        assert d.value("p2pmetricsd_http_connections") == 1
        for s in held:
            s.settimeout(5)
            try:
                while s.recv(1 << 16):
                    pass
            except ConnectionResetError:
                pass
        total = base_sent + stalled_sent
        assert d.wait_for("ingest_exact", total) == total
    finally:
        for s in held:
            s.close()
        d.stop()


def _text_flooder(path: str, seconds: float, results) -> None:
    datagram = b"flood.t:1|c\n" * 5_000  # 60,000 bytes: 5,000 lines of work per datagram
    sent, deadline = 0, time.monotonic() + seconds
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        while time.monotonic() < deadline:
            s.sendto(datagram, path)
            sent += 1
    results.put(sent)


def in_own_namespace(scenario, tmp_path, qlen: int = 512):
    """Runs `scenario(daemon, ctx)` in a forked child inside a new network namespace, whose own
    net.unix.max_dgram_qlen is raised (to the contrib value, 512, by default) with the daemon
    started there; returns what the scenario returns (it must be picklable)."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()

    def child() -> None:
        import ctypes
        import subprocess
        try:
            assert ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0, "unshare(CLONE_NEWNET) failed"
            open("/proc/sys/net/unix/max_dgram_qlen", "w").write(str(qlen))
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            d = start_daemon(tmp_path)
            try:
                out.put(("ok", scenario(d, ctx)))
            finally:
                d.stop()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out.put(("error", repr(e)))

    process = ctx.Process(target=child)
    process.start()
    status, result = out.get(timeout=600)
    process.join(30)
    assert status == "ok", result
    return result


def _flood_scenario(d, ctx):
    """Three blocking senders keep the queue full of heavy datagrams; /-/healthy is timed meanwhile."""
    import urllib.request
    procs, results = _run(ctx, _text_flooder, [(d.socket_path, 6.0) for _ in range(3)])
    time.sleep(1.0)
    latencies = []
    for _ in range(20):
        start = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/-/healthy", timeout=120) as r:
            assert r.read() == b"OK\n"
        latencies.append(time.monotonic() - start)
        time.sleep(0.1)
    sent = sum(_collect(procs, results))
    return latencies, sent, d.wait_for("flood_t", sent * 5_000, timeout=120)


def test_healthy_is_served_within_milliseconds_under_a_flood(tmp_path):
    """Issue 19: the ingest loop must yield after a bounded amount of work, so that /-/healthy and
    scrapes are served while senders keep the queue full of heavy datagrams."""
    latencies, sent, applied = in_own_namespace(_flood_scenario, tmp_path)
    latencies.sort()
    print(f"flood: /-/healthy under 3 blocking senders of 60 KB text datagrams (qlen 512): median "
          f"{latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
          f"{sent} datagrams = {sent * 5_000} lines, all applied; all: {[round(l * 1000) for l in latencies]}")
    assert applied == sent * 5_000
    assert latencies[-1] < 5.0  # generous (a shared machine, a debug build); it was 12-17 s before the fix


def test_a_response_that_closes_is_not_destroyed_by_unread_input(daemon):
    """Closing with unread input sends a reset, which can destroy the response in flight: the
    daemon shuts its side down after the last byte and discards input until the client closes."""
    fill(daemon, 20_000)
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        # A request with a body the daemon never reads: answered, then the connection closes.
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n")
        time.sleep(0.05)
        s.sendall(b"x" * 400_000)
        time.sleep(0.5)  # the response is sent meanwhile, and unread input waits at the daemon
        status, headers, body = decode_response(read_all(s))
    assert status == "HTTP/1.1 200 OK" and headers["connection"] == "close"
    assert sum(1 for line in body.splitlines() if line.startswith(b"p2p_bytes_transferred_total{")) == 20_000


def test_slow_readers_cannot_pin_unbounded_renderings(daemon):
    """Each never-reading scraper holds the whole rendering it was given; one after the other they
    would pin a new one each. Past 64 MiB of held renderings the oldest holders are closed."""
    from wire import MAGIC, series, uvarint
    n = 60_000
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for start in range(0, n, 500):
            out = bytearray(MAGIC)
            for k, i in enumerate(range(start, start + 500)):
                out += series("p2p.bytes_transferred.total", {"peer": f"peer-{i:06d}", "zone": "z" * 20})
                out += b"\x10" + uvarint(k) + uvarint(i + 1)
            s.sendto(bytes(out), daemon.socket_path)
    assert daemon.wait_for("p2pmetricsd_series", n) == n
    body_bytes = len(daemon.scrape_text())
    rss_before = rss_kib(daemon.proc.pid)
    held = []
    try:
        for _ in range(30):
            held.append(never_reading_scraper(daemon.port))
            # A scrape of our own returns once that rendering is done: the next one gets a new one.
            daemon.scrape_text()
        rss_held = rss_kib(daemon.proc.pid)
        m = daemon.scrape()
        stalled = m[("p2pmetricsd_http_connections_evicted_total", frozenset({"reason": "stalled"}.items()))]
        print(f"pinning: 30 never-reading scrapers of a {body_bytes / 1e6:.1f} MB body: {stalled:.0f} closed, "
              f"RSS {rss_before} → {rss_held} KiB")
        assert 30 * body_bytes > 64 << 20  # without the bound they would pin more than 64 MiB
        assert stalled >= 1
        assert (rss_held - rss_before) * 1024 < (64 << 20) + 8 * body_bytes
    finally:
        for s in held:
            s.close()


def _priority_scenario(d, ctx):
    fill(d, 30_000)
    alone = _collect(*_run(ctx, _paced_sender, [(d.socket_path, 10_000, 4.0)]))[0]
    scrapers, scraped = _run(ctx, _scraper, [(d.port, i % 2 == 0, 5.0) for i in range(4)])
    loaded = _collect(*_run(ctx, _paced_sender, [(d.socket_path, 10_000, 4.0)]))[0]
    scrapes = sum(_collect(scrapers, scraped))
    return alone, loaded, scrapes, d.wait_for("ingest_paced", alone[0] + loaded[0])


def test_ingest_priority_at_the_contrib_queue_length(tmp_path):
    """Issue 19 at the contrib queue length (512): 4 scrapers used to make a non-blocking sender
    lose 27 % (80 % with gzip); the previous renderer lost 42 % here. With 51 ms of queue at this
    rate, only a loop that stops draining loses much: the bound is loose for a shared machine."""
    alone, loaded, scrapes, applied = in_own_namespace(_priority_scenario, tmp_path)
    ratio = lambda r: r[1] / max(1, r[0] + r[1])
    print(f"priority at qlen 512: non-blocking sender at 10 k/s drops {ratio(alone):.2%} alone, "
          f"{ratio(loaded):.2%} with 4 scrapers (2 gzip; {scrapes} scrapes of 30 k series in 5 s)")
    assert applied == alone[0] + loaded[0]
    assert ratio(loaded) < 0.15


def test_a_connection_is_refused_only_when_every_other_is_busy_and_counted(tmp_path):
    d = start_daemon(tmp_path, "--config", config(tmp_path, limits={"max_http_connections": 2}))
    try:
        fill(d, 30_000)
        busy = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(2)]
        for s in busy:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.05)  # both are being rendered for or sent to, with progress: neither may go
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as extra:
            extra.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert extra.recv(100) == b""  # refused: closed at once
            except ConnectionResetError:
                pass
        for s in busy:  # the busy ones are served whole
            status, _, body = decode_response(read_all(s))
            assert status == "HTTP/1.1 200 OK"
            assert sum(1 for line in body.splitlines() if line.startswith(b"p2p_bytes_transferred_total{")) == 30_000
            s.close()
        m = d.scrape()
        assert m[("p2pmetricsd_http_connections_refused_total", frozenset())] == 1
        assert sum(v for (name, _), v in m.items() if name == "p2pmetricsd_http_connections_evicted_total") == 0
    finally:
        d.stop()


# --- Renderings held by readers of big bodies (issue 19's soak bug) --------------------------

WIDE_SERIES = 4_500  # 16 labels of 1 KiB each: a plain body of ~74 MB, over the 64 MiB floor


def hwm_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def wide_daemon(tmp_path_factory):
    """A daemon holding WIDE_SERIES series of 16 × 1 KiB labels (what the hostile soak's bursts
    send), shared by the tests below (each reads its own figures)."""
    d = start_daemon(tmp_path_factory.mktemp("wide"))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for i in range(WIDE_SERIES):
                labels = {f"l{k:02d}": f"{i:06d}" + chr(97 + k) * 1018 for k in range(16)}
                s.sendto(counter("wide.c", 1, labels), d.socket_path)
        assert d.wait_for("p2pmetricsd_series", WIDE_SERIES, timeout=60) == WIDE_SERIES
        yield d
    finally:
        d.stop()


class PacedScrape:
    """A plain `GET /metrics` read at a steady pace (`chunk` bytes every `interval` seconds, so
    the daemon sees write progress several times a second) until `hurry` is set, then at full
    speed to the end. Records the body's length, its Content-Length and its first bytes."""

    def __init__(self, port: int, hurry: threading.Event, chunk: int = 256 * 1024, interval: float = 0.1,
                 headers: bytes = b""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        self.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:  # the head comes once the rendering is done
            chunk_in = self.sock.recv(65536)
            assert chunk_in, "closed before the head"
            raw += chunk_in
        head, _, self.start = raw.partition(b"\r\n\r\n")
        self.length = int(head.decode().lower().split("content-length:")[1].split("\r\n")[0])
        self.received = len(self.start)
        self.lines = 0
        self.error: str | None = None
        self.hurry, self.chunk, self.interval = hurry, chunk, interval
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        tail = self.start[-6:]  # one byte short of the pattern: a match is never counted twice
        self.lines = self.start.count(b"\nwide_c")
        try:
            while self.received < self.length:
                want = min(self.chunk, self.length - self.received) if not self.hurry.is_set() else 1 << 20
                data = self.sock.recv(want)
                if not data:
                    break
                self.received += len(data)
                self.lines += (tail + data).count(b"\nwide_c")
                tail = (tail + data)[-6:]
                if len(self.start) < 65536:
                    self.start += data[:65536 - len(self.start)]
                if not self.hurry.is_set():
                    time.sleep(self.interval)
        except OSError as e:
            self.error = repr(e)
        finally:
            self.sock.close()

    def finish(self) -> None:
        self.thread.join(120)

    @property
    def rendering(self) -> int:
        """Which rendering this body is: the 200 responses counted when it began (self-metrics
        open every rendering, and each new scrape counts one before it asks)."""
        import re
        found = re.search(rb'\np2pmetricsd_http_responses_total\{code="200"\} (\d+)\n', self.start)
        assert found, f"no 200 responses count in the body's first bytes: {self.start[:4096]!r}"
        return int(found.group(1))


def stalled_evictions(d) -> float:
    with urllib_gzip_get(d.port) as body:
        m = parse_exposition(body)
    return m[("p2pmetricsd_http_connections_evicted_total", frozenset({"reason": "stalled"}.items()))]


class urllib_gzip_get:
    """A gzip scrape read whole (its rendering is small: it cannot hold much itself)."""

    def __init__(self, port: int):
        import urllib.request
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=120) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            self.raw = r.read()

    def __enter__(self) -> str:
        return gzip.decompress(self.raw).decode()

    def __exit__(self, *exc) -> None:
        pass


def test_a_reading_scraper_of_a_body_over_the_budget_is_never_cut(wide_daemon):
    """The hostile soak's bug: a scraper steadily reading a plain body of over 64 MiB was closed
    (body shorter than its Content-Length, counted as `stalled`) when a newer, smaller rendering —
    a concurrent gzip scrape — completed. A reader making progress is never cut now."""
    d = wide_daemon
    stalled_before = stalled_evictions(d)
    hurry = threading.Event()
    reader = PacedScrape(d.port, hurry)  # ~2.5 MB/s until the gzip scrape is done
    assert reader.length > 64 << 20
    with urllib_gzip_get(d.port) as body:  # a newer, much smaller rendering completes meanwhile
        assert body.count("\nwide_c{") == WIDE_SERIES
    mid_body = reader.received < reader.length
    hurry.set()
    reader.finish()
    print(f"big body: plain {reader.length / 1e6:.1f} MB read at 2.5 MB/s while a gzip scrape completed "
          f"(reader at {'mid-body' if mid_body else 'the end'}): {reader.received / 1e6:.1f} MB received; "
          f"daemon peak RSS {hwm_kib(d.proc.pid) / 1024:.1f} MiB")
    assert mid_body  # the scenario holds: the small rendering completed while the big one was being read
    assert reader.error is None and reader.received == reader.length, \
        f"cut: {reader.received} of {reader.length} bytes ({reader.error})"
    assert reader.lines == WIDE_SERIES
    assert stalled_evictions(d) == stalled_before


def test_readers_making_progress_cannot_pin_more_than_two_big_renderings(wide_daemon):
    """Hostile side of the fix: readers that keep reading (so none may be cut), each asking while
    the previous one holds its rendering, would pin a new ~74 MB rendering each. Past the budget
    (max(64 MiB, 2 × the largest held)), a new scrape is served the newest held rendering of its
    format and encoding instead: two renderings, whatever the number of such readers."""
    d = wide_daemon
    stalled_before = stalled_evictions(d)
    rss_before = rss_kib(d.proc.pid)
    hurry = threading.Event()
    readers = []
    try:
        for _ in range(5):
            readers.append(PacedScrape(d.port, hurry))
        rss_held = rss_kib(d.proc.pid)
    finally:
        hurry.set()
        for r in readers:
            r.finish()
    renderings = [r.rendering for r in readers]
    print(f"pinning by progressing readers: 5 readers of a {readers[0].length / 1e6:.1f} MB body, renderings "
          f"{renderings}; RSS {rss_before / 1024:.1f} → {rss_held / 1024:.1f} MiB while held, "
          f"peak {hwm_kib(d.proc.pid) / 1024:.1f} MiB")
    for r in readers:  # none was cut
        assert r.error is None and r.received == r.length and r.lines == WIDE_SERIES
    assert len(set(renderings)) == 2 and renderings[2:] == [renderings[1]] * 3, renderings
    assert stalled_evictions(d) == stalled_before
    assert (rss_held - rss_before) * 1024 < 3 * readers[0].length  # two renderings (and slack), not five


def test_a_shared_rendering_never_takes_a_scraper_back_in_time(wide_daemon):
    """Sharing a held rendering past the budget must never serve one older than a rendering of
    the same format already sent: a scraper would see its counters go back (a reset). Only the
    latest completed rendering of a format and encoding is shared; if nobody holds it any more,
    a new one is made."""
    d = wide_daemon
    stalled_before = stalled_evictions(d)
    slow = threading.Event()
    fast = threading.Event()
    fast.set()
    held = [PacedScrape(d.port, slow)]  # an old plain rendering, held by a slow reader
    first = PacedScrape(d.port, fast)  # a scraper reads a newer one whole
    first.finish()
    # OpenMetrics renderings held by other slow readers: the held renderings pass the budget.
    for _ in range(2):
        held.append(PacedScrape(d.port, slow, headers=b"Accept: application/openmetrics-text; version=1.0.0\r\n"))
    second = PacedScrape(d.port, fast)  # the same scraper again
    second.finish()
    slow.set()
    for r in held:
        r.finish()
    print(f"back in time: slow plain reader on rendering {held[0].rendering}, OpenMetrics ones on "
          f"{[r.length for r in held[1:]]} bytes, the scraper got "
          f"{first.rendering} then {second.rendering}")
    for r in [*held, first, second]:
        assert r.error is None and r.received == r.length and r.lines == WIDE_SERIES
    assert held[0].rendering < first.rendering < second.rendering
    assert stalled_evictions(d) == stalled_before
