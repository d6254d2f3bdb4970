import Testing
import P2PMetricsWire

@testable import P2PMetricsStore

@Suite("Reloaded configuration (SIGHUP) and supplementary groups")
struct ReconfigureTests {
    let member = SenderCredentials(pid: 400, uid: 4000, gid: 4000, supplementaryGroups: [5000, 998])

    @Test("supplementary groups admit a sender whose uid and primary gid are not listed")
    func supplementaryGroups() {
        var configuration = StoreConfiguration()
        configuration.allowedGIDs = [998]
        #expect(configuration.admits(member))
        #expect(!configuration.admits(SenderCredentials(pid: 400, uid: 4000, gid: 4000)))
        #expect(!configuration.admits(SenderCredentials(pid: 400, uid: 4000, gid: 4000, supplementaryGroups: [5000])))
    }

    @Test("limits, allow-lists and entries of new metrics apply at once; existing families keep their type")
    func reconfigure() {
        var configuration = StoreConfiguration()
        configuration.maxSeriesPerMetric = 1
        configuration.allowedUIDs = [4000]
        var store = MetricStore(configuration: configuration)
        let a = datagram([(.counterAdd, "c", [("peer", "a")], .unsigned(1))])
        let b = datagram([(.counterAdd, "c", [("peer", "b")], .unsigned(1))])
        let listed = SenderCredentials(pid: 1, uid: 4000, gid: 4000)
        let later = SenderCredentials(pid: 2, uid: 5000, gid: 5000)
        #expect(a.withUnsafeBytes { store.ingest($0, from: listed) } == nil)
        #expect(b.withUnsafeBytes { store.ingest($0, from: later) } == .unauthorized)
        _ = b.withUnsafeBytes { store.ingest($0, from: listed) }
        #expect(store.statistics.rejected(SampleRejection.metricSeriesLimit) == 1)

        configuration.allowedUIDs = [4000, 5000]
        configuration.maxSeriesPerMetric = 2
        configuration.metrics.append(MetricDescriptor(name: "c", type: .gauge, help: "now a gauge"))
        configuration.metrics.append(MetricDescriptor(name: "g", type: .gauge, help: "a gauge"))
        configuration.trackProcessGauges = false
        store.reconfigure(configuration)
        #expect(store.configuration.trackProcessGauges)  // process tracking keeps its start-up setting

        _ = b.withUnsafeBytes { store.ingest($0, from: later) }
        #expect(store.counter("c", ["peer": "a"]) == 1)
        #expect(store.counter("c", ["peer": "b"]) == 1)
        #expect(store.families.first { $0.name == "c" }?.type == .counter)  // its family existed
        let g = datagram([(.counterAdd, "g", [], .unsigned(1))])
        _ = g.withUnsafeBytes { store.ingest($0, from: later) }
        #expect(store.statistics.rejected(SampleRejection.typeClash) == 1)  // a new family: the entry applies
    }
}
