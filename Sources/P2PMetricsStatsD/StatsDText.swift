import P2PMetricsWire

/// Why one text line was refused. The raw value is the `reason` label of
/// `p2pmetricsd_text_lines_rejected_total`. Other lines of the same datagram still apply.
public enum TextLineRejection: String, Error, Sendable, CaseIterable {
    /// Not `name:value|type…`: a missing `:` or `|`, an empty name, an unknown `|` section.
    case malformed
    /// A value that is not a finite decimal number, or one whose scaled value (a counter's
    /// value / rate, a histogram's value × weight) is out of the finite range.
    case badValue = "bad_value"
    /// A type other than `c`, `g`, `ms`, `h`, `d`, `s`.
    case badType = "bad_type"
    /// A sample rate outside (0, 1], or below 0.01 for timers and histograms.
    case badSampleRate = "bad_sample_rate"
    case negativeCounter = "negative_counter"
    /// A name that is empty or reserved, or longer than the protocol allows, once sanitized.
    case badName = "bad_name"
    /// A tag whose name cannot be a label, or whose value is too long or not UTF-8.
    case badTag = "bad_tag"
    /// DogStatsD events (`_e{…}`) and service checks (`_sc|…`): not metrics.
    case unsupportedEvent = "unsupported_event"
    /// More than `maxTagsPerLine` tags, or more than 16 distinct labels once sanitized.
    case tooManyTags = "too_many_tags"
    /// More than `maxValuesPerLine` values in one multi-value line (`name:v1:v2:…`).
    case tooManyValues = "too_many_values"
    /// The datagram's earlier lines used up its `maxValuesPerDatagram` values.
    case datagramValueLimit = "datagram_value_limit"
    /// A set (`|s`) member longer than the protocol's 1,024 bytes.
    case keyTooLong = "key_too_long"
}

/// One parsed StatsD / DogStatsD line, with byte ranges into its datagram.
struct TextLine {
    var name: Range<Int>
    var values: Range<Int>
    var type: Range<Int>
    var sampleRate = 1.0
    var tags: Range<Int>?
}

/// Translates text StatsD and DogStatsD datagrams into binary protocol samples.
///
/// Accepted per line (newline-separated): `name:value[:value…]|type[|@rate][|#tag:v,…][|c:id][|T ts]`
/// with types `c` (counter; scaled by 1/rate), `g` (gauge set; a leading `+`/`-` makes it a
/// gauge add), `ms` (histogram observation in seconds: value / 1000), `h` and `d` (histogram
/// observation as is), and `s` (distinct count of the values). A sampled histogram line is one
/// observation of weight round(1/rate) (1–100), applied in O(1), never replayed.
/// Names are sanitized as statsd_exporter does (characters outside `[A-Za-z0-9_:.]` become `_`,
/// a leading digit gets a `_` in front) and then mapped like binary names (dots to underscores).
/// Tags become labels with the same sanitizing; a tag without a value is ignored. Container ids
/// (`|c:`) and client timestamps (`|T`) are accepted and ignored: the sidecar aggregates, it does
/// not back-date.
public struct StatsDTranscoder: Sendable {
    /// Values one line may carry (`name:v1:v2:…|type`); a line with more is refused whole.
    public static let maxValuesPerLine = 256
    /// Values all lines of one datagram may carry together; later lines are refused.
    public static let maxValuesPerDatagram = 16_384
    /// Tags (`#a:1,b:2,…`) one line may carry, before sanitizing and de-duplication.
    public static let maxTagsPerLine = 64

    public init() {}

    /// Where transcoded samples go: the binary datagram being built, and the weight of each of its
    /// samples in order (1, except for sampled histogram observations).
    public struct Output {
        public var encoder: DatagramEncoder
        public var weights: [UInt32] = []

        public init(encoder: DatagramEncoder) { self.encoder = encoder }

        /// Starts a new datagram.
        public mutating func reset() {
            encoder.reset()
            weights.removeAll(keepingCapacity: true)
        }
    }

    /// Parses every line of `bytes`; appends the samples of each valid line to `output`, calling
    /// `flush` whenever its datagram is full (flush applies and resets it), and `reject` once per
    /// refused line. Returns the number of non-empty lines. Work is linear in the size of `bytes`:
    /// the values of a line share one encoded series.
    public func transcode(
        _ bytes: UnsafeRawBufferPointer, into output: inout Output,
        flush: (inout Output) -> Void, reject: (TextLineRejection) -> Void
    ) -> Int {
        var lines = 0
        var start = 0
        var valuesLeft = Self.maxValuesPerDatagram
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            var lineEnd = end
            if lineEnd > start && bytes[lineEnd - 1] == 0x0D { lineEnd -= 1 }
            if lineEnd > start {
                lines += 1
                if let reason = transcodeLine(bytes, start..<lineEnd, into: &output, valuesLeft: &valuesLeft, flush: flush) {
                    reject(reason)
                }
            }
            start = end + 1
        }
        return lines
    }

    private func transcodeLine(
        _ bytes: UnsafeRawBufferPointer, _ line: Range<Int>, into output: inout Output, valuesLeft: inout Int,
        flush: (inout Output) -> Void
    ) -> TextLineRejection? {
        if bytes[line.lowerBound] == 0x5F, line.count >= 3,
           bytes[line.lowerBound + 1] == 0x65 && bytes[line.lowerBound + 2] == 0x7B
            || bytes[line.lowerBound + 1] == 0x73 && bytes[line.lowerBound + 2] == 0x63 {
            return .unsupportedEvent  // "_e{" event or "_sc" service check
        }
        let parsed: TextLine
        switch Self.parse(bytes, line) {
        case .failure(let reason): return reason
        case .success(let p): parsed = p
        }
        let valueCount = parsed.values.reduce(1) { bytes[$1] == 0x3A ? $0 + 1 : $0 }
        guard valueCount <= Self.maxValuesPerLine else { return .tooManyValues }
        guard valueCount <= valuesLeft else { return .datagramValueLimit }
        valuesLeft -= valueCount
        guard let name = Self.sanitizedName(bytes[parsed.name]) else { return .badName }
        let type = String(decoding: bytes[parsed.type], as: UTF8.self)
        let labels: [(String, String)]
        switch Self.labels(bytes, parsed.tags, histogram: type == "ms" || type == "h" || type == "d") {
        case .failure(let reason): return reason
        case .success(let l): labels = l
        }

        // Decide every sample of the line before emitting any, so a bad value refuses the whole line.
        var samples: [(SampleKind, SampleValue)] = []
        var keys: [[UInt8]] = []
        var weight: UInt32 = 1
        for valueRange in Self.split(bytes, parsed.values, on: 0x3A) {
            if type == "s" {
                guard valueRange.count <= WireFormat.maxKeyLength else { return .keyTooLong }
                keys.append(Array(bytes[valueRange]))
                continue
            }
            let text = String(decoding: bytes[valueRange], as: UTF8.self)
            guard let value = Self.number(text) else { return .badValue }
            switch type {
            case "c":
                guard value >= 0 else { return .negativeCounter }
                let scaled = value / parsed.sampleRate
                guard scaled.isFinite else { return .badValue }
                samples.append((.counterAdd, SampleValue(canonical: scaled)))
            case "g":
                let relative = text.hasPrefix("+") || text.hasPrefix("-")
                samples.append((relative ? .gaugeAdd : .gaugeSet, SampleValue(canonical: value)))
            case "ms", "h", "d":
                guard parsed.sampleRate >= 0.01 else { return .badSampleRate }
                weight = Self.weight(sampleRate: parsed.sampleRate)
                let observed = type == "ms" ? value / 1000 : value
                guard (observed * Double(weight)).isFinite else { return .badValue }
                samples.append((.histogramObserve, SampleValue(canonical: observed)))
            default:
                return .badType
            }
        }
        // Names were sanitized and tags checked above, so an encoding failure here can only be a
        // label set the protocol refuses (e.g. `le` on a histogram): the tags' fault.
        // The values of one line share a series: after the first, it is not encoded again, so a
        // line's work is linear in its size.
        for (i, key) in keys.enumerated() where !Self.emit(into: &output, weight: 1, flush: flush, {
            if i > 0, try $0.appendDistinctToPreviousSeries(key: key) { return true }
            return try $0.appendDistinct(name: name, labels: labels, key: key)
        }) { return .badTag }
        for (i, (kind, value)) in samples.enumerated() where !Self.emit(into: &output, weight: weight, flush: flush, {
            if i > 0, try $0.appendToPreviousSeries(kind, value: value) { return true }
            return try $0.append(kind, name: name, labels: labels, value: value)
        }) { return .badTag }
        return nil
    }

    /// The weight of one observation sampled at `rate` (0.01–1): round(1/rate), 1–100. Integral,
    /// so histogram counts stay exact integers.
    public static func weight(sampleRate rate: Double) -> UInt32 {
        UInt32(min(max((1 / rate).rounded(), 1), 100))
    }

    /// Appends one sample with its weight, flushing a full datagram once; false when the sample
    /// cannot be encoded.
    private static func emit(
        into output: inout Output, weight: UInt32, flush: (inout Output) -> Void,
        _ append: (inout DatagramEncoder) throws -> Bool
    ) -> Bool {
        do {
            if try append(&output.encoder) {
                output.weights.append(weight)
                return true
            }
            flush(&output)
            guard try append(&output.encoder) else { return false }
            output.weights.append(weight)
            return true
        } catch {
            return false
        }
    }

    static func parse(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>) -> Result<TextLine, TextLineRejection> {
        guard let colon = line.first(where: { bytes[$0] == 0x3A }), colon > line.lowerBound else { return .failure(.malformed) }
        let sections = split(bytes, (colon + 1)..<line.upperBound, on: 0x7C)
        guard sections.count >= 2, !sections[0].isEmpty, !sections[1].isEmpty else { return .failure(.malformed) }
        var parsed = TextLine(name: line.lowerBound..<colon, values: sections[0], type: sections[1])
        for section in sections.dropFirst(2) {
            guard let first = section.first.map({ bytes[$0] }) else { return .failure(.malformed) }
            let rest = (section.lowerBound + 1)..<section.upperBound
            switch first {
            case 0x40:  // @rate
                guard let rate = number(String(decoding: bytes[rest], as: UTF8.self)), rate > 0, rate <= 1 else {
                    return .failure(.badSampleRate)
                }
                parsed.sampleRate = rate
            case 0x23:  // #tags
                parsed.tags = rest
            case 0x63 where section.count >= 2 && bytes[section.lowerBound + 1] == 0x3A:  // c:container-id
                break
            case 0x54:  // T<unix seconds>
                guard !rest.isEmpty, rest.allSatisfy({ bytes[$0] >= 0x30 && bytes[$0] <= 0x39 }) else {
                    return .failure(.malformed)
                }
            default:
                return .failure(.malformed)
            }
        }
        return .success(parsed)
    }

    static func split(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, on separator: UInt8) -> [Range<Int>] {
        var parts: [Range<Int>] = []
        var start = range.lowerBound
        for i in range where bytes[i] == separator {
            parts.append(start..<i)
            start = i + 1
        }
        parts.append(start..<range.upperBound)
        return parts
    }

    /// A finite decimal number (optionally signed, with fraction and exponent); nothing else.
    static func number(_ text: String) -> Double? {
        guard !text.isEmpty, text.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E || $0 == 0x2B || $0 == 0x2D || $0 == 0x65 || $0 == 0x45 }),
              let value = Double(text), value.isFinite else { return nil }
        return value
    }

    /// statsd_exporter's escaping: invalid characters become `_`, a leading digit gets a `_`.
    static func sanitizedName(_ raw: Slice<UnsafeRawBufferPointer>) -> String? {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count + 1)
        for b in raw {
            let ok = (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x5F || b == 0x3A || b == 0x2E
            out.append(ok ? b : 0x5F)
        }
        if let first = out.first, first >= 0x30 && first <= 0x39 { out.insert(0x5F, at: 0) }
        guard !out.isEmpty, out.count <= WireFormat.maxMetricNameLength,
              out.withUnsafeBytes({ Names.validateMetricName($0) }) == nil else { return nil }
        return String(decoding: out, as: UTF8.self)
    }

    /// As the Swift client sanitizes dimensions: invalid characters become `_`, a leading digit gets
    /// a `_`, leading underscores are reduced to one (`__x` → `_x`), a histogram's `le` becomes `_le`.
    static func sanitizedLabelName(_ raw: Slice<UnsafeRawBufferPointer>, histogram: Bool) -> String? {
        var out: [UInt8] = raw.map { b in
            (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x5F ? b : 0x5F
        }
        if let first = out.first, first >= 0x30 && first <= 0x39 { out.insert(0x5F, at: 0) }
        if out.starts(with: [0x5F, 0x5F]) { out.removeFirst(out.prefix { $0 == 0x5F }.count - 1) }
        if histogram && out == [0x6C, 0x65] { out.insert(0x5F, at: 0) }
        guard !out.isEmpty, out.count <= WireFormat.maxLabelNameLength,
              out.withUnsafeBytes({ Names.validateLabelName($0) }) == nil else { return nil }
        return String(decoding: out, as: UTF8.self)
    }

    static func labels(_ bytes: UnsafeRawBufferPointer, _ tags: Range<Int>?, histogram: Bool)
        -> Result<[(String, String)], TextLineRejection> {
        guard let tags, !tags.isEmpty else { return .success([]) }
        let tagCount = tags.reduce(1) { bytes[$1] == 0x2C ? $0 + 1 : $0 }
        guard tagCount <= maxTagsPerLine else { return .failure(.tooManyTags) }
        var labels: [(String, String)] = []
        for tag in split(bytes, tags, on: 0x2C) {
            guard let colon = tag.first(where: { bytes[$0] == 0x3A }) else { continue }  // a bare tag: no label
            guard let name = sanitizedLabelName(bytes[tag.lowerBound..<colon], histogram: histogram) else {
                return .failure(.badTag)
            }
            let valueBytes = UnsafeRawBufferPointer(rebasing: bytes[(colon + 1)..<tag.upperBound])
            guard valueBytes.count <= WireFormat.maxLabelValueLength, Names.isValidUTF8(valueBytes) else {
                return .failure(.badTag)
            }
            let value = String(decoding: valueBytes, as: UTF8.self)
            labels.removeAll { $0.0 == name }  // the last of repeated tags wins
            labels.append((name, value))
        }
        guard labels.count <= WireFormat.maxLabelsPerSeries else { return .failure(.tooManyTags) }
        return .success(labels)
    }
}
