import CZlib
import Glibc
import P2PMetricsStore

/// The counter snapshot on disk: written atomically at shutdown, consumed at start.
///
/// Layout: the 8 bytes `P2PMSNP1`, the payload's length (UInt64 LE) and CRC-32 (UInt32 LE), then
/// the payload: records of a UInt32 LE length and one wire-protocol datagram. A file that fails
/// any check is set aside (`.corrupt`) and the daemon starts empty. A restored file is removed, so
/// that after a crash (no new snapshot) counters start from zero — a plain reset to Prometheus —
/// instead of going back to older totals, which `rate()` would read as a burst.
enum StateFile {
    static let magic: [UInt8] = Array("P2PMSNP1".utf8)

    /// Writes `datagrams` to `path` through a temporary file, fsync and rename. Returns an error
    /// line, or nil.
    static func save(_ datagrams: [[UInt8]], to path: String) -> String? {
        // Written record by record, the CRC computed over the datagrams in place: at shutdown the
        // snapshot never costs more memory than the datagrams themselves (MemoryMax, README "Memory").
        func prefix(_ d: [UInt8]) -> [UInt8] { withUnsafeBytes(of: UInt32(d.count).littleEndian) { Array($0) } }
        var crc = crc32(0, nil, 0)
        for d in datagrams {
            for part in [prefix(d), d] { crc = part.withUnsafeBufferPointer { crc32(crc, $0.baseAddress, UInt32($0.count)) } }
        }
        var head = magic
        withUnsafeBytes(of: UInt64(datagrams.reduce(0) { $0 + 4 + $1.count }).littleEndian) { head.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: crc).littleEndian) { head.append(contentsOf: $0) }

        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return "cannot write \(temporary): \(String(cString: strerror(errno)))" }
        for record in [head] + datagrams.lazy.flatMap({ [prefix($0), $0] }) {
            var offset = 0
            while offset < record.count {
                let n = record.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    let reason = String(cString: strerror(errno))
                    close(fd)
                    unlink(temporary)
                    return "cannot write \(temporary): \(reason)"
                }
                offset += n
            }
        }
        guard fsync(fd) == 0, close(fd) == 0 else { unlink(temporary); return "cannot sync \(temporary)" }
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            return "cannot rename \(temporary): \(reason)"
        }
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let dirFD = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
        return nil
    }

    enum LoadResult {
        case absent
        case restored(datagrams: Int)
        case refused(String)
    }

    /// Reads `path` into `store` and removes it; a damaged file is renamed `path.corrupt`.
    static func load(from path: String, into store: inout MetricStore) -> LoadResult {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno == ENOENT ? .absent : .refused(String(cString: strerror(errno))) }
        var file: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            file += chunk[0..<n]
            if file.count > 1 << 30 { break }
        }
        close(fd)
        guard let datagrams = parse(file) else {
            rename(path, path + ".corrupt")
            return .refused("damaged (set aside as \(path).corrupt)")
        }
        // Validate everything before applying anything: restore all or nothing.
        var probe = MetricStore(configuration: store.configuration)
        for d in datagrams where d.withUnsafeBytes({ probe.restore($0) }) != nil {
            rename(path, path + ".corrupt")
            return .refused("holds an invalid datagram (set aside as \(path).corrupt)")
        }
        for d in datagrams { _ = d.withUnsafeBytes { store.restore($0) } }
        unlink(path)
        return .restored(datagrams: datagrams.count)
    }

    static func parse(_ file: [UInt8]) -> [[UInt8]]? {
        let header = magic.count + 12
        guard file.count >= header, Array(file[0..<magic.count]) == magic else { return nil }
        let length = file[magic.count..<magic.count + 8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let crc = file[magic.count + 8..<header].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard length == UInt64(file.count - header) else { return nil }
        let payload = Array(file[header...])
        guard checksum(payload) == crc else { return nil }
        var datagrams: [[UInt8]] = []
        var i = 0
        while i < payload.count {
            guard payload.count - i >= 4 else { return nil }
            let n = Int(payload[i..<i + 4].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            i += 4
            guard n <= payload.count - i else { return nil }
            datagrams.append(Array(payload[i..<i + n]))
            i += n
        }
        return datagrams
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBufferPointer { UInt32(truncatingIfNeeded: crc32(0, $0.baseAddress, UInt32($0.count))) }
    }
}
