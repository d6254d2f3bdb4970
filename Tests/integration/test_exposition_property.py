"""Property (issue 14): whatever sequence of accepted datagrams arrives, every scrape is valid.

Seeded random sequences of datagrams of every kind — binary counter adds (integer and fractional),
gauge sets and adds, histogram observations, distinct and top-K keys, and text StatsD lines —
with names drawn from a small alphabet built to collide (`a.count` beside histogram `a`, `b.total`
beside gauge `b`, dots beside underscores, the catalog's names and the daemon's namespace), are
sent to the built daemon. After every round both formats are checked by promtool and by the strict
reader of `exposition_check` (one HELP/TYPE per family, no duplicate sample), the set of exposed
families and the `name_clash`/`type_clash` counts are compared with a model of PROTOCOL.md §1.6,
every counter's written value with the model's exact total (§1.3),
and a real Prometheus scrapes the daemon all along in OpenMetrics (its default) and in the text
format (through a proxy that asks for it), with no failed scrape and no duplicate sample.
"""
from __future__ import annotations

import math
import random
import struct
import threading
import time
import urllib.request
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port
from exposition_check import _LABEL, problems, promtool_problems
from test_contrib import PROMETHEUS, Prometheus
from wire import MAGIC, series, string, uvarint

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
SEEDS = [14, 1914, 20261128]
ROUNDS = 6
DATAGRAMS_PER_ROUND = 60

BASES = ["a", "b", "a.b", "a_b", "p2p.transfer.duration", "p2p.cache.hits", "p2p.chunks.requested", "p2pmetricsd"]
SUFFIXES = ["", ".count", "_count", ".sum", ".bucket", ".total", "_total", ".error", ".created"]
NAMES = [b + s for b in BASES for s in SUFFIXES if not (b + s).replace(".", "_").startswith("p2pmetricsd_")]

# The daemon's catalog (Sources/P2PMetricsStore/Catalog.swift): exposed name → type.
CATALOG = {n.replace(".", "_"): t for n, t in [
    ("p2p.image.imports.total", "counter"), ("p2p.image.imports.failed", "counter"),
    ("p2p.image.downloads.total", "counter"), ("p2p.image.downloads.failed", "counter"),
    ("p2p.transfer.duration", "histogram"), ("p2p.bytes_transferred.total", "counter"),
    ("p2p.chunks_transferred.total", "counter"), ("p2p.chunks_deduplicated.total", "counter"),
    ("p2p.verification.success", "counter"), ("p2p.verification.failed", "counter"),
    ("p2p.cache.hits", "counter"), ("p2p.cache.misses", "counter"), ("p2p.transfers.active", "gauge"),
    ("p2p.chunks.unique", "distinct"), ("p2p.chunks.requested", "topk"),
]}


def claims(name: str, kind: str) -> list[str]:
    """PROTOCOL.md §1.6, written from the spec."""
    out = [name]
    if kind == "counter" and name.endswith("_total"):
        out += [name[:-6], name[:-6] + "_created"]
    elif kind == "histogram":
        out += [name + s for s in ("_bucket", "_sum", "_count", "_created")]
    elif kind == "topk":
        out.append(name + "_error")
    return out


class Model:
    """Which families exist, how many samples each refusal reason got, and every counter's total
    as PROTOCOL.md §1.3 keeps it: an exact integer sum and a double sum of the fractional adds."""

    def __init__(self):
        self.types: dict[str, str] = {}
        self.owner: dict[str, str] = {}
        for name, kind in CATALOG.items():
            self._claim(name, kind)
        self.name_clash = 0
        self.type_clash = 0
        self.counters: dict[tuple[str, frozenset], tuple[int, float]] = {}

    def counter(self, name: str, labels: dict[str, str], value: int | float) -> None:
        """Applies a counter add that `sample` accepted."""
        key = (name.replace(".", "_"), frozenset((k, v) for k, v in labels.items() if v))
        integer, fraction = self.counters.get(key, (0, 0.0))
        if isinstance(value, int):
            integer += value
        else:
            fraction += value
        self.counters[key] = (integer, fraction)

    @staticmethod
    def exposed(integer: int, fraction: float) -> str:
        """The exact written form of a counter (PROTOCOL.md §1.3)."""
        whole = math.floor(fraction)
        text = str(integer + int(whole))
        remainder = fraction - whole
        if remainder > 0:
            text += "." + format(Decimal(repr(remainder)), "f").split(".")[1]
        return text

    def _claim(self, name: str, kind: str) -> bool:
        mine = claims(name, kind)
        if any(c.startswith("p2pmetricsd_") or self.owner.get(c, name) != name for c in mine):
            return False
        for c in mine:
            self.owner[c] = name
        return True

    def sample(self, name: str, kind: str) -> bool:
        """Counts a sample's refusal; True when it applies."""
        exposed = name.replace(".", "_")
        if exposed in self.types:
            if self.types[exposed] != kind:
                self.type_clash += 1
                return False
            return True
        if CATALOG.get(exposed, kind) != kind:
            self.type_clash += 1
        elif self._claim(exposed, kind):
            self.types[exposed] = kind
            return True
        else:
            self.name_clash += 1
        return False


LABELS = [{}, {"x": "1"}, {"x": "2", "y": "1"}, {"y": ""}, {"x": "", "y": "2"}]
BINARY_KINDS = ["counter", "counter_f", "gauge_set", "gauge_add", "histogram", "distinct", "topk"]
TEXT_TYPES = {"c": "counter", "g": "gauge", "+g": "gauge", "ms": "histogram", "h": "histogram", "d": "histogram",
              "s": "distinct"}


def binary_datagram(rng: random.Random, model: Model) -> bytes:
    out = bytearray(MAGIC)
    for index in range(rng.randint(1, 5)):
        name, labels, kind = rng.choice(NAMES), rng.choice(LABELS), rng.choice(BINARY_KINDS)
        out += series(name, labels)
        i = uvarint(index)
        value = None
        if kind == "counter":
            value = rng.choice([1, 7, 2**40, 2**64 - 1])
            out += b"\x10" + i + uvarint(value)
        elif kind == "counter_f":
            value = rng.choice([0.1, 0.5, 2.25, 1e-7, 1e300])
            out += b"\x12" + i + struct.pack("<d", value)
        elif kind == "gauge_set":
            out += b"\x22" + i + struct.pack("<d", rng.choice([-1.5, 0.0, 3.0, float("nan"), float("inf"), 1e300]))
        elif kind == "gauge_add":
            out += b"\x31" + i + uvarint(rng.choice([1, 2, 3]))  # zigzag: -1, 1, -2
        elif kind == "histogram":
            out += b"\x42" + i + struct.pack("<d", rng.choice([0.001, 0.3, 7.0, 1e6, -2.5]))
        elif kind == "distinct":
            out += b"\x53" + i + string(rng.choice(["k1", "k2", "k3"]))
        else:
            out += b"\x63" + i + string(rng.choice(["k1", "k2", "k3"]))
        kind = {"counter_f": "counter", "gauge_set": "gauge", "gauge_add": "gauge"}.get(kind, kind)
        if model.sample(name, kind) and kind == "counter":
            model.counter(name, labels, value)
    return bytes(out)


def text_datagram(rng: random.Random, model: Model) -> bytes:
    lines = []
    # Lines of one datagram with the same name and tags share one series record, and a record
    # refused for a name clash is refused for every sample of the datagram that uses it.
    clashed: set[tuple] = set()
    for _ in range(rng.randint(1, 3)):
        name, labels, t = rng.choice(NAMES), rng.choice(LABELS), rng.choice(list(TEXT_TYPES))
        value = {"c": "2", "g": "4.5", "+g": "+1", "ms": "250", "h": "0.5", "d": "3", "s": "item"}[t]
        line = f"{name}:{value}|{t.lstrip('+')}"
        if labels:
            line += "|#" + ",".join(f"{k}:{v}" for k, v in labels.items())
        lines.append(line)
        record = (name, tuple(labels.items()))
        if record in clashed:
            model.name_clash += 1
            continue
        before = model.name_clash
        if model.sample(name, TEXT_TYPES[t]) and t == "c":
            model.counter(name, labels, 2)
        if model.name_clash > before:
            clashed.add(record)
    return "\n".join(lines).encode()


def scrape(url: str, openmetrics: bool) -> str:
    req = urllib.request.Request(url, headers={"Accept": OPENMETRICS} if openmetrics else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def raw_values(text: str) -> dict[tuple[str, frozenset], str]:
    """{(name, labels): the value exactly as written}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            name, _, labels = head.partition("{")
            out[(name, frozenset(_LABEL.findall(labels)))] = value
    return out


def families(text: str) -> set[str]:
    return {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def expected_families(model: Model) -> set[str]:
    out = set()
    for name, kind in model.types.items():
        out.add(name)
        if kind == "topk":
            out.add(name + "_error")
    return out


def check_round(daemon, model: Model, sent: int) -> None:
    assert daemon.wait_for("p2pmetricsd_datagrams_received_total", sent) == sent
    text, om = scrape(daemon.url, False), scrape(daemon.url, True)
    assert problems(text, openmetrics=False) == []
    assert problems(om, openmetrics=True) == []
    assert promtool_problems(text) == []
    m = daemon.scrape()
    assert m[("p2pmetricsd_samples_rejected_total", frozenset({("reason", "name_clash")}))] == model.name_clash
    assert m[("p2pmetricsd_samples_rejected_total", frozenset({("reason", "type_clash")}))] == model.type_clash
    rejected = sum(v for (n, _), v in m.items() if n in ("p2pmetricsd_datagrams_rejected_total",
                                                          "p2pmetricsd_text_lines_rejected_total"))
    assert rejected == 0, "the generator sends only accepted datagrams"
    client = {f for f in families(text) if not f.startswith("p2pmetricsd_")}
    assert client == expected_families(model)
    written = raw_values(text)
    for key, (integer, fraction) in model.counters.items():
        assert written.get(key) == Model.exposed(integer, fraction), key


class TextFormatProxy(BaseHTTPRequestHandler):
    """Serves the daemon's /metrics in the text format, whatever the scraper asks for."""
    target = ""

    def do_GET(self):
        body = scrape(self.target, openmetrics=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def send_rounds(daemon, seed: int, pause: float = 0.0) -> Model:
    """Sends ROUNDS rounds of random datagrams, checking every scrape after each round."""
    rng = random.Random(seed)
    model = Model()
    sent = 0
    for _ in range(ROUNDS):
        for _ in range(DATAGRAMS_PER_ROUND):
            daemon.send(text_datagram(rng, model) if rng.random() < 0.3 else binary_datagram(rng, model))
            sent += 1
        check_round(daemon, model, sent)
        time.sleep(pause)
    return model


@pytest.mark.parametrize("seed", SEEDS)
def test_random_accepted_datagrams_keep_every_scrape_valid(daemon, seed):
    model = send_rounds(daemon, seed)
    assert model.name_clash > 0 and model.type_clash > 0 and len(model.types) > 10  # the alphabet collides
    totals = model.counters.values()  # exact totals were compared: past 2^64, with fractions, huge
    assert any(i >= 2**64 for i, _ in totals) and any(f != int(f) for _, f in totals) and any(f >= 1e300 for _, f in totals)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed")
def test_real_prometheus_scrapes_random_collisions_without_an_error(daemon, tmp_path):
    handler = type("Proxy", (TextFormatProxy,), {"target": daemon.url})
    proxy = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    jobs = [
        {"job_name": "openmetrics", "scrape_interval": "1s", "scrape_timeout": "1s",
         "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}]},
        {"job_name": "text", "scrape_interval": "1s", "scrape_timeout": "1s",
         "static_configs": [{"targets": [f"127.0.0.1:{proxy.server_address[1]}"]}]},
    ]
    prom = Prometheus(tmp_path, daemon.port, jobs=jobs)
    try:
        send_rounds(daemon, SEEDS[0], pause=1.2)  # Prometheus scrapes every round's state
        # Every scrape of both jobs so far succeeded and stored samples.
        scrapes = prom.wait("count_over_time(up[5m])", lambda r: len(r) == 2 and min(r.values()) >= ROUNDS, timeout=30)
        assert len(scrapes) == 2 and min(scrapes.values()) >= ROUNDS, scrapes
        assert set(prom.query("min_over_time(up[5m])").values()) == {1.0}
        assert min(prom.query("scrape_samples_scraped").values()) > 0
        # Both formats stored the same client series names.
        names = {}
        for job in ("openmetrics", "text"):
            r = prom.api("series", **{"match[]": f'{{job="{job}",__name__!~"p2pmetricsd_.*|up|scrape_.*"}}'})
            names[job] = {s["__name__"] for s in r["data"]}
        assert names["openmetrics"] == names["text"] and names["text"]
        # Prometheus' own counters of bad scrapes.
        with urllib.request.urlopen(f"http://127.0.0.1:{prom.port}/metrics", timeout=10) as r:
            own = r.read().decode()
        for metric in ("prometheus_target_scrapes_sample_duplicate_timestamp_total",
                       "prometheus_target_scrapes_sample_out_of_order_total",
                       "prometheus_target_scrapes_sample_out_of_bounds_total"):
            values = [float(l.split(" ")[-1]) for l in own.splitlines() if l.startswith(metric + " ")]
            assert values == [0.0], (metric, values)
        log = prom.log.read_text().lower()
        assert "duplicate" not in log and "parse" not in log, log
    finally:
        prom.stop()
        proxy.shutdown()
        proxy.server_close()
