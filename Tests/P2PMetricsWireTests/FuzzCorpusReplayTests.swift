import Foundation
import P2PMetricsTestVectors
import Testing
@testable import P2PMetricsWire
#if canImport(P2PMetricsStore)
import P2PMetricsInputDatagram
import P2PMetricsStore
#endif

/// Replays the committed fuzzing inputs of the FuzzDecoder target (`Tests/Fuzz/seeds`, `corpus`
/// and `regressions`) through the decoder with the fuzzer's wire invariants, so that every past
/// finding stays fixed without libFuzzer. When this test target can see `P2PMetricsStore`, the
/// store invariants of the fuzzer run as well.
@Suite("Fuzz corpus replay: datagram decoder")
struct DecoderFuzzCorpusReplayTests {
    static func inputs(of target: String) throws -> [(name: String, bytes: [UInt8])] {
        try FuzzInputs.of(target)
    }

    struct Decoded: Equatable {
        var kind: SampleKind
        var name: [UInt8]
        var labels: [[UInt8]]
        var value: SampleValue
        var key: [UInt8]
    }

    static func walk(_ decoder: DatagramDecoder, _ raw: UnsafeRawBufferPointer, _ id: String) -> [Decoded] {
        var out: [Decoded] = []
        var cursor = decoder.samples(in: raw)
        while let sample = cursor.next() {
            guard sample.series >= 0 && sample.series < decoder.series.count else {
                Issue.record("\(id): sample \(out.count) references series \(sample.series) of \(decoder.series.count)")
                break
            }
            let def = decoder.series[sample.series]
            let name = Array(raw[def.nameRange])
            #expect(name.withUnsafeBytes { Names.validateMetricName($0) } == nil, "\(id): metric name")
            var labels: [[UInt8]] = []
            var lc = decoder.labels(of: def, in: raw)
            while let (n, v) = lc.next() {
                let labelName = Array(raw[n])
                #expect(labelName.withUnsafeBytes { Names.validateLabelName($0) } == nil, "\(id): label name")
                #expect(Array(raw[v]).withUnsafeBytes { Names.isValidUTF8($0) }, "\(id): label value UTF-8")
                #expect(!(sample.kind == .histogramObserve && labelName == Array("le".utf8)), "\(id): le on a histogram")
                #expect(!(sample.kind == .topKAdd && labelName == Array("key".utf8)), "\(id): key on a top-K")
                labels.append(labelName)
                labels.append(Array(raw[v]))
            }
            #expect(labels.count == 2 * def.labelCount, "\(id): label cursor")
            var value = sample.value
            var key: [UInt8] = []
            if case .key(let range) = sample.value {
                #expect(sample.kind.takesKey, "\(id): key value for \(sample.kind)")
                key = Array(raw[range])
                value = .key(0..<0)
            } else {
                #expect(!sample.kind.takesKey, "\(id): number value for \(sample.kind)")
            }
            out.append(Decoded(kind: sample.kind, name: name, labels: labels, value: value, key: key))
        }
        #expect(out.count == decoder.sampleCount, "\(id): cursor walked \(out.count) of \(decoder.sampleCount) samples")
        return out
    }

    /// Re-encodes with `DatagramEncoder` (exact values, then canonical ones) and decodes again.
    static func roundTrip(_ samples: [Decoded], dropped: UInt128, canonical: Bool, _ id: String) throws {
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        if dropped > 0 { encoder.appendDropped(dropped) }
        var expected: [Decoded] = []
        for sample in samples {
            let name = String(decoding: sample.name, as: UTF8.self)
            let labels = stride(from: 0, to: sample.labels.count, by: 2).map {
                (String(decoding: sample.labels[$0], as: UTF8.self), String(decoding: sample.labels[$0 + 1], as: UTF8.self))
            }
            var e = sample
            if canonical && !sample.kind.takesKey {
                let d = sample.value.doubleValue
                e.value = SampleValue(canonical: d)
                #expect(e.value.doubleValue.bitPattern == (d == 0 ? 0 : d.bitPattern), "\(id): canonical value of \(d)")
            }
            let fitted: Bool
            switch sample.kind {
            case .distinctAdd: fitted = try encoder.appendDistinct(name: name, labels: labels, key: sample.key)
            case .topKAdd: fitted = try encoder.appendTopK(name: name, labels: labels, key: String(decoding: sample.key, as: UTF8.self))
            default: fitted = try encoder.append(sample.kind, name: name, labels: labels, value: e.value)
            }
            #expect(fitted, "\(id): re-encoding overflowed")
            e.value = e.value.asEncoded
            expected.append(e)
        }
        guard !expected.isEmpty || dropped > 0 else { return }
        var decoder = DatagramDecoder()
        let bytes = encoder.bytes
        try bytes.withUnsafeBytes { raw in
            let rejection = decoder.validate(raw)
            try #require(rejection == nil, "\(id): re-encoding refused (\(String(describing: rejection)))")
            #expect(decoder.droppedReported == dropped, "\(id): dropped count")
            #expect(walk(decoder, raw, id) == expected, "\(id): samples differ after re-encoding (canonical: \(canonical))")
        }
    }

    @Test("every committed FuzzDecoder input keeps the decoder's invariants")
    func replayDecoderInputs() throws {
        let inputs = try Self.inputs(of: "FuzzDecoder")
        #expect(inputs.count >= 60, "seeds missing from \(FuzzInputs.directory.path)")
        for (id, bytes) in inputs {
            var decoder = DatagramDecoder()
            var again = DatagramDecoder()
            try bytes.withUnsafeBytes { raw in
                let rejection = decoder.validate(raw)
                #expect(again.validate(raw) == rejection, "\(id): validate is not deterministic")
                guard rejection == nil else { return }
                #expect(raw.count >= 2 && raw[0] == WireFormat.magic && raw.count <= WireFormat.maxDatagramSize, "\(id)")
                let samples = Self.walk(decoder, raw, id)
                try Self.roundTrip(samples, dropped: decoder.droppedReported, canonical: false, id)
                try Self.roundTrip(samples, dropped: decoder.droppedReported, canonical: true, id)
            }
            #if canImport(P2PMetricsStore)
            try StoreReplay.check(bytes, id: id)
            #endif
        }
    }
}

#if canImport(P2PMetricsStore)
/// The fuzzer's store invariants (Tests/Fuzz/Sources/FuzzDecoder): a fresh small store ingests the
/// input twice.
enum StoreReplay {
    /// Regressions of bugs reported and not yet fixed: their failures are known issues. Remove an
    /// entry once its fix is in (the test then requires the invariant again).
    static let openBugs: Set<String> = []

    static var configuration: StoreConfiguration {
        var c = StoreConfiguration()
        c.maxSeries = 1_000
        c.maxSeriesPerMetric = 400
        c.wireCacheCapacity = 32
        return c
    }

    static func check(_ bytes: [UInt8], id: String) throws {
        if openBugs.contains(id) {
            withKnownIssue("open bug, see Tests/Fuzz/README.md", isIntermittent: true) { run(bytes, id: id) }
        } else {
            run(bytes, id: id)
        }
    }

    static func run(_ bytes: [UInt8], id: String) {
        bytes.withUnsafeBytes { raw in
            var decoder = DatagramDecoder()
            let rejection = decoder.validate(raw)
            let sampleCount = rejection == nil ? decoder.sampleCount : 0
            let isText = raw.first.map { $0 < 0x80 } ?? false
            var store = MetricStore(configuration: configuration)
            var input = DatagramInput()
            var outcomes: [(series: Int, applied: UInt64, refused: [UInt64])] = []
            for _ in 0..<2 {
                let before = store.statistics
                let received = input.statistics.datagramsReceived
                let seriesBefore = store.seriesCount
                let result = input.ingest(raw, into: &store)
                let after = store.statistics
                #expect(result == (isText ? nil : rejection), "\(id): store and decoder disagree")
                #expect(input.statistics.datagramsReceived == received + 1, "\(id)")
                let applied = after.samplesApplied - before.samplesApplied
                let refused = zip(after.samplesRejected, before.samplesRejected).map { $0 - $1 }
                let newSeries = store.seriesCount - seriesBefore
                if result != nil {
                    #expect(newSeries == 0 && applied == 0, "\(id): a rejected datagram changed the store")
                } else {
                    if !isText {
                        #expect(applied + refused.reduce(0, +) == UInt64(sampleCount), "\(id): samples unaccounted")
                    }
                    #expect(UInt64(newSeries) <= applied, "\(id): \(newSeries) series created, \(applied) samples applied")
                }
                outcomes.append((newSeries, applied, refused))
            }
            #expect(outcomes[1].series == 0, "\(id): ingesting again created \(outcomes[1].series) series")
            #expect(outcomes[1].applied == outcomes[0].applied && outcomes[1].refused == outcomes[0].refused,
                    "\(id): ingesting again had another outcome")
        }
    }
}
#endif

extension SampleValue {
    /// The value as the encoders write it: every NaN becomes the canonical quiet NaN
    /// (PROTOCOL.md §3), whatever its payload and sign.
    var asEncoded: SampleValue {
        if case .double(let d) = self, d.isNaN { return .double(.nan) }
        return self
    }
}
