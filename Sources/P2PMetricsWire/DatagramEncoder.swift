/// Why an encoder refused a sample: the same rules the daemon applies (PROTOCOL.md §1), checked at
/// the caller so that one bad call cannot poison a whole batch.
public struct EncodingError: Error, Sendable, Equatable {
    public var reason: DatagramRejection
    public init(_ reason: DatagramRejection) { self.reason = reason }
}

/// Builds one datagram in the canonical encoding (PROTOCOL.md §3).
///
/// Samples are appended in call order; a series record is written the first time a (name, label
/// list) pair appears and referenced by index afterwards.
public struct DatagramEncoder: Sendable {
    /// The datagram so far (starts with the magic byte).
    public private(set) var bytes: [UInt8]
    /// The size the datagram may not exceed.
    public let maxSize: Int
    private var seriesIndex: [[UInt8]: Int] = [:]
    private var scratch: [UInt8] = []
    /// The series of the last sample appended since `reset`, and its metric type.
    private var previousSeries: (index: Int, type: MetricType)?

    public init(maxSize: Int = WireFormat.defaultBatchSize) {
        self.maxSize = min(max(maxSize, 64), WireFormat.maxDatagramSize)
        bytes = [WireFormat.magic]
        bytes.reserveCapacity(self.maxSize)
    }

    /// True when no record has been appended since the last reset.
    public var isEmpty: Bool { bytes.count == 1 }

    /// Starts a new datagram.
    public mutating func reset() {
        bytes.removeAll(keepingCapacity: true)
        bytes.append(WireFormat.magic)
        seriesIndex.removeAll(keepingCapacity: true)
        previousSeries = nil
    }

    /// Appends a drop report; must come before any other record to be canonical.
    public mutating func appendDropped(_ count: UInt64) {
        bytes.append(WireFormat.Tag.dropped)
        Varint.append(count, to: &bytes)
    }

    /// Appends a drop count of any size as `dropped` records of at most 2^64 − 1 each (none for 0).
    public mutating func appendDropped(_ count: UInt128) {
        var rest = count
        while rest > 0 {
            let part = UInt64(min(rest, UInt128(UInt64.max)))
            appendDropped(part)
            rest -= UInt128(part)
        }
    }

    /// Appends one sample. Returns `false`, leaving the datagram unchanged, when it does not fit;
    /// throws when the sample breaks a protocol rule.
    @discardableResult
    public mutating func append(
        _ kind: SampleKind, name: String, labels: some Collection<(String, String)> = [(String, String)](),
        value: SampleValue
    ) throws(EncodingError) -> Bool {
        if case .key = value { throw EncodingError(.unknownRecord) }  // keys go through appendDistinct
        if kind.takesKey { throw EncodingError(.unknownRecord) }
        if let reason = DatagramDecoder.check(value, for: kind) { throw EncodingError(reason) }
        try encodeSeriesKey(name: name, labels: labels, histogram: kind == .histogramObserve)
        return appendSample(kind, value: value, key: [UInt8]())
    }

    /// Appends one more sample to the series of the previous sample (same name and labels), without
    /// encoding or hashing them again: what a multi-value StatsD line needs. Returns `false`,
    /// leaving the datagram unchanged, when it does not fit, or when nothing was appended since the
    /// last reset or the previous sample was of another metric type (then use `append`).
    @discardableResult
    public mutating func appendToPreviousSeries(_ kind: SampleKind, value: SampleValue) throws(EncodingError) -> Bool {
        if case .key = value { throw EncodingError(.unknownRecord) }
        if kind.takesKey { throw EncodingError(.unknownRecord) }
        if let reason = DatagramDecoder.check(value, for: kind) { throw EncodingError(reason) }
        guard let previous = previousSeries, previous.type == kind.metricType else { return false }
        return appendRecord(kind, series: previous.index, value: value, key: [UInt8](), rollingBackTo: bytes.count)
    }

    /// Appends one more distinct-count sample to the series of the previous sample, like
    /// `appendToPreviousSeries`: `false` when the previous sample was not a distinct count's.
    @discardableResult
    public mutating func appendDistinctToPreviousSeries(key: some Collection<UInt8>) throws(EncodingError) -> Bool {
        guard key.count <= WireFormat.maxKeyLength else { throw EncodingError(.tooLong) }
        guard let previous = previousSeries, previous.type == .distinct else { return false }
        return appendRecord(.distinctAdd, series: previous.index, value: .key(0..<0), key: key, rollingBackTo: bytes.count)
    }

    /// Appends a distinct-count sample: `key` (at most 1,024 bytes, any bytes) joins the set.
    /// Returns `false`, leaving the datagram unchanged, when it does not fit.
    @discardableResult
    public mutating func appendDistinct(
        name: String, labels: some Collection<(String, String)> = [(String, String)](), key: some Collection<UInt8>
    ) throws(EncodingError) -> Bool {
        guard key.count <= WireFormat.maxKeyLength else { throw EncodingError(.tooLong) }
        try encodeSeriesKey(name: name, labels: labels, histogram: false)
        return appendSample(.distinctAdd, value: .key(0..<0), key: key)
    }

    /// Appends a top-K sample: one occurrence of `key` (1–128 bytes of UTF-8). Returns `false`,
    /// leaving the datagram unchanged, when it does not fit.
    @discardableResult
    public mutating func appendTopK(
        name: String, labels: some Collection<(String, String)> = [(String, String)](), key: String
    ) throws(EncodingError) -> Bool {
        guard !key.utf8.isEmpty, key.utf8.count <= WireFormat.maxTopKKeyLength else { throw EncodingError(.tooLong) }
        if labels.contains(where: { $0.0 == "key" }) { throw EncodingError(.reservedLabel) }
        try encodeSeriesKey(name: name, labels: labels, histogram: false)
        return appendSample(.topKAdd, value: .key(0..<0), key: key.utf8)
    }

    /// Appends the sample whose series key is in `scratch`.
    private mutating func appendSample(_ kind: SampleKind, value: SampleValue, key: some Collection<UInt8>) -> Bool {
        let existing = seriesIndex[scratch]
        let index = existing ?? seriesIndex.count
        guard existing != nil || seriesIndex.count < WireFormat.maxSeriesPerDatagram else { return false }

        let mark = bytes.count
        if existing == nil {
            bytes.append(WireFormat.Tag.series)
            bytes.append(contentsOf: scratch)
        }
        guard appendRecord(kind, series: index, value: value, key: key, rollingBackTo: mark) else { return false }
        if existing == nil { seriesIndex[scratch] = index }
        return true
    }

    /// Appends a sample record of series `index`; when the datagram would pass `maxSize`, removes
    /// everything from `mark` on and returns `false`.
    private mutating func appendRecord(
        _ kind: SampleKind, series index: Int, value: SampleValue, key: some Collection<UInt8>, rollingBackTo mark: Int
    ) -> Bool {
        switch value {
        case .unsigned(let u):
            bytes.append(kind.rawValue << 4 | ValueForm.unsigned.rawValue)
            Varint.append(UInt64(index), to: &bytes)
            Varint.append(u, to: &bytes)
        case .signed(let s):
            bytes.append(kind.rawValue << 4 | ValueForm.signed.rawValue)
            Varint.append(UInt64(index), to: &bytes)
            Varint.append(Varint.zigzag(s), to: &bytes)
        case .double(let d):
            bytes.append(kind.rawValue << 4 | ValueForm.float64.rawValue)
            Varint.append(UInt64(index), to: &bytes)
            let bits = d.isNaN ? Double.nan.bitPattern : d.bitPattern  // the canonical NaN (PROTOCOL.md §3)
            withUnsafeBytes(of: bits.littleEndian) { bytes.append(contentsOf: $0) }
        case .key:
            bytes.append(kind.rawValue << 4 | ValueForm.bytes.rawValue)
            Varint.append(UInt64(index), to: &bytes)
            Varint.append(UInt64(key.count), to: &bytes)
            bytes.append(contentsOf: key)
        }
        guard bytes.count <= maxSize else {
            bytes.removeSubrange(mark...)
            return false
        }
        previousSeries = (index, kind.metricType)
        return true
    }

    /// Writes name and labels of a series record (without its tag) into `scratch`, validating them.
    private mutating func encodeSeriesKey(
        name: String, labels: some Collection<(String, String)>, histogram: Bool
    ) throws(EncodingError) {
        scratch.removeAll(keepingCapacity: true)
        var name = name
        if let reason = name.withUTF8({ n -> DatagramRejection? in
            guard n.count <= WireFormat.maxMetricNameLength else { return .tooLong }
            if let reason = Names.validateMetricName(UnsafeRawBufferPointer(n)) { return reason }
            Varint.append(UInt64(n.count), to: &scratch)
            scratch.append(contentsOf: n)
            return nil
        }) { throw EncodingError(reason) }
        guard labels.count <= WireFormat.maxLabelsPerSeries else { throw EncodingError(.tooManyLabels) }
        Varint.append(UInt64(labels.count), to: &scratch)
        var index = labels.startIndex
        while index != labels.endIndex {
            let label = labels[index]
            var earlier = labels.startIndex
            while earlier != index {
                if labels[earlier].0 == label.0 { throw EncodingError(.duplicateLabel) }
                labels.formIndex(after: &earlier)
            }
            if histogram && label.0 == "le" { throw EncodingError(.reservedLabel) }
            var (labelName, labelValue) = label
            if let reason = labelName.withUTF8({ n -> DatagramRejection? in
                guard n.count <= WireFormat.maxLabelNameLength else { return .tooLong }
                if let reason = Names.validateLabelName(UnsafeRawBufferPointer(n)) { return reason }
                Varint.append(UInt64(n.count), to: &scratch)
                scratch.append(contentsOf: n)
                return nil
            }) { throw EncodingError(reason) }
            if let reason = labelValue.withUTF8({ v -> DatagramRejection? in
                guard v.count <= WireFormat.maxLabelValueLength else { return .tooLong }
                Varint.append(UInt64(v.count), to: &scratch)
                scratch.append(contentsOf: v)
                return nil
            }) { throw EncodingError(reason) }
            labels.formIndex(after: &index)
        }
    }
}
