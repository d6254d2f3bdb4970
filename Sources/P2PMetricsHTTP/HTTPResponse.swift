/// The status codes the daemon sends.
public enum HTTPStatus: Int, Sendable, CaseIterable {
    case ok = 200
    case badRequest = 400
    case notFound = 404
    case methodNotAllowed = 405
    case requestTimeout = 408
    case lengthRequired = 411
    case contentTooLarge = 413
    case unsupportedMediaType = 415
    case requestHeaderFieldsTooLarge = 431
    case serviceUnavailable = 503
    case httpVersionNotSupported = 505

    public var reason: String {
        switch self {
        case .ok: return "OK"
        case .badRequest: return "Bad Request"
        case .notFound: return "Not Found"
        case .methodNotAllowed: return "Method Not Allowed"
        case .requestTimeout: return "Request Timeout"
        case .lengthRequired: return "Length Required"
        case .contentTooLarge: return "Content Too Large"
        case .unsupportedMediaType: return "Unsupported Media Type"
        case .requestHeaderFieldsTooLarge: return "Request Header Fields Too Large"
        case .serviceUnavailable: return "Service Unavailable"
        case .httpVersionNotSupported: return "HTTP Version Not Supported"
        }
    }
}

/// What the daemon does with a request: the routing table of its tiny HTTP surface.
public enum HTTPRoute: Sendable, Equatable {
    case metrics
    case health
    case index
    case notFound
    case methodNotAllowed

    /// `GET`/`HEAD` of `/metrics`, `/-/healthy` or `/`; anything else is refused. Nothing a scraper
    /// sends can change the daemon's state.
    public init(_ head: HTTPRequestHead) {
        let route: HTTPRoute
        switch head.path {
        case "/metrics": route = .metrics
        case "/-/healthy", "/healthz": route = .health
        case "/": route = .index
        default: route = .notFound
        }
        if route != .notFound && head.method != "GET" && head.method != "HEAD" {
            self = .methodNotAllowed
        } else {
            self = route
        }
    }
}

/// Builds response heads.
public enum HTTPResponseHead {
    public enum Framing: Sendable {
        case contentLength(Int)
        case chunked
        /// HTTP/1.0 without a length: the body ends when the connection closes.
        case untilClose
    }

    public static func make(
        _ status: HTTPStatus, minorVersion: Int, keepAlive: Bool, contentType: String?, framing: Framing,
        extraHeaders: [(String, String)] = []
    ) -> [UInt8] {
        var s = "HTTP/1.\(minorVersion) \(status.rawValue) \(status.reason)\r\n"
        if let contentType { s += "Content-Type: \(contentType)\r\n" }
        switch framing {
        case .contentLength(let n): s += "Content-Length: \(n)\r\n"
        case .chunked: s += "Transfer-Encoding: chunked\r\n"
        case .untilClose: break
        }
        for (name, value) in extraHeaders { s += "\(name): \(value)\r\n" }
        if !keepAlive {
            s += "Connection: close\r\n"
        } else if minorVersion == 0 {
            s += "Connection: keep-alive\r\n"
        }
        s += "\r\n"
        return Array(s.utf8)
    }

    /// A complete small response with a plain-text body.
    public static func simple(
        _ status: HTTPStatus, body: String, minorVersion: Int, keepAlive: Bool, includeBody: Bool = true,
        extraHeaders: [(String, String)] = []
    ) -> [UInt8] {
        let bodyBytes = Array(body.utf8)
        var out = make(status, minorVersion: minorVersion, keepAlive: keepAlive,
                       contentType: "text/plain; charset=utf-8", framing: .contentLength(bodyBytes.count),
                       extraHeaders: extraHeaders)
        if includeBody { out += bodyBytes }
        return out
    }
}
