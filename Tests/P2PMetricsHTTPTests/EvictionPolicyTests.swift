import Testing
@testable import P2PMetricsHTTP

@Suite("Connection eviction at the cap")
struct EvictionPolicyTests {
    func connection(requests: Int = 0, awaiting: Bool = false, responding: Bool = false,
                    accepted: UInt64 = 0, progress: UInt64 = 0) -> ConnectionActivity {
        ConnectionActivity(completedRequests: requests, awaitingResponse: awaiting, responding: responding,
                           acceptedAt: accepted, lastProgress: progress)
    }

    @Test("the oldest connection that never completed a request goes first")
    func neverRequestedFirst() {
        let connections = [
            connection(requests: 3, accepted: 0, progress: 10),  // idle keep-alive, idle longest
            connection(accepted: 500, progress: 500),
            connection(accepted: 200, progress: 200),            // oldest without a request
            connection(requests: 1, responding: true, accepted: 0, progress: 0),  // stalled
        ]
        let choice = EvictionPolicy.choose(connections, now: 10_000)
        #expect(choice?.index == 2)
        #expect(choice?.reason == .noRequest)
    }

    @Test("then the longest idle keep-alive connection, then the longest stalled response")
    func idleThenStalled() {
        let idle = [connection(requests: 1, accepted: 0, progress: 900), connection(requests: 2, accepted: 50, progress: 300),
                    connection(requests: 1, responding: true, progress: 0)]
        #expect(EvictionPolicy.choose(idle, now: 5_000)?.index == 1)
        #expect(EvictionPolicy.choose(idle, now: 5_000)?.reason == .idle)
        let stalled = [connection(requests: 1, responding: true, progress: 4_000),
                       connection(requests: 1, responding: true, progress: 3_000)]
        #expect(EvictionPolicy.choose(stalled, now: 5_000)?.index == 1)
        #expect(EvictionPolicy.choose(stalled, now: 5_000)?.reason == .stalled)
    }

    @Test("a response making progress, or one the daemon is still rendering, is never evicted")
    func busyConnectionsStay() {
        let busy = [connection(requests: 0, awaiting: true, accepted: 0),
                    connection(requests: 5, responding: true, progress: 4_500)]  // wrote 500 ms ago
        #expect(EvictionPolicy.choose(busy, now: 5_000) == nil)
        #expect(EvictionPolicy.evictability(busy[1], now: 5_499) == nil)
        #expect(EvictionPolicy.evictability(busy[1], now: 5_500)?.reason == .stalled)
        #expect(EvictionPolicy.choose([], now: 0) == nil)
    }
}
