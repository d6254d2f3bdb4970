import Testing
import P2PMetricsStore
import P2PMetricsWire
@testable import P2PMetricsExposition

/// Issue 14: counters never go down (self-metrics included) and keep their exact integer part.
@Suite("Counter values")
struct CounterValueTests {
    static func counter(_ integer: UInt128, _ fraction: Double) -> String {
        var out: [UInt8] = []
        TextFormat.appendCounter(integer: integer, fraction: fraction, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    @Test("exact integer part plus the fractional adds' shortest decimal")
    func rendering() {
        #expect(Self.counter(1 << 60 + 3, 0.1) == "1152921504606846979.1")
        #expect(Self.counter(0, 0.5) == "0.5")
        #expect(Self.counter(2, 1.5) == "3.5")
        #expect(Self.counter(7, 0) == "7")
        #expect(Self.counter(1, 0.0000125) == "1.0000125")
        #expect(Self.counter(0, .leastNonzeroMagnitude) == "0." + String(repeating: "0", count: 323) + "5")
        #expect(Self.counter(UInt128(UInt64.max) << 1 | 1, 0) == "36893488147419103231")  // 2^65 − 1
        #expect(Self.counter(5, 0x1p64) == "18446744073709551621")
        #expect(Self.counter(0, .infinity) == "+Inf")
        // Huge fractional-form adds: every digit of integer + double, never an exponent.
        #expect(Self.counter(1, 0x1p200) == "1606938044258990275541962092341162602522202993782792835301377")
        #expect(Self.counter(.max, 0x1p64 + 4096) == "340282366920938463481821351505477767167")
        #expect(Self.counter(7, 1e20 + 0) == "100000000000000000007")
        #expect(Self.counter(0, .greatestFiniteMagnitude).count == 309)
    }

    @Test("a wrapped counter survives a snapshot and restore exactly")
    func snapshotKeepsWraps() {
        var store = MetricStore()
        for value in [SampleValue.unsigned(.max), .unsigned(.max), .unsigned(9), .double(0.25)] {
            _ = datagram([(.counterAdd, "w", [("a", "1")], value)]).withUnsafeBytes { store.ingest($0) }
        }
        var restored = MetricStore()
        for d in store.counterSnapshot() { _ = d.withUnsafeBytes { restored.restore($0) } }
        let id = restored.families[0].series[0]
        #expect(restored.counterValue(id).integer == UInt128(UInt64.max) * 2 + 9)
        #expect(restored.counterValue(id).fraction == 0.25)
    }

    @Test("128-bit decimals")
    func decimal128() {
        func text(_ v: UInt128) -> String {
            var out: [UInt8] = []
            TextFormat.appendDecimal(v, to: &out)
            return String(decoding: out, as: UTF8.self)
        }
        #expect(text(0) == "0")
        #expect(text(UInt128(UInt64.max) + 5) == "18446744073709551620")
        #expect(text(10_000_000_000_000_000_000) == "10000000000000000000")
        #expect(text(.max) == "340282366920938463463374607431768211455")
    }

    @Test("a counter past 2^64 − 1 keeps counting up, integer and fractional adds together")
    func storeCounterPastTwoToThe64() {
        var store = MetricStore()
        for value in [SampleValue.unsigned(.max), .unsigned(5), .double(0.5)] {
            _ = datagram([(.counterAdd, "big", [], value)]).withUnsafeBytes { store.ingest($0) }
        }
        #expect(render(store).contains("\nbig 18446744073709551620.5\n"))
        // Reported: fractional adds, then a small add that wraps the integer part: never down.
        var wrap = MetricStore()
        for value in [SampleValue.unsigned(.max), .double(2000.5), .unsigned(1)] {
            _ = datagram([(.counterAdd, "w", [], value)]).withUnsafeBytes { wrap.ingest($0) }
        }
        #expect(render(wrap).contains("\nw 18446744073709553616.5\n"))
        var small = MetricStore()
        for value in [SampleValue.unsigned(1 << 60 + 3), .double(0.1)] {
            _ = datagram([(.counterAdd, "mixed", [], value)]).withUnsafeBytes { small.ingest($0) }
        }
        #expect(render(small).contains("\nmixed 1152921504606846979.1\n"))
    }

    @Test("reported: client drops of 2^64 − 1 then 5 read 2^64 + 4, never 4")
    func clientDropsNeverWrap() {
        var store = MetricStore()
        for drops in [UInt64.max, 5] {
            var encoder = DatagramEncoder(maxSize: 100)
            encoder.appendDropped(drops)
            _ = encoder.bytes.withUnsafeBytes { store.ingest($0) }
        }
        #expect(store.statistics.clientDroppedDatagrams == UInt128(UInt64.max) + 5)
        var metrics = SelfMetrics(version: "t", statistics: store.statistics, liveSeries: 0, seriesMemoryBytes: 0,
                                  lastScrapeDurationSeconds: 0, scrapesTotal: (0, 0), httpResponses: [], startTimeSeconds: 0)
        metrics.format = .openMetrics
        var out: [UInt8] = []
        metrics.render(into: &out)
        #expect(String(decoding: out, as: UTF8.self).contains("\np2pmetricsd_client_dropped_datagrams_total 18446744073709551620\n"))
    }
}
