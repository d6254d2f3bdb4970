import Foundation
import Testing
import P2PMetricsStore
import P2PMetricsWire
@testable import P2PMetricsExposition

/// Issue 14: a metric whose exposed name, or a name its exposition derives, is another family's
/// is refused (`name_clash`) and the scrape stays valid; first come wins.
@Suite("Exposed name clashes")
struct NameClashTests {
    /// Ingests each sample as its own datagram.
    static func store(_ samples: [(SampleKind, String, SampleValue)], configuration: StoreConfiguration = StoreConfiguration())
        -> MetricStore {
        var store = MetricStore(configuration: configuration)
        for (kind, name, value) in samples {
            var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
            switch kind {
            case .topKAdd: _ = try! encoder.appendTopK(name: name, labels: [], key: "k")
            case .distinctAdd: _ = try! encoder.appendDistinct(name: name, labels: [], key: [1])
            default: _ = try! encoder.append(kind, name: name, labels: [], value: value)
            }
            _ = encoder.bytes.withUnsafeBytes { store.ingest($0) }
        }
        return store
    }

    static func lines(_ store: MetricStore, _ format: ExpositionFormat, named name: String) -> [String] {
        String(decoding: ExpositionRenderer.renderAll(store, format: format), as: UTF8.self)
            .split(separator: "\n").map(String.init)
            .filter { $0.split(separator: " ").first.map { $0.split(separator: "{")[0] == name } ?? false }
    }

    @Test("reported: histogram ho.coll, then counter ho.coll.count")
    func histogramThenCount() {
        let s = Self.store([(.histogramObserve, "ho.coll", .unsigned(1)), (.counterAdd, "ho.coll.count", .unsigned(1))])
        #expect(s.statistics.rejected(SampleRejection.nameClash) == 1)
        #expect(Self.lines(s, .prometheusText, named: "ho_coll_count") == ["ho_coll_count 1"])
        #expect(s.families.map(\.name) == ["ho_coll"])
    }

    @Test("reported: top-K ho.tkc, then gauge ho.tkc.error")
    func topKThenError() {
        let s = Self.store([(.topKAdd, "ho.tkc", .unsigned(0)), (.gaugeSet, "ho.tkc.error", .unsigned(5))])
        #expect(s.statistics.rejected(SampleRejection.nameClash) == 1)
        #expect(Self.lines(s, .prometheusText, named: "ho_tkc_error") == ["ho_tkc_error{key=\"k\"} 0"])
        let om = String(decoding: ExpositionRenderer.renderAll(s, format: .openMetrics), as: UTF8.self)
        #expect(om.components(separatedBy: "# TYPE ho_tkc_error gauge\n").count == 2)
    }

    @Test("reported: counter ho.omc.total and gauge ho.omc share the OpenMetrics family ho_omc, in either order")
    func openMetricsFamily() {
        let a = Self.store([(.counterAdd, "ho.omc.total", .unsigned(1)), (.gaugeSet, "ho.omc", .unsigned(1))])
        let b = Self.store([(.gaugeSet, "ho.omc", .unsigned(1)), (.counterAdd, "ho.omc.total", .unsigned(1))])
        for s in [a, b] {
            #expect(s.statistics.rejected(SampleRejection.nameClash) == 1)
            let om = String(decoding: ExpositionRenderer.renderAll(s, format: .openMetrics), as: UTF8.self)
            #expect(om.components(separatedBy: "# TYPE ho_omc ").count == 2)
        }
        #expect(a.families.map(\.name) == ["ho_omc_total"])
        #expect(b.families.map(\.name) == ["ho_omc"])
    }

    @Test("first come wins: a counter ho.rev.count keeps its name, a later histogram ho.rev is refused")
    func firstComeWins() {
        let s = Self.store([(.counterAdd, "ho.rev.count", .unsigned(2)), (.histogramObserve, "ho.rev", .unsigned(1)),
                            (.counterAdd, "ho.rev.count", .unsigned(1))])
        #expect(s.statistics.rejected(SampleRejection.nameClash) == 1)
        #expect(Self.lines(s, .prometheusText, named: "ho_rev_count") == ["ho_rev_count 3"])
    }

    @Test("known metrics claim their names before their first sample; the daemon's namespace is nobody's")
    func catalogAndReservedNamespace() {
        let s = Self.store([
            (.gaugeSet, "p2p.transfer.duration.sum", .unsigned(1)),
            (.counterAdd, "p2p.image.downloads", .unsigned(1)),  // p2p_image_downloads_total's OpenMetrics family
            (.histogramObserve, "p2pmetricsd", .unsigned(1)),    // p2pmetricsd_bucket
            (.topKAdd, "p2pmetricsd", .unsigned(0)),             // p2pmetricsd_error
            (.histogramObserve, "p2p.transfer.duration", .unsigned(1)),
            (.counterAdd, "p2pmetricsd", .unsigned(1)),          // p2pmetricsd itself is no self-metric
        ])
        #expect(s.statistics.rejected(SampleRejection.nameClash) == 4)
        #expect(s.families.map(\.name) == ["p2p_transfer_duration", "p2pmetricsd"])
    }

    @Test("a configured metric that clashes with the catalog never gets a family")
    func configuredClash() {
        var configuration = StoreConfiguration()
        configuration.metrics.append(MetricDescriptor(name: "p2p.transfer.duration.bucket", type: .gauge, help: "x"))
        let s = Self.store([(.gaugeSet, "p2p.transfer.duration.bucket", .unsigned(1)),
                            (.histogramObserve, "p2p.transfer.duration", .unsigned(1))], configuration: configuration)
        #expect(s.statistics.rejected(SampleRejection.nameClash) == 1)
        #expect(s.families.map(\.name) == ["p2p_transfer_duration"])
        #expect(s.configuredNameClashes == ["p2p.transfer.duration.bucket"])
        #expect(MetricStore().configuredNameClashes == [])
    }

    @Test("released names are free again; a release by another family changes nothing")
    func release() {
        var names = ExposedNames()
        let claimed = names.claim("h", type: .histogram)
        #expect(claimed)
        #expect(!names.admits("h_count", type: .counter))
        names.release("h_count", type: .counter)
        #expect(!names.admits("h_count", type: .counter))
        names.release("h", type: .histogram)
        let reclaimed = names.claim("h_count", type: .counter)
        #expect(reclaimed)
        #expect(!names.admits("h", type: .histogram))
    }

    @Test("dots and underscores name one metric: a.b and a_b add up, no clash")
    func dotsAndUnderscores() {
        let s = Self.store([(.counterAdd, "a.b", .unsigned(2)), (.counterAdd, "a_b", .unsigned(3))])
        #expect(s.statistics.rejected(SampleRejection.nameClash) == 0)
        #expect(Self.lines(s, .prometheusText, named: "a_b") == ["a_b 5"])
    }

    @Test("claims of each type")
    func claims() {
        #expect(ExposedNames.claims(of: "x_total", type: .counter) == ["x_total", "x", "x_created"])
        #expect(ExposedNames.claims(of: "x", type: .counter) == ["x"])
        #expect(ExposedNames.claims(of: "h", type: .histogram) == ["h", "h_bucket", "h_sum", "h_count", "h_created"])
        #expect(ExposedNames.claims(of: "t", type: .topK) == ["t", "t_error"])
        #expect(ExposedNames.claims(of: "g", type: .gauge) == ["g"])
        #expect(ExposedNames.claims(of: "d", type: .distinct) == ["d"])
    }
}
