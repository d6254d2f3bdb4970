import Glibc
import P2PMetricsStore

/// The supplementary groups of a sending process, which `SCM_CREDENTIALS` does not carry, read
/// from the `Groups:` line of `/proc/PID/status` and kept in a bounded cache.
///
/// Race, documented: the pid is the kernel's, but the process may have exited by the time its
/// datagram is read, and its pid may even have been reused. A sender that is gone has no groups
/// (its datagram is judged by uid and primary gid alone). A reused pid is accepted only when the
/// new process has the credential's uid and gid among its `Uid:`/`Gid:` ids, so another user's
/// process never lends its groups; a process of the same uid and gid can. Cached answers live
/// `lifetimeSeconds`, so a group removed from a running process is honoured that much later.
struct SupplementaryGroups {
    static let capacity = 1_024
    static let lifetimeSeconds: UInt32 = 2

    private struct Key: Hashable {
        let pid: Int32
        let uid: UInt32
        let gid: UInt32
    }

    private var cache: [Key: (groups: [UInt32], until: UInt32)] = [:]

    /// `sender` with its supplementary groups filled in; `now` in seconds (monotonic).
    mutating func resolve(_ sender: SenderCredentials, now: UInt32) -> SenderCredentials {
        guard sender.pid > 0 else { return sender }
        let key = Key(pid: sender.pid, uid: sender.uid, gid: sender.gid)
        var resolved = sender
        if let hit = cache[key], hit.until >= now {
            resolved.supplementaryGroups = hit.groups
            return resolved
        }
        let groups = Self.read(sender)
        if cache.count >= Self.capacity { cache.removeAll(keepingCapacity: true) }
        cache[key] = (groups, now &+ Self.lifetimeSeconds)
        resolved.supplementaryGroups = groups
        return resolved
    }

    /// The groups of `sender.pid` if that process still has the credential's uid and gid.
    static func read(_ sender: SenderCredentials) -> [UInt32] {
        let fd = open("/proc/\(sender.pid)/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 65_536)
        let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
        guard n > 0 else { return [] }
        var uids: [UInt32] = []
        var gids: [UInt32] = []
        var groups: [UInt32] = []
        for line in String(decoding: bytes[0..<n], as: UTF8.self).split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let label = fields.first else { continue }
            let ids = fields.dropFirst().compactMap { UInt32($0) }
            switch label {
            case "Uid:": uids = ids
            case "Gid:": gids = ids
            case "Groups:": groups = ids
            default: continue
            }
        }
        guard uids.contains(sender.uid), gids.contains(sender.gid) else { return [] }
        return groups
    }
}
