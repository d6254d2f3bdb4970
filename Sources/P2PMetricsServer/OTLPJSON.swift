import FoundationEssentials
import P2PMetricsInputOTLP
import P2PMetricsWire

/// The OTLP/JSON encoding of an ExportMetricsServiceRequest (lowerCamelCase keys, 64-bit integers
/// as decimal strings or numbers, enums as integers), re-encoded as the protobuf the OTLP decoder
/// reads: one decoder, one set of limits and mappings for both encodings. Only the fields the
/// decoder maps are carried over; the rest is ignored.
enum OTLPJSON {
    /// Deepest nesting of arrays and objects accepted (the schema needs 10): checked before parsing,
    /// so a deeply nested body costs a scan, never the parser's recursion.
    static let maxDepth = 32

    static func protobuf(fromJSON body: [UInt8]) -> Result<[UInt8], OTLPDecodeError> {
        guard nestingDepth(body) <= maxDepth else { return .failure(OTLPDecodeError("JSON nested deeper than \(maxDepth)")) }
        do {
            let request = try JSONDecoder().decode(Request.self, from: Data(body))
            var out: [UInt8] = []
            for resourceMetrics in request.resourceMetrics ?? [] { out.field(1, resourceMetrics.encoded) }
            return .success(out)
        } catch {
            return .failure(OTLPDecodeError("undecodable JSON ExportMetricsServiceRequest"))
        }
    }

    /// Depth of nesting of `[`/`{` outside strings.
    static func nestingDepth(_ body: [UInt8]) -> Int {
        var depth = 0, deepest = 0, inString = false, escaped = false
        for byte in body {
            if inString {
                if escaped { escaped = false } else if byte == 0x5C { escaped = true } else if byte == 0x22 { inString = false }
                continue
            }
            switch byte {
            case 0x22: inString = true
            case 0x5B, 0x7B: depth += 1; deepest = max(deepest, depth)
            case 0x5D, 0x7D: depth -= 1
            default: break
            }
        }
        return deepest
    }

    struct Request: Decodable { var resourceMetrics: [ResourceMetrics]? }

    struct ResourceMetrics: Decodable {
        var resource: Resource?
        var scopeMetrics: [ScopeMetrics]?
        var encoded: [UInt8] {
            var out: [UInt8] = []
            if let resource { out.field(1, resource.attributes.encoded(field: 1)) }
            for scope in scopeMetrics ?? [] { out.field(2, scope.encoded) }
            return out
        }
    }

    struct Resource: Decodable { var attributes: [KeyValue]? }

    struct Scope: Decodable {
        var name: String?
        var version: String?
        var attributes: [KeyValue]?
    }

    struct ScopeMetrics: Decodable {
        var scope: Scope?
        var metrics: [Metric]?
        var encoded: [UInt8] {
            var out: [UInt8] = []
            if let scope {
                var s: [UInt8] = []
                s.string(1, scope.name)
                s.string(2, scope.version)
                s += scope.attributes.encoded(field: 3)
                out.field(1, s)
            }
            for metric in metrics ?? [] { out.field(2, metric.encoded) }
            return out
        }
    }

    struct Metric: Decodable {
        var name: String?
        var gauge: DataSet?
        var sum: DataSet?
        var histogram: DataSet?
        var exponentialHistogram: DataSet?
        var summary: DataSet?
        var encoded: [UInt8] {
            var out: [UInt8] = []
            out.string(1, name)
            if let gauge { out.field(5, gauge.encoded(\.numberEncoded)) }
            if let sum { out.field(7, sum.encoded(\.numberEncoded)) }
            if let histogram { out.field(9, histogram.encoded(\.histogramEncoded)) }
            if let exponentialHistogram { out.field(10, exponentialHistogram.encoded(\.exponentialEncoded)) }
            if let summary { out.field(11, summary.encoded(\.histogramEncoded)) }
            return out
        }
    }

    /// Gauge, Sum, Histogram, ExponentialHistogram (and Summary, whose points are only counted).
    struct DataSet: Decodable {
        var dataPoints: [DataPoint]?
        var aggregationTemporality: Integer?
        var isMonotonic: Bool?
        func encoded(_ point: KeyPath<DataPoint, [UInt8]>) -> [UInt8] {
            var out: [UInt8] = []
            for p in dataPoints ?? [] { out.field(1, p[keyPath: point]) }
            if let t = aggregationTemporality?.value { out.varint(2, t) }
            if isMonotonic == true { out.varint(3, 1) }
            return out
        }
    }

    struct DataPoint: Decodable {
        var attributes: [KeyValue]?
        var startTimeUnixNano: Integer?
        var timeUnixNano: Integer?
        var asDouble: Double?
        var asInt: Integer?
        var sum: Double?
        var bucketCounts: [Integer]?
        var explicitBounds: [Double]?
        var scale: Integer?
        var zeroCount: Integer?
        var zeroThreshold: Double?
        var positive: ExponentialBuckets?
        var negative: ExponentialBuckets?
        var max: Double?

        var numberEncoded: [UInt8] {
            var out: [UInt8] = []
            out.fixed64(2, startTimeUnixNano?.value ?? 0)
            out.fixed64(3, timeUnixNano?.value ?? 0)
            if let asDouble { out.fixed64(4, asDouble.bitPattern) }
            if let asInt { out.fixed64(6, asInt.value) }
            out += attributes.encoded(field: 7)
            return out
        }

        var histogramEncoded: [UInt8] {
            var out: [UInt8] = []
            out.fixed64(2, startTimeUnixNano?.value ?? 0)
            out.fixed64(3, timeUnixNano?.value ?? 0)
            if let sum { out.fixed64(5, sum.bitPattern) }
            for count in bucketCounts ?? [] { out.fixed64(6, count.value) }
            for bound in explicitBounds ?? [] { out.fixed64(7, bound.bitPattern) }
            out += attributes.encoded(field: 9)
            return out
        }

        var exponentialEncoded: [UInt8] {
            var out: [UInt8] = []
            out.fixed64(2, startTimeUnixNano?.value ?? 0)
            out.fixed64(3, timeUnixNano?.value ?? 0)
            if let sum { out.fixed64(5, sum.bitPattern) }
            if let scale { out.varint(6, Varint.zigzag(Int64(bitPattern: scale.value))) }
            if let zeroCount { out.fixed64(7, zeroCount.value) }
            if let positive { out.field(8, positive.encoded) }
            if let negative { out.field(9, negative.encoded) }
            if let max { out.fixed64(13, max.bitPattern) }
            if let zeroThreshold { out.fixed64(14, zeroThreshold.bitPattern) }
            out += attributes.encoded(field: 1)
            return out
        }
    }

    /// An exponential histogram's positive or negative buckets: offset and counts (numbers or strings).
    struct ExponentialBuckets: Decodable {
        var offset: Integer?
        var bucketCounts: [Integer]?
        var encoded: [UInt8] {
            var out: [UInt8] = []
            if let offset { out.varint(1, Varint.zigzag(Int64(bitPattern: offset.value))) }
            for count in bucketCounts ?? [] { out.varint(2, count.value) }
            return out
        }
    }

    struct KeyValue: Decodable {
        var key: String?
        var value: AnyValue?
    }

    /// string, bool, int, double; arrays, lists and bytes are carried as an empty array value (the
    /// decoder refuses their point, `bad_attribute`).
    struct AnyValue: Decodable {
        var stringValue: String?
        var boolValue: Bool?
        var intValue: Integer?
        var doubleValue: Double?
        var arrayValue: Ignored?
        var kvlistValue: Ignored?
        var bytesValue: String?
        var encoded: [UInt8] {
            var out: [UInt8] = []
            if let stringValue { out.field(1, Array(stringValue.utf8)) }
            if let boolValue { out.varint(2, boolValue ? 1 : 0) }
            if let intValue { out.varint(3, intValue.value) }
            if let doubleValue { out.fixed64(4, doubleValue.bitPattern) }
            if arrayValue != nil || kvlistValue != nil || bytesValue != nil { out.field(5, []) }
            return out
        }
    }

    struct Ignored: Decodable {}

    /// A 64-bit integer as OTLP/JSON writes it: a decimal string, or a number.
    struct Integer: Decodable {
        var value: UInt64
        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let text = try? container.decode(String.self) {
                if let u = UInt64(text) { value = u; return }
                if let s = Int64(text) { value = UInt64(bitPattern: s); return }
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an integer")
            }
            if let u = try? container.decode(UInt64.self) { value = u; return }
            value = UInt64(bitPattern: try container.decode(Int64.self))
        }
    }
}

private extension Optional where Wrapped == [OTLPJSON.KeyValue] {
    func encoded(field: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        for kv in self ?? [] {
            var pair: [UInt8] = []
            pair.string(1, kv.key)
            if let value = kv.value { pair.field(2, value.encoded) }
            out.field(field, pair)
        }
        return out
    }
}

private extension [UInt8] {
    mutating func key(_ field: UInt64, _ wire: UInt64) { Varint.append(field << 3 | wire, to: &self) }
    mutating func field(_ number: UInt64, _ payload: [UInt8]) {
        key(number, 2)
        Varint.append(UInt64(payload.count), to: &self)
        self += payload
    }
    mutating func string(_ number: UInt64, _ text: String?) {
        if let text { field(number, Array(text.utf8)) }
    }
    mutating func varint(_ number: UInt64, _ value: UInt64) {
        key(number, 0)
        Varint.append(value, to: &self)
    }
    mutating func fixed64(_ number: UInt64, _ value: UInt64) {
        key(number, 1)
        Swift.withUnsafeBytes(of: value.littleEndian) { self += $0 }
    }
}
