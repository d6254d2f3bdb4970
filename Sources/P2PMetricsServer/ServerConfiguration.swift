import P2PMetricsHTTP
import P2PMetricsStore

/// Everything the daemon needs to run, resolved from flags, environment and the config file.
public struct ServerConfiguration: Sendable {
    /// Path of the ingest socket to bind when systemd does not pass one.
    public var socketPath: String
    /// `HOST:PORT` of the HTTP listener to bind when systemd does not pass one.
    public var listenAddress: String
    /// `HOST:PORT` of an optional UDP listener for text StatsD clients that cannot use a Unix socket.
    public var udpAddress: String?
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
    public var version: String

    public init(socketPath: String, listenAddress: String, version: String) {
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
