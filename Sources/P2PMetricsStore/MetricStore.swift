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
    /// Seconds without an update after which a series is removed; nil: never.
    public let ttlSeconds: UInt32?
    /// Whether gauge adds are withdrawn when their sending process exits.
    public let processScoped: Bool
    /// Keys kept per series by a top-K metric.
    public let topK: Int
    /// The family's live series in creation order.
    public internal(set) var series: [SeriesID] = []
}

/// The weights of histogram observations (`MetricStore.apply(_:weights:)`) beyond a plain count
/// n (n observations of the value, added n × value to `_sum`): the forms that apply a
/// pre-aggregated histogram point (OTLP) with its bucket counts and its sum exactly as sent.
public enum HistogramWeight {
    /// The observation adds its value to `_sum` only: no bucket, no `_count` (a point's sum,
    /// added as the one number the exporter summed, so `_sum` gets no rounding of its own).
    public static let sumOnly: UInt32 = 0
    /// Set on a count (at most `maxCount`): that many observations in the value's bucket and
    /// `_count`, none of them added to `_sum`.
    public static let countOnly: UInt32 = 1 << 31
    /// The largest count a `countOnly` weight carries.
    public static let maxCount: UInt32 = countOnly - 1
}

/// The aggregation store: every series' current value, keyed by metric and label set.
///
/// Plain Swift with value semantics, owned by one thread (the daemon's loop). It knows no input
/// format: every input turns its bytes into the protocol's sample records (binary datagrams are
/// them already; text StatsD is transcoded), and `apply` applies a batch of them exactly as
/// PROTOCOL.md §2 says: validated whole first, then applied sample by sample, with
/// state-dependent refusals (type clash, limits) counted per sample.
public struct MetricStore {
    public private(set) var configuration: StoreConfiguration
    public private(set) var statistics = StoreStatistics()
    /// Every metric by family id. A family whose series all expired is released: its slot keeps
    /// an empty name and no series until a new family reuses it.
    public private(set) var families: [MetricFamily] = []

    // Known metrics by exposed name, and the families that exist by exposed name.
    private var descriptors: [String: MetricDescriptor]
    // Per-family facts the apply loop reads, kept out of `MetricFamily` so it touches no strings.
    private var familyTypes: [MetricType] = []
    private var familyProcessScoped: [Bool] = []
    private var familyBuckets: [[Double]] = []
    /// Indexes of the samples of the current datagram that phase 3 applies.
    private var deferred: [Int] = []
    private var familyIndex: [String: Int32] = [:]
    /// Every exposed name a family or a known metric claims, so that no two families share one.
    private var exposedNames = ExposedNames()
    /// Known (catalog or configured) metrics whose names clash with an earlier known metric: their
    /// samples are refused as `name_clash`. For the daemon to report at start.
    public private(set) var configuredNameClashes: [String] = []

    // Series: canonical key (family id + labels sorted by name) → series id. The key bytes double
    // as the series' label storage for exposition.
    private var canonical: ByteKeyTable
    // Series: a datagram's series bytes as sent → series id. A bounded cache in front of `canonical`.
    private var wireCache = ByteKeyTable(minimumCapacity: 1024, maxProbe: 32)
    // Series: bytes an input chose (text StatsD: a line's name and tags as sent) → series id. Bounded
    // like the wire cache, sharing its memory reserve (at most half of it); cleared with it.
    private(set) var inputCache = ByteKeyTable(minimumCapacity: 16, maxProbe: 32)
    private let inputCacheSeed = UInt64.random(in: .min ... .max)

    // Per-series state, indexed by series id (structure of arrays).
    private var seriesFamily: [Int32] = []
    private var seriesKeyOffset: [UInt32] = []
    private var seriesKeyLength: [UInt16] = []
    /// Counter: exact integer part. Histogram: observation count.
    private var integerPart: [UInt64] = []
    /// Counter: fractional adds. Gauge: value. Histogram: sum.
    private var floatPart: [Double] = []
    /// Counter: times its integer part wrapped past 2^64 − 1 (sparse: only counters that did), so
    /// that integer adds stay exact and never disturb the fractional part.
    private var counterWraps: [SeriesID: UInt64] = [:]
    /// Where the series' values start in its type's value table. Histogram: its first bucket in
    /// `bucketCounts`; distinct: its first register in `sketchRegisters`; top-K: its first slot in
    /// `topKSketches`; counter and gauge: 0 (their values are in `integerPart` / `floatPart`).
    private var valueBase: [UInt32] = []
    /// Non-cumulative bucket counts of every histogram series; `+Inf` is the last of each run.
    private var bucketCounts: [UInt64] = []
    /// HyperLogLog registers of every distinct-count series, `HyperLogLog.registerCount` each.
    private var sketchRegisters: [UInt8] = []
    /// `now` when the series last received a sample.
    private var lastSeen: [UInt32] = []

    // Removed series' ids and value regions, reused before anything new is allocated, so that
    // churn under a TTL keeps memory flat.
    private var freeIDs: [SeriesID] = []
    private var freeBucketRuns: [Int: [UInt32]] = [:]
    private var freeSketches: [UInt32] = []
    private var topKSketches = TopKSketches()
    // Families whose series all expired: their names are dropped and their slots reused.
    private var freeFamilies: [Int32] = []
    /// Bytes charged for the families' names, help texts and per-family tables.
    private var familyBytes = 0

    private var processGauges: ProcessGauges
    private var newlyTrackedProcesses: [Int32] = []

    /// The store's clock in seconds, set by its owner (monotonic; used for TTLs).
    public var now: UInt32 = 0

    // Scratch reused across datagrams.
    private var decoder = DatagramDecoder()
    private var currentSender: Int32?
    private var resolved: [SeriesID] = []
    private var keyScratch: [UInt8] = []
    private var labelScratch: [(name: Range<Int>, value: Range<Int>)] = []

    private static let unresolved: SeriesID = -1
    private static let refusedBase: SeriesID = -2
    private static let typeClash = refusedBase - SeriesID(SampleRejection.allCases.firstIndex(of: .typeClash) ?? 0)
    private static let nameClash = refusedBase - SeriesID(SampleRejection.allCases.firstIndex(of: .nameClash) ?? 0)

    public init(configuration: StoreConfiguration = StoreConfiguration()) {
        self.configuration = configuration
        canonical = ByteKeyTable(minimumCapacity: 1024, maxArenaBytes: configuration.offsetLimit)
        processGauges = ProcessGauges(maxProcesses: configuration.maxTrackedProcesses,
                                      maxEntries: configuration.maxTrackedContributions)
        var descriptors: [String: MetricDescriptor] = [:]
        for d in configuration.metrics { descriptors[d.exposedName] = d }
        self.descriptors = descriptors
        claimKnownNames()
    }

    /// Live series.
    public var seriesCount: Int { seriesFamily.count - freeIDs.count }

    /// Takes a reloaded configuration (the daemon's SIGHUP). Allow-lists, series limits, default
    /// buckets and TTL, and metric entries apply from the next datagram on; families that exist
    /// keep the type, buckets, help and TTL they were created with, and existing series are never
    /// removed by a lower limit. Process tracking and the wire cache keep their start-up settings.
    public mutating func reconfigure(_ new: StoreConfiguration) {
        var new = new
        new.trackProcessGauges = configuration.trackProcessGauges
        new.maxTrackedProcesses = configuration.maxTrackedProcesses
        new.maxTrackedContributions = configuration.maxTrackedContributions
        new.wireCacheCapacity = configuration.wireCacheCapacity
        configuration = new
        descriptors = [:]
        for d in new.metrics { descriptors[d.exposedName] = d }
        claimKnownNames()
    }

    /// Known metrics claim their names before any client can (a clashing one stays unclaimed, and
    /// its samples are refused as `name_clash`).
    private mutating func claimKnownNames() {
        var clashes: [String] = []
        for d in configuration.metrics where descriptors[d.exposedName] == d {
            if !exposedNames.claim(d.exposedName, type: d.type) { clashes.append(d.name) }
        }
        configuredNameClashes = clashes
    }

    // MARK: Ingest

    /// Applies one batch of sample records (a binary protocol datagram, PROTOCOL.md §2): validated
    /// whole, then applied. Returns the reason when the batch was refused whole (nothing applied);
    /// the caller, the input it came from, counts it.
    ///
    /// `weights`, when given, holds the weight of each sample in order (text StatsD: a sampled
    /// histogram observation counts round(1/rate) times, in O(1); OTLP: a histogram point's
    /// bucket counts and exact sum, see `HistogramWeight`). `sender` carries the
    /// kernel-verified credentials when the transport has them: whose gauge adds are withdrawn
    /// when a process exits.
    @discardableResult
    public mutating func apply(
        _ bytes: UnsafeRawBufferPointer, weights: UnsafeBufferPointer<UInt32>? = nil, from sender: SenderCredentials? = nil
    ) -> DatagramRejection? {
        currentSender = configuration.trackProcessGauges ? sender.flatMap { $0.pid > 0 ? $0.pid : nil } : nil
        // Validation asks the wire cache about every series record: bytes seen and validated
        // before skip the character checks, and their series id is known at once.
        var known: [SeriesID] = []
        swap(&known, &resolved)
        known.removeAll(keepingCapacity: true)
        let cache = wireCache
        let rejection = decoder.validate(bytes) { key, hash in
            let id = cache.find(key, hash: hash)
            known.append(id ?? Self.unresolved)
            return id != nil
        }
        swap(&known, &resolved)
        if let reason = rejection { return reason }
        statistics.clientDroppedDatagrams &+= decoder.droppedReported
        for id in resolved where id >= 0 { lastSeen[Int(id)] = now }

        let samples = decoder.packed

        // Phase 1: find or create the series of every series record a sample uses. The first
        // sample's kind decides the type of a new metric. A type clash is about one sample's
        // kind, so it is not remembered: a later sample of the record with the right kind must
        // still get through.
        for sample in samples where resolved[Int(sample.series)] == Self.unresolved {
            let definition = Int(sample.series)
            let kind = SampleKind(rawValue: sample.tag >> 4) ?? .counterAdd  // validated
            let id = resolve(decoder.series[definition], kind: kind, in: bytes)
            if id != Self.typeClash { resolved[definition] = id }
            if id >= 0 { lastSeen[Int(id)] = now }
        }

        var series: [SeriesID] = []
        swap(&series, &resolved)
        samples.withUnsafeBufferPointer { samples in
            series.withUnsafeBufferPointer { series in
                applyResolved(samples, series: series, weights: weights, in: bytes)
            }
        }
        swap(&series, &resolved)
        return nil
    }

    /// Applies samples whose series an input resolved itself, through `cachedSeries(forInputKey:)`
    /// (the text input's series cache): `samples[i].series` indexes `series`, whose ids must be
    /// live (ids from the cache are until the next `expireStale`), and a key sample's range
    /// indexes `bytes`. As `apply` after its series are resolved: a sample whose kind is not its
    /// metric's type is refused (`type_clash`), counted; the others are applied in order.
    public mutating func apply(
        resolved samples: UnsafeBufferPointer<PackedSample>, series: UnsafeBufferPointer<SeriesID>,
        weights: UnsafeBufferPointer<UInt32>?, keysIn bytes: UnsafeRawBufferPointer, from sender: SenderCredentials? = nil
    ) {
        currentSender = configuration.trackProcessGauges ? sender.flatMap { $0.pid > 0 ? $0.pid : nil } : nil
        for id in series {
            precondition(id >= 0 && Int(id) < seriesFamily.count && seriesFamily[Int(id)] >= 0, "not a live series")
            lastSeen[Int(id)] = now
        }
        applyResolved(samples, series: series, weights: weights, in: bytes)
    }

    /// Phases 2 and 3 of `apply`: every sample of `samples` to the series `series[sample.series]`
    /// (negative: refused, with the reason `refused(_:)` encoded, or a type clash).
    private mutating func applyResolved(
        _ samples: UnsafeBufferPointer<PackedSample>, series resolved: UnsafeBufferPointer<SeriesID>,
        weights: UnsafeBufferPointer<UInt32>?, in bytes: UnsafeRawBufferPointer
    ) {
        // Phase 2: the hot loop. The value columns are moved out of `self` so that the loop
        // writes through raw pointers: no uniqueness or bounds checks per sample. Samples that
        // touch other state (process tracking, sketches) are queued for phase 3, in order.
        var integers: [UInt64] = []
        var floats: [Double] = []
        var buckets: [UInt64] = []
        swap(&integers, &integerPart)
        swap(&floats, &floatPart)
        swap(&buckets, &bucketCounts)
        var applied: UInt64 = 0
        let weighted = weights.map { $0.count == samples.count } ?? false
        assert(weights == nil || weighted, "one weight per transcoded sample")
        var wrapped: [Int] = []
        deferred.removeAll(keepingCapacity: true)
        let trackingActive = processGauges.entries > 0
        integers.withUnsafeMutableBufferPointer { integers in
            floats.withUnsafeMutableBufferPointer { floats in
                buckets.withUnsafeMutableBufferPointer { buckets in
                    for (index, sample) in samples.enumerated() {
                        let seriesID = resolved[Int(sample.series)]
                        if seriesID < 0 {
                            // unresolved: a type clash; otherwise the reason `refused(_:)` encoded
                            statistics.samplesRejected[seriesID == Self.unresolved ? 0 : Int(Self.refusedBase - seriesID)] &+= 1
                            continue
                        }
                        let id = Int(seriesID)
                        let family = Int(seriesFamily[id])
                        guard familyTypes[family] == Self.metricType(ofKind: sample.tag >> 4) else {
                            statistics.samplesRejected[0] &+= 1  // type clash
                            continue
                        }
                        applied &+= 1
                        switch sample.tag {
                        case 0x10, 0x11:  // counter add, integer (validated ≥ 0)
                            let (sum, overflow) = integers[id].addingReportingOverflow(sample.bits)
                            integers[id] = sum
                            if overflow { wrapped.append(id) }
                        case 0x12:
                            floats[id] += Double(bitPattern: sample.bits)
                        case 0x20, 0x21, 0x22:  // gauge set
                            floats[id] = Self.number(sample)
                            if trackingActive || familyProcessScoped[family] { deferred.append(index) }
                        case 0x30, 0x31, 0x32:  // gauge add
                            floats[id] += Self.number(sample)
                            if familyProcessScoped[family] { deferred.append(index) }
                        case 0x40, 0x41, 0x42:  // histogram observe
                            let value = Self.number(sample)
                            let bucket = Self.bucketIndex(of: value, bounds: familyBuckets[family])
                            let weight = weighted ? weights.unsafelyUnwrapped[index] : 1
                            if weight == 1 {
                                buckets[Int(valueBase[id]) + bucket] &+= 1
                                integers[id] &+= 1
                                floats[id] += value
                            } else if weight & HistogramWeight.countOnly != 0 {
                                let count = UInt64(weight & ~HistogramWeight.countOnly)
                                buckets[Int(valueBase[id]) + bucket] &+= count
                                integers[id] &+= count
                            } else if weight == HistogramWeight.sumOnly {
                                floats[id] += value
                            } else {
                                buckets[Int(valueBase[id]) + bucket] &+= UInt64(weight)
                                integers[id] &+= UInt64(weight)
                                floats[id] += value * Double(weight)
                            }
                        default:  // distinct and top-K add
                            deferred.append(index)
                        }
                    }
                }
            }
        }
        swap(&integers, &integerPart)
        swap(&floats, &floatPart)
        swap(&buckets, &bucketCounts)
        for id in wrapped { counterWraps[SeriesID(id), default: 0] &+= 1 }

        // Phase 3: everything that is not a plain number.
        for index in deferred {
            let sample = samples[index]
            let id = Int(resolved[Int(sample.series)])
            applySlow(sample, to: id, family: Int(seriesFamily[id]), in: bytes)
        }

        statistics.samplesApplied &+= applied
    }

    /// The bucket a histogram observation falls in: the first whose upper bound is at least
    /// `value`, or `bounds.count` (`+Inf`). Binary search: bounds are strictly increasing.
    @inline(__always)
    static func bucketIndex(of value: Double, bounds: [Double]) -> Int {
        var below = 0  // every bound before `below` is less than `value`
        var candidate = bounds.count  // the bound at `candidate` (or +Inf) is at least `value`
        while below < candidate {
            let middle = below + (candidate - below) / 2
            if value <= bounds[middle] { candidate = middle } else { below = middle + 1 }
        }
        return candidate
    }

    /// The metric type a sample kind belongs to (kinds validated by the decoder).
    @inline(__always)
    private static func metricType(ofKind kind: UInt8) -> MetricType {
        switch kind {
        case 1: return .counter
        case 2, 3: return .gauge
        case 4: return .histogram
        case 5: return .distinct
        default: return .topK
        }
    }

    /// Puts back statistics saved before a restore (see `restore(_:)`).
    mutating func restoreStatistics(_ saved: StoreStatistics) {
        statistics = saved
    }

    /// The numeric value of a sample of form 0, 1 or 2.
    @inline(__always)
    private static func number(_ sample: PackedSample) -> Double {
        switch sample.tag & 0x0F {
        case ValueForm.unsigned.rawValue: return Double(sample.bits)
        case ValueForm.signed.rawValue: return Double(Int64(bitPattern: sample.bits))
        default: return Double(bitPattern: sample.bits)
        }
    }

    /// Applies what the hot loop left: process-scoped gauge bookkeeping and sketches.
    private mutating func applySlow(_ sample: PackedSample, to id: Int, family: Int, in bytes: UnsafeRawBufferPointer) {
        switch sample.tag {
        case 0x20, 0x21, 0x22:  // gauge set: the value is absolute again
            if processGauges.entries > 0 { processGauges.clear(series: SeriesID(id)) }
        case 0x30, 0x31, 0x32:  // process-scoped gauge add
            trackGaugeAdd(Self.number(sample), series: id)
        case 0x53:  // distinct add
            let base = Int(valueBase[id])
            let key = UnsafeRawBufferPointer(rebasing: bytes[sample.keyRange])
            sketchRegisters.withUnsafeMutableBufferPointer { registers in
                HyperLogLog.add(key, to: UnsafeMutableBufferPointer(rebasing: registers[base..<base + HyperLogLog.registerCount]))
            }
        default:  // 0x63, top-K add
            topKSketches.add(UnsafeRawBufferPointer(rebasing: bytes[sample.keyRange]), base: valueBase[id],
                             k: families[family].topK)
            integerPart[id] &+= 1
        }
    }

    private mutating func trackGaugeAdd(_ value: Double, series id: Int) {
        guard let pid = currentSender else {
            statistics.gaugeAddsUntracked &+= 1
            return
        }
        switch processGauges.add(value, to: SeriesID(id), from: pid) {
        case .tracked: break
        case .trackedNewProcess: newlyTrackedProcesses.append(pid)
        case .untracked: statistics.gaugeAddsUntracked &+= 1
        }
    }

    // MARK: Series resolution

    /// Finds or creates the series a datagram's series record names; a negative result encodes
    /// the `SampleRejection` that refuses all its samples in this datagram.
    private mutating func resolve(_ definition: SeriesDefinition, kind: SampleKind, in bytes: UnsafeRawBufferPointer) -> SeriesID {
        let wireKey = UnsafeRawBufferPointer(rebasing: bytes[definition.keyRange])
        let wireHash = definition.hash
        if let id = wireCache.find(wireKey, hash: wireHash) { return id }

        let name = Names.exposedName(bytes[definition.nameRange])
        let familyID: Int32
        let existingFamily = familyIndex[name]
        if let existingFamily {
            // Never create a series under a metric of another type: it would be exposed empty.
            guard familyTypes[Int(existingFamily)] == kind.metricType else { return Self.typeClash }
            familyID = existingFamily
        } else {
            let type = descriptors[name]?.type ?? kind.metricType
            guard type == kind.metricType else { return Self.typeClash }
            // A name (or a name it derives) that another family exposes would break the scrape.
            guard exposedNames.admits(name, type: type) else { return Self.nameClash }
            familyID = freeFamilies.last ?? Int32(families.count)  // what `createFamily` will use
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
            guard seriesCount < configuration.maxSeries else { return refused(.seriesLimit) }
            guard labelScratch.count <= configuration.maxLabelsPerSeries,
                  labelScratch.allSatisfy({ $0.value.count <= configuration.maxLabelValueLength }) else {
                return refused(.labelLimit)
            }
            if existingFamily != nil {
                guard families[Int(familyID)].series.count < configuration.maxSeriesPerMetric else {
                    return refused(.metricSeriesLimit)
                }
            }
            guard admitsSeries(type: kind.metricType, family: existingFamily, name: name) else {
                return refused(.memoryLimit)
            }
            if existingFamily == nil { createFamily(named: name, type: kind.metricType) }
            id = createSeries(family: familyID)
        }
        cacheWireKey(wireKey, hash: wireHash, id: id)
        return id
    }

    /// Remembers the series of a datagram's series bytes, within the cache's entry and byte bounds
    /// (the reserve, less what the input cache holds).
    private mutating func cacheWireKey(_ key: UnsafeRawBufferPointer, hash: UInt32, id: SeriesID) {
        Self.insertBounded(key, hash: hash, id: id, into: &wireCache, maxEntries: configuration.wireCacheCapacity,
                           maxBytes: configuration.wireCacheReserve - inputCache.memoryFootprint)
    }

    /// Inserts into a cache in front of `canonical`, clearing it first when it holds `maxEntries`
    /// or the key would take it past `maxBytes`; a key that does not fit even then is not cached.
    private static func insertBounded(
        _ key: UnsafeRawBufferPointer, hash: UInt32, id: SeriesID, into cache: inout ByteKeyTable, maxEntries: Int, maxBytes: Int
    ) {
        func fits() -> Bool {
            cache.memoryFootprint + cache.bytesOfInsert(keyLength: key.count) <= maxBytes && cache.canStore(length: key.count)
        }
        if cache.count >= maxEntries || !fits() { cache.removeAll() }
        if fits() && cache.hasRoomNear(hash) { cache.insert(key, hash: hash, value: id) }
    }

    // MARK: Series an input resolved

    /// The series an input cached under `key` (bytes of its own choosing that determine the series
    /// the way it maps them: the text input uses a line's name and tags as sent), or nil. Cleared
    /// whenever series are removed, so an id it returns is live. (`mutating` only so that callers
    /// use the store in place: a non-mutating call on it made a 776-byte copy of the struct, per line.)
    public mutating func cachedSeries(forInputKey key: UnsafeRawBufferPointer) -> SeriesID? {
        inputCache.find(key, hash: SeriesKeyHash.hash(key, seed: inputCacheSeed))
    }

    /// Remembers that `key` resolved to series `id` (`lastResolvedSeries`), within the input cache's
    /// bounds: `wireCacheCapacity` entries and half the wire cache's memory reserve (charged to
    /// `maxMemoryBytes`); it is cleared when full. Ids that are not live series are not cached.
    public mutating func cacheSeries(_ id: SeriesID, forInputKey key: UnsafeRawBufferPointer) {
        guard id >= 0, Int(id) < seriesFamily.count, seriesFamily[Int(id)] >= 0 else { return }
        Self.insertBounded(key, hash: SeriesKeyHash.hash(key, seed: inputCacheSeed), id: id, into: &inputCache,
                           maxEntries: configuration.wireCacheCapacity, maxBytes: configuration.wireCacheReserve / 2)
    }

    /// The series the last `apply` of a datagram resolved its series record number `record` to, or
    /// nil when that record's samples were refused (or it had none).
    public func lastResolvedSeries(_ record: Int) -> SeriesID? {
        guard record >= 0, record < resolved.count, resolved[record] >= 0 else { return nil }
        return resolved[record]
    }

    // MARK: Memory budget

    /// Bytes charged per series in the per-series columns (family, key offset and length, the two
    /// value parts, value base, last seen) and its id in its family's series list.
    static let bytesPerSeries = 4 + 4 + 2 + 8 + 8 + 4 + 4 + 4
    /// Bytes charged per family beyond its name: the family record, its per-family columns, its
    /// index entry and the help text around the name.
    static let bytesPerFamily = 256

    /// Bytes charged per name a family claims in `ExposedNames` (its entry and the owner's name).
    static let bytesPerClaim = 64

    private static func familyCost(name: String, type: MetricType, buckets: Int) -> Int {
        let claims = ExposedNames.claims(of: name, type: type).reduce(0) { $0 + $1.utf8.count + name.utf8.count + bytesPerClaim }
        return bytesPerFamily + 3 * name.utf8.count + buckets * 8 + claims
    }

    /// Bytes the series tables hold (without the wire cache), as charged against the budget.
    private var tableBytes: Int {
        canonical.memoryFootprint + seriesFamily.count * Self.bytesPerSeries
            + bucketCounts.count * 8 + sketchRegisters.count + topKSketches.memoryFootprint + familyBytes
            + counterWraps.capacity * 16
    }

    /// Whether the series whose canonical key is in `keyScratch` fits the memory budget and the
    /// 32-bit offset range of every table it extends. Compacts the key arena first when removed
    /// keys hold space.
    private mutating func admitsSeries(type: MetricType, family: Int32?, name: String) -> Bool {
        var cost = canonical.bytesOfInsert(keyLength: keyScratch.count)
        if freeIDs.isEmpty { cost += Self.bytesPerSeries }
        let descriptor = family == nil ? descriptors[name] : nil
        switch type {
        case .histogram:
            let run = (family.map { families[Int($0)].buckets.count } ?? (descriptor?.buckets ?? configuration.defaultBuckets).count) + 1
            if freeBucketRuns[run]?.isEmpty != false {
                guard bucketCounts.count + run <= configuration.offsetLimit else { return false }
                cost += run * 8
            }
        case .distinct:
            if freeSketches.isEmpty {
                guard sketchRegisters.count + HyperLogLog.registerCount <= configuration.offsetLimit else { return false }
                cost += HyperLogLog.registerCount
            }
        case .topK:
            cost += topKSketches.growthBytes(allocating: family.map { families[Int($0)].topK } ?? Self.topK(of: descriptor))
        case .counter, .gauge:
            break
        }
        if family == nil {
            let buckets = type == .histogram ? (descriptor?.buckets ?? configuration.defaultBuckets).count : 0
            cost += Self.familyCost(name: name, type: type, buckets: buckets)
        }
        let limit = configuration.maxMemoryBytes - configuration.wireCacheReserve
        if tableBytes + cost > limit || !canonical.canStore(length: keyScratch.count), canonical.deadBytes > 0 {
            compactKeys()
        }
        return tableBytes + cost <= limit && canonical.canStore(length: keyScratch.count)
    }

    private mutating func compactKeys() {
        canonical.compact { id, offset in seriesKeyOffset[Int(id)] = UInt32(offset) }
    }

    private static func topK(of descriptor: MetricDescriptor?) -> Int {
        min(max(descriptor?.topK ?? 10, 1), 100)
    }

    private func refused(_ reason: SampleRejection) -> SeriesID {
        Self.refusedBase - SeriesID(SampleRejection.allCases.firstIndex(of: reason) ?? 0)
    }

    /// Creates a family in a released slot if there is one (as `resolve` expects), else at the end.
    private mutating func createFamily(named name: String, type: MetricType) {
        let descriptor = descriptors[name]
        let buckets = type == .histogram ? (descriptor?.buckets ?? configuration.defaultBuckets) : []
        let help = descriptor?.help ?? "Metric \(name) sent by clients of p2pmetricsd."
        let ttl = descriptor?.ttlSeconds ?? (type == .counter ? nil : configuration.defaultTTLSeconds)
        let family = MetricFamily(name: name, type: type, help: help, buckets: buckets, ttlSeconds: ttl,
                                  processScoped: descriptor?.processScoped ?? false, topK: Self.topK(of: descriptor))
        familyBytes += Self.familyCost(name: name, type: type, buckets: buckets.count)
        exposedNames.claim(name, type: type)
        if let reused = freeFamilies.popLast() {
            let f = Int(reused)
            familyIndex[name] = reused
            familyTypes[f] = type
            familyProcessScoped[f] = family.processScoped
            familyBuckets[f] = buckets
            families[f] = family
        } else {
            familyIndex[name] = Int32(families.count)
            familyTypes.append(type)
            familyProcessScoped.append(family.processScoped)
            familyBuckets.append(buckets)
            families.append(family)
        }
    }

    /// Drops a family whose series all expired: its name goes, its slot is reused by the next new
    /// family, so churning names under a TTL keeps memory flat.
    private mutating func releaseFamily(_ f: Int) {
        let family = families[f]
        familyIndex[family.name] = nil
        // Its names are free again, unless a known metric holds them from the start.
        if descriptors[family.name] == nil { exposedNames.release(family.name, type: family.type) }
        familyBytes -= Self.familyCost(name: family.name, type: family.type, buckets: family.buckets.count)
        families[f] = MetricFamily(name: "", type: family.type, help: "", buckets: [], ttlSeconds: nil,
                                   processScoped: false, topK: 1)
        familyBuckets[f] = []
        familyProcessScoped[f] = false
        freeFamilies.append(Int32(f))
    }

    private mutating func createSeries(family: Int32) -> SeriesID {
        let reused = freeIDs.popLast()
        let id = reused ?? SeriesID(seriesFamily.count)
        // `admitsSeries` checked that the arena can take the key.
        let offset = keyScratch.withUnsafeBytes { key in canonical.insert(key, hash: ByteKeyTable.hash(key), value: id) } ?? 0
        var base: UInt32 = 0
        switch families[Int(family)].type {
        case .histogram:
            let run = families[Int(family)].buckets.count + 1
            if let free = freeBucketRuns[run]?.popLast() {
                base = free
                for i in Int(free)..<Int(free) + run { bucketCounts[i] = 0 }
            } else {
                base = UInt32(bucketCounts.count)
                bucketCounts.append(contentsOf: repeatElement(0, count: run))
            }
        case .distinct:
            if let free = freeSketches.popLast() {
                base = free
                for i in Int(free)..<Int(free) + HyperLogLog.registerCount { sketchRegisters[i] = 0 }
            } else {
                base = UInt32(sketchRegisters.count)
                sketchRegisters.append(contentsOf: repeatElement(0, count: HyperLogLog.registerCount))
            }
        case .topK:
            base = topKSketches.allocate(families[Int(family)].topK)
        case .counter, .gauge:
            break
        }
        if let reused {
            let i = Int(reused)
            seriesFamily[i] = family
            seriesKeyOffset[i] = UInt32(offset)
            seriesKeyLength[i] = UInt16(keyScratch.count)
            integerPart[i] = 0
            floatPart[i] = 0
            valueBase[i] = base
            lastSeen[i] = now
        } else {
            seriesFamily.append(family)
            seriesKeyOffset.append(UInt32(offset))
            seriesKeyLength.append(UInt16(keyScratch.count))
            integerPart.append(0)
            floatPart.append(0)
            valueBase.append(base)
            lastSeen.append(now)
        }
        families[Int(family)].series.append(id)
        return id
    }

    // MARK: Process exits and expiry

    /// Processes whose gauge adds became tracked since the last call; the owner watches them and
    /// calls `processExited` when they end.
    public mutating func takeNewlyTrackedProcesses() -> [Int32] {
        defer { newlyTrackedProcesses.removeAll(keepingCapacity: true) }
        return newlyTrackedProcesses
    }

    /// Withdraws what an exited process still contributed to gauges.
    public mutating func processExited(_ pid: Int32) {
        let contributions = processGauges.withdraw(pid)
        guard !contributions.isEmpty else { return }
        for (id, value) in contributions where seriesFamily[Int(id)] >= 0 {
            floatPart[Int(id)] -= value
        }
        statistics.processesWithdrawn &+= 1
    }

    /// Removes every series whose metric has a TTL and that saw no sample for longer than it.
    /// Returns how many were removed.
    @discardableResult
    public mutating func expireStale() -> Int {
        var removed = 0
        for f in families.indices {
            guard let ttl = families[f].ttlSeconds else { continue }
            let before = families[f].series.count
            var kept: [SeriesID] = []
            kept.reserveCapacity(before)
            for id in families[f].series {
                if now &- lastSeen[Int(id)] > ttl {
                    removeSeries(id, family: f)
                } else {
                    kept.append(id)
                }
            }
            if kept.count != before {
                families[f].series = kept
                removed += before - kept.count
                if kept.isEmpty { releaseFamily(f) }
            }
        }
        if removed > 0 {
            wireCache.removeAll()  // they may name removed series
            inputCache.removeAll()
            statistics.seriesExpired &+= UInt64(removed)
            if canonical.shouldCompact { compactKeys() }
        }
        return removed
    }

    private mutating func removeSeries(_ id: SeriesID, family: Int) {
        let i = Int(id)
        let offset = Int(seriesKeyOffset[i])
        let length = Int(seriesKeyLength[i])
        let key = Array(canonical.arena[offset..<offset + length])
        key.withUnsafeBytes { _ = canonical.remove($0, hash: ByteKeyTable.hash($0)) }
        switch families[family].type {
        case .histogram: freeBucketRuns[families[family].buckets.count + 1, default: []].append(valueBase[i])
        case .distinct: freeSketches.append(valueBase[i])
        case .topK: topKSketches.release(valueBase[i], families[family].topK)
        case .counter, .gauge: break
        }
        processGauges.clear(series: id)
        if !counterWraps.isEmpty { counterWraps[id] = nil }
        seriesFamily[i] = -1
        freeIDs.append(id)
    }

    // MARK: Reading (for exposition)

    /// Calls `body` with each (name, value) label pair of a series, sorted by label name.
    public func forEachLabel(of id: SeriesID, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) {
        let offset = Int(seriesKeyOffset[Int(id)]) + MemoryLayout<Int32>.size
        let end = Int(seriesKeyOffset[Int(id)]) + Int(seriesKeyLength[Int(id)])
        canonical.withKey(offset: offset, length: end - offset) { key in
            var labels = LabelCursor(pairsIn: key)
            while let (name, value) = labels.next() {
                body(UnsafeRawBufferPointer(rebasing: key[name]), UnsafeRawBufferPointer(rebasing: key[value]))
            }
        }
    }

    /// A counter's total: the exact sum of its integer adds (128 bits), and the binary64 sum of its
    /// fractional adds.
    public func counterValue(_ id: SeriesID) -> (integer: UInt128, fraction: Double) {
        let wraps = counterWraps.isEmpty ? 0 : counterWraps[id] ?? 0  // no hashing in the common case
        return (UInt128(wraps) << 64 | UInt128(integerPart[Int(id)]), floatPart[Int(id)])
    }

    public func gaugeValue(_ id: SeriesID) -> Double { floatPart[Int(id)] }

    /// A histogram's non-cumulative bucket counts (last: `+Inf`), sum and count.
    public func withHistogram<R>(_ id: SeriesID, _ body: (UnsafeBufferPointer<UInt64>, Double, UInt64) -> R) -> R {
        let family = families[Int(seriesFamily[Int(id)])]
        let base = Int(valueBase[Int(id)])
        return bucketCounts.withUnsafeBufferPointer { counts in
            body(UnsafeBufferPointer(rebasing: counts[base..<base + family.buckets.count + 1]),
                 floatPart[Int(id)], integerPart[Int(id)])
        }
    }

    /// The estimated number of distinct keys of a distinct-count series.
    public func distinctEstimate(_ id: SeriesID) -> Double {
        let base = Int(valueBase[Int(id)])
        return sketchRegisters.withUnsafeBufferPointer {
            HyperLogLog.estimate(UnsafeBufferPointer(rebasing: $0[base..<base + HyperLogLog.registerCount]))
        }
    }

    /// A top-K series' keys with their counts and error bounds, most counted first, and the
    /// number of occurrences counted in all.
    public func topKEntries(_ id: SeriesID) -> (entries: [(key: [UInt8], count: UInt64, error: UInt64)], total: UInt64) {
        let family = families[Int(seriesFamily[Int(id)])]
        let entries = topKSketches.entries(base: valueBase[Int(id)], k: family.topK).map { ($0.key, $0.count, $0.error) }
        return (entries, integerPart[Int(id)])
    }

    /// Bytes the store holds: key arenas and their slots, per-series tables, buckets, sketches,
    /// family names and the wire and input caches: what `maxMemoryBytes` bounds (the
    /// `p2pmetricsd_series_memory_bytes` self-metric).
    public var memoryFootprint: Int { tableBytes + wireCache.memoryFootprint + inputCache.memoryFootprint }
}

private func lexicographicallyPrecedes(_ a: Slice<UnsafeRawBufferPointer>, _ b: Slice<UnsafeRawBufferPointer>) -> Bool {
    a.lexicographicallyPrecedes(b)
}
