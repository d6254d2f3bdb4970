import P2PMetricsStore
import P2PMetricsWire

/// The text StatsD / DogStatsD input: transcodes each datagram's lines into sample records, hands
/// them to the store, and counts the lines it read and refused.
public struct StatsDInput: Sendable {
    /// What this input counted, exposed as the `p2pmetricsd_text_lines_*` self-metrics.
    public private(set) var statistics = StatsDInputStatistics()
    private let transcoder = StatsDTranscoder()

    public init() {}

    /// Applies the lines of one text datagram to `store`; a refused line is counted and changes
    /// nothing, the other lines still apply.
    public mutating func ingest(_ bytes: UnsafeRawBufferPointer, into store: inout MetricStore, from sender: SenderCredentials? = nil) {
        var output = StatsDTranscoder.Output(encoder: DatagramEncoder(maxSize: WireFormat.maxDatagramSize))
        var refused: [TextLineRejection] = []
        let lines = transcoder.transcode(bytes, into: &output, flush: { full in
            Self.apply(full, to: &store, from: sender)
            full.reset()
        }, reject: { refused.append($0) })
        Self.apply(output, to: &store, from: sender)
        statistics.linesReceived &+= UInt64(lines)
        for reason in refused { statistics.rejected.count(reason) }
    }

    private static func apply(_ output: StatsDTranscoder.Output, to store: inout MetricStore, from sender: SenderCredentials?) {
        guard !output.encoder.isEmpty else { return }
        output.weights.withUnsafeBufferPointer { weights in
            output.encoder.bytes.withUnsafeBytes { _ = store.apply($0, weights: weights, from: sender) }
        }
    }
}

/// The text input's counters.
public struct StatsDInputStatistics: Sendable, Equatable {
    /// Non-empty text lines read.
    public var linesReceived: UInt64 = 0
    /// Lines refused (the other lines of their datagram still apply).
    public var rejected = CountsByReason<TextLineRejection>()

    public init() {}
}
