import CDatagramSocket
import Glibc

/// The ingest socket the daemon binds itself (not systemd's): its directory made safe, the path
/// never taken from a live owner, and its file removed at exit only if it is still this one.
struct IngestSocketFile {
    let path: String
    let fd: Int32
    private let device: UInt64
    private let inode: UInt64

    /// Binds `path` with file mode `mode`. With `privateDirectory` (the per-user default path),
    /// the parent directory is created 0700 (0755 for root, whose clients are other users) and
    /// refused unless it is a real directory owned by the user and writable by nobody else.
    ///
    /// An existing socket file is replaced only when it is provably stale: its probe is refused
    /// (`ECONNREFUSED`, nobody bound) and it belongs to the user. Any other probe result (a live
    /// socket, `EACCES` on another user's socket...) refuses to start: never a takeover on doubt.
    static func bind(path: String, mode: UInt32, privateDirectory: Bool) throws -> IngestSocketFile {
        let directory = parentDirectory(of: path)
        if privateDirectory {
            try preparePrivateDirectory(directory)
        } else {
            if !directory.isEmpty, !fileExists(directory) {
                guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
                    throw DaemonError("cannot create \(directory) for the ingest socket: \(lastError())")
                }
            }
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw DaemonError("cannot bind the ingest socket \(path): a file that is not a socket is in the way")
            }
            let probe = p2pmd_probe_datagram(path)
            if probe == 0 { throw DaemonError("cannot bind the ingest socket \(path): another process is serving it") }
            guard probe == -ECONNREFUSED, st.st_uid == geteuid() else {
                let reason = probe == -ECONNREFUSED ? "owned by uid \(st.st_uid)" : "probe: \(String(cString: strerror(-probe)))"
                throw DaemonError(
                    "cannot bind the ingest socket \(path): cannot tell whether another process serves it (\(reason)); remove it if it is stale")
            }
            unlink(path)
        }
        let fd = p2pmd_bind_datagram(path, mode)
        guard fd >= 0 else {
            let reason = fd == -EADDRINUSE ? "another process is serving it" : String(cString: strerror(-fd))
            throw DaemonError("cannot bind the ingest socket \(path): \(reason)")
        }
        guard lstat(path, &st) == 0 else {
            close(fd)
            throw DaemonError("cannot bind the ingest socket \(path): \(lastError())")
        }
        // Once bound (a failure stays one line): a directory anyone may unlink in is worth a warning.
        var parent = stat()
        if stat(directory.isEmpty ? "." : directory, &parent) == 0, parent.st_mode & 0o002 != 0, parent.st_mode & S_ISVTX == 0 {
            writeStandardError(
                "p2pmetricsd: warning: \(directory) is writable by everyone without the sticky bit: any local user can replace the ingest socket")
        }
        return IngestSocketFile(path: path, fd: fd, device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// Removes the socket file, unless another socket has replaced it meanwhile.
    func remove() {
        var st = stat()
        guard lstat(path, &st) == 0, UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode else { return }
        unlink(path)
    }

    private static func preparePrivateDirectory(_ directory: String) throws {
        let owner = geteuid()
        if mkdir(directory, owner == 0 ? 0o755 : 0o700) != 0 && errno != EEXIST {
            throw DaemonError("cannot create socket directory \(directory): \(lastError())")
        }
        var st = stat()
        guard lstat(directory, &st) == 0 else { throw DaemonError("cannot use socket directory \(directory): \(lastError())") }
        let refusal: String? =
            if st.st_mode & S_IFMT == S_IFLNK { "a symbolic link, not a directory" }
            else if st.st_mode & S_IFMT != S_IFDIR { "not a directory" }
            else if st.st_uid != owner { "owned by uid \(st.st_uid), not \(owner)" }
            else if st.st_mode & 0o022 != 0 { "writable by group or others (mode 0\(String(st.st_mode & 0o777, radix: 8)))" }
            else { nil }
        if let refusal { throw DaemonError("refusing socket directory \(directory): \(refusal)") }
    }
}

/// The directory part of `path` ("" for a bare name).
func parentDirectory(of path: String) -> String {
    path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
}

private func fileExists(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0
}

/// `strerror(errno)` as a String.
func lastError() -> String { String(cString: strerror(errno)) }
