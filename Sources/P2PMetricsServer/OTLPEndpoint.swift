import P2PMetricsHTTP
import P2PMetricsInputOTLP
import P2PMetricsStore
import P2PMetricsWire

/// An answer to an OTLP/HTTP export request: status, content type, body.
struct OTLPExportResponse: Equatable {
    var status: HTTPStatus
    var body: [UInt8]
    var contentType = OTLPEndpoint.protobufType
}

/// `POST /v1/metrics` of the OTLP/HTTP specification, protobuf encoding: what is checked before
/// the body is read (method, length, content type and encoding) and what the body comes to.
/// Refusals carry a `google.rpc.Status` whose message says why.
enum OTLPEndpoint {
    static let path = "/v1/metrics"
    static let protobufType = "application/x-protobuf"
    static let jsonType = "application/json"
    /// Largest request body read (compressed or not).
    static let maxBodyBytes = 4 << 20
    /// Largest body once decompressed: a gzip bomb is refused when its output passes this.
    static let maxDecompressedBytes = 16 << 20

    /// The refusal for a request head that cannot be an export, before its body is read; nil
    /// when the body should be read (`contentLength` bytes).
    static func refusal(for head: HTTPRequestHead) -> OTLPExportResponse? {
        guard head.method == "POST" else { return failure(.methodNotAllowed, "only POST is accepted") }
        guard !head.chunked, let length = head.contentLength else {
            return failure(.lengthRequired, "a Content-Length is required")
        }
        guard length <= UInt64(maxBodyBytes) else { return failure(.contentTooLarge, "body larger than \(maxBodyBytes) bytes") }
        let mediaType = mediaType(of: head)
        guard mediaType == protobufType || mediaType == jsonType else {
            return failure(.unsupportedMediaType, "content type must be \(protobufType) or \(jsonType)")
        }
        switch head.contentEncoding?.lowercased() {
        case nil, "identity", "gzip": return nil
        default: return failure(.unsupportedMediaType, "content encoding must be gzip or identity")
        }
    }

    /// Decompresses and decodes the body of an accepted head, applies it to `store`.
    static func export(_ body: [UInt8], head: HTTPRequestHead, input: inout OTLPInput, store: inout MetricStore) -> OTLPExportResponse {
        var payload = body
        if head.contentEncoding?.lowercased() == "gzip" {
            switch GzipInflate.decompress(body, maxBytes: maxDecompressedBytes) {
            case .failure(.tooLarge):
                input.countRefusedRequest()
                return failure(.contentTooLarge, "body larger than \(maxDecompressedBytes) bytes once decompressed")
            case .failure(.corrupt):
                input.countRefusedRequest()
                return failure(.badRequest, "body is not valid gzip")
            case .success(let inflated): payload = inflated
            }
        }
        let json = mediaType(of: head) == jsonType
        if json {
            switch OTLPJSON.protobuf(fromJSON: payload) {
            case .failure(let error):
                input.countRefusedRequest()
                return failure(.badRequest, error.message, json: true)
            case .success(let protobuf): payload = protobuf
            }
        }
        switch payload.withUnsafeBytes({ input.ingest(protobuf: $0, into: &store) }) {
        case .failure(let error): return failure(.badRequest, "undecodable ExportMetricsServiceRequest: \(error.message)", json: json)
        case .success(let outcome):
            guard json else { return OTLPExportResponse(status: .ok, body: OTLPInput.response(outcome)) }
            return OTLPExportResponse(status: .ok, body: jsonResponse(outcome), contentType: jsonType)
        }
    }

    static func mediaType(of head: HTTPRequestHead) -> String {
        head.contentType?.split(separator: ";").first.map { $0.trimmingCharacters() } ?? ""
    }

    /// ExportMetricsServiceResponse in OTLP/JSON: `{}`, or a partialSuccess (rejectedDataPoints as a string).
    static func jsonResponse(_ outcome: OTLPInput.Outcome) -> [UInt8] {
        guard outcome.rejectedPoints > 0 else { return Array("{}".utf8) }
        return Array(#"{"partialSuccess":{"rejectedDataPoints":"\#(outcome.rejectedPoints)","errorMessage":"\#(outcome.message)"}}"#.utf8)
    }

    /// A `google.rpc.Status` with `message` (field 2), or its JSON form.
    static func failure(_ status: HTTPStatus, _ message: String, json: Bool) -> OTLPExportResponse {
        guard json else { return failure(status, message) }
        return OTLPExportResponse(status: status, body: Array(#"{"message":"\#(message)"}"#.utf8), contentType: jsonType)
    }

    /// A `google.rpc.Status` with `message` (field 2).
    static func failure(_ status: HTTPStatus, _ message: String) -> OTLPExportResponse {
        let text = Array(message.utf8)
        var body: [UInt8] = [0x12]
        Varint.append(UInt64(text.count), to: &body)
        return OTLPExportResponse(status: status, body: body + text)
    }
}

private extension Substring {
    func trimmingCharacters() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()).lowercased()
    }
}
