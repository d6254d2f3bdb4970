import Foundation
import P2PMetricsTestVectors
import Testing
@testable import P2PMetricsHTTP

/// Replays the committed fuzzing inputs of the FuzzHTTP target (`Tests/Fuzz/seeds`, `corpus` and
/// `regressions`) through the request parser with the fuzzer's invariants
/// (Tests/Fuzz/Sources/FuzzHTTP), so that every past finding stays fixed without libFuzzer.
@Suite("Fuzz corpus replay: HTTP request parser")
struct HTTPFuzzCorpusReplayTests {
    static func inputs(of target: String) throws -> [(name: String, bytes: [UInt8])] {
        try FuzzInputs.of(target)
    }

    static func parse(_ bytes: ArraySlice<UInt8>) -> HTTPParseResult {
        bytes.withUnsafeBytes { HTTPRequestParser.parse($0, limits: HTTPLimits()) }
    }

    @Test("every committed FuzzHTTP input keeps the parser's invariants")
    func replayHTTPInputs() throws {
        let inputs = try Self.inputs(of: "FuzzHTTP")
        #expect(inputs.count >= 20, "seeds missing from \(FuzzInputs.directory.path)")
        let limits = HTTPLimits()
        for (id, bytes) in inputs {
            let result = Self.parse(bytes[...])
            #expect(Self.parse(bytes[...]) == result, "\(id): not deterministic")
            switch result {
            case .request(let head, let consumed):
                #expect(consumed > 0 && consumed <= bytes.count && consumed <= limits.maxHeadBytes, "\(id): consumed \(consumed)")
                guard consumed >= 4 && consumed <= bytes.count else { continue }
                #expect(Array(bytes[(consumed - 4)..<consumed]) == [0x0D, 0x0A, 0x0D, 0x0A], "\(id): head end")
                #expect(head.path.hasPrefix("/") && !head.path.contains("?"), "\(id): path \(head.path)")
                #expect(!head.method.isEmpty && (head.minorVersion == 0 || head.minorVersion == 1), "\(id)")
                #expect(Self.parse(bytes[0..<consumed]) == result, "\(id): the head alone parses differently")
                for n in 0..<consumed {
                    let prefix = Self.parse(bytes[0..<n])
                    #expect(prefix == .incomplete, "\(id): prefix of \(n) bytes gives \(prefix)")
                }
            case .incomplete:
                #expect(bytes.count < limits.maxHeadBytes, "\(id)")
                for n in 0..<bytes.count {
                    if case .request = Self.parse(bytes[0..<n]) {
                        Issue.record("\(id): prefix of \(n) bytes is a request, the whole is incomplete")
                    }
                }
            case .failure:
                for n in 0..<min(bytes.count, 4_096) { _ = Self.parse(bytes[0..<n]) }
            }
        }
    }
}
