import CLibUV
import Glibc
import P2PMetricsExposition

/// A growable byte buffer in fixed segments, each its own anonymous mapping: bytes never move
/// (connections send straight from them), and a large rendering's memory goes back to the system
/// when the last connection is done with it, instead of staying in (and reshaping) the malloc heap.
final class ByteStorage {
    static let segmentBytes = 1 << 20
    private var segments: [UnsafeMutableRawPointer] = []
    private(set) var count = 0

    func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { source in
            guard let from = source.baseAddress else { return }
            var copied = 0
            while copied < source.count {
                let used = count % Self.segmentBytes
                if used == 0 && count / Self.segmentBytes == segments.count {
                    let segment = mmap(nil, Self.segmentBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                    guard let segment, segment != MAP_FAILED else { fatalError("out of memory rendering /metrics") }
                    segments.append(segment)
                }
                let n = min(Self.segmentBytes - used, source.count - copied)
                (segments[count / Self.segmentBytes] + used).copyMemory(from: from + copied, byteCount: n)
                count += n
                copied += n
            }
        }
    }

    /// Up to `limit` contiguous bytes from `offset` (never across a segment's end).
    func bytes(at offset: Int, limit: Int) -> (start: UnsafeMutableRawPointer, count: Int)? {
        guard offset < count else { return nil }
        let inSegment = offset % Self.segmentBytes
        let n = min(limit, Self.segmentBytes - inSegment, count - offset)
        return (segments[offset / Self.segmentBytes] + inSegment, n)
    }

    deinit {
        for segment in segments { munmap(segment, Self.segmentBytes) }
    }
}

/// A complete `/metrics` body, shared read-only by every connection that sends it.
final class RenderedBody {
    let storage: ByteStorage
    let format: ExpositionFormat
    let gzipped: Bool
    /// Increases with every rendering completed: lower is older.
    let sequence: UInt64

    init(storage: ByteStorage, format: ExpositionFormat, gzipped: Bool, sequence: UInt64) {
        self.sequence = sequence
        self.storage = storage
        self.format = format
        self.gzipped = gzipped
    }
}

/// Renders `/metrics` bodies in slices between which the loop drains the ingest socket, one
/// rendering per (format, gzip) shared by every scrape that asks while it is in progress.
///
/// The budget is global, not per scrape: whatever the number of scrapers, the loop renders (and
/// compresses) at most one slice per turn and drains ingest before each. A scrape that arrives
/// while a rendering of its variant is in progress is answered with that rendering, so its
/// values are at most one rendering's duration older than its request (a small store renders in
/// one slice, at once: then they are current). A rendering nobody waits for any more is dropped.
final class RenderScheduler {
    /// Bytes rendered (then compressed) per slice: a fraction of a millisecond of work.
    static let sliceBytes = 16 * 1024

    private final class Job {
        let format: ExpositionFormat
        let gzip: GzipStream?
        var renderer: ExpositionRenderer
        let body = ByteStorage()
        var waiters: [HTTPConnection] = []
        var started = false

        init(format: ExpositionFormat, gzip: Bool) {
            self.format = format
            self.gzip = gzip ? GzipStream() : nil
            renderer = ExpositionRenderer(format: format)
        }
    }

    private unowned let source: ExpositionSource
    private let idle: UnsafeMutablePointer<uv_idle_t>
    private var jobs: [Job] = []
    private var nextJob = 0
    private var idleRunning = false
    private var completed: UInt64 = 0
    /// The sequence of the latest completed rendering of each format and encoding.
    private var latest: [(format: ExpositionFormat, gzip: Bool, sequence: UInt64)] = []
    /// Called with each completed rendering, after its waiters have it.
    var onCompleted: (RenderedBody) -> Void = { _ in }

    init(loop: UnsafeMutablePointer<uv_loop_t>, source: ExpositionSource) {
        self.source = source
        idle = .allocate(capacity: 1)
        uv_idle_init(loop, idle)
        idle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    /// Renderings in progress (at most one per format and encoding).
    var inProgress: Int { jobs.count }

    /// Whether a rendering of this format and encoding is in progress (a new request joins it).
    func isRendering(format: ExpositionFormat, gzip: Bool) -> Bool {
        job(format: format, gzip: gzip) != nil
    }

    /// The sequence of the latest completed rendering of this format and encoding: the only one a
    /// scrape may share once done (an older one could take a scraper's counters back).
    func latestSequence(format: ExpositionFormat, gzip: Bool) -> UInt64? {
        latest.first { $0.format == format && $0.gzip == gzip }?.sequence
    }

    private func job(format: ExpositionFormat, gzip: Bool) -> Job? {
        jobs.first { $0.format == format && ($0.gzip != nil) == gzip }
    }

    /// Asks for a body; `connection.deliver(_:)` is called with it, possibly before this returns.
    func request(format: ExpositionFormat, gzip: Bool, for connection: HTTPConnection) {
        if let job = job(format: format, gzip: gzip) {
            job.waiters.append(connection)
            return
        }
        let job = Job(format: format, gzip: gzip)
        job.waiters.append(connection)
        if !advance(job) {
            jobs.append(job)
            startIdle()
        }
    }

    /// A waiting connection went away; a rendering left with no waiter is dropped.
    func cancel(_ connection: HTTPConnection) {
        for (index, job) in jobs.enumerated() where job.waiters.contains(where: { $0 === connection }) {
            job.waiters.removeAll { $0 === connection }
            if job.waiters.isEmpty {
                jobs.remove(at: index)
                source.renderEnded()
                if jobs.isEmpty { stopIdle() }
            }
            return
        }
    }

    /// Drops every rendering in progress and closes the idle handle.
    func close() {
        for _ in jobs { source.renderEnded() }
        jobs = []
        stopIdle()
        closeAndFree(idle.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { $0 })
    }

    /// One loop turn's work: drain the ingest socket, then one slice of one rendering.
    private func turn() {
        source.drainIngest()
        guard !jobs.isEmpty else { stopIdle(); return }
        nextJob %= jobs.count
        let job = jobs[nextJob]
        if advance(job) {
            jobs.remove(at: nextJob)
            if jobs.isEmpty { stopIdle() }
        } else {
            nextJob += 1
        }
    }

    /// Renders and compresses one slice; on the last one, hands the body to every waiter.
    private func advance(_ job: Job) -> Bool {
        var slice: [UInt8] = []
        slice.reserveCapacity(Self.sliceBytes + 4096)
        if !job.started {
            job.started = true
            source.beginScrape(into: &slice, format: job.format)
        }
        let finished = source.renderSlice(&job.renderer, into: &slice, budget: slice.count + Self.sliceBytes)
        if let gzip = job.gzip { slice = gzip.compress(slice, finish: finished) }
        job.body.append(slice)
        guard finished else { return false }
        source.renderEnded()
        completed += 1
        let body = RenderedBody(storage: job.body, format: job.format, gzipped: job.gzip != nil, sequence: completed)
        latest.removeAll { $0.format == body.format && $0.gzip == body.gzipped }
        latest.append((body.format, body.gzipped, body.sequence))
        let waiters = job.waiters
        job.waiters = []
        for connection in waiters { connection.deliver(body) }
        onCompleted(body)
        return true
    }

    private func startIdle() {
        guard !idleRunning else { return }
        idleRunning = true
        uv_idle_start(idle) { idle in
            guard let data = idle?.pointee.data else { return }
            Unmanaged<RenderScheduler>.fromOpaque(data).takeUnretainedValue().turn()
        }
    }

    private func stopIdle() {
        guard idleRunning else { return }
        idleRunning = false
        uv_idle_stop(idle)
    }
}
