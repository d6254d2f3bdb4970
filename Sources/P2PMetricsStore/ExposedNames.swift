import P2PMetricsWire

/// Every name a metric family puts into an exposition, in either format, and the table that
/// keeps two families from ever sharing one (PROTOCOL.md §1.4, "Reserved exposed names").
///
/// A family of exposed name `X` claims:
/// * `X` itself (the sample name of counters, gauges, sketches; the family name of all);
/// * a counter `X` ending in `_total`: `X` without `_total` (its OpenMetrics family name) and that
///   name plus `_created`;
/// * a histogram: `X_bucket`, `X_sum`, `X_count`, `X_created`;
/// * a top-K sketch: `X_error` (its error-bound family).
///
/// Two families whose claims intersect would expose a second HELP/TYPE or a duplicate sample in
/// one format or the other; the first family to claim a name keeps it and the other is refused
/// (`name_clash`). Names in the daemon's own `p2pmetricsd_` namespace can be claimed by nobody.
/// Checking a new family costs at most five hash lookups, whatever its number of samples.
public struct ExposedNames: Sendable {
    /// Claimed name → the exposed name of the family that claimed it.
    private var owners: [String: String] = [:]

    public init() {}

    /// The names a family of `type` exposed as `name` claims (its own name first).
    public static func claims(of name: String, type: MetricType) -> [String] {
        var names = [name]
        switch type {
        case .counter:
            if name.hasSuffix(TextSuffix.total) {
                let family = String(name.dropLast(TextSuffix.total.count))
                names.append(family)
                names.append(family + TextSuffix.created)
            }
        case .histogram:
            names += [name + TextSuffix.bucket, name + TextSuffix.sum, name + TextSuffix.count, name + TextSuffix.created]
        case .topK:
            names.append(name + TextSuffix.error)
        case .gauge, .distinct:
            break
        }
        return names
    }

    /// Whether a family `name` of `type` may exist: none of its claims belongs to another family
    /// or to the reserved namespace.
    public func admits(_ name: String, type: MetricType) -> Bool {
        Self.claims(of: name, type: type).allSatisfy { claim in
            !Self.isReserved(claim) && (owners[claim].map { $0 == name } ?? true)
        }
    }

    /// Records the claims of family `name`; returns false (and records nothing) when `admits` is false.
    @discardableResult
    public mutating func claim(_ name: String, type: MetricType) -> Bool {
        guard admits(name, type: type) else { return false }
        for claim in Self.claims(of: name, type: type) { owners[claim] = name }
        return true
    }

    /// Gives back the claims of family `name` (for a store that removes a family): its names are
    /// free for the next family that needs them.
    public mutating func release(_ name: String, type: MetricType) {
        for claim in Self.claims(of: name, type: type) where owners[claim] == name { owners[claim] = nil }
    }

    /// Names in the daemon's `p2pmetricsd_` namespace.
    static func isReserved(_ name: String) -> Bool {
        name.utf8.starts(with: Names.reservedPrefix)
    }
}

/// The suffixes the exposition derives from a family's name.
public enum TextSuffix {
    public static let total = "_total"
    public static let created = "_created"
    public static let bucket = "_bucket"
    public static let sum = "_sum"
    public static let count = "_count"
    public static let error = "_error"
}
