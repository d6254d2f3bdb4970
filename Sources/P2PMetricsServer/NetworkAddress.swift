import Glibc

/// A listening address (`--listen`, `--udp`), parsed and resolved once, before anything is bound.
///
/// Forms: `HOST:PORT` with a name (`localhost`, resolved with getaddrinfo: its first IPv4
/// address, else its first IPv6 one) or a numeric IPv4 address; `[IPV6]:PORT`; `:PORT` for every
/// address (IPv6 and IPv4 when the host has IPv6, else every IPv4 address).
public struct NetworkAddress: Sendable, CustomStringConvertible {
    /// The address as it was written.
    public let description: String
    /// The resolved `sockaddr_in` or `sockaddr_in6`, as bytes.
    private let socketAddress: [UInt8]

    /// Why an address was refused, as one phrase.
    public struct Invalid: Error, Sendable {
        public let reason: String
    }

    public init(parsing text: String) throws(Invalid) {
        description = text
        let form = "expected HOST:PORT, [IPV6]:PORT or :PORT"
        let host: String
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[close...].hasPrefix("]:") else { throw Invalid(reason: form) }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = text[text.index(close, offsetBy: 2)...]
            guard host.contains(":") else { throw Invalid(reason: "only an IPv6 address goes in brackets") }
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw Invalid(reason: form) }
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
            if host.contains(":") {
                throw Invalid(reason: "an IPv6 address must be in brackets, e.g. [\(host)]:\(portText)")
            }
        }
        guard !portText.isEmpty, portText.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let port = UInt16(portText) else {
            throw Invalid(reason: "the port must be a number from 0 to 65535")
        }
        socketAddress = try Self.resolve(host, port: port)
    }

    /// Calls `body` with the resolved address and its length.
    public func withSocketAddress<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        socketAddress.withUnsafeBytes { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
        }
    }

    private static func resolve(_ host: String, port: UInt16) throws(Invalid) -> [UInt8] {
        if host.isEmpty {
            let v6 = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
            if v6 >= 0 {
                close(v6)
                var any = sockaddr_in6()
                any.sin6_family = sa_family_t(AF_INET6)
                any.sin6_port = port.bigEndian
                any.sin6_addr = in6addr_any
                return withUnsafeBytes(of: any) { Array($0) }
            }
            var any = sockaddr_in()
            any.sin_family = sa_family_t(AF_INET)
            any.sin_port = port.bigEndian
            return withUnsafeBytes(of: any) { Array($0) }
        }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &list)
        guard rc == 0, let list else {
            throw Invalid(reason: "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var candidates: [UnsafeMutablePointer<addrinfo>] = []
        var next: UnsafeMutablePointer<addrinfo>? = list
        while let entry = next {
            candidates.append(entry)
            next = entry.pointee.ai_next
        }
        let chosen = candidates.first { $0.pointee.ai_family == AF_INET } ?? candidates.first { $0.pointee.ai_family == AF_INET6 }
        guard let chosen, let address = chosen.pointee.ai_addr else {
            throw Invalid(reason: "cannot resolve \(host): no IPv4 or IPv6 address")
        }
        if chosen.pointee.ai_family == AF_INET {
            var v4 = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
            v4.sin_port = port.bigEndian
            return withUnsafeBytes(of: v4) { Array($0) }
        }
        var v6 = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }
        v6.sin6_port = port.bigEndian
        return withUnsafeBytes(of: v6) { Array($0) }
    }
}
