/// Byte-level writers for the Prometheus text exposition format 0.0.4.
public enum TextFormat {
    /// The `Content-Type` of the text format.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

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

    /// Appends HELP text with `\` and newline escaped.
    public static func appendEscapedHelp(_ text: String, to out: inout [UInt8]) {
        for b in text.utf8 {
            switch b {
            case 0x5C: out.append(0x5C); out.append(0x5C)
            case 0x0A: out.append(0x5C); out.append(0x6E)
            default: out.append(b)
            }
        }
    }

    /// Appends `# HELP` and `# TYPE` lines.
    public static func appendHeader(name: String, help: String, type: String, to out: inout [UInt8]) {
        out.append(contentsOf: "# HELP ".utf8)
        out.append(contentsOf: name.utf8)
        out.append(0x20)
        appendEscapedHelp(help, to: &out)
        out.append(contentsOf: "\n# TYPE ".utf8)
        out.append(contentsOf: name.utf8)
        out.append(0x20)
        out.append(contentsOf: type.utf8)
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

    /// Appends a counter total kept as an exact integer part plus fractional adds.
    @inlinable
    public static func appendCounter(integer: UInt64, fraction: Double, to out: inout [UInt8]) {
        if fraction == 0 {
            appendDecimal(integer, to: &out)
        } else {
            appendValue(Double(integer) + fraction, to: &out)
        }
    }
}
