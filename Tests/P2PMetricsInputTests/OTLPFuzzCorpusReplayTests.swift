import P2PMetricsTestVectors
import Testing
@testable import P2PMetricsInputOTLP
@testable import P2PMetricsStore

/// Replays the committed fuzzing inputs of the FuzzOTLP target (`Tests/Fuzz/seeds`, `corpus` and
/// `regressions`) through the OTLP input with the fuzzer's invariants (Tests/Fuzz/Sources/FuzzOTLP),
/// so that every past finding stays fixed without libFuzzer.
@Suite("Fuzz corpus replay: OTLP decoder and input")
struct OTLPFuzzCorpusReplayTests {
    @Test("every committed FuzzOTLP input keeps the input's invariants: new, existing and expired streams")
    func replayOTLPInputs() throws {
        let inputs = try FuzzInputs.of("FuzzOTLP")
        #expect(inputs.count >= 15, "seeds missing from \(FuzzInputs.directory.path)")
        var decodedSome = false
        for (id, bytes) in inputs {
            var store = MetricStore(configuration: StoreConfiguration())
            var input = OTLPInput(streams: CumulativeStreams(capacity: 64, ttlSeconds: 10, maxBytes: 1 << 16))
            input.decoder = OTLPDecoder(maxPointsPerRequest: 2_000, resourceAttributes: ["service.name", "host.name"])
            for round in 0..<3 {
                let applied = store.statistics.samplesApplied
                let rejectedBefore = input.statistics.rejected.counts.reduce(0, +)
                switch bytes.withUnsafeBytes({ input.ingest(protobuf: $0, into: &store) }) {
                case .failure:
                    #expect(store.statistics.samplesApplied == applied, "\(id): a refused body applied samples")
                case .success(let outcome):
                    decodedSome = true
                    #expect(input.statistics.rejected.counts.reduce(0, +) - rejectedBefore == UInt64(outcome.rejectedPoints), "\(id)")
                }
                for family in store.families where family.type == .histogram {
                    for series in family.series {
                        store.withHistogram(series) { buckets, _, count in
                            #expect(buckets.reduce(0, +) == count, "\(id): \(family.name) buckets and count differ")
                        }
                    }
                }
                if round == 1 {
                    store.now &+= 10
                    input.expireStreams(now: store.now, from: &store)
                    #expect(input.streams.count == 0 && input.streams.bytes == 0, "\(id)")
                }
            }
        }
        #expect(decodedSome)
    }
}
