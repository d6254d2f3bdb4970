import Testing
import P2PMetricsStore
import P2PMetricsWire
@testable import P2PMetricsExposition

/// OpenMetrics 1.0 rules beyond names: a histogram's sum is a counter there, so it "MUST NOT be
/// NaN or negative"; a histogram whose sum is negative (finite observations never make it NaN)
/// is written without `_sum` (its buckets and count stay), while the text format keeps it.
@Suite("OpenMetrics value rules")
struct OpenMetricsValueTests {
    @Test("a negative histogram sum is left out in OpenMetrics only")
    func histogramSum() {
        var store = MetricStore()
        let samples: [(SampleKind, String, [(String, String)], SampleValue)] = [
            (.histogramObserve, "temp", [("s", "neg")], .double(-3)),
            (.histogramObserve, "temp", [("s", "pos")], .double(2)),
            (.histogramObserve, "temp", [("s", "inf")], .double(1e308)),
            (.histogramObserve, "temp", [("s", "inf")], .double(1e308)),
            (.histogramObserve, "temp", [("s", "inf")], .double(-1e308)),  // +Inf stays: finite adds never make NaN
            (.histogramObserve, "temp", [("s", "ninf")], .double(-1e308)),
            (.histogramObserve, "temp", [("s", "ninf")], .double(-1e308)),
        ]
        _ = datagram(samples).withUnsafeBytes { store.ingest($0) }
        let om = String(decoding: ExpositionRenderer.renderAll(store, format: .openMetrics), as: UTF8.self)
        let text = render(store)
        #expect(om.contains("temp_sum{s=\"pos\"} 2\n"))
        #expect(!om.contains("temp_sum{s=\"neg\"}"))
        #expect(!om.contains("temp_sum{s=\"ninf\"}"))
        #expect(om.contains("temp_sum{s=\"inf\"} +Inf\n"))
        #expect(om.contains("temp_count{s=\"neg\"} 1\n") && om.contains("temp_count{s=\"ninf\"} 2\n"))
        #expect(text.contains("temp_sum{s=\"neg\"} -3\n") && text.contains("temp_sum{s=\"ninf\"} -Inf\n"))
    }
}
