import Dispatch
import P2PMetricsWire
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A connection to the p2pmetricsd sidecar: encodes samples in wire protocol v1 (with the shared
/// canonical ``DatagramEncoder``) and sends them as datagrams to the sidecar's Unix socket.
///
/// * **Thread-safe and `Sendable`**: any number of threads or tasks may record on one client.
///   All state sits behind one `Mutex`; no `@unchecked Sendable` anywhere.
/// * **Batched, lossless in bursts** by default (like the C client's `P2PM_BUFFERED`): samples are
///   packed into datagrams of at most ``Configuration/maxDatagramSize`` bytes (8,192), sent when
///   the next sample does not fit, at the latest ``Configuration/flushInterval`` (10 ms) after the
///   first sample of a batch (a Dispatch timer, armed only while samples wait), or on ``flush()``.
///   When the sidecar's queue is full (`EAGAIN`; the kernel's default is 10 datagrams) the timer
///   keeps the batch and tries again 5 ms later, and a call whose samples do not fit waits for room
///   up to ``defaultSendTimeout`` (50 ms) before the full batch is dropped; after such a timed-out
///   wait (a stopped sidecar) calls stop waiting until a datagram gets through again. An absent
///   sidecar never makes a call wait. So no call waits longer than about 2 x 50 ms.
/// * **Drops are real and counted**: a dropped datagram is counted (``statistics``) and the count
///   travels in-band as the first record of the next datagram that is sent (PROTOCOL.md §4), so it
///   shows up as `p2pmetricsd_client_dropped_datagrams_total`. An absent sidecar is retried at most
///   once per ``Configuration/reconnectInterval``; nothing throws, nothing is printed.
///   ``Configuration/immediate`` sends each call as its own datagram instead, without waiting
///   (unless ``Configuration/sendTimeout`` is set: blocking mode).
/// * The P2P helpers (``recordImageImport(artifactType:success:sizeBytes:)`` …) put all the
///   samples of one call into the same datagram, so the sidecar applies them atomically.
///
/// Pending samples are sent (best effort) when the client is deinitialized and, for clients still
/// alive then (such as the one bootstrapped into `MetricsSystem`), when the process exits normally
/// (`atexit`). Before a signal-driven exit or `_exit`, call ``flush()``.
public final class P2PMetricsClient: Sendable {
    /// How a client reaches the sidecar and when it sends.
    public struct Configuration: Sendable {
        /// Path of the sidecar's Unix datagram socket.
        public var socketPath: String
        /// Largest datagram sent, in bytes, drop report included (64…65,536; default 8,192).
        public var maxDatagramSize: Int
        /// `true`: every call is sent at once as its own datagram (and its ``RecordResult`` tells
        /// whether the sidecar got it). `false` (default): calls are batched.
        public var immediate: Bool
        /// In batched mode, the longest time a sample waits in a batch before it is sent
        /// (default 10 ms). `nil`: only full batches and explicit ``P2PMetricsClient/flush()`` send.
        public var flushInterval: Duration?
        /// The longest wait (with `poll`) for room in the sidecar's queue before a datagram is
        /// dropped. `nil` (default): ``P2PMetricsClient/defaultSendTimeout`` in batched mode, no
        /// wait at all in immediate mode. A duration: that wait (in immediate mode: **blocking
        /// mode**, every call waits up to it); `.zero`: never wait. The wait happens while holding
        /// the client's lock, so it applies back-pressure to every recording thread. An absent
        /// sidecar still fails at once.
        public var sendTimeout: Duration?
        /// Minimum time between two connection attempts to an absent sidecar (default 100 ms).
        public var reconnectInterval: Duration

        /// A configuration; `socketPath` `nil` means ``P2PMetricsClient/environmentSocketPath``.
        public init(
            socketPath: String? = nil,
            maxDatagramSize: Int = WireFormat.defaultBatchSize,
            immediate: Bool = false,
            flushInterval: Duration? = .milliseconds(10),
            sendTimeout: Duration? = nil,
            reconnectInterval: Duration = .milliseconds(100)
        ) {
            self.socketPath = socketPath ?? P2PMetricsClient.environmentSocketPath
            self.maxDatagramSize = maxDatagramSize
            self.immediate = immediate
            self.flushInterval = flushInterval
            self.sendTimeout = sendTimeout
            self.reconnectInterval = reconnectInterval
        }
    }

    /// Counters of what a client did since it was created.
    public struct Statistics: Sendable, Equatable {
        /// Datagrams the kernel accepted.
        public var sentDatagrams: UInt64 = 0
        /// Samples in those datagrams.
        public var sentSamples: UInt64 = 0
        /// Datagrams dropped (reported in-band or not): the C client's `p2pm_dropped()`.
        public var droppedDatagrams: UInt64 = 0
        /// Samples in the dropped datagrams (not on the wire; for exact accounting in tests).
        public var droppedSamples: UInt64 = 0
        /// Drops not yet reported to the sidecar: the next datagram sent carries this count.
        public var unreportedDrops: UInt64 = 0
        /// Samples waiting in the current batch.
        public var bufferedSamples: UInt64 = 0
        /// Transfer `±1`s in dropped datagrams: not lost, resent as their sum (``resentAdds``).
        public var keptSamples: UInt64 = 0
        /// `p2p.transfers.active` adds sent for kept samples (the sidecar applies
        /// `sentSamples + resentAdds`).
        public var resentAdds: UInt64 = 0
        /// Sends that found the sidecar's queue full and waited for room.
        public var waits: UInt64 = 0
        /// The errno of the last failed send (0 if none failed).
        public var lastErrno: Int32 = 0
    }

    /// The longest wait of a batched client for room in the sidecar's queue (50 ms, the C
    /// client's `P2PM_SEND_WAIT_MS`).
    public static let defaultSendTimeout: Duration = .milliseconds(50)

    /// Socket path used when neither a path nor `$P2PM_SOCKET` is given.
    public static let defaultSocketPath = "/run/p2pmetricsd/ingest.sock"
    /// Environment variable naming the socket path when none is given.
    public static let socketEnvironmentVariable = "P2PM_SOCKET"

    /// `$P2PM_SOCKET` when it is set and non-empty, else ``defaultSocketPath``.
    public static var environmentSocketPath: String {
        if let p = getenv(socketEnvironmentVariable), p.pointee != 0 { return String(cString: p) }
        return defaultSocketPath
    }

    /// A process-wide client with the default configuration (socket from `$P2PM_SOCKET`),
    /// created on first use and kept until the process exits.
    public static let shared = P2PMetricsClient()

    /// The configuration the client was created with.
    public let configuration: Configuration
    let state: Mutex<ClientState>
    private let flushDelayNanos: Int?
    private let debtRetryNanos: Int?

    /// Creates a client. Never fails: an absent sidecar (or an unusable path) only makes calls
    /// drop and count until the socket can be reached.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        let timed = !configuration.immediate && configuration.flushInterval != nil
        flushDelayNanos = timed ? Int(SidecarSocket.nanoseconds(configuration.flushInterval!)) : nil
        // immediate clients arm the timer only to deliver kept transfer adds
        debtRetryNanos = configuration.flushInterval == nil ? nil
            : max(Int(SidecarSocket.nanoseconds(configuration.reconnectInterval)), 1_000_000)
        state = Mutex(ClientState(configuration: configuration, timed: timed))
        state.withLock { $0.debtTimer = configuration.flushInterval != nil }
        if !configuration.immediate { ExitFlush.register(self) }
    }

    /// Creates a client for the socket at `socketPath` (`nil`: ``environmentSocketPath``) with the
    /// default batching (8,192-byte datagrams, 10 ms flush interval).
    public convenience init(socketPath: String?) {
        self.init(configuration: Configuration(socketPath: socketPath))
    }

    deinit {
        state.withLock { s in
            s.sendPending()
            s.socket.close()
        }
    }

    /// What the client did so far.
    public var statistics: Statistics {
        state.withLock { s in
            var st = s.stats
            st.unreportedDrops = s.pendingDrops
            st.bufferedSamples = s.pendingSamples
            st.waits = s.socket.waits
            return st
        }
    }

    /// Total number of datagrams dropped since the client was created (reported or not).
    public var droppedDatagrams: UInt64 { state.withLock { $0.stats.droppedDatagrams } }

    /// Sends the pending batch now, if any. Returns ``RecordResult/sent`` (also when nothing was
    /// pending) or ``RecordResult/dropped(errno:)`` (the batch was dropped and counted).
    @discardableResult
    public func flush() -> RecordResult {
        let e = state.withLock { s in
            let e = s.sendPending()
            if s.activeDebt != 0 { _ = s.sendDebt() }
            return e
        }
        return e == 0 ? .sent : .dropped(errno: e)
    }

    // MARK: Samples (the generic API, PROTOCOL.md §1.3)

    /// Adds `value` (finite, ≥ 0) to the counter `name{labels}`.
    ///
    /// `name`: 1–200 bytes of `[A-Za-z_:][A-Za-z0-9_:.]*` (dots are exposed as `_`), not in the
    /// daemon's `p2pmetricsd_` namespace. Label names: `[A-Za-z_][A-Za-z0-9_]*`, not starting with
    /// `__`; values: up to 1,024 bytes; at most 16 labels, no repeats. Breaking a rule returns
    /// ``RecordResult/invalid(_:)`` and sends nothing (the swift-metrics backend sanitizes instead).
    @discardableResult
    public func counterAdd(
        _ name: String, _ value: Double, labels: some Collection<(String, String)> = [(String, String)]()
    ) -> RecordResult {
        record(.counterAdd, name, labels, SampleValue(canonical: value))
    }

    /// Adds an exact 64-bit integer to the counter `name{labels}` (byte counts past 2^53).
    @discardableResult
    public func counterAdd(
        _ name: String, exactly value: UInt64, labels: some Collection<(String, String)> = [(String, String)]()
    ) -> RecordResult {
        record(.counterAdd, name, labels, .unsigned(value))
    }

    /// Sets the gauge `name{labels}` to `value` (any value, NaN and infinities included).
    @discardableResult
    public func gaugeSet(
        _ name: String, _ value: Double, labels: some Collection<(String, String)> = [(String, String)]()
    ) -> RecordResult {
        record(.gaugeSet, name, labels, SampleValue(canonical: value))
    }

    /// Adds `delta` (finite, may be negative) to the gauge `name{labels}` (an up-down counter).
    @discardableResult
    public func gaugeAdd(
        _ name: String, _ delta: Double, labels: some Collection<(String, String)> = [(String, String)]()
    ) -> RecordResult {
        record(.gaugeAdd, name, labels, SampleValue(canonical: delta))
    }

    /// Records one observation of `value` (finite) into the histogram `name{labels}`; a
    /// histogram may not have a label named `le`.
    @discardableResult
    public func histogramObserve(
        _ name: String, _ value: Double, labels: some Collection<(String, String)> = [(String, String)]()
    ) -> RecordResult {
        record(.histogramObserve, name, labels, SampleValue(canonical: value))
    }

    /// Adds `key` (at most 1,024 bytes, any bytes) to the distinct count `name{labels}`: the
    /// sidecar exposes the estimated number of distinct keys as a gauge (HyperLogLog, about 1.6 %
    /// standard error, fixed memory).
    @discardableResult
    public func distinctAdd(
        _ name: String, key: some Collection<UInt8>, labels: some Collection<(String, String)> = [(String, String)]()
    ) -> RecordResult {
        let (result, schedule) = state.withLock { s in
            s.addKeyed { encoder throws(EncodingError) in try encoder.appendDistinct(name: name, labels: labels, key: key) }
        }
        if schedule { scheduleFlush() }
        return result
    }

    /// Counts one occurrence of `key` (1–128 bytes of UTF-8) in the top-K sketch `name{labels}`:
    /// the sidecar exposes the K most frequent keys as `name{…,key="…"}` with their counts.
    @discardableResult
    public func topKAdd(
        _ name: String, key: String, labels: some Collection<(String, String)> = [(String, String)]()
    ) -> RecordResult {
        let (result, schedule) = state.withLock { s in
            s.addKeyed { encoder throws(EncodingError) in try encoder.appendTopK(name: name, labels: labels, key: key) }
        }
        if schedule { scheduleFlush() }
        return result
    }

    /// One sample of any kind, with an already chosen wire value.
    @inline(__always)
    func record(
        _ kind: SampleKind, _ name: String, _ labels: some Collection<(String, String)>, _ value: SampleValue
    ) -> RecordResult {
        let (result, schedule) = state.withLock { s in s.add(kind, name, labels, value) }
        if schedule { scheduleFlush() }
        return result
    }

    /// Samples that must travel in one datagram (the P2P helpers).
    func recordGroup(_ a: HelperSample, _ b: HelperSample? = nil, _ c: HelperSample? = nil) -> RecordResult {
        let (result, schedule) = state.withLock { s in s.addGroup(a, b, c) }
        if schedule { scheduleFlush() }
        return result
    }

    /// Arms the flush timer (called once per batch, outside the lock). When the sidecar's queue is
    /// full the timer keeps the batch and tries again 5 ms later; undelivered transfer adds are
    /// retried every reconnect interval.
    func scheduleFlush(afterNanos: Int? = nil) {
        guard let delay = afterNanos ?? flushDelayNanos ?? debtRetryNanos, let retryNanos = debtRetryNanos else { return }
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(delay)) { [weak self] in
            guard let self else { return }
            let again = self.state.withLock { s -> Int? in
                s.flushScheduled = false
                if !s.encoder.isEmpty, s.sendPending(keepIfFull: true) == EAGAIN, !s.encoder.isEmpty {
                    s.flushScheduled = true
                    return 5_000_000
                }
                if s.activeDebt != 0, s.encoder.isEmpty, s.sendDebt() != 0 {
                    s.flushScheduled = true
                    return retryNanos
                }
                return nil
            }
            if let again { self.scheduleFlush(afterNanos: again) }
        }
    }
}

/// One sample of a P2P helper: a constant metric name, at most one label of its own, and the
/// caller's extra labels (the per-peer convention).
struct HelperSample {
    var kind: SampleKind
    var name: String
    var label: (String, String)?
    var value: SampleValue
    var extra: [(String, String)]

    init(
        _ kind: SampleKind, _ name: String, _ label: (String, String)? = nil, _ value: SampleValue,
        extra: [(String, String)] = []
    ) {
        self.kind = kind
        self.name = name
        self.label = label
        self.value = value
        self.extra = extra
    }

    /// Upper bound of the bytes this sample adds to a datagram: its series record and the sample
    /// (tag, a series index below 4,096, a value of at most 10 bytes).
    var worstCaseSize: Int {
        let n = name.utf8.count
        var size = 1 + Varint.encodedLength(UInt64(n)) + n + 1
        for (k, v) in (label.map { [$0] } ?? []) + extra {
            let kn = k.utf8.count, vn = v.utf8.count
            size += Varint.encodedLength(UInt64(kn)) + kn + Varint.encodedLength(UInt64(vn)) + vn
        }
        return size + 1 + 2 + 10
    }

    /// The checks a helper's caller can fail (the names are constants and valid).
    var problem: DatagramRejection? {
        if let (_, v) = label, v.utf8.count > WireFormat.maxLabelValueLength { return .tooLong }
        if case .double(let d) = value, !d.isFinite, kind != .gaugeSet { return .nonFinite }
        if case .double(let d) = value, d < 0, kind == .counterAdd { return .negativeCounter }
        if !extra.isEmpty {   // the caller's labels: encode once on the side, so a group never fails halfway
            var probe = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
            do {
                _ = try probe.append(kind, name: name, labels: (label.map { [$0] } ?? []) + extra, value: value)
            } catch {
                return error.reason
            }
        }
        return nil
    }
}

/// Everything a client mutates, behind its mutex.
struct ClientState {
    var encoder: DatagramEncoder
    var socket: SidecarSocket
    /// Scratch buffer for a datagram led by a drop report (reused: no allocation per send).
    var withReport: [UInt8] = []
    var pendingSamples: UInt64 = 0
    /// Samples appended since the last reset: a bound on the series records of the datagram.
    var appendsSinceReset = 0
    var pendingDrops: UInt64 = 0
    var stats = P2PMetricsClient.Statistics()
    var flushScheduled = false
    /// `p2p.transfers.active` adds of dropped datagrams, not delivered yet (sent on their own).
    var activeDebt: Int64 = 0
    /// `p2p.transfers.active` adds of the transfer helpers in the current batch, and how many.
    var activePending: Int64 = 0
    var keptPending: UInt64 = 0
    /// A wait for room timed out (a stopped sidecar): batched calls do not wait until a send works.
    var stalled = false
    /// The datagram that carries the debt.
    var debtEncoder = DatagramEncoder(maxSize: 64)
    let immediate: Bool
    let timed: Bool
    /// The timer may run to deliver kept transfer adds (a flush interval is configured).
    var debtTimer = false
    /// How long a call waits for room (nil: not at all).
    let callWaitNanos: UInt64?

    /// Room for the drop report: its tag and a 10-byte varint (the magic byte is the encoder's).
    static let reportRoom = 11

    init(configuration: P2PMetricsClient.Configuration, timed: Bool) {
        let size = min(max(configuration.maxDatagramSize, 64 + Self.reportRoom), WireFormat.maxDatagramSize)
        encoder = DatagramEncoder(maxSize: size - Self.reportRoom)
        withReport.reserveCapacity(size)
        socket = SidecarSocket(
            path: configuration.socketPath, reconnectInterval: configuration.reconnectInterval,
            sendTimeout: configuration.sendTimeout)
        immediate = configuration.immediate
        self.timed = timed
        let wait = configuration.sendTimeout ?? (configuration.immediate ? nil : P2PMetricsClient.defaultSendTimeout)
        callWaitNanos = wait.map(SidecarSocket.nanoseconds)
        _ = socket.reconnect()   // an absent sidecar is fine: sends connect later
    }

    /// Appends one sample, sending the batch first when it is full.
    mutating func add(
        _ kind: SampleKind, _ name: String, _ labels: some Collection<(String, String)>, _ value: SampleValue
    ) -> (RecordResult, Bool) {
        var fits: Bool
        do {
            fits = try encoder.append(kind, name: name, labels: labels, value: value)
        } catch {
            return (.invalid(error.reason), false)
        }
        if !fits {
            if encoder.isEmpty { return (.tooLarge, false) }
            sendPending()   // its failure is counted and reported, it is not about this sample
            fits = (try? encoder.append(kind, name: name, labels: labels, value: value)) ?? false
            if !fits { return (.tooLarge, false) }
        }
        pendingSamples += 1
        appendsSinceReset += 1
        return complete()
    }

    /// Appends one keyed sample (distinct or top-K) through `append`, sending the batch first
    /// when it is full.
    mutating func addKeyed(_ append: (inout DatagramEncoder) throws(EncodingError) -> Bool) -> (RecordResult, Bool) {
        var fits: Bool
        do {
            fits = try append(&encoder)
            if !fits {
                if encoder.isEmpty { return (.tooLarge, false) }
                sendPending()
                fits = try append(&encoder)
                if !fits { return (.tooLarge, false) }
            }
        } catch {
            return (.invalid(error.reason), false)
        }
        pendingSamples += 1
        appendsSinceReset += 1
        return complete()
    }

    /// Appends up to three samples that must share a datagram. `activeDelta`: the transfer
    /// guard's `p2p.transfers.active` add among them (the first sample), which is never lost.
    mutating func addGroup(
        _ a: HelperSample, _ b: HelperSample?, _ c: HelperSample?, activeDelta: Int64 = 0
    ) -> (RecordResult, Bool) {
        if let p = a.problem ?? b?.problem ?? c?.problem { return (.invalid(p), false) }
        let need = a.worstCaseSize + (b?.worstCaseSize ?? 0) + (c?.worstCaseSize ?? 0)
        let count = 1 + (b == nil ? 0 : 1) + (c == nil ? 0 : 1)
        guard 1 + need <= encoder.maxSize else { return (.tooLarge, false) }
        if encoder.bytes.count + need > encoder.maxSize
            || appendsSinceReset + count > WireFormat.maxSeriesPerDatagram {
            sendPending()
        }
        var appended = 0
        do {
            // Cannot fail: the samples were checked and the room reserved above.
            if try append(a) { appended += 1 }
            if let b, try append(b) { appended += 1 }
            if let c, try append(c) { appended += 1 }
        } catch {
            return (.invalid(error.reason), false)
        }
        pendingSamples += UInt64(appended)
        appendsSinceReset += appended
        if activeDelta != 0 {
            activePending += activeDelta
            keptPending += 1
        }
        return complete()
    }

    private mutating func append(_ s: HelperSample) throws(EncodingError) -> Bool {
        if !s.extra.isEmpty {   // the encoder validates the caller's labels (names, repeats, count)
            return try encoder.append(s.kind, name: s.name, labels: (s.label.map { [$0] } ?? []) + s.extra, value: s.value)
        }
        if let l = s.label {
            return try encoder.append(s.kind, name: s.name, labels: CollectionOfOne(l), value: s.value)
        }
        return try encoder.append(s.kind, name: s.name, labels: EmptyCollection(), value: s.value)
    }

    /// Sends now in immediate mode; otherwise reports whether the flush timer must be armed.
    private mutating func complete() -> (RecordResult, Bool) {
        if immediate {
            let e = sendPending()
            let retry = debtTimer && activeDebt != 0 && !flushScheduled
            if retry { flushScheduled = true }
            return (e == 0 ? .sent : .dropped(errno: e), retry)
        }
        if timed && !flushScheduled {
            flushScheduled = true
            return (.buffered, true)
        }
        return (.buffered, false)
    }

    /// How long a call may wait for room now: not at all once a batched wait timed out.
    var waitNanos: UInt64? { !immediate && stalled ? nil : callWaitNanos }

    /// Sends the pending datagram, led by the pending drop report, then starts an empty one.
    /// Returns 0 or the errno of the failed send (the datagram is then dropped and counted; its
    /// transfer adds become debt). `keepIfFull` (the flush timer): never wait, and keep the batch
    /// when the sidecar's queue is full. Undelivered transfer `+1`s go first (so a `-1` in this
    /// datagram never finds the gauge at zero), `-1`s after it.
    @discardableResult
    mutating func sendPending(keepIfFull: Bool = false) -> Int32 {
        guard !encoder.isEmpty else { return 0 }
        let wait = keepIfFull ? nil : waitNanos
        var e: Int32 = activeDebt > 0 ? sendDebt(waitNanos: wait) : 0
        if e == 0 {
            if pendingDrops == 0 {
                e = encoder.bytes.withUnsafeBytes { socket.send($0, waitNanos: wait) }
            } else {
                withReport.removeAll(keepingCapacity: true)
                withReport.append(WireFormat.magic)
                withReport.append(WireFormat.Tag.dropped)
                Varint.append(pendingDrops, to: &withReport)
                withReport.append(contentsOf: encoder.bytes.dropFirst())
                e = withReport.withUnsafeBytes { socket.send($0, waitNanos: wait) }
            }
        }
        if keepIfFull && e == EAGAIN { return e }
        let samples = pendingSamples
        if e == 0 {
            pendingDrops = 0
            stalled = false
            stats.sentDatagrams += 1
            stats.sentSamples += samples
        } else {
            pendingDrops += 1
            activeDebt += activePending
            stats.droppedDatagrams += 1
            stats.droppedSamples += samples - keptPending
            stats.keptSamples += keptPending
            stats.lastErrno = e
            if e == EAGAIN, (wait ?? 0) > 0, !immediate { stalled = true }
        }
        encoder.reset()
        pendingSamples = 0
        appendsSinceReset = 0
        activePending = 0
        keptPending = 0
        if e == 0 && activeDebt < 0 { _ = sendDebt(waitNanos: nil) }
        return e
    }

    /// Sends the undelivered transfer adds as one `p2p.transfers.active` add of their sum, in a
    /// datagram of their own. 0 (the debt is paid) or the errno (it stays; nothing is counted).
    mutating func sendDebt(waitNanos: UInt64? = nil) -> Int32 {
        guard activeDebt != 0 else { return 0 }
        debtEncoder.reset()
        let value: SampleValue = activeDebt > 0 ? .unsigned(UInt64(activeDebt)) : .signed(activeDebt)
        _ = try? debtEncoder.append(.gaugeAdd, name: P2PMetricNames.transfersActive, labels: EmptyCollection(), value: value)
        let e = debtEncoder.bytes.withUnsafeBytes { socket.send($0, waitNanos: waitNanos) }
        if e == 0 {
            activeDebt = 0
            stats.resentAdds += 1
        }
        return e
    }
}
