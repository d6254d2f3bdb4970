import P2PMetricsWire

extension MetricType {
    /// The word used on `# TYPE` lines: sketches are exposed as gauges.
    var exposedName: String {
        switch self {
        case .counter: return "counter"
        case .gauge, .distinct, .topK: return "gauge"
        case .histogram: return "histogram"
        }
    }
}
