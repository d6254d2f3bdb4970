/// Bounds on what a client may send before the daemon gives up on it.
public struct HTTPLimits: Sendable {
    /// Request line plus headers, in bytes.
    public var maxHeadBytes = 8_192
    public var maxHeaderCount = 64

    public init(maxHeadBytes: Int = 8_192, maxHeaderCount: Int = 64) {
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaderCount = maxHeaderCount
    }
}

/// The parts of a request head the daemon acts on.
public struct HTTPRequestHead: Sendable, Equatable {
    public var method: String
    /// The path, without the query string.
    public var path: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: Int
    /// Whether the connection stays open after the response.
    public var keepAlive: Bool
    /// True when the request announces a body (`Content-Length` > 0 or `Transfer-Encoding`).
    /// The daemon never reads request bodies, so it answers and then closes such connections.
    public var hasBody: Bool
    public var accept: String?
    public var acceptEncoding: String?
    /// The announced body length (`Content-Length`), for the one route that reads a body (OTLP).
    public var contentLength: UInt64? = nil
    /// `Transfer-Encoding` was present (a body of unannounced length).
    public var chunked = false
    public var contentType: String? = nil
    public var contentEncoding: String? = nil
}

/// Why a request head was refused; each maps to a status code and ends the connection.
public enum HTTPRequestError: Error, Sendable, Equatable {
    case malformed
    case headTooLarge
    case tooManyHeaders
    case unsupportedVersion

    public var status: HTTPStatus {
        switch self {
        case .malformed: return .badRequest
        case .headTooLarge, .tooManyHeaders: return .requestHeaderFieldsTooLarge
        case .unsupportedVersion: return .httpVersionNotSupported
        }
    }
}

public enum HTTPParseResult: Sendable, Equatable {
    /// More bytes are needed (and allowed).
    case incomplete
    /// A complete head, and how many bytes of the input it took.
    case request(HTTPRequestHead, consumed: Int)
    case failure(HTTPRequestError)
}

/// A strict HTTP/1.x request-head parser (RFC 9112) over bytes, with hard limits.
///
/// It accepts only what a scraper needs: an origin-form target, HTTP/1.0 or 1.1, CRLF line ends,
/// no obsolete line folding. It never allocates more than the limits allow.
public enum HTTPRequestParser {
    public static func parse(_ bytes: UnsafeRawBufferPointer, limits: HTTPLimits = HTTPLimits()) -> HTTPParseResult {
        // Find the blank line that ends the head, within the size limit.
        let searchEnd = min(bytes.count, limits.maxHeadBytes)
        var headEnd = -1
        var i = 3
        while i < searchEnd {
            if bytes[i] == 0x0A && bytes[i - 1] == 0x0D && bytes[i - 2] == 0x0A && bytes[i - 3] == 0x0D {
                headEnd = i + 1
                break
            }
            i += 1
        }
        if headEnd < 0 {
            if bytes.count >= limits.maxHeadBytes { return .failure(.headTooLarge) }
            // Refuse obvious garbage early instead of waiting for 8 KiB of it.
            if let first = bytes.first, !isTokenByte(first) { return .failure(.malformed) }
            return .incomplete
        }

        var lines = LineReader(bytes: UnsafeRawBufferPointer(rebasing: bytes[0..<headEnd - 2]))
        guard let requestLine = lines.next() else { return .failure(.malformed) }
        let parts = requestLine.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isTokenByte) else { return .failure(.malformed) }
        let target = parts[1]
        guard let firstTargetByte = target.first, firstTargetByte == 0x2F,
              target.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return .failure(.malformed) }
        let version = parts[2]
        let minor: Int
        if version.elementsEqual("HTTP/1.1".utf8) {
            minor = 1
        } else if version.elementsEqual("HTTP/1.0".utf8) {
            minor = 0
        } else if version.starts(with: "HTTP/".utf8) {
            return .failure(.unsupportedVersion)
        } else {
            return .failure(.malformed)
        }
        let path = target.split(separator: 0x3F, maxSplits: 1, omittingEmptySubsequences: false).first ?? target[...]

        var head = HTTPRequestHead(
            method: String(decoding: parts[0], as: UTF8.self), path: String(decoding: path, as: UTF8.self),
            minorVersion: minor, keepAlive: minor == 1, hasBody: false, accept: nil, acceptEncoding: nil)
        var headerCount = 0
        var sawHost = false
        var connectionTokens: [String] = []
        while let line = lines.next() {
            headerCount += 1
            guard headerCount <= limits.maxHeaderCount else { return .failure(.tooManyHeaders) }
            guard let colon = line.firstIndex(of: 0x3A) else { return .failure(.malformed) }
            let name = line[line.startIndex..<colon]
            guard !name.isEmpty, name.allSatisfy(isTokenByte) else { return .failure(.malformed) }
            let rawValue = line[(colon + 1)...]
            guard rawValue.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else { return .failure(.malformed) }
            let value = String(decoding: trimmed(rawValue), as: UTF8.self)
            switch String(decoding: name, as: UTF8.self).lowercased() {
            case "host":
                guard !sawHost else { return .failure(.malformed) }
                sawHost = true
            case "connection":
                connectionTokens += value.lowercased().split(separator: ",").map { $0.trimmingSpaces() }
            case "content-length":
                guard let length = UInt64(value) else { return .failure(.malformed) }
                if length > 0 { head.hasBody = true }
                guard head.contentLength == nil || head.contentLength == length else { return .failure(.malformed) }
                head.contentLength = length
            case "transfer-encoding":
                head.hasBody = true
                head.chunked = true
            case "content-type":
                head.contentType = value
            case "content-encoding":
                head.contentEncoding = value
            case "accept":
                head.accept = value
            case "accept-encoding":
                head.acceptEncoding = value
            default:
                break
            }
        }
        if minor == 1 && !sawHost { return .failure(.malformed) }
        if connectionTokens.contains("close") {
            head.keepAlive = false
        } else if connectionTokens.contains("keep-alive") {
            head.keepAlive = true
        }
        return .request(head, consumed: headEnd)
    }

    /// tchar of RFC 9110.
    @inline(__always)
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: return true
        default: return false
        }
    }

    private static func trimmed(_ s: Slice<UnsafeRawBufferPointer>) -> Slice<UnsafeRawBufferPointer> {
        var s = s
        while let f = s.first, f == 0x20 || f == 0x09 { s = s.dropFirst() }
        while let l = s.last, l == 0x20 || l == 0x09 { s = s.dropLast() }
        return s
    }
}

/// Splits a head into CRLF-terminated lines; a bare LF or CR inside a line makes it malformed
/// (reported as a line containing it, which the token checks then refuse).
private struct LineReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    mutating func next() -> Slice<UnsafeRawBufferPointer>? {
        guard offset < bytes.count else { return nil }
        var i = offset
        while i + 1 < bytes.count, !(bytes[i] == 0x0D && bytes[i + 1] == 0x0A) { i += 1 }
        let end = i + 1 < bytes.count ? i : bytes.count
        defer { offset = end + 2 }
        return bytes[offset..<end]
    }
}

extension Substring {
    func trimmingSpaces() -> String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}
