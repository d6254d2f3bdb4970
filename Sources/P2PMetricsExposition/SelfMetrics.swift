import P2PMetricsStatsD
import P2PMetricsStore
import P2PMetricsWire

/// The daemon's own health, exposed under the reserved `p2pmetricsd_` prefix.
public struct SelfMetrics: Sendable {
    public var version: String
    public var statistics: IngestStatistics
    public var liveSeries: Int
    public var seriesMemoryBytes: Int
    /// How long the previous complete scrape took to render and send, in seconds.
    public var lastScrapeDurationSeconds: Double
    /// Completed /metrics responses in the text format and in OpenMetrics.
    public var scrapesTotal: (text: UInt64, openMetrics: UInt64)
    /// HTTP responses sent, by status code.
    public var httpResponses: [(code: Int, count: UInt64)]
    public var startTimeSeconds: Double
    /// Processes whose exit the daemon watches (they have gauge adds outstanding).
    public var trackedProcesses: Int
    /// HTTP connections: open, refused at the cap, evicted to make room.
    public var httpConnections = HTTPConnectionStatistics()
    /// The process's resident set size in bytes, when known.
    public var residentMemoryBytes: Int?
    /// The store's memory budget (`limits.max_memory_bytes`), when known.
    public var seriesMemoryLimitBytes: Int?

    public init(
        version: String, statistics: IngestStatistics, liveSeries: Int, seriesMemoryBytes: Int,
        lastScrapeDurationSeconds: Double, trackedProcesses: Int = 0, scrapesTotal: (text: UInt64, openMetrics: UInt64),
        httpResponses: [(code: Int, count: UInt64)], startTimeSeconds: Double
    ) {
        self.trackedProcesses = trackedProcesses
        self.version = version
        self.statistics = statistics
        self.liveSeries = liveSeries
        self.seriesMemoryBytes = seriesMemoryBytes
        self.lastScrapeDurationSeconds = lastScrapeDurationSeconds
        self.scrapesTotal = scrapesTotal
        self.httpResponses = httpResponses
        self.startTimeSeconds = startTimeSeconds
    }

    /// The format `render` writes.
    public var format: ExpositionFormat = .prometheusText

    /// Appends every self-metric, with HELP and TYPE.
    public func render(into out: inout [UInt8]) {
        family("p2pmetricsd_build_info", "gauge", "Build information of the running p2pmetricsd.", &out)
        line("p2pmetricsd_build_info{version=\"\(version)\",protocol=\"1\"}", 1, &out)

        counter("p2pmetricsd_datagrams_received_total", "Datagrams read from the ingest socket, valid or not.",
                statistics.datagramsReceived, &out)
        counter("p2pmetricsd_bytes_received_total", "Bytes of all datagrams read from the ingest socket.",
                statistics.bytesReceived, &out)
        counter("p2pmetricsd_samples_applied_total", "Samples applied to series.", statistics.samplesApplied, &out)
        counter("p2pmetricsd_client_dropped_datagrams_total",
                "Datagrams clients reported in-band that they had to drop (socket full or sidecar absent).",
                statistics.clientDroppedDatagrams, &out)

        family("p2pmetricsd_datagrams_rejected_total", "counter",
               "Datagrams refused whole, nothing of them applied, by reason.", &out)
        for (i, reason) in DatagramRejection.allCases.enumerated() {
            line("p2pmetricsd_datagrams_rejected_total{reason=\"\(reason.rawValue)\"}",
                 Double(statistics.datagramsRejected[i]), &out)
        }
        family("p2pmetricsd_samples_rejected_total", "counter",
               "Samples of valid datagrams refused because of the store's state, by reason.", &out)
        for (i, reason) in SampleRejection.allCases.enumerated() {
            line("p2pmetricsd_samples_rejected_total{reason=\"\(reason.rawValue)\"}",
                 Double(statistics.samplesRejected[i]), &out)
        }

        counter("p2pmetricsd_text_lines_received_total", "Non-empty text StatsD / DogStatsD lines read.",
                statistics.textLinesReceived, &out)
        family("p2pmetricsd_text_lines_rejected_total", "counter",
               "Text lines refused (the other lines of their datagram still apply), by reason.", &out)
        for (i, reason) in TextLineRejection.allCases.enumerated() {
            line("p2pmetricsd_text_lines_rejected_total{reason=\"\(reason.rawValue)\"}",
                 Double(statistics.textLinesRejected[i]), &out)
        }

        counter("p2pmetricsd_series_expired_total", "Series removed after their metric's TTL passed without an update.",
                statistics.seriesExpired, &out)
        counter("p2pmetricsd_processes_withdrawn_total",
                "Exited processes whose outstanding gauge adds were withdrawn.", statistics.processesWithdrawn, &out)
        counter("p2pmetricsd_untracked_adds_total",
                "Gauge adds to process-scoped metrics applied without tracking (no sender pid, or tracking limits reached).",
                statistics.gaugeAddsUntracked, &out)
        gauge("p2pmetricsd_tracked_processes", "Sending processes watched for exit.", Double(trackedProcesses), &out)
        gauge("p2pmetricsd_series", "Live series in the store.", Double(liveSeries), &out)
        gauge("p2pmetricsd_series_memory_bytes",
              "Bytes held by the series tables (keys, values, buckets, sketches, names, wire cache); bounded by limits.max_memory_bytes.",
              Double(seriesMemoryBytes), &out)
        if let seriesMemoryLimitBytes {
            gauge("p2pmetricsd_series_memory_limit_bytes",
                  "The budget of p2pmetricsd_series_memory_bytes (limits.max_memory_bytes); new series past it are refused.",
                  Double(seriesMemoryLimitBytes), &out)
        }
        if let residentMemoryBytes {
            gauge("p2pmetricsd_resident_memory_bytes", "Resident set size of the p2pmetricsd process.",
                  Double(residentMemoryBytes), &out)
        }
        gauge("p2pmetricsd_last_scrape_duration_seconds",
              "Time the previous complete /metrics response took to render and send.", lastScrapeDurationSeconds, &out)
        family("p2pmetricsd_scrapes_total", "counter", "Completed /metrics responses, by exposition format.", &out)
        line("p2pmetricsd_scrapes_total{format=\"openmetrics\"}", Double(scrapesTotal.openMetrics), &out)
        line("p2pmetricsd_scrapes_total{format=\"text\"}", Double(scrapesTotal.text), &out)
        family("p2pmetricsd_http_responses_total", "counter", "HTTP responses sent, by status code.", &out)
        for (code, count) in httpResponses {
            line("p2pmetricsd_http_responses_total{code=\"\(code)\"}", Double(count), &out)
        }
        gauge("p2pmetricsd_http_connections", "Open HTTP connections.", Double(httpConnections.open), &out)
        counter("p2pmetricsd_http_connections_refused_total",
                "HTTP connections closed at once: at the cap, with every connection busy with a request.",
                httpConnections.refused, &out)
        family("p2pmetricsd_http_connections_evicted_total", "counter",
               "HTTP connections closed to make room for a new one at the cap, by reason.", &out)
        for (reason, count) in httpConnections.evicted {
            line("p2pmetricsd_http_connections_evicted_total{reason=\"\(reason)\"}", Double(count), &out)
        }
        gauge("p2pmetricsd_start_time_seconds", "Start time of the process since the Unix epoch, in seconds.",
              startTimeSeconds, &out)
    }

    private func family(_ name: String, _ type: String, _ help: String, _ out: inout [UInt8]) {
        TextFormat.appendHeader(name: name, help: help, type: type, format: format, to: &out)
    }

    private func line(_ series: String, _ value: Double, _ out: inout [UInt8]) {
        out.append(contentsOf: series.utf8)
        out.append(0x20)
        TextFormat.appendValue(value, to: &out)
        out.append(0x0A)
    }

    private func counter(_ name: String, _ help: String, _ value: some FixedWidthInteger & UnsignedInteger,
                         _ out: inout [UInt8]) {
        family(name, "counter", help, &out)
        out.append(contentsOf: name.utf8)
        out.append(0x20)
        TextFormat.appendDecimal(UInt128(value), to: &out)
        out.append(0x0A)
    }

    private func gauge(_ name: String, _ help: String, _ value: Double, _ out: inout [UInt8]) {
        family(name, "gauge", help, &out)
        line(name, value, &out)
    }
}

/// What the HTTP listener reports about its connections.
public struct HTTPConnectionStatistics: Sendable {
    public var open: Int
    public var refused: UInt64
    /// Evictions by reason, every reason listed.
    public var evicted: [(reason: String, count: UInt64)]

    public init(open: Int = 0, refused: UInt64 = 0, evicted: [(reason: String, count: UInt64)] = []) {
        self.open = open
        self.refused = refused
        self.evicted = evicted
    }
}
