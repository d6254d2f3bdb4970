import CZlib

/// A streaming gzip compressor for sliced renderings: each slice is compressed as it is rendered
/// (deflate keeps its window across slices), and the stream ends with `finish`.
final class GzipStream {
    private var stream = z_stream()
    private var output = [UInt8](repeating: 0, count: 64 * 1024)
    private let ready: Bool

    init?(level: Int32 = 5) {
        ready = p2pmd_deflate_init_gzip(&stream, level) == Z_OK
        if !ready { return nil }
    }

    deinit {
        if ready { deflateEnd(&stream) }
    }

    /// Compresses `input`; with `finish`, also writes the gzip trailer.
    func compress(_ input: [UInt8], finish: Bool) -> [UInt8] {
        var result: [UInt8] = []
        var input = input
        input.withUnsafeMutableBufferPointer { source in
            stream.next_in = source.baseAddress
            stream.avail_in = UInt32(source.count)
            let mode = finish ? Z_FINISH : Z_NO_FLUSH
            repeat {
                output.withUnsafeMutableBufferPointer { sink in
                    stream.next_out = sink.baseAddress
                    stream.avail_out = UInt32(sink.count)
                    _ = deflate(&stream, mode)
                    result.append(contentsOf: sink[0..<(sink.count - Int(stream.avail_out))])
                }
            } while stream.avail_out == 0
        }
        stream.next_in = nil
        return result
    }
}

/// Whether an `Accept-Encoding` header admits gzip (listed, and not with `q=0`).
func acceptsGzip(_ header: String?) -> Bool {
    guard let header else { return false }
    for part in header.lowercased().split(separator: ",") {
        let fields = part.split(separator: ";").map { $0.filter { $0 != " " && $0 != "\t" } }
        guard fields.first == "gzip" || fields.first == "x-gzip" else { continue }
        let zero = fields.dropFirst().contains { $0 == "q=0" || $0 == "q=0.0" || $0 == "q=0.00" || $0 == "q=0.000" }
        return !zero
    }
    return false
}
