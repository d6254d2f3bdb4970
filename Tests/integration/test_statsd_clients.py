"""Drop-in compatibility: real third-party StatsD and DogStatsD clients feed p2pmetricsd."""
from __future__ import annotations

import random
import socket
import time

import pytest

from conftest import free_port, start_daemon

statsd = pytest.importorskip("statsd")
dogstatsd = pytest.importorskip("datadog.dogstatsd")


@pytest.fixture
def always_sample(monkeypatch):
    """Client-side sampling is random; make every sampled call go out so totals are exact."""
    monkeypatch.setattr(random, "random", lambda: 0.0)
    import datadog.dogstatsd.base as dogstatsd_base
    monkeypatch.setattr(dogstatsd_base, "random", lambda: 0.0)


class Paced:
    """Wraps a client so each call is followed by a short pause: these clients send without
    blocking, and the kernel's Unix datagram queue here is only 10 deep (net.unix.max_dgram_qlen),
    so an unpaced burst would measure the client's own drops, not the daemon."""

    def __init__(self, client, pause=0.003):
        self._client, self._pause = client, pause

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            time.sleep(self._pause)
            return result
        return call


def check(d, expected: dict, timeout=10.0):
    for (name, labels), value in expected.items():
        got = d.wait_for(name, value, timeout=timeout, **dict(labels))
        assert got == pytest.approx(value), f"{name}{labels}: expected {value}, got {got}"


def test_dogstatsd_over_the_unix_socket(tmp_path, always_sample):
    d = start_daemon(tmp_path)
    try:
        client = Paced(dogstatsd.DogStatsd(socket_path=d.socket_path, disable_telemetry=True))
        for _ in range(3):
            client.increment("p2p.cache.hits", tags=["cache_type:chunk"])
        client.increment("p2p.cache.misses", 2, tags=["cache_type:chunk"])
        client.increment("sampled.events", sample_rate=0.25)  # counts as 4
        client.gauge("fuel.level", 0.5, tags=["env:prod"])
        client.histogram("song.length", 240, tags=["genre:rock"])
        client.distribution("req.latency", 12)
        client.distribution("req.latency", 30)
        client.timing("db.query", 250)  # ms → 0.25 s
        for user in ["u1", "u2", "u1", "u3"]:
            client.set("users.uniques", user)
        client.increment("page.views", tags=["env:prod", "region:eu"])
        client.increment("page.views", tags=["region:eu", "env:prod"])
        check(d, {
            ("p2p_cache_hits", (("cache_type", "chunk"),)): 3,
            ("p2p_cache_misses", (("cache_type", "chunk"),)): 2,
            ("sampled_events", ()): 4,
            ("fuel_level", (("env", "prod"),)): 0.5,
            ("song_length_count", (("genre", "rock"),)): 1,
            ("song_length_sum", (("genre", "rock"),)): 240,
            ("req_latency_count", ()): 2,
            ("req_latency_sum", ()): 42,
            ("db_query_sum", ()): 0.25,
            ("users_uniques", ()): 3,
            ("page_views", (("env", "prod"), ("region", "eu"))): 2,
        })
        text = d.scrape_text()
        assert "# TYPE p2p_cache_hits counter" in text and "# HELP p2p_cache_hits Number of P2P cache hits." in text
        assert "# TYPE users_uniques gauge" in text
        m = d.scrape()
        assert sum(v for (n, _), v in m.items() if n == "p2pmetricsd_text_lines_rejected_total") == 0
        assert m[("p2pmetricsd_text_lines_received_total", frozenset())] == 16
    finally:
        d.stop()


def test_statsd_over_udp(tmp_path, always_sample):
    port = free_port()
    d = start_daemon(tmp_path, "--udp", f"127.0.0.1:{port}")
    try:
        client = Paced(statsd.StatsClient("127.0.0.1", port, prefix="app"))
        client.incr("hits")
        client.incr("hits", 4)
        client.incr("hits", 1, rate=0.5)  # counts as 2
        client.decr("hits_down", 0)
        client.gauge("temperature", 20)
        client.gauge("temperature", 5, delta=True)
        client.gauge("temperature", -3, delta=True)
        client.timing("render", 320)
        client.timing("render", 80)
        client.set("visitors", "alice")
        client.set("visitors", "bob")
        client.set("visitors", "alice")
        with client.pipeline() as pipe:  # several lines in one datagram
            pipe.incr("batched", 2)
            pipe.incr("batched", 3)
            pipe.gauge("level", 7)
        check(d, {
            ("app_hits", ()): 7,
            ("app_temperature", ()): 22,
            ("app_render_count", ()): 2,
            ("app_render_sum", ()): 0.4,
            ("app_visitors", ()): 2,
            ("app_batched", ()): 5,
            ("app_level", ()): 7,
        })
    finally:
        d.stop()


def test_mixed_binary_and_text_stream_aggregates_into_the_same_series(daemon):
    binary = (b"\xf5\x01\x0ep2p.cache.hits\x01\x0acache_type\x05chunk\x10\x00\x01")  # +1
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for i in range(50):
            s.sendto(binary if i % 2 else b"p2p.cache.hits:2|c|#cache_type:chunk", daemon.socket_path)
    check(daemon, {("p2p_cache_hits", (("cache_type", "chunk"),)): 25 * 1 + 25 * 2})
    assert daemon.value("p2pmetricsd_series") == 1


def test_bad_text_lines_are_counted_and_good_lines_in_the_same_datagram_apply(daemon):
    daemon.send(b"good:1|c\nbad:abc|c\n_e{1,1}:a|b\nworse:1|zz\ngood:2|c")
    check(daemon, {("good", ()): 3})
    m = daemon.scrape()
    r = lambda reason: m[("p2pmetricsd_text_lines_rejected_total", frozenset({"reason": reason}.items()))]
    assert r("bad_value") == 1 and r("unsupported_event") == 1 and r("bad_type") == 1
    assert m[("p2pmetricsd_text_lines_received_total", frozenset())] == 5


def test_cached_lines_land_in_their_series_after_expiry_and_id_reuse(tmp_path):
    """Issue 18: a line resolves its series through a cache of its name and tags as sent. When
    the series expires and another series takes its id, the same line must create its own series
    again, never add to the other one; tags in another order are the same series."""
    from test_reliability import config
    d = start_daemon(tmp_path, "--config", config(tmp_path, default_ttl_seconds=1,
                                                  metrics={"other": {"type": "gauge", "ttl_seconds": 3600}}))
    try:
        d.send(b"page.views:1|c|#env:prod,region:eu\npage.views:2|c|#region:eu,env:prod")
        d.send(b"cached.g:1|g|#a:b")
        d.send(b"cached.g:3|g|#a:b")  # a cache hit
        assert d.wait_for("cached_g", 3, a="b") == 3
        deadline = time.monotonic() + 20  # the gauge expires (1 s TTL); counters have none
        while time.monotonic() < deadline and d.value("cached_g", a="b") is not None:
            time.sleep(0.1)
        assert d.value("cached_g", a="b") is None
        d.send(b"other:5|g")  # a gauge that stays: it takes the freed series id
        assert d.wait_for("other", 5) == 5
        d.send(b"cached.g:7|g|#a:b")
        assert d.wait_for("cached_g", 7, a="b") == 7
        assert d.value("other") == 5
        assert d.value("page_views", env="prod", region="eu") == 3
        assert d.value("p2pmetricsd_series_expired_total") == 1
    finally:
        d.stop()
