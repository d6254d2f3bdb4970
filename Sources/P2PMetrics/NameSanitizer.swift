import P2PMetricsWire

/// Turns swift-metrics labels and dimensions into valid protocol names (PROTOCOL.md §1.4).
///
/// swift-metrics accepts any string as a metric label ("my-counter", "http.requests 2xx") and
/// any dimension; the protocol does not. ``P2PMetricsFactory`` therefore sanitizes once, when a
/// handler is created, instead of losing the samples:
///
/// * **Metric names**: every character outside `[A-Za-z0-9_:.]` becomes `_` (one `_` per
///   Unicode scalar); a name that does not start with `[A-Za-z_:]` gets a leading `_` when it
///   starts with a digit, or its first character replaced by `_` (a leading `.`); an empty name
///   becomes `_`; a name in the daemon's reserved `p2pmetricsd_` namespace gets a leading `_`;
///   names are cut at 200 bytes. Dots are kept (the sidecar exposes them as `_`).
/// * **Label names** (dimension keys): every character outside `[A-Za-z0-9_]` becomes `_`; a
///   leading digit gets a leading `_`; leading underscores are reduced to one (`__x` → `_x`,
///   `__` is reserved); an empty key becomes `_`; cut at 100 bytes; a histogram's `le` becomes `_le`.
/// * **Label sets**: a key that repeats (after sanitizing) keeps its first value; labels past the
///   16th are left out. **Label values** are kept, cut at 1,024 bytes on a character boundary.
public enum P2PMetricsNameSanitizer {
    /// A valid metric name for `label` (unchanged when it already is one).
    public static func metricName(_ label: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(label.unicodeScalars.count + 1)
        for u in label.unicodeScalars {
            out.unicodeScalars.append(isMetricNameScalar(u) ? u : "_")
        }
        if let first = out.unicodeScalars.first {
            if ("0"..."9").contains(first) {
                out = "_" + out
            } else if first == "." {
                out = "_" + out.dropFirst()
            }
        } else {
            out = "_"
        }
        if reserved(out) { out = "_" + out }
        return String(out.utf8.prefix(WireFormat.maxMetricNameLength))!   // ASCII only: any cut is valid
    }

    /// A valid label name for the dimension key `key`.
    public static func labelName(_ key: String, histogram: Bool = false) -> String {
        var out = ""
        for u in key.unicodeScalars {
            out.unicodeScalars.append(isLabelNameScalar(u) ? u : "_")
        }
        if out.isEmpty { out = "_" }
        if let first = out.unicodeScalars.first, ("0"..."9").contains(first) { out = "_" + out }
        if out.hasPrefix("__") {
            out = "_" + out.drop { $0 == "_" }
        }
        out = String(out.utf8.prefix(WireFormat.maxLabelNameLength))!
        if histogram && out == "le" { out = "_le" }
        return out
    }

    /// `value` cut to at most 1,024 UTF-8 bytes, on a character boundary.
    public static func labelValue(_ value: String) -> String {
        guard value.utf8.count > WireFormat.maxLabelValueLength else { return value }
        var out = ""
        var size = 0
        for u in value.unicodeScalars {
            size += UTF8.width(u)
            if size > WireFormat.maxLabelValueLength { break }
            out.unicodeScalars.append(u)
        }
        return out
    }

    /// A valid label list for swift-metrics dimensions: sanitized names and values, first of
    /// each repeated name kept, at most 16 labels.
    public static func labels(_ dimensions: [(String, String)], histogram: Bool = false) -> [(String, String)] {
        var out: [(String, String)] = []
        for (k, v) in dimensions where out.count < WireFormat.maxLabelsPerSeries {
            let name = labelName(k, histogram: histogram)
            if out.contains(where: { $0.0 == name }) { continue }
            out.append((name, labelValue(v)))
        }
        return out
    }

    private static func isMetricNameScalar(_ u: Unicode.Scalar) -> Bool {
        isLabelNameScalar(u) || u == ":" || u == "."
    }

    private static func isLabelNameScalar(_ u: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(u) || ("A"..."Z").contains(u) || ("0"..."9").contains(u) || u == "_"
    }

    private static func reserved(_ name: String) -> Bool {
        var bytes = Array(name.utf8)
        for i in bytes.indices where bytes[i] == UInt8(ascii: ".") { bytes[i] = UInt8(ascii: "_") }
        return bytes.starts(with: Names.reservedPrefix)
    }
}
