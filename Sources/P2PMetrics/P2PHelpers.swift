import P2PMetricsWire
import Synchronization

/// The seed's P2P metric names (seed guide "P2P Transfer Metrics Guide"), as sent on the wire.
/// The sidecar exposes them with every `.` replaced by `_`.
public enum P2PMetricNames {
    /// Counter, label `artifact_type`.
    public static let imagesImported = "p2p.image.imports.total"
    /// Counter, label `artifact_type`.
    public static let imageImportsFailed = "p2p.image.imports.failed"
    /// Counter.
    public static let imageDownloads = "p2p.image.downloads.total"
    /// Counter.
    public static let imageDownloadsFailed = "p2p.image.downloads.failed"
    /// Histogram, seconds.
    public static let transferDuration = "p2p.transfer.duration"
    /// Counter (label `artifact_type` for imports, none for chunks).
    public static let bytesTransferred = "p2p.bytes_transferred.total"
    /// Counter.
    public static let chunksTransferred = "p2p.chunks_transferred.total"
    /// Counter.
    public static let chunksDeduplicated = "p2p.chunks_deduplicated.total"
    /// Counter, label `verification_type`.
    public static let verificationSuccess = "p2p.verification.success"
    /// Counter, label `verification_type`.
    public static let verificationFailed = "p2p.verification.failed"
    /// Counter, label `cache_type`.
    public static let cacheHits = "p2p.cache.hits"
    /// Counter, label `cache_type`.
    public static let cacheMisses = "p2p.cache.misses"
    /// Gauge (an up-down counter).
    public static let transfersActive = "p2p.transfers.active"
    /// Distinct count of chunk hashes (beyond the seed: storage planning).
    public static let chunksUnique = "p2p.chunks.unique"
    /// Top-K of requested chunk hashes (beyond the seed: chunk popularity).
    public static let chunksRequested = "p2p.chunks.requested"
}

extension P2PMetricsClient {
    /// Records an image import, in one datagram: `p2p.image.imports.total{artifact_type} += 1`;
    /// on failure `p2p.image.imports.failed{artifact_type} += 1`; on success with
    /// `sizeBytes > 0`, `p2p.bytes_transferred.total{artifact_type} += sizeBytes`.
    /// `artifactType`: microvm, container, storepath, closure… `labels`: extra labels on every
    /// sample (e.g. `[("peer", "node-7")]`, the per-peer convention).
    @discardableResult
    public func recordImageImport(
        artifactType: String, success: Bool, sizeBytes: UInt64, labels: [(String, String)] = []
    ) -> RecordResult {
        let label = ("artifact_type", artifactType)
        let total = HelperSample(.counterAdd, P2PMetricNames.imagesImported, label, .unsigned(1), extra: labels)
        if !success {
            return recordGroup(total, HelperSample(.counterAdd, P2PMetricNames.imageImportsFailed, label, .unsigned(1), extra: labels))
        }
        if sizeBytes == 0 { return recordGroup(total) }
        return recordGroup(total, HelperSample(.counterAdd, P2PMetricNames.bytesTransferred, label, .unsigned(sizeBytes), extra: labels))
    }

    /// Records an image download, in one datagram: `p2p.image.downloads.total += 1`; on failure
    /// `p2p.image.downloads.failed += 1`; `p2p.transfer.duration` observes `seconds` (finite).
    /// `imageID` is not sent: one series per image would be unbounded. `labels`: extra labels on
    /// every sample.
    @discardableResult
    public func recordImageDownload(
        imageID: String?, success: Bool, duration seconds: Double, labels: [(String, String)] = []
    ) -> RecordResult {
        let total = HelperSample(.counterAdd, P2PMetricNames.imageDownloads, nil, .unsigned(1), extra: labels)
        let observed = HelperSample(
            .histogramObserve, P2PMetricNames.transferDuration, nil, SampleValue(canonical: seconds), extra: labels)
        if success { return recordGroup(total, observed) }
        // the seed's order: total, failed, duration
        return recordGroup(
            total, HelperSample(.counterAdd, P2PMetricNames.imageDownloadsFailed, nil, .unsigned(1), extra: labels), observed)
    }

    /// Records an image download whose duration is a `Duration` (see
    /// ``recordImageDownload(imageID:success:duration:)-(_,_,Double)``).
    @discardableResult
    public func recordImageDownload(
        imageID: String?, success: Bool, duration: Duration, labels: [(String, String)] = []
    ) -> RecordResult {
        recordImageDownload(imageID: imageID, success: success, duration: duration.seconds, labels: labels)
    }

    /// Records one chunk, in one datagram: when `deduplicated`, `p2p.chunks_deduplicated.total += 1`;
    /// otherwise `p2p.chunks_transferred.total += 1` and `p2p.bytes_transferred.total += size`
    /// (no labels but the caller's extra `labels`, e.g. `[("peer", "node-7")]`).
    @discardableResult
    public func recordChunkTransfer(size: UInt64, deduplicated: Bool, labels: [(String, String)] = []) -> RecordResult {
        if deduplicated {
            return recordGroup(HelperSample(.counterAdd, P2PMetricNames.chunksDeduplicated, nil, .unsigned(1), extra: labels))
        }
        return recordGroup(
            HelperSample(.counterAdd, P2PMetricNames.chunksTransferred, nil, .unsigned(1), extra: labels),
            HelperSample(.counterAdd, P2PMetricNames.bytesTransferred, nil, .unsigned(size), extra: labels))
    }

    /// Records one chunk as `recordChunkTransfer(size:deduplicated:)` does, then adds `hash` to
    /// the distinct count `p2p.chunks.unique` (unique chunks seen, to estimate storage needs).
    @discardableResult
    public func recordChunkTransfer(size: UInt64, deduplicated: Bool, hash: String) -> RecordResult {
        let result = recordChunkTransfer(size: size, deduplicated: deduplicated)
        let unique = distinctAdd(P2PMetricNames.chunksUnique, key: hash.utf8)
        if case .invalid = unique { return unique }
        return result
    }

    /// Chunk popularity: counts one request of `hash` (1–128 bytes of UTF-8) in the top-K sketch
    /// `p2p.chunks.requested`.
    @discardableResult
    public func recordChunkRequest(hash: String) -> RecordResult {
        topKAdd(P2PMetricNames.chunksRequested, key: hash)
    }

    /// Records a verification: `p2p.verification.success{verification_type}` or
    /// `p2p.verification.failed{verification_type}` `+= 1`. `type`: nar_hash, chunk_hash…
    @discardableResult
    public func recordVerification(success: Bool, type: String) -> RecordResult {
        recordGroup(HelperSample(
            .counterAdd, success ? P2PMetricNames.verificationSuccess : P2PMetricNames.verificationFailed,
            ("verification_type", type), .unsigned(1)))
    }

    /// Records a cache access: `p2p.cache.hits{cache_type}` or `p2p.cache.misses{cache_type}`
    /// `+= 1`. `cacheType`: chunk, vm_image…
    @discardableResult
    public func recordCacheAccess(hit: Bool, cacheType: String) -> RecordResult {
        recordGroup(HelperSample(
            .counterAdd, hit ? P2PMetricNames.cacheHits : P2PMetricNames.cacheMisses,
            ("cache_type", cacheType), .unsigned(1)))
    }

    // MARK: Transfers

    /// Starts a transfer: `p2p.transfers.active += 1`, and notes the monotonic start time.
    /// Call ``TransferToken/finish()`` when it ends (or use ``withTransfer(labels:_:)-(_,()->R)``).
    /// `labels` (e.g. `[("peer", "node-7")]`; not `le`) go on the duration observed at the end.
    public func startTransfer(labels: [(String, String)] = []) -> TransferToken {
        let token = TransferToken(client: self, labels: labels)
        let (result, schedule) = state.withLock { s in
            s.addGroup(
                HelperSample(.gaugeAdd, P2PMetricNames.transfersActive, nil, .unsigned(1)), nil, nil,
                activeDelta: 1)
        }
        token.started(result)
        if schedule { scheduleFlush() }
        return token
    }

    /// Runs `body` as one transfer: `p2p.transfers.active` is `+1` while it runs, and when it
    /// returns **or throws**, `-1` and `p2p.transfer.duration{labels}` observes its duration (one
    /// datagram).
    public func withTransfer<R, E: Error>(labels: [(String, String)] = [], _ body: () throws(E) -> R) throws(E) -> R {
        let token = startTransfer(labels: labels)
        defer { token.finish() }
        return try body()
    }

    /// Runs the asynchronous `body` as one transfer, like ``withTransfer(labels:_:)-(_,()->R)``:
    /// the duration and the `-1` are recorded when it returns, throws, or is cancelled and throws.
    public func withTransfer<R, E: Error>(
        labels: [(String, String)] = [],
        isolation: isolated (any Actor)? = #isolation, _ body: () async throws(E) -> R
    ) async throws(E) -> R {
        let token = startTransfer(labels: labels)
        defer { token.finish() }
        return try await body()
    }
}

/// An active transfer, for code that cannot wrap it in ``P2PMetricsClient/withTransfer(labels:_:)-(_,()->R)``:
/// keep the token from ``P2PMetricsClient/startTransfer(labels:)`` and call ``finish()`` once.
///
/// Like the C client's `p2pm_transfer`: finishing again does nothing, and `p2p.transfers.active`
/// cannot stick: a `+1` or `-1` whose datagram is dropped (sidecar absent or stopped) is kept by the
/// client and sent later as a datagram of its own (`+1`s before the next datagram, `-1`s after,
/// so the gauge never goes below zero), by the next send or the flush timer.
public final class TransferToken: Sendable {
    struct State {
        var finished = false
        var startResult = RecordResult.buffered
    }

    private let client: P2PMetricsClient
    private let labels: [(String, String)]
    /// When the transfer started (monotonic).
    public let startInstant: ContinuousClock.Instant
    private let state = Mutex(State())

    init(client: P2PMetricsClient, labels: [(String, String)]) {
        self.client = client
        self.labels = labels
        startInstant = .now
    }

    /// The fate of the start's `p2p.transfers.active += 1` when it was recorded (when dropped, it
    /// is kept and delivered later).
    public var startResult: RecordResult { state.withLock { $0.startResult } }

    /// Whether ``finish()`` was called.
    public var isFinished: Bool { state.withLock { $0.finished } }

    func started(_ result: RecordResult) {
        state.withLock { $0.startResult = result }
    }

    /// Ends the transfer, in one datagram: `p2p.transfers.active -= 1` and `p2p.transfer.duration`
    /// observes the seconds since the start. Returns the fate of those samples, or `nil` when the
    /// transfer was already finished (nothing is recorded then).
    @discardableResult
    public func finish() -> RecordResult? {
        finish(seconds: max((ContinuousClock.now - startInstant).seconds, 0))
    }

    /// ``finish()`` with a given duration (tests compare bytes with the shared vectors).
    func finish(seconds: Double) -> RecordResult? {
        let first = state.withLock { s -> Bool in
            defer { s.finished = true }
            return !s.finished
        }
        guard first else { return nil }
        let end = HelperSample(.gaugeAdd, P2PMetricNames.transfersActive, nil, .signed(-1))
        let duration = HelperSample(
            .histogramObserve, P2PMetricNames.transferDuration, nil, SampleValue(canonical: seconds), extra: labels)
        let (result, schedule) = client.state.withLock { s in
            var r = s.addGroup(end, duration, nil, activeDelta: -1)
            if case .invalid = r.0 { r = s.addGroup(end, nil, nil, activeDelta: -1) }   // bad labels: the -1 alone
            return r
        }
        if schedule { client.scheduleFlush() }
        return result
    }
}

extension Duration {
    /// The duration in seconds, as a double.
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}
