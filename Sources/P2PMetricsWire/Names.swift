/// Validation of metric names, label names and label values (PROTOCOL.md §1.4), and the mapping
/// from dotted OTel-style names to Prometheus names.
public enum Names {
    /// Prefix reserved for the daemon's own metrics.
    public static let reservedPrefix: [UInt8] = Array("p2pmetricsd_".utf8)

    @inlinable
    static func isLetterOrUnderscore(_ b: UInt8) -> Bool {
        (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F
    }

    @inlinable
    static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

    // Bitmaps of the bytes allowed after the first: bit b of `low` for byte b < 64, bit b - 64 of
    // `high` for 64 ≤ b < 128. Metric names: [A-Za-z0-9_:.]; label names: [A-Za-z0-9_].
    @usableFromInline static let metricLow: UInt64 = 0x07ff_4000_0000_0000
    @usableFromInline static let labelLow: UInt64 = 0x03ff_0000_0000_0000
    @usableFromInline static let lettersHigh: UInt64 = 0x07ff_fffe_87ff_fffe

    @inline(__always) @usableFromInline
    static func allowed(_ b: UInt8, low: UInt64) -> Bool {
        b < 64 ? (low >> UInt64(b)) & 1 == 1 : b < 128 && (lettersHigh >> UInt64(b &- 64)) & 1 == 1
    }

    /// `[A-Za-z_:][A-Za-z0-9_:.]*`, 1 byte or more, and not in the reserved namespace once exposed.
    @inlinable
    public static func validateMetricName(_ name: UnsafeRawBufferPointer) -> DatagramRejection? {
        guard let first = name.first else { return .badMetricName }
        guard isLetterOrUnderscore(first) || first == 0x3A else { return .badMetricName }
        var i = 1
        while i < name.count {
            guard allowed(name[i], low: metricLow) else { return .badMetricName }
            i += 1
        }
        if first == 0x70 && name.count >= reservedPrefix.count {  // "p2pmetricsd_", dots mapped
            var reserved = true
            var k = 0
            for r in reservedPrefix {
                let b = name[k] == 0x2E ? 0x5F : name[k]
                if b != r { reserved = false; break }
                k += 1
            }
            if reserved { return .reservedName }
        }
        return nil
    }

    /// `[A-Za-z_][A-Za-z0-9_]*`, 1 byte or more, not starting with `__`.
    @inlinable
    public static func validateLabelName(_ name: UnsafeRawBufferPointer) -> DatagramRejection? {
        guard let first = name.first, isLetterOrUnderscore(first) else { return .badLabelName }
        if name.count >= 2 && first == 0x5F && name[1] == 0x5F { return .badLabelName }
        var i = 1
        while i < name.count {
            guard allowed(name[i], low: labelLow) else { return .badLabelName }
            i += 1
        }
        return nil
    }

    /// The Prometheus name of a (valid) metric name: every `.` becomes `_`, nothing else changes.
    public static func exposedName<Bytes: Collection<UInt8>>(_ name: Bytes) -> String {
        String(unsafeUninitializedCapacity: name.count) { buffer in
            var i = 0
            for b in name {
                buffer[i] = b == 0x2E ? 0x5F : b
                i += 1
            }
            return i
        }
    }

    /// Strict UTF-8 validation (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
    @inlinable
    public static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        let n = bytes.count
        // ASCII fast path, eight bytes at a time.
        if let base = bytes.baseAddress {
            while i + 8 <= n && base.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                i += 8
            }
        }
        while i < n {
            let b0 = bytes[i]
            if b0 < 0x80 { i += 1; continue }
            let need: Int
            var lower: UInt8 = 0x80
            var upper: UInt8 = 0xBF
            switch b0 {
            case 0xC2...0xDF: need = 1
            case 0xE0: need = 2; lower = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: need = 2
            case 0xED: need = 2; upper = 0x9F
            case 0xF0: need = 3; lower = 0x90
            case 0xF1...0xF3: need = 3
            case 0xF4: need = 3; upper = 0x8F
            default: return false
            }
            guard n - i > need else { return false }
            let b1 = bytes[i + 1]
            guard b1 >= lower && b1 <= upper else { return false }
            var k = 2
            while k <= need {
                let bk = bytes[i + k]
                guard bk & 0xC0 == 0x80 else { return false }
                k += 1
            }
            i += need + 1
        }
        return true
    }
}
