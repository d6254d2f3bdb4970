import P2PMetricsStatsD
import P2PMetricsWire

/// Identifies a series for the life of the store.
public typealias SeriesID = Int32

/// One metric: a name, a type, and the series that carry it.
public struct MetricFamily: Sendable {
    /// The Prometheus name (dots mapped to underscores).
    public let name: String
    public let type: MetricType
    public let help: String
    /// Histogram bucket upper bounds (without `+Inf`); empty for other types.
    public let buckets: [Double]
    /// The family's series in creation order.
    public internal(set) var series: [SeriesID] = []
}

/// The aggregation store: every series' current value, keyed by metric and label set.
///
/// Plain Swift with value semantics, owned by one thread (the daemon's loop). `ingest` applies a
/// datagram exactly as PROTOCOL.md §2 says: validated whole first, then applied sample by sample,
/// with state-dependent refusals (type clash, limits) counted per sample.
public struct MetricStore {
    public let configuration: StoreConfiguration
    public private(set) var statistics = IngestStatistics()
    public private(set) var families: [MetricFamily] = []

    // Known metrics by exposed name, and the families that exist by exposed name.
    private let descriptors: [String: MetricDescriptor]
    private var familyIndex: [String: Int32] = [:]

    // Series: canonical key (family id + labels sorted by name) → series id. The key bytes double
    // as the series' label storage for exposition.
    private var canonical = ByteKeyTable(minimumCapacity: 1024)
    // Series: a datagram's series bytes as sent → series id. A bounded cache in front of `canonical`.
    private var wireCache = ByteKeyTable(minimumCapacity: 1024)

    // Per-series state, indexed by series id (structure of arrays).
    private var seriesFamily: [Int32] = []
    private var seriesKeyOffset: [UInt32] = []
    private var seriesKeyLength: [UInt16] = []
    /// Counter: exact integer part. Histogram: observation count.
    private var integerPart: [UInt64] = []
    /// Counter: fractional adds. Gauge: value. Histogram: sum.
    private var floatPart: [Double] = []
    /// Histogram: first bucket of the series in `bucketCounts`. Distinct: first register in `sketchRegisters`.
    private var histogramBase: [UInt32] = []
    /// Non-cumulative bucket counts of every histogram series; `+Inf` is the last of each run.
    private var bucketCounts: [UInt64] = []
    /// HyperLogLog registers of every distinct-count series, `HyperLogLog.registerCount` each.
    private var sketchRegisters: [UInt8] = []

    // Scratch reused across datagrams.
    private var decoder = DatagramDecoder()
    private let transcoder = StatsDTranscoder()
    private var resolved: [SeriesID] = []
    private var keyScratch: [UInt8] = []
    private var labelScratch: [(name: Range<Int>, value: Range<Int>)] = []

    private static let unresolved: SeriesID = -1
    private static let refusedBase: SeriesID = -2

    public init(configuration: StoreConfiguration = StoreConfiguration()) {
        self.configuration = configuration
        var descriptors: [String: MetricDescriptor] = [:]
        for d in configuration.metrics { descriptors[d.exposedName] = d }
        self.descriptors = descriptors
    }

    /// Live series.
    public var seriesCount: Int { seriesFamily.count }

    // MARK: Ingest

    /// Applies one datagram: binary (first byte `0xF5`) or text StatsD lines (first byte ASCII).
    /// Returns the reason when a binary datagram was refused whole; text is refused line by line.
    @discardableResult
    public mutating func ingest(_ bytes: UnsafeRawBufferPointer) -> DatagramRejection? {
        statistics.datagramsReceived &+= 1
        statistics.bytesReceived &+= UInt64(bytes.count)
        if let first = bytes.first, first < 0x80 {
            ingestText(bytes)
            return nil
        }
        return ingestBinary(bytes)
    }

    /// Transcodes text lines into binary datagrams and applies those, so both formats share one
    /// validation and aggregation path (and the same series for the same name and labels).
    private mutating func ingestText(_ bytes: UnsafeRawBufferPointer) {
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        var refused: [TextLineRejection] = []
        let lines = transcoder.transcode(bytes, into: &encoder, flush: { full in
            self.applyTranscoded(full)
            full.reset()
        }, reject: { refused.append($0) })
        applyTranscoded(encoder)
        statistics.textLinesReceived &+= UInt64(lines)
        for reason in refused { statistics.count(reason) }
    }

    private mutating func applyTranscoded(_ encoder: DatagramEncoder) {
        guard !encoder.isEmpty else { return }
        encoder.bytes.withUnsafeBytes { _ = ingestBinary($0) }
    }

    private mutating func ingestBinary(_ bytes: UnsafeRawBufferPointer) -> DatagramRejection? {
        if let reason = decoder.validate(bytes) {
            statistics.count(reason)
            return reason
        }
        statistics.clientDroppedDatagrams &+= decoder.droppedReported
        resolved.removeAll(keepingCapacity: true)
        resolved.append(contentsOf: repeatElement(Self.unresolved, count: decoder.series.count))

        var cursor = decoder.samples(in: bytes)
        var applied: UInt64 = 0
        while let sample = cursor.next() {
            var id = resolved[sample.series]
            if id == Self.unresolved {
                id = resolve(decoder.series[sample.series], kind: sample.kind, in: bytes)
                resolved[sample.series] = id
            }
            if id < 0 {
                statistics.count(SampleRejection.allCases[Int(Self.refusedBase - id)])
                continue
            }
            let family = Int(seriesFamily[Int(id)])
            guard families[family].type == sample.kind.metricType else {
                statistics.count(.typeClash)
                continue
            }
            apply(sample, to: Int(id), family: family, in: bytes)
            applied += 1
        }
        statistics.samplesApplied &+= applied
        return nil
    }

    /// Records a datagram refused before decoding (e.g. by the transport: truncated by the kernel,
    /// or from a sender that is not allowed).
    public mutating func countRejected(_ reason: DatagramRejection, bytes: Int) {
        statistics.datagramsReceived &+= 1
        statistics.bytesReceived &+= UInt64(bytes)
        statistics.count(reason)
    }

    @inline(__always)
    private mutating func apply(_ sample: Sample, to id: Int, family: Int, in bytes: UnsafeRawBufferPointer) {
        switch sample.kind {
        case .counterAdd:
            switch sample.value {
            case .unsigned(let u): addToCounter(id, u)
            case .signed(let s): addToCounter(id, UInt64(s))  // validated ≥ 0
            case .double(let d): floatPart[id] += d
            case .key: break  // refused by validation
            }
        case .gaugeSet:
            floatPart[id] = sample.value.doubleValue
        case .gaugeAdd:
            floatPart[id] += sample.value.doubleValue
        case .histogramObserve:
            let value = sample.value.doubleValue
            let bucket = families[family].buckets.partitioningIndex { value <= $0 }
            bucketCounts[Int(histogramBase[id]) + bucket] &+= 1
            integerPart[id] &+= 1
            floatPart[id] += value
        case .distinctAdd:
            guard case .key(let range) = sample.value else { return }
            let base = Int(histogramBase[id])
            sketchRegisters.withUnsafeMutableBufferPointer { registers in
                HyperLogLog.add(UnsafeRawBufferPointer(rebasing: bytes[range]),
                                to: UnsafeMutableBufferPointer(rebasing: registers[base..<base + HyperLogLog.registerCount]))
            }
        }
    }

    @inline(__always)
    private mutating func addToCounter(_ id: Int, _ u: UInt64) {
        let (sum, overflow) = integerPart[id].addingReportingOverflow(u)
        integerPart[id] = sum
        if overflow { floatPart[id] += 18_446_744_073_709_551_616.0 }
    }

    // MARK: Series resolution

    /// Finds or creates the series a datagram's series record names; a negative result encodes
    /// the `SampleRejection` that refuses all its samples in this datagram.
    private mutating func resolve(_ definition: SeriesDefinition, kind: SampleKind, in bytes: UnsafeRawBufferPointer) -> SeriesID {
        let wireKey = UnsafeRawBufferPointer(rebasing: bytes[definition.keyRange])
        let wireHash = ByteKeyTable.hash(wireKey)
        if let id = wireCache.find(wireKey, hash: wireHash) { return id }

        let name = Names.exposedName(bytes[definition.nameRange])
        let familyID: Int32
        if let existing = familyIndex[name] {
            familyID = existing
        } else {
            let type = descriptors[name]?.type ?? kind.metricType
            guard type == kind.metricType else { return refused(.typeClash) }
            familyID = Int32(families.count)
        }

        // Canonical key: family id, then labels sorted by name, each length-prefixed.
        labelScratch.removeAll(keepingCapacity: true)
        var labels = decoder.labels(of: definition, in: bytes)
        // An empty label value is the same as no label to Prometheus; keeping it would expose
        // two samples of one series.
        while let label = labels.next() {
            if !label.value.isEmpty { labelScratch.append(label) }
        }
        labelScratch.sort { lexicographicallyPrecedes(bytes[$0.name], bytes[$1.name]) }
        keyScratch.removeAll(keepingCapacity: true)
        withUnsafeBytes(of: familyID.littleEndian) { keyScratch.append(contentsOf: $0) }
        for label in labelScratch {
            Varint.append(UInt64(label.name.count), to: &keyScratch)
            keyScratch.append(contentsOf: bytes[label.name])
            Varint.append(UInt64(label.value.count), to: &keyScratch)
            keyScratch.append(contentsOf: bytes[label.value])
        }

        let id: SeriesID
        let found = keyScratch.withUnsafeBytes { key in canonical.find(key, hash: ByteKeyTable.hash(key)) }
        if let found {
            id = found
        } else {
            guard seriesFamily.count < configuration.maxSeries else { return refused(.seriesLimit) }
            if Int(familyID) < families.count {
                guard families[Int(familyID)].series.count < configuration.maxSeriesPerMetric else {
                    return refused(.metricSeriesLimit)
                }
            } else {
                createFamily(named: name, type: kind.metricType)
            }
            id = createSeries(family: familyID)
        }
        if wireCache.count >= configuration.wireCacheCapacity { wireCache.removeAll() }
        wireCache.insert(wireKey, hash: wireHash, value: id)
        return id
    }

    private func refused(_ reason: SampleRejection) -> SeriesID {
        Self.refusedBase - SeriesID(SampleRejection.allCases.firstIndex(of: reason) ?? 0)
    }

    private mutating func createFamily(named name: String, type: MetricType) {
        let descriptor = descriptors[name]
        let buckets = type == .histogram ? (descriptor?.buckets ?? configuration.defaultBuckets) : []
        let help = descriptor?.help ?? "Metric \(name) sent by clients of p2pmetricsd."
        familyIndex[name] = Int32(families.count)
        families.append(MetricFamily(name: name, type: type, help: help, buckets: buckets))
    }

    private mutating func createSeries(family: Int32) -> SeriesID {
        let id = SeriesID(seriesFamily.count)
        let offset = keyScratch.withUnsafeBytes { key in canonical.insert(key, hash: ByteKeyTable.hash(key), value: id) }
        seriesFamily.append(family)
        seriesKeyOffset.append(UInt32(offset))
        seriesKeyLength.append(UInt16(keyScratch.count))
        integerPart.append(0)
        floatPart.append(0)
        switch families[Int(family)].type {
        case .histogram:
            histogramBase.append(UInt32(bucketCounts.count))
            bucketCounts.append(contentsOf: repeatElement(0, count: families[Int(family)].buckets.count + 1))
        case .distinct:
            histogramBase.append(UInt32(sketchRegisters.count))
            sketchRegisters.append(contentsOf: repeatElement(0, count: HyperLogLog.registerCount))
        case .counter, .gauge:
            histogramBase.append(0)
        }
        families[Int(family)].series.append(id)
        return id
    }

    // MARK: Reading (for exposition)

    /// Calls `body` with each (name, value) label pair of a series, sorted by label name.
    public func forEachLabel(of id: SeriesID, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) {
        let offset = Int(seriesKeyOffset[Int(id)]) + MemoryLayout<Int32>.size
        let end = Int(seriesKeyOffset[Int(id)]) + Int(seriesKeyLength[Int(id)])
        canonical.withKey(offset: offset, length: end - offset) { key in
            var reader = LabelReader(bytes: key)
            while let (name, value) = reader.next() { body(name, value) }
        }
    }

    /// A counter's total, exact in its integer part.
    public func counterValue(_ id: SeriesID) -> (integer: UInt64, fraction: Double) {
        (integerPart[Int(id)], floatPart[Int(id)])
    }

    public func gaugeValue(_ id: SeriesID) -> Double { floatPart[Int(id)] }

    /// A histogram's non-cumulative bucket counts (last: `+Inf`), sum and count.
    public func withHistogram<R>(_ id: SeriesID, _ body: (UnsafeBufferPointer<UInt64>, Double, UInt64) -> R) -> R {
        let family = families[Int(seriesFamily[Int(id)])]
        let base = Int(histogramBase[Int(id)])
        return bucketCounts.withUnsafeBufferPointer { counts in
            body(UnsafeBufferPointer(rebasing: counts[base..<base + family.buckets.count + 1]),
                 floatPart[Int(id)], integerPart[Int(id)])
        }
    }

    /// The estimated number of distinct keys of a distinct-count series.
    public func distinctEstimate(_ id: SeriesID) -> Double {
        let base = Int(histogramBase[Int(id)])
        return sketchRegisters.withUnsafeBufferPointer {
            HyperLogLog.estimate(UnsafeBufferPointer(rebasing: $0[base..<base + HyperLogLog.registerCount]))
        }
    }

    /// Bytes the series tables hold (an estimate for the self-metric).
    public var memoryFootprint: Int {
        canonical.memoryFootprint + wireCache.memoryFootprint
            + seriesFamily.capacity * 4 + seriesKeyOffset.capacity * 4 + seriesKeyLength.capacity * 2
            + integerPart.capacity * 8 + floatPart.capacity * 8 + histogramBase.capacity * 4 + bucketCounts.capacity * 8 + sketchRegisters.capacity
    }
}

/// Reads the length-prefixed label pairs of a canonical key (written by the store itself).
private struct LabelReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    mutating func next() -> (UnsafeRawBufferPointer, UnsafeRawBufferPointer)? {
        guard offset < bytes.count, let name = field(), let value = field() else { return nil }
        return (name, value)
    }

    private mutating func field() -> UnsafeRawBufferPointer? {
        var length = 0
        var shift = 0
        while offset < bytes.count {
            let b = bytes[offset]
            offset += 1
            length |= Int(b & 0x7F) << shift
            shift += 7
            if b & 0x80 == 0 {
                guard length <= bytes.count - offset else { return nil }
                defer { offset += length }
                return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length])
            }
        }
        return nil
    }
}

extension Collection {
    /// The index of the first element for which `belongsInSecondPartition` is true, by binary search
    /// (the collection must be partitioned by the predicate).
    @inlinable
    func partitioningIndex(where belongsInSecondPartition: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if belongsInSecondPartition(self[index(startIndex, offsetBy: mid)]) { high = mid } else { low = mid + 1 }
        }
        return low
    }
}

private func lexicographicallyPrecedes(_ a: Slice<UnsafeRawBufferPointer>, _ b: Slice<UnsafeRawBufferPointer>) -> Bool {
    a.lexicographicallyPrecedes(b)
}
