import CZlib

/// Decompresses one gzip body, refusing it as soon as its output would pass `maxBytes` (a gzip
/// bomb costs at most `maxBytes` of memory and the work to produce them).
enum GzipInflate {
    enum Failure: Error, Equatable {
        case corrupt
        case tooLarge
    }

    static func decompress(_ input: [UInt8], maxBytes: Int) -> Result<[UInt8], Failure> {
        var stream = z_stream()
        guard p2pmd_inflate_init_gzip(&stream) == Z_OK else { return .failure(.corrupt) }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var input = input
        return input.withUnsafeMutableBufferPointer { source -> Result<[UInt8], Failure> in
            stream.next_in = source.baseAddress
            stream.avail_in = UInt32(source.count)
            while true {
                let (status, produced) = chunk.withUnsafeMutableBufferPointer { sink -> (Int32, Int) in
                    stream.next_out = sink.baseAddress
                    stream.avail_out = UInt32(sink.count)
                    let status = inflate(&stream, Z_NO_FLUSH)
                    return (status, sink.count - Int(stream.avail_out))
                }
                guard output.count + produced <= maxBytes else { return .failure(.tooLarge) }
                output.append(contentsOf: chunk[0..<produced])
                switch status {
                case Z_STREAM_END:
                    return stream.avail_in == 0 ? .success(output) : .failure(.corrupt)  // one member only
                case Z_OK:
                    continue
                case Z_BUF_ERROR where produced > 0:
                    continue
                default:
                    return .failure(.corrupt)  // a data error, or input ended before the stream did
                }
            }
        }
    }
}
