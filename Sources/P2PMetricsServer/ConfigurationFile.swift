import FoundationEssentials
import P2PMetricsInputOTLP
import P2PMetricsStore
import P2PMetricsWire

/// The JSON configuration file (`--config FILE`), decoded with `Codable` onto a configuration.
/// Every key is optional; unknown keys are errors, so a typo never silently leaves a default in
/// force. Every error is one line naming the key (`limits.max_series must be …`).
///
/// ```json
/// {
///   "socket": "/run/p2pmetricsd/ingest.sock",
///   "listen": "127.0.0.1:9478",
///   "udp": "127.0.0.1:8125",
///   "otlp": "127.0.0.1:4318", "otlp_resource_labels": ["service.name"],
///   "state_file": "/var/lib/p2pmetricsd/counters.state",
///   "socket_mode": "0660",
///   "receive_buffer_bytes": 8388608,
///   "allowed_uids": [1000], "allowed_gids": [998],
///   "track_process_gauges": true,
///   "default_ttl_seconds": 3600,
///   "limits": {"max_series": 1000000, "max_series_per_metric": 250000,
///              "max_http_connections": 64, "max_http_head_bytes": 8192, "max_http_headers": 64,
///              "idle_timeout_seconds": 60, "request_timeout_seconds": 10,
///              "max_labels_per_series": 16, "max_label_value_length": 1024,
///              "max_memory_bytes": 134217728},
///   "default_buckets": [0.005, 0.01, 0.1, 1, 10],
///   "metrics": {"my.job.duration": {"type": "histogram", "help": "…", "buckets": [0.1, 1, 10],
///                                    "ttl_seconds": 600},
///               "jobs.running": {"type": "gauge", "process_scoped": true},
///               "p2p.chunk.requests": {"type": "topk", "top_k": 20}}
/// }
/// ```
public struct ConfigurationFile: Decodable, Sendable {
    /// The configuration the file was decoded onto, with every key of the file applied.
    public private(set) var configuration: ServerConfiguration
    /// The keys the file sets that command-line flags may override again.
    public private(set) var socket: String?
    public private(set) var listen: NetworkAddress?
    public private(set) var udp: NetworkAddress?
    public private(set) var otlp: NetworkAddress?
    public private(set) var stateFile: String?

    /// Reads `path` and decodes it onto `base`; throws one line naming the file, the key and the reason.
    public static func load(path: String, onto base: ServerConfiguration) throws(DaemonError) -> ConfigurationFile {
        let data: [UInt8]
        do {
            data = try RegularFile.read(path, followSymlinks: true, limit: 64 << 20)
        } catch {
            throw DaemonError("cannot read config file \(path): \(error.reason)")
        }
        do {
            return try decode(data, onto: base)
        } catch let error as ConfigurationError {
            throw DaemonError("config file \(path): \(error.message)")
        } catch {
            throw DaemonError("config file \(path) is not valid JSON")
        }
    }

    /// Decodes a file's bytes onto `base`. Throws `ConfigurationError` for a valid JSON document
    /// that breaks the schema, another error for one that is not JSON.
    public static func decode(_ data: [UInt8], onto base: ServerConfiguration) throws -> ConfigurationFile {
        let decoder = JSONDecoder()
        decoder.userInfo[baseKey] = base
        return try decoder.decode(ConfigurationFile.self, from: Data(data))
    }

    /// Where `decode` hands the base configuration to `init(from:)` (a constant, valid key).
    private static let baseKey = CodingUserInfoKey(rawValue: "p2pmetricsd.base")!

    enum Key: String, CodingKey, CaseIterable {
        case socket, listen, udp, otlp, limits, metrics
        case otlpResourceLabels = "otlp_resource_labels"
        case stateFile = "state_file", socketMode = "socket_mode", receiveBufferBytes = "receive_buffer_bytes"
        case defaultBuckets = "default_buckets", allowedUIDs = "allowed_uids", allowedGIDs = "allowed_gids"
        case trackProcessGauges = "track_process_gauges", defaultTTLSeconds = "default_ttl_seconds"
    }

    enum LimitKey: String, CodingKey, CaseIterable {
        case maxSeries = "max_series", maxSeriesPerMetric = "max_series_per_metric"
        case maxHTTPConnections = "max_http_connections", maxHTTPHeadBytes = "max_http_head_bytes"
        case maxHTTPHeaders = "max_http_headers", idleTimeoutSeconds = "idle_timeout_seconds"
        case requestTimeoutSeconds = "request_timeout_seconds", maxTrackedProcesses = "max_tracked_processes"
        case maxLabelsPerSeries = "max_labels_per_series", maxLabelValueLength = "max_label_value_length"
        case maxMemoryBytes = "max_memory_bytes"
    }

    enum MetricKey: String, CodingKey, CaseIterable {
        case type, help, buckets, ttlSeconds = "ttl_seconds", processScoped = "process_scoped", topK = "top_k"
    }

    public init(from decoder: any Decoder) throws {
        guard let base = decoder.userInfo[Self.baseKey] as? ServerConfiguration else {
            throw ConfigurationError("internal: no base configuration")
        }
        var c = base
        let top = try ConfigurationObject<Key>(decoder, at: "top level")
        socket = try top.path(.socket)
        listen = try top.address(.listen)
        udp = try top.address(.udp)
        otlp = try top.address(.otlp)
        if let keys = try top.resourceLabels(.otlpResourceLabels) { c.otlpResourceLabels = keys }
        stateFile = try top.path(.stateFile)
        if let mode = try top.string(.socketMode) {
            guard let value = UInt32(mode, radix: 8), value <= 0o777 else {
                throw ConfigurationError("socket_mode must be an octal string like \"0660\"")
            }
            c.socketMode = value
        }
        if let n = try top.integer(.receiveBufferBytes, in: 4096...(1 << 30)) { c.receiveBufferBytes = Int32(n) }
        if let ids = try top.ids(.allowedUIDs) { c.store.allowedUIDs = Set(ids) }
        if let ids = try top.ids(.allowedGIDs) { c.store.allowedGIDs = Set(ids) }
        if let track = try top.bool(.trackProcessGauges) { c.store.trackProcessGauges = track }
        if let ttl = try top.integer(.defaultTTLSeconds, in: 1...31_536_000) { c.store.defaultTTLSeconds = UInt32(ttl) }
        if let limits = try top.object(.limits, keys: LimitKey.self) {
            try Self.apply(limits, to: &c)
        }
        if let buckets = try top.buckets(.defaultBuckets) { c.store.defaultBuckets = buckets }
        if let metrics = try top.entries(.metrics) {
            try Self.apply(metrics, to: &c.store)
        }
        configuration = c
    }

    private static func apply(_ limits: ConfigurationObject<LimitKey>, to c: inout ServerConfiguration) throws {
        if let n = try limits.integer(.maxLabelsPerSeries, in: 0...WireFormat.maxLabelsPerSeries) { c.store.maxLabelsPerSeries = n }
        if let n = try limits.integer(.maxLabelValueLength, in: 0...WireFormat.maxLabelValueLength) { c.store.maxLabelValueLength = n }
        if let n = try limits.integer(.maxTrackedProcesses, in: 0...65_536) { c.store.maxTrackedProcesses = n }
        if let n = try limits.integer(.maxMemoryBytes, in: (1 << 20)...(1 << 40)) { c.store.maxMemoryBytes = n }
        if let n = try limits.integer(.maxSeries, in: 1...100_000_000) { c.store.maxSeries = n }
        if let n = try limits.integer(.maxSeriesPerMetric, in: 1...100_000_000) { c.store.maxSeriesPerMetric = n }
        if let n = try limits.integer(.maxHTTPConnections, in: 1...65_536) { c.maxConnections = n }
        if let n = try limits.integer(.maxHTTPHeadBytes, in: 256...1_048_576) { c.httpLimits.maxHeadBytes = n }
        if let n = try limits.integer(.maxHTTPHeaders, in: 1...1_000) { c.httpLimits.maxHeaderCount = n }
        if let n = try limits.integer(.idleTimeoutSeconds, in: 1...86_400) { c.idleTimeoutMilliseconds = UInt64(n) * 1_000 }
        if let n = try limits.integer(.requestTimeoutSeconds, in: 1...3_600) { c.requestTimeoutMilliseconds = UInt64(n) * 1_000 }
    }

    /// Metric entries, in name order, onto the catalog's and earlier entries' descriptors.
    private static func apply(_ entries: [(name: String, decoder: any Decoder)], to store: inout StoreConfiguration) throws {
        // Position of each exposed name in the list: one lookup per entry, so start-up stays
        // linear in the size of the file (10,000 entries: well under a second).
        var position: [String: Int] = [:]
        for (i, d) in store.metrics.enumerated() { position[d.exposedName] = i }
        for (name, decoder) in entries.sorted(by: { $0.name < $1.name }) {
            let at = "metrics.\(name)"
            let bad = Array(name.utf8).withUnsafeBytes { Names.validateMetricName($0) }
            guard bad == nil, name.utf8.count <= WireFormat.maxMetricNameLength else {
                throw ConfigurationError("\(at): not a valid metric name")
            }
            let entry = try ConfigurationObject<MetricKey>(decoder, at: at)
            let exposed = Names.exposedName(name.utf8)
            let known = position[exposed]
            var descriptor = known.map { store.metrics[$0] } ?? MetricDescriptor(name: name, type: .gauge, help: "")
            if let type = try entry.string(.type) {
                guard let parsed = MetricType.allCases.first(where: { $0.configurationName == type }) else {
                    throw ConfigurationError("\(at).type must be counter, gauge, histogram, distinct or topk")
                }
                descriptor.type = parsed
            } else if known == nil {
                throw ConfigurationError("\(at).type is required for a metric the catalog does not know")
            }
            if let help = try entry.string(.help) { descriptor.help = help }
            if descriptor.help.isEmpty { descriptor.help = "Metric \(exposed) sent by clients of p2pmetricsd." }
            if let buckets = try entry.buckets(.buckets) {
                guard descriptor.type == .histogram else { throw ConfigurationError("\(at).buckets is only for histograms") }
                descriptor.buckets = buckets
            }
            if let ttl = try entry.integer(.ttlSeconds, in: 1...31_536_000) { descriptor.ttlSeconds = UInt32(ttl) }
            if let k = try entry.integer(.topK, in: 1...100) {
                guard descriptor.type == .topK else { throw ConfigurationError("\(at).top_k is only for topk metrics") }
                descriptor.topK = k
            }
            if entry.has(.processScoped) {
                guard let scoped = try? entry.bool(.processScoped), descriptor.type == .gauge else {
                    throw ConfigurationError("\(at).process_scoped must be true or false, and only for gauges")
                }
                descriptor.processScoped = scoped
            }
            if let known {
                store.metrics[known] = descriptor
            } else {
                position[exposed] = store.metrics.count
                store.metrics.append(descriptor)
            }
        }
    }
}

/// A configuration file that is JSON but breaks the schema: one line naming the key.
public struct ConfigurationError: Error, Sendable {
    public let message: String
    init(_ message: String) { self.message = message }
}

extension MetricType {
    /// The word used for the type in configuration files (`metrics.<name>.type`).
    var configurationName: String {
        switch self {
        case .counter: return "counter"
        case .gauge: return "gauge"
        case .histogram: return "histogram"
        case .distinct: return "distinct"
        case .topK: return "topk"
        }
    }
}

/// Any key, to list the keys an object holds.
private struct AnyKey: CodingKey {
    let stringValue: String
    init(stringValue: String) { self.stringValue = stringValue }
    var intValue: Int? { nil }
    init?(intValue: Int) { nil }
}

/// One JSON object of the file, whose keys are `Key`'s: unknown keys are refused on reading, and
/// every value is read with the check and the one-line error its key needs.
struct ConfigurationObject<Key: CodingKey & CaseIterable> {
    private let container: KeyedDecodingContainer<AnyKey>
    /// The object's dotted path (`limits`, `metrics.x`), or "top level".
    private let path: String

    init(_ decoder: any Decoder, at path: String) throws {
        self.path = path
        do {
            container = try decoder.container(keyedBy: AnyKey.self)
        } catch {
            throw ConfigurationError("\(path) must be an object")
        }
        let known = Set(Key.allCases.map(\.stringValue))
        if let unknown = container.allKeys.map(\.stringValue).sorted().first(where: { !known.contains($0) }) {
            let prefix = path == "top level" ? "" : "\(path)."
            throw ConfigurationError("unknown key \(prefix)\(unknown) (known: \(known.sorted().joined(separator: ", ")))")
        }
    }

    private func name(_ key: Key) -> String {
        path == "top level" ? key.stringValue : "\(path).\(key.stringValue)"
    }

    func has(_ key: Key) -> Bool { container.contains(AnyKey(stringValue: key.stringValue)) }

    /// The value of `key` as `T`, nil when absent; a present value of another kind (null
    /// included) is refused with `failure`.
    private func value<T: Decodable>(_ key: Key, _ type: T.Type, failure: @autoclosure () -> String) throws -> T? {
        guard has(key) else { return nil }
        do {
            return try container.decode(T.self, forKey: AnyKey(stringValue: key.stringValue))
        } catch {
            throw ConfigurationError(failure())
        }
    }

    func string(_ key: Key) throws -> String? {
        try value(key, String.self, failure: "\(name(key)) must be a string")
    }

    func bool(_ key: Key) throws -> Bool? {
        try value(key, Bool.self, failure: "\(name(key)) must be true or false")
    }

    /// A file path: a non-empty string.
    func path(_ key: Key) throws -> String? {
        guard let s = try string(key) else { return nil }
        guard !s.isEmpty else { throw ConfigurationError("\(name(key)) must not be empty") }
        return s
    }

    /// A listening address (`HOST:PORT`, `[IPV6]:PORT`, `:PORT`), resolved now.
    func address(_ key: Key) throws -> NetworkAddress? {
        guard let s = try string(key) else { return nil }
        do {
            return try NetworkAddress(parsing: s)
        } catch {
            throw ConfigurationError("\(name(key)): bad address '\(s)': \(error.reason)")
        }
    }

    func integer(_ key: Key, in range: ClosedRange<Int>) throws -> Int? {
        let message = "\(name(key)) must be a whole number from \(range.lowerBound) to \(range.upperBound)"
        guard let n = try value(key, Double.self, failure: message) else { return nil }
        guard n.rounded() == n, let i = Int(exactly: n), range.contains(i) else { throw ConfigurationError(message) }
        return i
    }

    func ids(_ key: Key) throws -> [UInt32]? {
        guard let items = try value(key, [Double].self, failure: "\(name(key)) must be a list of numeric ids") else { return nil }
        let range = 0...Int(UInt32.max - 1)
        return try items.map { n in
            guard n.rounded() == n, let i = Int(exactly: n), range.contains(i) else {
                throw ConfigurationError("\(name(key)) must be a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return UInt32(i)
        }
    }

    /// OTLP resource attribute keys to turn into labels: at most 16 distinct keys of 1 to 100
    /// bytes, each a valid label once sanitized, no two the same label.
    func resourceLabels(_ key: Key) throws -> [String]? {
        let message = "\(name(key)) must be a list of at most \(OTLPDecoder.maxAttributesPerPoint) attribute keys"
        guard let keys = try value(key, [String].self, failure: message) else { return nil }
        guard keys.count <= OTLPDecoder.maxAttributesPerPoint else { throw ConfigurationError(message) }
        var labels: [String: String] = [:]
        for k in keys {
            guard (1...OTLPDecoder.maxAttributeKeyBytes).contains(k.utf8.count), let label = OTLPInput.labelName(forAttribute: k) else {
                throw ConfigurationError("\(name(key)): '\(k)' cannot be a label name")
            }
            if let other = labels[label] {
                throw ConfigurationError("\(name(key)): '\(other)' and '\(k)' are the same label \(label)")
            }
            labels[label] = k
        }
        return keys
    }

    /// Histogram bucket bounds: 1 to 64 finite numbers, strictly increasing.
    func buckets(_ key: Key) throws -> [Double]? {
        let list = "\(name(key)) must be a list of 1 to 64 bucket bounds"
        guard has(key) else { return nil }
        guard var items = try? container.nestedUnkeyedContainer(forKey: AnyKey(stringValue: key.stringValue)),
              let count = items.count, (1...64).contains(count) else {
            throw ConfigurationError(list)
        }
        var bounds: [Double] = []
        while !items.isAtEnd {
            guard let n = try? items.decode(Double.self), n.isFinite else {
                throw ConfigurationError("\(name(key)) must hold finite numbers")
            }
            if let last = bounds.last, n <= last { throw ConfigurationError("\(name(key)) must be strictly increasing") }
            bounds.append(n)
        }
        return bounds
    }

    /// A nested object of the keys `Nested`.
    func object<Nested>(_ key: Key, keys: Nested.Type) throws -> ConfigurationObject<Nested>? {
        guard has(key) else { return nil }
        return try ConfigurationObject<Nested>(container.superDecoder(forKey: AnyKey(stringValue: key.stringValue)), at: name(key))
    }

    /// A nested object of free-form keys (metric names), each with the decoder of its value.
    func entries(_ key: Key) throws -> [(name: String, decoder: any Decoder)]? {
        guard has(key) else { return nil }
        guard let nested = try? container.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey(stringValue: key.stringValue)) else {
            throw ConfigurationError("\(name(key)) must be an object")
        }
        return try nested.allKeys.map { ($0.stringValue, try nested.superDecoder(forKey: $0)) }
    }
}
