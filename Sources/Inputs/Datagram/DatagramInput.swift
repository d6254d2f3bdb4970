import P2PMetricsInputStatsD
import P2PMetricsStore
import P2PMetricsWire

/// The ingest sockets' input: each datagram is either a binary protocol datagram (first byte
/// `0xF5`), whose sample records the store applies as they are, or text StatsD lines (first byte
/// ASCII), handed to the StatsD input. Checks the allow-list and counts datagrams, bytes and
/// datagrams refused whole.
public struct DatagramInput: Sendable {
    /// What this input counted, exposed as the `p2pmetricsd_datagrams_*` / `bytes_*` self-metrics.
    public private(set) var statistics = DatagramInputStatistics()
    /// The text input its text datagrams go to (with its own counters).
    public private(set) var text = StatsDInput()

    public init() {}

    /// Applies one datagram to `store`. Returns the reason when it was refused whole (a binary
    /// datagram, or any datagram from a sender the allow-list does not admit); text is refused
    /// line by line.
    ///
    /// `sender` carries the kernel-verified credentials when the transport has them; they decide
    /// the allow-list (`StoreConfiguration.allowedUIDs`/`allowedGIDs`) and whose gauge adds are
    /// withdrawn when a process exits.
    @discardableResult
    public mutating func ingest(_ bytes: UnsafeRawBufferPointer, into store: inout MetricStore,
                                from sender: SenderCredentials? = nil) -> DatagramRejection? {
        statistics.datagramsReceived &+= 1
        statistics.bytesReceived &+= UInt64(bytes.count)
        if store.configuration.requiresCredentials {
            guard let sender, store.configuration.admits(sender) else {
                statistics.rejected.count(.unauthorized)
                return .unauthorized
            }
        }
        if let first = bytes.first, first < 0x80 {
            text.ingest(bytes, into: &store, from: sender)
            return nil
        }
        let rejection = store.apply(bytes, from: sender)
        if let rejection { statistics.rejected.count(rejection) }
        return rejection
    }

    /// Records a datagram refused before decoding (e.g. by the transport: truncated by the kernel).
    public mutating func countRejected(_ reason: DatagramRejection, bytes: Int) {
        statistics.datagramsReceived &+= 1
        statistics.bytesReceived &+= UInt64(bytes)
        statistics.rejected.count(reason)
    }
}

/// The datagram input's counters.
public struct DatagramInputStatistics: Sendable, Equatable {
    public var datagramsReceived: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    /// Datagrams refused whole.
    public var rejected = CountsByReason<DatagramRejection>()

    public init() {}
}
