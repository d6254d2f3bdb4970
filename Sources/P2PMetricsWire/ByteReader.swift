/// A bounds-checked forward reader over a datagram. Every read either succeeds within the buffer
/// or reports why it cannot; nothing here can trap on hostile input.
@usableFromInline
struct ByteReader {
    @usableFromInline let bytes: UnsafeRawBufferPointer
    @usableFromInline var offset: Int

    @inlinable
    init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    @inlinable
    var isAtEnd: Bool { offset >= bytes.count }

    @inlinable
    mutating func readByte() -> UInt8? {
        guard offset < bytes.count else { return nil }
        defer { offset += 1 }
        return bytes[offset]
    }

    /// Reads a minimal unsigned LEB128 varint of at most 10 bytes.
    @inlinable @inline(__always)
    mutating func readVarint() -> Result<UInt64, DatagramRejection> {
        // Most varints of a datagram (series indexes, small values, lengths) are one byte.
        if offset < bytes.count {
            let byte = bytes[offset]
            if byte < 0x80 {
                offset += 1
                return .success(UInt64(byte))
            }
        }
        return readLongVarint()
    }

    @inlinable
    mutating func readLongVarint() -> Result<UInt64, DatagramRejection> {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        var index = offset
        while true {
            guard index < bytes.count else { return .failure(.truncated) }
            let byte = bytes[index]
            index += 1
            let payload = UInt64(byte & 0x7F)
            if shift == 63 && payload > 1 { return .failure(.badVarint) }  // overflows 64 bits
            result |= payload << shift
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 0 { return .failure(.badVarint) }  // not minimal
                offset = index
                return .success(result)
            }
            shift += 7
            if shift > 63 { return .failure(.badVarint) }  // longer than 10 bytes
        }
    }

    /// Reads a little-endian IEEE-754 double.
    @inlinable @inline(__always)
    mutating func readFloat64() -> Double? {
        guard bytes.count - offset >= 8 else { return nil }
        let bits = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
        offset += 8
        return Double(bitPattern: bits)
    }

    /// Reads a length-prefixed byte string of at most `maxLength` bytes; returns its range.
    @inlinable @inline(__always)
    mutating func readString(maxLength: Int) -> Result<Range<Int>, DatagramRejection> {
        switch readVarint() {
        case .failure(let reason): return .failure(reason)
        case .success(let length):
            guard length <= UInt64(bytes.count - offset) else { return .failure(.truncated) }
            guard length <= UInt64(maxLength) else { return .failure(.tooLong) }
            let start = offset
            offset += Int(length)
            return .success(start..<offset)
        }
    }
}
