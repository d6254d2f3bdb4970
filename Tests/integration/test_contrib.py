"""contrib/ against the real tools: promtool, a real Prometheus scraping a real p2pmetricsd fed
through the C client, and the Grafana dashboard's queries.

The end-to-end test runs a scripted scenario of the guide's metrics through the C client
(ctypes over Clients/c/build/libp2pmetrics.so), lets a real Prometheus scrape the daemon with
contrib/prometheus/scrape.yml (retargeted, 1s interval) and evaluate the contrib rule files, then
checks every recording rule, every alert expression and every dashboard query through the HTTP
API against the values the scenario implies.

Exact rate ratios: every counter series of the scenario is created at 0 before Prometheus starts
(one raw datagram), so every series has the same scrape timestamps and starts from 0; rate()
then extrapolates all of them by the same factor, and the ratios of rates are exact.
"""
from __future__ import annotations

import ctypes
import json
import math
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import DAEMON_BIN, ROOT, free_port
from wire import datagram

CONTRIB = ROOT / "contrib"
PROM_DIR = CONTRIB / "prometheus"
RULE_FILES = [PROM_DIR / "p2p-recording.rules.yml", PROM_DIR / "p2p-alerts.rules.yml"]
DASHBOARD = CONTRIB / "grafana" / "p2p-transfers.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MIB = 1048576

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")


# ---- files only -----------------------------------------------------------------------------

@needs_promtool
def test_promtool_check_rules():
    r = subprocess.run([PROMTOOL, "check", "rules", *map(str, RULE_FILES)],
                       capture_output=True, text=True, timeout=60)
    print(r.stdout, r.stderr)
    assert r.returncode == 0


@needs_promtool
def test_promtool_check_config_with_contrib_scrape_config(tmp_path):
    cfg = yaml.safe_load((PROM_DIR / "scrape.yml").read_text())
    cfg["rule_files"] = [str(f) for f in RULE_FILES]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    print(r.stdout, r.stderr)
    assert r.returncode == 0


@needs_promtool
def test_promtool_rule_unit_tests():
    tests = sorted((PROM_DIR / "tests").glob("*.yml"))
    assert tests
    r = subprocess.run([PROMTOOL, "test", "rules", *map(str, tests)],
                       capture_output=True, text=True, timeout=120)
    print(r.stdout, r.stderr)
    assert r.returncode == 0


def _alert_names() -> set[str]:
    doc = yaml.safe_load(RULE_FILES[1].read_text())
    return {r["alert"] for g in doc["groups"] for r in g["rules"]}


def _recorded_names() -> set[str]:
    doc = yaml.safe_load(RULE_FILES[0].read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"]}


def test_every_rule_is_covered_by_promtool_tests():
    text = "\n".join(p.read_text() for p in (PROM_DIR / "tests").glob("*.yml"))
    for alert in _alert_names():
        assert f"alertname: {alert}\n" in text, f"alert {alert} has no promtool test"
    for rec in _recorded_names():
        assert f"expr: {rec}\n" in text, f"recording rule {rec} has no promtool test"


def test_every_alert_has_for_and_annotations():
    doc = yaml.safe_load(RULE_FILES[1].read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            assert r.get("for"), r["alert"]
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]


def _dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in d["panels"] for t in p["targets"]]


def test_dashboard_is_importable_shape():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 30 and d.get("id") is None
    ds_vars = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in ds_vars] == [("DS_PROMETHEUS", "prometheus")]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert t["expr"] and t["refId"]
    exprs = "\n".join(e for _, e in _dashboard_exprs())
    for needle in ("p2p_bytes_transferred_total", "p2p_transfers_active", "p2p_chunks_deduplicated_total",
                   "p2p_cache_hits", "p2p_image_imports_failed", "p2p_image_downloads_failed",
                   "p2p_verification_failed", "histogram_quantile(0.99, sum by (le) (rate(p2p_transfer_duration_bucket[5m])))"):
        assert needle in exprs, needle


def test_sysctl_raises_unix_dgram_queue():
    conf = (CONTRIB / "sysctl.d" / "60-p2pmetricsd.conf").read_text()
    settings = dict(line.replace(" ", "").split("=", 1) for line in conf.splitlines()
                    if line.strip() and not line.lstrip().startswith(("#", ";")))
    assert int(settings["net.unix.max_dgram_qlen"]) >= 512


# ---- the scenario ---------------------------------------------------------------------------

IMPORTS = {"microvm": (16, 4, 1 * MIB), "container": (4, 0, 2 * MIB)}  # total, failed, bytes per success
DOWNLOAD_DURATIONS = [0.2] * 10 + [0.8] * 6 + [3.0] * 4                 # 20 downloads ...
DOWNLOADS_FAILED = 5                                                    # ... 5 of them failed
CHUNKS_TRANSFERRED, CHUNKS_DEDUPLICATED, CHUNK_SIZE = 12, 4, 65536
VERIFICATIONS = {"nar_hash": (49, 1), "chunk_hash": (200, 0)}           # success, failed
CACHE = {"chunk": (3, 1), "vm_image": (1, 3)}                           # hits, misses
PEER_BYTES = {"peer-a": 3 * MIB, "peer-b": 1 * MIB}                     # bytes by peer (label convention)
UNIQUE_CHUNKS = 37                                                      # distinct hashes among ...
CHUNK_HASH_ADDS = 100                                                   # ... this many adds
CHUNK_REQUESTS = {"sha256:hot": 30, "sha256:warm": 12} | {f"sha256:c{i:02d}": 1 for i in range(20)}
TRANSFERS_STARTED, TRANSFERS_ENDED = 3, 1

BYTES_TOTAL = sum(PEER_BYTES.values()) + (sum((t - f) * size for t, f, size in IMPORTS.values())
               + CHUNKS_TRANSFERRED * CHUNK_SIZE)


def pre_create_series() -> bytes:
    """Every series the scenario touches, at 0 (the duration histogram gets one observation:
    a histogram cannot be created empty). p2p.verification.failed{chunk_hash} is left out on
    purpose: it never exists, and the rules must treat it as 0."""
    s = []
    for a in IMPORTS:
        lab = {"artifact_type": a}
        s += [("counter_add", "p2p.image.imports.total", 0, lab), ("counter_add", "p2p.image.imports.failed", 0, lab),
              ("counter_add", "p2p.bytes_transferred.total", 0, lab)]
    s += [("counter_add", n, 0, {}) for n in ("p2p.image.downloads.total", "p2p.image.downloads.failed",
                                             "p2p.chunks_transferred.total", "p2p.chunks_deduplicated.total",
                                             "p2p.bytes_transferred.total")]
    for v, (ok, failed) in VERIFICATIONS.items():
        s.append(("counter_add", "p2p.verification.success", 0, {"verification_type": v}))
        if failed:
            s.append(("counter_add", "p2p.verification.failed", 0, {"verification_type": v}))
    for c in CACHE:
        s += [("counter_add", "p2p.cache.hits", 0, {"cache_type": c}),
              ("counter_add", "p2p.cache.misses", 0, {"cache_type": c})]
    s += [("gauge_add", "p2p.transfers.active", 0, {}), ("histogram_observe", "p2p.transfer.duration", 0.5, {})]
    s += [("counter_add", "p2p.bytes_transferred.total", 0, {"peer": p}) for p in PEER_BYTES]
    return datagram(s)


class Label(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


class Transfer(ctypes.Structure):
    _fields_ = [("client", ctypes.c_void_p), ("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long),
                ("active", ctypes.c_int), ("err", ctypes.c_int)]


def load_client(build: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build / "libp2pmetrics.so"))
    P, S, B, I, D, U64 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_bool, ctypes.c_int, ctypes.c_double, ctypes.c_uint64
    lib.p2pm_open.argtypes, lib.p2pm_open.restype = [S], P
    lib.p2pm_close.argtypes, lib.p2pm_close.restype = [P], None
    lib.p2pm_dropped.argtypes, lib.p2pm_dropped.restype = [P], U64
    lib.p2pm_batch_begin.argtypes = lib.p2pm_batch_end.argtypes = [P]
    lib.p2pm_record_image_import.argtypes = [P, S, B, U64]
    lib.p2pm_record_image_download.argtypes = [P, S, B, D]
    lib.p2pm_record_chunk_transfer.argtypes = [P, U64, B]
    lib.p2pm_record_verification.argtypes = [P, B, S]
    lib.p2pm_record_cache_access.argtypes = [P, B, S]
    lib.p2pm_transfer_start.argtypes, lib.p2pm_transfer_start.restype = [P], Transfer
    lib.p2pm_transfer_end.argtypes = [ctypes.POINTER(Transfer)]
    lib.p2pm_counter_add_u64.argtypes = [P, S, U64, ctypes.POINTER(Label), ctypes.c_size_t]
    lib.p2pm_distinct_add.argtypes = [P, S, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(Label), ctypes.c_size_t]
    lib.p2pm_record_chunk_request.argtypes = [P, S]
    for f in ("p2pm_batch_begin", "p2pm_batch_end", "p2pm_record_image_import", "p2pm_record_image_download",
              "p2pm_record_chunk_transfer", "p2pm_record_verification", "p2pm_record_cache_access",
              "p2pm_transfer_end", "p2pm_counter_add_u64", "p2pm_distinct_add", "p2pm_record_chunk_request"):
        getattr(lib, f).restype = I
    return lib


def run_scenario(lib: ctypes.CDLL, socket_path: str) -> None:
    c = lib.p2pm_open(socket_path.encode())
    assert c, "p2pm_open failed"
    try:
        # One batch: a few 8 KiB datagrams instead of hundreds (the test kernel's queue is 10 deep).
        assert lib.p2pm_batch_begin(c) == 0
        for a, (total, failed, size) in IMPORTS.items():
            for i in range(total):
                ok = i >= failed
                assert lib.p2pm_record_image_import(c, a.encode(), ok, size if ok else 0) == 0
        for i, d in enumerate(DOWNLOAD_DURATIONS):
            assert lib.p2pm_record_image_download(c, b"img-%d" % i, i >= DOWNLOADS_FAILED, d) == 0
        for i in range(CHUNKS_TRANSFERRED):
            assert lib.p2pm_record_chunk_transfer(c, CHUNK_SIZE, False) == 0
        for i in range(CHUNKS_DEDUPLICATED):
            assert lib.p2pm_record_chunk_transfer(c, CHUNK_SIZE, True) == 0
        for v, (ok, failed) in VERIFICATIONS.items():
            for _ in range(ok):
                assert lib.p2pm_record_verification(c, True, v.encode()) == 0
            for _ in range(failed):
                assert lib.p2pm_record_verification(c, False, v.encode()) == 0
        for cache, (hits, misses) in CACHE.items():
            for _ in range(hits):
                assert lib.p2pm_record_cache_access(c, True, cache.encode()) == 0
            for _ in range(misses):
                assert lib.p2pm_record_cache_access(c, False, cache.encode()) == 0
        # Per-peer transfer volume (the `peer` label convention), unique chunks, chunk popularity.
        for peer, n in PEER_BYTES.items():
            label = Label(b"peer", peer.encode())
            assert lib.p2pm_counter_add_u64(c, b"p2p.bytes_transferred.total", n, ctypes.byref(label), 1) == 0
        for i in range(CHUNK_HASH_ADDS):
            h = b"sha256:%04d" % (i % UNIQUE_CHUNKS)
            assert lib.p2pm_distinct_add(c, b"p2p.chunks.unique", h, len(h), None, 0) == 0
        for key, n in CHUNK_REQUESTS.items():
            for _ in range(n):
                assert lib.p2pm_record_chunk_request(c, key.encode()) == 0
        transfers = [lib.p2pm_transfer_start(c) for _ in range(TRANSFERS_STARTED)]
        for t in transfers:
            assert t.err == 0 and t.active == 1
        for t in transfers[:TRANSFERS_ENDED]:
            assert lib.p2pm_transfer_end(ctypes.byref(t)) == 0
        assert lib.p2pm_batch_end(c) == 0
        assert lib.p2pm_dropped(c) == 0, "the C client dropped datagrams"
    finally:
        lib.p2pm_close(c)


# ---- Prometheus -------------------------------------------------------------------------------

class Prometheus:
    def __init__(self, tmp: Path, target_port: int, jobs: list[dict] | None = None):
        """A real Prometheus scraping the daemon with the contrib scrape config and rules, every
        second; or, with `jobs`, only those scrape configs (and no rules)."""
        self.port = free_port()
        cfg = yaml.safe_load((PROM_DIR / "scrape.yml").read_text())
        job = cfg["scrape_configs"][0]
        assert job["job_name"] == "p2pmetricsd"
        job["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        job["scrape_interval"] = "1s"
        job["scrape_timeout"] = "1s"
        cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        cfg["rule_files"] = [str(f) for f in RULE_FILES]
        if jobs is not None:
            cfg["scrape_configs"] = jobs
            cfg["rule_files"] = []
        conf = tmp / "prometheus.yml"
        conf.write_text(yaml.safe_dump(cfg))
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited: " + self.log.read_text())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("prometheus did not become ready: " + self.log.read_text())

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        data = urllib.parse.urlencode(params).encode() if params else None
        try:
            with urllib.request.urlopen(url, data=data, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def query(self, expr: str) -> dict[frozenset, float]:
        """Instant query; {frozenset(labels without __name__): value}."""
        r = self.api("query", query=expr)
        assert r["status"] == "success", f"{expr}: {r}"
        assert r["data"]["resultType"] == "vector", expr
        return {frozenset((k, v) for k, v in s["metric"].items() if k != "__name__"): float(s["value"][1])
                for s in r["data"]["result"]}

    def wait(self, expr: str, check, timeout: float = 30.0):
        """Polls an instant query until check(result) holds; returns the last result."""
        deadline = time.monotonic() + timeout
        res = self.query(expr)
        while not check(res) and time.monotonic() < deadline:
            time.sleep(0.25)
            res = self.query(expr)
        return res

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def by(label: str, res: dict[frozenset, float]) -> dict[str, float]:
    return {dict(k).get(label, ""): v for k, v in res.items()}


def scalar(res: dict[frozenset, float]) -> float | None:
    assert len(res) <= 1, res
    return next(iter(res.values()), None)


def close(a, b, rel=1e-9) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def close_map(got: dict, exp: dict) -> bool:
    return set(got) == set(exp) and all(close(got[k], v) for k, v in exp.items())


@pytest.fixture
def prometheus_factory(tmp_path):
    started = []

    def start(port: int) -> Prometheus:
        p = Prometheus(tmp_path, port)
        started.append(p)
        return p
    yield start
    for p in started:
        p.stop()


def check_scenario_everywhere(prom: "Prometheus", nodes: int = 1, pending: set[str] | None = None) -> None:
    """Steps 3-6 of the end-to-end test, for `nodes` daemons that each ran run_scenario once:
    raw sums, every recording rule, every alert expression, every dashboard query. Ratios do not
    depend on the node count; totals and gauges are `nodes` times one scenario's.
    Also used by test_cluster.py (three nodes, and a central Prometheus fed by agents)."""
    # 3. Raw values, once scraped (exact).
    raw = {
        "sum(p2p_image_imports_total)": sum(t for t, _, _ in IMPORTS.values()),
        "sum(p2p_image_imports_failed)": sum(f for _, f, _ in IMPORTS.values()),
        "sum(p2p_image_downloads_total)": len(DOWNLOAD_DURATIONS),
        "sum(p2p_image_downloads_failed)": DOWNLOADS_FAILED,
        "sum(p2p_chunks_transferred_total)": CHUNKS_TRANSFERRED,
        "sum(p2p_chunks_deduplicated_total)": CHUNKS_DEDUPLICATED,
        "sum(p2p_bytes_transferred_total)": BYTES_TOTAL,
        "sum(p2p_verification_success)": sum(ok for ok, _ in VERIFICATIONS.values()),
        "sum(p2p_verification_failed)": sum(f for _, f in VERIFICATIONS.values()),
        "sum(p2p_cache_hits)": sum(h for h, _ in CACHE.values()),
        "sum(p2p_cache_misses)": sum(m for _, m in CACHE.values()),
        "sum(p2p_transfers_active)": TRANSFERS_STARTED - TRANSFERS_ENDED,
        "sum(p2p_transfer_duration_count)": 1 + len(DOWNLOAD_DURATIONS) + TRANSFERS_ENDED,
    }
    raw = {expr: nodes * v for expr, v in raw.items()}
    for expr, exp in raw.items():
        got = scalar(prom.wait(expr, lambda r, exp=exp: scalar(r) == exp))
        assert got == exp, f"{expr}: got {got}, want {exp}"
    # Two more scrapes, so every rate sees the final values.
    t0 = time.time()
    prom.wait('min(timestamp(up{job="p2pmetricsd"}))', lambda r: (scalar(r) or 0) > t0 + 2.5)

    # 4. Recording rules: the values the scenario implies.
    imp_failed_ratio = {a: f / t for a, (t, f, _) in IMPORTS.items()}
    exact = {
        "p2p:image_downloads_success_ratio:rate5m": {"": 1 - DOWNLOADS_FAILED / len(DOWNLOAD_DURATIONS)},
        "p2p:image_downloads_failure_ratio:rate5m": {"": DOWNLOADS_FAILED / len(DOWNLOAD_DURATIONS)},
        "artifact_type:p2p_image_imports_failure_ratio:rate5m": imp_failed_ratio,
        "p2p:chunks_dedup_ratio:rate5m": {"": CHUNKS_DEDUPLICATED / (CHUNKS_TRANSFERRED + CHUNKS_DEDUPLICATED)},
        "cache_type:p2p_cache_hit_ratio:rate5m": {c: h / (h + m) for c, (h, m) in CACHE.items()},
        "p2p:cache_hit_ratio:rate5m": {"": sum(h for h, _ in CACHE.values()) / sum(h + m for h, m in CACHE.values())},
        "verification_type:p2p_verification_failure_ratio:rate5m": {v: f / (ok + f) for v, (ok, f) in VERIFICATIONS.items()},
        "p2p:verification_failure_ratio:rate5m": {"": sum(f for _, f in VERIFICATIONS.values())
                                                  / sum(ok + f for ok, f in VERIFICATIONS.values())},
        "p2p:transfers_active:sum": {"": nodes * (TRANSFERS_STARTED - TRANSFERS_ENDED)},
        # ratios of rates recorded by the same group evaluation: exact too (a ratio mixing a
        # recorded rate with one computed at query time would not be: rate() extrapolates to
        # the evaluation time)
        "p2p:bytes_transferred_mebibytes:rate5m * 1048576 / sum(artifact_type:p2p_image_imports:rate5m)":
            {"": BYTES_TOTAL / sum(t for t, _, _ in IMPORTS.values())},
        "p2p:image_downloads_succeeded:rate5m / p2p:image_downloads:rate5m":
            {"": 1 - DOWNLOADS_FAILED / len(DOWNLOAD_DURATIONS)},
        "sum(verification_type:p2p_verification_failed:rate5m) / sum(verification_type:p2p_verification_success:rate5m)":
            {"": sum(f for _, f in VERIFICATIONS.values()) / sum(ok for ok, _ in VERIFICATIONS.values())},
        "p2p:chunks_transferred:rate5m / p2p:chunks_deduplicated:rate5m": {"": CHUNKS_TRANSFERRED / CHUNKS_DEDUPLICATED},
        "cache_type:p2p_cache_hits:rate5m / on (cache_type) cache_type:p2p_cache_misses:rate5m":
            {c: h / m for c, (h, m) in CACHE.items()},
        "artifact_type:p2p_image_imports_failed:rate5m / on (artifact_type) artifact_type:p2p_image_imports:rate5m":
            imp_failed_ratio,
    }
    labels_of = {"artifact_type", "cache_type", "verification_type"}
    checked_records = set()
    for expr, exp in exact.items():
        def keyed(r):
            return {next((v for k, v in key if k in labels_of), ""): val for key, val in r.items()}
        got = keyed(prom.wait(expr, lambda r, exp=exp: close_map(keyed(r), exp)))
        assert close_map(got, exp), f"{expr}: got {got}, want {exp}"
        checked_records |= {n for n in _recorded_names() if n in expr}

    # rate-valued rules: defined and positive (their absolute value depends on timing)
    positive = ["p2p:image_downloads:rate5m", "p2p:image_downloads_failed:rate5m", "p2p:image_downloads_succeeded:rate5m",
                "p2p:bytes_transferred:rate5m", "p2p:bytes_transferred_mebibytes:rate5m",
                "p2p:chunks_transferred:rate5m", "p2p:chunks_deduplicated:rate5m", "p2p:transfers_completed:rate5m",
                "verification_type:p2p_verification_success:rate5m", "artifact_type:p2p_image_imports:rate5m"]
    for expr in positive:
        got = prom.wait(expr, lambda r: bool(r) and all(v > 0 for v in r.values()))
        assert got and all(v > 0 for v in got.values()), f"{expr}: {got}"
        checked_records.add(expr)
    # p2p_verification_failed{chunk_hash} never existed: filled with 0, not missing
    fails = by("verification_type", prom.query("verification_type:p2p_verification_failed:rate5m"))
    assert fails["chunk_hash"] == 0 and fails["nar_hash"] > 0
    assert by("cache_type", prom.query("cache_type:p2p_cache_hits:rate5m")).keys() == CACHE.keys()
    assert by("artifact_type", prom.query("artifact_type:p2p_image_imports_failed:rate5m"))["container"] == 0
    checked_records |= {"verification_type:p2p_verification_failed:rate5m", "cache_type:p2p_cache_hits:rate5m",
                        "artifact_type:p2p_image_imports_failed:rate5m"}

    # duration percentiles: defined, ordered, within the observed range (bucket bounds vary)
    q = {}
    for name in ("p50", "p90", "p99"):
        rec = f"p2p:transfer_duration_seconds:{name}_5m"
        q[name] = scalar(prom.wait(rec, lambda r: scalar(r) is not None))
        checked_records.add(rec)
    print("transfer duration percentiles:", q)
    assert all(v is not None and math.isfinite(v) and v > 0 for v in q.values()), q
    assert q["p50"] <= q["p90"] <= q["p99"]
    unchecked = _recorded_names() - checked_records
    assert not unchecked, f"recording rules not checked end to end: {unchecked}"

    # 5. Alert expressions, evaluated directly: which series each one yields for this scenario.
    alert_rules = {r["alert"]: r for g in yaml.safe_load(RULE_FILES[1].read_text())["groups"] for r in g["rules"]}
    expected_alerts = {
        "P2PVerificationFailureRateHigh": {frozenset({("verification_type", "nar_hash")})},   # 2% > 1%
        "P2PCacheHitRateLow": {frozenset({("cache_type", "vm_image")})},                     # 25% < 50%
        "P2PImageImportFailuresSpike": {frozenset({("artifact_type", "microvm")})},          # 25%, 4 failed
        "P2PImageDownloadFailuresSpike": {frozenset()},                                       # 25%, 5 failed
        "P2PTransfersStuck": set(),            # 2 active, but the gauge moved a moment ago
        "P2PMetricsdDown": set(),
        "P2PMetricsClientDrops": set(),
    }
    assert set(expected_alerts) == set(alert_rules)
    for name, rule in alert_rules.items():
        got = set(prom.query(rule["expr"]))
        exp = expected_alerts[name]
        if name == "P2PImageDownloadFailuresSpike":
            got = {frozenset()} if got else set()
        assert got == exp, f"{name}: expression yields {got}, expected {exp}"

    # ... and Prometheus itself evaluates them: all rules healthy, the right alerts pending.
    if pending is None:
        pending = {"P2PVerificationFailureRateHigh", "P2PCacheHitRateLow", "P2PImageImportFailuresSpike",
                   "P2PImageDownloadFailuresSpike"}
    deadline = time.monotonic() + 20
    while True:
        alerts = prom.api("alerts")["data"]["alerts"]
        names = {a["labels"]["alertname"] for a in alerts}
        if names >= pending or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert names == pending, alerts
    assert all(a["state"] == "pending" for a in alerts), alerts   # every for: is longer than this test
    for a in alerts:
        assert a["annotations"]["summary"] and "{{" not in a["annotations"]["summary"]
    groups = prom.api("rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(_recorded_names()) + len(alert_rules)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad

    # 6. Every dashboard query runs; the panels show the scenario's values.
    results = {}
    for title, expr in _dashboard_exprs():
        results[expr] = prom.query(expr)
        if "p2pmetricsd_" not in expr:          # the sidecar panel is empty when all is well
            assert results[expr], f"dashboard panel {title!r}: no data for {expr}"
            assert all(math.isfinite(v) for v in results[expr].values()), (title, expr, results[expr])
    dash = {t: [(e, results[e]) for tt, e in _dashboard_exprs() if tt == t] for t, _ in _dashboard_exprs()}
    assert close(scalar(dash["Deduplication rate"][0][1]), 25.0)
    assert close_map(by("cache_type", dash["Cache hit rate"][0][1]), {"chunk": 75.0, "vm_image": 25.0})
    assert close_map(by("verification_type", dash["Verification failure rate"][0][1]), {"nar_hash": 2.0, "chunk_hash": 0.0})
    success = dash["Download and import success rate"]
    assert close(scalar(success[0][1]), 75.0)
    assert close_map(by("artifact_type", success[1][1]), {"microvm": 75.0, "container": 100.0})
    assert scalar(dash["Active transfers"][0][1]) == nodes * (TRANSFERS_STARTED - TRANSFERS_ENDED)
    assert sorted(dash["Active transfers"][1][1].values()) == [TRANSFERS_STARTED - TRANSFERS_ENDED] * nodes
    assert scalar(dash["P2P transfer rate"][0][1]) > 0
    failures = dash["Import and download failures"]
    assert set(by("artifact_type", failures[0][1])) == set(IMPORTS) and by("artifact_type", failures[0][1])["microvm"] > 0
    assert scalar(failures[1][1]) > 0
    pct = [scalar(r) for _, r in dash["Transfer duration percentiles"]]
    assert pct[0] <= pct[1] <= pct[2]
    assert abs(scalar(dash["Unique chunks seen"][0][1]) - nodes * UNIQUE_CHUNKS) <= nodes  # HyperLogLog, small set
    top = by("key", dash["Most requested chunks"][0][1])
    assert len(top) == 10 and top["sha256:hot"] == nodes * 30 and top["sha256:warm"] == nodes * 12
    by_peer = by("peer", dash["Transfer rate by peer"][0][1])
    assert set(by_peer) == set(PEER_BYTES) and by_peer["peer-a"] > by_peer["peer-b"] > 0


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed")
@pytest.mark.skipif(not DAEMON_BIN.exists(), reason=f"{DAEMON_BIN} is not built")
def test_rules_alerts_and_dashboard_against_real_prometheus(daemon, c_build, prometheus_factory):
    lib = load_client(c_build)

    # 1. Every series exists (at 0) before Prometheus' first scrape.
    daemon.send(pre_create_series())
    assert daemon.wait_for("p2p_cache_misses", 0, cache_type="vm_image") == 0
    assert daemon.wait_for("p2p_transfer_duration_count", 1) == 1

    prom = prometheus_factory(daemon.port)
    res = prom.wait('count_over_time(up{job="p2pmetricsd"}[1m])', lambda r: (scalar(r) or 0) >= 3)
    assert (scalar(res) or 0) >= 3, "prometheus does not scrape the daemon"
    assert scalar(prom.query('up{job="p2pmetricsd"}')) == 1
    # Prometheus asks for OpenMetrics by default, and gets it: every query below runs on what
    # a real Prometheus stored from OpenMetrics scrapes (p2p_cache_hits & co. keep their names).
    assert (daemon.value("p2pmetricsd_scrapes_total", format="openmetrics") or 0) >= 3

    # 2. The scenario, through the C client.
    run_scenario(lib, daemon.socket_path)

    check_scenario_everywhere(prom)

    # 7. The guide's queries, as written: the fifth is not valid PromQL; the first is a rate.
    seed5 = "rate(p2p_verification_failed[5m]) / rate(p2p_verification_success[5m] + p2p_verification_failed[5m])"
    r = prom.api("query", query=seed5)
    print("guide query 5:", r.get("error"))
    assert r["status"] == "error" and r["errorType"] == "bad_data"
    seed1 = prom.query("rate(p2p_image_downloads_total[5m]) - rate(p2p_image_downloads_failed[5m])")
    assert scalar(seed1) > 0 and not close(scalar(seed1), 1 - DOWNLOADS_FAILED / len(DOWNLOAD_DURATIONS))
