"""A seed process instrumented with the real OpenTelemetry Python SDK, exporting OTLP/HTTP protobuf.

It is the seed's `metrics_otel` module (record_p2p_image_import, record_p2p_chunk_transfer, ...)
written on OpenTelemetry instruments, with the semantics of the C client's helpers
(Clients/c/p2pmetrics.c), and it takes the same command words as the C client's driver
(Clients/c/tests/e2e_driver.c), so one command line runs the same workload through either path:

Usage: otlp_seed_process.py ENDPOINT cumulative|delta COMMAND...
  import TYPE OK SIZE      p2p.image.imports.total{artifact_type} += 1; failed: ...imports.failed
                           += 1, else p2p.bytes_transferred.total{artifact_type} += SIZE (if > 0)
  download ID OK SECS      p2p.image.downloads.total += 1 (+ ...downloads.failed when not OK);
                           p2p.transfer.duration records SECS (ID is not a label)
  chunk SIZE DEDUP         deduplicated: p2p.chunks_deduplicated.total += 1; else
                           p2p.chunks_transferred.total += 1 and p2p.bytes_transferred.total += SIZE
  verify OK TYPE           p2p.verification.success|failed{verification_type} += 1
  cache HIT TYPE           p2p.cache.hits|misses{cache_type} += 1
  tstart                   p2p.transfers.active += 1 (an up-down counter; the transfer stays open)
  flush                    one export, waited for
  wait                     prints "waiting" and reads one line from stdin
The process exits after a final shutdown export and prints "exported".
"""
from __future__ import annotations

import sys

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import (Counter, Histogram, MeterProvider, ObservableCounter, ObservableGauge,
                                       ObservableUpDownCounter, UpDownCounter)
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

# The catalog's bounds of p2p.transfer.duration (Sources/P2PMetricsStore/Catalog.swift): the
# receiver refuses other bounds (bucket_mismatch), so the seed's SDK sets them with a View.
TRANSFER_DURATION_BOUNDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]


def meter_provider(endpoint: str, temporality: str, histogram_aggregation=None) -> MeterProvider:
    """An SDK MeterProvider exporting OTLP/HTTP protobuf to `endpoint` with the given temporality
    for every instrument, only when flushed (the export interval is longer than any test);
    `p2p.transfer.duration` aggregated with `histogram_aggregation` (default: the catalog's bounds)."""
    kind = AggregationTemporality.DELTA if temporality == "delta" else AggregationTemporality.CUMULATIVE
    exporter = OTLPMetricExporter(
        endpoint=endpoint,
        preferred_temporality={instrument: kind for instrument in (Counter, UpDownCounter, Histogram, ObservableCounter,
                                                                   ObservableUpDownCounter, ObservableGauge)},
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return MeterProvider(metric_readers=[reader], views=[
        View(instrument_name="p2p.transfer.duration",
             aggregation=histogram_aggregation or ExplicitBucketHistogramAggregation(TRANSFER_DURATION_BOUNDS)),
    ])


class SeedMetrics:
    """The seed's P2P metrics functions on OpenTelemetry instruments."""

    def __init__(self, provider: MeterProvider):
        meter = provider.get_meter("blixard_core::metrics_otel")
        counter = meter.create_counter
        self.imports = counter("p2p.image.imports.total", description="Total number of P2P image imports")
        self.imports_failed = counter("p2p.image.imports.failed", description="Number of failed P2P image imports")
        self.downloads = counter("p2p.image.downloads.total", description="Total number of P2P image downloads")
        self.downloads_failed = counter("p2p.image.downloads.failed", description="Number of failed P2P image downloads")
        self.bytes = counter("p2p.bytes_transferred.total", unit="By", description="Total bytes transferred via P2P")
        self.chunks = counter("p2p.chunks_transferred.total", description="Total chunks transferred via P2P")
        self.chunks_dedup = counter("p2p.chunks_deduplicated.total", description="Chunks deduplicated")
        self.verified = counter("p2p.verification.success", description="Successful P2P image verifications")
        self.verify_failed = counter("p2p.verification.failed", description="Failed P2P image verifications")
        self.cache_hits = counter("p2p.cache.hits", description="Number of P2P cache hits")
        self.cache_misses = counter("p2p.cache.misses", description="Number of P2P cache misses")
        self.active = meter.create_up_down_counter("p2p.transfers.active", description="Number of active P2P transfers")
        self.duration = meter.create_histogram("p2p.transfer.duration", unit="s", description="Duration of P2P transfers")

    def record_image_import(self, artifact_type: str, success: bool, size: int) -> None:
        labels = {"artifact_type": artifact_type}
        self.imports.add(1, labels)
        if not success:
            self.imports_failed.add(1, labels)
        elif size > 0:
            self.bytes.add(size, labels)

    def record_image_download(self, success: bool, seconds: float) -> None:
        self.downloads.add(1)
        if not success:
            self.downloads_failed.add(1)
        self.duration.record(seconds)

    def record_chunk_transfer(self, size: int, deduplicated: bool) -> None:
        if deduplicated:
            self.chunks_dedup.add(1)
        else:
            self.chunks.add(1)
            self.bytes.add(size)

    def record_verification(self, success: bool, verification_type: str) -> None:
        (self.verified if success else self.verify_failed).add(1, {"verification_type": verification_type})

    def record_cache_access(self, hit: bool, cache_type: str) -> None:
        (self.cache_hits if hit else self.cache_misses).add(1, {"cache_type": cache_type})


def run(provider: MeterProvider, seed: SeedMetrics, commands: list[str]) -> None:
    arity = {"import": 3, "download": 3, "chunk": 2, "verify": 2, "cache": 2, "tstart": 0, "flush": 0, "wait": 0}
    i = 0
    while i < len(commands):
        command = commands[i]
        if command not in arity:
            raise SystemExit(f"otlp_seed_process: unknown command {command}")
        a = commands[i + 1:i + 1 + arity[command]]
        i += 1 + arity[command]
        if command == "import":
            seed.record_image_import(a[0], a[1] == "1", int(a[2]))
        elif command == "download":
            seed.record_image_download(a[1] == "1", float(a[2]))
        elif command == "chunk":
            seed.record_chunk_transfer(int(a[0]), a[1] == "1")
        elif command == "verify":
            seed.record_verification(a[0] == "1", a[1])
        elif command == "cache":
            seed.record_cache_access(a[0] == "1", a[1])
        elif command == "tstart":
            seed.active.add(1)
        elif command == "flush":
            assert provider.force_flush(timeout_millis=10_000), "export failed"
        else:
            print("waiting", flush=True)
            if not sys.stdin.readline():
                raise SystemExit("otlp_seed_process: stdin closed while waiting")


if __name__ == "__main__":
    endpoint, temporality, *commands = sys.argv[1:]
    provider = meter_provider(endpoint, temporality)
    run(provider, SeedMetrics(provider), commands)
    provider.shutdown()
    print("exported", flush=True)
