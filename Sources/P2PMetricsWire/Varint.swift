/// LEB128 varints and zigzag, as PROTOCOL.md §1.1 specifies them.
public enum Varint {
    /// Appends the minimal unsigned LEB128 encoding of `value`.
    @inlinable
    public static func append(_ value: UInt64, to out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(truncatingIfNeeded: v))
    }

    /// Number of bytes `append` writes for `value`.
    @inlinable
    public static func encodedLength(_ value: UInt64) -> Int {
        var v = value
        var n = 1
        while v >= 0x80 {
            v >>= 7
            n += 1
        }
        return n
    }

    @inlinable
    public static func zigzag(_ n: Int64) -> UInt64 {
        UInt64(bitPattern: (n << 1) ^ (n >> 63))
    }

    @inlinable
    public static func unzigzag(_ u: UInt64) -> Int64 {
        Int64(bitPattern: (u >> 1)) ^ -Int64(bitPattern: u & 1)
    }
}
