import Foundation
import P2PMetricsWire

/// The shared test vectors of `Clients/testdata/vectors.txt`, for every Swift test target that
/// checks an encoder or the decoder against them (format: `Clients/PROTOCOL.md` §7).
public struct TestVectors: Sendable {
    public struct Call: Equatable, Sendable {
        public var kind: SampleKind
        public var name: String
        public var value: Double
        public var labels: [(String, String)]
        /// The item key of distinct_add and topk_add calls.
        public var key: String? = nil

        public init(kind: SampleKind, name: String, value: Double, labels: [(String, String)], key: String? = nil) {
            self.kind = kind
            self.name = name
            self.value = value
            self.labels = labels
            self.key = key
        }

        public static func == (a: Call, b: Call) -> Bool {
            a.kind == b.kind && a.name == b.name && a.value.bitPattern == b.value.bitPattern && a.key == b.key
                && a.labels.map { $0.0 } == b.labels.map { $0.0 } && a.labels.map { $0.1 } == b.labels.map { $0.1 }
        }
    }

    public struct Valid: Sendable {
        public var id: String
        public var drops: UInt64 = 0
        public var calls: [Call] = []
        public var bytes: [UInt8] = []
    }

    public struct Reject: Sendable {
        public var id: String
        public var bytes: [UInt8] = []
        public var reason = ""
    }

    public var valid: [Valid] = []
    /// Valid datagrams no canonical encoder emits (`accept` entries): for decoders only.
    public var accept: [Valid] = []
    public var reject: [Reject] = []

    public static let fileURL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Clients/testdata/vectors.txt")

    public static func load() throws -> TestVectors {
        let text = try String(contentsOf: fileURL, encoding: .utf8)
        var vectors = TestVectors()
        var currentValid: Valid?
        var currentIsAccept = false
        var currentReject: Reject?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty || line.hasPrefix("#") { continue }
            let tokens = line.split(separator: " ").map(String.init)
            switch tokens[0] {
            case "vector", "accept":
                currentValid = Valid(id: tokens[1])
                currentIsAccept = tokens[0] == "accept"
            case "reject": currentReject = Reject(id: tokens[1])
            case "drops": currentValid?.drops = UInt64(tokens[1])!
            case "call":
                let kind: SampleKind = switch tokens[1] {
                case "counter_add": .counterAdd
                case "gauge_set": .gaugeSet
                case "gauge_add": .gaugeAdd
                case "distinct_add": .distinctAdd
                case "topk_add": .topKAdd
                default: .histogramObserve
                }
                let labels = tokens.dropFirst(4).map { pair -> (String, String) in
                    let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    return (percentDecode(String(parts[0])), percentDecode(String(parts[1])))
                }
                if kind.takesKey {
                    currentValid?.calls.append(Call(kind: kind, name: percentDecode(tokens[2]), value: .nan,
                                                    labels: labels, key: percentDecode(tokens[3])))
                } else {
                    currentValid?.calls.append(Call(kind: kind, name: percentDecode(tokens[2]),
                                                    value: Double(tokens[3])!, labels: labels))
                }
            case "bytes":
                let bytes = hex(tokens[1])
                if currentValid != nil { currentValid?.bytes = bytes } else { currentReject?.bytes = bytes }
            case "reason": currentReject?.reason = tokens[1]
            case "end":
                if let v = currentValid {
                    if currentIsAccept { vectors.accept.append(v) } else { vectors.valid.append(v) }
                }
                if let r = currentReject { vectors.reject.append(r) }
                currentValid = nil
                currentReject = nil
            default: fatalError("unknown vector line \(line)")
            }
        }
        return vectors
    }

    public static func hex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = s.startIndex
        while i < s.endIndex {
            let j = s.index(i, offsetBy: 2)
            out.append(UInt8(s[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    public static func percentDecode(_ s: String) -> String {
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%") {
                let h = String(decoding: bytes.prefix(2), as: UTF8.self)
                out.append(UInt8(h, radix: 16)!)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
