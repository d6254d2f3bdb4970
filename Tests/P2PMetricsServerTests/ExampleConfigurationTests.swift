import Testing

import P2PMetricsStore
@testable import P2PMetricsServer

/// `contrib/p2pmetricsd.example.json` is the configuration schema written once: every key the
/// decoder knows, at its default. This checks the defaults against the code; the keys against
/// the decoder and the README are checked by `Tests/integration/test_config_schema.py`.
@Suite("contrib/p2pmetricsd.example.json holds every key at its default")
struct ExampleConfigurationTests {
    private static let path: String = {
        // Tests/P2PMetricsServerTests/ExampleConfigurationTests.swift → the package root.
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/") + "/contrib/p2pmetricsd.example.json"
    }()

    @Test("decoding the file onto the defaults changes nothing but the keys that are off unless set")
    func defaults() throws {
        let base = ServerConfiguration(
            socketPath: "/run/p2pmetricsd/ingest.sock",
            listenAddress: try NetworkAddress(parsing: "127.0.0.1:9478"), version: "t")
        let file = try ConfigurationFile.decode(try RegularFile.read(Self.path, followSymlinks: true, limit: 1 << 20), onto: base)
        let c = file.configuration
        // Paths and addresses: the root defaults (the CLI's; flags override them).
        #expect(file.socket == base.socketPath && file.listen?.description == base.listenAddress.description)
        #expect(c.socketMode == base.socketMode && c.receiveBufferBytes == base.receiveBufferBytes)
        #expect(c.maxConnections == base.maxConnections)
        #expect(c.httpLimits.maxHeadBytes == base.httpLimits.maxHeadBytes)
        #expect(c.httpLimits.maxHeaderCount == base.httpLimits.maxHeaderCount)
        #expect(c.idleTimeoutMilliseconds == base.idleTimeoutMilliseconds)
        #expect(c.requestTimeoutMilliseconds == base.requestTimeoutMilliseconds)
        let s = c.store, d = base.store
        #expect(s.allowedUIDs == d.allowedUIDs && s.allowedGIDs == d.allowedGIDs)
        #expect(s.trackProcessGauges == d.trackProcessGauges && s.maxTrackedProcesses == d.maxTrackedProcesses)
        #expect(s.defaultBuckets == d.defaultBuckets)
        #expect(s.maxSeries == d.maxSeries && s.maxSeriesPerMetric == d.maxSeriesPerMetric)
        #expect(s.maxLabelsPerSeries == d.maxLabelsPerSeries && s.maxLabelValueLength == d.maxLabelValueLength)
        #expect(s.maxMemoryBytes == d.maxMemoryBytes)
        // The metric entries restate the catalog's own descriptors; only `ttl_seconds` is added.
        var metrics = s.metrics
        for i in metrics.indices { metrics[i].ttlSeconds = nil }
        #expect(metrics == d.metrics)
        // Off unless set (absent from the defaults): the file shows a typical value.
        #expect(d.defaultTTLSeconds == nil && s.defaultTTLSeconds == 3600)
        #expect(base.udpAddress == nil && file.udp?.description == "127.0.0.1:8125")
        #expect(base.otlpAddress == nil && file.otlp?.description == "127.0.0.1:4318")
        #expect(base.otlpResourceLabels == [] && c.otlpResourceLabels == ["service.name"])
        #expect(base.stateFile == nil && file.stateFile == "/var/lib/p2pmetricsd/counters.state")
        #expect(d.metrics.allSatisfy { $0.ttlSeconds == nil })
    }
}
