/// A complete `/metrics` rendering still held by the connections sending it, as the retention
/// policy sees it.
public struct HeldRendering: Sendable, Equatable {
    /// Its size in bytes.
    public var bytes: Int
    /// Increases with every rendering completed: lower is older.
    public var sequence: UInt64
    /// The connections still sending it.
    public var holders: [ConnectionActivity]

    public init(bytes: Int, sequence: UInt64, holders: [ConnectionActivity]) {
        self.bytes = bytes
        self.sequence = sequence
        self.holders = holders
    }
}

/// Bounds the memory of renderings held by the connections still sending them, without ever
/// cutting a client that reads.
///
/// - A rendering whose every holder has stalled (no write progress for
///   `EvictionPolicy.stalledMilliseconds`) is freed, oldest first, while the held total is over
///   the budget; a rendering with one holder making progress is never touched.
/// - While the held total is at or over the budget, a new scrape gets the newest held rendering
///   of its format and encoding, if there is one, instead of a new rendering.
///
/// So held renderings never exceed the budget by more than one rendering per format and encoding
/// (and those in progress), whatever the number of connections.
public enum RenderingRetention {
    /// The budget's floor: held renderings may always total this much.
    public static let floorBytes = 64 << 20

    /// The budget for held renderings: the floor, or twice the largest held one (so that a store
    /// rendering over half the floor can still be scraped afresh while one reader holds the last).
    public static func budget(_ held: [HeldRendering], floor: Int = floorBytes) -> Int {
        max(floor, 2 * (held.map(\.bytes).max() ?? 0))
    }

    /// The indices of `held` to free (their holders closed), oldest first, until the total is
    /// within `budget`; and the bytes still held after that. Only renderings whose every holder
    /// has stalled are freed.
    public static func release(_ held: [HeldRendering], budget: Int, now: UInt64) -> (released: [Int], heldBytes: Int) {
        var total = held.reduce(0) { $0 + $1.bytes }
        var released: [Int] = []
        for index in held.indices.sorted(by: { held[$0].sequence < held[$1].sequence }) where total > budget {
            let stalled = held[index].holders.allSatisfy { EvictionPolicy.evictability($0, now: now)?.reason == .stalled }
            guard stalled else { continue }
            released.append(index)
            total -= held[index].bytes
        }
        return (released, total)
    }

    /// Whether a new scrape must share a held rendering of its variant rather than start one.
    public static func mustShare(heldBytes: Int, budget: Int) -> Bool {
        heldBytes >= budget
    }
}
