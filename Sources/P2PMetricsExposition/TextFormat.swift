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
        appendDecimal(UInt64(value % tenToThe19), width: 19, to: &out)
    }

    /// Appends `value` in decimal with leading zeros up to `width` digits.
    static func appendDecimal(_ value: UInt64, width: Int, to out: inout [UInt8]) {
        var digits: [UInt8] = []
        appendDecimal(value, to: &digits)
        out.append(contentsOf: repeatElement(0x30, count: max(width - digits.count, 0)))
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

    /// Appends a counter total kept as an exact integer part plus a binary64 part (the sum of its
    /// fractional adds), exactly as PROTOCOL.md §1.3 says: the integer part plus the binary64
    /// part's whole part, in full decimal however large, then the binary64 part's fractional
    /// remainder as its shortest round-trip decimal (`1152921504606846979.1`). Only a binary64 part
    /// that overflowed to +Inf is written as `+Inf`.
    public static func appendCounter(integer: UInt128, fraction: Double, to out: inout [UInt8]) {
        guard fraction.isFinite, fraction >= 0 else {  // +Inf (never negative: adds are validated ≥ 0)
            appendValue(fraction, to: &out)
            return
        }
        let whole = fraction.rounded(.down)
        if whole < 0x1p64, case (let sum, false) = integer.addingReportingOverflow(UInt128(whole)) {
            appendDecimal(sum, to: &out)
        } else {
            appendDecimalSum(integer, whole, to: &out)
        }
        let remainder = fraction - whole  // exact: the low bits of `fraction`
        if remainder > 0 { appendFractionDigits(remainder, to: &out) }
    }

    /// Appends `integer + whole` in decimal, exactly, for an integral double `whole` of any size.
    static func appendDecimalSum(_ integer: UInt128, _ whole: Double, to out: inout [UInt8]) {
        // Base 10^9 digits, least significant first. `whole` = significand × 2^exponent.
        let base: UInt64 = 1_000_000_000
        var limbs: [UInt64] = []
        func addSmall(_ value: UInt128) {
            var carry = value
            var i = 0
            while carry > 0 {
                if i == limbs.count { limbs.append(0) }
                let sum = limbs[i] + UInt64(carry % UInt128(base))  // below 2 × 10^9
                carry = carry / UInt128(base) + UInt128(sum / base)
                limbs[i] = sum % base
                i += 1
            }
        }
        var remaining = 0
        if whole < 0x1p64 {
            addSmall(UInt128(whole))
        } else {
            addSmall(UInt128(whole.significandBitPattern | 1 << UInt64(Double.significandBitCount)))
            remaining = Int(whole.exponent) - Double.significandBitCount
        }
        while remaining > 0 {  // × 2^exponent, up to 2^30 at a time (limbs stay below 2^60)
            let shift = UInt64(min(remaining, 30))
            var carry: UInt64 = 0
            for i in limbs.indices {
                let product = limbs[i] << shift + carry
                limbs[i] = product % base
                carry = product / base
            }
            while carry > 0 {
                limbs.append(carry % base)
                carry /= base
            }
            remaining -= Int(shift)
        }
        addSmall(integer)
        appendDecimal(limbs.last ?? 0, to: &out)
        for limb in limbs.dropLast().reversed() { appendDecimal(limb, width: 9, to: &out) }
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
