import Glibc

/// Files the daemon reads (config, state) must be regular files: a FIFO, a device or a directory
/// (and, where links are not followed, a symbolic link) is refused at once with one phrase —
/// never opened blocking, never renamed or replaced.
public enum RegularFile {
    /// Why a file cannot be read, as one phrase (`No such file or directory`,
    /// `not a regular file (a FIFO)`...).
    public struct Refusal: Error, Sendable {
        public let reason: String
        /// The file does not exist.
        public let absent: Bool
    }

    /// Refuses `path` unless it is absent or a regular file (`lstat` when `followSymlinks` is
    /// false); returns whether it exists.
    static func check(_ path: String, followSymlinks: Bool) throws(Refusal) -> Bool {
        var st = stat()
        let rc = followSymlinks ? stat(path, &st) : lstat(path, &st)
        guard rc == 0 else {
            if errno == ENOENT { return false }
            throw Refusal(reason: lastError(), absent: false)
        }
        guard st.st_mode & S_IFMT == S_IFREG else { throw Refusal(reason: notRegular(st.st_mode), absent: false) }
        return true
    }

    /// Reads the whole file (at most `limit` bytes), opened non-blocking and without following a
    /// final symbolic link unless `followSymlinks`, and checked with fstat after opening.
    public static func read(_ path: String, followSymlinks: Bool, limit: Int = 1 << 30) throws(Refusal) -> [UInt8] {
        guard try check(path, followSymlinks: followSymlinks) else {
            throw Refusal(reason: String(cString: strerror(ENOENT)), absent: true)
        }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | (followSymlinks ? 0 : O_NOFOLLOW))
        guard fd >= 0 else {
            let absent = errno == ENOENT
            throw Refusal(reason: errno == ELOOP ? notRegular(S_IFLNK) : lastError(), absent: absent)
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Refusal(reason: lastError(), absent: false) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw Refusal(reason: notRegular(st.st_mode), absent: false) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while bytes.count <= limit {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw Refusal(reason: lastError(), absent: false) }
            if n == 0 { return bytes }
            bytes += chunk[0..<n]
        }
        throw Refusal(reason: "larger than \(limit) bytes", absent: false)
    }

    private static func notRegular(_ mode: mode_t) -> String {
        let kind: String =
            switch mode & S_IFMT {
            case S_IFDIR: "a directory"
            case S_IFIFO: "a FIFO"
            case S_IFCHR: "a character device"
            case S_IFBLK: "a block device"
            case S_IFSOCK: "a socket"
            case S_IFLNK: "a symbolic link"
            default: "of an unknown kind"
            }
        return "not a regular file (\(kind))"
    }
}
