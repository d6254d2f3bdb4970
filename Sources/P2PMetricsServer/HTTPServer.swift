import CDatagramSocket
import CLibUV
import Glibc
import P2PMetricsExposition
import P2PMetricsHTTP

/// What the HTTP side needs from the daemon: the exposition, the ingest socket, and a place to
/// count responses.
protocol ExpositionSource: AnyObject {
    /// Appends the self-metrics that open every rendering (a rendering is in progress from here
    /// until `renderEnded`).
    func beginScrape(into out: inout [UInt8], format: ExpositionFormat)
    /// Appends the next slice of the store's exposition; returns true when it is complete.
    func renderSlice(_ renderer: inout ExpositionRenderer, into out: inout [UInt8], budget: Int) -> Bool
    /// A rendering finished or was dropped.
    func renderEnded()
    /// A complete /metrics response was sent.
    func scrapeFinished(durationSeconds: Double, format: ExpositionFormat)
    func countResponse(_ status: HTTPStatus)
    /// Receives a bounded batch from the ingest socket (called between render slices).
    func drainIngest()
    /// Applies the body of an OTLP export request whose head `OTLPEndpoint` accepted.
    func exportMetrics(_ body: [UInt8], head: HTTPRequestHead) -> OTLPExportResponse
}

/// The HTTP/1.x listener: keep-alive, pipelining, bounded heads, timeouts, a connection cap at
/// which the least useful connection is evicted so that a new scrape always gets in.
final class HTTPServer {
    /// Bytes handed to the kernel per write of a response body (a progress step of the send timeout).
    static let writeBytes = 256 * 1024
    let loop: UnsafeMutablePointer<uv_loop_t>
    let configuration: ServerConfiguration
    unowned let source: ExpositionSource
    let renderer: RenderScheduler
    /// One read buffer for all connections: each read is consumed before the next one starts.
    let readBuffer = UnsafeMutableRawPointer.allocate(byteCount: HTTPServer.readBufferBytes, alignment: 16)
    static let readBufferBytes = 16 * 1024
    private let listener: UnsafeMutableRawPointer
    private let isPipe: Bool
    /// This listener is the OTLP receiver (`--otlp`): it also serves `POST /v1/metrics`.
    let servesOTLP: Bool
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    /// Connections not yet closing (the cap counts these).
    private var openConnections = 0
    private(set) var refusedConnections: UInt64 = 0
    private(set) var evictedConnections = [UInt64](repeating: 0, count: EvictionReason.allCases.count)

    var stream: UnsafeMutablePointer<uv_stream_t> { listener.assumingMemoryBound(to: uv_stream_t.self) }

    /// Serves on an already listening socket (from systemd) or binds `configuration.listenAddress`;
    /// the OTLP receiver binds `otlpAddress` instead.
    init(loop: UnsafeMutablePointer<uv_loop_t>, configuration: ServerConfiguration, source: ExpositionSource,
         inheritedFD: Int32?, otlpAddress: NetworkAddress? = nil) throws {
        servesOTLP = otlpAddress != nil
        self.loop = loop
        self.configuration = configuration
        self.source = source
        renderer = RenderScheduler(loop: loop, source: source)
        if let fd = inheritedFD, p2pmd_socket_family(fd) == AF_UNIX {
            isPipe = true
            listener = .allocate(byteCount: uv_handle_size(UV_NAMED_PIPE), alignment: 16)
            uv_pipe_init(loop, listener.assumingMemoryBound(to: uv_pipe_t.self), 0)
            let rc = uv_pipe_open(listener.assumingMemoryBound(to: uv_pipe_t.self), fd)
            guard rc == 0 else { throw DaemonError("cannot use the inherited HTTP socket: \(uvError(rc))") }
        } else {
            isPipe = false
            listener = .allocate(byteCount: uv_handle_size(UV_TCP), alignment: 16)
            let tcp = listener.assumingMemoryBound(to: uv_tcp_t.self)
            uv_tcp_init(loop, tcp)
            if let fd = inheritedFD {
                let rc = uv_tcp_open(tcp, fd)
                guard rc == 0 else { throw DaemonError("cannot use the inherited HTTP socket: \(uvError(rc))") }
            } else {
                try Self.bind(tcp, to: otlpAddress ?? configuration.listenAddress)
            }
        }
        renderer.onCompleted = { [unowned self] _ in self.limitRetainedRenderings() }
        stream.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        let rc = uv_listen(stream, 128) { server, status in
            guard let server, let data = server.pointee.data, status == 0 else { return }
            Unmanaged<HTTPServer>.fromOpaque(data).takeUnretainedValue().accept()
        }
        guard rc == 0 else {
            throw DaemonError("cannot listen on \(inheritedFD == nil ? (otlpAddress ?? configuration.listenAddress).description : "the inherited HTTP socket"): \(uvError(rc))")
        }
    }

    private static func bind(_ tcp: UnsafeMutablePointer<uv_tcp_t>, to address: NetworkAddress) throws {
        let bound = address.withSocketAddress { address, _ in uv_tcp_bind(tcp, address, 0) }
        guard bound == 0 else { throw DaemonError("cannot listen on \(address): \(uvError(bound))") }
    }

    /// Connection counts for the self-metrics: open, refused at the cap, evicted by reason.
    var connectionStatistics: HTTPConnectionStatistics {
        HTTPConnectionStatistics(
            open: openConnections, refused: refusedConnections,
            evicted: zip(EvictionReason.allCases, evictedConnections).map { ($0.rawValue, $1) })
    }

    private func accept() {
        let client = UnsafeMutableRawPointer.allocate(
            byteCount: uv_handle_size(isPipe ? UV_NAMED_PIPE : UV_TCP), alignment: 16)
        if isPipe {
            uv_pipe_init(loop, client.assumingMemoryBound(to: uv_pipe_t.self), 0)
        } else {
            uv_tcp_init(loop, client.assumingMemoryBound(to: uv_tcp_t.self))
        }
        let clientStream = client.assumingMemoryBound(to: uv_stream_t.self)
        guard uv_accept(stream, clientStream) == 0, openConnections < configuration.maxConnections || evictOne() else {
            refusedConnections += 1
            closeAndFree(client.assumingMemoryBound(to: uv_handle_t.self))
            return
        }
        let connection = HTTPConnection(server: self, stream: clientStream)
        connections[ObjectIdentifier(connection)] = connection
        openConnections += 1
        connection.start()
    }

    /// Closes the connection that matters least (see `EvictionPolicy`) so that a new one fits.
    /// Returns false when every connection is busy with a request making progress.
    private func evictOne() -> Bool {
        let open = connections.values.filter { !$0.isClosing }
        let now = uv_now(loop)
        for connection in open { connection.noteWriteProgress(now: now) }
        guard let (index, reason) = EvictionPolicy.choose(open.map(\.activity), now: now) else { return false }
        evict(open[index], reason)
        return true
    }

    private func evict(_ connection: HTTPConnection, _ reason: EvictionReason) {
        evictedConnections[EvictionReason.allCases.firstIndex(of: reason) ?? 0] += 1
        connection.close()
    }

    /// Keeps the memory of renderings held by the connections still sending them bounded (see
    /// `RenderingRetention`): over the budget, the renderings only stalled connections hold are
    /// freed, oldest first (their connections closed, counted as `stalled`); a connection whose
    /// client reads is never closed for it. Returns the renderings still held and whether a new
    /// scrape must share one of them.
    @discardableResult
    private func limitRetainedRenderings() -> (held: [RenderedBody], mustShare: Bool) {
        let now = uv_now(loop)
        var holders: [ObjectIdentifier: (body: RenderedBody, connections: [HTTPConnection])] = [:]
        for connection in connections.values where !connection.isClosing {
            connection.noteWriteProgress(now: now)
            guard let body = connection.sendingBody else { continue }
            holders[ObjectIdentifier(body), default: (body, [])].connections.append(connection)
        }
        let held = Array(holders.values)
        let view = held.map {
            HeldRendering(bytes: $0.body.storage.count, sequence: $0.body.sequence, holders: $0.connections.map(\.activity))
        }
        let budget = RenderingRetention.budget(view)
        let (released, heldBytes) = RenderingRetention.release(view, budget: budget, now: now)
        for index in released {
            for connection in held[index].connections { evict(connection, .stalled) }
        }
        let kept = held.indices.filter { !released.contains($0) }.map { held[$0].body }
        return (kept, RenderingRetention.mustShare(heldBytes: heldBytes, budget: budget))
    }

    /// Gets `connection` a `/metrics` body: the rendering of its format and encoding in progress,
    /// if any; else, while held renderings are at their budget, the latest completed one of that
    /// format and encoding if a connection still holds it (never an older one: a scraper's
    /// counters would go back); else a new rendering.
    func requestRendering(format: ExpositionFormat, gzip: Bool, for connection: HTTPConnection) {
        if !renderer.isRendering(format: format, gzip: gzip) {
            let (held, mustShare) = limitRetainedRenderings()
            let latest = renderer.latestSequence(format: format, gzip: gzip)
            if mustShare, let shared = held.first(where: { $0.sequence == latest }) {
                connection.deliver(shared)
                return
            }
        }
        renderer.request(format: format, gzip: gzip, for: connection)
    }

    /// A connection started closing: it no longer counts against the cap.
    func closing(_ connection: HTTPConnection) {
        openConnections -= 1
        renderer.cancel(connection)
    }

    func remove(_ connection: HTTPConnection) {
        connections[ObjectIdentifier(connection)] = nil
    }

    /// Closes the listener and every connection.
    func close() {
        renderer.close()
        for connection in connections.values { connection.close() }
        closeAndFree(listener.assumingMemoryBound(to: uv_handle_t.self))
    }

    deinit { readBuffer.deallocate() }
}

/// One client connection and the response it is being sent.
final class HTTPConnection {
    private unowned let server: HTTPServer
    private let stream: UnsafeMutablePointer<uv_stream_t>
    private let timer: UnsafeMutablePointer<uv_timer_t>
    private var input: [UInt8] = []
    private var requestStarted = false
    private var responding = false
    private var closeAfterResponse = false
    private var closing = false
    /// The client shut down its sending side: answer what it asked, then close.
    private var peerFinished = false
    /// The last response is out and our side shut down: input is discarded until the client closes.
    private var lingering = false
    private var openHandles = 2
    private var completedRequests = 0
    /// Loop time (ms) of acceptance, and of the last completed request or write.
    private var acceptedAt: UInt64 = 0
    private var lastProgress: UInt64 = 0
    /// Bytes libuv still had queued for this connection at the last look: fewer at the next look
    /// means the kernel took more in between (the client reads).
    private var queuedBytesAtLastLook = 0

    // The scrape in progress: its request, then the shared body being sent.
    private var scrapeStart: UInt64 = 0
    private var scrapeMinorVersion = 1
    private var scrapeKeepAlive = true
    private var waitingForBody = false
    private var body: RenderedBody?
    private var bodyOffset = 0
    /// An OTLP export whose body is being read: its head and the body's length.
    private var pendingExport: (head: HTTPRequestHead, length: Int)?

    /// The rendering this connection is sending, if any.
    var sendingBody: RenderedBody? { body }

    init(server: HTTPServer, stream: UnsafeMutablePointer<uv_stream_t>) {
        self.server = server
        self.stream = stream
        timer = .allocate(capacity: 1)
        uv_timer_init(server.loop, timer)
        let me = Unmanaged.passUnretained(self).toOpaque()
        stream.pointee.data = me
        timer.pointee.data = me
    }

    private static func from(_ data: UnsafeMutableRawPointer?) -> HTTPConnection? {
        data.map { Unmanaged<HTTPConnection>.fromOpaque($0).takeUnretainedValue() }
    }

    func start() {
        acceptedAt = uv_now(server.loop)
        lastProgress = acceptedAt
        arm(server.configuration.idleTimeoutMilliseconds)
        startReading()
    }

    var isClosing: Bool { closing }

    /// Counts bytes the kernel took from the write queue since the last look as progress (at
    /// `now`): a client reading one large write slowly but steadily is not stalled.
    func noteWriteProgress(now: UInt64) {
        let queued = uv_stream_get_write_queue_size(stream)
        if queued < queuedBytesAtLastLook { lastProgress = max(lastProgress, now) }
        queuedBytesAtLastLook = queued
    }

    /// What the eviction policy looks at.
    var activity: ConnectionActivity {
        ConnectionActivity(completedRequests: completedRequests, awaitingResponse: waitingForBody,
                           responding: responding && !waitingForBody, acceptedAt: acceptedAt, lastProgress: lastProgress)
    }

    private func startReading() {
        guard !peerFinished else { return }
        uv_read_start(stream, { handle, _, buf in
            guard let handle, let buf, let connection = HTTPConnection.from(handle.pointee.data) else { return }
            buf.pointee = uv_buf_init(connection.server.readBuffer.assumingMemoryBound(to: CChar.self),
                                      UInt32(HTTPServer.readBufferBytes))
        }, { stream, nread, _ in
            guard let stream, let connection = HTTPConnection.from(stream.pointee.data) else { return }
            connection.didRead(nread)
        })
    }

    private func didRead(_ nread: Int) {
        if lingering {
            if nread < 0 { close() }
            return  // discarded
        }
        if nread == Int(UV_EOF.rawValue) {
            // A half-closed request still gets its whole response.
            peerFinished = true
            uv_read_stop(stream)
            if !responding { processInput() }
            return
        }
        if nread < 0 { close(); return }
        guard nread > 0 else { return }
        input.append(contentsOf: UnsafeRawBufferPointer(start: server.readBuffer, count: nread))
        if input.count > server.configuration.httpLimits.maxHeadBytes * 2 + (pendingExport?.length ?? 0) {
            // A client that pipelines more than we are willing to hold waits until we catch up.
            uv_read_stop(stream)
        }
        if !responding { processInput() }
    }

    /// Parses and answers as many complete requests as the input holds, one response at a time.
    private func processInput() {
        guard !closing, !responding else { return }
        if let pending = pendingExport {
            guard input.count >= pending.length else {
                if peerFinished { close(); return }  // the rest of the body will never come
                startReading()
                return
            }
            let body = Array(input[0..<pending.length])
            input.removeFirst(pending.length)
            pendingExport = nil
            requestStarted = false
            respondExport(server.source.exportMetrics(body, head: pending.head), head: pending.head, close: !pending.head.keepAlive)
            return
        }
        if input.isEmpty {
            if peerFinished { close(); return }
            requestStarted = false
            arm(server.configuration.idleTimeoutMilliseconds)
            startReading()
            return
        }
        let result = input.withUnsafeBytes { HTTPRequestParser.parse($0, limits: server.configuration.httpLimits) }
        switch result {
        case .incomplete:
            if peerFinished { close(); return }  // the rest of the head will never come
            if !requestStarted {
                requestStarted = true
                arm(server.configuration.requestTimeoutMilliseconds)
            }
            startReading()
        case .failure(let error):
            input.removeAll()
            respond(HTTPResponseHead.simple(error.status, body: "\(error.status.reason)\n", minorVersion: 1, keepAlive: false),
                    status: error.status, close: true)
        case .request(let head, let consumed):
            input.removeFirst(consumed)
            requestStarted = false
            handle(head)
        }
    }

    private func handle(_ head: HTTPRequestHead) {
        if server.servesOTLP && head.path == OTLPEndpoint.path {
            if let refusal = OTLPEndpoint.refusal(for: head) {
                respondExport(refusal, head: head, close: true)  // the body is not read
            } else {
                pendingExport = (head, Int(head.contentLength ?? 0))
                requestStarted = true
                arm(server.configuration.requestTimeoutMilliseconds)  // the whole body within the request timeout
                processInput()
            }
            return
        }
        let keepAlive = head.keepAlive && !head.hasBody
        let minor = head.minorVersion
        let isHead = head.method == "HEAD"
        switch HTTPRoute(head) {
        case .metrics:
            let format = ExpositionFormat.negotiate(accept: head.accept)
            let gzip = acceptsGzip(head.acceptEncoding)
            if isHead {
                var headers = [("Vary", "Accept, Accept-Encoding")]
                if gzip { headers.append(("Content-Encoding", "gzip")) }
                respond(HTTPResponseHead.make(.ok, minorVersion: minor, keepAlive: keepAlive,
                                              contentType: format.contentType, framing: .untilClose, extraHeaders: headers),
                        status: .ok, close: !keepAlive)
            } else {
                beginScrape(minorVersion: minor, keepAlive: keepAlive, format: format, gzip: gzip)
            }
        case .health:
            respond(HTTPResponseHead.simple(.ok, body: "OK\n", minorVersion: minor, keepAlive: keepAlive, includeBody: !isHead),
                    status: .ok, close: !keepAlive)
        case .index:
            let body = "p2pmetricsd \(server.configuration.version)\nMetrics: /metrics\nHealth: /-/healthy\n"
            respond(HTTPResponseHead.simple(.ok, body: body, minorVersion: minor, keepAlive: keepAlive, includeBody: !isHead),
                    status: .ok, close: !keepAlive)
        case .notFound:
            respond(HTTPResponseHead.simple(.notFound, body: "Not Found\n", minorVersion: minor, keepAlive: keepAlive,
                                            includeBody: !isHead),
                    status: .notFound, close: !keepAlive)
        case .methodNotAllowed:
            respond(HTTPResponseHead.simple(.methodNotAllowed, body: "Method Not Allowed\n", minorVersion: minor,
                                            keepAlive: keepAlive, extraHeaders: [("Allow", "GET, HEAD")]),
                    status: .methodNotAllowed, close: !keepAlive)
        }
    }

    // MARK: Responses

    private func respondExport(_ response: OTLPExportResponse, head: HTTPRequestHead, close: Bool) {
        var bytes = HTTPResponseHead.make(
            response.status, minorVersion: head.minorVersion, keepAlive: !close, contentType: response.contentType,
            framing: .contentLength(response.body.count),
            extraHeaders: response.status == .methodNotAllowed ? [("Allow", "POST")] : [])
        bytes += response.body
        respond(bytes, status: response.status, close: close)
    }

    private func respond(_ bytes: [UInt8], status: HTTPStatus, close: Bool) {
        server.source.countResponse(status)
        responding = true
        closeAfterResponse = close
        write(bytes)
    }

    /// Asks for the shared rendering; `deliver` sends it. No timeout runs while the daemon renders.
    private func beginScrape(minorVersion: Int, keepAlive: Bool, format: ExpositionFormat, gzip: Bool) {
        server.source.countResponse(.ok)
        responding = true
        waitingForBody = true
        scrapeStart = uv_hrtime()
        scrapeMinorVersion = minorVersion
        scrapeKeepAlive = keepAlive
        uv_timer_stop(timer)
        server.requestRendering(format: format, gzip: gzip, for: self)
    }

    /// Sends a finished rendering with its exact `Content-Length` (HTTP/1.0 and 1.1 alike: a cut
    /// body can never look complete), in steps of `HTTPServer.writeBytes`.
    func deliver(_ rendered: RenderedBody) {
        guard !closing else { return }
        waitingForBody = false
        lastProgress = uv_now(server.loop)  // the response starts now: waiting for the rendering was not the client's fault
        body = rendered
        bodyOffset = 0
        closeAfterResponse = !scrapeKeepAlive
        var headers = [("Vary", "Accept, Accept-Encoding")]
        if rendered.gzipped { headers.append(("Content-Encoding", "gzip")) }
        write(HTTPResponseHead.make(.ok, minorVersion: scrapeMinorVersion, keepAlive: scrapeKeepAlive,
                                    contentType: rendered.format.contentType,
                                    framing: .contentLength(rendered.storage.count), extraHeaders: headers))
    }

    /// Called when a write finished: sends the next part of a body, or ends the response.
    private func didWrite(_ status: Int32) {
        guard status == 0, !closing else { close(); return }
        lastProgress = uv_now(server.loop)
        if let body {
            let storage = body.storage
            if let (start, count) = storage.bytes(at: bodyOffset, limit: HTTPServer.writeBytes) {
                bodyOffset += count
                write(start, count: count, owner: body)
                return
            }
            self.body = nil
            server.source.scrapeFinished(durationSeconds: Double(uv_hrtime() - scrapeStart) / 1e9, format: body.format)
        }
        responding = false
        completedRequests += 1
        if closeAfterResponse { closeGracefully(); return }
        processInput()
    }

    /// Ends a connection after its last response: shuts our side down once libuv has written
    /// everything, then discards input until the client closes (at most the idle timeout), so
    /// unread input never turns the close into a reset that could destroy the response in flight.
    private func closeGracefully() {
        guard !closing, !lingering else { return }
        lingering = true
        input = []
        let request = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        let rc = uv_shutdown(request, stream) { request, _ in
            guard let request else { return }
            let connection = HTTPConnection.from(request.pointee.handle?.pointee.data)
            request.deallocate()
            connection?.didShutDown()
        }
        guard rc == 0 else { request.deallocate(); close(); return }
        arm(min(server.configuration.idleTimeoutMilliseconds, Self.lingerMilliseconds))
    }

    /// How long a closing connection waits for the client to close after our shutdown.
    static let lingerMilliseconds: UInt64 = 5_000

    private func didShutDown() {
        guard !closing else { return }
        if peerFinished { close(); return }
        startReading()  // lingering: what arrives is discarded
    }

    /// Writes a copy of `bytes`.
    private func write(_ bytes: [UInt8]) {
        let copy = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        bytes.withUnsafeBytes { source in
            if let from = source.baseAddress { copy.copyMemory(from: from, byteCount: source.count) }
        }
        write(copy, count: bytes.count, owner: OwnedBytes(copy))
    }

    /// Writes `count` bytes at `start`, which `owner` keeps alive until the write callback (libuv
    /// calls it even when the connection is closed first, with `UV_ECANCELED`).
    private func write(_ start: UnsafeMutableRawPointer, count: Int, owner: AnyObject) {
        arm(server.configuration.requestTimeoutMilliseconds)  // the send timeout: progress or close
        let request = UnsafeMutablePointer<uv_write_t>.allocate(capacity: 1)
        let retained = Unmanaged.passRetained(owner)
        request.pointee.data = retained.toOpaque()
        var buf = uv_buf_init(start.assumingMemoryBound(to: CChar.self), UInt32(count))
        let rc = uv_write(request, stream, &buf, 1) { request, status in
            guard let request else { return }
            if let owner = request.pointee.data { Unmanaged<AnyObject>.fromOpaque(owner).release() }
            let connection = HTTPConnection.from(request.pointee.handle?.pointee.data)
            request.deallocate()
            connection?.didWrite(status)
        }
        if rc != 0 {
            retained.release()
            request.deallocate()
            close()
            return
        }
        queuedBytesAtLastLook = uv_stream_get_write_queue_size(stream)
    }

    // MARK: Timeouts and closing

    private func arm(_ milliseconds: UInt64) {
        uv_timer_start(timer, { timer in
            guard let timer, let connection = HTTPConnection.from(timer.pointee.data) else { return }
            connection.timedOut()
        }, milliseconds, 0)
    }

    private func timedOut() {
        if requestStarted && !responding {
            // A slow or stalled request head: say so, then hang up.
            input.removeAll()
            requestStarted = false
            respond(HTTPResponseHead.simple(.requestTimeout, body: "Request Timeout\n", minorVersion: 1, keepAlive: false),
                    status: .requestTimeout, close: true)
        } else {
            close()  // idle, or a response the client stopped reading: its buffers go with it
        }
    }

    func close() {
        guard !closing else { return }
        closing = true
        server.closing(self)
        body = nil
        waitingForBody = false
        uv_timer_stop(timer)
        let done: uv_close_cb = { handle in
            guard let handle else { return }
            let connection = HTTPConnection.from(handle.pointee.data)
            handle.deallocate()
            connection?.handleClosed()
        }
        stream.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { uv_close($0, done) }
        timer.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { uv_close($0, done) }
    }

    private func handleClosed() {
        openHandles -= 1
        if openHandles == 0 { server.remove(self) }
    }
}

/// A heap copy of bytes being written, freed with its owner.
private final class OwnedBytes {
    let pointer: UnsafeMutableRawPointer
    init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
    deinit { pointer.deallocate() }
}

func uvError(_ code: Int32) -> String {
    String(cString: uv_strerror(code))
}

/// Closes a handle and frees its memory in the close callback (the only safe place).
func closeAndFree(_ handle: UnsafeMutablePointer<uv_handle_t>) {
    uv_close(handle) { handle in handle?.deallocate() }
}
