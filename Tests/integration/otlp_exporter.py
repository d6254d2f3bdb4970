"""A seed process instrumented with the real OpenTelemetry Python SDK, exporting OTLP/HTTP protobuf.

Usage: otlp_exporter.py ENDPOINT cumulative|delta STEP...
Each STEP is `imports:N:artifact_type:status` (counter add), `active:N` (up-down counter add),
`duration:SECONDS` (histogram record, the catalog's bounds through a View) or `flush` (one export, waited for). The process exits after a final shutdown export.
With P2PM_HISTOGRAM=exponential in the environment, `p2p.transfer.duration` is exported as an
exponential histogram instead (an ExponentialBucketHistogramAggregation View, the SDK's defaults).
"""
import os
import sys

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, ObservableCounter, ObservableGauge, ObservableUpDownCounter, UpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, ExponentialBucketHistogramAggregation, View

# The catalog's bounds of p2p.transfer.duration (Sources/P2PMetricsStore/Catalog.swift).
TRANSFER_DURATION_BOUNDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]

endpoint, temporality, *steps = sys.argv[1:]
kind = AggregationTemporality.DELTA if temporality == "delta" else AggregationTemporality.CUMULATIVE
exporter = OTLPMetricExporter(
    endpoint=endpoint,
    preferred_temporality={instrument: kind for instrument in (Counter, UpDownCounter, Histogram, ObservableCounter,
                                                               ObservableUpDownCounter, ObservableGauge)},
)
# Exports only when flushed (the interval is longer than any test).
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
aggregation = (ExponentialBucketHistogramAggregation() if os.environ.get("P2PM_HISTOGRAM") == "exponential"
               else ExplicitBucketHistogramAggregation(TRANSFER_DURATION_BOUNDS))
provider = MeterProvider(metric_readers=[reader], views=[View(instrument_name="p2p.transfer.duration", aggregation=aggregation)])
meter = provider.get_meter("p2p.seed")
imports = meter.create_counter("p2p.image.imports.total", description="Total number of P2P image imports")
active = meter.create_up_down_counter("p2p.transfers.active", description="Transfers in progress")
duration = meter.create_histogram("p2p.transfer.duration", unit="s", description="Duration of P2P transfers")

for step in steps:
    parts = step.split(":")
    if parts[0] == "imports":
        imports.add(int(parts[1]), {"artifact_type": parts[2], "status": parts[3]})
    elif parts[0] == "active":
        active.add(int(parts[1]))
    elif parts[0] == "duration":
        duration.record(float(parts[1]), {"peer_type": "seed"})
    elif parts[0] == "flush":
        assert provider.force_flush(timeout_millis=10_000), "export failed"
provider.shutdown()
print("exported", flush=True)
