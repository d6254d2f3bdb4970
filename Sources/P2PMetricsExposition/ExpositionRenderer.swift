import P2PMetricsStore
import P2PMetricsWire

/// Renders a store's families in the Prometheus text format or OpenMetrics, a slice at a time.
///
/// A scrape of a million series must not stop the loop from draining the ingest socket, so the
/// renderer keeps its position between calls: each `render` call appends roughly `budget` bytes
/// and returns, and the caller sends them and comes back later. Families appear sorted by name,
/// series in the order they were created; series created after the scrape started may or may
/// not appear in it, like in any live exporter.
public struct ExpositionRenderer {
    public let format: ExpositionFormat
    private var order: [Int] = []
    private var familyPosition = 0
    private var seriesPosition = 0
    /// Top-K families are written in two passes: the counts, then the `_error` family.
    private var errorPass = false
    private var started = false

    public init(format: ExpositionFormat = .prometheusText) {
        self.format = format
    }

    /// True once every family has been written (and `# EOF`, in OpenMetrics).
    public private(set) var isFinished = false

    /// Appends the next slice of the exposition to `out`; stops after the series that takes `out`
    /// past `budget` bytes. Returns `isFinished`.
    @discardableResult
    public mutating func render(_ store: MetricStore, into out: inout [UInt8], budget: Int) -> Bool {
        if !started {
            order = store.families.indices.sorted { store.families[$0].name < store.families[$1].name }
            started = true
        }
        while familyPosition < order.count {
            let family = store.families[order[familyPosition]]
            let series = family.series
            if seriesPosition == 0 && !series.isEmpty {  // a family whose series all expired says nothing
                if errorPass {
                    TextFormat.appendHeader(
                        name: family.name + "_error",
                        help: "Upper bound of the overestimation of each count of \(family.name).",
                        type: "gauge", format: format, to: &out)
                } else {
                    TextFormat.appendHeader(name: family.name, help: family.help, type: family.type.exposedName,
                                            format: format, to: &out)
                }
            }
            while seriesPosition < series.count {
                appendSeries(series[seriesPosition], of: family, from: store, to: &out)
                seriesPosition += 1
                if out.count >= budget { return false }
            }
            seriesPosition = 0
            if family.type == .topK && !errorPass {
                errorPass = true
            } else {
                errorPass = false
                familyPosition += 1
            }
        }
        if format == .openMetrics { out.append(contentsOf: "# EOF\n".utf8) }
        isFinished = true
        return true
    }

    /// Renders everything at once (for tests and small stores).
    public static func renderAll(_ store: MetricStore, format: ExpositionFormat = .prometheusText) -> [UInt8] {
        var renderer = ExpositionRenderer(format: format)
        var out: [UInt8] = []
        renderer.render(store, into: &out, budget: .max)
        return out
    }

    private func appendSeries(_ id: SeriesID, of family: MetricFamily, from store: MetricStore, to out: inout [UInt8]) {
        switch family.type {
        case .counter:
            Self.appendSampleStart(family.name, suffix: "", id, store, &out)
            out.append(0x20)
            let (integer, fraction) = store.counterValue(id)
            TextFormat.appendCounter(integer: integer, fraction: fraction, to: &out)
            out.append(0x0A)
        case .gauge:
            Self.appendSampleStart(family.name, suffix: "", id, store, &out)
            out.append(0x20)
            TextFormat.appendValue(store.gaugeValue(id), to: &out)
            out.append(0x0A)
        case .distinct:
            Self.appendSampleStart(family.name, suffix: "", id, store, &out)
            out.append(0x20)
            TextFormat.appendValue(store.distinctEstimate(id), to: &out)
            out.append(0x0A)
        case .topK:
            for entry in store.topKEntries(id).entries {
                Self.appendSampleStart(family.name, suffix: errorPass ? "_error" : "", id, store, &out, openEnded: true)
                out.append(contentsOf: "key=\"".utf8)
                entry.key.withUnsafeBytes { TextFormat.appendEscapedLabelValue($0, to: &out) }
                out.append(contentsOf: "\"} ".utf8)
                TextFormat.appendDecimal(errorPass ? entry.error : entry.count, to: &out)
                out.append(0x0A)
            }
        case .histogram:
            store.withHistogram(id) { counts, sum, count in
                var cumulative: UInt64 = 0
                for (i, n) in counts.enumerated() {
                    cumulative &+= n
                    Self.appendSampleStart(family.name, suffix: "_bucket", id, store, &out, openEnded: true)
                    out.append(contentsOf: "le=\"".utf8)
                    if i < family.buckets.count {
                        TextFormat.appendValue(family.buckets[i], to: &out)
                    } else {
                        out.append(contentsOf: "+Inf".utf8)
                    }
                    out.append(contentsOf: "\"} ".utf8)
                    TextFormat.appendDecimal(cumulative, to: &out)
                    out.append(0x0A)
                }
                // OpenMetrics: the sum is a counter, never negative (a histogram of negative
                // observations is exposed there without it).
                if format != .openMetrics || sum >= 0 {
                    Self.appendSampleStart(family.name, suffix: "_sum", id, store, &out)
                    out.append(0x20)
                    TextFormat.appendValue(sum, to: &out)
                    out.append(0x0A)
                }
                Self.appendSampleStart(family.name, suffix: "_count", id, store, &out)
                out.append(0x20)
                TextFormat.appendDecimal(count, to: &out)
                out.append(0x0A)
            }
        }
    }

    /// Writes `name{labels` — closed with `}` unless `openEnded`, in which case a trailing `,` (or
    /// nothing, for a series without labels) is left for one more label.
    private static func appendSampleStart(
        _ name: String, suffix: String, _ id: SeriesID, _ store: MetricStore, _ out: inout [UInt8], openEnded: Bool = false
    ) {
        out.append(contentsOf: name.utf8)
        out.append(contentsOf: suffix.utf8)
        var first = true
        store.forEachLabel(of: id) { labelName, labelValue in
            out.append(first ? 0x7B : 0x2C)
            first = false
            out.append(contentsOf: labelName)
            out.append(contentsOf: "=\"".utf8)
            TextFormat.appendEscapedLabelValue(labelValue, to: &out)
            out.append(0x22)
        }
        if openEnded {
            out.append(first ? 0x7B : 0x2C)
        } else if !first {
            out.append(0x7D)
        }
    }
}
