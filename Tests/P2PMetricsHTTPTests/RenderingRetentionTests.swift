import Testing
@testable import P2PMetricsHTTP

@Suite("Renderings held by slow readers")
struct RenderingRetentionTests {
    let mib = 1 << 20

    func reader(progress: UInt64) -> ConnectionActivity {
        ConnectionActivity(completedRequests: 0, awaitingResponse: false, responding: true, acceptedAt: 0, lastProgress: progress)
    }

    @Test("the budget is 64 MiB, or twice the largest held rendering")
    func budget() {
        #expect(RenderingRetention.budget([]) == 64 * mib)
        #expect(RenderingRetention.budget([HeldRendering(bytes: 10 * mib, sequence: 1, holders: [])]) == 64 * mib)
        let big = [HeldRendering(bytes: 71 * mib, sequence: 1, holders: []), HeldRendering(bytes: mib, sequence: 2, holders: [])]
        #expect(RenderingRetention.budget(big) == 142 * mib)
    }

    @Test("a rendering a reader is making progress on is never freed, however far over the budget")
    func readingHoldersStay() {
        // The soak's bug: a 71 MiB rendering being read, a newer small one done, budget 64 MiB.
        let held = [HeldRendering(bytes: 71 * mib, sequence: 1, holders: [reader(progress: 9_500)]),
                    HeldRendering(bytes: mib / 4, sequence: 2, holders: [reader(progress: 9_900)])]
        let (released, heldBytes) = RenderingRetention.release(held, budget: 64 * mib, now: 10_000)
        #expect(released.isEmpty)
        #expect(heldBytes == 71 * mib + mib / 4)
        #expect(RenderingRetention.mustShare(heldBytes: heldBytes, budget: 64 * mib))
    }

    @Test("over the budget, renderings only stalled readers hold are freed, oldest first, until within it")
    func stalledFreedOldestFirst() {
        let held = [HeldRendering(bytes: 30 * mib, sequence: 3, holders: [reader(progress: 0)]),
                    HeldRendering(bytes: 30 * mib, sequence: 1, holders: [reader(progress: 0), reader(progress: 9_800)]),  // one reads
                    HeldRendering(bytes: 30 * mib, sequence: 2, holders: [reader(progress: 8_000), reader(progress: 0)]),
                    HeldRendering(bytes: 30 * mib, sequence: 4, holders: [reader(progress: 0)])]
        let (released, heldBytes) = RenderingRetention.release(held, budget: 64 * mib, now: 10_000)
        #expect(released == [2, 0])  // sequence 1 has a reader; 2, then 3; 4 is no longer needed
        #expect(heldBytes == 60 * mib)
        #expect(!RenderingRetention.mustShare(heldBytes: heldBytes, budget: 64 * mib))
        // Within the budget nothing is freed, stalled or not.
        #expect(RenderingRetention.release(held, budget: 120 * mib, now: 10_000).released.isEmpty)
    }
}
