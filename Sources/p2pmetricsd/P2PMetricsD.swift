import ArgumentParser
import Glibc
import P2PMetricsServer

/// `p2pmetricsd`: the metrics sidecar's command line.
@main
struct P2PMetricsD: ParsableCommand {
    static let version = p2pmetricsdVersion

    static let configuration = CommandConfiguration(
        commandName: "p2pmetricsd",
        abstract: "Aggregates binary StatsD-like datagrams from a Unix socket and serves them to Prometheus.",
        discussion: """
        Under systemd socket activation (LISTEN_FDS) it takes the sockets named 'ingest' (datagram) \
        and 'http' (stream) and binds nothing itself. Otherwise it binds --socket and --listen.
        Default socket: $P2PM_SOCKET, else /run/p2pmetricsd/ingest.sock when run as root, else \
        $XDG_RUNTIME_DIR/p2pmetricsd/ingest.sock, else /tmp/p2pmetricsd-UID/ingest.sock.
        """,
        version: version
    )

    @Option(name: .long, help: ArgumentHelp("Path of the ingest socket to bind.", valueName: "path"))
    var socket: String?

    @Option(name: .long, help: ArgumentHelp("Address of the HTTP listener (default 127.0.0.1:9478).", valueName: "host:port"))
    var listen: String?

    @Option(name: .long, help: ArgumentHelp("Also accept text StatsD over UDP on this numeric address (off by default).", valueName: "host:port"))
    var udp: String?

    @Option(name: .long, help: ArgumentHelp("Keep counter totals across restarts in this file (saved at shutdown, consumed at start).", valueName: "file"))
    var state: String?

    @Option(name: .long, help: ArgumentHelp("JSON configuration file (limits, buckets, metrics).", valueName: "file"))
    var config: String?

    static func defaultSocketPath() -> String {
        let env = { (name: String) -> String? in getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } }
        if let path = env("P2PM_SOCKET") { return path }
        if getuid() == 0 { return "/run/p2pmetricsd/ingest.sock" }
        if let runtime = env("XDG_RUNTIME_DIR") { return "\(runtime)/p2pmetricsd/ingest.sock" }
        return "/tmp/p2pmetricsd-\(getuid())/ingest.sock"
    }

    func run() throws {
        var configuration = ServerConfiguration(
            socketPath: Self.defaultSocketPath(), listenAddress: "127.0.0.1:9478", version: Self.version)
        if let config {
            let file = try ConfigFile.load(path: config, into: &configuration)
            if let path = file.socket { configuration.socketPath = path }
            if let address = file.listen { configuration.listenAddress = address }
            if let address = file.udp { configuration.udpAddress = address }
            if let path = file.stateFile { configuration.stateFile = path }
        }
        if let socket { configuration.socketPath = socket }
        if let listen { configuration.listenAddress = listen }
        if let udp { configuration.udpAddress = udp }
        if let state { configuration.stateFile = state }

        // A scraper that hangs up mid-response must cost a failed write (EPIPE), not the process.
        signal(SIGPIPE, SIG_IGN)
        let daemon = try Daemon(configuration: configuration)
        writeStandardError("p2pmetricsd \(Self.version): serving (\(daemon.socketOrigin))")
        let status = daemon.run()
        if status != 0 { throw ExitCode(status) }
    }

    /// Parses flags and runs; any failure is one line on standard error and a non-zero exit.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let error as DaemonError {
            writeStandardError("p2pmetricsd: \(error.description)")
            Glibc.exit(1)
        } catch {
            let code = exitCode(for: error)
            if code == .success || error is ExitCode { exit(withError: error) }
            writeStandardError("p2pmetricsd: \(message(for: error)) (see p2pmetricsd --help)")
            Glibc.exit(code.rawValue)
        }
    }
}
