/// Turns cumulative OTLP sums into deltas, per stream (resource, scope, metric, point attributes).
///
/// - The first point of a monotonic stream counts whole when it has a start time (its value is the
///   delta since that start: a new process's first export); without a start time it only sets
///   the baseline.
/// - A later point adds its increase. A lower value or a different start time is a reset of that
///   stream only: the new value is the delta; the total never drops.
/// - A non-monotonic stream (an up-down counter) contributes its current value: each point adds
///   `value − previous` (the first adds its value), so that the streams of several processes sum.
/// - Streams not seen for `ttlSeconds` are forgotten; at `capacity`, new streams are refused. A
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
        /// An up-down stream's series (name, labels), for its withdrawal.
        var series: (name: String, labels: [(String, String)])?
    }

    public let capacity: Int
    public let ttlSeconds: UInt32
    private var entries: [[UInt8]: Entry] = [:]

    public init(capacity: Int = 100_000, ttlSeconds: UInt32 = 900) {
        self.capacity = capacity
        self.ttlSeconds = ttlSeconds
    }

    /// Streams tracked now.
    public var count: Int { entries.count }

    /// The delta of one cumulative point of stream `key` seen at `now` (seconds); nil when the
    /// stream is new and the table is full.
    public mutating func delta(stream key: [UInt8], start: UInt64, value: Double, monotonic: Bool, now: UInt32,
                               series: (name: String, labels: [(String, String)])? = nil) -> Double? {
        guard var entry = entries[key] else {
            guard entries.count < capacity else { return nil }
            entries[key] = Entry(start: start, last: value, seen: now, series: monotonic ? nil : series)
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
            guard entries.count < capacity else { return nil }
            entries[key] = Entry(start: start, last: sum, seen: now, buckets: buckets)
            return start == 0 ? ([UInt64](repeating: 0, count: buckets.count), 0) : (buckets, sum)
        }
        let reset = start != entry.start || entry.buckets.count != buckets.count
            || zip(buckets, entry.buckets).contains { $0 < $1 }
        let delta = reset ? (buckets, sum) : (zip(buckets, entry.buckets).map { $0 - $1 }, sum - entry.last)
        entry = Entry(start: start, last: sum, seen: now, buckets: buckets)
        entries[key] = entry
        return delta
    }

    /// Forgets the streams not seen for `ttlSeconds`; returns the up-down ones' withdrawals.
    public mutating func expire(now: UInt32) -> [Withdrawal] {
        var withdrawals: [Withdrawal] = []
        entries = entries.filter { _, entry in
            guard now &- entry.seen >= ttlSeconds else { return true }
            if let series = entry.series, entry.last != 0 {
                withdrawals.append(Withdrawal(name: series.name, labels: series.labels, contribution: entry.last))
            }
            return false
        }
        return withdrawals
    }
}
