import Testing

import P2PMetricsStore
@testable import P2PMetricsServer

@Suite("Configuration file: Codable schema, one-line errors naming the key")
struct ConfigurationTests {
    private let base = ServerConfiguration(
        socketPath: "/run/x.sock", listenAddress: (try? NetworkAddress(parsing: "127.0.0.1:9478"))!, version: "t")

    private func decode(_ json: String) throws -> ConfigurationFile {
        try ConfigurationFile.decode(Array(json.utf8), onto: base)
    }

    /// The one line a schema error gives, or nil when the document decodes.
    private func error(_ json: String) -> String? {
        do {
            _ = try decode(json)
            return nil
        } catch let error as ConfigurationError {
            return error.message
        } catch {
            return "not JSON"
        }
    }

    @Test("every key lands in its configuration field; absent keys keep the base")
    func keys() throws {
        let file = try decode("""
        {"socket": "/tmp/s.sock", "listen": "127.0.0.1:1", "udp": "[::1]:2", "otlp": "127.0.0.1:4318", "state_file": "/tmp/state",
         "socket_mode": "0600", "receive_buffer_bytes": 65536, "allowed_uids": [1000], "allowed_gids": [998, 999],
         "track_process_gauges": false, "default_ttl_seconds": 60, "default_buckets": [1, 2.5],
         "limits": {"max_series": 10, "max_series_per_metric": 5, "max_http_connections": 3, "max_http_head_bytes": 512,
                    "max_http_headers": 7, "idle_timeout_seconds": 2, "request_timeout_seconds": 4,
                    "max_tracked_processes": 9, "max_labels_per_series": 4, "max_label_value_length": 100,
                    "max_memory_bytes": 2097152}}
        """)
        let c = file.configuration
        #expect(file.socket == "/tmp/s.sock" && file.stateFile == "/tmp/state")
        #expect(file.listen?.description == "127.0.0.1:1" && file.udp?.description == "[::1]:2" && file.otlp?.description == "127.0.0.1:4318")
        #expect(c.socketPath == "/run/x.sock")  // the file's socket is the caller's to apply (flags win)
        #expect(c.socketMode == 0o600 && c.receiveBufferBytes == 65536)
        #expect(c.store.allowedUIDs == [1000] && c.store.allowedGIDs == [998, 999])
        #expect(!c.store.trackProcessGauges && c.store.defaultTTLSeconds == 60 && c.store.defaultBuckets == [1, 2.5])
        #expect(c.store.maxSeries == 10 && c.store.maxSeriesPerMetric == 5 && c.maxConnections == 3)
        #expect(c.httpLimits.maxHeadBytes == 512 && c.httpLimits.maxHeaderCount == 7)
        #expect(c.idleTimeoutMilliseconds == 2_000 && c.requestTimeoutMilliseconds == 4_000)
        #expect(c.store.maxTrackedProcesses == 9 && c.store.maxLabelsPerSeries == 4)
        #expect(c.store.maxLabelValueLength == 100 && c.store.maxMemoryBytes == 2 << 20)

        let empty = try decode("{}").configuration
        #expect(empty.store.maxSeries == base.store.maxSeries && empty.socketMode == base.socketMode)
        #expect(empty.store.metrics == base.store.metrics)
    }

    @Test("otlp_resource_labels: absent means none; a list of attribute keys is kept as given; a change waits for a restart")
    func otlpResourceLabels() throws {
        #expect(try decode("{}").configuration.otlpResourceLabels == [])
        let c = try decode(#"{"otlp_resource_labels": ["service.name", "host.name"]}"#).configuration
        #expect(c.otlpResourceLabels == ["service.name", "host.name"])
        #expect(c.keysKeptUntilRestart(running: base, existingMetrics: []) == ["otlp_resource_labels"])
    }

    @Test("metric entries override the catalog's by exposed name and add new ones")
    func metrics() throws {
        let c = try decode("""
        {"metrics": {"p2p_transfer_duration": {"buckets": [1, 2]},
                     "my.job": {"type": "topk", "top_k": 20, "ttl_seconds": 600, "help": "jobs"},
                     "jobs.running": {"type": "gauge", "process_scoped": true}}}
        """).configuration.store
        #expect(c.metrics.count == base.store.metrics.count + 2)
        #expect(c.metrics.first { $0.name == "p2p.transfer.duration" }?.buckets == [1, 2])
        let job = try #require(c.metrics.first { $0.name == "my.job" })
        #expect(job.type == .topK && job.topK == 20 && job.ttlSeconds == 600 && job.help == "jobs")
        #expect(c.metrics.first { $0.name == "jobs.running" }?.processScoped == true)
        #expect(c.metrics.first { $0.name == "jobs.running" }?.help == "Metric jobs_running sent by clients of p2pmetricsd.")
    }

    @Test("a schema error is one line naming the key and the reason")
    func errors() {
        let cases: [(String, String)] = [
            (#"{"limitz": {}}"#, "unknown key limitz (known: allowed_gids, allowed_uids, default_buckets, default_ttl_seconds, limits, listen, metrics, otlp, otlp_resource_labels, receive_buffer_bytes, socket, socket_mode, state_file, track_process_gauges, udp)"),
            (#"{"limits": {"max_seriez": 1}}"#, "unknown key limits.max_seriez (known: idle_timeout_seconds, max_http_connections, max_http_head_bytes, max_http_headers, max_label_value_length, max_labels_per_series, max_memory_bytes, max_series, max_series_per_metric, max_tracked_processes, request_timeout_seconds)"),
            (#"{"limits": {"max_series": "many"}}"#, "limits.max_series must be a whole number from 1 to 100000000"),
            (#"{"limits": {"max_series": 0}}"#, "limits.max_series must be a whole number from 1 to 100000000"),
            (#"{"limits": {"max_series": 1.5}}"#, "limits.max_series must be a whole number from 1 to 100000000"),
            (#"{"limits": {"max_memory_bytes": 1024}}"#, "limits.max_memory_bytes must be a whole number from 1048576 to 1099511627776"),
            (#"{"limits": 5}"#, "limits must be an object"),
            (#"{"limits": null}"#, "limits must be an object"),
            (#"{"socket": null}"#, "socket must be a string"),
            (#"{"state_file": ""}"#, "state_file must not be empty"),
            (#"{"listen": "nonsense"}"#, "listen: bad address 'nonsense': expected HOST:PORT, [IPV6]:PORT or :PORT"),
            (#"{"udp": "localhost:70000"}"#, "udp: bad address 'localhost:70000': the port must be a number from 0 to 65535"),
            (#"{"socket_mode": "999"}"#, #"socket_mode must be an octal string like "0660""#),
            (#"{"track_process_gauges": 1}"#, "track_process_gauges must be true or false"),
            (#"{"allowed_uids": 5}"#, "allowed_uids must be a list of numeric ids"),
            (#"{"allowed_uids": [-1]}"#, "allowed_uids must be a whole number from 0 to 4294967294"),
            (#"{"default_buckets": []}"#, "default_buckets must be a list of 1 to 64 bucket bounds"),
            (#"{"default_buckets": [1, "x"]}"#, "default_buckets must hold finite numbers"),
            (#"{"metrics": []}"#, "metrics must be an object"),
            (#"{"metrics": {"x": 1}}"#, "metrics.x must be an object"),
            (#"{"metrics": {"x": {"type": "histogram", "buckets": [2, 1]}}}"#, "metrics.x.buckets must be strictly increasing"),
            (#"{"metrics": {"x": {"type": "summary"}}}"#, "metrics.x.type must be counter, gauge, histogram, distinct or topk"),
            (#"{"metrics": {"x": {}}}"#, "metrics.x.type is required for a metric the catalog does not know"),
            (#"{"metrics": {"x": {"type": "gauge", "buckets": [1]}}}"#, "metrics.x.buckets is only for histograms"),
            (#"{"metrics": {"x": {"type": "gauge", "top_k": 3}}}"#, "metrics.x.top_k is only for topk metrics"),
            (#"{"metrics": {"x": {"type": "counter", "process_scoped": true}}}"#, "metrics.x.process_scoped must be true or false, and only for gauges"),
            (#"{"metrics": {"x": {"type": "gauge", "colour": 1}}}"#, "unknown key metrics.x.colour (known: buckets, help, process_scoped, top_k, ttl_seconds, type)"),
            (#"{"metrics": {"1x": {"type": "gauge"}}}"#, "metrics.1x: not a valid metric name"),
            (#"{"otlp_resource_labels": "service.name"}"#, "otlp_resource_labels must be a list of at most 16 attribute keys"),
            (#"{"otlp_resource_labels": [\#((0...16).map { "\"k\($0)\"" }.joined(separator: ","))]}"#,
             "otlp_resource_labels must be a list of at most 16 attribute keys"),
            (#"{"otlp_resource_labels": [""]}"#, "otlp_resource_labels: '' cannot be a label name"),
            (#"{"otlp_resource_labels": ["service.name", "service_name"]}"#,
             "otlp_resource_labels: 'service.name' and 'service_name' are the same label service_name"),
            ("[1]", "top level must be an object"),
            ("{", "not JSON"),
        ]
        for (json, message) in cases {
            #expect(error(json) == message, "\(json)")
        }
    }
}
