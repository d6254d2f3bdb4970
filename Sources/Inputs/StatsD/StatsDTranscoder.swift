#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
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
    var name: Range<Int> = 0..<0
    var values: Range<Int> = 0..<0
    /// Values in `values` (`:`-separated).
    var valueCount = 1
    var type: TextLineType = .unknown
    var sampleRate = 1.0
    /// The last `|#` section, without its `#`; empty when there is none.
    var tags: Range<Int> = 0..<0
}

/// The non-empty lines of a text datagram, without their `\n` or `\r\n`.
struct TextLines: IteratorProtocol {
    private let bytes: UnsafeRawBufferPointer
    private var start = 0
    /// Lines returned so far.
    private(set) var count = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    @inline(__always)
    mutating func next() -> Range<Int>? {
        while start < bytes.count {
            let end = StatsDTranscoder.firstIndex(of: 0x0A, in: bytes, from: start, to: bytes.count)
            var lineEnd = end
            if lineEnd > start && bytes[lineEnd - 1] == 0x0D { lineEnd -= 1 }
            defer { start = end + 1 }
            if lineEnd > start {
                count += 1
                return start..<lineEnd
            }
        }
        return nil
    }
}

/// The type section of a line, as the value rules need it.
enum TextLineType {
    case counter, gauge, timer, histogram, set, unknown

    init(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) {
        switch range.count {
        case 1:
            switch bytes[range.lowerBound] {
            case 0x63: self = .counter  // c
            case 0x67: self = .gauge  // g
            case 0x68, 0x64: self = .histogram  // h, d
            case 0x73: self = .set  // s
            default: self = .unknown
            }
        case 2 where bytes[range.lowerBound] == 0x6D && bytes[range.lowerBound + 1] == 0x73:
            self = .timer  // ms
        default:
            self = .unknown
        }
    }

    /// Timers and histograms: their tags' `le` becomes `_le`.
    var isHistogram: Bool { self == .timer || self == .histogram }
}

/// One value of a line, decided: the sample it becomes and its weight.
struct DecidedValue {
    var kind: SampleKind
    var value: SampleValue
    var weight: UInt32
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
///
/// `StatsDInput` resolves the series of most lines through the store's input cache and only
/// sends lines it has not seen (or cannot cache) through the encoding path here.
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
    public struct Output: Sendable {
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
        var valuesLeft = Self.maxValuesPerDatagram
        var lines = TextLines(bytes)
        while let line = lines.next() {
            var parsed = TextLine()
            if let reason = Self.head(bytes, line, valuesLeft: &valuesLeft, into: &parsed)
                ?? transcodeLine(bytes, parsed, into: &output, flush: flush) {
                reject(reason)
            }
        }
        return lines.count
    }

    /// What every line goes through first: events refused, the line parsed, its values counted
    /// against the line's and the datagram's caps (`valuesLeft` is charged when they pass).
    @inline(__always)
    static func head(
        _ bytes: UnsafeRawBufferPointer, _ line: Range<Int>, valuesLeft: inout Int, into parsed: inout TextLine
    ) -> TextLineRejection? {
        if bytes[line.lowerBound] == 0x5F, line.count >= 3,
           bytes[line.lowerBound + 1] == 0x65 && bytes[line.lowerBound + 2] == 0x7B
            || bytes[line.lowerBound + 1] == 0x73 && bytes[line.lowerBound + 2] == 0x63 {
            return .unsupportedEvent  // "_e{" event or "_sc" service check
        }
        if let reason = parse(bytes, line, into: &parsed) { return reason }
        guard parsed.valueCount <= maxValuesPerLine else { return .tooManyValues }
        guard parsed.valueCount <= valuesLeft else { return .datagramValueLimit }
        valuesLeft -= parsed.valueCount
        return nil
    }

    /// The encoding path of one line that passed `head`: name and tags sanitized into a series,
    /// every value decided, then the samples appended to `output`.
    func transcodeLine(
        _ bytes: UnsafeRawBufferPointer, _ parsed: TextLine, into output: inout Output, flush: (inout Output) -> Void
    ) -> TextLineRejection? {
        guard let name = Self.sanitizedName(bytes[parsed.name]) else { return .badName }
        let type = parsed.type
        let labels: [(String, String)]
        switch Self.labels(bytes, parsed.tags, histogram: type.isHistogram) {
        case .failure(let reason): return reason
        case .success(let l): labels = l
        }

        // Decide every sample of the line before emitting any, so a bad value refuses the whole line.
        var samples: [DecidedValue] = []
        var keys: [Range<Int>] = []
        if let reason = Self.decideValues(bytes, parsed, value: { samples.append($0) }, key: { keys.append($0) }) {
            return reason
        }
        // Names were sanitized and tags checked above, so an encoding failure here can only be a
        // label set the protocol refuses (e.g. `le` on a histogram): the tags' fault.
        // The values of one line share a series: after the first, it is not encoded again, so a
        // line's work is linear in its size.
        for (i, range) in keys.enumerated() where !Self.emit(into: &output, weight: 1, flush: flush, {
            let key = bytes[range]
            if i > 0, try $0.appendDistinctToPreviousSeries(key: key) { return true }
            return try $0.appendDistinct(name: name, labels: labels, key: key)
        }) { return .badTag }
        for (i, sample) in samples.enumerated() where !Self.emit(into: &output, weight: sample.weight, flush: flush, {
            if i > 0, try $0.appendToPreviousSeries(sample.kind, value: sample.value) { return true }
            return try $0.append(sample.kind, name: name, labels: labels, value: sample.value)
        }) { return .badTag }
        return nil
    }

    /// Decides each value of a line in order: `value` gets the sample of a number, `key` the byte
    /// range of a set member. Returns the reason the line is refused at the first bad value (the
    /// caller then drops what it was given for this line).
    @inline(__always)
    static func decideValues(
        _ bytes: UnsafeRawBufferPointer, _ parsed: TextLine, value: (DecidedValue) -> Void, key: (Range<Int>) -> Void
    ) -> TextLineRejection? {
        let type = parsed.type
        let end = parsed.values.upperBound
        var start = parsed.values.lowerBound
        while true {
            let stop = parsed.valueCount == 1 ? end : firstIndex(of: 0x3A, in: bytes, from: start, to: end)
            let range = start..<stop
            if type == .set {
                guard range.count <= WireFormat.maxKeyLength else { return .keyTooLong }
                key(range)
            } else {
                guard let number = number(bytes, range) else { return .badValue }
                switch type {
                case .counter:
                    guard number >= 0 else { return .negativeCounter }
                    let scaled = number / parsed.sampleRate
                    guard scaled.isFinite else { return .badValue }
                    value(DecidedValue(kind: .counterAdd, value: SampleValue(canonical: scaled), weight: 1))
                case .gauge:
                    let relative = bytes[range.lowerBound] == 0x2B || bytes[range.lowerBound] == 0x2D  // + or -
                    value(DecidedValue(kind: relative ? .gaugeAdd : .gaugeSet, value: SampleValue(canonical: number), weight: 1))
                case .timer, .histogram:
                    guard parsed.sampleRate >= 0.01 else { return .badSampleRate }
                    let weight = Self.weight(sampleRate: parsed.sampleRate)
                    let observed = type == .timer ? number / 1000 : number
                    guard (observed * Double(weight)).isFinite else { return .badValue }
                    value(DecidedValue(kind: .histogramObserve, value: SampleValue(canonical: observed), weight: weight))
                case .set, .unknown:
                    return .badType
                }
            }
            if stop == end { return nil }
            start = stop + 1
        }
    }

    /// Writes the key under which the store's input cache holds a parsed line's series into
    /// `key` (at least `maxCacheKeyLength` bytes) and returns its length: everything the series
    /// depends on — whether `le` tags are renamed (timers and histograms), the name and the tags,
    /// as sent. Nil for lines too long to be worth caching.
    @inline(__always)
    static func cacheKey(_ bytes: UnsafeRawBufferPointer, _ parsed: TextLine, into key: UnsafeMutableRawBufferPointer) -> Int? {
        let name = parsed.name.count
        let tags = parsed.tags
        guard name <= WireFormat.maxMetricNameLength, 2 + name + tags.count <= maxCacheKeyLength,
              key.count >= maxCacheKeyLength, let source = bytes.baseAddress, let target = key.baseAddress else { return nil }
        target.storeBytes(of: parsed.type.isHistogram ? 1 : 0, as: UInt8.self)
        target.storeBytes(of: UInt8(name), toByteOffset: 1, as: UInt8.self)
        copyShort(from: source + parsed.name.lowerBound, to: target + 2, count: name)
        copyShort(from: source + tags.lowerBound, to: target + 2 + name, count: tags.count)
        return 2 + name + tags.count
    }

    /// Copies a few dozen bytes word by word: cheaper than a call to memcpy for a name or a tag list.
    @inline(__always)
    private static func copyShort(from source: UnsafeRawPointer, to target: UnsafeMutableRawPointer, count: Int) {
        var i = 0
        while i + 8 <= count {
            target.storeBytes(of: source.loadUnaligned(fromByteOffset: i, as: UInt64.self), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        if count >= 8 && i < count {  // the rest, as the (overlapping) last 8 bytes
            target.storeBytes(of: source.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self), toByteOffset: count - 8, as: UInt64.self)
            return
        }
        while i < count {
            target.storeBytes(of: source.load(fromByteOffset: i, as: UInt8.self), toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }

    /// Longest cache key: a line with more name and tag bytes is not cached (it takes the encoding
    /// path every time).
    static let maxCacheKeyLength = 4_096

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

    /// Splits a line into name, values, type and its optional sections, in one pass and without
    /// allocating. Of repeated `@rate` and `#tags` sections the last wins (datadog-agent's parser).
    @inline(__always)
    static func parse(_ bytes: UnsafeRawBufferPointer, _ line: Range<Int>, into parsed: inout TextLine) -> TextLineRejection? {
        let end = line.upperBound
        let colon = firstIndex(of: 0x3A, in: bytes, from: line.lowerBound, to: end)
        guard colon < end, colon > line.lowerBound else { return .malformed }
        // values: up to the first `|`, counting their `:` separators
        // values (short: scanned inline, counting their `:` separators), then the type
        var i = colon + 1
        var valueCount = 1
        while i < end && bytes[i] != 0x7C {
            if bytes[i] == 0x3A { valueCount += 1 }
            i += 1
        }
        let values = (colon + 1)..<i
        guard i < end, !values.isEmpty else { return .malformed }
        var sectionEnd = i + 1
        while sectionEnd < end && bytes[sectionEnd] != 0x7C { sectionEnd += 1 }
        let type = (i + 1)..<sectionEnd
        guard !type.isEmpty else { return .malformed }
        parsed = TextLine(name: line.lowerBound..<colon, values: values, valueCount: valueCount, type: TextLineType(bytes, type),
                          tags: values.lowerBound..<values.lowerBound)
        while sectionEnd < end {
            let section = (sectionEnd + 1)..<firstIndex(of: 0x7C, in: bytes, from: sectionEnd + 1, to: end)
            sectionEnd = section.upperBound
            guard !section.isEmpty else { return .malformed }
            let rest = (section.lowerBound + 1)..<section.upperBound
            switch bytes[section.lowerBound] {
            case 0x40:  // @rate
                guard let rate = number(bytes, rest), rate > 0, rate <= 1 else { return .badSampleRate }
                parsed.sampleRate = rate
            case 0x23:  // #tags
                parsed.tags = rest
            case 0x63 where section.count >= 2 && bytes[section.lowerBound + 1] == 0x3A:  // c:container-id
                break
            case 0x54:  // T<unix seconds>
                guard !rest.isEmpty, rest.allSatisfy({ bytes[$0] >= 0x30 && bytes[$0] <= 0x39 }) else {
                    return .malformed
                }
            default:
                return .malformed
            }
        }
        return nil
    }

    /// The index of the first `byte` in `bytes[start..<end]`, or `end` (libc's vectorized memchr).
    @inline(__always)
    static func firstIndex(of byte: UInt8, in bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Int {
        guard start < end, let base = bytes.baseAddress, let hit = memchr(base + start, Int32(byte), end - start) else { return end }
        return base.distance(to: UnsafeRawPointer(hit))
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
    ///
    /// Exactly `Double(String)` of the same bytes: numbers of at most 19 significant digits whose
    /// digits make an integer up to 2^53 and whose decimal exponent is within ±22 are computed
    /// with one correctly rounded multiplication or division of two exact doubles (Clinger's fast
    /// path, what strtod does for them too), without making a string; the rest go to `Double(_:)`.
    static func number(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Double? {
        guard !range.isEmpty else { return nil }
        var i = range.lowerBound
        let end = range.upperBound
        let negative = bytes[i] == 0x2D
        if negative || bytes[i] == 0x2B { i += 1 }
        var mantissa: UInt64 = 0
        var digits = 0  // significant digits in `mantissa`
        var exponent = 0
        var sawDigit = false
        var inFraction = false
        while i < end {
            let b = bytes[i]
            if b >= 0x30 && b <= 0x39 {
                sawDigit = true
                if mantissa != 0 || b != 0x30 {
                    guard digits < 19 else { return slowNumber(bytes, range) }
                    mantissa = mantissa &* 10 &+ UInt64(b &- 0x30)
                    digits += 1
                }
                if inFraction { exponent -= 1 }
            } else if b == 0x2E && !inFraction {
                inFraction = true
            } else {
                break
            }
            i += 1
        }
        guard sawDigit else { return slowNumber(bytes, range) }
        if i < end {
            guard bytes[i] == 0x65 || bytes[i] == 0x45 else { return slowNumber(bytes, range) }
            i += 1
            var negativeExponent = false
            if i < end && (bytes[i] == 0x2D || bytes[i] == 0x2B) {
                negativeExponent = bytes[i] == 0x2D
                i += 1
            }
            var written = 0
            var explicit = 0
            while i < end, bytes[i] >= 0x30 && bytes[i] <= 0x39, written < 4 {
                explicit = explicit * 10 + Int(bytes[i] &- 0x30)
                written += 1
                i += 1
            }
            guard written > 0, i == end else { return slowNumber(bytes, range) }
            exponent += negativeExponent ? -explicit : explicit
        }
        let magnitude: Double
        if mantissa == 0 {
            magnitude = 0
        } else {
            guard mantissa <= 1 << 53, exponent >= -22, exponent <= 22 else { return slowNumber(bytes, range) }
            if exponent == 0 {
                magnitude = Double(mantissa)
            } else {
                magnitude = exponent > 0 ? Double(mantissa) * exactPowersOfTen[exponent] : Double(mantissa) / exactPowersOfTen[-exponent]
            }
        }
        return negative ? -magnitude : magnitude
    }

    /// 10^0 … 10^22: every one exactly representable as a double.
    private static let exactPowersOfTen: [Double] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ]

    /// `number` for what its fast path leaves: the characters allowed, then `Double(String)`.
    static func slowNumber(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Double? {
        let slice = bytes[range]
        guard !slice.isEmpty, slice.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2E || $0 == 0x2B || $0 == 0x2D || $0 == 0x65 || $0 == 0x45 }),
              let value = Double(String(decoding: slice, as: UTF8.self)), value.isFinite else { return nil }
        return value
    }

    /// statsd_exporter's escaping: invalid characters become `_`, a leading digit gets a `_`.
    public static func sanitizedName(_ raw: Slice<UnsafeRawBufferPointer>) -> String? {
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
    public static func sanitizedLabelName(_ raw: Slice<UnsafeRawBufferPointer>, histogram: Bool) -> String? {
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

    static func labels(_ bytes: UnsafeRawBufferPointer, _ tags: Range<Int>, histogram: Bool)
        -> Result<[(String, String)], TextLineRejection> {
        guard !tags.isEmpty else { return .success([]) }
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
