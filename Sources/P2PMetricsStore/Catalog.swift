import P2PMetricsWire

/// What the daemon knows about a metric before its first sample: type, HELP text, label names
/// and, for histograms, bucket bounds.
public struct MetricDescriptor: Sendable, Equatable {
    /// The name as clients send it (dotted form allowed).
    public var name: String
    public var type: MetricType
    public var help: String
    /// Documented label names (informative: samples may carry others).
    public var labelNames: [String]
    /// Upper bounds of the histogram buckets, strictly increasing, without `+Inf`; `nil` means
    /// the configured default.
    public var buckets: [Double]?
    /// Series of this metric not updated for this many seconds are removed; nil keeps them
    /// (the default for counters, so `rate()` never sees a false reset).
    public var ttlSeconds: UInt32?
    /// Gauge adds to this metric belong to the process that sent them: when it exits, what it
    /// added and did not take back is withdrawn (a crashed image store leaves no transfer
    /// "active"). Off for gauges that processes hand to each other (a producer adds, a consumer
    /// subtracts).
    public var processScoped: Bool
    /// How many keys a top-K metric keeps per series (1–100; default 10).
    public var topK: Int

    public init(name: String, type: MetricType, help: String, labelNames: [String] = [], buckets: [Double]? = nil,
                ttlSeconds: UInt32? = nil, processScoped: Bool = false, topK: Int = 10) {
        self.processScoped = processScoped
        self.topK = topK
        self.name = name
        self.type = type
        self.help = help
        self.labelNames = labelNames
        self.buckets = buckets
        self.ttlSeconds = ttlSeconds
    }

    /// The Prometheus name.
    public var exposedName: String { Names.exposedName(name.utf8) }
}

/// The metrics the daemon knows up front.
public enum Catalog {
    /// Bucket bounds of `p2p.transfer.duration`: 10 ms to 10 minutes, in seconds.
    public static let transferDurationBuckets: [Double] = [
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
    ]

    /// Prometheus' client libraries' default buckets, for histograms nobody configured.
    public static let defaultBuckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    /// The seed's 13 P2P image-transfer metrics (the contract of the seed guide), plus the
    /// distinct-chunk and chunk-popularity sketches.
    public static let p2p: [MetricDescriptor] = [
        .init(name: "p2p.image.imports.total", type: .counter,
              help: "Total number of P2P image imports.", labelNames: ["artifact_type"]),
        .init(name: "p2p.image.imports.failed", type: .counter,
              help: "Number of failed P2P image imports.", labelNames: ["artifact_type"]),
        .init(name: "p2p.image.downloads.total", type: .counter, help: "Total number of P2P image downloads."),
        .init(name: "p2p.image.downloads.failed", type: .counter, help: "Number of failed P2P image downloads."),
        .init(name: "p2p.transfer.duration", type: .histogram,
              help: "Duration of P2P transfers in seconds.", buckets: transferDurationBuckets),
        .init(name: "p2p.bytes_transferred.total", type: .counter,
              help: "Total bytes transferred via P2P.", labelNames: ["artifact_type"]),
        .init(name: "p2p.chunks_transferred.total", type: .counter, help: "Total chunks transferred via P2P."),
        .init(name: "p2p.chunks_deduplicated.total", type: .counter,
              help: "Number of chunks deduplicated during P2P transfers."),
        .init(name: "p2p.verification.success", type: .counter,
              help: "Number of successful P2P image verifications.", labelNames: ["verification_type"]),
        .init(name: "p2p.verification.failed", type: .counter,
              help: "Number of failed P2P image verifications.", labelNames: ["verification_type"]),
        .init(name: "p2p.cache.hits", type: .counter, help: "Number of P2P cache hits.", labelNames: ["cache_type"]),
        .init(name: "p2p.cache.misses", type: .counter, help: "Number of P2P cache misses.", labelNames: ["cache_type"]),
        .init(name: "p2p.transfers.active", type: .gauge, help: "Number of active P2P transfers.", processScoped: true),
        // Beyond the seed: capacity planning and chunk popularity with fixed memory per series.
        .init(name: "p2p.chunks.unique", type: .distinct,
              help: "Estimated number of distinct chunks seen (HyperLogLog, about 1.6% standard error)."),
        .init(name: "p2p.chunks.requested", type: .topK,
              help: "Most requested chunks and their request counts (Space-Saving top-K sketch)."),
    ]
}
