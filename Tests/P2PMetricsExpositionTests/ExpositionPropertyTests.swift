import Testing
import P2PMetricsStore
import P2PMetricsWire
@testable import P2PMetricsExposition

/// The in-process twin of `Tests/integration/test_exposition_property.py`: seeded random
/// datagrams of every kind over a colliding alphabet never make an exposition declare a family
/// twice or write a sample twice, in either format.
@Suite("Exposition property")
struct ExpositionPropertyTests {
    /// SplitMix64: a seeded generator, so a failure replays.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let names: [String] = ["a", "b", "a.b", "a_b", "p2p.transfer.duration", "p2p.chunks.requested", "p2pmetricsd"]
        .flatMap { base in ["", ".count", "_count", ".sum", ".bucket", ".total", "_total", ".error", ".created"].map { base + $0 } }
        .filter { !$0.replacingDots().hasPrefix("p2pmetricsd_") }

    /// Problems of an exposition: a second HELP/TYPE, a family split in two, a duplicate sample.
    static func problems(_ text: String) -> [String] {
        var out: [String] = []
        var declared = Set<String>()
        var helped = Set<String>()
        var seen = Set<Substring>()
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") || line.hasPrefix("# HELP ") {
                let name = String(line.split(separator: " ")[2])
                if line.hasPrefix("# TYPE ") {
                    if !declared.insert(name).inserted { out.append("second TYPE \(name)") }
                } else if !helped.insert(name).inserted {
                    out.append("second HELP \(name)")
                }
            } else if !line.hasPrefix("#"), let space = line.lastIndex(of: " ") {
                if !seen.insert(line[..<space]).inserted { out.append("duplicate \(line)") }
            }
        }
        return out
    }

    @Test("random colliding datagrams: one HELP/TYPE per family, no duplicate sample", arguments: [UInt64(14), 1914, 2026])
    func randomDatagrams(seed: UInt64) throws {
        var rng = SeededGenerator(state: seed)
        var store = MetricStore()
        let labelSets: [[(String, String)]] = [[], [("x", "1")], [("x", "2"), ("y", "1")], [("y", "")]]
        for _ in 0..<2_000 {
            var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let name = Self.names.randomElement(using: &rng)!
                let labels = labelSets.randomElement(using: &rng)!
                switch Int.random(in: 0..<7, using: &rng) {
                case 0: try encoder.append(.counterAdd, name: name, labels: labels, value: .unsigned(UInt64.random(in: 0...(1 << 62), using: &rng)))
                case 1: try encoder.append(.counterAdd, name: name, labels: labels, value: .double(0.25))
                case 2: try encoder.append(.gaugeSet, name: name, labels: labels, value: .double(-1.5))
                case 3: try encoder.append(.gaugeAdd, name: name, labels: labels, value: .signed(-2))
                case 4: try encoder.append(.histogramObserve, name: name, labels: labels, value: .double(0.3))
                case 5: try encoder.appendDistinct(name: name, labels: labels, key: [UInt8.random(in: 0...3, using: &rng)])
                default: try encoder.appendTopK(name: name, labels: labels, key: "k\(Int.random(in: 0..<3, using: &rng))")
                }
            }
            let rejection = encoder.bytes.withUnsafeBytes { store.ingest($0) }
            #expect(rejection == nil)
        }
        #expect(store.statistics.rejected(SampleRejection.nameClash) > 0)
        for format in [ExpositionFormat.prometheusText, .openMetrics] {
            let text = String(decoding: ExpositionRenderer.renderAll(store, format: format), as: UTF8.self)
            #expect(Self.problems(text) == [], "seed \(seed), \(format)")
        }
    }
}

extension String {
    fileprivate func replacingDots() -> String { String(map { $0 == "." ? "_" : $0 }) }
}
