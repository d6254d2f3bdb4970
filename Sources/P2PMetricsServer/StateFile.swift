import CZlib
import Glibc
import P2PMetricsStore

/// The counter snapshot on disk: written atomically at shutdown, consumed at start.
///
/// Layout: the 8 bytes `P2PMSNP1`, the payload's length (UInt64 LE) and CRC-32 (UInt32 LE), then
/// the payload: records of a UInt32 LE length and one wire-protocol datagram. A file that fails
/// any check is set aside (`.corrupt`) and the daemon starts empty. A restored file is removed
/// before its totals are applied, so that after a crash (no new snapshot) counters start from
/// zero — a plain reset to Prometheus — instead of going back to older totals, which `rate()`
/// would read as a burst. A path that is not a regular file, or a directory the daemon cannot
/// write (it could neither consume nor save), refuses the start.
enum StateFile {
    static let magic: [UInt8] = Array("P2PMSNP1".utf8)

    /// Checks, before anything is bound, that `path` is absent or a regular file (a final symbolic
    /// link is refused, never followed) and that its directory takes a new file. Throws one line.
    static func checkUsable(_ path: String) throws {
        do {
            _ = try RegularFile.check(path, followSymlinks: false)
        } catch {
            throw DaemonError("state file \(path): \(error.reason)")
        }
        switch createTemporary(beside: path) {
        case .success(let (fd, name)):
            close(fd)
            unlink(name)
        case .failure(let failure):
            let directory = parentDirectory(of: path)
            throw DaemonError("state file \(path): cannot write in its directory \(directory.isEmpty ? "." : directory) (\(failure.reason))")
        }
    }

    /// Writes `datagrams` to `path` through a new temporary file in the same directory (created
    /// with O_EXCL|O_NOFOLLOW under a random name: a planted file or link is never written
    /// through), fsync and rename. Returns an error line, or nil.
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

        let fd: Int32
        let temporary: String
        switch createTemporary(beside: path) {
        case .success(let created): (fd, temporary) = created
        case .failure(let failure): return "cannot create a temporary file beside \(path): \(failure.reason)"
        }
        for record in [head] + datagrams.lazy.flatMap({ [prefix($0), $0] }) {
            var offset = 0
            while offset < record.count {
                let n = record.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    let reason = lastError()
                    close(fd)
                    unlink(temporary)
                    return "cannot write \(temporary): \(reason)"
                }
                offset += n
            }
        }
        guard fsync(fd) == 0, close(fd) == 0 else { unlink(temporary); return "cannot sync \(temporary)" }
        guard rename(temporary, path) == 0 else {
            let reason = lastError()
            unlink(temporary)
            return "cannot rename \(temporary): \(reason)"
        }
        let directory = parentDirectory(of: path)
        let dirFD = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
        return nil
    }

    struct Failure: Error { let reason: String }

    /// A new file beside `path` (same directory, so the rename is atomic), created exclusively
    /// under a random name without following links; its descriptor and name.
    private static func createTemporary(beside path: String) -> Result<(Int32, String), Failure> {
        for _ in 0..<8 {
            let name = "\(path).tmp-\(String(UInt64.random(in: 1...UInt64.max), radix: 36))"
            let fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd >= 0 { return .success((fd, name)) }
            if errno != EEXIST { return .failure(Failure(reason: lastError())) }
        }
        return .failure(Failure(reason: String(cString: strerror(EEXIST))))
    }

    enum LoadResult {
        case absent
        /// Samples restored, and samples refused by the current configuration, by reason.
        case restored(samples: UInt64, refused: [(reason: String, count: UInt64)])
        case refused(String)
    }

    /// Reads `path` into `store` and removes it; a damaged file is renamed `path.corrupt`.
    /// Throws (one line) when the path is not a regular file or the file cannot be removed: its
    /// totals are then not applied, since a crash would bring them back.
    static func load(from path: String, into store: inout MetricStore) throws -> LoadResult {
        let file: [UInt8]
        do {
            file = try RegularFile.read(path, followSymlinks: false)
        } catch {
            if error.absent { return .absent }
            throw DaemonError("state file \(path): \(error.reason)")
        }
        guard let datagrams = parse(file) else {
            rename(path, path + ".corrupt")
            return .refused("damaged (set aside as \(path).corrupt)")
        }
        // Validate everything before applying anything: restore all or nothing. The probe also
        // counts what the current configuration refuses (a stricter limit, a changed type).
        var probe = MetricStore(configuration: store.configuration)
        for d in datagrams where d.withUnsafeBytes({ probe.ingest($0) }) != nil {
            rename(path, path + ".corrupt")
            return .refused("holds an invalid datagram (set aside as \(path).corrupt)")
        }
        guard unlink(path) == 0 else {
            throw DaemonError("state file \(path): cannot remove it after reading (\(lastError())); a crash would bring back its totals")
        }
        for d in datagrams { _ = d.withUnsafeBytes { store.restore($0) } }
        let refused = SampleRejection.allCases.map { ($0.rawValue, probe.statistics.rejected($0)) }.filter { $0.1 > 0 }
        return .restored(samples: probe.statistics.samplesApplied, refused: refused.sorted { $0.0 < $1.0 })
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
