import P2PMetricsWire

/// The fate of the samples of one call, like the return value of the C client's functions.
///
/// Recording never throws and never waits longer than the client's bounded wait for room (50 ms
/// by default in batched mode, none in immediate mode); callers that do not care simply ignore the
/// result (every recording method is `@discardableResult`).
public enum RecordResult: Sendable, Equatable {
    /// The samples left in a datagram the kernel accepted (immediate mode, or an explicit flush).
    case sent
    /// The samples wait in the current batch; they go out when it is full, at the next timed
    /// flush, or on ``P2PMetricsClient/flush()``. A failure of that later send is counted as a drop.
    case buffered
    /// The datagram holding the samples could not be sent (`errno`: `EAGAIN` when the sidecar's
    /// queue was full, `ENOENT`/`ECONNREFUSED` when it is absent). It was dropped and counted, and
    /// the count is reported in-band by the next datagram that is sent (PROTOCOL.md §4).
    case dropped(errno: Int32)
    /// A sample broke a protocol rule (name, label or value, PROTOCOL.md §1.3–1.5): nothing was
    /// sent and nothing was counted.
    case invalid(DatagramRejection)
    /// The samples of this call cannot fit in one datagram of the configured size: nothing was sent.
    case tooLarge

    /// True for ``sent`` and ``buffered``: the samples were accepted by the client.
    public var isAccepted: Bool {
        switch self {
        case .sent, .buffered: return true
        default: return false
        }
    }
}
