import P2PMetricsWire

/// How an OTLP sum or histogram reports its values (opentelemetry-proto `AggregationTemporality`).
public enum OTLPTemporality: UInt64, Sendable {
    case unspecified = 0
    case delta = 1
    case cumulative = 2
}

/// Why one OTLP data point was refused. The raw value is the `reason` label of
/// `p2pmetricsd_otlp_points_rejected_total`; the request's other points still apply.
public enum OTLPPointRejection: String, Error, Sendable, CaseIterable {
    /// A metric name that is empty, reserved, or too long once sanitized.
    case badName = "bad_name"
    /// An attribute whose key cannot be a label, whose value is too long, not UTF-8, or an array,
    /// key-value list or bytes.
    case badAttribute = "bad_attribute"
    /// More than 16 attributes on one point.
    case tooManyAttributes = "too_many_attributes"
    /// Summary points (not mapped), a metric without data.
    case unsupportedType = "unsupported_type"
    /// Unspecified temporality, a missing or non-finite value, a negative monotonic delta, an
    /// exponential histogram's scale outside -10...20.
    case badValue = "bad_value"
    /// The request carried more than `maxPointsPerRequest` points: the rest are refused.
    case tooManyPoints = "too_many_points"
    /// A histogram point whose explicit bounds differ from its metric's (configured or first seen).
    case bucketMismatch = "bucket_mismatch"
    /// An exponential histogram point with more than `OTLPDecoder.maxExponentialBuckets` buckets on a
    /// side, or past `OTLPDecoder.maxExponentialBucketsPerRequest` in its request.
    case tooManyBuckets = "too_many_buckets"
    /// A new cumulative stream while the stream table is full.
    case streamTableFull = "stream_table_full"
    /// The store refused the sample (a type clash with the metric's existing type, series limits).
    case storeRefused = "store_refused"
}

/// Why a whole OTLP request was refused (HTTP 400): its body is not an ExportMetricsServiceRequest.
public struct OTLPDecodeError: Error, Sendable, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
}

/// One number data point of an OTLP request, with what identifies its stream.
public struct OTLPNumberPoint: Sendable {
    public enum Shape: Sendable, Equatable {
        case monotonicSum, nonMonotonicSum, gauge, histogram, exponentialHistogram
    }
    /// The metric's name as sent (not sanitized).
    public var metric: String
    public var shape: Shape
    public var temporality: OTLPTemporality
    /// The point's attributes as label pairs (keys not sanitized), values rendered as text.
    public var attributes: [(key: String, value: String)]
    /// The attributes of the point's Resource that `OTLPDecoder.resourceAttributes` selects, in
    /// that order (keys not sanitized).
    public var resourceAttributes: [(key: String, value: String)] = []
    /// A digest of the encoded Resource and InstrumentationScope the point came with: the rest of
    /// its stream identity.
    public var origin: [UInt8]
    public var startTimeUnixNano: UInt64
    public var timeUnixNano: UInt64
    public var value: Double?
    /// A histogram point's buckets: counts (one more than bounds) and explicit upper bounds.
    public var bucketCounts: [UInt64] = []
    public var bounds: [Double] = []
    /// An exponential histogram point's buckets (its sum is `value`, nil when the point has none).
    public var exponential: ExponentialBuckets?
}

/// The buckets of an OTLP ExponentialHistogramDataPoint. Positive bucket `offset + i` holds the
/// observations in (base^(offset+i), base^(offset+i+1)], negative bucket `offset + i` those in
/// [−base^(offset+i+1), −base^(offset+i)), with base = 2^(2^−scale); the zero bucket holds
/// [−zeroThreshold, zeroThreshold].
public struct ExponentialBuckets: Sendable, Equatable {
    public var scale: Int = 0
    public var zeroCount: UInt64 = 0
    public var zeroThreshold: Double = 0
    public var positiveOffset: Int = 0
    public var positive: [UInt64] = []
    public var negativeOffset: Int = 0
    public var negative: [UInt64] = []
    /// The largest observation, when the point says (an upper bound of every bucket's values).
    public var max: Double?

    public init(scale: Int = 0, zeroCount: UInt64 = 0, zeroThreshold: Double = 0, positiveOffset: Int = 0, positive: [UInt64] = [],
                negativeOffset: Int = 0, negative: [UInt64] = [], max: Double? = nil) {
        self.scale = scale
        self.zeroCount = zeroCount
        self.zeroThreshold = zeroThreshold
        self.positiveOffset = positiveOffset
        self.positive = positive
        self.negativeOffset = negativeOffset
        self.negative = negative
        self.max = max
    }
}

/// A decoded ExportMetricsServiceRequest: the points it carries and the ones refused while decoding.
public struct OTLPRequest: Sendable {
    public var points: [OTLPNumberPoint] = []
    public var refused: [OTLPPointRejection] = []
    /// Exponential histogram buckets the accepted points carry.
    public var exponentialBuckets = 0
}

/// A hand-written decoder of the subset of OTLP metrics the sidecar maps (opentelemetry-proto
/// `metrics/v1`, `collector/metrics/v1`): ExportMetricsServiceRequest → ResourceMetrics →
/// ScopeMetrics → Metric {name, gauge, sum, histogram, exponential_histogram} → their data
/// points. Unknown fields are skipped; the nesting is fixed by the schema (no
/// recursion into attribute arrays or lists), and points per request, attributes per point and
/// attribute sizes are bounded.
public struct OTLPDecoder: Sendable {
    public var maxPointsPerRequest: Int
    /// The resource attributes whose values become labels of every point of their resource
    /// (`otlp_resource_labels`); none by default.
    public var resourceAttributes: [String]

    public init(maxPointsPerRequest: Int = 10_000, resourceAttributes: [String] = []) {
        self.maxPointsPerRequest = maxPointsPerRequest
        self.resourceAttributes = resourceAttributes
    }

    public func decode(_ bytes: UnsafeRawBufferPointer) -> Result<OTLPRequest, OTLPDecodeError> {
        var request = OTLPRequest()
        var reader = ProtobufReader(bytes)
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return .failure(OTLPDecodeError("malformed request")) }
            if field == 1 && wire == 2 {  // resource_metrics
                guard let range = reader.readLengthDelimited() else { return .failure(OTLPDecodeError("truncated resource_metrics")) }
                if let error = decodeResourceMetrics(bytes, range, into: &request) { return .failure(error) }
            } else if !reader.skip(wire) {
                return .failure(OTLPDecodeError("malformed request"))
            }
        }
        return .success(request)
    }

    private func decodeResourceMetrics(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, into request: inout OTLPRequest) -> OTLPDecodeError? {
        var resource: Range<Int> = range.lowerBound..<range.lowerBound
        var scopes: [Range<Int>] = []
        var reader = ProtobufReader(bytes, range: range)
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return OTLPDecodeError("malformed resource_metrics") }
            if (field == 1 || field == 2) && wire == 2 {
                guard let r = reader.readLengthDelimited() else { return OTLPDecodeError("truncated resource_metrics") }
                if field == 1 { resource = r } else { scopes.append(r) }
            } else if !reader.skip(wire) {
                return OTLPDecodeError("malformed resource_metrics")
            }
        }
        let labels: Result<[(key: String, value: String)], OTLPPointRejection>
        switch selectedAttributes(bytes, resource) {
        case nil: return OTLPDecodeError("malformed resource")
        case .some(let selected): labels = selected
        }
        for scope in scopes {
            if let error = decodeScopeMetrics(bytes, scope, resource: resource, labels: labels, into: &request) { return error }
        }
        return nil
    }

    /// The Resource's attributes (field 1) that `resourceAttributes` selects, in its order: nil
    /// when malformed, a refusal when a selected one cannot be a label (all the resource's points
    /// are refused with it). Attributes not selected are not read.
    private func selectedAttributes(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>)
        -> Result<[(key: String, value: String)], OTLPPointRejection>? {
        guard !resourceAttributes.isEmpty else { return .success([]) }
        var found: [String: String] = [:]
        var refusal: OTLPPointRejection?
        var reader = ProtobufReader(bytes, range: range)
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return nil }
            guard field == 1 && wire == 2 else {
                guard reader.skip(wire) else { return nil }
                continue
            }
            guard let kv = reader.readLengthDelimited() else { return nil }
            var inner = ProtobufReader(bytes, range: kv)
            var key: String?
            while !inner.isAtEnd, key == nil {
                guard let (f, w) = inner.readKey() else { return nil }
                if f == 1 && w == 2 {
                    guard let r = inner.readLengthDelimited() else { return nil }
                    key = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[r]), as: UTF8.self)
                } else if !inner.skip(w) {
                    return nil
                }
            }
            guard let key, resourceAttributes.contains(key) else { continue }
            var pairs: [(key: String, value: String)] = []
            guard Self.addAttribute(bytes, kv, to: &pairs, refusal: &refusal) else { return nil }
            if let pair = pairs.first { found[pair.key] = pair.value }
        }
        if let refusal { return .failure(refusal) }
        return .success(resourceAttributes.compactMap { key in found[key].map { (key, $0) } })
    }

    private func decodeScopeMetrics(
        _ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, resource: Range<Int>,
        labels: Result<[(key: String, value: String)], OTLPPointRejection>, into request: inout OTLPRequest
    ) -> OTLPDecodeError? {
        var scope: Range<Int> = range.lowerBound..<range.lowerBound
        var metrics: [Range<Int>] = []
        var reader = ProtobufReader(bytes, range: range)
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return OTLPDecodeError("malformed scope_metrics") }
            if (field == 1 || field == 2) && wire == 2 {
                guard let r = reader.readLengthDelimited() else { return OTLPDecodeError("truncated scope_metrics") }
                if field == 1 { scope = r } else { metrics.append(r) }
            } else if !reader.skip(wire) {
                return OTLPDecodeError("malformed scope_metrics")
            }
        }
        // Stream identity beyond the metric and its attributes: the resource and the scope, as sent,
        // as a fixed-size digest (a large resource costs one hash per scope, not a copy per point).
        let origin = OTLPInput.digest { hasher in
            hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: bytes[resource]))
            hasher.combine(resource.count)
            hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: bytes[scope]))
            hasher.combine(scope.count)
        }
        for metric in metrics {
            if let error = decodeMetric(bytes, metric, origin: origin, resourceLabels: labels, into: &request) { return error }
        }
        return nil
    }

    private func decodeMetric(
        _ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, origin: [UInt8],
        resourceLabels: Result<[(key: String, value: String)], OTLPPointRejection>, into request: inout OTLPRequest
    ) -> OTLPDecodeError? {
        var name = ""
        var data: (field: UInt64, range: Range<Int>)?
        var reader = ProtobufReader(bytes, range: range)
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return OTLPDecodeError("malformed metric") }
            switch (field, wire) {
            case (1, 2):
                guard let r = reader.readLengthDelimited() else { return OTLPDecodeError("truncated metric name") }
                name = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[r]), as: UTF8.self)
            case (5, 2), (7, 2), (9, 2), (10, 2), (11, 2):  // gauge, sum, histogram, exponential histogram, summary
                guard let r = reader.readLengthDelimited() else { return OTLPDecodeError("truncated metric data") }
                data = (field, r)
            default:
                guard reader.skip(wire) else { return OTLPDecodeError("malformed metric") }
            }
        }
        guard let data else {
            request.refused.append(.unsupportedType)
            return nil
        }
        // Gauge, Sum, Histogram, ExponentialHistogram and Summary all carry data_points as field 1;
        // Sum has aggregation_temporality 2 and is_monotonic 3 (the histograms: temporality 2).
        var points: [Range<Int>] = []
        var temporality: UInt64 = 0
        var monotonic = false
        var inner = ProtobufReader(bytes, range: data.range)
        while !inner.isAtEnd {
            guard let (field, wire) = inner.readKey() else { return OTLPDecodeError("malformed metric data") }
            switch (field, wire) {
            case (1, 2):
                guard let r = inner.readLengthDelimited() else { return OTLPDecodeError("truncated data point") }
                points.append(r)
            case (2, 0):
                guard let v = inner.readVarint() else { return OTLPDecodeError("malformed temporality") }
                temporality = v
            case (3, 0):
                guard let v = inner.readVarint() else { return OTLPDecodeError("malformed is_monotonic") }
                monotonic = v != 0
            default:
                guard inner.skip(wire) else { return OTLPDecodeError("malformed metric data") }
            }
        }
        let shape: OTLPNumberPoint.Shape
        switch data.field {
        case 5: shape = .gauge
        case 7: shape = monotonic ? .monotonicSum : .nonMonotonicSum
        case 9: shape = .histogram
        case 10: shape = .exponentialHistogram
        default:
            request.refused.append(contentsOf: repeatElement(.unsupportedType, count: points.count))
            return nil
        }
        for point in points {
            guard request.points.count < maxPointsPerRequest else {
                request.refused.append(.tooManyPoints)
                continue
            }
            let decodedPoint = switch shape {
            case .histogram: decodeHistogramPoint(bytes, point)
            case .exponentialHistogram: decodeExponentialPoint(bytes, point)
            default: decodeNumberPoint(bytes, point)
            }
            switch decodedPoint {
            case .failure(.decode(let error)): return error
            case .failure(.refused(let reason)): request.refused.append(reason)
            case .success(let decoded):
                let buckets = decoded.exponential.map { $0.positive.count + $0.negative.count } ?? 0
                guard request.exponentialBuckets + buckets <= Self.maxExponentialBucketsPerRequest else {
                    request.refused.append(.tooManyBuckets)
                    continue
                }
                guard case .success(let resourceAttributes) = resourceLabels else {
                    if case .failure(let reason) = resourceLabels { request.refused.append(reason) }
                    continue
                }
                request.exponentialBuckets += buckets
                request.points.append(OTLPNumberPoint(
                    metric: name, shape: shape,
                    temporality: shape == .gauge ? .unspecified : OTLPTemporality(rawValue: temporality) ?? .unspecified,
                    attributes: decoded.attributes, resourceAttributes: resourceAttributes, origin: origin,
                    startTimeUnixNano: decoded.start, timeUnixNano: decoded.time, value: decoded.value,
                    bucketCounts: decoded.buckets, bounds: decoded.bounds, exponential: decoded.exponential))
            }
        }
        return nil
    }

    private enum PointFailure: Error {
        case decode(OTLPDecodeError)
        case refused(OTLPPointRejection)
    }

    private typealias DecodedPoint = (attributes: [(key: String, value: String)], start: UInt64, time: UInt64, value: Double?,
                                      buckets: [UInt64], bounds: [Double], exponential: ExponentialBuckets?)

    /// Most explicit bounds one histogram point may carry.
    public static let maxBounds = 256

    /// A HistogramDataPoint: attributes 9, start 2, time 3, sum 5 (the point's `value`),
    /// bucket_counts 6 and explicit_bounds 7 (packed or not); count 4 is implied by the buckets.
    private func decodeHistogramPoint(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Result<DecodedPoint, PointFailure> {
        var point: DecodedPoint = ([], 0, 0, nil, [], [], nil)
        var refusal: OTLPPointRejection?
        var reader = ProtobufReader(bytes, range: range)
        let malformed = PointFailure.decode(OTLPDecodeError("malformed histogram data point"))
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return .failure(malformed) }
            switch (field, wire) {
            case (2, 1), (3, 1), (5, 1), (6, 1), (7, 1):
                guard let bits = reader.readFixed64() else { return .failure(malformed) }
                switch field {
                case 2: point.start = bits
                case 3: point.time = bits
                case 5: point.value = Double(bitPattern: bits)
                case 6: point.buckets.append(bits)
                default: point.bounds.append(Double(bitPattern: bits))
                }
            case (6, 2), (7, 2):  // packed
                guard let r = reader.readLengthDelimited(), r.count % 8 == 0 else { return .failure(malformed) }
                var packed = ProtobufReader(bytes, range: r)
                while let bits = packed.readFixed64() {
                    if field == 6 { point.buckets.append(bits) } else { point.bounds.append(Double(bitPattern: bits)) }
                }
            case (9, 2):
                guard let r = reader.readLengthDelimited(),
                      Self.addAttribute(bytes, r, to: &point.attributes, refusal: &refusal) else { return .failure(malformed) }
            default:
                guard reader.skip(wire) else { return .failure(malformed) }
            }
            guard point.bounds.count <= Self.maxBounds, point.buckets.count <= Self.maxBounds + 1 else {
                return .failure(.refused(.bucketMismatch))
            }
        }
        if let refusal { return .failure(.refused(refusal)) }
        if point.value == nil { point.value = 0 }  // sum is optional (absent when observations may be negative)
        guard point.buckets.count == point.bounds.count + 1 else { return .failure(.refused(.badValue)) }
        return .success(point)
    }

    private func decodeNumberPoint(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Result<DecodedPoint, PointFailure> {
        var point: DecodedPoint = ([], 0, 0, nil, [], [], nil)
        var refusal: OTLPPointRejection?
        var reader = ProtobufReader(bytes, range: range)
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return .failure(.decode(OTLPDecodeError("malformed data point"))) }
            switch (field, wire) {
            case (2, 1), (3, 1), (4, 1), (6, 1):  // start_time_unix_nano, time_unix_nano, as_double, as_int
                guard let bits = reader.readFixed64() else { return .failure(.decode(OTLPDecodeError("truncated data point"))) }
                switch field {
                case 2: point.start = bits
                case 3: point.time = bits
                case 4: point.value = Double(bitPattern: bits)
                default: point.value = Double(Int64(bitPattern: bits))
                }
            case (7, 2):  // attributes
                guard let r = reader.readLengthDelimited() else { return .failure(.decode(OTLPDecodeError("truncated attribute"))) }
                guard Self.addAttribute(bytes, r, to: &point.attributes, refusal: &refusal) else {
                    return .failure(.decode(OTLPDecodeError("malformed attribute")))
                }
            default:
                guard reader.skip(wire) else { return .failure(.decode(OTLPDecodeError("malformed data point"))) }
            }
        }
        if let refusal { return .failure(.refused(refusal)) }
        return .success(point)
    }

    /// Adds the KeyValue at `range` to `attributes`, or sets `refusal` (not a label, one too
    /// many); after a refusal the rest are only skipped. False when the KeyValue is malformed.
    private static func addAttribute(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>,
                                     to attributes: inout [(key: String, value: String)], refusal: inout OTLPPointRejection?) -> Bool {
        guard refusal == nil else { return true }
        switch attribute(bytes, range) {
        case nil: return false
        case .some(nil): refusal = .badAttribute
        case .some(.some(let pair)):
            if attributes.count >= maxAttributesPerPoint { refusal = .tooManyAttributes } else { attributes.append(pair) }
        }
        return true
    }

    /// Most buckets one side (positive or negative) of an exponential histogram point may carry
    /// (the SDKs' default is 160).
    public static let maxExponentialBuckets = 1_024
    /// Most exponential histogram buckets one request may carry (as many as the explicit-bucket
    /// histograms of the largest body can): bounds the decoded request's memory (16 MiB) and the
    /// time re-bucketing takes.
    public static let maxExponentialBucketsPerRequest = 1 << 21
    /// The scales the OpenTelemetry specification defines for exponential histograms.
    public static let exponentialScales = -10...20

    /// An ExponentialHistogramDataPoint: attributes 1, start 2, time 3, sum 5 (the point's `value`,
    /// optional), scale 6 (sint32), zero_count 7, positive 8 and negative 9 (Buckets: offset 1,
    /// sint32; bucket_counts 2, varints, packed or not), max 13, zero_threshold 14; count 4 is
    /// implied by the buckets, min 12 is not needed.
    private func decodeExponentialPoint(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Result<DecodedPoint, PointFailure> {
        var point: DecodedPoint = ([], 0, 0, nil, [], [], nil)
        var buckets = ExponentialBuckets()
        var refusal: OTLPPointRejection?
        var reader = ProtobufReader(bytes, range: range)
        let malformed = PointFailure.decode(OTLPDecodeError("malformed exponential histogram data point"))
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return .failure(malformed) }
            switch (field, wire) {
            case (1, 2):
                guard let r = reader.readLengthDelimited(),
                      Self.addAttribute(bytes, r, to: &point.attributes, refusal: &refusal) else { return .failure(malformed) }
            case (2, 1), (3, 1), (5, 1), (7, 1), (13, 1), (14, 1):
                guard let bits = reader.readFixed64() else { return .failure(malformed) }
                switch field {
                case 2: point.start = bits
                case 3: point.time = bits
                case 5: point.value = Double(bitPattern: bits)
                case 7: buckets.zeroCount = bits
                case 13: buckets.max = Double(bitPattern: bits)
                default: buckets.zeroThreshold = Double(bitPattern: bits)
                }
            case (6, 0):
                guard let v = reader.readVarint() else { return .failure(malformed) }
                let scale = Varint.unzigzag(v)
                guard Self.exponentialScales.contains(Int(scale)) else { refusal = refusal ?? .badValue; continue }
                buckets.scale = Int(scale)
            case (8, 2), (9, 2):
                guard let r = reader.readLengthDelimited(), let side = Self.exponentialSide(bytes, r) else { return .failure(malformed) }
                guard let side else { refusal = refusal ?? .tooManyBuckets; continue }
                if field == 8 { (buckets.positiveOffset, buckets.positive) = side } else { (buckets.negativeOffset, buckets.negative) = side }
            default:
                guard reader.skip(wire) else { return .failure(malformed) }
            }
        }
        if let refusal { return .failure(.refused(refusal)) }
        guard buckets.zeroThreshold.isFinite, buckets.zeroThreshold >= 0, buckets.max.map({ !$0.isNaN }) ?? true else {
            return .failure(.refused(.badValue))
        }
        point.exponential = buckets
        return .success(point)
    }

    /// One side's Buckets {offset 1 (sint32), bucket_counts 2}: nil when malformed, `.some(nil)`
    /// when it has more than `maxExponentialBuckets` counts.
    private static func exponentialSide(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> (offset: Int, counts: [UInt64])?? {
        var offset = 0
        var counts: [UInt64] = []
        var tooMany = false
        var reader = ProtobufReader(bytes, range: range)
        func add(_ count: UInt64) {
            if counts.count < maxExponentialBuckets { counts.append(count) } else { tooMany = true }
        }
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return nil }
            switch (field, wire) {
            case (1, 0):
                guard let v = reader.readVarint(), let o = Int32(exactly: Varint.unzigzag(v)) else { return nil }
                offset = Int(o)
            case (2, 0):
                guard let v = reader.readVarint() else { return nil }
                add(v)
            case (2, 2):  // packed
                guard let r = reader.readLengthDelimited() else { return nil }
                var packed = ProtobufReader(bytes, range: r)
                while !packed.isAtEnd {
                    guard let v = packed.readVarint() else { return nil }
                    add(v)
                }
            default:
                guard reader.skip(wire) else { return nil }
            }
        }
        return .some(tooMany ? nil : (offset, counts))
    }

    /// Attributes one point may carry (the protocol's labels per series).
    public static let maxAttributesPerPoint = 16
    /// Longest attribute key and value accepted, in bytes (the protocol's label limits).
    public static let maxAttributeKeyBytes = 100
    public static let maxAttributeValueBytes = 1_024

    /// A KeyValue: nil when malformed, `.some(nil)` when well-formed but not a label (array,
    /// list, bytes, too long, not UTF-8).
    private static func attribute(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> (key: String, value: String)?? {
        var key: Range<Int>?
        var value: Range<Int>?
        var reader = ProtobufReader(bytes, range: range)
        while !reader.isAtEnd {
            guard let (field, wire) = reader.readKey() else { return nil }
            if (field == 1 || field == 2) && wire == 2 {
                guard let r = reader.readLengthDelimited() else { return nil }
                if field == 1 { key = r } else { value = r }
            } else if !reader.skip(wire) {
                return nil
            }
        }
        guard let key, key.count <= maxAttributeKeyBytes, let text = utf8(bytes, key) else { return .some(nil) }
        guard let value else { return .some((text, "")) }
        var anyValue = ProtobufReader(bytes, range: value)
        var rendered: String? = ""
        while !anyValue.isAtEnd {
            guard let (field, wire) = anyValue.readKey() else { return nil }
            switch (field, wire) {
            case (1, 2):  // string_value
                guard let r = anyValue.readLengthDelimited() else { return nil }
                rendered = r.count <= maxAttributeValueBytes ? utf8(bytes, r) : nil
            case (2, 0):  // bool_value
                guard let v = anyValue.readVarint() else { return nil }
                rendered = v != 0 ? "true" : "false"
            case (3, 0):  // int_value
                guard let v = anyValue.readVarint() else { return nil }
                rendered = String(Int64(bitPattern: v))
            case (4, 1):  // double_value
                guard let v = anyValue.readFixed64() else { return nil }
                rendered = String(Double(bitPattern: v))
            case (5, 2), (6, 2), (7, 2):  // array, key-value list, bytes: no label form
                guard anyValue.readLengthDelimited() != nil else { return nil }
                rendered = nil
            default:
                guard anyValue.skip(wire) else { return nil }
            }
        }
        guard let rendered else { return .some(nil) }
        return .some((text, rendered))
    }

    private static func utf8(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String? {
        let slice = UnsafeRawBufferPointer(rebasing: bytes[range])
        return Names.isValidUTF8(slice) ? String(decoding: slice, as: UTF8.self) : nil
    }
}
