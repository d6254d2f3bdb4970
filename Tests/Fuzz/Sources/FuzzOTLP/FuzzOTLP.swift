// libFuzzer target: one input is one OTLP/HTTP export body (an ExportMetricsServiceRequest in
// protobuf, already decompressed; the JSON encoding is re-encoded to the same protobuf and read by
// the same decoder).
//
// The body goes through `OTLPDecoder.decode` and three times through `OTLPInput.ingest` into a
// fresh, small store with a small cumulative-stream table (the second time every cumulative
// stream exists, the third after the table expired it), checking the invariants below after each
// step. A violated invariant prints `INVARIANT VIOLATED [name]` and aborts, so libFuzzer saves the
// input. While a reported bug is being fixed its check can be skipped: FUZZ_SKIP_CHECKS=name,name.

import FuzzSupport
import P2PMetricsInputOTLP
import P2PMetricsStore

/// A small store: series limits one request can reach (a point is a series), a tiny memory budget.
let configuration: StoreConfiguration = {
    var c = StoreConfiguration()
    (c.maxSeries, c.maxSeriesPerMetric, c.maxMemoryBytes) = (200, 100, 1 << 20)
    return c
}()

let decoder = OTLPDecoder(maxPointsPerRequest: 2_000, resourceAttributes: ["service.name", "host.name"])
let streamCapacity = 64
let streamBytes = 1 << 16
let streamTTL: UInt32 = 10

/// Every counter's total, by series: cumulative streams must never make one drop.
func counterTotals(_ store: MetricStore) -> [SeriesID: (UInt128, Double)] {
    var totals: [SeriesID: (UInt128, Double)] = [:]
    for family in store.families where family.type == .counter {
        for id in family.series { totals[id] = store.counterValue(id) }
    }
    return totals
}

func checkStore(_ store: MetricStore, counters before: [SeriesID: (UInt128, Double)]) {
    for family in store.families where family.type == .histogram {
        for id in family.series {
            store.withHistogram(id) { buckets, sum, count in
                let total = buckets.reduce(UInt64(0)) { $0 &+ $1 }
                check(total == count, "histogram_count_is_bucket_total", "\(family.name): buckets \(total), count \(count)")
                check(!sum.isNaN, "histogram_sum_not_nan", "\(family.name): sum NaN")
            }
        }
    }
    for (id, old) in before {
        let new = store.counterValue(id)
        check(new.0 > old.0 || (new.0 == old.0 && !(new.1 < old.1)), "counter_never_drops",
              "series \(id): \(old) then \(new)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOTLP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let raw = UnsafeRawBufferPointer(start: data, count: size)
    let decoded = decoder.decode(raw)
    if case .success(let request) = decoded {
        check(request.points.count <= decoder.maxPointsPerRequest, "points_bounded", "\(request.points.count) points")
        for point in request.points {
            check(point.attributes.count <= OTLPDecoder.maxAttributesPerPoint, "attributes_bounded",
                  "\(point.attributes.count) attributes")
            check(point.resourceAttributes.count <= decoder.resourceAttributes.count, "resource_attributes_selected",
                  "\(point.resourceAttributes.count) resource attributes")
            check(point.shape != .histogram || point.bucketCounts.count == point.bounds.count + 1, "histogram_shape",
                  "\(point.bucketCounts.count) counts for \(point.bounds.count) bounds")
            if let e = point.exponential {
                check(point.shape == .exponentialHistogram, "exponential_shape", "\(point.shape) with exponential buckets")
                check(e.positive.count <= OTLPDecoder.maxExponentialBuckets && e.negative.count <= OTLPDecoder.maxExponentialBuckets,
                      "exponential_buckets_bounded", "\(e.positive.count) + \(e.negative.count) buckets")
                check(OTLPDecoder.exponentialScales.contains(e.scale), "exponential_scale", "scale \(e.scale)")
            }
        }
    }

    // A fresh store per input, so that every finding reproduces from its input alone.
    var store = MetricStore(configuration: configuration)
    var input = OTLPInput(streams: CumulativeStreams(capacity: streamCapacity, ttlSeconds: streamTTL, maxBytes: streamBytes))
    input.decoder = decoder
    for round in 0..<3 {
        let applied = store.statistics.samplesApplied
        let statistics = input.statistics
        let counters = counterTotals(store)
        switch input.ingest(protobuf: raw, into: &store) {
        case .failure(let error):
            guard case .failure = decoded else { check(false, "decode_deterministic", "ingest refused a body decode accepted"); break }
            check(!error.message.isEmpty, "error_has_reason", "empty decode error")
            check(store.statistics.samplesApplied == applied, "refused_body_applies_nothing",
                  "\(store.statistics.samplesApplied - applied) samples applied from a refused body")
            check(input.statistics.requestsRejected == statistics.requestsRejected + 1, "refused_body_counted", "not counted")
        case .success(let outcome):
            guard case .success(let request) = decoded else { check(false, "decode_deterministic", "ingest accepted a body decode refused"); break }
            let received = input.statistics.pointsReceived - statistics.pointsReceived
            check(received == UInt64(request.points.count + request.refused.count), "points_counted",
                  "\(received) counted, \(request.points.count) + \(request.refused.count) decoded")
            check(UInt64(outcome.rejectedPoints) <= received, "rejected_at_most_received", "\(outcome.rejectedPoints) of \(received)")
            let rejected = input.statistics.rejected.counts.reduce(0, +) - statistics.rejected.counts.reduce(0, +)
            check(rejected == UInt64(outcome.rejectedPoints), "rejections_counted_by_reason",
                  "\(rejected) counted by reason, \(outcome.rejectedPoints) in the outcome")
            check(OTLPInput.response(outcome).isEmpty == (outcome.rejectedPoints == 0), "partial_success_iff_rejected",
                  "\(outcome.rejectedPoints) rejected")
        }
        checkStore(store, counters: counters)
        check(input.streams.count <= streamCapacity && input.streams.bytes <= streamBytes, "stream_table_bounded",
              "\(input.streams.count) streams, \(input.streams.bytes) bytes")
        // The third round comes after every stream expired (up-down ones withdrawn).
        if round == 1 {
            store.now &+= streamTTL
            input.expireStreams(now: store.now, from: &store)
            check(input.streams.count == 0 && input.streams.bytes == 0, "expiry_empties_the_table",
                  "\(input.streams.count) streams, \(input.streams.bytes) bytes after expiry")
        }
    }
    return 0
}
