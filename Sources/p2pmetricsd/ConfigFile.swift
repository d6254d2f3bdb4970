import FoundationEssentials
import P2PMetricsServer
import P2PMetricsStore
import P2PMetricsWire

/// The JSON configuration file (`--config FILE`). Every key is optional; unknown keys are errors,
/// so a typo never silently leaves a default in force.
///
/// ```json
/// {
///   "socket": "/run/p2pmetricsd/ingest.sock",
///   "listen": "127.0.0.1:9478",
///   "udp": "127.0.0.1:8125",
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
struct ConfigFile {
    var socket: String?
    var listen: NetworkAddress?
    var udp: NetworkAddress?
    var stateFile: String?

    /// Reads `path` and applies it to `configuration`; throws one line naming the file, the key
    /// and the reason.
    static func load(path: String, into configuration: inout ServerConfiguration) throws -> ConfigFile {
        let data: [UInt8]
        do {
            data = try RegularFile.read(path, followSymlinks: true, limit: 64 << 20)
        } catch {
            throw DaemonError("cannot read config file \(path): \(error.reason)")
        }
        let root: JSONValue
        do {
            root = try JSONDecoder().decode(JSONValue.self, from: Data(data))
        } catch {
            throw DaemonError("config file \(path) is not valid JSON")
        }
        do {
            return try apply(root, to: &configuration)
        } catch let error as ConfigError {
            throw DaemonError("config file \(path): \(error.message)")
        }
    }

    private static func apply(_ root: JSONValue, to configuration: inout ServerConfiguration) throws -> ConfigFile {
        let top = try root.object(at: "top level",
                                  keys: ["socket", "listen", "udp", "state_file", "socket_mode", "receive_buffer_bytes", "limits",
                                         "default_buckets", "metrics", "allowed_uids", "allowed_gids",
                                         "track_process_gauges", "default_ttl_seconds"])
        var file = ConfigFile()
        file.socket = try top["socket"]?.path(at: "socket")
        file.listen = try top["listen"]?.address(at: "listen")
        file.udp = try top["udp"]?.address(at: "udp")
        file.stateFile = try top["state_file"]?.path(at: "state_file")
        if let mode = try top["socket_mode"]?.string(at: "socket_mode") {
            guard let value = UInt32(mode, radix: 8), value <= 0o777 else {
                throw ConfigError("socket_mode must be an octal string like \"0660\"")
            }
            configuration.socketMode = value
        }
        if let bytes = try top["receive_buffer_bytes"]?.integer(at: "receive_buffer_bytes", in: 4096...(1 << 30)) {
            configuration.receiveBufferBytes = Int32(bytes)
        }
        if let uids = top["allowed_uids"] {
            configuration.store.allowedUIDs = Set(try uids.ids(at: "allowed_uids"))
        }
        if let gids = top["allowed_gids"] {
            configuration.store.allowedGIDs = Set(try gids.ids(at: "allowed_gids"))
        }
        if let track = top["track_process_gauges"] {
            guard case .bool(let b) = track else { throw ConfigError("track_process_gauges must be true or false") }
            configuration.store.trackProcessGauges = b
        }
        if let ttl = try top["default_ttl_seconds"]?.integer(at: "default_ttl_seconds", in: 1...31_536_000) {
            configuration.store.defaultTTLSeconds = UInt32(ttl)
        }
        if let limits = try top["limits"]?.object(
            at: "limits",
            keys: ["max_series", "max_series_per_metric", "max_http_connections", "max_http_head_bytes",
                   "max_http_headers", "idle_timeout_seconds", "request_timeout_seconds", "max_tracked_processes",
                   "max_labels_per_series", "max_label_value_length", "max_memory_bytes"]) {
            if let n = try limits["max_labels_per_series"]?.integer(at: "limits.max_labels_per_series", in: 0...WireFormat.maxLabelsPerSeries) {
                configuration.store.maxLabelsPerSeries = n
            }
            if let n = try limits["max_label_value_length"]?.integer(at: "limits.max_label_value_length", in: 0...WireFormat.maxLabelValueLength) {
                configuration.store.maxLabelValueLength = n
            }
            if let n = try limits["max_tracked_processes"]?.integer(at: "limits.max_tracked_processes", in: 0...65_536) {
                configuration.store.maxTrackedProcesses = n
            }
            if let n = try limits["max_memory_bytes"]?.integer(at: "limits.max_memory_bytes", in: (1 << 20)...(1 << 40)) {
                configuration.store.maxMemoryBytes = n
            }
            if let n = try limits["max_series"]?.integer(at: "limits.max_series", in: 1...100_000_000) {
                configuration.store.maxSeries = n
            }
            if let n = try limits["max_series_per_metric"]?.integer(at: "limits.max_series_per_metric", in: 1...100_000_000) {
                configuration.store.maxSeriesPerMetric = n
            }
            if let n = try limits["max_http_connections"]?.integer(at: "limits.max_http_connections", in: 1...65_536) {
                configuration.maxConnections = n
            }
            if let n = try limits["max_http_head_bytes"]?.integer(at: "limits.max_http_head_bytes", in: 256...1_048_576) {
                configuration.httpLimits.maxHeadBytes = n
            }
            if let n = try limits["max_http_headers"]?.integer(at: "limits.max_http_headers", in: 1...1_000) {
                configuration.httpLimits.maxHeaderCount = n
            }
            if let n = try limits["idle_timeout_seconds"]?.integer(at: "limits.idle_timeout_seconds", in: 1...86_400) {
                configuration.idleTimeoutMilliseconds = UInt64(n) * 1_000
            }
            if let n = try limits["request_timeout_seconds"]?.integer(at: "limits.request_timeout_seconds", in: 1...3_600) {
                configuration.requestTimeoutMilliseconds = UInt64(n) * 1_000
            }
        }
        if let buckets = top["default_buckets"] {
            configuration.store.defaultBuckets = try buckets.buckets(at: "default_buckets")
        }
        if let metrics = top["metrics"] {
            guard case .object(let entries) = metrics else { throw ConfigError("metrics must be an object") }
            // Position of each exposed name in the list: one lookup per entry, so start-up stays
            // linear in the size of the file (10,000 entries: well under a second).
            var position: [String: Int] = [:]
            for (i, d) in configuration.store.metrics.enumerated() { position[d.exposedName] = i }
            for (name, value) in entries.sorted(by: { $0.key < $1.key }) {
                let at = "metrics.\(name)"
                let bad = Array(name.utf8).withUnsafeBytes { Names.validateMetricName($0) }
                guard bad == nil, name.utf8.count <= WireFormat.maxMetricNameLength else {
                    throw ConfigError("\(at): not a valid metric name")
                }
                let entry = try value.object(at: at, keys: ["type", "help", "buckets", "ttl_seconds", "process_scoped", "top_k"])
                let exposed = Names.exposedName(name.utf8)
                let known = position[exposed]
                var descriptor = known.map { configuration.store.metrics[$0] } ?? MetricDescriptor(name: name, type: .gauge, help: "")
                if let type = try entry["type"]?.string(at: "\(at).type") {
                    guard let parsed = MetricType.allCases.first(where: { $0.configurationName == type }) else {
                        throw ConfigError("\(at).type must be counter, gauge, histogram, distinct or topk")
                    }
                    descriptor.type = parsed
                } else if known == nil {
                    throw ConfigError("\(at).type is required for a metric the catalog does not know")
                }
                if let help = try entry["help"]?.string(at: "\(at).help") { descriptor.help = help }
                if descriptor.help.isEmpty { descriptor.help = "Metric \(exposed) sent by clients of p2pmetricsd." }
                if let buckets = entry["buckets"] {
                    guard descriptor.type == .histogram else { throw ConfigError("\(at).buckets is only for histograms") }
                    descriptor.buckets = try buckets.buckets(at: "\(at).buckets")
                }
                if let ttl = try entry["ttl_seconds"]?.integer(at: "\(at).ttl_seconds", in: 1...31_536_000) {
                    descriptor.ttlSeconds = UInt32(ttl)
                }
                if let k = try entry["top_k"]?.integer(at: "\(at).top_k", in: 1...100) {
                    guard descriptor.type == .topK else { throw ConfigError("\(at).top_k is only for topk metrics") }
                    descriptor.topK = k
                }
                if let scoped = entry["process_scoped"] {
                    guard case .bool(let b) = scoped, descriptor.type == .gauge else {
                        throw ConfigError("\(at).process_scoped must be true or false, and only for gauges")
                    }
                    descriptor.processScoped = b
                }
                if let known {
                    configuration.store.metrics[known] = descriptor
                } else {
                    position[exposed] = configuration.store.metrics.count
                    configuration.store.metrics.append(descriptor)
                }
            }
        }
        return file
    }
}

struct ConfigError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// A JSON document as a tree, so the loader can name the exact key that is wrong.
enum JSONValue: Decodable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    func object(at path: String, keys: Set<String>) throws -> [String: JSONValue] {
        guard case .object(let o) = self else { throw ConfigError("\(path) must be an object") }
        if let unknown = o.keys.sorted().first(where: { !keys.contains($0) }) {
            let prefix = path == "top level" ? "" : "\(path)."
            throw ConfigError("unknown key \(prefix)\(unknown) (known: \(keys.sorted().joined(separator: ", ")))")
        }
        return o
    }

    func string(at path: String) throws -> String {
        guard case .string(let s) = self else { throw ConfigError("\(path) must be a string") }
        return s
    }

    /// A file path: a non-empty string.
    func path(at key: String) throws -> String {
        let s = try string(at: key)
        guard !s.isEmpty else { throw ConfigError("\(key) must not be empty") }
        return s
    }

    /// A listening address (`HOST:PORT`, `[IPV6]:PORT`, `:PORT`), resolved now.
    func address(at key: String) throws -> NetworkAddress {
        let s = try string(at: key)
        do {
            return try NetworkAddress(parsing: s)
        } catch {
            throw ConfigError("\(key): bad address '\(s)': \(error.reason)")
        }
    }

    func integer(at path: String, in range: ClosedRange<Int>) throws -> Int {
        guard case .number(let n) = self, n.rounded() == n, let i = Int(exactly: n), range.contains(i) else {
            throw ConfigError("\(path) must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return i
    }

    func ids(at path: String) throws -> [UInt32] {
        guard case .array(let items) = self else { throw ConfigError("\(path) must be a list of numeric ids") }
        return try items.map { try $0.integer(at: path, in: 0...Int(UInt32.max - 1)) }.map { UInt32($0) }
    }

    func buckets(at path: String) throws -> [Double] {
        guard case .array(let items) = self, !items.isEmpty, items.count <= 64 else {
            throw ConfigError("\(path) must be a list of 1 to 64 bucket bounds")
        }
        var bounds: [Double] = []
        for item in items {
            guard case .number(let n) = item, n.isFinite else { throw ConfigError("\(path) must hold finite numbers") }
            if let last = bounds.last, n <= last { throw ConfigError("\(path) must be strictly increasing") }
            bounds.append(n)
        }
        return bounds
    }
}
