/// A bounds-checked reader of protobuf wire format (varint, 64-bit, length-delimited, 32-bit
/// fields) over one buffer. Every read either succeeds inside the buffer or returns nil; nothing
/// here can trap on hostile input. Groups (wire types 3 and 4) are refused.
struct ProtobufReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset: Int
    let end: Int

    init(_ bytes: UnsafeRawBufferPointer, range: Range<Int>? = nil) {
        self.bytes = bytes
        offset = range?.lowerBound ?? 0
        end = range?.upperBound ?? bytes.count
    }

    var isAtEnd: Bool { offset >= end }

    /// One field's key: its number and wire type.
    mutating func readKey() -> (field: UInt64, wireType: UInt8)? {
        guard let key = readVarint(), key >> 3 > 0 else { return nil }
        return (key >> 3, UInt8(key & 7))
    }

    mutating func readVarint() -> UInt64? {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while offset < end, shift < 64 {
            let byte = bytes[offset]
            offset += 1
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
        }
        return nil
    }

    mutating func readFixed64() -> UInt64? {
        guard end - offset >= 8 else { return nil }
        defer { offset += 8 }
        return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// A length-delimited field's byte range.
    mutating func readLengthDelimited() -> Range<Int>? {
        guard let length = readVarint(), length <= UInt64(end - offset) else { return nil }
        let start = offset
        offset += Int(length)
        return start..<offset
    }

    /// Skips a field of `wireType` (an unknown field); false when it cannot be skipped.
    mutating func skip(_ wireType: UInt8) -> Bool {
        switch wireType {
        case 0: return readVarint() != nil
        case 1: return readFixed64() != nil
        case 2: return readLengthDelimited() != nil
        case 5:
            guard end - offset >= 4 else { return false }
            offset += 4
            return true
        default: return false
        }
    }
}
