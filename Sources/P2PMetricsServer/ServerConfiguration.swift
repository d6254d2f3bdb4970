import P2PMetricsHTTP
import P2PMetricsStore

/// Everything the daemon needs to run, resolved from flags, environment and the config file.
public struct ServerConfiguration: Sendable {
    /// Path of the ingest socket to bind when systemd does not pass one.
    public var socketPath: String
    /// Whether `socketPath` is the per-user default, whose directory the daemon creates itself and
    /// refuses unless it is a real directory owned by the user and writable by nobody else.
    public var privateSocketDirectory = false
    /// The HTTP listener to bind when systemd does not pass one.
    public var listenAddress: NetworkAddress
    /// An optional UDP listener for text StatsD clients that cannot use a Unix socket.
    public var udpAddress: NetworkAddress?
    /// An optional OTLP/HTTP metrics receiver (`POST /v1/metrics`); off unless configured.
    public var otlpAddress: NetworkAddress?
    /// The OTLP resource attributes that become labels (`service.name` → `service_name`); none by default.
    public var otlpResourceLabels: [String] = []
    /// Where counter totals are kept across restarts (written at shutdown, consumed at start);
    /// nil: not kept.
    public var stateFile: String?
    /// File mode of a self-bound ingest socket.
    public var socketMode: UInt32 = 0o660
    /// Receive buffer requested for the ingest socket (SO_RCVBUFFORCE when permitted).
    public var receiveBufferBytes: Int32 = 8 << 20
    public var httpLimits = HTTPLimits()
    /// A connection with no request in progress is closed after this long.
    public var idleTimeoutMilliseconds: UInt64 = 60_000
    /// A request head must arrive whole within this long of its first byte; a response must make
    /// progress within this long.
    public var requestTimeoutMilliseconds: UInt64 = 10_000
    public var maxConnections = 1_024
    public var store = StoreConfiguration()
    /// The JSON file this configuration was read from, if any (reloaded on SIGHUP).
    public var configFile: String?
    public var version: String

    public init(socketPath: String, listenAddress: NetworkAddress, version: String) {
        self.socketPath = socketPath
        self.listenAddress = listenAddress
        self.version = version
    }
}

/// A failure to start, with the one line the CLI prints for it.
public struct DaemonError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension ServerConfiguration {
    /// The keys that differ from the `running` configuration but only take effect at a restart
    /// (sockets, listeners, HTTP limits, process tracking, and entries of metrics in
    /// `existingMetrics` — exposed names — whose families keep what they were created with), sorted.
    public func keysKeptUntilRestart(running: ServerConfiguration, existingMetrics: Set<String>) -> [String] {
        var kept: [String] = []
        func keep(_ key: String, _ changed: Bool) { if changed { kept.append(key) } }
        keep("socket", socketPath != running.socketPath)
        keep("listen", listenAddress.description != running.listenAddress.description)
        keep("udp", udpAddress?.description != running.udpAddress?.description)
        keep("otlp", otlpAddress?.description != running.otlpAddress?.description)
        keep("otlp_resource_labels", otlpResourceLabels != running.otlpResourceLabels)
        keep("state_file", stateFile != running.stateFile)
        keep("socket_mode", socketMode != running.socketMode)
        keep("receive_buffer_bytes", receiveBufferBytes != running.receiveBufferBytes)
        keep("limits.max_http_connections", maxConnections != running.maxConnections)
        keep("limits.max_http_head_bytes", httpLimits.maxHeadBytes != running.httpLimits.maxHeadBytes)
        keep("limits.max_http_headers", httpLimits.maxHeaderCount != running.httpLimits.maxHeaderCount)
        keep("limits.idle_timeout_seconds", idleTimeoutMilliseconds != running.idleTimeoutMilliseconds)
        keep("limits.request_timeout_seconds", requestTimeoutMilliseconds != running.requestTimeoutMilliseconds)
        keep("limits.max_tracked_processes", store.maxTrackedProcesses != running.store.maxTrackedProcesses)
        keep("track_process_gauges", store.trackProcessGauges != running.store.trackProcessGauges)
        let before = Dictionary(running.store.metrics.map { ($0.exposedName, $0) }, uniquingKeysWith: { $1 })
        for d in store.metrics where existingMetrics.contains(d.exposedName) && before[d.exposedName] != d {
            kept.append("metrics.\(d.name)")
        }
        return kept.sorted()
    }
}
