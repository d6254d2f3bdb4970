// seed-otel: a seed process instrumented with swift-metrics, exported by swift-otel over OTLP/HTTP
// protobuf. It takes the command words of the C client's driver (Clients/c/tests/e2e_driver.c), as
// Tests/integration/otlp_seed_process.py does for the Python SDK, so one command line runs the same
// workload through any of the three.
//
//   seed-otel ENDPOINT cumulative|delta COMMAND...
//     import TYPE OK SIZE, download ID OK SECS, chunk SIZE DEDUP, verify OK TYPE, cache HIT TYPE,
//     tstart (p2p.transfers.active + 1: a swift-metrics Meter, which swift-otel exports as an OTLP
//     Gauge), flush (waits for two periodic exports), wait (prints "waiting", reads a line).
//   The resource comes from OTEL_RESOURCE_ATTRIBUTES. At the end the service shuts down gracefully,
//   which exports once more, and the program prints "exported".
import Logging
import Metrics
import OTel
import ServiceLifecycle

/// The catalog's bounds of p2p.transfer.duration (Sources/P2PMetricsStore/Catalog.swift): the
/// receiver refuses other bounds, so they are set for that Recorder's label.
let transferDurationBounds: [Double] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
let exportInterval = Duration.milliseconds(200)

/// The seed's P2P metrics functions on swift-metrics, with the C client's helper semantics.
struct SeedMetrics {
    func recordImageImport(artifactType: String, success: Bool, size: Int64) {
        let labels = [("artifact_type", artifactType)]
        Counter(label: "p2p.image.imports.total", dimensions: labels).increment()
        if !success {
            Counter(label: "p2p.image.imports.failed", dimensions: labels).increment()
        } else if size > 0 {
            Counter(label: "p2p.bytes_transferred.total", dimensions: labels).increment(by: size)
        }
    }

    func recordImageDownload(success: Bool, seconds: Double) {
        Counter(label: "p2p.image.downloads.total").increment()
        if !success { Counter(label: "p2p.image.downloads.failed").increment() }
        Recorder(label: "p2p.transfer.duration").record(seconds)
    }

    func recordChunkTransfer(size: Int64, deduplicated: Bool) {
        if deduplicated {
            Counter(label: "p2p.chunks_deduplicated.total").increment()
        } else {
            Counter(label: "p2p.chunks_transferred.total").increment()
            Counter(label: "p2p.bytes_transferred.total").increment(by: size)
        }
    }

    func recordVerification(success: Bool, type: String) {
        Counter(label: success ? "p2p.verification.success" : "p2p.verification.failed",
                dimensions: [("verification_type", type)]).increment()
    }

    func recordCacheAccess(hit: Bool, type: String) {
        Counter(label: hit ? "p2p.cache.hits" : "p2p.cache.misses", dimensions: [("cache_type", type)]).increment()
    }

    func startTransfer() {
        Meter(label: "p2p.transfers.active").increment()
    }
}

enum CommandError: Error, CustomStringConvertible {
    case usage, unknown(String), missingArguments(String), badNumber(String)
    var description: String {
        switch self {
        case .usage: "usage: seed-otel ENDPOINT cumulative|delta COMMAND..."
        case .unknown(let c): "unknown command \(c)"
        case .missingArguments(let c): "\(c): missing arguments"
        case .badNumber(let s): "not a number: \(s)"
        }
    }
}

func run(_ words: [String], seed: SeedMetrics) async throws {
    let arity = ["import": 3, "download": 3, "chunk": 2, "verify": 2, "cache": 2, "tstart": 0, "flush": 0, "wait": 0]
    var i = 0
    func number<T: LosslessStringConvertible>(_ s: String) throws -> T {
        guard let v = T(s) else { throw CommandError.badNumber(s) }
        return v
    }
    while i < words.count {
        let command = words[i]
        guard let n = arity[command] else { throw CommandError.unknown(command) }
        guard i + n < words.count else { throw CommandError.missingArguments(command) }
        let a = Array(words[(i + 1)..<(i + 1 + n)])
        i += 1 + n
        switch command {
        case "import": seed.recordImageImport(artifactType: a[0], success: a[1] == "1", size: try number(a[2]))
        case "download": seed.recordImageDownload(success: a[1] == "1", seconds: try number(a[2]))
        case "chunk": seed.recordChunkTransfer(size: try number(a[0]), deduplicated: a[1] == "1")
        case "verify": seed.recordVerification(success: a[0] == "1", type: a[1])
        case "cache": seed.recordCacheAccess(hit: a[0] == "1", type: a[1])
        case "tstart": seed.startTransfer()
        case "flush": try await Task.sleep(for: exportInterval * 3)
        default:
            print("waiting")
            guard readLine() != nil else { throw CommandError.missingArguments("wait (stdin closed)") }
        }
    }
}

@main
enum SeedOTel {
    static func main() async throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard arguments.count >= 2, ["cumulative", "delta"].contains(arguments[1]) else { throw CommandError.usage }
        var configuration = OTel.Configuration.default
        configuration.serviceName = "seed"
        configuration.traces.enabled = false
        configuration.logs.enabled = false
        configuration.metrics.exportInterval = exportInterval
        configuration.metrics.otlpExporter.endpoint = arguments[0]
        configuration.metrics.temporalityPreference = arguments[1] == "delta" ? .delta : .cumulative
        configuration.metrics.valueHistogramBuckets = ["p2p.transfer.duration": transferDurationBounds]
        let observability = try OTel.bootstrap(configuration: configuration)
        let group = ServiceGroup(services: [observability], logger: Logger(label: "seed-otel"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await run(Array(arguments.dropFirst(2)), seed: SeedMetrics())
            await group.triggerGracefulShutdown()  // the periodic reader exports once more as it stops
            try await tasks.waitForAll()
        }
        print("exported")
    }
}
