import Testing
import P2PMetricsInputStatsD
import P2PMetricsWire
@testable import P2PMetricsStore

@Suite("Text StatsD and DogStatsD")
struct StatsDTests {
    /// Lines as the StatsD and DogStatsD documentation writes them, with what each must do.
    @Test("documented lines aggregate as documented")
    func documentedLines() {
        var store = FedStore()
        store.ingestText("""
        gorets:1|c
        gorets:1|c|@0.1
        glork:320|ms
        glork:320|ms|@0.5
        gaugor:333|g
        gaugor:-10|g
        gaugor:+4|g
        uniques:765|s
        uniques:765|s
        uniques:766|s
        page.views:1|c|#env:prod,region:eu-west
        page.views:2|c|#region:eu-west,env:prod
        fuel.level:0.5|g|#env:prod
        song.length:240|h|@0.5|#genre:rock
        users.online:1|c|#country:china|c:83c0a99c0a54c0c187f461c7980e9b57f3f6a8b0c918c8d93df19a9de6f3fe1d
        request.latency:10:20:30|d
        historic.value:1|c|T1656581400
        """)
        #expect(store.value("gorets") == 11)  // 1 + 1/0.1
        #expect(store.value("glork") == 3)  // one observation + two for @0.5
        #expect(store.histogramSum("glork") == 0.96)  // 3 × 0.32 s
        #expect(store.value("gaugor") == 327)  // set 333, -10, +4
        #expect(store.value("uniques") == 2)
        #expect(store.value("page_views", ["env": "prod", "region": "eu-west"]) == 3)
        #expect(store.value("fuel_level", ["env": "prod"]) == 0.5)
        #expect(store.value("song_length", ["genre": "rock"]) == 2)
        #expect(store.value("users_online", ["country": "china"]) == 1)
        #expect(store.value("request_latency") == 3)
        #expect(store.histogramSum("request_latency") == 60)
        #expect(store.value("historic_value") == 1)
        #expect(store.text.linesReceived == 17)
        #expect(store.text.rejected.counts.allSatisfy { $0 == 0 })
    }

    @Test("a bad line refuses that line only, with its reason")
    func badLines() {
        var store = FedStore()
        let lines: [(String, TextLineRejection)] = [
            ("nocolon", .malformed),
            ("novalue:|c", .malformed),
            ("notype:1", .malformed),
            (":1|c", .malformed),
            ("x:1|c|@", .badSampleRate),
            ("x:1|c|@2", .badSampleRate),
            ("x:1|c|@0", .badSampleRate),
            ("x:1|ms|@0.001", .badSampleRate),
            ("x:1|c|%weird", .malformed),
            ("x:1|c|Tabc", .malformed),
            ("x:abc|c", .badValue),
            ("x:nan|g", .badValue),
            ("x:inf|c", .badValue),
            ("x:0x10|c", .badValue),
            ("x:1|q", .badType),
            ("x:-1|c", .negativeCounter),
            ("p2pmetricsd.series:1|c", .badName),
            ("x:1|c|#:nameless", .badTag),
            ("_e{5,4}:title|text", .unsupportedEvent),
            ("_sc|Redis connection|2|#env:dev", .unsupportedEvent),
        ]
        store.ingestText((lines.map(\.0) + ["good:1|c"]).joined(separator: "\n"))
        #expect(store.value("good") == 1)
        #expect(store.text.linesReceived == UInt64(lines.count + 1))
        for reason in TextLineRejection.allCases {
            let expected = lines.filter { $0.1 == reason }.count
            #expect(store.text.rejected[reason] == UInt64(expected), "\(reason)")
        }
        #expect(store.families.map(\.name) == ["good"])
    }

    @Test("names and tags are sanitized like statsd_exporter; CRLF and blank lines are fine")
    func sanitizing() {
        var store = FedStore()
        store.ingestText("my-app/requests:1|c|#http-method:GET,1st:a,bare\r\n\n\n9lives:2|g\n")
        #expect(store.value("my_app_requests", ["http_method": "GET", "_1st": "a"]) == 1)
        #expect(store.value("_9lives") == 2)
        #expect(store.text.linesReceived == 2)
    }

    @Test("text and binary samples meet in the same series")
    func mixedWithBinary() throws {
        var store = FedStore()
        store.ingestText("p2p.cache.hits:2|c|#cache_type:chunk")
        var encoder = DatagramEncoder()
        try encoder.append(.counterAdd, name: "p2p.cache.hits", labels: [("cache_type", "chunk")], value: .unsigned(3))
        _ = encoder.bytes.withUnsafeBytes { store.ingest($0) }
        store.ingestText("p2p_cache_hits:5|c|#cache_type:chunk")
        #expect(store.value("p2p_cache_hits", ["cache_type": "chunk"]) == 10)
        #expect(store.seriesCount == 1)
        store.ingestText("p2p.cache.hits:1|g")  // a counter in the catalog: a gauge sample clashes
        #expect(store.statistics.rejected(SampleRejection.typeClash) == 1)
    }

    @Test("distinct counts stay within the documented error and bounded memory")
    func distinctAccuracy() {
        var store = FedStore()
        for n in [1, 10, 1_000, 50_000] {
            let name = "set\(n)"
            var batch: [String] = []
            for i in 0..<n {
                batch.append("\(name):chunk-\(i)|s")
                batch.append("\(name):chunk-\(i / 2)|s")  // repeats don't count
                if batch.count >= 1_000 {
                    store.ingestText(batch.joined(separator: "\n"))
                    batch.removeAll()
                }
            }
            store.ingestText(batch.joined(separator: "\n"))
            let estimate = store.value(name)!
            let error = abs(estimate - Double(n)) / Double(n)
            // Small sets: linear counting, exact to within a key or two (two keys may share a
            // register: ~1 % of runs at n = 10, the hash being seeded per process).
            #expect(error <= (n < 1000 ? max(0.01, 2 / Double(n)) : 3 * 0.0163), "n=\(n) estimate=\(estimate)")
        }
        #expect(store.memoryFootprint < 4 * 4096 + 1 << 20)
    }
}

@Suite("Bounded work per text datagram (issue 19)")
struct StatsDBoundsTests {
    @Test("a sample rate is a weight: one histogram observation counts round(1/rate) times, applied once")
    func sampleRateIsAWeight() {
        var store = FedStore()
        store.ingestText("amp:2|h|@0.01\namp:1|h\namp:5|h|@0.5\nlat:250|ms|@0.1")
        #expect(store.value("amp") == 103.0)  // 100 + 1 + 2
        #expect(store.histogramSum("amp") == 211.0)  // 2 × 100 + 1 + 5 × 2
        #expect(store.value("lat") == 10)
        #expect(store.histogramSum("lat") == 2.5)
        #expect(store.statistics.samplesApplied == 4)  // one sample per observation line, no replay
        let id = store.families.first { $0.name == "amp" }!.series[0]
        store.store.withHistogram(id) { counts, _, count in
            #expect(counts.reduce(0, +) == count)  // buckets carry the weight too
        }
    }

    @Test("weights stay aligned with their samples across datagrams the transcoder has to split")
    func weightsAcrossFlushes() {
        var store = FedStore()
        let label = String(repeating: "l", count: 900)
        var lines: [String] = []
        for i in 0..<400 { lines.append("split:\(i % 7)|h|@\(i % 2 == 0 ? "0.25" : "1")|#k:\(label)\(i % 50)") }
        store.ingestText(lines.joined(separator: "\n"))
        var count = 0.0
        for family in store.families where family.name == "split" {
            for id in family.series { count += store.store.withHistogram(id) { _, _, c in Double(c) } }
        }
        #expect(count == 200 * 4 + 200)
        #expect(store.text.rejected.counts.allSatisfy { $0 == 0 })
    }

    @Test("the amplification datagram is refused whole in O(size), with too_many_values")
    func amplificationLine() {
        var store = FedStore()
        let tags = (0..<16).map { "t\($0 < 10 ? "0" : "")\($0):" + String(repeating: "v", count: 1_000) }.joined(separator: ",")
        let values = Array(repeating: "1", count: 24_000).joined(separator: ":")
        let line = "amp.c:\(values)|h|@0.01|#\(tags)"
        #expect(line.utf8.count < 65_536)
        store.ingestText(line)
        #expect(store.text.rejected[.tooManyValues] == 1)
        #expect(store.statistics.samplesApplied == 0 && store.seriesCount == 0)
    }

    @Test("values per line and per datagram are capped, each with its reason")
    func valueCaps() {
        var store = FedStore()
        let limit = StatsDTranscoder.maxValuesPerLine
        let full = Array(repeating: "1", count: limit).joined(separator: ":")
        store.ingestText("ok:\(full)|h\nover:\(full):1|h")
        #expect(store.value("ok") == Double(limit))
        #expect(store.value("over") == nil)
        #expect(store.text.rejected[.tooManyValues] == 1)
        // 64 full lines use the datagram's 16,384 values; the next line is refused.
        let perDatagram = StatsDTranscoder.maxValuesPerDatagram / limit
        let lines = (0...perDatagram).map { "d\($0):\(full)|c" }
        store.ingestText(lines.joined(separator: "\n"))
        #expect(store.value("d0") == Double(limit))
        #expect(store.value("d\(perDatagram - 1)") == Double(limit))
        #expect(store.value("d\(perDatagram)") == nil)
        #expect(store.text.rejected[.datagramValueLimit] == 1)
    }

    @Test("tags are capped per line, before any quadratic de-duplication")
    func tagCaps() {
        var store = FedStore()
        let many = (0...StatsDTranscoder.maxTagsPerLine).map { "t\($0):v" }.joined(separator: ",")
        let seventeen = (0..<17).map { "t\($0):v" }.joined(separator: ",")
        let sixteen = (0..<16).map { "t\($0):v" }.joined(separator: ",")
        let hostile = Array(repeating: "a:b", count: 16_000).joined(separator: ",")
        store.ingestText("x:1|c|#\(many)\nx:1|c|#\(seventeen)\nx:1|c|#\(hostile)\nx:1|c|#\(sixteen)")
        #expect(store.text.rejected[.tooManyTags] == 3)
        #expect(store.seriesCount == 1)
    }

    @Test("out-of-range values and over-long set keys get their own reasons, not bad_tag")
    func rightReasons() {
        var store = FedStore()
        store.ingestText("x:1e308|c|@0.01\nh:1e308|h|@0.01\nu:\(String(repeating: "k", count: 2_048))|s\nu:ok|s")
        #expect(store.text.rejected[.badValue] == 2)
        #expect(store.text.rejected[.keyTooLong] == 1)
        #expect(store.text.rejected[.badTag] == 0)
        #expect(store.value("u") == 1)
    }
}
