/// One counter per reason, in `allCases` order, so that a self-metric lists every reason, zero or not.
public struct CountsByReason<Reason: CaseIterable & RawRepresentable & Equatable>: Equatable where Reason.RawValue == String {
    /// The counters, indexed like `Reason.allCases`.
    public private(set) var counts: [UInt64]

    public init() {
        counts = [UInt64](repeating: 0, count: Reason.allCases.count)
    }

    public subscript(reason: Reason) -> UInt64 { counts[Self.index(of: reason)] }

    public mutating func count(_ reason: Reason) {
        counts[Self.index(of: reason)] &+= 1
    }

    /// Every reason's name (the `reason` label) with its count.
    public var byReason: [(reason: String, count: UInt64)] {
        zip(Reason.allCases, counts).map { ($0.rawValue, $1) }
    }

    private static func index(of reason: Reason) -> Int {
        Reason.allCases.firstIndex(of: reason).map { Reason.allCases.distance(from: Reason.allCases.startIndex, to: $0) } ?? 0
    }
}

extension CountsByReason: Sendable where Reason: Sendable {}
