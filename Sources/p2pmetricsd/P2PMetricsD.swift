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
        SIGHUP reloads --config (allow-lists, series limits, new metric entries); SIGTERM, SIGINT \
        and the other terminating signals drain, save --state and exit 0.
        """,
        version: version
    )

    @Option(name: .long, help: ArgumentHelp("Path of the ingest socket to bind.", valueName: "path"))
    var socket: String?

    @Option(name: .long, help: ArgumentHelp("Address of the HTTP listener: HOST:PORT (a name or IPv4), [IPV6]:PORT, or :PORT for all addresses (default 127.0.0.1:9478).", valueName: "host:port"))
    var listen: String?

    @Option(name: .long, help: ArgumentHelp("Also accept text StatsD over UDP on this address, same forms as --listen (off by default).", valueName: "host:port"))
    var udp: String?

    @Option(name: .long, help: ArgumentHelp("Keep counter totals across restarts in this file (saved at shutdown, consumed at start).", valueName: "file"))
    var state: String?

    @Option(name: .long, help: ArgumentHelp("JSON configuration file (limits, buckets, metrics).", valueName: "file"))
    var config: String?

    /// The socket path when no flag or config key names one, and whether it is the per-user
    /// default (whose directory the daemon creates and checks itself) rather than `$P2PM_SOCKET`.
    static func defaultSocketPath() -> (path: String, isPrivate: Bool) {
        let env = { (name: String) -> String? in getenv(name).map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } }
        if let path = env("P2PM_SOCKET") { return (path, false) }
        if getuid() == 0 { return ("/run/p2pmetricsd/ingest.sock", true) }
        if let runtime = env("XDG_RUNTIME_DIR") { return ("\(runtime)/p2pmetricsd/ingest.sock", true) }
        return ("/tmp/p2pmetricsd-\(getuid())/ingest.sock", true)
    }

    /// Parses an address flag now, before anything is bound.
    private static func address(_ text: String, flag: String) throws -> NetworkAddress {
        do {
            return try NetworkAddress(parsing: text)
        } catch {
            throw DaemonError("bad \(flag) address '\(text)': \(error.reason)")
        }
    }

    private static func path(_ text: String, flag: String) throws -> String {
        guard !text.isEmpty else { throw DaemonError("bad \(flag): the path must not be empty") }
        return text
    }

    /// Defaults, then the config file, then flags: at start, and again on SIGHUP.
    func resolveConfiguration() throws -> ServerConfiguration {
        let (defaultPath, defaultIsPrivate) = Self.defaultSocketPath()
        var configuration = ServerConfiguration(
            socketPath: defaultPath, listenAddress: try Self.address("127.0.0.1:9478", flag: "--listen"), version: Self.version)
        configuration.privateSocketDirectory = defaultIsPrivate
        if let config {
            let file = try ConfigFile.load(path: config, into: &configuration)
            if let path = file.socket { configuration.socketPath = path }
            if let address = file.listen { configuration.listenAddress = address }
            if let address = file.udp { configuration.udpAddress = address }
            if let path = file.stateFile { configuration.stateFile = path }
            if file.socket != nil { configuration.privateSocketDirectory = false }
        }
        if let socket { configuration.socketPath = try Self.path(socket, flag: "--socket") }
        if socket != nil { configuration.privateSocketDirectory = false }
        if let listen { configuration.listenAddress = try Self.address(listen, flag: "--listen") }
        if let udp { configuration.udpAddress = try Self.address(udp, flag: "--udp") }
        if let state { configuration.stateFile = try Self.path(state, flag: "--state") }
        configuration.configFile = config
        return configuration
    }

    func run() throws {
        let configuration = try resolveConfiguration()

        // A scraper that hangs up mid-response must cost a failed write (EPIPE), not the process.
        signal(SIGPIPE, SIG_IGN)
        let daemon = try Daemon(configuration: configuration, reloadConfiguration: config == nil ? nil : { try self.resolveConfiguration() })
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
