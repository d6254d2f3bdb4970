import P2PMetricsStore
import P2PMetricsWire

/// The text StatsD / DogStatsD input: turns each datagram's lines into samples, hands them to the
/// store, and counts the lines it read and refused.
///
/// Most lines take the fast path: one pass over the line, its name and tags as sent looked up in
/// the store's input cache, its values parsed in place, its samples collected into buffers this
/// input keeps and applied once per datagram (`MetricStore.apply(resolved:…)`). A line whose
/// series the cache does not know (new, evicted, expired) takes the encoding path
/// (`StatsDTranscoder`: sanitizing, labels, a binary series record), is applied at once, and its
/// series is cached. Both paths apply the same rules in the same order, so a line gets the same
/// result either way; nothing is allocated per line or datagram once warm on the fast path.
public struct StatsDInput: Sendable {
    /// What this input counted, exposed as the `p2pmetricsd_text_lines_*` self-metrics.
    public private(set) var statistics = StatsDInputStatistics()
    private let transcoder = StatsDTranscoder()
    // Reused buffers: the encoding path's datagram, the fast path's samples with their series and
    // weights, the cache key being built.
    private var output = StatsDTranscoder.Output(encoder: DatagramEncoder(maxSize: WireFormat.maxDatagramSize))
    private var samples: [PackedSample] = []
    private var series: [SeriesID] = []
    private var weights: [UInt32] = []
    private var keyBuffer = [UInt8](repeating: 0, count: StatsDTranscoder.maxCacheKeyLength)

    public init() {}

    /// Applies the lines of one text datagram to `store`; a refused line is counted and changes
    /// nothing, the other lines still apply, in order.
    public mutating func ingest(_ bytes: UnsafeRawBufferPointer, into store: inout MetricStore, from sender: SenderCredentials? = nil) {
        var valuesLeft = StatsDTranscoder.maxValuesPerDatagram
        var lines = TextLines(bytes)
        // The key buffer is taken out of `self` for the datagram (no copy, no allocation), so that
        // the loop can write it through a pointer while it mutates the other buffers.
        var key: [UInt8] = []
        swap(&key, &keyBuffer)
        key.withUnsafeMutableBytes { key in
            ingestLines(&lines, bytes, key: key, valuesLeft: &valuesLeft, into: &store, from: sender)
        }
        swap(&key, &keyBuffer)
        applyResolved(bytes, to: &store, from: sender)
        statistics.linesReceived &+= UInt64(lines.count)
    }

    /// The line loop (not a closure: the store is used in place; a closure capturing it made each
    /// lookup copy it).
    private mutating func ingestLines(
        _ lines: inout TextLines, _ bytes: UnsafeRawBufferPointer, key: UnsafeMutableRawBufferPointer, valuesLeft: inout Int,
        into store: inout MetricStore, from sender: SenderCredentials?
    ) {
        while let line = lines.next() {
            var parsed = TextLine()
            if let reason = StatsDTranscoder.head(bytes, line, valuesLeft: &valuesLeft, into: &parsed) {
                statistics.rejected.count(reason)
                continue
            }
            let cacheKey = StatsDTranscoder.cacheKey(bytes, parsed, into: key).map { UnsafeRawBufferPointer(rebasing: key[..<$0]) }
            let cached = cacheKey.flatMap { store.cachedSeries(forInputKey: $0) }
            let reason: TextLineRejection?
            if let cached {
                statistics.linesFromCache &+= 1
                reason = appendResolved(bytes, parsed, series: cached)
            } else {
                reason = transcodeAndCache(bytes, parsed, cacheKey: cacheKey, into: &store, from: sender)
            }
            if let reason { statistics.rejected.count(reason) }
        }
    }

    /// The fast path: the line's samples join the datagram's resolved samples, or none of them
    /// does when a value refuses the line.
    private mutating func appendResolved(_ bytes: UnsafeRawBufferPointer, _ parsed: TextLine, series id: SeriesID) -> TextLineRejection? {
        let mark = samples.count
        let index = UInt16(truncatingIfNeeded: series.count)  // ≤ 16,384 lines with values per datagram
        let reason = StatsDTranscoder.decideValues(bytes, parsed, value: { decided in
            samples.append(PackedSample(decided.kind, decided.value, series: index))
            weights.append(decided.weight)
        }, key: { range in
            samples.append(PackedSample(.distinctAdd, .key(range), series: index))
            weights.append(1)
        })
        if reason != nil {
            samples.removeSubrange(mark...)
            weights.removeSubrange(mark...)
        } else {
            series.append(id)
        }
        return reason
    }

    /// The encoding path: after the resolved samples collected so far (order is kept), the line is
    /// encoded and applied alone; the series it resolved to is cached under the line's key.
    private mutating func transcodeAndCache(
        _ bytes: UnsafeRawBufferPointer, _ parsed: TextLine, cacheKey: UnsafeRawBufferPointer?, into store: inout MetricStore,
        from sender: SenderCredentials?
    ) -> TextLineRejection? {
        applyResolved(bytes, to: &store, from: sender)
        output.reset()
        let reason = transcoder.transcodeLine(bytes, parsed, into: &output, flush: { full in
            Self.apply(full, to: &store, from: sender)
            full.reset()
        })
        guard Self.apply(output, to: &store, from: sender), reason == nil else { return reason }
        if let cacheKey, let id = store.lastResolvedSeries(0) {
            store.cacheSeries(id, forInputKey: cacheKey)
        }
        return reason
    }

    /// Applies the resolved samples collected so far and empties their buffers.
    private mutating func applyResolved(_ bytes: UnsafeRawBufferPointer, to store: inout MetricStore, from sender: SenderCredentials?) {
        guard !samples.isEmpty else { return }
        samples.withUnsafeBufferPointer { samples in
            series.withUnsafeBufferPointer { series in
                weights.withUnsafeBufferPointer { weights in
                    store.apply(resolved: samples, series: series, weights: weights, keysIn: bytes, from: sender)
                }
            }
        }
        samples.removeAll(keepingCapacity: true)
        series.removeAll(keepingCapacity: true)
        weights.removeAll(keepingCapacity: true)
    }

    /// Applies an encoded datagram; false when it was empty (nothing applied).
    @discardableResult
    private static func apply(_ output: StatsDTranscoder.Output, to store: inout MetricStore, from sender: SenderCredentials?) -> Bool {
        guard !output.encoder.isEmpty else { return false }
        let rejection = output.weights.withUnsafeBufferPointer { weights in
            output.encoder.bytes.withUnsafeBytes { store.apply($0, weights: weights, from: sender) }
        }
        return rejection == nil
    }
}

/// The text input's counters.
public struct StatsDInputStatistics: Sendable, Equatable {
    /// Non-empty text lines read.
    public var linesReceived: UInt64 = 0
    /// Lines refused (the other lines of their datagram still apply).
    public var rejected = CountsByReason<TextLineRejection>()
    /// Lines whose series came from the store's input cache (the fast path), refused or not.
    public var linesFromCache: UInt64 = 0

    public init() {}
}
