import Testing
import P2PMetricsStore
import P2PMetricsWire
@testable import P2PMetricsExposition

/// Families whose series all expired are dropped (issue 19): their claimed names go with them,
/// except a known metric's, which it holds from the start.
@Suite("Exposed names after expiry")
struct ExpiryNameTests {
    @Test("an expired family gives its names back; a known metric keeps its own")
    func expiredFamilyReleasesNames() {
        var configuration = StoreConfiguration()
        configuration.defaultTTLSeconds = 10
        var store = MetricStore(configuration: configuration)
        func send(_ kind: SampleKind, _ name: String) {
            _ = datagram([(kind, name, [], .unsigned(1))]).withUnsafeBytes { store.apply($0) }
        }
        send(.histogramObserve, "ex")
        send(.histogramObserve, "p2p.transfer.duration")
        send(.counterAdd, "ex.count")
        #expect(store.statistics.rejected(SampleRejection.nameClash) == 1)
        store.now = 100
        store.expireStale()
        send(.counterAdd, "ex.count")  // ex is gone: its names are free
        send(.gaugeSet, "p2p.transfer.duration.count")  // the catalog's histogram still holds it
        #expect(store.statistics.rejected(SampleRejection.nameClash) == 2)
        #expect(store.families.filter { !$0.series.isEmpty }.map(\.name) == ["ex_count"])
    }

    @Test("a metric added by a reload claims its names at once")
    func reloadClaims() {
        var store = MetricStore()
        var configuration = StoreConfiguration()
        configuration.metrics.append(MetricDescriptor(name: "rh", type: .histogram, help: "Reloaded."))
        configuration.metrics.append(MetricDescriptor(name: "p2p.transfer.duration.sum", type: .gauge, help: "Clash."))
        store.reconfigure(configuration)
        _ = datagram([(.gaugeSet, "rh.count", [], .unsigned(1))]).withUnsafeBytes { store.apply($0) }
        #expect(store.statistics.rejected(SampleRejection.nameClash) == 1)
        #expect(store.configuredNameClashes == ["p2p.transfer.duration.sum"])
    }
}
