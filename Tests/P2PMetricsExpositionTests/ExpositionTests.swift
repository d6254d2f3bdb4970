import Testing
import P2PMetricsStore
import P2PMetricsWire
@testable import P2PMetricsExposition

func datagram(_ samples: [(SampleKind, String, [(String, String)], SampleValue)]) -> [UInt8] {
    var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
    for (kind, name, labels, value) in samples { _ = try! encoder.append(kind, name: name, labels: labels, value: value) }
    return encoder.bytes
}

func render(_ store: MetricStore) -> String {
    String(decoding: ExpositionRenderer.renderAll(store), as: UTF8.self)
}

@Suite("Prometheus text exposition")
struct ExpositionTests {
    @Test("golden: catalog HELP/TYPE, sorted families, escaping, histogram buckets")
    func golden() {
        var configuration = StoreConfiguration()
        configuration.metrics.append(MetricDescriptor(name: "job.seconds", type: .histogram, help: "Job time.\nIn \\seconds\\.",
                                                      buckets: [0.5, 1]))
        var store = MetricStore(configuration: configuration)
        let bytes = datagram([
            (.counterAdd, "p2p.verification.failed", [("verification_type", "nar \"hash\"\\\n")], .unsigned(2)),
            (.gaugeAdd, "p2p.transfers.active", [], .unsigned(3)),
            (.histogramObserve, "job.seconds", [("queue", "a")], .double(0.25)),
            (.histogramObserve, "job.seconds", [("queue", "a")], .unsigned(1)),
            (.histogramObserve, "job.seconds", [("queue", "a")], .unsigned(7)),
            (.counterAdd, "p2p.cache.hits", [("cache_type", "chunk")], .double(0.5)),
            (.gaugeSet, "zeta", [("b", "2"), ("a", "1")], .double(-.infinity)),
            (.gaugeSet, "other", [], .double(1e-7)),
        ])
        _ = bytes.withUnsafeBytes { store.ingest($0) }
        let expected = """
        # HELP job_seconds Job time.\\nIn \\\\seconds\\\\.
        # TYPE job_seconds histogram
        job_seconds_bucket{queue="a",le="0.5"} 1
        job_seconds_bucket{queue="a",le="1"} 2
        job_seconds_bucket{queue="a",le="+Inf"} 3
        job_seconds_sum{queue="a"} 8.25
        job_seconds_count{queue="a"} 3
        # HELP other Metric other sent by clients of p2pmetricsd.
        # TYPE other gauge
        other 1e-07
        # HELP p2p_cache_hits Number of P2P cache hits.
        # TYPE p2p_cache_hits counter
        p2p_cache_hits{cache_type="chunk"} 0.5
        # HELP p2p_transfers_active Number of active P2P transfers.
        # TYPE p2p_transfers_active gauge
        p2p_transfers_active 3
        # HELP p2p_verification_failed Number of failed P2P image verifications.
        # TYPE p2p_verification_failed counter
        p2p_verification_failed{verification_type="nar \\"hash\\"\\\\\\n"} 2
        # HELP zeta Metric zeta sent by clients of p2pmetricsd.
        # TYPE zeta gauge
        zeta{a="1",b="2"} -Inf

        """
        #expect(render(store) == expected)
    }

    @Test("a histogram without labels opens its le label itself")
    func unlabelledHistogram() {
        var store = MetricStore()
        _ = datagram([(.histogramObserve, "p2p.transfer.duration", [], .double(0.3))]).withUnsafeBytes { store.ingest($0) }
        let text = render(store)
        #expect(text.contains("p2p_transfer_duration_bucket{le=\"0.01\"} 0\n"))
        #expect(text.contains("p2p_transfer_duration_bucket{le=\"0.5\"} 1\n"))
        #expect(text.contains("p2p_transfer_duration_bucket{le=\"+Inf\"} 1\n"))
        #expect(text.contains("p2p_transfer_duration_sum 0.3\np2p_transfer_duration_count 1\n"))
    }

    @Test("values: integers exact, specials spelled as Prometheus does")
    func values() {
        func text(_ v: Double) -> String {
            var out: [UInt8] = []
            TextFormat.appendValue(v, to: &out)
            return String(decoding: out, as: UTF8.self)
        }
        #expect(text(0) == "0")
        #expect(text(-0.0) == "0")
        #expect(text(42) == "42")
        #expect(text(-7) == "-7")
        #expect(text(0.1) == "0.1")
        #expect(text(.nan) == "NaN")
        #expect(text(.infinity) == "+Inf")
        #expect(text(1e300) == "1e+300")
        var out: [UInt8] = []
        TextFormat.appendCounter(integer: UInt128(UInt64.max), fraction: 0, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == "18446744073709551615")
    }

    @Test("rendering in slices gives the same bytes as rendering at once")
    func slicedRendering() {
        var store = MetricStore()
        for i in 0..<3_000 {
            _ = datagram([(.counterAdd, "s\(i % 5)", [("i", "\(i)")], .unsigned(UInt64(i)))]).withUnsafeBytes { store.ingest($0) }
        }
        let whole = ExpositionRenderer.renderAll(store)
        var renderer = ExpositionRenderer()
        var sliced: [UInt8] = []
        var slices = 0
        while !renderer.render(store, into: &sliced, budget: sliced.count + 1_000) { slices += 1 }
        #expect(slices > 10)
        #expect(sliced == whole)
    }

    @Test("self-metrics list every rejection reason, zero or not")
    func selfMetrics() {
        var store = MetricStore()
        _ = [WireFormat.magic].withUnsafeBytes { store.ingest($0) }
        var out: [UInt8] = []
        SelfMetrics(version: "1.2.3", statistics: store.statistics, liveSeries: 0, seriesMemoryBytes: 0,
                    lastScrapeDurationSeconds: 0.25, scrapesTotal: (2, 1), httpResponses: [(200, 2)],
                    startTimeSeconds: 1).render(into: &out)
        let text = String(decoding: out, as: UTF8.self)
        #expect(text.contains("p2pmetricsd_datagrams_rejected_total{reason=\"empty\"} 1\n"))
        for reason in DatagramRejection.allCases {
            #expect(text.contains("p2pmetricsd_datagrams_rejected_total{reason=\"\(reason.rawValue)\"}"))
        }
        #expect(text.contains("p2pmetricsd_build_info{version=\"1.2.3\",protocol=\"1\"} 1\n"))
        #expect(text.contains("p2pmetricsd_last_scrape_duration_seconds 0.25\n"))
        #expect(text.contains("p2pmetricsd_scrapes_total{format=\"openmetrics\"} 1\np2pmetricsd_scrapes_total{format=\"text\"} 2\n"))
    }
}

@Suite("OpenMetrics and sketches in the exposition")
struct OpenMetricsTests {
    @Test("golden: counters keep their sample names, _total families are declared without it, # EOF ends it")
    func golden() throws {
        var store = MetricStore()
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        try encoder.append(.counterAdd, name: "p2p.cache.hits", labels: [("cache_type", "chunk")], value: .unsigned(3))
        try encoder.append(.counterAdd, name: "p2p.image.downloads.total", value: .unsigned(2))
        try encoder.appendDistinct(name: "p2p.chunks.unique", key: Array("a".utf8))
        try encoder.appendDistinct(name: "p2p.chunks.unique", key: Array("b".utf8))
        try encoder.appendDistinct(name: "p2p.chunks.unique", key: Array("a".utf8))
        for key in ["x", "y", "x"] { try encoder.appendTopK(name: "p2p.chunks.requested", key: key) }
        _ = encoder.bytes.withUnsafeBytes { store.ingest($0) }
        let text = String(decoding: ExpositionRenderer.renderAll(store, format: .openMetrics), as: UTF8.self)
        let expected = """
        # HELP p2p_cache_hits Number of P2P cache hits.
        # TYPE p2p_cache_hits unknown
        p2p_cache_hits{cache_type="chunk"} 3
        # HELP p2p_chunks_requested Most requested chunks and their request counts (Space-Saving top-K sketch).
        # TYPE p2p_chunks_requested gauge
        p2p_chunks_requested{key="x"} 2
        p2p_chunks_requested{key="y"} 1
        # HELP p2p_chunks_requested_error Upper bound of the overestimation of each count of p2p_chunks_requested.
        # TYPE p2p_chunks_requested_error gauge
        p2p_chunks_requested_error{key="x"} 0
        p2p_chunks_requested_error{key="y"} 0
        # HELP p2p_chunks_unique Estimated number of distinct chunks seen (HyperLogLog, about 1.6% standard error).
        # TYPE p2p_chunks_unique gauge
        p2p_chunks_unique 2
        # HELP p2p_image_downloads Total number of P2P image downloads.
        # TYPE p2p_image_downloads counter
        p2p_image_downloads_total 2
        # EOF

        """
        #expect(text == expected)
        let plain = String(decoding: ExpositionRenderer.renderAll(store), as: UTF8.self)
        #expect(plain.contains("# TYPE p2p_image_downloads_total counter\np2p_image_downloads_total 2\n"))
        #expect(!plain.contains("# EOF"))
    }

    @Test("content negotiation follows the Accept header's preferences")
    func negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        #expect(ExpositionFormat.negotiate(accept: prometheus) == .openMetrics)
        #expect(ExpositionFormat.negotiate(accept: nil) == .prometheusText)
        #expect(ExpositionFormat.negotiate(accept: "*/*") == .prometheusText)
        #expect(ExpositionFormat.negotiate(accept: "text/plain") == .prometheusText)
        #expect(ExpositionFormat.negotiate(accept: "text/plain;q=1, application/openmetrics-text;q=0.5") == .prometheusText)
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text; version=1.0.0") == .openMetrics)
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text;q=0") == .prometheusText)
    }
}
