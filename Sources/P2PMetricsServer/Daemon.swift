import CDatagramSocket
import CPidfd
import CLibUV
import Glibc
import P2PMetricsExposition
import P2PMetricsHTTP
import P2PMetricsInputDatagram
import P2PMetricsInputOTLP
import P2PMetricsStore
import P2PMetricsWire

/// The running sidecar: one libuv loop driving the ingest socket, the HTTP listener, signals and
/// systemd notifications around one `MetricStore`.
public final class Daemon: ExpositionSource {
    private var configuration: ServerConfiguration
    /// Resolves the configuration again from the same file and flags (SIGHUP); nil: no file.
    private let reloadConfiguration: (() throws -> ServerConfiguration)?
    private let loop: UnsafeMutablePointer<uv_loop_t>
    private var store: MetricStore
    /// The ingest sockets' input (Unix and UDP): it turns datagrams into the store's samples and
    /// counts them.
    private var input = DatagramInput()
    private var receiver: IngestReceiver?
    private var udpReceiver: IngestReceiver?
    private var processWatcher: ProcessWatcher?
    /// Renderings in progress; expiry waits for none to be (their positions must stay valid).
    private var activeRenderings = 0
    private var expiryDue = false
    private var http: HTTPServer?
    /// The OTLP/HTTP receiver (`--otlp`), and the input it feeds.
    private var otlpServer: HTTPServer?
    private var otlp = OTLPInput()
    private var timers: [UnsafeMutablePointer<uv_timer_t>] = []
    private var signals: [UnsafeMutablePointer<uv_signal_t>] = []
    private let startTime: Double
    /// The ingest socket this daemon bound itself (nil: systemd's).
    private var boundSocket: IngestSocketFile?
    private var supplementaryGroups = SupplementaryGroups()

    // Self-metric state.
    private var lastScrapeDuration = 0.0
    private var scrapes: (text: UInt64, openMetrics: UInt64) = (0, 0)
    private var responses: [HTTPStatus: UInt64] = [:]

    /// Where the sockets came from, for the startup log line.
    public private(set) var socketOrigin = ""

    /// Takes the sockets from systemd (socket activation) or binds them, and prepares the loop.
    /// Throws a `DaemonError` with one clear line when a socket cannot be had. On SIGHUP the
    /// daemon calls `reloadConfiguration` (when given) and applies what can change while running.
    public init(configuration: ServerConfiguration, reloadConfiguration: (() throws -> ServerConfiguration)? = nil) throws {
        self.configuration = configuration
        self.reloadConfiguration = reloadConfiguration
        store = MetricStore(configuration: configuration.store)
        otlp.decoder.resourceAttributes = configuration.otlpResourceLabels
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        startTime = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9

        loop = .allocate(capacity: 1)
        uv_loop_init(loop)
        // The clock the store and the OTLP stream table stamp entries with, from the start: a first
        // tick jumping from 0 to the loop's time would expire everything seen before it.
        store.now = UInt32(truncatingIfNeeded: uv_now(loop) / 1_000)

        // First: a signal during a long restore is then handled by the loop once it runs (drain,
        // save, exit 0) instead of killing the process after the state file was consumed.
        for signal in ProcessSignals.terminating + [SIGHUP] {
            let handle = UnsafeMutablePointer<uv_signal_t>.allocate(capacity: 1)
            uv_signal_init(loop, handle)
            handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            uv_signal_start(handle, { handle, signal in
                guard let data = handle?.pointee.data else { return }
                Unmanaged<Daemon>.fromOpaque(data).takeUnretainedValue().received(signal)
            }, signal)
            signals.append(handle)
        }
        if configuration.udpAddress != nil, configuration.store.requiresCredentials {
            throw DaemonError("--udp cannot be combined with an allow-list: UDP datagrams carry no credentials")
        }
        if let path = configuration.stateFile { try StateFile.checkUsable(path) }
        let activated = try ActivatedSockets.take()
        let ingestFD: Int32
        if let fd = activated.ingest {
            ingestFD = fd
        } else {
            let bound = try IngestSocketFile.bind(
                path: configuration.socketPath, mode: configuration.socketMode,
                privateDirectory: configuration.privateSocketDirectory)
            boundSocket = bound
            ingestFD = bound.fd
        }
        do {
            try startServing(ingestFD: ingestFD, activated: activated)
        } catch {
            boundSocket?.remove()  // a daemon that fails to start leaves no socket file behind
            throw error
        }
        addTimer(every: 5_000) { $0.notifyStatus() }
        addTimer(every: 1_000) { $0.tick() }
        if let interval = ServiceManager.watchdogPingIntervalMilliseconds() {
            addTimer(every: interval) { _ in ServiceManager.notify("WATCHDOG=1") }
        }
    }

    /// Everything after the ingest socket is had: receivers, HTTP, the state file.
    private func startServing(ingestFD: Int32, activated: ActivatedSockets) throws {
        _ = p2pmd_set_receive_buffer(ingestFD, configuration.receiveBufferBytes)
        socketOrigin = [
            activated.ingest != nil ? "ingest from systemd" : "ingest bound at \(configuration.socketPath)",
            activated.http != nil ? "http from systemd" : "http bound at \(configuration.listenAddress)",
        ].joined(separator: ", ")

        _ = p2pmd_raise_nofile_limit()  // one pidfd per watched process
        let wantCredentials = configuration.store.requiresCredentials || configuration.store.trackProcessGauges
        let receiver = try IngestReceiver(
            loop: loop, fd: ingestFD, credentials: wantCredentials,
            apply: { [unowned self] bytes, sender in
                let sender = self.withSupplementaryGroups(sender)
                self.input.ingest(bytes, into: &self.store, from: sender)
            },
            refuseTruncated: { [unowned self] length in self.input.countRejected(.oversized, bytes: length) })
        self.receiver = receiver
        if configuration.store.trackProcessGauges {
            let watcher = ProcessWatcher(loop: loop) { [unowned self] pid in self.store.processExited(pid) }
            processWatcher = watcher
            receiver.afterDrain = { [unowned self] in
                for pid in self.store.takeNewlyTrackedProcesses() { watcher.watch(pid) }
            }
        }
        if let address = configuration.udpAddress {
            let fd = address.withSocketAddress { p2pmd_bind_udp($0, UInt32($1)) }
            guard fd >= 0 else { throw DaemonError("cannot bind UDP \(address): \(String(cString: strerror(-fd)))") }
            _ = p2pmd_set_receive_buffer(fd, configuration.receiveBufferBytes)
            udpReceiver = try IngestReceiver(
                loop: loop, fd: fd, credentials: false,
                apply: { [unowned self] bytes, _ in self.input.ingest(bytes, into: &self.store) },
                refuseTruncated: { [unowned self] length in self.input.countRejected(.oversized, bytes: length) })
            socketOrigin += ", udp bound at \(address)"
        }
        http = try HTTPServer(loop: loop, configuration: configuration, source: self, inheritedFD: activated.http)
        if let address = configuration.otlpAddress {
            otlpServer = try HTTPServer(loop: loop, configuration: configuration, source: self, inheritedFD: nil, otlpAddress: address)
            socketOrigin += ", otlp bound at \(address)"
        }

        // Only once both sockets are had: a daemon that fails to start must not consume the file.
        if let path = configuration.stateFile {
            switch try StateFile.load(from: path, into: &store) {
            case .absent: break
            case .restored(let samples, let refused):
                let total = refused.reduce(0) { $0 + $1.count }
                let reasons = refused.map { "\($0.reason) \($0.count)" }.joined(separator: ", ")
                writeStandardError(
                    "p2pmetricsd: restored counters from \(path): \(samples) samples restored, \(total) refused\(total == 0 ? "" : " (\(reasons))")")
            case .refused(let reason): writeStandardError("p2pmetricsd: ignoring state file \(path): \(reason)")
            }
        }
    }

    /// Runs until a terminating signal (see `ProcessSignals`); returns the process exit status.
    public func run() -> Int32 {
        ServiceManager.notify("READY=1")
        notifyStatus()
        uv_run(loop, UV_RUN_DEFAULT)
        uv_loop_close(loop)
        loop.deallocate()
        if let path = configuration.stateFile, let error = StateFile.save(store.counterSnapshot(), to: path) {
            writeStandardError("p2pmetricsd: could not save counters: \(error)")
        }
        boundSocket?.remove()
        writeStandardError(
            "p2pmetricsd: shutdown: datagrams_received=\(input.statistics.datagramsReceived) samples_applied=\(store.statistics.samplesApplied)")
        return 0
    }

    /// The sender with its supplementary groups when only they could admit it (`allowed_gids`).
    private func withSupplementaryGroups(_ sender: SenderCredentials?) -> SenderCredentials? {
        guard let sender, !configuration.store.allowedGIDs.isEmpty, !configuration.store.admits(sender) else { return sender }
        return supplementaryGroups.resolve(sender, now: store.now)
    }

    /// SIGHUP reloads the configuration file; every other signal the daemon catches ends it
    /// cleanly: drain, save state, exit 0.
    private func received(_ signal: Int32) {
        let name = ProcessSignals.name(signal)
        if signal == SIGHUP {
            reload()
            return
        }
        writeStandardError("p2pmetricsd: \(name): \(configuration.stateFile == nil ? "exiting" : "saving state and exiting")")
        shutdown()
    }

    /// Applies a reloaded configuration file: allow-lists, series limits, default buckets and TTL,
    /// metric entries (for metrics without series yet). What needs a socket, a listener or the
    /// process tracker again is kept until a restart, and named in the log line. A file with an
    /// error, or an allow-list the running sockets cannot enforce, changes nothing.
    private func reload() {
        guard let reloadConfiguration else {
            writeStandardError("p2pmetricsd: SIGHUP: no configuration file (--config) to reload")
            return
        }
        let new: ServerConfiguration
        do {
            new = try reloadConfiguration()
            if new.store.requiresCredentials && !configuration.store.requiresCredentials {
                guard configuration.udpAddress == nil else {
                    throw DaemonError("an allow-list cannot be combined with --udp: UDP datagrams carry no credentials")
                }
                guard configuration.store.trackProcessGauges else {
                    throw DaemonError("an allow-list needs a restart here: sender credentials were not enabled at start")
                }
            }
        } catch {
            let line = (error as? DaemonError)?.description ?? "\(error)"
            writeStandardError("p2pmetricsd: SIGHUP: reload refused, the running configuration stays: \(line)")
            return
        }
        let kept = new.keysKeptUntilRestart(running: configuration, existingMetrics: Set(store.families.map(\.name)))
        store.reconfigure(new.store)
        configuration.store = store.configuration
        let path = new.configFile ?? "the configuration"
        writeStandardError(
            "p2pmetricsd: SIGHUP: reloaded \(path)\(kept.isEmpty ? "" : "; kept until a restart: \(kept.joined(separator: ", "))")")
    }

    /// Stops a self-bound ingest socket from accepting (senders get EPIPE), drains what the kernel
    /// had accepted, then closes every handle so the loop ends. A socket from systemd is left
    /// accepting: it belongs to systemd, and the next instance reads what queues meanwhile.
    private func shutdown() {
        ServiceManager.notify("STOPPING=1")
        if boundSocket != nil, let fd = receiver?.fd { _ = Glibc.shutdown(fd, Int32(SHUT_RD)) }
        for r in [receiver, udpReceiver].compactMap({ $0 }) {
            r.drain(maxBatches: 1 << 20)
            r.close()
        }
        receiver = nil
        udpReceiver = nil
        http?.close()
        otlpServer?.close()
        processWatcher?.closeAll()
        for timer in timers {
            uv_timer_stop(timer)
            if let box = timer.pointee.data { Unmanaged<TimerAction>.fromOpaque(box).release() }
            timer.pointee.data = nil
            closeAndFree(timer.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { $0 })
        }
        for signal in signals {
            let signum = signal.pointee.signum
            closeAndFree(signal.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { $0 })
            // Closing restored the default action: a second signal must not cut the state save short.
            Glibc.signal(signum, SIG_IGN)
        }
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
        otlp.expireStreams(now: store.now, from: &store)
        expiryDue = true
        expireIfDue()
    }

    private func expireIfDue() {
        guard expiryDue, activeRenderings == 0 else { return }
        expiryDue = false
        store.expireStale()
    }

    private func notifyStatus() {
        ServiceManager.notify(
            "STATUS=\(store.seriesCount) series, \(store.statistics.samplesApplied) samples applied, \(input.statistics.datagramsReceived) datagrams received")
    }

    // MARK: ExpositionSource

    func beginScrape(into out: inout [UInt8], format: ExpositionFormat) {
        activeRenderings += 1
        var selfMetrics = SelfMetrics(
            version: configuration.version, statistics: store.statistics, inputs: InputCounters(input), liveSeries: store.seriesCount,
            seriesMemoryBytes: store.memoryFootprint, lastScrapeDurationSeconds: lastScrapeDuration,
            trackedProcesses: processWatcher?.count ?? 0,
            scrapesTotal: scrapes,
            httpResponses: responses.sorted { $0.key.rawValue < $1.key.rawValue }.map { ($0.key.rawValue, $0.value) },
            startTimeSeconds: startTime)
        selfMetrics.format = format
        selfMetrics.httpConnections = http?.connectionStatistics ?? HTTPConnectionStatistics()
        if otlpServer != nil {
            selfMetrics.otlp = OTLPCounters(
                requestsReceived: otlp.statistics.requestsReceived, requestsRejected: otlp.statistics.requestsRejected,
                pointsReceived: otlp.statistics.pointsReceived, pointsRejected: otlp.statistics.rejected.byReason,
                streams: otlp.streams.count)
        }
        selfMetrics.residentMemoryBytes = ProcessMemory.residentBytes()
        selfMetrics.seriesMemoryLimitBytes = configuration.store.maxMemoryBytes
        selfMetrics.render(into: &out)
    }

    func renderSlice(_ renderer: inout ExpositionRenderer, into out: inout [UInt8], budget: Int) -> Bool {
        renderer.render(store, into: &out, budget: budget)
    }

    func renderEnded() {
        activeRenderings -= 1
        expireIfDue()
    }

    func drainIngest() {
        for receiver in [receiver, udpReceiver].compactMap({ $0 }) { receiver.drainOneTurn() }
    }

    func scrapeFinished(durationSeconds: Double, format: ExpositionFormat) {
        lastScrapeDuration = durationSeconds
        if format == .openMetrics { scrapes.openMetrics += 1 } else { scrapes.text += 1 }
    }

    func exportMetrics(_ body: [UInt8], head: HTTPRequestHead) -> OTLPExportResponse {
        drainIngest()  // datagrams waiting first: an export never holds them up for more than one decode
        return OTLPEndpoint.export(body, head: head, input: &otlp, store: &store)
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

extension InputCounters {
    /// The counters of the ingest sockets' input and of the text input behind it.
    init(_ input: DatagramInput) {
        self.init(datagramsReceived: input.statistics.datagramsReceived, bytesReceived: input.statistics.bytesReceived,
                  datagramsRejected: input.statistics.rejected.byReason,
                  textLinesReceived: input.text.statistics.linesReceived, textLinesRejected: input.text.statistics.rejected.byReason)
    }
}
