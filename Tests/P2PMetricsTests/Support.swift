import Foundation
import P2PMetricsWire
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A stand-in sidecar: an AF_UNIX SOCK_DGRAM socket bound in a temporary folder, capturing the
/// client's datagrams. The path exists only after `bind()`, so a client pointed at it first sees
/// an absent sidecar.
final class CaptureSocket: Sendable {
    let dir: String
    let path: String
    private let fd = Mutex<Int32>(-1)

    init() {
        var template = Array("/tmp/p2pm-swift-XXXXXX".utf8CString)
        let d = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        dir = String(cString: d!)
        path = dir + "/ingest.sock"
    }

    deinit {
        close()
        rmdir(dir)
    }

    func bind() {
        let s = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        precondition(s >= 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in bytes.withUnsafeBytes { dst.copyMemory(from: $0) } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        precondition(rc == 0, "bind \(path): \(errno)")
        fd.withLock { $0 = s }
    }

    /// Debug: the path the fd is bound to now.
    func boundPath() -> String {
        let s = fd.withLock { $0 }
        var addr = sockaddr_un()
        var len = socklen_t(MemoryLayout<sockaddr_un>.size)
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &len) }
        }
        let p = withUnsafeBytes(of: addr.sun_path) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return "fd=\(s) rc=\(rc) path=\(p) mine=\(path)"
    }

    /// Closes and removes the socket (the sidecar goes away).
    func close() {
        fd.withLock { s in
            if s >= 0 { _ = Glibc.close(s) }
            s = -1
        }
        unlink(path)
    }

    /// The next datagram, or nil after `timeoutMs` without one.
    func receive(timeoutMs: Int32 = 2000) -> [UInt8]? {
        let s = fd.withLock { $0 }
        var pfd = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeoutMs) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 70_000)
        let n = buf.withUnsafeMutableBytes { recv(s, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { return nil }
        return Array(buf[..<n])
    }

    /// Every datagram that arrives until none has come for `quietMs`.
    func receiveAll(quietMs: Int32 = 100) -> [[UInt8]] {
        var out: [[UInt8]] = []
        while let d = receive(timeoutMs: quietMs) { out.append(d) }
        return out
    }
}

/// One decoded sample, with its series spelled out.
struct Decoded: Equatable, CustomStringConvertible {
    var kind: SampleKind
    var name: String
    var labels: [String]   // "k=v", in order
    var value: SampleValue

    init(_ kind: SampleKind, _ name: String, _ labels: [String] = [], _ value: SampleValue) {
        self.kind = kind
        self.name = name
        self.labels = labels
        self.value = value
    }

    var description: String { "\(kind) \(name)\(labels) \(value)" }
}

/// A datagram decoded by the daemon's own decoder: its drop report and samples.
struct DecodedDatagram: Equatable {
    var dropped: UInt64
    var samples: [Decoded]
}

func decode(_ bytes: [UInt8]) -> DecodedDatagram? {
    bytes.withUnsafeBytes { raw -> DecodedDatagram? in
        var decoder = DatagramDecoder()
        if let reason = decoder.validate(raw) {
            Issue.record("datagram rejected: \(reason)")
            return nil
        }
        func text(_ r: Range<Int>) -> String { String(decoding: raw[r], as: UTF8.self) }
        var samples: [Decoded] = []
        var cursor = decoder.samples(in: raw)
        while let s = cursor.next() {
            let def = decoder.series[s.series]
            var labels: [String] = []
            var lc = decoder.labels(of: def, in: raw)
            while let (n, v) = lc.next() { labels.append("\(text(n))=\(text(v))") }
            samples.append(Decoded(s.kind, text(def.nameRange), labels, s.value))
        }
        return DecodedDatagram(dropped: UInt64(truncatingIfNeeded: decoder.droppedReported), samples: samples)
    }
}

/// Collects datagrams on a background thread (the daemon's role in the concurrency tests),
/// summing counter adds per series.
final class Collector: Sendable {
    struct State {
        var datagrams = 0
        var dropReports: UInt64 = 0
        var totals: [String: UInt64] = [:]
        var raw: [[UInt8]] = []
        var stop = false
    }
    let capture: CaptureSocket
    let state = Mutex(State())
    private let done = DispatchSemaphore(value: 0)

    init(_ capture: CaptureSocket) {
        self.capture = capture
        Thread.detachNewThread { [self] in
            while !state.withLock({ $0.stop }) {
                guard let d = capture.receive(timeoutMs: 20), let dg = decode(d) else { continue }
                state.withLock { s in
                    s.datagrams += 1
                    s.raw.append(d)
                    s.dropReports += dg.dropped
                    for x in dg.samples {
                        if case .unsigned(let u) = x.value { s.totals[x.labels.joined(separator: ","), default: 0] += u }
                    }
                }
            }
            done.signal()
        }
    }

    /// Stops once nothing arrived for a while.
    func finish() -> State {
        var last = -1
        while true {
            Thread.sleep(forTimeInterval: 0.2)
            let n = state.withLock { $0.datagrams }
            if n == last { break }
            last = n
        }
        state.withLock { $0.stop = true }
        done.wait()
        return state.withLock { $0 }
    }
}
