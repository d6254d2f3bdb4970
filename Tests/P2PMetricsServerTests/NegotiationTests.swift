import Testing

import P2PMetricsExposition
@testable import P2PMetricsServer

@Suite("Content negotiation of /metrics: format and gzip")
struct NegotiationTests {
    @Test("OpenMetrics when Accept prefers it (Prometheus' default header), the text format otherwise")
    func format() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
        #expect(ExpositionFormat.negotiate(accept: prometheus) == .openMetrics)
        #expect(ExpositionFormat.negotiate(accept: nil) == .prometheusText)
        #expect(ExpositionFormat.negotiate(accept: "text/plain") == .prometheusText)
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text") == .openMetrics)
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text;q=0.2, text/plain;q=0.9") == .prometheusText)
        #expect(ExpositionFormat.negotiate(accept: "application/openmetrics-text;q=0") == .prometheusText)
    }

    @Test("gzip only when listed without q=0")
    func gzip() {
        #expect(acceptsGzip("gzip"))
        #expect(acceptsGzip("deflate, GZIP;q=0.5"))
        #expect(acceptsGzip("x-gzip"))
        #expect(!acceptsGzip(nil))
        #expect(!acceptsGzip("identity"))
        #expect(!acceptsGzip("gzip;q=0"))
        #expect(!acceptsGzip("gzip; q=0.000"))
    }
}
