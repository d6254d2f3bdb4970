import CPidfd
import CLibUV
import Glibc

/// Watches sending processes through pidfds polled by the loop, and reports each exit once.
final class ProcessWatcher {
    private let loop: UnsafeMutablePointer<uv_loop_t>
    private let exited: (Int32) -> Void
    private var watches: [Int32: Watch] = [:]

    private final class Watch {
        let pid: Int32
        let fd: Int32
        let poll: UnsafeMutablePointer<uv_poll_t>
        unowned let owner: ProcessWatcher

        init(pid: Int32, fd: Int32, poll: UnsafeMutablePointer<uv_poll_t>, owner: ProcessWatcher) {
            self.pid = pid
            self.fd = fd
            self.poll = poll
            self.owner = owner
        }
    }

    init(loop: UnsafeMutablePointer<uv_loop_t>, exited: @escaping (Int32) -> Void) {
        self.loop = loop
        self.exited = exited
    }

    var count: Int { watches.count }

    /// Starts watching `pid`; a process that is already gone is reported at once.
    func watch(_ pid: Int32) {
        guard watches[pid] == nil else { return }
        let fd = p2pmd_pidfd_open(pid)
        guard fd >= 0 else {
            if fd == -ESRCH { exited(pid) }
            return
        }
        let poll = UnsafeMutablePointer<uv_poll_t>.allocate(capacity: 1)
        guard uv_poll_init(loop, poll, fd) == 0 else {
            poll.deallocate()
            close(fd)
            return
        }
        let watch = Watch(pid: pid, fd: fd, poll: poll, owner: self)
        watches[pid] = watch
        poll.pointee.data = Unmanaged.passUnretained(watch).toOpaque()
        uv_poll_start(poll, Int32(UV_READABLE.rawValue)) { handle, _, _ in
            guard let data = handle?.pointee.data else { return }
            let watch = Unmanaged<Watch>.fromOpaque(data).takeUnretainedValue()
            watch.owner.finish(watch.pid)
        }
    }

    private func finish(_ pid: Int32) {
        guard let watch = watches.removeValue(forKey: pid) else { return }
        stop(watch)
        exited(pid)
    }

    private func stop(_ watch: Watch) {
        uv_poll_stop(watch.poll)
        let fd = watch.fd
        watch.poll.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { closeAndFree($0) }
        close(fd)
    }

    func closeAll() {
        for watch in watches.values { stop(watch) }
        watches.removeAll()
    }
}
