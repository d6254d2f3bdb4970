import CDatagramSocket
import CLibUV
import Glibc
import P2PMetricsExposition
import P2PMetricsHTTP
import P2PMetricsStore
import P2PMetricsWire

/// The running sidecar: one libuv loop driving the ingest socket, the HTTP listener, signals and
/// systemd notifications around one `MetricStore`.
public final class Daemon: ExpositionSource {
    private let configuration: ServerConfiguration
    private let loop: UnsafeMutablePointer<uv_loop_t>
    private var store: MetricStore
    private var receiver: IngestReceiver?
    private var udpReceiver: IngestReceiver?
    private var processWatcher: ProcessWatcher?
    private var activeScrapes = 0
    private var http: HTTPServer?
    private var timers: [UnsafeMutablePointer<uv_timer_t>] = []
    private var signals: [UnsafeMutablePointer<uv_signal_t>] = []
    private let startTime: Double

    // Self-metric state.
    private var lastScrapeDuration = 0.0
    private var scrapes: (text: UInt64, openMetrics: UInt64) = (0, 0)
    private var responses: [HTTPStatus: UInt64] = [:]

    /// Where the sockets came from, for the startup log line.
    public private(set) var socketOrigin = ""

    /// Takes the sockets from systemd (socket activation) or binds them, and prepares the loop.
    /// Throws a `DaemonError` with one clear line when a socket cannot be had.
    public init(configuration: ServerConfiguration) throws {
        self.configuration = configuration
        store = MetricStore(configuration: configuration.store)
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        startTime = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9

        loop = .allocate(capacity: 1)
        uv_loop_init(loop)

        let activated = try ActivatedSockets.take()
        let ingestFD: Int32
        if let fd = activated.ingest {
            ingestFD = fd
        } else {
            ingestFD = try Self.bindIngest(path: configuration.socketPath, mode: configuration.socketMode)
        }
        _ = p2pmd_set_receive_buffer(ingestFD, configuration.receiveBufferBytes)
        socketOrigin = [
            activated.ingest != nil ? "ingest from systemd" : "ingest bound at \(configuration.socketPath)",
            activated.http != nil ? "http from systemd" : "http bound at \(configuration.listenAddress)",
        ].joined(separator: ", ")

        _ = p2pmd_raise_nofile_limit()  // one pidfd per watched process
        let wantCredentials = configuration.store.requiresCredentials || configuration.store.trackProcessGauges
        let receiver = try IngestReceiver(
            loop: loop, fd: ingestFD, credentials: wantCredentials,
            apply: { [unowned self] bytes, sender in self.store.ingest(bytes, from: sender) },
            refuseTruncated: { [unowned self] length in self.store.countRejected(.oversized, bytes: length) })
        self.receiver = receiver
        if configuration.store.trackProcessGauges {
            let watcher = ProcessWatcher(loop: loop) { [unowned self] pid in self.store.processExited(pid) }
            processWatcher = watcher
            receiver.afterDrain = { [unowned self] in
                for pid in self.store.takeNewlyTrackedProcesses() { watcher.watch(pid) }
            }
        }
        if let address = configuration.udpAddress {
            guard !configuration.store.requiresCredentials else {
                throw DaemonError("--udp cannot be combined with an allow-list: UDP datagrams carry no credentials")
            }
            guard let (host, port) = parseHostPort(address) else {
                throw DaemonError("bad --udp address '\(address)': expected HOST:PORT with a numeric host, e.g. 127.0.0.1:8125")
            }
            let fd = p2pmd_bind_udp(host, port)
            guard fd >= 0 else {
                throw DaemonError("cannot bind UDP \(address): \(fd == -EINVAL ? "not a numeric address" : String(cString: strerror(-fd)))")
            }
            _ = p2pmd_set_receive_buffer(fd, configuration.receiveBufferBytes)
            udpReceiver = try IngestReceiver(
                loop: loop, fd: fd, credentials: false,
                apply: { [unowned self] bytes, _ in self.store.ingest(bytes) },
                refuseTruncated: { [unowned self] length in self.store.countRejected(.oversized, bytes: length) })
            socketOrigin += ", udp bound at \(address)"
        }
        http = try HTTPServer(loop: loop, configuration: configuration, source: self, inheritedFD: activated.http)

        // Only once both sockets are had: a daemon that fails to start must not consume the file.
        if let path = configuration.stateFile {
            switch StateFile.load(from: path, into: &store) {
            case .absent: break
            case .restored(let n): writeStandardError("p2pmetricsd: restored counters from \(path) (\(n) datagrams)")
            case .refused(let reason): writeStandardError("p2pmetricsd: ignoring state file \(path): \(reason)")
            }
        }

        for signal in [SIGTERM, SIGINT] {
            let handle = UnsafeMutablePointer<uv_signal_t>.allocate(capacity: 1)
            uv_signal_init(loop, handle)
            handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            uv_signal_start(handle, { handle, _ in
                guard let data = handle?.pointee.data else { return }
                Unmanaged<Daemon>.fromOpaque(data).takeUnretainedValue().shutdown()
            }, signal)
            signals.append(handle)
        }
        addTimer(every: 5_000) { $0.notifyStatus() }
        addTimer(every: 1_000) { $0.tick() }
        if let interval = ServiceManager.watchdogPingIntervalMilliseconds() {
            addTimer(every: interval) { _ in ServiceManager.notify("WATCHDOG=1") }
        }
    }

    /// Runs until SIGTERM or SIGINT; returns the process exit status.
    public func run() -> Int32 {
        ServiceManager.notify("READY=1")
        notifyStatus()
        uv_run(loop, UV_RUN_DEFAULT)
        uv_loop_close(loop)
        loop.deallocate()
        if let path = configuration.stateFile, let error = StateFile.save(store.counterSnapshot(), to: path) {
            writeStandardError("p2pmetricsd: could not save counters: \(error)")
        }
        let s = store.statistics
        writeStandardError("p2pmetricsd: shutdown: datagrams_received=\(s.datagramsReceived) samples_applied=\(s.samplesApplied)")
        return 0
    }

    /// Drains what is already queued on the ingest socket, then closes every handle so the loop ends.
    private func shutdown() {
        ServiceManager.notify("STOPPING=1")
        for r in [receiver, udpReceiver].compactMap({ $0 }) {
            r.drain(maxBatches: 1 << 20)
            r.close()
        }
        receiver = nil
        udpReceiver = nil
        http?.close()
        processWatcher?.closeAll()
        for timer in timers {
            uv_timer_stop(timer)
            if let box = timer.pointee.data { Unmanaged<TimerAction>.fromOpaque(box).release() }
            timer.pointee.data = nil
            closeAndFree(timer.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { $0 })
        }
        for signal in signals { closeAndFree(signal.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { $0 }) }
        timers = []
        signals = []
    }

    private final class TimerAction {
        let action: (Daemon) -> Void
        unowned let daemon: Daemon
        init(_ daemon: Daemon, _ action: @escaping (Daemon) -> Void) {
            self.daemon = daemon
            self.action = action
        }
    }

    private func addTimer(every milliseconds: UInt64, _ action: @escaping (Daemon) -> Void) {
        let timer = UnsafeMutablePointer<uv_timer_t>.allocate(capacity: 1)
        uv_timer_init(loop, timer)
        // The timer holds its action box until shutdown releases it.
        timer.pointee.data = Unmanaged.passRetained(TimerAction(self, action)).toOpaque()
        uv_timer_start(timer, { timer in
            guard let data = timer?.pointee.data else { return }
            let box = Unmanaged<TimerAction>.fromOpaque(data).takeUnretainedValue()
            box.action(box.daemon)
        }, milliseconds, milliseconds)
        timers.append(timer)
    }

    /// Advances the store's clock and removes series past their TTL — never in the middle of a
    /// sliced scrape, whose position in the series lists must stay valid.
    private func tick() {
        store.now = UInt32(truncatingIfNeeded: uv_now(loop) / 1_000)
        if activeScrapes == 0 { store.expireStale() }
    }

    private func notifyStatus() {
        let s = store.statistics
        ServiceManager.notify(
            "STATUS=\(store.seriesCount) series, \(s.samplesApplied) samples applied, \(s.datagramsReceived) datagrams received")
    }

    private static func bindIngest(path: String, mode: UInt32) throws -> Int32 {
        let directory = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !directory.isEmpty {
            var st = stat()
            if stat(directory, &st) != 0 {
                guard mkdir(directory, 0o755) == 0 || errno == EEXIST else {
                    throw DaemonError("cannot create \(directory) for the ingest socket: \(String(cString: strerror(errno)))")
                }
            }
        }
        let fd = p2pmd_bind_datagram(path, mode)
        guard fd >= 0 else {
            let reason = fd == -EADDRINUSE ? "another process is serving it" : String(cString: strerror(-fd))
            throw DaemonError("cannot bind the ingest socket \(path): \(reason)")
        }
        return fd
    }

    // MARK: ExpositionSource

    func beginScrape(into out: inout [UInt8], format: ExpositionFormat) {
        activeScrapes += 1
        var selfMetrics = SelfMetrics(
            version: configuration.version, statistics: store.statistics, liveSeries: store.seriesCount,
            seriesMemoryBytes: store.memoryFootprint, lastScrapeDurationSeconds: lastScrapeDuration,
            trackedProcesses: processWatcher?.count ?? 0,
            scrapesTotal: scrapes,
            httpResponses: responses.sorted { $0.key.rawValue < $1.key.rawValue }.map { ($0.key.rawValue, $0.value) },
            startTimeSeconds: startTime)
        selfMetrics.format = format
        selfMetrics.residentMemoryBytes = ProcessMemory.residentBytes()
        selfMetrics.seriesMemoryLimitBytes = configuration.store.maxMemoryBytes
        selfMetrics.render(into: &out)
    }

    func renderSlice(_ renderer: inout ExpositionRenderer, into out: inout [UInt8], budget: Int) -> Bool {
        renderer.render(store, into: &out, budget: budget)
    }

    func scrapeFinished(durationSeconds: Double, format: ExpositionFormat) {
        activeScrapes -= 1
        lastScrapeDuration = durationSeconds
        if format == .openMetrics { scrapes.openMetrics += 1 } else { scrapes.text += 1 }
    }

    func scrapeAborted() {
        activeScrapes -= 1
    }

    func countResponse(_ status: HTTPStatus) {
        responses[status, default: 0] += 1
    }
}

/// Writes one line to standard error (unbuffered, safe from any context).
public func writeStandardError(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress! + offset, $0.count - offset) }
        if n <= 0 { break }
        offset += n
    }
}
