import CoreMetrics
import P2PMetricsWire

/// A swift-metrics backend that sends every metric to the p2pmetricsd sidecar.
///
/// ```swift
/// MetricsSystem.bootstrap(P2PMetricsFactory(socketPath: "/run/p2pmetricsd/ingest.sock"))
/// ```
///
/// | swift-metrics | sample (PROTOCOL.md §1.3) |
/// |---|---|
/// | `Counter`, `FloatingPointCounter` | counter add (negative or non-finite increments are ignored; `reset()` is a no-op: a Prometheus counter only goes up) |
/// | `Meter` | `set` → gauge set; `increment`/`decrement` → gauge add |
/// | `Recorder(aggregate: false)` | gauge set |
/// | `Recorder(aggregate: true)` | histogram observe |
/// | `Timer` | histogram observe, in **seconds** |
///
/// Labels become metric names and dimensions become labels, sanitized once per handler by
/// ``P2PMetricsNameSanitizer`` ("my-counter" → "my_counter"). Recording never throws, blocks or
/// crashes; a sample the protocol cannot carry (say a NaN observation) is left out.
public struct P2PMetricsFactory: MetricsFactory {
    /// The client every handler records on; use it for the P2P helpers too
    /// (`factory.client.recordImageImport(…)`).
    public let client: P2PMetricsClient

    /// A factory with its own client for the socket at `socketPath` (`nil`: `$P2PM_SOCKET`, else
    /// `/run/p2pmetricsd/ingest.sock`), batching by default.
    public init(socketPath: String? = nil) {
        client = P2PMetricsClient(socketPath: socketPath)
    }

    /// A factory recording on `client`.
    public init(client: P2PMetricsClient) {
        self.client = client
    }

    /// A counter handler: counter add.
    public func makeCounter(label: String, dimensions: [(String, String)]) -> CounterHandler {
        P2PCounterHandler(series(label, dimensions, histogram: false))
    }

    /// A floating-point counter handler: counter add.
    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> FloatingPointCounterHandler {
        P2PFloatingPointCounterHandler(series(label, dimensions, histogram: false))
    }

    /// A meter handler: gauge set and gauge add.
    public func makeMeter(label: String, dimensions: [(String, String)]) -> MeterHandler {
        P2PMeterHandler(series(label, dimensions, histogram: false))
    }

    /// A recorder handler: histogram observe when `aggregate`, else gauge set.
    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> RecorderHandler {
        P2PRecorderHandler(series(label, dimensions, histogram: aggregate), kind: aggregate ? .histogramObserve : .gaugeSet)
    }

    /// A timer handler: histogram observe in seconds.
    public func makeTimer(label: String, dimensions: [(String, String)]) -> TimerHandler {
        P2PTimerHandler(series(label, dimensions, histogram: true))
    }

    /// Nothing to release (the sidecar keeps the series).
    public func destroyCounter(_ handler: CounterHandler) {}
    /// Nothing to release (the sidecar keeps the series).
    public func destroyFloatingPointCounter(_ handler: FloatingPointCounterHandler) {}
    /// Nothing to release (the sidecar keeps the series).
    public func destroyMeter(_ handler: MeterHandler) {}
    /// Nothing to release (the sidecar keeps the series).
    public func destroyRecorder(_ handler: RecorderHandler) {}
    /// Nothing to release (the sidecar keeps the series).
    public func destroyTimer(_ handler: TimerHandler) {}

    private func series(_ label: String, _ dimensions: [(String, String)], histogram: Bool) -> Series {
        Series(
            client: client, name: P2PMetricsNameSanitizer.metricName(label),
            labels: P2PMetricsNameSanitizer.labels(dimensions, histogram: histogram))
    }
}

/// A sanitized series and the client it is recorded on.
struct Series: Sendable {
    let client: P2PMetricsClient
    let name: String
    let labels: [(String, String)]

    @inline(__always)
    func record(_ kind: SampleKind, _ value: SampleValue) {
        _ = client.record(kind, name, labels, value)
    }
}

extension SampleValue {
    /// An integer in its exact wire form.
    @inline(__always)
    init(integer v: Int64) {
        self = v >= 0 ? .unsigned(UInt64(v)) : .signed(v)
    }
}

final class P2PCounterHandler: CounterHandler, Sendable {
    let series: Series
    init(_ series: Series) { self.series = series }

    func increment(by amount: Int64) {
        guard amount >= 0 else { return }
        series.record(.counterAdd, .unsigned(UInt64(amount)))
    }

    func reset() {}
}

final class P2PFloatingPointCounterHandler: FloatingPointCounterHandler, Sendable {
    let series: Series
    init(_ series: Series) { self.series = series }

    func increment(by amount: Double) {
        guard amount >= 0, amount.isFinite else { return }
        series.record(.counterAdd, SampleValue(canonical: amount))
    }

    func reset() {}
}

final class P2PMeterHandler: MeterHandler, Sendable {
    let series: Series
    init(_ series: Series) { self.series = series }

    func set(_ value: Int64) { series.record(.gaugeSet, SampleValue(integer: value)) }
    func set(_ value: Double) { series.record(.gaugeSet, SampleValue(canonical: value)) }

    func increment(by amount: Double) {
        guard amount.isFinite else { return }
        series.record(.gaugeAdd, SampleValue(canonical: amount))
    }

    func decrement(by amount: Double) {
        guard amount.isFinite else { return }
        series.record(.gaugeAdd, SampleValue(canonical: -amount))
    }
}

final class P2PRecorderHandler: RecorderHandler, Sendable {
    let series: Series
    let kind: SampleKind
    init(_ series: Series, kind: SampleKind) {
        self.series = series
        self.kind = kind
    }

    func record(_ value: Int64) { series.record(kind, SampleValue(integer: value)) }
    func record(_ value: Double) { series.record(kind, SampleValue(canonical: value)) }
}

final class P2PTimerHandler: TimerHandler, Sendable {
    let series: Series
    init(_ series: Series) { self.series = series }

    func recordNanoseconds(_ duration: Int64) {
        series.record(.histogramObserve, SampleValue(canonical: Double(duration) / 1e9))
    }
}
