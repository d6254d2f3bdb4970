import P2PMetricsWire

extension MetricStore {
    /// Every counter's total, as binary protocol datagrams (at most `maxDatagramSize` bytes each):
    /// one `counter add` of its exact integer part, plus one of its fractional adds if any.
    ///
    /// A snapshot in the wire format restores through the same validation as any datagram, so a
    /// damaged file can never put anything into the store that a client could not have sent.
    /// Only counters are kept: gauges describe the present (and process-scoped ones would outlive
    /// their processes), histograms are left out for now.
    public func counterSnapshot() -> [[UInt8]] {
        var datagrams: [[UInt8]] = []
        var encoder = DatagramEncoder(maxSize: WireFormat.maxDatagramSize)
        func add(_ name: String, _ labels: [(String, String)], _ value: SampleValue) {
            if (try? encoder.append(.counterAdd, name: name, labels: labels, value: value)) == true { return }
            datagrams.append(encoder.bytes)
            encoder.reset()
            _ = try? encoder.append(.counterAdd, name: name, labels: labels, value: value)
        }
        for family in families where family.type == .counter {
            for id in family.series {
                var labels: [(String, String)] = []
                forEachLabel(of: id) { name, value in
                    labels.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
                }
                let (integer, fraction) = counterValue(id)
                add(family.name, labels, .unsigned(UInt64(truncatingIfNeeded: integer)))
                let wraps = UInt64(integer >> 64)
                if wraps <= 1_024 {
                    for _ in 0..<wraps {  // 2^64 each, as (2^64 − 1) + 1: restored exactly, wrap for wrap
                        add(family.name, labels, .unsigned(.max))
                        add(family.name, labels, .unsigned(1))
                    }
                } else {
                    add(family.name, labels, .double(Double(wraps) * 0x1p64))
                }
                if fraction != 0 { add(family.name, labels, .double(fraction)) }
            }
        }
        if !encoder.isEmpty { datagrams.append(encoder.bytes) }
        return datagrams
    }

    /// Applies one snapshot datagram like `ingest`, but leaves the ingest statistics alone: restored
    /// totals were counted by the process that wrote them.
    @discardableResult
    public mutating func restore(_ datagram: UnsafeRawBufferPointer) -> DatagramRejection? {
        let saved = statistics
        let rejection = ingest(datagram)
        restoreStatistics(saved)
        return rejection
    }
}
