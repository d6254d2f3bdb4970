import CDatagramSocket
import CLibUV
import Glibc
import P2PMetricsExposition
import P2PMetricsHTTP

/// What the HTTP side needs from the daemon: the exposition and a place to count responses.
protocol ExpositionSource: AnyObject {
    /// Appends the self-metrics that open every scrape.
    func beginScrape(into out: inout [UInt8], format: ExpositionFormat)
    /// Appends the next slice of the store's exposition; returns true when it is complete.
    func renderSlice(_ renderer: inout ExpositionRenderer, into out: inout [UInt8], budget: Int) -> Bool
    func scrapeFinished(durationSeconds: Double, format: ExpositionFormat)
    /// A sliced scrape whose connection went away before it finished.
    func scrapeAborted()
    func countResponse(_ status: HTTPStatus)
}

/// The HTTP/1.1 listener: keep-alive, pipelining, bounded heads, timeouts, a connection cap.
final class HTTPServer {
    /// Bytes rendered per slice of a large scrape: well under a millisecond of work, after which
    /// the loop gets to drain the ingest socket again.
    static let sliceBytes = 64 * 1024

    let loop: UnsafeMutablePointer<uv_loop_t>
    let configuration: ServerConfiguration
    unowned let source: ExpositionSource
    private let listener: UnsafeMutableRawPointer
    private let isPipe: Bool
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    private(set) var refusedConnections: UInt64 = 0

    var stream: UnsafeMutablePointer<uv_stream_t> { listener.assumingMemoryBound(to: uv_stream_t.self) }

    /// Serves on an already listening socket (from systemd) or binds `configuration.listenAddress`.
    init(loop: UnsafeMutablePointer<uv_loop_t>, configuration: ServerConfiguration, source: ExpositionSource,
         inheritedFD: Int32?) throws {
        self.loop = loop
        self.configuration = configuration
        self.source = source
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
                try Self.bind(tcp, to: configuration.listenAddress)
            }
        }
        stream.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        let rc = uv_listen(stream, 128) { server, status in
            guard let server, let data = server.pointee.data, status == 0 else { return }
            Unmanaged<HTTPServer>.fromOpaque(data).takeUnretainedValue().accept()
        }
        guard rc == 0 else {
            throw DaemonError("cannot listen on \(inheritedFD == nil ? configuration.listenAddress.description : "the inherited HTTP socket"): \(uvError(rc))")
        }
    }

    private static func bind(_ tcp: UnsafeMutablePointer<uv_tcp_t>, to address: NetworkAddress) throws {
        let bound = address.withSocketAddress { address, _ in uv_tcp_bind(tcp, address, 0) }
        guard bound == 0 else { throw DaemonError("cannot listen on \(address): \(uvError(bound))") }
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
        guard uv_accept(stream, clientStream) == 0, connections.count < configuration.maxConnections else {
            refusedConnections += 1
            closeAndFree(client.assumingMemoryBound(to: uv_handle_t.self))
            return
        }
        let connection = HTTPConnection(server: self, stream: clientStream)
        connections[ObjectIdentifier(connection)] = connection
        connection.start()
    }

    func remove(_ connection: HTTPConnection) {
        connections[ObjectIdentifier(connection)] = nil
    }

    /// Closes the listener and every connection.
    func close() {
        for connection in connections.values { connection.close() }
        closeAndFree(listener.assumingMemoryBound(to: uv_handle_t.self))
    }
}

/// One client connection and the response it is being sent.
final class HTTPConnection {
    private unowned let server: HTTPServer
    private let stream: UnsafeMutablePointer<uv_stream_t>
    private let timer: UnsafeMutablePointer<uv_timer_t>
    private let readBuffer = UnsafeMutableRawPointer.allocate(byteCount: 16 * 1024, alignment: 16)
    private var input: [UInt8] = []
    private var requestStarted = false
    private var responding = false
    private var closeAfterResponse = false
    private var closing = false
    private var openHandles = 2

    // The scrape in progress.
    private var renderer: ExpositionRenderer?
    private var gzip: GzipStream?
    private var chunked = false
    private var scrapeStart: UInt64 = 0
    private var scrapeFormat = ExpositionFormat.prometheusText

    init(server: HTTPServer, stream: UnsafeMutablePointer<uv_stream_t>) {
        self.server = server
        self.stream = stream
        timer = .allocate(capacity: 1)
        uv_timer_init(server.loop, timer)
        let me = Unmanaged.passUnretained(self).toOpaque()
        stream.pointee.data = me
        timer.pointee.data = me
    }

    deinit { readBuffer.deallocate() }

    private static func from(_ data: UnsafeMutableRawPointer?) -> HTTPConnection? {
        data.map { Unmanaged<HTTPConnection>.fromOpaque($0).takeUnretainedValue() }
    }

    func start() {
        arm(server.configuration.idleTimeoutMilliseconds)
        startReading()
    }

    private func startReading() {
        uv_read_start(stream, { handle, _, buf in
            guard let handle, let buf, let connection = HTTPConnection.from(handle.pointee.data) else { return }
            buf.pointee = uv_buf_init(connection.readBuffer.assumingMemoryBound(to: CChar.self), 16 * 1024)
        }, { stream, nread, _ in
            guard let stream, let connection = HTTPConnection.from(stream.pointee.data) else { return }
            connection.didRead(nread)
        })
    }

    private func didRead(_ nread: Int) {
        if nread < 0 { close(); return }
        guard nread > 0 else { return }
        input.append(contentsOf: UnsafeRawBufferPointer(start: readBuffer, count: nread))
        if input.count > server.configuration.httpLimits.maxHeadBytes * 2 {
            // A client that pipelines more than we are willing to hold waits until we catch up.
            uv_read_stop(stream)
        }
        if !responding { processInput() }
    }

    /// Parses and answers as many complete requests as the input holds, one response at a time.
    private func processInput() {
        guard !closing, !responding else { return }
        if input.isEmpty {
            requestStarted = false
            arm(server.configuration.idleTimeoutMilliseconds)
            startReading()
            return
        }
        let result = input.withUnsafeBytes { HTTPRequestParser.parse($0, limits: server.configuration.httpLimits) }
        switch result {
        case .incomplete:
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

    private func respond(_ bytes: [UInt8], status: HTTPStatus, close: Bool) {
        server.source.countResponse(status)
        responding = true
        closeAfterResponse = close
        write(bytes)
    }

    private func beginScrape(minorVersion: Int, keepAlive: Bool, format: ExpositionFormat, gzip useGzip: Bool) {
        server.source.countResponse(.ok)
        responding = true
        scrapeStart = uv_hrtime()
        scrapeFormat = format
        var body: [UInt8] = []
        body.reserveCapacity(HTTPServer.sliceBytes + 4096)
        server.source.beginScrape(into: &body, format: format)
        var renderer = ExpositionRenderer(format: format)
        let finished = server.source.renderSlice(&renderer, into: &body, budget: HTTPServer.sliceBytes)
        gzip = useGzip ? GzipStream() : nil
        var headers = [("Vary", "Accept, Accept-Encoding")]
        if let gzip {
            headers.append(("Content-Encoding", "gzip"))
            body = gzip.compress(body, finish: finished)
        }
        if finished {
            gzip = nil
            closeAfterResponse = !keepAlive
            var out = HTTPResponseHead.make(.ok, minorVersion: minorVersion, keepAlive: keepAlive,
                                            contentType: format.contentType, framing: .contentLength(body.count),
                                            extraHeaders: headers)
            out += body
            scrapeDone()
            write(out)
            return
        }
        self.renderer = renderer
        chunked = minorVersion == 1
        closeAfterResponse = !keepAlive || !chunked
        var out = HTTPResponseHead.make(.ok, minorVersion: minorVersion, keepAlive: !closeAfterResponse,
                                        contentType: format.contentType, framing: chunked ? .chunked : .untilClose,
                                        extraHeaders: headers)
        appendBody(body, to: &out)
        write(out)
    }

    private func appendBody(_ body: [UInt8], to out: inout [UInt8]) {
        guard !body.isEmpty else { return }  // an empty chunk would end a chunked body
        guard chunked else { out += body; return }
        out += Array(String(body.count, radix: 16).utf8)
        out += [0x0D, 0x0A]
        out += body
        out += [0x0D, 0x0A]
    }

    private func scrapeDone() {
        server.source.scrapeFinished(durationSeconds: Double(uv_hrtime() - scrapeStart) / 1e9, format: scrapeFormat)
    }

    /// Called when a write finished: continues a sliced scrape, or ends the response.
    private func didWrite(_ status: Int32) {
        guard status == 0, !closing else { close(); return }
        if var renderer {
            if renderer.isFinished {
                self.renderer = nil
                scrapeDone()
                if chunked {
                    write([0x30, 0x0D, 0x0A, 0x0D, 0x0A])  // last chunk
                    return
                }
            } else {
                var body: [UInt8] = []
                body.reserveCapacity(HTTPServer.sliceBytes + 4096)
                let finished = server.source.renderSlice(&renderer, into: &body, budget: HTTPServer.sliceBytes)
                self.renderer = renderer
                if let gzip {
                    body = gzip.compress(body, finish: finished)
                    if finished { self.gzip = nil }
                }
                var out: [UInt8] = []
                appendBody(body, to: &out)
                write(out)
                return
            }
        }
        responding = false
        if closeAfterResponse { close(); return }
        processInput()
    }

    private func write(_ bytes: [UInt8]) {
        arm(server.configuration.requestTimeoutMilliseconds)
        let request = UnsafeMutablePointer<uv_write_t>.allocate(capacity: 1)
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        bytes.withUnsafeBytes { storage.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        request.pointee.data = storage
        var buf = uv_buf_init(storage.assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        let rc = uv_write(request, stream, &buf, 1) { request, status in
            guard let request else { return }
            request.pointee.data?.deallocate()
            let connection = HTTPConnection.from(request.pointee.handle?.pointee.data)
            request.deallocate()
            connection?.didWrite(status)
        }
        if rc != 0 {
            storage.deallocate()
            request.deallocate()
            close()
        }
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
            close()
        }
    }

    func close() {
        guard !closing else { return }
        closing = true
        if renderer != nil {
            renderer = nil
            server.source.scrapeAborted()
        }
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

func uvError(_ code: Int32) -> String {
    String(cString: uv_strerror(code))
}

/// Closes a handle and frees its memory in the close callback (the only safe place).
func closeAndFree(_ handle: UnsafeMutablePointer<uv_handle_t>) {
    uv_close(handle) { handle in handle?.deallocate() }
}
