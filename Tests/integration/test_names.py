"""Exposition correctness end to end (issue 14): no accepted input can make a scrape invalid.
Names that would clash are refused and counted as `name_clash`; counters never go down and keep
their exact integer part; both formats stay valid for promtool and the strict reader."""
from __future__ import annotations

import struct
import urllib.request

from exposition_check import problems, promtool_problems
from wire import MAGIC, series, string, uvarint

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def sample(kind: int, name: str, value: float | int | str, labels: dict[str, str] | None = None) -> bytes:
    """One datagram of one sample; `kind` is the tag's high nibble (PROTOCOL.md §1.2)."""
    out = MAGIC + series(name, labels)
    if isinstance(value, str):
        return out + bytes([kind << 4 | 3, 0]) + string(value)
    if isinstance(value, int) and value >= 0:
        return out + bytes([kind << 4, 0]) + uvarint(value)
    return out + bytes([kind << 4 | 2, 0]) + struct.pack("<d", value)


COUNTER, GAUGE_SET, GAUGE_ADD, HISTOGRAM, DISTINCT, TOPK = 1, 2, 3, 4, 5, 6


def scrape(daemon, openmetrics: bool) -> str:
    req = urllib.request.Request(daemon.url, headers={"Accept": OPENMETRICS} if openmetrics else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def assert_valid(daemon) -> tuple[str, str]:
    text, om = scrape(daemon, False), scrape(daemon, True)
    assert problems(text, openmetrics=False) == []
    assert problems(om, openmetrics=True) == []
    assert promtool_problems(text) == []
    return text, om


def sample_lines(text: str, name: str) -> list[str]:
    return [l for l in text.splitlines() if l.split("{")[0].split(" ")[0] == name]


def test_reported_name_clashes_are_refused_counted_and_never_exposed_twice(daemon):
    first_come = [
        sample(HISTOGRAM, "ho.coll", 1),            # ho_coll_count is the histogram's
        sample(TOPK, "ho.tkc", "k1"),               # ho_tkc_error is the sketch's
        sample(COUNTER, "ho.omc.total", 1),         # OpenMetrics family ho_omc is the counter's
        sample(COUNTER, "ho.rev.count", 2),         # first come wins: a counter before the histogram
    ]
    clashing = [
        sample(COUNTER, "ho.coll.count", 1),
        sample(GAUGE_SET, "ho.tkc.error", 5),
        sample(GAUGE_SET, "ho.omc", 1),
        sample(HISTOGRAM, "ho.rev", 0.5),
        sample(GAUGE_SET, "ho_coll_bucket", 1, {"le": "1"}),  # underscores: the same exposed name
        sample(GAUGE_SET, "p2p.transfer.duration.count", 1),  # the catalog's histogram, before its first sample
        sample(COUNTER, "p2p.image.imports", 1),    # OpenMetrics family of p2p_image_imports_total
        sample(HISTOGRAM, "p2pmetricsd", 1),        # would expose p2pmetricsd_bucket, the daemon's namespace
        sample(TOPK, "p2pmetricsd", "k"),           # would expose p2pmetricsd_error
    ]
    for d in first_come + clashing:
        daemon.send(d)
    daemon.send(sample(COUNTER, "ho.dots.same", 2))
    daemon.send(sample(COUNTER, "ho_dots.same", 3))  # dots and underscores: one metric, not a clash
    total = len(first_come) + len(clashing) + 2
    assert daemon.wait_for("p2pmetricsd_datagrams_received_total", total) == total
    assert daemon.wait_for("p2pmetricsd_samples_rejected_total", len(clashing), reason="name_clash") == len(clashing)
    text, om = assert_valid(daemon)
    assert sample_lines(text, "ho_coll_count") == ["ho_coll_count 1"]
    assert sample_lines(text, "ho_tkc_error") == ['ho_tkc_error{key="k1"} 0']
    assert sample_lines(text, "ho_omc") == []
    assert sample_lines(text, "ho_omc_total") == ["ho_omc_total 1"]
    assert sample_lines(text, "ho_rev_count") == ["ho_rev_count 2"]
    assert sample_lines(text, "ho_rev_bucket") == []
    buckets = sample_lines(text, "ho_coll_bucket")  # the histogram's 11 default buckets and +Inf only
    assert len(buckets) == 12 and 'ho_coll_bucket{le="1"} 1' in buckets and 'ho_coll_bucket{le="+Inf"} 1' in buckets
    assert sample_lines(text, "ho_dots_same") == ["ho_dots_same 5"]
    assert "p2pmetricsd_bucket" not in text and "p2pmetricsd_error" not in text
    assert om.count("# TYPE ho_omc ") == 1 and om.count("# TYPE ho_tkc_error ") == 1
    assert daemon.value("p2pmetricsd_samples_applied_total") == len(first_come) + 2


def exposed(text: str, name: str) -> str:
    """The value of an unlabelled sample exactly as written."""
    (line,) = sample_lines(text, name)
    return line.split(" ")[1]


def test_counters_never_go_down_and_keep_their_exact_integer_part(daemon):
    top = 2**64 - 1
    daemon.send(MAGIC + b"\x02" + uvarint(top) + series("c.drop.first") + b"\x10\x00\x01")
    daemon.send(MAGIC + series("c.drop.then") + b"\x10\x00\x01" + b"\x02\x05")  # a drop record may come last
    daemon.send(sample(COUNTER, "c.wrap", top))
    daemon.send(sample(COUNTER, "c.wrap", 5))
    daemon.send(sample(COUNTER, "c.mixed", 2**60 + 3))
    daemon.send(sample(COUNTER, "c.mixed", 0.1))
    daemon.send(sample(COUNTER, "c.halves", 2**53 + 1))
    for _ in range(3):
        daemon.send(sample(COUNTER, "c.halves", 0.5))
    daemon.send(MAGIC + b"\x02" + uvarint(top) + b"\x02" + uvarint(top))  # drop-only, two records
    # Fractional adds, then a wrap past 2^64 - 1 by a small add: the total still grows by 1.
    daemon.send(sample(COUNTER, "c.fracwrap", top))
    daemon.send(sample(COUNTER, "c.fracwrap", 2000.5))
    daemon.send(sample(COUNTER, "c.fracwrap", 1))
    daemon.send(sample(COUNTER, "c.huge", 1e300))  # a huge fractional-form add: exact digits, no exponent
    daemon.send(sample(COUNTER, "c.huge", 1))
    assert daemon.wait_for("p2pmetricsd_datagrams_received_total", 16) == 16
    text, om = assert_valid(daemon)
    assert exposed(text, "p2pmetricsd_client_dropped_datagrams_total") == str(3 * top + 5)
    assert exposed(text, "c_wrap") == str(top + 5)
    assert exposed(text, "c_mixed") == "1152921504606846979.1"
    assert exposed(text, "c_halves") == str(2**53 + 2) + ".5"
    assert exposed(om, "c_mixed") == "1152921504606846979.1"
    assert exposed(text, "c_fracwrap") == str(2**64 + 2000) + ".5"
    assert exposed(text, "c_huge") == str(int(1e300) + 1)
