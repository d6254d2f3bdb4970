import Testing
import P2PMetricsTestVectors
import P2PMetricsWire
@testable import P2PMetricsStore

/// Builds one datagram from (kind, name, labels, value) tuples with the canonical encoder.
func datagram(_ samples: [(SampleKind, String, [(String, String)], SampleValue)], drops: UInt64 = 0) -> [UInt8] {
    var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
    if drops > 0 { encoder.appendDropped(drops) }
    for (kind, name, labels, value) in samples {
        _ = try! encoder.append(kind, name: name, labels: labels, value: value)
    }
    return encoder.bytes
}

extension MetricStore {
    @discardableResult
    mutating func apply(_ bytes: [UInt8]) -> DatagramRejection? {
        bytes.withUnsafeBytes { apply($0, weights: nil, from: nil) }
    }

    /// Applies one distinct-count sample of `key` to `name{labels}`.
    @discardableResult
    mutating func applyDistinct(_ name: String, _ labels: [(String, String)], key: String) -> DatagramRejection? {
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        _ = try! encoder.appendDistinct(name: name, labels: labels, key: Array(key.utf8))
        return apply(encoder.bytes)
    }

    /// The series id of `name{labels}`, found by scanning (tests only).
    func series(_ name: String, _ labels: [String: String] = [:]) -> SeriesID? {
        guard let family = families.first(where: { $0.name == name }) else { return nil }
        return family.series.first { id in
            var found: [String: String] = [:]
            forEachLabel(of: id) { n, v in
                found[String(decoding: n, as: UTF8.self)] = String(decoding: v, as: UTF8.self)
            }
            return found == labels
        }
    }

    func counter(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        series(name, labels).map { let (i, f) = counterValue($0); return Double(i) + f }
    }

    func gauge(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        series(name, labels).map { gaugeValue($0) }
    }
}

@Suite("Aggregation store")
struct StoreTests {
    @Test("counters sum per label set, label order does not matter, dots map to underscores")
    func countersAggregate() {
        var store = MetricStore()
        store.apply(datagram([
            (.counterAdd, "p2p.cache.hits", [("cache_type", "chunk"), ("node", "a")], .unsigned(2)),
            (.counterAdd, "p2p.cache.hits", [("node", "a"), ("cache_type", "chunk")], .unsigned(3)),
            (.counterAdd, "p2p_cache_hits", [("node", "a"), ("cache_type", "chunk")], .double(0.5)),
            (.counterAdd, "p2p.cache.hits", [("cache_type", "vm_image")], .unsigned(1)),
        ]))
        #expect(store.counter("p2p_cache_hits", ["cache_type": "chunk", "node": "a"]) == 5.5)
        #expect(store.counter("p2p_cache_hits", ["cache_type": "vm_image"]) == 1)
        #expect(store.seriesCount == 2)
        #expect(store.statistics.samplesApplied == 4)
    }

    @Test("counters stay exact to the unit past 2^53")
    func exactCounters() {
        var store = MetricStore()
        let big: UInt64 = (1 << 53) + 1
        store.apply(datagram([(.counterAdd, "bytes", [], .unsigned(big)), (.counterAdd, "bytes", [], .unsigned(2))]))
        let id = store.series("bytes")!
        #expect(store.counterValue(id).integer == big + 2)
        #expect(store.counterValue(id).fraction == 0)
    }

    @Test("gauges set and add; empty label values are no labels")
    func gauges() {
        var store = MetricStore()
        store.apply(datagram([
            (.gaugeAdd, "p2p.transfers.active", [], .unsigned(1)),
            (.gaugeAdd, "p2p.transfers.active", [("node", "")], .unsigned(1)),
            (.gaugeAdd, "p2p.transfers.active", [], .signed(-1)),
            (.gaugeSet, "temperature", [], .double(21.5)),
            (.gaugeAdd, "temperature", [], .double(-0.5)),
        ]))
        #expect(store.gauge("p2p_transfers_active") == 1)
        #expect(store.gauge("temperature") == 21)
        #expect(store.seriesCount == 2)
    }

    @Test("histograms count into the catalog's buckets")
    func histograms() {
        var store = MetricStore()
        store.apply(datagram([
            (.histogramObserve, "p2p.transfer.duration", [], .double(0.01)),
            (.histogramObserve, "p2p.transfer.duration", [], .double(0.011)),
            (.histogramObserve, "p2p.transfer.duration", [], .unsigned(600)),
            (.histogramObserve, "p2p.transfer.duration", [], .unsigned(601)),
        ]))
        let id = store.series("p2p_transfer_duration")!
        store.withHistogram(id) { counts, sum, count in
            #expect(counts.count == Catalog.transferDurationBuckets.count + 1)
            #expect(counts[0] == 1)  // le 0.01 (inclusive)
            #expect(counts[1] == 1)  // le 0.025
            #expect(counts[counts.count - 2] == 1)  // le 600
            #expect(counts[counts.count - 1] == 1)  // +Inf
            #expect(count == 4)
            #expect(sum == 0.01 + 0.011 + 600 + 601)
        }
    }

    @Test("a type clash is refused per sample and leaves the metric as it was")
    func typeClash() {
        var store = MetricStore()
        store.apply(datagram([(.counterAdd, "jobs", [], .unsigned(1))]))
        store.apply(datagram([
            (.gaugeSet, "jobs", [], .unsigned(50)),
            (.gaugeSet, "jobs", [("x", "y")], .unsigned(50)),
            (.counterAdd, "jobs", [], .unsigned(1)),
        ]))
        // The catalog fixes p2p.transfers.active as a gauge from the start.
        store.apply(datagram([(.counterAdd, "p2p.transfers.active", [], .unsigned(1))]))
        #expect(store.counter("jobs") == 2)
        #expect(store.statistics.rejected(SampleRejection.typeClash) == 3)
        #expect(store.seriesCount == 1)  // the clashing jobs{x="y"} was not created empty
        #expect(store.families.map(\.name) == ["jobs"])
    }

    @Test("series limits refuse new series and keep existing ones updating")
    func seriesLimits() {
        var configuration = StoreConfiguration()
        configuration.maxSeries = 3
        configuration.maxSeriesPerMetric = 2
        var store = MetricStore(configuration: configuration)
        for i in 0..<5 {
            store.apply(datagram([(.counterAdd, "a", [("i", "\(i)")], .unsigned(1))]))
        }
        #expect(store.seriesCount == 2)
        #expect(store.statistics.rejected(SampleRejection.metricSeriesLimit) == 3)
        store.apply(datagram([(.counterAdd, "b", [], .unsigned(1)), (.counterAdd, "c", [], .unsigned(1))]))
        #expect(store.seriesCount == 3)
        #expect(store.statistics.rejected(SampleRejection.seriesLimit) == 1)
        store.apply(datagram([(.counterAdd, "a", [("i", "0")], .unsigned(10))]))
        #expect(store.counter("a", ["i": "0"]) == 11)
        #expect(store.families.map(\.name) == ["a", "b"])
    }

    @Test("a malformed datagram changes nothing, even after valid samples in it")
    func wholeDatagramRejection() {
        var store = MetricStore()
        store.apply(datagram([(.counterAdd, "c", [], .unsigned(1))]))
        var bad = datagram([(.counterAdd, "c", [], .unsigned(5)), (.counterAdd, "d", [], .unsigned(5))])
        bad.append(0x10)  // a sample tag with nothing after it
        #expect(store.apply(bad) == .truncated)
        #expect(store.counter("c") == 1)
        #expect(store.series("d") == nil)
        #expect(store.statistics.samplesApplied == 1)
    }

    @Test("drop reports add up")
    func dropReports() {
        var store = MetricStore()
        store.apply(datagram([(.counterAdd, "c", [], .unsigned(1))], drops: 7))
        store.apply(datagram([(.counterAdd, "c", [], .unsigned(1))], drops: 5))
        #expect(store.statistics.clientDroppedDatagrams == 12)
    }

    @Test("the wire cache can be cleared under churn without losing identity")
    func wireCacheChurn() {
        var configuration = StoreConfiguration()
        configuration.wireCacheCapacity = 8
        var store = MetricStore(configuration: configuration)
        for round in 0..<3 {
            for i in 0..<100 {
                store.apply(datagram([(.counterAdd, "churn", [("i", "\(i)")], .unsigned(UInt64(round + 1)))]))
            }
        }
        #expect(store.seriesCount == 100)
        #expect(store.counter("churn", ["i": "42"]) == 6)
    }

    @Test("many series: the tables grow and every value is right")
    func manySeries() {
        var store = MetricStore()
        for i in 0..<20_000 {
            store.apply(datagram([(.counterAdd, "m\(i % 7)", [("k", "\(i)"), ("peer", "p\(i % 13)")], .unsigned(UInt64(i)))]))
        }
        #expect(store.seriesCount == 20_000)
        #expect(store.counter("m4", ["k": "19996", "peer": "p\(19996 % 13)"]) == 19996)
    }
}

@Suite("Access control, crash-safe gauges and expiry")
struct ReliabilityStoreTests {
    let alice = SenderCredentials(pid: 100, uid: 1000, gid: 1000)
    let bob = SenderCredentials(pid: 200, uid: 2000, gid: 998)
    let mallory = SenderCredentials(pid: 300, uid: 3000, gid: 3000)

    @Test("a process that exits has its outstanding gauge adds withdrawn; others keep theirs")
    func withdrawOnExit() {
        var store = MetricStore()
        let start = datagram([(.gaugeAdd, "p2p.transfers.active", [], .unsigned(1))])
        let end = datagram([(.gaugeAdd, "p2p.transfers.active", [], .signed(-1))])
        for _ in 0..<3 { _ = start.withUnsafeBytes { store.apply($0, from: alice) } }
        _ = end.withUnsafeBytes { store.apply($0, from: alice) }
        _ = start.withUnsafeBytes { store.apply($0, from: bob) }
        #expect(store.gauge("p2p_transfers_active") == 3)
        #expect(store.takeNewlyTrackedProcesses() == [100, 200])
        #expect(store.takeNewlyTrackedProcesses() == [])
        store.processExited(100)  // alice crashed with two transfers open
        #expect(store.gauge("p2p_transfers_active") == 1)
        store.processExited(100)  // reported twice: nothing more happens
        #expect(store.gauge("p2p_transfers_active") == 1)
        _ = end.withUnsafeBytes { store.apply($0, from: bob) }
        store.processExited(200)  // bob finished cleanly: nothing to withdraw
        #expect(store.gauge("p2p_transfers_active") == 0)
        #expect(store.statistics.processesWithdrawn == 1)
    }

    static func scoped(_ name: String = "g") -> StoreConfiguration {
        var configuration = StoreConfiguration()
        configuration.metrics.append(MetricDescriptor(name: name, type: .gauge, help: "x", processScoped: true))
        return configuration
    }

    @Test("a gauge set makes the value absolute and forgets earlier contributions")
    func setForgetsContributions() {
        var store = MetricStore(configuration: Self.scoped())
        _ = datagram([(.gaugeAdd, "g", [], .unsigned(5))]).withUnsafeBytes { store.apply($0, from: alice) }
        _ = datagram([(.gaugeSet, "g", [], .unsigned(2))]).withUnsafeBytes { store.apply($0, from: bob) }
        store.processExited(100)
        #expect(store.gauge("g") == 2)
    }

    @Test("gauges that are not process-scoped keep what exited processes added (producer/consumer)")
    func unscopedGaugesPersist() {
        var store = MetricStore()
        _ = datagram([(.gaugeAdd, "queue.depth", [], .unsigned(3))]).withUnsafeBytes { store.apply($0, from: alice) }
        store.processExited(100)  // the producer is gone; the items it queued are still there
        _ = datagram([(.gaugeAdd, "queue.depth", [], .signed(-1))]).withUnsafeBytes { store.apply($0, from: bob) }
        #expect(store.gauge("queue_depth") == 2)
        #expect(store.takeNewlyTrackedProcesses() == [])
    }

    @Test("tracking is bounded: beyond the process limit adds apply untracked and are counted")
    func trackingBounds() {
        var configuration = Self.scoped()
        configuration.maxTrackedProcesses = 1
        var store = MetricStore(configuration: configuration)
        let add = datagram([(.gaugeAdd, "g", [], .unsigned(1))])
        _ = add.withUnsafeBytes { store.apply($0, from: alice) }
        _ = add.withUnsafeBytes { store.apply($0, from: bob) }
        _ = add.withUnsafeBytes { store.apply($0, from: nil) }
        #expect(store.gauge("g") == 3)
        #expect(store.statistics.gaugeAddsUntracked == 2)
        store.processExited(200)
        #expect(store.gauge("g") == 3)
        store.processExited(100)
        #expect(store.gauge("g") == 2)
    }

    @Test("series past their TTL are removed; counters stay; ids and memory are reused")
    func expiry() {
        var configuration = StoreConfiguration()
        configuration.defaultTTLSeconds = 10
        configuration.metrics.append(MetricDescriptor(name: "short.counter", type: .counter, help: "x", ttlSeconds: 5))
        var store = MetricStore(configuration: configuration)
        store.now = 100
        store.apply(datagram([
            (.gaugeSet, "temp", [("room", "a")], .unsigned(1)),
            (.gaugeSet, "temp", [("room", "b")], .unsigned(2)),
            (.counterAdd, "requests", [], .unsigned(1)),
            (.counterAdd, "short.counter", [], .unsigned(1)),
            (.histogramObserve, "p2p.transfer.duration", [], .double(1)),
        ]))
        store.now = 108
        store.apply(datagram([(.gaugeSet, "temp", [("room", "b")], .unsigned(3))]))
        #expect(store.expireStale() == 1)  // short.counter (5 s)
        store.now = 111
        #expect(store.expireStale() == 2)  // temp{room=a} and the histogram (10 s default)
        #expect(store.gauge("temp", ["room": "a"]) == nil)
        #expect(store.gauge("temp", ["room": "b"]) == 3)
        #expect(store.counter("requests") == 1)  // counters have no TTL unless configured
        #expect(store.seriesCount == 2)
        #expect(store.statistics.seriesExpired == 3)
        // A returning series starts afresh, in a reused id and bucket run.
        store.apply(datagram([(.histogramObserve, "p2p.transfer.duration", [], .double(0.02))]))
        store.apply(datagram([(.gaugeSet, "temp", [("room", "a")], .unsigned(9))]))
        #expect(store.gauge("temp", ["room": "a"]) == 9)
        let id = store.series("p2p_transfer_duration")!
        store.withHistogram(id) { counts, sum, count in
            #expect(count == 1 && sum == 0.02 && counts.reduce(0, +) == 1)
        }
        #expect(store.seriesCount == 4)
    }

    @Test("churn under a TTL keeps memory flat")
    func churnIsBounded() {
        let (_, footprints) = churn(perRound: 2_000) { round, i in
            datagram([(.gaugeSet, "churn", [("id", "\(round)-\(i)-with-a-long-label-value")], .unsigned(1))])
        }
        #expect(footprints.last! <= footprints[4] * 2, "\(footprints)")
    }
}

@Suite("Top-K sketches")
struct TopKTests {
    @Test("heavy hitters are found with exact counts when they fit, and within the error bound when they do not")
    func spaceSaving() throws {
        var configuration = StoreConfiguration()
        configuration.metrics.append(MetricDescriptor(name: "chunks.requested", type: .topK, help: "x", topK: 5))
        var store = MetricStore(configuration: configuration)
        // A Zipf-like stream: chunk-i is requested 1000/i times, plus 3000 one-off chunks.
        var stream: [String] = []
        for i in 1...20 { stream += Array(repeating: "chunk-\(i)", count: 3000 / i) }
        for i in 0..<3000 { stream.append("rare-\(i)") }
        var generator = SeededGenerator(seed: 5)
        stream.shuffle(using: &generator)
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        for key in stream {
            if try !encoder.appendTopK(name: "chunks.requested", key: key) {
                _ = encoder.bytes.withUnsafeBytes { store.apply($0) }
                encoder.reset()
                try encoder.appendTopK(name: "chunks.requested", key: key)
            }
        }
        _ = encoder.bytes.withUnsafeBytes { store.apply($0) }
        let id = try #require(store.series("chunks_requested"))
        let (entries, total) = store.topKEntries(id)
        #expect(total == UInt64(stream.count))
        #expect(entries.count == 5)
        // Every key above N/K is guaranteed present; each count overestimates by at most its error.
        let truth = Dictionary(grouping: stream, by: { $0 }).mapValues { UInt64($0.count) }
        let reported = Set(entries.map { String(decoding: $0.key, as: UTF8.self) })
        for (key, count) in truth where count > total / 5 { #expect(reported.contains(key), "\(key)") }
        for entry in entries {
            let key = String(decoding: entry.key, as: UTF8.self)
            let real = truth[key] ?? 0
            #expect(entry.count >= real && entry.count - entry.error <= real, "\(key): \(entry.count) ± \(entry.error), real \(real)")
        }
        #expect(reported.contains("chunk-1"))  // 3000 of about 13,800: above N/K, so guaranteed
    }

    @Test("keys must be UTF-8 and `key` is reserved as a label of top-K series")
    func validation() {
        var encoder = DatagramEncoder()
        #expect(throws: EncodingError(.reservedLabel)) { try encoder.appendTopK(name: "t", labels: [("key", "x")], key: "a") }
        #expect(throws: EncodingError(.tooLong)) { try encoder.appendTopK(name: "t", key: "") }
        var decoder = DatagramDecoder()
        let bad: [UInt8] = [WireFormat.magic, 0x01, 0x01, 0x74, 0x00, 0x63, 0x00, 0x02, 0xC3, 0x28]
        #expect(bad.withUnsafeBytes { decoder.validate($0) } == .badUTF8)
    }
}

@Suite("Configured label limits")
struct LabelLimitTests {
    @Test("new series beyond the configured label count or value length are refused and counted")
    func labelLimits() {
        var configuration = StoreConfiguration()
        configuration.maxLabelsPerSeries = 2
        configuration.maxLabelValueLength = 8
        var store = MetricStore(configuration: configuration)
        store.apply(datagram([
            (.counterAdd, "ok", [("a", "1"), ("b", "2")], .unsigned(1)),
            (.counterAdd, "wide", [("a", "1"), ("b", "2"), ("c", "3")], .unsigned(1)),
            (.counterAdd, "long", [("a", "123456789")], .unsigned(1)),
            (.counterAdd, "long", [("a", "12345678")], .unsigned(1)),
        ]))
        #expect(store.counter("ok", ["a": "1", "b": "2"]) == 1)
        #expect(store.counter("long", ["a": "12345678"]) == 1)
        #expect(store.seriesCount == 2)
        #expect(store.statistics.rejected(SampleRejection.labelLimit) == 2)
    }

    @Test("the series limit counts live series: expired ones make room")
    func limitCountsLiveSeries() {
        var configuration = StoreConfiguration()
        configuration.maxSeries = 2
        configuration.defaultTTLSeconds = 1
        var store = MetricStore(configuration: configuration)
        store.now = 0
        store.apply(datagram([(.gaugeSet, "g", [("i", "1")], .unsigned(1)), (.gaugeSet, "g", [("i", "2")], .unsigned(1))]))
        store.now = 10
        store.expireStale()
        store.apply(datagram([(.gaugeSet, "g", [("i", "3")], .unsigned(1)), (.gaugeSet, "g", [("i", "4")], .unsigned(1))]))
        #expect(store.seriesCount == 2)
        #expect(store.statistics.rejected(SampleRejection.seriesLimit) == 0)
    }
}

@Suite("Counter snapshots")
struct SnapshotTests {
    @Test("a snapshot restores every counter exactly, past 2^53 and with fractions; gauges are not kept")
    func roundTrip() {
        var store = MetricStore()
        store.apply(datagram([
            (.counterAdd, "p2p.bytes_transferred.total", [("artifact_type", "microvm")], .unsigned((1 << 60) + 7)),
            (.counterAdd, "work.seconds", [], .double(0.25)),
            (.counterAdd, "work.seconds", [], .unsigned(3)),
            (.gaugeSet, "temperature", [], .unsigned(20)),
        ]))
        for i in 0..<5_000 {  // enough series for several datagrams
            store.apply(datagram([(.counterAdd, "many", [("i", "\(i)"), ("label", String(repeating: "x", count: 40))], .unsigned(UInt64(i)))]))
        }
        let snapshot = store.counterSnapshot()
        #expect(snapshot.count > 1)
        var restored = MetricStore()
        for d in snapshot { #expect(d.withUnsafeBytes { restored.restore($0) } == nil) }
        let id = restored.series("p2p_bytes_transferred_total", ["artifact_type": "microvm"])!
        #expect(restored.counterValue(id).integer == (1 << 60) + 7)
        #expect(restored.counter("work_seconds") == 3.25)
        #expect(restored.counter("many", ["i": "4321", "label": String(repeating: "x", count: 40)]) == 4321)
        #expect(restored.gauge("temperature") == nil)
        #expect(restored.statistics == StoreStatistics())  // restores are not ingest
    }
}

/// Runs 20 rounds of `perRound` new series that all expire (TTL 1 s) at the end of their round;
/// returns the store and its memory footprint after each round.
func churn(perRound: Int, _ make: (Int, Int) -> [UInt8]) -> (MetricStore, [Int]) {
    var configuration = StoreConfiguration()
    configuration.defaultTTLSeconds = 1
    var store = MetricStore(configuration: configuration)
    var footprints: [Int] = []
    for round in 0..<20 {
        store.now = UInt32(round * 10)
        for i in 0..<perRound { store.apply(make(round, i)) }
        store.now += 5
        store.expireStale()
        #expect(store.seriesCount == 0)
        footprints.append(store.memoryFootprint)
    }
    return (store, footprints)
}

@Suite("Memory budget and key arena (issue 19)")
struct MemoryBudgetTests {
    @Test("the key arena refuses a key that would pass its limit; offsets never overflow")
    func arenaBoundary() {
        #expect(ByteKeyTable().maxArenaBytes == Int(UInt32.max))  // 32-bit offsets address it all
        #expect(ByteKeyTable(maxArenaBytes: .max).maxArenaBytes == Int(UInt32.max))
        // Each key takes its 30 bytes after an 8-byte entry header (its length and value).
        var table = ByteKeyTable(maxArenaBytes: 125)
        let keys = (0..<4).map { i in [UInt8](repeating: UInt8(i), count: 30) }
        for (i, key) in keys.prefix(3).enumerated() {
            key.withUnsafeBytes { #expect(table.insert($0, hash: ByteKeyTable.hash($0), value: Int32(i)) == i * 38 + 8) }
        }
        keys[3].withUnsafeBytes { key in
            #expect(!table.canStore(length: 30))
            #expect(table.insert(key, hash: ByteKeyTable.hash(key), value: 3) == nil)
            #expect(table.find(key, hash: ByteKeyTable.hash(key)) == nil)
        }
        #expect(table.count == 3 && table.arena.count == 114)
        // Removing and compacting makes room again, at an offset inside the limit.
        keys[0].withUnsafeBytes { _ = table.remove($0, hash: ByteKeyTable.hash($0)) }
        table.compact { _, _ in }
        keys[3].withUnsafeBytes { key in
            #expect(table.insert(key, hash: ByteKeyTable.hash(key), value: 3) == 84)
            #expect(table.find(key, hash: ByteKeyTable.hash(key)) == 3)
        }
    }

    @Test("series past the key arena's limit are refused (memory_limit), existing ones keep updating")
    func storeAtArenaBoundary() {
        var configuration = StoreConfiguration()
        let value = String(repeating: "v", count: 1_000)
        // Canonical key: 4-byte family id, then 1+5 ("label") and 2+1,004 (value) bytes.
        let keyLength = 4 + 1 + 5 + 2 + 1_004
        configuration.offsetLimit = 10 * keyLength + keyLength / 2
        var store = MetricStore(configuration: configuration)
        for i in 0..<25 {
            store.apply(datagram([(.counterAdd, "wide", [("label", "\(value)\(1000 + i)")], .unsigned(1))]))
        }
        #expect(store.seriesCount == 10)
        #expect(store.statistics.rejected(SampleRejection.memoryLimit) == 15)
        store.apply(datagram([(.counterAdd, "wide", [("label", "\(value)1000")], .unsigned(41))]))
        #expect(store.counter("wide", ["label": "\(value)1000"]) == 42)
    }

    @Test("sketch registers and bucket counts stay within their 32-bit offsets whatever the budget")
    func valueTablesAtTheirBoundary() {
        var configuration = StoreConfiguration()
        configuration.maxMemoryBytes = 1 << 40
        configuration.offsetLimit = 3 * HyperLogLog.registerCount + 100  // 3 sketches, or 190 runs of 65 buckets
        configuration.defaultBuckets = (1...64).map(Double.init)  // runs so long that the key arena stays far below
        var store = MetricStore(configuration: configuration)
        for i in 0..<5 { store.applyDistinct("u", [("i", "\(i)")], key: "k") }
        #expect(store.seriesCount == 3)
        #expect(store.statistics.rejected(SampleRejection.memoryLimit) == 2)
        let runs = configuration.offsetLimit / 65
        for i in 0..<(runs + 2) { store.apply(datagram([(.histogramObserve, "h", [("i", "\(i)")], .unsigned(1))])) }
        #expect(store.seriesCount == 3 + runs)
        #expect(store.statistics.rejected(SampleRejection.memoryLimit) == 4)
        store.applyDistinct("u", [("i", "0")], key: "other")  // existing series still update
        store.apply(datagram([(.histogramObserve, "h", [("i", "0")], .unsigned(2))]))
        #expect(store.statistics.rejected(SampleRejection.memoryLimit) == 4)
    }

    @Test("a byte budget admits series until it is spent, refuses and counts the rest, and holds")
    func budget() {
        var configuration = StoreConfiguration()
        configuration.maxMemoryBytes = 4 << 20
        var store = MetricStore(configuration: configuration)
        // Sets cost a 4 KiB sketch each: the attack of 200 k `|s` lines, scaled down.
        let sent = 2_000
        for i in 0..<sent { store.applyDistinct("uniques", [("peer", "p\(i)")], key: "\(i)") }
        let refused = store.statistics.rejected(SampleRejection.memoryLimit)
        #expect(store.seriesCount + Int(refused) == sent)
        #expect(store.memoryFootprint <= 4 << 20)
        // (4 MiB − the wire cache's 512 KiB) / (4,096 + ~100 bytes) ≈ 870 series.
        #expect((800...900).contains(store.seriesCount), "\(store.seriesCount) admitted")
        // Existing series still update; one more new one is still refused.
        store.applyDistinct("uniques", [("peer", "p0")], key: "new")
        #expect(store.statistics.rejected(SampleRejection.memoryLimit) == refused)
        store.applyDistinct("uniques", [("peer", "other")], key: "x")
        #expect(store.statistics.rejected(SampleRejection.memoryLimit) == refused + 1)
        // A different, cheaper type still fits only if the budget has room for it.
        #expect(store.memoryFootprint + 4_096 > (4 << 20) - (512 << 10))
    }

    @Test("the budget counts 16 labels of 1 KiB per series; every series it admits is stored whole")
    func wideSeriesBudget() {
        var configuration = StoreConfiguration()
        configuration.maxMemoryBytes = 2 << 20
        var store = MetricStore(configuration: configuration)
        let wide = String(repeating: "x", count: 1_024)
        let labels = (0..<15).map { ("l\($0)", wide) }
        for i in 0..<300 {
            store.apply(datagram([(.gaugeSet, "wide", labels + [("i", "\(wide.dropFirst(8))\(10_000_000 + i)")], .unsigned(1))]))
        }
        let refused = Int(store.statistics.rejected(SampleRejection.memoryLimit))
        #expect(store.seriesCount + refused == 300)
        #expect(store.seriesCount > 50 && refused > 0, "\(store.seriesCount) admitted")
        #expect(store.memoryFootprint <= 2 << 20)
    }

    @Test("names and tables of expired series are reclaimed: churning unique names keeps memory flat")
    func uniqueNamesChurn() {
        var (store, footprints) = churn(perRound: 1_000) { round, i in
            datagram([(.gaugeSet, "churn_\(round)_\(i)_with_a_long_metric_name", [], .unsigned(1))])
        }
        #expect(store.families.count == 1_000, "family slots are reused")
        #expect(store.families.allSatisfy { $0.series.isEmpty && $0.name.isEmpty })
        // Removed keys' arena bytes are reclaimed by compaction every few rounds: the footprint
        // cycles, and its peak in the later rounds is no higher than in the first ones.
        #expect((footprints[10...].max() ?? .max) <= (footprints[..<10].max() ?? 0), "\(footprints)")
        // A released name comes back as a fresh family.
        store.apply(datagram([(.gaugeSet, "churn_0_0_with_a_long_metric_name", [], .unsigned(7))]))
        #expect(store.gauge("churn_0_0_with_a_long_metric_name") == 7)
    }

    @Test("the wire cache stays within its share of the budget")
    func wireCacheBounded() {
        var configuration = StoreConfiguration()
        configuration.maxMemoryBytes = 8 << 20  // the wire cache gets 1 MiB
        configuration.defaultTTLSeconds = 1
        var store = MetricStore(configuration: configuration)
        let wide = String(repeating: "w", count: 1_000)
        for round in 0..<4 {
            store.now = UInt32(round * 10)
            for i in 0..<200 {
                store.apply(datagram([(.gaugeSet, "cached", [("a", wide), ("b", "\(round)-\(i)")], .unsigned(1))]))
            }
            #expect(store.seriesCount == 200)
            store.now += 5
            store.expireStale()
        }
        #expect(store.memoryFootprint <= 8 << 20)
    }
}

@Suite("Default memory budget")
struct DefaultBudgetTests {
    @Test("the default budget admits the benchmark's 1 M counter series with 2 labels")
    func millionSeriesFit() {
        var configuration = StoreConfiguration()
        configuration.maxSeriesPerMetric = 1_000_000  // as the benchmark configures it
        var store = MetricStore(configuration: configuration)
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        for i in 0..<1_000_000 {
            // The labels of Benchmarks/load's fill: bench.fill.total{shard="sNNNN",item="iNNNN"}.
            func padded(_ n: Int) -> String { String(String(10_000 + n).dropFirst()) }
            let labels = [("shard", "s" + padded(i / 1_000)), ("item", "i" + padded(i % 1_000))]
            if !((try? encoder.append(.counterAdd, name: "bench.fill.total", labels: labels, value: .unsigned(1))) ?? false) {
                store.apply(encoder.bytes)
                encoder.reset()
                _ = try? encoder.append(.counterAdd, name: "bench.fill.total", labels: labels, value: .unsigned(1))
            }
        }
        store.apply(encoder.bytes)
        #expect(store.seriesCount == 1_000_000)
        #expect(store.statistics.rejected(SampleRejection.memoryLimit) == 0)
        print("1 M series with 2 labels: \(store.memoryFootprint >> 20) MiB of series memory")
    }
}
