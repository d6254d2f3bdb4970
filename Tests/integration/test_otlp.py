"""The OTLP/HTTP receiver (`--otlp`), driven by the real OpenTelemetry Python SDK and by hostile bodies."""
from __future__ import annotations

import gzip
import os
import http.client
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, start_daemon
from exposition_check import problems, promtool_problems

EXPORTER = Path(__file__).with_name("otlp_exporter.py")


@pytest.fixture
def otlp(tmp_path):
    port = free_port()
    d = start_daemon(tmp_path, "--otlp", f"127.0.0.1:{port}")
    d.otlp_port = port
    yield d
    assert d.stop() == 0


def post(port: int, body: bytes, content_type: str = "application/x-protobuf", encoding: str | None = None,
         method: str = "POST") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    conn.request(method, "/v1/metrics", body=body, headers=headers)
    response = conn.getresponse()
    result = (response.status, response.read())
    conn.close()
    return result


def run_exporter(port: int, instance: str, temporality: str, *steps: str, **env_extra: str) -> subprocess.Popen:
    """One seed process; `instance` is its service.instance.id (the SDK draws a random one per
    process otherwise: a restarted process would be a new stream, not a reset of its old one)."""
    env = dict(os.environ, OTEL_RESOURCE_ATTRIBUTES=f"service.name=seed,service.instance.id={instance}")
    env.update(env_extra)
    return subprocess.Popen([sys.executable, str(EXPORTER), f"http://127.0.0.1:{port}/v1/metrics", temporality, *steps],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def finish(process: subprocess.Popen) -> None:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and b"exported" in out, out.decode(errors="replace")


def test_otel_sdk_cumulative_and_delta_processes_with_a_restart_give_exact_totals(otlp):
    """Two seed processes on the real OpenTelemetry SDK at once, one cumulative (restarted midway:
    a new start time), one delta: the counter totals and the up-down counter are exact."""
    port = otlp.otlp_port
    cumulative = run_exporter(port, "a", "cumulative", "imports:3:image:success", "active:3", "duration:0.7", "flush",
                              "imports:2:image:success", "imports:1:image:failed", "active:-1", "duration:0.9",
                              "duration:7", "flush")
    delta = run_exporter(port, "b", "delta", "imports:5:image:success", "active:2", "duration:700", "flush",
                         "imports:1:image:success", "flush", "flush")
    finish(cumulative)
    finish(delta)
    # The cumulative process restarts (same resource and scope, new start time): it counts from zero,
    # the total never drops; its up-down counter's new value replaces the old one's.
    finish(run_exporter(port, "a", "cumulative", "imports:4:image:success", "active:1", "duration:0.3", "flush"))

    assert otlp.value("p2p_image_imports_total", artifact_type="image", status="success") == 3 + 2 + 5 + 1 + 4
    assert otlp.value("p2p_image_imports_total", artifact_type="image", status="failed") == 1
    assert otlp.value("p2p_transfers_active") == 1 + 2  # the restarted process's 1, the delta process's 2
    assert otlp.value("p2pmetricsd_otlp_points_rejected_total", reason="bad_value") == 0
    assert otlp.value("p2pmetricsd_otlp_requests_rejected_total") == 0
    # The histogram, with the catalog's bounds through an SDK View: bucket counts, count and sum.
    assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le="0.25") == 0
    assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le="0.5") == 1  # 0.3
    assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le="1") == 3  # 0.7, 0.9
    assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le="10") == 4  # 7
    assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le="600") == 4
    assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le="+Inf") == 5  # 700
    assert otlp.value("p2p_transfer_duration_count", peer_type="seed") == 5
    assert abs(otlp.value("p2p_transfer_duration_sum", peer_type="seed") - (0.7 + 0.9 + 7 + 700 + 0.3)) < 1e-9
    assert otlp.value("p2pmetricsd_otlp_points_rejected_total", reason="bucket_mismatch") == 0
    assert otlp.value("p2pmetricsd_otlp_streams") == 4  # a: two import series, active, duration; b sends deltas
    text = otlp.scrape_text()
    assert promtool_problems(text) == [] and problems(text, openmetrics=False) == []

    # The same series through text StatsD: one store, the counts add.
    otlp.send(b"p2p.image.imports.total:2|c|#artifact_type:image,status:success")
    assert otlp.wait_for("p2p_image_imports_total", 17, artifact_type="image", status="success") == 17


def test_otel_sdk_exponential_histograms_land_in_the_catalogs_buckets_with_exact_counts_and_sum(otlp):
    """`p2p.transfer.duration` exported by the real SDK as an exponential histogram (its default
    ExponentialBucketHistogramAggregation) from a cumulative process — whose second export has
    downscaled from scale 20 to 4 — and a delta one: re-bucketed into the catalog's explicit
    bounds, every bucket count, the count and the sum exact; nothing counted twice across the
    scale change; the cumulative process restarted adds its new observation."""
    port = otlp.otlp_port
    cumulative = run_exporter(port, "a", "cumulative", "duration:0.7", "flush", "duration:0.9", "duration:7", "duration:45",
                              "flush", P2PM_HISTOGRAM="exponential")
    delta = run_exporter(port, "b", "delta", "duration:700", "duration:0.3", "flush", P2PM_HISTOGRAM="exponential")
    finish(cumulative)
    finish(delta)
    expected = {"0.25": 0, "0.5": 1, "1": 3, "5": 3, "10": 4, "30": 4, "60": 5, "600": 5, "+Inf": 6}
    for le, count in expected.items():
        assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le=le) == count, le
    assert otlp.value("p2p_transfer_duration_count", peer_type="seed") == 6
    assert abs(otlp.value("p2p_transfer_duration_sum", peer_type="seed") - (0.7 + 0.9 + 7 + 45 + 700 + 0.3)) < 1e-9
    # The cumulative process restarts (same resource, new start time, back at scale 20): a reset of
    # its stream, its one new observation adds.
    finish(run_exporter(port, "a", "cumulative", "duration:3", "flush", P2PM_HISTOGRAM="exponential"))
    assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le="2.5") == 3
    assert otlp.value("p2p_transfer_duration_bucket", peer_type="seed", le="5") == 4
    assert otlp.value("p2p_transfer_duration_count", peer_type="seed") == 7
    assert abs(otlp.value("p2p_transfer_duration_sum", peer_type="seed") - (0.7 + 0.9 + 7 + 45 + 700 + 0.3 + 3)) < 1e-9
    for reason in ("unsupported_type", "bad_value", "bucket_mismatch", "too_many_buckets"):
        assert otlp.value("p2pmetricsd_otlp_points_rejected_total", reason=reason) == 0, reason
    assert otlp.value("p2pmetricsd_otlp_points_received_total") >= 3
    text = otlp.scrape_text()
    assert promtool_problems(text) == [] and problems(text, openmetrics=False) == []


def test_selected_resource_attributes_become_labels_through_the_real_sdk(tmp_path):
    """`otlp_resource_labels: ["service.name", "host.name"]`: the SDK's Resource (from
    OTEL_RESOURCE_ATTRIBUTES) labels every series of the process as `service_name`, `host_name`;
    other resource attributes (`service.instance.id`) stay out. Two hosts, two series, exact
    totals. A SIGHUP with another list keeps the running one until a restart, and says so."""
    import json
    import signal
    import time

    config = tmp_path / "p2pmetricsd.json"
    config.write_text(json.dumps({"otlp_resource_labels": ["service.name", "host.name"]}))
    port = free_port()
    d = start_daemon(tmp_path, "--config", str(config), "--otlp", f"127.0.0.1:{port}")
    try:
        def attributes(host: str) -> str:
            return f"service.name=seed,service.instance.id={host}-1,host.name={host}"

        one = run_exporter(port, "x", "cumulative", "imports:2:image:success", "flush", "imports:1:image:success", "flush",
                           OTEL_RESOURCE_ATTRIBUTES=attributes("node-1"))
        two = run_exporter(port, "x", "delta", "imports:5:image:success", "duration:0.7", "flush",
                           OTEL_RESOURCE_ATTRIBUTES=attributes("node-2"))
        finish(one)
        finish(two)
        labels = {"artifact_type": "image", "status": "success", "service_name": "seed"}
        assert d.value("p2p_image_imports_total", host_name="node-1", **labels) == 3
        assert d.value("p2p_image_imports_total", host_name="node-2", **labels) == 5
        assert d.value("p2p_transfer_duration_count", host_name="node-2", service_name="seed", peer_type="seed") == 1
        assert "service_instance_id" not in d.scrape_text()
        assert d.value("p2p_image_imports_total", artifact_type="image", status="success") is None  # no unlabelled series

        config.write_text(json.dumps({"otlp_resource_labels": ["service.name"]}))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "kept until a restart: otlp_resource_labels" not in d.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "kept until a restart: otlp_resource_labels" in d.log_path.read_text()
        finish(run_exporter(port, "x", "delta", "imports:4:image:success", "flush", OTEL_RESOURCE_ATTRIBUTES=attributes("node-1")))
        assert d.value("p2p_image_imports_total", host_name="node-1", **labels) == 7
    finally:
        assert d.stop() == 0


def test_a_restart_under_a_new_instance_id_is_a_new_stream_whose_counts_add(otlp):
    """The SDK's default: a random service.instance.id per process. The restarted process is a new
    stream; its first export counts whole (it has a start time), so the counter total is exact."""
    port = otlp.otlp_port
    for _ in range(2):
        process = subprocess.Popen([sys.executable, str(EXPORTER), f"http://127.0.0.1:{port}/v1/metrics", "cumulative",
                                    "imports:2:chart:success", "flush", "imports:1:chart:success", "flush"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        finish(process)
    assert otlp.value("p2p_image_imports_total", artifact_type="chart", status="success") == 6


def test_hostile_otlp_bodies_are_refused_with_their_status_and_counted(otlp):
    port = otlp.otlp_port
    status, body = post(port, b"\xff\xff\xff\xff garbage")
    assert status == 400 and b"undecodable" in body
    status, body = post(port, gzip.compress(b"\0" * (64 << 20)), encoding="gzip")  # 64 MiB of zeros in ~64 KiB
    assert status == 413 and b"decompressed" in body
    status, _ = post(port, b"not gzip", encoding="gzip")
    assert status == 400
    status, _ = post(port, b"a=1", content_type="text/plain")
    assert status == 415
    status, body = post(port, b"[" * 100_000, content_type="application/json")  # refused before parsing
    assert status == 400 and b"nested deeper" in body
    status, _ = post(port, b"", method="PUT")
    assert status == 405
    status, _ = post(port, b"\0" * ((4 << 20) + 1))
    assert status == 413
    assert otlp.value("p2pmetricsd_otlp_requests_rejected_total") == 4  # garbage, bomb, not gzip, deep JSON
    assert otlp.value("p2pmetricsd_http_responses_total", code="413") == 2
    assert otlp.value("p2pmetricsd_http_responses_total", code="415") == 1
    # Still serving, and still taking exports.
    assert post(port, b"")[0] == 200


def test_too_many_points_get_partial_success_and_the_rest_apply(otlp):
    """11,000 gauge points in one request: 10,000 apply, 1,000 are refused (partial_success)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    point = b"\x21" + struct.pack("<d", 7.0)  # as_double (field 4, fixed64)
    metric = field(1, b"otlp.points") + field(5, b"".join(field(1, point) for _ in range(11_000)))
    request = field(1, field(2, field(2, metric)))
    status, body = post(otlp.otlp_port, request)
    assert status == 200
    # ExportMetricsServiceResponse.partial_success { rejected_data_points: 1000, error_message }
    assert body.startswith(b"\x0a") and b"\x08" + varint(1000) in body and b"too_many_points" in body
    assert otlp.value("otlp_points") == 7
    assert otlp.value("p2pmetricsd_otlp_points_rejected_total", reason="too_many_points") == 1000
    assert otlp.value("p2pmetricsd_otlp_points_received_total") == 11_000


def test_otlp_json_maps_like_protobuf(otlp):
    """OTLP/JSON (64-bit integers as strings, enums as integers): a cumulative sum twice, a
    histogram with the catalog's bounds, and a point refused in a JSON partialSuccess."""
    import json

    def request(value: str, extra_points: list | None = None) -> bytes:
        points = [{"attributes": [{"key": "artifact_type", "value": {"stringValue": "layer"}},
                                  {"key": "status", "value": {"stringValue": "success"}}],
                   "startTimeUnixNano": "1000", "timeUnixNano": "2000", "asInt": value}]
        return json.dumps({"resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json"}}]},
            "scopeMetrics": [{"scope": {"name": "seed"}, "metrics": [
                {"name": "p2p.image.imports.total",
                 "sum": {"dataPoints": points + (extra_points or []), "aggregationTemporality": 2, "isMonotonic": True}},
                {"name": "p2p.transfer.duration", "histogram": {"aggregationTemporality": 1, "dataPoints": [{
                    "startTimeUnixNano": "1000", "timeUnixNano": "2000", "count": "2", "sum": 3.5,
                    "bucketCounts": ["0", "0", "0", "0", "0", "0", "1", "1", "0", "0", "0", "0", "0", "0", "0", "0"],
                    "explicitBounds": [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]}]}},
            ]}]}]}).encode()

    status, body = post(otlp.otlp_port, request("4"), content_type="application/json")
    assert status == 200 and json.loads(body) == {}
    bad = [{"attributes": [{"key": "x", "value": {"arrayValue": {"values": []}}}], "asInt": "1", "startTimeUnixNano": "1"}]
    status, body = post(otlp.otlp_port, request("10", bad), content_type="application/json")
    assert status == 200
    assert json.loads(body)["partialSuccess"]["rejectedDataPoints"] == "1"
    assert otlp.value("p2p_image_imports_total", artifact_type="layer", status="success") == 10
    assert otlp.value("p2p_transfer_duration_count") == 4
    assert otlp.value("p2p_transfer_duration_bucket", le="1") == 2
    assert otlp.value("p2p_transfer_duration_sum") == 7
    assert otlp.value("p2pmetricsd_otlp_points_rejected_total", reason="bad_attribute") == 1
    status, _ = post(otlp.otlp_port, b"{not json", content_type="application/json")
    assert status == 400


def test_otlp_json_exponential_histogram_maps_like_protobuf(otlp):
    """An ExponentialHistogram in OTLP/JSON (zeroCount and bucketCounts as strings, the scale as a
    number, offsets as a string or a number): re-bucketed into the catalog's bounds like a protobuf one; a scale
    outside -10...20 is a refused point."""
    import json

    def request(scale: int) -> bytes:
        # scale -1 (base 4): zero bucket ×1; positive offset -1: (0.25, 1] ×2, (1, 4] ×1, (4, 16] ×1;
        # negative offset 0: [-4, -1) ×1; max 9 — into the catalog's bounds: le 0.01 (0, −1), le 1, le 5, le 10 (9, not 16)
        return json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{
            "name": "p2p.transfer.duration", "exponentialHistogram": {"aggregationTemporality": 1, "dataPoints": [{
                "attributes": [{"key": "peer_type", "value": {"stringValue": "json"}}],
                "startTimeUnixNano": "1000", "timeUnixNano": "2000", "count": "6", "sum": 11.5, "scale": scale,
                "zeroCount": "1", "positive": {"offset": "-1", "bucketCounts": ["2", "1", "1"]},
                "negative": {"offset": 0, "bucketCounts": ["1"]}, "min": -2, "max": 9}]}}]}]}]}).encode()

    status, body = post(otlp.otlp_port, request(-1), content_type="application/json")
    assert status == 200 and json.loads(body) == {}
    expected = {"0.01": 2, "0.5": 2, "1": 4, "2.5": 4, "5": 5, "10": 6, "+Inf": 6}
    for le, count in expected.items():
        assert otlp.value("p2p_transfer_duration_bucket", peer_type="json", le=le) == count, le
    assert otlp.value("p2p_transfer_duration_count", peer_type="json") == 6
    assert abs(otlp.value("p2p_transfer_duration_sum", peer_type="json") - 11.5) < 1e-9
    status, body = post(otlp.otlp_port, request(21), content_type="application/json")
    assert status == 200 and json.loads(body)["partialSuccess"]["rejectedDataPoints"] == "1"
    assert otlp.value("p2pmetricsd_otlp_points_rejected_total", reason="bad_value") == 1
    assert otlp.value("p2p_transfer_duration_count", peer_type="json") == 6


def test_a_stalled_export_body_times_out_and_never_holds_up_datagrams(tmp_path):
    """A client that announces a body and sends a little of it: datagrams keep applying meanwhile,
    the request ends with 408 after the request timeout, and the receiver still answers."""
    import json
    import socket
    import time

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"limits": {"request_timeout_seconds": 1}}))
    port = free_port()
    d = start_daemon(tmp_path, "--otlp", f"127.0.0.1:{port}", "--config", str(config))
    try:
        stalled = socket.create_connection(("127.0.0.1", port), timeout=30)
        stalled.sendall(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                        b"Content-Length: 100000\r\n\r\n" + b"\x0a" * 10)
        started = time.monotonic()
        for i in range(1, 6):
            d.send(b"stall.check:1|c")
            assert d.wait_for("stall_check", float(i)) == i  # applied while the body is outstanding
        response = stalled.recv(4096)
        waited = time.monotonic() - started
        assert response.startswith(b"HTTP/1.1 408"), response
        assert waited < 20  # generous: the timeout is 1 s
        stalled.close()
        assert post(port, b"")[0] == 200
    finally:
        assert d.stop() == 0
