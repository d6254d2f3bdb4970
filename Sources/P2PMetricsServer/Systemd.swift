import CDatagramSocket
import CSystemd
import Glibc

/// The sockets systemd passed by socket activation (`LISTEN_FDS`), by role.
struct ActivatedSockets {
    var ingest: Int32?
    var http: Int32?

    /// Takes the sockets from the environment and unsets it. Sockets are matched by
    /// `FileDescriptorName=` (`ingest`, `http`); unnamed ones by type (datagram → ingest,
    /// stream → http).
    static func take() throws -> ActivatedSockets {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count >= 0 else { throw DaemonError("cannot read LISTEN_FDS: \(String(cString: strerror(-count)))") }
        defer {
            if let names {
                for i in 0..<Int(count) { free(names[i]) }
                free(names)
            }
        }
        var sockets = ActivatedSockets()
        for i in 0..<Int(count) {
            let fd = SD_LISTEN_FDS_START + Int32(i)
            let name = names?[i].map { String(cString: $0) } ?? "unknown"
            let type = p2pmd_socket_type(fd)
            switch name {
            case "ingest": sockets.ingest = fd
            case "http": sockets.http = fd
            default:
                if type == Int32(SOCK_DGRAM.rawValue), sockets.ingest == nil {
                    sockets.ingest = fd
                } else if type == Int32(SOCK_STREAM.rawValue), sockets.http == nil {
                    sockets.http = fd
                } else {
                    throw DaemonError("systemd passed socket \(fd) named '\(name)' that is neither 'ingest' nor 'http'")
                }
            }
        }
        if let fd = sockets.ingest, p2pmd_socket_type(fd) != Int32(SOCK_DGRAM.rawValue) {
            throw DaemonError("the socket named 'ingest' (fd \(fd)) is not a datagram socket")
        }
        if let fd = sockets.http, p2pmd_socket_type(fd) != Int32(SOCK_STREAM.rawValue) {
            throw DaemonError("the socket named 'http' (fd \(fd)) is not a stream socket")
        }
        return sockets
    }
}

/// sd_notify messages; all are no-ops when not run by systemd.
enum ServiceManager {
    static func notify(_ message: String) {
        _ = sd_notify(0, message)
    }

    /// Half the watchdog interval systemd asked for, in milliseconds, or nil.
    static func watchdogPingIntervalMilliseconds() -> UInt64? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return max(usec / 2_000, 1)
    }
}
