import Benchmark
import P2PMetricsExposition
import P2PMetricsStore
import P2PMetricsWire

// In-process throughput and allocations of the three stages of the daemon:
//   Decode     DatagramDecoder.validate + walking every sample (what ingest does before applying)
//   Aggregate  MetricStore.apply of realistic datagrams into a warm store (all series exist)
//   Render     ExpositionRenderer over N counter series with two labels, in the daemon's 256 KiB
//              slices into a reused buffer
// Names carry the unit of one scaled iteration, so `throughput` reads as datagrams/s or series/s.

/// Fixtures built lazily by each benchmark's setup (so filtered-out benchmarks cost nothing).
final class Fixtures: @unchecked Sendable {
    static let shared = Fixtures()
    lazy var single = Workload.singleSampleDatagrams()
    lazy var batched = Workload.batchedDatagrams()
    var stores: [Int: MetricStore] = [:]

    func warmStore(_ datagrams: [[UInt8]]) -> StoreBox {
        let box = StoreBox()
        for d in datagrams { d.withUnsafeBytes { _ = box.store.apply($0) } }
        return box
    }

    func filled(_ n: Int) -> MetricStore {
        if let s = stores[n] { return s }
        let s = Workload.filledStore(series: n)
        stores = [n: s]  // keep one at a time (1M series is large)
        return s
    }
}

/// Holds a store that benchmark iterations mutate in place (a `var` copy of a setup value would
/// copy every table on its first write).
final class StoreBox: @unchecked Sendable {
    var store = MetricStore()
}

/// Validates a datagram and walks its samples, as `MetricStore.apply` does before applying.
@inline(__always)
func decode(_ decoder: inout DatagramDecoder, _ bytes: UnsafeRawBufferPointer) -> UInt64 {
    guard decoder.validate(bytes) == nil else { fatalError("invalid benchmark datagram") }
    var cursor = decoder.samples(in: bytes)
    var sum: UInt64 = 0
    while let sample = cursor.next() {
        sum &+= UInt64(sample.series)
        if case .unsigned(let u) = sample.value { sum &+= u }
    }
    return sum
}

let timeAndAllocations: [BenchmarkMetric] = [.wallClock, .throughput, .mallocCountTotal, .peakMemoryResident]

let benchmarks: @Sendable () -> Void = {
    let fixtures = Fixtures.shared
    Benchmark.defaultConfiguration = .init(
        metrics: timeAndAllocations, timeUnits: .nanoseconds,
        units: [.throughput: .count, .mallocCountTotal: .count, .peakMemoryResident: .mega],
        warmupIterations: 3, maxDuration: .seconds(1), maxIterations: 100_000)

    // ---- Decode --------------------------------------------------------------------------

    Benchmark("Decode/single-sample datagram (x1000 datagrams)",
              configuration: .init(scalingFactor: .kilo)) { benchmark in
        let pool = fixtures.single
        var decoder = DatagramDecoder()
        var j = benchmark.currentIteration * 1000 % pool.count
        var sum: UInt64 = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            sum &+= pool[j].withUnsafeBytes { decode(&decoder, $0) }
            j = j + 1 == pool.count ? 0 : j + 1
        }
        benchmark.stopMeasurement()
        blackHole(sum)
    }

    let perBatch = fixtures.batched.samples / fixtures.batched.datagrams.count
    Benchmark("Decode/8 KiB batched datagram, \(perBatch) samples (x1 datagram)") { benchmark in
        let pool = fixtures.batched.datagrams
        var decoder = DatagramDecoder()
        let d = pool[benchmark.currentIteration % pool.count]
        benchmark.startMeasurement()
        let sum = d.withUnsafeBytes { decode(&decoder, $0) }
        benchmark.stopMeasurement()
        blackHole(sum)
    }

    // ---- Aggregate ----------------------------------------------------------------------

    Benchmark("Aggregate/single-sample datagram (x1000 datagrams)",
              configuration: .init(scalingFactor: .kilo)) { benchmark, store in
        let pool = fixtures.single
        var j = benchmark.currentIteration * 1000 % pool.count
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            pool[j].withUnsafeBytes { _ = store.store.apply($0) }
            j = j + 1 == pool.count ? 0 : j + 1
        }
        benchmark.stopMeasurement()
        blackHole(store.store.statistics.samplesApplied)
    } setup: {
        fixtures.warmStore(fixtures.single)
    }

    Benchmark("Aggregate/8 KiB batched datagram, \(perBatch) samples (x1 datagram)") { benchmark, store in
        let pool = fixtures.batched.datagrams
        let d = pool[benchmark.currentIteration % pool.count]
        benchmark.startMeasurement()
        d.withUnsafeBytes { _ = store.store.apply($0) }
        benchmark.stopMeasurement()
        blackHole(store.store.statistics.samplesApplied)
    } setup: {
        fixtures.warmStore(fixtures.batched.datagrams)
    }

    Benchmark("Aggregate/create 100k series (x1 fill)",
              configuration: .init(maxDuration: .seconds(2), maxIterations: 10)) { benchmark, datagrams in
        var store = MetricStore()
        benchmark.startMeasurement()
        for d in datagrams { d.withUnsafeBytes { _ = store.apply($0) } }
        benchmark.stopMeasurement()
        precondition(store.seriesCount == 100_000)
        blackHole(store)
    } setup: {
        Workload.fillDatagrams(series: 100_000)
    }

    // ---- Render -------------------------------------------------------------------------

    for n in [10_000, 100_000, 1_000_000] {
        let label = n >= 1_000_000 ? "\(n / 1_000_000)M" : "\(n / 1000)k"
        Benchmark("Render/\(label) series (x1 scrape)",
                  configuration: .init(warmupIterations: 1, maxDuration: .seconds(n >= 1_000_000 ? 4 : 1),
                                       maxIterations: n >= 1_000_000 ? 5 : 1000)) { benchmark, store in
            var out: [UInt8] = []
            out.reserveCapacity(256 * 1024 + 4096)
            var renderer = ExpositionRenderer()
            var bytes = 0
            benchmark.startMeasurement()
            while true {
                out.removeAll(keepingCapacity: true)
                let done = renderer.render(store, into: &out, budget: 256 * 1024)
                bytes += out.count
                if done { break }
            }
            benchmark.stopMeasurement()
            blackHole(bytes)
        } setup: {
            fixtures.filled(n)
        }
    }
}
