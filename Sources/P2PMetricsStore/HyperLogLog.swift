/// HyperLogLog distinct counting over a caller-owned run of registers.
///
/// With 2^12 one-byte registers (4 KiB a series) the standard error of the estimate is
/// 1.04 / √4096 ≈ 1.6 %; small sets use linear counting and are exact to within a key or two.
/// Keys are hashed with the standard library's SipHash (randomly seeded per process), so the
/// sketch cannot be steered by a sender choosing keys.
public enum HyperLogLog {
    public static let precision = 12
    public static let registerCount = 1 << precision

    /// Adds `key` to the sketch whose registers are `registers`.
    @inlinable
    public static func add(_ key: UnsafeRawBufferPointer, to registers: UnsafeMutableBufferPointer<UInt8>) {
        var hasher = Hasher()
        hasher.combine(bytes: key)
        let hash = UInt64(bitPattern: Int64(hasher.finalize()))
        let index = Int(hash >> UInt64(64 - precision))
        let rest = (hash << UInt64(precision)) | (1 << UInt64(precision - 1))  // sentinel bounds the rank
        let rank = UInt8(rest.leadingZeroBitCount + 1)
        if rank > registers[index] { registers[index] = rank }
    }

    /// The estimated number of distinct keys added.
    public static func estimate(_ registers: UnsafeBufferPointer<UInt8>) -> Double {
        let m = Double(registerCount)
        var sum = 0.0
        var zeros = 0
        for r in registers {
            sum += 1.0 / Double(UInt64(1) << UInt64(r))
            if r == 0 { zeros += 1 }
        }
        let alpha = 0.7213 / (1 + 1.079 / m)
        let raw = alpha * m * m / sum
        if raw <= 2.5 * m && zeros > 0 {
            return (m * log(m / Double(zeros))).rounded()  // linear counting
        }
        return raw.rounded()
    }

    private static func log(_ x: Double) -> Double {
        // Natural logarithm without Foundation: ln(x) = ln(2) * log2(x), log2 via the exponent and a series.
        var exponent = 0
        var mantissa = x
        while mantissa >= 2 { mantissa /= 2; exponent += 1 }
        while mantissa < 1 { mantissa *= 2; exponent -= 1 }
        // ln(mantissa) for mantissa in [1, 2) with the atanh series: ln(m) = 2 atanh((m-1)/(m+1)).
        let y = (mantissa - 1) / (mantissa + 1)
        let y2 = y * y
        var term = y
        var series = 0.0
        var k = 1.0
        while abs(term) > 1e-17 {
            series += term / k
            term *= y2
            k += 2
        }
        return Double(exponent) * 0.6931471805599453 + 2 * series
    }
}
