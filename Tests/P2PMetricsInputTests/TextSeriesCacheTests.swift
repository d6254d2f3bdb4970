import Testing
import P2PMetricsTestVectors
import P2PMetricsWire
@testable import P2PMetricsInputStatsD
@testable import P2PMetricsStore

/// Issue 18: text lines resolve their series through the store's input cache (keyed on the line's
/// name and tags as sent). These pin what the cache must never change — the series a line lands
/// in, after expiry too — and that it stays bounded whatever a sender makes up.
@Suite("Text series cache (issue 18)")
struct TextSeriesCacheTests {
    @Test("a repeated line is a cache hit; tags in another order are another entry for the same series")
    func hitsAndTagOrder() {
        var store = FedStore()
        store.ingestText("page.views:1|c|#env:prod,region:eu")
        #expect(store.text.linesFromCache == 0)
        #expect(store.store.inputCache.count == 1)
        store.ingestText("page.views:2|c|#env:prod,region:eu\npage.views:4|c|#env:prod,region:eu")
        #expect(store.text.linesFromCache == 2)
        store.ingestText("page.views:8|c|#region:eu,env:prod\npage.views:16|c|#region:eu,env:prod,region:eu")
        #expect(store.store.inputCache.count == 3)  // two more spellings, one series
        #expect(store.seriesCount == 1)
        #expect(store.value("page_views", ["env": "prod", "region": "eu"]) == 31)
        // The same name and tags on a timer rename `le`: another key, so no false hit.
        store.ingestText("t:1|c|#le:1\nt2:1|ms|#le:1")
        #expect(store.value("t", ["le": "1"]) == 1)
        #expect(store.value("t2", ["_le": "1"]) == 1)
    }

    @Test("a hit applies the same rules: a bad value refuses the line, with the same reason")
    func hitsRefuseLikeMisses() {
        var store = FedStore()
        store.ingestText("x:1|c|#k:v\nh:1|ms|#k:v\ng:1|g|#k:v")
        store.ingestText("""
        x:abc|c|#k:v
        x:-1|c|#k:v
        x:1e308|c|@0.01|#k:v
        x:1|q|#k:v
        x:1:2:oops|c|#k:v
        h:1|ms|@0.001|#k:v
        x:1|g|#k:v
        g:+2|g|#k:v
        g:-0.5|g|#k:v
        """)
        #expect(store.text.linesFromCache == 9)
        #expect(store.text.rejected[.badValue] == 3)
        #expect(store.text.rejected[.negativeCounter] == 1)
        #expect(store.text.rejected[.badType] == 1)
        #expect(store.text.rejected[.badSampleRate] == 1)
        #expect(store.statistics.rejected(SampleRejection.typeClash) == 1)  // a gauge sample on counter x
        #expect(store.value("x", ["k": "v"]) == 1)  // nothing of the refused lines, not even "1:2"
        #expect(store.value("g", ["k": "v"]) == 2.5)
    }

    @Test("expiry clears the cache: a line whose series expired never lands in the series that reuses its id")
    func invalidationAfterExpiry() {
        var configuration = StoreConfiguration()
        configuration.defaultTTLSeconds = 1
        var store = FedStore(configuration: configuration)
        store.ingestText("g:1|g|#a:b")
        store.store.now = 5
        #expect(store.store.expireStale() == 1)
        #expect(store.store.inputCache.count == 0)
        store.ingestText("other:5|g")  // takes the freed series id
        store.ingestText("g:7|g|#a:b")
        #expect(store.value("other") == 5)
        #expect(store.value("g", ["a": "b"]) == 7)
        #expect(store.seriesCount == 2)
    }

    @Test("the cache holds at most the wire cache's capacity in entries, and every value stays exact")
    func boundedEntries() {
        var configuration = StoreConfiguration()
        configuration.wireCacheCapacity = 64
        var store = FedStore(configuration: configuration)
        for round in 0..<2 {
            for batch in 0..<50 {
                let lines = (0..<20).map { "c:1|c|#n:\(batch * 20 + $0)" }
                store.ingestText(lines.joined(separator: "\n"))
                #expect(store.store.inputCache.count <= 64, "round \(round)")
            }
        }
        #expect(store.seriesCount == 1_000)
        let total = store.families.first { $0.name == "c" }!.series.reduce(0.0) { sum, id in
            let (integer, fraction) = store.store.counterValue(id)
            #expect(integer == 2)
            return sum + Double(integer) + fraction
        }
        #expect(total == 2_000)
    }

    @Test("hostile distinct spellings of one series: one series, exact total, cache within its bytes")
    func hostileDistinctKeys() {
        var configuration = StoreConfiguration()
        configuration.maxMemoryBytes = 4 << 20  // reserve 512 KiB, the input cache's half 256 KiB
        var store = FedStore(configuration: configuration)
        let padding = String(repeating: "p", count: 900)
        for batch in 0..<500 {
            // bare tags are ignored: every line is the same series, every key a new one
            let lines = (0..<20).map { "x:1|c|#a:1,\(padding)\(batch * 20 + $0)" }
            store.ingestText(lines.joined(separator: "\n"))
            #expect(store.store.inputCache.memoryFootprint <= 256 << 10)
            #expect(store.store.memoryFootprint <= 4 << 20)
        }
        #expect(store.seriesCount == 1)
        #expect(store.value("x", ["a": "1"]) == 10_000)
        #expect(store.text.rejected.counts.allSatisfy { $0 == 0 })
    }

    @Test("numbers are parsed exactly as Double(String) parses them, without making strings")
    func numbersAreExact() {
        var generator = SeededGenerator(seed: 18)
        var cases = [
            "0", "-0", "+0", "1", "-1", "+4", "0.1", "0.3", "1e308", "1e309", "-1e309", "4.9e-324", "1e-400",
            "2.2250738585072014e-308", "9007199254740992", "9007199254740993", "18446744073709551615",
            "18446744073709551616", "123456789012345678901234567890", "0.000000000000000000000001", "1e22", "1e23",
            "5e-22", "5e-23", "1.", ".5", "+.5", "-.5e1", ".", "+", "-", "e5", "5e", "5e+", "1e0005", "1e00005",
            "1.2.3", "--1", "+-1", "1-", "0x10", "inf", "nan", "1e3", "1E3", "100000000000000000000000", "0e99999",
            "1_000", " 1", "1 ", "", "7.0e-10", "3.14159265358979323846",
        ]
        let alphabet = Array("0123456789.+-eE")
        for _ in 0..<20_000 {
            let length = Int.random(in: 1...12, using: &generator)
            cases.append(String((0..<length).map { _ in alphabet.randomElement(using: &generator)! }))
        }
        for _ in 0..<20_000 {
            var text = ["", "-", "+"].randomElement(using: &generator)!
            text += String((0..<Int.random(in: 0...20, using: &generator)).map { _ in "0123456789".randomElement(using: &generator)! })
            if Bool.random(using: &generator) {
                text += "." + String((0..<Int.random(in: 0...20, using: &generator)).map { _ in "0123456789".randomElement(using: &generator)! })
            }
            if Bool.random(using: &generator) {
                text += "e" + (["", "-", "+"].randomElement(using: &generator)!) + String(Int.random(in: 0...400, using: &generator))
            }
            cases.append(text)
        }
        for text in cases {
            let expected: Double? = text.utf8.allSatisfy({ "0123456789.+-eE".utf8.contains($0) }) ? Double(text).flatMap { $0.isFinite ? $0 : nil } : nil
            let parsed = Array(text.utf8).withUnsafeBytes { StatsDTranscoder.number($0, 0..<$0.count) }
            #expect(parsed?.bitPattern == expected?.bitPattern, "\(text)")
        }
    }

    @Test("seeded random datagrams: the cached input ends in exactly the state the encoding path alone gives")
    func sameStateAsTheEncodingPath() {
        var generator = SeededGenerator(seed: 1_818)
        let names = ["a", "b.c", "p2p.cache.hits", "p2p.transfers.active", "9x", "bad-name/x", "le", "_e{", "p2pmetricsd.x"]
        let values = ["1", "2.5", "-3", "+4", "abc", "1e308", "0", "1e3", "", "1:2:3", "0.1", "-0", "7:x", "chunk-1:chunk-2"]
        let types = ["c", "g", "ms", "h", "d", "s", "q", ""]
        let rates = ["", "|@0.5", "|@0.001", "|@2", "|@0.01", "|@0.1|@1"]
        let tags = ["", "|#a:1", "|#b:2,a:1", "|#a:1,b:2", "|#le:5", "|#__x:1", "|#bad tag:1", "|#a:1|#b:2", "|#a:", "|#a:1,a:2", "|#"]
        let extras = ["", "|c:abc", "|T123", "|Tx", "|"]
        var fast = FedStore()
        var reference = MetricStore()
        var referenceStatistics = StatsDInputStatistics()
        for _ in 0..<1_500 {
            let lines = (0..<Int.random(in: 1...20, using: &generator)).map { _ in
                names.randomElement(using: &generator)! + ":" + values.randomElement(using: &generator)! + "|"
                    + types.randomElement(using: &generator)! + rates.randomElement(using: &generator)!
                    + tags.randomElement(using: &generator)! + extras.randomElement(using: &generator)!
            }
            let datagram = Array(lines.joined(separator: "\n").utf8)
            datagram.withUnsafeBytes { bytes in
                _ = fast.ingest(bytes)
                Self.referenceIngest(bytes, into: &reference, counting: &referenceStatistics)
            }
        }
        #expect(fast.text.linesFromCache > 3_000)
        #expect(fast.text.linesReceived == referenceStatistics.linesReceived)
        #expect(fast.text.rejected == referenceStatistics.rejected)
        #expect(fast.statistics == reference.statistics)
        #expect(Self.dump(fast.store) == Self.dump(reference))
        #expect(Self.dump(reference).count > 20)
    }

    /// The text input as it was before issue 18: every line encoded, the datagram applied whole.
    static func referenceIngest(_ bytes: UnsafeRawBufferPointer, into store: inout MetricStore, counting statistics: inout StatsDInputStatistics) {
        func apply(_ output: StatsDTranscoder.Output, _ store: inout MetricStore) {
            guard !output.encoder.isEmpty else { return }
            output.weights.withUnsafeBufferPointer { weights in
                output.encoder.bytes.withUnsafeBytes { _ = store.apply($0, weights: weights) }
            }
        }
        var output = StatsDTranscoder.Output(encoder: DatagramEncoder(maxSize: WireFormat.maxDatagramSize))
        var refused: [TextLineRejection] = []
        let lines = StatsDTranscoder().transcode(bytes, into: &output, flush: { full in
            apply(full, &store)
            full.reset()
        }, reject: { refused.append($0) })
        apply(output, &store)
        statistics.linesReceived &+= UInt64(lines)
        for reason in refused { statistics.rejected.count(reason) }
    }

    /// Every series of a store with its labels and exact value, sorted.
    static func dump(_ store: MetricStore) -> [String] {
        var out: [String] = []
        for family in store.families where !family.name.isEmpty {
            for id in family.series {
                var labels: [String] = []
                store.forEachLabel(of: id) { n, v in labels.append(String(decoding: n, as: UTF8.self) + "=" + String(decoding: v, as: UTF8.self)) }
                let value: String
                switch family.type {
                case .counter: let (i, f) = store.counterValue(id); value = "\(i)+\(f)"
                case .gauge: value = "\(store.gaugeValue(id))"
                case .distinct: value = "\(store.distinctEstimate(id))"
                case .topK: value = "\(store.topKEntries(id).total)"
                case .histogram: value = store.withHistogram(id) { buckets, sum, count in "\(Array(buckets)) \(sum) \(count)" }
                }
                out.append("\(family.name) \(family.type) {\(labels.joined(separator: ","))} \(value)")
            }
        }
        return out.sorted()
    }
}
