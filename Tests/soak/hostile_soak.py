#!/usr/bin/env python3
"""Soak of mixed hostile and normal traffic against the release p2pmetricsd (issue 19, "Tests").

Starts the release daemon (socket in a temporary directory, a free loopback port, a state file,
a config with small TTLs and default limits) and, for --duration seconds (default 3600), runs at
once:

  normal   3 blocking senders of seed-shaped binary datagrams (p2p.bytes_transferred.total and
           p2p.chunks_transferred.total counters with labels, p2p.transfers.active gauge adds,
           p2p.transfer.duration observations), every sent value tallied exactly;
  hostile  random garbage datagrams and oversized ones; wide series (16 labels of 1,000 bytes)
           in bursts that fill the memory budget; unique-name churn; text StatsD amplification
           (`|h|@0.01`, 256 values and 64 tags a line, and over the caps); sets with keys over
           1,024 bytes and unique set series; idle, half-open and never-reading HTTP connections;
           a gzip scraper reading whole bodies; SIGHUP every minute;
  monitor  every --interval seconds: /-/healthy latency, a /metrics scrape checked against the
           tallies (every normal total at most what was sent, never going down), RSS, series,
           series memory, rejections; RSS and /-/healthy are also sampled every second.

At the end: senders stop, the queue drains (datagrams received = datagrams the kernel accepted),
every normal total must be EXACT, the daemon never died, RSS stayed under --rss-bound-mib
(448 MiB: the contrib unit's MemoryMax=512M minus 64 MiB), SIGTERM exits 0 with the shutdown
line's count equal to what was sent, and a restart from the state file brings back every counter
exactly. A summary table is printed; the exit status is non-zero if any invariant was violated.

Standard library only. Loopback and Unix sockets only; every loop is bounded by the deadline;
every process started is stopped.

    swift build -c release
    python3 Tests/soak/hostile_soak.py --duration 3600
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
from wire import MAGIC, datagram, series, string, uvarint  # noqa: E402

MIB = 1 << 20
PEERS = [f"node-{i}" for i in range(8)]
ARTIFACTS = ["image", "layer"]
DURATION_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ", time.gmtime()) + msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parse(text: str, prefixes=("p2p_", "p2pmetricsd_")) -> dict:
    """{(name, frozenset(labels)): value string} for the lines whose name has one of the prefixes
    (the hostile families can be 100 MB; they are skipped unparsed)."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"unparsable exposition line: {line[:200]!r}")
        name, labels, value = m.groups()
        lab = frozenset((k, fmt_le(float(v)) if k == "le" and v != "+Inf" else v)
                        for k, v in _LABEL.findall(labels)) if labels else frozenset()
        key = (name, lab)
        if key in out:
            raise ValueError(f"sample written twice: {line[:200]!r}")
        out[key] = value
    return out


def num(v: str | None) -> float | int | None:
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return float(v)


class Violations:
    def __init__(self):
        self.lock = threading.Lock()
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        with self.lock:
            if len(self.items) < 200:
                self.items.append(msg)
        log("VIOLATION: " + msg)


class Tally:
    """What one normal sender sent. Incremented BEFORE each send (so a scrape can never show more
    than a snapshot taken after it), rolled back if the send failed."""

    def __init__(self):
        self.counters: dict[tuple, int] = {}   # (exposed name, labels) -> total
        self.gauge = 0                          # p2p.transfers.active, net
        self.hist_count: dict[str, int] = {}    # peer -> observations
        self.hist_sum: dict[str, int] = {}      # peer -> sum in 1/8 s
        self.hist_buckets: dict[tuple, int] = {}  # (peer, bucket index or len) -> non-cumulative
        self.datagrams = 0


class Soak:
    def __init__(self, args):
        self.args = args
        self.v = Violations()
        self.stop = threading.Event()
        self.stop_hostile = threading.Event()
        self.tmp = Path(tempfile.mkdtemp(prefix="p2pm-soak-"))
        self.sock = str(self.tmp / "ingest.sock")
        self.state = self.tmp / "counters.state"
        self.port = free_port()
        self.tallies = [Tally() for _ in range(args.senders)]
        self.hostile_lock = threading.Lock()
        self.hostile = {}          # kind -> datagrams the kernel accepted
        self.hostile_failed = {}   # kind -> sends refused by the kernel (EMSGSIZE...)
        self.http = {}             # kind -> connections made
        self.rss: list[tuple[float, int]] = []
        self.healthy_ms: list[float] = []
        self.scrape_s: list[float] = []
        self.scrape_bytes_max = 0
        self.monitor_rows: list[dict] = []
        self.sighups = 0
        self.prev_totals: dict = {}
        self.proc = None

    # -- daemon -----------------------------------------------------------------------------
    def write_config(self) -> Path:
        cfg = {
            # Unique names and set series churn away; the normal families never expire.
            "default_ttl_seconds": self.args.churn_ttl,
            "metrics": {
                "p2p.transfer.duration": {"ttl_seconds": 31_536_000},
                "p2p.transfers.active": {"ttl_seconds": 31_536_000},
                "hostile.wide": {"type": "gauge", "help": "Soak: wide series.", "ttl_seconds": 3},
            },
        }
        path = self.tmp / "config.json"
        path.write_text(json.dumps(cfg))
        return path

    def terminate(self) -> int:
        """SIGTERM, then the exit status; killed (counted as a violation) if still running after 60 s."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.v.add("SIGTERM: still running after 60 s, killed")
            return self.proc.wait()

    def start_daemon(self) -> None:
        self.config = self.write_config()
        self.log_path = self.tmp / "p2pmetricsd.log"
        self.proc = subprocess.Popen(
            [self.args.binary, "--socket", self.sock, "--listen", f"127.0.0.1:{self.port}",
             "--state", str(self.state), "--config", str(self.config)],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"p2pmetricsd exited with {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                self.get("/-/healthy", 2)
                return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise SystemExit("p2pmetricsd did not serve in time")

    def get(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            if r.status != 200:
                raise OSError(f"{path}: HTTP {r.status}")
            return r.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- normal traffic ---------------------------------------------------------------------
    def normal_sender(self, idx: int) -> None:
        t = self.tallies[idx]
        rng = random.Random(1000 + idx)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.settimeout(30)
        try:
            while not self.stop.is_set():
                for _ in range(100):
                    peer = rng.choice(PEERS)
                    art = rng.choice(ARTIFACTS)
                    if rng.random() < 0.5:
                        # A transfer starts: active +1, bytes counted.
                        nbytes = rng.randrange(1, 1 << 24)
                        chunks = rng.randrange(1, 64)
                        data = datagram([
                            ("gauge_add", "p2p.transfers.active", 1, {}),
                            ("counter_add", "p2p.bytes_transferred.total", nbytes, {"artifact_type": art, "peer": peer}),
                            ("counter_add", "p2p.chunks_transferred.total", chunks, {}),
                        ])
                        changes = [("g", 1), (("p2p_bytes_transferred_total", frozenset({("artifact_type", art), ("peer", peer)})), nbytes),
                                   (("p2p_chunks_transferred_total", frozenset()), chunks)]
                        hist = None
                    else:
                        # A transfer ends: active −1 (a double), one duration observation (k/8 s).
                        eighths = rng.randrange(0, 4801)
                        data = datagram([
                            ("gauge_add", "p2p.transfers.active", -1.0, {}),
                            ("histogram_observe", "p2p.transfer.duration", eighths / 8, {"peer": peer}),
                            ("counter_add", "p2p.image.downloads.total", 1, {}),
                        ])
                        changes = [("g", -1), (("p2p_image_downloads_total", frozenset()), 1)]
                        hist = (peer, eighths)
                    self._apply(t, changes, hist, +1)
                    try:
                        s.sendto(data, self.sock)
                    except OSError as e:
                        self._apply(t, changes, hist, -1)
                        if not self.stop.is_set() or self.alive():
                            self.v.add(f"normal sender {idx}: send failed: {e!r}")
                        return
                time.sleep(self.args.normal_pause)
        finally:
            s.close()

    @staticmethod
    def _apply(t: Tally, changes, hist, sign: int) -> None:
        t.datagrams += sign
        for key, v in changes:
            if key == "g":
                t.gauge += sign * v
            else:
                t.counters[key] = t.counters.get(key, 0) + sign * v
        if hist:
            peer, eighths = hist
            t.hist_count[peer] = t.hist_count.get(peer, 0) + sign
            t.hist_sum[peer] = t.hist_sum.get(peer, 0) + sign * eighths
            value = eighths / 8
            b = next((i for i, le in enumerate(DURATION_BUCKETS) if value <= le), len(DURATION_BUCKETS))
            t.hist_buckets[(peer, b)] = t.hist_buckets.get((peer, b), 0) + sign

    def expected(self) -> dict:
        """The exact exposition of the normal families, from the tallies (summed over senders)."""
        exp: dict = {}
        gauge = 0
        for t in self.tallies:
            for k, v in list(t.counters.items()):
                exp[k] = exp.get(k, 0) + v
            gauge += t.gauge
            for peer, c in list(t.hist_count.items()):
                k = ("p2p_transfer_duration_count", frozenset({("peer", peer)}))
                exp[k] = exp.get(k, 0) + c
            for peer, s8 in list(t.hist_sum.items()):
                k = ("p2p_transfer_duration_sum", frozenset({("peer", peer)}))
                exp[k] = exp.get(k, 0) + s8 / 8
            buckets: dict = {}
            for (peer, b), c in list(t.hist_buckets.items()):
                buckets[(peer, b)] = buckets.get((peer, b), 0) + c
            for (peer, b), c in buckets.items():
                # cumulative: an observation in bucket b counts in every le >= bound b, and +Inf
                for j in range(b, len(DURATION_BUCKETS) + 1):
                    le = "+Inf" if j == len(DURATION_BUCKETS) else fmt_le(DURATION_BUCKETS[j])
                    k = ("p2p_transfer_duration_bucket", frozenset({("peer", peer), ("le", le)}))
                    exp[k] = exp.get(k, 0) + c
        exp[("p2p_transfers_active", frozenset())] = gauge
        return exp

    # -- hostile traffic --------------------------------------------------------------------
    def hsend(self, s: socket.socket, kind: str, data: bytes) -> None:
        try:
            s.sendto(data, self.sock)
            ok = True
        except OSError:
            ok = False
        with self.hostile_lock:
            d = self.hostile if ok else self.hostile_failed
            d[kind] = d.get(kind, 0) + 1

    def hostile_loop(self, name: str, step, pause: float) -> None:
        rng = random.Random(hash(name) & 0xFFFF)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.settimeout(30)
        n = 0
        try:
            while not self.stop_hostile.is_set():
                step(s, rng, n)
                n += 1
                self.stop_hostile.wait(pause)
        except Exception as e:  # a bug in the soak itself must not pass silently
            self.v.add(f"hostile {name} crashed: {e!r}")
        finally:
            s.close()

    def garbage(self, s, rng, n) -> None:
        for _ in range(20):
            r = rng.random()
            if r < 0.4:
                data = rng.randbytes(rng.randrange(1, 2000))
            elif r < 0.8:
                data = MAGIC + rng.randbytes(rng.randrange(0, 2000))
            else:  # a valid start, then an absurd length or a truncation
                body = series("hostile.trunc", {"k": "v" * rng.randrange(0, 50)}) + b"\x10\x00"
                data = MAGIC + (body[:rng.randrange(1, len(body))] if rng.random() < 0.5
                                else body + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
            self.hsend(s, "garbage", data)
        if n % 10 == 0:
            self.hsend(s, "oversized", rng.randbytes(100_007))

    def wide(self, s, rng, n) -> None:
        # A burst every --wide-every s: 9,000 unique series of 16 × 1,000-byte labels (more than
        # the default 128 MiB budget holds), then quiet while their 3 s TTL runs out.
        if n % max(1, int(self.args.wide_every)) != 0:
            return
        base = n * 10_000
        for i in range(self.args.wide_burst):
            if self.stop_hostile.is_set():
                return
            labels = {f"t{k:02d}": "v" * 1000 for k in range(15)}
            labels["t15"] = "w" * 992 + f"{base + i:08d}"
            self.hsend(s, "wide", MAGIC + series("hostile.wide", labels) + b"\x20\x00" + uvarint(1))

    def churn(self, s, rng, n) -> None:
        for b in range(10):
            lines = "\n".join(f"churn_{n}_{b:02d}_{i:03d}_a_long_unique_metric_name:1|g" for i in range(100))
            self.hsend(s, "churn", lines.encode())

    def amplification(self, s, rng, n) -> None:
        tags = ",".join(f"tag{k:02d}:" + "x" * 200 for k in range(64))
        values = ":".join(str(rng.randrange(1, 1000)) for _ in range(256))
        # accepted: 3 lines of 256 values @0.01 with 64 × 200-byte tags (each value weighs 100)
        self.hsend(s, "amplification", "\n".join(f"amp.h:{values}|h|@0.01|#{tags}" for _ in range(3)).encode())
        # refused by the caps: 300 values a line, 65 tags, and a 64 KiB datagram of 24 k values
        many = ":".join("1" for _ in range(300))
        self.hsend(s, "amplification", f"amp.h:{many}|h|@0.01".encode())
        self.hsend(s, "amplification", ("amp.h:1|h|@0.01|#" + tags + ",extra:1").encode())
        line = "amp.big:" + ":".join("1" for _ in range(250)) + "|h|@0.01"
        big = "\n".join(line for _ in range(65_000 // (len(line) + 1)))
        self.hsend(s, "amplification", big.encode())

    def sets(self, s, rng, n) -> None:
        self.hsend(s, "sets", "\n".join("hostile.set:" + "k" * 2000 + f"{i}|s" for i in range(20)).encode())
        self.hsend(s, "sets", "\n".join(f"hostile.uniq:k{i}|s|#u:{n}_{i}" for i in range(50)).encode())

    # -- hostile HTTP -----------------------------------------------------------------------
    def http_hostile(self) -> None:
        rng = random.Random(7)
        held: list[tuple[float, socket.socket]] = []
        try:
            while not self.stop_hostile.is_set():
                now = time.monotonic()
                keep = []
                for t0, c in held:
                    if now - t0 > 25:
                        c.close()
                    else:
                        keep.append((t0, c))
                held = keep
                for _ in range(20):
                    if len(held) >= self.args.http_held:
                        break
                    kind = rng.choice(["idle", "half_open", "never_reading", "never_reading_gzip", "slow_head"])
                    try:
                        c = socket.socket()
                        c.setblocking(True)
                        c.settimeout(5)
                        if kind.startswith("never_reading"):
                            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                        c.connect(("127.0.0.1", self.port))
                        if kind == "half_open":
                            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                        elif kind == "slow_head":
                            c.sendall(b"GET /met")
                        elif kind == "never_reading":
                            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                        elif kind == "never_reading_gzip":
                            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
                        held.append((now, c))
                        self.http[kind] = self.http.get(kind, 0) + 1
                    except OSError:
                        self.http["connect_failed"] = self.http.get("connect_failed", 0) + 1
                self.stop_hostile.wait(1.0)
        except Exception as e:
            self.v.add(f"hostile http crashed: {e!r}")
        finally:
            for _, c in held:
                c.close()

    def gzip_scraper(self) -> None:
        while not self.stop_hostile.is_set():
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{self.port}/metrics",
                                             headers={"Accept-Encoding": "gzip"})
                with urllib.request.urlopen(req, timeout=60) as r:
                    z = zlib.decompressobj(31) if r.headers.get("Content-Encoding") == "gzip" else None
                    while chunk := r.read(1 << 16):
                        if z:
                            z.decompress(chunk)
                    if z and not z.eof:
                        raise OSError("truncated gzip body")
                self.http["gzip_scrape"] = self.http.get("gzip_scrape", 0) + 1
            except Exception as e:
                if self.alive():
                    self.v.add(f"gzip scrape failed: {e!r}")
            self.stop_hostile.wait(3.0)

    # -- monitoring -------------------------------------------------------------------------
    def prober(self) -> None:
        """RSS and /-/healthy every second, from a separate process (this one's GIL, busy with
        the senders, would add its own waits to the latency); its lines are read back here."""
        self.probe_path = self.tmp / "probes.txt"
        self.probe_proc = subprocess.Popen(
            [sys.executable, __file__, "--probe", str(self.proc.pid), str(self.port), str(self.probe_path)])
        while not self.stop.is_set():
            if not self.alive():
                self.v.add(f"daemon died: exit {self.proc.returncode}")
                self.stop.set()
                self.stop_hostile.set()
                break
            self.stop.wait(1.0)
        self.probe_proc.terminate()
        self.probe_proc.wait(30)
        for line in self.probe_path.read_text().splitlines():
            t, rss, ms, err = line.split(" ", 3)
            if int(rss):
                self.rss.append((float(t), int(rss)))
            self.healthy_ms.append(float(ms))
            if err != "-" and self.alive():
                self.v.add(f"/-/healthy failed: {err}")

    def scrape(self) -> dict:
        """A whole /metrics scrape, read in 1 MiB reads (the hostile families can be 100 MB: only
        the normal and self-metric lines are parsed)."""
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=60) as r:
            if r.status != 200:
                raise OSError(f"/metrics: HTTP {r.status}")
            length = int(r.headers.get("Content-Length", -1))
            chunks = []
            while chunk := r.read(1 << 20):
                chunks.append(chunk)
        body = b"".join(chunks)
        size = len(body)
        kept = [line.decode() + "\n" for line in body.split(b"\n") if line.startswith((b"p2p_", b"p2pmetricsd_"))]
        del body, chunks
        self.scrape_s.append(time.monotonic() - t0)
        if length >= 0 and size != length:
            raise OSError(f"/metrics body {size} bytes of {length}")
        self.scrape_bytes_max = max(self.scrape_bytes_max, size)
        return parse("".join(kept))

    def check_progress(self, m: dict) -> None:
        exp = self.expected()  # snapshot taken AFTER the scrape: an upper bound
        for k, want in exp.items():
            if k[0] == "p2p_transfers_active":
                continue  # a gauge going up and down: exact only at the end
            got = num(m.get(k))
            if got is None:
                continue  # not sent yet when the scrape was taken
            if got > want:
                self.v.add(f"{k[0]}{dict(k[1])} = {got} > sent {want}")
            prev = self.prev_totals.get(k)
            if prev is not None and got < prev:
                self.v.add(f"{k[0]}{dict(k[1])} went down: {prev} -> {got}")
            self.prev_totals[k] = got

    def monitor_tick(self, start: float) -> None:
        t0 = time.monotonic()
        try:
            self.get("/-/healthy", 30)
            hms = (time.monotonic() - t0) * 1000
        except Exception as e:
            self.v.add(f"monitor /-/healthy failed: {e!r}")
            return
        try:
            m = self.scrape()
        except Exception as e:
            self.v.add(f"monitor scrape failed: {e!r}")
            return
        self.check_progress(m)
        row = {
            "t": round(time.monotonic() - start), "healthy_ms": round(hms, 1),
            "scrape_s": round(self.scrape_s[-1], 3),
            "rss_mib": round((rss_bytes(self.proc.pid) or 0) / MIB, 1),
            "series": num(m.get(("p2pmetricsd_series", frozenset()))),
            "series_mem_mib": round(num(m.get(("p2pmetricsd_series_memory_bytes", frozenset()))) / MIB, 1),
            "received": num(m.get(("p2pmetricsd_datagrams_received_total", frozenset()))),
            "mem_limit_refused": num(m.get(("p2pmetricsd_samples_rejected_total", frozenset({("reason", "memory_limit")})))),
            "http_conns": num(m.get(("p2pmetricsd_http_connections", frozenset()))),
        }
        self.monitor_rows.append(row)
        log("monitor " + " ".join(f"{k}={v}" for k, v in row.items()))

    # -- run --------------------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        self.start_daemon()
        log(f"p2pmetricsd pid {self.proc.pid} on {self.sock}, 127.0.0.1:{self.port}, state {self.state}; "
            f"duration {a.duration} s")
        start = time.monotonic()
        threads = [threading.Thread(target=self.normal_sender, args=(i,), daemon=True) for i in range(a.senders)]
        threads.append(threading.Thread(target=self.prober, daemon=True))
        # Normal series exist before the first burst fills the budget (as on a real node).
        for t in threads:
            t.start()
        want = len(PEERS) * len(ARTIFACTS) + len(PEERS)
        wait_until = time.monotonic() + 30
        while time.monotonic() < wait_until:
            m = self.scrape()
            have = sum(1 for k in m if k[0] in ("p2p_bytes_transferred_total", "p2p_transfer_duration_count"))
            if have >= want:
                break
            time.sleep(0.2)
        else:
            self.v.add("the normal series did not all exist within 30 s")
        hostile = [
            threading.Thread(target=self.hostile_loop, args=("garbage", self.garbage, 0.05), daemon=True),
            threading.Thread(target=self.hostile_loop, args=("wide", self.wide, 1.0), daemon=True),
            threading.Thread(target=self.hostile_loop, args=("churn", self.churn, 0.1), daemon=True),
            threading.Thread(target=self.hostile_loop, args=("amplification", self.amplification, 0.2), daemon=True),
            threading.Thread(target=self.hostile_loop, args=("sets", self.sets, 0.2), daemon=True),
            threading.Thread(target=self.http_hostile, daemon=True),
            threading.Thread(target=self.gzip_scraper, daemon=True),
        ]
        for t in hostile:
            t.start()
        deadline = start + a.duration
        next_tick = start + a.interval
        next_hup = start + a.sighup_every
        while time.monotonic() < deadline and not self.stop.is_set():
            time.sleep(max(0.0, min(next_tick, deadline) - time.monotonic()))
            if not self.alive():
                self.v.add(f"daemon died: exit {self.proc.returncode}")
                break
            if time.monotonic() >= next_hup:
                self.proc.send_signal(signal.SIGHUP)
                self.sighups += 1
                next_hup += a.sighup_every
            if time.monotonic() >= next_tick:
                self.monitor_tick(start)
                next_tick += a.interval
        elapsed = time.monotonic() - start
        log(f"traffic phase over after {elapsed:.0f} s; stopping senders")
        self.stop_hostile.set()
        for t in hostile:
            t.join(90)
        self.stop.set()
        for t in threads:
            t.join(90)
        stuck = [t.name for t in threads + hostile if t.is_alive()]
        if stuck:
            self.v.add(f"threads still running after 90 s: {stuck}")
        return self.finish(start, elapsed)

    def finish(self, start: float, elapsed: float) -> int:
        a = self.args
        sent_normal = sum(t.datagrams for t in self.tallies)
        sent_hostile = sum(self.hostile.values())
        sent = sent_normal + sent_hostile
        m = {}
        if self.alive():
            # Drain: every datagram the kernel accepted is read.
            deadline = time.monotonic() + 120
            got = None
            while time.monotonic() < deadline:
                m = self.scrape()
                got = num(m.get(("p2pmetricsd_datagrams_received_total", frozenset())))
                if got == sent:
                    break
                time.sleep(0.5)
            if got != sent:
                self.v.add(f"queue did not drain: received {got}, sent {sent}")
            for k, want in self.expected().items():
                g = num(m.get(k))
                if g != want:
                    self.v.add(f"final {k[0]}{dict(k[1])} = {g}, expected exactly {want}")
            if not m.get(("p2p_transfer_duration_count", frozenset({("peer", PEERS[0])}))):
                self.v.add("no normal histogram series at the end")
        else:
            self.v.add(f"daemon not alive at the end: exit {self.proc.returncode}")
        counters_expected = {k: v for k, v in self.expected().items()
                             if k[0] in ("p2p_bytes_transferred_total", "p2p_chunks_transferred_total",
                                         "p2p_image_downloads_total")}
        # SIGTERM: exit 0, the shutdown line counts every datagram, the state file is written.
        rc = self.terminate() if self.proc.poll() is None else None
        if rc != 0:
            self.v.add(f"exit status after SIGTERM: {rc}")
        logtext = self.log_path.read_text(errors="replace")
        shut = re.findall(r"shutdown: datagrams_received=(\d+)", logtext)
        if not shut or int(shut[-1]) != sent:
            self.v.add(f"shutdown line {shut[-1:] or 'missing'} != {sent} sent")
        reloads = logtext.count("SIGHUP: reloaded")
        if reloads != self.sighups:
            self.v.add(f"{self.sighups} SIGHUPs sent, {reloads} reloads logged")
        state_size = self.state.stat().st_size if self.state.exists() else 0
        if not state_size:
            self.v.add("no state file after SIGTERM")
        # A restart from the state file brings back every counter exactly.
        restored_ok = False
        if state_size:
            self.start_daemon()
            try:
                m2 = self.scrape()
                bad = [(k, num(m2.get(k)), v) for k, v in counters_expected.items() if num(m2.get(k)) != v]
                restored_ok = not bad
                for k, g, v in bad[:10]:
                    self.v.add(f"restored {k[0]}{dict(k[1])} = {g}, expected {v}")
            finally:
                rc2 = self.terminate()
                if rc2 != 0:
                    self.v.add(f"restarted daemon exit status {rc2}")
        # Figures.
        rss = [r for _, r in self.rss]
        rss_max = max(rss) if rss else 0
        if rss_max >= a.rss_bound_mib * MIB:
            self.v.add(f"RSS max {rss_max / MIB:.1f} MiB >= {a.rss_bound_mib} MiB")
        hl = sorted(self.healthy_ms)
        if hl and hl[-1] > a.healthy_bound_ms:
            self.v.add(f"/-/healthy max {hl[-1]:.0f} ms > {a.healthy_bound_ms} ms")
        rej = {(k[0].replace("p2pmetricsd_", "").replace("_total", ""), dict(k[1]).get("reason")): num(v)
               for k, v in m.items()
               if k[0] in ("p2pmetricsd_datagrams_rejected_total", "p2pmetricsd_samples_rejected_total",
                           "p2pmetricsd_text_lines_rejected_total", "p2pmetricsd_http_connections_evicted_total")
               and num(v)}
        def pct(p):
            return hl[min(len(hl) - 1, int(p * len(hl)))] if hl else float("nan")
        rows = [
            ("duration (traffic)", f"{elapsed:.0f} s ({elapsed / 60:.1f} min)"),
            ("datagrams normal", f"{sent_normal:,}"),
            ("datagrams hostile", f"{sent_hostile:,} (" + ", ".join(f"{k} {v:,}" for k, v in sorted(self.hostile.items())) + ")"),
            ("hostile sends the kernel refused", ", ".join(f"{k} {v:,}" for k, v in sorted(self.hostile_failed.items())) or "none"),
            ("datagrams received by the daemon", f"{num(m.get(('p2pmetricsd_datagrams_received_total', frozenset()))) or 0:,}"),
            ("samples applied", f"{num(m.get(('p2pmetricsd_samples_applied_total', frozenset()))) or 0:,}"),
            ("text lines received", f"{num(m.get(('p2pmetricsd_text_lines_received_total', frozenset()))) or 0:,}"),
            ("series expired", f"{num(m.get(('p2pmetricsd_series_expired_total', frozenset()))) or 0:,}"),
            ("hostile HTTP connections", ", ".join(f"{k} {v:,}" for k, v in sorted(self.http.items()))),
            ("SIGHUP reloads", f"{self.sighups}"),
        ]
        for (fam, reason), v in sorted(rej.items()):
            rows.append((f"{fam}{{{reason}}}", f"{v:,}"))
        rows += [
            ("RSS min / max", f"{min(rss) / MIB:.1f} / {rss_max / MIB:.1f} MiB (bound {a.rss_bound_mib} MiB)" if rss else "n/a"),
            ("series memory max", f"{max((r['series_mem_mib'] for r in self.monitor_rows), default=0)} MiB"),
            ("series max", f"{max((r['series'] or 0 for r in self.monitor_rows), default=0):,}"),
            ("/-/healthy p50 / p99 / max", f"{pct(0.5):.1f} / {pct(0.99):.1f} / {hl[-1] if hl else float('nan'):.1f} ms ({len(hl)} probes)"),
            ("/metrics scrape max", f"{max(self.scrape_s, default=0):.2f} s (largest body {self.scrape_bytes_max / MIB:.1f} MiB)"),
            ("normal totals exact at the end", "yes" if not [x for x in self.v.items if x.startswith("final")] else "NO"),
            ("SIGTERM exit status", f"{rc}"),
            ("state file", f"{state_size:,} bytes, counters restored exactly: {'yes' if restored_ok else 'NO'}"),
            ("violations", f"{len(self.v.items)}"),
        ]
        w = max(len(k) for k, _ in rows)
        print("\n| figure | value |\n|---|---|")
        for k, val in rows:
            print(f"| {k.ljust(w)} | {val} |")
        for x in self.v.items:
            print("VIOLATION: " + x)
        print(("FAIL" if self.v.items else "PASS") + f": {elapsed:.0f} s of mixed hostile and normal traffic")
        return 1 if self.v.items else 0


def fmt_le(b: float) -> str:
    """The daemon's spelling of a bucket bound (Prometheus style: 0.01, 1, 600)."""
    return repr(float(b)) if not float(b).is_integer() else str(int(b))


def probe(pid: int, port: int, path: str) -> None:
    """The prober process: one line a second, `monotonic rss_bytes healthy_ms error`."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(path, "a", buffering=1) as out:
        while True:
            r = rss_bytes(pid) or 0
            t0 = time.monotonic()
            err = "-"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=30) as resp:
                    resp.read()
            except Exception as e:
                err = repr(e).replace("\n", " ")
            out.write(f"{t0} {r} {(time.monotonic() - t0) * 1000:.2f} {err}\n")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--probe":
        probe(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=3600, help="seconds of traffic (default 3600)")
    p.add_argument("--binary", default=str(ROOT / ".build" / "release" / "p2pmetricsd"))
    p.add_argument("--interval", type=float, default=10, help="monitor period, seconds")
    p.add_argument("--senders", type=int, default=3)
    p.add_argument("--normal-pause", type=float, default=0.01, help="pause after every 100 normal datagrams")
    p.add_argument("--churn-ttl", type=int, default=5, help="default_ttl_seconds (unique names and sets)")
    p.add_argument("--wide-every", type=float, default=120, help="seconds between wide-series bursts")
    p.add_argument("--wide-burst", type=int, default=9000, help="wide series per burst")
    p.add_argument("--http-held", type=int, default=300, help="hostile HTTP connections held at once")
    p.add_argument("--sighup-every", type=float, default=60)
    p.add_argument("--rss-bound-mib", type=float, default=448)
    p.add_argument("--healthy-bound-ms", type=float, default=10_000)
    a = p.parse_args()
    if not os.path.exists(a.binary):
        print(f"{a.binary} is not built (swift build -c release)", file=sys.stderr)
        return 2
    soak = Soak(a)
    try:
        return soak.run()
    finally:
        soak.stop.set()
        soak.stop_hostile.set()
        if soak.proc and soak.proc.poll() is None:
            soak.proc.kill()
            soak.proc.wait()


if __name__ == "__main__":
    sys.exit(main())
