#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The client's Unix datagram socket to the sidecar (PROTOCOL.md §4).
///
/// Not thread-safe on its own: it lives inside the client's mutex-protected state. A send waits
/// for room only up to the wait it is given; an absent sidecar is retried at most once per
/// reconnect interval (monotonic clock), exactly like the C client's `reconnect()`.
struct SidecarSocket {
    private var fd: Int32 = -1
    private let path: [UInt8]
    /// Set when the path cannot be used at all (empty, or too long for `sockaddr_un`).
    private let pathError: Int32
    private var connected = false
    private var lastTry: UInt64?
    private(set) var lastError: Int32 = 0
    private let reconnectIntervalNanos: UInt64
    let sendTimeoutNanos: UInt64?
    /// Sends that found the sidecar's queue full and waited for room.
    private(set) var waits: UInt64 = 0

    init(path: String, reconnectInterval: Duration, sendTimeout: Duration?) {
        self.path = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        pathError = self.path.isEmpty ? EINVAL : (self.path.count >= capacity || self.path.contains(0) ? ENAMETOOLONG : 0)
        reconnectIntervalNanos = Self.nanoseconds(reconnectInterval)
        sendTimeoutNanos = sendTimeout.map(Self.nanoseconds)
    }

    static func nanoseconds(_ d: Duration) -> UInt64 {
        let c = d.components
        guard c.seconds >= 0 else { return 0 }
        return UInt64(c.seconds) &* 1_000_000_000 &+ UInt64(c.attoseconds / 1_000_000_000)
    }

    static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// (Re)connects, at most once per reconnect interval. Returns 0 or an errno value.
    mutating func reconnect() -> Int32 {
        if pathError != 0 {
            lastError = pathError
            return pathError
        }
        let now = Self.monotonicNanos()
        if let last = lastTry, now &- last < reconnectIntervalNanos {
            return lastError != 0 ? lastError : ECONNREFUSED
        }
        lastTry = now
        if fd < 0 {
            fd = Self.makeSocket()
            if fd < 0 {
                lastError = errno
                return lastError
            }
        }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            path.withUnsafeBytes { dst.copyMemory(from: $0) }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc == 0 {
            connected = true
            lastError = 0
            return 0
        }
        lastError = errno
        return lastError
    }

    private static func makeSocket() -> Int32 {
        #if os(Linux)
        return socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_DGRAM, 0)
        if fd >= 0 {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
            var one: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        return fd
        #endif
    }

    private static func peerGone(_ e: Int32) -> Bool {
        e == ECONNREFUSED || e == ENOTCONN || e == ENOENT || e == ECONNRESET || e == EPIPE || e == EDESTADDRREQ
    }

    /// Sends one datagram. Returns 0, `EAGAIN` when the sidecar's queue is full (after waiting up
    /// to the send timeout, if any), or another errno value when the sidecar is absent.
    mutating func send(_ datagram: UnsafeRawBufferPointer) -> Int32 {
        send(datagram, waitNanos: sendTimeoutNanos)
    }

    /// Sends one datagram, waiting up to `waitNanos` (`nil` or 0: not at all) for room in the
    /// sidecar's queue. Counts the sends that had to wait in ``waits``.
    mutating func send(_ datagram: UnsafeRawBufferPointer, waitNanos: UInt64?) -> Int32 {
        if !connected {
            let e = reconnect()
            if e != 0 { return e }
        }
        #if os(Linux)
        let flags = Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)
        #else
        let flags = MSG_DONTWAIT
        #endif
        var retried = false
        var deadline: UInt64?
        while true {
            #if os(Linux)
            let n = Glibc.send(fd, datagram.baseAddress, datagram.count, flags)
            #else
            let n = Darwin.send(fd, datagram.baseAddress, datagram.count, flags)
            #endif
            if n >= 0 { return 0 }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK {
                // Wait for room in the sidecar's queue, up to the timeout.
                guard let timeout = waitNanos, timeout > 0 else { return EAGAIN }
                let now = Self.monotonicNanos()
                if deadline == nil { waits &+= 1 }
                let end = deadline ?? now &+ timeout
                deadline = end
                guard now < end else { return EAGAIN }
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let ms = Int32(min((end - now + 999_999) / 1_000_000, 1_000))
                _ = poll(&pfd, 1, ms)
                continue
            }
            guard Self.peerGone(e) else {
                lastError = e
                return e
            }
            // The sidecar went away (or restarted): try its socket path again.
            connected = false
            lastError = e
            if retried || reconnect() != 0 { return e }
            retried = true
        }
    }

    mutating func close() {
        if fd >= 0 {
            #if os(Linux)
            _ = Glibc.close(fd)
            #else
            _ = Darwin.close(fd)
            #endif
        }
        fd = -1
        connected = false
    }
}
