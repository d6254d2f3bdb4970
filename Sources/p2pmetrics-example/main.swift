// p2pmetrics-example: the Swift client's example and end-to-end driver.
//
// usage: p2pmetrics-example [OPTIONS] COMMAND [ARGS]... [COMMAND [ARGS]...]...
// Options:
//   --socket PATH        the sidecar's socket (default: $P2PM_SOCKET, else /run/p2pmetricsd/ingest.sock)
//   --immediate          one datagram per call (default: batched)
//   --flush-ms N         batch flush interval in milliseconds, 0: none (default 10)
//   --blocking-ms N      opt-in blocking sends: wait up to N ms for room in the sidecar's queue
//   --max-datagram N     datagram size (default 8192)
// Commands (calls that fail with anything but a drop exit with status 2; in immediate mode a call
// dropped with EAGAIN is retried every millisecond):
//   seed                           the README example (bootstrap, handlers, helpers, transfer)
//   handlers                       every swift-metrics handler type (see Tests/integration)
//   import TYPE OK SIZE | download ID OK SECS | chunk SIZE DEDUP | chunkh SIZE DEDUP HASH | request HASH
//   | verify OK TYPE | cache HIT TYPE
//   tstart / tend                  startTransfer() / finish() of one token (tend twice: no-op)
//   transfer MODE MS               withTransfer around a MS-millisecond sleep;
//                                  MODE: sync | sync-throw | async | async-throw
//   counter|gauge_set|gauge_add|observe NAME VALUE LABELS   generic API; LABELS "-" or "k=v,k2=v2"
//   u64 NAME VALUE                 counterAdd(exactly:)
//   tasks T N NAME                 T tasks, each N times a swift-metrics Counter NAME{task=i}
//                                  .increment(); prints "tasks calls=.."
//   flood N NAME                   N times counterAdd(NAME, 1), never retried; prints
//                                  "flood sent=.. dropped=.. first_error=.."
//   final NAME                     counterAdd(NAME, 1) then flush, retried every 10 ms until sent
//                                  (20 s at most); prints "final attempts=.."
//   flush                          flush()
//   wait                           prints "waiting", reads one line from stdin
//   exit                           exit(0) at once, without flushing explicitly
//   stats                          prints "stats sent_datagrams=.. sent_samples=.. dropped=..
//                                  dropped_samples=.. unreported=.."
//   burst T                        the seed-shaped workload (Clients/c/tests/seed_workload.h) from
//                                  T threads; prints "burst calls=.. latency_p50_us=.. .._p99_us=..
//                                  latency_max_us=.."
//   burstflat T N                  T threads x N seed-helper calls back to back; prints the same
//   fullstats                      prints "fullstats sent_datagrams=.. sent_samples=..
//                                  dropped_datagrams=.. dropped_samples=.. kept_samples=..
//                                  resent_adds=.. waits=.."
//   allocs N                       heap allocations per call of the hot paths, when a malloc
//                                  counter (p2pm_alloc_count) is preloaded; prints "allocs NAME=.."
import CoreMetrics
import Dispatch
import Synchronization
import Metrics
import P2PMetrics

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func fail(_ message: String) -> Never {
    var err = "p2pmetrics-example: \(message)\n"
    err.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(2)
}

func out(_ line: String) {
    print(line)
    fflush(nil)
}

// MARK: Options

var args = Array(CommandLine.arguments.dropFirst())
var configuration = P2PMetricsClient.Configuration()
func option(_ value: String?, _ name: String) -> String {
    guard let value else { fail("\(name) needs a value") }
    return value
}
while let first = args.first, first.hasPrefix("--") {
    args.removeFirst()
    switch first {
    case "--socket": configuration.socketPath = option(args.popFirst(), first)
    case "--immediate": configuration.immediate = true
    case "--flush-ms":
        let ms = Int(option(args.popFirst(), first)) ?? 10
        configuration.flushInterval = ms > 0 ? .milliseconds(ms) : nil
    case "--blocking-ms": configuration.sendTimeout = .milliseconds(Int(option(args.popFirst(), first)) ?? 1000)
    case "--max-datagram": configuration.maxDatagramSize = Int(option(args.popFirst(), first)) ?? 8192
    default: fail("unknown option \(first)")
    }
}

extension Array {
    mutating func popFirst() -> Element? { isEmpty ? nil : removeFirst() }
}

let client = P2PMetricsClient(configuration: configuration)
let factory = P2PMetricsFactory(client: client)
MetricsSystem.bootstrap(factory)

func sleepMs(_ ms: Int) { usleep(UInt32(ms) * 1000) }

/// Runs a call; in immediate mode an EAGAIN drop is retried every millisecond (the drop is
/// counted and reported in-band by the retry), any other failure exits with status 2.
func need(_ what: String, _ call: () -> RecordResult) {
    while true {
        let r = call()
        switch r {
        case .sent, .buffered: return
        case .dropped(let e) where e == EAGAIN: sleepMs(1)
        default: fail("\(what): \(r)")
        }
    }
}

func labels(_ s: String) -> [(String, String)] {
    if s == "-" { return [] }
    return s.split(separator: ",").map { kv in
        let p = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        guard p.count == 2 else { fail("bad label \(kv)") }
        return (String(p[0]), String(p[1]))
    }
}

func arg(_ i: Int, _ a: [String], _ cmd: String) -> String {
    guard i < a.count else { fail("\(cmd) needs \(i + 1) argument(s)") }
    return a[i]
}

func printStats() {
    let s = client.statistics
    out("stats sent_datagrams=\(s.sentDatagrams) sent_samples=\(s.sentSamples) dropped=\(s.droppedDatagrams) dropped_samples=\(s.droppedSamples) unreported=\(s.unreportedDrops)")
}

struct TransferFailed: Error {}

/// The seed-shaped workload of Clients/c/tests/seed_workload.h (one call per event; event i goes
/// to thread i % threads), or with `flatCalls` that many seed-helper calls per thread back to back,
/// from `threads` threads at full speed. Returns the call latencies in nanoseconds, sorted.
func seedBurst(threads: Int, flatCalls: Int? = nil) -> [UInt64] {
    let types = ["microvm", "container", "storepath", "closure"]
    let latencies = Mutex<[UInt64]>([])
    DispatchQueue.concurrentPerform(iterations: threads) { t in
        var mine: [UInt64] = []
        mine.reserveCapacity(flatCalls ?? 5000)
        func timed(_ call: () -> Void) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            call()
            mine.append(DispatchTime.now().uptimeNanoseconds - t0)
        }
        if let n = flatCalls {
            for i in 0..<n {
                switch i % 5 {
                case 0: timed { client.recordChunkTransfer(size: 65_536, deduplicated: i % 3 == 0) }
                case 1: timed { client.recordCacheAccess(hit: i % 2 == 0, cacheType: "chunk") }
                case 2: timed { client.recordVerification(success: true, type: "chunk_hash") }
                case 3: timed { client.recordImageImport(artifactType: types[i % 4], success: true, sizeBytes: 1 << 20) }
                default: timed { client.recordImageDownload(imageID: "img", success: true, duration: 0.25) }
                }
            }
        } else {
            var guards: [TransferToken] = []
            for _ in stride(from: t, to: 20, by: threads) { timed { guards.append(client.startTransfer()) } }
            for i in stride(from: t, to: 200, by: threads) {
                timed { client.recordImageImport(artifactType: types[i % 4], success: i % 10 != 9, sizeBytes: UInt64(i + 1) << 20) }
            }
            for i in stride(from: t, to: 500, by: threads) {
                timed { client.recordImageDownload(imageID: "img", success: i % 25 != 24, duration: Double(i % 8) / 4) }
                timed { client.recordVerification(success: i % 50 != 49, type: "nar_hash") }
                timed { client.recordCacheAccess(hit: i % 2 == 0, cacheType: "vm_image") }
            }
            for i in stride(from: t, to: 5000, by: threads) {
                let dedup = i % 3 == 0
                timed { client.recordChunkTransfer(size: 65_536, deduplicated: dedup) }
                timed { client.recordVerification(success: i % 100 != 99, type: "chunk_hash") }
                timed { client.recordCacheAccess(hit: dedup, cacheType: "chunk") }
            }
            for g in guards { timed { g.finish() } }
        }
        latencies.withLock { $0 += mine }
    }
    return latencies.withLock { $0.sorted() }
}

/// "burst calls=.. latency_p50_us=.. latency_p99_us=.. latency_max_us=.."
func printBurst(_ l: [UInt64]) {
    func us(_ i: Int) -> String { String(Double(l[min(i, l.count - 1)]) / 1000) }
    out("burst calls=\(l.count) latency_p50_us=\(us(l.count / 2)) latency_p99_us=\(us(l.count * 99 / 100)) latency_max_us=\(us(l.count - 1))")
}

/// The README example (Sources/P2PMetrics/README-section.md), as is.
func seedExample() {
    // MetricsSystem.bootstrap(P2PMetricsFactory(socketPath: "/run/p2pmetricsd/ingest.sock"))  (done above)
    let p2p = client   // or P2PMetricsClient.shared; factory.client when bootstrapped from a factory
    Counter(label: "vm-starts", dimensions: [("node", "n1")]).increment()   // exposed as vm_starts
    p2p.recordImageImport(artifactType: "microvm", success: true, sizeBytes: 1 << 30)
    p2p.recordCacheAccess(hit: true, cacheType: "vm_image")
    p2p.withTransfer {
        p2p.recordChunkTransfer(size: 65_536, deduplicated: false)
        p2p.recordChunkTransfer(size: 65_536, deduplicated: true)
    }
    p2p.recordVerification(success: true, type: "nar_hash")
}

/// Every swift-metrics handler type, with values the integration test checks exactly.
func handlers() {
    let counter = Counter(label: "e2e-swift.counter", dimensions: [("kind", "a")])
    counter.increment()
    counter.increment(by: 41)
    counter.increment(by: -5)   // ignored: a counter only goes up
    let fp = FloatingPointCounter(label: "e2e.swift.work.seconds")
    fp.increment(by: 0.5)
    fp.increment(by: 2.25)
    let meter = Meter(label: "e2e.swift.meter", dimensions: [("pool", "p1")])
    meter.set(10)
    meter.increment(by: 2.5)
    meter.decrement(by: 0.5)
    meter.increment()
    meter.decrement()
    let gauge = Recorder(label: "e2e.swift.recorder.gauge", aggregate: false)
    gauge.record(3)
    gauge.record(-7.25)
    let hist = Recorder(label: "e2e.swift.recorder.hist", dimensions: [("le", "x")], aggregate: true)
    hist.record(1)
    hist.record(2)
    hist.record(4.5)
    hist.record(Double.nan)   // left out: not representable
    let timer = Timer(label: "e2e.swift.timer", dimensions: [("op", "pull")])
    timer.recordMilliseconds(250)
    timer.recordNanoseconds(1_500_000_000)
    timer.recordSeconds(2)
    // names swift-metrics accepts and the protocol does not: sanitized
    Counter(label: "9bad-name!", dimensions: [("dim-key", "v"), ("__x", "y"), ("dim_key", "dup")]).increment(by: 3)
}

func transfer(_ mode: String, _ ms: Int) async {
    do {
        switch mode {
        case "sync":
            client.withTransfer { sleepMs(ms) }
        case "sync-throw":
            try client.withTransfer { () throws(TransferFailed) -> Void in
                sleepMs(ms)
                throw TransferFailed()
            }
        case "async":
            try await client.withTransfer { try await Task.sleep(for: .milliseconds(ms)) }
        case "async-throw":
            try await client.withTransfer { () async throws -> Void in
                try await Task.sleep(for: .milliseconds(ms))
                throw TransferFailed()
            }
        default: fail("unknown transfer mode \(mode)")
        }
        out("transfer \(mode) returned")
    } catch {
        out("transfer \(mode) threw")
    }
}

func tasks(_ t: Int, _ n: Int, _ name: String) async {
    await withTaskGroup(of: Void.self) { group in
        for i in 0..<t {
            group.addTask {
                let c = Counter(label: name, dimensions: [("task", String(i))])
                for _ in 0..<n { c.increment() }
            }
        }
    }
    out("tasks calls=\(t * n)")
}

typealias CountFn = @convention(c) () -> UInt64

func allocs(_ n: Int) {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "p2pm_alloc_count") else {
        out("allocs unavailable")
        return
    }
    let count = unsafeBitCast(sym, to: CountFn.self)
    let counter = Counter(label: "e2e.alloc.counter", dimensions: [("k", "v")])
    let timer = Timer(label: "e2e.alloc.timer")
    let label = CollectionOfOne(("k", "v"))
    let cases: [(String, () -> Void)] = [
        ("handler_counter", { counter.increment() }),
        ("handler_timer", { timer.recordNanoseconds(1000) }),
        ("counter_no_labels", { client.counterAdd("e2e.alloc.plain", 1) }),
        ("counter_one_label", { client.counterAdd("e2e.alloc.labelled", 1, labels: label) }),
        ("cache_access", { client.recordCacheAccess(hit: true, cacheType: "chunk") }),
        ("chunk_transfer", { client.recordChunkTransfer(size: 4096, deduplicated: false) }),
    ]
    for (name, call) in cases {
        for _ in 0..<1000 { call() }   // warm up: buffers reach their capacity
        let before = count()
        for _ in 0..<n { call() }
        let after = count()
        out("allocs \(name)=\(Double(after - before) / Double(n))")
    }
}

// MARK: Commands

var token: TransferToken?
var a = args[...]
if a.isEmpty { fail("no command (see the comment at the top of main.swift)") }
while let cmd = a.popFirst() {
    var rest: [String] { Array(a) }
    func take(_ k: Int) -> [String] {
        guard a.count >= k else { fail("\(cmd) needs \(k) argument(s)") }
        let r = Array(a.prefix(k))
        a = a.dropFirst(k)
        return r
    }
    switch cmd {
    case "seed":
        seedExample()
    case "handlers":
        handlers()
    case "import":
        let p = take(3)
        need(cmd) { client.recordImageImport(artifactType: p[0], success: p[1] == "1", sizeBytes: UInt64(p[2])!) }
    case "download":
        let p = take(3)
        need(cmd) { client.recordImageDownload(imageID: p[0], success: p[1] == "1", duration: Double(p[2])!) }
    case "chunk":
        let p = take(2)
        need(cmd) { client.recordChunkTransfer(size: UInt64(p[0])!, deduplicated: p[1] == "1") }
    case "chunkh":
        let p = take(3)
        need(cmd) { client.recordChunkTransfer(size: UInt64(p[0])!, deduplicated: p[1] == "1", hash: p[2]) }
    case "request":
        let p = take(1)
        need(cmd) { client.recordChunkRequest(hash: p[0]) }
    case "verify":
        let p = take(2)
        need(cmd) { client.recordVerification(success: p[0] == "1", type: p[1]) }
    case "cache":
        let p = take(2)
        need(cmd) { client.recordCacheAccess(hit: p[0] == "1", cacheType: p[1]) }
    case "tstart":
        token = client.startTransfer()
        out("tstart \(token!.startResult)")
    case "tend":
        let r = token?.finish()
        out("tend \(r.map { "\($0)" } ?? "none")")
    case "transfer":
        let p = take(2)
        await transfer(p[0], Int(p[1])!)
    case "counter", "gauge_set", "gauge_add", "observe":
        let p = take(3)
        let v = Double(p[1])!
        let l = labels(p[2])
        need(cmd) {
            switch cmd {
            case "counter": return client.counterAdd(p[0], v, labels: l)
            case "gauge_set": return client.gaugeSet(p[0], v, labels: l)
            case "gauge_add": return client.gaugeAdd(p[0], v, labels: l)
            default: return client.histogramObserve(p[0], v, labels: l)
            }
        }
    case "u64":
        let p = take(2)
        need(cmd) { client.counterAdd(p[0], exactly: UInt64(p[1])!) }
    case "tasks":
        let p = take(3)
        await tasks(Int(p[0])!, Int(p[1])!, p[2])
    case "flood":
        let p = take(2)
        var sent = 0, dropped = 0
        var firstError: Int32 = 0
        for _ in 0..<Int(p[0])! {
            switch client.counterAdd(p[1], 1) {
            case .sent, .buffered: sent += 1
            case .dropped(let e):
                dropped += 1
                if firstError == 0 { firstError = e }
            case let r: fail("flood: \(r)")
            }
        }
        out("flood sent=\(sent) dropped=\(dropped) first_error=\(firstError)")
    case "final":
        let name = take(1)[0]
        var attempts = 0
        while true {
            attempts += 1
            var r = client.counterAdd(name, 1)
            if r == .buffered { r = client.flush() }
            if r == .sent { break }
            if attempts >= 2000 { fail("final: \(r)") }
            sleepMs(10)
        }
        out("final attempts=\(attempts)")
    case "flush":
        client.flush()
    case "wait":
        out("waiting")
        _ = readLine()
    case "stats":
        printStats()
    case "burst":
        printBurst(seedBurst(threads: Int(take(1)[0])!))
    case "burstflat":
        let p = take(2)
        printBurst(seedBurst(threads: Int(p[0])!, flatCalls: Int(p[1])!))
    case "fullstats":
        let s = client.statistics
        out("fullstats sent_datagrams=\(s.sentDatagrams) sent_samples=\(s.sentSamples) dropped_datagrams=\(s.droppedDatagrams) dropped_samples=\(s.droppedSamples) kept_samples=\(s.keptSamples) resent_adds=\(s.resentAdds) waits=\(s.waits)")
    case "exit":
        exit(0)   // no explicit flush: the client's atexit handler sends what is pending
    case "allocs":
        allocs(Int(take(1)[0])!)
    default:
        fail("unknown command \(cmd)")
    }
}
client.flush()
