import Testing
import P2PMetricsStatsD
import P2PMetricsWire
@testable import P2PMetricsStore

/// PROTOCOL.md §6: repeated sections behave as DogStatsD's own parser (datadog-agent) does, and tag
/// names are sanitized like the Swift client's dimensions (`__x` → `_x`, a histogram's `le` → `_le`).
@Suite("Text tags and repeated sections")
struct TagRulesTests {
    @Test("__x tags become _x, le on timers and histograms becomes _le, le on gauges and counters stays")
    func reservedTagNames() {
        var store = MetricStore()
        store.ingestText("""
        x:1|c|#__reserved:1
        y:1|c|#___triple:2,__:3
        lat:5|ms|#le:1
        hist:5|h|#le:2
        dist:5|d|#le:3
        g:1|g|#le:4
        """)
        #expect(store.statistics.textLinesRejected.allSatisfy { $0 == 0 })
        #expect(store.value("x", ["_reserved": "1"]) == 1)
        #expect(store.value("y", ["_triple": "2", "_": "3"]) == 1)
        #expect(store.value("lat", ["_le": "1"]) == 1)
        #expect(store.value("hist", ["_le": "2"]) == 1)
        #expect(store.value("dist", ["_le": "3"]) == 1)
        #expect(store.value("g", ["le": "4"]) == 1)
    }

    @Test("of two |# sections the last wins, as does the last of two @rates (datadog-agent's parser)")
    func repeatedSections() {
        var store = MetricStore()
        store.ingestText("""
        t:1|c|#a:1|#b:2
        r:1|c|@0.5|@0.25
        """)
        #expect(store.value("t", ["b": "2"]) == 1)
        #expect(store.value("t", ["a": "1"]) == nil)
        #expect(store.value("r") == 4)
    }
}
