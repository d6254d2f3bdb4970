"""A seed process instrumented with the real OpenTelemetry Python SDK, exporting OTLP/HTTP protobuf.

Usage: otlp_exporter.py ENDPOINT cumulative|delta STEP...
Each STEP is `imports:N:artifact_type:status` (counter add), `active:N` (up-down counter add),
`duration:SECONDS` (histogram record, the catalog's bounds through a View) or `flush` (one export, waited for). The process exits after a final shutdown export.
With P2PM_HISTOGRAM=exponential in the environment, `p2p.transfer.duration` is exported as an
exponential histogram instead (an ExponentialBucketHistogramAggregation View, the SDK's defaults).
"""
import os
import sys

from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation

from otlp_seed_process import meter_provider

endpoint, temporality, *steps = sys.argv[1:]
provider = meter_provider(endpoint, temporality,
                          ExponentialBucketHistogramAggregation() if os.environ.get("P2PM_HISTOGRAM") == "exponential" else None)
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
