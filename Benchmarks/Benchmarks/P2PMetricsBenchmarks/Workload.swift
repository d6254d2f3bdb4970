import P2PMetricsStore
import P2PMetricsWire

/// The fixed workload of the benchmarks, the same mix as the load tool's (load/workload.h): the
/// seed's 13 P2P metrics × their own label's values × peer-000…peer-199 = 5,200 series.
enum Workload {
    struct Series {
        var name: String
        var labels: [(String, String)]
        var kind: SampleKind
        var counterValue: UInt64
    }

    static let durations: [Double] = [0.004, 0.03, 0.12, 0.7, 1.9, 4.2, 45.5, 250.25]

    static let series: [Series] = {
        let artifact = ["microvm", "container", "storepath", "closure"]
        let verification = ["nar_hash", "chunk_hash"]
        let cache = ["chunk", "vm_image"]
        let metrics: [(String, SampleKind, String?, [String], UInt64)] = [
            ("p2p.image.imports.total", .counterAdd, "artifact_type", artifact, 1),
            ("p2p.image.imports.failed", .counterAdd, "artifact_type", artifact, 1),
            ("p2p.image.downloads.total", .counterAdd, nil, [], 1),
            ("p2p.image.downloads.failed", .counterAdd, nil, [], 1),
            ("p2p.transfer.duration", .histogramObserve, nil, [], 0),
            ("p2p.bytes_transferred.total", .counterAdd, "artifact_type", artifact, 262_144),
            ("p2p.chunks_transferred.total", .counterAdd, nil, [], 1),
            ("p2p.chunks_deduplicated.total", .counterAdd, nil, [], 1),
            ("p2p.verification.success", .counterAdd, "verification_type", verification, 1),
            ("p2p.verification.failed", .counterAdd, "verification_type", verification, 1),
            ("p2p.cache.hits", .counterAdd, "cache_type", cache, 1),
            ("p2p.cache.misses", .counterAdd, "cache_type", cache, 1),
            ("p2p.transfers.active", .gaugeAdd, nil, [], 0),
        ]
        var all: [Series] = []
        for peer in 0..<200 {
            let peerName = "peer-" + String(peer).leftPadded(to: 3)
            for (name, kind, label, values, counterValue) in metrics {
                if let label {
                    for v in values {
                        all.append(Series(name: name, labels: [(label, v), ("peer", peerName)], kind: kind,
                                          counterValue: counterValue))
                    }
                } else {
                    all.append(Series(name: name, labels: [("peer", peerName)], kind: kind, counterValue: counterValue))
                }
            }
        }
        return all
    }()

    static func value(_ s: Series, variant: Int) -> SampleValue {
        switch s.kind {
        case .counterAdd: return .unsigned(s.counterValue)
        case .gaugeAdd: return .signed(variant & 1 == 0 ? 1 : -1)
        default: return .double(durations[variant & 7])
        }
    }

    struct Generator {
        var state: UInt64
        mutating func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
    }

    /// One sample per datagram, `count` datagrams over shuffled series.
    static func singleSampleDatagrams(count: Int = 10_400) -> [[UInt8]] {
        var random = Generator(state: 42)
        var encoder = DatagramEncoder()
        return (0..<count).map { j in
            let s = series[random.next(series.count)]
            encoder.reset()
            _ = try! encoder.append(s.kind, name: s.name, labels: s.labels, value: value(s, variant: j))
            return encoder.bytes
        }
    }

    /// Datagrams of at most 8 KiB, each with a working set of `perDatagram` series whose series
    /// records are written once and referenced by every later sample (the clients' batch mode).
    static func batchedDatagrams(count: Int = 64, perDatagram: Int = 32) -> (datagrams: [[UInt8]], samples: Int) {
        var random = Generator(state: 7)
        var encoder = DatagramEncoder(maxSize: WireFormat.defaultBatchSize)
        var datagrams: [[UInt8]] = []
        var samples = 0
        for _ in 0..<count {
            var set: [Int] = []
            while set.count < perDatagram {
                let i = random.next(series.count)
                if !set.contains(i) { set.append(i) }
            }
            encoder.reset()
            var variant = 0
            while true {
                let s = series[set[random.next(set.count)]]
                guard try! encoder.append(s.kind, name: s.name, labels: s.labels, value: value(s, variant: variant)) else {
                    break
                }
                variant += 1
                samples += 1
            }
            datagrams.append(encoder.bytes)
        }
        return (datagrams, samples)
    }

    /// `count` distinct counter series `bench.fill.total{shard, item}` (two labels), one +1 each,
    /// packed into 8 KiB datagrams.
    static func fillDatagrams(series count: Int) -> [[UInt8]] {
        var encoder = DatagramEncoder(maxSize: WireFormat.defaultBatchSize)
        var datagrams: [[UInt8]] = []
        for i in 0..<count {
            let labels = [("shard", "s" + String(i / 1000).leftPadded(to: 4)), ("item", "i" + String(i % 1000).leftPadded(to: 4))]
            if !(try! encoder.append(.counterAdd, name: "bench.fill.total", labels: labels, value: .unsigned(1))) {
                datagrams.append(encoder.bytes)
                encoder.reset()
                _ = try! encoder.append(.counterAdd, name: "bench.fill.total", labels: labels, value: .unsigned(1))
            }
        }
        if !encoder.isEmpty { datagrams.append(encoder.bytes) }
        return datagrams
    }

    /// A store holding `count` counter series with two labels (plus nothing else).
    static func filledStore(series count: Int) -> MetricStore {
        var configuration = StoreConfiguration()
        configuration.maxSeries = max(count, configuration.maxSeries)
        configuration.maxSeriesPerMetric = max(count, configuration.maxSeriesPerMetric)
        var store = MetricStore(configuration: configuration)
        for d in fillDatagrams(series: count) {
            d.withUnsafeBytes { _ = store.apply($0) }
        }
        precondition(store.seriesCount == count, "filled \(store.seriesCount) of \(count) series")
        return store
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
