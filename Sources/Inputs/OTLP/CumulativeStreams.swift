/// Turns cumulative OTLP sums and histograms into deltas, per stream (resource, scope, metric, point attributes).
///
/// - The first point of a monotonic stream counts whole when it has a start time (its value is the
///   delta since that start: a new process's first export); without a start time it only sets
///   the baseline.
/// - A later point adds its increase. A lower value or a different start time is a reset of that
///   stream only: the new value is the delta; the total never drops.
/// - A non-monotonic stream (an up-down counter) contributes its current value: each point adds
///   `value − previous` (the first adds its value), so that the streams of several processes sum.
/// - Streams not seen for `ttlSeconds` are forgotten; at `capacity` streams or `maxBytes` of
///   state, new streams are refused. A
///   forgotten up-down stream that named its series is withdrawn: its exporter went away (a
///   cumulative exporter re-sends every stream at every export, changed or not), so its last
///   value stops counting.
public struct CumulativeStreams: Sendable {
    /// The series an up-down stream adds to, and what it contributes there now.
    public struct Withdrawal: Sendable {
        public var name: String
        public var labels: [(String, String)]
        public var contribution: Double
    }

    struct Entry: Sendable {
        var start: UInt64
        var last: Double
        var seen: UInt32
        /// A histogram stream's last bucket counts.
        var buckets: [UInt64] = []
        /// An exponential histogram stream's last point.
        var exponential: ExponentialBuckets?
        /// An up-down stream's series (name, labels), for its withdrawal.
        var series: (name: String, labels: [(String, String)])?
    }

    public let capacity: Int
    public let ttlSeconds: UInt32
    public let maxBytes: Int
    private var entries: [[UInt8]: Entry] = [:]
    /// An estimate of the bytes the entries hold (keys, bucket counts, up-down series).
    public private(set) var bytes = 0

    public init(capacity: Int = 100_000, ttlSeconds: UInt32 = 900, maxBytes: Int = 32 << 20) {
        self.capacity = capacity
        self.ttlSeconds = ttlSeconds
        self.maxBytes = maxBytes
    }

    /// An entry's bytes as the process holds them: the fixed part is what RSS grows by per
    /// counter stream (222 B at 10k streams, 258 B at 100k: `make bench`, Benchmarks/RESULTS.md),
    /// not the fields' sizes alone (112 B), which left the budget binding twice as late as stated.
    private static func cost(_ key: [UInt8], _ entry: Entry) -> Int {
        240 + key.count + entry.buckets.count * 8
            + (entry.exponential.map { 64 + ($0.positive.count + $0.negative.count) * 8 } ?? 0)
            + (entry.series.map { $0.name.utf8.count + $0.labels.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 32 } } ?? 0)
    }

    /// Adds a new stream's entry when the table has room.
    private mutating func admit(_ key: [UInt8], _ entry: Entry) -> Bool {
        let cost = Self.cost(key, entry)
        guard entries.count < capacity, bytes + cost <= maxBytes else { return false }
        entries[key] = entry
        bytes += cost
        return true
    }

    /// Streams tracked now.
    public var count: Int { entries.count }

    /// The delta of one cumulative point of stream `key` seen at `now` (seconds); nil when the
    /// stream is new and the table is full.
    public mutating func delta(stream key: [UInt8], start: UInt64, value: Double, monotonic: Bool, now: UInt32,
                               series: (name: String, labels: [(String, String)])? = nil) -> Double? {
        guard var entry = entries[key] else {
            guard admit(key, Entry(start: start, last: value, seen: now, series: monotonic ? nil : series)) else { return nil }
            return monotonic && start == 0 ? 0 : value
        }
        let delta: Double
        if !monotonic {
            delta = value - entry.last
        } else if start != entry.start || value < entry.last {
            delta = value  // a reset of this stream: a restarted process counts from zero
        } else {
            delta = value - entry.last
        }
        entry.start = start
        entry.last = value
        entry.seen = now
        entries[key] = entry
        return delta
    }

    /// The delta of one cumulative histogram point (bucket counts and sum), with the monotonic
    /// rules: the first point counts whole when it has a start time, a new start time or a lower
    /// bucket count is a reset. nil when the stream is new and the table is full.
    public mutating func delta(stream key: [UInt8], start: UInt64, buckets: [UInt64], sum: Double, now: UInt32)
        -> (buckets: [UInt64], sum: Double)? {
        guard var entry = entries[key] else {
            guard admit(key, Entry(start: start, last: sum, seen: now, buckets: buckets)) else { return nil }
            return start == 0 ? ([UInt64](repeating: 0, count: buckets.count), 0) : (buckets, sum)
        }
        let reset = start != entry.start || entry.buckets.count != buckets.count
            || zip(buckets, entry.buckets).contains { $0 < $1 }
        let delta = reset ? (buckets, sum) : (zip(buckets, entry.buckets).map { $0 - $1 }, sum - entry.last)
        let before = Self.cost(key, entry)
        entry = Entry(start: start, last: sum, seen: now, buckets: buckets)
        bytes += Self.cost(key, entry) - before
        entries[key] = entry
        return delta
    }

    /// The delta of one cumulative exponential histogram point (its buckets and sum; nil sums
    /// stay nil), with the monotonic rules of `delta(stream:start:buckets:sum:now:)`. The previous
    /// point and this one are compared at the coarser of their scales (buckets merged exactly,
    /// index >> difference), so a scale change between points is no reset; the delta has that
    /// scale. A bucket (or the zero count) lower than before, or a previous bucket this point no
    /// longer covers, is a reset: this point counts whole. nil when the stream is new and the
    /// table is full.
    public mutating func delta(stream key: [UInt8], start: UInt64, exponential point: ExponentialBuckets, sum: Double?, now: UInt32)
        -> (buckets: ExponentialBuckets, sum: Double?)? {
        guard var entry = entries[key] else {
            guard admit(key, Entry(start: start, last: sum ?? 0, seen: now, exponential: point)) else { return nil }
            guard start == 0 else { return (point, sum) }
            var empty = point
            empty.zeroCount = 0
            empty.positive = []
            empty.negative = []
            return (empty, sum.map { _ in 0 })
        }
        var delta: (buckets: ExponentialBuckets, sum: Double?) = (point, sum)
        if start == entry.start, let previous = entry.exponential,
           let difference = Self.difference(point, previous) {
            delta = (difference, sum.map { $0 - entry.last })
        }
        let before = Self.cost(key, entry)
        entry = Entry(start: start, last: sum ?? 0, seen: now, exponential: point)
        bytes += Self.cost(key, entry) - before
        entries[key] = entry
        return delta
    }

    /// `current − previous` at the coarser of their scales; nil when some count went down (a reset).
    static func difference(_ current: ExponentialBuckets, _ previous: ExponentialBuckets) -> ExponentialBuckets? {
        let scale = min(current.scale, previous.scale)
        let merged = current.downscaled(to: scale)
        var out = merged
        guard merged.zeroCount >= previous.zeroCount else { return nil }
        out.zeroCount = merged.zeroCount - previous.zeroCount
        func subtract(_ counts: inout [UInt64], offset: Int, _ old: [UInt64], oldOffset: Int, shift: Int) -> Bool {
            for (i, count) in old.enumerated() where count > 0 {
                let at = ((oldOffset + i) >> shift) - offset
                guard counts.indices.contains(at), counts[at] >= count else { return false }
                counts[at] -= count
            }
            return true
        }
        let shift = previous.scale - scale
        guard subtract(&out.positive, offset: out.positiveOffset, previous.positive, oldOffset: previous.positiveOffset, shift: shift),
              subtract(&out.negative, offset: out.negativeOffset, previous.negative, oldOffset: previous.negativeOffset, shift: shift)
        else { return nil }
        return out
    }

    /// Forgets the streams not seen for `ttlSeconds`; returns the up-down ones' withdrawals.
    public mutating func expire(now: UInt32) -> [Withdrawal] {
        var withdrawals: [Withdrawal] = []
        entries = entries.filter { key, entry in
            guard now &- entry.seen >= ttlSeconds else { return true }
            bytes -= Self.cost(key, entry)
            if let series = entry.series, entry.last != 0 {
                withdrawals.append(Withdrawal(name: series.name, labels: series.labels, contribution: entry.last))
            }
            return false
        }
        return withdrawals
    }
}

extension ExponentialBuckets {
    /// The same observations at `scale` (≤ this scale): bucket i becomes bucket i >> difference,
    /// an exact merge.
    func downscaled(to scale: Int) -> ExponentialBuckets {
        let shift = self.scale - scale
        guard shift > 0 else { return self }
        func merge(_ counts: [UInt64], _ offset: Int) -> (Int, [UInt64]) {
            guard !counts.isEmpty else { return (offset >> shift, []) }
            let first = offset >> shift
            var out = [UInt64](repeating: 0, count: ((offset + counts.count - 1) >> shift) - first + 1)
            for (i, c) in counts.enumerated() { out[((offset + i) >> shift) - first] &+= c }
            return (first, out)
        }
        var out = self
        out.scale = scale
        (out.positiveOffset, out.positive) = merge(positive, positiveOffset)
        (out.negativeOffset, out.negative) = merge(negative, negativeOffset)
        return out
    }
}
