#if canImport(Glibc)
import Glibc
#endif
import P2PMetricsInputStatsD
import P2PMetricsStore
import P2PMetricsWire

/// The OTLP/HTTP metrics input: maps the points of an ExportMetricsServiceRequest onto the store's
/// sample records and counts the points it read and refused.
///
/// Mapping: a monotonic Sum is a counter, a non-monotonic Sum a gauge (adds), a Gauge a gauge
/// (sets), a Histogram a histogram, an ExponentialHistogram a histogram with the metric's explicit
/// bounds (`rebucket`). Delta points add; cumulative points go through `CumulativeStreams` first.
/// Metric names and attribute keys are sanitized as StatsD names and tags are (dots become
/// underscores in the exposition); resource attributes are labels only when the decoder selects them.
public struct OTLPInput: Sendable {
    /// What this input counted, exposed as the `p2pmetricsd_otlp_*` self-metrics.
    public private(set) var statistics = OTLPInputStatistics()
    public var decoder = OTLPDecoder()
    public private(set) var streams: CumulativeStreams

    public init(streams: CumulativeStreams = CumulativeStreams()) {
        self.streams = streams
    }

    /// What one request came to: the points refused (for `partial_success`) and why.
    public struct Outcome: Sendable, Equatable {
        public var rejectedPoints: Int
        public var message: String

        public init(rejectedPoints: Int, message: String) {
            self.rejectedPoints = rejectedPoints
            self.message = message
        }
    }

    /// Decodes an ExportMetricsServiceRequest (protobuf, already decompressed) and applies its
    /// points to `store`. A body that does not decode changes nothing and is the error returned.
    public mutating func ingest(protobuf bytes: UnsafeRawBufferPointer, into store: inout MetricStore) -> Result<Outcome, OTLPDecodeError> {
        statistics.requestsReceived &+= 1
        let request: OTLPRequest
        switch decoder.decode(bytes) {
        case .failure(let error):
            statistics.requestsRejected &+= 1
            return .failure(error)
        case .success(let r): request = r
        }
        var refused = request.refused
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        var weights: [UInt32] = []
        /// Points in the datagram being built, and how many samples each has in it.
        var pendingPoints: [Int] = []
        func flush(_ store: inout MetricStore) {
            guard !pendingPoints.isEmpty else { return }
            let before = store.statistics.samplesApplied
            let whole = weights.withUnsafeBufferPointer { w in encoder.bytes.withUnsafeBytes { store.apply($0, weights: w) } }
            let applied = whole == nil ? Int(store.statistics.samplesApplied &- before) : 0
            let samples = pendingPoints.reduce(0, +)
            // Samples of one point share a series and a type: they are refused together.
            if applied < samples {
                let perPoint = samples / max(pendingPoints.count, 1)
                refused.append(contentsOf: repeatElement(.storeRefused, count: (samples - applied) / max(perPoint, 1)))
            }
            encoder.reset()
            weights.removeAll(keepingCapacity: true)
            pendingPoints.removeAll(keepingCapacity: true)
        }
        for point in request.points {
            switch samples(for: point, store: store) {
            case .failure(let reason): refused.append(reason)
            case .success(let s):
                do {
                    let fitsWhole = encoder.bytes.count + s.estimatedBytes <= encoder.maxSize
                    if !fitsWhole { flush(&store) }
                    for (i, (kind, value, weight)) in s.values.enumerated() {
                        let appended = try i > 0 && encoder.appendToPreviousSeries(kind, value: value)
                            || encoder.append(kind, name: s.name, labels: s.labels, value: value)
                        guard appended else { throw EncodingError(.tooLong) }
                        weights.append(weight)
                    }
                    pendingPoints.append(s.values.count)
                } catch {
                    refused.append(.badAttribute)
                }
            }
        }
        flush(&store)
        statistics.pointsReceived &+= UInt64(request.points.count + request.refused.count)
        for reason in refused { statistics.rejected.count(reason) }
        var message = ""
        if let first = refused.first {
            message = "\(refused.count) data points rejected (first: \(first.rawValue))"
        }
        return .success(Outcome(rejectedPoints: refused.count, message: message))
    }

    /// Counts a request refused before decoding (its body too large once decompressed, or not gzip).
    public mutating func countRefusedRequest() {
        statistics.requestsReceived &+= 1
        statistics.requestsRejected &+= 1
    }

    /// Forgets cumulative streams that stopped exporting, and withdraws from `store` what the
    /// up-down ones among them contributed.
    public mutating func expireStreams(now: UInt32, from store: inout MetricStore) {
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        for withdrawal in streams.expire(now: now) {
            let value = SampleValue(canonical: -withdrawal.contribution)
            // Names and labels were encoded before, when the stream's points applied.
            if (try? encoder.append(.gaugeAdd, name: withdrawal.name, labels: withdrawal.labels, value: value)) != true {
                encoder.bytes.withUnsafeBytes { _ = store.apply($0) }
                encoder.reset()
                _ = try? encoder.append(.gaugeAdd, name: withdrawal.name, labels: withdrawal.labels, value: value)
            }
        }
        if !encoder.isEmpty { encoder.bytes.withUnsafeBytes { _ = store.apply($0) } }
    }

    /// One point's samples: its series, and each sample with its weight.
    private struct Samples {
        var name: String
        var labels: [(String, String)]
        var values: [(SampleKind, SampleValue, UInt32)]
        /// An upper bound of the bytes the samples take in a datagram.
        var estimatedBytes: Int { name.utf8.count + labels.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 6 } + 16 + values.count * 12 }
    }

    private mutating func samples(for point: OTLPNumberPoint, store: MetricStore) -> Result<Samples, OTLPPointRejection> {
        switch point.shape {
        case .histogram, .exponentialHistogram: return histogramSamples(for: point, store: store)
        default:
            return sample(for: point, now: store.now).map { Samples(name: $0.name, labels: $0.labels, values: [($0.kind, $0.value, 1)]) }
        }
    }

    /// A histogram point as weighted observations: one per non-empty bucket, counted at its upper
    /// bound but kept out of `_sum`, and the point's sum added to `_sum` alone (`HistogramWeight`),
    /// so that buckets, `_count` and `_sum` move by exactly what the point says. The bounds are the metric's (configured, or its family's): an
    /// explicit-bucket point's must equal them, an exponential point is re-bucketed into them.
    private mutating func histogramSamples(for point: OTLPNumberPoint, store: MetricStore) -> Result<Samples, OTLPPointRejection> {
        let name: String, labels: [(String, String)]
        switch Self.series(of: point, histogram: true) {
        case .failure(let reason): return .failure(reason)
        case .success(let series): (name, labels) = series
        }
        let exposed = Names.exposedName(name.utf8)
        let bounds = store.families.first { $0.name == exposed && $0.type == .histogram }?.buckets
            ?? store.configuration.metrics.first { Names.exposedName($0.name.utf8) == exposed }?.buckets
            ?? store.configuration.defaultBuckets
        if point.temporality == .unspecified { return .failure(.badValue) }
        if let sum = point.value, !sum.isFinite { return .failure(.badValue) }
        var counts: [UInt64]
        var total: Double
        if let exponential = point.exponential {
            var buckets = exponential
            var sum = point.value
            if point.temporality == .cumulative {
                guard let delta = streams.delta(stream: Self.streamKey(point), start: point.startTimeUnixNano, exponential: buckets,
                                                sum: sum, now: store.now) else { return .failure(.streamTableFull) }
                (buckets, sum) = delta
            }
            guard let rebucketed = Self.rebucket(buckets, into: bounds) else { return .failure(.badValue) }
            counts = rebucketed.counts
            if let sum {
                Self.fitSum(&counts, rebucketed.straddlers, bounds: bounds, sum: sum)
                total = sum
            } else {
                // Without a sum (the SDKs omit it once negative values were recorded), each
                // observation counts at its bucket's upper bound.
                total = counts.indices.reduce(0) { $0 + Double(counts[$1]) * Self.upperValue(ofBucket: $1, bounds: bounds) }
            }
        } else {
            guard point.bounds == bounds else { return .failure(.bucketMismatch) }
            counts = point.bucketCounts
            total = point.value ?? 0
            if point.temporality == .cumulative {
                guard let delta = streams.delta(stream: Self.streamKey(point), start: point.startTimeUnixNano, buckets: counts,
                                                sum: total, now: store.now) else { return .failure(.streamTableFull) }
                (counts, total) = delta
            }
        }
        guard counts.allSatisfy({ $0 <= UInt64(HistogramWeight.maxCount) }) else { return .failure(.badValue) }
        // Each bucket's count at its upper bound, kept out of `_sum`; then the point's sum as one
        // uncounted addition, so `_sum` moves by exactly the number the exporter summed.
        var values: [(SampleKind, SampleValue, UInt32)] = counts.indices.compactMap { i in
            counts[i] == 0 ? nil
                : (.histogramObserve, SampleValue(canonical: Self.upperValue(ofBucket: i, bounds: bounds)), UInt32(counts[i]) | HistogramWeight.countOnly)
        }
        if !values.isEmpty || total != 0 { values.append((.histogramObserve, SampleValue(canonical: total), HistogramWeight.sumOnly)) }
        return .success(Samples(name: name, labels: labels, values: values))
    }

    /// The highest value bucket `index` holds (bucket i is (bounds[i-1], bounds[i]]): its bound,
    /// or just above the last bound for the +Inf bucket.
    static func upperValue(ofBucket index: Int, bounds: [Double]) -> Double {
        index < bounds.count ? bounds[index] : (bounds.last ?? 0).nextUp
    }

    /// Observations of one exponential bucket that straddles explicit bounds: counted in explicit
    /// bucket `upper`, they may belong as low as `lowest`.
    struct Straddler: Equatable {
        var count: UInt64
        var upper: Int
        var lowest: Int
    }

    /// An exponential histogram's counts re-bucketed into explicit `bounds` (bucket i is
    /// (bounds[i-1], bounds[i]], the last one +Inf): every exponential bucket's count goes whole
    /// into the explicit bucket that holds its upper boundary — base^(index+1) for a positive
    /// bucket, −base^index for a negative one, the zero threshold for the zero bucket — or the
    /// point's max when that is lower. Counts stay exact; an observation is never placed in a
    /// bucket below its own (a bucket that straddles a bound counts in the upper one, and is
    /// listed in `straddlers` for `fitSum`). nil when an explicit bucket's count passes 2^32 − 1.
    static func rebucket(_ e: ExponentialBuckets, into bounds: [Double]) -> (counts: [UInt64], straddlers: [Straddler])? {
        var counts = [UInt64](repeating: 0, count: bounds.count + 1)
        var straddlers: [Straddler] = []
        var overflow = false
        /// The first explicit bucket whose bound is ≥ `value`, else +Inf's.
        func bucket(_ value: Double) -> Int {
            first(in: bounds.count) { bounds[$0] >= value }
        }
        let highest = e.max.map(bucket) ?? bounds.count
        /// `count` observations that belong in explicit buckets `lowest...at` (clamped by the max).
        func add(_ count: UInt64, at upper: Int, lowest: Int) {
            guard count > 0 else { return }
            let at = Swift.min(upper, highest)
            let (sum, o) = counts[at].addingReportingOverflow(count)
            counts[at] = sum
            overflow = overflow || o
            if lowest < at { straddlers.append(Straddler(count: count, upper: at, lowest: lowest)) }
        }
        add(e.zeroCount, at: bucket(e.zeroThreshold), lowest: bucket(-e.zeroThreshold))
        // Per explicit bound, the last exponential index whose upper boundary lies at or below it
        // (or strictly below): one log2 per bound and point; per bucket, indexes that only move
        // forward.
        let n = bounds.count
        if e.positive.contains(where: { $0 > 0 }) {
            let atOrBelow = bounds.map { Self.lastIndex(upTo: $0, scale: e.scale, strict: false) }
            let below = bounds.map { Self.lastIndex(upTo: $0, scale: e.scale, strict: true) }
            var at = 0, lowest = 0
            for (i, count) in e.positive.enumerated() where count > 0 {
                // (base^k, base^(k+1)]: placed where base^(k+1) ≤ bound, may be as low as base^k < bound
                let k = e.positiveOffset + i
                while at < n && atOrBelow[at] < k { at += 1 }
                while lowest < n && below[lowest] < k - 1 { lowest += 1 }
                add(count, at: at, lowest: lowest)
            }
        }
        if e.negative.contains(where: { $0 > 0 }) {
            // bound ≥ −base^j ⇔ base^j ≥ −bound ⇔ j > (the last index whose boundary is below −bound)
            let below = bounds.map { $0 >= 0 ? Int.min : Self.lastIndex(upTo: -$0, scale: e.scale, strict: true) }
            var at = 0, lowest = 0
            for (i, count) in e.negative.enumerated().reversed() where count > 0 {
                // [−base^(k+1), −base^k): placed where −base^k ≤ bound, may be as low as −base^(k+1)
                let k = e.negativeOffset + i
                while at < n && !(k - 1 > below[at]) { at += 1 }
                while lowest < n && !(k > below[lowest]) { lowest += 1 }
                add(count, at: at, lowest: lowest)
            }
        }
        // A sample's weight is 32 bits; past that `fitSum` could overflow moving counts together.
        return overflow || counts.contains(where: { $0 > UInt64(UInt32.max) }) ? nil : (counts, straddlers)
    }

    /// The first index of `0..<count` where the monotone `predicate` holds, else `count`.
    private static func first(in count: Int, where predicate: (Int) -> Bool) -> Int {
        var low = 0, high = count
        while low < high {
            let mid = (low + high) / 2
            if predicate(mid) { high = mid } else { low = mid + 1 }
        }
        return low
    }

    /// The highest exponential bucket index k at `scale` whose upper boundary base^(k+1) is at
    /// most `bound` (below it when `strict`). log2 gives it to within one; exp2 of the exact
    /// exponent decides at a boundary (2^−scale is a power of two, so a bound that is a power of
    /// two is exact). Int.min for a bound ≤ 0.
    static func lastIndex(upTo bound: Double, scale: Int, strict: Bool) -> Int {
        guard bound > 0 else { return Int.min }
        let step = Double(sign: .plus, exponent: -scale, significand: 1)
        func fits(_ k: Int) -> Bool {
            let upper = exp2(Double(k + 1) * step)
            return strict ? upper < bound : upper <= bound
        }
        // log2 of a finite positive double is within ±1075, times at most 2^20: no overflow.
        var k = Int((log2(bound) * Double(sign: .plus, exponent: scale, significand: 1)).rounded(.down)) - 1
        while fits(k + 1) { k += 1 }
        while !fits(k) { k -= 1 }
        return k
    }

    /// Moves straddling observations down, one explicit bucket at a time, only as far as needed
    /// for `sum` to be reachable with every observation inside its bucket (when the counts'
    /// lowest possible sum is above it). Each stays in an explicit bucket its exponential bucket
    /// overlaps; moving a group one bucket down never takes the highest reachable sum below `sum`.
    static func fitSum(_ counts: inout [UInt64], _ straddlers: [Straddler], bounds: [Double], sum: Double) {
        /// The lowest value an observation in explicit bucket i can have.
        func floor(_ i: Int) -> Double { i == 0 ? -.infinity : bounds[i - 1] }
        var deficit = counts.indices.reduce(0.0) { $0 + (counts[$1] == 0 ? 0 : Double(counts[$1]) * floor($1)) } - sum
        for s in straddlers where deficit > 0 {
            var group = s.count
            var at = s.upper
            while deficit > 0, at > s.lowest {
                let gain = floor(at) - floor(at - 1)
                let needed = (deficit / gain).rounded(.up)
                let moved = gain.isInfinite ? 1 : needed < Double(group) ? UInt64(needed) : group
                counts[at] -= moved
                counts[at - 1] += moved
                deficit -= Double(moved) * gain
                group = moved
                at -= 1
            }
        }
    }

    /// The point's metric name and labels, sanitized as StatsD names and tags are: the selected
    /// resource attributes first, then the point's attributes; the last of keys that sanitize
    /// alike wins (a point attribute over a resource one), as with StatsD tags. At most
    /// `OTLPDecoder.maxAttributesPerPoint` labels in all.
    private static func series(of point: OTLPNumberPoint, histogram: Bool) -> Result<(String, [(String, String)]), OTLPPointRejection> {
        guard let name = Array(point.metric.utf8).withUnsafeBytes({ StatsDTranscoder.sanitizedName($0[...]) }) else {
            return .failure(.badName)
        }
        var labels: [(String, String)] = []
        for (key, value) in point.resourceAttributes + point.attributes {
            guard let label = labelName(forAttribute: key, histogram: histogram) else { return .failure(.badAttribute) }
            labels.removeAll { $0.0 == label }
            labels.append((label, value))
        }
        guard labels.count <= OTLPDecoder.maxAttributesPerPoint else { return .failure(.tooManyAttributes) }
        return .success((name, labels))
    }

    /// The label an attribute key becomes (`service.name` → `service_name`, as StatsD tags are
    /// sanitized); nil when it cannot be one.
    public static func labelName(forAttribute key: String, histogram: Bool = false) -> String? {
        Array(key.utf8).withUnsafeBytes { StatsDTranscoder.sanitizedLabelName($0[...], histogram: histogram) }
    }

    private typealias Sample = (kind: SampleKind, name: String, labels: [(String, String)], value: SampleValue)

    private mutating func sample(for point: OTLPNumberPoint, now: UInt32) -> Result<Sample, OTLPPointRejection> {
        let name: String, labels: [(String, String)]
        switch Self.series(of: point, histogram: false) {
        case .failure(let reason): return .failure(reason)
        case .success(let series): (name, labels) = series
        }
        guard let value = point.value, value.isFinite else { return .failure(.badValue) }
        let kind: SampleKind
        var amount = value
        switch (point.shape, point.temporality) {
        case (.histogram, _), (.exponentialHistogram, _):
            return .failure(.unsupportedType)  // histograms go through histogramSamples
        case (.gauge, _):
            kind = .gaugeSet
        case (_, .unspecified):
            return .failure(.badValue)
        case (.monotonicSum, .delta):
            guard value >= 0 else { return .failure(.badValue) }
            kind = .counterAdd
        case (.nonMonotonicSum, .delta):
            kind = .gaugeAdd
        case (.monotonicSum, .cumulative), (.nonMonotonicSum, .cumulative):
            let monotonic = point.shape == .monotonicSum
            if monotonic && value < 0 { return .failure(.badValue) }
            guard let delta = streams.delta(stream: Self.streamKey(point), start: point.startTimeUnixNano, value: value,
                                            monotonic: monotonic, now: now, series: (name, labels)) else {
                return .failure(.streamTableFull)
            }
            amount = delta
            kind = monotonic ? .counterAdd : .gaugeAdd
        }
        return .success((kind, name, labels, SampleValue(canonical: amount)))
    }

    /// Resource and scope as sent, the metric's name, and the point's attributes in key order.
    /// A 128-bit digest (two SipHash runs, this process's seed): fixed-size table keys whatever
    /// the size of the resource and attributes.
    static func streamKey(_ point: OTLPNumberPoint) -> [UInt8] {
        let attributes = point.attributes.sorted { $0.key < $1.key }
        return digest { hasher in
            hasher.combine(point.origin)
            hasher.combine(point.metric)
            for (name, value) in attributes {
                hasher.combine(name)
                hasher.combine(value)
            }
        }
    }

    /// 16 bytes: what `feed` hashes, under two salts.
    static func digest(_ feed: (inout Hasher) -> Void) -> [UInt8] {
        var out: [UInt8] = []
        for salt in 0..<2 {
            var hasher = Hasher()
            hasher.combine(salt)
            feed(&hasher)
            withUnsafeBytes(of: UInt64(UInt(bitPattern: hasher.finalize())).littleEndian) { out += $0 }
        }
        return out
    }

    /// The ExportMetricsServiceResponse for `outcome`: empty when everything was accepted, else a
    /// partial_success (field 1) with rejected_data_points (1) and error_message (2).
    public static func response(_ outcome: Outcome) -> [UInt8] {
        guard outcome.rejectedPoints > 0 else { return [] }
        var partial: [UInt8] = [0x08]
        Varint.append(UInt64(outcome.rejectedPoints), to: &partial)
        let message = Array(outcome.message.utf8)
        partial.append(0x12)
        Varint.append(UInt64(message.count), to: &partial)
        partial += message
        var out: [UInt8] = [0x0A]
        Varint.append(UInt64(partial.count), to: &out)
        return out + partial
    }
}

/// The OTLP input's counters.
public struct OTLPInputStatistics: Sendable, Equatable {
    /// Export requests whose body reached the decoder.
    public var requestsReceived: UInt64 = 0
    /// Requests refused whole: not a decodable ExportMetricsServiceRequest.
    public var requestsRejected: UInt64 = 0
    /// Data points read (applied or refused).
    public var pointsReceived: UInt64 = 0
    /// Data points refused, by reason.
    public var rejected = CountsByReason<OTLPPointRejection>()

    public init() {}
}
