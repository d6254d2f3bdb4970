import CDatagramSocket
import CLibUV
import Glibc
import P2PMetricsStore
import P2PMetricsWire

/// Reads the ingest socket in batches (recvmmsg until EAGAIN) when libuv says it is readable,
/// and hands each datagram to the store.
final class IngestReceiver {
    static let batchSize = 64
    /// Batches per readiness callback before yielding to the rest of the loop (HTTP, timers).
    static let batchesPerWakeup = 32
    /// Datagram bytes per readiness callback before yielding: the store's work per datagram is
    /// linear in its size, so this bounds one turn's ingest work (about a millisecond in a
    /// release build) whatever senders send.
    static let bytesPerWakeup = 64 * 1024
    /// And time: a readiness callback yields after the batch that passes this.
    static let nanosecondsPerWakeup: UInt64 = 2_000_000

    let fd: Int32
    private let poll: UnsafeMutablePointer<uv_poll_t>
    private var slots: UnsafeMutableBufferPointer<p2pmd_datagram>
    private let buffers: UnsafeMutableRawPointer
    private let credentials: Bool
    private let apply: (UnsafeRawBufferPointer, SenderCredentials?) -> Void
    private let refuseTruncated: (Int) -> Void
    /// Mean size of the datagrams of the previous batch: the next batch asks for no more than
    /// the byte budget has room for.
    private var averageDatagramBytes = 256
    /// Called after each readiness callback's batches (the daemon picks up new processes to watch).
    var afterDrain: () -> Void = {}

    init(
        loop: UnsafeMutablePointer<uv_loop_t>, fd: Int32, credentials: Bool,
        apply: @escaping (UnsafeRawBufferPointer, SenderCredentials?) -> Void, refuseTruncated: @escaping (Int) -> Void
    ) throws {
        self.fd = fd
        self.credentials = credentials
        if credentials {
            let rc = p2pmd_enable_credentials(fd)
            guard rc == 0 else { throw DaemonError("cannot enable SO_PASSCRED on the ingest socket: \(String(cString: strerror(-rc)))") }
        }
        self.apply = apply
        self.refuseTruncated = refuseTruncated
        let slotSize = WireFormat.maxDatagramSize
        buffers = UnsafeMutableRawPointer.allocate(byteCount: slotSize * Self.batchSize, alignment: 16)
        slots = .allocate(capacity: Self.batchSize)
        for i in 0..<Self.batchSize {
            slots[i] = p2pmd_datagram(
                buffer: buffers.advanced(by: i * slotSize).assumingMemoryBound(to: UInt8.self),
                capacity: slotSize, length: 0, truncated: 0, has_credentials: 0, pid: 0, uid: 0, gid: 0)
        }
        poll = .allocate(capacity: 1)
        _ = p2pmd_set_nonblocking(fd)
        let rc = uv_poll_init(loop, poll, fd)
        guard rc == 0 else {
            poll.deallocate()
            throw DaemonError("cannot watch the ingest socket: \(String(cString: uv_strerror(rc)))")
        }
        poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_poll_start(poll, Int32(UV_READABLE.rawValue)) { handle, status, _ in
            guard let handle, let data = handle.pointee.data else { return }
            let receiver = Unmanaged<IngestReceiver>.fromOpaque(data).takeUnretainedValue()
            receiver.drainOneTurn()
        }
    }

    /// One loop turn's share of ingest: a bounded number of datagrams and bytes, then the
    /// daemon's follow-up (new processes to watch).
    func drainOneTurn() {
        drain(maxBatches: Self.batchesPerWakeup, maxBytes: Self.bytesPerWakeup,
              until: uv_hrtime() + Self.nanosecondsPerWakeup)
        afterDrain()
    }

    /// Receives and applies up to `maxBatches` batches, stopping once `maxBytes` were received or
    /// after the batch that ends past `deadline` (`uv_hrtime`); returns true when the socket is empty.
    @discardableResult
    func drain(maxBatches: Int, maxBytes: Int = .max, until deadline: UInt64 = .max) -> Bool {
        var received = 0
        for _ in 0..<maxBatches {
            let room = (maxBytes - received) / max(averageDatagramBytes, 1)
            let wanted = min(Self.batchSize, max(1, room))
            let n = Int(p2pmd_receive_batch(fd, slots.baseAddress, UInt32(wanted), credentials ? 1 : 0))
            if n <= 0 { return true }
            var batchBytes = 0
            for i in 0..<n {
                let slot = slots[i]
                batchBytes += slot.length
                if slot.truncated != 0 {
                    refuseTruncated(slot.length)
                } else {
                    let sender = slot.has_credentials != 0 ? SenderCredentials(pid: slot.pid, uid: slot.uid, gid: slot.gid) : nil
                    apply(UnsafeRawBufferPointer(start: slot.buffer, count: slot.length), sender)
                }
            }
            averageDatagramBytes = max(batchBytes / n, 1)
            received += batchBytes
            if n < wanted { return true }
            if received >= maxBytes || (deadline != .max && uv_hrtime() > deadline) { return false }
        }
        return false
    }

    /// Stops watching; the handle is freed by libuv's close callback.
    func close() {
        uv_poll_stop(poll)
        poll.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { handle in
            uv_close(handle) { handle in handle?.deallocate() }
        }
    }

    deinit {
        buffers.deallocate()
        slots.deallocate()
    }
}
