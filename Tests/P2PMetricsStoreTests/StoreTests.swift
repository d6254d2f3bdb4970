import Testing
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
    mutating func ingest(_ bytes: [UInt8]) -> DatagramRejection? {
        bytes.withUnsafeBytes { ingest($0) }
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
        store.ingest(datagram([
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
        store.ingest(datagram([(.counterAdd, "bytes", [], .unsigned(big)), (.counterAdd, "bytes", [], .unsigned(2))]))
        let id = store.series("bytes")!
        #expect(store.counterValue(id).integer == big + 2)
        #expect(store.counterValue(id).fraction == 0)
    }

    @Test("gauges set and add; empty label values are no labels")
    func gauges() {
        var store = MetricStore()
        store.ingest(datagram([
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
        store.ingest(datagram([
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
        store.ingest(datagram([(.counterAdd, "jobs", [], .unsigned(1))]))
        store.ingest(datagram([
            (.gaugeSet, "jobs", [], .unsigned(50)),
            (.gaugeSet, "jobs", [("x", "y")], .unsigned(50)),
            (.counterAdd, "jobs", [], .unsigned(1)),
        ]))
        // The catalog fixes p2p.transfers.active as a gauge from the start.
        store.ingest(datagram([(.counterAdd, "p2p.transfers.active", [], .unsigned(1))]))
        #expect(store.counter("jobs") == 2)
        #expect(store.statistics.rejected(SampleRejection.typeClash) == 3)
        #expect(store.families.map(\.name) == ["jobs"])
    }

    @Test("series limits refuse new series and keep existing ones updating")
    func seriesLimits() {
        var configuration = StoreConfiguration()
        configuration.maxSeries = 3
        configuration.maxSeriesPerMetric = 2
        var store = MetricStore(configuration: configuration)
        for i in 0..<5 {
            store.ingest(datagram([(.counterAdd, "a", [("i", "\(i)")], .unsigned(1))]))
        }
        #expect(store.seriesCount == 2)
        #expect(store.statistics.rejected(SampleRejection.metricSeriesLimit) == 3)
        store.ingest(datagram([(.counterAdd, "b", [], .unsigned(1)), (.counterAdd, "c", [], .unsigned(1))]))
        #expect(store.seriesCount == 3)
        #expect(store.statistics.rejected(SampleRejection.seriesLimit) == 1)
        store.ingest(datagram([(.counterAdd, "a", [("i", "0")], .unsigned(10))]))
        #expect(store.counter("a", ["i": "0"]) == 11)
        #expect(store.families.map(\.name) == ["a", "b"])
    }

    @Test("a malformed datagram changes nothing, even after valid samples in it")
    func wholeDatagramRejection() {
        var store = MetricStore()
        store.ingest(datagram([(.counterAdd, "c", [], .unsigned(1))]))
        var bad = datagram([(.counterAdd, "c", [], .unsigned(5)), (.counterAdd, "d", [], .unsigned(5))])
        bad.append(0x10)  // a sample tag with nothing after it
        #expect(store.ingest(bad) == .truncated)
        #expect(store.counter("c") == 1)
        #expect(store.series("d") == nil)
        #expect(store.statistics.rejected(DatagramRejection.truncated) == 1)
        #expect(store.statistics.datagramsReceived == 2)
        #expect(store.statistics.samplesApplied == 1)
    }

    @Test("drop reports add up")
    func dropReports() {
        var store = MetricStore()
        store.ingest(datagram([(.counterAdd, "c", [], .unsigned(1))], drops: 7))
        store.ingest(datagram([(.counterAdd, "c", [], .unsigned(1))], drops: 5))
        #expect(store.statistics.clientDroppedDatagrams == 12)
    }

    @Test("the wire cache can be cleared under churn without losing identity")
    func wireCacheChurn() {
        var configuration = StoreConfiguration()
        configuration.wireCacheCapacity = 8
        var store = MetricStore(configuration: configuration)
        for round in 0..<3 {
            for i in 0..<100 {
                store.ingest(datagram([(.counterAdd, "churn", [("i", "\(i)")], .unsigned(UInt64(round + 1)))]))
            }
        }
        #expect(store.seriesCount == 100)
        #expect(store.counter("churn", ["i": "42"]) == 6)
    }

    @Test("many series: the tables grow and every value is right")
    func manySeries() {
        var store = MetricStore()
        for i in 0..<20_000 {
            store.ingest(datagram([(.counterAdd, "m\(i % 7)", [("k", "\(i)"), ("peer", "p\(i % 13)")], .unsigned(UInt64(i)))]))
        }
        #expect(store.seriesCount == 20_000)
        #expect(store.counter("m4", ["k": "19996", "peer": "p\(19996 % 13)"]) == 19996)
    }
}
