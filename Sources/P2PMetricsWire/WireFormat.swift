/// Constants and vocabulary of the p2pmetricsd binary wire protocol, version 1.
///
/// The normative description is `Clients/PROTOCOL.md`; the names here follow it.
public enum WireFormat {
    /// First byte of every version-1 datagram. `0xF5`–`0xFF` never occur in UTF-8, so a binary
    /// datagram can never be mistaken for a text StatsD line.
    public static let magic: UInt8 = 0xF5

    /// Largest datagram the daemon accepts.
    public static let maxDatagramSize = 65_536
    /// Size the reference clients batch up to by default.
    public static let defaultBatchSize = 8_192
    public static let maxMetricNameLength = 200
    public static let maxLabelsPerSeries = 16
    public static let maxLabelNameLength = 100
    public static let maxLabelValueLength = 1_024
    public static let maxSeriesPerDatagram = 4_096
    /// Longest item key of a distinct-count sample.
    public static let maxKeyLength = 1_024
    /// Longest item key of a top-K sample (it becomes a label value, so it must be UTF-8).
    public static let maxTopKKeyLength = 128

    /// Record tags that are not samples.
    public enum Tag {
        public static let series: UInt8 = 0x01
        public static let dropped: UInt8 = 0x02
    }
}

/// What a sample does to its series. The raw value is the high nibble of the sample tag.
public enum SampleKind: UInt8, Sendable, CaseIterable {
    case counterAdd = 1
    case gaugeSet = 2
    case gaugeAdd = 3
    case histogramObserve = 4
    /// Adds an item key (e.g. a chunk hash) to a distinct-count sketch; value form `.bytes` only.
    case distinctAdd = 5
    /// Counts one occurrence of an item key (e.g. a requested chunk hash) in a top-K sketch;
    /// value form `.bytes` only, 1–128 bytes of UTF-8.
    case topKAdd = 6

    /// The Prometheus metric type a sample of this kind belongs to.
    @inlinable
    public var metricType: MetricType {
        switch self {
        case .counterAdd: return .counter
        case .gaugeSet, .gaugeAdd: return .gauge
        case .histogramObserve: return .histogram
        case .distinctAdd: return .distinct
        case .topKAdd: return .topK
        }
    }

    /// Whether this kind carries an item key (`.bytes` form) rather than a number.
    @inlinable
    public var takesKey: Bool { self == .distinctAdd || self == .topKAdd }
}

/// The exposed type of a metric. Fixed by the catalog or by the metric's first accepted sample.
public enum MetricType: UInt8, Sendable, CaseIterable {
    case counter
    case gauge
    case histogram
    /// Estimated number of distinct keys (a HyperLogLog sketch), exposed as a gauge.
    case distinct
    /// The K most frequent keys with their counts (a Space-Saving sketch), exposed as gauges
    /// labelled `key`.
    case topK
}

/// How a sample value travels on the wire. The raw value is the low nibble of the sample tag.
public enum ValueForm: UInt8, Sendable {
    case unsigned = 0
    case signed = 1
    case float64 = 2
    /// `string`-encoded item key (distinct counts).
    case bytes = 3
}

/// A decoded sample value, exact as sent.
public enum SampleValue: Sendable, Equatable {
    case unsigned(UInt64)
    case signed(Int64)
    case double(Double)
    /// An item key: a byte range of the datagram the sample was decoded from.
    case key(Range<Int>)

    /// The value as a double (what Prometheus stores); NaN for a key.
    @inlinable
    public var doubleValue: Double {
        switch self {
        case .unsigned(let u): return Double(u)
        case .signed(let s): return Double(s)
        case .double(let d): return d
        case .key: return .nan
        }
    }

    /// The canonical encoding of a double (PROTOCOL.md §3): integral values travel as varints.
    @inlinable
    public init(canonical value: Double) {
        if value.isFinite, value.rounded(.towardZero) == value {
            if value >= 0, value < 18_446_744_073_709_551_616.0 {
                self = .unsigned(UInt64(value))
                return
            }
            if value < 0, value >= -9_223_372_036_854_775_808.0 {
                self = .signed(Int64(value))
                return
            }
        }
        self = .double(value)
    }

    public static func == (lhs: SampleValue, rhs: SampleValue) -> Bool {
        switch (lhs, rhs) {
        case (.unsigned(let a), .unsigned(let b)): return a == b
        case (.signed(let a), .signed(let b)): return a == b
        case (.double(let a), .double(let b)): return a.bitPattern == b.bitPattern
        case (.key(let a), .key(let b)): return a == b
        default: return false
        }
    }
}

/// Why a whole datagram was refused. The raw value is the `reason` label of
/// `p2pmetricsd_datagrams_rejected_total`.
public enum DatagramRejection: String, Error, Sendable, CaseIterable {
    case empty
    case oversized
    case badMagic = "bad_magic"
    case truncated
    case badVarint = "bad_varint"
    case badUTF8 = "bad_utf8"
    case unknownRecord = "unknown_record"
    case badSeriesRef = "bad_series_ref"
    case badMetricName = "bad_metric_name"
    case badLabelName = "bad_label_name"
    case reservedName = "reserved_name"
    case reservedLabel = "reserved_label"
    case duplicateLabel = "duplicate_label"
    case tooLong = "too_long"
    case tooManyLabels = "too_many_labels"
    case tooManySeries = "too_many_series"
    case negativeCounter = "negative_counter"
    case nonFinite = "non_finite"
    /// The sender's kernel-verified credentials are not on the allow-list.
    case unauthorized
}
