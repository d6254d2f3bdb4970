import P2PMetricsInputDatagram
import P2PMetricsInputStatsD
import P2PMetricsWire
@testable import P2PMetricsStore

/// A store fed through the ingest sockets' input, as the daemon feeds it. Reads the store's
/// properties directly (`fed.seriesCount`, `fed.statistics`), the text input's counters as `text`.
@dynamicMemberLookup
struct FedStore {
    var store: MetricStore
    var input = DatagramInput()

    init(configuration: StoreConfiguration = StoreConfiguration()) {
        store = MetricStore(configuration: configuration)
    }

    subscript<T>(dynamicMember key: KeyPath<MetricStore, T>) -> T { store[keyPath: key] }

    /// The text input's counters.
    var text: StatsDInputStatistics { input.text.statistics }

    @discardableResult
    mutating func ingest(_ bytes: UnsafeRawBufferPointer, from sender: SenderCredentials? = nil) -> DatagramRejection? {
        input.ingest(bytes, into: &store, from: sender)
    }

    mutating func ingestText(_ text: String) {
        _ = Array(text.utf8).withUnsafeBytes { ingest($0) }
    }

    /// The value of `name{labels}`: a counter's total, a gauge, a distinct estimate, a top-K or
    /// histogram count.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        guard let family = store.families.first(where: { $0.name == name }) else { return nil }
        guard let id = family.series.first(where: { id in
            var found: [String: String] = [:]
            store.forEachLabel(of: id) { n, v in found[String(decoding: n, as: UTF8.self)] = String(decoding: v, as: UTF8.self) }
            return found == labels
        }) else { return nil }
        switch family.type {
        case .counter: let (i, f) = store.counterValue(id); return Double(i) + f
        case .gauge: return store.gaugeValue(id)
        case .distinct: return store.distinctEstimate(id)
        case .topK: return Double(store.topKEntries(id).total)
        case .histogram: return store.withHistogram(id) { _, _, count in Double(count) }
        }
    }

    func histogramSum(_ name: String) -> Double? {
        guard let id = store.families.first(where: { $0.name == name })?.series.first else { return nil }
        return store.withHistogram(id) { _, sum, _ in sum }
    }
}
