import Testing
import P2PMetricsInputDatagram
import P2PMetricsWire
@testable import P2PMetricsStore

/// One binary datagram of a `counter add` of 1 to `name{labels}`.
private func counterAdd(_ name: String, _ labels: [(String, String)] = []) -> [UInt8] {
    var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
    _ = try? encoder.append(.counterAdd, name: name, labels: labels, value: .unsigned(1))
    return encoder.bytes
}

@Suite("The ingest sockets' input: datagrams, allow-list, counters")
struct DatagramInputTests {
    let alice = SenderCredentials(pid: 100, uid: 1000, gid: 1000)
    let bob = SenderCredentials(pid: 200, uid: 2000, gid: 998)
    let mallory = SenderCredentials(pid: 300, uid: 3000, gid: 3000)

    @Test("a malformed datagram is refused whole, counted by reason; received datagrams and bytes count both")
    func wholeDatagramRejection() {
        var store = FedStore()
        let good = counterAdd("c")
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        _ = try? encoder.append(.counterAdd, name: "c", value: .unsigned(5))
        _ = try? encoder.append(.counterAdd, name: "d", value: .unsigned(5))
        var bad = encoder.bytes
        bad.append(0x10)  // a sample tag with nothing after it
        #expect(good.withUnsafeBytes { store.ingest($0) } == nil)
        #expect(bad.withUnsafeBytes { store.ingest($0) } == .truncated)
        #expect(store.value("c") == 1)
        #expect(store.input.statistics.rejected[.truncated] == 1)
        #expect(store.input.statistics.datagramsReceived == 2)
        #expect(store.input.statistics.bytesReceived == UInt64(good.count + bad.count))
        #expect(store.statistics.samplesApplied == 1)
    }

    @Test("text datagrams go to the text input, whose lines are counted there")
    func textGoesToStatsD() {
        var store = FedStore()
        store.ingestText("a:1|c\nb:x|c")
        #expect(store.value("a") == 1)
        #expect(store.text.linesReceived == 2)
        #expect(store.text.rejected[.badValue] == 1)
        #expect(store.input.statistics.datagramsReceived == 1)
        #expect(store.input.statistics.rejected.counts.allSatisfy { $0 == 0 })
    }

    @Test("the allow-list admits listed uids or gids and refuses everyone else, including no credentials")
    func allowList() {
        var configuration = StoreConfiguration()
        configuration.allowedUIDs = [1000]
        configuration.allowedGIDs = [998]
        var store = FedStore(configuration: configuration)
        let bytes = counterAdd("c")
        #expect(bytes.withUnsafeBytes { store.ingest($0, from: alice) } == nil)
        #expect(bytes.withUnsafeBytes { store.ingest($0, from: bob) } == nil)
        #expect(bytes.withUnsafeBytes { store.ingest($0, from: mallory) } == .unauthorized)
        #expect(bytes.withUnsafeBytes { store.ingest($0, from: nil) } == .unauthorized)
        #expect(Array("c:5|c".utf8).withUnsafeBytes { store.ingest($0, from: mallory) } == .unauthorized)  // text too
        #expect(store.value("c") == 2)
        #expect(store.input.statistics.rejected[.unauthorized] == 3)
    }

    @Test("a reloaded allow-list and limits apply at once; existing families keep their type")
    func reconfigure() {
        var configuration = StoreConfiguration()
        configuration.maxSeriesPerMetric = 1
        configuration.allowedUIDs = [4000]
        var store = FedStore(configuration: configuration)
        let a = counterAdd("c", [("peer", "a")])
        let b = counterAdd("c", [("peer", "b")])
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
        store.store.reconfigure(configuration)
        #expect(store.configuration.trackProcessGauges)  // process tracking keeps its start-up setting

        _ = b.withUnsafeBytes { store.ingest($0, from: later) }
        #expect(store.value("c", ["peer": "a"]) == 1)
        #expect(store.value("c", ["peer": "b"]) == 1)
        #expect(store.families.first { $0.name == "c" }?.type == .counter)  // its family existed
        _ = counterAdd("g").withUnsafeBytes { store.ingest($0, from: later) }
        #expect(store.statistics.rejected(SampleRejection.typeClash) == 1)  // a new family: the entry applies
    }
}
