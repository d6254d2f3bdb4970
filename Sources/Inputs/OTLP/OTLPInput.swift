import P2PMetricsInputStatsD
import P2PMetricsStore
import P2PMetricsWire

/// The OTLP/HTTP metrics input: maps the points of an ExportMetricsServiceRequest onto the store's
/// sample records and counts the points it read and refused.
///
/// Mapping: a monotonic Sum is a counter, a non-monotonic Sum a gauge (adds), a Gauge a gauge
/// (sets). Delta points add; cumulative points go through `CumulativeStreams` first. Metric names
/// and attribute keys are sanitized as StatsD names and tags are (dots become underscores in the
/// exposition); resource attributes are not labels.
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
        var pending = 0
        func flush(_ store: inout MetricStore) {
            guard pending > 0 else { return }
            let before = store.statistics.samplesApplied
            let whole = encoder.bytes.withUnsafeBytes { store.apply($0) }
            let applied = whole == nil ? Int(store.statistics.samplesApplied &- before) : 0
            refused.append(contentsOf: repeatElement(.storeRefused, count: max(pending - applied, 0)))
            encoder.reset()
            pending = 0
        }
        for point in request.points {
            switch sample(for: point, now: store.now) {
            case .failure(let reason): refused.append(reason)
            case .success(let s):
                do {
                    if try !encoder.append(s.kind, name: s.name, labels: s.labels, value: s.value) {
                        flush(&store)
                        guard try encoder.append(s.kind, name: s.name, labels: s.labels, value: s.value) else {
                            refused.append(.badAttribute)
                            continue
                        }
                    }
                    pending += 1
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

    /// Forgets cumulative streams that stopped exporting.
    public mutating func expireStreams(now: UInt32) {
        streams.expire(now: now)
    }

    private typealias Sample = (kind: SampleKind, name: String, labels: [(String, String)], value: SampleValue)

    private mutating func sample(for point: OTLPNumberPoint, now: UInt32) -> Result<Sample, OTLPPointRejection> {
        guard let name = Array(point.metric.utf8).withUnsafeBytes({ StatsDTranscoder.sanitizedName($0[...]) }) else {
            return .failure(.badName)
        }
        var labels: [(String, String)] = []
        for (key, value) in point.attributes {
            guard let label = Array(key.utf8).withUnsafeBytes({ StatsDTranscoder.sanitizedLabelName($0[...], histogram: false) }) else {
                return .failure(.badAttribute)
            }
            labels.removeAll { $0.0 == label }  // the last of clashing keys wins, as with StatsD tags
            labels.append((label, value))
        }
        guard let value = point.value, value.isFinite else { return .failure(.badValue) }
        let kind: SampleKind
        var amount = value
        switch (point.shape, point.temporality) {
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
                                            monotonic: monotonic, now: now) else { return .failure(.streamTableFull) }
            amount = delta
            kind = monotonic ? .counterAdd : .gaugeAdd
        }
        return .success((kind, name, labels, SampleValue(canonical: amount)))
    }

    /// Resource and scope as sent, the metric's name, and the point's attributes in key order.
    static func streamKey(_ point: OTLPNumberPoint) -> [UInt8] {
        var key = point.origin
        key.append(0xFE)
        key.append(contentsOf: point.metric.utf8)
        for (name, value) in point.attributes.sorted(by: { $0.key < $1.key }) {
            key.append(0xFE)
            key.append(contentsOf: name.utf8)
            key.append(0xFD)
            key.append(contentsOf: value.utf8)
        }
        return key
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
