/// Why a connection is closed to make room for a new one at the connection cap.
public enum EvictionReason: String, CaseIterable, Sendable {
    /// Never completed a request (idle since accepted, or a slow head).
    case noRequest = "no_request"
    /// Between requests of a keep-alive connection (or slow with its next head).
    case idle
    /// A response the client has not read from for a while (at the cap, or holding a rendering
    /// past the renderings' budget: see `RenderingRetention`).
    case stalled
}

/// What the eviction policy needs to know of a connection.
public struct ConnectionActivity: Sendable, Equatable {
    public var completedRequests: Int
    /// A response is being prepared for it (the daemon is rendering): never its fault.
    public var awaitingResponse: Bool
    /// A response is being written to it.
    public var responding: Bool
    /// Monotonic milliseconds: when it was accepted, and its last completed request or write.
    public var acceptedAt: UInt64
    public var lastProgress: UInt64

    public init(completedRequests: Int, awaitingResponse: Bool, responding: Bool, acceptedAt: UInt64, lastProgress: UInt64) {
        self.completedRequests = completedRequests
        self.awaitingResponse = awaitingResponse
        self.responding = responding
        self.acceptedAt = acceptedAt
        self.lastProgress = lastProgress
    }
}

/// Which connection to close when a new one arrives at the cap, so that idle, slow or half-open
/// connections can never lock a scraper out: the oldest that never completed a request, else the
/// longest idle keep-alive one, else the longest stalled response; never one making progress.
public enum EvictionPolicy {
    /// A response that made no progress for this long counts as stalled.
    public static let stalledMilliseconds: UInt64 = 1_000

    /// Whether a connection may be evicted, why, and since when it has done nothing useful.
    public static func evictability(_ activity: ConnectionActivity, now: UInt64) -> (reason: EvictionReason, since: UInt64)? {
        if activity.awaitingResponse { return nil }
        if activity.responding {
            guard now >= activity.lastProgress + stalledMilliseconds else { return nil }
            return (.stalled, activity.lastProgress)
        }
        return activity.completedRequests == 0 ? (.noRequest, activity.acceptedAt) : (.idle, activity.lastProgress)
    }

    /// The index of the connection to evict among `activities`, with the reason; nil when every
    /// one is busy with a request making progress (the new connection is then refused).
    public static func choose(_ activities: [ConnectionActivity], now: UInt64) -> (index: Int, reason: EvictionReason)? {
        var best: (index: Int, rank: Int, since: UInt64, reason: EvictionReason)?
        for (index, activity) in activities.enumerated() {
            guard let (reason, since) = evictability(activity, now: now) else { continue }
            let rank = EvictionReason.allCases.firstIndex(of: reason) ?? 0
            if let current = best, (current.rank, current.since) <= (rank, since) { continue }
            best = (index, rank, since, reason)
        }
        return best.map { ($0.index, $0.reason) }
    }
}
