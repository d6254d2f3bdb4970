import P2PMetricsStatsD
import P2PMetricsWire

/// Limits and metric knowledge of a store. Defaults are safe for a node sidecar.
public struct StoreConfiguration: Sendable {
    /// Series the store holds at most; a sample that would create one more is refused.
    public var maxSeries: Int = 1_000_000
    /// Series one metric holds at most.
    public var maxSeriesPerMetric: Int = 250_000
    /// Buckets of histograms that neither the catalog nor the configuration describes.
    public var defaultBuckets: [Double] = Catalog.defaultBuckets
    /// Metrics known up front: the seed's catalog plus configured ones (later entries win).
    public var metrics: [MetricDescriptor] = Catalog.p2p
    /// Labels a new series may have (the protocol allows 16).
    public var maxLabelsPerSeries = WireFormat.maxLabelsPerSeries
    /// Bytes a label value of a new series may have (the protocol allows 1,024).
    public var maxLabelValueLength = WireFormat.maxLabelValueLength
    /// Entries of the cache from a datagram's series bytes to a series; bounded, cleared when full.
    public var wireCacheCapacity: Int = 65_536
    /// Bytes the store may hold: label arenas, per-series tables, histogram buckets, sketches,
    /// metric names and the wire cache. A sample that would create a series past it is refused
    /// (`memory_limit`); existing series keep updating. The default keeps the whole process far
    /// below the contrib unit's `MemoryMax=512M` (README, "Memory").
    public var maxMemoryBytes: Int = 128 << 20
    /// Bytes of `maxMemoryBytes` set aside for the wire cache (at most an eighth of it); the cache
    /// is cleared when it would grow past them.
    public var wireCacheMaxBytes: Int = 8 << 20
    /// Entries a table addressed by 32-bit offsets may hold: bytes of the series key arena, bucket
    /// counts, sketch registers. A series that would pass it is refused (`memory_limit`) whatever
    /// the budget; tests lower it to reach the boundary without gigabytes.
    var offsetLimit: Int = Int(UInt32.max)

    /// The wire cache's share of the memory budget.
    var wireCacheReserve: Int { min(wireCacheMaxBytes, maxMemoryBytes / 8) }
    /// When either is non-empty, only datagrams whose kernel-verified sender uid is in
    /// `allowedUIDs` or gid is in `allowedGIDs` are accepted; others are refused (`unauthorized`).
    public var allowedUIDs: Set<UInt32> = []
    public var allowedGIDs: Set<UInt32> = []
    /// Track gauge adds to process-scoped metrics (`MetricDescriptor.processScoped`) per sending
    /// process and withdraw them when the process exits.
    public var trackProcessGauges = true
    public var maxTrackedProcesses = 512
    public var maxTrackedContributions = 100_000
    /// TTL of gauge, histogram and distinct series that no metric entry sets; nil keeps them.
    /// Counters expire only with an explicit per-metric TTL.
    public var defaultTTLSeconds: UInt32?

    public init() {}

    /// Whether an allow-list is configured (and credentials are therefore required).
    public var requiresCredentials: Bool { !allowedUIDs.isEmpty || !allowedGIDs.isEmpty }
}

/// Why one sample of a valid datagram was refused. The raw value is the `reason` label of
/// `p2pmetricsd_samples_rejected_total`.
public enum SampleRejection: String, Sendable, CaseIterable {
    /// The metric exists with another type.
    case typeClash = "type_clash"
    /// The store holds `maxSeries` series already.
    case seriesLimit = "series_limit"
    /// The metric holds `maxSeriesPerMetric` series already.
    case metricSeriesLimit = "metric_series_limit"
    /// Creating the series would exceed the configured label count or label value length
    /// (stricter than the protocol's own limits).
    case labelLimit = "label_limit"
    /// Creating the series would take the store past `maxMemoryBytes` (or its key arena past
    /// what 32-bit offsets address).
    case memoryLimit = "memory_limit"
    /// The metric's exposed name, or a name its exposition derives from it (`_bucket`, `_sum`,
    /// `_count`, `_created`, `_error`, the OpenMetrics family without `_total`), is another
    /// family's, or in the daemon's `p2pmetricsd_` namespace (see `ExposedNames`).
    case nameClash = "name_clash"
}

/// The daemon's own ingest counters, exposed as `p2pmetricsd_*` self-metrics.
public struct IngestStatistics: Sendable, Equatable {
    public var datagramsReceived: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var samplesApplied: UInt64 = 0
    /// Datagrams clients reported in-band that they could not send. 128 bits: any client may
    /// report up to 2^64 − 1 per record, and a counter must never wrap (go down).
    public var clientDroppedDatagrams: UInt128 = 0
    /// Indexed like `DatagramRejection.allCases`.
    public var datagramsRejected = [UInt64](repeating: 0, count: DatagramRejection.allCases.count)
    /// Indexed like `SampleRejection.allCases`.
    public var samplesRejected = [UInt64](repeating: 0, count: SampleRejection.allCases.count)
    /// Processes that exited with gauge adds outstanding, which were then withdrawn.
    public var processesWithdrawn: UInt64 = 0
    /// Gauge adds applied without per-process tracking (tracking limits reached, or no pid).
    public var gaugeAddsUntracked: UInt64 = 0
    /// Series removed because their metric's TTL passed without an update.
    public var seriesExpired: UInt64 = 0
    /// Non-empty text (StatsD / DogStatsD) lines read.
    public var textLinesReceived: UInt64 = 0
    /// Indexed like `TextLineRejection.allCases`.
    public var textLinesRejected = [UInt64](repeating: 0, count: TextLineRejection.allCases.count)

    public init() {}

    public func rejected(_ reason: DatagramRejection) -> UInt64 {
        datagramsRejected[DatagramRejection.allCases.firstIndex(of: reason) ?? 0]
    }

    public func rejected(_ reason: SampleRejection) -> UInt64 {
        samplesRejected[SampleRejection.allCases.firstIndex(of: reason) ?? 0]
    }

    public func rejected(_ reason: TextLineRejection) -> UInt64 {
        textLinesRejected[TextLineRejection.allCases.firstIndex(of: reason) ?? 0]
    }

    mutating func count(_ reason: TextLineRejection) {
        textLinesRejected[TextLineRejection.allCases.firstIndex(of: reason) ?? 0] += 1
    }

    mutating func count(_ reason: DatagramRejection) {
        datagramsRejected[DatagramRejection.allCases.firstIndex(of: reason) ?? 0] += 1
    }
}
