/// The two exposition formats the daemon speaks.
public enum ExpositionFormat: Sendable, Equatable {
    /// Prometheus text format 0.0.4.
    case prometheusText
    /// OpenMetrics 1.0.0 text.
    case openMetrics

    public var contentType: String {
        switch self {
        case .prometheusText: return "text/plain; version=0.0.4; charset=utf-8"
        case .openMetrics: return "application/openmetrics-text; version=1.0.0; charset=utf-8"
        }
    }

    /// Picks the format an `Accept` header prefers: OpenMetrics when it is listed with a higher
    /// quality than (or without) the plain text format, as Prometheus' default header does.
    public static func negotiate(accept: String?) -> ExpositionFormat {
        guard let accept else { return .prometheusText }
        var openMetrics = -1.0
        var text = -1.0
        for part in accept.split(separator: ",") {
            let fields = part.split(separator: ";").map { $0.trimmingCharacters() }
            guard let type = fields.first?.lowercased() else { continue }
            var quality = 1.0
            for field in fields.dropFirst() where field.lowercased().hasPrefix("q=") {
                quality = Double(field.dropFirst(2)) ?? 0
            }
            if type == "application/openmetrics-text" {
                openMetrics = max(openMetrics, quality)
            } else if type == "text/plain" || type == "*/*" || type == "text/*" {
                text = max(text, quality)
            }
        }
        return openMetrics > 0 && openMetrics >= text ? .openMetrics : .prometheusText
    }
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}

/// Byte-level writers for the Prometheus text format 0.0.4 and OpenMetrics 1.0.
public enum TextFormat {
    /// The `Content-Type` of the Prometheus text format.
    public static let contentType = ExpositionFormat.prometheusText.contentType

    /// Appends a label value with `\`, `"` and newline escaped.
    @inlinable
    public static func appendEscapedLabelValue(_ value: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        for b in value {
            switch b {
            case 0x5C: out.append(0x5C); out.append(0x5C)
            case 0x22: out.append(0x5C); out.append(0x22)
            case 0x0A: out.append(0x5C); out.append(0x6E)
            default: out.append(b)
            }
        }
    }

    /// Appends HELP text with `\` and newline escaped (and `"` too, in OpenMetrics).
    public static func appendEscapedHelp(_ text: String, format: ExpositionFormat = .prometheusText, to out: inout [UInt8]) {
        for b in text.utf8 {
            switch b {
            case 0x5C: out.append(0x5C); out.append(0x5C)
            case 0x0A: out.append(0x5C); out.append(0x6E)
            case 0x22 where format == .openMetrics: out.append(0x5C); out.append(0x22)
            default: out.append(b)
            }
        }
    }

    /// Appends `# HELP` and `# TYPE` lines for the metric whose samples are named `name`.
    ///
    /// OpenMetrics names a counter family without its `_total` suffix. A counter whose name does
    /// not end in `_total` (the seed's `p2p_cache_hits`, …) is declared `unknown` there, so that a
    /// Prometheus scraping OpenMetrics stores it under the same name as with the text format and
    /// the seed's queries keep working.
    public static func appendHeader(
        name: String, help: String, type: String, format: ExpositionFormat = .prometheusText, to out: inout [UInt8]
    ) {
        var family = name
        var declared = type
        if format == .openMetrics && type == "counter" {
            if name.hasSuffix("_total") {
                family = String(name.dropLast(6))
            } else {
                declared = "unknown"
            }
        }
        out.append(contentsOf: "# HELP ".utf8)
        out.append(contentsOf: family.utf8)
        out.append(0x20)
        appendEscapedHelp(help, format: format, to: &out)
        out.append(contentsOf: "\n# TYPE ".utf8)
        out.append(contentsOf: family.utf8)
        out.append(0x20)
        out.append(contentsOf: declared.utf8)
        out.append(0x0A)
    }

    /// Appends an unsigned integer in decimal.
    @inlinable
    public static func appendDecimal(_ value: UInt64, to out: inout [UInt8]) {
        if value < 10 {
            out.append(0x30 + UInt8(value))
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes ≥ 20 digits
        var v = value
        var n = 0
        withUnsafeMutableBytes(of: &digits) { raw in
            while v > 0 {
                raw[23 - n] = 0x30 + UInt8(v % 10)
                v /= 10
                n += 1
            }
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[(24 - n)...]))
        }
    }

    /// Appends an unsigned 128-bit integer in decimal.
    public static func appendDecimal(_ value: UInt128, to out: inout [UInt8]) {
        if let small = UInt64(exactly: value) {
            appendDecimal(small, to: &out)
            return
        }
        let tenToThe19: UInt128 = 10_000_000_000_000_000_000
        appendDecimal(value / tenToThe19, to: &out)
        let low = UInt64(value % tenToThe19)
        var digits: [UInt8] = []
        appendDecimal(low, to: &digits)
        out.append(contentsOf: repeatElement(0x30, count: 19 - digits.count))
        out.append(contentsOf: digits)
    }

    /// Appends a float value: integers exactly as integers, `+Inf`, `-Inf`, `NaN`, and everything
    /// else in the shortest form that reads back to the same double.
    @inlinable
    public static func appendValue(_ value: Double, to out: inout [UInt8]) {
        if value.isNaN {
            out.append(contentsOf: "NaN".utf8)
        } else if value.isInfinite {
            out.append(contentsOf: (value > 0 ? "+Inf" : "-Inf").utf8)
        } else if value == value.rounded(.towardZero), abs(value) < 1e15 {
            if value < 0 { out.append(0x2D) }
            appendDecimal(UInt64(abs(value)), to: &out)
        } else {
            out.append(contentsOf: value.description.utf8)
        }
    }

    /// Appends a counter total kept as an exact integer part plus a binary64 part (the sum of
    /// fractional adds, and 2^64 per wrap of the integer part), exactly as PROTOCOL.md §1.3 says:
    /// the integer part plus the binary64 part's whole part, in full decimal, then the binary64
    /// part's fractional remainder as its shortest round-trip decimal (`1152921504606846979.1`).
    /// Past 2^127 (or at +Inf) the sum is written as a double.
    @inlinable
    public static func appendCounter(integer: UInt64, fraction: Double, to out: inout [UInt8]) {
        if fraction == 0 {
            appendDecimal(integer, to: &out)
            return
        }
        let whole = fraction.rounded(.down)
        guard whole >= 0, whole < 0x1p127 else {
            appendValue(Double(integer) + fraction, to: &out)
            return
        }
        appendDecimal(UInt128(integer) + UInt128(whole), to: &out)
        let remainder = fraction - whole  // exact: the low bits of `fraction`
        if remainder > 0 { appendFractionDigits(remainder, to: &out) }
    }

    /// Appends `.digits` of `value` in (0, 1): its shortest round-trip decimal, never in exponent form.
    public static func appendFractionDigits(_ value: Double, to out: inout [UInt8]) {
        let text = value.description  // "0.1", or "1.25e-05" below 1e-4
        var digits = Substring(text)
        var leadingZeros = 0
        if let e = text.firstIndex(of: "e") {
            leadingZeros = (Int(text[text.index(after: e)...]).map { -$0 } ?? 1) - 1
            digits = text[..<e]
            digits.removeAll { $0 == "." }
        } else if let dot = text.firstIndex(of: ".") {
            digits = text[text.index(after: dot)...]
        }
        out.append(0x2E)
        out.append(contentsOf: repeatElement(0x30, count: max(leadingZeros, 0)))
        out.append(contentsOf: digits.utf8)
    }
}
