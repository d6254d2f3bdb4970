import Foundation
import P2PMetricsTestVectors
import Testing
@testable import P2PMetricsInputOTLP
import P2PMetricsWire
@testable import P2PMetricsStore

/// Builds protobuf bytes by hand (field numbers from opentelemetry-proto metrics/v1).
enum PB {
    static func key(_ field: UInt64, _ wire: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        Varint.append(field << 3 | wire, to: &out)
        return out
    }
    static func bytes(_ field: UInt64, _ payload: [UInt8]) -> [UInt8] {
        var out = key(field, 2)
        Varint.append(UInt64(payload.count), to: &out)
        return out + payload
    }
    static func string(_ field: UInt64, _ s: String) -> [UInt8] { bytes(field, Array(s.utf8)) }
    static func varint(_ field: UInt64, _ v: UInt64) -> [UInt8] {
        var out = key(field, 0)
        Varint.append(v, to: &out)
        return out
    }
    static func fixed64(_ field: UInt64, _ v: UInt64) -> [UInt8] {
        var out = key(field, 1)
        withUnsafeBytes(of: v.littleEndian) { out += $0 }
        return out
    }
    static func double(_ field: UInt64, _ d: Double) -> [UInt8] { fixed64(field, d.bitPattern) }

    /// KeyValue with a string AnyValue.
    static func attribute(_ key: String, _ value: String) -> [UInt8] {
        bytes(7, string(1, key) + bytes(2, string(1, value)))
    }
    /// NumberDataPoint.
    static func point(_ value: Double, start: UInt64 = 0, time: UInt64 = 2, attributes: [(String, String)] = [], asInt: Bool = false) -> [UInt8] {
        var p = fixed64(2, start) + fixed64(3, time)
        p += asInt ? fixed64(6, UInt64(bitPattern: Int64(value))) : double(4, value)
        for (k, v) in attributes { p += attribute(k, v) }
        return p
    }
    /// Metric with a Sum (field 7), Gauge (5) or other data field.
    static func sum(_ name: String, monotonic: Bool, temporality: UInt64, _ points: [[UInt8]]) -> [UInt8] {
        string(1, name) + bytes(7, points.flatMap { bytes(1, $0) } + varint(2, temporality) + varint(3, monotonic ? 1 : 0))
    }
    static func gauge(_ name: String, _ points: [[UInt8]]) -> [UInt8] {
        string(1, name) + bytes(5, points.flatMap { bytes(1, $0) })
    }
    /// Metric with a Histogram (field 9): HistogramDataPoint {start 2, time 3, count 4, sum 5,
    /// bucket_counts 6 and explicit_bounds 7 packed, attributes 9}.
    static func histogram(_ name: String, temporality: UInt64, start: UInt64 = 1, counts: [UInt64], bounds: [Double], sum: Double,
                          attributes: [(String, String)] = []) -> [UInt8] {
        var p = fixed64(2, start) + fixed64(3, 2) + fixed64(4, counts.reduce(0, +)) + double(5, sum)
        p += bytes(6, counts.flatMap { c in withUnsafeBytes(of: c.littleEndian) { Array($0) } })
        p += bytes(7, bounds.flatMap { b in withUnsafeBytes(of: b.bitPattern.littleEndian) { Array($0) } })
        for (k, v) in attributes { p += bytes(9, string(1, k) + bytes(2, string(1, v))) }
        return string(1, name) + bytes(9, bytes(1, p) + varint(2, temporality))
    }

    /// ExportMetricsServiceRequest with one ResourceMetrics (resource attribute service.name, and
    /// `resource` — KeyValues as `bytes(1, …)`) and one scope.
    static func request(service: String = "a", resource extra: [UInt8] = [], _ metrics: [[UInt8]]) -> [UInt8] {
        let resource = bytes(1, bytes(1, string(1, "service.name") + bytes(2, string(1, service))) + extra)
        let scope = bytes(1, string(1, "seed"))
        return bytes(1, resource + bytes(2, scope + metrics.flatMap { bytes(2, $0) }))
    }
}

struct OTLPFed {
    var fed = FedStore()
    var otlp = OTLPInput()

    mutating func export(_ body: [UInt8]) -> Result<OTLPInput.Outcome, OTLPDecodeError> {
        body.withUnsafeBytes { otlp.ingest(protobuf: $0, into: &fed.store) }
    }
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? { fed.value(name, labels) }
}

@Suite struct OTLPDecoderTests {
    @Test("a Sum's points decode with name, shape, temporality, attributes, times and int or double values; unknown fields skipped")
    func decodesSum() throws {
        let metric = PB.string(3, "1") + PB.sum("p2p.image.imports.total", monotonic: true, temporality: 2, [
            PB.point(3, start: 10, time: 20, attributes: [("artifact_type", "image"), ("status", "ok")], asInt: true)
                + PB.varint(99, 7) + PB.string(98, "unknown"),
            PB.point(1.5, start: 10, time: 20),
        ])
        let body = PB.request([metric])
        let request = try body.withUnsafeBytes { try OTLPDecoder().decode($0).get() }
        #expect(request.points.count == 2)
        #expect(request.refused.isEmpty)
        let first = request.points[0]
        #expect(first.metric == "p2p.image.imports.total")
        #expect(first.shape == .monotonicSum)
        #expect(first.temporality == .cumulative)
        #expect(first.startTimeUnixNano == 10 && first.timeUnixNano == 20)
        #expect(first.value == 3)
        #expect(first.attributes.map { "\($0.key)=\($0.value)" } == ["artifact_type=image", "status=ok"])
        #expect(request.points[1].value == 1.5)
    }

    @Test("bool, int and double attributes become text; arrays, lists and bytes refuse their point")
    func attributeValues() throws {
        func kv(_ key: String, _ any: [UInt8]) -> [UInt8] { PB.bytes(7, PB.string(1, key) + PB.bytes(2, any)) }
        let good = PB.point(1) + kv("b", PB.varint(2, 1)) + kv("i", PB.varint(3, UInt64(bitPattern: -4))) + kv("d", PB.double(4, 0.25))
        let bad = PB.point(1) + kv("arr", PB.bytes(5, []))
        let body = PB.request([PB.gauge("g", [good, bad])])
        let request = try body.withUnsafeBytes { try OTLPDecoder().decode($0).get() }
        #expect(request.points.count == 1)
        #expect(request.points[0].attributes.map { "\($0.key)=\($0.value)" } == ["b=true", "i=-4", "d=0.25"])
        #expect(request.refused == [.badAttribute])
    }

    @Test("garbage and truncated bodies are decode errors; summaries and too many points are refused points")
    func refusals() throws {
        for garbage: [UInt8] in [[0xFF, 0xFF, 0xFF], [0x0A, 0x05, 0x01], Array("hello world".utf8), [0x0B]] {
            #expect(throws: OTLPDecodeError.self) { try garbage.withUnsafeBytes { try OTLPDecoder().decode($0).get() } }
        }
        let summary = PB.string(1, "s") + PB.bytes(11, PB.bytes(1, PB.fixed64(4, 1)))
        let many = PB.gauge("g", (0..<5).map { PB.point(Double($0)) })
        let request = try PB.request([summary, many]).withUnsafeBytes { try OTLPDecoder(maxPointsPerRequest: 3).decode($0).get() }
        #expect(request.points.count == 3)
        #expect(request.refused == [.unsupportedType, .tooManyPoints, .tooManyPoints])
        let tooManyAttributes = PB.point(1, attributes: (0..<17).map { ("k\($0)", "v") })
        let refused = try PB.request([PB.gauge("g", [tooManyAttributes])]).withUnsafeBytes { try OTLPDecoder().decode($0).get() }
        #expect(refused.points.isEmpty && refused.refused == [.tooManyAttributes])
    }
}

@Suite struct CumulativeStreamsTests {
    @Test("first point counts from its start time, increases add, a lower value or new start is a reset of that stream only")
    func monotonic() {
        var streams = CumulativeStreams()
        #expect(streams.delta(stream: [1], start: 100, value: 5, monotonic: true, now: 0) == 5)
        #expect(streams.delta(stream: [1], start: 100, value: 8, monotonic: true, now: 1) == 3)
        #expect(streams.delta(stream: [2], start: 100, value: 4, monotonic: true, now: 1) == 4)
        #expect(streams.delta(stream: [1], start: 200, value: 2, monotonic: true, now: 2) == 2)  // restarted: new start
        #expect(streams.delta(stream: [1], start: 200, value: 1, monotonic: true, now: 3) == 1)  // lower value: reset
        #expect(streams.delta(stream: [2], start: 100, value: 6, monotonic: true, now: 3) == 2)  // the other stream unaffected
        #expect(streams.delta(stream: [3], start: 0, value: 9, monotonic: true, now: 3) == 0)  // no start time: baseline only
    }

    @Test("an up-down stream adds value minus previous; full table refuses new streams; idle streams expire")
    func nonMonotonicCapacityExpiry() {
        var streams = CumulativeStreams(capacity: 2, ttlSeconds: 10)
        #expect(streams.delta(stream: [1], start: 1, value: 3, monotonic: false, now: 0) == 3)
        #expect(streams.delta(stream: [1], start: 1, value: 1, monotonic: false, now: 0) == -2)
        #expect(streams.delta(stream: [2], start: 1, value: 1, monotonic: false, now: 5) == 1)
        #expect(streams.delta(stream: [3], start: 1, value: 1, monotonic: false, now: 5) == nil)
        #expect(streams.expire(now: 12).isEmpty)  // [1] last seen at 0: forgotten (no series to withdraw from)
        #expect(streams.count == 1)
        #expect(streams.delta(stream: [3], start: 1, value: 1, monotonic: false, now: 12) == 1)
    }

    @Test("the table's bytes are bounded: a stream whose series would pass maxBytes is refused, expiry gives the bytes back")
    func byteBudget() {
        var streams = CumulativeStreams(ttlSeconds: 10, maxBytes: 4_000)
        let big = (name: "g", labels: [("k", String(repeating: "v", count: 1_000))])
        #expect(streams.delta(stream: [1], start: 1, value: 1, monotonic: false, now: 0, series: big) == 1)
        #expect(streams.delta(stream: [2], start: 1, value: 1, monotonic: false, now: 0, series: big) == 1)
        #expect(streams.delta(stream: [3], start: 1, value: 1, monotonic: false, now: 0, series: big) == 1)
        #expect(streams.delta(stream: [4], start: 1, value: 1, monotonic: false, now: 0, series: big) == nil)
        #expect(streams.bytes <= 4_000)
        #expect(streams.expire(now: 10).count == 3)
        #expect(streams.bytes == 0)
        #expect(streams.delta(stream: [4], start: 1, value: 1, monotonic: false, now: 10, series: big) == 1)
    }
}

@Suite struct OTLPInputTests {
    @Test("two cumulative processes and a delta one sum exactly; a restart never drops the total")
    func temporalityIntoStore() throws {
        var o = OTLPFed()
        let attrs = [("artifact_type", "image"), ("status", "ok")]
        func cumulative(_ service: String, start: UInt64, _ v: Double) -> [UInt8] {
            PB.request(service: service, [PB.sum("p2p.image.imports.total", monotonic: true, temporality: 2, [PB.point(v, start: start, attributes: attrs, asInt: true)])])
        }
        _ = try o.export(cumulative("a", start: 1, 5)).get()
        _ = try o.export(cumulative("b", start: 1, 7)).get()
        _ = try o.export(cumulative("a", start: 1, 9)).get()  // +4
        _ = try o.export(cumulative("a", start: 50, 2)).get()  // restarted: +2
        let delta = PB.request(service: "c", [PB.sum("p2p.image.imports.total", monotonic: true, temporality: 1, [PB.point(3, attributes: attrs)])])
        _ = try o.export(delta).get()
        _ = try o.export(delta).get()
        let total = o.value("p2p_image_imports_total", ["artifact_type": "image", "status": "ok"])
        #expect(total == 24)  // 5 + 7, +4, restart +2, delta 3 + 3
    }

    @Test("an up-down counter from two processes sums; a gauge sets; partial success names refusals")
    func gaugesAndPartialSuccess() throws {
        var o = OTLPFed()
        func active(_ service: String, _ v: Double, temporality: UInt64 = 2) -> [UInt8] {
            PB.request(service: service, [PB.sum("p2p.transfers.active", monotonic: false, temporality: temporality, [PB.point(v, start: 1)])])
        }
        _ = try o.export(active("a", 3)).get()
        _ = try o.export(active("b", 2)).get()
        _ = try o.export(active("a", 1)).get()
        #expect(o.value("p2p_transfers_active") == 3)
        _ = try o.export(active("d", -1, temporality: 1)).get()
        #expect(o.value("p2p_transfers_active") == 2)
        _ = try o.export(PB.request([PB.gauge("p2p.queue.depth", [PB.point(4), PB.point(6)])])).get()
        #expect(o.value("p2p_queue_depth") == 6)

        let mixed = PB.request([PB.sum("c.total", monotonic: true, temporality: 1, [PB.point(1), PB.point(-1)]),
                                PB.sum("u", monotonic: true, temporality: 0, [PB.point(1)])])
        let outcome = try o.export(mixed).get()
        #expect(outcome.rejectedPoints == 2)
        #expect(o.value("c_total") == 1)
        #expect(o.otlp.statistics.rejected[.badValue] == 2)
        let response = OTLPInput.response(outcome)
        let message = Array("2 data points rejected (first: bad_value)".utf8)
        #expect(response == [0x0A, UInt8(4 + message.count), 0x08, 0x02, 0x12, UInt8(message.count)] + message)
        #expect(OTLPInput.response(OTLPInput.Outcome(rejectedPoints: 0, message: "")) == [])
    }

    @Test("an up-down stream whose exporter stops is withdrawn when it expires; the others keep counting")
    func upDownWithdrawal() throws {
        var o = OTLPFed()
        o.otlp = OTLPInput(streams: CumulativeStreams(ttlSeconds: 60))
        func active(_ service: String, _ v: Double) -> [UInt8] {
            PB.request(service: service, [PB.sum("p2p.transfers.active", monotonic: false, temporality: 2, [PB.point(v, start: 1, attributes: [("peer", "x")])])])
        }
        o.fed.store.now = 100
        _ = try o.export(active("a", 3)).get()
        _ = try o.export(active("b", 2)).get()
        #expect(o.value("p2p_transfers_active", ["peer": "x"]) == 5)
        o.fed.store.now = 150
        _ = try o.export(active("b", 4)).get()  // b keeps exporting, a went away
        o.otlp.expireStreams(now: 161, from: &o.fed.store)
        #expect(o.value("p2p_transfers_active", ["peer": "x"]) == 4)
        #expect(o.otlp.streams.count == 1)
    }

    @Test("a point whose metric already has another type is refused by the store and counted")
    func typeClash() throws {
        var o = OTLPFed()
        o.fed.ingestText("clash:1|c")
        let outcome = try o.export(PB.request([PB.gauge("clash", [PB.point(2)])])).get()
        #expect(outcome.rejectedPoints == 1)
        #expect(o.otlp.statistics.rejected[.storeRefused] == 1)
        #expect(o.value("clash") == 1)
    }
}

@Suite struct OTLPHistogramTests {
    let bounds = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]  // the catalog's p2p.transfer.duration

    func counts(_ pairs: [Int: UInt64]) -> [UInt64] {
        (0...bounds.count).map { pairs[$0] ?? 0 }
    }

    @Test("histogram points with the metric's bounds become bucket counts, count and sum; cumulative ones as deltas")
    func histogramIntoStore() throws {
        var o = OTLPFed()
        let attrs = [("peer", "p1")]
        // a cumulative process: 2 observations in (0.5, 1], 1 in (5, 10]; later 1 more in (0.5, 1]
        _ = try o.export(PB.request(service: "a", [PB.histogram("p2p.transfer.duration", temporality: 2, counts: counts([6: 2, 9: 1]), bounds: bounds, sum: 8.5, attributes: attrs)])).get()
        _ = try o.export(PB.request(service: "a", [PB.histogram("p2p.transfer.duration", temporality: 2, counts: counts([6: 3, 9: 1]), bounds: bounds, sum: 9.25, attributes: attrs)])).get()
        // a delta process: 1 observation above 600 s (the +Inf bucket)
        let outcome = try o.export(PB.request(service: "b", [PB.histogram("p2p.transfer.duration", temporality: 1, counts: counts([15: 1]), bounds: bounds, sum: 700, attributes: attrs)])).get()
        #expect(outcome.rejectedPoints == 0)
        let family = try #require(o.fed.store.families.first { $0.name == "p2p_transfer_duration" })
        let id = try #require(family.series.first)
        o.fed.store.withHistogram(id) { buckets, sum, count in
            #expect(Array(buckets) == counts([6: 3, 9: 1, 15: 1]))
            #expect(count == 5)
            #expect(abs(sum - (9.25 + 700)) < 1e-9)
        }
    }

    @Test("a point's sum moves _sum by exactly that number, as one addition (the C client's sum of the same observations)")
    func sumIsExact() throws {
        var o = OTLPFed()
        // 200 delta points of 1–12 observations each (durations in milliseconds, as an SDK
        // process records them), each point's sum added up by the "process" in order.
        var rng = SeededGenerator(seed: 7)
        var expected = 0.0
        var expectedCounts = [UInt64](repeating: 0, count: bounds.count + 1)
        for _ in 0..<200 {
            var pointCounts = [UInt64](repeating: 0, count: bounds.count + 1)
            var sum = 0.0
            for _ in 0..<(1 + Int(rng.next() % 12)) {
                let value = Double(rng.next() % 700_000) / 1000
                sum += value
                pointCounts[bounds.firstIndex { value <= $0 } ?? bounds.count] += 1
            }
            _ = try o.export(PB.request(service: "a", [PB.histogram("p2p.transfer.duration", temporality: 1, counts: pointCounts, bounds: bounds, sum: sum)])).get()
            expected += sum
            for i in pointCounts.indices { expectedCounts[i] += pointCounts[i] }
        }
        let family = try #require(o.fed.store.families.first { $0.name == "p2p_transfer_duration" })
        let id = try #require(family.series.first)
        o.fed.store.withHistogram(id) { buckets, sum, count in
            #expect(Array(buckets) == expectedCounts)
            #expect(count == expectedCounts.reduce(0, +))
            #expect(sum.bitPattern == expected.bitPattern, "_sum \(sum), points' sums \(expected)")
        }
    }

    @Test("bounds that differ from the metric's are refused, counted bucket_mismatch; a reset restarts the stream's deltas")
    func mismatchAndReset() throws {
        var o = OTLPFed()
        let outcome = try o.export(PB.request([PB.histogram("p2p.transfer.duration", temporality: 1, counts: [1, 0], bounds: [1], sum: 0.5)])).get()
        #expect(outcome.rejectedPoints == 1)
        #expect(o.otlp.statistics.rejected[.bucketMismatch] == 1)
        var streams = CumulativeStreams()
        #expect(streams.delta(stream: [1], start: 5, buckets: [2, 1], sum: 3, now: 0)! == ([2, 1], 3))
        #expect(streams.delta(stream: [1], start: 5, buckets: [3, 1], sum: 3.5, now: 0)! == ([1, 0], 0.5))
        #expect(streams.delta(stream: [1], start: 9, buckets: [1, 0], sum: 0.25, now: 0)! == ([1, 0], 0.25))  // restarted
    }
}

@Suite struct OTLPDecoderRobustnessTests {
    @Test("20,000 mutated and truncated requests: the decoder never traps, and a request either decodes or changes nothing")
    func mutations() throws {
        let seed = PB.request([
            PB.sum("p2p.image.imports.total", monotonic: true, temporality: 2, [PB.point(3, start: 1, attributes: [("status", "ok")], asInt: true)]),
            PB.gauge("g", [PB.point(1.5, attributes: [("a", "b")])]),
            PB.histogram("p2p.transfer.duration", temporality: 1, counts: [UInt64](repeating: 1, count: 16),
                         bounds: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600], sum: 900),
        ])
        var generator = SystemRandomNumberGenerator()
        var o = OTLPFed()
        var decoded = 0
        for round in 0..<20_000 {
            var body = seed
            switch round % 3 {
            case 0: body = Array(body.prefix(Int.random(in: 0..<body.count, using: &generator)))
            case 1:
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    body[Int.random(in: 0..<body.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
                }
            default: body = (0..<Int.random(in: 0...64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            }
            let samplesBefore = o.fed.statistics.samplesApplied
            switch o.export(body) {
            case .success: decoded += 1
            case .failure: #expect(o.fed.statistics.samplesApplied == samplesBefore)  // nothing of a refused request applies
            }
        }
        #expect(decoded > 0)
        #expect(o.otlp.statistics.requestsReceived == 20_000)
    }
}

extension PB {
    /// ExponentialHistogramDataPoint.Buckets {offset 1 (sint32), bucket_counts 2 (varints, packed or not)}.
    static func exponentialSide(_ field: UInt64, offset: Int64, _ counts: [UInt64], packed: Bool) -> [UInt8] {
        var payload = varint(1, Varint.zigzag(offset))
        if packed {
            var packedCounts: [UInt8] = []
            for c in counts { Varint.append(c, to: &packedCounts) }
            payload += bytes(2, packedCounts)
        } else {
            for c in counts { payload += varint(2, c) }
        }
        return bytes(field, payload)
    }

    /// Metric with an ExponentialHistogram (field 10): ExponentialHistogramDataPoint {attributes 1,
    /// start 2, time 3, count 4, sum 5, scale 6 (sint32), zero_count 7, positive 8, negative 9,
    /// min 12, max 13, zero_threshold 14}.
    static func exponential(_ name: String, temporality: UInt64, start: UInt64 = 1, scale: Int64, zeroCount: UInt64 = 0,
                            positive: (offset: Int64, counts: [UInt64]) = (0, []), negative: (offset: Int64, counts: [UInt64]) = (0, []),
                            sum: Double?, max: Double? = nil, zeroThreshold: Double? = nil, packed: Bool = true,
                            attributes: [(String, String)] = []) -> [UInt8] {
        let count = zeroCount &+ positive.counts.reduce(0, &+) &+ negative.counts.reduce(0, &+)
        var p = fixed64(2, start) + fixed64(3, 2) + fixed64(4, count)
        if let sum { p += double(5, sum) }
        p += varint(6, Varint.zigzag(scale)) + fixed64(7, zeroCount)
        p += exponentialSide(8, offset: positive.offset, positive.counts, packed: packed)
        p += exponentialSide(9, offset: negative.offset, negative.counts, packed: packed)
        p += double(12, -1)  // min: read past
        if let max { p += double(13, max) }
        if let zeroThreshold { p += double(14, zeroThreshold) }
        for (k, v) in attributes { p += bytes(1, string(1, k) + bytes(2, string(1, v))) }
        return string(1, name) + bytes(10, bytes(1, p) + varint(2, temporality))
    }
}

@Suite struct OTLPExponentialHistogramTests {
    let bounds = [1.0, 2.5, 5, 10]

    func fed() -> OTLPFed {
        var configuration = StoreConfiguration()
        configuration.defaultBuckets = bounds
        var o = OTLPFed()
        o.fed = FedStore(configuration: configuration)
        return o
    }

    func buckets(_ o: OTLPFed, _ name: String) throws -> (buckets: [UInt64], sum: Double, count: UInt64) {
        let family = try #require(o.fed.store.families.first { $0.name == name })
        let id = try #require(family.series.first)
        return o.fed.store.withHistogram(id) { buckets, sum, count in (Array(buckets), sum, count) }
    }

    @Test("an exponential point decodes: scale (sint32), zero count and threshold, both sides' offsets and counts (packed or not), sum, max")
    func decodes() throws {
        for packed in [true, false] {
            let body = PB.request([PB.exponential("e", temporality: 1, scale: -3, zeroCount: 4, positive: (-2, [1, 0, 7]),
                                                  negative: (5, [2]), sum: 12.5, max: 9, zeroThreshold: 0.001, packed: packed,
                                                  attributes: [("peer", "p")])])
            let request = try body.withUnsafeBytes { try OTLPDecoder().decode($0).get() }
            #expect(request.refused.isEmpty)
            let point = try #require(request.points.first)
            #expect(point.shape == .exponentialHistogram && point.temporality == .delta && point.value == 12.5)
            #expect(point.attributes.map { "\($0.key)=\($0.value)" } == ["peer=p"])
            #expect(point.exponential == ExponentialBuckets(scale: -3, zeroCount: 4, zeroThreshold: 0.001, positiveOffset: -2,
                                                            positive: [1, 0, 7], negativeOffset: 5, negative: [2], max: 9))
        }
    }

    @Test("re-bucketing: each exponential bucket's count goes whole to the explicit bucket holding its upper boundary (or the max)")
    func rebucket() {
        // scale 0, base 2: (0.5, 1] → le 1; (1, 2] → le 2.5; (2, 4] straddles 2.5 → le 5; (4, 8] straddles 5 → le 10
        let e = ExponentialBuckets(scale: 0, zeroCount: 6, positiveOffset: -1, positive: [1, 2, 3, 4], negativeOffset: 0, negative: [5])
        // the zero bucket (threshold 0) and the negative bucket [-2, -1) go to le 1
        let r = OTLPInput.rebucket(e, into: bounds)
        #expect(r?.counts == [12, 2, 3, 4, 0])
        #expect(r?.straddlers == [.init(count: 3, upper: 2, lowest: 1), .init(count: 4, upper: 3, lowest: 2)])
        var clamped = e
        clamped.max = 4.5  // no observation above 4.5: (4, 8]'s count belongs at or below le 5
        #expect(OTLPInput.rebucket(clamped, into: bounds)?.counts == [12, 2, 7, 0, 0])
        // scale 2: bucket 3 is (2^0.75, 2], its upper boundary exactly the bound 2; bucket 4 is above it
        let exact = OTLPInput.rebucket(ExponentialBuckets(scale: 2, positiveOffset: 3, positive: [1, 1]), into: [2])
        #expect(exact?.counts == [1, 1] && exact?.straddlers == [])
        // scale -1, base 4: bucket 1 is (4, 16]; past every bound → +Inf
        #expect(OTLPInput.rebucket(ExponentialBuckets(scale: -1, positiveOffset: 1, positive: [9]), into: bounds)?.counts == [0, 0, 0, 0, 9])
        #expect(OTLPInput.rebucket(ExponentialBuckets(scale: 2, positive: [UInt64.max, 1]), into: bounds) == nil)  // both in le 2.5: overflow
    }

    /// The placement rule restated plainly: each bucket's boundaries by exp2, the explicit bucket
    /// by a scan (what `rebucket` computes with per-bound thresholds).
    static func referencePlacement(_ e: ExponentialBuckets, _ bounds: [Double]) -> (counts: [UInt64], straddlers: Set<String>) {
        var counts = [UInt64](repeating: 0, count: bounds.count + 1)
        var straddlers = Set<String>()
        func first(_ holds: (Double) -> Bool) -> Int { bounds.firstIndex(where: holds) ?? bounds.count }
        func add(_ count: UInt64, lower: Double, upper: Double, closed: Bool) {
            guard count > 0 else { return }
            let at = first { $0 >= (e.max.map { Swift.min(upper, $0) } ?? upper) }
            counts[at] += count
            let lowest = Swift.min(first { closed ? $0 >= lower : $0 > lower }, at)
            if lowest < at { straddlers.insert("\(count) \(at) \(lowest)") }
        }
        let step = pow(2, -Double(e.scale))
        add(e.zeroCount, lower: -e.zeroThreshold, upper: e.zeroThreshold, closed: true)
        for (i, c) in e.positive.enumerated() {
            add(c, lower: exp2(Double(e.positiveOffset + i) * step), upper: exp2(Double(e.positiveOffset + i + 1) * step), closed: false)
        }
        for (i, c) in e.negative.enumerated() {
            add(c, lower: -exp2(Double(e.negativeOffset + i + 1) * step), upper: -exp2(Double(e.negativeOffset + i) * step), closed: true)
        }
        return (counts, straddlers)
    }

    @Test("re-bucketing by per-bound thresholds places every bucket as the plain rule does (20,000 seeded random points, seed 16)")
    func thresholdsMatchThePlainRule() {
        var g = SeededGenerator(seed: 16)
        let boundSets: [[Double]] = [[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], [-4, -1, -0.5, 0, 0.25, 0.5, 1, 2, 4, 1024], [1],
                                     [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]]
        var mismatches = 0
        for _ in 0..<20_000 {
            let scale = Int.random(in: -10...20, using: &g)
            // indexes whose boundaries stay within 2^±900 (no underflow to 0, where the plain rule is wrong)
            let offset = (Int.random(in: -900...900, using: &g) >> Swift.max(0, -scale)) << Swift.max(0, scale - 6)
            func counts() -> [UInt64] { (0..<Int.random(in: 0...40, using: &g)).map { _ in UInt64.random(in: 0...3, using: &g) } }
            let e = ExponentialBuckets(scale: scale, zeroCount: UInt64.random(in: 0...2, using: &g),
                                       zeroThreshold: [0, 0.001, 0.3][Int.random(in: 0...2, using: &g)],
                                       positiveOffset: offset, positive: counts(), negativeOffset: offset, negative: counts(),
                                       max: Bool.random(using: &g) ? nil : Double.random(in: -5...50, using: &g))
            let bounds = boundSets[Int.random(in: 0..<boundSets.count, using: &g)]
            let reference = Self.referencePlacement(e, bounds)
            guard let placed = OTLPInput.rebucket(e, into: bounds) else { mismatches += 1; continue }
            if placed.counts != reference.counts || Set(placed.straddlers.map { "\($0.count) \($0.upper) \($0.lowest)" }) != reference.straddlers {
                mismatches += 1
            }
        }
        #expect(mismatches == 0)
    }

    @Test("a sum the straddling buckets cannot reach moves just enough of them one explicit bucket down: counts and sum exact")
    func straddlersFitTheSum() throws {
        // scale 0: 2.2 and 2.3 are in (2, 4], which straddles 2.5: counted in (2.5, 5], where two
        // values sum to more than 5 — a sum of 4.5 needs one of them in (1, 2.5]
        var o = fed()
        _ = try o.export(PB.request([PB.exponential("s", temporality: 1, scale: 0, positive: (1, [2]), sum: 4.5)])).get()
        var h = try buckets(o, "s")
        #expect(h.buckets == [0, 1, 1, 0, 0] && h.count == 2)
        #expect(abs(h.sum - 4.5) < 1e-9)
        // 2.2, 2.3 and 2.4 (sum 6.9): still one move (7.5 − 2.5 + 1 = 6)
        _ = try o.export(PB.request([PB.exponential("s", temporality: 1, scale: 0, positive: (1, [3]), sum: 6.9)])).get()
        h = try buckets(o, "s")
        #expect(h.buckets == [0, 2, 3, 0, 0] && h.count == 5)
        #expect(abs(h.sum - 11.4) < 1e-9)
        // 3 and 3.5: reachable where they are, nothing moves
        _ = try o.export(PB.request([PB.exponential("s", temporality: 1, scale: 0, positive: (1, [2]), sum: 6.5)])).get()
        #expect(try buckets(o, "s").buckets == [0, 2, 5, 0, 0])
        // one observation of 0.3 in (0.25, 0.5] below the first bound, counted at le 1: reachable (bucket 0 has no floor)
        _ = try o.export(PB.request([PB.exponential("s", temporality: 1, scale: 0, positive: (-2, [1]), sum: 0.3)])).get()
        #expect(try buckets(o, "s").buckets == [1, 2, 5, 0, 0])
    }

    @Test("a delta exponential point lands in the metric's explicit buckets: counts, count and sum exact")
    func deltaIntoStore() throws {
        var o = fed()
        // scale 3: 0.7 is in bucket -5 (2^(-5/8), 2^(-4/8)] = (0.648, 0.707]; 45 in bucket 43 (41.5, 45.25]
        var counts = [UInt64](repeating: 0, count: 49)
        counts[0] = 1
        counts[48] = 1
        let outcome = try o.export(PB.request([PB.exponential("p2p.transfer.duration", temporality: 1, scale: 3,
                                                              positive: (-5, counts), sum: 45.7)])).get()
        #expect(outcome.rejectedPoints == 0)
        let h = try buckets(o, "p2p_transfer_duration")  // the catalog's bounds: 0.707 → le 1, 45.25 → le 60
        let catalog = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
        #expect(h.buckets == (0...catalog.count).map { $0 == 6 || $0 == 11 ? 1 : 0 })
        #expect(h.count == 2)
        #expect(abs(h.sum - 45.7) < 1e-9)
    }

    @Test("cumulative exponential points become deltas across a scale change (no reset, nothing counted twice); a new start time is a reset")
    func cumulativeAcrossScales() throws {
        var o = fed()
        func export(start: UInt64, scale: Int64, _ positive: (Int64, [UInt64]), sum: Double) throws {
            let outcome = try o.export(PB.request([PB.exponential("d", temporality: 2, start: start, scale: scale,
                                                                  positive: (positive.0, positive.1), sum: sum)])).get()
            #expect(outcome.rejectedPoints == 0)
        }
        // scale 1: 2 in (1, 1.414], 1 in (1.414, 2] → le 2.5
        try export(start: 5, scale: 1, (0, [2, 1]), sum: 3.9)
        #expect(try buckets(o, "d").buckets == [0, 3, 0, 0, 0])
        // the SDK downscaled to 0: (1, 2] now holds 4 (one more), (4, 8] holds 2 (new) → le 2.5 +1, le 10 +2
        try export(start: 5, scale: 0, (0, [4, 0, 2]), sum: 16.4)
        var h = try buckets(o, "d")
        #expect(h.buckets == [0, 4, 0, 2, 0])
        #expect(h.count == 6)
        #expect(abs(h.sum - 16.4) < 1e-9)
        // restarted (new start time): its point counts whole
        try export(start: 9, scale: 0, (0, [1]), sum: 1.5)
        h = try buckets(o, "d")
        #expect(h.buckets == [0, 5, 0, 2, 0])
        #expect(abs(h.sum - 17.9) < 1e-9)
        // a point whose scale went up compares at the coarser scale: (1, 1.414] at scale 1 is (1, 2] at 0
        #expect(CumulativeStreams.difference(ExponentialBuckets(scale: 1, positive: [3, 0, 0, 2]),
                                             ExponentialBuckets(scale: 0, positive: [2, 1]))
                == ExponentialBuckets(scale: 0, positive: [1, 1]))
        // a count that went down is a reset
        #expect(CumulativeStreams.difference(ExponentialBuckets(positive: [1]), ExponentialBuckets(positive: [2])) == nil)
        #expect(CumulativeStreams.difference(ExponentialBuckets(positiveOffset: 1, positive: [5]), ExponentialBuckets(positive: [2])) == nil)
    }

    @Test("without a sum each observation counts at its bucket's upper bound; negative and zero buckets count too")
    func noSumAndNegatives() throws {
        var o = fed()
        _ = try o.export(PB.request([PB.exponential("n", temporality: 1, scale: 0, zeroCount: 2, positive: (1, [1]),
                                                    negative: (0, [3]), sum: nil)])).get()
        let h = try buckets(o, "n")
        #expect(h.buckets == [5, 0, 1, 0, 0])  // zero and [-2, -1) → le 1; (2, 4] → le 5
        #expect(h.count == 6)
        #expect(h.sum == 5 * 1 + 5)
    }

    @Test("limits: more than 1,024 buckets a side or 2,097,152 a request, a scale outside -10...20, no temporality, overflowing counts: refused and counted")
    func limits() throws {
        var o = fed()
        let tooMany = PB.exponential("l", temporality: 1, scale: 0, positive: (0, [UInt64](repeating: 1, count: 1_025)), sum: 1)
        let badScale = PB.exponential("l", temporality: 1, scale: 21, positive: (0, [1]), sum: 1)
        let unspecified = PB.exponential("l", temporality: 0, scale: 0, positive: (0, [1]), sum: 1)
        let huge = PB.exponential("l", temporality: 1, scale: 0, positive: (0, [1 << 40]), sum: 1)
        let good = PB.exponential("l", temporality: 1, scale: 0, positive: (0, [UInt64](repeating: 1, count: 1_024)), sum: 1)
        let outcome = try o.export(PB.request([tooMany, badScale, unspecified, huge, good])).get()
        #expect(outcome.rejectedPoints == 4)
        #expect(o.otlp.statistics.rejected[.tooManyBuckets] == 1)
        #expect(o.otlp.statistics.rejected[.badValue] == 3)
        #expect(try buckets(o, "l").count == 1_024)
        // 2,050 points of 1,024 + 1,024 buckets: those past the request's 2,097,152 buckets are refused
        let full = PB.exponential("m", temporality: 1, scale: 0, positive: (0, [UInt64](repeating: 0, count: 1_024)),
                                  negative: (0, [UInt64](repeating: 0, count: 1_024)), sum: 0)
        var points: [[UInt8]] = []
        for _ in 0..<1_025 { points.append(full) }
        let request = try PB.request(points + points).withUnsafeBytes { try OTLPDecoder().decode($0).get() }
        #expect(request.points.count == 1_024 && request.refused == Array(repeating: .tooManyBuckets, count: 1_026))
        #expect(request.exponentialBuckets == OTLPDecoder.maxExponentialBucketsPerRequest)
        // (1, 2] and (2, 4] of 2^63 each, in le 2.5 and le 5; the sum moves the second onto the first: refused, no trap
        let straddling = PB.exponential("l", temporality: 1, scale: 0, positive: (0, [1 << 63, 1 << 63]), sum: 1)
        #expect(try o.export(PB.request([straddling])).get().rejectedPoints == 1)
        #expect(o.otlp.statistics.rejected[.badValue] == 4)
    }
}

@Suite struct OTLPResourceLabelTests {
    func kv(_ key: String, _ value: String) -> [UInt8] { PB.bytes(1, PB.string(1, key) + PB.bytes(2, PB.string(1, value))) }

    @Test("no resource attribute is a label by default; selected ones are, sanitized, in their configured order; a point attribute wins a clash")
    func selected() throws {
        let host = kv("host.name", "node-1") + kv("deployment.environment", "prod")
        let body = PB.request(service: "seed", resource: host, [PB.gauge("g", [PB.point(1, attributes: [("peer", "p")])]),
                                                                PB.gauge("h", [PB.point(2, attributes: [("host_name", "mine")])])])
        var o = OTLPFed()
        _ = try o.export(body).get()
        #expect(o.value("g", ["peer": "p"]) == 1)  // default: resource attributes are not labels
        o = OTLPFed()
        o.otlp.decoder.resourceAttributes = ["service.name", "host.name", "cloud.region"]  // cloud.region absent: no label
        let request = try body.withUnsafeBytes { try o.otlp.decoder.decode($0).get() }
        #expect(request.points[0].resourceAttributes.map { "\($0.key)=\($0.value)" } == ["service.name=seed", "host.name=node-1"])
        _ = try o.export(body).get()
        #expect(o.value("g", ["service_name": "seed", "host_name": "node-1", "peer": "p"]) == 1)
        #expect(o.value("h", ["service_name": "seed", "host_name": "mine"]) == 2)
    }

    @Test("a selected resource attribute that cannot be a label refuses its resource's points; 16 labels in all at most")
    func limits() throws {
        var o = OTLPFed()
        o.otlp.decoder.resourceAttributes = ["service.name", "tags"]
        let array = PB.bytes(1, PB.string(1, "tags") + PB.bytes(2, PB.bytes(5, [])))
        var outcome = try o.export(PB.request(resource: array, [PB.gauge("g", [PB.point(1), PB.point(2)])])).get()
        #expect(outcome.rejectedPoints == 2 && o.otlp.statistics.rejected[.badAttribute] == 2)
        #expect(o.fed.store.families.first { $0.name == "g" } == nil)
        let fifteen = (0..<15).map { ("k\($0)", "v") }
        outcome = try o.export(PB.request([PB.gauge("g", [PB.point(1, attributes: fifteen)])])).get()  // 1 + 15 = 16
        #expect(outcome.rejectedPoints == 0)
        outcome = try o.export(PB.request([PB.gauge("g", [PB.point(1, attributes: fifteen + [("k15", "v")])])])).get()
        #expect(outcome.rejectedPoints == 1 && o.otlp.statistics.rejected[.tooManyAttributes] == 1)
    }
}
