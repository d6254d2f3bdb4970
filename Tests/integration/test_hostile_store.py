"""Issue 19, the store's half: a hostile client on the node cannot bloat or stall the sidecar.

Each attack of the issue, scaled down, against the real daemon: a byte budget that refuses and
counts new series past it, names of expired series reclaimed, one text datagram's work bounded
(a sample rate is a weight, values and tags capped), and the right rejection reasons.
"""
from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

from conftest import free_port, parse_exposition, start_daemon
from test_reliability import config, rss_kib
from wire import counter

MIB = 1 << 20


def send_all(d, datagrams) -> int:
    """Sends every datagram with blocking sends (the kernel queue is 10 deep); returns how many."""
    n = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for data in datagrams:
            s.sendto(data, d.socket_path)
            n += 1
    return n


def received(d, before: float, n: int) -> None:
    assert d.wait_for("p2pmetricsd_datagrams_received_total", before + n, timeout=60) == before + n


def wide_tags(i: int | None = None) -> str:
    """16 tags of 1,000-byte values (the most a series may carry); `i` makes the set unique."""
    tags = [f"t{k:02d}:" + "v" * 1000 for k in range(15)]
    tags.append("t15:" + "w" * 992 + ("" if i is None else f"{i:08d}"))
    return ",".join(tags)


def test_memory_budget_refuses_new_series_past_it_and_counts_them(tmp_path):
    # The attack: 200 k `|s` lines (a 4 KiB sketch each) took +832 MB. Scaled: a 4 MiB budget.
    d = start_daemon(tmp_path, "--config", config(tmp_path, limits={"max_memory_bytes": 4 * MIB}))
    try:
        before = d.value("p2pmetricsd_datagrams_received_total")
        sent = send_all(d, ("\n".join(f"uniques:k|s|#peer:p{b * 50 + i}" for i in range(50)).encode()
                            for b in range(40)))
        received(d, before, sent)
        metrics = d.scrape()
        series = metrics[("p2pmetricsd_series", frozenset())]
        refused = metrics[("p2pmetricsd_samples_rejected_total", frozenset({("reason", "memory_limit")}))]
        exposed = sum(1 for (name, _) in metrics if name == "uniques")
        memory = metrics[("p2pmetricsd_series_memory_bytes", frozenset())]
        print(f"4 MiB budget: {int(series)} set series admitted, {int(refused)} refused, "
              f"series memory {memory / MIB:.2f} MiB")
        assert series + refused == 2000
        assert exposed == series
        assert 800 <= series <= 900  # (4 MiB − 512 KiB wire cache) / ~4.2 KB
        assert memory <= 4 * MIB
        assert metrics[("p2pmetricsd_series_memory_limit_bytes", frozenset())] == 4 * MIB
        # Existing series keep updating; new ones are still refused.
        send_all(d, [b"uniques:other|s|#peer:p0", b"uniques:k|s|#peer:newcomer"])
        assert d.wait_for("uniques", 2, peer="p0") == 2
        assert d.wait_for("p2pmetricsd_samples_rejected_total", refused + 1, reason="memory_limit") == refused + 1
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_wide_series_stop_at_the_budget_and_rss_tracks_series_memory(tmp_path):
    # The attack: 16 labels × 1 KiB series grew the key arena past 4 GiB (SIGILL at 260 k series,
    # ~33 KB of RSS each). Scaled: a 16 MiB budget and 1,500 such series.
    budget = 16 * MIB
    d = start_daemon(tmp_path, "--config", config(tmp_path, limits={"max_memory_bytes": budget}))
    try:
        rss_before = rss_kib(d.proc.pid) * 1024
        memory_before = d.value("p2pmetricsd_series_memory_bytes")
        before = d.value("p2pmetricsd_datagrams_received_total")
        sent = send_all(d, (f"wide:1|c|#{wide_tags(i)}".encode() for i in range(1500)))
        received(d, before, sent)
        rss_before_scrape = rss_kib(d.proc.pid) * 1024
        body = d.scrape_text()
        metrics = parse_exposition(body)
        rss_after = rss_kib(d.proc.pid) * 1024
        series = metrics[("p2pmetricsd_series", frozenset())]
        refused = metrics[("p2pmetricsd_samples_rejected_total", frozenset({("reason", "memory_limit")}))]
        memory = metrics[("p2pmetricsd_series_memory_bytes", frozenset())]
        resident = metrics[("p2pmetricsd_resident_memory_bytes", frozenset())]
        growth_rss, growth_memory = rss_after - rss_before, memory - memory_before
        print(f"16 MiB budget, 16 × 1 KiB labels: {int(series)} admitted, {int(refused)} refused; "
              f"series memory +{growth_memory / MIB:.1f} MiB, RSS +{growth_rss / MIB:.1f} MiB "
              f"(resident self-metric {resident / MIB:.1f} MiB, VmRSS {rss_after / MIB:.1f} MiB)")
        assert series + refused == 1500 and refused > 0
        assert sum(1 for (name, _) in metrics if name == "wide") == series
        assert memory <= budget
        # RSS grows with what the store holds, plus the shared rendering of /metrics the scrape
        # just used (the whole body, held in memory by the HTTP side): within a factor of 1.5,
        # plus 8 MiB of allocator slack.
        print(f"/metrics body {len(body) / MIB:.1f} MiB")
        assert growth_rss <= 1.5 * growth_memory + len(body) + 8 * MIB
        assert growth_memory <= 1.5 * growth_rss + 8 * MIB
        # The self-metric is read when the scrape starts, before its rendering grows the process.
        assert rss_before_scrape - 2 * MIB <= resident <= rss_after + 2 * MIB
    finally:
        d.stop()


def test_names_of_expired_series_are_reclaimed(tmp_path):
    # The attack: 600 k unique names under a 1 s TTL, live series 0, RSS +136 MiB and growing while
    # series memory stayed flat. Scaled: 6 rounds of 20 k unique names.
    d = start_daemon(tmp_path, "--config", config(tmp_path, default_ttl_seconds=1))
    try:
        rss, memory = [], []
        for r in range(6):
            before = d.value("p2pmetricsd_datagrams_received_total")
            sent = send_all(d, ("\n".join(f"churn_{r}_{b * 100 + i:06d}_a_long_unique_metric_name:1|g"
                                          for i in range(100)).encode() for b in range(200)))
            received(d, before, sent)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and d.value("p2pmetricsd_series") != 0:
                time.sleep(0.2)
            assert d.value("p2pmetricsd_series") == 0
            rss.append(rss_kib(d.proc.pid) * 1024)
            memory.append(d.value("p2pmetricsd_series_memory_bytes"))
        print("RSS after each round of 20 k expired names (MiB): "
              + ", ".join(f"{x / MIB:.1f}" for x in rss)
              + "; series memory (MiB): " + ", ".join(f"{x / MIB:.2f}" for x in memory))
        assert d.value("p2pmetricsd_series_expired_total") == 120_000
        assert "churn_" not in d.scrape_text()
        # Expiry may run mid-round, so how many names live at once (at most one round's 20 k, about
        # 2.7 MiB of tables) varies from round to round. Unreclaimed names would be charged ~390 B
        # each (39 MiB after 6 rounds) and cost ~350 B of RSS each: +34 MiB over rounds 2–6 before
        # the fix, while series memory stayed flat.
        assert max(memory) < 6 * MIB
        assert rss[-1] - rss[1] < 12 * MIB
    finally:
        d.stop()


def self_metrics(d) -> dict:
    """The `p2pmetricsd_*` self-metrics only, read from the head of /metrics (they come first), so
    that a store of many megabytes need not be downloaded."""
    lines = []
    with urllib.request.urlopen(d.url, timeout=30) as r:
        for raw in r:
            line = raw.decode()
            if not line.startswith("#") and not line.startswith("p2pmetricsd_"):
                break
            lines.append(line)
    return parse_exposition("".join(lines))


def test_the_default_budget_keeps_the_process_far_below_the_units_memory_max(tmp_path):
    # contrib/systemd/p2pmetricsd.service has MemoryMax=512M. The default budget (128 MiB) must stop
    # the 16 × 1 KiB-label flood long before: 10,000 such series (~165 MB of keys) are sent.
    d = start_daemon(tmp_path, "--state", str(tmp_path / "counters.state"))
    try:
        labels = [tag.split(":", 1) for tag in wide_tags().split(",")]
        sent = send_all(d, (counter("wide", 1, dict(labels[:15] + [("t15", f"{i:08d}" + "w" * 992)]))
                            for i in range(10_000)))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = self_metrics(d)
            if m[("p2pmetricsd_datagrams_received_total", frozenset())] >= sent:
                break
            time.sleep(0.2)
        m = self_metrics(d)
        rss = rss_kib(d.proc.pid) * 1024
        series = m[("p2pmetricsd_series", frozenset())]
        refused = m[("p2pmetricsd_samples_rejected_total", frozenset({("reason", "memory_limit")}))]
        memory = m[("p2pmetricsd_series_memory_bytes", frozenset())]
        print(f"default budget, 10,000 series of 16 × 1 KiB labels: {int(series)} admitted, {int(refused)} refused, "
              f"series memory {memory / MIB:.1f} MiB, RSS {rss / MIB:.1f} MiB")
        assert m[("p2pmetricsd_datagrams_received_total", frozenset())] == sent
        assert series + refused == sent and refused > 0
        assert memory <= 128 * MIB
        assert rss < 384 * MIB  # MemoryMax=512M with a 128 MiB margin
        # The peak over the whole life, including the counter snapshot written at SIGTERM.
        d.proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(d.proc.pid, 0)
        d.proc.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss * 1024
        print(f"peak RSS including the shutdown snapshot of {int(series)} counters: {peak / MIB:.1f} MiB; "
              f"state file {(tmp_path / 'counters.state').stat().st_size / MIB:.1f} MiB")
        assert d.proc.returncode == 0
        assert peak < 448 * MIB  # MemoryMax=512M with a 64 MiB margin
    finally:
        d.stop()


def healthy_and_ingesting(d, marker: str) -> float:
    """Seconds until /-/healthy answers and a counter sent now is scraped (generous bound: 10 s)."""
    start = time.monotonic()
    d.send(f"{marker}:1|c".encode())
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/-/healthy", timeout=10) as r:
        assert r.status == 200
    assert d.wait_for(marker, 1, timeout=10) == 1
    return time.monotonic() - start


def test_amplification_datagram_is_bounded_and_the_loop_keeps_serving(tmp_path):
    d = start_daemon(tmp_path)
    try:
        # The attack: one 64 KiB text datagram, 24 k values at @0.01 with 16 × 1 KB tags, replayed
        # as 2.45 M observations (154 s of CPU). Now: refused whole, too many values on one line.
        amp = f"amp.c:{':'.join(['1'] * 24_000)}|h|@0.01|#{wide_tags()}".encode()
        assert len(amp) < 65_536
        d.send(amp)
        elapsed = healthy_and_ingesting(d, "after_amp")
        assert d.value("p2pmetricsd_text_lines_rejected_total", reason="too_many_values") == 1
        assert not any(name.startswith("amp_c") for (name, _) in d.scrape())

        # The most one datagram may carry within the caps: 3 lines of 256 values at @0.01, each with
        # 16 × 1 KB tags. Each value is one observation of weight 100, applied once.
        applied = d.value("p2pmetricsd_samples_applied_total")
        line = f"amp.c:{':'.join(['1'] * 256)}|h|@0.01|#{wide_tags()}"
        capped = "\n".join([line] * 3).encode()
        assert len(capped) < 65_536
        d.send(capped)
        elapsed_capped = healthy_and_ingesting(d, "after_capped")
        tags = {f"t{k:02d}": "v" * 1000 for k in range(15)} | {"t15": "w" * 992}
        assert d.value("amp_c_count", **tags) == 3 * 256 * 100
        assert d.value("amp_c_sum", **tags) == 3 * 256 * 100
        assert d.value("amp_c_bucket", le="+Inf", **tags) == 3 * 256 * 100
        assert d.value("p2pmetricsd_samples_applied_total") == applied + 3 * 256 + 1  # + the marker
        # The same with set members: 3 × 256 distinct keys, 16 KB of tags.
        members = "\n".join(f"amp.s:{':'.join(f'{l}-{k}' for k in range(256))}|s|#{wide_tags()}" for l in range(3))
        assert len(members) < 65_536
        d.send(members.encode())
        elapsed_sets = healthy_and_ingesting(d, "after_sets")
        assert abs(d.value("amp_s", **tags) - 768) <= 768 * 0.05  # 3 × HyperLogLog's 1.6 % standard error
        print(f"/-/healthy and ingest answered {elapsed * 1000:.0f} ms after the amplification datagram, "
              f"{elapsed_capped * 1000:.0f} ms after the capped one, {elapsed_sets * 1000:.0f} ms after the set one")
    finally:
        d.stop()


def test_amplification_over_udp_from_one_packet_is_bounded_too(tmp_path):
    port = free_port()
    d = start_daemon(tmp_path, "--udp", f"127.0.0.1:{port}")
    try:
        amp = f"amp.c:{':'.join(['1'] * 24_000)}|h|@0.01|#{wide_tags()}".encode()
        assert len(amp) <= 65_507  # one UDP datagram
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(amp, ("127.0.0.1", port))
        assert d.wait_for("p2pmetricsd_text_lines_rejected_total", 1, reason="too_many_values") == 1
        elapsed = healthy_and_ingesting(d, "after_udp_amp")
        print(f"over UDP: /-/healthy and ingest answered {elapsed * 1000:.0f} ms after the amplification packet")
        assert not any(name.startswith("amp_c") for (name, _) in d.scrape())
    finally:
        d.stop()


def test_text_rejections_have_the_right_reasons(daemon):
    d = daemon
    before = d.value("p2pmetricsd_datagrams_received_total")
    lines = [
        "x:1e308|c|@0.01",  # 1e310 after scaling: out of range, not a tag problem
        "h:1e308|h|@0.01",  # its weighted sum would be infinite
        "u:" + "k" * 2048 + "|s",  # a set member longer than 1,024 bytes
        "t:1|c|#" + ",".join(f"a{i}:b" for i in range(65)),  # more than 64 tags
        "t:1|c|#" + ",".join(f"a{i}:b" for i in range(17)),  # more than 16 labels
        "v:" + ":".join(["1"] * 257) + "|c",  # more than 256 values
        "ok:1|c",
    ]
    send_all(d, [line.encode() for line in lines])
    received(d, before, len(lines))
    assert d.wait_for("ok", 1) == 1
    reasons = {"bad_value": 2, "key_too_long": 1, "too_many_tags": 2, "too_many_values": 1, "bad_tag": 0}
    for reason, n in reasons.items():
        assert d.value("p2pmetricsd_text_lines_rejected_total", reason=reason) == n, reason
    assert d.value("p2pmetricsd_series") == 1


def test_a_budget_out_of_range_is_a_one_line_config_error(tmp_path):
    from test_daemon import run_cli
    for bad in (1000, 1 << 41, "lots"):
        r = run_cli("--config", config(tmp_path, limits={"max_memory_bytes": bad}),
                    "--socket", str(tmp_path / "s.sock"), "--listen", f"127.0.0.1:{free_port()}")
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and "limits.max_memory_bytes" in lines[0], r.stderr
